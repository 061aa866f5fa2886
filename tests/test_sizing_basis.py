"""The sizing basis holds inputs through jitter and lets real moves through."""

from __future__ import annotations

from controller.sizing_basis import SizingBasis, TokenMix


def test_holds_within_tolerance_and_follows_a_real_move() -> None:
    basis = SizingBasis(0.01)
    first = basis.hold("llama@H100", (20.0, 0.2, 30.0))
    assert basis.hold("llama@H100", (20.1, 0.2015, 29.9)) is first  # every move under 1 %
    moved = basis.hold("llama@H100", (20.1, 0.21, 29.9))  # beta moved 5 %
    assert moved == (20.1, 0.21, 29.9)
    assert basis.hold("llama@H100", (20.0, 0.21, 29.9)) is moved  # held relative to the new basis
    assert basis.hold("other", (1.0,)) == (1.0,)  # keys are independent


def test_zero_tolerance_passes_every_value() -> None:
    basis = SizingBasis(0.0)
    assert basis.hold("k", (1.0, 2.0)) == (1.0, 2.0)
    assert basis.hold("k", (1.0, 2.0000001)) == (1.0, 2.0000001)


def test_an_item_is_held_while_its_signature_is() -> None:
    basis = SizingBasis(0.05)
    first = basis.keep("pair", (300.0, 400.0), "curve A")
    assert first == "curve A"
    assert basis.keep("pair", (303.0, 396.0), "curve B") == "curve A"  # predictions moved 1 %
    assert basis.keep("pair", (303.0, 440.0), "curve C") == "curve C"  # one moved 10 %


def test_token_mix_pools_windows_by_requests() -> None:
    mix = TokenMix(memory=0.5)
    assert mix.update("chat", 10, 400.0, 200.0) == (400.0, 200.0)
    # Second window: weights 0.5 * 10 = 5 (old) and 15 (new).
    in_t, out_t = mix.update("chat", 15, 800.0, 100.0)
    assert abs(in_t - (5 * 400 + 15 * 800) / 20) < 1e-9 and abs(out_t - (5 * 200 + 15 * 100) / 20) < 1e-9
    assert mix.update("code", 0, 1200.0, 300.0) == (1200.0, 300.0)  # nothing served yet: the window's own
