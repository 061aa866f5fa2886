"""CPU of the controller's own ticks on the simulated host, the plant's stepping left out.

    python benchmarks/controller_ticks.py [--config config/sim.toml] [--duration-s 900]

daemon_overhead.py measures the whole daemon process, the emulator included, so a plan that runs more
replicas costs it more plant CPU (more engines to step and to read) without the controller doing more.
This is one run of closed_loop.py's loop (the Controller the daemon runs, stepped in simulated time, only
`tick_fast` and `tick_slow` timed in process CPU) on the config's own seed. Prints JSON: fast_ms and slow_ms
(mean CPU per tick), cpu_percent (of one core at the config's loop periods) and the replicas the plans ran on
average.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from closed_loop import run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "sim.toml"))
    ap.add_argument("--duration-s", type=float, default=900.0)
    args = ap.parse_args()
    r = run(args.config, None, args.duration_s)
    print(json.dumps({"duration_s": args.duration_s, **{k: r[k] for k in ("fast_ms", "slow_ms", "cpu_percent",
                                                                          "replicas_mean")}}))


if __name__ == "__main__":
    main()
