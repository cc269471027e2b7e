"""NashMTL's input contract (issue 27, "Mutation survivors"): behaviours an independent
mutation sample of mtl/nash_mtl found unpinned, one test each, with oracles written here
(numpy Grams, scipy's root in tests/oracles.py, closed forms).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from namex_ref.mtl import NashMTL, NashMTLWarning, nash_mtl
from namex_ref.nash.result import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
)
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


# ---- survivors of the full run at 26753d5 (results/mutation.md, mtl/nash_mtl) ---------------


def test_nashmtl_a_single_tensor_or_a_generator_as_shared_parameters() -> None:
    """shared_parameters may be one tensor or any iterable (a generator is read once): both
    give the bargain of K = GGᵀ (scipy) and, in backward, the clipped gradient (max_norm
    0.5; a consumed generator would clip nothing)."""
    G = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    for wrap in (lambda t: t, lambda t: (p for p in [t])):
        task = Linear(G)
        _, extra = NashMTL(2, "cpu", max_norm=0.5).backward(task.losses(), wrap(task.theta))
        np.testing.assert_allclose(extra["weights"].numpy(), positive_root(G @ G.T), rtol=1e-8)
        full = G.T @ extra["weights"].numpy()
        assert task.theta.grad is not None
        np.testing.assert_allclose(task.theta.grad.numpy(),
                                   full * 0.5 / (np.linalg.norm(full) + 1e-6), rtol=1e-12)


def test_nashmtl_losses_of_shape_one_are_scalars() -> None:
    """A list of (1,)-shaped losses is read as scalars: the weighted loss is Σ_i α_i ℓ_i (a
    0-d tensor), not a broadcast (n, n) sum."""
    G = np.array([[1.0, 0.0], [0.5, 2.0]])
    task = Linear(G)
    losses = [loss.reshape(1) for loss in task.losses()]
    loss, extra = NashMTL(2, "cpu", max_norm=0.0).get_weighted_loss(losses, [task.theta])
    a = extra["weights"].numpy()
    assert loss.shape == ()
    assert float(loss.detach()) == pytest.approx(a[0] * 1.0 + a[1] * 2.0, rel=1e-14)  # ℓ = (1, 2)


def test_nashmtl_float32_gradients_give_a_float64_gram_on_the_newton_route() -> None:
    """Newton route on the host: K is accumulated in float64 from the float32 gradients, so
    it equals numpy's float64 GGᵀ of those float32 values to ~1e-15 (a float32 product would
    be off by ~1e-7); the weighted loss keeps the losses' float32 dtype."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((3, 50)).astype(np.float32)
    theta = torch.zeros(50, dtype=torch.float32, requires_grad=True)
    Gt = torch.from_numpy(G)
    losses = [g @ theta + 1.0 for g in Gt]
    loss, extra = NashMTL(3, "cpu", max_norm=0.0).get_weighted_loss(losses, [theta])
    G64 = G.astype(np.float64)
    np.testing.assert_allclose(extra["gram"].numpy(), G64 @ G64.T, rtol=1e-14, atol=1e-13)
    assert loss.dtype == torch.float32


def test_nashmtl_constructor_defaults_and_bounds() -> None:
    """device becomes a torch.device (α lives there); the CCP's default policy is "use" (the
    authors' behaviour), Newton's "raise"; optim_niter = 1 is allowed (one convex solve per
    update), newton_max_iter = 0 is not; nothing is solved before the first update."""
    m = NashMTL(2, "cpu", solver="ccp", optim_niter=1)
    assert isinstance(m.device, torch.device) and m.device == m.alpha.device
    assert m.on_failure == "use" and NashMTL(2, "cpu").on_failure == "raise"
    assert (m.last_iterations, m.last_status, m.solves) == (0, "not solved", 0)
    assert math.isnan(m.last_residual)
    with pytest.raises(ValueError, match="newton_max_iter"):
        NashMTL(2, "cpu", newton_max_iter=0)


def test_nashmtl_weights_are_cast_once_per_update() -> None:
    """α (float64) is cast to the losses' float32 once per update and cached: the second
    weighted loss between updates runs no copy (aten::_to_copy) at all."""
    from torch.profiler import ProfilerActivity, profile

    theta = torch.zeros(2, dtype=torch.float32, requires_grad=True)
    Gt = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    m = NashMTL(2, "cpu", max_norm=0.0, update_weights_every=3)
    m.get_weighted_loss(torch.stack([g @ theta for g in Gt]), [theta])  # update, then cast
    m.get_weighted_loss(torch.stack([g @ theta for g in Gt]))
    losses = torch.stack([g @ theta for g in Gt])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss, extra = m.get_weighted_loss(losses)
    assert not extra["updated"] and extra["gram"] is None
    assert loss.dtype == torch.float32
    assert not any(ev.key == "aten::_to_copy" for ev in prof.key_averages())


def test_nashmtl_certificate_support_threshold_is_exclusive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The error lists the tasks whose certificate entry is > 1e-12: an entry of exactly
    1e-12 (or below) is not in the support."""
    v = torch.tensor([0.5, 1e-12, 0.5 - 1e-12], dtype=torch.float64)

    def certify(K: torch.Tensor) -> float:
        raise InfeasibleBargainError("no bargain", certificate=v, distance=0.0)

    monkeypatch.setattr(nash_mtl, "raise_if_infeasible", certify)
    G = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0], [-2.0, -1.0, 0.0]])
    with pytest.raises(InfeasibleBargainError, match=r"tasks \[0, 2\] cancel"):
        Linear(G).step(NashMTL(3, "cpu", max_norm=0.0))


def _ridge_weights(G: np.ndarray, **kw: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NashMTLWarning)
        extra = Linear(G).step(NashMTL(G.shape[0], "cpu", on_failure="ridge", max_norm=0.0,
                                       **kw))
    assert extra["policy"] == "ridge"
    out: np.ndarray = extra["weights"].numpy()
    return out


def test_nashmtl_ridge_zero_task_threshold_is_inclusive() -> None:
    """Tasks 0 and 2 cancel; task 1's K_11 equals 1e-12·max_j K_jj exactly (max = 1), so it
    counts as a zero task and its diagonal is raised by 1: α_1 = 1/√(K_11 + 1 + λ); α_0 = α_2
    = 1/√λ (block [[1+λ, −1], [−1, 1+λ]]), λ = 1e-3·mean(diag K)."""
    x = 1e-6
    while x * x != 1e-12:  # the float whose square is exactly the threshold 1e-12·1
        x = float(np.nextafter(x, 1.0 if x * x < 1e-12 else 0.0))
    G = np.array([[1.0, 0.0], [0.0, x], [-1.0, 0.0]])
    lam = 1e-3 * (2 + 1e-12) / 3
    want = [1 / math.sqrt(lam), 1 / math.sqrt(1e-12 + 1 + lam), 1 / math.sqrt(lam)]
    np.testing.assert_allclose(_ridge_weights(G), want, rtol=1e-9)


def test_nashmtl_ridge_with_every_task_zero_is_floored_at_tiny() -> None:
    """Every task has g = 0 (K = 0): the ridge policy's scales are floored at tiny (max and
    mean of diag K), so K' = tiny·I + 1e-3·tiny·I and α_i = 1/√(1.001·tiny), finite."""
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    losses = [0.0 * theta.sum() + 1.0, 0.0 * theta.sum() + 2.0]
    m = NashMTL(2, "cpu", on_failure="ridge", max_norm=0.0)
    with pytest.warns(NashMTLWarning, match="zero gradient"):
        _, extra = m.backward(losses, [theta])
    tiny = torch.finfo(torch.float64).tiny
    np.testing.assert_allclose(extra["weights"].numpy(), [1 / math.sqrt(1.001 * tiny)] * 2,
                               rtol=1e-12)


def test_nashmtl_ridge_that_does_not_converge_raises() -> None:
    """The ridge fallback is solved with the same step cap: with newton_max_iter = 1 it does
    not converge on a cancelling pair far from its root, and the update raises
    NashConvergenceError saying so (never a silent α)."""
    G = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 1e-3]])
    with pytest.raises(NashConvergenceError, match="the ridge fallback did not converge"):
        _ridge_weights(G, newton_max_iter=1)


def test_nashmtl_ccp_failure_message_names_the_authors_rule() -> None:
    """An infeasible task set on the CCP route (default policy "use"): the warning names the
    authors' stopping rule, not a Newton tolerance."""
    G = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0], [-2.0, -1.0, 0.0]])
    with pytest.warns(NashMTLWarning, match="the authors' stopping rule") as rec:
        Linear(G).step(NashMTL(3, "cpu", solver="ccp", max_norm=0.0))
    assert "tolerance 1e-10" not in str(rec[0].message)


def test_nashmtl_backward_between_updates_needs_no_parameters_without_clipping() -> None:
    """max_norm = 0 and update_weights_every = 2: step 1 reuses α and clips nothing, so
    backward(losses) without shared_parameters is valid; the gradient is Gᵀα."""
    G = np.array([[1.0, 0.0], [0.5, 2.0]])
    task = Linear(G)
    m = NashMTL(2, "cpu", max_norm=0.0, update_weights_every=2)
    task.step(m)
    task.theta.grad = None
    _, extra = m.backward(task.losses())
    assert not extra["updated"] and task.theta.grad is not None
    np.testing.assert_allclose(task.theta.grad.numpy(), G.T @ extra["weights"].numpy(),
                               rtol=1e-14)
