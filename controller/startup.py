"""What is asked of `wattscale run` before its daemon's handlers are in (controller/launch.py keeps it): a module
that imports nothing of wattscale, so the daemon reads it without the command line's imports."""

from __future__ import annotations

import threading

RELOAD_ASKED = threading.Event()
"""Set by a SIGHUP that came before the daemon's handler."""
