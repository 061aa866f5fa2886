"""Shared fixtures: free loopback ports, and the simulated host's config with its state in a temp dir."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sim_config_text(state: Path, replacements: dict[str, str] | None = None) -> str:
    """config/sim.toml with its state under `state`, and each `{old: new}` text replacement made."""
    text = (ROOT / "config" / "sim.toml").read_text().replace('state_dir = "../var/state"', f'state_dir = "{state}"')
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def sim_config(tmp_path: Path) -> Callable[..., Path]:
    """Writes config/sim.toml (state in the test's temp dir, text replacements as `{old: new}`); returns its path."""

    def write(replacements: dict[str, str] | None = None, name: str = "wattscale.toml") -> Path:
        path = tmp_path / name
        path.write_text(sim_config_text(tmp_path / "state", replacements))
        return path

    return write
