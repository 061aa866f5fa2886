"""`wattscale vllm-exec --batch-file FILE -- COMMAND...`: how a vLLM unit the systemd runner restarts starts
(systemd/vllm-example.service). It reads the max batch the daemon wrote into FILE, one number and nothing else,
and execs COMMAND with `--max-num-seqs` set to it (no shell).

Why a program and not an `EnvironmentFile=`: the daemon's user can then choose a number and no more. An
environment file it writes may set LD_PRELOAD in the unit, and systemd reads it as root (a link to a root-only
file put its lines in the unit's environment); a drop-in under /etc may set `User=root` and any command. This runs
as the unit's own user, so it reads only what that user may.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from actuators.vllm_servers import batch_from, with_max_num_seqs
from controller.config_loader import ConfigError


def add_vllm_exec_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    x = sub.add_parser("vllm-exec", help="start a vLLM server with the max batch wattscale wrote for its unit "
                       "(a systemd unit's ExecStart: systemd/vllm-example.service)")
    x.add_argument("--batch-file", required=True, metavar="FILE",
                   help="the file the daemon writes (actuators.systemd_batch_dir/<unit>.service.batch, %%n.batch in "
                        "the unit)")
    x.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the server's command; its own --max-num-seqs holds until the daemon writes one")
    x.set_defaults(func=vllm_exec, daemon=True)  # its output is the server's: not held aside as a command's


def vllm_exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigError("COMMAND", "needs the server's command after --")
    if not command[0]:  # a unit's ${VLLM_BIN} left unset passes an empty word (execv raised ValueError)
        raise ConfigError("COMMAND", "its program is an empty word (a variable the unit left unset?)")
    n, why = batch_from(Path(args.batch_file))
    if why:
        print(f"wattscale vllm-exec: {why}; the command's own --max-num-seqs holds", file=sys.stderr, flush=True)
    argv = command if n is None else with_max_num_seqs(tuple(command), n)
    for ignored in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these, and an exec'd program would inherit it
        signal.signal(ignored, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise ConfigError("COMMAND", f"{argv[0]}: {exc.strerror or exc}") from None
