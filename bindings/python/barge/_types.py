"""The values barge returns: remote metadata, directory entries, events."""

from __future__ import annotations

import enum
import os
import stat as _stat
from ctypes import string_at
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from . import _lib

#: A path argument: ``str`` (encoded with :func:`os.fsencode`, so names that
#: are not UTF-8 round-trip through surrogate escapes), ``bytes`` (used as
#: is), or any :class:`os.PathLike` of either.
PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def fspath_bytes(path: PathArg, what: str = "path") -> bytes:
    """``path`` as the bytes barge receives. Raises TypeError for other
    types and ValueError for an embedded NUL byte, as :mod:`os` does."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{what} must be str, bytes or os.PathLike, not {type(path).__name__}"
        )
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError(f"embedded null byte in {what}")
    return raw


def wants_bytes(path: PathArg) -> bool:
    """Whether names derived from ``path`` should be returned as bytes, as
    :func:`os.listdir` decides."""
    return isinstance(os.fspath(path), bytes)


@dataclass(frozen=True)
class PathError:
    """One failed entry of a tree copy (see :class:`barge.TreeError`).

    Attributes:
        path: the entry's path, local or remote (as the helper sees it);
            ``str`` decoded with :func:`os.fsdecode`.
        errno: the failure's errno.
        message: what failed, naming the path.
    """

    path: str
    errno: int
    message: str


@dataclass(frozen=True)
class Stat:
    """Metadata of a remote file, as the helper saw it.

    Attributes:
        size: size in bytes.
        mode: file type and permission bits, as ``st_mode``; the
            :mod:`stat` module's functions apply.
        mtime_ns: modification time in nanoseconds since the epoch.
        uid: owner's user id on the helper's side.
        gid: owner's group id on the helper's side.
        nlink: number of hard links.
    """

    size: int
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    nlink: int

    @classmethod
    def _from_struct(cls, st: _lib.StatStruct) -> "Stat":
        return cls(
            size=st.size,
            mode=st.mode,
            mtime_ns=st.mtime_sec * 1_000_000_000 + st.mtime_nsec,
            uid=st.uid,
            gid=st.gid,
            nlink=st.nlink,
        )

    @property
    def mtime(self) -> float:
        """Modification time in seconds since the epoch."""
        return self.mtime_ns / 1e9

    def is_dir(self) -> bool:
        """Whether this is a directory."""
        return _stat.S_ISDIR(self.mode)

    def is_file(self) -> bool:
        """Whether this is a regular file."""
        return _stat.S_ISREG(self.mode)

    def is_symlink(self) -> bool:
        """Whether this is a symbolic link (only :meth:`Handle.scandir`
        reports links; :meth:`Handle.stat` follows them)."""
        return _stat.S_ISLNK(self.mode)


@dataclass(frozen=True)
class DirEntry:
    """One entry of :meth:`barge.Handle.scandir`.

    Attributes:
        name: the entry's name, ``bytes`` when the directory was given as
            bytes, else ``str`` (decoded with :func:`os.fsdecode`).
        stat: the entry itself; a symlink is reported as a symlink.
    """

    name: Union[str, bytes]
    stat: Stat


class EventKind(enum.IntFlag):
    """The kinds of events :meth:`barge.Handle.on` can subscribe to.

    Combine them with ``|``; :meth:`~barge.Handle.on` also takes their
    names as strings (``"progress"``).
    """

    #: A helper was started and completed the handshake (``pid``).
    LAUNCHED = _lib.EVENT_LAUNCHED
    #: Bytes done in the running transfer (``done``, ``total``), at most
    #: once per progress interval, and once at the end with done == total.
    PROGRESS = _lib.EVENT_PROGRESS
    #: A line the helper wrote to its stderr (``line``).
    LOG = _lib.EVENT_LOG
    #: The helper of a launch is gone (``pid``, ``exit_status``,
    #: ``term_signal``, ``graceful``); exactly one per LAUNCHED.
    SHUTDOWN = _lib.EVENT_SHUTDOWN
    #: Every kind.
    ALL = _lib.EVENT_ALL


EventSpec = Union[EventKind, int, str, Iterable[Union[EventKind, int, str]]]


def event_mask(spec: EventSpec) -> int:
    """The C event mask for ``spec``: an :class:`EventKind` (or int), a
    name such as ``"progress"`` or ``"all"``, or an iterable of those."""
    if isinstance(spec, str):
        try:
            mask = int(EventKind[spec.strip().upper()])
        except KeyError:
            names = ", ".join(k.name.lower() for k in EventKind if k.name)
            raise ValueError(f"unknown event {spec!r}; known: {names}") from None
    elif isinstance(spec, int):
        mask = int(spec)
    else:
        mask = 0
        for item in spec:
            mask |= event_mask(item)
    if mask <= 0 or mask & ~_lib.EVENT_ALL:
        raise ValueError(f"not a set of barge events: {spec!r}")
    return mask


@dataclass(frozen=True)
class Event:
    """One event, passed to the callables registered with
    :meth:`barge.Handle.on`.

    Attributes:
        kind: which event this is.
        pid: LAUNCHED and SHUTDOWN: the helper's pid; otherwise None.
        done: PROGRESS: bytes done so far; otherwise 0.
        total: PROGRESS: the transfer's size, or None when unknown (a pipe).
        line: LOG: the line without its newline, as bytes; otherwise None.
        exit_status: SHUTDOWN: the exit status when the helper exited,
            else None.
        term_signal: SHUTDOWN: the signal that killed the helper, else None.
        graceful: SHUTDOWN: whether the helper stopped when asked.
        files_done: PROGRESS of a tree copy: files done; ``done`` and
            ``total`` then count the bytes of the whole tree. Otherwise
            None.
        files_total: PROGRESS of a tree copy: files in the tree, else None.
    """

    kind: EventKind
    pid: Optional[int] = None
    done: int = 0
    total: Optional[int] = None
    line: Optional[bytes] = None
    exit_status: Optional[int] = None
    term_signal: Optional[int] = None
    graceful: bool = False
    files_done: Optional[int] = None
    files_total: Optional[int] = None

    @classmethod
    def _from_struct(cls, ev: _lib.EventStruct) -> "Event":
        kind = EventKind(ev.kind)
        return cls(
            kind=kind,
            pid=ev.pid if ev.pid >= 0 else None,
            done=ev.done,
            total=ev.total if ev.total >= 0 else None,
            line=string_at(ev.line, ev.line_len) if ev.line else None,
            exit_status=ev.exit_status
            if kind == EventKind.SHUTDOWN and ev.exit_status >= 0
            else None,
            term_signal=ev.term_signal if ev.term_signal > 0 else None,
            graceful=bool(ev.graceful),
            files_done=ev.files_done if ev.files_done >= 0 else None,
            files_total=ev.files_total if ev.files_total >= 0 else None,
        )
