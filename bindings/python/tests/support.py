"""Shared support for the binding's tests: the freshly built helper, faults,
temporary trees, FIFOs that hold a transfer mid-way, process checks.

The tests need ``BARGE_LIBRARY`` (the libbarge.so under test) and
``BARGE_HELPER`` (the helper built with it); tests/python.rs sets both.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import termios
import time
import unittest
from pathlib import Path
from typing import Callable, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import barge  # noqa: E402  (after the path set-up above)

#: Chunks small enough that a few hundred KiB make many frames.
CHUNK = 16 * 1024


def helper_path() -> str:
    """The helper under test, from ``$BARGE_HELPER``."""
    path = os.environ.get("BARGE_HELPER")
    if not path:
        raise RuntimeError("BARGE_HELPER must name the barge-helper under test")
    return path


def fault_argv(spec: str, only: Optional[str] = None) -> List[str]:
    """A helper command line that injects ``BARGE_HELPER_FAULT=spec``."""
    argv = ["/usr/bin/env", f"BARGE_HELPER_FAULT={spec}"]
    if only is not None:
        argv.append(f"BARGE_HELPER_FAULT_PATH={only}")
    return argv + [helper_path()]


def handle(root: Optional[str] = None, **kwargs: object) -> barge.Handle:
    """A handle on the helper under test with small chunks."""
    kwargs.setdefault("helper", [helper_path()])
    kwargs.setdefault("chunk_size", CHUNK)
    return barge.Handle(root=root, **kwargs)  # type: ignore[arg-type]


def tree(root: str) -> List[str]:
    """Every name under ``root`` (hidden ones too), relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``pred`` until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def process_state(pid: int) -> Optional[str]:
    """The state letter of ``pid`` (R, S, Z, ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def parent_pid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is not a zombie)."""
    return process_state(pid) not in (None, "Z", "X")


class Fifo:
    """A FIFO the test holds open read-write, so that an upload reading it
    never sees end of file until :meth:`finish`. Data written to it stays
    within the pipe's 64 KiB, so writing never blocks."""

    def __init__(self, directory: str, name: str = "fifo") -> None:
        self.path = os.path.join(directory, name)
        os.mkfifo(self.path)
        self.fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def unread(self) -> int:
        """Bytes written but not yet read by the upload."""
        assert self.fd is not None
        buf = bytearray(4)
        fcntl.ioctl(self.fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    def drain(self) -> None:
        """Drop what a cancelled upload left unread."""
        assert self.fd is not None
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def feed(self, data: bytes) -> None:
        assert self.fd is not None and len(data) <= 60000
        os.write(self.fd, data)

    def finish(self) -> None:
        """Close the test's end: once drained, the reader sees end of file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class TempDirs(unittest.TestCase):
    """A TestCase with ``self.root`` (the helper's root) and ``self.local``
    (local files), removed afterwards."""

    def setUp(self) -> None:
        base = os.environ.get("TMPDIR") or None
        self.root = tempfile.mkdtemp(prefix="barge-root-", dir=base)
        self.local = tempfile.mkdtemp(prefix="barge-local-", dir=base)
        self.addCleanup(shutil.rmtree, self.root, True)
        self.addCleanup(shutil.rmtree, self.local, True)

    def write_local(self, name: str, data: bytes) -> str:
        path = os.path.join(self.local, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()
