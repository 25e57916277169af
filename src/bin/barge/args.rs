//! The command line and the shell's command lines, as clap definitions.
//!
//! The one-shot command (`barge put ...`) and a line typed at the shell's
//! prompt share [`Op`], so both accept the same commands with the same
//! options, and their help comes from the same doc comments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Remote paths are resolved by the helper; with --root, beneath DIR.
If REMOTE (for put) or LOCAL (for get) is an existing directory, or ends
in '/', the file keeps its name inside it.

Exit status: 0 success, 1 error, 2 usage error, 130 cancelled by ^C.

^C cancels the running transfer at once; nothing partial is left on either
side. With --ssh, ssh runs with BatchMode=yes in a process group of its own,
where it cannot ask for a password: log in with a key or an ssh-agent.";

/// barge: copy files to and from a barge helper, locally, through ssh, or
/// through any command that runs barge-helper (sudo, podman exec -i, ...).
#[derive(Debug, Parser)]
#[command(name = "barge", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Print nothing but errors, and no progress bars
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also report helper starts and exits, and the helper's stderr
    #[arg(short, long)]
    pub verbose: bool,

    /// Confine every remote path beneath DIR on the helper's side
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Start the helper with CMD, split into words as a shell would
    /// (e.g. "sudo -n /usr/libexec/barge/barge-helper")
    #[arg(long, value_name = "CMD", conflicts_with = "ssh")]
    pub helper: Option<String>,

    /// Run the helper on HOST: ssh -T -o BatchMode=yes [-p PORT]
    /// [USER@]HOST barge-helper
    #[arg(long, value_name = "[USER@]HOST[:PORT]")]
    pub ssh: Option<String>,

    /// With --ssh: the ssh program and any options of its own, split into
    /// words (e.g. "ssh -F ~/.ssh/barge_config -i ~/.ssh/id_barge")
    /// [default: ssh]
    #[arg(long, value_name = "CMD", requires = "ssh")]
    pub ssh_command: Option<String>,

    /// With --ssh: the command ssh runs on HOST [default: barge-helper]
    #[arg(long, value_name = "CMD", requires = "ssh")]
    pub remote_helper: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Op(Op),

    /// Start an interactive shell: the same commands at a prompt, with line
    /// editing and history; ^C cancels the running transfer, ^D or exit
    /// leaves
    Shell,
}

/// A command that works on the remote side.
#[derive(Debug, Subcommand)]
pub enum Op {
    /// Upload LOCAL to REMOTE; REMOTE appears only when complete
    Put {
        #[command(flatten)]
        opts: TransferOpts,
        /// A local file, FIFO or device, or - for standard input; with -r,
        /// a file or directory
        local: PathBuf,
        /// The remote file to create or replace, or a directory to put it
        /// in; with -r, the remote directory to copy LOCAL into
        remote: PathBuf,
    },

    /// Download REMOTE to LOCAL; LOCAL appears only when complete
    Get {
        #[command(flatten)]
        opts: TransferOpts,
        /// The remote file; with -r, a file or directory
        remote: PathBuf,
        /// The local file to create or replace, a directory to put it in,
        /// or - for standard output; with -r, the local directory to copy
        /// REMOTE into
        local: PathBuf,
    },

    /// List a remote directory
    Ls {
        /// Long format: type and mode, links, owner, size, mtime, name
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// The remote directory
        #[arg(default_value = ".")]
        path: PathBuf,
    },

    /// Show a remote file's metadata, following symlinks
    Stat {
        /// The remote path
        path: PathBuf,
    },

    /// Create a remote directory
    Mkdir {
        /// Create missing parents too, and accept an existing directory
        #[arg(short, long)]
        parents: bool,
        /// The remote directory to create
        path: PathBuf,
    },

    /// Remove a remote file, symlink or empty directory
    Rm {
        /// The remote path
        path: PathBuf,
    },

    /// Rename a remote entry, replacing TO if it exists
    Mv {
        /// The remote entry to rename
        from: PathBuf,
        /// Its new remote path
        to: PathBuf,
    },
}

/// Options of `put` and `get`.
#[derive(Debug, Clone, clap::Args)]
pub struct TransferOpts {
    /// Copy a directory recursively, as DEST/NAME: files, directories and
    /// symlinks (as links); special files are skipped
    #[arg(short = 'r', long)]
    pub recursive: bool,

    /// With -r: copy the rest of the tree when an entry fails, and list
    /// every failure at the end
    #[arg(long, requires = "recursive")]
    pub keep_going: bool,

    /// With -r: do not keep modes and modification times
    #[arg(long, requires = "recursive")]
    pub no_preserve: bool,

    /// With -r: keep setuid, setgid and sticky bits (cleared otherwise)
    #[arg(long, requires = "recursive")]
    pub preserve_setid: bool,

    /// Keep the data of an interrupted transfer (hidden, as
    /// .NAME.barge-partial next to the destination) and continue it next
    /// time, after checking it against the source
    #[arg(long, conflicts_with = "recursive")]
    pub resume: bool,
}

/// One line typed at the shell's prompt. `help` and `help COMMAND` come
/// from clap.
#[derive(Debug, Parser)]
#[command(
    name = "barge",
    about = "barge shell: the remote file commands at a prompt",
    no_binary_name = true,
    disable_version_flag = true,
    override_usage = "COMMAND [ARGS]",
    after_help = "^C cancels the running transfer; at the prompt it clears the line. \
                  ^D or exit leaves the shell, with the exit status of the last command."
)]
pub struct ShellLine {
    #[command(subcommand)]
    pub command: ShellCommand,
}

#[derive(Debug, Subcommand)]
pub enum ShellCommand {
    #[command(flatten)]
    Op(Op),

    /// Show the running helper's pid
    Status,

    /// Leave the shell, stopping the helper gracefully (also: quit, ^D)
    #[command(alias = "quit")]
    Exit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
        ShellLine::command().debug_assert();
    }
}
