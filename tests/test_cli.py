"""The CLI calls the same functions as the API and agrees with them."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import namex_ref.cli
from namex_ref import gram_matrix, solve_nash
from namex_ref.cli import build_parser, main
from namex_ref.demo import builtin_experts


def test_demo_runs_and_reports_s7(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "‖ΔE‖² = 6.000000000" in out  # S7: ‖Gα‖² = N, N = 6 built-in experts
    for method in ("newton", "cvxpy", "primal", "ccp"):
        assert f"| {method}" in out


def test_solve_matches_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taus, _ = builtin_experts()
    path = tmp_path / "taus.npy"
    np.save(path, taus.numpy())
    assert main(["solve", str(path), "--taus"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = solve_nash(gram_matrix(taus)).alpha
    torch.testing.assert_close(torch.tensor(got["alpha"], dtype=torch.float64), want,
                               rtol=0, atol=0)


def test_solve_reports_infeasible_as_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "K.npy"
    np.save(path, np.array([[1.0, -1.0], [-1.0, 1.0]]))
    assert main(["solve", str(path)]) == 2
    assert "No Nash bargain exists" in capsys.readouterr().err


def test_momentum_grid_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["momentum-grid", "--out", str(tmp_path), "--n-moduli", "8", "--n-phases", "9"])
    assert rc == 0
    png = tmp_path / "rho_grid.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_docstring_names_every_command() -> None:
    """The module docstring lists exactly the parser's sub-commands (and no retired ones)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sub.choices is not None
    commands = set(sub.choices)
    assert commands == {
        "train", "compare", "methods", "bench", "demo", "solve", "momentum-grid", "mtl", "convert",
        "generate", "eval",
    }
    doc = namex_ref.cli.__doc__ or ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ")  # the first paragraph
    listed = {c.strip(" `.") for c in first.split("namex", 1)[1].split("|")}
    assert listed == commands
    with pytest.raises(SystemExit):
        main(["bench-solvers"])  # one benchmark home: `namex bench solvers`


def _walk(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    """Every action of ``parser`` and of its sub-command parsers, with the command path."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, sub in action.choices.items():
                assert name in helped, f"{path} {name}: the sub-command has no help"
                found += _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((path, action))
    return found


def test_every_flag_of_every_command_has_help() -> None:
    """Help text that says something beyond the default, for every argument everywhere."""
    actions = _walk(build_parser(), "namex")
    assert len(actions) > 60  # train + compare alone have ~70
    missing = []
    for path, action in actions:
        text = re.sub(r"\(default: [^)]*\)", "", action.help or "").strip(" .;")
        if not text or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_version_comes_from_the_package_metadata(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    import namex_ref

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    try:
        want = metadata.version("namex-ref")
    except metadata.PackageNotFoundError:
        want = namex_ref.__version__
    assert capsys.readouterr().out == f"namex {want}\n"

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert namex_ref.cli.package_version() == namex_ref.__version__


@pytest.mark.parametrize("command", [["train"], ["compare"], ["momentum-grid"],
                                     ["bench", "solvers"]])
def test_out_pointing_at_a_file_is_a_named_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    target = tmp_path / "taken"
    target.write_text("a file\n")
    for out, msg in (
        (target, f"--out: {str(target)!r} is an existing file, not a folder; choose a folder "
                 f"path (it is created when missing)"),
        (target / "run", f"--out: {str(target)!r} (part of {str(target / 'run')!r}) is a file, "
                         f"not a folder; choose another folder path"),
    ):
        assert main([*command, "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"namex: error: {msg}\n"
    assert target.read_text() == "a file\n"
