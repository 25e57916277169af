"""barge: file transfers over a helper process, with a cancel that works.

This package is a :mod:`ctypes` binding of ``libbarge.so`` (the C API in
``include/barge.h``)::

    import barge

    with barge.Handle(root="/srv/files") as h:
        h.upload("big.iso", "/incoming/big.iso",
                 progress=lambda done, total: print(done, total))
        print(h.stat("/incoming/big.iso").size)

Paths may be ``str``, ``bytes`` or :class:`os.PathLike`; names that are not
UTF-8 round-trip (``str`` paths go through :func:`os.fsencode`).

Finding the library
-------------------
``$BARGE_LIBRARY`` names the file to load. Otherwise an installed
``libbarge.so.0`` is used (through the dynamic loader, then ``lib/`` under
this Python's prefixes, ``/usr/local`` and ``/usr``), and failing that the
newest ``libbarge.so`` of the barge checkout this package was imported from
(``target/{release,debug}``, including ``deps/``). The library must be
version 0.1.x. The default helper is the one installed beside the library;
``$BARGE_HELPER`` or ``Handle(helper=[...])`` choose another.

^C and signals
--------------
CPython runs signal handlers only in the main thread and only between
bytecodes, so a blocking C call cannot be interrupted by them. This binding
does the following, and nothing else, with signals:

* It installs, replaces and restores no signal handler, and changes no
  signal mask. Whatever the program set for SIGINT (Python's default,
  which raises KeyboardInterrupt, its own handler, SIG_IGN or SIG_DFL)
  stays in charge.
* Every call made from the main thread (operations, ``shutdown``,
  ``kill``, ``close``) runs its C call on a new thread, while the main
  thread waits in a way CPython interrupts to run signal handlers. The new
  thread inherits the main thread's signal mask, so a helper it starts
  does too. Linux delivers a process-directed signal such as ^C to the
  main thread: it offers it to the thread-group leader first, and picks
  another thread only when the leader blocks it or already has a signal
  pending (and is then about to run the handlers anyway).
* When a signal handler raises an exception in the main thread during the
  wait (KeyboardInterrupt from ^C, or anything a handler of the program
  raises), the binding calls ``barge_user_cancel``, waits for the C call
  to return (the helper answers a cancel within milliseconds; an
  unresponsive one is killed after ``cancel_timeout``), drops any cancel
  the call did not consume (``barge_clear_cancel``: the call may have just
  completed, and a cancel left pending would fail the next call), and
  re-raises that exception. An exception raised by a further signal during
  that wait is dropped in favour of the first. Nothing partial is left by
  ``upload``/``download``, the helper keeps running (same pid), and the
  handle serves the next call. If the transfer had already completed when
  the cancel took effect, its result stands and the exception is raised
  all the same. During ``close`` a ^C cancels the operations it waits for
  on other threads, and is raised once the handle is closed.
* A handler that does not raise (say, it sets a flag or calls
  :meth:`Handle.cancel` itself) does not stop the call.
* Calls made off the main thread run in the calling thread; there, no
  signal handler can run anyway, and :meth:`Handle.cancel` from another
  thread (a GUI's cancel button) makes the call raise :class:`Cancelled`.

The helper itself runs in its own process group (``pgroup=True``), so a
terminal's ^C reaches only this program, never the helper.
"""

from ._errors import AbnormalShutdown, Cancelled, Error, TreeError
from ._handle import EventCallback, Handle, ProgressCallback
from ._lib import LibraryNotFoundError
from ._types import DirEntry, Event, EventKind, PathArg, PathError, Stat

__version__ = "0.1.0"


def library_version() -> str:
    """The version of the loaded ``libbarge.so``, e.g. ``"0.1.0"``."""
    from . import _lib

    version: bytes = _lib.load().barge_version()
    return version.decode("ascii")


def library_path() -> str:
    """Where ``libbarge.so`` was loaded from: a path, or ``libbarge.so.0``
    when the dynamic loader found an installed one."""
    from . import _lib

    return _lib.loaded_from()


__all__ = [
    "AbnormalShutdown",
    "Cancelled",
    "DirEntry",
    "Error",
    "Event",
    "EventCallback",
    "EventKind",
    "Handle",
    "LibraryNotFoundError",
    "PathArg",
    "PathError",
    "ProgressCallback",
    "Stat",
    "TreeError",
    "library_path",
    "library_version",
]
