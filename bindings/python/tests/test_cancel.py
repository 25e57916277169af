"""Cancels: ^C in the main thread (the program's own SIGINT handler in
charge), h.cancel() from a second thread at random moments, and signals
arriving at random points of a call."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import unittest
from typing import Callable, List, Optional

import support
from support import barge

#: The promise: once the ^C is handled, the transfer is cancelled and
#: KeyboardInterrupt raised within 100 ms (as the C tests measure it).
CANCEL_BOUND = 0.100
#: The signal must reach its handler while the call is still blocked; how
#: fast the kernel schedules that is not barge's to promise, so generous.
DELIVERY_BOUND = 2.0


def seed() -> int:
    """A seed for the random moments, printed so a failure replays
    (set BARGE_TEST_SEED to replay one)."""
    value = int(os.environ.get("BARGE_TEST_SEED") or time.time_ns() % 1_000_000)
    print(f"[seed {value}]", end=" ", flush=True)
    return value


class Interrupter(threading.Thread):
    """Sends SIGINT to this process (like a terminal's ^C) once ``ready()``
    holds, and records when."""

    def __init__(
        self,
        ready: Callable[[], bool],
        delay: float = 0.0,
        handle: Optional[barge.Handle] = None,
    ) -> None:
        super().__init__(daemon=True)
        self.ready = ready
        self.delay = delay
        self.handle = handle
        self.sent_at: Optional[float] = None
        self.noticed = threading.Event()

    def run(self) -> None:
        support.wait_until(self.ready, "the transfer to be under way")
        if self.delay:
            time.sleep(self.delay)  # a random moment, not a wait for a state
        self.sent_at = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)
        # Should the signal not reach the blocked call, cancel it after a
        # while, so that the test fails on its latency instead of hanging.
        if self.handle is not None and not self.noticed.wait(5.0):
            self.handle.cancel()

    def stand_down(self) -> None:
        """The signal was noticed: no need for the safety net."""
        self.noticed.set()


class SigintInTheMainThread(support.TempDirs):
    def setUp(self) -> None:
        super().setUp()
        self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)
        self.fifo = support.Fifo(self.local)
        self.addCleanup(self.fifo.finish)
        # Python's default handler, with the time it ran noted, so that
        # the signal's delivery is told apart from the cancel.
        self.handled: List[float] = []

        def noting_default(signum: int, frame: object) -> None:
            self.handled.append(time.monotonic())
            signal.default_int_handler(signum, frame)  # type: ignore[arg-type]

        signal.signal(signal.SIGINT, noting_default)
        self.addCleanup(signal.signal, signal.SIGINT, signal.default_int_handler)

    def check_latency(self, killer: Interrupter, raised_at: float) -> float:
        """Check the delivery and the cancel latency of one ^C; returns the
        latter."""
        killer.stand_down()
        killer.join()
        self.assertEqual(len(self.handled), 1)
        assert killer.sent_at is not None
        self.assertLess(self.handled[0] - killer.sent_at, DELIVERY_BOUND)
        latency = raised_at - self.handled[0]
        self.assertLess(latency, CANCEL_BOUND)
        return latency

    def check_handle_survives(self, h: barge.Handle, pid: Optional[int]) -> None:
        self.assertEqual(h.helper_pid, pid, "the same helper serves on")
        data = os.urandom(100_000)
        h.upload(self.write_local("next", data), "/next")
        self.assertEqual(self.read(os.path.join(self.root, "next")), data)

    def test_sigint_cancels_an_upload_blocked_on_an_empty_pipe(self) -> None:
        with support.handle(self.root) as h:
            h.launch()
            pid = h.helper_pid
            self.fifo.feed(os.urandom(60000))
            progressed = threading.Event()
            # Under way: barge read everything there is and sent some.
            killer = Interrupter(lambda: progressed.is_set() and self.fifo.unread() == 0, handle=h)
            killer.start()
            with self.assertRaises(KeyboardInterrupt):
                h.upload(self.fifo.path, "/big", progress=lambda d, t: progressed.set())
            latency = self.check_latency(killer, time.monotonic())
            print(f"[^C handled to KeyboardInterrupt: {latency * 1000:.1f} ms]", end=" ", flush=True)
            self.assertEqual(support.tree(self.root), [], "nothing partial, not even a hidden temp")
            self.check_handle_survives(h, pid)

    def test_sigint_cancels_a_download(self) -> None:
        with open(os.path.join(self.root, "big"), "wb") as f:
            f.write(os.urandom(16 << 20))
        with open(os.path.join(self.local, "existing"), "wb") as f:
            f.write(b"keep me")
        with support.handle(self.root, progress_interval=0) as h:
            h.launch()
            pid = h.helper_pid
            progressed = threading.Event()

            def slow(done: int, total: Optional[int]) -> None:
                progressed.set()
                time.sleep(0.001)  # holds the transfer to ~16 MB/s

            killer = Interrupter(progressed.is_set, handle=h)
            killer.start()
            with self.assertRaises(KeyboardInterrupt):
                h.download("/big", os.path.join(self.local, "existing"), progress=slow)
            self.check_latency(killer, time.monotonic())
            self.assertEqual(support.tree(self.local), ["existing", "fifo"], "no temp file left")
            self.assertEqual(self.read(os.path.join(self.local, "existing")), b"keep me")
            self.check_handle_survives(h, pid)

    def test_the_programs_own_handler_stays_and_decides(self) -> None:
        class Stop(Exception):
            pass

        calls: List[int] = []

        def raising(signum: int, frame: object) -> None:
            calls.append(signum)
            self.handled.append(time.monotonic())
            raise Stop()

        signal.signal(signal.SIGINT, raising)
        with support.handle(self.root) as h:
            h.launch()
            pid = h.helper_pid
            self.fifo.feed(os.urandom(60000))
            progressed = threading.Event()
            killer = Interrupter(lambda: progressed.is_set() and self.fifo.unread() == 0, handle=h)
            killer.start()
            with self.assertRaises(Stop):
                h.upload(self.fifo.path, "/big", progress=lambda d, t: progressed.set())
            self.check_latency(killer, time.monotonic())
            self.assertEqual(calls, [signal.SIGINT])
            self.assertIs(signal.getsignal(signal.SIGINT), raising, "the handler was not replaced")
            self.assertEqual(support.tree(self.root), [])
            self.check_handle_survives(h, pid)

    def test_a_handler_that_does_not_raise_runs_during_the_call_and_the_transfer_goes_on(self) -> None:
        calls: List[int] = []
        signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
        first, rest = os.urandom(60000), os.urandom(50000)

        def feed_after_the_handler_ran() -> None:
            support.wait_until(lambda: self.fifo.unread() == 0, "the first part to be read")
            os.kill(os.getpid(), signal.SIGINT)
            # The handler runs while the C call is still blocked on the
            # FIFO; only then does the upload get the rest and its end.
            support.wait_until(lambda: calls == [signal.SIGINT], "the program's handler to run")
            self.fifo.feed(rest)
            self.fifo.finish()

        with support.handle(self.root) as h:
            self.fifo.feed(first)
            feeder = threading.Thread(target=feed_after_the_handler_ran)
            feeder.start()
            h.upload(self.fifo.path, "/whole")
            feeder.join()
        self.assertEqual(self.read(os.path.join(self.root, "whole")), first + rest)

    def test_signals_at_random_points_of_many_calls_leave_the_handle_sound(self) -> None:
        # SIGINT lands anywhere: before, during or after the C call, in the
        # binding's own Python code. Each time the next call must work (no
        # cancel left pending, no use count leaked) and close() must not hang.
        rng = random.Random(seed())
        with support.handle(self.root) as h:
            for i in range(40):
                h.stat("/")
                looping = threading.Event()
                killer = Interrupter(looping.is_set, delay=rng.uniform(0, 0.004))
                killer.start()
                with self.assertRaises(KeyboardInterrupt):
                    looping.set()
                    while True:
                        h.stat("/")
                        if i % 2:
                            h.listdir("/")
                killer.join()
                h.stat("/")
        self.assertTrue(h.closed)


class CancelFromAnotherThread(support.TempDirs):
    def test_fifty_cancels_at_random_moments(self) -> None:
        rng = random.Random(seed())
        big = os.urandom(8 << 20)
        with open(os.path.join(self.root, "big"), "wb") as f:
            f.write(big)
        fifo = support.Fifo(self.local)
        self.addCleanup(fifo.finish)
        latencies: List[float] = []
        with support.handle(self.root, progress_interval=0) as h:
            h.launch()
            pid = h.helper_pid
            for i in range(50):
                kind = i % 3
                cancelled_at: List[float] = []

                def cancel_later(delay: float = rng.uniform(0, 0.040)) -> None:
                    time.sleep(delay)  # a random moment, not a wait for a state
                    cancelled_at.append(time.monotonic())
                    h.cancel()

                pipe: Optional[tuple] = None
                if kind == 0:
                    # An upload that blocks on an empty FIFO after 60000 bytes.
                    fifo.drain()
                    fifo.feed(os.urandom(60000))
                    op: Callable[[], None] = lambda: h.upload(fifo.path, "/up")
                elif kind == 1:
                    # A download that blocks on a full pipe nobody reads.
                    r, w = os.pipe()
                    writer = open(w, "wb", buffering=0)
                    pipe = (r, writer)
                    op = lambda: h.download_file("/big", writer)
                else:
                    # A download held back by its progress callable.
                    op = lambda: h.download(
                        "/big", os.path.join(self.local, "down"), progress=lambda d, t: time.sleep(0.001)
                    )
                outcome: List[BaseException] = []

                def run() -> None:
                    try:
                        op()
                    except BaseException as e:  # noqa: B902 - checked below
                        outcome.append(e)

                canceller = threading.Thread(target=cancel_later)
                canceller.start()
                if i % 2:
                    run()  # from the main thread
                else:
                    caller = threading.Thread(target=run)  # from a third one
                    caller.start()
                    caller.join()
                ended_at = time.monotonic()
                canceller.join()
                if pipe is not None:
                    os.close(pipe[0])
                    pipe[1].close()
                self.assertEqual(len(outcome), 1, f"call {i} (kind {kind}) was not cancelled")
                self.assertIsInstance(outcome[0], barge.Cancelled, f"call {i}: {outcome[0]!r}")
                latencies.append(max(0.0, ended_at - cancelled_at[0]))
                self.assertEqual(sorted(os.listdir(self.root)), ["big"], f"call {i} left something")
                self.assertEqual(sorted(os.listdir(self.local)), ["fifo"], f"call {i} left something")
                # The next call works, with the same helper.
                small = os.urandom(rng.randrange(1, 200_000))
                h.upload(self.write_local("small", small), "/small")
                self.assertEqual(self.read(os.path.join(self.root, "small")), small)
                os.unlink(os.path.join(self.local, "small"))
                h.remove("/small")
                self.assertEqual(h.helper_pid, pid, f"call {i}: the helper was replaced")
        latencies.sort()
        print(
            f"[cancel to Cancelled: median {latencies[25] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms]",
            end=" ",
            flush=True,
        )


if __name__ == "__main__":
    unittest.main()
