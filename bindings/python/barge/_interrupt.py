"""Running a blocking C call so that ^C (or any signal handler that raises)
still interrupts it.

CPython runs Python-level signal handlers only in the main thread, between
bytecodes. A ctypes call is one bytecode, however long it blocks, so a ^C
during ``barge_upload`` would only be handled after the upload finished.

:func:`call_interruptibly` therefore runs the C call on a new thread and
makes the main thread wait in :meth:`threading.Event.wait`, which CPython
interrupts to run signal handlers. When a handler raises (the default
SIGINT handler raises :class:`KeyboardInterrupt`), the main thread cancels
the C call with ``barge_user_cancel``, keeps waiting until the call has
returned, drops any cancel the call did not consume with
``barge_clear_cancel``, and re-raises the handler's exception.

Signals: nothing here installs, replaces or restores a signal handler, and
no signal mask is changed. The new thread inherits the main thread's mask,
so a helper the C call starts inherits the program's mask as it would
without the binding. A process-directed signal (kill(2), a terminal's ^C)
goes to the main thread: Linux offers it to the thread-group leader first,
and takes another thread only when the leader blocks the signal or already
has one pending (in which case the leader is about to run the handlers of
every pending signal anyway).

A signal handler's exception may strike between any two bytecodes, so the
code below never relies on a statement after a thread start having run:
the call is wrapped in a :class:`_Job` that runs at most once however often
it is started, and the main thread always waits for it.
"""

from __future__ import annotations

import _thread
import threading
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


def in_main_thread() -> bool:
    """Whether the calling thread is the one CPython runs signal handlers in."""
    return threading.current_thread() is threading.main_thread()


class _Job(Generic[T]):
    """One call to run on another thread, exactly once."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._claim = threading.Lock()
        self.done = threading.Event()
        self.started = False
        self.value: Optional[T] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        """Run the call unless another thread already did or does."""
        if not self._claim.acquire(blocking=False):
            return
        try:
            self.value = self._call()
        except BaseException as e:  # noqa: B902 - handed to the waiting thread
            self.error = e
        finally:
            self.done.set()

    def start(self) -> None:
        """Start a thread for :meth:`run` (again, if a signal handler's
        exception struck before :attr:`started` was recorded; the second
        thread then does nothing). When no thread can be started, run the
        call here, uninterruptibly."""
        try:
            _thread.start_new_thread(self.run, ())
        except RuntimeError:
            self.run()
        self.started = True


def wait_uninterrupted(done: threading.Event) -> Optional[BaseException]:
    """Wait until ``done`` is set, whatever signal handlers raise meanwhile.
    Returns the first exception a handler raised, or None."""
    first: Optional[BaseException] = None
    while True:
        try:
            done.wait()
            return first
        except BaseException as e:  # noqa: B902 - a signal handler's exception, kept for later
            if first is None:
                first = e


def call_interruptibly(
    call: Callable[[], T],
    cancel: Callable[[], None],
    clear_cancel: Callable[[], None],
) -> T:
    """Run ``call()`` so that a signal handler raising in the main thread
    cancels it.

    Off the main thread, ``call()`` simply runs in the calling thread: no
    signal handler can run there. In the main thread it runs on a new
    thread (see the module docstring). If a signal handler raises while it
    runs, ``cancel()`` is called (it must be lock-free and quick:
    ``barge_user_cancel``), the call is waited for, whatever further
    handlers raise, then ``clear_cancel()`` drops a cancel the call did not
    consume (it may have ended just before), and the first exception is
    re-raised. Otherwise ``call()``'s result is returned, or its exception
    raised.
    """
    if not in_main_thread():
        return call()
    job = _Job(call)
    interrupt: Optional[BaseException] = None
    cancel_sent = False
    while True:
        try:
            if not job.started:
                job.start()
            if interrupt is not None and not cancel_sent:
                cancel()
                cancel_sent = True
            job.done.wait()
            break
        except BaseException as e:  # noqa: B902 - a signal handler's exception
            if interrupt is None:
                interrupt = e
    if interrupt is not None:
        clear_cancel()
        raise interrupt
    if job.error is not None:
        raise job.error
    return job.value  # type: ignore[return-value]


class Worker:
    """A helper thread for a pump (see ``_handle``) that a signal handler's
    exception in the starting thread cannot leave running unnoticed: create
    it, then :meth:`start` it inside a ``try`` whose ``finally`` calls
    :meth:`abandon`, which either stops it from ever running its body or
    reports that it runs, so that the caller waits for it."""

    def __init__(self, body: Callable[[], None]) -> None:
        self._body = body
        self._lock = threading.Lock()
        self._state = "new"  # -> "running" or "abandoned"
        self.done = threading.Event()

    def start(self) -> None:
        """Start the thread."""
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        with self._lock:
            if self._state == "abandoned":
                return
            self._state = "running"
        try:
            self._body()
        finally:
            self.done.set()

    def abandon(self) -> bool:
        """Stop the body from starting if it has not; returns whether it
        runs (or ran), in which case :attr:`done` will be set."""
        with self._lock:
            if self._state == "new":
                self._state = "abandoned"
                return False
            return True
