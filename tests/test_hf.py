"""namex_ref.hf: NAMEx on Hugging Face MoE models (Qwen2-MoE, Mixtral, OLMoE; docs/math.md §6,
"Base expert of a converted model"; S1, S2, S4, S13–S18). Offline: tiny random models built from
config classes, never a download.

Tolerances. "smoe" runs the pretrained block's own router and expert modules, so its logits are
the original's to the bit (measured max |Δlogit| = 0 in float32 and bfloat16); the bound used is
4·eps(dtype)·max|logit|, room for a different kernel order only. A merging method against the
written-out per-segment oracle: same maths in another order, float32, bound 1e-5·max|logit|
(measured ~1e-7).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from namex_ref.hf import (
    HF_EXTRA_HINT,
    MissingExtraError,
    convert,
    converted_blocks,
    load,
    require_transformers,
    save,
)
from namex_ref.nash.solvers import RESIDUAL_TOL

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent

FAMILIES = ["qwen2_moe", "mixtral", "olmoe"]
VOCAB = 64
SEG = 8


def tiny_model(family: str, seed: int = 0, vocab: int = VOCAB) -> torch.nn.Module:
    """2 layers, 4 experts (top-2), hidden 32, expert width 16: random, from the config class."""
    kw = dict(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )
    if family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=24, intermediate_size=48, **kw,
        )
    elif family == "mixtral":
        cfg = transformers.MixtralConfig(
            num_local_experts=4, num_experts_per_tok=2, intermediate_size=16, **kw
        )
    else:
        cfg = transformers.OlmoeConfig(
            num_experts=4, num_experts_per_tok=2, intermediate_size=16, **kw
        )
    torch.manual_seed(seed)
    model: torch.nn.Module = transformers.AutoModelForCausalLM.from_config(cfg)
    return model.eval()


def ids(B: int = 2, T: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(x).logits
    return out


# ---- 2. exactness -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_smoe_reproduces_the_pretrained_logits(family: str, dtype: torch.dtype) -> None:
    model = tiny_model(family).to(dtype)
    x = ids()
    ref = logits(model, x)
    conv = convert(copy.deepcopy(model), "smoe")
    assert len(converted_blocks(conv)) == 2
    out = logits(conv, x)
    bound = 4 * torch.finfo(dtype).eps * ref.abs().max().item()
    assert (out.float() - ref.float()).abs().max().item() <= bound


def _oracle_block(
    block: torch.nn.Module, seg: int, *, score_dtype: torch.dtype | None = torch.float32
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Independent S13 at conversion, written out per segment: for segment k ≥ 1,
    s = softmax(W_r · mean of segment k − 1), s = 1/N on segment 0; W = Σ_i s_i W_i for each of
    gate, up, down; y = W_down (act(W_gate x) ∘ W_up x) token by token (+ Qwen2's shared part).
    score_dtype: the dtype of s (float32, as the layer computes it; ``None`` = the hidden
    states' dtype, e.g. float64 throughout for a float64 oracle)."""
    Wr = block.gate.weight.detach()
    gu, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    n, two_i, _ = gu.shape
    half = two_i // 2
    act = block.experts.act_fn

    def forward(h: torch.Tensor) -> torch.Tensor:
        B, T, H = h.shape
        dtype = h.dtype if score_dtype is None else score_dtype
        y = torch.zeros_like(h)
        for b in range(B):
            for start in range(0, T, seg):
                if start == 0:
                    s = torch.full((n,), 1.0 / n, dtype=dtype)
                else:
                    prev = h[b, start - seg : start].mean(0)
                    s = torch.softmax((Wr @ prev).to(dtype), 0)
                Wg = sum(s[i] * gu[i, :half] for i in range(n))
                Wu = sum(s[i] * gu[i, half:] for i in range(n))
                Wd = sum(s[i] * down[i] for i in range(n))
                for t in range(start, min(start + seg, T)):
                    v = h[b, t]
                    y[b, t] = Wd @ (act(Wg @ v) * (Wu @ v))
        if hasattr(block, "shared_expert"):
            flat = h.reshape(-1, H)
            sh = torch.sigmoid(block.shared_expert_gate(flat)) * block.shared_expert(flat)
            y = y + sh.reshape(B, T, H)
        return y

    return forward


@pytest.mark.parametrize("method", ["namex-full-mom", "camex"])
@pytest.mark.parametrize("family", FAMILIES)
def test_merging_method_matches_written_out_segments(family: str, method: str) -> None:
    """At conversion every merging method is S13's average expert per causal segment (η = 1,
    M_i = I: E_m + Σ s_i (E_i − E_m) = Σ s_i E_i whatever the base)."""
    model = tiny_model(family)
    x = ids(T=27)  # a short last segment
    oracle = copy.deepcopy(model)
    for layer in oracle.model.layers:
        layer.mlp.forward = _oracle_block(layer.mlp, SEG)
    ref = logits(oracle, x)
    out = logits(convert(copy.deepcopy(model), method, segment_len=SEG), x)
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_segment_routing_is_causal_through_the_whole_model() -> None:
    model = convert(tiny_model("qwen2_moe"), "namex-full-mom", segment_len=SEG)
    x = ids(T=32)
    p = 11  # inside segment 1: segment 2 routes on it
    x2 = x.clone()
    x2[:, p:] = (x2[:, p:] + 7) % VOCAB
    a, b = logits(model, x), logits(model, x2)
    assert torch.equal(a[:, :p], b[:, :p])
    assert (a[:, p:] - b[:, p:]).abs().max() > 1e-3  # the change is seen downstream


# ---- 1. base expert and the first bargain ----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_first_bargain_converges_with_the_default_base(family: str) -> None:
    """S4 at layer 0 of a converted model, checked against K formed here from the raw
    gate_up_proj / down_proj (S2: one Gram over all three matrices of an expert)."""
    assert_first_bargain_converges(tiny_model(family), n_experts=4)


def assert_first_bargain_converges(source: torch.nn.Module, n_experts: int) -> None:
    """S4 at layer 0 of ``source`` converted to NAMEx-Full-Mom: no fallback, Newton's residual,
    and α·(Kα) = 1 with K formed here from the raw gate_up_proj / down_proj stacks and the base
    (S2: one Gram over all three matrices of an expert). Shared by every family's test."""
    model = convert(source, "namex-full-mom", segment_len=SEG)
    logits(model, ids())
    plan = model.namex_plan
    assert not bool(plan.fallbacks[0])
    assert float(plan.residuals[0]) <= RESIDUAL_TOL
    blk = converted_blocks(model)[0]
    E = torch.cat(
        [blk.experts.gate_up_proj.detach().flatten(1), blk.experts.down_proj.detach().flatten(1)],
        1,
    ).double()
    base = torch.cat([blk.base_gate_up.detach().flatten(), blk.base_down.detach().flatten()])
    tau = E - base.double()
    K = tau @ tau.T
    alpha = plan.alphas[0]
    assert torch.allclose(alpha * (K @ alpha), torch.ones(n_experts, dtype=torch.float64),
                          atol=1e-5)


def test_mean_base_has_no_bargain_and_the_default_rule_does() -> None:
    """Σ τ_i = 0 for the mean base: 1 is an S6 certificate (K1 = 0), the Newton solve fails and
    the policy takes over; the perturbed mean gives K = CCᵀ + s²11ᵀ, positive definite."""
    model = convert(tiny_model("mixtral"), "namex", segment_len=SEG, base_rule="mean")
    blk = converted_blocks(model)[0]
    taus = [E - b for E, b in zip(blk.experts_list(), blk.base(), strict=True)]
    total = sum(t.detach().sum(0).abs().max() for t in taus)
    assert float(total) < 1e-5
    logits(model, ids())
    assert bool(model.namex_plan.fallbacks[0])
    good = convert(tiny_model("mixtral"), "namex", segment_len=SEG)
    logits(good, ids())
    assert not bool(good.namex_plan.fallbacks[0])


def test_perturbed_mean_converges_on_upcycled_experts() -> None:
    """Experts with a large common part (E_i = W + 0.05·noise, as upcycled MoEs): the perturbed
    mean removes the common part, the zero base keeps it (K ≈ ‖W‖² 11ᵀ, ill conditioned)."""
    model = tiny_model("olmoe")
    with torch.no_grad():
        for layer in model.model.layers:
            ex = layer.mlp.experts
            for p in (ex.gate_up_proj, ex.down_proj):
                p.copy_(p[:1] + 0.05 * torch.randn_like(p))
    conv = convert(copy.deepcopy(model), "namex-full-mom", segment_len=SEG)
    logits(conv, ids())
    assert not bool(conv.namex_plan.fallbacks[0])
    assert float(conv.namex_plan.residuals[0]) <= RESIDUAL_TOL


# ---- 3. save / reload, memory, training ------------------------------------------------------


def test_save_load_roundtrip_gives_identical_logits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = convert(tiny_model("qwen2_moe"), "namex-full-mom", segment_len=SEG)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = ids()
    out = model(x, labels=x)
    out.loss.backward()
    opt.step()  # parameters (base, curvature, experts) move away from their initial values
    model.eval()
    save(model, tmp_path / "m")
    back = load(tmp_path / "m")
    assert torch.equal(logits(model, x), logits(back, x))
    assert converted_blocks(back)[0].config == converted_blocks(model)[0].config


def test_conversion_keeps_the_pretrained_expert_storages() -> None:
    """No copy of the experts: after convert the expert and router parameters are the same
    storages; the only new expert-sized tensor is layer 0's base (first-layer method)."""
    model = tiny_model("mixtral")
    before = {p.data_ptr() for p in model.parameters()}
    convert(model, "namex-full-mom", segment_len=SEG)
    for blk in converted_blocks(model):
        assert blk.experts.gate_up_proj.data_ptr() in before
        assert blk.experts.down_proj.data_ptr() in before
        assert blk.gate.weight.data_ptr() in before
    new = [n for n, p in model.named_parameters() if p.data_ptr() not in before]
    assert all(("base_" in n or "curvature" in n) for n in new)
    assert sum("base_" in n for n in new) == 2  # base_gate_up and base_down of layer 0


@pytest.mark.parametrize("family", FAMILIES)
def test_twenty_steps_of_fine_tuning_lower_the_loss(family: str) -> None:
    assert_twenty_steps_lower_the_loss(lambda vocab: tiny_model(family, vocab=vocab))


def assert_twenty_steps_lower_the_loss(build: Callable[[int], torch.nn.Module]) -> None:
    """20 AdamW steps of NAMEx-Full-Mom on the built-in corpus (byte tokens) lower the mean
    loss of the last five steps by 0.2 nats below the first five (shared by every family's
    test; ``build(vocab)`` makes the tiny source model)."""
    from namex_ref.data.corpus import load_builtin_corpus
    from namex_ref.data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    text = load_builtin_corpus()[:20000]
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    model = convert(build(tok.vocab_size), "namex-full-mom", segment_len=SEG)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        start = torch.randint(0, data.numel() - 33, (4,), generator=gen)
        batch = torch.stack([data[s : s + 32] for s in start.tolist()])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2


# ---- 4. errors -------------------------------------------------------------------------------


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[hf\]'") as err:
        require_transformers()
    assert isinstance(err.value, ImportError)
    assert HF_EXTRA_HINT in str(err.value)
    with pytest.raises(MissingExtraError, match="hf"):
        convert(torch.nn.Linear(2, 2), "smoe")


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="no supported sparse MoE block"):
        convert(torch.nn.Linear(2, 2), "smoe")
    model = convert(tiny_model("olmoe"), "smear")
    with pytest.raises(ValueError, match="already converted"):
        convert(model, "smear")
    with pytest.raises(ValueError, match=r"expert_bias=True is not supported .* no biases"):
        convert(tiny_model("olmoe"), "camex", expert_bias=True)
    with pytest.raises(ValueError, match="merge_top_k"):
        convert(tiny_model("olmoe"), "camex", merge_top_k=9)
    with pytest.raises(ValueError, match="base rule"):
        convert(tiny_model("olmoe"), "camex", base_rule="median")


def test_merge_top_k_keeps_k_experts_per_segment() -> None:
    model = convert(tiny_model("olmoe"), "smear", segment_len=SEG, merge_top_k=2)
    blk = converted_blocks(model)[0]
    s = blk._scores(torch.randn(2, 24, 32))
    assert ((s > 0).sum(-1) == 2).all()
    assert torch.allclose(s.sum(-1), torch.ones(2, 3))
    h = torch.randn(2, 24, 32)
    full = torch.softmax(F.linear(h[:, 8:16].mean(1), blk.gate.weight).float(), -1)
    top, idx = full.topk(2, -1)
    assert torch.allclose(blk._scores(h)[:, 2].gather(-1, idx), top / top.sum(-1, keepdim=True))


# ---- 5. the command line ---------------------------------------------------------------------


def test_namex_convert_saves_and_reloads(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """One command converts a save_pretrained folder and saves it; load() gives the logits of
    the same conversion done here in memory (same options and seed), bit for bit."""
    import json

    from namex_ref.cli import main

    src = tmp_path / "mixtral"
    tiny_model("mixtral").save_pretrained(src)
    rc = main(["convert", str(src), str(tmp_path / "out"), "--method", "namex-full-mom",
               "--segment-len", "8", "--seed", "3"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["method"] == "namex-full-mom"
    here = convert(tiny_model("mixtral"), "namex-full-mom", segment_len=SEG, seed=3)
    loaded = load(tmp_path / "out")
    x = ids()
    assert torch.equal(logits(loaded, x), logits(here, x))
    assert converted_blocks(loaded)[0].config.method == "namex-full-mom"


def test_namex_convert_errors_are_one_line(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from namex_ref.cli import main

    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "config.json" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert HF_EXTRA_HINT in err and err.count("\n") == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_every_merging_method_starts_as_the_segment_average_expert(family: str) -> None:
    """The documented starting function (η = 1, one Kronecker term): every merging method of
    docs/math.md §3 gives SMEAR's logits at conversion (SMEAR itself is checked against the
    written-out oracle above, through namex-full-mom and camex)."""
    from namex_ref.merging.config import METHODS

    model = tiny_model(family)
    x = ids()
    ref = logits(convert(copy.deepcopy(model), "smear", segment_len=SEG), x)
    for method in METHODS:
        if method in ("smoe", "smear"):
            continue
        out = logits(convert(copy.deepcopy(model), method, segment_len=SEG), x)
        assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item(), method


def test_perturbed_mean_gives_the_documented_gram() -> None:
    """docs/math.md §6: with c_i = E_i − Ē and u = E_m − Ē, Cu = 0 and ‖u‖² = (1/N) Σ‖c_i‖², so
    K = CCᵀ + s²11ᵀ (formed here in float64 from the flattened three-matrix experts)."""
    from namex_ref.hf import initial_base

    g = torch.Generator().manual_seed(3)
    experts = [torch.randn(5, 6, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    experts.append(torch.randn(5, 4, 6, generator=g, dtype=torch.float64))
    base = initial_base(experts, "perturbed-mean", seed=7)
    E = torch.cat([e.flatten(1) for e in experts], 1)
    u = torch.cat([b.flatten() for b in base]) - E.mean(0)
    C = E - E.mean(0)
    s2 = (C**2).sum(1).mean()
    assert (C @ u).abs().max() <= 1e-12 * s2
    assert torch.isclose(u @ u, s2, rtol=1e-12)
    tau = E - torch.cat([b.flatten() for b in base])
    assert torch.allclose(tau @ tau.T, C @ C.T + s2, rtol=1e-12, atol=1e-12 * float(s2))
    assert torch.linalg.eigvalsh(tau @ tau.T).min() > 0


def test_readme_example_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The user guide's Python example (docs/guide.md), on a tiny saved model (3 steps instead
    of 200, a short
    corpus, a small window); its training command parses to the same configuration, and its
    reload command (namex generate) runs on the example's output."""
    import re
    import shlex
    from pathlib import Path

    from namex_ref.cli import build_parser
    from namex_ref.train.flags import config_from_args

    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text(encoding="utf-8")
    section = readme.split("## Hugging Face MoE models", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shell = re.search(r"\n(namex train --hf-model .*)\n", section)
    assert code is not None and shell is not None
    src = tmp_path / "model"
    tiny_model("olmoe", vocab=320).save_pretrained(src)
    text = code.group(1).replace("path/to/model", str(src))
    text = text.replace("runs/hf-namex", str(tmp_path / "out")).replace(
        "steps=200,", f"steps=3, seq_len=32, corpus_chars=60_000, eval_every=0, "
        f"final_eval_batches=1, device='cpu', progress=False, cache_dir={str(tmp_path)!r},")
    scope: dict[str, object] = {}
    exec(text, scope)  # the user guide's own snippet
    model = scope["model"]
    assert converted_blocks(model)[0].config.method == "namex-full-mom"  # type: ignore[arg-type]
    cfg = config_from_args(build_parser().parse_args(shlex.split(shell.group(1))[1:]))
    assert (cfg.hf_model, cfg.method, cfg.steps) == ("path/to/model", "namex-full-mom", 200)
    # the user guide's reload command, run on the snippet's output folder
    from namex_ref.cli import main

    gen = re.search(r"\n(namex generate .*)\n", section)
    assert gen is not None
    argv = shlex.split(gen.group(1).replace("runs/hf-namex", str(tmp_path / "out")))[1:]
    assert main(argv) == 0


@pytest.mark.parametrize("mode", ["recompute", "keep-deltas"])
def test_merge_memory_modes_give_the_eager_gradients(mode: str) -> None:
    """Same loss and gradients whatever the merge keeps for backward (float32 rounding:
    rtol 1e-5 against the eager autograd path)."""
    grads = {}
    for m in ("eager", mode):
        model = convert(tiny_model("qwen2_moe"), "namex-full-mom", segment_len=SEG,
                        merge_memory=m)
        with torch.no_grad():  # move the curvature off the identity so M_i matters
            for name, p in model.named_parameters():
                if "curvature" in name:
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
        x = ids()
        model(x, labels=x).loss.backward()
        grads[m] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["eager"].keys() == grads[mode].keys()
    for n, g in grads["eager"].items():
        assert torch.allclose(grads[mode][n], g, rtol=1e-5, atol=1e-7), n


def test_router_logits_only_for_token_routing() -> None:
    """smoe keeps transformers' router logits and balance loss; merging methods switch them
    off at conversion and refuse them per call with a named error."""
    model = tiny_model("olmoe")
    model.config.output_router_logits = True
    x = ids()
    smoe = convert(copy.deepcopy(model), "smoe")
    out = smoe(x, labels=x)
    ref = model(x, labels=x)  # transformers' own block: the same router logits, to rounding
    for a, b in zip(out.router_logits, ref.router_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the balance loss of Switch Transformer eqs. (4)-(6) with top-k, written out from the
    # returned router logits (L layers × (B·T, E)): E · Σ_e f_e P_e, f_e the fraction of the
    # top-k slots routed to e and P_e the mean router probability; and the total loss is the
    # shifted next-token cross-entropy + router_aux_loss_coef × that (to float32 rounding)
    E, k = model.config.num_experts, model.config.num_experts_per_tok
    probs = torch.cat(list(out.router_logits)).double().softmax(-1)  # (L·B·T, E)
    chosen = F.one_hot(probs.topk(k, -1).indices, E).double()  # (L·B·T, k, E)
    balance = E * (chosen.mean(0) * probs.mean(0)).sum()
    assert float(balance) > 1.0  # k = 2 for balanced routing (measured 2.01), never 0
    torch.testing.assert_close(out.aux_loss.double(), balance, rtol=1e-6, atol=0)
    lm = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).double(),
                                     x[:, 1:].flatten())
    torch.testing.assert_close(out.loss.double(), lm + model.config.router_aux_loss_coef * balance,
                               rtol=1e-6, atol=0)
    merged = convert(copy.deepcopy(model), "namex", segment_len=SEG)
    assert merged.config.output_router_logits is False
    assert torch.isfinite(merged(x, labels=x).loss)
    with pytest.raises(ValueError, match="output_router_logits"):
        merged(x, output_router_logits=True)


def test_perturbed_mean_in_float32_is_orthogonal_to_rounding() -> None:
    """float32 experts: the work copies are float32, so Cu = 0 holds to float32 rounding of the
    projection (bound 1e-4·s²·√N, measured 5.3e-7·s²; ‖u‖² = s² to 1e-4, measured 1e-7)."""
    from namex_ref.hf import initial_base

    g = torch.Generator().manual_seed(4)
    experts = [torch.randn(6, 16, 32, generator=g) * 0.02 + 1.0 for _ in range(3)]
    base = initial_base(experts)
    E = torch.cat([e.flatten(1) for e in experts], 1).double()
    C = E - E.mean(0)
    u = torch.cat([b.flatten() for b in base]).double() - E.mean(0)
    s2 = (C**2).sum(1).mean()
    assert (C @ u).abs().max() <= 1e-4 * s2 * 6**0.5
    assert abs(float(u @ u / s2) - 1) <= 1e-4
