//! Replays the committed fuzz corpora (`fuzz/corpus/TARGET/`) and the
//! fixed crash reproducers (`fuzz/regressions/TARGET/`, when present)
//! through the fuzz target bodies in `barge::fuzzing`, with the same
//! allocation caps as the fuzz binaries. A target that panics, aborts on
//! a cap, or runs over its time budget fails the test; so does an empty
//! or missing corpus. `RELIABILITY.md` says how the corpora are made.
//!
//! `cargo test --test fuzz_replay -- --ignored write_seeds` (re)writes the
//! seed inputs, built from the codec and from recorded real sessions, into
//! `fuzz/seeds/TARGET/` for `fuzz/run.sh` to start from.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: barge::fuzzing::CappedAlloc = barge::fuzzing::CappedAlloc;

/// Replay time per target in a debug build. An input that hangs fails
/// the test when this runs out; a corpus that outgrows it should be
/// minimised again (`fuzz/run.sh TARGET --merge`).
const BUDGET: Duration = Duration::from_secs(30);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("read a corpus entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Replay `target` on a thread, and fail when it panics or does not
/// finish within [`BUDGET`] (a hang).
fn replay(target: &'static str) {
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        replay_all(target);
        let _ = done.send(());
    });
    match finished.recv_timeout(BUDGET) {
        Ok(()) => worker.join().expect("replay thread"),
        // The sender is gone without sending: the replay panicked.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = worker.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("replaying {target} did not finish within {BUDGET:?}: an input hangs (FUZZ_REPLAY_VERBOSE=1 names each input), or the corpus needs minimising")
        }
    }
}

fn replay_all(target: &str) {
    let body = barge::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target")
        .1;
    let corpus = fuzz_dir().join("corpus").join(target);
    let mut files = files_in(&corpus);
    assert!(
        !files.is_empty(),
        "{} is missing or empty: nothing would be replayed",
        corpus.display()
    );
    files.extend(files_in(&fuzz_dir().join("regressions").join(target)));
    let start = Instant::now();
    for f in &files {
        let data = std::fs::read(f).expect("read a corpus file");
        // A panic names the input it came from.
        struct Name<'a>(&'a Path);
        impl Drop for Name<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("fuzz_replay: the failing input is {}", self.0.display());
                }
            }
        }
        let _name = Name(f);
        if std::env::var_os("FUZZ_REPLAY_VERBOSE").is_some() {
            eprintln!("fuzz_replay: {}", f.display());
        }
        body(&data);
    }
    eprintln!(
        "fuzz_replay: {target}: {} inputs in {:.1} s",
        files.len(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn wire_corpus_replays() {
    replay("wire");
}

#[test]
fn client_corpus_replays() {
    replay("client");
}

#[test]
fn server_corpus_replays() {
    replay("server");
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<&str> = barge::fuzzing::TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(names, ["wire", "client", "server"]);
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seeds() {
    for (target, name, bytes) in barge::fuzzing::seeds() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).expect("mkdir seeds");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
