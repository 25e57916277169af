//! In-process tests of the helper: [`serve`] on a thread, driven over a
//! socketpair by a tiny client built from the codec.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use super::resolve::{self, Resolver};
use super::*;
use crate::atomic_file::is_hidden_temp_name;
use crate::wire::{
    decode_frame, decode_header, encode_frame, encode_header, Frame, FrameType, StatRecord,
    StreamChecksum, HEADER_LEN, VERSION,
};

/// A reply from the helper, owned.
#[derive(Debug, PartialEq)]
enum Got {
    Welcome {
        version: u16,
        features: u64,
        pid: u32,
    },
    Ok,
    Error(i32, String),
    Stat(StatRecord),
    Dirents(Vec<(Vec<u8>, StatRecord)>),
    SourceInfo {
        size: u64,
        mode: u32,
    },
    Data(Vec<u8>),
    End {
        len: u64,
        checksum: u64,
    },
    Cancel,
    Stop,
}

struct Client {
    sock: UnixStream,
    helper: JoinHandle<ServeEnd>,
    last_serial: u64,
}

impl Client {
    /// A helper on a thread, before the handshake.
    fn start(opts: ServerOptions) -> Client {
        let (sock, theirs) = UnixStream::pair().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let helper = std::thread::spawn(move || serve(theirs.as_fd(), theirs.as_fd(), &opts));
        Client {
            sock,
            helper,
            last_serial: 0,
        }
    }

    /// A helper that has welcomed us, with `root` ("" for none).
    fn connect_with(root: &[u8], opts: ServerOptions) -> Client {
        let mut c = Client::start(opts);
        c.hello(1, 1, root);
        match c.recv() {
            (0, Got::Welcome { version: 1, .. }) => {}
            other => panic!("no WELCOME: {other:?}"),
        }
        c
    }

    fn connect(root: &Path) -> Client {
        Client::connect_with(root.as_os_str().as_bytes(), ServerOptions::default())
    }

    fn hello(&mut self, version_min: u16, version_max: u16, root: &[u8]) {
        self.send(
            &Frame::Hello {
                version_min,
                version_max,
                features: !0,
                root,
            },
            0,
        );
    }

    fn send(&mut self, frame: &Frame<'_>, serial: u64) {
        let mut out = Vec::new();
        encode_frame(frame, serial, &mut out).unwrap();
        self.sock.write_all(&out).unwrap();
    }

    /// Send a request with the next serial; returns the serial.
    fn request(&mut self, frame: &Frame<'_>) -> u64 {
        self.last_serial += 1;
        let serial = self.last_serial;
        self.send(frame, serial);
        serial
    }

    fn recv(&mut self) -> (u64, Got) {
        let mut raw = [0u8; HEADER_LEN];
        self.sock
            .read_exact(&mut raw)
            .expect("a frame from the helper");
        let header = decode_header(&raw).unwrap();
        let mut payload = vec![0u8; header.len as usize];
        self.sock.read_exact(&mut payload).unwrap();
        let got = match decode_frame(&header, &payload).unwrap() {
            Frame::Welcome {
                version,
                features,
                pid,
            } => Got::Welcome {
                version,
                features,
                pid,
            },
            Frame::Ok => Got::Ok,
            Frame::Error { errno, message } => {
                Got::Error(errno, String::from_utf8_lossy(message).into_owned())
            }
            Frame::StatInfo(st) => Got::Stat(st),
            Frame::Dirents(d) => Got::Dirents(d.iter().map(|(n, st)| (n.to_vec(), st)).collect()),
            Frame::SourceInfo { size, mode } => Got::SourceInfo { size, mode },
            Frame::Data(d) => Got::Data(d.to_vec()),
            Frame::End { len, checksum } => Got::End { len, checksum },
            Frame::Cancel => Got::Cancel,
            Frame::Stop => Got::Stop,
            other => panic!("the helper sent {:?}", other.kind()),
        };
        (header.serial, got)
    }

    /// The next frame, which must be for `serial`.
    fn recv_for(&mut self, serial: u64) -> Got {
        let (s, got) = self.recv();
        assert_eq!(s, serial, "frame {got:?} for the wrong serial");
        got
    }

    fn expect_error(&mut self, serial: u64) -> (i32, String) {
        match self.recv_for(serial) {
            Got::Error(errno, message) => (errno, message),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }

    /// Nothing arrives within `wait`.
    fn assert_silent(&mut self, wait: Duration) {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        match self.sock.read(&mut b) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.sock
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
    }

    fn stat(&mut self, path: &[u8]) -> Result<StatRecord, (i32, String)> {
        let serial = self.request(&Frame::Stat { path });
        match self.recv_for(serial) {
            Got::Stat(st) => Ok(st),
            Got::Error(errno, m) => Err((errno, m)),
            other => panic!("{other:?}"),
        }
    }

    /// A simple request whose only reply is OK or ERROR.
    fn ok_or_errno(&mut self, frame: &Frame<'_>) -> Result<(), i32> {
        let serial = self.request(frame);
        match self.recv_for(serial) {
            Got::Ok => Ok(()),
            Got::Error(errno, _) => Err(errno),
            other => panic!("{other:?}"),
        }
    }

    /// Upload `data` in `chunk`-byte DATA frames and END; the final reply.
    fn put(&mut self, path: &[u8], data: &[u8], chunk: usize) -> Got {
        let serial = self.start_put(path, data, chunk);
        let mut sum = StreamChecksum::new();
        sum.update(data);
        self.send(
            &Frame::End {
                len: sum.len(),
                checksum: sum.digest(),
            },
            serial,
        );
        self.recv_for(serial)
    }

    /// PUT and its DATA frames, without a terminator.
    fn start_put(&mut self, path: &[u8], data: &[u8], chunk: usize) -> u64 {
        let serial = self.request(&Frame::Put {
            mode: 0o600,
            size: data.len() as u64,
            path,
        });
        for piece in data.chunks(chunk) {
            self.send_data(piece, serial);
        }
        serial
    }

    fn send_data(&mut self, piece: &[u8], serial: u64) {
        self.sock
            .write_all(&encode_header(FrameType::Data, piece.len() as u32, serial))
            .unwrap();
        self.sock.write_all(piece).unwrap();
    }

    /// Download `path`: SOURCE_INFO, the DATA payloads, and how it ended.
    fn get(&mut self, path: &[u8], chunk: u32) -> (Got, Vec<Vec<u8>>, Got, Got) {
        let serial = self.request(&Frame::Get { chunk, path });
        let info = self.recv_for(serial);
        let mut pieces = Vec::new();
        if let Got::Error(..) = info {
            return (info, pieces, Got::Ok, Got::Ok);
        }
        loop {
            match self.recv_for(serial) {
                Got::Data(d) => pieces.push(d),
                end => return (info, pieces, end, self.recv_for(serial)),
            }
        }
    }

    /// Close our end and wait for serve to return.
    fn hang_up(self) -> ServeEnd {
        drop(self.sock);
        self.helper.join().unwrap()
    }

    fn shutdown(mut self) -> ServeEnd {
        let serial = self.request(&Frame::Shutdown);
        assert_eq!(self.recv_for(serial), Got::Ok);
        self.helper.join().unwrap()
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "barge-srv-{tag}-{}-{}",
            std::process::id(),
            crate::sys::random_suffix()
        ));
        std::fs::create_dir(&d).unwrap();
        TempDir(d)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn has_hidden_temp(&self) -> bool {
        self.names()
            .iter()
            .any(|n| is_hidden_temp_name(n.as_bytes()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn opts_with_fault(spec: &str) -> ServerOptions {
    ServerOptions {
        fault: Fault::parse(spec).unwrap(),
        debug: false,
    }
}

// ---- handshake ----

#[test]
fn handshake_chooses_version_1_and_the_supported_features() {
    let mut c = Client::start(ServerOptions::default());
    c.hello(1, 5, b"");
    assert_eq!(
        c.recv(),
        (
            0,
            Got::Welcome {
                version: VERSION,
                features: super::session::SUPPORTED_FEATURES,
                pid: std::process::id()
            }
        )
    );
    assert_eq!(c.shutdown(), ServeEnd::Shutdown);
}

#[test]
fn version_mismatch_gives_eprotonosupport() {
    let mut c = Client::start(ServerOptions::default());
    c.hello(2, 3, b"");
    let (errno, message) = c.expect_error(0);
    assert_eq!(errno, libc::EPROTONOSUPPORT);
    assert!(
        message.contains("version 1") && message.contains("2..3"),
        "{message}"
    );
    assert_eq!(c.helper.join().unwrap(), ServeEnd::Refused);
}

#[test]
fn version_fault_refuses_a_v1_client() {
    let mut c = Client::start(opts_with_fault("version=2"));
    c.hello(1, 1, b"");
    assert_eq!(c.expect_error(0).0, libc::EPROTONOSUPPORT);
}

#[test]
fn missing_root_gives_enoent() {
    let mut c = Client::start(ServerOptions::default());
    c.hello(1, 1, b"/nonexistent/barge-root");
    let (errno, message) = c.expect_error(0);
    assert_eq!(errno, libc::ENOENT);
    assert!(
        message.starts_with("root /nonexistent/barge-root: "),
        "{message}"
    );
    assert_eq!(c.helper.join().unwrap(), ServeEnd::Refused);
}

#[test]
fn a_request_before_hello_is_a_protocol_error() {
    let mut c = Client::start(ServerOptions::default());
    c.send(&Frame::Stat { path: b"/" }, 1);
    let (errno, message) = c.expect_error(0);
    assert_eq!(errno, libc::EPROTO);
    assert!(message.contains("STAT"), "{message}");
    assert_eq!(c.helper.join().unwrap(), ServeEnd::ProtocolError);
}

#[test]
fn garbage_input_gets_eproto_and_serve_fails() {
    let d = TempDir::new("garbage");
    let mut c = Client::connect(d.path());
    c.sock.write_all(b"Welcome to the shell!\r\n").unwrap();
    let (_, got) = c.recv();
    assert!(matches!(got, Got::Error(libc::EPROTO, _)), "{got:?}");
    assert_eq!(c.helper.join().unwrap(), ServeEnd::ProtocolError);
}

#[test]
fn data_while_idle_is_a_protocol_error_naming_the_frame() {
    let d = TempDir::new("idle-data");
    let mut c = Client::connect(d.path());
    c.send_data(b"xyz", 7);
    let (errno, message) = c.expect_error(7);
    assert_eq!(errno, libc::EPROTO);
    assert_eq!(message, "unexpected DATA (0x20) for serial 7 while idle");
    assert_eq!(c.helper.join().unwrap(), ServeEnd::ProtocolError);
}

#[test]
fn eof_ends_serve_cleanly() {
    let d = TempDir::new("eof");
    let c = Client::connect(d.path());
    assert_eq!(c.hang_up(), ServeEnd::Eof);
}

#[test]
fn eof_mid_upload_leaves_no_file() {
    let d = TempDir::new("eof-put");
    let mut c = Client::connect(d.path());
    c.start_put(b"/f", &pattern(10000), 4096);
    assert_eq!(c.hang_up(), ServeEnd::ChannelLost);
    assert!(d.names().is_empty(), "{:?}", d.names());
}

#[test]
fn shutdown_can_be_ignored_by_fault() {
    let d = TempDir::new("ign-shut");
    let mut c = Client::connect_with(
        d.path().as_os_str().as_bytes(),
        opts_with_fault("ignore-shutdown"),
    );
    c.request(&Frame::Shutdown);
    c.assert_silent(Duration::from_millis(200));
    assert!(c.stat(b"/").is_ok(), "still serving");
    assert_eq!(c.hang_up(), ServeEnd::Eof);
}

// ---- simple requests ----

#[test]
fn stat_follows_symlinks() {
    let d = TempDir::new("stat");
    std::fs::write(d.join("f"), b"12345").unwrap();
    symlink("f", d.join("link")).unwrap();
    let mut c = Client::connect(d.path());
    let st = c.stat(b"/link").unwrap();
    assert_eq!(st.size, 5);
    assert_eq!(st.mode & libc::S_IFMT, libc::S_IFREG);
    let (errno, message) = c.stat(b"/missing").unwrap_err();
    assert_eq!(errno, libc::ENOENT);
    assert_eq!(message, "stat /missing: No such file or directory");
    assert!(c.stat(b"").unwrap().mode & libc::S_IFMT == libc::S_IFDIR);
}

#[test]
fn list_spans_several_frames_and_reports_symlinks_as_symlinks() {
    let d = TempDir::new("list");
    for i in 0..3000 {
        File::create(d.join(&format!("entry-with-a-longish-name-{i:05}"))).unwrap();
    }
    symlink("nowhere", d.join("dangling")).unwrap();
    let mut c = Client::connect(d.path());
    let serial = c.request(&Frame::List { path: b"/" });
    let mut frames = 0;
    let mut entries = Vec::new();
    loop {
        match c.recv_for(serial) {
            Got::Dirents(e) => {
                frames += 1;
                entries.extend(e);
            }
            Got::Ok => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(frames > 1, "{frames} DIRENTS frames");
    assert_eq!(entries.len(), 3001);
    let (_, st) = entries.iter().find(|(n, _)| n == b"dangling").unwrap();
    assert_eq!(st.mode & libc::S_IFMT, libc::S_IFLNK);
    assert!(!entries.iter().any(|(n, _)| n == b"." || n == b".."));
}

#[test]
fn list_stopped_by_the_client_ends_with_ecanceled() {
    let d = TempDir::new("list-stop");
    for i in 0..3000 {
        File::create(d.join(&format!("entry-with-a-longish-name-{i:05}"))).unwrap();
    }
    let mut c = Client::connect(d.path());
    // LIST and STOP in one write, so the STOP is waiting before the first
    // DIRENTS frame.
    let mut out = Vec::new();
    encode_frame(&Frame::List { path: b"/" }, 1, &mut out).unwrap();
    encode_frame(&Frame::Stop, 1, &mut out).unwrap();
    c.sock.write_all(&out).unwrap();
    c.last_serial = 1;
    assert_eq!(c.expect_error(1).0, libc::ECANCELED);
    assert!(c.stat(b"/").is_ok());
}

#[test]
fn mkdir_with_parents_creates_missing_components_and_tolerates_existing() {
    let d = TempDir::new("mkdir");
    let mut c = Client::connect(d.path());
    let mkdir = |path, parents| Frame::Mkdir {
        mode: 0o755,
        parents,
        path,
    };
    assert_eq!(c.ok_or_errno(&mkdir(b"/a/b/c/", true)), Ok(()));
    assert!(d.join("a/b/c").is_dir());
    assert_eq!(c.ok_or_errno(&mkdir(b"/a/b/c", true)), Ok(()));
    assert_eq!(c.ok_or_errno(&mkdir(b"/a/b", false)), Err(libc::EEXIST));
    assert_eq!(c.ok_or_errno(&mkdir(b"/x/y", false)), Err(libc::ENOENT));
    assert_eq!(c.ok_or_errno(&mkdir(b"/a/d", false)), Ok(()));
    std::fs::write(d.join("file"), b"").unwrap();
    assert_eq!(c.ok_or_errno(&mkdir(b"/file", true)), Err(libc::EEXIST));
}

#[test]
fn remove_deletes_files_and_empty_directories_only() {
    let d = TempDir::new("remove");
    std::fs::write(d.join("f"), b"x").unwrap();
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::create_dir_all(d.join("full/sub")).unwrap();
    let mut c = Client::connect(d.path());
    assert_eq!(c.ok_or_errno(&Frame::Remove { path: b"/f" }), Ok(()));
    assert_eq!(c.ok_or_errno(&Frame::Remove { path: b"/empty" }), Ok(()));
    assert_eq!(
        c.ok_or_errno(&Frame::Remove { path: b"/full" }),
        Err(libc::ENOTEMPTY)
    );
    assert_eq!(
        c.ok_or_errno(&Frame::Remove { path: b"/f" }),
        Err(libc::ENOENT)
    );
    assert_eq!(d.names(), vec!["full"]);
}

#[test]
fn rename_moves_between_directories() {
    let d = TempDir::new("rename");
    std::fs::write(d.join("a"), b"data").unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    let mut c = Client::connect(d.path());
    let rename = Frame::Rename {
        from: b"/a",
        to: b"/sub/b",
    };
    assert_eq!(c.ok_or_errno(&rename), Ok(()));
    assert_eq!(std::fs::read(d.join("sub/b")).unwrap(), b"data");
    let serial = c.request(&rename);
    let (errno, message) = c.expect_error(serial);
    assert_eq!(errno, libc::ENOENT);
    assert!(message.starts_with("rename /a to /sub/b: "), "{message}");
}

#[test]
fn stray_stop_between_requests_is_ignored() {
    let d = TempDir::new("stray");
    let mut c = Client::connect(d.path());
    c.send(&Frame::Stop, 99);
    assert!(c.stat(b"/").is_ok());
    assert_eq!(c.shutdown(), ServeEnd::Shutdown);
}

// ---- PUT ----

#[test]
fn put_commits_the_exact_bytes() {
    let d = TempDir::new("put");
    let data = pattern(1_000_003);
    let mut c = Client::connect(d.path());
    assert_eq!(c.put(b"/out.bin", &data, 65536), Got::Ok);
    assert_eq!(std::fs::read(d.join("out.bin")).unwrap(), data);
    let mode = std::fs::metadata(d.join("out.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(c.put(b"/empty", b"", 4096), Got::Ok);
    assert_eq!(std::fs::read(d.join("empty")).unwrap(), b"");
    assert_eq!(d.names(), vec!["empty", "out.bin"]);
}

#[test]
fn put_with_a_bad_checksum_gives_ebadmsg_and_no_file() {
    let d = TempDir::new("put-sum");
    let mut c = Client::connect(d.path());
    let serial = c.start_put(b"/f", &pattern(10000), 4096);
    c.send(
        &Frame::End {
            len: 10000,
            checksum: 12345,
        },
        serial,
    );
    let (errno, message) = c.expect_error(serial);
    assert_eq!(errno, libc::EBADMSG);
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(d.names().is_empty(), "{:?}", d.names());
}

#[test]
fn put_cancelled_by_the_client_keeps_the_old_file() {
    let d = TempDir::new("put-cancel");
    std::fs::write(d.join("f"), b"old").unwrap();
    let mut c = Client::connect(d.path());
    let serial = c.start_put(b"/f", &pattern(10000), 4096);
    c.send(&Frame::Cancel, serial);
    let (errno, message) = c.expect_error(serial);
    assert_eq!(errno, libc::ECANCELED);
    assert_eq!(message, "upload of /f cancelled by the client");
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"old");
    assert!(!d.has_hidden_temp());
    assert_eq!(d.names(), vec!["f"]);
}

#[test]
fn put_into_a_missing_directory_stops_the_stream_then_fails() {
    let d = TempDir::new("put-enoent");
    let mut c = Client::connect(d.path());
    let serial = c.start_put(b"/no/such/f", &pattern(5000), 4096);
    assert_eq!(c.recv_for(serial), Got::Stop);
    c.send(&Frame::Cancel, serial);
    let (errno, message) = c.expect_error(serial);
    assert_eq!(errno, libc::ENOENT);
    assert!(message.starts_with("open /no/such/f: "), "{message}");
    assert!(c.stat(b"/").is_ok(), "in step after the failure");
}

#[test]
fn put_write_fault_stops_and_reports_its_errno() {
    let d = TempDir::new("put-fail");
    std::fs::write(d.join("f"), b"old").unwrap();
    let mut c = Client::connect_with(
        d.path().as_os_str().as_bytes(),
        opts_with_fault("fail@8192:ENOSPC"),
    );
    let data = pattern(20000);
    let serial = c.start_put(b"/f", &data, 4096);
    assert_eq!(c.recv_for(serial), Got::Stop);
    let mut sum = StreamChecksum::new();
    sum.update(&data);
    c.send(
        &Frame::End {
            len: sum.len(),
            checksum: sum.digest(),
        },
        serial,
    );
    let (errno, message) = c.expect_error(serial);
    assert_eq!(errno, libc::ENOSPC);
    assert!(message.starts_with("write /f: "), "{message}");
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"old");
    assert!(!d.has_hidden_temp());
}

#[test]
fn both_ends_cancelling_at_once_get_exactly_one_final_reply() {
    let d = TempDir::new("both");
    let mut c = Client::connect_with(d.path().as_os_str().as_bytes(), opts_with_fault("cancel@0"));
    // The client cancels without waiting, while the helper's fault sends
    // STOP at the first DATA.
    let serial = c.start_put(b"/f", &pattern(4096), 4096);
    c.send(&Frame::Cancel, serial);
    assert_eq!(c.recv_for(serial), Got::Stop);
    let (errno, message) = c.expect_error(serial);
    assert_eq!(errno, libc::ECANCELED);
    assert!(message.contains("(test fault)"), "{message}");
    // The next frame belongs to the next request: nothing else was owed.
    let next = c.request(&Frame::Stat { path: b"/" });
    assert!(matches!(c.recv_for(next), Got::Stat(_)));
    assert!(d.names().is_empty());
}

#[test]
fn transfer_faults_honour_the_path_filter() {
    let d = TempDir::new("filter");
    let mut opts = opts_with_fault("cancel@0");
    opts.fault.path_filter = Some(b"slow".to_vec());
    let mut c = Client::connect_with(d.path().as_os_str().as_bytes(), opts);
    assert_eq!(c.put(b"/fast", &pattern(5000), 4096), Got::Ok);
    let serial = c.start_put(b"/slow", &pattern(5000), 4096);
    assert_eq!(c.recv_for(serial), Got::Stop);
    c.send(&Frame::Cancel, serial);
    assert_eq!(c.expect_error(serial).0, libc::ECANCELED);
    assert_eq!(d.names(), vec!["fast"]);
}

// ---- GET ----

#[test]
fn get_sends_the_bytes_in_chunks_of_the_asked_size() {
    let d = TempDir::new("get");
    let data = pattern(10000);
    std::fs::write(d.join("f"), &data).unwrap();
    let mut c = Client::connect(d.path());
    let (info, pieces, end, fin) = c.get(b"/f", 4096);
    assert!(
        matches!(info, Got::SourceInfo { size: 10000, mode } if mode & libc::S_IFMT == libc::S_IFREG)
    );
    assert_eq!(
        pieces.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4096, 4096, 1808]
    );
    assert_eq!(pieces.concat(), data);
    let mut sum = StreamChecksum::new();
    sum.update(&data);
    assert_eq!(
        end,
        Got::End {
            len: 10000,
            checksum: sum.digest()
        }
    );
    assert_eq!(fin, Got::Ok);
}

#[test]
fn get_of_a_missing_file_fails_without_a_stream() {
    let d = TempDir::new("get-enoent");
    let mut c = Client::connect(d.path());
    let (info, ..) = c.get(b"/missing", 4096);
    assert!(
        matches!(info, Got::Error(libc::ENOENT, ref m) if m.starts_with("open /missing: ")),
        "{info:?}"
    );
    let (info, ..) = c.get(b"/", 4096);
    assert!(matches!(info, Got::Error(libc::EISDIR, _)), "{info:?}");
}

#[test]
fn get_stopped_mid_stream_sends_cancel_then_ecanceled() {
    let d = TempDir::new("get-stop");
    std::fs::write(d.join("big"), pattern(8 << 20)).unwrap();
    let mut c = Client::connect(d.path());
    let serial = c.request(&Frame::Get {
        chunk: 4096,
        path: b"/big",
    });
    assert!(matches!(c.recv_for(serial), Got::SourceInfo { .. }));
    assert!(matches!(c.recv_for(serial), Got::Data(_)));
    c.send(&Frame::Stop, serial);
    let mut data_after_stop = 0;
    loop {
        match c.recv_for(serial) {
            Got::Data(_) => data_after_stop += 1,
            Got::Cancel => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(data_after_stop < 2047, "the helper never saw the STOP");
    let (errno, message) = c.expect_error(serial);
    assert_eq!(errno, libc::ECANCELED);
    assert_eq!(message, "download of /big cancelled by the client");
    assert!(c.stat(b"/big").is_ok());
}

#[test]
fn get_stop_waiting_before_the_first_chunk_sends_no_data() {
    let d = TempDir::new("get-stop0");
    std::fs::write(d.join("f"), pattern(100000)).unwrap();
    let mut c = Client::connect(d.path());
    let mut out = Vec::new();
    encode_frame(
        &Frame::Get {
            chunk: 4096,
            path: b"/f",
        },
        1,
        &mut out,
    )
    .unwrap();
    encode_frame(&Frame::Stop, 1, &mut out).unwrap();
    c.sock.write_all(&out).unwrap();
    assert!(matches!(
        c.recv_for(1),
        Got::SourceInfo { size: 100000, .. }
    ));
    assert_eq!(c.recv_for(1), Got::Cancel);
    assert_eq!(c.expect_error(1).0, libc::ECANCELED);
}

#[test]
fn get_faults_cancel_or_fail_after_their_byte_count() {
    let d = TempDir::new("get-fault");
    std::fs::write(d.join("f"), pattern(20000)).unwrap();
    let root = d.path().as_os_str().as_bytes();

    let mut c = Client::connect_with(root, opts_with_fault("cancel@8192"));
    let (_, pieces, end, fin) = c.get(b"/f", 4096);
    assert_eq!(pieces.concat().len(), 8192);
    assert_eq!(end, Got::Cancel);
    assert!(
        matches!(fin, Got::Error(libc::ECANCELED, ref m) if m.contains("(test fault)")),
        "{fin:?}"
    );

    let mut c = Client::connect_with(root, opts_with_fault("fail@4096:EIO"));
    let (_, pieces, end, fin) = c.get(b"/f", 4096);
    assert_eq!(pieces.len(), 1);
    assert_eq!(end, Got::Cancel);
    assert!(
        matches!(fin, Got::Error(libc::EIO, ref m) if m.starts_with("read /f: ")),
        "{fin:?}"
    );
}

#[test]
fn stall_fault_goes_silent_mid_download() {
    let d = TempDir::new("stall");
    std::fs::write(d.join("f"), pattern(20000)).unwrap();
    let mut c = Client::connect_with(
        d.path().as_os_str().as_bytes(),
        opts_with_fault("stall@4096"),
    );
    let serial = c.request(&Frame::Get {
        chunk: 4096,
        path: b"/f",
    });
    assert!(matches!(c.recv_for(serial), Got::SourceInfo { .. }));
    assert!(matches!(c.recv_for(serial), Got::Data(_)));
    c.assert_silent(Duration::from_millis(300));
    // The helper thread sleeps forever; it is left behind on purpose.
}

// ---- the root ----

#[test]
fn dotdot_above_the_root_is_exdev() {
    let d = TempDir::new("exdev");
    let mut c = Client::connect(d.path());
    let (errno, message) = c.stat(b"../x").unwrap_err();
    assert_eq!(errno, libc::EXDEV);
    assert_eq!(message, "stat ../x: path escapes the root");
    let serial = c.start_put(b"/a/../../x", b"data", 4096);
    assert_eq!(c.recv_for(serial), Got::Stop);
    c.send(&Frame::Cancel, serial);
    assert_eq!(c.expect_error(serial).0, libc::EXDEV);
}

#[test]
fn absolute_symlink_stays_inside_the_root() {
    let root = TempDir::new("abs-root");
    let outside = TempDir::new("abs-outside");
    symlink(outside.path(), root.join("abs")).unwrap();
    // The same absolute path, re-created inside the root.
    let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    let mut c = Client::connect(root.path());
    assert_eq!(c.put(b"/abs/f", b"data", 4096), Got::Ok);
    assert_eq!(std::fs::read(inside.join("f")).unwrap(), b"data");
    assert!(outside.names().is_empty(), "{:?}", outside.names());
}

#[test]
fn relative_symlink_cannot_climb_out_of_the_root() {
    let root = TempDir::new("rel-root");
    std::fs::create_dir(root.join("sub")).unwrap();
    symlink("../../../../../../..", root.join("sub/up")).unwrap();
    let mut c = Client::connect(root.path());
    // `up` lands on the root, so `tmp` is looked for inside it.
    assert_eq!(c.stat(b"/sub/up/tmp").unwrap_err().0, libc::ENOENT);
    assert_eq!(c.put(b"/sub/up/f", b"data", 4096), Got::Ok);
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"data");
}

#[test]
fn proc_magic_links_are_refused() {
    let outside = TempDir::new("magic");
    let dir = File::open(outside.path()).unwrap();
    let mut c = Client::connect(Path::new("/"));
    let via_fd = format!("/proc/self/fd/{}", dir.as_raw_fd());
    assert_eq!(c.stat(via_fd.as_bytes()).unwrap_err().0, libc::ELOOP);
    assert_eq!(c.stat(b"/proc/self/root/tmp").unwrap_err().0, libc::ELOOP);
    let serial = c.start_put(format!("{via_fd}/f").as_bytes(), b"data", 4096);
    assert_eq!(c.recv_for(serial), Got::Stop);
    c.send(&Frame::Cancel, serial);
    assert_eq!(c.expect_error(serial).0, libc::ELOOP);
    assert!(outside.names().is_empty());
}

/// What a resolver makes of a path: the file's inode, or the errno.
fn resolve_outcome(r: &Resolver, path: &[u8]) -> Result<u64, i32> {
    match r.open(path, libc::O_PATH) {
        Ok(fd) => Ok(super::fs::fstat(fd.as_fd()).unwrap().st_ino),
        Err(f) => Err(f.errno),
    }
}

fn resolvers(root: &Path) -> (Resolver, Resolver) {
    let open = || -> OwnedFd { resolve::open_root(root.as_os_str().as_bytes()).unwrap() };
    (
        Resolver::rooted(open()),
        Resolver::rooted(open()).walking_by_hand(),
    )
}

#[test]
fn walking_by_hand_resolves_like_openat2() {
    let root = TempDir::new("walk");
    let outside = TempDir::new("walk-out");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/file"), b"x").unwrap();
    std::fs::write(root.join("top"), b"y").unwrap();
    symlink(outside.path(), root.join("abs")).unwrap();
    symlink("../../../../../..", root.join("a/up")).unwrap();
    symlink("/a/b", root.join("a/rooted")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    let (kernel, by_hand) = resolvers(root.path());
    let cases: &[(&[u8], Option<i32>)] = &[
        (b"/a/b/file", None),
        (b"a/./b/../b/file", None),
        (b"/a/up/top", None),
        (b"/a/rooted/file", None),
        (b"/a/rooted/../../top", None),
        (b"", None),
        (b"/abs", Some(libc::ENOENT)),
        (b"../x", Some(libc::EXDEV)),
        (b"/a/../../x", Some(libc::EXDEV)),
        (b"/loop1", Some(libc::ELOOP)),
        (b"/top/x", Some(libc::ENOTDIR)),
        (b"/top/", Some(libc::ENOTDIR)),
        (b"/a/rooted/", None),
    ];
    for &(path, errno) in cases {
        let want = resolve_outcome(&kernel, path);
        let got = resolve_outcome(&by_hand, path);
        let shown = String::from_utf8_lossy(path);
        assert_eq!(got, want, "{shown}");
        match errno {
            Some(e) => assert_eq!(got, Err(e), "{shown}"),
            None => assert!(got.is_ok(), "{shown}: {got:?}"),
        }
    }
    assert_eq!(
        resolve_outcome(&by_hand, b"/a/up/top"),
        resolve_outcome(&by_hand, b"/top")
    );
}

#[test]
fn walking_by_hand_refuses_magic_links_like_openat2() {
    let outside = TempDir::new("walk-magic");
    let dir = File::open(outside.path()).unwrap();
    let (kernel, by_hand) = resolvers(Path::new("/"));
    let via_fd = format!("/proc/self/fd/{}", dir.as_raw_fd());
    for path in [via_fd.as_bytes(), b"/proc/self/root/tmp", b"/proc/self/cwd"] {
        assert_eq!(resolve_outcome(&kernel, path), Err(libc::ELOOP));
        assert_eq!(resolve_outcome(&by_hand, path), Err(libc::ELOOP));
    }
    // Ordinary procfs symlinks are followed by both.
    assert!(resolve_outcome(&by_hand, b"/proc/self/status").is_ok());
    assert!(resolve_outcome(&kernel, b"/proc/self/status").is_ok());
}

/// GET_PARTIAL of a FIFO falls back to a plain GET on the fd it already
/// opened. Opening the FIFO twice could lose data: a writer released by
/// the first open may write and close before the second. inotify counts
/// the helper's closes of the FIFO (IN_CLOSE_NOWRITE; the writer's is
/// IN_CLOSE_WRITE), which an open between them keeps from merging.
#[test]
fn get_partial_of_a_fifo_opens_it_once() {
    let dir = TempDir::new("fifo-once");
    let fifo = dir.path().join("f");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; no other pointers.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // SAFETY: no pointers.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    assert!(raw >= 0);
    // SAFETY: a fresh fd owned by nobody else.
    let watch = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let mask = libc::IN_OPEN | libc::IN_CLOSE_NOWRITE;
    // SAFETY: a NUL-terminated path and an open inotify fd.
    assert!(unsafe { libc::inotify_add_watch(raw, c_path.as_ptr(), mask) } >= 0);
    let w_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(w_path)
            .unwrap();
        f.write_all(b"hello").unwrap();
    });
    let mut c = Client::connect(dir.path());
    let serial = c.request(&Frame::Resume(crate::wire::ResumeFrame::Get {
        chunk: 4096,
        offset: 0,
        checksum: 0,
        path: b"/f",
    }));
    let mut data = Vec::new();
    loop {
        match c.recv_for(serial) {
            Got::Data(d) => data.extend_from_slice(&d),
            Got::Ok => break,
            Got::SourceInfo { .. } | Got::End { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(data, b"hello");
    // The helper has dropped the request's fd once it answers the next.
    let serial = c.request(&Frame::Stat { path: b"/" });
    assert!(matches!(c.recv_for(serial), Got::Stat(_)));
    let mut buf = [0u8; 4096];
    let n = File::from(watch).read(&mut buf).unwrap();
    let (mut at, mut closes) = (0, 0);
    while at < n {
        // SAFETY: the kernel wrote whole inotify_event records, each
        // followed by `len` name bytes; read_unaligned copes with the
        // buffer's alignment.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        if ev.mask & libc::IN_CLOSE_NOWRITE != 0 {
            closes += 1;
        }
        at += std::mem::size_of::<libc::inotify_event>() + ev.len as usize;
    }
    assert_eq!(
        closes, 1,
        "the helper opened and closed the FIFO {closes} times"
    );
}
