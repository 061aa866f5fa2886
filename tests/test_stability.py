"""The stability gate: power cuts at once, growth after the cooldown, restarts and shrinking once confirmed."""

from __future__ import annotations

from dataclasses import replace

from controller.optimizer import Assignment
from controller.settings import StabilitySettings
from controller.stability import Inventory, Pending, StabilityGate

NOW = Assignment("H100-SXM", 2, 64, 600.0)


def test_a_new_max_batch_waits_for_confirmation() -> None:
    gate = StabilityGate(StabilitySettings(cooldown_s=0.0, confirm_cycles=3))
    asked = Assignment("H100-SXM", 2, 128, 600.0)
    assert gate.admit(0.0, "chat", NOW, asked) == NOW
    assert gate.admit(15.0, "chat", NOW, Assignment("H100-SXM", 2, 32, 600.0)) == NOW  # changed its mind
    assert gate.admit(30.0, "chat", NOW, asked) == NOW
    assert gate.admit(45.0, "chat", NOW, asked) == NOW
    assert gate.admit(60.0, "chat", NOW, asked) == asked  # third cycle in a row


def test_more_replicas_pass_at_once_fewer_once_confirmed() -> None:
    gate = StabilityGate(StabilitySettings(cooldown_s=0.0, max_replica_step=2, confirm_cycles=2))
    assert gate.admit(0.0, "chat", NOW, Assignment("H100-SXM", 5, 64, 600.0)).replicas == 4  # step-limited
    fewer = Assignment("H100-SXM", 1, 64, 600.0)
    assert gate.admit(15.0, "code", NOW, fewer).replicas == 2
    assert gate.admit(30.0, "code", NOW, fewer).replicas == 1


def test_lower_caps_pass_during_cooldown_and_confirmation() -> None:
    gate = StabilityGate(StabilitySettings(cooldown_s=120.0, confirm_cycles=3, max_cap_step_w=50.0))
    grown = gate.admit(0.0, "chat", NOW, Assignment("H100-SXM", 3, 64, 700.0))
    assert grown == Assignment("H100-SXM", 3, 64, 650.0)  # cap rises by at most 50 W
    cut = gate.admit(10.0, "chat", grown, Assignment("H100-SXM", 2, 32, 400.0))
    assert cut == Assignment("H100-SXM", 3, 64, 400.0)  # cooling: only the cut goes through


def test_fewer_replicas_pass_whole_while_the_site_is_over_budget_with_caps_cut() -> None:
    """Urgent (every limit at its floor over budget): a shrink skips cooldown, confirmation and the step limit;
    a growth or a new max batch in the same plan does not."""
    gate = StabilityGate(StabilitySettings(cooldown_s=120.0, confirm_cycles=3, max_replica_step=1))
    gate.note_change(0.0, "bulk")
    now = Assignment("H100-SXM", 4, 64, 600.0)
    assert gate.admit(10.0, "bulk", now, Assignment("H100-SXM", 1, 32, 200.0)) == replace(now, power_cap_w=200.0)
    assert gate.admit(11.0, "bulk", now, Assignment("H100-SXM", 1, 32, 200.0), urgent=True) == Assignment(
        "H100-SXM", 1, 64, 200.0)
    assert gate.admit(12.0, "bulk", now, Assignment("H100-SXM", 5, 64, 600.0), urgent=True) == now  # cooling


def test_nothing_that_adds_draw_passes_while_the_site_is_over_budget_at_its_floors() -> None:
    """A trial at a budget between the idle draw and the floors' draw: the slow loop added replicas while every
    limit was at its floor (planned at its caps' draws, they drew their floors), over budget again each time.
    Past its cooldown, a growth, a move or a new max batch is held while urgent; a lower cap still passes."""
    gate = StabilityGate(StabilitySettings(cooldown_s=60.0, confirm_cycles=1, max_replica_step=2))
    now = Assignment("H100-SXM", 2, 64, 420.0)
    assert gate.admit(100.0, "code", now, Assignment("H100-SXM", 4, 64, 420.0), urgent=True) == now
    assert gate.admit(102.0, "code", now, Assignment("H100-SXM", 2, 128, 400.0), urgent=True) == replace(
        now, power_cap_w=400.0)
    assert gate.admit(103.0, "code", now, Assignment("H100-SXM", 4, 64, 420.0)) == Assignment(
        "H100-SXM", 4, 64, 420.0)  # once the governor holds the budget again
    # a move waits, and what it leaves shrinks to min_replicas (at least one) now, as the plan counted it gone (the
    # whole move refused had left the site over budget, and the same move asked for every cycle)
    four = replace(now, replicas=4)
    assert gate.admit(104.0, "code", four, Assignment("L40S", 1, 64, 300.0), urgent=True) == replace(four, replicas=1)
    assert gate.admit(105.0, "code", four, Assignment("L40S", 1, 64, 300.0), urgent=True, least=2) == now
    # a service below its min_replicas (a unit that crashed, nothing yet running) regains them while urgent
    assert gate.admit(106.0, "code", replace(now, replicas=0), now, urgent=True, least=1) == replace(now, replicas=1)


def test_cooldown_counts_from_a_change_the_actuators_took() -> None:
    gate = StabilityGate(StabilitySettings(cooldown_s=60.0))
    more = Assignment("H100-SXM", 3, 64, 600.0)
    assert gate.admit(0.0, "chat", NOW, more) == more  # asked, but refused (no free GPU): no note_change
    assert gate.admit(15.0, "chat", NOW, more) == more  # tried again at once
    gate.note_change(15.0, "chat")
    assert gate.admit(30.0, "chat", more, Assignment("H100-SXM", 4, 64, 600.0)) == more  # now cooling


def test_room_is_made_lowest_priority_first_for_a_scale_up() -> None:
    gate = StabilityGate(StabilitySettings(cooldown_s=0.0, confirm_cycles=3, max_replica_step=2))
    chat_now, code_now, bulk_now = NOW, Assignment("H100-SXM", 3, 64, 600.0), Assignment("H100-SXM", 3, 64, 600.0)
    pending = [Pending("chat", 1, chat_now, replace(chat_now, replicas=4), replace(chat_now, replicas=4)),
               Pending("code", 2, code_now, replace(code_now, replicas=2), code_now),  # shrink not yet confirmed
               Pending("bulk", 3, bulk_now, replace(bulk_now, replicas=1), bulk_now)]
    out = gate.make_room({"H100-SXM": Inventory(free=0)}, pending)
    assert out["chat"].replicas == 4
    assert out["bulk"].replicas == 1 and out["code"].replicas == 3  # the lowest priority gives both GPUs
    one_free = gate.make_room({"H100-SXM": Inventory(free=1)}, pending)
    assert one_free["bulk"].replicas == 2 and one_free["code"].replicas == 3
    assert gate.make_room({"H100-SXM": Inventory(free=2)}, pending)["bulk"] == bulk_now  # room enough: nothing


def test_room_is_never_made_below_the_plan_nor_faster_than_the_step() -> None:
    gate = StabilityGate(StabilitySettings(max_replica_step=1))
    big = Assignment("H100-SXM", 4, 64, 600.0)
    pending = [Pending("chat", 1, NOW, replace(NOW, replicas=4), replace(NOW, replicas=4)),
               Pending("bulk", 3, big, replace(big, replicas=1), big)]
    assert gate.make_room({"H100-SXM": Inventory(free=0)}, pending)["bulk"].replicas == 3  # one step a cycle
    pending[1] = Pending("bulk", 3, big, replace(big, replicas=4), big)
    assert gate.make_room({"H100-SXM": Inventory(free=0)}, pending)["bulk"].replicas == 4  # the plan keeps it


def test_a_restart_waits_for_the_replicas_that_carry_it() -> None:
    gate = StabilityGate(StabilitySettings(cooldown_s=0.0, confirm_cycles=1))
    surge = Assignment("H100-SXM", 3, 128, 600.0)
    assert gate.admit(0.0, "chat", NOW, surge) == replace(NOW, replicas=3)  # replicas now, the batch after
    assert gate.admit(15.0, "chat", replace(NOW, replicas=3), surge) == surge


def test_shrinks_already_admitted_count_as_room() -> None:
    gate = StabilityGate(StabilitySettings(cooldown_s=0.0, confirm_cycles=3))
    code_now, bulk_now = Assignment("H100-SXM", 3, 64, 600.0), Assignment("H100-SXM", 2, 64, 600.0)
    pending = [Pending("chat", 1, NOW, replace(NOW, replicas=3), replace(NOW, replicas=3)),
               Pending("code", 2, code_now, replace(code_now, replicas=2), replace(code_now, replicas=2)),  # confirmed
               Pending("bulk", 3, bulk_now, replace(bulk_now, replicas=1), bulk_now)]
    out = gate.make_room({"H100-SXM": Inventory(free=0)}, pending)
    assert out["bulk"] == bulk_now and out["code"].replicas == 2


def test_a_restart_waits_while_the_service_is_short_with_no_replica_to_add() -> None:
    """At its replica ceiling in a burst, a new max batch waits out the hold: a rolling restart would take
    each replica out in turn. A shortfall for power holds nothing, and one that outlasts the hold is a load
    the batch must follow."""
    gate = StabilityGate(StabilitySettings(confirm_cycles=1, cooldown_s=0.0, short_restart_hold_s=300.0))
    bigger = replace(NOW, max_batch=128)
    assert gate.admit(0.0, "code", NOW, bigger, "replicas") == NOW
    assert gate.admit(285.0, "code", NOW, bigger, "inventory") == NOW
    assert gate.admit(300.0, "code", NOW, bigger, "replicas") == bigger  # the shortfall outlasted the hold
    assert gate.admit(0.0, "chat", NOW, bigger, "budget") == bigger  # the ladder's shape step goes at once
    gate.admit(15.0, "chat", NOW, bigger, "replicas")
    assert gate.admit(30.0, "chat", NOW, bigger, None) == bigger  # short no more: the hold is over
    assert gate.admit(45.0, "chat", NOW, bigger, "replicas") == NOW  # a new shortfall starts a new hold


def test_a_service_gives_way_early_only_to_one_at_least_as_important() -> None:
    """chat (priority 1) planned one replica down so that code (2) gets one more, no GPU free: chat's shrink
    waits for its confirmation; bulk (3) still gives way at once."""
    gate = StabilityGate(StabilitySettings(cooldown_s=0.0, confirm_cycles=3))
    chat_now, code_now = Assignment("H100-SXM", 3, 64, 600.0), Assignment("H100-SXM", 3, 64, 600.0)
    pending = [Pending("chat", 1, chat_now, replace(chat_now, replicas=2), chat_now),
               Pending("code", 2, code_now, replace(code_now, replicas=4), replace(code_now, replicas=4))]
    assert gate.make_room({"H100-SXM": Inventory(free=0)}, pending)["chat"] == chat_now
    bulk_now = Assignment("H100-SXM", 2, 64, 600.0)
    pending.append(Pending("bulk", 3, bulk_now, replace(bulk_now, replicas=1), bulk_now))
    out = gate.make_room({"H100-SXM": Inventory(free=0)}, pending)
    assert out["chat"] == chat_now and out["bulk"].replicas == 1


def test_a_service_below_its_min_replicas_steps_back_while_cooling() -> None:
    """A move's new variant, its old one drained, or a replica lost: the step back to min_replicas passes the
    cooldown (not past the plan, nor past the step); mid-move, with the old variant still running, it waits."""
    gate = StabilityGate(StabilitySettings(cooldown_s=120.0, max_replica_step=1))
    gate.note_change(0.0, "code")
    one = replace(NOW, replicas=1)
    assert gate.admit(10.0, "code", one, replace(NOW, replicas=4), least=3) == replace(NOW, replicas=2)
    assert gate.admit(11.0, "code", one, replace(NOW, replicas=4), least=3, one_variant=False) == one
    assert gate.admit(12.0, "code", one, replace(NOW, replicas=4), least=1) == one
    assert gate.admit(13.0, "code", one, one, least=3) == one  # a plan of one (a partial) is not overridden


def test_a_move_is_confirmed_on_its_accelerator_whatever_max_batch_the_plan_asks() -> None:
    """A plan that turns back to the variant it left, its max batch changing each cycle, never confirmed the move
    back (the streak was kept on accelerator and max batch together): both variants ran on. The new replicas
    start at the max batch in force, so the move counts its accelerator alone; a new max batch still its shape."""
    gate = StabilityGate(StabilitySettings(cooldown_s=0.0, confirm_cycles=3, max_replica_step=2))
    on_l40s = Assignment("L40S", 2, 64, 300.0)
    asks = [Assignment("H100-SXM", 2, batch, 600.0) for batch in (32, 64, 32)]
    got = [gate.admit(15.0 * k, "code", on_l40s, ask) for k, ask in enumerate(asks)]
    assert got[:2] == [on_l40s, on_l40s] and got[2] == Assignment("H100-SXM", 2, 64, 600.0), got
    batch = [gate.admit(60.0 + 15.0 * k, "chat", NOW, replace(NOW, max_batch=b)) for k, b in enumerate((32, 128, 32))]
    assert batch == [NOW, NOW, NOW]
