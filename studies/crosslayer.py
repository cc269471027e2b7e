r"""Cross-layer tracking study: does the propagated base expert follow its α-weighted target?

Run ``python studies/crosslayer.py`` (about 7 minutes on 2 shared CPU cores, the first time
including the tokenisation of the corpus) to write
``results/crosslayer.md`` and ``results/crosslayer.png``; ``--quick`` is the seconds-long
version the tests run. The metric (T1)–(T2) is the library's :mod:`namex_ref.tracking`; this
file holds the experiment: the chains, the propagation at each (β, γ), sweeps, verdicts, plot
and report.

The S19 analysis (:mod:`namex_ref.spectral`) freezes α and the experts, so the bargained update
is ΔE = c (Ē_α − E_m) with c = Σ_i α_i, i.e. ΔE = −H(E_m − E*) with H = cI and E* = Ē_α
(docs/math.md §4). With real β that linear chain is optimal only for γc ≥ 1; for γc < 1 a
non-real β has a smaller ρ(R) (docs/implementation.md, S19). In a real network neither
premise holds: the experts
E_i^(l) change from layer to layer, so the fixed point Ē_α^(l) moves, and NAMEx-Full re-solves α
at every layer, so c and Ē_α change too. The study measures what the propagation actually used
(:func:`namex_ref.merging.plan.propagate`) does on such chains.

At MoE layer l (0-based) the metric is err_l = ‖E_m^(l) − Ē_α^(l)‖ / ‖Ē_α^(l)‖ (T2), with α^(l)
the α in force there: solved at layer 0 and frozen (``resolve="once"``: NAMEx, NAMEx-Mom) or
re-solved at every layer (``resolve="interval"`` with Δl = 1: NAMEx-Full, NAMEx-Full-Mom); the
names are :class:`namex_ref.merging.config.MethodSpec`'s. Layers 0 and 1 do not depend on β
(μ^(1) = 0 and μ^(2) = ΔE^(1) is real, S17), so momentum is scored by the mean of err_l over
l ≥ 2 (``first_scored_layer``).

Spectral prediction per layer: ρ_l = ρ(R) for H = c_l I with c_l = Σ_i α_i^(l) at the given β
and γ (S19 cubic, :func:`namex_ref.spectral.spectral_radius_from_cubic`). For identical experts
at every layer and frozen α, (T1) holds exactly and err_l decays like ρ^l (tested).

Facts used by the report (all tested in ``tests/test_crosslayer.py``):

- β and its conjugate give bit-identical base experts for real experts and real γ (conjugating
  the S17 buffer maps one run onto the other and Re is unchanged), so the paper's ±φ pairs are
  one experiment each.
- (T2) is invariant under permuting experts, under one orthogonal map applied to every expert and
  the base (S9), and under scaling experts and base by s > 0 together with γ → sγ (α → α/s,
  ‖ΔE‖ = √N is fixed by S7, so the step must scale with the weights). The absolute error
  ‖E_m − Ē_α‖ is invariant under adding one vector to every expert and the base.

Trained chains come from the project's trainer, :func:`namex_ref.train.train`, on its token data
(:func:`namex_ref.train.load_token_data`: the built-in corpus's training split, local BPE with
the preset's vocabulary), with the settings of ``namex train --preset tiny --method
namex-full-mom --steps 300 --batch-size 8`` (AdamW β₂ = 0.95, lr 3e-3 with 40 warm-up steps and
cosine decay to 3e-4, weight decay 0.1 on matrices, gradient clip 1); the 16-layer model is the
same with ``n_layer = 16`` (:class:`DepthTrainConfig`). The metric, the chains' initialisation
and the grid do not depend on the trainer; the trained weights do. This study used to train with
a loop of its own (constant lr 3e-3, torch's AdamW defaults on every parameter, its own batch
sampler, BPE trained on the first 10^6 characters only); measuring the experts the project's
trainer produces is the point, so the trained-chain rows of ``results/crosslayer.md`` moved with
the trainer (cosine of consecutive targets up to 0.18 instead of 0.09, lowest score 1.08 instead
of 1.10, best real β / best φ ≠ 0 within ×0.989–×1.008 instead of ×0.992–×1.008), while the
synthetic and initialisation chains give the same numbers bit for bit.
"""

from __future__ import annotations

import argparse
import cmath
import dataclasses
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from namex_ref.merging.config import MergeConfig, MethodName
from namex_ref.merging.plan import bargain_alpha, propagate
from namex_ref.models.gpt import ModelConfig, MoEGPT, preset
from namex_ref.nash.gram import domain_vectors
from namex_ref.spectral import PAPER_PHASES, spectral_radius_from_cubic
from namex_ref.tables import format_table
from namex_ref.tracking import alpha_target, tracking_errors
from namex_ref.train import TrainConfig, load_checkpoint, train
from namex_ref.train.loop import CHECKPOINT_NAME, METRICS_NAME
from namex_ref.train.metrics import read_jsonl

#: When α is solved: "once" at the first MoE layer, or at every "interval" of Δl = 1 layers;
#: the values of :attr:`namex_ref.merging.config.MethodSpec.resolve`.
ResolveMode = Literal["once", "interval"]

#: Relative difference below which two mean errors count as a tie when ranking phases: the
#: propagation runs in float64 (synthetic) or float32 (model weights, ~1e-7 relative rounding
#: amplified by a few layers), so differences under 1e-6 are rounding, not dynamics.
TIE_RTOL = 1e-6


@dataclass(frozen=True)
class Chain:
    """A stack of MoE layers to propagate over.

    name: label for tables and plots.
    experts: per layer l, per weight matrix m, the N experts (N, *P_m); all layers share N and
        the shapes P_m.
    base: per matrix m the learned base expert E_m^(0) (*P_m) of the first MoE layer.
    Tensors are used as given (detach them); any real floating dtype.
    """

    name: str
    experts: tuple[tuple[Tensor, ...], ...]
    base: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.experts) == 0:
            raise ValueError(f"chain {self.name!r} needs at least one layer, got 0")
        shapes = [tuple(t.shape) for t in self.experts[0]]
        if not shapes:
            raise ValueError(f"chain {self.name!r}: layer 0 has no weight matrices")
        n = shapes[0][0]
        if n < 2:
            raise ValueError(f"chain {self.name!r}: need N >= 2 experts, got N={n}")
        for l, layer in enumerate(self.experts):
            got = [tuple(t.shape) for t in layer]
            if got != shapes:
                raise ValueError(
                    f"chain {self.name!r}: layer {l} has matrix shapes {got}, layer 0 has {shapes}"
                )
            for t in layer:
                if not t.is_floating_point():
                    raise ValueError(f"chain {self.name!r}: layer {l} has dtype {t.dtype}")
        base_shapes = [tuple(t.shape) for t in self.base]
        if base_shapes != [s[1:] for s in shapes]:
            raise ValueError(
                f"chain {self.name!r}: base shapes {base_shapes} do not match the experts' "
                f"{[s[1:] for s in shapes]}"
            )

    @property
    def n_layers(self) -> int:
        return len(self.experts)

    @property
    def n_experts(self) -> int:
        return int(self.experts[0][0].shape[0])


def target_cosines(experts: Sequence[Sequence[Tensor]], alphas: Tensor) -> NDArray[np.float64]:
    """cos(Ē_α^(l), Ē_α^(l+1)) for consecutive layers, (L − 1,) float64: how smoothly the
    per-layer targets (T1) move. 1 for identical layers; ≈ 0 for unrelated random layers."""
    flats = [
        torch.cat([t.reshape(-1).to(torch.float64) for t in alpha_target(e, a)])
        for e, a in zip(experts, alphas, strict=True)
    ]
    out = np.empty(max(len(flats) - 1, 0))
    for l in range(len(flats) - 1):
        a, b = flats[l], flats[l + 1]
        out[l] = float(a @ b / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))
    return out


@dataclass(frozen=True)
class Tracking:
    """One propagation of a chain at one (β, γ) and its tracking metric.

    rel_error, abs_error, target_norm: (L,) (T2). c: (L,) Σ_i α_i^(l). rho: (L,) ρ(R) for
    H = c_l I at this β, γ (S19). alphas: (L, N) float64. target_cosine: (L − 1,)
    :func:`target_cosines`. fallbacks: how many layers used the
    singular-bargain policy. beta, gamma, resolve: the settings.
    """

    rel_error: NDArray[np.float64]
    abs_error: NDArray[np.float64]
    target_norm: NDArray[np.float64]
    c: NDArray[np.float64]
    rho: NDArray[np.float64]
    alphas: NDArray[np.float64]
    target_cosine: NDArray[np.float64]
    fallbacks: int
    beta: complex
    gamma: float
    resolve: ResolveMode

    def score(self, first_scored_layer: int = 2) -> float:
        """Mean rel_error over layers l ≥ first_scored_layer (the β-dependent ones)."""
        if not 0 <= first_scored_layer < self.rel_error.size:
            raise ValueError(
                f"first_scored_layer must be in [0, {self.rel_error.size}), got "
                f"{first_scored_layer!r}"
            )
        return float(self.rel_error[first_scored_layer:].mean())


def _merge_config(
    n: int, beta: complex, gamma: float, resolve: ResolveMode, policy: str, iterations: int
) -> MergeConfig:
    if resolve not in get_args(ResolveMode):
        raise ValueError(f"resolve must be 'once' or 'interval', got {resolve!r}")
    method: MethodName = "namex-mom" if resolve == "once" else "namex-full-mom"
    cfg = MergeConfig(
        method=method,
        n_experts=n,
        beta_abs=abs(beta),
        beta_phase=cmath.phase(beta),
        gamma=gamma,
        alpha_interval=1,
        singular_policy=policy,  # type: ignore[arg-type]  # validated by MergeConfig
        newton_iterations=iterations,
    )
    assert cfg.spec.resolve == resolve  # the study's names are the method table's
    return cfg


def track(
    chain: Chain,
    *,
    beta: complex,
    gamma: float,
    resolve: ResolveMode = "interval",
    singular_policy: str = "ridge",
    newton_iterations: int = 20,
) -> Tracking:
    """Propagate ``chain`` with the project's :func:`propagate` and measure (T2) per layer.

    resolve: "once" = NAMEx-Mom (α solved at layer 0, frozen; exactly the H = cI chain when the
    experts do not change), "interval" = NAMEx-Full-Mom (α re-solved at every layer, Δl = 1).
    β = 0 is plain NAMEx / NAMEx-Full (S16). singular_policy, newton_iterations: as in
    :class:`MergeConfig` (the training defaults). Raises ValueError on bad settings (|β| ≥ 1,
    γ ≤ 0, unknown resolve or policy).
    """
    cfg = _merge_config(
        chain.n_experts, complex(beta), gamma, resolve, singular_policy, newton_iterations
    )
    experts = [list(layer) for layer in chain.experts]
    bases_in: list[list[Tensor] | None] = [list(chain.base)]
    bases_in += [None] * (chain.n_layers - 1)
    with torch.no_grad():
        plan = propagate(experts, bases_in, cfg)
    bases: list[list[Tensor]] = []
    for l, terms in enumerate(plan.terms):
        if terms.base is None:  # pragma: no cover - nash methods always carry a base
            raise RuntimeError(f"propagate returned no base at layer {l}")
        bases.append(terms.base)
    abs_err, rel_err, tnorm = tracking_errors(bases, experts, plan.alphas)
    alphas = plan.alphas.detach().cpu().numpy().astype(np.float64)
    c = alphas.sum(axis=1)
    rho = np.array([spectral_radius_from_cubic([cl], complex(beta), gamma) for cl in c])
    return Tracking(
        rel_error=rel_err,
        abs_error=abs_err,
        target_norm=tnorm,
        c=c,
        rho=rho,
        alphas=alphas,
        target_cosine=target_cosines(experts, plan.alphas),
        fallbacks=int(plan.fallbacks.sum()),
        beta=complex(beta),
        gamma=float(gamma),
        resolve=resolve,
    )


def layer0_c(chain: Chain, *, singular_policy: str = "ridge", newton_iterations: int = 20) -> float:
    """c_0 = Σ_i α_i of the bargain at the first layer (τ_i = E_i^(0) − E_m^(0)); β-independent.

    Used to pick γ from a target γ·c_0 (the S19 axis of the H = cI analysis).
    """
    taus = domain_vectors(list(chain.experts[0]), list(chain.base))  # S1 per matrix
    res = bargain_alpha(
        taus, singular_policy=singular_policy, newton_iterations=newton_iterations, layer=0
    )
    return float(res.alpha.sum())


# ----------------------------------------------------------------------------------------------
# Chains


def synthetic_chain(
    *,
    n_layers: int = 24,
    n_experts: int = 4,
    shapes: Sequence[tuple[int, ...]] = ((16, 16), (16, 16)),
    drift: float = 0.1,
    spread: float = 0.7,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    name: str | None = None,
) -> Chain:
    """Experts that rotate smoothly from layer to layer.

    E_i^(l) = cos(ω l) P_i + sin(ω l) Q_i,  P_i = S + spread·U_i,  Q_i = S' + spread·V_i,

    with ω = ``drift`` (radians per layer) and S, S', U_i, V_i independent Gaussian vectors with
    entries N(0, 1/d) (d = total parameters of an expert), so ‖E_i‖ ≈ √(1 + spread²), experts
    share a common part (cosine ≈ 1/(1 + spread²)) and each moves by ≈ ω·‖E_i‖ per layer.
    drift = 0 gives identical experts at every layer. The base E_m^(0) is an independent
    N(0, 1/d) draw. Matrices per expert: ``shapes``.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an int >= 1, got {n_layers!r}")
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 2:
        raise ValueError(f"n_experts must be an int >= 2, got {n_experts!r}")
    if not math.isfinite(drift):
        raise ValueError(f"drift must be finite, got {drift!r}")
    if not (math.isfinite(spread) and spread >= 0):
        raise ValueError(f"spread must be finite and >= 0, got {spread!r}")
    if len(shapes) == 0 or any(len(s) == 0 or min(s) < 1 for s in shapes):
        raise ValueError(f"shapes must be non-empty positive matrix shapes, got {shapes!r}")
    g = torch.Generator().manual_seed(seed)
    sizes = [math.prod(s) for s in shapes]
    d = sum(sizes)
    std = 1.0 / math.sqrt(d)

    def draw(*lead: int) -> Tensor:
        return torch.randn(*lead, d, generator=g, dtype=torch.float64) * std

    S, S2 = draw(), draw()
    P = S + spread * draw(n_experts)  # (N, d)
    Q = S2 + spread * draw(n_experts)
    base_flat = draw()

    def split(v: Tensor, lead: tuple[int, ...]) -> tuple[Tensor, ...]:
        parts = torch.split(v, sizes, dim=-1)
        return tuple(p.reshape(*lead, *s).to(dtype) for p, s in zip(parts, shapes, strict=True))

    layers = []
    for l in range(n_layers):
        E = math.cos(drift * l) * P + math.sin(drift * l) * Q  # (N, d)
        layers.append(split(E, (n_experts,)))
    label = name if name is not None else f"synthetic L={n_layers}, drift ω={drift:g}"
    return Chain(label, tuple(layers), split(base_flat, ()))


def model_chain(model: MoEGPT, name: str) -> Chain:
    """The chain of a :class:`MoEGPT`: per MoE layer its experts [(N, F, C), (N, C, F)] and the
    first layer's learned base, detached copies (the curvature operators do not enter the
    propagation of the NAMEx family: S16 uses raw τ)."""
    layers = model.moe_layers()
    base = layers[0].base()
    if base is None:
        raise ValueError(
            f"model method {model.config.merge.method!r} has no learned first-layer base; use a "
            "NAMEx-family or EP-CAMEx model"
        )
    experts = tuple(tuple(t.detach().clone() for t in m.experts()) for m in layers)
    return Chain(name, experts, tuple(t.detach().clone() for t in base))


@dataclass(frozen=True)
class DepthTrainConfig(TrainConfig):
    """A :class:`TrainConfig` whose preset depth is replaced by ``n_layer`` (0 = the preset's).

    The one model this study trains that is not a preset is the tiny preset with 16 MoE layers;
    everything else about the run is :func:`namex_ref.train.train`'s.
    """

    n_layer: int = 0

    def model_config(self) -> ModelConfig:
        cfg = super().model_config()
        return dataclasses.replace(cfg, n_layer=self.n_layer) if self.n_layer else cfg


def train_model(config: TrainConfig) -> tuple[MoEGPT, list[float]]:
    """Train with :func:`namex_ref.train.train` and return (the final model in eval mode, the
    cross-entropy of every logged step). ``config.out`` must not hold a checkpoint yet."""
    train(config)
    out = Path(config.out)
    model = MoEGPT(config.model_config())
    model.load_state_dict(load_checkpoint(out / CHECKPOINT_NAME).model_state)
    model.eval()
    losses = [float(r["ce"]) for r in read_jsonl(out / METRICS_NAME) if "ce" in r]
    return model, losses


# ----------------------------------------------------------------------------------------------
# Sweeps


@dataclass(frozen=True)
class SweepConfig:
    """Grid of the measurement. γ is set per chain from the target γ·c_0 (c_0 = Σα at layer 0).

    moduli: |β| values; phases: φ = arg β (radians; default the paper's 0, ±π/12, ±π/6);
    gamma_c: target γ·c_0 values; resolves: "once" (NAMEx-Mom) and/or "interval" (NAMEx-Full-Mom);
    first_scored_layer: the score is the mean (T2) over l ≥ this (2: the first β-dependent
    layer).
    """

    moduli: tuple[float, ...] = (0.1, 0.3, 0.5, 0.8)
    phases: tuple[float, ...] = PAPER_PHASES
    gamma_c: tuple[float, ...] = (0.5, 1.0, 2.0)
    resolves: tuple[ResolveMode, ...] = ("once", "interval")
    first_scored_layer: int = 2

    def __post_init__(self) -> None:
        if not self.moduli or any(not (0 < m < 1) for m in self.moduli):
            raise ValueError(f"moduli must be non-empty, each in (0, 1), got {self.moduli!r}")
        if not self.phases or 0.0 not in self.phases:
            raise ValueError(f"phases must include 0 (the real-β reference), got {self.phases!r}")
        if not self.gamma_c or any(not (math.isfinite(g) and g > 0) for g in self.gamma_c):
            raise ValueError(f"gamma_c must be non-empty positive values, got {self.gamma_c!r}")
        if not self.resolves or any(r not in get_args(ResolveMode) for r in self.resolves):
            raise ValueError(f"resolves must be 'once'/'interval', got {self.resolves!r}")
        if self.first_scored_layer < 0:
            raise ValueError(f"first_scored_layer must be >= 0, got {self.first_scored_layer!r}")


@dataclass(frozen=True)
class SweepRow:
    """One (chain, resolve, γ·c_0, |β|, φ) point. |β| = 0 marks the plain NAMEx reference."""

    chain: str
    resolve: ResolveMode
    gamma_c0: float
    gamma: float
    beta_abs: float
    phase: float
    score: float
    final_error: float
    mean_rho: float
    fallbacks: int
    tracking: Tracking = field(repr=False)


@contextmanager
def _single_thread() -> Iterator[None]:
    """torch intra-op threads = 1 inside, restored after: the N×N Newton solves are tiny and
    thread start-up dominates them (measured 12× slower with 2 threads on a loaded 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sweep(chain: Chain, config: SweepConfig | None = None) -> list[SweepRow]:
    """Every grid point of ``config`` on ``chain``, plus a β = 0 row per (resolve, γ·c_0).

    mean_rho is the layer mean of ρ_l over the scored layers. Runs with one torch thread
    (restored afterwards).
    """
    with _single_thread():
        return _sweep(chain, config)


def _sweep(chain: Chain, config: SweepConfig | None) -> list[SweepRow]:
    cfg = config if config is not None else SweepConfig()
    first = min(cfg.first_scored_layer, chain.n_layers - 1)
    c0 = layer0_c(chain)
    rows: list[SweepRow] = []
    for resolve in cfg.resolves:
        for gc in cfg.gamma_c:
            gamma = gc / c0
            points = [(0.0, 0.0)] + [(m, p) for m in cfg.moduli for p in cfg.phases]
            for m, p in points:
                tr = track(chain, beta=cmath.rect(m, p), gamma=gamma, resolve=resolve)
                rows.append(
                    SweepRow(
                        chain=chain.name,
                        resolve=resolve,
                        gamma_c0=gc,
                        gamma=gamma,
                        beta_abs=m,
                        phase=p,
                        score=tr.score(first),
                        final_error=float(tr.rel_error[-1]),
                        mean_rho=float(tr.rho[first:].mean()),
                        fallbacks=tr.fallbacks,
                        tracking=tr,
                    )
                )
    return rows


@dataclass(frozen=True)
class PhaseVerdict:
    """φ ≠ 0 against φ = 0 at one (chain, resolve, γ·c_0, |β|).

    err_zero: score at φ = 0; best_phase, err_best: the φ ≠ 0 with the lowest score; gain =
    err_zero / err_best (> 1: a non-zero phase tracks better). rho_zero, rho_best: mean ρ_l of
    those two. spectral_agrees: the φ with the lowest mean ρ (S19 prediction) is the φ with the
    lowest score (±φ and ties within TIE_RTOL counted as equal). conj_gap: max |score(φ) −
    score(−φ)| over the phases (0 expected exactly).
    """

    chain: str
    resolve: ResolveMode
    gamma_c0: float
    beta_abs: float
    err_zero: float
    best_phase: float
    err_best: float
    gain: float
    rho_zero: float
    rho_best: float
    spectral_agrees: bool
    conj_gap: float


def _argmin_set(values: dict[float, float]) -> set[float]:
    lo = min(values.values())
    return {abs(p) for p, v in values.items() if v <= lo * (1 + TIE_RTOL) + 1e-300}


def verdicts(rows: Sequence[SweepRow]) -> list[PhaseVerdict]:
    """Group sweep rows by (chain, resolve, γ·c_0, |β| > 0) and compare phases."""
    groups: dict[tuple[str, str, float, float], list[SweepRow]] = {}
    for r in rows:
        if r.beta_abs > 0:
            groups.setdefault((r.chain, r.resolve, r.gamma_c0, r.beta_abs), []).append(r)
    out: list[PhaseVerdict] = []
    for (chain, _resolve, gc, m), grp in groups.items():
        by_phase = {r.phase: r for r in grp}
        if 0.0 not in by_phase or len(by_phase) < 2:
            continue
        zero = by_phase[0.0]
        others = [r for r in grp if r.phase != 0.0]
        best = min(others, key=lambda r: r.score)
        gap = 0.0
        for p, r in by_phase.items():
            if -p in by_phase:
                gap = max(gap, abs(r.score - by_phase[-p].score))
        err = {p: r.score for p, r in by_phase.items()}
        rho = {p: r.mean_rho for p, r in by_phase.items()}
        out.append(
            PhaseVerdict(
                chain=chain,
                resolve=zero.resolve,
                gamma_c0=gc,
                beta_abs=m,
                err_zero=zero.score,
                best_phase=best.phase,
                err_best=best.score,
                gain=zero.score / best.score if best.score > 0 else math.inf,
                rho_zero=zero.mean_rho,
                rho_best=best.mean_rho,
                spectral_agrees=bool(_argmin_set(err) & _argmin_set(rho)),
                conj_gap=gap,
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# Plot and report


def plot_tracking(
    rows: Sequence[SweepRow],
    path: str | Path,
    *,
    gamma_c0: float,
    beta_abs: float,
) -> Path:
    """PNG of (T2) against layer, one curve per φ (and β = 0 dashed), one panel per
    (chain, resolve), at the given γ·c_0 and |β| (log y axis). Agg canvas, no global state.
    Returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: dict[tuple[str, str], list[SweepRow]] = {}
    for r in rows:
        if math.isclose(r.gamma_c0, gamma_c0) and (
            r.beta_abs == 0.0 or math.isclose(r.beta_abs, beta_abs)
        ):
            panels.setdefault((r.chain, r.resolve), []).append(r)
    if not panels:
        raise ValueError(f"no sweep rows at gamma_c0={gamma_c0!r}, beta_abs={beta_abs!r}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ncol = 2
    nrow = math.ceil(len(panels) / ncol)
    fig = Figure(figsize=(6.0 * ncol, 3.4 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    for k, ((chain, resolve), grp) in enumerate(panels.items()):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        for r in sorted(grp, key=lambda r: (r.beta_abs > 0, r.phase)):
            err = np.maximum(r.tracking.rel_error, 1e-17)
            layers = np.arange(err.size)
            if r.beta_abs == 0.0:
                ax.plot(layers, err, "k--", lw=1.2, label="β = 0 (plain)")
            else:
                deg = math.degrees(r.phase)
                style = "-" if r.phase >= 0 else ":"
                ax.plot(layers, err, style, marker="o", ms=2.5, lw=1.2, label=f"φ = {deg:+.0f}°")
        ax.set_yscale("log")
        what = "α once (NAMEx-Mom)" if resolve == "once" else "α every layer (NAMEx-Full-Mom)"
        ax.set_title(f"{chain}\n{what}", fontsize=9)
        ax.set_xlabel("MoE layer l")
        ax.set_ylabel("‖E_m − Ē_α‖ / ‖Ē_α‖")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Cross-layer tracking error (T2), γ·c₀ = {gamma_c0:g}, |β| = {beta_abs:g}")
    fig.savefig(out, dpi=100, format="png")
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def headline_table(rows: Sequence[SweepRow]) -> list[str]:
    """Markdown lines: per (chain, resolve) the ratio best real β (β = 0 included) / best φ ≠ 0
    of the score at each γ·c_0 and over the whole grid (> 1: a non-zero phase tracks better),
    the smallest score, the mean cosine of consecutive targets and how often the S19 ρ ranking
    picks the best |φ| (see :func:`verdicts`)."""
    vs = verdicts(rows)
    gcs = sorted({r.gamma_c0 for r in rows})
    head = (
        ["chain", "α", "cos(Ē⁽ˡ⁾, Ē⁽ˡ⁺¹⁾)", "min score"]
        + [f"real/φ≠0 at γc₀={g:g}" for g in gcs]
        + ["real/φ≠0 whole grid", "ρ picks best \\|φ\\|"]
    )
    body: list[list[str]] = []

    def ratio(sub: list[SweepRow]) -> str:
        real = [r.score for r in sub if r.phase == 0.0]
        other = [r.score for r in sub if r.phase != 0.0]
        if not real or not other or min(other) == 0:
            return "–"
        return f"{min(real) / min(other):.4g}"

    for chain in dict.fromkeys(r.chain for r in rows):
        for resolve in get_args(ResolveMode):
            crow = [r for r in rows if r.chain == chain and r.resolve == resolve]
            if not crow:
                continue
            cv = [v for v in vs if v.chain == chain and v.resolve == resolve]
            tcos = float(np.mean([r.tracking.target_cosine.mean() for r in crow]))
            cells = [chain, resolve, f"{tcos:.3f}", _fmt(min(r.score for r in crow))]
            cells += [ratio([r for r in crow if r.gamma_c0 == g]) for g in gcs]
            cells += [ratio(crow), f"{sum(v.spectral_agrees for v in cv)}/{len(cv)}"]
            body.append(cells)
    title = "## Does a non-zero phase help? (best real β / best φ ≠ 0; > 1 means it does)"
    return [title, "", format_table(head, body), ""]


def render_markdown(
    rows: Sequence[SweepRow],
    *,
    title: str = "Cross-layer tracking of the α-weighted target",
    notes: Sequence[str] = (),
) -> str:
    """Markdown: a per-chain table (rows: resolve × γ·c_0 × |β|; columns: score at β = 0 and at
    each |φ|, mean ρ per |φ|, best φ ≠ 0, gain) and a summary of :func:`verdicts`."""
    vs = verdicts(rows)
    lines = [f"# {title}", ""]
    lines += list(notes)
    if notes:
        lines.append("")
    absphases = sorted({abs(r.phase) for r in rows if r.beta_abs > 0})
    wins = [v for v in vs if v.gain > 1 + TIE_RTOL]
    lines += headline_table(rows)
    lines.append("## Summary")
    lines.append("")
    lines.append(
        f"- φ ≠ 0 beats φ = 0 (same |β|, γ·c₀) in {len(wins)} of {len(vs)} settings; "
        f"the S19 ρ ranking picks the best phase in {sum(v.spectral_agrees for v in vs)} of "
        f"{len(vs)}; max |score(φ) − score(−φ)| = {max((v.conj_gap for v in vs), default=0.0):.3g}."
    )
    chains = list(dict.fromkeys(r.chain for r in rows))
    for chain in chains:
        for resolve in get_args(ResolveMode):
            cv = [v for v in vs if v.chain == chain and v.resolve == resolve]
            if not cv:
                continue
            top = max(cv, key=lambda v: v.gain)
            crow = [r for r in rows if r.chain == chain and r.resolve == resolve]
            best_all = min(crow, key=lambda r: r.score)
            real = [r for r in crow if r.phase == 0.0]
            best_real = min(real, key=lambda r: r.score)
            nonzero = [r for r in crow if r.phase != 0.0]
            best_nz = min(nonzero, key=lambda r: r.score)
            tcos = float(np.mean([r.tracking.target_cosine.mean() for r in crow]))
            lines.append(
                f"- {chain}, α {resolve}: mean cos(Ē_α^(l), Ē_α^(l+1)) = {tcos:.3f}; "
                f"**best real β (incl. β=0) / best φ≠0 over the whole grid = "
                f"{_fmt(best_real.score)} / {_fmt(best_nz.score)} = "
                f"×{best_real.score / best_nz.score:.3g}**; best overall {_fmt(best_all.score)} at "
                f"γc₀={best_all.gamma_c0:g}, |β|={best_all.beta_abs:g}, "
                f"φ={math.degrees(best_all.phase):+.0f}°; best real β (incl. β=0) "
                f"{_fmt(best_real.score)} at γc₀={best_real.gamma_c0:g}, "
                f"|β|={best_real.beta_abs:g}; φ ≠ 0 wins {sum(v.gain > 1 + TIE_RTOL for v in cv)}"
                f"/{len(cv)}, largest gain ×{top.gain:.3f} at γc₀={top.gamma_c0:g}, "
                f"|β|={top.beta_abs:g}, φ={math.degrees(top.best_phase):+.0f}°."
            )
    lines.append("")
    head = (
        ["α", "γc₀", "γ", "\\|β\\|", "β=0"]  # pipes escaped inside a table cell
        + [f"φ=±{math.degrees(p):.0f}°" if p else "φ=0" for p in absphases]
        + [f"ρ̄ {'±' if p else ''}{math.degrees(p):.0f}°" for p in absphases]
        + ["best φ≠0", "gain", "fallbacks"]
    )
    for chain in chains:
        crow = [r for r in rows if r.chain == chain]
        body: list[list[str]] = []
        keys = dict.fromkeys((r.resolve, r.gamma_c0, r.beta_abs) for r in crow if r.beta_abs > 0)
        for resolve, gc, m in keys:
            grp = [r for r in crow if r.resolve == resolve and r.gamma_c0 == gc]
            ref = next(r for r in grp if r.beta_abs == 0.0)
            at = {r.phase: r for r in grp if r.beta_abs == m}
            v = next(
                (
                    x
                    for x in vs
                    if (x.chain, x.resolve, x.gamma_c0, x.beta_abs) == (chain, resolve, gc, m)
                ),
                None,
            )
            cells = [resolve, f"{gc:g}", f"{ref.gamma:.3g}", f"{m:g}", _fmt(ref.score)]
            cells += [_fmt(at[p].score) if p in at else "–" for p in absphases]
            cells += [_fmt(at[p].mean_rho) if p in at else "–" for p in absphases]
            if v is not None:
                mark = "**" if v.gain > 1 + TIE_RTOL else ""
                cells += [f"{math.degrees(v.best_phase):+.0f}°", f"{mark}×{v.gain:.3f}{mark}"]
            else:
                cells += ["–", "–"]
            cells.append(str(sum(r.fallbacks for r in at.values())))
            body.append(cells)
        lines += [f"## {chain}", "", format_table(head, body), ""]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CrosslayerReport:
    """What :func:`crosslayer_report` measured and wrote."""

    rows: list[SweepRow]
    verdicts: list[PhaseVerdict]
    markdown: str
    md_path: Path
    png_path: Path
    train_losses: list[float]
    seconds: float


def study_train_config(
    n_layer: int, out: str | Path, *, steps: int, seed: int, quick: bool, cache_dir: str
) -> DepthTrainConfig:
    """The training run behind a trained chain: ``namex train --preset tiny --method
    namex-full-mom --steps <steps> --batch-size 8`` with ``n_layer`` MoE layers, one CPU thread,
    metrics every step, one checkpoint at the end and one validation batch (not reported).
    quick: batch 2, one warm-up step and the first 300 000 characters of the corpus (tests)."""
    return DepthTrainConfig(
        preset="tiny",
        method="namex-full-mom",
        n_layer=n_layer,
        seed=seed,
        steps=steps,
        batch_size=2 if quick else 8,
        warmup=min(TrainConfig.warmup, steps) if not quick else 1,
        eval_every=0,
        final_eval_batches=1,
        log_every=1,
        ckpt_every=0,
        device="cpu",
        threads=1,
        progress=False,
        corpus_chars=300_000 if quick else 0,
        cache_dir=cache_dir,
        out=str(out),
    )


def crosslayer_report(
    md_path: str | Path,
    png_path: str | Path,
    *,
    quick: bool = False,
    train_steps: int = 300,
    seed: int = 0,
    token_cache: str | Path | None = None,
) -> CrosslayerReport:
    """Run the whole measurement and write the markdown table and the PNG.

    Chains: synthetic (L = 24, drift ω ∈ {0, 0.05, 0.2}), the tiny preset (L = 4) and a
    16-layer tiny-width model, each at initialisation and after ``train_steps`` steps of
    :func:`namex_ref.train.train` (NAMEx-Full-Mom, its default β = 0.5·e^{iπ/6}, γ = 1; see
    :func:`study_train_config`). Grid: γ·c_0 ∈ {0.25, 0.5, 1, 2}, |β| ∈ {0.1, 0.3, 0.5, 0.8},
    φ ∈ {0, ±π/12, ±π/6}. token_cache: the tokenizer / token-id cache (None: the trainer's
    default). quick: small synthetic chains, the tiny preset with L = 3, 3 training steps and
    one (|β|, γ·c_0) — for the tests (seconds, not minutes).
    """
    t0 = time.perf_counter()
    chains: list[Chain] = []
    notes: list[str] = []
    cache = str(token_cache) if token_cache is not None else ""
    depths = (3,) if quick else (4, 16)
    steps = 3 if quick else train_steps
    if quick:
        cfg = SweepConfig(moduli=(0.5,), gamma_c=(0.5,))
        for drift in (0.0, 0.2):
            chains.append(synthetic_chain(n_layers=6, shapes=((4, 4),), drift=drift, seed=seed))
        plot_gc, plot_m = 0.5, 0.5
    else:
        cfg = SweepConfig(gamma_c=(0.25, 0.5, 1.0, 2.0))
        for drift in (0.0, 0.05, 0.2):
            chains.append(synthetic_chain(n_layers=24, drift=drift, seed=seed))
        plot_gc, plot_m = 0.5, 0.3

    def label(n_layer: int) -> str:
        return "tiny (L=4)" if n_layer == 4 else f"tiny width, L={n_layer}"

    losses: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="crosslayer-") as tmp:
        runs = {
            n: study_train_config(
                n, Path(tmp) / f"L{n}", steps=steps, seed=seed, quick=quick, cache_dir=cache
            )
            for n in depths
        }
        for n, run in runs.items():
            torch.manual_seed(seed)  # the initialisation train() starts from
            chains.append(model_chain(MoEGPT(run.model_config()), f"{label(n)}, init"))
        for n, run in runs.items():
            model, losses[n] = train_model(run)
            chains.append(model_chain(model, f"{label(n)}, {steps} training steps"))
    if not quick:
        vocab = preset("tiny").vocab_size
        c_trained = [layer0_c(ch) for ch in chains[-2:]]
        notes.append(
            f"Trained chains: tiny preset (L = 4) and the same width with L = 16, NAMEx-Full-Mom "
            f"(|β| = 0.5, φ = π/6, γ = 1), trained by `namex_ref.train.train` as "
            f"`namex train --preset tiny --method namex-full-mom --steps {steps} --batch-size 8` "
            f"(AdamW lr 3e-3, warm-up 40, cosine to 3e-4, weight decay 0.1, 8×128 BPE-{vocab} "
            f"tokens of the built-in corpus per step): cross-entropy {losses[4][0]:.3f} → "
            f"{np.mean(losses[4][-20:]):.3f} (L = 4) and {losses[16][0]:.3f} → "
            f"{np.mean(losses[16][-20:]):.3f} (L = 16), means of the last 20 steps. The γ = 1 "
            f"they were trained with is γc₀ = {c_trained[0]:.3g} and {c_trained[1]:.3g} "
            f"(at initialisation γc₀ = {layer0_c(chains[3]):.3g}): the γc < 1 regime in which "
            "S19 favours a non-real β for frozen α."
        )
    rows: list[SweepRow] = []
    for ch in chains:
        rows.extend(sweep(ch, cfg))
    notes = [
        "Produced by `python studies/crosslayer.py` "
        f"({'quick' if quick else 'full'} mode). Metric (T2): err_l = ‖E_m^(l) − Ē_α^(l)‖ / "
        "‖Ē_α^(l)‖ with Ē_α^(l) = Σα_iE_i^(l)/Σα_i, the fixed point of the frozen-α "
        "linearisation ΔE = c(Ē_α − E_m), c = Σα_i (docs/math.md §4; `namex_ref.tracking`). "
        f"Score: mean err_l over layers l ≥ {cfg.first_scored_layer} (layers 0, 1 do not depend "
        "on β). ρ̄: mean over the same layers of ρ(R) for H = c_l I (S19). γ = (γc₀)/c₀ with "
        "c₀ = Σα at layer 0. α once = NAMEx-Mom, α interval = NAMEx-Full-Mom (α re-solved "
        "every Δl = 1 layer; the propagation of `namex_ref.merging.plan.propagate`, ridge "
        "policy, 20 Newton steps). "
        "±φ give bit-identical chains (conjugate symmetry), so each column holds both. "
        "gain = score(φ=0)/score(best φ≠0) at the same |β| and γc₀; bold when > 1. The "
        "decisive number per chain is the bold ratio in the summary: the best real β (β = 0 "
        "included) against the best φ ≠ 0 over the whole grid.",
        "Reading ρ̄ in the α-interval rows: re-solving α at every layer fixes ‖ΔE‖ = √N (S7), "
        "so c_l = Σα_i grows as E_m approaches Ē_α and γc_l leaves the range where H = c_l I "
        "predicts anything (ρ̄ > 1 without divergence); the chain then steps around the target "
        "with a step of fixed length γ√N (the period-2 zig-zag in the plot).",
        *notes,
        f"Wall time {time.perf_counter() - t0:.0f} s on this machine.",
    ]
    md = render_markdown(rows, notes=notes)
    md_out = Path(md_path)
    md_out.parent.mkdir(parents=True, exist_ok=True)
    md_out.write_text(md, encoding="utf-8")
    png = plot_tracking(rows, png_path, gamma_c0=plot_gc, beta_abs=plot_m)
    return CrosslayerReport(
        rows=rows,
        verdicts=verdicts(rows),
        markdown=md,
        md_path=md_out,
        png_path=png,
        train_losses=losses[depths[0]],
        seconds=time.perf_counter() - t0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python studies/crosslayer.py [--quick] [--out results] [--steps 300] [--seed 0]
    [--cache-dir DIR]``: writes ``crosslayer.md`` and ``crosslayer.png`` in ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument("--steps", type=int, default=300, help="training steps per trained chain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="token cache (default: the trainer's)")
    args = p.parse_args(argv)
    rep = crosslayer_report(
        args.out / "crosslayer.md", args.out / "crosslayer.png", quick=args.quick,
        train_steps=args.steps, seed=args.seed, token_cache=args.cache_dir,
    )
    print(f"wrote {rep.md_path} and {rep.png_path} ({rep.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
