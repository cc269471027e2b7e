"""A real three-task example on the built-in corpus: equal weighting vs Nash-MTL (CCP, Newton).

``namex mtl [--steps N] [--out runs/mtl] [--quick]`` (or
``python -m namex_ref.benchmarks.mtl_report``) writes ``<out>/mtl.md`` and ``<out>/mtl.png``;
the report and the command are in :mod:`namex_ref.benchmarks.mtl_report`. The weighting itself
is :class:`namex_ref.mtl.NashMTL`.

Data: the package's built-in corpus (:func:`namex_ref.data.load_builtin_corpus`) tokenised by a
byte-level BPE trained on it (:func:`namex_ref.data.train_tokenizer`). The token stream is cut
into ``n_parts`` contiguous parts of equal length; the last 5 % of every part is held out.

One shared trunk (token and position embeddings, one causal transformer layer) feeds three
heads, three tasks on three loss scales:

1. ``next-token``: cross-entropy of the next token (≈ log V ≈ 6 at the start);
2. ``part``: which of the ``n_parts`` parts of the corpus the window comes from (cross-entropy
   of the mean-pooled state, ≈ log 4 ≈ 1.4);
3. ``position``: the window's position in the corpus in percent, regressed with a squared
   error (≈ 10³ at the start) — the auxiliary loss on a different scale.

Three copies of the same initial model train on the same batches with Adam: equal weights
(Σ ℓ_i), Nash-MTL with the authors' CCP (``solver="ccp"``), and Nash-MTL with Newton. The three
runs are stepped round-robin in one process (the order rotates every step), so the per-step
time ratios are paired and measured in the same run (the benchmarks' convention). Each
weight update's Gram matrix is kept, and afterwards both solvers are timed on the same Grams
and compared (α agreement by the residual rule where the CCP converged, residuals otherwise).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from namex_ref.checks import require_int, require_real
from namex_ref.mtl.nash_mtl import NashMTL, NashMTLWarning
from namex_ref.nash.newton import solve_newton
from namex_ref.nash.oracles import solve_ccp
from namex_ref.nash.problem import normalise_gram

__all__ = [
    "METHODS",
    "QUICK",
    "TASKS",
    "ExampleConfig",
    "ExampleResult",
    "TinyMultiTask",
    "run_example",
]

#: The weightings compared, in table order.
METHODS = ("equal", "nash-mtl ccp", "nash-mtl newton")
#: The three tasks, in loss order.
TASKS = ("next-token", "part", "position")


@dataclass(frozen=True)
class ExampleConfig:
    """Settings of the example (defaults: the committed ``results/mtl.md`` run).

    steps: training steps per method; batch_size × seq_len tokens per batch; d_model: width;
    vocab_size: BPE vocabulary; n_parts: classes of the "part" task; position_scale: the
    position target's scale (100: percent); lr: Adam's learning rate; max_norm: Nash-MTL's
    clipping; corpus_chars: use only the first characters of the corpus (None: all);
    eval_every: steps between validation evaluations; compare_every: every how many weight
    updates of the CCP run the two solvers are re-run and compared; seed: initialisation and
    batches.
    """

    steps: int = 100
    batch_size: int = 16
    seq_len: int = 48
    d_model: int = 64
    vocab_size: int = 512
    n_parts: int = 4
    position_scale: float = 100.0
    lr: float = 3e-3
    max_norm: float = 1.0
    corpus_chars: int | None = None
    eval_every: int = 25
    compare_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("steps", self.steps, low=1)
        require_int("batch_size", self.batch_size, low=1)
        require_int("seq_len", self.seq_len, low=2)
        require_int("d_model", self.d_model, low=4)
        if self.d_model % 4:
            raise ValueError(f"d_model must be a multiple of 4 (4 heads), got {self.d_model}")
        require_int("vocab_size", self.vocab_size, low=256)
        require_int("n_parts", self.n_parts, low=2)
        require_real("position_scale", self.position_scale, low=0, low_open=True)
        require_real("lr", self.lr, low=0, low_open=True)
        require_real("max_norm", self.max_norm)
        if self.corpus_chars is not None:
            require_int("corpus_chars", self.corpus_chars, low=10_000)
        require_int("eval_every", self.eval_every, low=1)
        require_int("compare_every", self.compare_every, low=1)
        require_int("seed", self.seed, low=0)


class TinyMultiTask(nn.Module):
    """Shared trunk (embeddings + one causal transformer layer) and three heads (next token,
    corpus part, position). :meth:`shared_parameters` is what Nash-MTL bargains over."""

    def __init__(self, vocab: int, seq_len: int, d: int, n_parts: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        self.block = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.lm = nn.Linear(d, vocab)
        self.part = nn.Linear(d, n_parts)
        self.where = nn.Linear(d, 1)
        mask = torch.triu(torch.full((seq_len, seq_len), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask)

    def shared_parameters(self) -> list[Tensor]:
        """The trunk's parameters (embeddings, transformer layer, final norm)."""
        return [*self.tok.parameters(), self.pos, *self.block.parameters(),
                *self.norm.parameters()]

    def losses(self, x: Tensor, y: Tensor, part: Tensor, position: Tensor) -> Tensor:
        """(3,) task losses of a batch: next-token CE, part CE, position squared error."""
        mask = self.get_buffer("mask")
        h = self.norm(self.block(self.tok(x) + self.pos[: x.shape[1]], src_mask=mask,
                                 is_causal=True))
        pooled = h.mean(1)
        lm = nn.functional.cross_entropy(self.lm(h).flatten(0, 1), y.flatten())
        cls = nn.functional.cross_entropy(self.part(pooled), part)
        reg = nn.functional.mse_loss(self.where(pooled)[:, 0], position)
        return torch.stack([lm, cls, reg])


@dataclass
class _Data:
    ids: Tensor
    part_len: int
    train_ranges: list[tuple[int, int]]
    val_ranges: list[tuple[int, int]]
    vocab: int


def _prepare(cfg: ExampleConfig) -> _Data:
    from namex_ref.data import encode_to_tensor, load_builtin_corpus, train_tokenizer

    text = load_builtin_corpus()
    if cfg.corpus_chars is not None:
        text = text[: cfg.corpus_chars]
    tok = train_tokenizer(text, cfg.vocab_size)
    ids = encode_to_tensor(tok, text)
    part_len = ids.numel() // cfg.n_parts
    span = cfg.seq_len + 1
    train, val = [], []
    for p in range(cfg.n_parts):
        lo, hi = p * part_len, (p + 1) * part_len
        cut = hi - max(span, part_len // 20)
        if cut - lo < span:
            raise ValueError(
                f"the corpus is too short for {cfg.n_parts} parts of windows of {span} tokens; "
                "use more corpus_chars or a shorter seq_len."
            )
        train.append((lo, cut - span))
        val.append((cut, hi - span))
    return _Data(ids, part_len, train, val, tok.vocab_size)


def _sample(data: _Data, ranges: list[tuple[int, int]], n: int, seq_len: int, scale: float,
            gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """n windows drawn uniformly from ``ranges`` (a part chosen uniformly, then a start):
    inputs (n, T), next tokens (n, T), part labels (n,), position targets (n,)."""
    parts = torch.randint(len(ranges), (n,), generator=gen)
    lo = torch.tensor([ranges[int(p)][0] for p in parts])
    hi = torch.tensor([ranges[int(p)][1] for p in parts])
    starts = lo + (torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo)).long()
    idx = starts[:, None] + torch.arange(seq_len + 1)
    win = data.ids[idx]
    position = scale * starts.to(torch.float32) / data.ids.numel()
    return win[:, :-1], win[:, 1:], parts, position


@dataclass
class _Run:
    """One weighting's model, optimiser and records."""

    name: str
    model: TinyMultiTask
    opt: torch.optim.Optimizer
    weighting: NashMTL | None
    times: list[float] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)
    alphas: list[list[float]] = field(default_factory=list)
    grams: list[Tensor] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    val: list[tuple[int, list[float]]] = field(default_factory=list)
    warnings: int = 0

    def step(self, batch: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        losses = self.model.losses(*batch)
        if self.weighting is None:
            losses.sum().backward()  # type: ignore[no-untyped-call]
            alpha: Tensor | None = None
            gram = None
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NashMTLWarning)
                _, extra = self.weighting.backward(losses, self.model.shared_parameters())
            self.warnings += sum(issubclass(w.category, NashMTLWarning) for w in caught)
            alpha, gram = extra["weights"], extra["gram"]
            self.iterations.append(int(extra["iterations"]))
        self.opt.step()
        self.times.append(time.perf_counter() - t0)
        self.losses.append(losses.detach().tolist())
        if alpha is not None:
            self.alphas.append(alpha.tolist())
        if gram is not None:
            self.grams.append(gram)


@dataclass(frozen=True)
class ExampleResult:
    """What :func:`run_example` measured (also written as markdown and a plot).

    step_times: per method, seconds of every training step (forward, weighting, backward,
    Adam). final_val: per method, the validation loss of each task at the end. alphas: per
    Nash-MTL method, α at every step. agreement: Newton vs CCP on the CCP run's Grams (see
    :func:`run_example`). solve_times: per solver, seconds of each solve on those Grams.
    warnings: per Nash-MTL method, how many NashMTLWarnings (failed solves) were raised.
    iterations: per Nash-MTL method, the solver's iterations at every update (Newton steps,
    CCP convex solves).
    """

    config: ExampleConfig
    step_times: dict[str, list[float]]
    train_losses: dict[str, list[list[float]]]
    val_losses: dict[str, list[tuple[int, list[float]]]]
    alphas: dict[str, list[list[float]]]
    agreement: dict[str, Any]
    solve_times: dict[str, list[float]]
    warnings: dict[str, int]
    iterations: dict[str, list[int]]
    seconds: float


def _evaluate(model: TinyMultiTask, batches: list[tuple[Tensor, Tensor, Tensor, Tensor]],
              ) -> list[float]:
    with torch.no_grad():
        total = torch.stack([model.losses(*b) for b in batches]).mean(0)
    return [float(v) for v in total]


def _compare_solvers(grams: Sequence[Tensor], alpha_ccp: Sequence[Sequence[float]],
                     every: int = 1) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Newton and the CCP on the Grams of the CCP run, each warm-started from the α the CCP
    run used before that update (as in training), timed interleaved. ``alpha_ccp[k]`` is the
    CCP run's α before update k (ones first), so the CCP re-solve repeats training exactly."""
    rows: list[dict[str, float | bool]] = []
    times: dict[str, list[float]] = {"newton": [], "ccp": []}
    for k in range(0, len(grams), every):
        K = grams[k]
        prev = torch.tensor(alpha_ccp[k], dtype=torch.float64)
        order = ("newton", "ccp") if k % 2 == 0 else ("ccp", "newton")
        sols = {}
        for name in order:
            t0 = time.perf_counter()
            if name == "newton":
                sols[name] = solve_newton(K, alpha0=prev)
            else:
                sols[name] = solve_ccp(K, alpha0=prev)
            times[name].append(time.perf_counter() - t0)
        n, c = sols["newton"], sols["ccp"]
        rn, rc = float(n.residual), float(c.residual)
        # S9: the same bargain on unit-norm task gradients, K̂ = DKD, α = Dα̂ (scale-free
        # residual), for the CCP, whose ECOS sub-problems suffer from the raw scales
        Kh, d = normalise_gram(K)
        ch = solve_ccp(Kh, alpha0=prev / d)
        rh = float(ch.residual)
        rows.append({
            "newton_residual": rn, "ccp_residual": rc, "ccp_converged": bool(c.converged),
            "rel_diff": float(((n.alpha - c.alpha).abs() / n.alpha).max()),
            "bound": 2 * math.sqrt(K.shape[0]) * (rn + rc) + 1e-12,
            "reproduced": c.alpha.tolist() == list(alpha_ccp[k + 1]),
            "unit_residual": rh, "unit_converged": bool(ch.converged),
            "unit_rel_diff": float(((n.alpha - d * ch.alpha).abs() / n.alpha).max()),
            "unit_bound": 2 * math.sqrt(K.shape[0]) * (rn + rh) + 1e-12,
        })
    conv = [r for r in rows if r["ccp_converged"]]
    agreement = {
        "problems": len(rows),
        "ccp_converged": len(conv),
        "max_newton_residual": max((float(r["newton_residual"]) for r in rows), default=0.0),
        "ccp_residuals": [float(r["ccp_residual"]) for r in rows],
        "max_rel_diff_converged": max((float(r["rel_diff"]) for r in conv), default=math.nan),
        "all_within_bound": all(float(r["rel_diff"]) <= float(r["bound"]) for r in conv),
        "ccp_reproduced": sum(bool(r["reproduced"]) for r in rows),
        "unit_converged": sum(bool(r["unit_converged"]) for r in rows),
        "unit_residuals": [float(r["unit_residual"]) for r in rows],
        "unit_max_rel_diff": max((float(r["unit_rel_diff"]) for r in rows
                                  if r["unit_converged"]), default=math.nan),
        "unit_within_bound": all(float(r["unit_rel_diff"]) <= float(r["unit_bound"])
                                 for r in rows if r["unit_converged"]),
        "max_rel_diff_unconverged": max(
            (float(r["rel_diff"]) for r in rows if not r["ccp_converged"]), default=math.nan),
    }
    return agreement, times


def run_example(cfg: ExampleConfig | None = None, *, log: bool = False) -> ExampleResult:
    """Train the three weightings round-robin on the same batches and measure them.

    Returns an :class:`ExampleResult`; nothing is written (see :func:`write_report`).
    """
    cfg = cfg or ExampleConfig()
    t_start = time.perf_counter()
    data = _prepare(cfg)
    torch.manual_seed(cfg.seed)
    base = TinyMultiTask(data.vocab, cfg.seq_len, cfg.d_model, cfg.n_parts)
    runs: list[_Run] = []
    for name in METHODS:
        model = copy.deepcopy(base)
        solver = {"equal": None, "nash-mtl ccp": "ccp", "nash-mtl newton": "newton"}[name]
        weighting = None if solver is None else NashMTL(
            3, "cpu", max_norm=cfg.max_norm, solver="ccp" if solver == "ccp" else "newton",
            on_failure="use" if solver == "ccp" else "keep")
        runs.append(_Run(name, model, torch.optim.Adam(model.parameters(), lr=cfg.lr),
                         weighting))
    gen = torch.Generator().manual_seed(cfg.seed)
    val_gen = torch.Generator().manual_seed(cfg.seed + 1)
    val_batches = [_sample(data, data.val_ranges, cfg.batch_size, cfg.seq_len,
                           cfg.position_scale, val_gen) for _ in range(8)]
    for step in range(cfg.steps):
        batch = _sample(data, data.train_ranges, cfg.batch_size, cfg.seq_len,
                        cfg.position_scale, gen)
        for j in range(len(runs)):
            runs[(step + j) % len(runs)].step(batch)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            for r in runs:
                r.val.append((step + 1, _evaluate(r.model, val_batches)))
            if log:
                print(f"step {step + 1}: " + "; ".join(
                    f"{r.name} " + ", ".join(f"{v:.3g}" for v in r.val[-1][1]) for r in runs))
    ccp = runs[1]
    agreement, solve_times = _compare_solvers(ccp.grams, [[1.0] * 3, *ccp.alphas],
                                              cfg.compare_every)
    return ExampleResult(
        cfg,
        {r.name: r.times for r in runs},
        {r.name: r.losses for r in runs},
        {r.name: r.val for r in runs},
        {r.name: r.alphas for r in runs if r.weighting is not None},
        agreement,
        solve_times,
        {r.name: r.warnings for r in runs if r.weighting is not None},
        {r.name: r.iterations for r in runs if r.weighting is not None},
        time.perf_counter() - t_start,
    )


#: The seconds-long smoke configuration of ``namex mtl --quick`` (used by the tests).
QUICK = ExampleConfig(steps=4, batch_size=4, seq_len=16, d_model=16, corpus_chars=200_000,
                      compare_every=1,
                      eval_every=2)
