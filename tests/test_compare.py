"""``compare``: mean ± 95% Student-t CI per method, markdown table, plot, resumable runs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import namex_ref.train.comparison as compare_mod
from namex_ref.cli import main
from namex_ref.train import TrainConfig, TrainResult, compare, mean_ci, read_result
from namex_ref.train.cli import parse_methods, parse_seeds
from namex_ref.train.comparison import markdown_table, plot_compare, plot_title, summarize

# Student t with 2 degrees of freedom has the closed-form quantile t_p = (2p − 1)/√(2p(1 − p)),
# an oracle independent of scipy: t_{0.975, 2} = 0.95/√0.04875 ≈ 4.303 (printed tables).
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def test_mean_ci_known_numbers() -> None:
    mean, hw = mean_ci([10.0, 12.0, 11.0])  # mean 11, s = 1, n = 3
    assert mean == 11.0
    assert hw == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-12)  # t · s/√n, s = 1
    assert hw == pytest.approx(2.484, abs=5e-4)


@pytest.mark.parametrize("values", [[1.0, 2.0], [3.5, 3.1, 4.2, 5.0, 2.2], [100.0, 100.5, 99.0]])
def test_mean_ci_matches_scipy_t_interval(values: list[float]) -> None:
    mean, hw = mean_ci(values)
    sem = stats.sem(values)  # s / sqrt(n), ddof = 1
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values), scale=sem)
    assert mean - hw == pytest.approx(lo, rel=1e-12)
    assert mean + hw == pytest.approx(hi, rel=1e-12)


@given(st.lists(st.floats(1.0, 1e4), min_size=2, max_size=12),
       st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_mean_ci_property_against_scipy(values: list[float], confidence: float) -> None:
    mean, hw = mean_ci(values, confidence)
    sem = stats.sem(values)
    if not sem > 0:
        assert hw == pytest.approx(0.0, abs=1e-9 * abs(mean))
        return
    lo, hi = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    # fsum vs numpy's pairwise sums: agreement to a few ulps of the values' scale
    assert (mean - hw, mean + hw) == pytest.approx((lo, hi), rel=1e-9, abs=1e-9 * mean)


def test_mean_ci_edge_cases() -> None:
    mean, hw = mean_ci([7.0])
    assert mean == 7.0 and math.isnan(hw)
    assert mean_ci([2.0, 2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.5)


def _fake(method: str, seed: int, ppl: float, sps: float = 0.05) -> TrainResult:
    return TrainResult(
        config=TrainConfig(method=method, seed=seed), out=f"x/{method}/{seed}", steps=1,
        valid_loss=math.log(ppl), valid_ppl=ppl, unigram_ppl=500.0, train_loss=5.0,
        seconds_per_step=sps, train_seconds=1.0, fallbacks=0, n_params=1, device="cpu",
        world_size=1,
    )


def test_table_from_known_numbers(tmp_path: Path) -> None:
    runs = [_fake("smoe", 2, 11.0), _fake("smoe", 0, 10.0), _fake("smoe", 1, 12.0),
            _fake("namex", 0, 9.0, 0.1)]
    summaries = summarize(runs)
    assert [s.method for s in summaries] == ["smoe", "namex"]
    assert summaries[0].seeds == (0, 1, 2) and summaries[0].ppl == (10.0, 12.0, 11.0)
    table = markdown_table(summaries, unigram_ppl=500.0)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert ["smoe", "3", "11.00 ± 2.48", "10.00, 12.00, 11.00", "0.050"] in rows
    assert ["namex", "1", "9.00", "9.00", "0.100"] in rows  # no CI from one seed
    assert "500.0" in table
    png = plot_compare(summaries, tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_seed_and_method_lists() -> None:
    assert parse_seeds("0,1,2") == parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("3, 5-6") == [3, 5, 6]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("a")
    assert parse_methods("smoe, namex") == ["smoe", "namex"]
    assert len(parse_methods("all")) == 9
    with pytest.raises(ValueError, match="--methods"):
        compare(TrainConfig(), ["moe"], [0], "unused")
    with pytest.raises(ValueError, match="repeat"):
        compare(TrainConfig(), ["smoe", "smoe"], [0], "unused")


QUICK = ["--steps", "2", "--batch-size", "2", "--warmup", "1", "--log-every", "1",
         "--eval-every", "2", "--eval-batches", "1", "--ckpt-every", "2",
         "--final-eval-batches", "2", "--device", "cpu", "--threads", "1", "--no-progress",
         "--corpus-chars", "300000"]


def test_compare_end_to_end_and_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "smear,namex", "--seeds", "0,1", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), *QUICK]
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads is restored after each run
    printed = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in printed.splitlines()]
    assert ["smear", "2"] in [c[:2] for c in cells] and ["namex", "2"] in [c[:2] for c in cells]
    for name in ("results.md", "summary.json", "compare.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert [m["method"] for m in summary["methods"]] == ["smear", "namex"]
    assert len(summary["runs"]) == 4
    first = read_result(out / "namex" / "seed1")
    assert first is not None and first.config.method == "namex" and first.config.seed == 1

    # Finished runs are not trained again; an unfinished one is resumed from its checkpoint.
    (out / "smear" / "seed0" / "result.json").unlink()
    calls: list[tuple[str, int, bool]] = []
    real_train = compare_mod.train

    def spy(cfg: TrainConfig, *, resume: Any = False) -> Any:
        calls.append((cfg.method, cfg.seed, resume))
        return real_train(cfg, resume=resume)

    monkeypatch.setattr(compare_mod, "train", spy)
    assert main(argv) == 0
    assert calls == [("smear", 0, "if-present")]
    again = read_result(out / "namex" / "seed1")
    assert again == first
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header + 2 methods
    assert "n/a" not in rows[1]  # the resumed run kept its timing (checkpoint counters)


def test_parallel_jobs_give_the_sequential_results(tmp_path: Path) -> None:
    """compare(jobs=2) trains in spawned processes (one thread each) and gets the same numbers
    as training in this process, bit for bit (same kernels, same thread count)."""
    from namex_ref.cli import build_parser
    from namex_ref.train import config_from_args, train

    args = build_parser().parse_args(["train", "--cache-dir", str(tmp_path / "cache"), *QUICK])
    base = config_from_args(args)
    res = compare(base, ["smear", "namex"], [0], tmp_path / "par", jobs=2, log=None)
    assert [r.config.method for r in res.runs] == ["smear", "namex"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in res.runs:
            seq = train(dataclasses.replace(r.config, out=str(tmp_path / "seq" / r.config.method)))
            assert seq.valid_loss == r.valid_loss, r.config.method
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="--jobs"):
        compare(base, ["smear"], [0], tmp_path / "bad", jobs=0)

    # A second invocation (make demo run twice) reuses both runs and keeps the caveat and the
    # timing_jobs of the invocation that measured them, even when it asks for --jobs 1.
    first_table = (tmp_path / "par" / "results.md").read_text()
    assert "measured under --jobs 2" in first_table
    again = compare(base, ["smear", "namex"], [0], tmp_path / "par", jobs=1, log=None)
    assert again.table == first_table
    summary = json.loads((tmp_path / "par" / "summary.json").read_text())
    assert summary["timing_jobs"] == 2
    assert [r["timing_jobs"] for r in summary["runs"]] == [2, 2]
    # A folder written before the per-run timing files: the old summary's timing_jobs is kept.
    for r in res.runs:
        (Path(r.out) / compare_mod.TIMING_NAME).unlink()
    compare(base, ["smear", "namex"], [0], tmp_path / "par", jobs=1, log=None)
    assert "measured under --jobs 2" in (tmp_path / "par" / "results.md").read_text()


def test_plot_title_says_what_was_drawn() -> None:
    """n = 1 everywhere: no CI is drawn, and the title does not claim one."""
    one = summarize([_fake("smoe", 0, 10.0), _fake("namex", 0, 9.0)])
    assert plot_title(one) == "validation perplexity, one seed per method (no CI)"
    assert "CI" not in markdown_table(one).splitlines()[0]
    three = summarize([_fake("smoe", s, 10.0 + s) for s in range(3)])
    assert plot_title(three) == (
        "validation perplexity: 3 seeds (points), mean ± 95% CI (Student t)"
    )
    mixed = summarize([*(_fake("smoe", s, 10.0 + s) for s in range(2)), _fake("namex", 0, 9.0)])
    assert plot_title(mixed).endswith("where n ≥ 2, n per method = 2, 1")


def test_timings_under_jobs_are_labelled() -> None:
    summaries = summarize([_fake("smoe", 0, 10.0), _fake("namex", 0, 9.0)])
    assert "s / step |" in markdown_table(summaries).splitlines()[0] + " |"
    labelled = markdown_table(summaries, jobs=2)
    assert "s / step (measured under --jobs 2)" in labelled.splitlines()[0]
    assert "competing for the cores" in labelled


def test_compare_drops_overrides_a_method_ignores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--singular-policy reaches the namex runs and is dropped (with a note) for smoe, which
    solves no bargain; the jobs used for timing land in summary.json."""
    seen: dict[str, TrainConfig] = {}

    def fake_train(cfg: TrainConfig, *, resume: Any = False) -> TrainResult:
        cfg.require_used_overrides()  # what the real train() does first
        seen[cfg.method] = cfg
        Path(cfg.out).mkdir(parents=True)  # train() makes its run folder
        return dataclasses.replace(_fake(cfg.method, cfg.seed, 10.0), config=cfg, out=cfg.out)

    monkeypatch.setattr(compare_mod, "train", fake_train)
    notes: list[str] = []
    base = TrainConfig(singular_policy="uniform")
    compare(base, ["smoe", "namex"], [0], tmp_path / "c", log=notes.append)
    assert seen["smoe"].singular_policy is None and seen["namex"].singular_policy == "uniform"
    assert any("smoe: ignoring --singular-policy" in n for n in notes)
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["timing_jobs"] == 1


def test_compare_out_must_be_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match=r"--out: .* is an existing file, not a folder"):
        compare(TrainConfig(), ["smoe"], [0], target)
