"""The `wattscale` command's entry point, kept light: importing the rest takes a second or more, and a signal
that reaches a starting command in that time met Python's defaults: a SIGHUP to a starting `wattscale run` (a
reload asked at once) ended it, and a SIGINT or SIGTERM printed a traceback of whatever module was importing.
Until the daemon installs its own handlers a SIGHUP is kept here, and the daemon reloads once it runs; a SIGINT or
SIGTERM stops any command with one line: a daemon that had not started yet with exit 0, as a running one stops, any
other command killed by the signal as before (a shell's loop stops on a child Ctrl-C killed, not on one that exited
130). A signal the command was started ignoring (`cmd &` in a script ignores SIGINT) stays ignored."""

from __future__ import annotations

import os
import signal
import sys

from controller.startup import RELOAD_ASKED, STOP_ASKED, Interrupted

LONG_RUNNING = ("run", "operator", "agent")


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """Python's hook for an exception it cannot raise (in a weakref callback, a __del__): a stop's Interrupted
    there is kept in STOP_ASKED and acted on at its next check, not printed as a traceback."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "run":  # only the daemon reloads; short commands keep SIGHUP's default
        signal.signal(signal.SIGHUP, RELOAD_ASKED)
    elif command in LONG_RUNNING:  # their settings are the cluster's, no file to reload: SIGHUP killed them
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, STOP_ASKED)
        sys.unraisablehook = _unraisable
        from controller.cli import main as cli_main

        STOP_ASKED.check()  # a stop whose raise an import swallowed
        code = cli_main()
        if command not in LONG_RUNNING:  # a stop swallowed in a later import (those that are lazy) is not lost
            STOP_ASKED.check()
        return code
    except KeyboardInterrupt as exc:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second one while this line is written: no traceback
            signal.signal(sig, signal.SIG_IGN)
        signum = exc.args[0] if isinstance(exc, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        if command in LONG_RUNNING:  # asked to stop before it ran: it stopped, as asked
            print(f"wattscale: stopped by {name} while starting", file=sys.stderr)
            return 0
        print(f"wattscale: interrupted by {name}", file=sys.stderr)
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # killed by it, as the caller's shell expects
        return 128 + signum
    finally:
        if command in LONG_RUNNING:  # stopped: Python's exit puts the default handlers back, and a second
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # signal then killed it
                signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":  # `python -m controller.launch`, as the installed `wattscale` runs it
    sys.exit(main())
