#!/usr/bin/env python3
"""A tkinter window that uploads a file with barge: a progress bar and a
Cancel button that works even while the upload is blocked.

Usage: gui_upload.py [--root DIR] [--helper CMD] [--trace] LOCAL REMOTE

The upload runs on a worker thread, so the window keeps answering while
barge waits for data. The Cancel button calls ``Handle.cancel()`` from the
GUI thread; the worker's ``upload`` raises ``barge.Cancelled`` within
milliseconds, nothing partial is left behind, and "Upload" starts a new
upload over the same helper. tkinter must only be used from the thread that
runs its main loop, so the worker hands its news to the GUI through a queue
that the GUI polls with ``after()``.

With ``--trace`` the window also reports what it does on stdout, one event
per line, for scripts (tests/python.rs uses it):

    ready upload=X,Y,W,H cancel=X,Y,W,H quit=X,Y,W,H   buttons on the screen
    started N pid=PID                                   upload N began
    progress DONE                                       bytes sent so far
    cancel-clicked TIME                                 time.monotonic()
    result cancelled TIME | result done | result error ERRNO MESSAGE
    quit
"""

from __future__ import annotations

import argparse
import queue
import shlex
import threading
import time
import tkinter as tk
from tkinter import ttk
from typing import Optional, Tuple

import barge

POLL_MS = 20


class UploadWindow:
    """The window, its handle, and at most one upload at a time."""

    def __init__(self, root: tk.Tk, handle: barge.Handle, local: str, remote: str, trace: bool) -> None:
        self.root = root
        self.handle = handle
        self.local = local
        self.remote = remote
        self.trace_enabled = trace
        self.news: "queue.Queue[Tuple[object, ...]]" = queue.Queue()
        self.worker: Optional[threading.Thread] = None
        self.uploads = 0
        self.quitting = False

        root.title("barge upload")
        frame = ttk.Frame(root, padding=12)
        frame.grid()
        ttk.Label(frame, text=f"{local}  \u2192  {remote}").grid(columnspan=3, sticky="w")
        self.bar = ttk.Progressbar(frame, length=360, mode="indeterminate")
        self.bar.grid(columnspan=3, pady=8, sticky="we")
        self.status = ttk.Label(frame, text="idle", width=48)
        self.status.grid(columnspan=3, sticky="w")
        self.upload_button = ttk.Button(frame, text="Upload", command=self.start)
        self.cancel_button = ttk.Button(frame, text="Cancel", command=self.cancel, state="disabled")
        self.quit_button = ttk.Button(frame, text="Quit", command=self.quit)
        for column, button in enumerate((self.upload_button, self.cancel_button, self.quit_button)):
            button.grid(row=3, column=column, pady=(8, 0))
        root.protocol("WM_DELETE_WINDOW", self.quit)
        root.after(POLL_MS, self.poll)

    def trace(self, *fields: object) -> None:
        if self.trace_enabled:
            print(*fields, flush=True)

    def report_ready(self) -> None:
        """Trace where the buttons are, once the window is on the screen."""
        self.root.update_idletasks()

        def where(w: tk.Widget) -> str:
            return f"{w.winfo_rootx()},{w.winfo_rooty()},{w.winfo_width()},{w.winfo_height()}"

        self.trace(
            "ready",
            f"upload={where(self.upload_button)}",
            f"cancel={where(self.cancel_button)}",
            f"quit={where(self.quit_button)}",
        )

    # -- GUI thread ----------------------------------------------------------

    def start(self) -> None:
        """Start an upload on a worker thread."""
        if self.worker is not None or self.quitting:
            return
        self.uploads += 1
        self.upload_button.state(["disabled"])
        self.cancel_button.state(["!disabled"])
        self.bar.configure(mode="indeterminate", value=0)
        self.bar.start(50)
        self.status.configure(text="uploading\u2026")
        self.worker = threading.Thread(target=self.upload, name="upload", daemon=True)
        self.worker.start()

    def cancel(self) -> None:
        """The Cancel button: never blocks the GUI thread."""
        self.trace("cancel-clicked", time.monotonic())
        self.status.configure(text="cancelling\u2026")
        self.handle.cancel()

    def poll(self) -> None:
        """Apply the worker's news; runs every POLL_MS on the GUI thread."""
        try:
            while True:
                self.apply(self.news.get_nowait())
        except queue.Empty:
            pass
        if self.quitting and self.worker is None:
            self.handle.close()
            self.trace("quit")
            self.root.destroy()
            return
        self.root.after(POLL_MS, self.poll)

    def apply(self, item: Tuple[object, ...]) -> None:
        kind = item[0]
        if kind == "started":
            self.trace("started", self.uploads, f"pid={item[1]}")
        elif kind == "progress":
            done, total = item[1], item[2]
            assert isinstance(done, int)
            if isinstance(total, int) and total > 0:
                self.bar.stop()
                self.bar.configure(mode="determinate", maximum=total, value=done)
            self.status.configure(text=f"{done:,} bytes sent")
            self.trace("progress", done)
        else:
            assert self.worker is not None
            self.worker.join()
            self.worker = None
            self.bar.stop()
            self.upload_button.state(["!disabled"])
            self.cancel_button.state(["disabled"])
            if kind == "cancelled":
                self.status.configure(text="cancelled: nothing was left behind")
                self.trace("result", "cancelled", item[1])
            elif kind == "done":
                self.bar.configure(mode="determinate", maximum=1, value=1)
                self.status.configure(text="done")
                self.trace("result", "done")
            else:
                err = item[1]
                assert isinstance(err, barge.Error)
                self.status.configure(text=f"error: {err.message}")
                self.trace("result", "error", err.errno, err.message)

    def quit(self) -> None:
        """Cancel a running upload, then close the handle and the window."""
        self.quitting = True
        if self.worker is not None:
            self.handle.cancel()

    # -- worker thread -------------------------------------------------------

    def upload(self) -> None:
        """Runs on the worker; talks to the GUI only through the queue."""
        # A click that came after the last upload ended must not cancel
        # this one.
        self.handle.clear_cancel()
        try:
            self.handle.launch()
            self.news.put(("started", self.handle.helper_pid))
            self.handle.upload(
                self.local,
                self.remote,
                progress=lambda done, total: self.news.put(("progress", done, total)),
            )
        except barge.Cancelled:
            self.news.put(("cancelled", time.monotonic()))
        except barge.Error as e:
            self.news.put(("error", e))
        else:
            self.news.put(("done",))


def main() -> None:
    parser = argparse.ArgumentParser(description="Upload a file with barge, with a Cancel button.")
    parser.add_argument("local", help="the local file (a FIFO or device works too)")
    parser.add_argument("remote", help="the remote path")
    parser.add_argument("--root", help="confine remote paths beneath this directory")
    parser.add_argument("--helper", help="the command that starts the helper, e.g. 'ssh -T host barge-helper'")
    parser.add_argument("--trace", action="store_true", help="report events on stdout")
    args = parser.parse_args()

    helper = shlex.split(args.helper) if args.helper else None
    root = tk.Tk()
    with barge.Handle(root=args.root, helper=helper) as handle:
        window = UploadWindow(root, handle, args.local, args.remote, args.trace)
        root.after_idle(window.report_ready)
        root.after_idle(window.start)
        root.mainloop()


if __name__ == "__main__":
    main()
