"""A service on two accelerator types: the plan moves it from H100 to L40S. The L40S variant is scaled up
before the H100 one is scaled down, and no GPU is ever asked for a limit outside its own range."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from actuators import TransientActuatorError
from actuators.dryrun import DryRunBatchSizer, DryRunReplicaScaler
from controller.config_loader import ConfigError
from controller.control import Controller
from controller.decision_log import DecisionLog
from controller.enforce import Enforcer, draining_caps
from controller.optimizer import Assignment
from controller.own_metrics import OwnMetrics
from controller.settings import StabilitySettings, load_settings
from controller.stability import StabilityGate
from controller.telemetry.base import GpuSample, ServiceWindow
from queuemodels import ServerShape
from queuemodels.kv_cache import fitting_shape
from tuner import Tuner

CONFIG = """
[daemon]
state_dir = "state"
[power]
budget_w = 3000
[optimizer]
objective = "cost"
batch_sizes = [32, 64]
[stability]
cooldown_s = 0
confirm_cycles = 2
max_replica_step = 1
[telemetry]
gpu_source = "nvml"
vllm_source = "prometheus"
[actuators]
power = "dry-run"
batch = "dry-run"
replicas = "dry-run"
[[accelerators]]
name = "H100-SXM"
count = 2
cost_per_hour = 30.0
[[accelerators]]
name = "L40S"
count = 4
cost_per_hour = 1.0
[[services]]
name = "chat"
model = "llama-3.1-8b"
ttft_ms = 2000
itl_ms = 100
min_replicas = 1
max_replicas = 4
initial_max_batch = 32
[[services.variants]]
accelerator = "H100-SXM"
gpus = [0, 1]
[[services.variants]]
accelerator = "L40S"
gpus = [2, 3, 4, 5]
"""

RANGE_W = {"H100-SXM": (200.0, 700.0), "L40S": (100.0, 350.0)}
GPUS = [("H100-SXM", 0), ("H100-SXM", 1), ("L40S", 0), ("L40S", 1), ("L40S", 2), ("L40S", 3)]


class Host:
    """Six GPUs of two types. A GPU is chat's once the scaler puts a replica of its type on it; it serves only
    `LOAD_S` later (a model loading), drawing 60 % of its limit (idle: a sixth of its maximum). It is also the
    vLLM source: a window counts the replicas serving."""

    LOAD_S = 40.0

    def __init__(self, scaler: DryRunReplicaScaler) -> None:
        self.scaler = scaler
        self.limit_w = [RANGE_W[kind][1] for kind, _ in GPUS]
        self.asked: list[tuple[int, float]] = []
        self.placed_at: dict[int, float] = {}
        self.now = 0.0

    def owned(self, index: int) -> bool:
        kind, k = GPUS[index]
        return k < self.scaler.replicas["chat", kind]

    def serving(self, index: int) -> bool:
        return self.owned(index) and self.now - self.placed_at[index] >= self.LOAD_S

    def sample(self, now: float) -> list[GpuSample]:
        self.now = now
        out = []
        for index, (kind, _) in enumerate(GPUS):
            lo, hi = RANGE_W[kind]
            if not self.owned(index):
                self.placed_at.pop(index, None)
            elif index not in self.placed_at:
                self.placed_at[index] = -self.LOAD_S if now <= 1.0 else now  # up at the start: serving already
            draw = 0.6 * self.limit_w[index] if self.serving(index) else hi / 6
            owned = self.owned(index)
            out.append(GpuSample(index, f"GPU-{index}", kind, draw, None, self.limit_w[index], lo, hi,
                                 service="chat" if owned else None, variant=kind if owned else None))
        return out

    name = "host"

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        self.asked.append((gpu_index, watts))
        self.limit_w[gpu_index] = watts
        return watts

    def observe(self, now: float, services: list[str]) -> dict[str, ServiceWindow | None]:
        serving = sum(self.serving(i) for i in range(len(GPUS)))
        return {"chat": ServiceWindow(window_s=15.0, rate_rps=4.0, in_tokens=400.0, out_tokens=200.0, ttft_ms=200.0,
                                      itl_ms=20.0, ttft_p95_ms=400.0, itl_p95_ms=30.0, running=8.0, waiting=0.0,
                                      kv_usage=0.2, preemptions=0.0, replicas=serving)}


def on_host(tmp_path: Path, h100: int, l40s: int) -> tuple[Controller, Host, DryRunReplicaScaler]:
    """The controller over the two-type host, chat running `h100` and `l40s` replicas to begin with."""
    (tmp_path / "v.toml").write_text(CONFIG)
    s = load_settings(tmp_path / "v.toml")
    scaler = DryRunReplicaScaler({("chat", "H100-SXM"): h100, ("chat", "L40S"): l40s})
    host = Host(scaler)
    ctl = Controller(s, host, host, host, DryRunBatchSizer({"chat": 32}), scaler, Tuner(s.state_path),
                     OwnMetrics(CollectorRegistry()))
    return ctl, host, scaler


def test_a_move_scales_the_new_variant_up_first_and_keeps_every_gpu_in_its_own_range(tmp_path: Path) -> None:
    """The L40S is untried at first (the decision log says so) but the prior meets chat's loose targets there with
    half to spare, and it costs a thirtieth of an H100: the plan moves chat there; the H100 pair, measured, is not
    untried once chat has left it."""
    ctl, host, scaler = on_host(tmp_path, 1, 0)
    ctl.decisions = DecisionLog(tmp_path / "decisions.jsonl")
    seen: list[dict[str, int]] = []
    for t in range(1, 241):
        ctl.tick_fast(float(t))
        assert any(host.serving(i) for i in range(len(GPUS))), t  # never dark: a replica serves throughout
        if t % 15 == 0:
            ctl.tick_slow(float(t))
            seen.append({kind: scaler.replicas["chat", kind] for kind in RANGE_W})
    assert seen[-1]["H100-SXM"] == 0 and seen[-1]["L40S"] >= 1, seen
    moves = [a.target for a in scaler.actions]
    assert moves.index("chat/L40S") < moves.index("chat/H100-SXM")
    assert ctl.assignments["chat"].accelerator == "L40S"
    for index, watts in host.asked:
        lo, hi = RANGE_W[GPUS[index][0]]
        assert lo <= watts <= hi, (index, watts)
    l40s = [w for i, w in host.asked if GPUS[i][0] == "L40S"]
    assert l40s and max(l40s) == ctl.assignments["chat"].power_cap_w <= 350.0  # the plan's cap for its own type
    records = [json.loads(line)["services"]["chat"] for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert records[0]["untried"] == ["L40S"] and "untried" not in records[-1]


@pytest.mark.parametrize("urgent", [False, True])
def test_a_variant_the_plan_turns_back_to_is_not_drained_meanwhile(urgent: bool) -> None:
    """The plan moves code's three H100 replicas to A100s, then, its first A100 started, back. The gate holds the
    move back for its cooldown; the H100s had been drained as soon as the A100 served, and code ran on one replica,
    then started its three H100s again cold. Over budget at every floor (urgent) they go, as before: the gate moves
    nothing then, and only the draw that leaves helps."""
    gate = StabilityGate(replace(StabilitySettings(), max_replica_step=1, confirm_cycles=1, cooldown_s=60.0))
    scaler = DryRunReplicaScaler({("code", "H100-SXM"): 3, ("code", "A100-SXM4"): 0})
    enforcer = Enforcer(scaler, DryRunBatchSizer({"code": 64}), OwnMetrics(CollectorRegistry()))
    believed, draining = Assignment("H100-SXM", 3, 64, 700.0), dict[str, float]()
    running = []
    for t in range(0, 121, 15):
        planned = Assignment("A100-SXM4", 3, 64, 400.0) if t == 0 else Assignment("H100-SXM", 3, 64, 700.0)
        got, draining = enforcer.in_force("code", ("H100-SXM", "A100-SXM4"), believed, draining)
        admitted = gate.admit(float(t), "code", got.assignment, planned, None, urgent and t > 0, 1)
        believed, done = enforcer.apply(float(t), "code", got, admitted, sum(got.running.values()), planned,
                                        urgent and t > 0)
        if done.asked:
            gate.note_change(float(t), "code")
        if believed.accelerator != got.assignment.accelerator:
            draining = {got.assignment.accelerator: got.assignment.power_cap_w}
        running.append((scaler.get_replicas("code", "H100-SXM"), scaler.get_replicas("code", "A100-SXM4")))
    assert running[0] == (3, 1)
    if urgent:
        assert running[1] == (0, 1), running  # the draw goes at once
    else:
        assert all(h == 3 for h, _ in running) and running[-1] == (3, 0), running  # moved back, never dark


def move_code(cooldown_s: float, until_s: int, gone_at_s: float | None = None) -> list[tuple[int, int]]:
    """code's three H100 replicas moved to three A100s one step a cycle (config/examples/host.toml's
    max_replica_step 1 with min_replicas 2) through the real gate and enforcer; `gone_at_s`: when the H100
    Deployment is deleted (its count no longer read). Returns the (H100, A100) replicas each cycle."""
    gate = StabilityGate(replace(StabilitySettings(), max_replica_step=1, confirm_cycles=1, cooldown_s=cooldown_s))
    scaler = DryRunReplicaScaler({("code", "H100-SXM"): 3, ("code", "A100-SXM4"): 0})
    enforcer = Enforcer(scaler, DryRunBatchSizer({"code": 64}), OwnMetrics(CollectorRegistry()))
    believed, draining, planned = Assignment("H100-SXM", 3, 64, 700.0), dict[str, float](), Assignment(
        "A100-SXM4", 3, 64, 400.0)
    counts = []
    for t in range(0, until_s + 1, 15):
        if gone_at_s is not None and t >= gone_at_s:
            scaler.replicas.pop(("code", "H100-SXM"), None)
        got, draining = enforcer.in_force("code", ("H100-SXM", "A100-SXM4"), believed, draining)
        admitted = gate.admit(float(t), "code", got.assignment, planned, None, False, 2, got.one_variant)
        believed, done = enforcer.apply(float(t), "code", got, admitted, sum(got.running.values()), planned)
        if done.asked:
            gate.note_change(float(t), "code")
        if believed.accelerator != got.assignment.accelerator:
            draining = {got.assignment.accelerator: got.assignment.power_cap_w}
        counts.append((scaler.replicas.get(("code", "H100-SXM"), 0), scaler.replicas["code", "A100-SXM4"]))
    return counts


def test_a_move_runs_below_min_replicas_for_one_cycle_not_a_cooldown() -> None:
    """The old variant drains once the first new replica serves; code then ran on that one through the two-minute
    cooldown. It steps back to its min_replicas at the next cycle, the cooldown or not."""
    counts = move_code(120.0, 300)
    assert counts[-1] == (0, 3), counts
    assert sum(h + a < 2 for h, a in counts) == 1, counts  # the cycle the old variant drained, and no other


def test_a_move_whose_old_deployment_is_deleted_still_grows() -> None:
    """The H100 Deployment deleted once the first A100 started: its count, no longer read, was kept at 3, so the
    service read as mid-move for good and its new variant never grew past one replica."""
    counts = move_code(60.0, 1200, gone_at_s=15.0)
    assert counts[-1] == (0, 3), counts
    scaler = DryRunReplicaScaler({("code", "A100-SXM4"): 3})  # the H100 Deployment gone: its last count, 3, kept
    enforcer = Enforcer(scaler, DryRunBatchSizer({"code": 64}), OwnMetrics(CollectorRegistry()))
    enforcer.running["code"] = {"H100-SXM": 3, "A100-SXM4": 3}
    for _ in range(2):  # a second read: the max batch held still since the first
        got, _ = enforcer.in_force("code", ("H100-SXM", "A100-SXM4"), Assignment("A100-SXM4", 3, 64, 400.0), {})
    assert got.running == {"H100-SXM": 3, "A100-SXM4": 3} and got.live == {"A100-SXM4": 3}
    assert got.one_variant and got.still  # its windows teach again (they read as spanning a move for good)


def test_a_passing_read_error_mid_move_adds_no_replica_while_urgent() -> None:
    """Mid-move (3 H100s, 1 A100) a read of one variant timed out: the service read as on one variant, and the gate,
    over budget at every floor, regained the A100s to min_replicas beside the three H100s still drawing."""

    class Flaky(DryRunReplicaScaler):
        def get_replicas(self, service: str, variant: str) -> int:
            if variant == "H100-SXM":
                raise TransientActuatorError("timed out", 5.0)
            return super().get_replicas(service, variant)

    scaler = Flaky({("code", "H100-SXM"): 3, ("code", "A100-SXM4"): 1})
    enforcer = Enforcer(scaler, DryRunBatchSizer({"code": 64}), OwnMetrics(CollectorRegistry()))
    enforcer.running["code"] = {"H100-SXM": 3, "A100-SXM4": 1}  # the last cycle's read
    got, _ = enforcer.in_force("code", ("H100-SXM", "A100-SXM4"), Assignment("A100-SXM4", 1, 64, 400.0), {})
    assert not got.one_variant and not got.read
    gate = StabilityGate(replace(StabilitySettings(), max_replica_step=1, confirm_cycles=1, cooldown_s=120.0))
    assert gate.admit(0.0, "code", got.assignment, Assignment("A100-SXM4", 3, 64, 400.0), None, True, 2,
                      got.one_variant).replicas == 1


def test_a_gone_variant_neither_teaches_another_pair_nor_holds_a_drain_back() -> None:
    """The planned variant's Deployment deleted mid-move: the windows, served by the other's replicas, were taught to
    its pair. A third variant deleted: the drain of a live old one waited for its kept count to serve, for good."""
    enforcer = Enforcer(DryRunReplicaScaler({("code", "A100-SXM4"): 3}), DryRunBatchSizer({"code": 64}),
                        OwnMetrics(CollectorRegistry()))
    enforcer.running["code"] = {"H100-SXM": 1, "A100-SXM4": 3}
    for _ in range(2):
        got, _ = enforcer.in_force("code", ("H100-SXM", "A100-SXM4"), Assignment("H100-SXM", 1, 64, 700.0), {})
    assert got.assignment.accelerator == "H100-SXM" and got.gone == {"H100-SXM"} and not got.still
    scaler = DryRunReplicaScaler({("code", "H100-SXM"): 3, ("code", "A100-SXM4"): 1})
    enforcer = Enforcer(scaler, DryRunBatchSizer({"code": 64}), OwnMetrics(CollectorRegistry()))
    enforcer.running["code"] = {"H100-SXM": 3, "A100-SXM4": 1, "L40S": 2}  # L40S's Deployment since deleted
    h100 = Assignment("H100-SXM", 3, 64, 700.0)
    got, _ = enforcer.in_force("code", ("H100-SXM", "A100-SXM4", "L40S"), h100, {})
    assert got.read and got.gone == {"L40S"}
    _, done = enforcer.apply(0.0, "code", got, h100, 4, h100)
    assert done.asked == ("A100-SXM4 replicas -> 0",) and scaler.replicas["code", "A100-SXM4"] == 0, done


def test_a_variant_the_plan_turns_back_to_is_held_to_the_plans_cap_for_it() -> None:
    """Kept while the gate holds the move back, the H100s ran at their pre-move 700 W where the plan counted 450."""
    h100, a100 = Assignment("H100-SXM", 3, 64, 700.0), Assignment("A100-SXM4", 1, 64, 400.0)
    held = draining_caps({}, h100, a100, replace(a100, replicas=3))  # the move begins
    assert held == {"H100-SXM": 700.0}
    held = draining_caps(held, a100, a100, replace(h100, power_cap_w=450.0))  # the plan turns back
    assert held == {"H100-SXM": 450.0}
    assert draining_caps(held, a100, a100, replace(h100, power_cap_w=600.0)) == held  # never raised while held
    assert draining_caps(held, a100, h100, h100) == {"A100-SXM4": 400.0}  # moved back: the A100 drains


def test_a_service_found_running_on_another_variant_is_planned_from_there(tmp_path: Path) -> None:
    """Deployed on L40S before the daemon came (its first variant is H100): read back, it is planned from
    where it runs, with a cap of that type."""
    ctl, _, scaler = on_host(tmp_path, 0, 2)
    ctl.tick_fast(1.0)
    ctl.tick_slow(15.0)
    a = ctl.assignments["chat"]
    assert a.accelerator == "L40S" and a.replicas >= 1 and a.power_cap_w <= 350.0
    assert scaler.replicas["chat", "H100-SXM"] == 0


def test_each_variants_kv_cache_bounds_the_batch_the_plan_models(tmp_path: Path) -> None:
    text = CONFIG.replace('accelerator = "L40S"\ngpus = [2, 3, 4, 5]',
                          'accelerator = "L40S"\ngpus = [2, 3, 4, 5]\nkv_cache_tokens = 60000')
    (tmp_path / "v.toml").write_text(text)
    s = load_settings(tmp_path / "v.toml")
    ctl = Controller(s, Host(DryRunReplicaScaler({})), Host(DryRunReplicaScaler({})), Host(DryRunReplicaScaler({})),
                     DryRunBatchSizer({"chat": 32}), DryRunReplicaScaler({}), Tuner(s.state_path),
                     OwnMetrics(CollectorRegistry()))
    params = ctl._problem(0.0).services[0].params
    assert params["L40S"].kv_tokens == 60000.0 and params["H100-SXM"].kv_tokens == 0.0
    # 60,000 tokens hold 100 of chat's 400 + 200 (1 + 1) / 2 = 600-token sequences: a max batch of 256 runs 100
    assert fitting_shape(params["L40S"], s.services[0].load(1.0, 400.0, 200.0), ServerShape(256, 1024)).max_batch == 100


def test_a_kv_cache_size_out_of_range_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text(CONFIG.replace('gpus = [0, 1]', 'gpus = [0, 1]\nkv_cache_tokens = -5'))
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "v.toml")
    assert "services[chat].variants[H100-SXM].kv_cache_tokens" in str(err.value) and "-5" in str(err.value)
