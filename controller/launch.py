"""The `wattscale` command's entry point, kept light: importing the rest takes a second or more, and a signal
that reaches a starting command in that time met Python's defaults: a SIGHUP to a starting `wattscale run` (a
reload asked at once) ended it, and a SIGINT or SIGTERM printed a traceback of whatever module was importing.
Until the daemon installs its own handlers a SIGHUP is kept here, and the daemon reloads once it runs; a SIGINT or
SIGTERM stops any command with one line (a daemon that had not started yet with exit 0, as a running one stops)."""

from __future__ import annotations

import signal
import sys

from controller.startup import RELOAD_ASKED

LONG_RUNNING = ("run", "operator", "agent")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM before a command's own handlers (SIGINT's default raises KeyboardInterrupt, which says
    nothing of the signal)."""


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "run":  # only the daemon reloads; short commands keep SIGHUP's default
        signal.signal(signal.SIGHUP, RELOAD_ASKED)
    elif command in LONG_RUNNING:  # their settings are the cluster's, no file to reload: SIGHUP killed them
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from controller.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if isinstance(exc, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        if command in LONG_RUNNING:  # asked to stop before it ran: it stopped, as asked
            print(f"wattscale: stopped by {name} while starting", file=sys.stderr)
            return 0
        print(f"wattscale: interrupted by {name}", file=sys.stderr)
        return 128 + signum
    finally:
        if command in LONG_RUNNING:  # stopped: Python's exit puts the default handlers back, and a second
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # signal then killed it
                signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":  # `python -m controller.launch`, as the installed `wattscale` runs it
    sys.exit(main())
