"""Mixed precision (``TrainConfig.precision``): bf16 and fp16 against fp32, the merge plan kept
out of autocast, exact resume with the gradient scaler's state (CPU, one thread).

Tolerance of bf16 against fp32, derived (test_bf16_loss_agrees_with_fp32):
autocast runs every matmul of the forward, and of its backward, on inputs rounded to the
autocast dtype and accumulates in float32. Rounding to bf16 is a relative perturbation of each
input of at most u = 2^-8 (8 significant bits); to fp16 of at most u = 2^-11 (11 bits; at these
magnitudes fp16's range is no issue). To first order in u the deviation of the step-k loss from
the fp32 run is dev_k = u · s_k, where the per-step sensitivity s_k (how the loss at step k
responds to relative rounding of the matmul inputs of steps 1..k) depends on the model, data
and optimiser, not on the format. The fp16 run measures it: s_k = dev_k(fp16) / 2^-11, so
bf16 should deviate by u_bf16 / u_fp16 = 8 times fp16's deviation. Rounding errors are random,
not aligned, so two runs' deviations scatter about that ratio; with D = max_k |L_k − L_k(fp32)|
/ L_k(fp32) over 20 steps the test asserts

    2 · D(fp16) < D(bf16) ≤ 32 · D(fp16)      (8 within a factor of 4 either way),

and D(bf16) ≤ u_bf16 (loss deviations far below one bf16 rounding of the loss itself; at first
order the loss is a smooth function whose inputs are each perturbed by ≤ u, and the softmax
cross-entropy has derivative of norm ≤ 2 in the logits). Measured on the dev box (tiny preset,
namex-full-mom, 20 steps): D(bf16) = 7.9e-5 = 0.02 u_bf16, D(fp16) = 6.5e-6, ratio 12.1.
The lower bound makes the test fail when autocast is not applied (D = 0).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from namex_ref.models.gpt import MoEGPT, preset
from namex_ref.nash.gram import gram_matrix
from namex_ref.train import TrainConfig, load_checkpoint, train
from namex_ref.train.metrics import read_jsonl
from namex_ref.train.precision import Precision
from tests.faults import die_at
from tests.train_runs import quick

U = {"bf16": 2.0**-8, "fp16": 2.0**-11}
"""Unit roundoff of the autocast dtypes (half the spacing of numbers in [1, 2))."""
RATIO_SLACK = 4.0
"""How far the ratio of the deviations may scatter about u_bf16 / u_fp16 = 8 (docstring)."""


def _losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in read_jsonl(out / "metrics.jsonl")]


@pytest.mark.slow  # three 20-step runs: ~30-60 s on a shared 2-core machine
def test_bf16_loss_agrees_with_fp32(cache: Path, tmp_path: Path) -> None:
    """The module docstring's derived tolerance, over 20 steps of the tiny preset."""
    runs = {}
    for prec in ("fp32", "bf16", "fp16"):
        out = tmp_path / prec
        train(quick(cache, out, steps=20, ckpt_every=20, eval_every=0, precision=prec))
        runs[prec] = _losses(out)
    ref = runs["fp32"]
    dev = {p: max(abs(a - b) / b for a, b in zip(runs[p], ref, strict=True))
           for p in ("bf16", "fp16")}
    ratio = U["bf16"] / U["fp16"]
    print(f"max relative loss deviation: bf16 {dev['bf16']:.2e}, fp16 {dev['fp16']:.2e}, "
          f"ratio {dev['bf16'] / max(dev['fp16'], 1e-300):.1f} (predicted {ratio:.0f})")
    assert dev["bf16"] <= U["bf16"]
    assert ratio / RATIO_SLACK * dev["fp16"] < dev["bf16"] <= ratio * RATIO_SLACK * dev["fp16"]


def test_merge_plan_is_computed_outside_autocast() -> None:
    """The bargain (float64), the propagated bases and the momentum buffers (float32) of a
    bf16-autocast forward equal the fp32 plan bit for bit: the plan is weight space."""
    torch.manual_seed(0)
    model = MoEGPT(preset("tiny", "namex-full-mom"))
    ref = model.merge_plan()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.merge_plan()
    assert torch.equal(got.alphas, ref.alphas) and got.alphas.dtype == torch.float64
    assert torch.equal(got.residuals, ref.residuals)
    for a, b in zip(got.terms, ref.terms, strict=True):
        assert a.base is not None and b.base is not None
        for x, y in zip([*a.base, *a.deltas], [*b.base, *b.deltas], strict=True):
            assert x.dtype == torch.float32 and torch.equal(x, y)


def test_gram_matrix_ignores_autocast() -> None:
    """K = τ τᵀ accumulates in float32 under autocast too (bf16 inputs would round K to 8
    bits); oracle: the float64 Gram, to float32 accumulation error."""
    g = torch.Generator().manual_seed(1)
    taus = torch.randn(4, 4096, generator=g)
    exact = taus.double() @ taus.double().T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        K = gram_matrix(taus)
    assert K.dtype == torch.float32
    # float32 summation of d = 4096 products: |error| ≤ γ_d · Σ|τ_i||τ_j| ≤ d·2^-24·max K_ii
    bound = 4096 * 2.0**-24 * float(exact.diagonal().max())
    assert float((K.double() - exact).abs().max()) <= bound


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_is_bit_exact_in_reduced_precision(
    precision: str, cache: Path, tmp_path: Path
) -> None:
    """A run that dies at step 7 (checkpoint of step 6) and is resumed equals the
    uninterrupted run bit for bit, the fp16 gradient scaler's state included."""
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    train(quick(cache, ref_out, precision=precision, ckpt_every=2))
    cfg = quick(cache, out, precision=precision, ckpt_every=2)
    with pytest.MonkeyPatch.context() as m:
        die_at(m, 7)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    assert load_checkpoint(out / "checkpoint.safetensors").step == 6
    with pytest.raises(ValueError, match="--precision"):
        train(dataclasses.replace(cfg, precision="fp32"), resume=True)
    train(cfg, resume=True)
    keys = ("step", "loss", "grad_norm", "alpha", "valid_loss")
    got, want = read_jsonl(out / "metrics.jsonl"), read_jsonl(ref_out / "metrics.jsonl")
    assert [[r.get(k) for k in keys] for r in got] == [[r.get(k) for k in keys] for r in want]
    a = load_checkpoint(out / "checkpoint.safetensors").counters.get("grad_scaler")
    b = load_checkpoint(ref_out / "checkpoint.safetensors").counters.get("grad_scaler")
    assert a == b and (a is not None) == (precision == "fp16")


def test_fp16_scaler_skips_an_overflowing_step() -> None:
    """fp16: the loss is scaled, an infinite gradient skips the optimizer step and halves the
    scale; bf16 and fp32 have no scaler (their backward is the plain one)."""
    assert not Precision("bf16", torch.device("cpu")).scaler.is_enabled()
    assert not Precision("fp32", torch.device("cpu")).scaler.is_enabled()
    prec = Precision("fp16", torch.device("cpu"))
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scale = prec.scaler.get_scale()
    prec.backward((w * torch.tensor([1.0, float("inf"), 1.0])).sum())
    prec.unscale(opt)
    prec.step(opt)
    assert torch.equal(w.detach(), torch.ones(3))  # skipped
    assert prec.scaler.get_scale() == scale / 2
    opt.zero_grad()
    prec.backward(w.sum())
    prec.unscale(opt)
    assert torch.equal(w.grad, torch.ones(3))  # unscaled before clipping
    prec.step(opt)
    assert torch.allclose(w.detach(), torch.full((3,), 0.9))


def test_precision_is_a_flag_and_refuses_other_values(tmp_path: Path) -> None:
    from namex_ref.cli import build_parser
    from namex_ref.train.flags import config_from_args

    args = build_parser().parse_args(["train", "--precision", "bf16"])
    assert config_from_args(args).precision == "bf16"
    assert TrainConfig().precision == "fp32"
    with pytest.raises(ValueError, match="--precision"):
        TrainConfig(precision="fp8")  # type: ignore[arg-type]
