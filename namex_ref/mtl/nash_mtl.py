"""Nash-MTL (Navon et al., ICML 2022) on the project's solvers: a drop-in task weighting.

The players are the tasks. With g_i = ∇_θ ℓ_i the gradient of task i's loss with respect to the
shared parameters θ and K = GGᵀ the Gram matrix of the task gradients (S2), Nash-MTL moves θ
along −Σ_i α_i g_i with α > 0 the bargain Kα = 1/α (S4): the weighted loss Σ_i α_i ℓ_i has
exactly that gradient. The bargain exists unless a non-negative combination of the task
gradients cancels (S6), and by S9 α_i scales as 1/‖g_i‖, so tasks whose losses live on
different scales get comparable shares of the update without any tuning.

:class:`NashMTL` keeps the interface of the authors' ``NashMTL`` weighting (constructor
arguments ``n_tasks, device, max_norm, update_weights_every, optim_niter``; methods
``get_weighted_loss`` and ``backward`` returning ``(loss, extra)``; clipping of the shared
gradients to ``max_norm``), and changes how α is found and how failures surface:

- ``solver="newton"`` (default): the batched damped Newton solver
  (:func:`namex_ref.nash.solvers.solve_newton`, S4–S5) on the float64 Gram, warm-started from
  the previous α, converged by the project's one rule
  (:func:`namex_ref.nash.problem.converged_mask`).
- ``solver="ccp"``: the authors' sequential convex iteration, through the project's faithful
  re-implementation :func:`namex_ref.nash.solvers.solve_ccp` (same sub-problem, constants,
  stopping rules and warm start from the previous α; the Gram in the gradients' dtype as theirs).
- A solve that does not converge, or a task set with no bargain (S6), is never silent: a
  :class:`NashMTLWarning` with the residual, counters in ``extra``, and the explicit policy
  ``on_failure`` ("raise", "keep", "ridge" or "use").
- Between weight updates (``update_weights_every > 1``) neither the task gradients nor the
  solve are computed, and nothing is read back to the host: the weighted loss is one fused
  multiply-add with α cached on the losses' device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from namex_ref.checks import require_int, require_real
from namex_ref.merging.plan import ZERO_EXPERT_RTOL
from namex_ref.nash.newton import NEWTON_MAX_ITER, RESIDUAL_TOL, solve_newton
from namex_ref.nash.oracles import solve_ccp
from namex_ref.nash.problem import check_gram, raise_if_infeasible, scaled_residual
from namex_ref.nash.result import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
    NashSolution,
)

__all__ = [
    "MTL_POLICIES",
    "MTL_SOLVERS",
    "FailurePolicy",
    "MTLSolver",
    "NashMTL",
    "NashMTLWarning",
    "task_gram",
]

#: What a failed solve does: "raise" the solver's error, "keep" the previous α, "ridge" (solve
#: K + λ·mean(diag K)·I) or "use" the solver's α anyway (the authors' behaviour).
FailurePolicy = Literal["raise", "keep", "ridge", "use"]
#: How α is solved: "newton" (the batched Newton solver, float64) or "ccp" (the authors' CCP).
MTLSolver = Literal["newton", "ccp"]
#: What :class:`NashMTL` does when a solve fails (see its docstring).
MTL_POLICIES: tuple[FailurePolicy, ...] = ("raise", "keep", "ridge", "use")
#: The solvers :class:`NashMTL` can use for α.
MTL_SOLVERS: tuple[MTLSolver, ...] = ("newton", "ccp")


class NashMTLWarning(RuntimeWarning):
    """A Nash-MTL weight update failed (no convergence, or no bargain, S6) and the failure
    policy replaced or kept α; the message names the residual, the cause and the policy."""


def _as_param_list(shared_parameters: Tensor | Iterable[Tensor] | None) -> list[Tensor]:
    """The shared parameters as a list (a single tensor, or any iterable such as a generator)."""
    if shared_parameters is None:
        raise ValueError(
            "NashMTL needs shared_parameters (the parameters every task's loss depends on, e.g. "
            "list(model.shared_parameters())) to form the task gradients."
        )
    params = [shared_parameters] if isinstance(shared_parameters, Tensor) else list(
        shared_parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise ValueError(f"shared_parameters[{i}] is {type(p).__name__}, not a tensor.")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(
            "shared_parameters has no tensor that requires grad; pass the shared parameters of "
            "the model (the ones every task's loss depends on)."
        )
    return params


def _as_loss_list(losses: Tensor | Sequence[Tensor], n_tasks: int) -> list[Tensor]:
    """The task losses as n_tasks scalar tensors (a (n_tasks,) tensor or a sequence)."""
    if isinstance(losses, Tensor):
        if losses.ndim != 1 or losses.shape[0] != n_tasks:
            raise ValueError(
                f"losses has shape {tuple(losses.shape)}; expected ({n_tasks},), one loss per "
                "task (or a sequence of scalar losses)."
            )
        return list(losses.unbind(0))
    out = list(losses)
    if len(out) != n_tasks:
        raise ValueError(f"got {len(out)} losses for n_tasks = {n_tasks}; pass one per task.")
    for i, loss in enumerate(out):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar tensor; got {loss!r}.")
    return [loss.reshape(()) for loss in out]


def task_gram(
    losses: Sequence[Tensor], params: Sequence[Tensor], dtype: torch.dtype = torch.float64
) -> Tensor:
    """K_ij = ⟨g_i, g_j⟩ of the task gradients g_i = ∇ℓ_i over ``params`` (S2). → (n, n).

    One ``torch.autograd.grad`` per task (graph retained for the weighted backward); K is
    accumulated parameter by parameter, K = Σ_p G_pG_pᵀ with G_p (n, numel p) cast to ``dtype``
    (float64 for the Newton route, the gradients' own dtype to mirror the authors' code for
    the CCP route). A parameter a task does not use contributes a zero gradient; a loss with
    no graph at all has g = 0. On the parameters' device; no host synchronisation.
    """
    n = len(losses)
    grads: list[Sequence[Tensor | None]] = []
    for loss in losses:
        if loss.requires_grad:
            grads.append(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        else:
            grads.append([None] * len(params))
    K = torch.zeros(n, n, dtype=dtype, device=params[0].device)
    for j, p in enumerate(params):
        rows = [g[j] for g in grads]
        if all(r is None for r in rows):
            continue
        G = torch.stack([
            (r if r is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for r in rows
        ])
        K = K + (G @ G.T).to(K.device)
    return K


_HOST = torch.device("cpu")


def _gram_dtype(solver: str, like: Tensor) -> torch.dtype:
    """The dtype the task Gram accumulates in: the gradients' own for the CCP route (as the
    authors' code); float64 for the Newton route on the host, float32 on a GPU, where a
    float64 copy of every shared gradient costs memory traffic for nothing the bargain needs
    (K's entries to ~1e-7 relative, the merging layer's rule, :func:`~namex_ref.nash.gram.
    gram_matrix`; docs/gpu.md)."""
    if solver != "newton":
        return like.dtype
    return torch.float64 if like.device == _HOST else torch.float32


class NashMTL:
    """Nash-MTL task weighting with the authors' interface (Navon et al., ICML 2022).

    Replace ``from methods.weight_methods import NashMTL`` by
    ``from namex_ref.mtl import NashMTL``; construction and ``backward`` stay the same.

    Args:
        n_tasks: number of tasks (≥ 2; a bargain needs two players).
        device: where α lives (the weights are moved once to the losses' device if it differs).
        max_norm: after ``backward``, the shared parameters' gradient is clipped to this norm
            with ``torch.nn.utils.clip_grad_norm_`` (as the authors' code); ≤ 0 disables it.
        update_weights_every: α is re-solved on steps 0, k, 2k, …; in between the previous α is
            used and neither the task gradients nor a solve nor a host read-back happen.
        optim_niter: the CCP's cap on convex solves per update (the authors' meaning; 20).
        solver: "newton" (default; the batched Newton solver in float64, warm-started from the
            previous α, at most ``newton_max_iter`` steps to residual ``tol``) or "ccp" (the
            authors' iteration through :func:`namex_ref.nash.solvers.solve_ccp`).
        on_failure: what an unconverged solve, or a task set with no bargain (S6), does —
            "raise": :class:`InfeasibleBargainError` with the S6 certificate (or
            :class:`DegenerateExpertError` for a task with zero gradient), otherwise
            :class:`NashConvergenceError` with the residual; "keep": keep the previous α;
            "ridge": α of K' + ridge·mean(diag K)·I, K' = K with zero-gradient tasks' diagonal
            raised to max_j K_jj (positive definite, always solvable; the merging layer's
            convention, docs/math.md §6); "use": use the solver's own α anyway (what the
            authors' code does). Every policy but "raise" warns (:class:`NashMTLWarning`, with
            the residual and the cause) and counts. Default: "raise" for Newton, "use" for the
            CCP (so that ``solver="ccp"`` reproduces the authors' weights, now with a warning).
        ridge: λ of the "ridge" policy.
        newton_max_iter: Newton's step cap per update (Newton converges on every feasible
            problem; ``namex mtl`` measured 5 steps per update (median, max 7) from the warm start).
        tol: Newton's residual tolerance (the project's ``RESIDUAL_TOL``, 1e-10).

    Attributes:
        step: number of calls so far (the authors' counter).
        last_gram: the Gram matrix of the last update (float64), or None before it.
        solves, failures, infeasible: counts of weight updates, of failed updates (not
            converged or no bargain) and of those certified infeasible by S6.
        policy_counts: how often each policy acted.
    """

    def __init__(
        self,
        n_tasks: int,
        device: torch.device | str = "cpu",
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        *,
        solver: MTLSolver = "newton",
        on_failure: FailurePolicy | None = None,
        ridge: float = 1e-3,
        newton_max_iter: int = NEWTON_MAX_ITER,
        tol: float = RESIDUAL_TOL,
    ) -> None:
        self.n_tasks = require_int("n_tasks", n_tasks, low=2,
                                   note="a bargain needs at least two tasks")
        self.device = torch.device(device)
        self.max_norm = require_real("max_norm", max_norm)
        self.update_weights_every = require_int("update_weights_every", update_weights_every,
                                                low=1)
        self.optim_niter = require_int("optim_niter", optim_niter, low=1)
        if solver not in MTL_SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {MTL_SOLVERS}")
        self.solver: MTLSolver = solver
        if on_failure is None:
            on_failure = "use" if solver == "ccp" else "raise"
        if on_failure not in MTL_POLICIES:
            raise ValueError(f"unknown on_failure {on_failure!r}; choose one of {MTL_POLICIES}")
        self.on_failure: FailurePolicy = on_failure
        self.ridge = require_real("ridge", ridge, low=0, low_open=True)
        self.newton_max_iter = require_int("newton_max_iter", newton_max_iter, low=1)
        self.tol = require_real("tol", tol, low=0, low_open=True)
        self.step = 0
        self.solves = 0
        self.failures = 0
        self.infeasible = 0
        self.policy_counts: dict[str, int] = {p: 0 for p in MTL_POLICIES if p != "raise"}
        self.last_residual = math.nan
        self.last_iterations = 0
        self.last_status = "not solved"
        self.last_gram: Tensor | None = None
        self._alpha = torch.ones(self.n_tasks, dtype=torch.float64, device=self.device)
        self._alpha_host = torch.ones(self.n_tasks, dtype=torch.float64)
        self._cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def alpha(self) -> Tensor:
        """The current weights α, (n_tasks,) float64 on ``device`` (ones before the first
        update, the authors' start)."""
        return self._alpha

    def parameters(self) -> list[Tensor]:
        """No learnable parameters (the authors' weighting interface)."""
        return []

    # ---------------------------------------------------------------------------------------

    def _weights_for(self, like: Tensor) -> Tensor:
        """α on ``like``'s device and dtype, cached until the next update (no host sync)."""
        key = (like.device, like.dtype)
        w = self._cast.get(key)
        if w is None:
            w = self._alpha.to(device=like.device, dtype=like.dtype)
            self._cast[key] = w
        return w

    def _solve(self, K: Tensor) -> NashSolution:
        K64 = K.to(torch.float64)
        if self.solver == "newton":
            alpha0 = self._alpha_host if self.solves > 0 else None
            return solve_newton(K64, tol=self.tol, max_iter=self.newton_max_iter,
                                alpha0=alpha0)
        # the authors' warm start: their previous α (ones at first), on CPU
        return solve_ccp(K64, max_steps=self.optim_niter, alpha0=self._alpha_host)

    def _check_finite(self, K: Tensor, losses: Sequence[Tensor], dtype: torch.dtype) -> None:
        """A task gradient with NaN/Inf (or a squared norm that overflows) is a bug upstream of
        the weighting: raise naming the task, never pass NaN on (one host sync)."""
        diag = K.diagonal()
        bad = ~torch.isfinite(diag)
        if bool(bad.any()):
            values = torch.stack([loss.detach().reshape(()) for loss in losses])
            bad_loss = ~torch.isfinite(values)
            if bool(bad_loss.any()):
                i = int(bad_loss.nonzero()[0, 0])
                raise BargainInputError(
                    f"NashMTL step {self.step}: task {i}'s loss is {float(values[i])}, so the task "
                    "gradients are not finite; check that task's loss (inputs, targets, log of 0) "
                    "or lower the learning rate."
                )
            i = int(bad.nonzero()[0, 0])
            raise BargainInputError(
                f"NashMTL step {self.step}: the gradient of task {i}'s loss with respect to the "
                f"shared parameters is not finite (‖g_{i}‖² = {float(diag[i])} in {dtype}) "
                "although every loss is finite (with losses stacked in one tensor, a NaN in one "
                "task's backward reaches every task through 0·NaN); check the model for "
                "overflow or lower the learning rate."
            )
        if not bool(torch.isfinite(K).all()):
            raise BargainInputError(
                f"NashMTL step {self.step}: the Gram matrix of the task gradients overflowed in "
                f"{dtype}; rescale the losses (α scales inversely, S9)."
            )

    def _diagnose(self, K64: Tensor) -> InfeasibleBargainError | None:
        """S6 for an unconverged update: the certificate error when no bargain exists, else
        None. Invalid Grams (non-PSD beyond rounding) raise BargainInputError."""
        diag = K64.diagonal()
        zero = diag <= 0
        if bool(zero.any()):
            i = int(zero.nonzero()[0, 0])
            cert = torch.zeros(self.n_tasks, dtype=torch.float64)
            cert[i] = 1.0
            return DegenerateExpertError(
                f"NashMTL step {self.step}: task {i}'s loss has zero gradient with respect to "
                "the shared parameters, so no update changes it and no bargain exists (S6, "
                "certificate e_i). Check that the task's head is connected to the shared "
                "parameters, or use on_failure='ridge' or 'keep'.",
                certificate=cert,
            )
        try:
            check_gram(K64)
            raise_if_infeasible(K64.cpu())
        except InfeasibleBargainError as err:
            v = err.certificate
            support = [i for i, x in enumerate(v.tolist()) if x > 1e-12]
            return InfeasibleBargainError(
                f"NashMTL step {self.step}: no bargain exists — the gradients of tasks "
                f"{support} cancel: a non-negative combination of the normalised task "
                f"gradients is zero (‖Σ v̂_i ĝ_i‖² = {err.distance:.2e}), so no update decreases "
                "every loss (S6). The certificate v is attached as .certificate; use "
                "on_failure='ridge' or 'keep' to continue.",
                certificate=v,
                distance=err.distance,
            )
        except BargainInputError as err:
            raise BargainInputError(
                f"NashMTL step {self.step}: the Gram matrix of the task gradients is not valid "
                f"('expert i' below is task i): {err}"
            ) from err
        return None

    def _ridge_alpha(self, K64: Tensor) -> Tensor:
        """α of K' + λ·mean(diag K)·I (docs/math.md §6, the merging layer's ridge policy);
        positive definite, so Newton converges; raises if even that fails."""
        diag = K64.diagonal()
        scale = diag.max().clamp_min(torch.finfo(torch.float64).tiny)
        zero = diag <= ZERO_EXPERT_RTOL * scale
        lam = self.ridge * diag.mean().clamp_min(torch.finfo(torch.float64).tiny)
        eye = torch.eye(self.n_tasks, dtype=torch.float64, device=K64.device)
        Kr = K64 + torch.diag(zero.to(torch.float64) * scale) + lam * eye
        sol = solve_newton(Kr, tol=self.tol, max_iter=self.newton_max_iter)
        if not bool(sol.converged):  # pragma: no cover - Kr is positive definite
            raise NashConvergenceError(
                f"NashMTL step {self.step}: the ridge fallback did not converge either "
                f"(residual {float(sol.residual):.3e})."
            )
        return sol.alpha

    def _update(self, losses: list[Tensor], params: list[Tensor]) -> tuple[str | None, str]:
        """Solve for α on this step's task gradients; returns (policy applied, message)."""
        dtype = _gram_dtype(self.solver, params[0])
        # One device-to-host copy of the (n, n) Gram per update; every check, the solve and the
        # fallbacks then run on the host (no per-iteration sync of an adaptive Newton on CUDA).
        K64 = task_gram(losses, params, dtype).to(device=_HOST, dtype=torch.float64)
        self._check_finite(K64, losses, dtype)
        self.last_gram = K64
        sol = self._solve(K64)
        self.solves += 1
        residual = float(sol.residual)
        self.last_residual, self.last_iterations, self.last_status = (
            residual, sol.iterations, sol.status)
        if bool(sol.converged):
            self._set_alpha(sol.alpha)
            return None, ""
        self.failures += 1
        cause = self._diagnose(K64)
        if cause is not None:
            self.infeasible += 1
        if self.on_failure == "raise":
            if cause is not None:
                raise cause
            raise NashConvergenceError(
                f"NashMTL step {self.step}: the {self.solver} solve did not converge: residual "
                f"max_i |α_i(Kα)_i − 1| = {residual:.3e} after {sol.iterations} iterations "
                f"({sol.status}; tolerance {self._tol_text()}). Use on_failure='keep', 'ridge' "
                "or 'use' to continue with a fallback α (counted in extra)."
            )
        what = str(cause).split(" The certificate")[0] if cause is not None else (
            f"NashMTL step {self.step}: the {self.solver} solve did not converge")
        if self.on_failure == "keep":
            alpha, action = self._alpha, "kept the previous α"
        elif self.on_failure == "ridge":
            alpha = self._ridge_alpha(K64)
            action = (f"used the ridge α of K + {self.ridge:g}·mean(diag K)·I (its residual on K "
                      f"is {float(scaled_residual(K64, alpha)):.3e})")
        else:
            alpha, action = sol.alpha, f"used the {self.solver} α anyway"
        self.policy_counts[self.on_failure] += 1
        msg = (f"{what}; residual max_i |α_i(Kα)_i − 1| = {residual:.3e} after "
               f"{sol.iterations} iterations ({sol.status}; tolerance {self._tol_text()}). "
               f"Policy on_failure='{self.on_failure}' {action}; {self.failures} failed "
               f"update(s) of {self.solves}.")
        warnings.warn(msg, NashMTLWarning, stacklevel=4)
        self._set_alpha(alpha)
        return self.on_failure, msg

    def _tol_text(self) -> str:
        if self.solver == "newton":
            return f"{self.tol:g}"
        return "the authors' stopping rule, and residual ≤ 1e-5 by the project's rule"

    def _set_alpha(self, alpha: Tensor) -> None:
        self._alpha_host = alpha.detach().to(device=_HOST, dtype=torch.float64)
        self._alpha = self._alpha_host.to(device=self.device)  # one copy per update
        self._cast = {}

    # ---------------------------------------------------------------------------------------

    def get_weighted_loss(
        self,
        losses: Tensor | Sequence[Tensor],
        shared_parameters: Tensor | Iterable[Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Σ_i α_i ℓ_i and ``extra`` (the authors' signature; other keyword arguments, such as
        ``task_specific_parameters`` or ``representation``, are accepted and ignored).

        On an update step (``step % update_weights_every == 0``) the task gradients over
        ``shared_parameters`` are formed (graph retained), α is solved (S4) and checked; on
        other steps the previous α is used with no gradients, solve or host synchronisation.

        ``extra``: "weights" α (n_tasks,) float64 tensor on ``device`` (always a tensor);
        "updated" (bool, this step solved); "residual" (float, max_i |α_i(Kα)_i − 1| of the
        last solve, as the solver returned it); "iterations", "status" of the last solve;
        counters "solves", "failures", "infeasible", "policy_counts"; "policy" (the policy
        that acted on this step, or None) and "message" (its warning text, or ""); "gram": the
        Gram matrix K of the task gradients solved on this step (float64), or None.
        """
        del kwargs
        loss_list = _as_loss_list(losses, self.n_tasks)
        updated = self.step % self.update_weights_every == 0
        policy: str | None = None
        message = ""
        if updated:
            params = _as_param_list(shared_parameters)
            policy, message = self._update(loss_list, params)
        self.step += 1
        stacked = losses if isinstance(losses, Tensor) else torch.stack(loss_list)
        loss = (stacked * self._weights_for(stacked)).sum()
        extra: dict[str, Any] = {
            "weights": self._alpha,
            "updated": updated,
            "residual": self.last_residual,
            "iterations": self.last_iterations,
            "status": self.last_status,
            "solves": self.solves,
            "failures": self.failures,
            "infeasible": self.infeasible,
            "policy_counts": dict(self.policy_counts),
            "policy": policy,
            "message": message,
            "gram": self.last_gram if updated else None,
        }
        return loss, extra

    def backward(
        self,
        losses: Tensor | Sequence[Tensor],
        shared_parameters: Tensor | Iterable[Tensor] | None = None,
        task_specific_parameters: Any = None,
        last_shared_parameters: Any = None,
        representation: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Any]]:
        """``get_weighted_loss``, ``loss.backward()``, then clip the shared parameters'
        gradient to ``max_norm`` (when > 0), as the authors' ``backward``. Returns
        ``(loss, extra)``."""
        del task_specific_parameters, last_shared_parameters, representation
        params = None if shared_parameters is None else _as_param_list(shared_parameters)
        loss, extra = self.get_weighted_loss(losses, params, **kwargs)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.max_norm > 0:
            if params is None:
                raise ValueError("max_norm > 0 clips shared_parameters; pass them to backward.")
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        return loss, extra

    def __call__(
        self,
        losses: Tensor | Sequence[Tensor],
        shared_parameters: Tensor | Iterable[Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Same as :meth:`backward` (the authors' ``WeightMethod.__call__``)."""
        return self.backward(losses, shared_parameters, **kwargs)
