"""namex_ref.mtl.NashMTL: the authors' Nash-MTL interface on the project's solvers (S4–S6, S9).

Oracles, all independent of the code under test:

- scipy's MINPACK root of Kα = 1/α (``tests.oracles.positive_root``, S4) and the KKT/S7
  identity α_i u_i = 1 evaluated from the gradients G themselves (u = G Gᵀα in numpy);
- linear task losses ℓ_i = g_iᵀθ + c_i, whose gradients are exactly the rows g_i of a known
  G, so the expected gradient of the weighted loss, Gᵀα, and its clipping are numpy arithmetic;
- a written-out CCP step (tests.oracles.ccp_step: the authors' convex sub-problem as SOC
  constraints solved by Clarabel) for the CCP route; ECOS's iterates through the project's
  CCP (a different algorithm: a sequence of convex sub-problems), compared with Newton by the
  residual rule of docs/math.md §7: two α with residuals r₁, r₂ agree to
  rtol = 2√N(r₁ + r₂) + 1e-12;
- counting spies on the solver functions, ``torch.autograd.grad`` and the profiler's host-sync
  operators (``namex_ref.benchmarks.syncs.count_sync_ops``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from namex_ref.benchmarks.syncs import count_sync_ops
from namex_ref.mtl import MTL_POLICIES, FailurePolicy, NashMTL, NashMTLWarning, nash_mtl, task_gram
from namex_ref.nash.newton import RESIDUAL_TOL, solve_newton
from namex_ref.nash.oracles import ORACLE_RESIDUAL_TOL, solve_ccp
from namex_ref.nash.result import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
)
from tests.oracles import ccp_step, fallback_alpha, positive_root

# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def rule_rtol(n: int, r1: float, r2: float) -> float:
    """The residual rule of docs/math.md §7."""
    return 2 * math.sqrt(n) * (r1 + r2) + 1e-12


def rel_err(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - b) / np.abs(b)))


class Linear:
    """Tasks ℓ_i(θ) = g_iᵀθ + c_i on a float64 parameter θ: ∇ℓ_i = g_i exactly."""

    def __init__(self, G: np.ndarray) -> None:
        self.G = G
        self.theta = torch.zeros(G.shape[1], dtype=torch.float64, requires_grad=True)
        self.Gt = torch.from_numpy(G)

    def losses(self) -> torch.Tensor:
        # one graph per task (a single G @ θ would mix a NaN of one row into every gradient)
        return torch.stack([g @ self.theta + (i + 1.0) for i, g in enumerate(self.Gt)])

    def step(self, m: NashMTL) -> dict[str, Any]:
        self.theta.grad = None
        _, extra = m.backward(self.losses(), [self.theta])
        return extra


def spread_G(seed: int, n: int = 3, d: int = 6, spread: float = 2.0) -> np.ndarray:
    """Gaussian task gradients (full rank, so a bargain exists, S6) with norms 10^±spread."""
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(n, d))
    norms = 10.0 ** rng.uniform(-spread, spread, size=(n, 1))
    out: np.ndarray = G / np.linalg.norm(G, axis=1, keepdims=True) * norms
    return out


def cancelling_G(seed: int = 0) -> np.ndarray:
    """Three tasks, g_2 = −0.5 g_1: g_1 + 2 g_2 = 0, so no bargain exists (S6)."""
    G = spread_G(seed, spread=0.5)
    G[1] = -0.5 * G[0]
    return G


# ------------------------------------------------------------------------------------------
# α solves S4 (independent root and the KKT identity from G), gradient and clipping
# ------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5), extra_d=st.integers(0, 4))
def test_newton_alpha_is_the_bargain_of_the_task_gradients(seed: int, n: int,
                                                           extra_d: int) -> None:
    """S4/S9: on task gradients with norms over 1e-2…1e2, the weights agree with scipy's root
    of Kα = 1/α by the residual rule; α_i u_i = 1 with u = G Gᵀα evaluated from G (KKT of
    S3, S7) to the reported residual + 1e-9; the gradient the weighted backward leaves on θ is
    Gᵀα (max_norm = 0: no clipping) to 1e-12 relative (one float64 reduction)."""
    G = spread_G(seed, n, n + extra_d)
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    # well inside S6's feasible set, where the root oracle certifies 1e-12 (at σ_min = 3e-3
    # α̂ reaches ~400 and float64 rounding of α_i(Kα)_i alone is ~1e-11; hard problems are
    # the Newton solver's own tests, tests/test_nash_hard.py)
    assume(np.linalg.svd(Gn, compute_uv=False).min() > 0.05)
    task = Linear(G)
    m = NashMTL(n, "cpu", max_norm=0.0)
    extra = task.step(m)
    alpha = extra["weights"]
    assert isinstance(alpha, torch.Tensor) and alpha.dtype == torch.float64
    assert extra["updated"] and extra["failures"] == 0 and extra["policy"] is None
    r = extra["residual"]
    assert r <= RESIDUAL_TOL
    ref = positive_root(G @ G.T)
    assert rel_err(alpha, ref) <= rule_rtol(n, r, 1e-12)
    u = G @ (G.T @ alpha.numpy())
    np.testing.assert_allclose(alpha.numpy() * u, 1.0, rtol=0, atol=r + 1e-9)
    expected = G.T @ alpha.numpy()
    assert task.theta.grad is not None
    np.testing.assert_allclose(task.theta.grad.numpy(), expected, rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())


def test_weights_scale_inversely_with_a_task_loss() -> None:
    """S9(c): multiplying task 0's loss by c divides its weight by c and leaves the others and
    the update Σ α_i g_i unchanged (to the residual rule)."""
    G = spread_G(1)
    a = Linear(G).step(NashMTL(3, "cpu", max_norm=0.0))["weights"].numpy()
    G2 = G.copy()
    G2[0] *= 1e3
    b = Linear(G2).step(NashMTL(3, "cpu", max_norm=0.0))["weights"].numpy()
    np.testing.assert_allclose(b * np.array([1e3, 1, 1]), a, rtol=rule_rtol(3, 1e-10, 1e-10))


def test_clipping_as_the_authors_backward() -> None:
    """max_norm clips the shared parameters' gradient only (torch's clip_grad_norm_: scale
    min(1, max_norm/(‖g‖ + 1e-6))); a task-specific parameter's gradient is untouched."""
    G = spread_G(2)
    task = Linear(G)
    head = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    m = NashMTL(3, "cpu", max_norm=0.5)
    losses = task.losses() * torch.stack([head, torch.ones((), dtype=torch.float64),
                                          torch.ones((), dtype=torch.float64)])
    loss, extra = m.backward(losses, [task.theta], task_specific_parameters=[head])
    alpha = extra["weights"].numpy()
    full = (G * np.array([[3.0], [1.0], [1.0]])).T @ alpha  # task 0's gradient is 3·g_0
    norm = np.linalg.norm(full)
    assert norm > 0.5  # the clip acts
    assert task.theta.grad is not None and head.grad is not None
    np.testing.assert_allclose(task.theta.grad.numpy(), full * 0.5 / (norm + 1e-6), rtol=1e-12)
    assert float(head.grad) == pytest.approx(alpha[0] * float(task.losses()[0].detach()), rel=1e-12)
    assert float(loss.detach()) == pytest.approx(float(alpha @ losses.detach().numpy()),
                                                rel=1e-12)


def test_losses_as_a_list_and_extra_kwargs() -> None:
    """The authors' trainers pass a list/tensor of losses and extra keyword arguments
    (representation, last_shared_parameters); both forms give the same α and loss."""
    G = spread_G(3)
    t1, t2 = Linear(G), Linear(G)
    m1, m2 = NashMTL(3, "cpu"), NashMTL(3, "cpu")
    l1, e1 = m1.get_weighted_loss(t1.losses(), [t1.theta], representation=None)
    l2, e2 = m2.get_weighted_loss(list(t2.losses()), iter([t2.theta]), last_shared_parameters=[])
    assert torch.equal(e1["weights"], e2["weights"]) and float(l1.detach()) == float(l2.detach())


# ------------------------------------------------------------------------------------------
# warm start, update_weights_every: no solve, no gradients, no host sync between updates
# ------------------------------------------------------------------------------------------


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    """Record the keyword arguments of every call of nash_mtl.<name> (the module's reference)."""
    calls: list[dict[str, Any]] = []
    real: Callable[..., Any] = getattr(nash_mtl, name)

    def wrapped(K: torch.Tensor, **kw: Any) -> Any:
        calls.append({"K": K.clone(), **kw})
        return real(K, **kw)

    monkeypatch.setattr(nash_mtl, name, wrapped)
    return calls


def test_newton_is_warm_started_from_the_previous_alpha(monkeypatch: pytest.MonkeyPatch) -> None:
    """First update from α̂ = 1 (alpha0 None), later ones from the previous α; K is the float64
    Gram of the task gradients (= G Gᵀ computed here in numpy, to 1e-13)."""
    calls = spy(monkeypatch, "solve_newton")
    G = spread_G(4)
    task = Linear(G)
    m = NashMTL(3, "cpu", max_norm=0.0)
    a1 = task.step(m)["weights"].clone()
    task.theta.data += 0.1  # the gradients of linear tasks do not change: α is the same
    a2 = task.step(m)["weights"]
    assert len(calls) == 2
    assert calls[0]["alpha0"] is None and torch.equal(calls[1]["alpha0"], a1)
    assert calls[1]["K"].dtype == torch.float64
    np.testing.assert_allclose(calls[1]["K"].numpy(), G @ G.T, rtol=1e-13)
    np.testing.assert_allclose(a2.numpy(), a1.numpy(), rtol=rule_rtol(3, 1e-10, 1e-10))


def test_update_weights_every_skips_gradients_solve_and_host_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """update_weights_every = 3 over 7 steps: α is solved on steps 0, 3, 6 only; between
    updates no torch.autograd.grad call, no solver call and no host-sync operator
    (aten::_local_scalar_dense, aten::nonzero) in get_weighted_loss or in backward
    (weighted sum, backward, clipping); the weights are the last update's."""
    calls = spy(monkeypatch, "solve_newton")
    grads: list[int] = []
    real_grad = torch.autograd.grad

    def counting_grad(*a: Any, **k: Any) -> Any:
        grads.append(1)
        return real_grad(*a, **k)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    G = spread_G(5)
    task = Linear(G)
    m = NashMTL(3, "cpu", max_norm=1.0, update_weights_every=3)
    updated, syncs = [], []
    for k in range(7):
        before = (len(calls), len(grads))
        task.theta.grad = None
        if k % 3 == 0:
            extra = task.step(m)
        else:
            last = m.alpha
            box: list[dict[str, Any]] = []

            def one_step(out: list[dict[str, Any]] = box) -> None:
                out.append(task.step(m))

            syncs.append(count_sync_ops(one_step))
            extra = box[0]
            assert extra["weights"] is last
            assert (len(calls), len(grads)) == before
        updated.append(extra["updated"])
    assert updated == [True, False, False, True, False, False, True]
    assert len(calls) == 3 and len(grads) == 3 * 3
    assert syncs == [{"aten::_local_scalar_dense": 0, "aten::nonzero": 0}] * 4
    assert m.step == 7 and m.solves == 3


def test_ccp_route_is_the_authors_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """solver="ccp": each update calls the project's CCP with the authors' warm start (ones at
    the first update, then the previous α), their cap optim_niter as max_steps, and K in the
    gradients' dtype (float32 here, as theirs, = G Gᵀ formed here in float32). What the CCP
    computes is checked against a written-out CCP in the test below."""
    calls = spy(monkeypatch, "solve_ccp")
    G = spread_G(6).astype(np.float32)
    theta = torch.zeros(G.shape[1], requires_grad=True)
    Gt = torch.from_numpy(G)
    m = NashMTL(3, "cpu", optim_niter=7, solver="ccp")
    seen = []
    for _ in range(2):
        theta.grad = None
        _, extra = m.backward(Gt @ theta, [theta])
        seen.append(extra["weights"].clone())
    assert len(calls) == 2
    assert torch.equal(calls[0]["alpha0"], torch.ones(3, dtype=torch.float64))
    assert torch.equal(calls[1]["alpha0"], seen[0])
    assert all(c["max_steps"] == 7 for c in calls)
    K32 = Gt @ Gt.T
    assert torch.equal(calls[0]["K"], K32.double())


#: Task gradients on which the authors' CCP fails: norms 10^±2 (spread_G(1, spread=2)); the
#: CCP's steps stay ≥ 3 in norm for 7 steps (its stop rules need 1e-6 and 1e-3) and it ends at
#: residual max_i |α_i(Kα)_i − 1| ≈ 8 (measured), while the bargain exists (S6: full rank).
CCP_FAILING_SEED = 1
#: A written-out CCP (SOC constraints, Clarabel) and the code's (exponential cones, ECOS) agree
#: to ≤ 9e-5 relative per step on this set-up and to ≤ 3e-5 after 7 chained steps (measured):
#: two interior-point solvers that each stop at ~1e-8 duality gap on sub-problems whose α spans
#: four decades. 1e-3 leaves margin; a changed constant or linearisation moves α by O(1).
CCP_ORACLE_RTOL = 1e-3


def written_out_ccp(K: np.ndarray, start: np.ndarray, steps: int) -> np.ndarray:
    """The authors' CCP run for ``steps`` steps from ``start`` (tests.oracles.ccp_step), with
    their two stop rules asserted not to fire (the failing set-up): ‖K̃α − 1/α‖ ≥ 1e-3 and
    ‖α_new − α‖ ≥ 1e-6 at every step."""
    a = start.copy()
    Kt = K / np.linalg.norm(K)
    for _ in range(steps):
        new = ccp_step(K, a)
        assert np.linalg.norm(Kt @ a - 1 / (a + 1e-10)) > 1e-2
        assert np.linalg.norm(new - a) > 1e-2
        a = new
    return a


@pytest.mark.parametrize("policy", MTL_POLICIES)
def test_ccp_that_fails_warns_counts_and_applies_the_policy(policy: FailurePolicy) -> None:
    """On task gradients where the CCP truly fails (CCP_FAILING_SEED), two updates with
    optim_niter = 7: "use" gives the written-out CCP's α (7 steps from ones, then 7 more from
    there); "keep" keeps ones (the first α) both times; "ridge" gives the root of
    K + 1e-3·mean(diag K)·I (scipy, tests.oracles); "raise" raises NashConvergenceError naming
    the residual, with the failure counted. Every other policy warns once per update with the
    residual of the CCP's own α (recomputed here from the "use" oracle to 3 digits), and the
    counters read solves = failures = 2, infeasible = 0, policy_counts[policy] = 2."""
    G = spread_G(CCP_FAILING_SEED, spread=2.0)
    K = G @ G.T
    task = Linear(G)
    m = NashMTL(3, "cpu", optim_niter=7, solver="ccp", on_failure=policy, max_norm=0.0)
    if policy == "raise":
        with pytest.raises(NashConvergenceError, match=r"ccp solve did not converge: residual"):
            task.step(m)
        assert (m.solves, m.failures, m.infeasible) == (1, 1, 0)
        return
    a1 = written_out_ccp(K, np.ones(3), 7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e1 = task.step(m)
        e2 = task.step(m)
    fails = [w for w in caught if issubclass(w.category, NashMTLWarning)]
    assert len(fails) == 2
    for e, k in ((e1, 1), (e2, 2)):
        assert (e["solves"], e["failures"], e["infeasible"]) == (k, k, 0)
        assert e["policy"] == policy and e["policy_counts"][policy] == k
        assert sum(e["policy_counts"].values()) == k
    if policy == "use":
        expected = [a1, written_out_ccp(K, a1, 7)]
    elif policy == "keep":
        expected = [np.ones(3), np.ones(3)]
    else:
        ridge = positive_root(K + 1e-3 * K.diagonal().mean() * np.eye(3))
        expected = [ridge, ridge]
    rtol = CCP_ORACLE_RTOL if policy == "use" else 1e-9
    for e, ref in zip((e1, e2), expected, strict=True):
        np.testing.assert_allclose(e["weights"].numpy(), ref, rtol=rtol)
    # the warning and extra["residual"] carry the residual of the CCP's α, not of the policy's
    r1 = float(np.max(np.abs(a1 * (K @ a1) - 1)))
    assert r1 > 1.0
    assert e1["residual"] == pytest.approx(r1, rel=CCP_ORACLE_RTOL * 10)
    msg = str(fails[0].message)
    assert f"residual max_i |α_i(Kα)_i − 1| = {e1['residual']:.3e}" in msg
    assert f"on_failure='{policy}'" in msg and "1 failed update(s) of 1" in msg
    assert "2 failed update(s) of 2" in str(fails[1].message)


# ------------------------------------------------------------------------------------------
# Agreement with the CCP on real gradients of a small multi-task model
# ------------------------------------------------------------------------------------------


def small_model_grams(aux_scale: float, steps: int = 6) -> list[torch.Tensor]:
    """Train a three-task MLP (regression, classification, an auxiliary regression whose target
    is scaled by ``aux_scale``) with Newton-Nash-MTL and return the float64 Gram of the task
    gradients at every step."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=g)
    targets = (X[:, :2].sum(1, keepdim=True), (X[:, 2] > 0).long(), X[:, 3:4] * aux_scale)
    trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(16, 1), nn.Linear(16, 2), nn.Linear(16, 1)])
    opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.05)
    m = NashMTL(3, "cpu", max_norm=1.0)
    shared = list(trunk.parameters())
    grams = []
    for _ in range(steps):
        h = trunk(X)
        losses = torch.stack([
            nn.functional.mse_loss(heads[0](h), targets[0]),
            nn.functional.cross_entropy(heads[1](h), targets[1]),
            nn.functional.mse_loss(heads[2](h), targets[2]),
        ])
        grams.append(task_gram(list(losses), shared).detach())
        opt.zero_grad()
        m.backward(losses, shared)
        opt.step()
    return grams


def test_newton_equals_ccp_where_the_ccp_converges(capsys: pytest.CaptureFixture[str]) -> None:
    """On the Grams of a real three-task model (aux target at scale 1 and 30): wherever the CCP
    (warm-started as in training) converges by the project's rule, Newton's α equals the CCP's
    by the residual rule; where it does not, both residuals are printed, Newton's is ≤ 1e-10
    and the CCP's exceeds the oracle tolerance (so its flag is right). Both cases occur here
    (measured: CCP residual ~1e-8 at scale 1, ~1e-4 at scale 30)."""
    rows = []
    agreed = unconverged = 0
    for scale in (1.0, 30.0):
        prev = torch.ones(3, dtype=torch.float64)
        for k, K in enumerate(small_model_grams(scale)):
            newton = solve_newton(K)
            ccp = solve_ccp(K, alpha0=prev)
            prev = ccp.alpha
            rn, rc = float(newton.residual), float(ccp.residual)
            assert bool(newton.converged) and rn <= RESIDUAL_TOL
            diff = float(((newton.alpha - ccp.alpha).abs() / newton.alpha).max())
            rows.append(f"scale {scale:>4}: step {k}  newton residual {rn:.1e}  ccp residual "
                        f"{rc:.1e} ({ccp.status}, converged={bool(ccp.converged)})  "
                        f"max rel |Δα| {diff:.1e}")
            if bool(ccp.converged):
                agreed += 1
                assert diff <= rule_rtol(3, rn, rc), rows[-1]
            else:
                unconverged += 1
                assert rc > ORACLE_RESIDUAL_TOL, rows[-1]
    with capsys.disabled():
        print("\n" + "\n".join(rows))
    assert agreed >= 3 and unconverged >= 3  # both branches exercised


# ------------------------------------------------------------------------------------------
# Failures are never silent: raise / keep / ridge / use
# ------------------------------------------------------------------------------------------


def run_two(G_first: np.ndarray, G_second: np.ndarray, **kw: Any) -> tuple[NashMTL,
                                                                            list[dict[str, Any]]]:
    """One update on G_first (feasible), then one on G_second, same NashMTL."""
    m = NashMTL(G_first.shape[0], "cpu", max_norm=0.0, **kw)
    extras = [Linear(G_first).step(m), Linear(G_second).step(m)]
    return m, extras


def test_cancelling_tasks_raise_the_s6_certificate() -> None:
    """Default policy (Newton): g_1 + 2g_2 = 0 raises InfeasibleBargainError naming the tasks and
    S6, with a certificate v ≥ 0, Σv = 1 and ‖Σ_i v_i g_i‖ ≤ 1e-6·max‖g_i‖ checked on G."""
    G = cancelling_G()
    with pytest.raises(InfeasibleBargainError, match=r"tasks \[0, 1\] cancel.*S6") as info:
        run_two(spread_G(0), G)
    v = info.value.certificate.numpy()
    assert np.all(v >= 0) and v.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.norm(G.T @ v) <= 1e-6 * np.linalg.norm(G, axis=1).max()
    assert info.value.distance <= 1e-9


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5), extra_d=st.integers(0, 3))
def test_random_cancelling_task_sets_certify_or_ridge(seed: int, n: int, extra_d: int) -> None:
    """S6 on random infeasible task sets: the last task's gradient is −Σ_j c_j g_j with
    c_j ∈ [0.1, 2] on a random non-empty subset (so a non-negative combination cancels). The
    default policy raises InfeasibleBargainError whose certificate satisfies ‖Σ v_i g_i‖ ≤
    1e-6·max‖g_i‖ on G; "ridge" (λ = 1e-2) returns scipy's root of K + λ·mean(diag K)·I
    (residual rule) with a warning and counts the update as infeasible. (With λ = 1e-3 and norms
    over 1e-1…1e1, α̂ of the ridged K reaches ~50 and the oracle cannot certify its 1e-12.)"""
    rng = np.random.default_rng(seed)
    G = spread_G(seed, n, n + extra_d, spread=1.0)
    c = rng.uniform(0.1, 2.0, n - 1) * (rng.random(n - 1) < 0.7)
    if not c.any():
        c[rng.integers(n - 1)] = 1.0
    G[-1] = -(c @ G[:-1])
    with pytest.raises(InfeasibleBargainError) as info:
        Linear(G).step(NashMTL(n, "cpu", max_norm=0.0))
    v = info.value.certificate.numpy()
    assert np.all(v >= 0) and v.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.norm(G.T @ v) <= 1e-6 * np.linalg.norm(G, axis=1).max()
    m = NashMTL(n, "cpu", max_norm=0.0, on_failure="ridge", ridge=1e-2)
    with pytest.warns(NashMTLWarning, match="cancel"):
        extra = Linear(G).step(m)
    K = G @ G.T
    ref = positive_root(K + 1e-2 * np.diag(K).mean() * np.eye(n))
    assert rel_err(extra["weights"], ref) <= rule_rtol(n, 1e-10, 1e-12)
    assert (extra["failures"], extra["infeasible"]) == (1, 1)


def test_keep_policy_warns_counts_and_keeps_previous_alpha() -> None:
    """"keep": a NashMTLWarning naming the residual, the S6 cause and the policy; α stays the
    previous update's; failures/infeasible/policy counters in extra."""
    with pytest.warns(NashMTLWarning, match=r"cancel.*residual .*on_failure='keep'"):
        _, (e1, e2) = run_two(spread_G(0), cancelling_G(), on_failure="keep")
    assert torch.equal(e2["weights"], e1["weights"])
    assert (e2["failures"], e2["infeasible"], e2["policy"]) == (1, 1, "keep")
    assert e2["policy_counts"]["keep"] == 1 and "residual" in e2["message"]
    assert e2["residual"] > RESIDUAL_TOL


def test_ridge_policy_is_the_root_of_the_ridged_gram() -> None:
    """"ridge": α is the root of K + λ·mean(diag K)·I (scipy's root on that matrix, residual
    rule), warned and counted."""
    G = cancelling_G()
    with pytest.warns(NashMTLWarning, match="ridge"):
        _, (_, e2) = run_two(spread_G(0), G, on_failure="ridge", ridge=1e-2)
    K = G @ G.T
    ref = positive_root(K + 1e-2 * np.diag(K).mean() * np.eye(3))
    assert rel_err(e2["weights"], ref) <= rule_rtol(3, 1e-10, 1e-12)
    assert e2["policy"] == "ridge" and e2["infeasible"] == 1


def test_use_policy_keeps_newtons_finite_alpha() -> None:
    """"use": the solver's own (unconverged, finite, positive) α, warned and counted."""
    with pytest.warns(NashMTLWarning, match="used the newton α anyway"):
        _, (_, e2) = run_two(spread_G(0), cancelling_G(), on_failure="use")
    a = e2["weights"]
    assert bool(torch.isfinite(a).all() & (a > 0).all()) and e2["policy"] == "use"


def test_zero_gradient_task_is_degenerate() -> None:
    """A task whose loss does not depend on the shared parameters (g_2 = 0, S6 with
    certificate e_2): "raise" gives DegenerateExpertError naming task 2; "ridge" gives the
    merging layer's ridge α (zero task's diagonal raised to max K_jj; tests/oracles)."""
    G = spread_G(7)
    G[2] = 0.0
    with pytest.raises(DegenerateExpertError, match="task 2's loss has zero gradient") as info:
        run_two(spread_G(0), G)
    assert info.value.certificate.tolist() == [0.0, 0.0, 1.0]
    with pytest.warns(NashMTLWarning, match="zero gradient"):
        _, (_, e2) = run_two(spread_G(0), G, on_failure="ridge")
    ref = fallback_alpha(G @ G.T, "ridge", zero=2)
    assert rel_err(e2["weights"], ref) <= rule_rtol(3, 1e-10, 1e-12)


def test_unconverged_feasible_solve_raises_or_warns_with_the_residual() -> None:
    """Newton capped at one step on a feasible bargain (not orthogonal: 1 step is not enough):
    "raise" gives NashConvergenceError with the residual; "keep" warns with the same residual
    and counts a failure that is not infeasible."""
    G = spread_G(8, spread=1.0)
    task = Linear(G)
    with pytest.raises(NashConvergenceError, match=r"did not converge: residual .* after 1 "):
        NashMTL(3, "cpu", newton_max_iter=1).backward(task.losses(), [task.theta])
    m = NashMTL(3, "cpu", newton_max_iter=1, on_failure="keep", max_norm=0.0)
    with pytest.warns(NashMTLWarning, match=r"did not converge; residual"):
        extra = Linear(G).step(m)
    assert extra["residual"] > RESIDUAL_TOL
    assert (extra["failures"], extra["infeasible"]) == (1, 0)
    assert torch.equal(extra["weights"], torch.ones(3, dtype=torch.float64))


def test_nan_raises_naming_the_task_whatever_the_policy() -> None:
    """NaN is bad input, not a solver failure: BargainInputError naming the task under every
    policy (never a NaN weight) — a NaN loss by its value; a finite loss with a NaN gradient
    (losses given as a list, so the NaN stays in that task's gradient) by its gradient norm."""
    G = spread_G(9)
    G[1, 2] = np.nan  # at θ = 0 task 1's loss is NaN·0 = NaN
    for policy in MTL_POLICIES:
        with pytest.raises(BargainInputError, match="task 1's loss is nan"):
            run_two(spread_G(0), G, on_failure=policy)
    task = Linear(spread_G(9))
    losses = [g @ task.theta for g in task.Gt]
    losses[2] = losses[2] + torch.sqrt(task.theta[0] ** 2)  # value 0, gradient ∞·0 = NaN
    policies: tuple[FailurePolicy, ...] = ("raise", "keep")
    for policy in policies:
        with pytest.raises(BargainInputError, match=r"gradient of task 2's loss .* not finite"):
            NashMTL(3, "cpu", on_failure=policy).get_weighted_loss(losses, [task.theta])


@pytest.mark.parametrize(("kw", "match"), [
    ({"n_tasks": 1}, "n_tasks"), ({"update_weights_every": 0}, "update_weights_every"),
    ({"optim_niter": 0}, "optim_niter"), ({"solver": "cvx"}, "unknown solver"),
    ({"on_failure": "ignore"}, "unknown on_failure"), ({"ridge": 0.0}, "ridge"),
    ({"max_norm": float("nan")}, "max_norm"),
])
def test_bad_arguments_are_named(kw: dict[str, Any], match: str) -> None:
    """Each invalid constructor argument raises ValueError naming it."""
    args: dict[str, Any] = {"n_tasks": 3, "device": "cpu", **kw}
    with pytest.raises(ValueError, match=match):
        NashMTL(**args)


def test_bad_losses_and_parameters_are_named() -> None:
    """Wrong number of losses, a non-scalar loss, or no shared parameter that needs grad."""
    G = spread_G(10)
    task = Linear(G)
    m = NashMTL(3, "cpu")
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        m.get_weighted_loss(task.losses()[:2], [task.theta])
    with pytest.raises(ValueError, match="got 2 losses"):
        m.get_weighted_loss(list(task.losses())[:2], [task.theta])
    with pytest.raises(ValueError, match="requires grad"):
        m.get_weighted_loss(task.losses(), [torch.zeros(3)])
    with pytest.raises(ValueError, match="needs shared_parameters"):
        m.get_weighted_loss(task.losses(), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weights_stay_on_device() -> None:  # pragma: no cover - no GPU in CI
    """On CUDA the weights live on the device and agree with the CPU run."""
    G = spread_G(11)
    theta = torch.zeros(G.shape[1], dtype=torch.float64, device="cuda", requires_grad=True)
    m = NashMTL(3, "cuda", max_norm=0.0)
    _, extra = m.backward(torch.from_numpy(G).cuda() @ theta, [theta])
    assert extra["weights"].device.type == "cuda"
    ref = Linear(G).step(NashMTL(3, "cpu", max_norm=0.0))["weights"]
    np.testing.assert_allclose(extra["weights"].cpu().numpy(), ref.numpy(), rtol=1e-9)


# ------------------------------------------------------------------------------------------
# The example and its CLI
# ------------------------------------------------------------------------------------------


def test_example_cli_quick_writes_report(tmp_path: Any, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    """`namex mtl --quick` trains the three weightings on the built-in corpus and writes the
    markdown report (overhead table, losses, Newton-vs-CCP agreement) and the plot; the CCP
    re-solved on its own Grams returns its training α bit for bit (the authors' iteration is
    deterministic and warm-started as in training)."""
    from namex_ref.cli import main

    assert main(["mtl", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    text = (tmp_path / "mtl.md").read_text(encoding="utf-8")
    for needle in ("| equal |", "| nash-mtl ccp |", "| nash-mtl newton |", "× equal (paired)",
                   "next-token (val)", "Newton residual: max", "bit for bit: 4 of 4"):
        assert needle in text, needle
    assert (tmp_path / "mtl.png").stat().st_size > 1000
    assert "wrote" in out


def test_example_cli_bad_argument_is_a_one_line_error(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """A bad option value exits with status 2 and a one-line message naming it."""
    from namex_ref.cli import main

    assert main(["mtl", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "steps must be >= 1" in err and err.count("\n") == 1


def test_readme_three_line_swap_runs() -> None:
    """The user guide's three-line swap (docs/guide.md) is valid code: executed on a linear
    three-task problem it
    trains one step and returns the authors' (loss, extra) with float64 weights."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text(encoding="utf-8")
    section = readme.split("## Multi-task learning: Nash-MTL", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    lines = [ln for ln in code.group(1).splitlines() if ln.strip()]
    assert lines[0].startswith("from namex_ref.mtl import NashMTL")
    task = Linear(spread_G(12))
    scope: dict[str, Any] = {"device": "cpu", "losses": task.losses(), "shared": [task.theta]}
    exec(code.group(1), scope)  # the user guide's own snippet
    loss, extra = scope["loss"], scope["extra"]
    assert loss.ndim == 0 and extra["weights"].dtype == torch.float64
    assert task.theta.grad is not None and float(task.theta.grad.norm()) <= 1.0 + 1e-12
