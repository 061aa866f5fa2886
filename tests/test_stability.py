"""The stability gate: power cuts at once, growth after the cooldown, restarts and shrinking once confirmed."""

from __future__ import annotations

from controller.optimizer import Assignment
from controller.settings import StabilitySettings
from controller.stability import StabilityGate

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
