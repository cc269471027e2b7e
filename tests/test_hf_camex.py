"""The CAMEx-code options of MergeConfig on a converted Hugging Face block (docs/math.md §6,
"CAMEx options on a converted model"; S1, S13, S14, S16): ``sign_mask`` ("ties", "dare"),
``term_dropout``, ``gate="noisy-top-k"``, ``router_per_matrix`` and ``base_init="expert0"``,
each against a written-out oracle that forms the merged SwiGLU expert of every causal segment
by hand from the raw ``gate_up_proj`` / ``down_proj`` parameters. Random draws are replayed with
the same seed in the order the layers document (the "dare" masks of W_gate, W_up, W_down; the
first router's gate noise; its term-dropout mask; the second router's noise and mask).

Oracle set-up: method "camex" (a per-layer base, S14) at conversion has identity Kronecker
factors, so M_i(τ_i) = τ_i = E_i − E_m and the block merges Ŵ = E_m + Σ_i s_i τ_i (η = 1). The
block is called directly with the terms set here (``LayerTerms(base, τ)``), in float64.

Tolerances (float64 unless said). The oracle sums the same products in another order (a
Python loop per token): measured max |Δy| ≤ 8.1e-16·max|y| (ties, dare, term dropout,
router_per_matrix); bound 1e-12·max|y|. Router scores are float32 softmax values (S13's
convention, routing.py), so where the oracle forms a router input in another order (segment
means, the hidden activations of the second router) or the library sums a softmax in another
order (the noisy gate's softmax over its sorted top k against the plain softmax) a score can
differ by a float32 unit (6e-8): bound 1e-6·max|y|; measured 4.5e-16 to 5.2e-16 against the
gating function called on the same means, 4.4e-16 with every option on, 2.1e-7 for the noisy
gate with k = N in eval against the softmax gate.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from namex_ref.hf import convert, converted_blocks
from namex_ref.merging.config import MergeConfig
from namex_ref.merging.functional import LayerTerms
from namex_ref.merging.routing import noisy_top_k_gating
from namex_ref.nash.solvers import RESIDUAL_TOL
from tests.test_hf import FAMILIES, tiny_model

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent

SEG = 4
B, T, H = 2, 11, 32  # three segments, the last one short (3 tokens)
RTOL64 = 1e-12  # see the module docstring
RTOL_GATE = 1e-6


def _block(family: str = "mixtral", **options: Any) -> Any:
    """Layer 0 of a float64 tiny model converted with "camex", its terms set by hand (τ)."""
    model = convert(tiny_model(family).double(), "camex", segment_len=SEG, **options)
    blk = converted_blocks(model)[0]
    base = [b.detach() for b in blk.base()]
    taus = [E.detach() - b for E, b in zip(blk.experts_list(), base, strict=True)]
    blk.terms = LayerTerms(base, taus)
    return blk


def _h(seed: int = 3) -> torch.Tensor:
    return torch.randn(B, T, H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _raw(blk: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Experts and base per matrix [W_gate, W_up, W_down], split here from the raw
    gate_up_proj (N, 2I, H) and down_proj (N, H, I) and base_gate_up / base_down."""
    gu, down = blk.experts.gate_up_proj.detach(), blk.experts.down_proj.detach()
    i = gu.shape[1] // 2
    bgu, bd = blk.base_gate_up.detach(), blk.base_down.detach()
    return [gu[:, :i], gu[:, i:], down], [bgu[:i], bgu[i:], bd]


def _softmax_scores(means: list[torch.Tensor], w: torch.Tensor, n: int) -> list[torch.Tensor]:
    """S13 scores of each segment: uniform for segment 0, softmax(w · mean of segment k − 1)."""
    out = [torch.full((n,), 1.0 / n, dtype=torch.float64)]
    for m in means[:-1]:
        out.append(torch.softmax((w @ m).float(), 0).double())
    return out


def _seg_means(h: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per batch row, the mean of every segment (the last over its own length)."""
    return [[h[b, s : s + SEG].mean(0) for s in range(0, h.shape[1], SEG)]
            for b in range(h.shape[0])]


def _oracle(
    blk: Any,
    h: torch.Tensor,
    scores1: list[list[torch.Tensor]],
    deltas: list[torch.Tensor],
    scores2: Any = None,
) -> torch.Tensor:
    """y[b, t] = Ŵ_down (act(Ŵ_gate v) ∘ Ŵ_up v) with Ŵ_m = E_m + Σ_i s_i deltas_m,i, the
    scores of t's segment (scores1[b][k] for W_gate and W_up; scores2(b, k, hidden of row b)
    for W_down, else scores1), plus the shared expert where the block has one."""
    _, base = _raw(blk)
    act = blk.experts.act_fn
    n = deltas[0].shape[0]
    y = torch.zeros_like(h)
    for b in range(h.shape[0]):
        hidden = torch.zeros(h.shape[1], deltas[0].shape[1], dtype=h.dtype)
        k_of = [t // SEG for t in range(h.shape[1])]
        for t in range(h.shape[1]):
            s = scores1[b][k_of[t]]
            Wg = base[0] + sum(s[i] * deltas[0][i] for i in range(n))
            Wu = base[1] + sum(s[i] * deltas[1][i] for i in range(n))
            hidden[t] = act(Wg @ h[b, t]) * (Wu @ h[b, t])
        for t in range(h.shape[1]):
            s2 = scores1[b][k_of[t]] if scores2 is None else scores2(b, k_of[t], hidden)
            Wd = base[2] + sum(s2[i] * deltas[2][i] for i in range(n))
            y[b, t] = Wd @ hidden[t]
    if blk.shared_expert is not None:
        flat = h.reshape(-1, h.shape[-1])
        sh = torch.sigmoid(blk.shared_expert_gate(flat)) * blk.shared_expert(flat)
        y = y + sh.reshape(h.shape).detach()
    return y


def _err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def _plain_scores(blk: Any, h: torch.Tensor) -> list[list[torch.Tensor]]:
    w = blk.gate.weight.detach()
    return [_softmax_scores(m, w, 4) for m in _seg_means(h)]


# ---- sign_mask ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("training", [False, True])
def test_ties_masks_from_first_principles(family: str, training: bool) -> None:
    """"ties": term i × [sign τ_i = sign Σ_j τ_j] element-wise, τ = raw expert − raw base, in
    train and eval mode (deterministic)."""
    blk = _block(family, sign_mask="ties").train(training)
    h = _h()
    experts, base = _raw(blk)
    taus = [E - b for E, b in zip(experts, base, strict=True)]
    masks = [(t.sign() == t.sum(0).sign()).double() for t in taus]
    assert 0.2 < float(masks[0].mean()) < 0.9  # the mask does something
    ref = _oracle(blk, h, _plain_scores(blk, h), [t * m for t, m in zip(taus, masks, strict=True)])
    with torch.no_grad():
        y = blk(h)
    assert _err(y, ref) <= RTOL64


def test_dare_replays_the_seeded_masks_and_is_identity_in_eval() -> None:
    """"dare": term i × Bernoulli(dare_keep) per element, one draw per matrix in the order
    W_gate, W_up, W_down (no rescaling), training only."""
    blk = _block(sign_mask="dare", dare_keep=0.6)
    experts, base = _raw(blk)
    taus = [E - b for E, b in zip(experts, base, strict=True)]
    h = _h()
    torch.manual_seed(11)
    masks = [torch.empty_like(t).bernoulli_(0.6) for t in taus]
    ref = _oracle(blk, h, _plain_scores(blk, h), [t * m for t, m in zip(taus, masks, strict=True)])
    blk.train()
    torch.manual_seed(11)
    with torch.no_grad():
        y = blk(h)
    assert _err(y, ref) <= RTOL64
    blk.eval()
    plain = _oracle(blk, h, _plain_scores(blk, h), taus)
    with torch.no_grad():
        assert _err(blk(h), plain) <= RTOL64
    assert _err(ref, plain) > 1e-3  # the masks change the output


# ---- term_dropout -------------------------------------------------------------------------------


def test_term_dropout_replays_the_seeded_mask_and_is_identity_in_eval() -> None:
    """Scores s_k,i × m_k,i / (1 − p), m ~ Bernoulli(1 − p) per (batch row, segment, expert),
    one mask for all three matrices (one router)."""
    p = 0.3
    blk = _block(term_dropout=p)
    experts, base = _raw(blk)
    taus = [E - b for E, b in zip(experts, base, strict=True)]
    h = _h()
    plain = _plain_scores(blk, h)
    torch.manual_seed(5)
    keep = torch.empty(B, 3, 4, dtype=torch.float64).bernoulli_(1 - p)
    assert 0 < float(keep.mean()) < 1
    dropped = [[plain[b][k] * keep[b, k] / (1 - p) for k in range(3)] for b in range(B)]
    ref = _oracle(blk, h, dropped, taus)
    blk.train()
    torch.manual_seed(5)
    with torch.no_grad():
        assert _err(blk(h), ref) <= RTOL64
    blk.eval()
    with torch.no_grad():
        assert _err(blk(h), _oracle(blk, h, plain, taus)) <= RTOL64


# ---- the noisy top-k gate -----------------------------------------------------------------------


def _noisy_scores(
    blk: Any, h: torch.Tensor, w: torch.Tensor, wn: torch.Tensor, k: int, noise: Any
) -> tuple[list[list[torch.Tensor]], Any]:
    """noisy_top_k_gating called directly on the means of segments 0 … S − 2 (w, wn: the
    router and noise-router weights), segment 0 uniform; and the gate result."""
    means = _seg_means(h)
    u = torch.stack([torch.stack(m[:-1]) for m in means])  # (B, S − 1, C)
    flat = u.reshape(-1, u.shape[-1])
    gated = noisy_top_k_gating(flat @ w.T, flat @ wn.T, k, noise)
    g = gated.gates.double().reshape(B, -1, 4)
    uni = torch.full((4,), 0.25, dtype=torch.float64)
    return [[uni, *list(g[b])] for b in range(B)], gated


def _cv2(x: torch.Tensor) -> float:
    v = [float(a) for a in x]
    mean = sum(v) / len(v)
    var = sum((a - mean) ** 2 for a in v) / (len(v) - 1)
    return var / (mean**2 + 1e-10)


@pytest.mark.parametrize("training", [False, True])
def test_noisy_gate_against_the_gating_function_on_segment_means(training: bool) -> None:
    """gate="noisy-top-k" with k = 2 < N: scores of segment k ≥ 1 from the means of segment
    k − 1, segment 0 uniform; noise ε = randn(B·(S−1), N) in training only; balance loss
    balance_coef·(cv²(Σ gates) + cv²(load)), formed here by hand."""
    blk = _block(gate="noisy-top-k", gate_top_k=2, balance_coef=0.5)
    with torch.no_grad():  # the noise router starts at zero: give it a direction
        blk.noise_router.weight.copy_(torch.randn(4, H, generator=torch.Generator().manual_seed(2)))
    experts, base = _raw(blk)
    taus = [E - b for E, b in zip(experts, base, strict=True)]
    h = _h()
    torch.manual_seed(9)
    noise = torch.randn(B * 2, 4) if training else None
    w, wn = blk.gate.weight.detach(), blk.noise_router.weight.detach()
    scores, gated = _noisy_scores(blk, h, w, wn, 2, noise)
    assert all(int((s > 0).sum()) == 2 for row in scores for s in row[1:])
    ref = _oracle(blk, h, scores, taus)
    blk.train(training)
    torch.manual_seed(9)
    with torch.no_grad():
        y = blk(h)
    assert _err(y, ref) <= RTOL_GATE
    aux = 0.5 * (_cv2(gated.gates.sum(0)) + _cv2(gated.load))
    assert math.isclose(float(blk.aux_loss), aux, rel_tol=1e-5)  # float32 loss
    assert aux > 0


def test_noisy_gate_with_k_equal_n_in_eval_is_the_softmax_gate() -> None:
    """No noise and k = N: the gate is the router softmax, the default conversion's scores."""
    noisy, plain = _block(gate="noisy-top-k"), _block()
    h = _h()
    with torch.no_grad():
        assert _err(noisy(h), plain(h)) <= RTOL_GATE


# ---- router_per_matrix --------------------------------------------------------------------------


def test_router_per_matrix_routes_w_down_on_the_hidden_activations() -> None:
    """W_gate, W_up: the pretrained router on the block inputs; W_down: the second router
    (I → N) on the segment means of the merged hidden act(W_gate x) ∘ (W_up x), segment 0
    uniform (the short last segment's mean is never used)."""
    blk = _block("qwen2_moe", router_per_matrix=True)
    w2 = torch.randn(4, blk.intermediate, generator=torch.Generator().manual_seed(4),
                     dtype=torch.float64)
    with torch.no_grad():
        blk.router_hidden.weight.copy_(w2)
    experts, base = _raw(blk)
    taus = [E - b for E, b in zip(experts, base, strict=True)]
    h = _h()

    def scores2(b: int, k: int, hidden: torch.Tensor) -> torch.Tensor:
        if k == 0:
            return torch.full((4,), 0.25, dtype=torch.float64)
        prev = hidden[(k - 1) * SEG : k * SEG].mean(0)
        return torch.softmax((w2 @ prev).float(), 0).double()

    ref = _oracle(blk, h, _plain_scores(blk, h), taus, scores2)
    with torch.no_grad():
        y = blk(h)
    assert _err(y, ref) <= RTOL64
    assert _err(ref, _oracle(blk, h, _plain_scores(blk, h), taus)) > 1e-3  # it matters


def test_all_options_replay_the_documented_draw_order() -> None:
    """dare (3 masks) → first gate noise → first term-dropout mask → second gate noise →
    second term-dropout mask, as MoEFeedForward (tests/test_merging_camex.py)."""
    p, keep_p = 0.25, 0.7
    blk = _block("olmoe", sign_mask="dare", dare_keep=keep_p, term_dropout=p,
                 gate="noisy-top-k", gate_top_k=3, router_per_matrix=True)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for lin in (blk.noise_router, blk.router_hidden, blk.noise_router_hidden):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))
    experts, base = _raw(blk)
    taus = [E - b for E, b in zip(experts, base, strict=True)]
    h = _h()
    torch.manual_seed(21)
    masks = [torch.empty_like(t).bernoulli_(keep_p) for t in taus]
    noise1 = torch.randn(B * 2, 4)
    keep1 = torch.empty(B, 3, 4, dtype=torch.float64).bernoulli_(1 - p)
    s1, _ = _noisy_scores(blk, h, blk.gate.weight.detach(), blk.noise_router.weight.detach(), 3,
                          noise1)
    s1 = [[s1[b][k] * keep1[b, k] / (1 - p) for k in range(3)] for b in range(B)]
    deltas = [t * m for t, m in zip(taus, masks, strict=True)]
    # the hidden activations do not depend on the second router: form them once to replay the
    # second draws (noise2 then keep2) in the layer's order
    hid = _oracle_hidden(blk, h, s1, deltas)
    noise2 = torch.randn(B * 2, 4)
    keep2 = torch.empty(B, 3, 4, dtype=torch.float64).bernoulli_(1 - p)
    s2, _ = _noisy_scores(blk, hid, blk.router_hidden.weight.detach(),
                          blk.noise_router_hidden.weight.detach(), 3, noise2)

    def scores2(b: int, k: int, hidden: torch.Tensor) -> torch.Tensor:
        return s2[b][k] * keep2[b, k] / (1 - p)

    ref = _oracle(blk, h, s1, deltas, scores2)
    blk.train()
    torch.manual_seed(21)
    with torch.no_grad():
        y = blk(h)
    assert _err(y, ref) <= RTOL_GATE


def _oracle_hidden(
    blk: Any, h: torch.Tensor, scores1: list[list[torch.Tensor]], deltas: list[torch.Tensor]
) -> torch.Tensor:
    """(B, T, I) hidden act(Ŵ_gate v) ∘ (Ŵ_up v) of every token, written out."""
    _, base = _raw(blk)
    n = deltas[0].shape[0]
    out = torch.zeros(h.shape[0], h.shape[1], deltas[0].shape[1], dtype=h.dtype)
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            s = scores1[b][t // SEG]
            Wg = base[0] + sum(s[i] * deltas[0][i] for i in range(n))
            Wu = base[1] + sum(s[i] * deltas[1][i] for i in range(n))
            out[b, t] = blk.experts.act_fn(Wg @ h[b, t]) * (Wu @ h[b, t])
    return out


def test_router_per_matrix_refuses_cached_decoding() -> None:
    model = convert(tiny_model("mixtral"), "camex", segment_len=SEG, router_per_matrix=True)
    x = torch.randint(2, 60, (1, 6))
    with torch.no_grad():
        out = model(x, use_cache=True)
        with pytest.raises(ValueError, match=r"router_per_matrix=True .* use_cache=False"):
            model(x[:, -1:], past_key_values=out.past_key_values, use_cache=True)


# ---- base_init="expert0" ------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_expert0_base_starts_as_the_segment_average(family: str) -> None:
    """base = expert 0 (τ_0 = 0 exactly); "camex" at conversion is still S13's average expert
    E_m + Σ s_i (E_i − E_m) = Σ s_i E_i, the default conversion's function."""
    model = tiny_model(family).double()
    a = convert(copy.deepcopy(model), "camex", segment_len=SEG, base_init="expert0")
    blk = converted_blocks(a)[0]
    for E, b in zip(blk.experts_list(), blk.base(), strict=True):
        assert torch.equal(E[0], b)
    b_ = convert(copy.deepcopy(model), "camex", segment_len=SEG)
    x = torch.randint(2, 60, (2, 11))
    with torch.no_grad():
        la, lb = a(x).logits, b_(x).logits
    # the scores are float32 softmax values: Σ_i s_i = 1 only to N·2⁻²⁴ ≈ 2.4e-7, and the rest
    # (1 − Σ s_i)·E_m differs between the two bases; measured 7.6e-9 relative, bound 1e-6
    assert _err(la, lb) <= 1e-6


@pytest.mark.parametrize("policy", ["ridge", "uniform"])
def test_expert0_first_bargain_is_singular_and_the_policy_takes_over(policy: str) -> None:
    """τ_0 = 0: K has a zero row and column (K_00 = 0), so K α = 1/α has no solution (S4 needs
    α_0 (Kα)_0 = 1). The bargain reports residual 1 and a fallback; the policy's α is finite
    and positive and the logits finite; α_0 multiplies τ_0 = 0, so it does not enter ΔE. After
    one training step the bargain converges again.
    singular_policy="raise" is refused when the config is made."""
    model = convert(tiny_model("mixtral"), "namex-full-mom", segment_len=SEG,
                    base_init="expert0", singular_policy=policy)
    x = torch.randint(2, 60, (2, 11))
    with torch.no_grad():
        out = model(x).logits
    plan = model.namex_plan
    assert bool(plan.fallbacks[0])
    assert float(plan.residuals[0]) == pytest.approx(1.0)
    alpha = plan.alphas[0]
    assert torch.isfinite(alpha).all() and (alpha > 0).all()
    assert torch.isfinite(out).all()
    # one optimiser step moves expert 0 and the base apart (their gradients differ: s_0·g
    # against g − Σ_i s_i g), so the next bargain is regular: converged, no fallback
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    model(x, labels=x).loss.backward()
    opt.step()
    with torch.no_grad():
        model(x)
    assert not bool(model.namex_plan.fallbacks[0])
    assert float(model.namex_plan.residuals[0]) <= RESIDUAL_TOL
    with pytest.raises(ValueError, match="singular_policy='raise'"):
        MergeConfig(method="namex", base_init="expert0", singular_policy="raise")
    with pytest.raises(ValueError, match="base_rule='zero' would be ignored"):
        convert(tiny_model("mixtral"), "camex", base_init="expert0", base_rule="zero")


# ---- the training objective and namex train -----------------------------------------------------


def test_noisy_gate_balance_loss_enters_the_objective() -> None:
    """HFCausalLM's loss = cross-entropy + Σ_layers the blocks' balance loss (train mode)."""
    from namex_ref.hf.training import HFCausalLM

    hf = convert(tiny_model("olmoe"), "camex", segment_len=SEG, gate="noisy-top-k",
                 gate_top_k=2, balance_coef=0.1)
    model = HFCausalLM(hf, seq_len=16).train()
    x = torch.randint(2, 60, (2, 16))
    torch.manual_seed(0)
    out = model(x, x)
    total = sum(float(b.aux_loss.detach()) for b in converted_blocks(hf))
    assert total > 0
    assert float(out.aux_loss.detach()) == pytest.approx(total, rel=1e-6)
    lg = out.logits.detach()
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), x.reshape(-1))
    assert float(out.loss.detach()) == pytest.approx(float(ce) + total, rel=1e-6)


def test_namex_train_runs_the_camex_paper_preset_without_biases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--merge-preset camex-paper sets expert_bias, refused on SwiGLU experts with the preset
    named; with --expert-bias false the rest of the bundle (8 Kronecker terms, ties, noisy gate
    k = N, one router per matrix, expert-0 base) trains: finite losses, the last below the
    first."""
    from namex_ref.cli import main
    from namex_ref.train.metrics import read_jsonl

    src = tmp_path / "olmoe"
    tiny_model("olmoe", vocab=320).save_pretrained(src)
    args = ["train", "--hf-model", str(src), "--method", "namex-full-mom",
            "--merge-preset", "camex-paper", "--steps", "6", "--batch-size", "2",
            "--seq-len", "16", "--segment-len", "4", "--lr", "3e-3", "--warmup", "1",
            "--log-every", "1", "--eval-every", "0", "--ckpt-every", "0",
            "--final-eval-batches", "1", "--corpus-chars", "20000", "--device", "cpu",
            "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "--merge-preset camex-paper (sets expert_bias)" in err and "no biases" in err
    assert main([*args, "--expert-bias", "false", "--out", str(tmp_path / "run")]) == 0
    losses = [float(r["loss"]) for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


# ---- memory modes and save / load ---------------------------------------------------------------

ALL_DETERMINISTIC = dict(sign_mask="ties", gate="noisy-top-k", gate_top_k=3,
                         router_per_matrix=True, base_init="expert0", kronecker_terms=2)


@pytest.mark.parametrize("mode", ["recompute", "keep-deltas"])
def test_options_keep_the_eager_gradients(mode: str) -> None:
    """With the options on (eval mode: deterministic), every merge_memory mode gives the eager
    loss and gradients (the masked terms are kept, not recomputed). float32: the same sums in
    another order, rtol 1e-5 (as tests/test_hf.py's memory-mode test)."""
    grads = {}
    for m in ("eager", mode):
        model = convert(tiny_model("qwen2_moe"), "camex", segment_len=SEG, merge_memory=m,
                        **ALL_DETERMINISTIC)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():  # curvature off the identity, new routers off zero
            for name, p in model.named_parameters():
                if "curvature" in name or "router" in name:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        x = torch.randint(2, 60, (2, 11), generator=torch.Generator().manual_seed(1))
        model(x, labels=x).loss.backward()
        grads[m] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any("router_hidden" in n for n in grads["eager"])
    assert grads["eager"].keys() == grads[mode].keys()
    for n, gr in grads["eager"].items():
        assert torch.allclose(grads[mode][n], gr, rtol=1e-5, atol=1e-7), n


def test_save_load_keeps_the_new_routers(tmp_path: Path) -> None:
    """save / load: the noise and hidden routers are parameters of the saved model (logits
    bit for bit after a reload)."""
    from namex_ref.hf import load, save

    model = convert(tiny_model("mixtral"), "camex", segment_len=SEG, **ALL_DETERMINISTIC)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    save(model, tmp_path / "m")
    x = torch.randint(2, 60, (2, 11))
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m")(x).logits, model(x).logits)
