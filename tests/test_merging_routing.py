"""The routing functions' contracts that the layer tests do not reach (S12; docs/math.md §7).

The layer tests (test_merging.py, test_merging_camex.py) call the routers with 2-D float32 or
float64 inputs from the layer itself; the functions are public and document more: logits of any
batch shape (..., N) and any float dtype with the softmax in float32, k checked against [1, N],
the balance loss in the probabilities' own precision, cv² in float32 for any input (counts
included) with the 1e-10 guard of Shazeer et al.

Oracles are written here: softmax and top-k by sorting rows in float64, the balance loss and
cv² from fractions and the statistics module.

Tolerances: a float32 softmax of logits in [-3, 3] over N = 5 is within a few float32 ulps of
the float64 one (measured: 3.8e-7 relative at worst over the probs and gates checked here);
1e-6 relative leaves 2.6x margin and is far below what a softmax computed in bfloat16 gives
(measured: 3.0e-3). Float64 results are compared to 1e-14 relative (a handful of float64
roundings).
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import pytest
import torch

from namex_ref.merging.routing import cv_squared, load_balancing_loss, top_k_routing

SOFTMAX32_RTOL = 1e-6  # float32 softmax vs float64 (module docstring: measured 3.8e-7)


def _logits(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 6.0 - 3.0)


def _row_oracle(row: list[float], k: int) -> tuple[list[int], list[float], list[float]]:
    """Softmax of one row in float64, the k largest (index order by value) and their
    renormalised weights."""
    m = max(row)
    e = [math.exp(v - m) for v in row]
    p = [v / sum(e) for v in e]
    order = sorted(range(len(row)), key=lambda i: -p[i])[:k]
    z = sum(p[i] for i in order)
    return order, [p[i] / z for i in order], p


@pytest.mark.parametrize("k", [0, 6, -1])
def test_top_k_rejects_k_outside_one_to_n(k: int) -> None:
    """k must be in [1, N] (S12): k = 0 would route no token (gates 0/0), k > N cannot be
    chosen; the error names the range and the value."""
    with pytest.raises(ValueError, match=rf"k must be in \[1, 5\], got {k}"):
        top_k_routing(_logits((3, 5), 0), k)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_on_logits_with_several_batch_dims(k: int) -> None:
    """logits (..., N): a (2, 3, N) batch (T = 3 tokens, fewer than N = 5 experts, so a top-k
    along the wrong dimension cannot pass) gives per-token experts, gates and probs equal to the
    row oracle."""
    logits = _logits((2, 3, 5), 1)
    r = top_k_routing(logits, k)
    assert r.gates.shape == (2, 3, k) and r.experts.shape == (2, 3, k)
    assert r.probs.shape == (2, 3, 5)
    for b in range(2):
        for t in range(3):
            order, gates, p = _row_oracle(logits[b, t].tolist(), k)
            assert r.experts[b, t].tolist() == order
            torch.testing.assert_close(r.gates[b, t], torch.tensor(gates, dtype=torch.float64),
                                       rtol=SOFTMAX32_RTOL, atol=0)
            want = torch.tensor(p, dtype=torch.float64)
            torch.testing.assert_close(r.probs[b, t].double(), want, rtol=SOFTMAX32_RTOL, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_top_k_softmax_runs_in_float32(dtype: torch.dtype) -> None:
    """The router softmax runs in float32 whatever the logits' dtype (module docstring): probs
    are float32 and equal the float64 softmax of the (rounded) logits to float32 accuracy,
    which a softmax in bfloat16/float16 would miss by orders of magnitude; gates come back in
    the logits' dtype."""
    logits = _logits((4, 5), 2).to(dtype)
    r = top_k_routing(logits, 2)
    assert r.probs.dtype == torch.float32 and r.gates.dtype == dtype
    for i in range(4):
        _, _, p = _row_oracle(logits[i].double().tolist(), 2)
        torch.testing.assert_close(r.probs[i].double(), torch.tensor(p, dtype=torch.float64),
                                   rtol=SOFTMAX32_RTOL, atol=0)


def test_balance_loss_keeps_the_precision_of_float64_probs() -> None:
    """N Σ f_i P_i (Switch eqs. 4-6) with f from counts of 3 assignments (f = 1/3, 2/3, not
    exact in binary): for float64 probs the loss is exact to float64 rounding, computed here
    with fractions; counts rounded to float32 would be off by ~3e-8."""
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.7, 0.1, 0.2]],
                         dtype=torch.float64)
    experts = torch.tensor([[0], [1], [1]])  # f = (1/3, 2/3, 0)
    P = [sum(Fraction(str(float(probs[t, i]))) for t in range(3)) / 3 for i in range(3)]
    f = [Fraction(1, 3), Fraction(2, 3), Fraction(0)]
    want = float(3 * sum(fi * pi for fi, pi in zip(f, P, strict=True)))
    got = load_balancing_loss(probs, experts, 3)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-14, abs=0)


def test_cv_squared_is_computed_in_float32_for_any_input() -> None:
    """cv² = var/(mean² + 1e-10), unbiased variance, in float32: integer counts are accepted
    (a variance of an integer tensor does not exist in torch), a bfloat16 input is not reduced
    in bfloat16 (values exact in bfloat16; bfloat16 arithmetic would be off by ~1e-3), and
    float64 comes back as float32."""
    vals = [1.0, 2.0, 3.0, 10.0]
    want = statistics.variance(vals) / (statistics.fmean(vals) ** 2 + 1e-10)
    for x in (torch.tensor([1, 2, 3, 10]), torch.tensor(vals, dtype=torch.bfloat16),
              torch.tensor(vals, dtype=torch.float64)):
        got = cv_squared(x)
        assert got.dtype == torch.float32, x.dtype
        assert float(got) == pytest.approx(want, rel=SOFTMAX32_RTOL), x.dtype


def test_cv_squared_guard_is_added_at_its_own_scale() -> None:
    """The guard 1e-10 (Shazeer et al.) is added to mean²: at values ~1e-5, mean² = 4e-10 is
    of the guard's size, so the guard visibly lowers cv² (0.4 with it, 0.5 without); a mean of
    0 with a non-zero variance gives a large positive cv², not a negative or infinite one."""
    vals = [1e-5, 3e-5]
    want = statistics.variance(vals) / (statistics.fmean(vals) ** 2 + 1e-10)
    assert want == pytest.approx(0.4, rel=1e-12)
    assert float(cv_squared(torch.tensor(vals))) == pytest.approx(want, rel=1e-5)
    assert float(cv_squared(torch.tensor([1.0, -1.0]))) == pytest.approx(2.0 / 1e-10, rel=1e-5)
