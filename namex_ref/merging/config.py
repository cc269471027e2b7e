"""Merging methods as configuration (docs/math.md §3, S12–S18): one layer, many methods.

Every method of docs/math.md §3 is a row of :data:`METHOD_TABLE`: which routing it uses (token top-k
or merged parameters), where its base expert comes from, whether curvature operators M_i act on the
domain vectors, how the base expert is propagated to the next layer, how often α is re-solved and
which momentum buffer carries it. :class:`MergeConfig` holds the user's hyper-parameters and
validates them on construction (``ValueError`` naming the bad value).
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass
from typing import Literal, get_args

from namex_ref.checks import require_int, require_real
from namex_ref.momentum import MomentumConfig, MomentumKind, validate_quaternion_beta

__all__ = [
    "CAMEX_PAPER",
    "METHODS",
    "METHOD_TABLE",
    "BaseInit",
    "Gate",
    "MergeConfig",
    "MethodName",
    "MethodSpec",
    "SignMask",
    "SingularPolicy",
    "describe_method",
]

MethodName = Literal[
    "smoe",
    "smear",
    "camex",
    "ep-camex",
    "namex",
    "namex-full",
    "namex-mom",
    "namex-full-mom",
    "namex-q",
]
METHODS: tuple[str, ...] = get_args(MethodName)

SingularPolicy = Literal["raise", "ridge", "uniform"]
Routing = Literal["segment", "sequence"]
MergeMemory = Literal["eager", "keep-deltas", "recompute"]
BaseSource = Literal["none", "per-layer", "first-layer"]
Propagation = Literal["none", "ep", "nash"]
SignMask = Literal["none", "ties", "dare"]
"""Mask on the CAMEx merge terms: none, TIES sign agreement, or a DARE-style Bernoulli mask."""
DareGranularity = Literal["expert", "segment"]
"""One DARE mask per (expert, entry) shared by every routing unit ("expert"), or one per (routing
unit, expert, entry), as the CAMEx code's live Conv1D_MEO ("segment")."""
Gate = Literal["softmax", "noisy-top-k"]
"""Router of the merging methods: the plain softmax, or Shazeer et al.'s noisy top-k gate."""
BaseInit = Literal["independent", "expert0"]
"""Initial base expert: drawn independently of the experts, or a copy of expert 0."""


@dataclass(frozen=True)
class MethodSpec:
    """What a method does, as data.

    kind: "topk" (S12, token-level top-k over expert outputs) or "merge" (S13–S18, merge the
        parameters once per segment, one forward pass).
    base: "none" (S13: Ê = Σ s_i E_i), "per-layer" (S14: a learned E_m^(l) in every layer) or
        "first-layer" (S15–S18: E_m learned only at the first MoE layer, then propagated).
    curvature: whether M_i act on the domain vectors in the merge (S14).
    propagation: "ep" (S15, E_m' = E_m + (γ/N) Σ M_i τ_i), "nash" (S16–S18, ΔE = Σ α_i τ_i) or
        "none".
    resolve: "once" (α at the first MoE layer, reused; NAMEx) or "interval" (every Δl layers;
        NAMEx-Full); unused unless propagation == "nash".
    momentum: buffer across layers: "none" (S16), "complex" (S17) or "quaternion" (S18).
    """

    kind: Literal["topk", "merge"]
    base: BaseSource
    curvature: bool
    propagation: Propagation
    resolve: Literal["once", "interval"] = "once"
    momentum: MomentumKind = "none"


METHOD_TABLE: dict[str, MethodSpec] = {
    "smoe": MethodSpec("topk", "none", False, "none"),
    "smear": MethodSpec("merge", "none", False, "none"),
    "camex": MethodSpec("merge", "per-layer", True, "none"),
    "ep-camex": MethodSpec("merge", "first-layer", True, "ep"),
    "namex": MethodSpec("merge", "first-layer", True, "nash", "once"),
    "namex-full": MethodSpec("merge", "first-layer", True, "nash", "interval"),
    "namex-mom": MethodSpec("merge", "first-layer", True, "nash", "once", "complex"),
    "namex-full-mom": MethodSpec("merge", "first-layer", True, "nash", "interval", "complex"),
    # Our convention: NAMEx-Q re-solves α like NAMEx-Full-Mom (the paper's best variant) and
    # swaps the complex buffer for the quaternion one (S18).
    "namex-q": MethodSpec("merge", "first-layer", True, "nash", "interval", "quaternion"),
}


def describe_method(name: str) -> str:
    """One line saying what method ``name`` does, composed from its :data:`METHOD_TABLE` row
    (so the text cannot drift from what the layer runs), ending with its equation tag.

    Example: ``describe_method("smear")`` -> ``"merged experts; no base expert (S13)"``.
    """
    try:
        spec = METHOD_TABLE[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    if spec.kind == "topk":
        return "token top-k over the experts' outputs, load-balancing loss (S12)"
    merge = "merged experts" + (" + curvature M_i" if spec.curvature else "")
    if spec.base == "none":
        return f"{merge}; no base expert (S13)"
    if spec.base == "per-layer":
        return f"{merge}; base: learned in every layer (S14)"
    if spec.propagation == "ep":
        return f"{merge}; base: first layer, propagated by (γ/N) Σ M_i τ_i (S15)"
    alpha = "α once" if spec.resolve == "once" else "α every Δl layers"
    momentum = "" if spec.momentum == "none" else f", {spec.momentum} momentum"
    tag = {"none": "S16", "complex": "S17", "quaternion": "S18"}[spec.momentum]
    return f"{merge}; base: first layer, Nash bargain, {alpha}{momentum} ({tag})"


@dataclass(frozen=True)
class MergeConfig:
    """Hyper-parameters of one MoE feed-forward layer and of the base-expert propagation.

    method: one of :data:`METHODS`.
    n_experts: N ≥ 2 experts per MoE layer.
    top_k: experts per token for "smoe" (S12), 1 ≤ k ≤ N.
    balance_coef: weight of the load-balancing loss for "smoe" (Switch Transformer eq. 4).
    eta: merge step η of S14 (S13 for SMEAR uses η = 1 and no base).
    gamma: propagation step γ > 0 of S15–S18 (real).
    beta_abs, beta_phase: complex momentum β = |β| e^{iφ} for NAMEx-Mom / NAMEx-Full-Mom (S17);
        0 ≤ |β| < 1. Our default |β| = 0.5, φ = π/6 (the paper sweeps φ ∈ {0, ±π/12, ±π/6}).
    beta_q: quaternion β (w, x, y, z) for NAMEx-Q, ‖β‖ < 1; default the paper's example.
    alpha_interval: Δl, re-solve α every Δl MoE layers for the "-full" methods (1 = every layer).
    singular_policy: what a layer does when its bargain has no solution within the Newton budget
        (τ_i = 0, an infeasible or near-infeasible K): "raise" the solver's error (one host sync
        per solve), "ridge" (re-solve with K + λ·mean(diag K)·I) or "uniform" (α_i = c with
        ‖Σ α_i τ_i‖ = √N, the norm S7 gives). Every fallback is counted in the layer statistics.
    ridge: λ for "ridge".
    newton_iterations: fixed Newton budget per solve (no host synchronisation, S5); converged
        problems freeze, unconverged ones go to the policy. The paper's budget is 20
        (docs/math.md §5).
    radius: ball radius ε of S3 (ΔE scaled by ε/√N); ``None`` is the unscaled S4 solution.
    curvature_rank: ``None`` — each Kronecker factor of M_i is a full square matrix initialised
        to I (CAMEx's form); r ≥ 1 — each factor is I + U Vᵀ with rank-r U, V (V = 0 at init).
    routing: "segment" (Lory-style causal segments for language modelling: segment k is merged
        with the router scores of segment k − 1, the first segment with uniform scores) or
        "sequence" (one score vector per sequence from its mean; for classification, not causal).
    segment_len: tokens per segment for "segment" routing.

    Options of the CAMEx code (kpup1710/CAMEx), all off by default (docs/math.md §6, "CAMEx
    options"); each acts on the inputs of the merge (the stack of terms, the router scores) or
    on routing and initialisation, never on the τ that enter the bargain (S16):

    kronecker_terms: r ≥ 1 Kronecker terms per expert and weight matrix,
        M_i(τ) = Σ_{j<r} (A_ij⊗B_ij) τ (C_ij⊗D_ij)ᵀ, every factor I at initialisation, so
        M_i = r·I there (CAMEx's ``rank_c``; not ``curvature_rank``, which makes each factor
        I + UVᵀ). Needs a method with curvature operators; cannot be combined with
        ``curvature_rank``.
    term_dropout: p in [0, 1); in training each (routing unit, expert) term s_i·M_i(τ_i) is
        dropped with probability p and the kept ones scaled by 1/(1 − p) (CAMEx's
        ``Dropout2d(0.1)``), applied as a mask on the router scores; identity in eval mode.
    sign_mask: "none"; "ties" (term i times [sign(τ_i) == sign(Σ_j τ_j)] element-wise, train and
        eval) or "dare" (term i times an element-wise Bernoulli(dare_keep) mask, no rescaling,
        training only; identity in eval mode).
    dare_keep: keep probability of the "dare" mask, in (0, 1]; CAMEx's 0.9.
    dare_granularity: "expert" (one "dare" mask per (expert, entry) per forward, shared by
        every routing unit) or "segment" (one per (routing unit, expert, entry), as the CAMEx
        code's live DARE mask, ``layers.py::Conv1D_MEO``; materialises the (B, S, N, *P)
        masked terms, so the merge runs eagerly whatever ``merge_memory`` says).
    gate: "softmax" (the router softmax) or "noisy-top-k" (Shazeer et al.: logits
        x̄W_g + ε·(softplus(x̄W_noise) + 1e-2), ε ~ N(0, 1) in training only, softmax over the
        gate_top_k largest, and the balance loss balance_coef·(cv²(importance) + cv²(load))).
    gate_top_k: k of the noisy gate; ``None`` = n_experts (the CAMEx scripts' k = N).
    router_per_matrix: one router per weight matrix; the second matrix's router reads the
        segment means of the hidden activations gelu(W1 x + b1) (CAMEx's c_proj router).
    base_init: "independent" (N(0, 0.02²), the default) or "expert0" (a copy of expert 0, as
        CAMEx's ``init_res``; then τ_0 = 0 at step 0).
    expert_bias: experts (and base) get biases b1 (F), b2 (C), merged like the weights, with
        b_i − b_m through (A_bias⊗B_bias) for curvature methods (CAMEx's bias terms).
    merge_memory: what the merge keeps for backward (same values and gradients, different
        memory and time; ``results/memory.md``): "eager" — autograd keeps everything (the four
        Kronecker intermediates, the merge terms, the (B, S, out, in) merged weights);
        "keep-deltas" — τ, the Kronecker intermediates and the merged weights are formed again
        in backward, the merge terms M_i(τ_i) are kept; "recompute" (default) — the merge terms
        too are formed again (least memory; four more Kronecker products per matrix, still
        faster than "eager" on CPU because no operand is copied).
    """

    method: MethodName = "namex-full-mom"
    n_experts: int = 4
    top_k: int = 2
    balance_coef: float = 0.01
    eta: float = 1.0
    gamma: float = 1.0
    beta_abs: float = 0.5
    beta_phase: float = math.pi / 6
    beta_q: tuple[float, float, float, float] = (0.8, 0.3, 0.3, 0.3)
    alpha_interval: int = 1
    singular_policy: SingularPolicy = "ridge"
    ridge: float = 1e-3
    newton_iterations: int = 20
    radius: float | None = None
    curvature_rank: int | None = None
    routing: Routing = "segment"
    segment_len: int = 32
    kronecker_terms: int = 1
    term_dropout: float = 0.0
    sign_mask: SignMask = "none"
    dare_keep: float = 0.9
    dare_granularity: DareGranularity = "expert"
    gate: Gate = "softmax"
    gate_top_k: int | None = None
    router_per_matrix: bool = False
    base_init: BaseInit = "independent"
    expert_bias: bool = False
    merge_memory: MergeMemory = "recompute"

    def __post_init__(self) -> None:
        if self.method not in METHOD_TABLE:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        require_int("n_experts", self.n_experts, low=2)
        require_int("top_k", self.top_k, low=1, high=self.n_experts, note="at most n_experts")
        require_real("balance_coef", self.balance_coef, low=0)
        require_real("eta", self.eta, low=0, low_open=True)
        require_real("gamma", self.gamma, low=0, low_open=True)
        require_real("ridge", self.ridge, low=0, low_open=True)
        require_real("beta_abs", self.beta_abs, low=0, high=1, high_open=True, note="|β| < 1, S17")
        require_real("beta_phase", self.beta_phase)
        # ‖β‖ < 1 (S18) is checked for every method, so a sweep never carries an invalid β.
        try:
            validate_quaternion_beta(self.beta_q)
        except ValueError as err:
            raise ValueError(f"beta_q: {err}") from err
        require_int("alpha_interval", self.alpha_interval, low=1, note="Δl")
        if self.singular_policy not in get_args(SingularPolicy):
            raise ValueError(
                f"singular_policy must be one of {get_args(SingularPolicy)}, "
                f"got {self.singular_policy!r}"
            )
        require_int("newton_iterations", self.newton_iterations, low=1)
        if self.radius is not None:
            require_real("radius", self.radius, low=0, low_open=True, note="or None")
        if self.curvature_rank is not None:
            require_int("curvature_rank", self.curvature_rank, low=1, note="or None")
        if self.routing not in get_args(Routing):
            raise ValueError(f"routing must be 'segment' or 'sequence', got {self.routing!r}")
        require_int("segment_len", self.segment_len, low=1)
        if self.merge_memory not in get_args(MergeMemory):
            raise ValueError(
                f"merge_memory must be one of {get_args(MergeMemory)}, got {self.merge_memory!r}"
            )
        self.momentum_config()  # validates β and γ for the chosen momentum
        self._validate_camex_options()

    def _validate_camex_options(self) -> None:
        """Ranges and combinations of the CAMEx-code options (ValueError naming them)."""
        spec, method = self.spec, self.method
        require_int("kronecker_terms", self.kronecker_terms, low=1, note="CAMEx's rank_c")
        if self.kronecker_terms > 1 and not spec.curvature:
            raise ValueError(
                f"kronecker_terms={self.kronecker_terms} sums Kronecker curvature terms, but "
                f"method {method!r} has no curvature operators; use a CAMEx-family method "
                "(camex, ep-camex, namex...) or kronecker_terms=1"
            )
        if self.kronecker_terms > 1 and self.curvature_rank is not None:
            raise ValueError(
                f"kronecker_terms={self.kronecker_terms} with curvature_rank="
                f"{self.curvature_rank}: choose one (r full identity-initialised Kronecker terms, "
                "or one term whose factors are I + UVᵀ)"
            )
        require_real("term_dropout", self.term_dropout, low=0, high=1, high_open=True)
        if self.sign_mask not in get_args(SignMask):
            raise ValueError(
                f"sign_mask must be one of {get_args(SignMask)}, got {self.sign_mask!r}"
            )
        require_real("dare_keep", self.dare_keep, low=0, high=1, low_open=True)
        if self.dare_granularity not in get_args(DareGranularity):
            raise ValueError(f"dare_granularity must be one of {get_args(DareGranularity)}, "
                             f"got {self.dare_granularity!r}")
        if self.dare_granularity != "expert" and self.sign_mask != "dare":
            raise ValueError(f"dare_granularity={self.dare_granularity!r} is only used with "
                             f"sign_mask='dare' (got sign_mask={self.sign_mask!r})")
        if self.dare_keep != 0.9 and self.sign_mask != "dare":
            raise ValueError(
                f"dare_keep={self.dare_keep} is only used with sign_mask='dare' "
                f"(got sign_mask={self.sign_mask!r})"
            )
        for name, on in (
            ("term_dropout", self.term_dropout > 0),
            ("sign_mask", self.sign_mask != "none"),
            ("base_init", self.base_init != "independent"),
        ):
            if on and spec.base == "none":
                raise ValueError(
                    f"{name}={getattr(self, name)!r} acts on the CAMEx merge terms "
                    f"s_i·M_i(τ_i), τ_i = E_i − E_m, but method {method!r} has no base expert; "
                    "use a method with a base (camex, ep-camex, namex...)"
                )
        if self.base_init not in get_args(BaseInit):
            raise ValueError(
                f"base_init must be one of {get_args(BaseInit)}, got {self.base_init!r}"
            )
        if (
            self.base_init == "expert0"
            and spec.propagation == "nash"
            and self.singular_policy == "raise"
        ):
            raise ValueError(
                "base_init='expert0' makes τ_0 = 0 at step 0, a singular bargain, and "
                "singular_policy='raise' would stop the first step; use 'ridge' or 'uniform'"
            )
        if self.gate not in get_args(Gate):
            raise ValueError(f"gate must be one of {get_args(Gate)}, got {self.gate!r}")
        if spec.kind == "topk":
            for name, on in (
                ("gate", self.gate != "softmax"),
                ("router_per_matrix", self.router_per_matrix),
                ("expert_bias", self.expert_bias),
            ):
                if on:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} is an option of the merging layer; "
                        f"method {method!r} routes tokens (S12)"
                    )
        if self.gate_top_k is not None:
            if self.gate != "noisy-top-k":
                raise ValueError(
                    f"gate_top_k={self.gate_top_k} is the k of gate='noisy-top-k' "
                    f"(got gate={self.gate!r})"
                )
            require_int(
                "gate_top_k", self.gate_top_k, low=1, high=self.n_experts,
                note="at most n_experts, or None for n_experts",
            )

    @property
    def gate_k(self) -> int:
        """The k of the noisy top-k gate (``gate_top_k``, or N when it is ``None``)."""
        return self.n_experts if self.gate_top_k is None else self.gate_top_k

    @property
    def spec(self) -> MethodSpec:
        """The method's row of :data:`METHOD_TABLE`."""
        return METHOD_TABLE[self.method]

    def momentum_config(self) -> MomentumConfig:
        """The S16–S18 propagation hyper-parameters of this method as a :class:`MomentumConfig`."""
        kind = self.spec.momentum
        if kind == "complex":
            beta = cmath.rect(self.beta_abs, self.beta_phase)
            return MomentumConfig(kind="complex", beta=beta, gamma=self.gamma)
        if kind == "quaternion":
            w, x, y, z = (float(c) for c in self.beta_q)
            return MomentumConfig(kind="quaternion", beta=(w, x, y, z), gamma=self.gamma)
        return MomentumConfig(kind="none", gamma=self.gamma)

    def resolves_at(self, layer: int) -> bool:
        """Whether α is (re-)solved at MoE layer ``layer`` (0-based; S16 NAMEx vs NAMEx-Full)."""
        if layer == 0:
            return True
        return self.spec.resolve == "interval" and layer % self.alpha_interval == 0


CAMEX_PAPER: dict[str, object] = {
    "kronecker_terms": 8,
    "sign_mask": "ties",
    "term_dropout": 0.0,
    "gate": "noisy-top-k",
    "gate_top_k": None,
    "balance_coef": 1e-5,
    "router_per_matrix": True,
    "base_init": "expert0",
    "expert_bias": True,
}
"""MergeConfig overrides that reproduce the CAMEx language-model script (kpup1710/CAMEx,
``tasks/language-modeling/run_clm.sh``: ``rank_c=8``, ``mask_type=ties``, ``k = n_experts``,
``curvature_aware=True``, Conv1D_CAMEx layers with their biases, one router per weight matrix,
``init_res``, and the GPT-2 layer's balance coefficient 1e-5). ``term_dropout`` is 0 because the
code's TIES path never calls its dropout (``curve_layer_high_rank.py`` lines 124–128); pass
``term_dropout=0.1`` for the non-TIES path's ``Dropout2d(0.1)``.
"""
