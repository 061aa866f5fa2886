"""What is asked of `wattscale run` by signals (controller/launch.py keeps a SIGHUP that comes before the daemon's
handlers are in): a module that imports nothing of wattscale, so the daemon reads it without the command line's
imports."""

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
