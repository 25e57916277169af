"""A program that starts a large transfer and is interrupted by ^C; run by
test_sigint_subprocess.py. Its SIGINT handler notes the time and then is
Python's default one (``signal.default_int_handler``, which raises
KeyboardInterrupt), so the test can tell the signal's delivery apart from
the cancel that follows.

Usage: interrupted_transfer.py ROOT upload FIFO | download LOCAL_TARGET

It prints, one per line: ``helper PID`` once launched, ``progress DONE``
for the first progress event, then after the ^C ``interrupted
HANDLED_TIME RAISED_TIME`` (time.monotonic() when the handler ran, and when
the KeyboardInterrupt reached the program), ``helper-after PID``, ``next-ok`` once a second transfer
on the same handle worked; then it waits for a line on stdin (the test
looks at the helper and the files meanwhile), closes the handle (printing
``shutdown PID graceful=...`` from the SHUTDOWN event), and re-raises the
KeyboardInterrupt, so Python exits as killed by SIGINT.
"""

import os
import signal
import sys
import time
from types import FrameType
from typing import List, Optional

import barge


def main() -> None:
    root, mode, path = sys.argv[1], sys.argv[2], sys.argv[3]
    reported: List[int] = []
    handled: List[float] = []

    def on_sigint(signum: int, frame: Optional[FrameType]) -> None:
        handled.append(time.monotonic())
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)

    def progress(done: int, total: object) -> None:
        if not reported:
            reported.append(done)
            print("progress", done, flush=True)
        if mode == "download":
            time.sleep(0.001)  # hold the download to ~16 MB/s

    # The helper named explicitly (not the default one) runs the stream
    # path, whose progress events come per 16 KiB frame, so the callback
    # above holds a download long enough to be interrupted; the kernel copy
    # of the fast path would finish 32 MiB in milliseconds.
    helper = [os.environ["BARGE_HELPER"]]
    with barge.Handle(root=root, helper=helper, chunk_size=16384, progress_interval=0) as h:
        h.on("shutdown", lambda e: print("shutdown", e.pid, f"graceful={e.graceful}", flush=True))
        h.launch()
        print("helper", h.helper_pid, flush=True)
        try:
            if mode == "upload":
                h.upload(path, "/big.bin", progress=progress)
            else:
                h.download("/big.bin", path, progress=progress)
            print("completed", flush=True)
        except KeyboardInterrupt:
            print("interrupted", handled[0], time.monotonic(), flush=True)
            print("helper-after", h.helper_pid, flush=True)
            small = os.path.join(os.path.dirname(path), "small.src")
            with open(small, "wb") as f:
                f.write(b"after the interrupt")
            h.upload(small, "/small.bin")
            print("next-ok", flush=True)
            sys.stdin.readline()
            raise


if __name__ == "__main__":
    main()
