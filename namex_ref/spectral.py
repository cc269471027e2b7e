r"""Convergence of base-expert momentum on linear dynamics (S19, docs/math.md), in float64.

Model: the bargained update is linear in the base expert's error, ΔE = −H (E − E*), H a real
(d, d) matrix, and the base moves by S17 (complex β, step γ) or S18 (quaternion β, real γ).

Complex momentum (S17). On the state s = [Re μ; Im μ; E − E*] (3d), one step is s' = R s with

    R = [ Re β·I     −Im β·I     −H           ]
        [ Im β·I      Re β·I      0           ]
        [ Re(γβ)·I   −Im(γβ)·I    I − Re(γ)·H ]

Derivation (checked in ``tests/test_spectral.py`` against the step itself): μ' = βμ − He, so
Re μ' = Re β Re μ − Im β Im μ − He and Im μ' = Im β Re μ + Re β Im μ; then
e' = e + Re(γμ') = e + Re(γβ) Re μ − Im(γβ) Im μ − Re(γ) He. For real γ this is exactly the R
of docs/math.md §4 (I − γH); for complex γ the stated "I − γH" would be complex and is replaced by
I − Re(γ)H (our extension; S19 is stated for real γ only).

Spectrum. Every block is a polynomial in H, so spec(R) is the union over eigenvalues h of H
(complex ones included) of the roots of the per-eigenvalue cubic, β = a + ib,

    λ³ − (1 + 2a − Re(γ) h) λ² + (|β|² + 2a − Re(γβ̄) h) λ − |β|² = 0,

which for real γ (Re(γβ̄) = γa) is the cubic of S19 verbatim (trace, sum of principal 2×2 minors
and determinant of the 3×3 scalar matrix; ``proofs/s19_spectral.py``). Lorraine et al.,
Theorem 1: if ρ(R) < 1 the iterates converge linearly at rate O((ρ(R) + ε)^j).

Quaternion momentum (S18). On [μ_w; μ_x; μ_y; μ_z; E − E*] (5d) the step matrix is built from
the 4×4 left-multiplication matrix L(β) (:func:`namex_ref.quaternion.left_matrix`):
block (c, k) = L(β)_{ck}·I for the buffer, −H added at (w, e), and the last block row
γ·L(β)_{0k}·I, I − γH.

Findings these tools reproduce (pinned in ``tests/test_spectral.py``):

- The docs/math.md §4 matrix R and cubic ARE one step of S17 for ΔE = −H(E − E*) and real γ (no
  discrepancy found); the heavy-ball factorisation for real β holds.
- Bilinear game, H = [[0, σ], [−σ, 0]] per pair (eigenvalues ±iσ): every real β gives
  ρ(R) ≥ 1 (Schur–Cohn on the heavy-ball quadratic), while a non-zero phase reaches ρ < 1,
  e.g. γσ = 0.5: ρ = 0.889 at |β| = 0.672, φ = ±62.7° (a fine search; grids find slightly more:
  0.902 on tests/test_spectral.py's 100×181 grid, 0.907 on the 50×73 default of
  ``namex momentum-grid``); the paper's phases (|φ| ≤ 30°) reach ρ < 1 only for small steps
  (γσ = 0.1: 0.972 at φ = ±30°).
- Frozen-α NAMEx, H = cI: for γc ≥ 1 the best β over the disk is real (heavy ball at critical
  damping, ρ = |1 − √(γc)|). For γc < 1 a NON-real β does better: the cubic can be made a
  perfect cube (λ − r)³ with r < |1 − √(γc)|, e.g. γc = 0.3: r = 0.386 vs 0.452 for the best
  real β; and at a fixed |β| the best phase is non-real over part of the |β| range for
  γc ≲ 1.8. Real β is therefore not optimal for H = cI in general.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from namex_ref.checks import as_finite_complex, require_int, require_real
from namex_ref.momentum import (
    complex_momentum_step,
    quaternion_momentum_step,
    zero_buffer,
)
from namex_ref.quaternion import as_quaternion, left_matrix

__all__ = [
    "PAPER_PHASES",
    "best_on_grid",
    "bilinear_game_matrix",
    "cooperative_matrix",
    "cubic_coefficients",
    "fitted_rate",
    "momentum_grid_main",
    "momentum_matrix",
    "plot_rho_grid",
    "quaternion_momentum_matrix",
    "rho_grid",
    "simulate",
    "spectral_radius",
    "spectral_radius_from_cubic",
]

#: Phases φ = arg β swept in the NAMEx paper (S17): 0, ±π/12, ±π/6.
PAPER_PHASES: tuple[float, ...] = (0.0, math.pi / 12, -math.pi / 12, math.pi / 6, -math.pi / 6)

Beta = complex | Sequence[float]


def _square_matrix(H: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(H, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"H must be a square (d, d) real matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("H must be finite")
    return arr


def momentum_matrix(H: ArrayLike, beta: complex, gamma: complex) -> NDArray[np.float64]:
    """Step matrix R of S17 on the state [Re μ; Im μ; E − E*] for ΔE = −H(E − E*) (S19).

    H: (d, d) real; beta: β ∈ ℂ; gamma: γ (real as in S19; complex accepted, see the module
    docstring). Returns R: (3d, 3d) float64 with s' = R s exactly as one
    :func:`namex_ref.momentum.complex_momentum_step`. Matches docs/math.md §4 for real γ.
    """
    Hm = _square_matrix(H)
    b = as_finite_complex("beta", beta)
    g = as_finite_complex("gamma", gamma)
    d = Hm.shape[0]
    eye = np.eye(d)
    gb = g * b
    zero = np.zeros((d, d))
    return np.block(
        [
            [b.real * eye, -b.imag * eye, -Hm],
            [b.imag * eye, b.real * eye, zero],
            [gb.real * eye, -gb.imag * eye, eye - g.real * Hm],
        ]
    )


def quaternion_momentum_matrix(
    H: ArrayLike, beta_q: Sequence[float], gamma: float
) -> NDArray[np.float64]:
    """Step matrix of S18 on [μ_w; μ_x; μ_y; μ_z; E − E*] for ΔE = −H(E − E*) (S19).

    H: (d, d) real; beta_q: β = (w, x, y, z); gamma: real γ. Returns (5d, 5d) float64:
    buffer blocks L(β)_{ck}·I, −H at block (w, e), last block row [γ L(β)_{0k}·I, I − γH].
    """
    Hm = _square_matrix(H)
    g = as_finite_complex("gamma", gamma)
    if g.imag != 0.0:
        raise ValueError(f"S18 uses a real step gamma, got gamma={gamma!r}")
    L = left_matrix(as_quaternion(beta_q)).numpy()  # (4, 4)
    d = Hm.shape[0]
    eye = np.eye(d)
    zero = np.zeros((d, d))
    rows: list[list[NDArray[np.float64]]] = []
    for c in range(4):
        row = [L[c, k] * eye for k in range(4)]
        row.append(-Hm if c == 0 else zero)
        rows.append(row)
    rows.append([g.real * L[0, k] * eye for k in range(4)] + [eye - g.real * Hm])
    return np.block(rows)


def spectral_radius(R: ArrayLike) -> float:
    """ρ(R) = max |λ_i(R)| for a square matrix R: (n, n), via LAPACK eigenvalues (float64)."""
    Rm = _square_matrix(R)
    return float(np.max(np.abs(np.linalg.eigvals(Rm))))


def cubic_coefficients(h: complex, beta: complex, gamma: complex) -> NDArray[np.complex128]:
    """Coefficients (highest power first, shape (4,)) of the S19 cubic for one eigenvalue h.

    λ³ − (1 + 2a − Re(γ) h) λ² + (|β|² + 2a − Re(γβ̄) h) λ − |β|², with a = Re β.
    For real γ, Re(γβ̄) = γ Re β and this is docs/math.md §4's cubic.
    """
    b = as_finite_complex("beta", beta)
    g = as_finite_complex("gamma", gamma)
    hc = as_finite_complex("h", h)
    a = b.real
    m = abs(b) ** 2
    return np.array(
        [1.0, -(1.0 + 2.0 * a - g.real * hc), m + 2.0 * a - (g * b.conjugate()).real * hc, -m],
        dtype=np.complex128,
    )


def spectral_radius_from_cubic(eigs_of_H: ArrayLike, beta: complex, gamma: complex) -> float:
    """ρ(R) from the per-eigenvalue cubic (S19), independent of building R.

    eigs_of_H: (n,) eigenvalues of H (complex allowed, e.g. ±iσ for a bilinear game).
    Returns max over h and over the three roots (``numpy.roots``) of |λ|.
    """
    hs = np.atleast_1d(np.asarray(eigs_of_H, dtype=np.complex128))
    if hs.ndim != 1 or hs.size == 0:
        raise ValueError(f"eigs_of_H must be a non-empty 1-D array, got shape {hs.shape}")
    return max(
        float(np.max(np.abs(np.roots(cubic_coefficients(complex(h), beta, gamma))))) for h in hs
    )


def _grid_axis(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite reals, got {values!r}")
    return arr


def rho_grid(
    h_eigs: ArrayLike, moduli: ArrayLike, phases: ArrayLike, gammas: ArrayLike
) -> NDArray[np.float64]:
    """ρ(R) over a grid β = |β| e^{iφ} and real γ (S19), via the cubic's companion matrices.

    h_eigs: (n_h,) eigenvalues of H (complex allowed); moduli: (n_m,) |β| ≥ 0;
    phases: (n_p,) φ in radians; gammas: (n_g,) real γ.
    Returns (n_m, n_p, n_g) float64 with ρ = max_h max |root|. Same roots as
    :func:`spectral_radius_from_cubic` (``numpy.roots`` is the companion-matrix eigenproblem),
    batched.
    """
    hs = np.atleast_1d(np.asarray(h_eigs, dtype=np.complex128))
    if hs.ndim != 1 or hs.size == 0 or not np.all(np.isfinite(hs)):
        raise ValueError(f"h_eigs must be a non-empty 1-D array of finite numbers, got {h_eigs!r}")
    mods = _grid_axis(moduli, "moduli")
    if np.any(mods < 0):
        raise ValueError(f"moduli must be >= 0, got {mods.min()!r}")
    phis = _grid_axis(phases, "phases")
    gs = _grid_axis(gammas, "gammas")
    a = mods[:, None] * np.cos(phis)[None, :]  # (n_m, n_p)
    m = np.broadcast_to((mods**2)[:, None], a.shape)  # (n_m, n_p)
    out = np.empty((mods.size, phis.size, gs.size))
    for k, g in enumerate(gs):
        gh = g * hs  # (n_h,)
        c2 = -(1.0 + 2.0 * a[..., None] - gh)  # (n_m, n_p, n_h)
        c1 = m[..., None] + 2.0 * a[..., None] - gh * a[..., None]
        c0 = np.broadcast_to(-m[..., None], c2.shape)
        comp = np.zeros((*c2.shape, 3, 3), dtype=np.complex128)  # companion matrices
        comp[..., 0, 0] = -c2
        comp[..., 0, 1] = -c1
        comp[..., 0, 2] = -c0
        comp[..., 1, 0] = 1.0
        comp[..., 2, 1] = 1.0
        out[:, :, k] = np.abs(np.linalg.eigvals(comp)).max(axis=(-1, -2))
    return out


def best_on_grid(
    rho: ArrayLike, moduli: ArrayLike, phases: ArrayLike
) -> tuple[float, float, float]:
    """(|β|, φ, ρ) at the smallest ρ of a (n_m, n_p) slice of :func:`rho_grid`."""
    r = np.asarray(rho, dtype=np.float64)
    mods = _grid_axis(moduli, "moduli")
    phis = _grid_axis(phases, "phases")
    if r.shape != (mods.size, phis.size):
        raise ValueError(f"rho must have shape {(mods.size, phis.size)}, got {r.shape}")
    i, j = np.unravel_index(int(np.argmin(r)), r.shape)
    return float(mods[i]), float(phis[j]), float(r[i, j])


def cooperative_matrix(c: float, dim: int = 1) -> NDArray[np.float64]:
    """H = c·I (dim, dim): frozen-α NAMEx, ΔE = c(Ē_α − E_m) with c = Σ α_i (S19)."""
    scale = require_real("c", c)
    return scale * np.eye(require_int("dim", dim, low=1))


def bilinear_game_matrix(sigmas: ArrayLike) -> NDArray[np.float64]:
    """H for a bilinear game: block-diagonal [[0, σ], [−σ, 0]] per σ (eigenvalues ±iσ) (S19).

    sigmas: (p,) → H: (2p, 2p). ΔE = −H e moves the pair (x, y) by (−σy, σx): simultaneous
    gradient descent–ascent on σxy.
    """
    s = _grid_axis(sigmas, "sigmas")
    H = np.zeros((2 * s.size, 2 * s.size))
    for k, sig in enumerate(s):
        H[2 * k, 2 * k + 1] = sig
        H[2 * k + 1, 2 * k] = -sig
    return H


def simulate(
    H: ArrayLike,
    beta: Beta,
    gamma: complex,
    e0: ArrayLike,
    steps: int,
    *,
    observable: Literal["error", "state"] = "error",
) -> NDArray[np.float64]:
    """Iterate the real momentum steps on ΔE = −H(E − E*) and return norms (S17/S18, S19).

    H: (d, d); beta: complex (S17, :func:`~namex_ref.momentum.complex_momentum_step`) or four
    floats (S18, :func:`~namex_ref.momentum.quaternion_momentum_step`); gamma: γ; e0: (d,) the
    initial error E^(1) − E*; μ^(1) = 0. By linearity we take E* = 0, so no rounding floor
    appears as the error shrinks. Returns (steps + 1,) float64: ‖E^(j) − E*‖ for
    observable="error", or the norm of the whole state ‖[μ; E − E*]‖ for observable="state"
    (no zero crossings when the dominant eigenvalues are a complex pair).

    Note: with real β the eigenvalue β of R (the Im μ block) is never excited from μ = 0 with
    real data, but it never sets ρ either: the heavy-ball roots have product β, so the larger
    has modulus ≥ √|β| ≥ |β|. Generic e0 therefore decays at the rate ρ(R).
    """
    require_int("steps", steps, low=1)
    Hm = _square_matrix(H)
    e = np.asarray(e0, dtype=np.float64)
    if e.shape != (Hm.shape[0],):
        raise ValueError(f"e0 must have shape {(Hm.shape[0],)}, got {e.shape}")
    if observable not in ("error", "state"):
        raise ValueError(f"observable must be 'error' or 'state', got {observable!r}")
    Ht = torch.from_numpy(Hm)
    base = torch.from_numpy(e.copy())
    quaternion = not isinstance(beta, (int, float, complex))
    mu = zero_buffer("quaternion" if quaternion else "complex", base)
    norms = np.empty(steps + 1)

    def norm() -> float:
        x = base if observable == "error" else torch.cat((mu.flatten(), base.flatten()))
        top = float(x.abs().max())  # rescale: squares of entries below ~1e-154 would underflow
        return top * float(torch.linalg.vector_norm(x / top)) if top > 0 else 0.0

    norms[0] = norm()
    with torch.no_grad():
        for j in range(1, steps + 1):
            delta = -(Ht @ base)
            if quaternion:
                g = as_finite_complex("gamma", gamma)
                if g.imag != 0.0:
                    raise ValueError(f"S18 uses a real step gamma, got gamma={gamma!r}")
                mu, base = quaternion_momentum_step(
                    mu, delta, base, beta=beta, gamma=g.real  # type: ignore[arg-type]
                )
            else:
                mu, base = complex_momentum_step(
                    mu, delta, base, beta=complex(beta), gamma=gamma  # type: ignore[arg-type]
                )
            norms[j] = norm()
    return norms


def fitted_rate(errors: ArrayLike, *, tail_fraction: float = 0.5) -> float:
    """Empirical linear rate: exp of the least-squares slope of log‖e_j‖ against j on the tail.

    errors: (n,) positive finite norms, e.g. from :func:`simulate`; the last
    ceil(tail_fraction·n) entries (at least 3) are fitted. Returns the rate r in ‖e_j‖ ≈ C r^j.
    """
    err = np.asarray(errors, dtype=np.float64)
    if err.ndim != 1 or err.size < 3:
        raise ValueError(f"errors must be 1-D with at least 3 entries, got shape {err.shape}")
    require_real("tail_fraction", tail_fraction, low=0, high=1, low_open=True)
    n_tail = max(3, math.ceil(tail_fraction * err.size))
    tail = err[-n_tail:]
    if not np.all(np.isfinite(tail)) or np.any(tail <= 0):
        raise ValueError(
            "errors in the fitted tail must be finite and > 0 (underflow or overflow?)"
        )
    j = np.arange(err.size - n_tail, err.size, dtype=np.float64)
    slope = np.polyfit(j, np.log(tail), 1)[0]
    return float(np.exp(slope))


def plot_rho_grid(
    panels: Sequence[tuple[str, ArrayLike]],
    moduli: ArrayLike,
    phases: ArrayLike,
    gamma: float,
    path: str | Path,
) -> Path:
    """Write a PNG heatmap of ρ(R) over |β| (y) × φ (x, degrees) at fixed γ, one panel per H.

    panels: sequence of (title, h_eigs); e.g. ("H = cI", [c]) and ("bilinear", [1j·σ, −1j·σ]).
    Each panel shows ρ with a colorbar (diverging at ρ = 1), the ρ = 1 contour, the best grid
    point (star) and the paper's phases 0, ±15°, ±30° (dotted). Uses the Agg canvas (no display,
    no global pyplot state). Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    if len(panels) == 0:
        raise ValueError("panels must not be empty")
    mods = _grid_axis(moduli, "moduli")
    phis = _grid_axis(phases, "phases")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    deg = np.degrees(phis)
    for k, (title, h_eigs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        rho = rho_grid(h_eigs, mods, phis, [gamma])[:, :, 0]  # (n_m, n_p)
        lo, hi = float(rho.min()), float(rho.max())
        norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 1.0 - 1e-6), vmax=max(hi, 1.0 + 1e-6))
        mesh = ax.pcolormesh(deg, mods, rho, shading="auto", cmap="RdBu_r", norm=norm)
        if lo < 1.0 < hi:
            ax.contour(deg, mods, rho, levels=[1.0], colors="k", linewidths=1.2)
        for phi in PAPER_PHASES:
            ax.axvline(math.degrees(phi), color="0.3", linestyle=":", linewidth=0.8)
        m_best, p_best, r_best = best_on_grid(rho, mods, phis)
        ax.plot([math.degrees(p_best)], [m_best], marker="*", color="gold", markersize=12,
                markeredgecolor="k")
        ax.set_title(f"{title}\nγ={gamma:g}, min ρ={r_best:.4f} at |β|={m_best:.2f}, "
                     f"φ={math.degrees(p_best):.0f}°", fontsize=9)
        ax.set_xlabel("phase φ = arg β (degrees)")
        ax.set_ylabel("|β|")
        fig.colorbar(mesh, ax=ax, label="ρ(R)  (S19)")
    fig.savefig(out, dpi=110, format="png")
    return out


def _panel_table(title: str, h_eigs: ArrayLike, moduli: NDArray[np.float64],
                 phases: NDArray[np.float64], gamma: float) -> list[str]:
    rho = rho_grid(h_eigs, moduli, phases, [gamma])[:, :, 0]
    m, p, r = best_on_grid(rho, moduli, phases)
    lines = [f"{title}  (γ = {gamma:g})",
             f"  best on grid         |β|={m:.3f}  φ={math.degrees(p):+7.1f}°  ρ={r:.5f}"]
    real = rho_grid(h_eigs, moduli, [0.0, math.pi], [gamma])[:, :, 0]
    m, p, r = best_on_grid(real, moduli, np.array([0.0, math.pi]))
    lines.append(f"  best real β          |β|={m:.3f}  φ={math.degrees(p):+7.1f}°  ρ={r:.5f}")
    paper = rho_grid(h_eigs, moduli, list(PAPER_PHASES), [gamma])[:, :, 0]
    for j, phi in enumerate(PAPER_PHASES):
        i = int(np.argmin(paper[:, j]))
        lines.append(f"  paper φ={math.degrees(phi):+5.0f}°        |β|={moduli[i]:.3f}"
                     f"               ρ={paper[i, j]:.5f}")
    return lines


def momentum_grid_main(
    out_dir: str | Path,
    *,
    h_kind: Literal["cooperative", "bilinear", "both"] = "both",
    c: float = 1.0,
    sigma: float = 1.0,
    gamma: float = 0.5,
    n_moduli: int = 50,
    n_phases: int = 73,
) -> tuple[Path, str]:
    """CLI entry for the ρ-grid (S19): write ``rho_grid.png`` in out_dir, return (path, table).

    h_kind: "cooperative" (H = cI, frozen-α NAMEx), "bilinear" (eigenvalues ±iσ) or "both".
    Grid: |β| in linspace(0, 0.99, n_moduli), φ in linspace(−π, π, n_phases) (odd n_phases keeps
    φ = 0 and ±π on the grid). The table lists, per H, the best grid point, the best real β
    and the best |β| at each of the paper's phases.
    """
    if h_kind not in ("cooperative", "bilinear", "both"):
        raise ValueError(f"h_kind must be 'cooperative', 'bilinear' or 'both', got {h_kind!r}")
    for name, n in (("n_moduli", n_moduli), ("n_phases", n_phases)):
        require_int(name, n, low=2)
    require_real("gamma", gamma, low=0, low_open=True)
    moduli = np.linspace(0.0, 0.99, n_moduli)
    phases = np.linspace(-math.pi, math.pi, n_phases)
    panels: list[tuple[str, ArrayLike]] = []
    if h_kind in ("cooperative", "both"):
        panels.append((f"H = cI, c = {c:g} (frozen-α NAMEx)", np.array([c], dtype=np.complex128)))
    if h_kind in ("bilinear", "both"):
        panels.append((f"bilinear game, eigenvalues ±{sigma:g}i",
                       np.array([1j * sigma, -1j * sigma])))
    path = plot_rho_grid(panels, moduli, phases, gamma, Path(out_dir) / "rho_grid.png")
    lines: list[str] = []
    for title, h in panels:
        lines.extend(_panel_table(title, h, moduli, phases, gamma))
    return path, "\n".join(lines)

