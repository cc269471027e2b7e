"""The command line as a user meets it (issue 26): defaults in every ``--help``, one-line errors
that say what to do, no duplicate choices, ``preset`` (not ``none``) for "the preset's value",
``--device cuda:N`` checked against the GPUs present, ``namex methods``, and outputs under
``runs/`` unless ``--out results`` is asked for."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from namex_ref.cli import build_parser, main
from namex_ref.merging.config import METHODS
from namex_ref.train import TrainConfig
from namex_ref.train.distributed import resolve_device

ROOT = Path(__file__).resolve().parents[1]
CAMEX_FLAGS = ("--kronecker-terms", "--term-dropout", "--sign-mask", "--dare-keep", "--gate",
               "--gate-top-k", "--router-per-matrix", "--base-init", "--expert-bias",
               "--merge-preset")


def _parsers(parser: argparse.ArgumentParser, path: str = "namex"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def _takes_a_value(action: argparse.Action) -> bool:
    return bool(action.option_strings) and (
        action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction)
    )


def test_every_help_shows_the_defaults() -> None:
    """Every option that takes a value and has a default says it in the rendered --help."""
    missing = []
    for path, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not _takes_a_value(action) or action.default is None:
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text.lower():
                missing.append(f"{path} {action.option_strings[0]}")
    assert missing == []


def test_no_command_lists_a_choice_twice() -> None:
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            listed = [str(c) for c in action.choices or []]
            if isinstance(action.metavar, str) and action.metavar.startswith("{"):
                listed = action.metavar.strip("{}").split(",")
            assert len(listed) == len(set(listed)), (path, action.option_strings, listed)


def test_camex_flags_say_what_they_do() -> None:
    train = dict(_parsers(build_parser()))["namex train"]
    by_flag = {a.option_strings[0]: a for a in train._actions if a.option_strings}
    for flag in CAMEX_FLAGS:
        text = re.sub(r"\(default: [^)]*\)", "", by_flag[flag].help or "").strip()
        assert len(text) > 30 and "overrides the preset" not in text, flag


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_preset_keeps_the_presets_value_and_none_means_none(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert _parse("--gate", "preset").gate is None
    assert _parse("--gate", "noisy-top-k").gate == "noisy-top-k"
    assert _parse("--sign-mask", "none").sign_mask == "none"  # a real choice: no mask
    assert _parse("--sign-mask", "preset").sign_mask is None
    assert _parse("--beta-abs", "preset").beta_abs is None
    assert _parse("--beta-abs", "none").beta_abs is None  # no other meaning for a number
    assert _parse("--merge-preset", "none").merge_preset is None  # not a merge override
    with pytest.raises(SystemExit) as info:
        _parse("--gate", "none")  # there is no gate-less router
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage dump
    assert "--gate has no 'none' (preset keeps the preset's value)" in err


def test_a_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--steps", "many"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "namex train: error: argument --steps: invalid int value: 'many' (namex train --help "
        "lists the options)\n"
    )


def test_device_names() -> None:
    assert _parse("--device", "cuda:1").device == "cuda:1"
    TrainConfig(device="cuda:3")  # spelling is checked at construction, presence when used
    for bad in ("tpu", "cuda:x", "cuda:", "gpu:0", "cuda:-1", "cuda:١"):
        with pytest.raises(ValueError, match=r"--device: .* is not a device; choose auto"):
            TrainConfig(device=bad)


def test_cuda_without_cuda_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import namex_ref.train.comparison as comparison

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("compare started a run before checking --device")

    monkeypatch.setattr(comparison, "train", no_training)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for command in (["train", "--out", str(tmp_path / "t")],
                    ["compare", "--methods", "smoe", "--seeds", "0", "--out",
                     str(tmp_path / "c")]):
        assert main([*command, "--device", "cuda:0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("namex: error: --device cuda:0: CUDA is not available here")
        assert err.count("\n") == 1 and "--device cpu or auto" in err
    assert main(["train", "--device", "tpu", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("namex: error: --device: 'tpu' is not a device")


def test_cuda_index_checked_against_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"^--device cuda:2: GPU 2 does not exist; 2 visible "
                       r"GPU\(s\), cuda:0 to cuda:1 \(CUDA_VISIBLE_DEVICES=4,5\)$"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="GPU 2 does not exist"):
        resolve_device("cuda", local_rank=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"under torchrun .* CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:0")


# The methods and their equation tags as docs/math.md §3 defines them (S12–S18), written out.
TAGS = {"smoe": "S12", "smear": "S13", "camex": "S14", "ep-camex": "S15", "namex": "S16",
             "namex-full": "S16", "namex-mom": "S17", "namex-full-mom": "S17", "namex-q": "S18"}


def test_methods_lists_each_method_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.startswith("method ")
    assert [line.split()[0] for line in lines] == list(METHODS) == list(TAGS)
    for line in lines:
        name = line.split()[0]
        assert line.endswith(f"({TAGS[name]})"), line
        assert ("momentum" in line) == (name in {"namex-mom", "namex-full-mom", "namex-q"})
        assert ("every Δl layers" in line) == (name in {"namex-full", "namex-full-mom",
                                                         "namex-q"})
        assert ("curvature M_i" in line) == (name not in {"smoe", "smear"})


def test_solve_on_domain_vectors_points_at_taus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "taus.npy"
    np.save(path, np.arange(12.0).reshape(3, 4))
    assert main(["solve", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a Gram matrix" in err and f"namex solve {path} --taus" in err


def test_generate_on_a_run_folder_points_at_its_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "namex_hf.json").write_text("{}")
    assert main(["generate", str(tmp_path / "run"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert f"namex generate {tmp_path / 'run' / 'model'} --prompt" in err


def test_hf_model_on_a_converted_folder_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from namex_ref.hf.training import read_model_config

    (tmp_path / "namex_hf.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"already converted by namex .* original "
                                         "save_pretrained folder"):
        read_model_config(tmp_path)
    pytest.importorskip("transformers")
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2  # the same check
    assert capsys.readouterr().err.startswith(
        f"namex: error: namex convert MODEL: {str(tmp_path)!r} holds a model already converted"
    )


def test_outputs_go_under_runs_unless_results_is_asked_for() -> None:
    parser = build_parser()
    assert parser.parse_args(["mtl"]).out == Path("runs/mtl")
    assert parser.parse_args(["bench", "solvers"]).out == Path("runs/bench")
    make = (ROOT / "Makefile").read_text()
    target = make.split("\nresults:", 1)[1].split("\n\n", 1)[0]
    assert "namex bench all --out results" in target and "namex mtl --out results" in target


def test_readme_quick_start_fits_a_screen_and_its_commands_parse() -> None:
    """The README opens with a quick start of at most one screen whose ``namex`` lines are
    valid commands (parsed by the real parser), with the two set-up commands CI relies on."""
    import shlex

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert readme.index("## Quick start") < 600  # right after the title paragraph
    assert len(start.splitlines()) <= 45, "the quick start is longer than a screen"
    blocks = re.findall(r"```bash\n(.*?)```", start, re.S)
    lines = [ln.split("  #", 1)[0].strip() for b in blocks for ln in b.splitlines()]
    assert "make demo" in lines and "make test" in lines
    commands = [ln for ln in lines if ln.startswith("namex ")]
    assert {c.split()[1] for c in commands} >= {"methods", "train", "compare", "convert"}
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # SystemExit on a bad flag
    assert "CUDA_VISIBLE_DEVICES" in start and "--device cuda:N" in start
