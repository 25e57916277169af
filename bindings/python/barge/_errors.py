"""The exceptions barge raises."""

from __future__ import annotations

import errno as _errno


class Error(OSError):
    """A barge call failed.

    It is an :class:`OSError`, so ``except OSError`` catches it too.

    Attributes:
        errno: the errno that describes the failure, comparable with the
            constants of the :mod:`errno` module (``ENOENT``, ``EACCES``,
            ``ECANCELED``, ...). See "Return values and errors" in the
            README for the full list.
        message: barge's message; it names the path, frame or process
            concerned, e.g. ``"open /srv/x: No such file or directory"``.
    """

    errno: int
    message: str

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, message)
        self.message = message

    def __reduce__(self) -> "tuple[type, tuple[int, str]]":
        return (type(self), (self.errno, self.message))


class Cancelled(Error):
    """The operation was cancelled (errno ``ECANCELED``): by
    :meth:`barge.Handle.cancel`, by a cancel that was pending when it
    started, or from the helper's side. The handle stays usable, and an
    upload or download left nothing partial behind."""


class TreeError(Error):
    """A tree copy with ``keep_going=True`` copied what it could, but some
    entries failed. ``errno`` and ``message`` are the first failure's.

    Attributes:
        errors: every failed entry, in the order met, as
            :class:`barge.PathError` values (path, errno, message).
    """

    def __init__(self, errno: int, message: str, errors: "list[object]") -> None:
        super().__init__(errno, message)
        self.errors = errors

    def __reduce__(self) -> "tuple[type, tuple[int, str, list[object]]]":  # type: ignore[override]
        return (type(self), (self.errno, self.message, self.errors))


class AbnormalShutdown(Error):
    """:meth:`barge.Handle.shutdown` could not stop the helper gracefully
    (errno ``EIO``): it was stopped with SIGTERM or SIGKILL instead. The
    helper is gone either way, and the next operation starts a new one."""


def error_from(err: int, message: str, *, shutdown: bool = False) -> Error:
    """The exception for a failed call: ``err`` and ``message`` as read
    from ``barge_get_errno``/``barge_get_error``. ``shutdown`` marks a
    failed ``barge_shutdown``, whose EIO means an abnormal shutdown."""
    if err == _errno.ECANCELED:
        return Cancelled(err, message)
    if shutdown and err == _errno.EIO:
        return AbnormalShutdown(err, message)
    return Error(err, message)
