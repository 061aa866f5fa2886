"""sd_notify (controller/sdnotify.py): systemd told what the daemon does, never waited on."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from controller.sdnotify import Notifier


def test_notifications_reach_the_socket_and_a_full_one_is_not_waited_on(tmp_path: Path) -> None:
    """A systemd that stopped reading fills its socket: the main loop's watchdog ping waited there, and with it
    the reloads the same loop takes."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        notifier = Notifier(path)
        notifier.ready("budget 4000 W")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=budget 4000 W"
        pinging = threading.Thread(target=lambda: [notifier.watchdog() for _ in range(2000)], daemon=True)
        pinging.start()  # past the socket's queue, never read: a send that waited would wait for ever
        pinging.join(5.0)
        assert not pinging.is_alive()
