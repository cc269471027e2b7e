"""A real three-task example on the built-in corpus: equal weighting vs Nash-MTL (CCP, Newton).

``namex mtl [--steps N] [--out results] [--quick]`` (or ``python -m namex_ref.mtl.example``)
writes ``<out>/mtl.md`` and ``<out>/mtl.png``.

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

import argparse
import copy
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
    "TASKS",
    "ExampleConfig",
    "ExampleResult",
    "TinyMultiTask",
    "main",
    "register",
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


def _paired(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def overhead_table(res: ExampleResult) -> str:
    """Markdown table: median step time per weighting and paired ratios (same run)."""
    from namex_ref.benchmarks.common import fmt_ratio, fmt_seconds

    t = res.step_times
    eq, nw = t["equal"], t["nash-mtl newton"]
    lines = ["| weighting | median step | × equal (paired) | × Newton-Nash-MTL (paired) |",
             "|---|---:|---:|---:|"]
    for name in METHODS:
        lines.append(f"| {name} | {fmt_seconds(statistics.median(t[name]))} | "
                     f"{fmt_ratio(_paired(t[name], eq))} | {fmt_ratio(_paired(t[name], nw))} |")
    st = res.solve_times
    if st["newton"]:
        lines += [
            "",
            "| solve only (same Grams, interleaved) | median | × Newton (paired) |",
            "|---|---:|---:|",
            f"| Newton (warm start) | {fmt_seconds(statistics.median(st['newton']))} | 1 |",
            f"| CCP (ECOS via cvxpy) | {fmt_seconds(statistics.median(st['ccp']))} | "
            f"{fmt_ratio(_paired(st['ccp'], st['newton']))} |",
        ]
    return "\n".join(lines)


def loss_table(res: ExampleResult) -> str:
    """Markdown table: final validation loss of every task per weighting."""
    lines = ["| weighting | " + " | ".join(f"{t} (val)" for t in TASKS) + " |",
             "|---|" + "---:|" * len(TASKS)]
    for name in METHODS:
        vals = res.val_losses[name][-1][1]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4g}" for v in vals) + " |")
    return "\n".join(lines)


def agreement_text(res: ExampleResult) -> str:
    """Newton vs CCP on the CCP run's Grams, as markdown bullets."""
    a = res.agreement
    cr = sorted(a["ccp_residuals"]) or [math.nan]
    ur = sorted(a["unit_residuals"]) or [math.nan]
    every = res.config.compare_every
    which = "every weight update" if every == 1 else f"every {every}th weight update"
    return "\n".join([
        f"- Grams compared: {a['problems']} ({which} of the CCP run; both solvers "
        "warm-started from the α the CCP run had then)",
        f"- CCP converged by the project's rule (its stopping rule fired and residual "
        f"≤ 1e-5): {a['ccp_converged']} of {a['problems']}",
        f"- CCP residual max_i |α_i(Kα)_i − 1|: median {statistics.median(cr):.2e}, "
        f"max {cr[-1]:.2e}",
        f"- Newton residual: max {a['max_newton_residual']:.2e}",
        f"- the CCP re-solved on the kept Grams returns the α it gave in training, bit for bit: "
        f"{a['ccp_reproduced']} of {a['problems']}",
        (f"- where the CCP converged: max relative |α_Newton − α_CCP| = "
         f"{a['max_rel_diff_converged']:.2e}, within the residual rule 2√N(r₁ + r₂): "
         f"{'yes' if a['all_within_bound'] else 'NO'}") if a["ccp_converged"] else
        "- where the CCP converged: nowhere on the raw Grams, so the agreement is checked on "
        "the unit-diagonal Grams below (and in tests/test_mtl.py on a model where it converges)",
        f"- where it did not: max relative |α_Newton − α_CCP| = "
        f"{a['max_rel_diff_unconverged']:.2e}",
        f"- the CCP on the unit-diagonal K̂ = DKD of the same Grams (S9: α = Dα̂; what the "
        f"authors' code does not do): converged {a['unit_converged']} of {a['problems']}, "
        f"residual median {statistics.median(ur):.2e}, max {ur[-1]:.2e}; where converged, max "
        f"relative |α_Newton − Dα̂_CCP| = {a['unit_max_rel_diff']:.2e}, within the residual "
        f"rule: {'yes' if a['unit_within_bound'] else 'NO'}",
        "- NashMTLWarnings during training: " + ", ".join(
            f"{k} {v}" for k, v in res.warnings.items()),
        "- iterations per weight update (median, max): " + ", ".join(
            f"{k} {statistics.median(v):g}, {max(v)}" for k, v in res.iterations.items() if v)
        + " (Newton steps from the warm start; CCP convex solves, cap 20)",
    ])


def plot(res: ExampleResult, path: Path) -> Path:
    """α trajectories (both Nash-MTL runs) and each task's training loss per weighting."""
    from namex_ref.benchmarks.common import new_figure, save_figure

    fig, axes = new_figure(4, width=3.6, height=3.0)
    ax = axes[0]
    colours = ("C0", "C1", "C2")
    for name, style in (("nash-mtl newton", "-"), ("nash-mtl ccp", "--")):
        al = res.alphas[name]
        for i, task in enumerate(TASKS):
            ax.plot([a[i] for a in al], style, color=colours[i],  # type: ignore[attr-defined]
                    label=f"{task} ({name.split()[-1]})", lw=1)
    ax.set_yscale("log")  # type: ignore[attr-defined]
    ax.set_xlabel("step")  # type: ignore[attr-defined]
    ax.set_title("α (solid Newton, dashed CCP)", fontsize=9)  # type: ignore[attr-defined]
    ax.legend(fontsize=6)  # type: ignore[attr-defined]
    for i, task in enumerate(TASKS):
        ax = axes[i + 1]
        for j, name in enumerate(METHODS):
            ys = [row[i] for row in res.train_losses[name]]
            w = max(1, len(ys) // 20)
            sm = [statistics.fmean(ys[max(0, k - w + 1): k + 1]) for k in range(len(ys))]
            ax.plot(sm, color=f"C{j + 3}", label=name, lw=1)  # type: ignore[attr-defined]
        if i == 2:
            ax.set_yscale("log")  # type: ignore[attr-defined]
        ax.set_title(f"{task} loss (train, smoothed)", fontsize=9)  # type: ignore[attr-defined]
        ax.set_xlabel("step")  # type: ignore[attr-defined]
        ax.legend(fontsize=6)  # type: ignore[attr-defined]
    return save_figure(fig, path)


def write_report(res: ExampleResult, out: str | Path) -> tuple[Path, str]:
    """Write ``out/mtl.md`` and ``out/mtl.png``; return (markdown path, overhead table)."""
    from namex_ref.benchmarks.common import environment, markdown_document, write_text_atomic

    out = Path(out)
    png = plot(res, out / "mtl.png")
    cfg = res.config
    table = overhead_table(res)
    notes = [
        "Produced by `namex mtl --out results` (module `namex_ref/mtl/example.py`). Three tasks "
        "on the built-in corpus share one trunk (embeddings + one causal transformer layer): "
        "next-token cross-entropy, which of the "
        f"{cfg.n_parts} contiguous parts of the corpus a window comes from (cross-entropy), and "
        f"the window's position in the corpus ×{cfg.position_scale:g} (squared error, ~10³ "
        "at the start: a loss on a different scale). Three copies of one initial model train "
        "on the same batches with Adam: equal weights, Nash-MTL with the authors' CCP and "
        "Nash-MTL with Newton (`namex_ref.mtl.NashMTL`, max_norm "
        f"{cfg.max_norm:g}, a weight update every step). The runs are stepped round-robin in "
        "one process (rotating order), so each ratio is the median over steps of the paired "
        "per-step ratio, measured in this run; absolute times are indicative only (shared "
        "2-core CPU, 1 torch thread).",
        "",
        f"Settings: {', '.join(f'{k}={v}' for k, v in asdict(cfg).items())}; total "
        f"{res.seconds:.0f} s.",
    ]
    text = markdown_document(
        "Nash-MTL on the built-in corpus: equal weighting vs CCP vs Newton",
        environment(), notes,
        [("Per-step overhead of each weighting", table),
         ("Each task's validation loss at the end", loss_table(res)),
         ("Newton vs the CCP on the same Grams (S4, S6)", agreement_text(res)),
         ("Plot", f"![α trajectories and task losses]({png.name})")],
    )
    path = write_text_atomic(out / "mtl.md", text)
    return path, table


QUICK = ExampleConfig(steps=4, batch_size=4, seq_len=16, d_model=16, corpus_chars=200_000,
                      compare_every=1,
                      eval_every=2)


def _cmd_mtl(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else ExampleConfig(steps=args.steps, seed=args.seed)
    print(f"namex mtl: {cfg.steps} steps × 3 weightings on the built-in corpus ...", flush=True)
    res = run_example(cfg, log=not args.quick)
    path, table = write_report(res, args.out)
    print(table)
    print(agreement_text(res))
    print(f"wrote {path} ({res.seconds:.0f} s)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``mtl`` options (shared by ``namex mtl`` and :func:`main`)."""
    p.add_argument("--steps", type=int, default=ExampleConfig.steps, help="steps per method")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and the batches")
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for mtl.md/.png")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``namex mtl`` to the ``namex`` parser."""
    m = sub.add_parser("mtl", help="three-task example: equal vs CCP vs Newton Nash-MTL")
    add_arguments(m)
    m.set_defaults(func=_cmd_mtl)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m namex_ref.mtl.example``)."""
    p = argparse.ArgumentParser(prog="namex mtl")
    add_arguments(p)
    return _cmd_mtl(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
