"""``dare_granularity="segment"``: the CAMEx code's live DARE mask (``layers.py::Conv1D_MEO``
at kpup1710/CAMEx 11ba81d, docs/math.md §6 "Differences from the CAMEx code"): one
Bernoulli(dare_keep) mask per (routing unit, expert, entry) instead of one per (expert, entry).

Oracle: a converted float64 block ("camex", identity curvature, so the terms are τ_i =
E_i − E_m, tests/test_hf_camex.py's set-up), its output written out token by token with
Ŵ_m[b, k] = E_m + Σ_i s_bki (mask_m[b, k, i] ∘ τ_m,i) for the segment k of the token, the masks
replayed from the same seed in the documented order (W_gate, W_up, W_down, each one
``bernoulli_`` draw of shape (B, S, N, *P_m)). Tolerance: float64, the oracle sums the same
products in another order: 1e-12·max|y| (tests/test_hf_camex.py's RTOL64).
"""

from __future__ import annotations

import math

import pytest
import torch

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.operators import merge_weights
from tests.test_hf_camex import RTOL64, SEG, T, _block, _err, _h, _plain_scores, _raw

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent


def _segment_oracle(blk, h, scores, masks, taus):  # type: ignore[no-untyped-def]
    """y[b, t] with per-(segment, expert, entry) masked terms (module docstring)."""
    _, base = _raw(blk)
    act = blk.experts.act_fn
    n = taus[0].shape[0]
    y = torch.zeros_like(h)
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            k = t // SEG
            s = scores[b][k]
            W = [base[m] + sum(s[i] * masks[m][b, k, i] * taus[m][i] for i in range(n))
                 for m in range(3)]
            y[b, t] = W[2] @ (act(W[0] @ h[b, t]) * (W[1] @ h[b, t]))
    return y


def test_segment_dare_masks_each_segment_on_its_own() -> None:
    keep = 0.6
    blk = _block(sign_mask="dare", dare_keep=keep, dare_granularity="segment")
    experts, base = _raw(blk)
    taus = [E - b for E, b in zip(experts, base, strict=True)]
    h = _h()
    S = math.ceil(T / SEG)
    torch.manual_seed(11)
    masks = [torch.empty((h.shape[0], S, *t.shape), dtype=t.dtype).bernoulli_(keep)
             for t in taus]
    assert not torch.equal(masks[0][:, 0], masks[0][:, 1])  # segments differ
    ref = _segment_oracle(blk, h, _plain_scores(blk, h), masks, taus)
    blk.train()
    torch.manual_seed(11)
    with torch.no_grad():
        y = blk(h)
    assert _err(y, ref) <= RTOL64
    # the default granularity shares one mask per (expert, entry): a different output
    shared = [m[:1, :1].expand_as(m) for m in masks]
    assert _err(_segment_oracle(blk, h, _plain_scores(blk, h), shared, taus), ref) > 1e-3
    blk.eval()  # no masks in eval, as for the default granularity
    with torch.no_grad():
        y_eval = blk(h)
    ones = [torch.ones_like(m) for m in masks]
    assert _err(y_eval, _segment_oracle(blk, h, _plain_scores(blk, h), ones, taus)) <= RTOL64


def test_per_unit_terms_merge_as_written_out() -> None:
    """merge_weights with (B, S, N, *P) terms: Ŵ[b, s] = E_m + η Σ_i s_bsi D_bsi (loops)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 2, generator=g, dtype=torch.float64)
    d = torch.randn(2, 4, 5, 3, 2, generator=g, dtype=torch.float64)  # (B, S, N, out, in)
    s = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    w = merge_weights(base, d, s, 0.7)
    for b in range(2):
        for k in range(4):
            want = base + 0.7 * sum(s[b, k, i] * d[b, k, i] for i in range(5))
            torch.testing.assert_close(w[b, k], want, rtol=1e-14, atol=1e-14)


def test_dare_granularity_is_validated() -> None:
    with pytest.raises(ValueError, match="dare_granularity must be one of"):
        MergeConfig(method="camex", sign_mask="dare", dare_granularity="token")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only used with sign_mask='dare'"):
        MergeConfig(method="camex", dare_granularity="segment")
    assert MergeConfig().dare_granularity == "expert"


def test_gpt_layer_with_segment_masks_trains_and_keep_one_is_the_plain_merge() -> None:
    """The GPT layer (weights and biases, len(terms) = 4): with dare_keep = 1 every per-segment
    mask is 1, so training output and gradients equal the unmasked layer's (to float64
    rounding of the per-unit merge); with dare_keep = 0.5 training runs forward and backward
    and the output differs from eval's."""
    from namex_ref.merging.layers import MoEFeedForward
    from namex_ref.merging.plan import propagate

    def make(**kw):  # type: ignore[no-untyped-def]
        cfg = MergeConfig(method="camex", n_experts=3, segment_len=3, expert_bias=True, **kw)
        torch.manual_seed(0)
        layer = MoEFeedForward(6, 8, cfg, has_base=True).double()
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1),
                                         dtype=p.dtype))
        return layer

    x = torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    outs, grads = [], []
    for kw in ({}, {"sign_mask": "dare", "dare_keep": 1.0, "dare_granularity": "segment"}):
        layer = make(**kw).train()
        terms = propagate([layer.experts()], [layer.base()], layer.config, [layer.curve]).terms[0]
        y = layer(x, terms).y
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in layer.parameters() if p.grad is not None])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    layer = make(sign_mask="dare", dare_keep=0.5, dare_granularity="segment").train()
    terms = propagate([layer.experts()], [layer.base()], layer.config, [layer.curve]).terms[0]
    y = layer(x, terms).y
    y.sum().backward()
    assert (y - layer.eval()(x, terms).y).abs().max() > 1e-3
