"""TrainConfig validation, CLI flags derived from its fields, LR schedule and batch purity."""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from namex_ref.cli import build_parser
from namex_ref.train import TrainConfig, batch_for_step, config_from_args, lr_at
from namex_ref.train.config import MERGE_OVERRIDES, flag_name
from namex_ref.train.data import step_seed, unigram_perplexity


def test_defaults_are_valid_and_build_the_tiny_model() -> None:
    cfg = TrainConfig()
    mc = cfg.model_config()
    assert cfg.preset == "tiny" and mc.merge.method == cfg.method
    assert cfg.merge_overrides() == {}


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("steps", 0, "--steps"),
        ("batch_size", -2, "--batch-size"),
        ("lr", 0.0, "--lr"),
        ("lr", math.nan, "--lr"),
        ("weight_decay", -0.1, "--weight-decay"),
        ("grad_clip", math.inf, "--grad-clip"),
        ("warmup", -1, "--warmup"),
        ("schedule_steps", -1, "--schedule-steps"),
        ("log_every", 0, "--log-every"),
        ("method", "moe", "--method"),
        ("preset", "huge", "--preset"),
        ("device", "tpu", "--device"),
        ("data", "wikitext", "--wikitext-dir"),
        ("val_frac", 0.7, "--val-frac"),
        ("min_lr_ratio", 2.0, "--min-lr-ratio"),
        ("seed", -1, "--seed"),
        ("beta_abs", 1.5, "--beta-abs"),
        ("alpha_interval", 0, "--alpha-interval"),
        ("singular_policy", "ignore", "--singular-policy"),
        ("steps", 2.5, "--steps"),
        ("out", "", "--out"),
    ],
)
def test_bad_values_raise_naming_the_flag(field: str, value: object, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_warmup_longer_than_the_run_is_clamped() -> None:
    """warmup > schedule length: the lr rises linearly over the whole schedule (W = H), reaching
    the peak at the last step; nothing decays. Oracle: lr · s / H written out."""
    cfg = TrainConfig(steps=20, warmup=40, lr=1e-3)  # the default warmup on a short run
    assert cfg.effective_warmup == 20 and cfg.schedule_length == 20
    assert [lr_at(s, cfg) for s in (1, 10, 20)] == pytest.approx([1e-3 / 20, 1e-3 / 2, 1e-3],
                                                                 rel=1e-15)


def test_schedule_steps_sets_the_horizon_and_later_steps_use_the_floor() -> None:
    """schedule_steps = H < steps: steps 1..H follow the schedule of a run of H steps exactly
    (same floats), steps after H run at lr · min_lr_ratio."""
    short = TrainConfig(steps=50, warmup=5, lr=2e-3, min_lr_ratio=0.25)
    long = dataclasses.replace(short, steps=80, schedule_steps=50)
    assert [lr_at(s, long) for s in range(1, 51)] == [lr_at(s, short) for s in range(1, 51)]
    assert {lr_at(s, long) for s in range(51, 81)} == {2e-3 * 0.25}


@pytest.mark.parametrize(
    ("method", "override", "flag", "why"),
    [
        ("smoe", {"singular_policy": "raise"}, "--singular-policy", "solves no Nash bargain"),
        ("smoe", {"newton_iterations": 5}, "--newton-iterations", "solves no Nash bargain"),
        ("ep-camex", {"singular_policy": "uniform"}, "--singular-policy", "no Nash bargain"),
        ("namex", {"beta_abs": 0.3}, "--beta-abs", "no complex momentum"),
        ("namex-q", {"beta_phase": 0.3}, "--beta-phase", "no complex momentum"),
        ("namex-mom", {"alpha_interval": 2}, "--alpha-interval", "re-solve"),
        ("namex", {"balance_coef": 0.1}, "--balance-coef", "load-balancing"),
        ("smear", {"eta": 0.5}, "--eta", "without a base expert"),
        ("camex", {"gamma": 0.5}, "--gamma", "propagates no base expert"),
    ],
)
def test_overrides_a_method_ignores_are_refused(
    method: str, override: dict[str, object], flag: str, why: str
) -> None:
    cfg = TrainConfig(method=method, **override)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"{flag}: method '{method}' .*{why}"):
        cfg.require_used_overrides()


@pytest.mark.parametrize(
    ("method", "override"),
    [("namex", {"singular_policy": "raise"}), ("namex-full-mom", {"beta_abs": 0.3}),
     ("smoe", {"balance_coef": 0.1}), ("camex", {"eta": 0.5}),
     ("ep-camex", {"gamma": 0.5}), ("namex-q", {"alpha_interval": 2})],
)
def test_overrides_a_method_uses_are_accepted(method: str, override: dict[str, object]) -> None:
    TrainConfig(method=method, **override).require_used_overrides()  # type: ignore[arg-type]


def test_cli_refuses_singular_policy_for_smoe(capsys: pytest.CaptureFixture[str]) -> None:
    from namex_ref.cli import main

    assert main(["train", "--method", "smoe", "--singular-policy", "raise"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("namex: error: --singular-policy: method 'smoe' solves no Nash bargain, so "
                   "this option would be ignored; drop it or choose a method that uses it")


def test_merge_overrides_reach_the_model_config() -> None:
    cfg = TrainConfig(beta_phase=0.25, beta_abs=0.7, alpha_interval=2, singular_policy="uniform")
    m = cfg.model_config().merge
    assert (m.beta_phase, m.beta_abs, m.alpha_interval, m.singular_policy) == (
        0.25, 0.7, 2, "uniform"
    )
    assert set(MERGE_OVERRIDES) <= {f.name for f in dataclasses.fields(type(m))}


def _parse(argv: list[str]) -> TrainConfig:
    args = build_parser().parse_args(argv)
    return config_from_args(args)


def test_brief_command_line_parses_to_the_api_config() -> None:
    argv = "train --method namex-full-mom --preset tiny --seed 0 --out runs/x".split()
    assert _parse(argv) == TrainConfig(method="namex-full-mom", preset="tiny", seed=0,
                                       out="runs/x")
    assert _parse(["train"]) == TrainConfig()


def _non_default(name: str, tp: object) -> tuple[list[str], object]:
    """A flag list setting field ``name`` to a non-default value, and that value."""
    if tp is bool:  # --flag when the default is False, --no-flag when it is True
        default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
        return [flag_name(name).replace("--", "--no-" if default else "--")], not default
    samples: dict[str, object] = {
        "preset": "small", "method": "smoe", "device": "cpu", "data": "wikitext",
        "singular_policy": "raise", "out": "runs/y", "schedule_steps": 7,
        "wikitext_dir": "/data/wt",
        "cache_dir": "/tmp/c", "val_frac": 0.1, "test_frac": 0.2, "min_lr_ratio": 0.5,
        "sign_mask": "ties", "gate": "noisy-top-k", "base_init": "expert0",
        "merge_preset": "camex-paper", "router_per_matrix": True, "expert_bias": True,
        "hf_model": "models/qwen", "base_rule": "zero", "precision": "bf16",
    }
    if name in samples:
        v = samples[name]
    elif "float" in str(tp):
        v = 0.375
    else:
        v = 3
    return [flag_name(name), str(v)], v


def test_every_field_has_a_flag_that_sets_it() -> None:
    hints = typing.get_type_hints(TrainConfig)
    base = ["--wikitext-dir", "/data/wt"]
    for f in dataclasses.fields(TrainConfig):
        argv, value = _non_default(f.name, hints[f.name])
        args = build_parser().parse_args(["train", *base, *argv])
        assert getattr(args, f.name) == value, f.name
        assert value != f.default, f.name


def test_underscore_spelling_and_none_for_optional_flags() -> None:
    a = _parse(["train", "--batch_size", "8", "--beta-phase", "0.5"])
    b = _parse(["train", "--batch-size", "8", "--beta_phase", "0.5"])
    assert a == b and a.batch_size == 8 and a.beta_phase == 0.5
    assert _parse(["train", "--beta-abs", "none"]).beta_abs is None
    assert _parse(["train", "--no-progress"]).progress is False


def test_cli_rejects_a_bad_type_and_choice() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--steps", "many"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "tpu"])
    # --device is checked by TrainConfig (one line naming the accepted forms, exit 2 in main)


def test_cli_reports_invalid_values_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from namex_ref.cli import main

    assert main(["train", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_dict_round_trip_and_unknown_keys() -> None:
    cfg = TrainConfig(method="namex-q", beta_abs=0.3, seed=4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_lr_schedule_warmup_peak_cosine_floor() -> None:
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(1e-4, rel=1e-12)  # linear warmup: lr · 1/10
    assert lrs[9] == pytest.approx(1e-3, rel=1e-12)  # peak at the end of warmup
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-12)  # floor lr · min_lr_ratio at the end
    assert all(a <= b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    # cosine midpoint: floor + (peak - floor)/2
    assert lr_at(55, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-12)


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    ids = torch.arange(5000) % 97
    kw = dict(batch_size=6, seq_len=16)
    a = batch_for_step(ids, seed=1, step=7, **kw)  # type: ignore[arg-type]
    torch.manual_seed(123)  # the global RNG must not matter
    b = batch_for_step(ids, seed=1, step=7, **kw)  # type: ignore[arg-type]
    c = batch_for_step(ids, seed=1, step=8, **kw)  # type: ignore[arg-type]
    d = batch_for_step(ids, seed=2, step=7, **kw)  # type: ignore[arg-type]
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.x, d.x)
    assert torch.equal(a.y[:, :-1], a.x[:, 1:])
    assert step_seed(1, 7) != step_seed(7, 1)


def test_rank_slices_concatenate_to_the_global_batch() -> None:
    ids = torch.arange(3000)
    full = batch_for_step(ids, seed=0, step=3, batch_size=8, seq_len=10)
    parts = [
        batch_for_step(ids, seed=0, step=3, batch_size=8, seq_len=10, rank=r, world_size=4)
        for r in range(4)
    ]
    assert torch.equal(torch.cat([p.x for p in parts]), full.x)
    with pytest.raises(ValueError, match="divisible"):
        batch_for_step(ids, seed=0, step=3, batch_size=6, seq_len=10, rank=0, world_size=4)


def test_unigram_perplexity_of_a_uniform_stream() -> None:
    """Every id equally frequent in train -> the unigram perplexity is the vocabulary size."""
    train = torch.arange(1000) % 10
    assert unigram_perplexity(train, torch.arange(10), 10) == pytest.approx(10.0, rel=1e-12)


@given(
    steps=st.integers(1, 5000),
    warmup_frac=st.floats(0, 1),
    lr=st.floats(1e-6, 1.0),
    ratio=st.floats(0, 1),
)
def test_lr_schedule_bounds(steps: int, warmup_frac: float, lr: float, ratio: float) -> None:
    """Every step's lr lies in (0, lr]; after warmup it never increases and ends at lr·ratio."""
    warmup = int(warmup_frac * steps)
    cfg = TrainConfig(steps=steps, warmup=warmup, lr=lr, min_lr_ratio=ratio)
    probe = sorted({1, warmup, warmup + 1, steps // 2, steps - 1, steps} & set(range(1, steps + 1)))
    values = [lr_at(s, cfg) for s in probe]
    assert all(0 <= v <= lr * (1 + 1e-12) for v in values)
    after = [v for s, v in zip(probe, values, strict=True) if s >= max(warmup, 1)]
    assert all(a >= b * (1 - 1e-12) for a, b in itertools.pairwise(after))
    if steps > warmup:
        assert lr_at(steps, cfg) == pytest.approx(lr * ratio, rel=1e-9, abs=1e-300)


@given(world=st.integers(1, 6), per=st.integers(1, 3), step=st.integers(0, 10**6))
def test_rank_slices_partition_the_global_batch(world: int, per: int, step: int) -> None:
    ids = torch.arange(500)
    B = world * per
    full = batch_for_step(ids, seed=3, step=step, batch_size=B, seq_len=5)
    parts = [batch_for_step(ids, seed=3, step=step, batch_size=B, seq_len=5, rank=r,
                            world_size=world) for r in range(world)]
    assert torch.equal(torch.cat([p.y for p in parts]), full.y)


@given(
    seed=st.integers(0, 2**31), steps=st.integers(1, 10**6), lr=st.floats(1e-8, 10.0),
    method=st.sampled_from(["smoe", "namex", "namex-q"]), beta=st.none() | st.floats(0, 0.99),
)
def test_config_round_trips_through_dict_and_flags(
    seed: int, steps: int, lr: float, method: str, beta: float | None
) -> None:
    cfg = TrainConfig(seed=seed, steps=steps, warmup=0, lr=lr, method=method, beta_abs=beta)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    argv = ["train", "--seed", str(seed), "--steps", str(steps), "--warmup", "0",
            "--lr", repr(lr), "--method", method, "--beta-abs", repr(beta) if beta else "none"]
    parsed = _parse(argv)
    assert parsed == (cfg if beta else dataclasses.replace(cfg, beta_abs=None))


def test_merge_preset_camex_paper_and_explicit_overrides_win() -> None:
    """--merge-preset camex-paper sets the CAMEx scripts' options; an explicit flag wins."""
    cfg = _parse(["train", "--method", "camex", "--merge-preset", "camex-paper",
                  "--term-dropout", "0.1"])
    m = cfg.model_config().merge
    assert (m.kronecker_terms, m.sign_mask, m.gate, m.gate_k, m.term_dropout) == (
        8, "ties", "noisy-top-k", m.n_experts, 0.1
    )
    assert (m.router_per_matrix, m.base_init, m.expert_bias, m.balance_coef) == (
        True, "expert0", True, 1e-5
    )
    with pytest.raises(ValueError, match="--merge-preset"):
        TrainConfig(merge_preset="lory")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--kronecker-terms"):
        TrainConfig(method="smear", kronecker_terms=2)
