"""Shared pytest configuration: hypothesis profiles and one torch thread per worker.

Profiles: "default" (30 examples, no deadline: cvxpy oracles take tens of ms and the first call
pays import/compilation time), "ci" (the same, derandomised so CI runs are reproducible),
"ci-random" (NOT derandomised, the same fixed budget of 30 examples per test unless a test sets
its own, no example database, failures print a reproduction blob: CI's slow step runs under it
so that latent flaky examples surface in CI rather than in users' hands) and
"mutation" (derandomised, 10 examples, no example database, no shrinking: tools/mutation.py's
repeatable runs).
Select with the environment variable HYPOTHESIS_PROFILE (default "default").
"""

from __future__ import annotations

import os

from hypothesis import Phase, settings

settings.register_profile("default", max_examples=30, deadline=None)
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.register_profile(
    "ci-random", max_examples=30, deadline=None, derandomize=False, database=None, print_blob=True
)
settings.register_profile(
    "mutation",
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # a failure is a kill: no time spent shrinking it
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# One intra-op thread per test process: the suite runs as 2 xdist workers on 2 cores, and with
# torch's default of one thread per core the workers oversubscribe the machine; measured on the
# dev box, a 4×4 Cholesky (Newton's inner step) then took 16 ms instead of 1.3 µs. Tests that
# start subprocesses (DDP, resume) set their own thread counts.
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Every test starts on one thread, whatever an earlier test in the worker set."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(params=["auto", "eager"])
def newton_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a Newton test through both backends of ``solve_newton``: "auto" (the fused CPU kernel
    of nash/fused.py, the CPU default) and "eager" (the batched torch loop that CUDA tensors,
    autograd and ``record_history`` take). Patches the keyword default, so every
    ``solve_nash(method="newton")`` / ``solve_newton`` call without an explicit ``backend``
    takes the parametrised one; tests opt in with ``pytest.mark.usefixtures("newton_backend")``
    (only where the eager path's behaviour matters: the default run stays fast)."""
    from namex_ref.nash import newton

    defaults = newton.solve_newton.__kwdefaults__
    assert defaults is not None and "backend" in defaults
    monkeypatch.setitem(defaults, "backend", request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The token cache of the quick training runs (``tests/train_runs.py``), built once per
    test module (a module may define its own ``cache`` for other data)."""
    from namex_ref.train import TrainConfig
    from namex_ref.train.data import load_token_data
    from tests.train_runs import QUICK_CHARS

    path = tmp_path_factory.mktemp("namex-cache")
    load_token_data(TrainConfig(corpus_chars=QUICK_CHARS, cache_dir=str(path)))
    return path
