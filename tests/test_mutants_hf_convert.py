"""Mutation-guided tests of namex_ref.hf.convert (tools/mutation.py, module "hf/convert").
Expected values come from the definitions (docs/math.md §6, "Base expert of a converted model";
HFMergedMoE's documented zero-weight routers; the S13 segment average), written out here, never
taken from the module under test.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from namex_ref.hf import convert, converted_blocks, initial_base
from tests.test_hf import tiny_model

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent


@pytest.mark.parametrize(
    "experts",
    [
        [torch.tensor([[[1.0]], [[-1.0]]])],  # P = 1, N = 2: u projects to exactly 0
        [torch.tensor([[[3.0, 1.0]], [[-1.0, 2.0]], [[0.5, -4.0]]])],  # P = 2, N = 3
    ],
)
def test_perturbed_mean_refuses_experts_that_span_every_direction(
    experts: list[torch.Tensor],
) -> None:
    """With P ≤ N − 1 parameters per expert the centred experts c_i span every direction, so no
    u ⟂ span{c_i} exists. The rule must say so (it returned NaN for the first case: the float32
    scale √s²/1e-300 overflowed to inf, times u = 0); the other rules still work."""
    with pytest.raises(ValueError, match=r"at most N - 1 = \d+, .*base_rule='zero' or 'mean'"):
        initial_base(experts, "perturbed-mean")
    assert torch.equal(initial_base(experts, "mean")[0], experts[0].mean(0))
    assert torch.equal(initial_base(experts, "zero")[0], torch.zeros_like(experts[0][0]))


def test_perturbed_mean_with_one_spare_direction_is_finite_and_orthogonal() -> None:
    """P = N = 2 (one direction left beside span{c_i}): u is that direction, ‖u‖² = s², Cu = 0
    (float64 experts: float64 work copies, bound 1e-12·s², measured ~1e-16)."""
    E = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]], dtype=torch.float64)  # c = ±(1, 0)
    (b,) = initial_base([E], "perturbed-mean", seed=3)
    u = (b - E.mean(0)).reshape(-1)
    s2 = 1.0  # (1/N) Σ ‖c_i‖² = (1 + 1) / 2
    assert torch.isfinite(u).all()
    assert abs(float(u[0])) <= 1e-12 * s2  # ⟂ c = (1, 0)
    assert abs(float(u @ u) - s2) <= 1e-12 * s2


def test_the_new_routers_start_at_zero_weights() -> None:
    """HFMergedMoE's documented start: router_hidden, noise_router and noise_router_hidden have
    zero weights (W_down's second router then gives uniform scores; the noise σ is
    softplus(0) + 1e-2)."""
    model = convert(tiny_model("olmoe"), "camex", segment_len=8, gate="noisy-top-k",
                    gate_top_k=2, router_per_matrix=True)
    for blk in converted_blocks(model):
        for lin in (blk.router_hidden, blk.noise_router, blk.noise_router_hidden):
            assert lin is not None
            assert lin.weight.abs().max().item() == 0.0


def test_the_expert0_base_is_a_copy_not_a_view_of_expert_0() -> None:
    """base_init="expert0": the base starts equal to expert 0 but is its own parameter, so a
    step on the base (here an in-place add, as an optimiser does) leaves expert 0 as it was."""
    model = convert(tiny_model("mixtral").double(), "camex", segment_len=8,
                    base_init="expert0")
    blk = converted_blocks(model)[0]
    before = [E[0].clone() for E in blk.experts_list()]
    assert blk.base_gate_up is not None and blk.base_down is not None
    with torch.no_grad():
        blk.base_gate_up.add_(1.0)
        blk.base_down.add_(1.0)
    for E, e0 in zip(blk.experts_list(), before, strict=True):
        assert torch.equal(E[0], e0)


def test_smoe_in_training_applies_mixtrals_router_jitter() -> None:
    """Mixtral's router jitter (router_jitter_noise, training only) is part of the pretrained
    block: "smoe" in train mode gives the original model's logits with the same random draws
    (same seed; bound 4·eps32·max|logit|, measured 0), and without jitter in eval mode."""
    cfg = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4,
        num_experts_per_tok=2, intermediate_size=16, router_jitter_noise=0.3,
    )
    torch.manual_seed(0)
    original = transformers.AutoModelForCausalLM.from_config(cfg).train()
    smoe = convert(copy.deepcopy(original), "smoe").train()
    x = torch.randint(2, 60, (2, 12), generator=torch.Generator().manual_seed(1))
    outs = []
    for m in (original, smoe):
        torch.manual_seed(7)
        with torch.no_grad():
            outs.append(m(input_ids=x).logits)
    ref, got = outs
    assert (got - ref).abs().max().item() <= 4 * 1.2e-7 * ref.abs().max().item()
    torch.manual_seed(8)
    with torch.no_grad():
        other = smoe(input_ids=x).logits  # other draws: the jitter is really applied
    assert (other - ref).abs().max().item() > 1e-4 * ref.abs().max().item()


def test_recompute_refuses_parameters_changed_between_forward_and_backward() -> None:
    """merge_memory="recompute" rebuilds M(E − E_m) from the parameters in backward; an expert
    changed in place in between would give another function's gradient, so it is refused
    (keep-deltas and eager have no such check: they saved the terms)."""
    model = convert(tiny_model("qwen2_moe"), "camex", segment_len=8, merge_memory="recompute")
    x = torch.randint(2, 60, (2, 16), generator=torch.Generator().manual_seed(3))
    loss = model(x, labels=x).loss
    with torch.no_grad():
        converted_blocks(model)[0].experts.down_proj.add_(0.01)
    with pytest.raises(RuntimeError, match="modified in place between forward and backward"):
        loss.backward()


def test_save_refuses_a_model_that_was_not_converted(tmp_path: Path) -> None:
    from namex_ref.hf import save

    with pytest.raises(ValueError, match=r"save\(\) writes a model converted by"):
        save(tiny_model("olmoe"), tmp_path)


def test_a_prompt_shorter_than_a_segment_continues_exactly_from_the_cache() -> None:
    """The first cached call holds 3 < segment_len tokens (segment 0 only: uniform scores kept
    for the next call), then chunks of 2, 4 and 7: every logit as the uncached forward on all
    16 tokens (float32 bound 1e-5·max|logit| of tests/test_hf_generate.py)."""
    from tests.test_hf_generate import F32_BOUND, _chunked, assert_close, sharp_model

    model = convert(sharp_model("qwen2_moe"), "namex-full-mom", segment_len=8)
    x = torch.randint(2, 60, (2, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = model(x, use_cache=False).logits
    out, cache = _chunked(model, x, [3, 2, 4, 7])
    assert cache.get_seq_length() == 16
    assert_close(out, ref, F32_BOUND)


def test_a_training_forward_draws_only_the_documented_gate_noise() -> None:
    """Without a cache, a training forward of a 2-layer model with the noisy gate (k < N) draws
    exactly the documented random numbers (docs/math.md §6, "CAMEx options"): per block, in
    layer order, one ε ~ N(0, 1) of shape (B·U, N) for the U = 1 unit mean of 16 tokens in
    segments of 8, and nothing else (no segment state is formed without a cache)."""
    model = convert(tiny_model("olmoe"), "camex", segment_len=8, gate="noisy-top-k",
                    gate_top_k=2).train()
    x = torch.randint(2, 60, (2, 16), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(11)
    with torch.no_grad():
        model(input_ids=x, use_cache=False)
    after = torch.get_rng_state()
    torch.manual_seed(11)
    for _ in range(2):
        torch.randn(2 * 1, 4)
    assert torch.equal(after, torch.get_rng_state())
