"""Ctrl+C (SIGINT) and SIGTERM: one exception for both, and the exit status they give.

A scheduler's pre-emption, ``kill`` and ``docker stop`` send SIGTERM; Python's default
for it is to die on the spot. Under :func:`interrupt_on_signals` it raises
:class:`Interrupted` (a ``KeyboardInterrupt``), as Ctrl+C does, so both stop a command
the same way: during training the trainer finishes the step, saves a checkpoint
and says how to resume (:class:`rhn_np.train.Trainer`); before it, the command line
exits with one line and no traceback. The exit status is the shell's for a death by
that signal, ``128 + signal number``: 130 for SIGINT, 143 for SIGTERM.

Standard library only: the command line installs this before it imports NumPy.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["Interrupted", "signal_name", "exit_status", "interrupt_on_signals", "take_pending"]


class Interrupted(KeyboardInterrupt):
    """A command stopped by Ctrl+C (SIGINT) or SIGTERM; ``signum`` says which.

    ``reported``: whether the code that stopped has already said what it kept (the
    trainer's "interrupted at step N: saved ...; continue with ..."), so the command line
    adds nothing.
    """

    def __init__(self, signum: int = signal.SIGINT, reported: bool = False):
        super().__init__(signal_name(signum))
        self.signum = int(signum)
        self.reported = reported


def signal_name(signum: int) -> str:
    """``"Ctrl+C (SIGINT)"``, ``"SIGTERM"``, ...: how messages name a signal."""
    if signum == signal.SIGINT:
        return "Ctrl+C (SIGINT)"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(exc: BaseException) -> int:
    """The exit status of a command stopped by ``exc``: 128 + its signal (130: Ctrl+C)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


_PENDING: list[int] = []  # signals raised as Interrupted and not yet handled (see take_pending)


def _raise_interrupted(signum, frame):
    _PENDING.append(int(signum))
    raise Interrupted(signum)


def take_pending() -> int | None:
    """The signal of an :class:`Interrupted` that no handler has taken yet, and forget it.

    A signal can land in code that cannot pass an exception on (a ``__del__``, a garbage
    collector callback: Python prints "Exception ignored" and carries on); the stop is
    then remembered here, and the trainer (at its loop's start) and the command line (when
    the command returns) act on it. Whoever catches the exception takes it too.
    """
    signum = _PENDING[-1] if _PENDING else None
    _PENDING.clear()
    return signum


@contextlib.contextmanager
def interrupt_on_signals():
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (in the main thread;
    elsewhere signals cannot be handled; a signal the process was started to ignore stays
    ignored); the earlier handlers come back after.

    For SIGINT this replaces Python's own ``KeyboardInterrupt`` by the subclass on
    purpose: CPython remembers a plain ``KeyboardInterrupt`` raised inside code run by
    ``exec`` of a string (``dataclasses`` and ``namedtuple`` build their methods so, in
    imports) as unhandled even when it is caught, and then ends the process by SIGINT
    instead of with the status the command returns.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
