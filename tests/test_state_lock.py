"""One daemon to a state folder (controller/state_lock.py): the lock's failures never stop the daemon."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from controller.config_loader import ConfigError
from controller.state_lock import check_free, held

ROOT = Path(__file__).resolve().parents[1]


def test_a_lock_whose_pid_cannot_be_written_is_held_all_the_same(tmp_path: Path) -> None:
    """On a full disk (here: no file may grow, EFBIG) the pid's write failed out of `run` as 'No space left on
    device (writing its output)', exit 1, and the power governor never started."""
    script = ("import resource, sys\nfrom pathlib import Path\nresource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
              "from controller.state_lock import held\nwith held(Path(sys.argv[1])):\n    print('held')\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout) == (0, "held\n"), done.stderr
    assert (tmp_path / "state" / "daemon.lock").read_text() == ""  # the lock file, without its pid


def test_a_folder_that_cannot_hold_a_lock_runs_without_one_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    script = ("import logging, sys\nfrom pathlib import Path\nlogging.basicConfig(format='%(message)s')\n"
              "from controller.state_lock import held\nwith held(Path(sys.argv[1])):\n    print('ran')\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "afile" / "state")], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr
    assert "cannot be locked" in done.stderr and "a second daemon on it would go unnoticed" in done.stderr


def test_a_run_started_while_check_config_probes_the_lock_takes_it(tmp_path: Path) -> None:
    """check-config's probe holds the lock for a moment; a `run` started in that moment stopped as if another daemon
    held the folder (systemd's restart then tried again, or an operator read it as a second daemon)."""
    folder = tmp_path / "state"
    folder.mkdir()
    probe = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(probe, fcntl.LOCK_EX)
    let_go = threading.Timer(0.2, os.close, (probe,))
    let_go.start()
    with held(folder):
        assert (folder / "daemon.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match="is in use by another wattscale run"):
            check_free(folder)  # a daemon's lock is held for its life: the probe still finds it
    let_go.join()


@pytest.mark.parametrize("odd", ["fifo", "link", "folder"])
def test_something_else_where_the_lock_file_was_neither_hangs_nor_unlocks(tmp_path: Path, odd: str) -> None:
    """A FIFO at daemon.lock hung `run` and check-config for good (the governor never started); a link or a folder
    there turned the lock off, and two daemons shared the state. The lock is the folder's own: a second run and the
    probe are refused, within a bounded wait, the holder's pid unknown."""
    folder = tmp_path / "state"
    folder.mkdir()
    {"fifo": lambda p: os.mkfifo(p), "link": lambda p: p.symlink_to(tmp_path / "elsewhere"),
     "folder": lambda p: p.mkdir()}[odd](folder / "daemon.lock")
    script = ("import sys\nfrom pathlib import Path\nfrom controller.state_lock import check_free, held\n"
              "from controller.config_loader import ConfigError\nfolder = Path(sys.argv[1])\n"
              "try:\n    check_free(folder)\nexcept ConfigError as exc:\n    print('probe:', exc)\n"
              "try:\n    with held(folder):\n        print('ran')\n"
              "except ConfigError as exc:\n    print('run:', exc)\n")
    with held(folder):
        done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
    refusal = f"{folder} is in use by another wattscale run (pid unknown)"
    assert done.stdout.splitlines() == [f"probe: daemon.state_dir: {refusal}; give each daemon its own state_dir",
                                        f"run: daemon.state_dir: {refusal}; give each daemon its own state_dir"]
    assert not (tmp_path / "elsewhere").exists()  # nothing written through the link
