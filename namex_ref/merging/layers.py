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

from namex_ref.merging.camex import gated_scores, masked_deltas, term_dropout
from namex_ref.merging.config import MergeConfig
from namex_ref.merging.operators import kronecker_apply, merge_weights, merged_linear
from namex_ref.merging.plan import LayerTerms
from namex_ref.merging.routing import load_balancing_loss, top_k_routing
from namex_ref.regions import FFN, ROUTER, region

__all__ = [
    "KroneckerCurvature",
    "LayerOutput",
    "MoEFeedForward",
    "nearest_factors",
    "top_k_dense",
    "top_k_indexed",
]

INIT_STD = 0.02  # GPT-2 initialisation of every weight matrix

#: Where SMoE's indexed dispatch runs: on the host a data-dependent shape costs nothing.
_HOST = torch.device("cpu")


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
    """M_i(τ) = Σ_{j<r} (A_ij⊗B_ij) τ (C_ij⊗D_ij)ᵀ for one weight matrix of shape (out, in)
    (S14), r = ``terms`` (CAMEx's ``rank_c``; r = 1 is the plain Kronecker operator).

    Every factor is the identity at initialisation, so M_i = r·I there. The factors of term j
    of expert i are entry j·N + i of (r·N, k, k) stacks. With ``vector=True`` the operand is a
    bias (N, out) and M_i(b) = Σ_j (A_ij⊗B_ij) b (no C, D).

    ``recompute`` (set by :class:`MoEFeedForward` from ``merge_memory``) selects
    :func:`kronecker_apply`'s recomputing backward (True) or the eager einsums (False).
    """

    recompute: bool = True

    def __init__(
        self,
        n: int,
        out_features: int,
        in_features: int,
        rank: int | None,
        terms: int = 1,
        *,
        vector: bool = False,
    ) -> None:
        super().__init__()
        self.terms = terms
        self.vector = vector
        o1, o2 = nearest_factors(out_features)
        self.A, self.B = _Factor(n * terms, o1, rank), _Factor(n * terms, o2, rank)
        if not vector:
            i1, i2 = nearest_factors(in_features)
            self.C, self.D = _Factor(n * terms, i1, rank), _Factor(n * terms, i2, rank)

    def forward(self, tau: Tensor) -> Tensor:
        """tau: (N, out, in), or (N, out) for ``vector=True`` → the same shape."""
        t = tau[..., None] if self.vector else tau
        r = self.terms
        if r > 1:
            t = t.repeat(r, 1, 1)  # (r·N, out, in): entry j·N + i is τ_i
        A, B = self.A(), self.B()
        if self.vector:
            one = torch.ones((A.shape[0], 1, 1), dtype=A.dtype, device=A.device)
            C = D = one
        else:
            C, D = self.C(), self.D()
        m = kronecker_apply(t, A, B, C, D, recompute=self.recompute)
        if r > 1:
            m = m.reshape(r, -1, *m.shape[1:]).sum(0)
        return m[..., 0] if self.vector else m


class LayerOutput(NamedTuple):
    """y: (B, T, C). aux_loss: () load-balancing loss (0 for merging methods with the softmax gate).
    scores: (B, S, N) router scores used for the merge (S = segments; the first router's, before
    term dropout, when the CAMEx options are on), or (B, T, N) SMoE probs."""

    y: Tensor
    aux_loss: Tensor
    scores: Tensor


class MoEFeedForward(nn.Module):
    """One MoE feed-forward layer for every method of docs/math.md §3.

    Parameters: experts ``w1`` (N, F, C) and ``w2`` (N, C, F), a bias-free router C → N,
    a base expert (``base1`` (F, C), ``base2`` (C, F)) when ``has_base``, and Kronecker curvature
    operators for both matrices when the method uses them. Experts and base are initialised
    independently (N(0, 0.02²)), so τ_i ≠ 0 and the bargain is well posed at initialisation.

    The CAMEx-code options of :class:`MergeConfig` add: expert biases ``b1`` (N, F), ``b2``
    (N, C) and base biases ``bias1``, ``bias2`` (zeros at init, as CAMEx) with their curvature
    (``expert_bias``); a router ``router_hidden`` F → N for the second matrix
    (``router_per_matrix``); noise routers ``noise_router`` (and ``noise_router_hidden``) for the
    noisy gate; r Kronecker terms per curvature operator (``kronecker_terms``); a base that
    starts as a copy of expert 0 (``base_init``). Experts are then the matrix lists
    [W1, W2] or [W1, W2, b1, b2] (S2: one α per expert over all of them).
    """

    def __init__(self, d_model: int, d_ff: int, config: MergeConfig, *, has_base: bool) -> None:
        super().__init__()
        n = config.n_experts
        self.config = config
        self.w1 = nn.Parameter(torch.randn(n, d_ff, d_model) * INIT_STD)
        self.w2 = nn.Parameter(torch.randn(n, d_model, d_ff) * INIT_STD)
        self.router = nn.Linear(d_model, n, bias=False)
        nn.init.normal_(self.router.weight, std=INIT_STD)
        self.b1: nn.Parameter | None = None
        self.b2: nn.Parameter | None = None
        if config.expert_bias:
            self.b1 = nn.Parameter(torch.zeros(n, d_ff))
            self.b2 = nn.Parameter(torch.zeros(n, d_model))
        self.base1: nn.Parameter | None = None
        self.base2: nn.Parameter | None = None
        self.bias1: nn.Parameter | None = None
        self.bias2: nn.Parameter | None = None
        if has_base:
            if config.base_init == "expert0":
                self.base1 = nn.Parameter(self.w1.detach()[0].clone())
                self.base2 = nn.Parameter(self.w2.detach()[0].clone())
            else:
                self.base1 = nn.Parameter(torch.randn(d_ff, d_model) * INIT_STD)
                self.base2 = nn.Parameter(torch.randn(d_model, d_ff) * INIT_STD)
            if self.b1 is not None and self.b2 is not None:
                self.bias1 = nn.Parameter(self.b1.detach()[0].clone())
                self.bias2 = nn.Parameter(self.b2.detach()[0].clone())
        self.router_hidden: nn.Linear | None = None
        if config.router_per_matrix:
            self.router_hidden = nn.Linear(d_ff, n, bias=False)
            nn.init.normal_(self.router_hidden.weight, std=INIT_STD)
        self.noise_router: nn.Linear | None = None
        self.noise_router_hidden: nn.Linear | None = None
        if config.gate == "noisy-top-k":
            self.noise_router = nn.Linear(d_model, n, bias=False)
            nn.init.normal_(self.noise_router.weight, std=INIT_STD)
            if config.router_per_matrix:
                self.noise_router_hidden = nn.Linear(d_ff, n, bias=False)
                nn.init.normal_(self.noise_router_hidden.weight, std=INIT_STD)
        self.curvature: nn.ModuleList | None = None
        if config.spec.curvature:
            rank, r = config.curvature_rank, config.kronecker_terms
            mods = [
                KroneckerCurvature(n, d_ff, d_model, rank, r),
                KroneckerCurvature(n, d_model, d_ff, rank, r),
            ]
            if config.expert_bias:
                mods += [
                    KroneckerCurvature(n, d_ff, 1, rank, r, vector=True),
                    KroneckerCurvature(n, d_model, 1, rank, r, vector=True),
                ]
            self.curvature = nn.ModuleList(mods)
            for mod in self.curvature:
                setattr(mod, "recompute", config.merge_memory != "eager")  # noqa: B010

    def experts(self) -> list[Tensor]:
        """Per-matrix expert stacks [(N, F, C), (N, C, F)], plus [(N, F), (N, C)] biases."""
        if self.b1 is not None and self.b2 is not None:
            return [self.w1, self.w2, self.b1, self.b2]
        return [self.w1, self.w2]

    def base(self) -> list[Tensor] | None:
        """The learned base expert [(F, C), (C, F)] (plus [(F,), (C,)] biases) or None."""
        if self.base1 is None or self.base2 is None:
            return None
        if self.bias1 is not None and self.bias2 is not None:
            return [self.base1, self.base2, self.bias1, self.bias2]
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
            with region(FFN):  # the router's region is nested inside
                return self._top_k(x)
        if terms is None:
            raise ValueError(f"method {self.config.method!r} merges experts: pass its LayerTerms")
        with region(FFN):
            return self._merged(x, terms)

    def _top_k(self, x: Tensor) -> LayerOutput:
        """S12: F(x) = Σ_{i∈topk} s_i f_i(x), token-level, with the Switch balance loss."""
        B, T, C = x.shape
        n, k = self.config.n_experts, self.config.top_k
        flat = x.reshape(B * T, C)
        with region(ROUTER):
            route = top_k_routing(self.router(flat), k)  # gates/experts (BT, k), probs (BT, N)
            aux = self.config.balance_coef * load_balancing_loss(route.probs, route.experts, n)
        if flat.device == _HOST:
            out = top_k_indexed(flat, self.w1, self.w2, route.gates, route.experts)
        else:
            out = top_k_dense(flat, self.w1, self.w2, route.gates, route.experts)
        return LayerOutput(out.reshape(B, T, C), aux, route.probs.reshape(B, T, n))

    def _masked_deltas(self, terms: LayerTerms,
                       units: tuple[int, int] | None = None) -> list[Tensor]:
        """This layer's merge terms after ``sign_mask`` (:func:`masked_deltas`); ``units`` =
        (B, S) routing units, for ``dare_granularity="segment"``."""
        return masked_deltas(terms, self.experts(), self.config, training=self.training,
                             units=units)

    def _merged(self, x: Tensor, terms: LayerTerms) -> LayerOutput:
        """S13–S18: merge per segment (or sequence), then one expert forward per segment.

        The CAMEx options are the shared functions of :mod:`functional` (also used by the
        Hugging Face layer): :func:`masked_deltas`, :func:`gated_scores`, :func:`term_dropout`.
        Order of the random draws in training (tests replay it): the "dare" masks (per matrix),
        the first router's gate noise, its term-dropout mask, then (``router_per_matrix``) the
        second router's noise and mask; with one router both matrices share the mask.
        """
        cfg = self.config
        B, T, C = x.shape
        S_len = cfg.segment_len if cfg.routing == "segment" else T
        train, p = self.training, cfg.term_dropout
        deltas = self._masked_deltas(terms, (B, -(-T // S_len)))
        with region(ROUTER):
            scores, aux = gated_scores(x, self.router, self.noise_router, cfg, training=train)
            s1 = term_dropout(scores, p, training=train)  # (B, S, N)
        S = scores.shape[1]
        eta = 1.0 if terms.base is None else cfg.eta
        bases = terms.base if terms.base is not None else [None] * len(deltas)
        pad = S * S_len - T
        xs = F.pad(x, (0, 0, 0, pad)).reshape(B, S, S_len, C)  # (B, S, L, C)
        # Ŵ1 (B, S, F, C) and Ŵ2 (B, S, C, F) of S13/S14, one per segment, each applied to its
        # segment's tokens (formed again in backward unless merge_memory == "eager")
        pre = self._linear(0, xs, bases[0], deltas, terms, s1, eta)  # (B, S, L, F)
        if len(deltas) == 4:
            pre = pre + merge_weights(bases[2], deltas[2], s1, eta)[:, :, None, :]
        h = F.gelu(pre)
        s2 = s1
        if self.router_hidden is not None:
            hidden = h.reshape(B, S * S_len, -1)[:, :T]  # (B, T, F), real tokens only
            scores2, aux2 = gated_scores(
                hidden, self.router_hidden, self.noise_router_hidden, cfg, training=train
            )
            s2, aux = term_dropout(scores2, p, training=train), aux + aux2
        y = self._linear(1, h, bases[1], deltas, terms, s2, eta)  # (B, S, L, C)
        if len(deltas) == 4:
            y = y + merge_weights(bases[3], deltas[3], s2, eta)[:, :, None, :]
        y = y.reshape(B, S * S_len, C)[:, :T]
        return LayerOutput(y, aux, scores)

    def _linear(
        self,
        m: int,
        x: Tensor,
        base: Tensor | None,
        deltas: list[Tensor],
        terms: LayerTerms,
        scores: Tensor,
        eta: float,
    ) -> Tensor:
        """Matrix m of the merged expert applied per segment (:func:`merged_linear`). The merge
        terms are rebuilt from the parameters in backward only when they are the unmasked
        ``terms.deltas`` (a "ties"/"dare" mask changes them, so they are kept instead)."""
        mode = self.config.merge_memory
        redo: Callable[[], Tensor] | None = None
        if mode == "recompute" and base is not None and deltas is terms.deltas:
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
                with torch.autocast(base.device.type, enabled=False):  # as merge_plan formed it
                    tau = self.experts()[m] - base
                    return tau if curv is None else curv(tau)

        return merged_linear(
            x, base, deltas[m], scores, eta, recompute_deltas=redo, recompute=mode != "eager"
        )


def top_k_indexed(flat: Tensor, w1: Tensor, w2: Tensor, gates: Tensor, experts: Tensor) -> Tensor:
    """S12 by gathering each expert's tokens: Σ_{i∈topk} s_i f_i(x), f_i(x) = W2_i gelu(W1_i x).

    flat: (T, C); w1: (N, F, C); w2: (N, C, F); gates, experts: (T, k). Returns (T, C) in
    flat's dtype. Computes only the routed (token, expert) pairs, but each expert's token list
    (``nonzero``) has a data-dependent size: on a GPU that is a host sync per expert per layer
    and no CUDA-graph capture, so the layer uses it on the CPU only.
    """
    out = torch.zeros_like(flat)
    for i in range(w1.shape[0]):
        tok, slot = (experts == i).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = F.gelu(flat[tok] @ w1[i].T) @ w2[i].T  # (n_i, C)
        out.index_add_(0, tok, (h * gates[tok, slot, None]).to(out.dtype))  # autocast
    return out


def top_k_dense(flat: Tensor, w1: Tensor, w2: Tensor, gates: Tensor, experts: Tensor) -> Tensor:
    """S12 with static shapes: every expert on every token, weighted by the scattered gates.

    Same arguments and result as :func:`top_k_indexed`, to float rounding (the sum over the
    k chosen experts runs in another order; an unchosen expert enters with weight exactly 0).
    No host sync and capturable in a CUDA graph; the price is N/k times the expert FLOPs and
    an (N, T, F) activation. No token is ever dropped (there is no capacity). A grouped GEMM
    over the expert-sorted tokens would avoid the extra FLOPs; it is not used because torch's
    (``torch._grouped_mm``) is private and its CPU backward fails in torch 2.13, so it could
    not be tested here.
    """
    weights = torch.zeros(
        flat.shape[0], w1.shape[0], dtype=gates.dtype, device=flat.device
    ).scatter(1, experts, gates)  # (T, N), zero where the expert is not chosen
    h = F.gelu(torch.einsum("tc,nfc->ntf", flat, w1))  # (N, T, F)
    y = torch.einsum("ntf,ncf->ntc", h, w2)  # (N, T, C)
    return torch.einsum("ntc,tn->tc", y, weights.to(y.dtype)).to(flat.dtype)
