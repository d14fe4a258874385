"""The ``rhn-np`` command and ``python -m rhn_np``: :func:`rhn_np.cli.main`, entered so
that Ctrl+C or SIGTERM while its modules are still being imported (NumPy and the rest,
about a second) also exits with one line and status 130 / 143, no traceback
(:mod:`rhn_np.interrupts`; from then on :func:`rhn_np.cli.main` handles them)."""

from __future__ import annotations

import signal
import sys


def main(argv=None) -> int:
    """Run ``rhn-np`` with ``argv`` (default: the command line); returns the exit status."""
    from .interrupts import exit_status, interrupt_on_signals, signal_name

    try:
        with interrupt_on_signals():
            from .cli import main as cli_main

            return cli_main(argv)
    except KeyboardInterrupt as exc:  # during the imports (cli.main reports its own)
        print(f"rhn-np: stopped by {signal_name(getattr(exc, 'signum', signal.SIGINT))} while starting", file=sys.stderr)
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
