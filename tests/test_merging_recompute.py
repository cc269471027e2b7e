"""The recomputing merge (``MergeConfig.merge_memory``): the Kronecker operator of S14 that keeps
only τ (or E and E_m) for backward, and the per-segment merged linear map of S13/S14 that keeps
neither the (B, S, out, in) merged weights nor, with "recompute", the merge terms.

Oracles, all independent of the code under test:
- the Kronecker operator: ``torch.kron(A_i, B_i) @ τ_i @ torch.kron(C_i, D_i)ᵀ`` (an explicit
  dense (out × out) and (in × in) matrix per expert, S14) with autograd through it;
- the merged linear map: a loop over segments forming Ŵ[b,s] = E_m + η Σ_i s_i D_i and
  ``x @ Ŵᵀ`` (S13/S14), with autograd through it;
- the whole model: the eager path (``merge_memory="eager"``: einsums, autograd keeps every
  intermediate), which is also what the benchmarks call "before".

Tolerances. float64: gradcheck's defaults (finite differences, eps 1e-6, atol 1e-5,
rtol 1e-3) and 1e-12 relative for the oracles (a handful of float64 roundings of sums of
at most 64 terms: ~64·1.1e-16). float32: 2e-5 relative to the largest entry of the reference
(unit roundoff 6e-8 times the ≤ 4 chained contractions of ≤ 64 terms each is 1.5e-5 in the
worst case; the two paths only sum in different orders). A parameter after one AdamW step:
float64, 1e-12 absolute (the step is lr·m/(√v + ε) ≤ lr = 1e-3 and its relative error is the
gradients' 1e-8 at worst, where a base gradient is a cancellation of O(1) terms to 1e-10).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from namex_ref.benchmarks.memory import saved_tensor_bytes
from namex_ref.merging.config import CAMEX_PAPER, MergeConfig
from namex_ref.merging.operators import kronecker_apply, merged_linear
from namex_ref.models.gpt import MoEGPT, preset


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _factors(n: int, ks: tuple[int, int, int, int], dtype: torch.dtype,
             g: torch.Generator) -> list[Tensor]:
    return [(torch.eye(k, dtype=dtype) + 0.3 * torch.randn(n, k, k, generator=g, dtype=dtype))
            .requires_grad_() for k in ks]


def _kron_oracle(tau: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """S14 with explicit Kronecker products: (A_i⊗B_i) τ_i (C_i⊗D_i)ᵀ per expert."""
    return torch.stack([torch.kron(A[i], B[i]) @ tau[i] @ torch.kron(C[i], D[i]).T
                        for i in range(tau.shape[0])])


def _grads(out: Tensor, inputs: list[Tensor], g_out: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(out, inputs, g_out))


SHAPES = [(2, (2, 3, 2, 2)), (3, (1, 4, 3, 1)), (2, (3, 1, 1, 5)), (1, (2, 2, 2, 2))]


@pytest.mark.parametrize(("n", "ks"), SHAPES)
def test_kronecker_recompute_gradcheck(n: int, ks: tuple[int, int, int, int]) -> None:
    """float64 finite differences of the recomputing Kronecker operator (wrt τ and A..D)."""
    g = _gen(0)
    o1, o2, i1, i2 = ks
    tau = torch.randn(n, o1 * o2, i1 * i2, generator=g, dtype=torch.float64).requires_grad_()
    facs = _factors(n, ks, torch.float64, g)
    assert torch.autograd.gradcheck(lambda t, a, b, c, d: kronecker_apply(t, a, b, c, d),
                                    (tau, *facs))


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize(("n", "ks"), SHAPES)
def test_kronecker_matches_dense_kron_oracle(n: int, ks: tuple[int, int, int, int],
                                             recompute: bool) -> None:
    """Both paths equal the dense (A⊗B) τ (C⊗D)ᵀ, values and gradients (float64, 1e-12)."""
    g = _gen(1)
    o1, o2, i1, i2 = ks
    tau = torch.randn(n, o1 * o2, i1 * i2, generator=g, dtype=torch.float64).requires_grad_()
    facs = _factors(n, ks, torch.float64, g)
    g_out = torch.randn(n, o1 * o2, i1 * i2, generator=g, dtype=torch.float64)
    got = kronecker_apply(tau, *facs, recompute=recompute)
    ref = _kron_oracle(tau, *facs)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(got, [tau, *facs], g_out), _grads(ref, [tau, *facs], g_out),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


def _close32(a: Tensor, b: Tensor) -> None:
    scale = float(b.detach().abs().max())
    assert float((a - b).detach().abs().max()) <= 2e-5 * scale + 1e-30, (a - b).abs().max()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), o1=st.integers(1, 5), o2=st.integers(1, 5), i1=st.integers(1, 5),
       i2=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_kronecker_recompute_equals_eager_float32(n: int, o1: int, o2: int, i1: int, i2: int,
                                                  seed: int) -> None:
    """Property: forward and every gradient of the recomputing path equal the eager einsums in
    float32 (2e-5 of the largest entry), for any factor sizes including 1."""
    g = _gen(seed)
    tau = torch.randn(n, o1 * o2, i1 * i2, generator=g).requires_grad_()
    facs = _factors(n, (o1, o2, i1, i2), torch.float32, g)
    g_out = torch.randn(n, o1 * o2, i1 * i2, generator=g)
    new = kronecker_apply(tau, *facs)
    old = kronecker_apply(tau, *facs, recompute=False)
    _close32(new, old)
    for a, b in zip(_grads(new, [tau, *facs], g_out), _grads(old, [tau, *facs], g_out),
                    strict=True):
        _close32(a, b)


# ------------------------------------------------------------------------------------------
# The merged linear map per segment (S13/S14)
# ------------------------------------------------------------------------------------------


def _linear_oracle(x: Tensor, base: Tensor | None, deltas: Tensor, scores: Tensor,
                   eta: float) -> Tensor:
    """Loop over (b, s): Ŵ = E_m + η Σ_i s_i D_i, y = x Ŵᵀ."""
    Bn, S = scores.shape[:2]
    rows = []
    for b in range(Bn):
        segs = []
        for s in range(S):
            w = sum(scores[b, s, i] * deltas[i] for i in range(deltas.shape[0]))
            w = eta * w if base is None else base + eta * w
            segs.append(x[b, s] @ w.T)
        rows.append(torch.stack(segs))
    return torch.stack(rows)


def _linear_inputs(seed: int, dtype: torch.dtype, with_base: bool
                   ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    g = _gen(seed)
    Bn, S, L, n, out, inn = 2, 3, 4, 3, 5, 6
    x = torch.randn(Bn, S, L, inn, generator=g, dtype=dtype).requires_grad_()
    base = (torch.randn(out, inn, generator=g, dtype=dtype).requires_grad_()
            if with_base else None)
    deltas = torch.randn(n, out, inn, generator=g, dtype=dtype).requires_grad_()
    scores = torch.softmax(torch.randn(Bn, S, n, generator=g, dtype=dtype), -1).requires_grad_()
    return x, base, deltas, scores


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("redo", [False, True])
def test_merged_linear_gradcheck(with_base: bool, eta: float, redo: bool) -> None:
    """float64 finite differences wrt x, E_m, the deltas and the scores, with the deltas saved
    or recomputed by a callback."""
    x, base, deltas, scores = _linear_inputs(2, torch.float64, with_base)

    def f(x: Tensor, d: Tensor, s: Tensor, *b: Tensor) -> Tensor:
        cb = (lambda: d.detach()) if redo else None
        return merged_linear(x, b[0] if b else None, d, s, eta, recompute_deltas=cb)

    args = (x, deltas, scores) + ((base,) if base is not None else ())
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("with_base", [True, False])
def test_merged_linear_matches_loop_oracle(recompute: bool, with_base: bool) -> None:
    """Values and gradients of both paths equal the per-segment loop (float64, 1e-12)."""
    x, base, deltas, scores = _linear_inputs(3, torch.float64, with_base)
    eta = 0.7
    ins = [t for t in (x, base, deltas, scores) if t is not None]
    got = merged_linear(x, base, deltas, scores, eta, recompute=recompute)
    ref = _linear_oracle(x, base, deltas, scores, eta)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g_out = torch.randn(ref.shape, generator=_gen(4), dtype=torch.float64)
    for a, b in zip(_grads(got, ins, g_out), _grads(ref, ins, g_out), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), eta=st.sampled_from([1.0, 0.25, 3.0]),
       with_base=st.booleans(), redo=st.booleans())
def test_merged_linear_equals_eager_float32(seed: int, eta: float, with_base: bool,
                                            redo: bool) -> None:
    """Property: the recomputing map equals merge_weights + einsum in float32 (values and the
    gradients wrt x, E_m, deltas, scores; 2e-5 of the largest entry)."""
    x, base, deltas, scores = _linear_inputs(seed, torch.float32, with_base)
    ins = [t for t in (x, base, deltas, scores) if t is not None]
    cb = (lambda: deltas.detach()) if redo else None
    new = merged_linear(x, base, deltas, scores, eta, recompute_deltas=cb)
    old = merged_linear(x, base, deltas, scores, eta, recompute=False)
    _close32(new, old)
    g_out = torch.randn(old.shape, generator=_gen(seed + 1))
    for a, b in zip(_grads(new, ins, g_out), _grads(old, ins, g_out), strict=True):
        _close32(a, b)


def test_merged_linear_rejects_a_wrong_recompute() -> None:
    """A callback that returns other deltas than the forward's is named, not used."""
    x, base, deltas, scores = _linear_inputs(5, torch.float64, True)
    y = merged_linear(x, base, deltas, scores, 1.0,
                      recompute_deltas=lambda: deltas.detach()[:2])
    with pytest.raises(RuntimeError, match="recompute_deltas returned"):
        y.sum().backward()


# ------------------------------------------------------------------------------------------
# The model: every mode gives the eager path's loss, gradients and AdamW step
# ------------------------------------------------------------------------------------------

MODES = ("keep-deltas", "recompute")
METHODS = ("smear", "camex", "ep-camex", "namex", "namex-full-mom", "namex-q")


def _one_step(method: str, mode: str, *, seg: int = 32, **options: Any
              ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    cfg = preset("tiny", method, merge_memory=mode, segment_len=seg, **options)
    cfg = dataclasses.replace(cfg, n_layer=3, d_model=32, d_ff=48, n_head=2, vocab_size=97)
    torch.manual_seed(0)
    model = MoEGPT(cfg).double()
    with torch.no_grad():  # curvature factors start at I (M = I would hide a missing M)
        for name, p in model.named_parameters():
            if "curvature" in name:
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = _gen(6)
    idx = torch.randint(0, 97, (2, 45), generator=g)  # 45 = one partial segment at the end
    tgt = torch.randint(0, 97, (2, 45), generator=g)
    out = model(idx, tgt)
    assert out.loss is not None
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return out.loss.detach(), grads, {k: p.detach().clone() for k, p in model.named_parameters()}


def _assert_every_mode_equals_eager(method: str, **options: Any) -> None:
    """One step of every merge_memory mode against the eager path's: loss to 1e-13 relative,
    gradients to 1e-10 of the largest gradient of the model, parameters to 1e-12."""
    loss0, g0, p0 = _one_step(method, "eager", seg=16, **options)
    gscale = max(float(g.abs().max()) for g in g0.values())
    for mode in MODES:
        loss, gr, par = _one_step(method, mode, seg=16, **options)
        torch.testing.assert_close(loss, loss0, rtol=1e-13, atol=0)
        assert gr.keys() == g0.keys()
        for k in g0:
            torch.testing.assert_close(gr[k], g0[k], rtol=0, atol=1e-10 * gscale, msg=k)
        for k in p0:
            torch.testing.assert_close(par[k], p0[k], rtol=0, atol=1e-12, msg=k)


@pytest.mark.parametrize("method", METHODS)
def test_model_step_equals_eager(method: str) -> None:
    """MoEGPT, float64, one forward/backward/AdamW step: every mode's loss, gradients and
    updated parameters equal the eager path's (gradients 1e-10 of the largest gradient of the
    model; parameters 1e-12)."""
    _assert_every_mode_equals_eager(method)


CAMEX_OPTION_SETS = {
    "camex-paper+dropout": {**CAMEX_PAPER, "term_dropout": 0.1},
    "dare": {"sign_mask": "dare", "kronecker_terms": 2},
    "bias+noisy-gate": {"expert_bias": True, "gate": "noisy-top-k", "gate_top_k": 2},
}


@pytest.mark.parametrize("options", CAMEX_OPTION_SETS.values(), ids=CAMEX_OPTION_SETS.keys())
@pytest.mark.parametrize("method", ["camex", "namex-full-mom"])
def test_model_step_with_camex_options_equals_eager(method: str, options: dict[str, Any]) -> None:
    """The CAMEx options (masks, term dropout, r Kronecker terms, biases, noisy gate; training
    mode, so every random draw is taken) combined with each merge_memory mode: the same loss,
    gradients and AdamW step as the eager path (same tolerances as above). The masked terms are
    kept rather than rebuilt in backward, which this checks."""
    _assert_every_mode_equals_eager(method, **options)


def _saved_mib(method: str, mode: str) -> float:
    cfg = preset("tiny", method, merge_memory=mode)
    torch.manual_seed(0)
    model = MoEGPT(cfg)
    g = _gen(7)
    idx = torch.randint(0, cfg.vocab_size, (4, 128), generator=g)
    return saved_tensor_bytes(model, idx, idx) / 2**20


def test_recompute_saves_less_than_eager() -> None:
    """Saved-for-backward bytes (exact count): recompute < keep-deltas < eager for a curvature
    method, and "recompute" keeps no (N, out, in) tensor per layer: its saving over eager is at
    least the 4 Kronecker intermediates + 1 merge term of both matrices of every layer."""
    cfg = preset("tiny")
    n, F_, C_, L = cfg.merge.n_experts, cfg.d_ff, cfg.d_model, cfg.n_layer
    per_stack = n * F_ * C_ * 4 / 2**20  # one (N, F, C) float32 tensor, MiB
    eager, keep, rec = (_saved_mib("ep-camex", m) for m in ("eager", "keep-deltas", "recompute"))
    assert rec < keep < eager
    assert eager - rec >= 5 * 2 * L * per_stack * 0.999
    assert keep - rec >= 2 * L * per_stack * 0.999  # the kept merge terms M_i(τ_i)


def test_recompute_detects_in_place_change_before_backward() -> None:
    """Changing an expert between forward and backward cannot give silently wrong gradients."""
    for mode in MODES:
        cfg = preset("tiny", "ep-camex", merge_memory=mode)
        model = MoEGPT(dataclasses.replace(cfg, n_layer=2))
        idx = torch.randint(0, cfg.vocab_size, (2, 64), generator=_gen(8))
        out = model(idx, idx)
        assert out.loss is not None
        with torch.no_grad():
            model.blocks[1].moe.w1.add_(1.0)
        with pytest.raises(RuntimeError, match="modified"):
            out.loss.backward()


@pytest.mark.parametrize(
    ("method", "param"),
    [("camex", "w1"), ("camex", "w2"), ("camex", "curvature.0.A.full"),
     ("ep-camex", "curvature.1.D.full")],
)
def test_recompute_names_the_in_place_change_and_the_fix(method: str, param: str) -> None:
    """merge_memory='recompute' rebuilds the merge terms M(E − E_m) from the experts, the base
    and the curvature factors in backward; an in-place change of an expert or of a curvature
    factor between forward and backward raises the layer's own error, which says what happened
    and what to do (call backward first, or use 'keep-deltas'), not autograd's generic
    "modified by an inplace operation" (which would come later, from another saved tensor). (A
    changed base is caught by autograd itself first: merged_linear saves the base for its own
    backward.)"""
    cfg = preset("tiny", method, merge_memory="recompute")
    model = MoEGPT(dataclasses.replace(cfg, n_layer=2))
    idx = torch.randint(0, cfg.vocab_size, (2, 64), generator=_gen(8))
    out = model(idx, idx)
    assert out.loss is not None
    with torch.no_grad():
        model.blocks[1].moe.get_parameter(param).add_(0.5)
    with pytest.raises(RuntimeError, match=r"merge_memory='recompute'.*keep-deltas"):
        out.loss.backward()


def test_recompute_under_autocast_matches_eager() -> None:
    """CPU bfloat16 autocast: the recomputing path gives the eager path's loss and gradients
    (same dtypes; 2e-2 of the model's largest gradient: bfloat16 keeps 8 bits, and a base
    gradient is a cancellation of terms that size)."""
    res = {}
    for mode in ("eager", "recompute"):
        cfg = preset("tiny", "ep-camex", merge_memory=mode)
        torch.manual_seed(0)
        model = MoEGPT(dataclasses.replace(cfg, n_layer=2))
        idx = torch.randint(0, cfg.vocab_size, (2, 64), generator=_gen(9))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(idx, idx)
        assert out.loss is not None
        out.loss.backward()
        res[mode] = (out.loss.detach(), {k: p.grad for k, p in model.named_parameters()
                                         if p.grad is not None})
    (l0, g0), (l1, g1) = res["eager"], res["recompute"]
    torch.testing.assert_close(l1, l0, rtol=1e-2, atol=0)
    scale = max(float(g.abs().max()) for g in g0.values())
    for k in g0:
        assert g1[k].dtype == g0[k].dtype
        assert float((g1[k] - g0[k]).abs().max()) <= 2e-2 * scale, k


def test_merge_memory_is_validated() -> None:
    with pytest.raises(ValueError, match="merge_memory must be one of"):
        MergeConfig(merge_memory="lazy")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Partial requires_grad: each backward returns exactly the gradients asked for, correctly
# (frozen curvature factors, a frozen base, scores from a detached router, η ≠ 1)
# ------------------------------------------------------------------------------------------

_LINEAR_NAMES = ("x", "base", "deltas", "scores")


@pytest.mark.parametrize("eta", [1.0, 2.0])
@pytest.mark.parametrize("trainable", _LINEAR_NAMES)
def test_merged_linear_gradient_of_one_input_equals_the_loop(trainable: str, eta: float) -> None:
    """Only one of (x, E_m, deltas, scores) requires grad: its gradient equals the per-segment
    loop's (float64, 1e-12), for η = 1 and η = 2 (the backward special-cases η = 1)."""
    ins = dict(zip(_LINEAR_NAMES, _linear_inputs(5, torch.float64, True), strict=True))
    for name, t in ins.items():
        assert t is not None
        t.requires_grad_(name == trainable)
    x, base, deltas, scores = (ins[k] for k in _LINEAR_NAMES)
    g_out = torch.randn(2, 3, 4, 5, generator=_gen(6), dtype=torch.float64)
    target = ins[trainable]
    assert target is not None
    (got,) = torch.autograd.grad(merged_linear(x, base, deltas, scores, eta), [target], g_out)
    (ref,) = torch.autograd.grad(_linear_oracle(x, base, deltas, scores, eta), [target], g_out)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("trainable", range(5))
def test_kronecker_gradient_of_one_input_equals_dense_kron(trainable: int) -> None:
    """Only one of (τ, A, B, C, D) requires grad: the recomputing backward's gradient of it
    equals the dense torch.kron oracle's (float64, 1e-12)."""
    g = _gen(8)
    n, ks = 2, (2, 3, 2, 2)
    facs = [f.detach() for f in _factors(n, ks, torch.float64, g)]
    tau = torch.randn(n, ks[0] * ks[1], ks[2] * ks[3], generator=g, dtype=torch.float64)
    ins = [tau, *facs]
    for i, t in enumerate(ins):
        t.requires_grad_(i == trainable)
    g_out = torch.randn(tau.shape, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(kronecker_apply(*ins, recompute=True), [ins[trainable]], g_out)
    (ref,) = torch.autograd.grad(_kron_oracle(*ins), [ins[trainable]], g_out)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


def _saved_bytes(fn: Any) -> int:
    """Bytes autograd saves for backward while ``fn()`` runs (each saved tensor counted once
    per save; parameters and inputs included)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_kronecker_recompute_flag_selects_what_is_saved() -> None:
    """recompute=True saves τ and the four factors only; recompute=False (the eager einsum
    chain) also keeps the intermediates, at least three more (N, out, in) tensors."""
    g = _gen(9)
    n, ks = 3, (4, 4, 4, 4)
    facs = _factors(n, ks, torch.float64, g)
    tau = torch.randn(n, 16, 16, generator=g, dtype=torch.float64).requires_grad_()
    one = tau.numel() * tau.element_size()
    lean = _saved_bytes(lambda: kronecker_apply(tau, *facs, recompute=True))
    full = _saved_bytes(lambda: kronecker_apply(tau, *facs, recompute=False))
    assert lean == one + sum(f.numel() * f.element_size() for f in facs)
    assert full >= lean + 3 * one


def test_eager_backend_never_calls_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """bargain_alpha(backend="eager") is the torch path CUDA tensors take and the fused
    kernel's oracle: it must not dispatch to the kernel on CPU either."""
    from namex_ref.merging.plan import bargain_alpha
    from namex_ref.nash import fused

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fused kernel was called")

    monkeypatch.setattr(fused, "bargain_kernel", boom)
    g = _gen(10)
    taus = [torch.randn(3, 8, 5, generator=g)]
    res = bargain_alpha(taus, backend="eager")
    assert bool(torch.isfinite(res.alpha).all())
    with pytest.raises(AssertionError, match="fused kernel was called"):
        bargain_alpha(taus, backend="fused")
