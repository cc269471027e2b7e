"""The Triton kernels (namex_ref.nash.fused_triton) compile for the GPU the project is measured
on (an H200: CUDA target sm_90), without one: Triton lowers them to PTX on the CPU.

tests/test_nash_fused_gpu.py runs the kernels' *logic* through Triton's interpreter; this file
checks what the interpreter cannot: that the compiler accepts every construct (the while loop,
runtime-bound for loops, device functions, float64 kernel arguments, bool stores, the
compile-time warm-start branch) for every dtype and policy the launchers use, and that the
float64 arithmetic is IEEE: every division and square root is ``div.rn.f64``/``sqrt.rn.f64``,
no approximate instruction appears (``rsqrt.approx.f64`` would lose ~half the digits of K̂), and
no FMA is formed (the launchers switch fusion off, so rounding is that of the written
operations, as in the numba kernel). The compiles run in a subprocess with
``TRITON_INTERPRET=0`` (the test session may have the interpreter on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from namex_ref.nash import fused_gpu

pytestmark = pytest.mark.skipif(not fused_gpu.TRITON_AVAILABLE, reason="triton not installed")

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent('''
    import inspect, json, re, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from namex_ref.nash import fused_triton as ft

    F64 = ("tol", "factor", "cap", "frac", "full_dec", "eps", "tiny", "maxf", "ridge",
           "zero_rtol", "cancel_rtol")
    TYPES = {"A0_ptr": "*fp64", "Alpha_ptr": "*fp64", "Res_ptr": "*fp64", "Resid_ptr": "*fp64",
             "Conv_ptr": "*i1", "Fallback_ptr": "*i1", "Ok_ptr": "*i1", "Steps_ptr": "*i64",
             "n": "i32", "n_steps": "i32", "s_kb": "i64", "s_ki": "i64", "s_kj": "i64",
             "s_ab": "i64", "s_ai": "i64", **{k: "fp64" for k in F64}}
    out = []
    for name, kdtype, consts in json.loads(sys.argv[1]):
        fn = getattr(ft, name)
        types = {**TYPES, "K_ptr": "*" + kdtype}
        sig = {p: ("constexpr" if p in consts else types[p])
               for p in inspect.signature(fn.fn).parameters}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
        warps = 1 if consts["BLOCK"] <= 16 else 4
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps, "enable_fp_fusion": False})
        ptx = k.asm["ptx"]
        ops = sorted(set(re.findall(r"\\b(?:div|sqrt|rsqrt|rcp|fma)\\.[\\w.]+", ptx)))
        out.append([name, kdtype, consts, ops])
    print(json.dumps(out))
''')


def _compile(cases: list[tuple[str, str, dict[str, object]]]) -> list[list[object]]:
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(cases)], env=env,
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result: list[list[object]] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def _check(cases: list[tuple[str, str, dict[str, object]]]) -> None:
    for name, kdtype, consts, ops in _compile(cases):
        assert set(ops) <= {"div.rn.f64", "sqrt.rn.f64"}, (name, kdtype, consts, ops)
        assert "sqrt.rn.f64" in ops and "div.rn.f64" in ops


def test_kernels_compile_for_sm90() -> None:
    """One Newton kernel per warm-start branch and one bargain kernel."""
    _check([("newton_batch_kernel", "fp32", {"HAS_A0": True, "BLOCK": 16}),
            ("newton_batch_kernel", "fp64", {"HAS_A0": False, "BLOCK": 4}),
            ("bargain_batch_kernel", "fp32", {"POLICY": 0, "BLOCK": 8})])


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90() -> None:
    """Every input dtype, warm-start branch, policy and tile size up to N = 64."""
    cases: list[tuple[str, str, dict[str, object]]] = []
    for kd in ("fp16", "bf16", "fp32", "fp64"):
        for block in (2, 64):
            cases.append(("newton_batch_kernel", kd, {"HAS_A0": True, "BLOCK": block}))
            cases.append(("newton_batch_kernel", kd, {"HAS_A0": False, "BLOCK": block}))
    for kd in ("fp32", "fp64"):
        for policy in (0, 1, 2):
            cases.append(("bargain_batch_kernel", kd, {"POLICY": policy, "BLOCK": 64}))
    _check(cases)
