"""Errors carry the right errno (compared with the errno module) and a
message naming the path; nothing partial is left; library discovery."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import unittest

import support
from support import barge


class Errnos(support.TempDirs):
    def assertErrno(self, err: int, call, *args) -> barge.Error:  # type: ignore[no-untyped-def]
        with self.assertRaises(barge.Error) as cm:
            call(*args)
        e = cm.exception
        self.assertEqual(e.errno, err, f"{e.message} (errno {errno.errorcode.get(e.errno)})")
        self.assertIsInstance(e, OSError)
        self.assertTrue(e.message)
        return e

    def test_enoent_remote_and_local_name_the_path(self) -> None:
        with support.handle(self.root) as h:
            e = self.assertErrno(errno.ENOENT, h.stat, "/missing-remote")
            self.assertIn("missing-remote", e.message)
            e = self.assertErrno(errno.ENOENT, h.download, "/missing-remote", os.path.join(self.local, "d"))
            self.assertIn("missing-remote", e.message)
            e = self.assertErrno(errno.ENOENT, h.upload, os.path.join(self.local, "missing-local"), "/x")
            self.assertIn("missing-local", e.message)
            self.assertErrno(errno.ENOENT, h.upload, self.write_local("s", b"x"), "/no/such/dir/x")
            self.assertErrno(errno.ENOENT, h.remove, "/missing-remote")
            self.assertErrno(errno.ENOENT, h.listdir, "/missing-remote")
        self.assertEqual(support.tree(self.root), [])
        self.assertEqual(support.tree(self.local), ["s"])

    def test_eexist_enotempty_enotdir_eisdir(self) -> None:
        with support.handle(self.root) as h:
            h.mkdir("/d")
            h.upload(self.write_local("s", b"x"), "/d/f")
            self.assertErrno(errno.EEXIST, h.mkdir, "/d")
            self.assertErrno(errno.ENOTEMPTY, h.remove, "/d")
            self.assertErrno(errno.ENOTDIR, h.listdir, "/d/f")
            self.assertErrno(errno.EISDIR, h.download, "/d", os.path.join(self.local, "x"))
            self.assertEqual(h.listdir("/d"), ["f"])

    def test_eacces_with_nothing_partial(self) -> None:
        # Permission checks only bite an unprivileged helper: as root (CI),
        # the helper drops to nobody with setpriv.
        locked = os.path.join(self.root, "locked")
        os.mkdir(locked)
        with open(os.path.join(locked, "old"), "wb") as f:
            f.write(b"old")
        os.chmod(self.root, 0o755)
        os.chmod(locked, 0o555)
        helper = [support.helper_path()]
        if os.geteuid() == 0:
            helper = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + helper
        src = self.write_local("s", os.urandom(100_000))
        with support.handle(self.root, helper=helper) as h:
            e = self.assertErrno(errno.EACCES, h.upload, src, "/locked/new")
            self.assertIn("locked/new", e.message)
            self.assertErrno(errno.EACCES, h.upload, src, "/locked/old")
            self.assertErrno(errno.EACCES, h.mkdir, "/locked/sub")
        self.assertEqual(support.tree(locked), ["old"])
        self.assertEqual(self.read(os.path.join(locked, "old")), b"old")

    def test_helper_side_failure_mid_transfer_gives_its_errno(self) -> None:
        src = self.write_local("s", os.urandom(500_000))
        with support.handle(self.root, helper=support.fault_argv("fail@100000:ENOSPC")) as h:
            self.assertErrno(errno.ENOSPC, h.upload, src, "/full")
            h.upload(self.write_local("small", b"ok"), "/small")  # same handle works (the fault is spent below 100000)
        self.assertEqual(support.tree(self.root), ["small"])

    def test_a_dead_helper_is_econnreset_and_the_next_call_restarts_it(self) -> None:
        src = self.write_local("s", os.urandom(500_000))
        with support.handle(self.root, helper=support.fault_argv("die@100000", only="dies")) as h:
            h.launch()
            first = h.helper_pid
            self.assertErrno(errno.ECONNRESET, h.upload, src, "/dies")
            self.assertIsNone(h.helper_pid)
            # It died right after its launch, so restarts back off a while.
            self.assertErrno(errno.EAGAIN, h.upload, src, "/lives")

            def upload_works() -> bool:
                try:
                    h.upload(src, "/lives")
                    return True
                except barge.Error as e:
                    self.assertEqual(e.errno, errno.EAGAIN, e.message)
                    return False

            support.wait_until(upload_works, "the restart back-off to end")
            self.assertNotEqual(h.helper_pid, first)
        self.assertEqual(support.tree(self.root), ["lives"])

    def test_einval_for_bad_settings(self) -> None:
        with self.assertRaises(barge.Error) as cm:
            support.handle(self.root, chunk_size=1)
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        with self.assertRaises(ValueError):
            support.handle(self.root, cancel_timeout=-1)

    def test_cancelled_is_ecanceled(self) -> None:
        with support.handle(self.root) as h:
            h.cancel()  # pending: the next operation fails at once
            e = self.assertErrno(errno.ECANCELED, h.stat, "/")
            self.assertIsInstance(e, barge.Cancelled)
            h.stat("/")  # consumed
            h.cancel()
            h.clear_cancel()
            h.stat("/")

    def test_abnormal_shutdown_is_eio_and_the_helper_is_gone(self) -> None:
        # The fault makes the helper ignore SIGTERM's default too, so the
        # kill timeout is short as well.
        h = support.handle(
            self.root,
            helper=support.fault_argv("ignore-shutdown"),
            shutdown_timeout=0.2,
            kill_timeout=0.2,
        )
        try:
            h.launch()
            pid = h.helper_pid
            assert pid is not None
            with self.assertRaises(barge.AbnormalShutdown) as cm:
                h.shutdown()
            self.assertEqual(cm.exception.errno, errno.EIO)
            self.assertIsNone(h.helper_pid)
            self.assertFalse(support.alive(pid))
            h.stat("/")  # a new helper
        finally:
            h.close()

    def test_a_closed_handle_raises_valueerror_and_cancel_is_harmless(self) -> None:
        h = support.handle(self.root)
        h.launch()
        h.close()
        h.close()
        self.assertTrue(h.closed)
        self.assertIsNone(h.helper_pid)
        h.cancel()
        with self.assertRaises(ValueError):
            h.stat("/")


class Library(unittest.TestCase):
    def run_python(self, code: str, **env: str) -> subprocess.CompletedProcess:
        full = dict(os.environ, **env)
        return subprocess.run(
            [sys.executable, "-c", code],
            env=full,
            cwd=str(support.HERE.parent),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_barge_library_overrides_and_a_wrong_one_is_a_clear_error(self) -> None:
        r = self.run_python("import barge; barge.Handle()", BARGE_LIBRARY="/nonexistent/libbarge.so")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("LibraryNotFoundError", r.stderr)
        self.assertIn("/nonexistent/libbarge.so", r.stderr)
        self.assertIn("BARGE_LIBRARY", r.stderr)

    def test_without_barge_library_an_installed_library_comes_before_the_checkouts(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("BARGE_LIBRARY", "LD_LIBRARY_PATH")}

        def python(*args: str) -> str:
            r = subprocess.run(
                [sys.executable, *args],
                env=env,
                cwd=str(support.HERE.parent),
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.strip()

        loaded = python("-c", "import barge; print(barge.library_path())")
        # The first installed candidate that loads, tried in a process of
        # its own (here one libbarge is loaded already, and the loader
        # would match libbarge.so.0 against its SONAME).
        from barge import _lib

        first_installed = python(
            "-c",
            "import ctypes, sys\n"
            "for c in sys.argv[1:]:\n"
            "    try:\n"
            "        ctypes.CDLL(c)\n"
            "    except OSError:\n"
            "        continue\n"
            "    print(c)\n"
            "    break\n",
            *_lib._installed_candidates(),
        )
        if first_installed:
            self.assertEqual(loaded, first_installed)
        else:
            checkout = support.HERE.parents[2]
            self.assertTrue(
                loaded.startswith(str(checkout / "target") + os.sep),
                f"{loaded!r} is not this checkout's build",
            )

    def test_the_version_of_the_loaded_library(self) -> None:
        r = self.run_python("import barge; print(barge.library_version())")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), barge.__version__)


if __name__ == "__main__":
    unittest.main()
