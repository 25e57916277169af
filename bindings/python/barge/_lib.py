"""Finding and loading ``libbarge.so``, and the C declarations of include/barge.h.

The binding uses :mod:`ctypes` only, so installing it compiles nothing. The
library is looked up once, on first use, in this order:

1. ``$BARGE_LIBRARY``, when set and not empty: that file and nothing else.
2. An installed library: ``libbarge.so.0`` through the dynamic loader
   (``LD_LIBRARY_PATH``, ``ld.so.cache``), then ``lib/``, ``lib64/`` and the
   multiarch ``lib/<triplet>/`` under this Python's prefixes, ``/usr/local``
   and ``/usr``.
3. A development tree: when this package is imported from
   ``bindings/python`` of a barge checkout, the newest ``libbarge.so``
   under ``target/{release,debug}`` (including ``deps/``, where
   ``cargo test`` builds it).
"""

from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Iterator, List, Optional

#: The library version this binding was written against, as (major, minor).
#: Before 1.0 a new minor version may change the ABI, so both must match.
ABI_VERSION = (0, 1)

EVENT_LAUNCHED = 1
EVENT_PROGRESS = 2
EVENT_LOG = 4
EVENT_SHUTDOWN = 8
EVENT_ALL = 15


class LibraryNotFoundError(ImportError):
    """``libbarge.so`` could not be found or loaded, or has the wrong version.

    The message lists every place that was tried and why each failed.
    """


class StatStruct(Structure):
    """``struct barge_stat``."""

    _fields_ = [
        ("size", c_uint64),
        ("mode", c_uint32),
        ("mtime_nsec", c_uint32),
        ("mtime_sec", c_int64),
        ("uid", c_uint32),
        ("gid", c_uint32),
        ("nlink", c_uint64),
    ]


class DirentStruct(Structure):
    """``struct barge_dirent``; ``name`` is read with ``name_len``, so it is
    declared as a plain pointer (a ``c_char_p`` would stop at a NUL)."""

    _fields_ = [
        ("name", c_void_p),
        ("name_len", c_size_t),
        ("st", StatStruct),
    ]


class EventStruct(Structure):
    """``struct barge_event``; valid only during the callback."""

    _fields_ = [
        ("kind", c_uint64),
        ("pid", c_int64),
        ("done", c_uint64),
        ("total", c_int64),
        ("line", c_void_p),
        ("line_len", c_size_t),
        ("exit_status", c_int),
        ("term_signal", c_int),
        ("graceful", c_int),
        ("files_done", c_int64),
        ("files_total", c_int64),
    ]


class PathErrorStruct(Structure):
    """``struct barge_path_error``: one failed entry of a tree copy."""

    _fields_ = [
        ("path", c_void_p),
        ("path_len", c_size_t),
        ("err", c_int),
        ("message", c_char_p),
    ]


#: ``barge_event_callback``: ``void (*)(void *opaque, const struct barge_event *)``.
EVENT_CALLBACK = CFUNCTYPE(None, c_void_p, POINTER(EventStruct))

# name: (restype, argtypes). Handles are passed as c_void_p.
_PROTOTYPES = {
    "barge_create": (c_void_p, []),
    "barge_close": (None, [c_void_p]),
    "barge_set_helper": (c_int, [c_void_p, POINTER(c_char_p)]),
    "barge_set_root": (c_int, [c_void_p, c_char_p]),
    "barge_set_pgroup": (c_int, [c_void_p, c_int]),
    "barge_set_fast_path": (c_int, [c_void_p, c_int]),
    "barge_uses_fast_path": (c_int, [c_void_p]),
    "barge_set_chunk_size": (c_int, [c_void_p, c_uint32]),
    "barge_set_shutdown_timeout_ms": (c_int, [c_void_p, c_uint32]),
    "barge_set_kill_timeout_ms": (c_int, [c_void_p, c_uint32]),
    "barge_set_cancel_timeout_ms": (c_int, [c_void_p, c_uint32]),
    "barge_set_launch_timeout_ms": (c_int, [c_void_p, c_uint32]),
    "barge_set_progress_interval_ms": (c_int, [c_void_p, c_uint32]),
    "barge_launch": (c_int, [c_void_p]),
    "barge_shutdown": (c_int, [c_void_p]),
    "barge_kill": (c_int, [c_void_p]),
    "barge_helper_pid": (c_int64, [c_void_p]),
    "barge_user_cancel": (None, [c_void_p]),
    "barge_clear_cancel": (None, [c_void_p]),
    "barge_version": (c_char_p, []),
    "barge_upload": (c_int, [c_void_p, c_char_p, c_char_p]),
    "barge_download": (c_int, [c_void_p, c_char_p, c_char_p]),
    "barge_upload_fd": (c_int, [c_void_p, c_int, c_char_p]),
    "barge_download_fd": (c_int, [c_void_p, c_char_p, c_int]),
    "barge_stat": (c_int, [c_void_p, c_char_p, POINTER(StatStruct)]),
    "barge_mkdir": (c_int, [c_void_p, c_char_p, c_int]),
    "barge_remove": (c_int, [c_void_p, c_char_p]),
    "barge_rename": (c_int, [c_void_p, c_char_p, c_char_p]),
    "barge_list": (
        c_int,
        [c_void_p, c_char_p, POINTER(POINTER(DirentStruct)), POINTER(c_size_t)],
    ),
    "barge_free_dirents": (None, [POINTER(DirentStruct), c_size_t]),
    "barge_copy_in": (c_int, [c_void_p, c_char_p, c_char_p]),
    "barge_copy_out": (c_int, [c_void_p, c_char_p, c_char_p]),
    "barge_set_keep_going": (c_int, [c_void_p, c_int]),
    "barge_set_preserve_metadata": (c_int, [c_void_p, c_int]),
    "barge_set_keep_partial": (c_int, [c_void_p, c_int]),
    "barge_get_tree_errors": (
        c_int,
        [c_void_p, POINTER(POINTER(PathErrorStruct)), POINTER(c_size_t)],
    ),
    "barge_free_path_errors": (None, [POINTER(PathErrorStruct), c_size_t]),
    "barge_set_event_callback": (c_int, [c_void_p, EVENT_CALLBACK, c_uint64, c_void_p]),
    "barge_delete_event_callback": (c_int, [c_void_p, c_int]),
    "barge_get_error": (c_void_p, []),
    "barge_get_errno": (c_int, []),
}

_loaded: Optional[ctypes.CDLL] = None
_loaded_from: Optional[str] = None
_load_lock = threading.Lock()


def _installed_candidates() -> Iterator[str]:
    """Installed locations, most specific first, without duplicates."""
    yield "libbarge.so.0"  # through the dynamic loader's own search
    multiarch = sysconfig.get_config_var("MULTIARCH")
    seen = set()
    for prefix in (sys.prefix, sys.base_prefix, "/usr/local", "/usr"):
        for libdir in ("lib", "lib64", f"lib/{multiarch}" if multiarch else None):
            if libdir is None:
                continue
            path = os.path.join(prefix, libdir, "libbarge.so.0")
            if path not in seen:
                seen.add(path)
                yield path


def _development_candidates() -> List[str]:
    """``libbarge.so`` files of the checkout this package sits in, newest
    first: ``bindings/python/barge/`` is three levels below the root."""
    parents = Path(__file__).resolve().parents
    if len(parents) < 4:
        return []
    root = parents[3]
    if not (root / "Cargo.toml").is_file() or not (root / "include" / "barge.h").is_file():
        return []
    found = []
    for profile in ("release", "debug"):
        for sub in ("", "deps"):
            p = root / "target" / profile / sub / "libbarge.so"
            if p.is_file():
                found.append(p)
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in found]


def _declare(lib: ctypes.CDLL, where: str) -> None:
    """Set argtypes and restype of every function, and check the version."""
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibraryNotFoundError(
                f"{where} lacks {name}: not a barge library of version "
                f"{ABI_VERSION[0]}.{ABI_VERSION[1]}"
            ) from None
        fn.restype = restype
        fn.argtypes = argtypes
    version = lib.barge_version().decode("ascii", "replace")
    parts = version.split(".")
    if tuple(int(p) for p in parts[:2] if p.isdigit()) != ABI_VERSION:
        raise LibraryNotFoundError(
            f"{where} is barge {version}; this binding needs "
            f"{ABI_VERSION[0]}.{ABI_VERSION[1]}.x"
        )


def load() -> ctypes.CDLL:
    """Load libbarge once and return it.

    Raises :class:`LibraryNotFoundError` naming every place tried.
    """
    global _loaded, _loaded_from
    with _load_lock:
        if _loaded is not None:
            return _loaded
        override = os.environ.get("BARGE_LIBRARY")
        if override:
            candidates = [override]
        else:
            candidates = list(_installed_candidates()) + _development_candidates()
        failures = []
        for candidate in candidates:
            try:
                lib = ctypes.CDLL(candidate)
            except OSError as e:
                failures.append(f"  {candidate}: {e}")
                continue
            _declare(lib, candidate)
            _loaded, _loaded_from = lib, candidate
            return lib
        how = "BARGE_LIBRARY is set, so only it was tried" if override else (
            "set BARGE_LIBRARY to the path of libbarge.so, or install barge "
            "(scripts/install.sh)"
        )
        raise LibraryNotFoundError(
            "cannot load libbarge.so; " + how + ":\n" + "\n".join(failures)
        )


def loaded_from() -> str:
    """Where the library was loaded from: a path, or ``libbarge.so.0`` when
    the dynamic loader found it. Loads it first if needed."""
    load()
    assert _loaded_from is not None
    return _loaded_from


def last_error() -> "tuple[int, str]":
    """This thread's last barge error as ``(errno, message)``. Must run on
    the thread that made the failing call: barge keeps it per thread."""
    lib = load()
    err = lib.barge_get_errno()
    ptr = lib.barge_get_error()
    message = ctypes.string_at(ptr).decode("utf-8", "replace") if ptr else ""
    return err, message or os.strerror(err)
