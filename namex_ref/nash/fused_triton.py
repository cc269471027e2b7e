"""Triton kernels for small bargains (S4–S5): Newton's whole loop in one launch, one program per
problem (N ≤ 64 in a padded BLOCK × BLOCK register tile).

The algorithm is ``solve_newton``'s (:mod:`namex_ref.nash.solvers`) and the CPU kernel's
(:mod:`namex_ref.nash.fused`), step for step: unit-diagonal K̂ (S9), the start α̂ = 1 or the
warm start rescaled on its ray, M = DK̂D + I, its Cholesky factor, two triangular solves for z,
the Newton decrement λ, the step 1/(1 + λ) while λ > ``full_dec`` and 1 after,
fraction-to-boundary, freezing of converged and broken problems and ``problem.converged_mask``'s
rule. Only the summation order differs (the Cholesky factor is built right-looking, column by
column, on the whole tile), so results agree with the eager path to the residual rule of
docs/math.md §7, not bit for bit.

Imported lazily by :mod:`namex_ref.nash.fused_gpu` (the launchers), so that ``triton.jit``
decorates these functions only when first used: with ``TRITON_INTERPRET=1`` set before that
moment they run on CPU tensors through Triton's interpreter (how CI tests them). Every tuning
constant is a kernel argument typed ``tl.float64`` (Triton would pass a Python float as
float32), passed in by the launcher from the eager path's own constants.

Padding: rows and columns ≥ n of K̂ and α are 0, masked out of every reduction; the padded
diagonal of M is 1, so the factorisation never touches them (its loop runs over j < n).
"""

# No ``from __future__ import annotations``: triton reads the parameter annotations
# (tl.constexpr, tl.float64) as objects.

import triton
import triton.language as tl

# Reductions go straight to tl.reduce with triton's own combine functions: the interpreter
# maps these to numpy (tl.sum & co. are device functions, each call of which re-patches the
# language in the interpreter, ~5 ms); compiled, it is what tl.sum/max/min do.
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min


@triton.jit
def _residual(Kh, a, mask):
    """r = α∘(K̂α) − 1 (``problem.scaled_gradient``), its max-norm (NaN read as inf: both mean
    'not converged, not finite') and max_i α_i(|K̂|α)_i, the scale of its rounding floor."""
    s = tl.reduce(Kh * a[None, :], 1, _SUM)
    sa = tl.reduce(tl.abs(Kh) * a[None, :], 1, _SUM)
    r = tl.where(mask, a * s - 1.0, 0.0)
    v = tl.abs(r)
    res = tl.reduce(tl.where(v == v, v, float("inf")), 0, _MAX)
    w = a * sa
    top = tl.reduce(tl.where(mask, tl.where(w == w, w, float("inf")), 0.0), 0, _MAX)
    return r, res, top


@triton.jit
def _converged(n, res, top, tol, factor, cap, eps):
    """``problem.converged_mask`` for one problem: residual ≤ max(tol, 8·floor) and
    8·floor ≤ max(tol, cap), floor = eps·N·max_i α_i(|K̂|α)_i."""
    floor8 = factor * (eps * n * top)
    limit = tl.maximum(tol, cap)
    thr = tl.maximum(floor8, tol)
    return (floor8 <= limit) & (res <= thr)


@triton.jit
def _direction(Kh, a, r, idx, n, maxf):
    """z = −(DK̂D + I)⁻¹ r by Cholesky (right-looking on the tile) and two triangular solves.
    Returns (z, the factorisation succeeded: every pivot finite and > 0)."""
    rows = idx[:, None]
    cols = idx[None, :]
    M = a[:, None] * Kh * a[None, :] + tl.where(rows == cols, 1.0, 0.0)
    L = tl.zeros_like(M)
    y = r  # forward solve L y = r, carried along the factorisation
    ok = n > 0
    for j in range(0, n):
        col = tl.reduce(tl.where(cols == j, M, 0.0), 1, _SUM)  # Schur complement's column j
        piv = tl.reduce(tl.where(idx == j, col, 0.0), 0, _SUM)
        good = (piv > 0.0) & (piv <= maxf)
        ok = ok & good
        ljj = tl.sqrt(tl.where(good, piv, 1.0))
        lcol = tl.where(idx >= j, col / ljj, 0.0)  # L[:, j]
        L += tl.where(cols == j, lcol[:, None], 0.0)
        M -= lcol[:, None] * lcol[None, :]
        yj = tl.reduce(tl.where(idx == j, y, 0.0), 0, _SUM) / ljj
        y = tl.where(idx == j, yj, tl.where(idx > j, y - lcol * yj, y))
    w = y  # backward solve Lᵀ w = y
    for jj in range(0, n):
        j = n - 1 - jj
        lrow = tl.reduce(tl.where(rows == j, L, 0.0), 0, _SUM)  # L[j, :]
        ljj = tl.reduce(tl.where(idx == j, lrow, 0.0), 0, _SUM)
        wj = tl.reduce(tl.where(idx == j, w, 0.0), 0, _SUM) / ljj
        w = tl.where(idx == j, wj, tl.where(idx < j, w - lrow * wj, w))
    return -w, ok


@triton.jit
def _newton(K, a0, USE_A0: tl.constexpr, idx, mask, n, n_steps, tol, factor, cap, frac,
            full_dec, eps, tiny, maxf):
    """Damped Newton on one problem K (BLOCK, BLOCK) float64 (padding 0), as ``solve_newton``.

    ``USE_A0``: start from the warm start a0 (BLOCK,) (rescaled on its ray; an invalid one
    starts from α̂ = 1 and is then rescaled, as the eager path does). Returns (α in K's units,
    residual, converged, steps taken); a problem that is no bargain (non-finite entry,
    diagonal ≤ 0) or whose step breaks gives α = 1, residual inf, not converged."""
    rows = idx[:, None]
    cols = idx[None, :]
    mask2 = mask[:, None] & mask[None, :]
    eye = (rows == cols) & mask2
    diag = tl.reduce(tl.where(eye, K, 0.0), 1, _SUM)
    # "finite" is |x| ≤ maxf (the largest float64): False for NaN and ±inf
    valid = tl.reduce(tl.where(mask, (diag > 0.0).to(tl.int32), 1), 0, _MIN) > 0
    fin = tl.where(mask2, (tl.abs(K) <= maxf).to(tl.int32), 1)
    valid = valid & (tl.reduce(tl.reduce(fin, 1, _MIN), 0, _MIN) > 0)
    d = tl.where(mask & valid, 1.0 / tl.sqrt(tl.where(diag > 0.0, diag, 1.0)), 1.0)
    Kh = tl.where(valid, d[:, None] * K * d[None, :], tl.where(eye, 1.0, 0.0))
    Kh = tl.where(mask2, Kh, 0.0)
    if USE_A0:  # a compile-time branch: the kernel without a warm start has none of this
        good0 = tl.where(mask, ((tl.abs(a0) <= maxf) & (a0 > 0.0)).to(tl.int32), 1)
        start_ok = tl.reduce(good0, 0, _MIN) > 0
        a = tl.where(mask, tl.where(start_ok, a0 / d, 1.0), 0.0)
        q = tl.reduce(a * tl.reduce(Kh * a[None, :], 1, _SUM), 0, _SUM)
        scale = tl.where(q > 0.0, tl.sqrt(n / tl.maximum(q, tiny)), 1.0)
        a = a * scale  # exact line search along the start's ray
    else:
        a = tl.where(mask, d * 0.0 + 1.0, 0.0)  # α̂ = 1 (float64, as d)
    r, res, top = _residual(Kh, a, mask)
    conv = _converged(n, res, top, tol, factor, cap, eps)
    # a warm start whose ray search overflowed (α̂ = 0 or not finite) is no start at all
    good_a = tl.where(mask, ((tl.abs(a) <= maxf) & (a > 0.0)).to(tl.int32), 1)
    broken = tl.reduce(good_a, 0, _MIN) == 0
    steps = tl.full((), 0, tl.int32)
    while (steps < n_steps) & (~conv) & (~broken):
        steps += 1
        z, chol_ok = _direction(Kh, a, r, idx, n, maxf)
        lam2 = -tl.reduce(r * z, 0, _SUM)
        lam = tl.where(lam2 > 0.0, tl.sqrt(tl.where(lam2 > 0.0, lam2, 1.0)),
                       tl.where(lam2 == lam2, 0.0, lam2))
        t = tl.where(lam > full_dec, 1.0 / (1.0 + lam), 1.0)
        # fraction to boundary on 1 + t z_i > 0 (t ≤ 1 already, so 1 stands for "no bound")
        t = tl.minimum(t, tl.reduce(tl.where(mask & (z < 0.0), -frac / z, 1.0), 0, _MIN))
        a_new = a * (1.0 + t * z)
        good = tl.where(mask, ((tl.abs(a_new) <= maxf) & (a_new > 0.0)).to(tl.int32), 1)
        good = tl.reduce(good, 0, _MIN) > 0
        broken = ~(chol_ok & good)
        a = tl.where(broken, a, a_new)
        r, res, top = _residual(Kh, a, mask)
        conv = _converged(n, res, top, tol, factor, cap, eps)
    ok = valid & (~broken) & (res <= maxf)
    alpha = tl.where(ok, a * d, 1.0)
    return alpha, tl.where(ok, res, float("inf")), conv & ok, steps


@triton.jit
def newton_batch_kernel(K_ptr, A0_ptr, Alpha_ptr, Res_ptr, Conv_ptr, Steps_ptr, n, n_steps,
                        s_kb, s_ki, s_kj, s_ab, s_ai,
                        tol: tl.float64, factor: tl.float64, cap: tl.float64,
                        frac: tl.float64, full_dec: tl.float64, eps: tl.float64,
                        tiny: tl.float64, maxf: tl.float64,
                        HAS_A0: tl.constexpr, BLOCK: tl.constexpr):
    """One program per problem p: K[p] (n, n) any float dtype (strides s_k*), warm start
    A0[p] (n,) float64 when HAS_A0 → α[p] (n,) float64, residual[p], converged[p] (bool),
    steps[p] (int64), contiguous outputs."""
    pid = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK)
    mask = idx < n
    mask2 = mask[:, None] & mask[None, :]
    K = tl.load(K_ptr + pid * s_kb + idx[:, None] * s_ki + idx[None, :] * s_kj, mask=mask2,
                other=0.0).to(tl.float64)
    if HAS_A0:
        a0 = tl.load(A0_ptr + pid * s_ab + idx * s_ai, mask=mask, other=1.0).to(tl.float64)
    else:
        a0 = tl.full((BLOCK,), 1.0, tl.float64)
    alpha, res, conv, steps = _newton(K, a0, HAS_A0, idx, mask, n, n_steps, tol, factor, cap,
                                      frac, full_dec, eps, tiny, maxf)
    tl.store(Alpha_ptr + pid * n + idx, alpha, mask=mask)
    tl.store(Res_ptr + pid, res)
    tl.store(Conv_ptr + pid, conv)
    tl.store(Steps_ptr + pid, steps.to(tl.int64))


@triton.jit
def bargain_batch_kernel(K_ptr, Alpha_ptr, Resid_ptr, Fallback_ptr, Ok_ptr, n, n_steps,
                         s_kb, s_ki, s_kj, ridge: tl.float64, zero_rtol: tl.float64,
                         cancel_rtol: tl.float64, tol: tl.float64, factor: tl.float64,
                         cap: tl.float64, frac: tl.float64, full_dec: tl.float64,
                         eps: tl.float64, tiny: tl.float64, maxf: tl.float64,
                         POLICY: tl.constexpr, BLOCK: tl.constexpr):
    """``bargain_alpha`` after the Gram matrix, one program per K[p] (n, n) (float32/float64).

    POLICY 0 "ridge", 1 "uniform", 2 "raise" (α is then the Newton α; the launcher's caller
    reads ``ok`` back). Writes α[p] (n,) float64, the Newton α's residual on the true K[p]
    (NaN for a non-finite K), fallback = not ok, ok."""
    pid = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK)
    mask = idx < n
    mask2 = mask[:, None] & mask[None, :]
    eye = (idx[:, None] == idx[None, :]) & mask2
    K = tl.load(K_ptr + pid * s_kb + idx[:, None] * s_ki + idx[None, :] * s_kj, mask=mask2,
                other=0.0).to(tl.float64)
    fin = (tl.abs(K) <= maxf)
    finite = tl.reduce(tl.where(mask2, fin.to(tl.int32), 1), None, _MIN) > 0
    K0 = tl.where(fin & mask2, K, 0.0)
    diag = tl.reduce(tl.where(eye, K0, 0.0), 1, _SUM)
    top = tl.reduce(tl.where(mask, diag, -float("inf")), 0, _MAX)
    dsum = tl.reduce(tl.where(mask, diag, 0.0), 0, _SUM)
    scale = tl.maximum(top, tiny)
    zero = mask & (diag <= zero_rtol * scale)
    any_zero = tl.reduce(zero.to(tl.int32), 0, _MAX) > 0
    Ks = K0 + tl.where(eye & zero[:, None], scale, 0.0)  # a zero expert's K_ii set to max K_jj
    ones = tl.full((BLOCK,), 1.0, tl.float64)
    main, _, conv, _ = _newton(Ks, ones, False, idx, mask, n, n_steps, tol, factor, cap, frac,
                               full_dec, eps, tiny, maxf)
    ok = conv & finite & (~any_zero)
    v = tl.abs(main * tl.reduce(K0 * main[None, :], 1, _SUM) - 1.0)
    residual = tl.reduce(tl.where(mask, tl.where(v == v, v, float("inf")), 0.0), 0, _MAX)
    residual = tl.where(finite, residual, float("nan"))
    alpha = main
    if POLICY == 0:  # ridge: K' + λ·mean(diag K)·I, solved only where the bargain failed
        lam = ridge * tl.maximum(dsum / n, tiny)
        alt, _, _, _ = _newton(Ks + tl.where(eye, lam, 0.0), ones, False, idx, mask, n,
                               tl.where(ok, 0, n_steps), tol, factor, cap, frac, full_dec, eps,
                               tiny, maxf)
        alpha = tl.where(ok, main, alt)
    if POLICY == 1:  # uniform: α_i = √(N / max(1ᵀK1, ρ·tr K))
        total = tl.reduce(tl.reduce(K0, 1, _SUM), 0, _SUM)
        floor = tl.maximum(cancel_rtol * dsum, tiny)
        c = tl.sqrt(n / tl.maximum(total, floor))
        alpha = tl.where(ok, main, c)
    if POLICY != 2:
        alpha = tl.where(top > 0.0, alpha, 1.0)  # every τ_i = 0: α = 1 (bargain_alpha's rule)
        alpha = tl.where((tl.abs(alpha) <= maxf), alpha, 1.0)  # bargain_alpha's nan_to_num
    tl.store(Alpha_ptr + pid * n + idx, alpha, mask=mask)
    tl.store(Resid_ptr + pid, residual)
    tl.store(Fallback_ptr + pid, ~ok)
    tl.store(Ok_ptr + pid, ok)
