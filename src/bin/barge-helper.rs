//! `barge-helper`: the far end of a barge connection.

use std::process::ExitCode;

const HELP: &str = "\
barge-helper: the server side of barge file transfers.

It speaks the barge wire protocol on standard input (requests) and standard
output (replies), with diagnostics on standard error. It is started by the
barge library, directly or through ssh, sudo or podman exec; it is not meant
to be run by hand.

Usage: barge-helper [--version | --help]

Environment:
  BARGE_HELPER_DEBUG=1          log every request to standard error
  BARGE_HELPER_GRACE_MS=N       after the client hangs up, exit within N ms
                                even if stuck (default 2000)
  BARGE_HELPER_MAX_TREE_DIRS=N   most directories one tree upload may create
                                (default 1000000); past it the upload fails
                                with E2BIG
  BARGE_HELPER_ALLOW_SETID=1     when run as root, keep the setuid, setgid and
                                sticky bits a tree upload asks to keep
                                (refused with EPERM otherwise)
  BARGE_HELPER_FAULT=LIST       test faults, comma-separated: cancel@N,
                                fail@N:ERRNO, stall@N, die@N, ignore-shutdown,
                                ignore-sigterm, stall-handshake, refuse-fd,
                                no-tmpfile, version=N
  BARGE_HELPER_FAULT_PATH=TEXT  apply transfer faults only to paths
                                containing TEXT
";

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    match args.iter().map(|a| a.to_str()).collect::<Vec<_>>()[..] {
        [] => ExitCode::from(barge::server::main_from_env() as u8),
        [Some("--version")] => {
            println!(
                "barge-helper {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                barge::wire::VERSION
            );
            ExitCode::SUCCESS
        }
        [Some("--help" | "-h")] => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("barge-helper: unexpected arguments {args:?}\nUsage: barge-helper [--version | --help]");
            ExitCode::from(2)
        }
    }
}
