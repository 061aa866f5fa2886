"""What a GPU with no process draws: read off the free GPUs, the floor a plan pays, a replica's context on top."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import MIXED_HOST
from prometheus_client import CollectorRegistry

from controller.control import Controller
from controller.empty_draw import MIN_READINGS, EmptyDraw
from controller.gpu_listing import MAX_RETIRED, OUT_OF_SERVICE_S, GpuListing
from controller.optimizer import AcceleratorType, Problem, ServiceDemand
from controller.optimizer.candidates import enumerate_all
from controller.own_metrics import OwnMetrics
from controller.settings import load_settings
from controller.settings_checks import domain_floor_w
from controller.telemetry.base import GpuSample
from controller.wiring import build_parts
from queuemodels import Load, ServiceParams, Targets
from queuemodels.accelerators import CATALOG
from simulator.hardware import SPECS
from tests.test_loops import sim_controller
from tuner import Tuner

NVML_NAME = "NVIDIA H100 80GB HBM3"


def sample(index: int, service: str | None, name: str = NVML_NAME) -> GpuSample:
    return GpuSample(index, f"GPU-{index}", name, 300.0, None, 700.0, 200.0, 700.0, service=service,
                     variant="H100-SXM" if service else None)


def test_the_free_gpus_readings_make_the_empty_draw_once_there_are_enough() -> None:
    """By type: a GPU's NVML name is the type a GPU of that name a service holds is labelled with; a reading
    above the type's idle power (a process the daemon does not know of) is not an empty GPU's."""
    empty = EmptyDraw()
    listing = [sample(0, "chat"), sample(1, None)]
    kinds = ["H100-SXM", "L40S"]
    empty.observe([(NVML_NAME, 60.0)] * (MIN_READINGS - 1) + [(NVML_NAME, 400.0), ("NVIDIA L40S", 30.0)],
                  listing, kinds)
    assert empty.learnt_w() == {}  # too few, the 400 W left out, the L40S's name never seen on a labelled GPU
    empty.observe([(NVML_NAME, 64.0)] * 2, listing, kinds)
    assert empty.learnt_w() == {"H100-SXM": 60.0}
    h100, l40s = empty.offers(load_settings(MIXED_HOST).accelerators)
    assert h100.profile.empty_draw_w == 60.0 and h100.profile.idle_power_w == CATALOG["H100-SXM"].idle_power_w
    assert l40s.profile.empty_draw_w == CATALOG["L40S"].idle_power_w  # not read: the catalogue's idle


def test_with_one_type_an_unknown_name_is_it_only_until_a_name_of_it_is_known() -> None:
    """Never another catalogue type's own name; and once a GPU of the type is labelled, only its name."""
    empty = EmptyDraw()
    empty.observe([(NVML_NAME, 60.0)] * MIN_READINGS + [("L40S", 30.0)] * MIN_READINGS, [], ["H100-SXM"])
    assert empty.learnt_w() == {"H100-SXM": 60.0}
    empty.observe([("NVIDIA L4", 12.0)] * 3 * MIN_READINGS, [sample(0, "chat")], ["H100-SXM"])
    assert empty.learnt_w() == {"H100-SXM": 60.0}  # an L4 node's GPUs are not H100s with no process


def test_the_figure_the_plan_uses_moves_only_past_a_step() -> None:
    """A median that wanders by a watt keeps the plan's profile, and with it every cache keyed on it."""
    empty = EmptyDraw()
    listing = [sample(0, "chat")]
    empty.observe([(NVML_NAME, 60.0)] * MIN_READINGS, listing, ["H100-SXM"])
    first = empty.offers(load_settings(MIXED_HOST).accelerators)
    empty.observe([(NVML_NAME, 61.5)] * 2 * MIN_READINGS, listing, ["H100-SXM"])
    assert empty.learnt_w() == {"H100-SXM": 60.0} and empty.offers(load_settings(MIXED_HOST).accelerators) == first
    empty.observe([(NVML_NAME, 64.0)] * 5 * MIN_READINGS, listing, ["H100-SXM"])
    assert empty.learnt_w() == {"H100-SXM": 64.0}


def test_the_h200_entry_holds_both_idles_it_was_measured_at() -> None:
    """docs/gpus.md: 122-128 W with a CUDA context held, 80 W with no process."""
    h200 = CATALOG["H200-SXM"]
    assert (h200.idle_power_w, h200.empty_draw_w) == (126, 80)
    assert CATALOG["H100-SXM"].empty_draw_w == CATALOG["H100-SXM"].idle_power_w  # not published: read


def test_a_replica_pays_for_its_context_and_a_free_gpu_counts_at_its_empty_draw() -> None:
    catalogue = CATALOG["H100-SXM"]
    demand = ServiceDemand("chat", 1, Targets(300, 40), Load(6.0, 400, 200),
                           {"H100-SXM": ServiceParams("gen1", 12, 0.09, 10, 0.035)}, max_replicas=3)

    def problem(empty_w: float | None) -> Problem:
        acc = AcceleratorType("H100-SXM", 8, 2.99, replace(catalogue, empty_power_w=empty_w))
        return Problem((demand,), (acc,), 5000.0, batch_sizes=(64,), power_levels=(1.0,))

    known, unknown = problem(62.0), problem(None)
    assert (known.idle_w, unknown.idle_w) == (8 * 62.0, 8 * catalogue.idle_power_w)
    [with_context], [without] = enumerate_all(known), enumerate_all(unknown)
    assert with_context and [c.assignment for c in with_context] == [c.assignment for c in without]
    for a, b in zip(with_context, without, strict=True):  # the same draw, 33 W a GPU more above the floor
        assert a.power_w - b.power_w == pytest.approx(a.gpus * (catalogue.idle_power_w - 62.0))
    with pytest.raises(ValueError, match="empty_power_w: must not exceed idle_power_w"):
        replace(catalogue, empty_power_w=catalogue.idle_power_w + 1)


def test_the_controller_reads_the_hidden_empty_draw_off_the_simulated_hosts_free_gpus(
        sim_config: Callable[..., Path]) -> None:
    """config/sim.toml's host starts one replica of each of its three services on 8 GPUs: the five free ones
    teach the plan the simulator's hidden draw of a GPU with no process, which the catalogue does not give."""
    ctl, advance, registry = sim_controller(load_settings(sim_config()))
    for t in range(1, 9):
        advance(float(t))
        ctl.tick_fast(float(t))
    assert sum(g.service is None for g in ctl.fast.samples) == 5
    ctl.tick_slow(8.0)
    assert ctl.empty.learnt_w() == {"H100-SXM": pytest.approx(SPECS["H100-SXM"].empty_w)}
    read = registry.get_sample_value("wattscale_gpu_empty_power_watts", {"accelerator": "H100-SXM"})
    assert read == pytest.approx(SPECS["H100-SXM"].empty_w)
    problem = ctl._problem(0.0)
    assert problem.idle_w == pytest.approx(8 * SPECS["H100-SXM"].empty_w)


def test_gpus_out_of_service_leave_the_plan_unless_listed_ones_of_their_type_make_up_for_them() -> None:
    """A type's count is short of its GPUs out of service where it lists no others to take their place; a GPU of no
    known type counts against none."""
    accs = load_settings(MIXED_HOST).accelerators  # 4 H100-SXM, 4 L40S
    empty = EmptyDraw()
    h100s = [sample(i, "chat" if i == 0 else None) for i in range(4)]
    empty.observe([], h100s, [a.name for a in accs])
    stranger = GpuSample(9, "GPU-9", "NVIDIA B200", None, None, 1000.0, 200.0, 1000.0)
    h100, l40s = empty.offers(accs, h100s[1:], [h100s[0], stranger])
    assert (h100.count, l40s.count) == (3, 4) and empty.short == {"H100-SXM": (1, 4)}
    spare = [*h100s[1:], *(sample(i, None) for i in range(10, 14))]  # more listed than the config offers
    assert [a.count for a in empty.offers(accs, spare, [h100s[0]])] == [4, 4]
    assert [a.count for a in empty.offers(accs, h100s, [])] == [4, 4] and empty.short == {}
    # a stand-in for a GPU never read has no name: with one type configured it is not taken for one of it
    one = tuple(a for a in accs if a.name == "H100-SXM")
    stand_in = GpuSample(5, "unread-5", "", None, None, math.nan, math.nan, math.nan, never_read=True)
    assert [a.count for a in EmptyDraw().offers(one, [*h100s[1:], stand_in], [h100s[0]])] == [3]


def test_a_gpu_lost_on_the_simulated_host_leaves_the_plan_after_a_while_and_its_watts_are_reserved(
        sim_config: Callable[..., Path]) -> None:
    """The simulated host's GPU 2 falls off the bus: missing from the listing for OUT_OF_SERVICE_S (an agent's restart,
    a scrape that missed a series move no replica), the next plan offers 7 H100s, where it had planned 2 of a type of
    which 1 was left, held at the gate cycle after cycle; the limit the governor still counts it at is reserved out of
    the plan's budget. Gone for good (retired), it stays out of the inventory, and nothing is reserved for it."""
    settings = load_settings(sim_config({'mode = "predicted"\n': 'mode = "predicted"\ndomains = [{ name = "rack-a", '
                                                                 'limit_w = 1500, gpus = [0, 1, 2, 3] }]\n'}))
    parts = build_parts(settings)
    assert parts.host is not None
    ctl = Controller(settings, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas,
                     Tuner(settings.state_path), OwnMetrics(CollectorRegistry()))

    def tick(t: float) -> None:
        parts.host.advance_to(t)
        ctl.tick_fast(t)

    for t in range(1, 4):
        tick(float(t))
    whole = ctl._problem(3.0)
    assert [a.count for a in whole.accelerators] == [8]
    parts.host.lose_gpu(2)
    lost = next(g for g in ctl.fast.samples if g.index == 2)
    for t in range(4, 5 + int(OUT_OF_SERVICE_S)):
        tick(float(t))
        if t == 5:
            assert [a.count for a in ctl._problem(5.0).accelerators] == [8]  # a moment: still planned on
    problem = ctl._problem(4.0 + OUT_OF_SERVICE_S)
    lost = ctl.fast.listing.seen[lost.uuid]  # as last listed: the limit the governor counts it at
    assert [a.count for a in problem.accelerators] == [7]
    assert problem.budget_w == pytest.approx(ctl.tick_power.planned_w() - lost.power_limit_w)
    ctl.fast.listing.forget(frozenset({lost.uuid}))
    retired = ctl._problem(5.0 + OUT_OF_SERVICE_S)
    assert [a.count for a in retired.accelerators] == [7] and retired.budget_w == ctl.tick_power.planned_w()
    # out of service, its rack keeps the same for it, not its draw with no replica (the governor counts it at its
    # limit there too); gone for good, nothing
    (rack,), (rack_retired,) = problem.domains, retired.domains
    floor_w = domain_floor_w(settings, (2,), ctl.empty.learnt_w())
    assert rack.room_w == pytest.approx(rack_retired.room_w - lost.power_limit_w + floor_w)
    unread = replace(ctl.fast.samples[0], power_w=None)
    listing = ctl.fast.listing
    listing.unread = {unread.uuid: 10.0}
    assert [g.index for g in listing.out_of_service(10.0 + OUT_OF_SERVICE_S - 1)] == [2]
    assert sorted(g.index for g in listing.out_of_service(10.0 + OUT_OF_SERVICE_S)) == [0, 2]


def test_a_number_a_listed_gpu_holds_again_is_not_lost() -> None:
    """NVML numbers GPUs by position: a GPU back under another UUID (a MIG layout made again) holds the retired one's
    number, and a placement listing that number is right; kept as lost, it was left out of every placement for good."""
    listing = GpuListing(OwnMetrics(CollectorRegistry()), lambda kind, message: None)
    a, b = sample(0, "chat"), sample(1, None)
    listing.with_missing([a, b], 0.0)
    listing.with_missing([a, replace(b, uuid="GPU-1b")], 1.0)  # GPU-1 missing, GPU-1b at its number
    listing.forget(frozenset({b.uuid}))
    out = listing.out_of_service(1.0)
    assert [g.uuid for g in out] == [b.uuid]  # retired: out of service at once
    assert listing.lost_numbers(out) == frozenset()
    listing.with_missing([a], 2.0)  # GPU-1b missing too: its number is nobody's
    assert listing.lost_numbers(listing.out_of_service(2.0 + OUT_OF_SERVICE_S)) == frozenset({1})


def test_a_whole_site_leaving_keeps_the_newest_retired() -> None:
    """Departures are forgotten all at once (a node's GPUs in one tick), and no more than MAX_RETIRED are kept out:
    the newest."""
    listing = GpuListing(OwnMetrics(CollectorRegistry()), lambda kind, message: None)
    first = [replace(sample(i, None), uuid=f"GPU-a{i}") for i in range(8)]
    rest = [replace(sample(8 + i, None), uuid=f"GPU-b{i}") for i in range(MAX_RETIRED)]
    listing.with_missing(first + rest, 0.0)
    listing.with_missing([], 1.0)
    listing.forget(frozenset(g.uuid for g in first))
    listing.forget(frozenset(g.uuid for g in rest))
    assert set(listing.retired) == {g.uuid for g in rest}
    assert not listing.missing and not listing.missing_since and not listing.seen
