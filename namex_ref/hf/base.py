"""The initial base expert E_m of a converted layer (docs/math.md §6, "Base expert of a converted
model"): the rules :data:`BASE_RULES` and :func:`initial_base` (S1–S2, S6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BASE_RULES", "initial_base"]

BASE_RULES = ("perturbed-mean", "mean", "zero")
"""Initial base expert rules (docs/math.md §6, "Base expert of a converted model")."""


def initial_base(
    experts: list[Tensor], rule: str = "perturbed-mean", *, seed: int = 0
) -> list[Tensor]:
    """The initial base expert E_m of a converted layer, per matrix (*P_m), no grad.

    experts: per-matrix (N, *P_m). With c_i = E_i − Ē (Ē the mean expert, all matrices
    flattened together) and s² = (1/N) Σ_i ‖c_i‖²:

    - "perturbed-mean" (default): E_m = Ē + u, u a seeded Gaussian direction with its
      projection on span{c_i} removed and ‖u‖ = s. Then τ_i = c_i − u and, u being orthogonal
      to every c_i, K = CCᵀ + s²·11ᵀ: positive definite when the c_i span N − 1 dimensions
      (generic), with the uniform direction at the experts' own scale (N s² = tr CCᵀ).
    - "mean": E_m = Ē. Then Σ_i τ_i = 0, K1 = 0, and the uniform vector is an S6 certificate:
      no bargain exists (kept to show why it is not the default).
    - "zero": E_m = 0, τ_i = E_i; K PD when the experts are independent, but ill conditioned
      for experts with a large common part (upcycled models).

    Raises:
        ValueError: an unknown rule; or "perturbed-mean" for experts of P ≤ N − 1 parameters
            (all matrices together), where the c_i can span every direction, so no direction
            orthogonal to them exists (the projected u would be rounding noise, or exactly 0).
    """
    if rule not in BASE_RULES:
        raise ValueError(f"unknown base rule {rule!r}; choose one of {', '.join(BASE_RULES)}")
    with torch.no_grad():
        if rule == "zero":
            return [torch.zeros_like(E[0]) for E in experts]
        means = [E.mean(0) for E in experts]
        if rule == "mean":
            return means
        n, p = experts[0].shape[0], sum(E[0].numel() for E in experts)
        if p < n:
            raise ValueError(
                f"base_rule='perturbed-mean': an expert has {p} parameters, at most N - 1 = "
                f"{n - 1}, so the {n} centred experts can span every direction and no direction "
                "orthogonal to them is left; use base_rule='zero' or 'mean'"
            )
        gen = torch.Generator(device="cpu").manual_seed(seed)
        # float32 work copies (float64 for float64 experts): one layer's centred experts at a
        # time, the only transient expert-sized memory of a conversion
        acc = torch.float64 if experts[0].dtype == torch.float64 else torch.float32
        us = [torch.randn(m.shape, generator=gen, dtype=acc).to(m.device) for m in means]
        cs = [(E.to(acc) - m.to(acc)).reshape(E.shape[0], -1)
              for E, m in zip(experts, means, strict=True)]
        gram = sum(c @ c.T for c in cs)  # CCᵀ (N, N)
        proj = sum(c @ u.reshape(-1) for c, u in zip(cs, us, strict=True))  # C u (N,)
        assert isinstance(gram, Tensor) and isinstance(proj, Tensor)
        # u ← u − Cᵀ (CCᵀ)⁺ C u
        w = (torch.linalg.pinv(gram.double(), hermitian=True) @ proj.double()).to(acc)
        us = [(u.reshape(-1) - c.T @ w).reshape(u.shape) for u, c in zip(us, cs, strict=True)]
        s2 = float(gram.diagonal().mean())
        unorm = math.sqrt(sum(float((u**2).sum()) for u in us))
        scale = math.sqrt(s2) / max(unorm, 1e-300)
        return [(m.to(acc) + scale * u).to(m.dtype) for m, u in zip(means, us, strict=True)]
