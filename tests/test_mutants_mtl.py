"""NashMTL's input contract (issue 27, "Mutation survivors"): behaviours an independent
mutation sample of mtl/nash_mtl found unpinned, one test each, with oracles written here
(numpy Grams, scipy's root in tests/oracles.py, closed forms).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from namex_ref.mtl import NashMTL, NashMTLWarning, nash_mtl
from namex_ref.nash.result import BargainInputError, DegenerateExpertError, InfeasibleBargainError
from tests.oracles import positive_root
from tests.test_mtl import Linear


def test_nashmtl_message_lists_exactly_the_cancelling_tasks() -> None:
    """g_2 = −2g_0 with g_1 independent: no bargain, and the error names tasks [0, 2]."""
    G = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0], [-2.0, -1.0, 0.0]])
    with pytest.raises(InfeasibleBargainError, match=r"tasks \[0, 2\] cancel"):
        Linear(G).step(NashMTL(3, "cpu", max_norm=0.0))


def test_nashmtl_a_loss_without_graph_is_a_zero_gradient_task() -> None:
    """A constant loss (no graph) has g = 0: DegenerateExpertError naming that task (S6,
    certificate e_1) with on_failure="raise"."""
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.2, 0.1, 1.0]], dtype=torch.float64)
    losses = [g[0] @ theta, torch.tensor(2.0, dtype=torch.float64), g[2] @ theta]
    with pytest.raises(DegenerateExpertError, match="task 1's loss has zero gradient") as err:
        NashMTL(3, "cpu", max_norm=0.0).backward(losses, [theta])
    assert err.value.certificate.tolist() == [0.0, 1.0, 0.0]


def test_nashmtl_a_parameter_some_task_does_not_use() -> None:
    """Task 1 does not use φ (allow_unused): its gradient there is 0, so K = G Gᵀ with the
    zero block, and α is the root of that K (scipy)."""
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    phi = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    a, b, c = (np.array(v) for v in ([1.0, 0.2], [0.3, 1.0], [-0.5, 2.0]))
    losses = [torch.from_numpy(a) @ theta + torch.from_numpy(c) @ phi,
              torch.from_numpy(b) @ theta,
              torch.from_numpy(c) @ phi + torch.from_numpy(a) @ theta * 0.1]
    G = np.array([[*a, *c], [*b, 0.0, 0.0], [*(0.1 * a), *c]])
    _, extra = NashMTL(3, "cpu", max_norm=0.0).backward(losses, [theta, phi])
    np.testing.assert_allclose(extra["gram"].numpy(), G @ G.T, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(extra["weights"].numpy(), positive_root(G @ G.T), rtol=1e-8)


def test_nashmtl_refuses_a_non_scalar_loss_and_tol_zero() -> None:
    theta = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"losses\[1\] must be a scalar tensor"):
        NashMTL(2, "cpu").backward([theta.sum(), theta * 2], [theta])
    with pytest.raises(ValueError, match="tol"):
        NashMTL(2, "cpu", tol=0.0)


def test_nashmtl_an_overflowed_off_diagonal_gram_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finite diagonal, an infinite off-diagonal entry: BargainInputError saying the Gram
    overflowed (never passed to a solver)."""
    K = torch.tensor([[1.0, math.inf], [math.inf, 1.0]], dtype=torch.float64)
    monkeypatch.setattr(nash_mtl, "task_gram", lambda losses, params, dtype: K.to(dtype))
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(BargainInputError, match="overflowed"):
        NashMTL(2, "cpu", on_failure="keep").backward([theta.sum(), 2 * theta.sum()], [theta])


def test_nashmtl_an_invalid_gram_is_an_input_error_not_a_fallback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task Gram that is not PSD (|K_01| > √(K_00 K_11)) fails the solve; with
    on_failure="keep" it still raises BargainInputError (a bug upstream, not a bargain that
    failed), without a warning and without counting a policy."""
    K = torch.tensor([[1.0, 3.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    monkeypatch.setattr(nash_mtl, "task_gram", lambda losses, params, dtype: K.to(dtype))
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    m = NashMTL(3, "cpu", on_failure="keep", max_norm=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NashMTLWarning)
        with pytest.raises(BargainInputError, match="is not valid"):
            m.backward([theta.sum(), 2 * theta.sum(), 3 * theta.sum()], [theta])
    assert m.policy_counts["keep"] == 0


def test_nashmtl_ridge_treats_a_relatively_tiny_task_as_zero() -> None:
    """Tasks 0 and 1 cancel (no bargain) and task 2's ‖g‖² = 9e-12 is below 1e-12·max_j K_jj
    (= 1e-10): the ridge policy raises its diagonal to max_j K_jj = 100. K' is block diagonal,
    so α has a closed form: α_0 = α_1 = 1/√(λ) for the block [[100+λ, −100], [−100, 100+λ]]
    (x(100 + λ − 100)x = 1), α_2 = 1/√(9e-12 + 100 + λ), λ = 1e-3·mean(diag K)."""
    G = np.zeros((3, 4))
    G[0, 0], G[1, 0], G[2, 3] = 10.0, -10.0, 3e-6
    K = G @ G.T
    lam = 1e-3 * K.diagonal().mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NashMTLWarning)
        extra = Linear(G).step(NashMTL(3, "cpu", on_failure="ridge", max_norm=0.0))
    assert extra["policy"] == "ridge" and extra["infeasible"] == 1
    want = [1 / math.sqrt(lam), 1 / math.sqrt(lam), 1 / math.sqrt(K[2, 2] + 100 + lam)]
    np.testing.assert_allclose(extra["weights"].numpy(), want, rtol=1e-9)


def test_nashmtl_call_is_backward_and_clips_to_the_default_max_norm() -> None:
    """``m(losses, params)`` is ``backward`` (the authors' ``__call__``): θ's gradient is
    Gᵀα clipped to the default max_norm = 1 (torch's rule: ×1/(‖g‖ + 1e-6) above 1)."""
    G = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    task = Linear(G)
    _, extra = NashMTL(2, "cpu")(task.losses(), [task.theta])
    full = G.T @ extra["weights"].numpy()
    norm = np.linalg.norm(full)
    assert norm > 1.0 and task.theta.grad is not None
    np.testing.assert_allclose(task.theta.grad.numpy(), full / (norm + 1e-6), rtol=1e-12)


def test_nashmtl_refuses_clipping_without_parameters_and_non_tensor_parameters() -> None:
    """Between updates (update_weights_every = 2, step 1) no parameters are needed for the
    weights, but max_norm > 0 clips them: ValueError naming max_norm; a non-tensor shared
    parameter is named by its index."""
    task = Linear(np.array([[1.0, 0.0], [0.0, 1.0]]))
    m = NashMTL(2, "cpu", update_weights_every=2)
    task.step(m)
    with pytest.raises(ValueError, match="max_norm > 0 clips shared_parameters"):
        m.backward(task.losses())
    with pytest.raises(ValueError, match=r"shared_parameters\[1\] is int, not a tensor"):
        NashMTL(2, "cpu").backward(task.losses(), [task.theta, 3])


def test_nashmtl_newton_failure_message_names_the_tolerance() -> None:
    """An infeasible task set with on_failure="keep": the warning names Newton's tolerance
    (1e-10), not the CCP's stopping rule."""
    G = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0], [-2.0, -1.0, 0.0]])
    with pytest.warns(NashMTLWarning, match=r"tolerance 1e-10\)") as rec:
        Linear(G).step(NashMTL(3, "cpu", on_failure="keep", max_norm=0.0))
    assert "the authors' stopping rule" not in str(rec[0].message)
