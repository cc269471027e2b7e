"""``nash_bargain`` and the error records at their edges (S1–S9): what each message and field
says, computed here, for the paths the main tests do not reach.

* Messages quote the largest *magnitude* of τ (negative entries included);
* orthogonal experts (zero off-diagonal K) are a bargain (S8), not a zero expert;
* per-matrix granularity names the weight matrix and the expert of a zero τ;
* the transpose hint appears only when N > d;
* the primal oracle receives the real τ (docs/implementation.md: "pass the real τ through
  nash_bargain");
* error records keep their message and a zero expert's distance is exactly 0 (S6).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import namex_ref.nash.bargain as bargain_mod
from namex_ref.nash import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    nash_bargain,
    solve_nash,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_overflow_message_quotes_the_largest_magnitude() -> None:
    """All entries −3e19 in float32: ‖τ_i‖² = 16·9e38 overflows; the message says 3e+19."""
    taus = torch.full((2, 16), -3e19)
    taus[1, 0] = -2e19
    with pytest.raises(BargainInputError, match=r"largest entry is 3e\+19"):
        nash_bargain(taus)


def test_underflow_message_quotes_the_largest_magnitude() -> None:
    taus = torch.randn(3, 8, generator=_gen(0)) + 2.0
    taus[1] = -3e-25  # ‖τ_1‖² = 8·9e-50 underflows in float32
    with pytest.raises(BargainInputError, match=r"expert 1.*largest entry 3e-25"):
        nash_bargain(taus)


def test_orthogonal_experts_through_nash_bargain() -> None:
    """S8 through the τ route: K has zero off-diagonal entries, which are not zero experts;
    α_i = 1/‖τ_i‖ exactly (computed here)."""
    taus = torch.zeros(3, 5, dtype=torch.float64)
    taus[0, 0], taus[1, 2], taus[2, 4] = 2.0, -0.5, 4.0
    res = nash_bargain(taus)
    torch.testing.assert_close(res.alpha, torch.tensor([0.5, 2.0, 0.25], dtype=torch.float64),
                               rtol=1e-15, atol=0)


def test_zero_expert_in_one_weight_matrix_is_named() -> None:
    """granularity="matrix": a τ that is zero in matrix 1 only (expert 2 of 3) is named with
    its matrix; the same experts bargained per expert are fine (τ_2 ≠ 0 over all matrices)."""
    a = torch.randn(3, 4, generator=_gen(1), dtype=torch.float64) + 1.0
    b = torch.randn(3, 2, 2, generator=_gen(2), dtype=torch.float64) + 1.0
    b[2] = 0.0
    with pytest.raises(DegenerateExpertError, match=r"expert 2 equals the base expert "
                       r"\(τ_2 = 0 in weight matrix 1\)") as exc:
        nash_bargain([a, b], granularity="matrix")
    assert exc.value.certificate.tolist() == [0.0, 0.0, 1.0]
    assert exc.value.distance == 0.0
    res = nash_bargain([a, b])
    assert res.alpha.shape == (3,)
    a[1] = 0.0  # zero over every matrix: the expert route has no matrix to name
    b[1] = 0.0
    with pytest.raises(DegenerateExpertError, match=r"τ_1 = 0\)") as exc2:
        nash_bargain([a, b])
    assert "weight matrix" not in str(exc2.value)


def test_transpose_hint_only_when_more_experts_than_dimensions() -> None:
    """N = d = 2 anti-parallel experts: infeasible (S6) but not a transpose mistake."""
    taus = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    with pytest.raises(InfeasibleBargainError) as exc:
        nash_bargain(taus)
    assert "transpose" not in str(exc.value)
    assert str(exc.value).startswith("No Nash bargain exists")


def test_primal_receives_the_real_domain_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The primal oracle is given G = [τ_1 … τ_N] (d, N) for granularity="expert" (so it checks
    S4 on the real vectors), nothing for "matrix", and a caller's own G is kept."""
    seen: list[dict[str, Any]] = []
    real = bargain_mod.solve_nash

    def spy(K: torch.Tensor, **kw: Any) -> Any:
        seen.append(dict(kw))
        return real(K, method="newton")

    monkeypatch.setattr(bargain_mod, "solve_nash", spy)
    a = torch.randn(3, 4, generator=_gen(3), dtype=torch.float64) + 1.0
    b = torch.randn(3, 2, 2, generator=_gen(4), dtype=torch.float64) + 1.0
    nash_bargain([a, b], method="primal")
    G = seen[-1]["G"]
    assert torch.equal(G, torch.cat([a, b.reshape(3, -1)], 1).T)
    nash_bargain([a, b], method="primal", granularity="matrix")
    assert "G" not in seen[-1]
    mine = torch.eye(3, dtype=torch.float64)
    nash_bargain([a, b], method="primal", G=mine)
    assert seen[-1]["G"] is mine
    nash_bargain([a, b], method="newton")
    assert "G" not in seen[-1]


def test_zero_expert_error_from_the_gram_route() -> None:
    """solve_nash on a K with K_11 = 0: DegenerateExpertError, certificate e_1, distance 0."""
    K = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
    with pytest.raises(DegenerateExpertError, match="Expert 1 has a zero domain vector") as exc:
        solve_nash(K)
    assert exc.value.distance == 0.0
    assert exc.value.certificate.tolist() == [0.0, 1.0, 0.0]


def test_error_records_keep_message_and_fields() -> None:
    cert = torch.tensor([0.5, 0.5])
    err = InfeasibleBargainError("no bargain", cert, (1,), 0.25)
    assert str(err) == "no bargain" and err.args == ("no bargain",)
    assert err.certificate is cert and err.batch_index == (1,) and err.distance == 0.25
    default = InfeasibleBargainError("x", cert)
    assert default.batch_index == () and default.distance == 0.0
