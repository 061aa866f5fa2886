"""CPU of the controller's own ticks on the simulated host, the plant's stepping left out.

    python benchmarks/controller_ticks.py [--config config/sim.toml] [--duration-s 900]

daemon_overhead.py measures the whole daemon process, the emulator included, so a plan that runs more
replicas costs it more plant CPU (more engines to step and to read) without the controller doing more.
This steps the same Controller the daemon runs in simulated time and times only `tick_fast` and
`tick_slow` (process CPU time around each call). Prints JSON: fast_ms and slow_ms (mean CPU per tick),
cpu_percent (of one core at the config's loop periods) and the replicas the plans ran on average.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.settings import load_settings
from controller.wiring import build_parts
from tuner import Tuner

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "sim.toml"))
    ap.add_argument("--duration-s", type=float, default=900.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(args.config).read_text().replace('state_dir = "../var/state"', f'state_dir = "{tmp}/state"')
        cfg = Path(tmp) / "wattscale.toml"
        cfg.write_text(text)
        s = load_settings(cfg)
        parts = build_parts(s)
        assert parts.host is not None, "controller_ticks needs a config whose parts are simulated"
        ctl = Controller(s, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas,
                         Tuner(s.state_path, queue_model=s.optimizer.queue_model), OwnMetrics(CollectorRegistry()),
                         clocks=parts.clocks)
        fast_s = slow_s = 0.0
        n_fast = n_slow = replicas = 0
        t, next_slow = 0.0, s.daemon.slow_interval_s
        while t < args.duration_s:
            t += s.daemon.fast_interval_s
            parts.host.advance_to(t)
            started = time.process_time()
            ctl.tick_fast(t)
            fast_s, n_fast = fast_s + time.process_time() - started, n_fast + 1
            if t >= next_slow:
                next_slow += s.daemon.slow_interval_s
                started = time.process_time()
                ctl.tick_slow(t)
                slow_s, n_slow = slow_s + time.process_time() - started, n_slow + 1
                replicas += sum(a.replicas for a in ctl.assignments.values())
    fast, slow = fast_s / n_fast, slow_s / max(1, n_slow)
    print(json.dumps({
        "duration_s": args.duration_s,
        "fast_ms": round(1000 * fast, 3),
        "slow_ms": round(1000 * slow, 1),
        "cpu_percent": round(100 * (fast / s.daemon.fast_interval_s + slow / s.daemon.slow_interval_s), 3),
        "replicas_mean": round(replicas / max(1, n_slow), 2),
    }))


if __name__ == "__main__":
    main()
