"""Running a blocking C call so that ^C (or any signal handler that raises)
still interrupts it.

CPython runs Python-level signal handlers only in the main thread, between
bytecodes. A ctypes call is one bytecode, however long it blocks, so a ^C
during ``barge_upload`` would only be handled after the upload finished.

:func:`call_interruptibly` therefore runs the C call on a short-lived worker
thread and makes the main thread wait in :meth:`threading.Event.wait`, which
CPython interrupts to run signal handlers. When a handler raises (the
default SIGINT handler raises :class:`KeyboardInterrupt`), the main thread
cancels the C call with ``barge_user_cancel``, keeps waiting until the
worker has returned, drops any cancel the call did not consume with
``barge_clear_cancel``, and re-raises the handler's exception.

Signals: nothing here installs, replaces or restores a signal handler. The
worker thread starts with the asynchronous signals blocked (all but SIGSEGV,
SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, which the kernel sends to the
faulting thread, and SIGPIPE, which it sends to the writing thread), so
that a process-directed signal such as a terminal's ^C is delivered to the
main thread, where it interrupts the wait at once. To give the worker that
mask from its first instruction, the main thread blocks the same signals
for the few microseconds it takes to start the worker; a signal arriving
then stays pending and is delivered when the mask is restored.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

_THREAD_DIRECTED = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGPIPE,
}

#: The signals a worker thread blocks.
WORKER_BLOCKED = frozenset(signal.valid_signals()) - _THREAD_DIRECTED


class _Outcome:
    """What the worker thread's call returned or raised."""

    __slots__ = ("value", "error")

    def __init__(self) -> None:
        self.value: object = None
        self.error: Optional[BaseException] = None


def in_main_thread() -> bool:
    """Whether the calling thread is the one CPython runs signal handlers in."""
    return threading.current_thread() is threading.main_thread()


def start_worker(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread running ``target`` with :data:`WORKER_BLOCKED`
    blocked from its first instruction."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_BLOCKED)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return thread


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
    signal handler can run there. In the main thread it runs on a worker
    thread (see the module docstring). If a signal handler raises while it
    runs, ``cancel()`` is called (it must be async-signal-safe and
    lock-free: ``barge_user_cancel``), the worker is waited for, whatever
    further handlers raise, then ``clear_cancel()`` drops a cancel the call
    did not consume (it had already ended), and the first exception is
    re-raised. Otherwise ``call()``'s result is returned, or its exception
    raised.
    """
    if not in_main_thread():
        return call()
    outcome = _Outcome()
    done = threading.Event()

    def work() -> None:
        try:
            outcome.value = call()
        except BaseException as e:  # noqa: B902 - handed to the waiting thread
            outcome.error = e
        finally:
            done.set()

    start_worker(work, "barge-call")
    interrupt: Optional[BaseException] = None
    cancel_sent = False
    while True:
        try:
            if interrupt is not None and not cancel_sent:
                cancel()
                cancel_sent = True
            done.wait()
            break
        except BaseException as e:  # noqa: B902 - a signal handler's exception
            if interrupt is None:
                interrupt = e
    if interrupt is not None:
        clear_cancel()
        raise interrupt
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]
