"""What signals ask of a command before its own handlers are in (controller/launch.py installs these: a SIGHUP kept
for `wattscale run` to reload once it runs, a stop kept for any command to act on): a module that imports nothing of
wattscale, so the entry point reads it without the command line's imports."""

from __future__ import annotations


class Asked:
    """A request a signal handler records (the instance is the handler): a plain flag, no lock. A handler runs in
    the main thread between two bytecodes, so one that set a threading.Event took its lock there: it deadlocked
    where the main thread held that lock, and a storm of signals re-entered it until the recursion limit (a
    daemon that had stopped cleanly exited 1). The loops that act on it poll it."""

    def __init__(self) -> None:
        self.asked = False

    def __call__(self, *_: object) -> None:
        self.asked = True

    def take(self) -> bool:
        """Whether it was asked since the last take (cleared only once seen: a signal between the two is kept)."""
        if not self.asked:
            return False
        self.asked = False
        return True


RELOAD_ASKED = Asked()
"""Set by a SIGHUP that came before the daemon's handler."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM before a command's own handlers (SIGINT's default raises KeyboardInterrupt, which says
    nothing of the signal)."""


class StopAsked:
    """The handler of SIGINT and SIGTERM until a command installs its own: it records the signal and raises
    Interrupted. A raise that lands in a weakref callback or a __del__ (importlib runs one at each module lock it
    drops, so any import may) is only printed as "Exception ignored" and the command ran on: one stop in some 150
    while `wattscale run` started went unanswered. The record survives it: `check` raises it again where the
    command can act, after the imports and once its own handlers are in."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, _frame: object) -> None:
        self.signum = self.signum or signum
        raise Interrupted(signum)

    def check(self) -> None:
        """Raise Interrupted where a stop was asked (and its raise may have been swallowed)."""
        if self.signum:
            raise Interrupted(self.signum)


STOP_ASKED = StopAsked()
"""Set by a SIGINT or SIGTERM that came before the command's own handlers (controller/launch.py installs it)."""
