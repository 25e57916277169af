"""Directory trees (copy_in, copy_out, keep_going) and resumable transfers
(keep_partial) through the binding."""

from __future__ import annotations

import os
import stat
import unittest

import support
from support import barge


class Trees(support.TempDirs):
    def make_tree(self) -> str:
        top = os.path.join(self.local, "t")
        os.makedirs(os.path.join(top, "a", "b"))
        with open(os.path.join(top, "a", "b", "big"), "wb") as f:
            f.write(os.urandom(3 * support.CHUNK + 5))
        with open(os.path.join(top, "small"), "wb") as f:
            f.write(b"small")
        os.chmod(os.path.join(top, "small"), 0o640)
        os.utime(os.path.join(top, "small"), ns=(1_000_000_000_123, 1_500_000_000_123_456_789))
        os.symlink("a/b/big", os.path.join(top, "link"))
        return top

    def test_copy_in_and_copy_out_round_trip_with_metadata_and_tree_progress(self) -> None:
        top = self.make_tree()
        events = []
        back = os.path.join(self.local, "back")
        os.mkdir(back)
        with support.handle(self.root, progress_interval=0) as h:
            h.on("progress", events.append)
            seen = []
            h.copy_in(top, "/", progress=lambda d, t: seen.append((d, t)))
            h.copy_out("/t", back)
        self.assertEqual(support.tree(os.path.join(self.root, "t")), support.tree(top))
        self.assertEqual(support.tree(os.path.join(back, "t")), support.tree(top))
        for name in ("a/b/big", "small"):
            with open(os.path.join(top, name), "rb") as f:
                data = f.read()
            self.assertEqual(self.read(os.path.join(back, "t", name)), data, name)
        st = os.lstat(os.path.join(back, "t", "small"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        self.assertEqual(st.st_mtime_ns, 1_500_000_000_123_456_789)
        self.assertEqual(os.readlink(os.path.join(back, "t", "link")), "a/b/big")
        total = 3 * support.CHUNK + 5 + 5
        self.assertEqual(seen[-1], (total, total))
        last = events[-1]
        self.assertEqual((last.files_done, last.files_total), (2, 2))
        self.assertEqual((last.done, last.total), (total, total))

    def test_keep_going_raises_tree_error_listing_each_failure(self) -> None:
        top = self.make_tree()
        os.makedirs(os.path.join(self.root, "t"))
        with open(os.path.join(self.root, "t", "a"), "wb") as f:
            f.write(b"in the way")
        with support.handle(self.root) as h:
            with self.assertRaises(barge.Error) as plain:
                h.copy_in(top, "/")
            self.assertNotIsInstance(plain.exception, barge.TreeError)
            with self.assertRaises(barge.TreeError) as caught:
                h.copy_in(top, "/", keep_going=True)
        errors = caught.exception.errors
        self.assertGreaterEqual(len(errors), 1)
        self.assertEqual(errors[0].path, "/t/a")
        self.assertIn("t/a", errors[0].message)
        self.assertEqual(caught.exception.errno, errors[0].errno)
        self.assertEqual(self.read(os.path.join(self.root, "t", "small")), b"small")


class Resume(support.TempDirs):
    def test_keep_partial_download_resumes_after_a_cancel(self) -> None:
        data = os.urandom(1_000_000)
        with open(os.path.join(self.root, "src"), "wb") as f:
            f.write(data)
        dst = os.path.join(self.local, "dst")
        partial = os.path.join(self.local, ".dst.barge-partial")
        with support.handle(self.root, progress_interval=0, keep_partial=True) as h:
            self.assertTrue(h.keep_partial)

            def cancel_late(done: int, total: object) -> None:
                if done >= 400_000:
                    h.cancel()

            with self.assertRaises(barge.Cancelled):
                h.download("/src", dst, progress=cancel_late)
            self.assertFalse(os.path.exists(dst))
            kept = os.path.getsize(partial)
            self.assertGreaterEqual(kept, 400_000)
            seen = []
            h.download("/src", dst, progress=lambda d, t: seen.append((d, t)))
            self.assertEqual(seen[-1], (len(data) - kept, len(data) - kept))
            h.keep_partial = False
            self.assertFalse(h.keep_partial)
        self.assertEqual(self.read(dst), data)
        self.assertFalse(os.path.exists(partial))


if __name__ == "__main__":
    unittest.main()
