"""CPU and memory of the daemon on the sim config, measured from /proc over a window.

    python benchmarks/daemon_overhead.py [--duration 60] [--warmup 75]
    python benchmarks/daemon_overhead.py --baseline DIR [--pairs 5]

Prints JSON: cpu_percent (of one core, averaged over the window), rss_mb (peak sampled),
plus what was measured (duration_s, samples, slow cycles seen). The simulated host runs inside
the daemon, so cpu_percent includes stepping the emulator in real time: 8 token-level vLLM engines,
the plant that on a real host is GPUs and vLLM servers. The daemon counts that CPU time itself
(wattscale_sim_plant_cpu_seconds_total); plant_cpu_percent is its share and daemon_cpu_percent the
rest, what wattscale costs a real host. The targets are judged on the whole process, cpu_percent,
as the simulated host's users see it.

The window is the steady state: it opens after the sim's services start (20 s) and the tuner's
least-squares warm-up (its first 3 slow cycles, 15 s apart). What start-up costs, imports included,
is reported apart as startup_cpu_percent over the warm-up.

`--baseline DIR` compares with another tree (a `git worktree add --detach DIR <commit>`, run with this
venv and DIR first on PYTHONPATH, on DIR's own config/sim.toml): `--pairs` back-to-back pairs, which of
the two goes first alternating, since a shared machine's load drifts over minutes; prints every run and
each side's medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def plant_seconds(port: int) -> float:
    m = re.search(r"^wattscale_sim_plant_cpu_seconds_total (\S+)$", scrape(port), re.M)
    return float(m.group(1)) if m else 0.0


def measure(tree: Path, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """One daemon run of `tree`'s code and sim config (this venv's interpreter), measured over the window."""
    port = free_port()
    env = dict(os.environ)
    if tree != ROOT:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as tmp:
        text = (tree / "config" / "sim.toml").read_text()
        text = text.replace("port = 9464", f"port = {port}")
        text = text.replace('state_dir = "../var/state"', f'state_dir = "{tmp}/state"')
        cfg = Path(tmp) / "wattscale.toml"
        cfg.write_text(text)
        exe = Path(sys.executable).with_name("wattscale")
        proc = subprocess.Popen([str(exe), "run", "--config", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            started = time.monotonic()
            time.sleep(warmup_s)
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode} during warm-up")
            c0, t0, p0 = cpu_seconds(proc.pid), time.monotonic(), plant_seconds(port)
            startup = 100.0 * c0 / (t0 - started)
            peak, samples = 0.0, 0
            while time.monotonic() - t0 < duration_s:
                time.sleep(1.0)
                peak = max(peak, rss_mb(proc.pid))
                samples += 1
            c1, t1, p1 = cpu_seconds(proc.pid), time.monotonic(), plant_seconds(port)
            body = scrape(port)
            m = re.search(r"^wattscale_cycle_duration_seconds_count\{loop=\"slow\"\} (\S+)$", body, re.M)
            cycles = float(m.group(1)) if m else None
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    total, plant = 100.0 * (c1 - c0) / (t1 - t0), 100.0 * (p1 - p0) / (t1 - t0)
    return {
        "daemon_cpu_percent": round(total - plant, 3),
        "plant_cpu_percent": round(plant, 3),
        "cpu_percent": round(total, 3),
        "rss_mb": round(peak, 1),
        "startup_cpu_percent": round(startup, 3),
        "duration_s": round(t1 - t0, 1),
        "samples": samples,
        "slow_cycles": cycles,
    }


FIGURES = ("cpu_percent", "plant_cpu_percent", "daemon_cpu_percent", "rss_mb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=75.0, help="seconds after start before measuring")
    ap.add_argument("--baseline", type=Path, help="another tree to compare with, in back-to-back pairs")
    ap.add_argument("--pairs", type=int, default=5, help="pairs with --baseline (order alternating)")
    args = ap.parse_args()
    targets = {"cpu_percent": 2.0, "rss_mb": 150.0}
    if args.baseline is None:
        print(json.dumps({**measure(ROOT, args.duration, args.warmup), "targets": targets}))
        return
    baseline = args.baseline.resolve()
    if not (baseline / "config" / "sim.toml").is_file():
        raise SystemExit(f"--baseline: {baseline} is not a wattscale tree (no config/sim.toml)")
    runs: list[dict[str, Any]] = []
    for k in range(max(1, args.pairs)):
        order = [("this", ROOT), ("baseline", baseline)]
        for side, tree in order if k % 2 == 0 else order[::-1]:
            runs.append({"pair": k, "side": side, **measure(tree, args.duration, args.warmup)})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    medians = {side: {f: round(statistics.median(r[f] for r in runs if r["side"] == side), 3) for f in FIGURES}
               for side in ("this", "baseline")}
    pairs: dict[int, dict[str, float]] = {}
    for r in runs:
        pairs.setdefault(r["pair"], {})[r["side"]] = r["cpu_percent"]
    print(json.dumps({"baseline": str(baseline), "median": medians,
                      "cpu_percent_this_vs_baseline": [[p["this"], p["baseline"]] for p in pairs.values()],
                      "runs": runs, "targets": targets}))


if __name__ == "__main__":
    main()
