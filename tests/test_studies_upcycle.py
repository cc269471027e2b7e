"""studies/study2/finetune.py's upcycling: an SMoE's weights into each merging method.

Oracles: the copied tensors compared with the SMoE's (torch.equal); the base expert checked
against the defining properties of the "perturbed-mean" rule (docs/math.md §6), computed here
in float64 from the experts directly: E_m − Ē is orthogonal to every centred expert E_i − Ē and
‖E_m − Ē‖² = (1/N) Σ_i ‖E_i − Ē‖² (all matrices of a layer flattened together).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # studies/ is a folder of scripts beside the package
    sys.path.insert(0, str(ROOT))

from namex_ref.models.gpt import MoEGPT  # noqa: E402
from namex_ref.train import TrainConfig  # noqa: E402
from studies.study2.finetune import METHODS, upcycle  # noqa: E402

ORTHO_TOL = 1e-4
"""|⟨u, c_i⟩| / (‖u‖‖c_i‖) bound: the rule projects in float32 (float64 pseudo-inverse), so
the cosine is float32 rounding of sums over ~16k products, far below this."""


@pytest.fixture(scope="module")
def smoe_state() -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    cfg = TrainConfig(method="smoe", out="unused")
    torch.manual_seed(0)
    return cfg, MoEGPT(cfg.model_config()).state_dict()


@pytest.mark.parametrize("method", METHODS)
def test_shared_tensors_are_copied(method: str,
                                   smoe_state: tuple[TrainConfig, dict[str, torch.Tensor]]
                                   ) -> None:
    cfg, state = smoe_state
    model = upcycle(state, cfg, method, seed=1, overrides={})
    own = model.state_dict()
    shared = [k for k in state if k in own]
    assert len(shared) == len(state)  # nothing of the SMoE left behind
    for k in shared:
        assert torch.equal(own[k], state[k]), k


@pytest.mark.parametrize("method", ["camex", "ep-camex", "namex-full-mom"])
def test_base_expert_follows_the_perturbed_mean_rule(
        method: str, smoe_state: tuple[TrainConfig, dict[str, torch.Tensor]]) -> None:
    cfg, state = smoe_state
    model = upcycle(state, cfg, method, seed=2, overrides={})
    layers = [m for m in model.moe_layers() if m.base1 is not None]
    assert len(layers) == (4 if method == "camex" else 1)  # per-layer vs first-layer base
    for moe in layers:
        assert moe.base1 is not None and moe.base2 is not None
        experts = torch.cat([moe.w1.detach().flatten(1), moe.w2.detach().flatten(1)], 1).double()
        base = torch.cat([moe.base1.detach().flatten(), moe.base2.detach().flatten()]).double()
        mean = experts.mean(0)
        u, c = base - mean, experts - mean
        cos = (c @ u) / (c.norm(dim=1) * u.norm())
        assert cos.abs().max() < ORTHO_TOL
        torch.testing.assert_close(u.pow(2).sum(), c.pow(2).sum(1).mean(), rtol=1e-4, atol=0)


def test_seeds_change_the_base_and_nothing_else(
        smoe_state: tuple[TrainConfig, dict[str, torch.Tensor]]) -> None:
    cfg, state = smoe_state
    a = upcycle(state, cfg, "namex", seed=0, overrides={}).state_dict()
    b = upcycle(state, cfg, "namex", seed=1, overrides={}).state_dict()
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert differ == ["blocks.0.moe.base1", "blocks.0.moe.base2"]


def test_overrides_reach_the_merge_config(
        smoe_state: tuple[TrainConfig, dict[str, torch.Tensor]]) -> None:
    cfg, state = smoe_state
    model = upcycle(state, cfg, "namex-full-mom", seed=0, overrides={"gamma": 0.25})
    assert isinstance(model, MoEGPT) and model.config.merge.gamma == 0.25


def test_an_unknown_missing_parameter_is_refused(
        smoe_state: tuple[TrainConfig, dict[str, torch.Tensor]]) -> None:
    cfg, state = smoe_state
    broken = {k: v for k, v in state.items() if k != "blocks.0.moe.router.weight"}
    with pytest.raises(ValueError, match="router"):
        upcycle(broken, cfg, "namex", seed=0, overrides={})
