//! The command that starts the helper: `--helper CMD`, or the ssh command
//! line `--ssh` builds.
//!
//! ssh runs with `BatchMode=yes`. The library starts the helper (here: ssh)
//! in a process group of its own, so that a terminal's ^C reaches only
//! barge. A process outside the terminal's foreground group cannot read
//! from the terminal, so ssh could not ask for a password or a host-key
//! confirmation anyway; BatchMode makes it fail at once with a clear error
//! instead of stopping on a read it will never get to make.

use std::ffi::OsString;

/// Where `--ssh` connects: `[USER@]HOST[:PORT]`; an IPv6 address with a
/// port is written `[ADDR]:PORT`.
#[derive(Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub destination: String,
    pub port: Option<u16>,
}

pub fn parse_ssh_target(spec: &str) -> Result<SshTarget, String> {
    let (user, rest) = match spec.rfind('@') {
        Some(i) => (Some(&spec[..i]), &spec[i + 1..]),
        None => (None, spec),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("--ssh {spec}: '[' without ']'"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(format!("--ssh {spec}: unexpected text after ']'")),
            },
        }
    } else {
        match rest.split_once(':') {
            // Two or more colons: a bare IPv6 address, without a port.
            Some((_, p)) if p.contains(':') => (rest, None),
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("--ssh {spec}: no host"));
    }
    if host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
        return Err(format!(
            "--ssh {spec}: a host or user may not start with '-'"
        ));
    }
    if user == Some("") {
        return Err(format!("--ssh {spec}: empty user name before '@'"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("--ssh {spec}: bad port {p:?}")),
        },
    };
    let destination = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    Ok(SshTarget { destination, port })
}

/// Split a command given as one string into words, with the shell's
/// quoting rules (no expansion).
pub fn split_command(what: &str, cmd: &str) -> Result<Vec<String>, String> {
    let words = shell_words::split(cmd).map_err(|e| format!("{what} {cmd:?}: {e}"))?;
    if words.is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(words)
}

/// `SSH_COMMAND -T -o BatchMode=yes [-p PORT] DESTINATION REMOTE_HELPER`.
/// ssh hands REMOTE_HELPER to the remote user's shell as one command line.
pub fn ssh_argv(
    target: &SshTarget,
    ssh_command: &str,
    remote_helper: &str,
) -> Result<Vec<OsString>, String> {
    let mut argv: Vec<OsString> = split_command("--ssh-command", ssh_command)?
        .into_iter()
        .map(OsString::from)
        .collect();
    if remote_helper.trim().is_empty() {
        return Err("--remote-helper is empty".into());
    }
    argv.extend(["-T", "-o", "BatchMode=yes"].map(OsString::from));
    if let Some(port) = target.port {
        argv.push("-p".into());
        argv.push(port.to_string().into());
    }
    argv.push(target.destination.clone().into());
    argv.push(remote_helper.into());
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(d: &str, p: Option<u16>) -> SshTarget {
        SshTarget {
            destination: d.into(),
            port: p,
        }
    }

    #[test]
    fn targets() {
        assert_eq!(parse_ssh_target("host").unwrap(), t("host", None));
        assert_eq!(parse_ssh_target("me@host").unwrap(), t("me@host", None));
        assert_eq!(
            parse_ssh_target("me@10.0.0.1:2222").unwrap(),
            t("me@10.0.0.1", Some(2222))
        );
        assert_eq!(parse_ssh_target("::1").unwrap(), t("::1", None));
        assert_eq!(parse_ssh_target("[::1]:22").unwrap(), t("::1", Some(22)));
        assert_eq!(
            parse_ssh_target("u@[fe80::1]").unwrap(),
            t("u@fe80::1", None)
        );
        for bad in [
            "",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "@host",
            "-oProxyCommand=x",
            "[::1",
            "[::1]x",
            "me@",
        ] {
            assert!(parse_ssh_target(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn argv() {
        let a = ssh_argv(
            &t("me@h", Some(2222)),
            "ssh -F '/tmp/my config'",
            "/opt/barge-helper",
        )
        .unwrap();
        assert_eq!(
            a,
            [
                "ssh",
                "-F",
                "/tmp/my config",
                "-T",
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "me@h",
                "/opt/barge-helper"
            ]
            .map(OsString::from)
        );
        let a = ssh_argv(&t("h", None), "ssh", "barge-helper").unwrap();
        assert_eq!(
            a,
            ["ssh", "-T", "-o", "BatchMode=yes", "h", "barge-helper"].map(OsString::from)
        );
        assert!(ssh_argv(&t("h", None), "ssh 'unclosed", "barge-helper").is_err());
        assert!(ssh_argv(&t("h", None), "", "barge-helper").is_err());
        assert!(ssh_argv(&t("h", None), "ssh", " ").is_err());
    }
}
