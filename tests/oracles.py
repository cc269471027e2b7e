"""Independent numerical oracles for the bargain Kα = 1/α (S4), written for the tests only.

Nothing here imports namex_ref: each oracle is a different algorithm from the code under test.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import root

__all__ = ["positive_root"]


def positive_root(K: np.ndarray) -> np.ndarray:
    """α > 0 with Kα = 1/α (S4), by scipy's MINPACK hybrid method on the unit-diagonal K̂ (S9).

    Continuation from the diagonal (where α̂ = 1 exactly, S8) along K̂_t = (1 − t)I + tK̂, which
    is positive definite for t < 1, in log coordinates α̂ = exp(x) so every root stays positive;
    the steps in t are geometric towards t = 1, where α̂ grows fastest. MINPACK may stop with
    "xtol too small" at full precision, so the final residual decides (≤ 1e-12), not its flag.
    """
    d = 1.0 / np.sqrt(np.diag(K))
    Kh = d[:, None] * K * d[None, :]
    n = K.shape[0]
    x = np.zeros(n)
    for t in [*(1.0 - np.geomspace(1.0, 1e-9, 80))[1:], 1.0]:
        Kt = (1.0 - t) * np.eye(n) + t * Kh
        x = root(lambda x, Kt=Kt: np.exp(x) * (Kt @ np.exp(x)) - 1.0, x, tol=1e-14).x
    a = np.exp(x) * d
    assert np.max(np.abs(a * (K @ a) - 1)) < 1e-12, "oracle did not converge"
    return a
