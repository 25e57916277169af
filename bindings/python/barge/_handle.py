"""barge.Handle: one helper process and the operations that run over it."""

from __future__ import annotations

import errno as _errno
import io
import os
import socket
import sys
import threading
import traceback
import warnings
import weakref
from ctypes import POINTER, byref, c_char_p, c_size_t, string_at
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from . import _lib
from ._errors import Cancelled, Error, TreeError, error_from
from ._interrupt import Worker, call_interruptibly, in_main_thread, wait_uninterrupted
from ._types import (
    DirEntry,
    Event,
    EventSpec,
    PathArg,
    PathError,
    Stat,
    event_mask,
    fspath_bytes,
    wants_bytes,
)

#: A per-call progress callable: ``progress(done, total)``, ``total`` None
#: when the size is unknown (a pipe).
ProgressCallback = Callable[[int, Optional[int]], Any]

#: A callable registered with :meth:`Handle.on`.
EventCallback = Callable[[Event], Any]

_PUMP_CHUNK = 64 * 1024


class _CallState:
    """One C call in progress on one thread: what its callbacks need, and
    the first exception a callback raised."""

    __slots__ = ("ptr", "progress", "cancellable", "error", "cancel_sent")

    def __init__(self, ptr: int, progress: Optional[ProgressCallback], cancellable: bool) -> None:
        self.ptr = ptr
        self.progress = progress
        # Whether a failing callback may stop the call with
        # barge_user_cancel (not inside barge_close, which must not race
        # with it, nor inside shutdown, which a cancel would escalate).
        self.cancellable = cancellable
        self.error: Optional[BaseException] = None
        self.cancel_sent = False


class _Pump:
    """Moves data between a Python file object and one end of a pipe that
    barge reads or writes, for file objects without a usable fd, on a
    thread of its own.

    If the pump fails while the operation still runs, it cancels the
    operation (before anything else: an upload must not see end of file
    and commit a truncated file) and keeps its error for the caller.
    """

    def __init__(self, body: Callable[[], None], cancel: Callable[[], None], *, errors_after_op: bool) -> None:
        self._body = body
        self._cancel = cancel
        # Downloads: the pump still writes after barge returned, so its
        # errors then are real. Uploads: an error after barge returned is
        # the pipe the caller closed, and is ignored.
        self._errors_after_op = errors_after_op
        self.op_over = False
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self.worker = Worker(self._run)

    def _run(self) -> None:
        try:
            self._body()
        except BaseException as e:  # noqa: B902 - handed to the calling thread
            if not self.op_over:
                self._cancel()
                self.cancelled = True
                self.error = e
            elif self._errors_after_op:
                self.error = e


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _file_write_all(fileobj: Any, data: bytes) -> None:
    """Write all of ``data``: raw files may write less than asked."""
    while data:
        n = fileobj.write(data)
        if n is None:
            if isinstance(fileobj, io.RawIOBase):
                raise BlockingIOError(_errno.EAGAIN, "the file object would block")
            return  # a plain object whose write() returns nothing took it all
        data = data[n:]


def _require_binary(fileobj: Any) -> None:
    if isinstance(fileobj, io.TextIOBase):
        raise TypeError("a binary file object is required, not a text one (open with 'b')")


def _usable_fd(fileobj: Any) -> Optional[int]:
    """The file object's fd, or None when it has none (BytesIO, ...)."""
    fileno = getattr(fileobj, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _seekable(fileobj: Any) -> bool:
    seekable = getattr(fileobj, "seekable", None)
    try:
        return bool(seekable()) if seekable is not None else False
    except (OSError, ValueError):
        return False


class Handle:
    """A barge handle: one helper process, and the transfers and file
    operations that run over it.

    ::

        with barge.Handle(root="/srv/files") as h:
            h.upload("big.iso", "/incoming/big.iso", progress=print)

    The helper starts with the first operation (or :meth:`launch`) and
    serves every later one; after a cancel it is still the same helper.
    Leaving the ``with`` block shuts it down gracefully (:meth:`shutdown`,
    which may raise :class:`AbnormalShutdown`) and frees the handle
    (:meth:`close`); when the block is left by an exception, only
    :meth:`close` runs, which shuts down the same way but raises nothing.

    **Errors.** Every failure raises :class:`barge.Error` (an OSError) with
    ``.errno`` and ``.message``; a cancel raises :class:`barge.Cancelled`.
    Bad arguments raise TypeError or ValueError before barge is called; a
    closed handle raises ValueError.

    **^C and signals.** In the main thread, an operation runs the C call
    on a worker thread and waits interruptibly, so the program's own
    signal handlers still run during it. When one raises (the default
    SIGINT handler raises KeyboardInterrupt), the operation is cancelled
    (within milliseconds), waited for, and the handler's exception is
    re-raised: nothing partial is left, and the helper and the handle stay
    usable. The binding never installs or replaces a signal handler; see
    :mod:`barge` for the details. Off the main thread, calls run in the
    calling thread.

    **Threads.** A handle may be used from any thread; operations on one
    handle run one after another. :meth:`cancel` and :attr:`helper_pid`
    never wait for a running operation. :meth:`close` waits for running
    operations to end (call :meth:`cancel` first to hurry them).

    **Callbacks** (``progress=`` and :meth:`on`) run on the thread that
    runs the C call, inside it. An exception raised by a callback never
    crosses into C: it cancels the running operation and is re-raised by
    the call when it returns. A callback may call :meth:`cancel`,
    :meth:`clear_cancel`, :attr:`helper_pid`, :meth:`on` and :meth:`off`;
    any other call on its own handle raises Error with errno EDEADLK.

    Args:
        root: confine every remote path beneath this directory on the
            helper's side (None: no confinement).
        helper: the command that starts the helper, e.g.
            ``["ssh", "-T", "host", "barge-helper"]``; a single path is
            taken as a one-word command. None: the bundled helper
            (``$BARGE_HELPER`` overrides it).
        pgroup: run the helper in its own process group (the default), so
            a terminal's ^C reaches only this program.
        chunk_size: bytes per data frame, 4 KiB to 4 MiB (default 256 KiB).
        shutdown_timeout: seconds :meth:`shutdown` waits for the helper to
            exit before SIGTERM (default 3).
        kill_timeout: seconds after SIGTERM before SIGKILL (default 5).
        cancel_timeout: seconds the helper may take to answer a cancel
            before it is killed (default 2).
        launch_timeout: seconds the helper may take to start (default 30).
        progress_interval: least seconds between two progress events of a
            transfer (default 0.1; 0 gives one per data frame).
        keep_partial: keep the data of a cancelled or failed transfer under
            a hidden name, so the same transfer later resumes from it.
        fast_path: offer (True) or not (False) the fast path, where the
            helper, when it is this process's own child on the same kernel,
            copies local files in the kernel. None: offered to the default
            helper only. Results and guarantees are the same either way.

    Raises:
        Error: barge refused a setting (errno EINVAL) or could not create
            the handle.
        barge.LibraryNotFoundError: libbarge.so could not be loaded.
    """

    def __init__(
        self,
        root: Optional[PathArg] = None,
        helper: Union[PathArg, Sequence[PathArg], None] = None,
        pgroup: bool = True,
        chunk_size: Optional[int] = None,
        *,
        shutdown_timeout: Optional[float] = None,
        kill_timeout: Optional[float] = None,
        cancel_timeout: Optional[float] = None,
        launch_timeout: Optional[float] = None,
        progress_interval: Optional[float] = None,
        keep_partial: bool = False,
        fast_path: Optional[bool] = None,
    ) -> None:
        self._ptr: Optional[int] = None
        self._cond = threading.Condition(threading.RLock())
        self._active = 0
        self._closing = False
        self._tls = threading.local()
        self._handlers: Tuple[Tuple[int, int, EventCallback], ...] = ()
        self._next_handler_id = 0
        self._keep_partial = bool(keep_partial)
        self._lib = lib = _lib.load()

        helper_argv: Optional[List[bytes]] = None
        if helper is not None:
            if isinstance(helper, (str, bytes, os.PathLike)):
                helper = [helper]
            helper_argv = [fspath_bytes(a, "helper argument") for a in helper]
            if not helper_argv:
                raise ValueError("helper must name a command")
        root_b = fspath_bytes(root, "root") if root is not None else None
        settings = [
            ("chunk_size", chunk_size, lib.barge_set_chunk_size, 1),
            ("shutdown_timeout", shutdown_timeout, lib.barge_set_shutdown_timeout_ms, 1000),
            ("kill_timeout", kill_timeout, lib.barge_set_kill_timeout_ms, 1000),
            ("cancel_timeout", cancel_timeout, lib.barge_set_cancel_timeout_ms, 1000),
            ("launch_timeout", launch_timeout, lib.barge_set_launch_timeout_ms, 1000),
            ("progress_interval", progress_interval, lib.barge_set_progress_interval_ms, 1000),
        ]
        values = []
        for name, value, setter, scale in settings:
            if value is None:
                continue
            scaled = round(value * scale)
            if not 0 <= scaled <= 0xFFFF_FFFF:
                raise ValueError(f"{name} out of range: {value!r}")
            values.append((setter, scaled))

        ptr = lib.barge_create()
        if not ptr:
            raise error_from(*_lib.last_error())
        try:
            if helper_argv is not None:
                argv = (c_char_p * (len(helper_argv) + 1))(*helper_argv, None)
                self._check(lib.barge_set_helper(ptr, argv))
            if root_b is not None:
                self._check(lib.barge_set_root(ptr, root_b))
            self._check(lib.barge_set_pgroup(ptr, 1 if pgroup else 0))
            self._check(lib.barge_set_keep_partial(ptr, 1 if keep_partial else 0))
            if fast_path is not None:
                self._check(lib.barge_set_fast_path(ptr, 1 if fast_path else 0))
            for setter, scaled in values:
                self._check(setter(ptr, scaled))
            # One C callback for every event, kept alive as long as the
            # handle; it dispatches to the per-call progress callable and
            # to the callables registered with on(). It holds the handle
            # weakly so an unclosed handle can still be collected.
            self._c_callback = _lib.EVENT_CALLBACK(_trampoline(weakref.ref(self)))
            cb_id = lib.barge_set_event_callback(ptr, self._c_callback, _lib.EVENT_ALL, None)
            if cb_id < 0:
                raise error_from(*_lib.last_error())
        except BaseException:
            lib.barge_close(ptr)
            raise
        self._ptr = ptr

    @staticmethod
    def _check(rc: int) -> None:
        if rc < 0:
            raise error_from(*_lib.last_error())

    # -- lifetime --------------------------------------------------------

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None and not self.closed:
                self.shutdown()
        finally:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "_ptr", None) is not None:
            try:
                warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        if self.closed:
            return "<barge.Handle closed>"
        return f"<barge.Handle helper_pid={self.helper_pid}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._ptr is None

    def close(self) -> None:
        """Shut the helper down (gracefully, then SIGTERM, then SIGKILL,
        bounded by the timeouts) and free the handle. A pending cancel is
        dropped first. Waits for operations running on other threads to
        end (a ^C meanwhile cancels them). Closing twice does nothing.
        SHUTDOWN callbacks run during this call; an exception one raises is
        re-raised after the handle is freed.

        Raises:
            Error: EDEADLK when called from a callback of this handle.
        """
        if getattr(self._tls, "state", None) is not None:
            raise Error(_errno.EDEADLK, "close() called from an event callback of its own handle")

        def call() -> Optional[BaseException]:
            with self._cond:
                if self._ptr is None:
                    return None
                self._closing = True
                while self._active:
                    self._cond.wait()
                ptr, self._ptr = self._ptr, None
            state = _CallState(ptr, None, cancellable=False)
            self._tls.state = state
            try:
                self._lib.barge_close(ptr)
            finally:
                self._tls.state = None
            return state.error

        # In the main thread this runs on another thread, like every
        # operation: a ^C meanwhile cancels the operations close() waits
        # for, and is raised once the handle is closed.
        error = call_interruptibly(call, self.cancel, lambda: None) if in_main_thread() else call()
        if error is not None:
            raise error

    # -- plumbing ----------------------------------------------------------

    def _in_use(self) -> "_InUse":
        """A context whose value is the C handle, which stays valid (not
        closed) until the context exits. Raises ValueError when closed."""
        return _InUse(self)

    def _run(
        self,
        c_call: Callable[[int], int],
        *,
        progress: Optional[ProgressCallback] = None,
        cancellable: bool = True,
        shutdown: bool = False,
    ) -> None:
        """Run ``c_call(ptr)`` with callbacks routed to this call (in the
        main thread through :func:`call_interruptibly`), and raise the
        callback's exception or barge's error if there is one."""
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")

        def call() -> Tuple[Optional[Tuple[int, str]], Optional[BaseException]]:
            # The use of the C handle is counted on the thread that makes
            # the C call: never the main thread when the call is
            # interruptible, so a signal handler's exception cannot leave
            # the count wrong.
            with self._in_use() as ptr:
                state = _CallState(ptr, progress, cancellable)
                outer = getattr(self._tls, "state", None)
                self._tls.state = state
                try:
                    failure = _lib.last_error() if c_call(ptr) < 0 else None
                finally:
                    self._tls.state = outer
                if state.error is not None and state.cancel_sent:
                    self._lib.barge_clear_cancel(ptr)
                return failure, state.error

        # A call made from one of this handle's callbacks runs in the
        # callback's thread, so that barge sees the re-entry and says
        # EDEADLK instead of waiting for its own caller.
        in_callback = getattr(self._tls, "state", None) is not None
        if not in_callback and in_main_thread():
            failure, callback_error = call_interruptibly(call, self.cancel, self.clear_cancel)
        else:
            failure, callback_error = call()
        if callback_error is not None:
            raise callback_error
        if failure is not None:
            raise error_from(*failure, shutdown=shutdown)

    def _dispatch(self, ev: _lib.EventStruct) -> None:
        """Called by barge (through the trampoline) for every event."""
        state: Optional[_CallState] = getattr(self._tls, "state", None)
        kind = ev.kind
        if kind == _lib.EVENT_PROGRESS and state is not None and state.progress is not None:
            try:
                state.progress(ev.done, ev.total if ev.total >= 0 else None)
            except BaseException as e:  # noqa: B902 - must not unwind into C
                self._callback_failed(state, e)
        handlers = [fn for (_id, mask, fn) in self._handlers if mask & kind]
        if not handlers:
            return
        if kind == _lib.EVENT_SHUTDOWN:
            handlers.reverse()
        event = Event._from_struct(ev)
        for fn in handlers:
            try:
                fn(event)
            except BaseException as e:  # noqa: B902 - must not unwind into C
                self._callback_failed(state, e)

    def _callback_failed(self, state: Optional[_CallState], e: BaseException) -> None:
        if state is None:
            # Every event arrives inside a call that set a state; this is
            # only a safety net.
            print("barge: exception in an event callback:", file=sys.stderr)
            traceback.print_exception(type(e), e, e.__traceback__)
            return
        if state.error is None:
            state.error = e
        if state.cancellable and not state.cancel_sent:
            self._lib.barge_user_cancel(state.ptr)
            state.cancel_sent = True

    # -- cancel and process control ---------------------------------------

    def cancel(self) -> None:
        """Cancel the running operation, or the next one if none runs.

        Safe from any thread and from a signal handler; never waits for
        the running operation. The cancelled call raises
        :class:`Cancelled` (normally within a few milliseconds), leaves
        nothing partial behind, and the helper stays the same. A cancel
        made while no operation runs is kept and makes the next operation
        raise Cancelled at once (see :meth:`clear_cancel`). After
        :meth:`close` it does nothing.
        """
        with self._cond:
            if self._ptr is not None:
                self._lib.barge_user_cancel(self._ptr)

    def clear_cancel(self) -> None:
        """Drop a pending cancel, so the next operation runs. A cancel
        racing with this call may or may not be dropped."""
        with self._cond:
            if self._ptr is not None:
                self._lib.barge_clear_cancel(self._ptr)

    @property
    def helper_pid(self) -> Optional[int]:
        """The running helper's pid, or None when none runs. Never waits
        for a running operation: during one it is the helper that
        operation uses."""
        with self._cond:
            if self._ptr is None:
                return None
            pid = self._lib.barge_helper_pid(self._ptr)
        return pid if pid >= 0 else None

    @property
    def uses_fast_path(self) -> bool:
        """Whether the running helper uses the fast path (local files passed
        as fds and copied in the kernel). False when no helper runs. Waits
        for a running operation on the handle."""
        result: List[int] = []

        def call(p: int) -> int:
            r = int(self._lib.barge_uses_fast_path(p))
            result.append(r)
            return r

        self._run(call, cancellable=False)
        return result == [1]

    def launch(self) -> None:
        """Start the helper now if none runs (operations do it anyway)."""
        self._run(lambda p: self._lib.barge_launch(p))

    def shutdown(self) -> None:
        """Stop the helper: ask it to exit, wait up to ``shutdown_timeout``,
        then SIGTERM, then SIGKILL. The helper is always gone afterwards;
        the next operation starts a new one. Does nothing when no helper
        runs.

        Raises:
            AbnormalShutdown: the graceful step failed (errno EIO), so the
                helper was stopped by signal.
        """
        self._run(lambda p: self._lib.barge_shutdown(p), cancellable=False, shutdown=True)

    def kill(self) -> None:
        """Stop the helper at once with SIGKILL and reap it."""
        self._run(lambda p: self._lib.barge_kill(p), cancellable=False)

    # -- events ------------------------------------------------------------

    def on(self, event: EventSpec, callback: EventCallback) -> int:
        """Call ``callback(event)`` for every event of the given kinds.

        Args:
            event: an :class:`EventKind` (or several or'ed together), a
                name such as ``"progress"``, ``"launched"``, ``"log"``,
                ``"shutdown"`` or ``"all"``, or an iterable of those.
            callback: called with an :class:`Event` on the thread that
                runs the operation, inside it. LAUNCHED, PROGRESS and LOG
                callables run in registration order, SHUTDOWN ones in
                reverse order.

        Returns:
            An id for :meth:`off`.
        """
        mask = event_mask(event)
        if not callable(callback):
            raise TypeError("callback must be callable")
        with self._cond:
            handler_id = self._next_handler_id
            self._next_handler_id += 1
            self._handlers = self._handlers + ((handler_id, mask, callback),)
        return handler_id

    def off(self, handler_id: int) -> None:
        """Remove the callable registered under ``handler_id``. An event
        being dispatched on another thread at that moment may still reach
        it once.

        Raises:
            KeyError: no callable has this id.
        """
        with self._cond:
            kept = tuple(h for h in self._handlers if h[0] != handler_id)
            if len(kept) == len(self._handlers):
                raise KeyError(handler_id)
            self._handlers = kept

    # -- transfers ---------------------------------------------------------

    def upload(self, local: PathArg, remote: PathArg, *, progress: Optional[ProgressCallback] = None) -> None:
        """Upload the local file ``local`` to ``remote``.

        ``local`` may be any readable file: regular, FIFO or character
        device, read to its end. The remote file appears only when
        complete; after an error or a cancel nothing partial is left, and
        an existing file is untouched.

        Args:
            progress: called as ``progress(done, total)`` on the thread
                running the transfer; ``total`` is None when unknown.

        Raises:
            Cancelled: by :meth:`cancel`.
            KeyboardInterrupt: on ^C in the main thread, after the
                transfer was cancelled.
            Error: anything else, with its errno (ENOENT, EACCES, ...).
        """
        local_b = fspath_bytes(local, "local path")
        remote_b = fspath_bytes(remote, "remote path")
        self._run(lambda p: self._lib.barge_upload(p, local_b, remote_b), progress=progress)

    def download(self, remote: PathArg, local: PathArg, *, progress: Optional[ProgressCallback] = None) -> None:
        """Download ``remote`` to the local file ``local``. The local file
        appears only when complete and verified; after an error or a
        cancel nothing partial is left, and an existing file is untouched.
        Arguments and errors as for :meth:`upload`."""
        remote_b = fspath_bytes(remote, "remote path")
        local_b = fspath_bytes(local, "local path")
        self._run(lambda p: self._lib.barge_download(p, remote_b, local_b), progress=progress)

    @property
    def keep_partial(self) -> bool:
        """Whether an interrupted :meth:`upload` or :meth:`download` keeps
        its data for a later attempt (default False).

        When True, a cancelled or failed transfer leaves what it moved in
        ``.NAME.barge-partial`` in the destination directory (never under
        NAME), and the next transfer to the same destination continues
        after it once the helper has verified it against the source's
        prefix with a checksum; it starts over when they differ. Progress
        then counts the bytes this call moves. Regular files only; when
        False, nothing partial is ever left.
        """
        return self._keep_partial

    @keep_partial.setter
    def keep_partial(self, enable: bool) -> None:
        value = 1 if enable else 0
        self._run(lambda p: self._lib.barge_set_keep_partial(p, value), cancellable=False)
        self._keep_partial = bool(enable)

    def copy_in(
        self,
        local: PathArg,
        remote_dir: PathArg,
        *,
        keep_going: bool = False,
        preserve: bool = True,
        progress: Optional[ProgressCallback] = None,
    ) -> None:
        """Copy the local file or directory ``local`` into the remote
        directory ``remote_dir``, recursively, as ``remote_dir/NAME``
        (like ``cp -r local remote_dir/``).

        Files, directories and symlinks are copied (symlinks as links,
        never followed); special files are skipped, each with a LOG event.
        Every entry is streamed in one request. Each file appears only
        when complete: after a cancel, the files already copied stay and
        nothing partial is left.

        Args:
            keep_going: copy the rest when an entry fails, then raise
                :class:`TreeError` listing every failure; otherwise the
                first failure raises at once.
            preserve: keep modes and modification times.
            progress: called as ``progress(done, total)`` with the bytes of
                the whole tree (events carry file counts too).

        Raises:
            Cancelled, TreeError, Error.
        """
        self._copy_tree("barge_copy_in", local, remote_dir, keep_going, preserve, progress)

    def copy_out(
        self,
        remote: PathArg,
        local_dir: PathArg,
        *,
        keep_going: bool = False,
        preserve: bool = True,
        progress: Optional[ProgressCallback] = None,
    ) -> None:
        """Copy the remote file or directory ``remote`` into the local
        directory ``local_dir``, recursively, as ``local_dir/NAME``. The
        counterpart of :meth:`copy_in`, with the same arguments and rules."""
        self._copy_tree("barge_copy_out", remote, local_dir, keep_going, preserve, progress)

    def _copy_tree(
        self,
        func: str,
        src: PathArg,
        dst: PathArg,
        keep_going: bool,
        preserve: bool,
        progress: Optional[ProgressCallback],
    ) -> None:
        src_b = fspath_bytes(src, "source path")
        dst_b = fspath_bytes(dst, "destination directory")
        lib = self._lib
        copy = getattr(lib, func)
        kg = 1 if keep_going else 0
        pr = 1 if preserve else 0

        def call(p: int) -> int:
            if lib.barge_set_keep_going(p, kg) < 0 or lib.barge_set_preserve_metadata(p, pr) < 0:
                return -1
            result: int = copy(p, src_b, dst_b)
            return result

        try:
            self._run(call, progress=progress)
        except Cancelled:
            raise
        except Error as e:
            errors = self._tree_errors() if keep_going else []
            if errors:
                raise TreeError(e.errno, e.message, errors) from None
            raise

    def _tree_errors(self) -> List[PathError]:
        """The failed entries of the last tree copy."""
        arr = POINTER(_lib.PathErrorStruct)()
        count = c_size_t(0)
        with self._in_use() as ptr:
            if self._lib.barge_get_tree_errors(ptr, byref(arr), byref(count)) < 0:
                return []
        try:
            return [
                PathError(
                    os.fsdecode(string_at(arr[i].path, arr[i].path_len)),
                    arr[i].err,
                    (arr[i].message or b"").decode("utf-8", "replace"),
                )
                for i in range(count.value)
            ]
        finally:
            self._lib.barge_free_path_errors(arr, count.value)

    def upload_file(self, fileobj: Any, remote: PathArg, *, progress: Optional[ProgressCallback] = None) -> None:
        """Upload everything readable from the binary file object
        ``fileobj`` (from its current position to its end) to ``remote``.

        A file object with a file descriptor that barge can read without
        losing buffered data (a seekable file, or an unbuffered one such as
        a socket or ``open(..., buffering=0)``) is read through that fd;
        afterwards a seekable one is positioned at the end of what was
        read. Any other object with ``read()`` (BytesIO, a buffered pipe,
        a gzip file) is read on a helper thread and fed to barge through a
        pipe. The remote file appears only when complete. The object is
        not closed. Arguments and errors as for :meth:`upload`; an
        exception raised by ``fileobj.read`` cancels the upload and is
        re-raised.
        """
        _require_binary(fileobj)
        remote_b = fspath_bytes(remote, "remote path")
        fd = _usable_fd(fileobj)
        seekable = _seekable(fileobj)
        if fd is not None and (seekable or isinstance(fileobj, (io.RawIOBase, socket.socket))):
            if seekable:
                os.lseek(fd, fileobj.tell(), os.SEEK_SET)
            try:
                self._run(lambda p: self._lib.barge_upload_fd(p, fd, remote_b), progress=progress)
            finally:
                if seekable:
                    fileobj.seek(os.lseek(fd, 0, os.SEEK_CUR))
            return
        if not callable(getattr(fileobj, "read", None)):
            raise TypeError("fileobj must have read() or a file descriptor")
        read_end, write_end = os.pipe()

        def feed(close: Callable[[int], None]) -> None:
            while True:
                data = fileobj.read(_PUMP_CHUNK)
                if not data:
                    break
                _write_all(write_end, data)
            # End of file reaches barge only after every byte was written;
            # after a failure the pipe stays open until barge returned.
            close(write_end)

        self._with_pump(
            feed,
            lambda p: self._lib.barge_upload_fd(p, read_end, remote_b),
            read_end,
            write_end,
            progress,
            errors_after_op=False,
        )

    def download_file(self, remote: PathArg, fileobj: Any, *, progress: Optional[ProgressCallback] = None) -> None:
        """Download ``remote`` into the binary file object ``fileobj``, at
        its current position.

        An object with a file descriptor is flushed and written through
        it (a seekable one ends positioned after the data); any other
        object with ``write()`` is written on a helper thread from a pipe.
        Bytes reach the object as they arrive, so after an error or a
        cancel it may hold a prefix of the file. The object is neither
        closed nor flushed afterwards. Arguments and errors as for
        :meth:`upload`; an exception raised by ``fileobj.write`` cancels
        the download and is re-raised.
        """
        _require_binary(fileobj)
        remote_b = fspath_bytes(remote, "remote path")
        fd = _usable_fd(fileobj)
        if fd is not None:
            seekable = _seekable(fileobj)
            position = fileobj.tell() if seekable else None
            flush = getattr(fileobj, "flush", None)
            if flush is not None:
                flush()
            if position is not None:
                os.lseek(fd, position, os.SEEK_SET)
            try:
                self._run(lambda p: self._lib.barge_download_fd(p, remote_b, fd), progress=progress)
            finally:
                if seekable:
                    fileobj.seek(os.lseek(fd, 0, os.SEEK_CUR))
            return
        if not callable(getattr(fileobj, "write", None)):
            raise TypeError("fileobj must have write() or a file descriptor")
        read_end, write_end = os.pipe()

        def drain(_close: Callable[[int], None]) -> None:
            while True:
                data = os.read(read_end, _PUMP_CHUNK)
                if not data:
                    break
                _file_write_all(fileobj, data)

        self._with_pump(
            drain,
            lambda p: self._lib.barge_download_fd(p, remote_b, write_end),
            write_end,
            read_end,
            progress,
            errors_after_op=True,
        )

    def _with_pump(
        self,
        body: Callable[[Callable[[int], None]], None],
        c_call: Callable[[int], int],
        barge_end: int,
        pump_end: int,
        progress: Optional[ProgressCallback],
        *,
        errors_after_op: bool,
    ) -> None:
        """Run ``c_call`` while a :class:`_Pump` runs ``body(close)``, where
        ``close(fd)`` closes a pipe end from the pump's thread. barge's end
        is closed as soon as barge returns (so the pump sees EOF or EPIPE),
        the pump's end after the pump ended, unless it closed it itself.
        An error of the pump wins over the Cancelled it caused; an
        exception from a signal handler or a callback wins over both."""
        open_fds = {barge_end, pump_end}

        def close(fd: int) -> None:
            os.close(fd)
            open_fds.discard(fd)

        pump = _Pump(lambda: body(close), self.cancel, errors_after_op=errors_after_op)
        op_error: Optional[BaseException] = None
        try:
            pump.worker.start()
            self._run(c_call, progress=progress)
        except BaseException as e:  # noqa: B902 - ranked below
            op_error = e
        finally:
            pump.op_over = True
            close(barge_end)
            if pump.worker.abandon():
                interrupt = wait_uninterrupted(pump.worker.done)
                if interrupt is not None and op_error is None:
                    op_error = interrupt
            # Only now, with the pump gone, may its end be closed: a
            # closed fd number can be reused at once by another open.
            for fd in list(open_fds):
                close(fd)
        if pump.cancelled:
            self.clear_cancel()
        if op_error is not None and not isinstance(op_error, Error):
            raise op_error
        if pump.error is not None:
            raise pump.error
        if op_error is not None:
            raise op_error

    # -- file operations ---------------------------------------------------

    def stat(self, path: PathArg) -> Stat:
        """Metadata of the remote ``path``, following symlinks."""
        path_b = fspath_bytes(path)
        out = _lib.StatStruct()
        self._run(lambda p: self._lib.barge_stat(p, path_b, byref(out)))
        return Stat._from_struct(out)

    def scandir(self, path: PathArg) -> List[DirEntry]:
        """The entries of the remote directory ``path`` with their
        metadata, without ``.`` and ``..``, in no particular order. Names
        are bytes when ``path`` is bytes, else str (:func:`os.fsdecode`)."""
        as_bytes = wants_bytes(path)
        path_b = fspath_bytes(path)
        entries = POINTER(_lib.DirentStruct)()
        count = c_size_t(0)
        self._run(lambda p: self._lib.barge_list(p, path_b, byref(entries), byref(count)))
        try:
            result = []
            for i in range(count.value):
                e = entries[i]
                name = string_at(e.name, e.name_len)
                result.append(DirEntry(name if as_bytes else os.fsdecode(name), Stat._from_struct(e.st)))
            return result
        finally:
            self._lib.barge_free_dirents(entries, count.value)

    def listdir(self, path: PathArg) -> List[Union[str, bytes]]:
        """The names in the remote directory ``path``, as :func:`os.listdir`
        gives them: without ``.`` and ``..``, in no particular order, bytes
        when ``path`` is bytes."""
        return [e.name for e in self.scandir(path)]

    def mkdir(self, path: PathArg, parents: bool = False) -> None:
        """Create the remote directory ``path``. With ``parents``, create
        missing parents too and accept an existing directory."""
        path_b = fspath_bytes(path)
        self._run(lambda p: self._lib.barge_mkdir(p, path_b, 1 if parents else 0))

    def remove(self, path: PathArg) -> None:
        """Remove the remote file, symlink or empty directory ``path``."""
        path_b = fspath_bytes(path)
        self._run(lambda p: self._lib.barge_remove(p, path_b))

    def rename(self, src: PathArg, dst: PathArg) -> None:
        """Rename the remote entry ``src`` to ``dst``, replacing ``dst``."""
        src_b = fspath_bytes(src, "source path")
        dst_b = fspath_bytes(dst, "destination path")
        self._run(lambda p: self._lib.barge_rename(p, src_b, dst_b))


class _InUse:
    """Counts a thread's use of the C handle, so that :meth:`Handle.close`
    never frees it while a call is about to start or running."""

    __slots__ = ("_handle",)

    def __init__(self, handle: Handle) -> None:
        self._handle = handle

    def __enter__(self) -> int:
        h = self._handle
        with h._cond:
            if h._ptr is None or h._closing:
                raise ValueError("operation on a closed barge handle")
            h._active += 1
            return h._ptr

    def __exit__(self, *exc: Any) -> None:
        h = self._handle
        with h._cond:
            h._active -= 1
            if h._active == 0:
                h._cond.notify_all()


def _trampoline(handle_ref: "weakref.ReferenceType[Handle]") -> Callable[[Optional[int], Any], None]:
    """The Python function behind the handle's C callback. Nothing raised
    here may reach ctypes (it would print and drop it), so everything is
    caught by Handle._dispatch."""

    def on_event(_opaque: Optional[int], ev: Any) -> None:
        handle = handle_ref()
        if handle is not None:
            handle._dispatch(ev.contents)

    return on_event
