"""Generation with a KV cache on converted Hugging Face models (docs/math.md §6, "Cached
decoding of a converted model"; S13–S18 causal segment routing), and the merging methods in
bfloat16 against a float64 written-out oracle (docs/math.md §7 tolerances: see
:func:`test_bfloat16_merging_matches_a_float64_oracle`).

With ``use_cache=True`` transformers feeds only the new tokens to the model, so a segment's
router input (the mean of the previous segment, S13) is not in the call. The converted blocks
keep, per cache, the scores of the current segment and the block inputs of its tokens so far;
these tests hold cached decoding to the full forward on the whole sequence (``use_cache=False``,
itself checked against the written-out per-segment oracle in tests/test_hf.py).

Tolerance (float32). Cached and full forwards run the same maths on the same values, but the
attention kernels see different shapes (one query against the cache vs the whole causal
matrix) and the segment means and merged weights are formed from tensors of other shapes, so
the hidden states differ by float32 rounding: bound 1e-5·max|logit| (eps 1.2e-7 times a
growth of ~10 through two layers with the sharpened routers below; measured up to
1.2e-6·max|logit| over the 9 generate cases, 8× under the bound). The bug this guards against
(scores from the new tokens alone) moves the logits by ~1·max|logit| on these models and
changes the greedy continuation.
"""

from __future__ import annotations

import copy

import pytest
import torch

from namex_ref.hf import convert
from tests.test_hf import FAMILIES, SEG, _oracle_block, ids, tiny_model

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent

PROMPT = 13  # not a multiple of SEG: the prompt ends inside segment 1
NEW = 20  # positions 13 … 32: crosses the boundaries at 16, 24 and 32
F32_BOUND = 1e-5


def sharp_model(family: str) -> torch.nn.Module:
    """:func:`tests.test_hf.tiny_model` with routers ×30 and experts ×8: at the initial scale
    (std 0.02) the segment scores and the experts barely move the logits (a wrong segment
    score changes them by ~5e-4 of their size); here by about their size, so routing errors
    show in the greedy tokens."""
    model = tiny_model(family)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(30)
            layer.mlp.experts.gate_up_proj.mul_(8)
            layer.mlp.experts.down_proj.mul_(8)
    return model


def greedy(model: torch.nn.Module, x: torch.Tensor, use_cache: bool, **kw: object):  # type: ignore[no-untyped-def]
    return model.generate(
        x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=NEW,
        use_cache=use_cache, output_logits=True, return_dict_in_generate=True, pad_token_id=1,
        **kw,
    )


def assert_close(out: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    err = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    assert err <= rel * scale, f"max |Δlogit| {err:.3g} > {rel:g}·{scale:.3g}"


@pytest.mark.parametrize(
    ("method", "options"),
    [("namex-full-mom", {}), ("smear", {"merge_top_k": 2}), ("ep-camex", {})],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_generation_equals_the_full_forward(
    family: str, method: str, options: dict[str, object]
) -> None:
    """generate(use_cache=True) gives the tokens and the logits of generate(use_cache=False),
    which runs the whole sequence at every step (float32 bound: module docstring)."""
    model = convert(sharp_model(family), method, segment_len=SEG, **options)
    x = ids(T=PROMPT)
    cached, full = greedy(model, x, True), greedy(model, x, False)
    assert torch.equal(cached.sequences, full.sequences)
    assert_close(torch.stack(cached.logits, 1), torch.stack(full.logits, 1), F32_BOUND)


def _chunked(model: torch.nn.Module, x: torch.Tensor, sizes: list[int], cache: object = None):  # type: ignore[no-untyped-def]
    """Logits of x fed through the cache in chunks of these sizes."""
    outs, start = [], 0
    with torch.no_grad():
        for n in sizes:
            out = model(x[:, start : start + n], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            outs.append(out.logits)
            start += n
    assert start == x.shape[1]
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_chunks_of_any_size_equal_the_full_forward(family: str) -> None:
    """Prefill 13 tokens (the model makes its own cache), then chunks of 1, 12, 6, 3 tokens:
    one inside segment 1 (13 → 14), one that finishes segment 1 and crosses two boundaries
    into segment 3 (14 → 26: stored scores for 2 tokens, then two segments routed on means
    formed from the stored tail and the new tokens), one that ends on a boundary (26 → 32) and
    one that starts on a boundary (32 → 35). Every logit as the uncached forward on all 35
    tokens (float32 bound: module docstring). A second pass with a fresh cache gives the same
    logits: the segment state belongs to the cache, not the model."""
    model = convert(sharp_model(family), "namex-full-mom", segment_len=SEG)
    x = ids(B=2, T=35)
    with torch.no_grad():
        ref = model(x, use_cache=False).logits
    sizes = [PROMPT, 1, 12, 6, 3]
    out, cache = _chunked(model, x, sizes)
    assert cache.get_seq_length() == 35
    assert_close(out, ref, F32_BOUND)
    again, _ = _chunked(model, x, sizes, transformers.DynamicCache(config=model.config))
    assert torch.equal(again, out)


def test_beam_search_is_refused_with_the_fix_named() -> None:
    """Beam search reorders the cache's batch rows between steps, which the blocks' segment
    state does not follow: generate raises a ValueError naming use_cache=False, and
    use_cache=False runs."""
    model = convert(sharp_model("olmoe"), "namex-full-mom", segment_len=SEG)
    x = ids(T=PROMPT)
    with pytest.raises(ValueError, match="use_cache=False"):
        greedy(model, x, True, num_beams=2)
    out = greedy(model, x, False, num_beams=2)
    assert out.sequences.shape == (2, PROMPT + NEW)


def test_a_cache_changed_elsewhere_is_refused() -> None:
    model = convert(sharp_model("mixtral"), "smear", segment_len=SEG)
    x = ids(T=PROMPT + 3)
    with torch.no_grad():
        cache = model(x[:, :PROMPT], use_cache=True).past_key_values
        cache.crop(-2)  # as assisted decoding does
        with pytest.raises(ValueError, match="cropped, reordered"):
            model(x[:, PROMPT - 2 :], past_key_values=cache, use_cache=True)
        plain = tiny_model("mixtral")  # a cache filled by another model: no segment state
        foreign = plain(x[:, :PROMPT], use_cache=True).past_key_values
        with pytest.raises(ValueError, match=r"did not process itself.*use_cache=False"):
            model(x[:, PROMPT:], past_key_values=foreign, use_cache=True)


def test_sequence_routing_refuses_a_non_empty_cache() -> None:
    model = convert(sharp_model("qwen2_moe"), "smear", routing="sequence")
    x = ids(T=PROMPT + 1)
    with torch.no_grad():
        cache = model(x[:, :PROMPT], use_cache=True).past_key_values
        with pytest.raises(ValueError, match=r"routing='sequence'.*use_cache=False"):
            model(x[:, PROMPT:], past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_smoe_generation_with_cache_is_the_pretrained_models(family: str) -> None:
    """smoe keeps token routing (no segment state): cached generation gives the tokens and
    logits of the unconverted model's own cached generation (same modules: to the bit)."""
    model = sharp_model(family)
    x = ids(T=PROMPT)
    ref = greedy(model, x, True)
    out = greedy(convert(model, "smoe"), x, True)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(torch.stack(out.logits, 1), torch.stack(ref.logits, 1))


# ---- bfloat16 against a float64 oracle --------------------------------------------------------

U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits): one stored value's rounding


@pytest.mark.parametrize("method", ["smear", "ep-camex", "namex-full-mom"])
@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_merging_matches_a_float64_oracle(family: str, method: str) -> None:
    """The converted model in bfloat16 against :func:`tests.test_hf._oracle_block` in float64
    (float64 scores) on the same parameters (bfloat16 values are exact in float64, so only the
    arithmetic differs), each block on the very bfloat16 input the converted block received,
    and the whole model.

    Bounds, with u = 2⁻⁸ the relative rounding of one stored bfloat16 value:
    - one block: 8u·max|y|. In series: the merge stores E_i − E_m, the products s_i(E_i − E_m)
      summed and the base added (≤ 3u on Ŵ, s itself rounded once), then W_gate x, W_up x,
      act(·), the product and W_down x each stored once (5u): 8u if every rounding adds up
      in the same direction (matmuls accumulate in float32). Measured 1.4u … 2.8u.
    - logits: 16u·max|logit|, the same budget for each of the 2 layers (attention and the
      norms round about as often as the merge). Measured 3.9u … 7.9u; the unconverted model
      (HF's own top-k kernels) in bfloat16 against float32 on these models is at 3.8u … 7.9u
      too, so the merge adds no bfloat16 error of its own.
    A wrong score row (one segment off) moves these logits by ~1·max|logit| (= 256u).
    The model also stays bfloat16 throughout: no float32 parameter or block output."""
    model = sharp_model(family).to(torch.bfloat16)
    oracle = copy.deepcopy(model).double()
    for layer in oracle.model.layers:
        layer.mlp.forward = _oracle_block(layer.mlp, SEG, score_dtype=None)
    conv = convert(model, method, segment_len=SEG)
    assert all(p.dtype == torch.bfloat16 for p in conv.parameters())
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        layer.mlp.register_forward_hook(lambda mod, a, out: seen.append((a[0], out)))
        for layer in conv.model.layers
    ]
    x = ids(T=27)  # a short last segment
    with torch.no_grad():
        out = conv(x).logits
        ref = oracle(x).logits
        for layer, (h, y) in zip(oracle.model.layers, seen, strict=True):
            assert y.dtype == torch.bfloat16
            assert_close(y, layer.mlp(h.double()), 8 * U_BF16)
    for hook in hooks:
        hook.remove()
    assert out.dtype == torch.bfloat16
    assert_close(out, ref, 16 * U_BF16)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_cached_decoding_matches_the_float64_oracle(family: str) -> None:
    """The chunks of :func:`test_cached_chunks_of_any_size_equal_the_full_forward` through the
    cache in bfloat16, against the float64 oracle on all 35 tokens at once: the logits bound
    of :func:`test_bfloat16_merging_matches_a_float64_oracle` (16u·max|logit|; the cached
    path stores its tail and scores in bfloat16 and forms the same means). Measured 5.9u …
    8.1u (the uncached bfloat16 forward: 5.7u … 7.3u)."""
    model = sharp_model(family).to(torch.bfloat16)
    oracle = copy.deepcopy(model).double()
    for layer in oracle.model.layers:
        layer.mlp.forward = _oracle_block(layer.mlp, SEG, score_dtype=None)
    conv = convert(model, "namex-full-mom", segment_len=SEG)
    x = ids(B=2, T=35)
    out, _ = _chunked(conv, x, [PROMPT, 1, 12, 6, 3])
    with torch.no_grad():
        ref = oracle(x, use_cache=False).logits
    assert out.dtype == torch.bfloat16
    assert_close(out, ref, 16 * U_BF16)
