"""studies/study2 end to end on its smoke profile (a few steps, one seed, a slice of the corpus):
the plan's order, the driver (skips finished runs, refuses a second driver), and the report
(its numbers are the runs' own result.json values, read back here independently).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # studies/ is a folder of scripts beside the package
    sys.path.insert(0, str(ROOT))

from studies.study2.jobs import LockedError, acquire_lock, job_done, run_jobs  # noqa: E402
from studies.study2.plan import build_plan, pretrain_key  # noqa: E402
from studies.study2.report import write_report  # noqa: E402
from studies.study2.summary import END, START  # noqa: E402


def test_full_plan_puts_cheap_cells_and_one_seed_of_each_question_first() -> None:
    plan = build_plan("full")
    keys = [j.key for j in plan]
    n_knobs = 12 * 5 + 11 * 3  # "uniform" is not run on the pre-training (PRETRAIN_SKIP)
    assert len(keys) == len(set(keys)) == 24 + 35 + 12 + 6 + n_knobs + 15
    first_seed1 = keys.index("length/400/smoe/seed1")
    assert all(k.endswith("seed0") for k in keys[:first_seed1])  # every seed-0 run first
    assert keys.index("finetune/namex-q/seed4") < keys.index("length/1600/smoe/seed0")
    assert keys.index("length/1600/camex/seed0") < keys.index("length/1600/smoe/seed1")
    assert keys.index("finetune/smoe/seed0") > keys.index(pretrain_key("full"))
    # stage order: 1,600 steps at n = 3, then 6,400 seed 0, every fine-tuning knob, the
    # segment points (seed 0 only; NAMEx-Full-Mom's first), the other 6,400-step seeds, the
    # pre-training knobs
    order = ["length/1600/namex-full-mom/seed2", "length/6400/smoe/seed0",
             "length/6400/namex-full-mom/seed0", "finetune-knob-gamma-0.25/namex-full-mom/seed0",
             "finetune-knob-uniform/namex-full-mom/seed4",
             "length/6400/namex-full-mom-seg16/seed0", "length/6400/namex-full-mom-seg64/seed0",
             "length/6400/ep-camex-seg16/seed0", "length/6400/camex-seg64/seed0",
             "length/6400/smoe/seed1", "length/6400/namex-full-mom/seed2",
             "knobs/1600/gamma-0.25/seed0", "knobs/1600/newton-50/seed0",
             "knobs/1600/gamma-0.25/seed1", "knobs/1600/newton-50/seed2"]
    assert [keys.index(k) for k in order] == sorted(keys.index(k) for k in order)
    assert keys[-16] == "knobs/1600/newton-5-uniform/seed2"  # then stage 8 (15 runs)
    assert not any("-seg" in k and not k.endswith("seed0") for k in keys)
    assert {j.needs for j in plan if j.kind == "finetune" and "-long/" not in j.key} \
        == {(pretrain_key("full"),)}
    warm = {(j.payload["steps"], j.payload["warmup"]) for j in plan if j.kind == "train"}
    assert warm == {(400, 40), (1600, 160), (6400, 640)}  # warmup scaled with the length
    segs = {j.payload["segment_len"] for j in plan if j.kind == "train"}
    assert segs == {None, 16, 64}
    knobs = build_plan("full", ("knobs",))
    assert keys[keys.index(pretrain_key("full"))] in {j.key for j in knobs}
    no_knobs = [j.key for j in build_plan("full", ("length", "finetune"))]
    assert no_knobs == [k for k in keys if "knob" not in k]  # the same order without part 3
    with pytest.raises(ValueError, match="unknown parts"):
        build_plan("full", ("lenght",))


def test_knob_plan_is_valid() -> None:
    from studies.study2.jobs import train_config

    plan = build_plan("full", ("knobs",))
    assert len(plan) == 1 + 12 * 5 + 11 * 3  # the pre-training, 12 knobs x 5 + 11 x 3 seeds
    assert not any(j.key.startswith("knobs/1600/uniform/") for j in plan)
    for job in plan:
        if job.kind == "train":
            cfg = train_config(job, Path("runs"))
            cfg.require_used_overrides()  # every knob is used by namex-full-mom
            assert cfg.steps in (400, 1600)
        else:
            n = 2 if "newton-5-uniform" in job.key else 1
            assert job.payload["method"] == "namex-full-mom" and len(job.payload["overrides"]) == n
    newton = {j.payload["newton_iterations"] for j in plan if "newton" in j.key and
              j.kind == "train"}
    assert newton == {5, 10, 50}
    both = {(j.payload["newton_iterations"], j.payload["singular_policy"]) for j in plan
            if "newton-5-uniform" in j.key and j.kind == "train"}
    assert both == {(5, "uniform")}  # the policy where fallbacks occur


def test_lock_refuses_a_live_driver(tmp_path: Path) -> None:
    (tmp_path / "driver.lock").write_text(f"{os.getppid()}\n")
    with pytest.raises(LockedError, match=str(os.getppid())):
        acquire_lock(tmp_path)
    (tmp_path / "driver.lock").write_text("999999999\n")  # no such process: taken over
    assert acquire_lock(tmp_path).read_text().strip() == str(os.getpid())


def test_smoke_driver_and_report(tmp_path: Path) -> None:
    plan = build_plan("smoke", ("length", "finetune", "knobs"))
    wanted = {pretrain_key("smoke"), "finetune/smoe/seed0", "finetune/namex-full-mom/seed0",
              "finetune-knob-uniform/namex-full-mom/seed0"}
    jobs = [j for j in plan if j.key in wanted]
    finished, failed = run_jobs(jobs, tmp_path, workers=1, log=lambda _: None)
    assert failed == [] and set(finished) == wanted
    stamp = {k: (tmp_path / k / "result.json").stat().st_mtime_ns for k in wanted}
    lines: list[str] = []
    run_jobs(jobs, tmp_path, workers=1, log=lines.append)  # resumable: nothing left to run
    assert lines == ["[study2] 4 of 4 runs finished; 0 to run, 1 at a time"]
    assert stamp == {k: (tmp_path / k / "result.json").stat().st_mtime_ns for k in wanted}
    changed = next(j for j in jobs if j.kind == "train")
    other = type(changed)(changed.key, changed.kind, {**changed.payload, "lr": 1e-3})
    assert not job_done(other, tmp_path)  # another configuration is not "finished"

    repro, readme = tmp_path / "reproduction.md", tmp_path / "README.md"
    for f in (repro, readme):
        f.write_text(f"before\n{START}\nold\n{END}\nafter\n")
    text = write_report(plan, tmp_path, tmp_path / "r.md", profile="smoke",
                        summary_into=[repro, readme])
    smoe = json.loads((tmp_path / "finetune/smoe/seed0/result.json").read_text())
    for f in (repro, readme):  # the block replaced, the text around it kept
        body = f.read_text()
        assert body.startswith(f"before\n{START}\n") and body.endswith(f"{END}\nafter\n")
        assert "old" not in body
    nfm = json.loads((tmp_path / "finetune/namex-full-mom/seed0/result.json").read_text())
    diff = f"{100 * (nfm['accuracy'] - smoe['accuracy']):.2f} (n = 1)"
    row = f"| fine-tuning accuracy: namex-full-mom ≥ smoe | {diff} | n = 1: no interval |"
    assert row in readme.read_text()  # the short form: the README's table
    assert "## Summary (PARTIAL; generated from 4 finished runs)" in repro.read_text()
    assert "## Summary (PARTIAL" in text and "Singular-bargain fallbacks:" in text
    assert "PARTIAL" in text and f"4 of {len(plan)} planned runs" in text
    ppl = json.loads((tmp_path / pretrain_key("smoke") / "result.json").read_text())
    acc = json.loads((tmp_path / "finetune/namex-full-mom/seed0/result.json").read_text())
    assert f"| smoe | 1 | {ppl['valid_ppl']:.2f} |" in text
    assert f"| namex-full-mom | 1 | {100 * acc['accuracy']:.2f} |" in text
    assert f"| namex-full-mom | 1 | {100 * acc['macro_f1']:.2f} |" in text
    knob = json.loads(
        (tmp_path / "finetune-knob-uniform/namex-full-mom/seed0/result.json").read_text())
    assert knob["spec"]["overrides"] == {"singular_policy": "uniform"}
    assert f"| uniform | 1 | {100 * knob['accuracy']:.2f} |" in text
    d = f"{100 * (knob['accuracy'] - acc['accuracy']):.2f} (n = 1)"
    fb = f"{knob['fallbacks']:.0f} / —"  # the summary's knob row: no pre-training knob run
    skipped = "not run (nor the main runs yet)"  # PRETRAIN_SKIP, no main 8-step run here
    assert f"| uniform | {d} | n = 1: no interval | — | {skipped} | {fb} |" in text
    assert (tmp_path / "r_length.png").is_file() and (tmp_path / "r_finetune.png").is_file()

    from studies.study2.archive import archive

    copy = tmp_path / "copy"
    assert sorted(archive(plan, tmp_path, copy)) == sorted(wanted)  # finished runs only
    assert (tmp_path / pretrain_key("smoke") / "checkpoint.safetensors").is_file()
    assert not (copy / pretrain_key("smoke") / "checkpoint.safetensors").exists()
    again = write_report(plan, copy, copy / "r.md", profile="smoke")
    assert again == text.replace(f"under `{tmp_path}`", f"under `{copy}`")  # same numbers


def test_a_skipped_pretraining_knob_is_the_main_model_only_without_fallbacks() -> None:
    from studies.study2.summary import _skipped

    assert _skipped({0: 0.0, 1: 0.0, 2: 0.0}) == \
        "not run: the main model (its 3 runs never fell back)"
    assert "a gap" in _skipped({0: 0.0, 1: 2.0})  # one fallback: the policy could act
    assert _skipped({}) == "not run (nor the main runs yet)"


def test_knob_rows_pair_with_the_main_setting_smoe_and_ep_camex() -> None:
    from studies.study2.report import _KNOB_HEADER, _knob_row

    assert _KNOB_HEADER[4:7] == ["− main, paired", "− smoe, paired", "− ep-camex, paired"]
    main = {0: 60.0, 1: 62.0}
    ref = {"smoe": {0: 57.0, 1: 58.0}, "ep-camex": {0: 61.0}, "namex-full-mom": main}
    row = _knob_row("gamma-2", {0: 61.0, 1: 64.0}, main, ref, "0 in 2 runs")
    # knob − main: 1, 2; − smoe: 4, 6 (mean 5, sd √2, t(0.975, 1) = 12.706 -> ± 12.706);
    # − ep-camex: seed 0 only (the seeds both cells have)
    assert row[0:3] == ["gamma-2", "2", "62.50"]
    assert row[5:] == ["5.00 ± 12.71 (n = 2)", "0.00 (n = 1)", "0 in 2 runs"]
    assert _knob_row("main", main, main, ref, "")[4] == "reference"
    assert _knob_row("x", {}, main, ref, "")[5:7] == ["—", "—"]  # not run yet


def test_stage_8_fine_tunes_from_the_longest_smoe() -> None:
    plan = build_plan("full")
    long = [j for j in plan if j.key.startswith("finetune-long/")]
    assert [j.key for j in plan[-len(long):]] == [j.key for j in long]  # the last stage
    assert {j.needs for j in long} == {("length/6400/smoe/seed0",)}
    assert sorted(j.key for j in long) == sorted(
        f"finetune-long/{m}/seed{s}" for m in ("smoe", "ep-camex", "namex-full-mom")
        for s in range(5))
    plain = {j.key.removeprefix("finetune"): j.payload for j in plan
             if j.key.startswith("finetune/")}
    assert all(j.payload == plain[j.key.removeprefix("finetune-long")] for j in long)
    assert not any(j.key.startswith("finetune-long/") for j in build_plan("full", ("finetune",)))


def test_long_finetune_summary_on_hand_made_cells() -> None:
    from studies.study2.summary import long_finetune

    # namex-full-mom − ep-camex: 1, 1, 1 (no spread: separated); − smoe: 1, 2, 3, mean 2,
    # sd 1, t(0.975, 2) = 4.303 -> ± 4.303 / √3 = 2.48 (0 inside: not separated)
    data = {"smoe": {0: 50.0, 1: 50.0, 2: 50.0}, "ep-camex": {0: 50.0, 1: 51.0, 2: 52.0},
            "namex-full-mom": {0: 51.0, 1: 52.0, 2: 53.0}}

    def cells(group: str, setting: str, metric: str) -> dict[str, dict[int, float]]:
        return data if group == "finetune-long" else {}

    text = long_finetune(cells, "6400")
    assert "from the 6400-step SMoE" in text
    sep = "1.00 ± 0.00 (n = 3): **namex-full-mom better**"
    assert f"| namex-full-mom ≥ ep-camex | {sep} | {sep} |" in text
    ns = "2.00 ± 2.48 (n = 3): not separated"
    assert f"| namex-full-mom ≥ smoe | {ns} | {ns} |" in text
    assert long_finetune(lambda g, s, m: {}, "6400") == ""


def test_verdict_rule_and_block_insertion(tmp_path: Path) -> None:
    from studies.study2.stats import Estimate
    from studies.study2.summary import insert_block, verdict

    lower = {"lower_is_better": True}
    assert verdict(Estimate(3, -2.0, 1.0), "a", "b", **lower) == "**a better**"
    assert verdict(Estimate(3, 2.0, 1.0), "a", "b", **lower) == "**b better**"
    assert verdict(Estimate(3, 2.0, 1.0), "a", "b", lower_is_better=False) == "**a better**"
    assert verdict(Estimate(3, -0.5, 1.0), "a", "b", **lower) == "not separated"
    assert verdict(Estimate(3, 1.0, 1.0), "a", "b", **lower) == "not separated"  # 0 inside
    assert verdict(Estimate(3, 0.0, 0.0), "a", "b", **lower) == "equal on every seed"
    assert verdict(Estimate(3, 0.0, 0.5), "a", "b", **lower) == "not separated"
    assert verdict(Estimate(1, -9.0, float("nan")), "a", "b", **lower) == "n = 1: no interval"
    assert verdict(Estimate(0, float("nan"), float("nan")), "a", "b", **lower) == "not run yet"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not insert_block(plain, "x") and plain.read_text() == "no markers\n"
    assert not insert_block(tmp_path / "missing.md", "x")


def test_gap_trend_extrapolates_log_linearly() -> None:
    from studies.study2.summary import gap_trend

    # SMoE 100 at both lengths; the method 20 % behind at 100 steps and 10 % at 400: -10 points
    # per 4x, so zero at 1,600 steps (hand-computed)
    data = {("100", "smoe"): {0: 100.0}, ("100", "m"): {0: 120.0},
            ("400", "smoe"): {0: 100.0}, ("400", "m"): {0: 110.0}}

    def cells(group: str, setting: str, metric: str) -> dict[str, dict[int, float]]:
        return {t: c for (s, t), c in data.items() if s == setting}

    text = gap_trend(cells, ["100", "400"], "m")
    assert "+20.0 % at 100 steps, +10.0 % at 400 (n = 1), -10.0 points per 4× steps" in text
    assert "near 1,600 steps, 4× the longest run" in text
    data["400", "m"] = {0: 125.0}  # growing: no extrapolation
    assert "not shrinking" in gap_trend(cells, ["100", "400"], "m")
    assert gap_trend(cells, ["100"], "m") == ""


def test_eval_curve_counts_a_rewritten_step_once(tmp_path: Path) -> None:
    from studies.study2.plots import eval_curve

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 1.0}\n{"step": 50, "valid_ppl": 9.0}\n'
                    '{"step": 50, "valid_ppl": 8.0}\n{"step": 100, "valid_ppl": 7.0}\n'
                    '{"step": 150, "valid_p')  # a resumed run rewrote step 50; a torn last line
    assert eval_curve(path) == ([50, 100], [8.0, 7.0])
    assert eval_curve(tmp_path / "missing.jsonl") == ([], [])


def test_study1_report_keeps_the_summary_and_its_reading(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("study1_report", ROOT / "studies/report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = tmp_path / "reproduction.md"
    kept = f"{START}\nblock\n{END}\n\n### Reading\n\nhand text\n"
    report.write_text(f"# title\n\n{kept}\n{module.STUDY1_HEADING}\n\nold table\n")
    assert module.kept_summary(report) == kept  # block and reading, not study 1's own text
    assert module.kept_summary(tmp_path / "none.md") == f"{START}\n{END}\n"
