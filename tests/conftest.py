"""Shared pytest configuration: hypothesis profiles.

Profiles: "default" (30 examples, no deadline: cvxpy oracles take tens of ms and the first call
pays import/compilation time) and "ci" (the same, derandomised so CI runs are reproducible).
Select with the environment variable HYPOTHESIS_PROFILE (default "default").
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("default", max_examples=30, deadline=None)
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
