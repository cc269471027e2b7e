"""Modules that hold the parameters of the merging layers and call :mod:`functional`.

One feed-forward MoE layer, :class:`MoEFeedForward`, serves every method of docs/math.md §3; the
method is configuration (:class:`~namex_ref.merging.config.MergeConfig`). An expert is a two-matrix
GELU MLP without biases: f_i(x) = W2_i gelu(W1_i x), W1_i: (F, C), W2_i: (C, F).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.functional import LayerTerms, kronecker_apply, merged_linear
from namex_ref.merging.routing import (
    load_balancing_loss,
    segment_scores,
    sequence_scores,
    top_k_routing,
)

__all__ = ["KroneckerCurvature", "LayerOutput", "MoEFeedForward", "nearest_factors"]

INIT_STD = 0.02  # GPT-2 initialisation of every weight matrix


def nearest_factors(n: int) -> tuple[int, int]:
    """n = a·b with a the largest divisor of n not above √n (CAMEx's factorisation)."""
    a = max(int(n**0.5), 1)
    while n % a:
        a -= 1
    return a, n // a


class _Factor(nn.Module):
    """N square k×k matrices, identity at initialisation: a full matrix (rank None) or I + UVᵀ."""

    def __init__(self, n: int, k: int, rank: int | None) -> None:
        super().__init__()
        self.k = k
        self.rank = rank
        if rank is None:
            self.full = nn.Parameter(torch.eye(k).repeat(n, 1, 1))
        else:
            r = min(rank, k)
            self.u = nn.Parameter(torch.randn(n, k, r) * (1.0 / k**0.5))
            self.v = nn.Parameter(torch.zeros(n, k, r))

    def forward(self) -> Tensor:
        """(N, k, k)."""
        if self.rank is None:
            return self.full
        eye = torch.eye(self.k, dtype=self.u.dtype, device=self.u.device)
        return eye + self.u @ self.v.transpose(-1, -2)


class KroneckerCurvature(nn.Module):
    """M_i(τ) = (A_i⊗B_i) τ (C_i⊗D_i)ᵀ for one weight matrix of shape (out, in) (S14).

    ``recompute`` (set by :class:`MoEFeedForward` from ``merge_memory``) selects
    :func:`kronecker_apply`'s recomputing backward (True) or the eager einsums (False).
    """

    recompute: bool = True

    def __init__(self, n: int, out_features: int, in_features: int, rank: int | None) -> None:
        super().__init__()
        o1, o2 = nearest_factors(out_features)
        i1, i2 = nearest_factors(in_features)
        self.A, self.B = _Factor(n, o1, rank), _Factor(n, o2, rank)
        self.C, self.D = _Factor(n, i1, rank), _Factor(n, i2, rank)

    def forward(self, tau: Tensor) -> Tensor:
        """tau: (N, out, in) → (N, out, in)."""
        return kronecker_apply(tau, self.A(), self.B(), self.C(), self.D(),
                               recompute=self.recompute)


class LayerOutput(NamedTuple):
    """y: (B, T, C). aux_loss: () load-balancing loss (0 for merging methods).
    scores: (B, S, N) router scores used for the merge (S = segments), or (B, T, N) SMoE probs."""

    y: Tensor
    aux_loss: Tensor
    scores: Tensor


class MoEFeedForward(nn.Module):
    """One MoE feed-forward layer for every method of docs/math.md §3.

    Parameters: experts ``w1`` (N, F, C) and ``w2`` (N, C, F), a bias-free router C → N,
    a base expert (``base1`` (F, C), ``base2`` (C, F)) when ``has_base``, and Kronecker curvature
    operators for both matrices when the method uses them. Experts and base are initialised
    independently (N(0, 0.02²)), so τ_i ≠ 0 and the bargain is well posed at initialisation.
    """

    def __init__(self, d_model: int, d_ff: int, config: MergeConfig, *, has_base: bool) -> None:
        super().__init__()
        n = config.n_experts
        self.config = config
        self.w1 = nn.Parameter(torch.randn(n, d_ff, d_model) * INIT_STD)
        self.w2 = nn.Parameter(torch.randn(n, d_model, d_ff) * INIT_STD)
        self.router = nn.Linear(d_model, n, bias=False)
        nn.init.normal_(self.router.weight, std=INIT_STD)
        self.base1: nn.Parameter | None = None
        self.base2: nn.Parameter | None = None
        if has_base:
            self.base1 = nn.Parameter(torch.randn(d_ff, d_model) * INIT_STD)
            self.base2 = nn.Parameter(torch.randn(d_model, d_ff) * INIT_STD)
        self.curvature: nn.ModuleList | None = None
        if config.spec.curvature:
            rank = config.curvature_rank
            self.curvature = nn.ModuleList(
                [
                    KroneckerCurvature(n, d_ff, d_model, rank),
                    KroneckerCurvature(n, d_model, d_ff, rank),
                ]
            )
            for mod in self.curvature:
                setattr(mod, "recompute", config.merge_memory != "eager")  # noqa: B010

    def experts(self) -> list[Tensor]:
        """Per-matrix expert stacks [(N, F, C), (N, C, F)]."""
        return [self.w1, self.w2]

    def base(self) -> list[Tensor] | None:
        """The learned base expert [(F, C), (C, F)] or None."""
        if self.base1 is None or self.base2 is None:
            return None
        return [self.base1, self.base2]

    def curve(self, taus: list[Tensor]) -> list[Tensor]:
        """Apply M_i to each matrix's domain vectors (identity when the method has none)."""
        if self.curvature is None:
            return taus
        return [m(t) for m, t in zip(self.curvature, taus, strict=True)]

    def forward(self, x: Tensor, terms: LayerTerms | None) -> LayerOutput:
        """x: (B, T, C) → :class:`LayerOutput`. ``terms`` come from ``functional.propagate``
        (required for merging methods, ignored by "smoe")."""
        if self.config.spec.kind == "topk":
            return self._top_k(x)
        if terms is None:
            raise ValueError(f"method {self.config.method!r} merges experts: pass its LayerTerms")
        return self._merged(x, terms)

    def _top_k(self, x: Tensor) -> LayerOutput:
        """S12: F(x) = Σ_{i∈topk} s_i f_i(x), token-level, with the Switch balance loss."""
        B, T, C = x.shape
        n, k = self.config.n_experts, self.config.top_k
        flat = x.reshape(B * T, C)
        route = top_k_routing(self.router(flat), k)  # gates/experts (BT, k), probs (BT, N)
        out = torch.zeros_like(flat)
        for i in range(n):
            tok, slot = (route.experts == i).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            h = F.gelu(flat[tok] @ self.w1[i].T) @ self.w2[i].T  # (n_i, C)
            out.index_add_(0, tok, (h * route.gates[tok, slot, None]).to(out.dtype))  # autocast
        aux = self.config.balance_coef * load_balancing_loss(route.probs, route.experts, n)
        return LayerOutput(out.reshape(B, T, C), aux, route.probs.reshape(B, T, n))

    def _merged(self, x: Tensor, terms: LayerTerms) -> LayerOutput:
        """S13–S18: merge per segment (or sequence), then one expert forward per segment."""
        cfg = self.config
        B, T, C = x.shape
        if cfg.routing == "segment":
            S_len = cfg.segment_len
            scores = segment_scores(x, self.router, S_len, cfg.n_experts)  # (B, S, N)
        else:
            S_len = T
            scores = sequence_scores(x, self.router)  # (B, 1, N)
        S = scores.shape[1]
        eta = 1.0 if terms.base is None else cfg.eta
        bases = terms.base if terms.base is not None else [None, None]
        pad = S * S_len - T
        xs = F.pad(x, (0, 0, 0, pad)).reshape(B, S, S_len, C)  # (B, S, L, C)
        # Ŵ1 (B, S, F, C) and Ŵ2 (B, S, C, F) of S13/S14, one per segment, each applied to its
        # segment's tokens (formed again in backward unless merge_memory == "eager")
        h = F.gelu(self._linear(0, xs, bases[0], terms, scores, eta))  # (B, S, L, F)
        y = self._linear(1, h, bases[1], terms, scores, eta).reshape(B, S * S_len, C)[:, :T]
        return LayerOutput(y, x.new_zeros(()), scores)

    def _linear(self, m: int, x: Tensor, base: Tensor | None, terms: LayerTerms,
                scores: Tensor, eta: float) -> Tensor:
        """Matrix m of the merged expert applied per segment (:func:`merged_linear`)."""
        mode = self.config.merge_memory
        redo: Callable[[], Tensor] | None = None
        if mode == "recompute" and base is not None:
            curv = None if self.curvature is None else self.curvature[m]
            sources = [self.experts()[m], base, *([] if curv is None else curv.parameters())]
            versions = [t._version for t in sources]

            def redo() -> Tensor:  # the merge term M(E − E_m) of matrix m, from parameters
                if [t._version for t in sources] != versions:
                    raise RuntimeError(
                        "merge_memory='recompute': an expert, base or curvature parameter was "
                        "modified in place between forward and backward, so the merge terms "
                        "cannot be recomputed; call backward first, or use "
                        "merge_memory='keep-deltas'"
                    )
                tau = self.experts()[m] - base
                return tau if curv is None else curv(tau)
        return merged_linear(x, base, terms.deltas[m], scores, eta,
                             recompute_deltas=redo, recompute=mode != "eager")
