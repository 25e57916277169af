"""Round trips with byte comparison, file objects, path types, metadata,
directory operations, progress and events."""

from __future__ import annotations

import io
import os
import pathlib
import stat
import threading
import unittest

import support
from support import barge


class RoundTrips(support.TempDirs):
    def test_upload_then_download_is_byte_identical_for_many_sizes(self) -> None:
        c = support.CHUNK
        with support.handle(self.root) as h:
            for size in (0, 1, c - 1, c, c + 1, 3 * c, 5_000_000 + 7):
                data = os.urandom(size)
                src = self.write_local(f"src{size}", data)
                h.upload(src, f"/up{size}")
                self.assertEqual(self.read(os.path.join(self.root, f"up{size}")), data, size)
                dst = os.path.join(self.local, f"down{size}")
                h.download(f"/up{size}", dst)
                self.assertEqual(self.read(dst), data, size)
                self.assertEqual(h.stat(f"/up{size}").size, size)

    def test_the_default_helper_round_trips_too(self) -> None:
        # No helper= given: the default helper ($BARGE_HELPER), which may
        # use the fast path for local files; the results are the same.
        data = os.urandom(9_000_001)
        src = self.write_local("src", data)
        with barge.Handle(root=self.root) as h:
            h.upload(src, "/up")
            h.download("/up", os.path.join(self.local, "down"))
            with open(src, "rb") as f:
                h.upload_file(f, "/from-file")
        self.assertEqual(self.read(os.path.join(self.root, "up")), data)
        self.assertEqual(self.read(os.path.join(self.local, "down")), data)
        self.assertEqual(self.read(os.path.join(self.root, "from-file")), data)

    def test_fast_path_can_be_offered_and_turned_off(self) -> None:
        data = os.urandom(3_000_001)
        src = self.write_local("src", data)
        for offered in (True, False):
            with support.handle(self.root, fast_path=offered) as h:
                self.assertFalse(h.uses_fast_path)  # no helper runs yet
                h.launch()
                self.assertEqual(h.uses_fast_path, offered)
                h.upload(src, "/fp")
                h.download("/fp", os.path.join(self.local, "fp"))
            self.assertEqual(self.read(os.path.join(self.root, "fp")), data)
            self.assertEqual(self.read(os.path.join(self.local, "fp")), data)

    def test_upload_replaces_an_existing_file(self) -> None:
        with open(os.path.join(self.root, "f"), "wb") as f:
            f.write(b"old contents")
        with support.handle(self.root) as h:
            h.upload(self.write_local("n", b"new"), "f")
        self.assertEqual(self.read(os.path.join(self.root, "f")), b"new")

    def test_paths_may_be_str_bytes_and_pathlike(self) -> None:
        data = os.urandom(100_000)
        src = self.write_local("s", data)
        with support.handle(self.root) as h:
            h.upload(src.encode(), b"/b")
            h.upload(pathlib.Path(src), pathlib.PurePosixPath("/p"))
            h.download(b"/b", os.path.join(self.local, "b").encode())
            h.download(pathlib.PurePosixPath("/p"), pathlib.Path(self.local, "p"))
            self.assertEqual(self.read(os.path.join(self.local, "b")), data)
            self.assertEqual(self.read(os.path.join(self.local, "p")), data)
            self.assertEqual(sorted(h.listdir(pathlib.PurePosixPath("/"))), ["b", "p"])

    def test_names_that_are_not_utf8_round_trip(self) -> None:
        name = b"caf\xe9-\xff.bin"  # Latin-1, not UTF-8
        data = os.urandom(50_000)
        src = os.path.join(os.fsencode(self.local), name)
        with open(src, "wb") as f:
            f.write(data)
        with support.handle(self.root) as h:
            h.upload(src, b"/" + name)
            self.assertEqual(h.listdir(b"/"), [name])
            # As str, the name is decoded with surrogate escapes (os.fsdecode)
            # and goes back to the same bytes.
            [as_str] = h.listdir("/")
            self.assertEqual(as_str, os.fsdecode(name))
            dst = os.path.join(self.local, "back-" + as_str)
            h.download("/" + as_str, dst)
            self.assertEqual(self.read(dst), data)
        self.assertEqual(os.listdir(os.fsencode(self.root)), [name])

    def test_nul_bytes_and_wrong_types_are_refused_before_barge_is_called(self) -> None:
        with support.handle(self.root) as h:
            with self.assertRaises(ValueError):
                h.stat("a\0b")
            with self.assertRaises(TypeError):
                h.stat(42)  # type: ignore[arg-type]
            self.assertIsNone(h.helper_pid, "no helper should have started")


class FileObjects(support.TempDirs):
    def test_bytesio_round_trip_goes_through_a_pipe(self) -> None:
        data = os.urandom(1_000_000)
        seen = []
        with support.handle(self.root) as h:
            h.upload_file(io.BytesIO(data), "/x", progress=lambda d, t: seen.append((d, t)))
            out = io.BytesIO()
            h.download_file("/x", out)
        self.assertEqual(self.read(os.path.join(self.root, "x")), data)
        self.assertEqual(out.getvalue(), data)
        # Through a pipe the size is unknown until the end.
        self.assertIsNone(seen[0][1])
        self.assertEqual(seen[-1], (len(data), len(data)))

    def test_a_buffered_file_is_read_from_its_current_position(self) -> None:
        data = os.urandom(300_000)
        src = self.write_local("s", data)
        with support.handle(self.root) as h, open(src, "rb") as f:
            f.read(1000)  # the buffer has read ahead of this
            h.upload_file(f, "/rest")
            self.assertEqual(f.tell(), len(data))
            self.assertEqual(f.read(), b"")
        self.assertEqual(self.read(os.path.join(self.root, "rest")), data[1000:])

    def test_a_buffered_file_is_written_at_its_current_position(self) -> None:
        data = os.urandom(300_000)
        with open(os.path.join(self.root, "r"), "wb") as f:
            f.write(data)
        dst = os.path.join(self.local, "d")
        with support.handle(self.root) as h, open(dst, "wb") as f:
            f.write(b"header")  # still in the buffer: flushed first
            h.download_file("/r", f)
            self.assertEqual(f.tell(), 6 + len(data))
            f.write(b"trailer")
        self.assertEqual(self.read(dst), b"header" + data + b"trailer")

    def test_pipes_with_file_descriptors(self) -> None:
        data = os.urandom(700_000)
        with support.handle(self.root) as h:
            r, w = os.pipe()

            def write_then_close() -> None:
                with open(w, "wb", buffering=0) as wf:
                    wf.write(data)

            t = threading.Thread(target=write_then_close)
            t.start()
            with open(r, "rb", buffering=0) as rf:
                h.upload_file(rf, "/piped")
            t.join()
            self.assertEqual(self.read(os.path.join(self.root, "piped")), data)

            r, w = os.pipe()
            got = bytearray()

            def read_all() -> None:
                with open(r, "rb") as rf:
                    got.extend(rf.read())

            t = threading.Thread(target=read_all)
            t.start()
            with open(w, "wb") as wf:
                h.download_file("/piped", wf)
            t.join()
            self.assertEqual(bytes(got), data)

    def test_a_buffered_pipe_keeps_its_read_ahead(self) -> None:
        # A buffered reader of a pipe may hold bytes it read ahead; they
        # must be uploaded too, so it goes through read(), not its fd.
        data = os.urandom(60_000)  # fits in the pipe: the writer never blocks
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        with support.handle(self.root) as h, open(r, "rb") as rf:
            self.assertEqual(rf.read(10), data[:10])
            self.assertGreater(len(rf.peek()), 0, "the reader holds read-ahead bytes")
            h.upload_file(rf, "/rest")
        self.assertEqual(self.read(os.path.join(self.root, "rest")), data[10:])

    def test_text_files_are_refused(self) -> None:
        with support.handle(self.root) as h, open(self.write_local("t", b"x"), "r") as f:
            with self.assertRaises(TypeError):
                h.upload_file(f, "/t")

    def test_a_failing_read_cancels_the_upload_and_is_raised(self) -> None:
        class Broken(io.RawIOBase):
            def __init__(self) -> None:
                self.calls = 0

            def readable(self) -> bool:
                return True

            def read(self, n: int = -1) -> bytes:
                self.calls += 1
                if self.calls > 3:
                    raise RuntimeError("disk on fire")
                return b"x" * 1000

        with support.handle(self.root) as h:
            h.launch()
            pid = h.helper_pid
            with self.assertRaisesRegex(RuntimeError, "disk on fire"):
                h.upload_file(Broken(), "/never")
            self.assertEqual(support.tree(self.root), [])
            self.assertEqual(h.helper_pid, pid)
            h.upload_file(io.BytesIO(b"fine"), "/next")
        self.assertEqual(support.tree(self.root), ["next"])

    def test_a_failing_write_cancels_the_download_and_is_raised(self) -> None:
        class Full:
            def __init__(self) -> None:
                self.n = 0

            def write(self, b: bytes) -> int:
                self.n += len(b)
                if self.n > 100_000:
                    raise OSError(28, "No space left on device")
                return len(b)

        with open(os.path.join(self.root, "big"), "wb") as f:
            f.write(os.urandom(3_000_000))
        with support.handle(self.root) as h:
            h.launch()
            pid = h.helper_pid
            with self.assertRaises(OSError) as cm:
                h.download_file("/big", Full())
            self.assertNotIsInstance(cm.exception, barge.Error)
            self.assertEqual(cm.exception.errno, 28)
            self.assertEqual(h.helper_pid, pid)
            out = io.BytesIO()
            h.download_file("/big", out)
            self.assertEqual(len(out.getvalue()), 3_000_000)


class Metadata(support.TempDirs):
    def test_stat_mkdir_listdir_scandir_rename_remove(self) -> None:
        with support.handle(self.root) as h:
            h.mkdir("/a")
            h.mkdir("/a/b/c", parents=True)
            h.mkdir("/a/b/c", parents=True)  # exists: fine with parents
            h.upload(self.write_local("f", b"12345"), "/a/f")
            os.symlink("f", os.path.join(self.root, "a", "link"))
            st = h.stat("/a/f")
            self.assertTrue(st.is_file())
            self.assertEqual(st.size, 5)
            self.assertEqual(stat.S_IMODE(st.mode), stat.S_IMODE(os.stat(os.path.join(self.root, "a/f")).st_mode))
            self.assertEqual(st.mtime_ns, os.stat(os.path.join(self.root, "a/f")).st_mtime_ns)
            self.assertEqual(st.nlink, 1)
            self.assertTrue(h.stat("/a/b").is_dir())
            self.assertTrue(h.stat("/a/link").is_file(), "stat follows symlinks")
            self.assertEqual(sorted(h.listdir("/a")), ["b", "f", "link"])
            entries = {e.name: e.stat for e in h.scandir("/a")}
            self.assertTrue(entries["link"].is_symlink())
            self.assertTrue(entries["b"].is_dir())
            self.assertEqual(entries["f"].size, 5)
            self.assertEqual(h.listdir("/a/b/c"), [])
            h.rename("/a/f", "/a/g")
            self.assertEqual(sorted(h.listdir("/a")), ["b", "g", "link"])
            h.remove("/a/g")
            h.remove("/a/link")
            h.remove("/a/b/c")
            self.assertEqual(support.tree(self.root), ["a", "a/b"])


class Progress(support.TempDirs):
    def test_progress_is_per_call_and_ends_at_the_total(self) -> None:
        data = os.urandom(2_000_000)
        src = self.write_local("s", data)
        first: list = []
        second: list = []
        with support.handle(self.root, progress_interval=0) as h:
            h.upload(src, "/a", progress=lambda d, t: first.append((d, t)))
            h.upload(src, "/b")  # no progress callable: nothing more for `first`
            h.download("/a", os.path.join(self.local, "d"), progress=lambda d, t: second.append((d, t)))
        for seen in (first, second):
            dones = [d for d, _ in seen]
            self.assertEqual(dones, sorted(dones))
            self.assertGreater(len(seen), 10)
            self.assertEqual(seen[-1], (len(data), len(data)))
        self.assertEqual(len(first), len({d for d, _ in first}) + 1, "one event per frame, plus the final one")

    def test_progress_runs_on_the_thread_of_the_call(self) -> None:
        threads = set()
        with support.handle(self.root) as h:
            h.upload(self.write_local("s", b"x" * 100_000), "/s", progress=lambda d, t: threads.add(threading.get_ident()))
        self.assertEqual(len(threads), 1)


class Events(support.TempDirs):
    def test_launched_progress_log_and_shutdown(self) -> None:
        got: list = []
        argv = ["/usr/bin/env", "BARGE_HELPER_DEBUG=1", support.helper_path()]
        h = support.handle(self.root, helper=argv)
        h.on("launched", lambda e: got.append(("launched", e.pid)))
        h.on(barge.EventKind.LOG, lambda e: got.append(("log", e.line)))
        h.on(["progress"], lambda e: got.append(("progress", e.done, e.total)))
        h.on("shutdown", lambda e: got.append(("shutdown-1", e.pid, e.graceful, e.exit_status)))
        h.on("shutdown", lambda e: got.append(("shutdown-2", e.pid)))
        h.upload(self.write_local("s", b"y" * 1000), "/s")
        pid = h.helper_pid
        h.shutdown()
        self.assertIsNone(h.helper_pid)
        h.close()
        self.assertEqual(got[0], ("launched", pid))
        self.assertIn(("progress", 1000, 1000), got)
        logs = [g[1] for g in got if g[0] == "log"]
        self.assertTrue(logs, got)
        self.assertTrue(all(isinstance(line, bytes) and b"\n" not in line for line in logs))
        # SHUTDOWN in reverse registration order, exactly once.
        shutdowns = [g for g in got if g[0].startswith("shutdown")]
        self.assertEqual(shutdowns, [("shutdown-2", pid), ("shutdown-1", pid, True, 0)])

    def test_off_stops_a_callable_and_each_launch_has_one_shutdown(self) -> None:
        launched: list = []
        shut: list = []
        with support.handle(self.root) as h:
            ident = h.on("launched", lambda e: launched.append(e.pid))
            h.on("shutdown", lambda e: shut.append(e.pid))
            h.launch()
            h.kill()
            h.launch()
            h.off(ident)
            h.kill()
            h.launch()
            with self.assertRaises(KeyError):
                h.off(ident)
            with self.assertRaises(ValueError):
                h.on("nonsense", print)
        self.assertEqual(len(launched), 2)
        self.assertEqual(len(shut), 3)
        self.assertEqual(shut[:2], launched)

    def test_an_exception_in_a_callback_cancels_and_is_reraised(self) -> None:
        class Boom(Exception):
            pass

        def explode(done: int, total: object) -> None:
            if done > 200_000:
                raise Boom(done)

        with open(os.path.join(self.root, "old"), "wb") as f:
            f.write(b"old")
        with support.handle(self.root, progress_interval=0) as h:
            h.launch()
            pid = h.helper_pid
            src = self.write_local("s", os.urandom(2_000_000))
            with self.assertRaises(Boom):
                h.upload(src, "/old", progress=explode)
            with self.assertRaises(Boom):
                h.download("/old", os.path.join(self.root, "x"), progress=lambda d, t: (_ for _ in ()).throw(Boom()))
            self.assertEqual(support.tree(self.root), ["old"])
            self.assertEqual(self.read(os.path.join(self.root, "old")), b"old")
            self.assertEqual(h.helper_pid, pid)
            h.upload(src, "/new")  # no cancel was left pending
        self.assertEqual(support.tree(self.root), ["new", "old"])

    def test_a_callback_calling_its_own_handle_gets_edeadlk(self) -> None:
        errors: list = []

        def reenter(done: int, total: object) -> None:
            try:
                h.stat("/")
            except barge.Error as e:
                errors.append(e.errno)
            try:
                h.close()
            except barge.Error as e:
                errors.append(e.errno)
            errors.append(h.helper_pid)

        import errno

        with support.handle(self.root) as h:
            h.upload(self.write_local("s", b"z" * 10), "/s", progress=reenter)
            pid = h.helper_pid
        self.assertEqual(errors[:3], [errno.EDEADLK, errno.EDEADLK, pid])


if __name__ == "__main__":
    unittest.main()
