"""Hypothesis profiles for the property-based suites (tests/test_hostile.py).

`ci` (the default): derandomized and without an example database, so every run tries the same inputs, and
sized to finish in well under two minutes (about 20 s). `long`: random, with 25 times the examples (about
5 minutes), for a hunt before a release:

    .venv/bin/python -m pytest tests/test_hostile.py --hypothesis-profile=long
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, database=None, max_examples=120, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")
