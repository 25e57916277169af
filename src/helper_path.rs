//! Where an installed barge library finds its helper with no configuration.
//!
//! `scripts/install.sh` puts the library in `PREFIX/lib` (or a multiarch
//! directory beneath it) and the helper in `PREFIX/libexec/barge/`. The
//! library finds its own file with `dladdr` on one of its functions, and
//! looks for the helper relative to it. This keeps an installed tree
//! relocatable: no path is compiled in. When barge is linked statically,
//! `dladdr` names the executable instead, and the same relative paths apply
//! to it (`PREFIX/bin/prog` finds `PREFIX/libexec/barge/barge-helper`).

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the helper lies relative to the directory holding the library.
const RELATIVE: [&str; 2] = [
    "../libexec/barge/barge-helper",
    "../../libexec/barge/barge-helper",
];

/// The helper installed next to this library, if there is one.
pub(crate) fn installed_helper() -> Option<PathBuf> {
    let lib = this_object()?;
    let dir = lib.parent()?;
    RELATIVE
        .iter()
        .map(|rel| dir.join(rel))
        .find(|p| is_executable(p))
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// The file (shared library or executable) this code was loaded from, with
/// symlinks resolved, so `libbarge.so -> libbarge.so.0.1.0` gives the real
/// directory.
fn this_object() -> Option<PathBuf> {
    // SAFETY: Dl_info is plain data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = installed_helper as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills info.
    let found = unsafe { libc::dladdr(addr, &mut info) } != 0;
    let from_dladdr = (found && !info.dli_fname.is_null())
        .then(|| {
            // SAFETY: dli_fname is a NUL-terminated string owned by the
            // dynamic loader, valid while the object stays loaded (we are
            // running its code).
            let name = unsafe { CStr::from_ptr(info.dli_fname) };
            PathBuf::from(OsStr::from_bytes(name.to_bytes()))
        })
        .filter(|p| p.is_absolute() || p.components().count() > 1)
        .and_then(|p| std::fs::canonicalize(p).ok());
    // For the main executable, glibc reports its name as given by argv[0],
    // which may be bare; /proc/self/exe is exact then.
    from_dladdr.or_else(|| std::env::current_exe().ok())
}

pub(crate) fn is_executable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is NUL-terminated.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_object_holding_this_code() {
        let me = this_object().expect("dladdr or /proc/self/exe");
        assert!(me.is_absolute(), "{me:?}");
        assert!(me.is_file(), "{me:?}");
    }

    #[test]
    fn no_helper_beside_a_test_binary() {
        // target/debug/deps/../libexec does not exist.
        assert_eq!(installed_helper(), None);
    }
}
