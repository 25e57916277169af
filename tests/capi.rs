//! The C API's promises, proven by the C programs in capi-tests/.
//!
//! Each program is compiled with `cc -Wall -Wextra -Werror` three ways and
//! run against the freshly built helper: linked with the shared library,
//! with the static library, and (the static library again) under
//! AddressSanitizer and UndefinedBehaviorSanitizer. test-signal-safety
//! replaces malloc, which ASan also does, so it skips the sanitizer run.
//! The runs hold one lock: the timing bounds (a cancel within 100 ms) must
//! not compete with a parallel test for the 2 CPUs of a CI machine.
//!
//! Also here: the shared library exports exactly the header's functions,
//! all named `barge_*`, and has its SONAME; the header's version macros
//! match Cargo.toml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Libraries a program linked with libbarge.a needs (rustc's
/// `--print native-static-libs` for linux-gnu); barge.pc's Libs.private.
const STATIC_DEPS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];
const CFLAGS: &[&str] = &["-std=c11", "-g", "-O1", "-Wall", "-Wextra", "-Werror"];
const SANITIZE: &[&str] = &[
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
];
/// A C test that runs longer than this has hung.
const RUN_LIMIT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Shared,
    Static,
    Sanitized,
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_barge-helper"))
}

/// target/debug/deps: where `cargo test` builds libbarge.so and .a. (Only
/// `cargo build` copies them up to target/debug, so the copies there may be
/// stale.)
fn lib_dir() -> PathBuf {
    helper().parent().unwrap().join("deps")
}

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi")
}

/// A directory with libbarge.so and libbarge.so.0 (the SONAME the loader
/// looks for) pointing at the freshly built library.
fn shared_lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = work_dir().join("lib");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libbarge.so", "libbarge.so.0"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(lib_dir().join("libbarge.so"), &link).unwrap();
        }
        dir
    })
}

fn run_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compile capi-tests/NAME.c (with common.c, and extra sources) for `link`.
fn compile(name: &str, link: Link) -> PathBuf {
    let src = manifest_dir().join("capi-tests");
    let out_dir = work_dir().join("bin");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(format!("{name}-{link:?}").to_lowercase());
    let mut cc = Command::new(std::env::var_os("CC").unwrap_or("cc".into()));
    cc.args(CFLAGS)
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(src.join(format!("{name}.c")))
        .arg(src.join("common.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-pthread");
    match link {
        Link::Shared => {
            let dir = shared_lib_dir();
            cc.arg("-L").arg(dir).arg("-lbarge");
            cc.arg(format!("-Wl,-rpath,{}", dir.display()));
        }
        Link::Static | Link::Sanitized => {
            if link == Link::Sanitized {
                cc.args(SANITIZE);
            }
            cc.arg(lib_dir().join("libbarge.a")).args(STATIC_DEPS);
        }
    }
    let out = cc.output().expect("run cc");
    assert!(
        out.status.success(),
        "compiling {name} ({link:?}) failed: {cc:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Run a compiled test; panic with its output unless it exits 0 in time.
fn run(exe: &Path, link: Link) {
    let tmp = work_dir().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(exe);
    cmd.env("BARGE_TEST_HELPER", helper())
        .env("TMPDIR", &tmp)
        .env_remove("BARGE_HELPER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if link == Link::Sanitized {
        cmd.env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1");
    }
    let mut child = cmd.spawn().expect("start the C test");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{} hung for {RUN_LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
                exe.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        status.success(),
        "{} failed ({status}) after {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        exe.display(),
        start.elapsed()
    );
}

fn capi_test(name: &str, link: Link) {
    let _serial = run_lock();
    let exe = compile(name, link);
    run(&exe, link);
}

macro_rules! capi_tests {
    ($($module:ident => $name:literal $(, $sanitizer:ident)?;)*) => {
        $(
            mod $module {
                use super::*;

                #[test]
                fn shared_library() {
                    capi_test($name, Link::Shared);
                }

                #[test]
                fn static_library() {
                    capi_test($name, Link::Static);
                }

                sanitized_test!($name $(, $sanitizer)?);
            }
        )*
    };
}

macro_rules! sanitized_test {
    ($name:literal) => {
        #[test]
        fn sanitized() {
            capi_test($name, Link::Sanitized);
        }
    };
    ($name:literal, no_sanitizer) => {};
}

capi_tests! {
    basic => "test-basic";
    user_cancel => "test-user-cancel";
    sigint => "test-sigint";
    // It replaces malloc to catch allocations in a signal handler, which
    // ASan's own malloc replacement rules out.
    signal_safety => "test-signal-safety", no_sanitizer;
    pgroup => "test-pgroup";
    shutdown => "test-shutdown";
    null => "test-null";
    events => "test-events";
    tree => "test-tree";
    fork => "test-fork";
    sigpipe => "test-sigpipe";
    hostile => "test-hostile";
}

/// The functions the header declares.
fn header_functions() -> BTreeSet<String> {
    let header = std::fs::read_to_string(manifest_dir().join("include/barge.h")).unwrap();
    let mut names = BTreeSet::new();
    for line in header.lines() {
        if line.starts_with(' ') || line.starts_with('#') || line.starts_with('/') {
            continue;
        }
        if line.starts_with("typedef") {
            continue;
        }
        // A declaration's first line: `type *name(args...`.
        let Some(paren) = line.find('(') else {
            continue;
        };
        let before = &line[..paren];
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        if before[start..].starts_with("barge_") {
            names.insert(before[start..].to_string());
        }
    }
    names
}

fn exported_symbols(lib: &Path) -> BTreeSet<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(lib)
        .output()
        .expect("run nm (binutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|s| s.split('@').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_shared_library_exports_only_the_headers_barge_functions() {
    let symbols = exported_symbols(&lib_dir().join("libbarge.so"));
    let strays: Vec<_> = symbols
        .iter()
        .filter(|s| !s.starts_with("barge_"))
        .collect();
    assert!(strays.is_empty(), "exported besides barge_*: {strays:?}");
    let declared = header_functions();
    assert!(declared.len() >= 30, "header parse found only {declared:?}");
    assert_eq!(symbols, declared, "exports and header declarations differ");
}

#[test]
fn the_shared_library_has_its_soname() {
    let out = Command::new("objdump")
        .arg("-p")
        .arg(lib_dir().join("libbarge.so"))
        .output()
        .expect("run objdump (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let soname = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("SONAME"))
        .map(str::trim);
    assert_eq!(
        soname,
        Some(format!("libbarge.so.{}", env!("CARGO_PKG_VERSION_MAJOR")).as_str())
    );
}

#[test]
fn the_header_version_macros_match_cargo_toml() {
    let header = std::fs::read_to_string(manifest_dir().join("include/barge.h")).unwrap();
    for (macro_name, value) in [
        (
            "BARGE_VERSION_MAJOR",
            env!("CARGO_PKG_VERSION_MAJOR").to_string(),
        ),
        (
            "BARGE_VERSION_MINOR",
            env!("CARGO_PKG_VERSION_MINOR").to_string(),
        ),
        (
            "BARGE_VERSION_PATCH",
            env!("CARGO_PKG_VERSION_PATCH").to_string(),
        ),
        (
            "BARGE_VERSION_STRING",
            format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
    ] {
        let line = format!("#define {macro_name} {value}\n");
        assert!(header.contains(&line), "include/barge.h lacks {line:?}");
    }
    // SAFETY: barge_version returns a static NUL-terminated string.
    let runtime = unsafe { std::ffi::CStr::from_ptr(barge::ffi::handle::barge_version()) };
    assert_eq!(runtime.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

/// Every `extern "C"` function in src/ffi: its name, its signature (from
/// `fn` to the body's `{`) and the first statement of its body.
fn ffi_exports() -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let dir = manifest_dir().join("src/ffi");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("extern \"C\" fn ") {
            let after = &rest[at + "extern \"C\" fn ".len()..];
            let name_end = after.find(['(', '<']).unwrap();
            let body_at = after.find('{').unwrap();
            let body = after[body_at + 1..].trim_start();
            let first = body.split(['(', ';']).next().unwrap_or("").trim();
            found.push((
                after[..name_end].to_string(),
                after[..body_at].to_string(),
                first.to_string(),
            ));
            rest = &after[body_at..];
        }
    }
    found
}

#[test]
fn every_export_passes_the_boundary_and_takes_no_reference() {
    let exports = ffi_exports();
    assert_eq!(
        exports.iter().map(|e| e.0.clone()).collect::<BTreeSet<_>>(),
        header_functions(),
        "src/ffi's exports and the header differ"
    );
    for (name, signature, first) in &exports {
        assert!(
            !signature.contains('&'),
            "{name} takes or returns a reference: {signature}"
        );
        assert!(
            first == "boundary" || first == "guarded",
            "{name} does not start with boundary(...) or guarded(...): {first}"
        );
    }
}
