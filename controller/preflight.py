"""What `run` needs of the host beyond the file, probed without side effects: the metrics address can be
bound (and is free), and the state directory can be written. `check-config` and `run` call the same probe."""

from __future__ import annotations

import errno
import os
import socket

from controller.config_loader import ConfigError
from controller.settings import Settings


def check_metrics_bind(listen: str, port: int) -> None:
    """Bind and close a socket as the metrics server would (SO_REUSEADDR, so a closing predecessor's
    TIME_WAIT is no conflict); raises ConfigError naming the field. Port 0 disables the endpoint."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError("metrics.port", f"{port} is already in use on {listen}") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError("metrics.listen", f"{listen} is not an address of this host") from None
            raise ConfigError("metrics.port", f"cannot bind {listen}:{port} ({exc.strerror})") from None


def state_dir_problem(settings: Settings) -> str | None:
    """Why the tuner state could not be saved (None when it can): a warning, since the daemon runs without
    saving, the pairs then start from their priors after each restart."""
    directory = settings.state_path.parent
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    where = f"daemon.state_dir: {directory}"
    if not probe.is_dir():
        return f"{where}: {probe} is not a directory; tuner state will not be saved"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{where}: {probe} is not writable; tuner state will not be saved"
    return None


def preflight(settings: Settings) -> list[str]:
    """The host checks `run` relies on: raises ConfigError for what stops the daemon, returns warnings."""
    check_metrics_bind(settings.metrics.listen, settings.metrics.port)
    problem = state_dir_problem(settings)
    return [] if problem is None else [problem]

