"""The `wattscale` command's entry point, kept light: importing the rest takes a second or more, and a SIGHUP
that reaches a starting `wattscale run` in that time (a reload asked at once) would end it, SIGHUP's default.
Until the daemon installs its own handlers, the request is kept here, and the daemon reloads once it runs."""

from __future__ import annotations

import signal
import sys

from controller.startup import RELOAD_ASKED

LONG_RUNNING = ("run", "operator", "agent")


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "run":  # only the daemon reloads; short commands keep SIGHUP's default
        signal.signal(signal.SIGHUP, RELOAD_ASKED)
    elif command in LONG_RUNNING:  # their settings are the cluster's, no file to reload: SIGHUP killed them
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from controller.cli import main as cli_main

    try:
        return cli_main()
    finally:
        if command in LONG_RUNNING:  # stopped: Python's exit puts the default handlers back, and a second
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # signal then killed it
                signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":  # `python -m controller.launch`, as the installed `wattscale` runs it
    sys.exit(main())
