"""Hypothesis profiles for the fuzz tests: a quick default run that fits in `make test`,
and `P2PM_FUZZ=long` (what `make fuzz` sets) for many more examples per decoder."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "p2pm-quick", max_examples=60, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "p2pm-long", max_examples=5000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("p2pm-long" if os.environ.get("P2PM_FUZZ") == "long" else "p2pm-quick")
