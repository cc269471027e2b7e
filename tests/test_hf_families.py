"""namex_ref.hf.families: every family the adapters describe (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE,
DeepSeek-V2, DeepSeek-V3, GLM-4-MoE; docs/hf.md), offline, tiny models built from config classes.

Oracles are written out here from the transformers modeling code's maths, not from the code
under test: the per-segment merged expert with the family's scores (softmax, or sigmoid divided
by its sum), the routed scaling factor and the shared experts; transformers' own routers for the
choice of experts (bias and groups); K formed from the raw expert stacks for the bargain.

Tolerances (as tests/test_hf.py): "smoe" runs the pretrained router and experts: bound
4·eps(dtype)·max|logit| (measured 0 in float32 and bfloat16). A merging method against the
written-out oracle: the same maths in another order in float32, bound 1e-5·max|logit|
(measured ~1e-7).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from namex_ref.hf import UnsupportedFamilyError, convert, converted_blocks, family_of
from namex_ref.hf.families import select_experts
from tests.test_hf import assert_first_bargain_converges, assert_twenty_steps_lower_the_loss
from tests.test_hf import tiny_model as tiny_old

transformers = pytest.importorskip("transformers")

NEW = ["qwen3_moe", "deepseek_v2", "deepseek_v3", "glm4_moe"]
ALL = ["qwen2_moe", "mixtral", "olmoe", *NEW]
VOCAB = 64
SEG = 8
N_NEW = 8


def tiny_model(family: str, seed: int = 0, vocab: int = VOCAB) -> torch.nn.Module:
    """Hidden 32, expert width 16; the new families with 8 experts (top-2), in groups where the
    family has them, a routed scaling factor ≠ 1 and a random score-correction bias; DeepSeek-V3
    and GLM-4-MoE with a dense first layer (``first_k_dense_replace`` = 1)."""
    if family not in NEW:
        return tiny_old(family, seed, vocab)
    kw: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, moe_intermediate_size=16, intermediate_size=48, num_experts_per_tok=2,
    )
    mla = dict(kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)
    moe = dict(n_routed_experts=N_NEW, n_shared_experts=1)
    if family == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(num_experts=N_NEW, norm_topk_prob=True, head_dim=8, **kw)
    elif family == "deepseek_v2":
        cfg = transformers.DeepseekV2Config(
            **moe, **mla, q_lora_rank=None, topk_method="group_limited_greedy", n_group=4,
            topk_group=2, routed_scaling_factor=1.5, **kw,
        )
    elif family == "deepseek_v3":
        kw["num_hidden_layers"] = 3
        cfg = transformers.DeepseekV3Config(
            **moe, **mla, q_lora_rank=8, n_group=4, topk_group=2, routed_scaling_factor=2.5,
            first_k_dense_replace=1, **kw,
        )
    else:
        kw["num_hidden_layers"] = 3
        cfg = transformers.Glm4MoeConfig(
            **moe, n_group=2, topk_group=1, routed_scaling_factor=2.0, first_k_dense_replace=1,
            head_dim=8, **kw,
        )
    torch.manual_seed(seed)
    model: torch.nn.Module = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "e_score_correction_bias"):
                mod.e_score_correction_bias.copy_(0.1 * torch.randn(N_NEW))
    return model.eval()


def ids(B: int = 2, T: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(x).logits
    return out


def moe_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]


# ---- exactness of the pass-through ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", NEW)
def test_smoe_reproduces_the_pretrained_logits(family: str, dtype: torch.dtype) -> None:
    model = tiny_model(family).to(dtype)
    x = ids()
    ref = logits(model, x)
    conv = convert(copy.deepcopy(model), "smoe")
    assert len(converted_blocks(conv)) == len(moe_blocks(model)) == 2
    out = logits(conv, x)
    bound = 4 * torch.finfo(dtype).eps * ref.abs().max().item()
    assert (out.float() - ref.float()).abs().max().item() <= bound


# ---- the starting function of the merging methods ---------------------------------------------


def _family_scores(gate: torch.nn.Module, mean: torch.Tensor) -> torch.Tensor:
    """S13's scores of one segment mean (H,), float32: the router's softmax, or its sigmoid
    divided by the sum over the N experts (the sigmoid routers: DeepSeek-V3, GLM-4-MoE)."""
    logit = gate.weight.detach().float() @ mean.float()
    if hasattr(gate, "e_score_correction_bias"):
        sig = torch.sigmoid(logit)
        return sig / sig.sum()
    return torch.softmax(logit, 0)


def _oracle_block(block: torch.nn.Module, seg: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Written out per segment and token: s from the previous segment's mean (1/N on segment 0),
    W = Σ_i s_i W_i for gate, up and down; y = c · W_down (act(W_gate x) ∘ W_up x), c the
    routed scaling factor (1 where the router has none), plus the shared experts as the
    original block adds them (Qwen2-MoE: sigmoid-gated; DeepSeek, GLM: ungated)."""
    gu, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    n, two_i, _ = gu.shape
    half = two_i // 2
    act = block.experts.act_fn
    c = float(getattr(block.gate, "routed_scaling_factor", 1.0))

    def forward(h: torch.Tensor) -> torch.Tensor:
        B, T, _ = h.shape
        y = torch.zeros_like(h)
        for b in range(B):
            for start in range(0, T, seg):
                if start == 0:
                    s = torch.full((n,), 1.0 / n)
                else:
                    s = _family_scores(block.gate, h[b, start - seg : start].mean(0))
                Wg = sum(s[i] * gu[i, :half] for i in range(n))
                Wu = sum(s[i] * gu[i, half:] for i in range(n))
                Wd = sum(s[i] * down[i] for i in range(n))
                for t in range(start, min(start + seg, T)):
                    v = h[b, t]
                    y[b, t] = c * (Wd @ (act(Wg @ v) * (Wu @ v)))
        if hasattr(block, "shared_expert_gate"):
            y = y + torch.sigmoid(block.shared_expert_gate(h)) * block.shared_expert(h)
        if hasattr(block, "shared_experts"):
            y = y + block.shared_experts(h)
        return y

    return forward


@pytest.mark.parametrize("method", ["smear", "camex", "namex-full-mom"])
@pytest.mark.parametrize("family", ALL)
def test_merging_methods_start_as_the_written_out_segment_average(
    family: str, method: str
) -> None:
    """At conversion every merging method is the average expert of S13 per causal segment with
    the family's scores, scaled by c, beside the kept shared experts (η = 1, M_i = I)."""
    model = tiny_model(family)
    x = ids(T=27)  # a short last segment
    oracle = copy.deepcopy(model)
    for block in moe_blocks(oracle):
        block.forward = _oracle_block(block, SEG)
    ref = logits(oracle, x)
    out = logits(convert(copy.deepcopy(model), method, segment_len=SEG), x)
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.parametrize("family", ["deepseek_v3", "glm4_moe"])
def test_segment_routing_is_causal_for_sigmoid_routers(family: str) -> None:
    model = convert(tiny_model(family), "namex-full-mom", segment_len=SEG)
    x = ids(T=32)
    p = 11  # inside segment 1: segment 2 routes on it
    x2 = x.clone()
    x2[:, p:] = (x2[:, p:] + 7) % VOCAB
    a, b = logits(model, x), logits(model, x2)
    assert torch.equal(a[:, :p], b[:, :p])
    assert (a[:, p:] - b[:, p:]).abs().max() > 1e-3


# ---- the family's choice of experts (merge_top_k) ---------------------------------------------


@pytest.mark.parametrize("family", ALL)
def test_merge_top_k_chooses_the_experts_the_pretrained_router_chooses(family: str) -> None:
    """select_experts with k = the model's top-k picks the same experts as transformers' own
    router module on the same inputs (correction bias and group limit included)."""
    block = moe_blocks(tiny_model(family))[0]
    fam = family_of(block)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, _, ref_idx = block.gate(x)
        logit = x.float() @ block.gate.weight.float().T
        scores = torch.sigmoid(logit) if fam.scoring == "sigmoid" else torch.softmax(logit, -1)
        bias = getattr(block.gate, "e_score_correction_bias", None)
        idx = select_experts(fam, scores, fam.top_k, bias)
    assert torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)


def test_merge_top_k_keeps_the_chosen_experts_renormalised() -> None:
    """DeepSeek-V3 with merge_top_k = 2: every segment after the first merges exactly the two
    experts transformers' router picks for the previous segment's mean, with scores
    σ_i / (σ_a + σ_b)."""
    model = convert(tiny_model("deepseek_v3"), "smear", segment_len=SEG, merge_top_k=2)
    blk = converted_blocks(model)[0]
    h = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        s = blk._scores(h)[0, 1:]  # (2, N) segments 1, 2
        means = h[0].reshape(3, SEG, 32).mean(1)[:2]
        _, _, ref_idx = blk.gate(means)
        sig = torch.sigmoid(means @ blk.gate.weight.T)
    for r in range(2):
        assert set(s[r].nonzero().flatten().tolist()) == set(ref_idx[r].tolist())
        want = sig[r, ref_idx[r]] / sig[r, ref_idx[r]].sum()
        torch.testing.assert_close(s[r, ref_idx[r]], want, rtol=1e-6, atol=0)


# ---- the first bargain ------------------------------------------------------------------------


@pytest.mark.parametrize("family", NEW)
def test_first_bargain_converges_with_the_default_base(family: str) -> None:
    """S4 at the first converted layer, checked against K formed here from the raw gate_up_proj
    and down_proj stacks and the base (S2: one Gram over the three matrices of an expert)."""
    assert_first_bargain_converges(tiny_model(family), n_experts=N_NEW)


# ---- fine-tuning ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", NEW)
def test_twenty_steps_of_fine_tuning_lower_the_loss(family: str) -> None:
    assert_twenty_steps_lower_the_loss(lambda vocab: tiny_model(family, vocab=vocab))


# ---- unsupported families ---------------------------------------------------------------------


def test_gpt_oss_is_refused_with_the_supported_families_named() -> None:
    """GPT-OSS experts carry biases and a clamped activation: no merging rule is defined, the
    error names the extra parameters and lists every supported family."""
    cfg = transformers.GptOssConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=128, layer_types=["full_attention"],
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedFamilyError, match="gate_up_proj_bias") as err:
        convert(model, "namex-full-mom")
    for name in ALL:
        assert name in str(err.value)
    assert not converted_blocks(model)  # nothing replaced


def test_unknown_router_is_refused_by_name() -> None:
    model = tiny_model("olmoe")
    block = moe_blocks(model)[0]

    class OtherRouter(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

    block.gate = OtherRouter(block.gate)
    with pytest.raises(UnsupportedFamilyError, match=r"OtherRouter.*supported families: .*olmoe"):
        convert(model, "smear")


# ---- merging over many experts -----------------------------------------------------------------


def test_top_k_merge_never_forms_the_n_terms_of_a_segment() -> None:
    """merge_top_k over N = 64 experts: the layer's merge allocates less than one segment-batch
    of N scaled terms (B·S·N·P floats), which the naive materialising merge must allocate; both
    give the same output (float32 rounding of a different summation order)."""
    from namex_ref.hf.bench import topk_merge_table

    rows = {r.path: r for r in topk_merge_table((64,), repeats=1)}
    terms = 2 * 8 * 64 * (32 * 64) * 4  # B·S·N·P float32 bytes
    assert rows["merged_linear"].allocated_bytes < terms <= rows["materialised"].allocated_bytes
    assert rows["materialised"].max_abs_diff < 1e-4
