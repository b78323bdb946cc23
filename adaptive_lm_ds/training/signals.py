"""Preemption: SIGTERM / SIGINT ask the run to finish its update, save and exit (as Megatron's exit-signal handler).

The handler only records the request; the update loop polls it once per update and all ranks agree
(any-rank all-reduce) to stop after the *same* update, so the checkpoint is consistent. Launchers
deliver one signal per rank: ``torchrun`` runs ranks in their own sessions and forwards SIGTERM (then
SIGKILL after 30 s); the ``deepspeed`` launcher forwards SIGTERM while a Ctrl-C also reaches the
ranks. Signals within :data:`SAME_REQUEST_S` of the first are therefore one request.

A later signal never interrupts the rank it reaches: stopping one rank alone would leave the others
waiting in a collective (or in the middle of a save) until a timeout. It sets :attr:`urgent` instead,
which every rank agrees on at the same point as the first request, so all of them skip the final save
together and exit (one line each, no traceback). SIGKILL is the way to stop at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time

SAME_REQUEST_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _say(text: str) -> None:
    os.write(2, (text + "\n").encode())  # async-signal-safe enough: no buffered stream re-entered


class StopRequests:
    """Context manager installing the handlers (main thread only; elsewhere it does nothing)."""

    def __init__(self, verbose: bool = True, saves: bool = True):
        self.received: signal.Signals | None = None
        self.saves = saves  # False under --no-save: the first signal's message must not promise a save
        self.urgent = False  # a later signal: stop without saving, on every rank together
        self.first_at = 0.0
        self.verbose = verbose
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame) -> None:
        sig = signal.Signals(signum)
        if self.received is None:
            self.received, self.first_at = sig, time.monotonic()
            if self.verbose:
                if self.saves:
                    _say(
                        f"| received {sig.name}: finishing this update, saving, then exiting "
                        "(signal again to skip the save; SIGKILL stops at once)"
                    )
                else:
                    _say(f"| received {sig.name}: finishing this update, then exiting (--no-save: nothing is saved)")
            return
        if time.monotonic() - self.first_at < SAME_REQUEST_S or self.urgent:
            return  # the launcher forwarding the same request, or one already taken
        self.urgent = True
        if self.verbose:
            _say(f"| received {sig.name} again: every rank stops after this update without saving")

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
