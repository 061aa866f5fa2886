"""`wattscale vllm-exec`: the systemd unit's start reads one number from the file the daemon writes and runs the
server's command with it as --max-num-seqs, and nothing else it could be told."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHOW = [sys.executable, "-c", "import sys; print(sys.argv[1:])", "--port", "8000", "--max-num-seqs", "64"]


def vllm_exec(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "vllm-exec", "--batch-file",
                           str(tmp_path / "vllm-chat-0.service.batch"), *command], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])


def test_the_number_written_replaces_the_commands_own(tmp_path: Path) -> None:
    (tmp_path / "vllm-chat-0.service.batch").write_text("48\n")
    done = vllm_exec(tmp_path, "--", *SHOW)
    assert done.returncode == 0 and done.stdout == "['--port', '8000', '--max-num-seqs', '48']\n" and not done.stderr


def test_before_any_is_written_the_command_runs_as_it_is(tmp_path: Path) -> None:
    done = vllm_exec(tmp_path, "--", *SHOW)
    assert done.returncode == 0 and done.stdout == "['--port', '8000', '--max-num-seqs', '64']\n" and not done.stderr


@pytest.mark.parametrize("written", ["LD_PRELOAD=/tmp/x.so\n", "0\n", "4097\n", "48 --enforce-eager\n", "٤٨\n",
                                     "1" * 40, ""])
def test_a_file_that_holds_anything_but_a_max_batch_leaves_the_commands_own(tmp_path: Path, written: str) -> None:
    """The daemon's user chooses a number, no more: an environment file it wrote could set LD_PRELOAD in the unit."""
    (tmp_path / "vllm-chat-0.service.batch").write_text(written)
    done = vllm_exec(tmp_path, "--", *SHOW)
    assert done.returncode == 0 and done.stdout == "['--port', '8000', '--max-num-seqs', '64']\n"
    assert done.stderr.startswith("wattscale vllm-exec: ") and "not a max batch in 1..4096" in done.stderr
    assert done.stderr.endswith("; the command's own --max-num-seqs holds\n") and done.stderr.count("\n") == 1


@pytest.mark.parametrize(("command", "said"), [([], "COMMAND: needs the server's command after --"),
                                               (["--", "/nonexistent/vllm"], "COMMAND: /nonexistent/vllm: No such"),
                                               (["--", "", "serve"], "COMMAND: its program is an empty word")])
def test_no_command_or_one_that_is_not_there_is_one_line(tmp_path: Path, command: list[str], said: str) -> None:
    done = vllm_exec(tmp_path, *command)
    assert done.returncode == 2 and done.stderr.startswith(f"wattscale: {said}") and done.stderr.count("\n") == 1


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_a_file_the_daemons_user_could_plant_is_neither_waited_on_nor_followed(tmp_path: Path, kind: str) -> None:
    """A FIFO held the unit's start for good; a link to a file the unit's user may read (a token) was read as the
    number and its first bytes said in the unit's log."""
    batch = tmp_path / "vllm-chat-0.service.batch"
    secret = tmp_path / "token"
    secret.write_text("48\n")
    {"fifo": lambda: os.mkfifo(batch), "link": lambda: batch.symlink_to(secret), "folder": batch.mkdir}[kind]()
    done = vllm_exec(tmp_path, "--", *SHOW)
    assert done.returncode == 0 and done.stdout == "['--port', '8000', '--max-num-seqs', '64']\n"
    said = done.stderr.replace(str(batch), "<batch file>")  # its path may hold "48" itself (pytest-48: 3 failed)
    assert said.startswith("wattscale vllm-exec: ") and "48" not in said


def test_the_command_runs_with_the_signals_python_ignores_restored(tmp_path: Path) -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and an exec'd program inherited that (a shell wrapper, a container's)."""
    done = vllm_exec(tmp_path, "--", "grep", "SigIgn", "/proc/self/status")
    ignored = int(done.stdout.split()[-1], 16)
    assert done.returncode == 0 and ignored & (1 << (13 - 1)) == 0 and ignored & (1 << (25 - 1)) == 0
