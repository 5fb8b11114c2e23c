"""Bayesian photo-D estimator with extinction marginalised in closed form.

For star i, locus point j (intrinsic colours L_jk), colours c_k with errors σ_k (a floor added in
quadrature) and reddening vector R_k::

    chi2_ij(A) = Σ_k w_k (c_k - L_jk - A R_k)^2,   w_k = 1/σ_k^2,
    q = Σ w_k R_k^2,  b_j = Σ w_k (c_k - L_jk) R_k,  A*_j = b_j / q,
    chi2min_j = Σ w_k (c_k - L_jk)^2 - b_j^2 / q.

With a prior p_j = p([Fe/H], M_r | patch, r bin) and a flat A_r prior on [0, A_max], the
posterior over (j, A) is p_j exp(-chi2min_j / 2) N(A; A*_j, 1/q) on [0, A_max]. Summing over A
in closed form gives the locus-point weights::

    weight_j ∝ p_j exp(-chi2min_j / 2) [Φ((A_max - A*_j) √q) - Φ(-A*_j √q)]

and, given j, A is a normal N(A*_j, 1/q) truncated to [0, A_max]. Everything is done in log
space relative to the star's best point, and points hopelessly worse than the best (log
weight below the best by more than ``HOPELESS_LOG_WEIGHT`` = 16) are skipped before any exp/erf.
The moments use every remaining point; the A_r and Q_r histograms, which only give percentiles,
take the points within ``HISTOGRAM_LOG_WEIGHT`` = 13 of the best.

Colours formed from magnitudes share a band with their neighbours, so their errors covary
(``Photometry.color_covariance``). With the covariance C of the colours (tridiagonal; the floor
adds to its diagonal) the weighted sums above become quadratic forms in C^-1: each star's
residuals are whitened by its bidiagonal Cholesky factor (``_whiten``), after which the
formulas hold as written with unit weights. ``BayesConfig(color_covariance=False)`` gives the
independent errors of the paper.

Optionally (``BayesEstimator(dust_profile=...)``, :mod:`photodist.dust_profile`) the flat A_r
prior is multiplied by a normal N(mu_j, s^2) whose centre follows the patch's extinction
against each point's apparent distance modulus r - M_r,j. Per point the product of the normal
likelihood N(A*_j, 1/q) and that prior is again normal, with variance 1/(q + 1/s^2), centre
(q s^2 A*_j + mu_j) / (1 + q s^2) and weight factor exp(-(A*_j - mu_j)^2 / (2 (1/q + s^2))),
so the same closed form applies with these values in place of A*_j and 1/q.

The column ``log_evidence`` is the log marginal likelihood of the star's used colours,
log Σ_j p_j ∫ N(c; L_j + A R, C) π(A | j) dA, with π the A_r prior density (flat:
1 / (A_max - A_min); with the profile, its normal on [A_min, A_max]) and p_j the prior map's
values as given. Compared across models of one patch (e.g. dust-profile widths), it is what a
maximum-likelihood fit of those models maximises (``photodist.dust_profile``).

Percentiles: M_r and [Fe/H] from their grid marginals (each grid point a uniform cell);
A_r from the exact mixture (all components share σ_A = 1/√q, so the untruncated density is a
histogram of A*_j convolved with N(0, σ_A^2), then cut to [0, A_max]); Q_r = M_r + A_r from the
mixture of the per-point conditionals (Gaussian of the mean conditional variance, convolved with
the M_r cell).

The CPU kernel is a fused numba loop over stars (parallel over cores). The truncation factor
and the conditional moments of A are functions of A*_j alone for a star: they are interpolated
from a per-star table at steps of σ_A/8, itself taken from grids precomputed once per process in
units of σ_A (see ``TRUNC_*`` and ``EDGE_*``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import pandas as pd
from scipy.special import logsumexp

from photodist.bands import Photometry, require_photometry
from photodist.locus import Locus

if TYPE_CHECKING:
    from photodist.dust_profile import DustProfile

#: Points whose log weight is below the best by more than this are skipped (e^-16 ~ 1e-7;
#: the percentiles use only those within HISTOGRAM_LOG_WEIGHT).
HOPELESS_LOG_WEIGHT = 16.0
#: Step, in grid points, between the coarse points of the best-fit check ([Fe/H] rows and M_r
#: columns). 2 found the exhaustive minimum to < 0.75 in chi2 on test stars at 5.4 us/star;
#: 3 and 4 missed it by up to 7 and 14, 4 at 2.7 us/star.
BEST_FIT_STRIDE = 2
#: Points below the best by more than this (e^-13 ~ 2e-6) still count in the moments, but are
#: left out of the A_r and Q_r histograms, whose percentiles they cannot move.
HISTOGRAM_LOG_WEIGHT = 13.0
SQRT2 = math.sqrt(2.0)
MAX_HIST_BINS = 8192  # cap on the A_r and Q_r histogram lengths (bins widen beyond it)
MIN_A_MAX = 0.01  # floor of the A_r prior bound (mag)
MAX_TABLE_NODES = 8000  # cap on the nodes of the per-star truncated-normal table
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
LOG_2PI = math.log(2.0 * math.pi)
SQRT_2PI = math.sqrt(2.0 * math.pi)
#: Nodes per σ_A of the per-star truncation tables (linear interpolation: log-mass error
#: <= 1/(8 N^2), 0.002 for N = 8).
TABLE_NODES_PER_SIGMA = 8
#: Precomputed truncation grid in units of σ_A: N(z, 1) truncated to [0, U] at z = Z_LO + k/N,
#: its rows evenly spaced in s = ln U + U / U_SCALE (ratio steps for small U, steps of ~0.075
#: for large U, where the upper bound moves across the nodes), U in [U_MIN, U_MAX]. Stars with
#: U = A_max/σ_A in that range fill their table by interpolating linearly in s between two rows
#: instead of calling erfc, exp and log per node.
TRUNC_Z_LO = -6.5
TRUNC_Z_NODES = 301  # up to z = 31: U_MAX + 7
TRUNC_U_MIN = 1.0 / 64.0
TRUNC_U_MAX = 24.0
TRUNC_U_SCALE = 3.0
TRUNC_S_STEP = 0.025
#: For U >= TRUNC_U_MAX the bounds act separately: each node takes the one-sided truncation
#: N(x, 1) on [0, inf) of its nearer bound (x = z or U - z, the other bound > 12 σ away),
#: interpolated in a table at x = EDGE_X_LO + k / EDGE_PER_UNIT; beyond it, no truncation.
EDGE_X_LO = -8.0
EDGE_PER_UNIT = 64
EDGE_NODES = 1297  # up to x = 12.25


class Flags:
    """Bits of the integer ``flags`` column (combine with bitwise or)."""

    POOR_FIT = 1  #: best-fit chi2min above the threshold
    TWO_BRANCH = 2  #: posterior split between giant and dwarf branches (each > 5 %)
    FEH_EDGE = 4  #: [Fe/H] posterior median within 1.5 grid steps of the grid edge
    MR_EDGE = 8  #: M_r posterior median within 1.5 grid steps of the grid edge
    AR_AT_BOUND = 16  #: the best fit's unconstrained A_r outside [0, A_max] by > 1 σ_A
    COLOR_UNUSABLE = 32  #: at least one colour missing/NaN/error > 1 mag (dropped from chi2)
    NO_R = 64  #: no usable r magnitude: row kept, estimates NaN
    NO_PRIOR = 128  #: no prior map for the patch: flat prior in ([Fe/H], M_r) used
    TOO_FEW_COLORS = 256  #: fewer than two usable colours: estimates NaN
    NN_OUT_OF_DOMAIN = 512  #: (networks) inputs outside the training domain
    NN_INVALID_INPUT = 1024  #: (networks) inputs unusable: Bayes in run/survey, NaN in predict
    R_OUTSIDE_PRIOR = 2048  #: r outside the prior's r bins (beyond an end or in a gap)
    AR_NEAR_MAX = 4096  #: A_r estimate >= 90 % of its prior's upper bound (extinction cut short?)

    @classmethod
    def describe(cls) -> dict[str, int]:
        """Flag names and bit values."""
        return {k: v for k, v in vars(cls).items() if k.isupper()}


PARAMS = ("Mr", "FeH", "Ar", "Qr", "DM")
STATS = ("mean", "std", "p16", "p50", "p84")


def _column_names() -> list[str]:
    names = [f"{p}_{s}" for p in PARAMS for s in STATS]
    names += ["dist_p16", "dist_p50", "dist_p84", "chi2min", "log_evidence"]
    names += ["Mr_entropy_drop", "FeH_entropy_drop", "Ar_entropy_drop", "P_giant", "Ar_max"]
    return names


OUTPUT_COLUMNS = _column_names()
_COL = {name: k for k, name in enumerate(OUTPUT_COLUMNS)}
# columns the kernel fills (the DM and distance columns are derived afterwards)
_K_MR, _K_FEH, _K_AR, _K_QR = (_COL[f"{p}_mean"] for p in ("Mr", "FeH", "Ar", "Qr"))
_K_CHI2 = _COL["chi2min"]
_K_LOGZ = _COL["log_evidence"]
_K_HMR, _K_HFEH, _K_HAR = _COL["Mr_entropy_drop"], _COL["FeH_entropy_drop"], _COL["Ar_entropy_drop"]
_K_PGIANT = _COL["P_giant"]


@numba.njit(cache=True)
def _log_ndtr(x: float) -> float:
    """log Φ(x), accurate in the far lower tail."""
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / SQRT2))
    x2 = x * x
    series = 1.0 - 1.0 / x2 + 3.0 / x2**2 - 15.0 / x2**3 + 105.0 / x2**4
    return -0.5 * x2 - math.log(-x) - LOG_SQRT_2PI + math.log(series)


@numba.njit(cache=True)
def _log_ndtr_diff(a: float, b: float) -> float:
    """log(Φ(b) - Φ(a)) for a < b, stable in both tails."""
    if a > 0.0:  # upper tail: Φ(b) - Φ(a) = Φ(-a) - Φ(-b)
        a, b = -b, -a
    lb = _log_ndtr(b)
    la = _log_ndtr(a)
    d = la - lb
    if d >= 0.0:
        return -np.inf
    return lb + math.log1p(-math.exp(d))


@numba.njit(cache=True)
def _float32_whitening(colors, sw, mw, u):
    """One star's whitening (:func:`_whiten`) as float32 constants for the bound passes:
    (sw_k c_k, sw_k, mw_k for k >= 1, u_k)."""
    f32 = np.float32
    a = (
        f32(sw[0] * colors[0]),
        f32(sw[1] * colors[1]),
        f32(sw[2] * colors[2]),
        f32(sw[3] * colors[3]),
        f32(sw[4] * colors[4]),
    )
    s = (f32(sw[0]), f32(sw[1]), f32(sw[2]), f32(sw[3]), f32(sw[4]))
    m = (f32(mw[1]), f32(mw[2]), f32(mw[3]), f32(mw[4]))
    v = (f32(u[0]), f32(u[1]), f32(u[2]), f32(u[3]), f32(u[4]))
    return a, s, m, v


@numba.njit(inline="always", fastmath=True)
def _whitened_terms(rows, j, a, s, m, v):
    """|e_j|^2 and B_j = e_j . u of locus point j in float32 (e_j the whitened residual;
    ``rows`` the five float32 colour rows, the rest from :func:`_float32_whitening`)."""
    d0 = a[0] - s[0] * rows[0][j]
    d1 = a[1] - s[1] * rows[1][j] - m[0] * d0
    d2 = a[2] - s[2] * rows[2][j] - m[1] * d1
    d3 = a[3] - s[3] * rows[3][j] - m[2] * d2
    d4 = a[4] - s[4] * rows[4][j] - m[3] * d3
    ss = d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3 + d4 * d4
    bb = d0 * v[0] + d1 * v[1] + d2 * v[2] + d3 * v[3] + d4 * v[4]
    return ss, bb


@numba.njit(cache=True, fastmath=True)
def _bound_pass(colors, sw, mw, u, locus_t32, log_prior32, amax_s, lw32, fit32):
    """Upper bound of every locus point's log weight, in float32 (vectorised, 8 lanes).

    bound_j = log p_j - chi2min_j / 2 - (distance of A*_j outside [0, A_max])^2 q / 2; the
    truncation factor is at most 1, so the bound only selects candidates, whose terms are then
    recomputed in float64. Five colour rows always (unused colours have zero weight); the
    residuals are whitened as in :func:`_whiten`. ``log_prior32`` must be finite. ``fit32``
    gets the same without the prior: -1/2 the point's chi2 with A_r within [0, A_max].
    """
    half = np.float32(0.5)
    zero = np.float32(0.0)
    amax = np.float32(amax_s)
    a, s, m, v = _float32_whitening(colors, sw, mw, u)
    rows = (locus_t32[0], locus_t32[1], locus_t32[2], locus_t32[3], locus_t32[4])
    for j in range(locus_t32.shape[1]):
        ss, bb = _whitened_terms(rows, j, a, s, m, v)
        below = min(bb, zero)
        above = max(bb - amax, zero)
        fit = -half * (ss - bb * bb + below * below + above * above)
        fit32[j] = fit
        lw32[j] = log_prior32[j] + fit


@numba.njit(cache=True, fastmath=True)
def _bound_pass_profile(
    colors, sw, mw, u, locus_t32, log_prior32, lw32, mu_pt, kappa, amax_p, amax_s, fit32
):
    """:func:`_bound_pass` with a Gaussian A_r prior N(mu_j, s^2) per point.

    ``mu_pt`` holds per point (float32) mu_j sqrt(q) (row 0) and the log of the inverse
    mass of the prior's normal inside [0, A_max] (row 1, which normalises the prior given
    the point); ``kappa`` = q s^2. A point's bound adds both, the prior's penalty
    (B_j - mu_s)^2 / (1 + kappa) / 2, and takes the truncation distance of the combined
    normal's mean, (kappa B_j + mu_s) / sqrt(kappa (1 + kappa)) in units of its width,
    outside [0, ``amax_p``]. ``fit32`` gets the likelihood's own -chi2 / 2 with A_r within
    [0, A_max] (``amax_s`` in units of the likelihood's width), as :func:`_bound_pass`.
    """
    f32 = np.float32
    half = f32(0.5)
    zero = f32(0.0)
    amax = f32(amax_p)
    amax_fit = f32(amax_s)
    kap = f32(kappa)
    inv1k = f32(1.0 / (1.0 + kappa))
    inv_root = f32(1.0 / math.sqrt(kappa * (1.0 + kappa)))
    a, s, m, v = _float32_whitening(colors, sw, mw, u)
    rows = (locus_t32[0], locus_t32[1], locus_t32[2], locus_t32[3], locus_t32[4])
    centres = mu_pt[0]
    norms = mu_pt[1]
    for j in range(locus_t32.shape[1]):  # one flat loop (vectorises; nested loops did not)
        ss, bb = _whitened_terms(rows, j, a, s, m, v)
        mu = centres[j]
        dev = bb - mu
        zp = (kap * bb + mu) * inv_root
        below = min(zp, zero)
        above = max(zp - amax, zero)
        out_lo = min(bb, zero)
        out_hi = max(bb - amax_fit, zero)
        fit32[j] = -half * (ss - bb * bb + out_lo * out_lo + out_hi * out_hi)
        lw32[j] = (
            log_prior32[j]
            + norms[j]
            - half * (ss - bb * bb + dev * dev * inv1k)
            - half * (below * below + above * above)
        )


@numba.njit(cache=True)
def _profile_means(knots_x, knots_mu, r, mr_axis, factor, shift, scale, out):
    """Prior mean of A_r per M_r column, (``factor`` g(r - M_r) - ``shift``) * ``scale``:
    g is piecewise linear through (``knots_x``, ``knots_mu``), constant beyond its ends."""
    n_k = knots_x.shape[0]
    for t in range(mr_axis.shape[0]):
        x = r - mr_axis[t]
        if x <= knots_x[0]:
            mu = knots_mu[0]
        elif x >= knots_x[n_k - 1]:
            mu = knots_mu[n_k - 1]
        else:
            k = np.searchsorted(knots_x, x) - 1
            fr = (x - knots_x[k]) / (knots_x[k + 1] - knots_x[k])
            mu = knots_mu[k] + fr * (knots_mu[k + 1] - knots_mu[k])
        out[t] = (factor * mu - shift) * scale


@numba.njit(cache=True)
def _log_prior_mass(centre: float, upper: float, width: float) -> float:
    """log of the mass of N(centre, width^2) inside [0, upper] (0 when it is all inside)."""
    lo = -centre / width
    hi = (upper - centre) / width
    if lo < -9.0 and hi > 9.0:
        return 0.0
    return max(_log_ndtr_diff(lo, hi), -700.0)


@numba.njit(cache=True, fastmath=True)
def _column_max(lw32, col_max):
    """Maximum of ``lw32`` viewed as rows of ``col_max.shape[0]`` columns, per column.

    An elementwise maximum over rows (vectorises, unlike a scalar max reduction); the inputs
    must be free of NaN (fast-math).
    """
    width = col_max.shape[0]
    col_max[:] = lw32[:width]
    for r in range(1, lw32.shape[0] // width):
        row = lw32[r * width : (r + 1) * width]
        for t in range(width):
            col_max[t] = max(col_max[t], row[t])


@numba.njit(cache=True)
def _best_point(values32, col_max, width):
    """Index of the largest of ``values32`` viewed as rows of ``width`` columns: the column
    from the vectorised column maxima (:func:`_column_max`, into ``col_max``), then its
    row."""
    _column_max(values32, col_max)
    column = int(np.argmax(col_max))
    for row in range(values32.shape[0] // width):
        if values32[row * width + column] == col_max[column]:
            return row * width + column
    return column


@numba.njit(cache=True, fastmath=True)
def _candidate_terms(colors, sw, mw, u, locus_t, cand, n, chi2min, b):
    """Exact (float64) chi2min_j = |e|^2 - B_j^2 and B_j = e.u of the first ``n`` candidates
    (e the whitened residual, :func:`_whiten`)."""
    row0, row1, row2, row3, row4 = locus_t[0], locus_t[1], locus_t[2], locus_t[3], locus_t[4]
    for c in range(n):
        j = cand[c]
        d0 = sw[0] * (colors[0] - row0[j])
        d1 = sw[1] * (colors[1] - row1[j]) - mw[1] * d0
        d2 = sw[2] * (colors[2] - row2[j]) - mw[2] * d1
        d3 = sw[3] * (colors[3] - row3[j]) - mw[3] * d2
        d4 = sw[4] * (colors[4] - row4[j]) - mw[4] * d3
        bb = d0 * u[0] + d1 * u[1] + d2 * u[2] + d3 * u[3] + d4 * u[4]
        chi2min[c] = d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3 + d4 * d4 - bb * bb
        b[c] = bb


@numba.njit(cache=True)
def _whiten(colors, color_errors, color_cov, error_floor, sw, mw, cz):
    """Whitening of one star's colour residuals; returns the number of usable colours.

    The colour covariance C (variances sigma_k^2 + floor^2, covariances ``color_cov`` of
    adjacent usable colours) is tridiagonal, so its Cholesky factor L is bidiagonal and the
    whitened residual e = L^-1 (c - L_j) follows by forward substitution:
    e_k = sw_k (c_k - L_jk) - mw_k e_{k-1}, with sw_k = 1 / L_kk and mw_k = L_k,k-1 / L_kk.
    Unusable colours get sw_k = mw_k = 0 (dropped; their neighbours decouple) and cz_k = 0.
    """
    sw[:] = 0.0
    mw[:] = 0.0
    cz[:] = 0.0
    n_used = 0
    diag_prev = 0.0  # L_{k-1,k-1} of the previous usable colour (0: none adjacent)
    for k in range(colors.shape[0]):
        c = colors[k]
        e = color_errors[k]
        if not (math.isfinite(c) and math.isfinite(e) and e > 0.0):
            diag_prev = 0.0
            continue
        var = e * e + error_floor * error_floor
        off = 0.0
        if diag_prev > 0.0 and k > 0:
            cov = color_cov[k - 1]
            if math.isfinite(cov):
                off = cov / diag_prev
        if off * off >= 0.999 * var:  # not positive definite: treat as independent
            off = 0.0
        diag = math.sqrt(var - off * off)
        sw[k] = 1.0 / diag
        mw[k] = off / diag
        cz[k] = c
        diag_prev = diag
        n_used += 1
    return n_used


@numba.njit(inline="always")
def _whitened_reddening(sw, mw, reddening, u):
    """The whitened reddening vector rho = L^-1 R into ``u`` (as :func:`_whiten` whitens the
    residuals); returns q = |rho|^2."""
    q = 0.0
    rho = 0.0
    for k in range(5):
        rho = sw[k] * reddening[k] - mw[k] * rho
        u[k] = rho
        q += rho * rho
    return q


@numba.njit(cache=True, fastmath=True)
def _table_lookup(
    b, n, sigma_a, t_lo, h_t, top, log_prior, cand, chi2min, offset, tables, out, outside
):
    """Candidates' log weights and conditional A moments, interpolated from the per-star table.

    ``tables`` rows: log mass, mean, variance and inverse mass at the nodes t_lo + k h_t;
    positions are clipped to [0, top]. ``out`` rows: log weight (log p_j - chi2min_j / 2 -
    offset + log mass), mean, variance, inverse mass. The positions in the candidate list of
    those outside the table (their values are clipped ones, to be recomputed) go to
    ``outside`` (as floats); returns their number.
    """
    t_logm, t_mean, t_var, t_invm = tables[0], tables[1], tables[2], tables[3]
    o_lw, o_mean, o_var, o_invm = out[0], out[1], out[2], out[3]
    inv_h = 1.0 / h_t
    n_outside = 0
    for c in range(n):
        raw = (b[c] * sigma_a - t_lo) * inv_h
        outside[n_outside] = c
        n_outside += not (0.0 <= raw <= top)
        pos = min(max(raw, 0.0), top)
        k = int(pos)
        fr = pos - k
        o_mean[c] = t_mean[k] + fr * (t_mean[k + 1] - t_mean[k])
        o_var[c] = t_var[k] + fr * (t_var[k + 1] - t_var[k])
        o_invm[c] = t_invm[k] + fr * (t_invm[k + 1] - t_invm[k])
        log_m = t_logm[k] + fr * (t_logm[k + 1] - t_logm[k])
        o_lw[c] = log_prior[cand[c]] - 0.5 * chi2min[c] - offset + log_m
    return n_outside


@numba.njit(cache=True, fastmath=True)
def _exp_weights(lw, n, w):
    """Weights exp(lw_c) of the first ``n`` candidates, taken in float32 (expf, relative error
    ~1e-7) after shifting by the largest log weight, which keeps every weight within the
    candidate cut representable; the shift cancels in every ratio of weights. Returns the
    shift."""
    top = -np.inf
    for c in range(n):
        top = max(top, lw[c])
    f32 = np.float32
    for c in range(n):
        d = lw[c] - top
        w[c] = math.exp(f32(d)) if d >= -80.0 else 0.0
    return top


@numba.njit(cache=True, fastmath=True)
def _weighted_sums(w, mean_a, var_a, mr_of, giant_of, cand, n, q_out):
    """Sums over candidates of w, w [giant], w E[A], w E[A^2], w Var[A] and w E[Q^2].

    Also writes each candidate's conditional mean of Q_r = M_r + A_r to ``q_out``.
    """
    s_w = 0.0
    s_g = 0.0
    s_a = 0.0
    s_a2 = 0.0
    s_var = 0.0
    s_q2 = 0.0
    for c in range(n):
        j = cand[c]
        wc = w[c]
        ma = mean_a[c]
        va = var_a[c]
        qv = mr_of[j] + ma
        q_out[c] = qv
        s_w += wc
        s_g += wc * giant_of[j]
        s_a += wc * ma
        s_a2 += wc * (va + ma * ma)
        s_var += wc * va
        s_q2 += wc * (qv * qv + va)
    return s_w, s_g, s_a, s_a2, s_var, s_q2


@numba.njit(cache=True)
def _truncated_normal(mu: float, sigma: float, upper: float) -> tuple[float, float, float]:
    """log mass, mean and variance of N(mu, sigma^2) truncated to [0, upper]."""
    alpha = -mu / sigma
    beta = (upper - mu) / sigma
    log_m = _log_ndtr_diff(alpha, beta)
    if not math.isfinite(log_m):
        edge = 0.0 if mu < 0.5 * upper else upper
        return log_m, edge, 0.0
    ra = math.exp(-0.5 * alpha * alpha - LOG_SQRT_2PI - log_m)
    rb = math.exp(-0.5 * beta * beta - LOG_SQRT_2PI - log_m)
    mean = mu + sigma * (ra - rb)
    var = sigma * sigma * (1.0 + alpha * ra - beta * rb - (ra - rb) ** 2)
    return log_m, min(max(mean, 0.0), upper), min(max(var, 0.0), sigma * sigma)


@numba.njit(cache=True)
def _truncated_normal_table(
    mu: float, sigma: float, upper: float
) -> tuple[float, float, float, float]:
    """``_truncated_normal`` and the inverse mass, with fewer transcendental calls.

    Away from the far tails the mass is one difference of erfc values (the same value as the
    log-space difference up to rounding); else it falls back to ``_truncated_normal``.
    """
    alpha = -mu / sigma
    beta = (upper - mu) / sigma
    a, b = (-beta, -alpha) if alpha > 0.0 else (alpha, beta)
    if a > -30.0:
        mass = 0.5 * (math.erfc(-b / SQRT2) - math.erfc(-a / SQRT2))
        if mass > 1e-290:
            inv_m = 1.0 / mass
            ra = math.exp(-0.5 * alpha * alpha) * (inv_m / SQRT_2PI)
            rb = math.exp(-0.5 * beta * beta) * (inv_m / SQRT_2PI)
            mean = mu + sigma * (ra - rb)
            var = sigma * sigma * (1.0 + alpha * ra - beta * rb - (ra - rb) ** 2)
            return (
                math.log(mass),
                min(max(mean, 0.0), upper),
                min(max(var, 0.0), sigma * sigma),
                inv_m,
            )
    log_m, mean, var = _truncated_normal(mu, sigma, upper)
    return log_m, mean, var, math.exp(min(-log_m, 700.0))


@numba.njit(cache=True)
def _grid_coordinate(upper_s: float) -> float:
    """Row coordinate s = ln U + U / TRUNC_U_SCALE of the truncation grid."""
    return math.log(upper_s) + upper_s / TRUNC_U_SCALE


@numba.njit(cache=True)
def _build_truncation_grid():
    """Rows (in s) x (log mass, mean, variance, inverse mass) x z nodes; see TRUNC_*."""
    s_min = _grid_coordinate(TRUNC_U_MIN)
    n_u = int(math.ceil((_grid_coordinate(TRUNC_U_MAX) - s_min) / TRUNC_S_STEP)) + 2
    grid = np.empty((n_u, 4, TRUNC_Z_NODES))
    upper = TRUNC_U_MIN
    for i in range(n_u):
        target = s_min + i * TRUNC_S_STEP
        for _ in range(50):  # Newton on s(U) = target (s is increasing and concave in ln U)
            upper -= (_grid_coordinate(upper) - target) / (1.0 / upper + 1.0 / TRUNC_U_SCALE)
        for k in range(TRUNC_Z_NODES):
            z = TRUNC_Z_LO + k / TABLE_NODES_PER_SIGMA
            log_m, mean, var = _truncated_normal(z, 1.0, upper)
            grid[i, 0, k] = max(log_m, -1e300)
            grid[i, 1, k] = mean
            grid[i, 2, k] = var
            grid[i, 3, k] = math.exp(min(-log_m, 700.0))
    return grid


@numba.njit(cache=True)
def _build_edge_table():
    """One-sided truncation rows (log mass, mean, variance, inverse mass) at EDGE_* nodes."""
    table = np.empty((4, EDGE_NODES))
    for k in range(EDGE_NODES):
        log_m, mean, var = _truncated_normal(EDGE_X_LO + k / EDGE_PER_UNIT, 1.0, 1e6)
        table[0, k] = log_m
        table[1, k] = mean
        table[2, k] = var
        table[3, k] = math.exp(min(-log_m, 700.0))
    return table


@numba.njit(cache=True)
def _table_from_edges(edge, upper_s, sigma, t_lo, h_t, n_t, tables):
    """Per-star truncation table at A = t_lo + k h_t for U = A_max/σ >= TRUNC_U_MAX.

    Each node takes its nearer bound's one-sided values from ``edge`` (linear interpolation;
    mirrored for the upper bound); nodes beyond the table's reach are untruncated.
    """
    x_top = EDGE_X_LO + (EDGE_NODES - 1.0) / EDGE_PER_UNIT
    for k in range(n_t):
        z = (t_lo + k * h_t) / sigma
        upper_side = z > 0.5 * upper_s
        x = upper_s - z if upper_side else z
        if x >= x_top:
            log_m, mean, var, inv_m = 0.0, x, 1.0, 1.0
        elif x < EDGE_X_LO:  # beyond the table (coarse tables of extreme grids only)
            log_m, mean, var = _truncated_normal(x, 1.0, 1e6)
            inv_m = math.exp(min(-log_m, 700.0))
        else:
            pos = (x - EDGE_X_LO) * EDGE_PER_UNIT
            i = min(int(pos), EDGE_NODES - 2)
            f = pos - i
            log_m = edge[0, i] + f * (edge[0, i + 1] - edge[0, i])
            mean = edge[1, i] + f * (edge[1, i + 1] - edge[1, i])
            var = edge[2, i] + f * (edge[2, i + 1] - edge[2, i])
            inv_m = edge[3, i] + f * (edge[3, i + 1] - edge[3, i])
        tables[0, k] = max(log_m, -1e300)
        tables[1, k] = sigma * (upper_s - mean if upper_side else mean)
        tables[2, k] = sigma * sigma * var
        tables[3, k] = inv_m


@numba.njit(cache=True)
def _table_from_grid(grid, upper_s, sigma, k_lo, n_t, tables):
    """Per-star truncation table at A = (k_lo + k) σ/N from the precomputed grid.

    N = TABLE_NODES_PER_SIGMA; ``upper_s`` = A_max/σ in [TRUNC_U_MIN, TRUNC_U_MAX); the nodes
    z = k_lo/N ... must lie on the grid.
    Interpolates linearly in s between the two neighbouring rows.
    """
    pos = (_grid_coordinate(upper_s) - _grid_coordinate(TRUNC_U_MIN)) / TRUNC_S_STEP
    i = min(int(pos), grid.shape[0] - 2)
    f = pos - i
    g0 = k_lo - int(round(TABLE_NODES_PER_SIGMA * TRUNC_Z_LO))
    row0 = grid[i]
    row1 = grid[i + 1]
    scale = (1.0, sigma, sigma * sigma, 1.0)  # mean and variance in units of σ, σ^2
    for r in range(4):
        a = row0[r, g0 : g0 + n_t]
        b = row1[r, g0 : g0 + n_t]
        out = tables[r]
        sc = scale[r]
        for k in range(n_t):
            out[k] = sc * (a[k] + f * (b[k] - a[k]))


@numba.njit(cache=True)
def _box_kernel(widths, kern, cum):
    """Normalised convolution of centred boxes of odd ``widths`` (bins) into ``kern``.

    Returns the kernel length, 1 + sum(widths - 1); ``cum`` is scratch of at least that + 1.
    """
    kern[0] = 1.0
    n = 1
    for width in widths:
        cum[0] = 0.0
        for m in range(n):
            cum[m + 1] = cum[m] + kern[m]
        n_new = n + width - 1
        for m in range(n_new):
            kern[m] = (cum[min(m + 1, n)] - cum[max(m + 1 - width, 0)]) / width
        n = n_new
    return n


@numba.njit(cache=True, fastmath=True)
def _kernel_dot(kern, n_k, padded_cdf, edge):
    """Smoothed cumulative mass at bin edge ``edge`` (see ``_smoothed_percentiles``)."""
    acc = 0.0
    for s in range(n_k):
        acc += kern[s] * padded_cdf[edge + s]
    return acc


@numba.njit(cache=True)
def _smoothed_percentiles(hist, kern, n_k, lo, h, padded_cdf, out, k0):
    """16/50/84 percentiles of ``hist`` convolved with the centred odd kernel ``kern[:n_k]``.

    ``hist`` holds masses in bins [lo + m h, lo + (m + 1) h); the smoothed histogram is never
    formed: its cumulative mass at bin edge M is sum_s kern[s] F(M - n_k // 2 + s), with F the
    raw cumulative mass (0 below the grid, the total above), found by bisection and
    interpolated linearly within the bin. ``padded_cdf`` is scratch of length n + n_k.
    """
    n = hist.shape[0]
    half = n_k // 2
    total = 0.0
    for m in range(half + 1):
        padded_cdf[m] = 0.0
    for m in range(n):
        total += hist[m]
        padded_cdf[half + 1 + m] = total
    for m in range(n + half + 1, n + n_k):
        padded_cdf[m] = total
    total_smoothed = _kernel_dot(kern, n_k, padded_cdf, n)
    levels = (0.16, 0.5, 0.84)
    a = 0  # bisection bracket: S(a) < target <= S(b)
    s_a = _kernel_dot(kern, n_k, padded_cdf, 0)
    for li in range(3):
        target = levels[li] * total_smoothed
        value = lo + n * h
        if total_smoothed > 0.0:
            if s_a >= target:
                value = lo
            else:
                b = n
                s_b = total_smoothed
                while b - a > 1:
                    mid = (a + b) // 2
                    s_mid = _kernel_dot(kern, n_k, padded_cdf, mid)
                    if s_mid >= target:
                        b, s_b = mid, s_mid
                    else:
                        a, s_a = mid, s_mid
                value = lo + (a + (target - s_a) / (s_b - s_a)) * h
        out[k0 + li] = value


@numba.njit(cache=True)
def _deposit(hist, pos, mass):
    """Cloud-in-cell deposit of ``mass`` at fractional bin position ``pos`` (bin units)."""
    x = pos - 0.5
    k = int(math.floor(x))
    f = x - k
    n = hist.shape[0]
    if 0 <= k < n:
        hist[k] += (1.0 - f) * mass
    if 0 <= k + 1 < n:
        hist[k + 1] += f * mass


#: Locus points whose A* lies farther than this many σ_A outside [0, A_max] put their
#: in-bound A_r mass straight into the bins (:func:`_deposit_beyond`): the smoothed histogram
#: (margins and kernel of 4 σ_A) would lose most of it
FAR_ASTAR_SIGMA = 3.0
#: ... down to this fraction (log) of their mass in the first bin
_FAR_LOG_TAIL = -12.0
#: ... when their mass is more than this fraction of the others' (else they are left out)
FAR_NEGLIGIBLE = 1e-3


@numba.njit(cache=True)
def _deposit_beyond(direct, scratch, bstar, amax_s, h_s, mass):
    """Add to ``direct`` (the bins of [0, A_max], width ``h_s`` in units of σ_A) the exact
    in-bound mass of a locus point whose conditional A_r distribution is N(A*, σ_A²)
    truncated to [0, A_max], with A* = ``bstar`` σ_A far outside: bin masses from the normal
    tail at the bin edges, counted from the nearer bound (into ``scratch`` first), scaled to
    sum to ``mass``. Bins beyond a tail of e^``_FAR_LOG_TAIL`` of the first bin's are left
    out."""
    n = direct.shape[0]
    below = bstar < 0.0
    dist = -bstar if below else bstar - amax_s  # > 0: from A* to the nearer bound
    log_q0 = _log_ndtr(-dist)  # log Q at the bound
    prev = 1.0  # Q at the lower edge of bin k over Q at the bound
    total = 0.0
    last = -1
    for k in range(n):
        nxt = math.exp(_log_ndtr(-(dist + (k + 1) * h_s)) - log_q0)
        m = prev - nxt
        if m <= 0.0 or (k > 0 and m < math.exp(_FAR_LOG_TAIL) * scratch[0]):
            break
        scratch[k] = m
        total += m
        last = k
        prev = nxt
    if total <= 0.0:
        return
    scale = mass / total
    for k in range(last + 1):
        direct[k if below else n - 1 - k] += scratch[k] * scale


@numba.njit(cache=True)
def _weighted_percentiles_cells(mass, centres, half_width, out, k0):
    """16/50/84 percentiles of a marginal whose grid points are uniform cells."""
    total = mass.sum()
    levels = (0.16, 0.5, 0.84)
    n = mass.shape[0]
    for li in range(3):
        target = levels[li] * total
        cum = 0.0
        value = centres[n - 1] + half_width
        for m in range(n):
            nxt = cum + mass[m]
            if nxt >= target and mass[m] > 0.0:
                frac = (target - cum) / mass[m]
                value = centres[m] - half_width + frac * 2.0 * half_width
                break
            cum = nxt
        out[k0 + li] = value


@numba.njit(cache=True)
def _percentiles_from_density(density, lo, h, out, k0):
    """16/50/84 percentiles of a density sampled at bin centres lo + (m + 0.5) h."""
    total = density.sum()
    levels = (0.16, 0.5, 0.84)
    n = density.shape[0]
    for li in range(3):
        target = levels[li] * total
        cum = 0.0
        value = lo + n * h
        for m in range(n):
            nxt = cum + density[m]
            if nxt >= target and density[m] > 0.0:
                value = lo + (m + (target - cum) / density[m]) * h
                break
            cum = nxt
        out[k0 + li] = value


@numba.njit(cache=True)
def _entropy_bits(mass):
    """Shannon entropy (bits) of a histogram; bins below 1e-18 of the total add < 1e-16 bits."""
    total = mass.sum()
    h = 0.0
    if not total > 0.0:
        return h
    inv_total = 1.0 / total
    for m in range(mass.shape[0]):
        p = mass[m] * inv_total
        if p > 1e-18:
            h -= p * math.log2(p)
    return h


@numba.njit(cache=True)
def _gaussian_smooth(hist, sigma_bins, out):
    """Convolve ``hist`` with a sampled normalised Gaussian of width sigma_bins (in bins)."""
    n = hist.shape[0]
    half = int(math.ceil(4.0 * sigma_bins))
    if half < 1 or sigma_bins < 0.3:
        out[:] = hist
        return
    kern = np.empty(2 * half + 1)
    for t in range(-half, half + 1):
        kern[t + half] = math.exp(-0.5 * (t / sigma_bins) ** 2)
    kern /= kern.sum()
    for m in range(n):
        acc = 0.0
        for t in range(-half, half + 1):
            src = m - t
            if 0 <= src < n:
                acc += kern[t + half] * hist[src]
        out[m] = acc


@numba.njit(cache=True, fastmath=True)
def _kernel_window_dot(kern, hist, offset, s_lo, s_hi):
    """sum of kern[s - offset] hist[s] over s in [s_lo, s_hi) (a symmetric kernel's convolution
    at one bin, with both arrays read forwards so that it vectorises)."""
    acc = 0.0
    for s in range(s_lo, s_hi):
        acc += kern[s - offset] * hist[s]
    return acc


@numba.njit(cache=True)
def _gaussian_smooth_range(hist, sigma_bins, out, m_lo, m_hi, kern_buf):
    """``_gaussian_smooth`` for the output bins [m_lo, m_hi) only (same values).

    ``kern_buf`` is scratch for the kernel (allocated here when too short).
    """
    n = hist.shape[0]
    half = int(math.ceil(4.0 * sigma_bins))
    if half < 1 or sigma_bins < 0.3:
        out[m_lo:m_hi] = hist[m_lo:m_hi]
        return
    if 2 * half + 1 <= kern_buf.shape[0]:
        kern = kern_buf[: 2 * half + 1]
    else:
        kern = np.empty(2 * half + 1)
    for t in range(-half, half + 1):
        kern[t + half] = math.exp(-0.5 * (t / sigma_bins) ** 2)
    kern /= kern.sum()
    for m in range(m_lo, m_hi):
        out[m] = _kernel_window_dot(kern, hist, m - half, max(m - half, 0), min(m + half + 1, n))


@numba.njit(cache=True)
def _star_kernel(
    colors,
    color_errors,
    color_cov,
    r,
    a_max_in,
    log_prior,
    log_prior32,
    locus_t,
    locus_t32,
    mr_index,
    feh_index,
    giant_of,
    mr_of,
    mr_axis,
    feh_axis,
    reddening,
    error_floor,
    chi2_poor,
    log_weight_cut,
    out,
    flags_out,
    i,
    trunc_grid,
    edge_table,
    cand_work,
    lw32,
    fit32,
    cand_buf,
    col_max,
    col_act,
    work,
    mu_pt,
    a_min_i,
    profile_scale_i,
    knots_x,
    knots_mu,
    profile_sigma,
):
    nc = colors.shape[0]
    n_points = locus_t.shape[1]
    n_mr = mr_axis.shape[0]
    n_feh = feh_axis.shape[0]
    mr_half = 0.5 * (mr_axis[1] - mr_axis[0]) if n_mr > 1 else 0.0
    feh_half = 0.5 * (feh_axis[1] - feh_axis[0]) if n_feh > 1 else 0.0

    # per-star whitening (_whiten) of the residuals c - L_j and of the reddening vector R:
    # rho = L^-1 R, q = |rho|^2, u = rho / sqrt(q)
    sw = work[0, :5]
    cz = work[0, 5:10]
    mw = work[0, 15:20]
    n_used = _whiten(colors, color_errors, color_cov, error_floor, sw, mw, cz)
    u = work[0, 10:15]
    q = _whitened_reddening(sw, mw, reddening, u)
    if n_used < nc:
        flags_out[i] |= 32
    if not math.isfinite(r):
        flags_out[i] |= 64
        return
    if n_used < 2 or q <= 0.0:
        flags_out[i] |= 256
        return
    sqrt_q = math.sqrt(q)
    sigma_a = 1.0 / sqrt_q
    a_max = a_max_in

    # passes 1-2: float32 bound of every point's log weight, then the best point (exact)
    amax_s = a_max * sqrt_q
    for k in range(5):
        u[k] /= sqrt_q
    # with a Gaussian A_r prior N(mu_t, s^2) (the dust profile), each point's A posterior is
    # the normal N(A*_j, 1/q) times the prior: width sigma_a sqrt(kappa / (1 + kappa)),
    # kappa = q s^2, centre (kappa B_j + mu_s) / sqrt(kappa (1 + kappa)) in units of it
    profile = profile_sigma > 0.0 and math.isfinite(profile_scale_i) and n_points == n_mr * n_feh
    kappa = q * profile_sigma * profile_sigma
    inv1k = 1.0 / (1.0 + kappa)
    inv_root = 1.0 / math.sqrt(kappa * (1.0 + kappa)) if profile else 1.0
    amax_p = a_max / (sigma_a * math.sqrt(kappa * inv1k)) if profile else amax_s
    mu_s = work[13, :n_mr]
    norm_s = work[14, :n_mr]
    if profile:
        _profile_means(knots_x, knots_mu, r, mr_axis, profile_scale_i, a_min_i, sqrt_q, mu_s)
        # the prior given a point is the normal restricted to [A_min, A_max], normalised
        root_k = math.sqrt(kappa)
        for t in range(n_mr):
            norm_s[t] = -_log_prior_mass(mu_s[t], amax_s, root_k)
        for row in range(n_feh):  # per point, in float32, for the vectorised bound pass
            for t in range(n_mr):
                mu_pt[0, row * n_mr + t] = mu_s[t]
                mu_pt[1, row * n_mr + t] = norm_s[t]
        _bound_pass_profile(
            cz, sw, mw, u, locus_t32, log_prior32, lw32, mu_pt, kappa, amax_p, amax_s, fit32
        )
    else:
        _bound_pass(cz, sw, mw, u, locus_t32, log_prior32, amax_s, lw32, fit32)
    # the float32 pass cannot overflow (no inf/NaN) when the whitened colours and weights are
    # moderate; then the best bound and the candidate columns come from vectorised column
    # maxima over the (n_feh, n_mr) grid, else from a plain scan of every point
    safe = True
    for k in range(5):
        if not (
            abs(sw[k] * cz[k]) < 1e15
            and sw[k] < 1e15
            and abs(mw[k]) < 1e3
            and abs(u[k]) <= 1.0 + 1e-6
        ):
            safe = False
    safe = safe and n_points == n_mr * n_feh
    # the best fit (chi2min, A_r within [0, A_max], no prior) over every point, exact
    # (float64) at the float32 pass's best point; cand_buf and cand_work are free until
    # the candidates
    fit_j = _best_point(fit32, col_max, n_mr) if safe else int(np.argmax(fit32))
    best_chi2 = _constrained_chi2(
        cz, sw, mw, u, locus_t, fit_j, amax_s, cand_buf, cand_work[0], cand_work[1]
    )
    fit_astar_s = cand_work[1, 0]  # the best fit's unconstrained A* (AR_AT_BOUND)
    if safe:
        _column_max(lw32, col_max)
        best = -np.inf
        for t in range(n_mr):
            best = max(best, float(col_max[t]))
    else:
        best = float(lw32[int(np.argmax(lw32))])
    # the float32 bound is accurate to far better than this margin
    threshold = best - log_weight_cut - 0.5
    # candidate points (log weight bound within the cut of the best), in ascending order
    n_cand_all = 0
    if safe:
        thr32 = np.float32(threshold)
        n_act = 0
        for t in range(n_mr):
            if col_max[t] >= thr32:
                col_act[n_act] = t
                n_act += 1
        for row in range(n_feh):
            base = row * n_mr
            for a in range(n_act):
                j = base + col_act[a]
                cand_buf[n_cand_all] = j
                n_cand_all += lw32[j] >= threshold
    else:
        for j in range(n_points):
            if lw32[j] >= threshold:
                cand_buf[n_cand_all] = j
                n_cand_all += 1

    # pass 3: exact weights, marginals and moments over the candidate points, one short loop
    # per step over compact per-candidate rows of cand_work: chi2min, A* √q, log weight, conditional
    # mean and variance of A, inverse truncation mass, conditional mean of Q, weight
    s_buf, b_buf = cand_work[0], cand_work[1]
    lw_buf, cand_mean, cand_var, cand_invm = cand_work[2], cand_work[3], cand_work[4], cand_work[5]
    cand_q, cand_w = cand_work[6], cand_work[7]
    amax_flat = amax_s  # the flag AR_AT_BOUND refers to the likelihood's A* alone
    if profile:
        sigma_a = sigma_a * math.sqrt(kappa * inv1k)
        amax_s = amax_p
    mr_mass = work[1, :n_mr]
    feh_mass = work[2, :n_feh]
    mr_mass[:] = 0.0
    feh_mass[:] = 0.0
    # A_r histogram: bins aligned so that 0 and A_max are bin edges, 4 σ_A margins outside
    h_a = max(min(max(sigma_a / 5.0, 0.0005), 0.02, a_max / 20.0), a_max / 1000.0)
    n_in = int(math.ceil(a_max / h_a))
    h_a = a_max / n_in
    n_margin = min(int(math.ceil(4.0 * sigma_a / h_a)), (MAX_HIST_BINS - n_in) // 2)
    a_lo = -n_margin * h_a
    n_a = n_in + 2 * n_margin
    a_hist = work[3, :n_a]
    a_hist[:] = 0.0
    a_direct = work[5, :n_in]  # far points' in-bound mass, added after the smoothing
    a_direct[:] = 0.0
    q_min = np.inf
    q_max = -np.inf
    # exact (float64) terms of the candidates, the best point and their A* range
    _candidate_terms(cz, sw, mw, u, locus_t, cand_buf, n_cand_all, s_buf, b_buf)
    astar_lo = np.inf
    astar_hi = -np.inf
    if profile:
        # the prior's penalty joins chi2min and B_j moves to the combined centre; the
        # likelihood's own values wait in cand_q and cand_w (free until the weights)
        for c in range(n_cand_all):
            bb = b_buf[c]
            t = mr_index[cand_buf[c]]
            mu = mu_s[t]
            cand_q[c] = s_buf[c]
            cand_w[c] = bb
            s_buf[c] += (bb - mu) * (bb - mu) * inv1k - 2.0 * norm_s[t]
            b_buf[c] = (kappa * bb + mu) * inv_root
    best_exact = -np.inf
    for c in range(n_cand_all):
        bb = b_buf[c]
        below = min(bb, 0.0)
        above = max(bb - amax_s, 0.0)
        bound = log_prior[cand_buf[c]] - 0.5 * s_buf[c] - 0.5 * (below**2 + above**2)
        best_exact = max(best_exact, bound)
        astar_lo = min(astar_lo, bb)
        astar_hi = max(astar_hi, bb)
        # the candidates' exact fits settle near-ties that the float32 pass cannot
        fit_b = cand_w[c] if profile else bb  # the likelihood's own A*
        below = min(fit_b, 0.0)
        above = max(fit_b - amax_flat, 0.0)
        chi2_c = (cand_q[c] if profile else s_buf[c]) + below**2 + above**2
        if chi2_c < best_chi2:
            best_chi2 = chi2_c
            fit_astar_s = fit_b
    # candidates this far below the best point's bound only enter the moments
    log_hist_cut = best_exact - best - HISTOGRAM_LOG_WEIGHT
    # per-star table of the truncation over the candidates' A* (within [-6σ, A_max + 6σ]),
    # step σ_A / 8: from the precomputed (z, U) grid, from the one-sided edge table when the
    # bounds are far apart (U >= TRUNC_U_MAX), or evaluated (U < TRUNC_U_MIN; at nodes deep
    # inside [0, A_max], > 8 σ_A from both bounds, the truncation is negligible)
    if TRUNC_U_MIN <= amax_s < TRUNC_U_MAX:  # from the precomputed grid (nodes on it)
        per = TABLE_NODES_PER_SIGMA
        k_lo = int(math.floor(per * min(max(-6.0, astar_lo), amax_s + 5.0)))
        z_hi = max(min(amax_s + 6.0, astar_hi), k_lo / per + 1.0)
        n_t = int(math.ceil(per * z_hi)) - k_lo + 2
        h_t = sigma_a / per
        t_lo = k_lo * h_t
        tables = work[8:12, :n_t]
        _table_from_grid(trunc_grid, amax_s, sigma_a, k_lo, n_t, tables)
    else:
        t_lo = max(-6.0 * sigma_a, astar_lo * sigma_a)
        t_hi = max(min(a_max + 6.0 * sigma_a, astar_hi * sigma_a), t_lo + sigma_a)
        h_t = max(sigma_a / TABLE_NODES_PER_SIGMA, (t_hi - t_lo) / (MAX_TABLE_NODES - 2))
        n_t = int(math.ceil((t_hi - t_lo) / h_t)) + 2
        tables = work[8:12, :n_t]
        if amax_s >= TRUNC_U_MAX:
            _table_from_edges(edge_table, amax_s, sigma_a, t_lo, h_t, n_t, tables)
        else:
            inner_lo = 8.0 * sigma_a
            inner_hi = a_max - 8.0 * sigma_a
            for k in range(n_t):
                a_node = t_lo + k * h_t
                if inner_lo + h_t < a_node < inner_hi - h_t:
                    log_m, mean_a, var_a, inv_m = 0.0, a_node, sigma_a * sigma_a, 1.0
                else:
                    log_m, mean_a, var_a, inv_m = _truncated_normal_table(a_node, sigma_a, a_max)
                tables[0, k] = max(log_m, -1e300)
                tables[1, k] = mean_a
                tables[2, k] = var_a
                tables[3, k] = inv_m
    # log weights relative to the best bound and the conditional A moments (a function of
    # A*_j alone for this star); the few A* beyond the table are redone exactly
    n_outside = _table_lookup(
        b_buf,
        n_cand_all,
        sigma_a,
        t_lo,
        h_t,
        n_t - 1.0 - 1e-9,
        log_prior,
        cand_buf,
        s_buf,
        best,
        tables,
        cand_work[2:6],
        cand_w,  # free until the weights: the positions of the candidates beyond the table
    )
    for t in range(n_outside):
        c = int(cand_w[t])
        log_m, cand_mean[c], cand_var[c] = _truncated_normal(b_buf[c] * sigma_a, sigma_a, a_max)
        cand_invm[c] = math.exp(min(-log_m, 700.0))
        lw_buf[c] = log_prior[cand_buf[c]] - 0.5 * s_buf[c] - best + max(log_m, -1e300)
    shift = _exp_weights(lw_buf, n_cand_all, cand_w)
    w_tot, w_giant, s_a, s_a2, s_var, s_q2 = _weighted_sums(
        cand_w, cand_mean, cand_var, mr_of, giant_of, cand_buf, n_cand_all, cand_q
    )
    # marginals ([Fe/H] rows arrive in order, so their mass is summed in a register), the
    # A_r histogram (untruncated component mass u_j deposited at A*_j) and the Q_r range,
    # the histograms from the candidates that matter for percentiles
    far_mass = 0.0
    near_mass = 0.0
    n_cand = 0
    w_row = 0.0
    row = feh_index[cand_buf[0]] if n_cand_all else 0
    for c in range(n_cand_all):
        j = cand_buf[c]
        w = cand_w[c]
        n_cand += w > 0.0
        mr_mass[mr_index[j]] += w
        if feh_index[j] != row:
            feh_mass[row] += w_row
            row = feh_index[j]
            w_row = 0.0
        w_row += w
        if lw_buf[c] >= log_hist_cut and w > 0.0:
            bb = b_buf[c]
            if bb < -FAR_ASTAR_SIGMA or bb > amax_s + FAR_ASTAR_SIGMA:
                far_mass += w
                cand_invm[c] = -1.0  # (marks it for the exact deposits below)
            else:
                near_mass += w
                _deposit(a_hist, (bb * sigma_a - a_lo) / h_a, w * cand_invm[c])
            q_min = min(q_min, cand_q[c])
            q_max = max(q_max, cand_q[c])
        else:
            cand_w[c] = 0.0  # out of the Q_r histogram
    feh_mass[row] += w_row
    if far_mass > FAR_NEGLIGIBLE * near_mass:  # (exact, and slow: only where they matter)
        for c in range(n_cand_all):
            if cand_invm[c] < 0.0 and cand_w[c] > 0.0:
                _deposit_beyond(a_direct, work[6], b_buf[c], amax_s, h_a / sigma_a, cand_w[c])
    if w_tot <= 0.0 or n_cand == 0:
        flags_out[i] |= 1
        return

    s_mr = 0.0
    s_mr2 = 0.0
    for t in range(n_mr):
        s_mr += mr_mass[t] * mr_axis[t]
        s_mr2 += mr_mass[t] * mr_axis[t] ** 2
    s_feh = 0.0
    s_feh2 = 0.0
    for t in range(n_feh):
        s_feh += feh_mass[t] * feh_axis[t]
        s_feh2 += feh_mass[t] * feh_axis[t] ** 2
    mean_mr = s_mr / w_tot
    mean_feh = s_feh / w_tot
    mean_a = s_a / w_tot
    out[i, _K_MR] = mean_mr
    out[i, _K_MR + 1] = math.sqrt(max(s_mr2 / w_tot - mean_mr * mean_mr, 0.0))
    out[i, _K_FEH] = mean_feh
    out[i, _K_FEH + 1] = math.sqrt(max(s_feh2 / w_tot - mean_feh * mean_feh, 0.0))
    out[i, _K_AR] = mean_a
    var_ar = max(s_a2 / w_tot - mean_a * mean_a, 0.0)
    out[i, _K_AR + 1] = math.sqrt(var_ar)
    out[i, _K_QR] = mean_mr + mean_a
    _weighted_percentiles_cells(mr_mass, mr_axis, mr_half, out[i], _K_MR + 2)
    _weighted_percentiles_cells(feh_mass, feh_axis, feh_half, out[i], _K_FEH + 2)

    # A_r: histogram of A* convolved with N(0, σ_A^2), restricted to [0, A_max]
    a_smooth = work[4, :n_a]
    # only the bins inside [0, A_max] are used, and only those within the kernel's reach of
    # the deposits (at A* in [astar_lo, astar_hi] σ_A) can be non-zero
    reach = int(math.ceil(4.0 * sigma_a / h_a)) + 2
    m_lo = max(int(math.floor((astar_lo * sigma_a - a_lo) / h_a)) - reach, n_margin)
    m_hi = min(int(math.floor((astar_hi * sigma_a - a_lo) / h_a)) + reach, n_margin + n_in)
    a_smooth[n_margin : n_margin + n_in] = 0.0
    if m_lo < m_hi:
        _gaussian_smooth_range(a_hist, sigma_a / h_a, a_smooth, m_lo, m_hi, work[12])
    m0 = n_margin
    inside = a_smooth[n_margin : n_margin + n_in]
    inside += a_direct
    if inside.sum() <= 0.0:
        # all mass outside: the data want A_r beyond the prior bound
        inside[:] = 0.0
        if mean_a > 0.5 * a_max:
            inside[-1] = 1.0
        else:
            inside[0] = 1.0
    _percentiles_from_density(inside, a_lo + m0 * h_a, h_a, out[i], _K_AR + 2)

    # Q_r = M_r + A_r: conditional means smoothed by the mean conditional A variance and the
    # M_r cell width
    sigma_q = math.sqrt(s_var / w_tot)
    h_q = max(min(max(sigma_q / 4.0, 0.002), 0.02), (q_max - q_min) / 1500.0)
    n_cell = 1
    if mr_half > 0.0:  # an odd number of bins per M_r cell keeps the box filters centred
        n_cell = int(math.ceil(2.0 * mr_half / h_q))
        n_cell += 1 - n_cell % 2
        h_q = 2.0 * mr_half / n_cell
    q_lo = q_min - 4.0 * sigma_q - mr_half - 2 * h_q
    q_hi = q_max + 4.0 * sigma_q + mr_half + 2 * h_q
    n_q = int(math.ceil((q_hi - q_lo) / h_q))
    if n_q > MAX_HIST_BINS:
        h_q = (q_hi - q_lo) / MAX_HIST_BINS
        n_q = MAX_HIST_BINS
    q_hist = work[5, :n_q]
    q_hist[:] = 0.0
    for c in range(n_cand_all):
        if cand_w[c] > 0.0:
            _deposit(q_hist, (cand_q[c] - q_lo) / h_q, cand_w[c])
    # Gaussian of width σ_q as three equal box passes (variance 3 (w^2 - 1) / 12 bins^2),
    # then the box of the M_r cell width: one kernel, applied only where the percentiles are
    n_gauss = int(round(math.sqrt(4.0 * (sigma_q / h_q) ** 2 + 1.0)))
    n_gauss += 1 - n_gauss % 2  # odd, so the passes stay centred
    n_gauss = min(n_gauss, 2 * ((work.shape[1] - n_q - n_cell) // 6) + 1)
    n_k = _box_kernel((n_gauss, n_gauss, n_gauss, n_cell), work[6], work[7])
    _smoothed_percentiles(q_hist, work[6], n_k, q_lo, h_q, work[7], out[i], _K_QR + 2)
    mean_q = mean_mr + mean_a
    out[i, _K_QR + 1] = math.sqrt(max(s_q2 / w_tot - mean_q * mean_q, 0.0))

    # best fit, evidence, entropy drops, branch mass, flags
    out[i, _K_CHI2] = best_chi2
    # log Z = log sum_j p_j int N(c; L_j + A R, C) pi(A | j) dA: the weights' offset and sum,
    # the Gaussian's normalisation (log |C|^-1/2 = sum log sw_k), the A integral's sqrt(2 pi / q)
    # and the A_r prior's normalisation (flat: 1 / (A_max - A_min); with the profile, its
    # normal's 1 / sqrt(2 pi s^2) and the likelihood's convolution width, 1 / q + s^2)
    log_z = best + shift + math.log(w_tot) - 0.5 * n_used * LOG_2PI + 0.5 * (LOG_2PI - math.log(q))
    for k in range(5):
        if sw[k] > 0.0:
            log_z += math.log(sw[k])
    if profile:
        log_z += 0.5 * math.log(q) - 0.5 * (LOG_2PI + math.log(1.0 + kappa))
    else:
        log_z -= math.log(a_max)
    out[i, _K_LOGZ] = log_z
    if best_chi2 > chi2_poor[n_used]:
        flags_out[i] |= 1
    if fit_astar_s < -1.0 or fit_astar_s > amax_flat + 1.0:
        flags_out[i] |= 16
    # minus the posterior marginals' entropies; predict adds the prior's (add_prior_entropy)
    out[i, _K_HMR] = -_entropy_bits(mr_mass)
    out[i, _K_HFEH] = -_entropy_bits(feh_mass)
    m_in = inside.shape[0]
    out[i, _K_HAR] = math.log2(m_in) - _entropy_bits(inside) if m_in > 1 else 0.0
    p_giant = w_giant / w_tot
    out[i, _K_PGIANT] = p_giant
    if min(p_giant, 1.0 - p_giant) > 0.05:
        flags_out[i] |= 2
    if (
        out[i, _K_FEH + 3] < feh_axis[0] + 3 * feh_half
        or out[i, _K_FEH + 3] > feh_axis[-1] - 3 * feh_half
    ):
        flags_out[i] |= 4
    if (
        out[i, _K_MR + 3] < mr_axis[0] + 3 * mr_half
        or out[i, _K_MR + 3] > mr_axis[-1] - 3 * mr_half
    ):
        flags_out[i] |= 8


@numba.njit(parallel=True, cache=True)
def _estimate_all(
    colors,
    color_errors,
    color_cov,
    r,
    a_max,
    bin_index,
    log_prior,
    log_prior32,
    locus_t,
    locus_t32,
    mr_index,
    feh_index,
    giant_of,
    mr_of,
    mr_axis,
    feh_axis,
    reddening,
    error_floor,
    chi2_poor,
    log_weight_cut,
    out,
    flags_out,
    n_chunks,
    trunc_grid,
    edge_table,
    a_min,
    profile_scale,
    knots_x,
    knots_mu,
    profile_sigma,
):
    n = colors.shape[0]
    n_points = locus_t.shape[1]
    n_chunks = max(min(n, n_chunks), 1)
    for c in numba.prange(n_chunks):
        cand_work = np.empty((8, n_points))
        lw32 = np.empty(n_points, dtype=np.float32)
        fit32 = np.empty(n_points, dtype=np.float32)
        cand_buf = np.empty(n_points, dtype=np.int64)
        col_max = np.empty(mr_axis.shape[0], dtype=np.float32)
        col_act = np.empty(mr_axis.shape[0], dtype=np.int64)
        mu_pt = np.empty((2, n_points if profile_sigma > 0.0 else 1), dtype=np.float32)
        work = np.empty((15, max(2 * MAX_HIST_BINS + 64, mr_axis.shape[0], feh_axis.shape[0])))
        start = c * n // n_chunks
        stop = (c + 1) * n // n_chunks
        for i in range(start, stop):
            _star_kernel(
                colors[i],
                color_errors[i],
                color_cov[i],
                r[i],
                a_max[i],
                log_prior[bin_index[i]],
                log_prior32[bin_index[i]],
                locus_t,
                locus_t32,
                mr_index,
                feh_index,
                giant_of,
                mr_of,
                mr_axis,
                feh_axis,
                reddening,
                error_floor,
                chi2_poor,
                log_weight_cut,
                out,
                flags_out,
                i,
                trunc_grid,
                edge_table,
                cand_work,
                lw32,
                fit32,
                cand_buf,
                col_max,
                col_act,
                work,
                mu_pt,
                a_min[i],
                profile_scale[i],
                knots_x,
                knots_mu,
                profile_sigma,
            )


@numba.njit(cache=True)
def _constrained_chi2(colors, sw, mw, u, locus_t, j, amax_s, cand, chi2, bb):
    """Exact chi2 of locus point ``j`` with A_r within [0, A_max] (``amax_s`` in units of
    sigma_A): chi2min_j plus the squared distance of A*_j outside the bounds; A*_j in ``bb``."""
    cand[0] = j
    _candidate_terms(colors, sw, mw, u, locus_t, cand, 1, chi2, bb)
    outside = max(-bb[0], bb[0] - amax_s, 0.0)
    return chi2[0] + outside * outside


@numba.njit(parallel=True, cache=True)
def _best_fit_all(
    colors,
    color_errors,
    color_cov,
    a_max,
    locus_t,
    n_mr,
    coarse_t32,
    n_mr_coarse,
    stride,
    reddening,
    error_floor,
    out,
    n_chunks,
):
    """Per star, the smallest chi2 over the locus points with A_r within [0, a_max] (no
    prior) and that point's unconstrained A* in units of sigma_A: ``out[i] = (chi2, A*
    sqrt(q), A_max sqrt(q), usable colours)``; NaN for stars with fewer than two usable
    colours.

    Coarse to fine: the float32 bound pass over ``coarse_t32`` (every ``stride``-th [Fe/H]
    row and M_r column of the (n_feh, n_mr) grid) finds the best coarse point; the exact
    (float64) chi2 of the grid points up to the next coarse points around it gives the
    result. A float64 scan of every point
    where float32 could overflow (as in the estimator).
    """
    n = colors.shape[0]
    n_points = locus_t.shape[1]
    n_feh = n_points // n_mr
    n_coarse = coarse_t32.shape[1]
    n_chunks = max(min(n, n_chunks), 1)
    for c in numba.prange(n_chunks):
        work = np.zeros(20)
        lw32 = np.empty(n_coarse, dtype=np.float32)
        fit32 = np.empty(n_coarse, dtype=np.float32)
        flat32 = np.zeros(n_coarse, dtype=np.float32)
        col_max = np.empty(n_mr_coarse, dtype=np.float32)
        cand = np.zeros(1, dtype=np.int64)
        chi2 = np.empty(1)
        bb = np.empty(1)
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            sw = work[0:5]
            mw = work[5:10]
            cz = work[10:15]
            u = work[15:20]
            n_used = _whiten(colors[i], color_errors[i], color_cov[i], error_floor, sw, mw, cz)
            q = _whitened_reddening(sw, mw, reddening, u)
            if n_used < 2 or not q > 0.0 or not math.isfinite(a_max[i]):
                out[i, :] = np.nan
                continue
            sqrt_q = math.sqrt(q)
            for k in range(5):
                u[k] /= sqrt_q
            amax_s = a_max[i] * sqrt_q
            safe = True
            for k in range(5):
                if not (abs(sw[k] * cz[k]) < 1e15 and sw[k] < 1e15 and abs(mw[k]) < 1e3):
                    safe = False
            best = np.inf
            best_j = 0
            row_lo, row_hi, col_lo, col_hi = 0, n_feh, 0, n_mr
            if safe:
                _bound_pass(cz, sw, mw, u, coarse_t32, flat32, amax_s, lw32, fit32)
                coarse_j = _best_point(fit32, col_max, n_mr_coarse)
                row, column = coarse_j // n_mr_coarse, coarse_j % n_mr_coarse
                row_lo = max(stride * (row - 1), 0)
                row_hi = min(stride * (row + 1) + 1, n_feh)
                col_lo = max(stride * (column - 1), 0)
                col_hi = min(stride * (column + 1) + 1, n_mr)
            for r in range(row_lo, row_hi):
                for t in range(col_lo, col_hi):
                    value = _constrained_chi2(
                        cz, sw, mw, u, locus_t, r * n_mr + t, amax_s, cand, chi2, bb
                    )
                    if value < best:
                        best = value
                        best_j = r * n_mr + t
            out[i, 0] = _constrained_chi2(cz, sw, mw, u, locus_t, best_j, amax_s, cand, chi2, bb)
            out[i, 1] = bb[0]
            out[i, 2] = amax_s
            out[i, 3] = n_used


@dataclass
class PriorGrid:
    """Log prior over the locus grid per r bin, as the estimator consumes it.

    Attributes
    ----------
    log_prior
        Shape (n_rbins, n_feh, n_mr), natural log of the (unnormalised) prior density.
    r_centres
        Centres of the r bins (ascending); each star uses the bin nearest its r.
    """

    log_prior: np.ndarray
    r_centres: np.ndarray
    r_half_width: float = math.inf

    def __post_init__(self) -> None:
        """Arrays of matching shapes, ascending r bins, and in every r bin at least one grid
        point the prior allows; else a ``ValueError`` naming the problem."""
        self.log_prior = np.asarray(self.log_prior, dtype=float)
        self.r_centres = np.asarray(self.r_centres, dtype=float).reshape(-1)
        if self.log_prior.ndim != 3 or self.log_prior.shape[0] != len(self.r_centres):
            raise ValueError(
                f"log_prior must have shape (n_rbins, n_feh, n_mr) with one r bin per centre "
                f"({len(self.r_centres)}), got {self.log_prior.shape}"
            )
        if len(self.r_centres) == 0 or not np.isfinite(self.r_centres).all():
            raise ValueError("r_centres must be one or more finite magnitudes")
        if np.any(np.diff(self.r_centres) <= 0):
            raise ValueError("r_centres must be strictly ascending")
        if not float(self.r_half_width) > 0.0:
            raise ValueError(f"r_half_width must be positive, got {self.r_half_width!r}")
        if np.isnan(self.log_prior).any() or np.isposinf(self.log_prior).any():
            raise ValueError("log_prior must be finite or -inf (a point the prior excludes)")
        flat = self.log_prior.reshape(len(self.r_centres), -1)
        empty = self.r_centres[~np.isfinite(flat).any(axis=1)]
        if empty.size:
            raise ValueError(
                f"the prior allows no grid point in the r bin(s) centred at {empty.tolist()}"
            )

    @property
    def r_range(self) -> list[float] | None:
        """The r range the bins cover, [first centre - half-width, last centre + half-width]
        (None without a half-width, e.g. the flat prior); beyond it a star gets the end bin's
        prior, made for other magnitudes."""
        if not math.isfinite(self.r_half_width):
            return None
        lo = float(self.r_centres[0] - self.r_half_width)
        return [lo, float(self.r_centres[-1] + self.r_half_width)]

    @property
    def r_intervals(self) -> list[list[float]] | None:
        """The r intervals the bins cover, [lo, hi] each: adjacent bins closer than two
        half-widths merge, so a prior whose bins leave gaps has several (None without a
        half-width). A star in a gap gets the nearest bin's prior, made for other
        magnitudes, as one beyond the ends does."""
        if not math.isfinite(self.r_half_width):
            return None
        lo = self.r_centres - self.r_half_width
        hi = self.r_centres + self.r_half_width
        starts = np.flatnonzero(np.r_[True, lo[1:] > hi[:-1] + 1e-9])
        ends = np.r_[starts[1:] - 1, len(lo) - 1]
        return [[float(lo[a]), float(hi[b])] for a, b in zip(starts, ends, strict=True)]

    def bin_index(self, r: np.ndarray) -> np.ndarray:
        """Nearest r bin for each magnitude (clipped at the ends; NaN -> 0)."""
        r = np.nan_to_num(np.asarray(r, dtype=float), nan=self.r_centres[0])
        idx = np.searchsorted(self.r_centres, r)
        idx = np.clip(idx, 1, len(self.r_centres) - 1)
        left = self.r_centres[idx - 1]
        right = self.r_centres[idx]
        return np.where(np.abs(r - left) <= np.abs(right - r), idx - 1, idx).astype(np.int64)

    @classmethod
    def flat(cls, locus: Locus) -> PriorGrid:
        """A flat prior in ([Fe/H], M_r)."""
        return cls(np.zeros((1, *locus.shape)), np.array([0.0]))

    @classmethod
    def from_prior(cls, prior: Any, locus: Locus) -> PriorGrid:
        """Adapt a prior map (``photodist.priors.PriorMap`` or PriorGrid) to ``locus``'s grid.

        The prior's density is interpolated (bilinearly) onto the locus grid when the grids
        differ (``PriorMap.regrid``).
        """
        if not all(hasattr(prior, a) for a in ("feh", "mr", "log_prior", "regrid")) and not (
            isinstance(prior, PriorGrid)
        ):
            raise TypeError(
                f"prior must be a PriorMap (PriorMap.load(path) reads a saved one) or a "
                f"PriorGrid, got {type(prior).__name__}"
            )
        if isinstance(prior, PriorGrid):
            if prior.log_prior.shape[1:] != locus.shape:
                raise ValueError(
                    f"prior grid {prior.log_prior.shape[1:]} does not match locus {locus.shape}"
                )
            return prior
        same_grid = (
            len(prior.feh) == locus.shape[0]
            and len(prior.mr) == locus.shape[1]
            and np.allclose(prior.feh, locus.feh, atol=1e-6)
            and np.allclose(prior.mr, locus.mr, atol=1e-6)
        )
        prior_map = prior if same_grid else prior.regrid(locus)
        half_width = float(getattr(prior_map, "r_half_width", math.inf))
        return cls(prior_map.log_prior, np.asarray(prior_map.r_centres, float), half_width)

    def feh_shifted(self, rows: int) -> PriorGrid:
        """The prior moved by ``rows`` grid steps along [Fe/H] (positive: more metal-rich),
        normalised as :meth:`tempered`. The grid points it allows stay those it allowed;
        points it moves in from beyond the grid take each r bin's smallest value (the prior
        maps' floor)."""
        allowed = np.isfinite(self.log_prior)
        flat = np.where(allowed, self.log_prior, np.inf).reshape(len(self.log_prior), -1)
        floor = np.min(flat, axis=1)[:, None, None]
        floor = np.where(np.isfinite(floor), floor, 0.0)
        moved = np.roll(np.where(allowed, self.log_prior, floor), rows, axis=1)
        if rows > 0:
            moved[:, :rows] = floor
        elif rows < 0:
            moved[:, rows:] = floor
        return dataclasses.replace(self, log_prior=np.where(allowed, moved, -np.inf)).tempered(1.0)

    def tempered(self, beta: float) -> PriorGrid:
        """The prior raised to the power ``beta`` in [0, 1] (0: flat over the grid points the
        prior allows), normalised to unit sum in every r bin so that the log evidence of
        different powers compares (:mod:`photodist.prior_temper`)."""
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"the prior's power must lie in [0, 1], got {beta!r}")
        allowed = np.isfinite(self.log_prior)
        scaled = np.where(allowed, beta * np.where(allowed, self.log_prior, 0.0), -np.inf)
        flat = scaled.reshape(scaled.shape[0], -1)
        norm = logsumexp(flat, axis=1, keepdims=True)  # -inf for a bin that allows nothing
        scaled = (flat - np.where(np.isfinite(norm), norm, 0.0)).reshape(scaled.shape)
        return dataclasses.replace(self, log_prior=scaled)

    def marginal_entropy_bits(self) -> tuple[np.ndarray, np.ndarray]:
        """Shannon entropy (bits) of each r bin's prior marginals on the grid, (M_r, [Fe/H]),
        each of shape (n_rbins,): the reference of the estimators' entropy drops."""
        flat = self.log_prior.reshape(self.log_prior.shape[0], -1)
        peak = np.max(flat, axis=1)
        peak = np.where(np.isfinite(peak), peak, 0.0)[:, None, None]
        density = np.exp(self.log_prior - peak)  # -inf (points not allowed) -> 0
        return _entropy_bits_rows(density.sum(axis=1)), _entropy_bits_rows(density.sum(axis=2))


def _entropy_bits_rows(mass: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of non-negative masses (0 for an empty row)."""
    total = mass.sum(axis=1, keepdims=True)
    p = mass / np.where(total > 0.0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0.0, -p * np.log2(p), 0.0)
    return terms.sum(axis=1)


def add_prior_entropy(frame: pd.DataFrame, prior: PriorGrid, bins: np.ndarray) -> None:
    """Turn the kernels' minus posterior entropies of M_r and [Fe/H] into entropy drops: the
    entropy of the star's r-bin prior marginal minus the posterior's (bits), the information
    the colours add to the prior (as the paper's reference code). The A_r drop is measured
    from the flat A_r prior on [A_min, A_max] by the kernels themselves."""
    h_mr, h_feh = prior.marginal_entropy_bits()
    frame["Mr_entropy_drop"] += h_mr[bins]
    frame["FeH_entropy_drop"] += h_feh[bins]


def prior_range_flags(r_range: Sequence[Any] | None, r: np.ndarray) -> np.ndarray:
    """``Flags.R_OUTSIDE_PRIOR`` where a finite ``r`` lies outside the prior's r bins, else 0.

    ``r_range`` is a prior's :attr:`PriorGrid.r_intervals` (a list of [lo, hi]), or one
    [lo, hi] pair (:attr:`PriorGrid.r_range`, as models saved before 0.3.5 keep it); None:
    no range."""
    r = np.asarray(r, dtype=float)
    if r_range is None:
        return np.zeros(r.shape, dtype=np.int64)
    intervals = np.asarray(r_range, dtype=float).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        inside = (r[..., None] >= intervals[:, 0]) & (r[..., None] <= intervals[:, 1])
        outside = np.isfinite(r) & ~inside.any(axis=-1)
    return np.where(outside, Flags.R_OUTSIDE_PRIOR, 0).astype(np.int64)


@dataclass
class BayesConfig:
    """Settings of the Bayesian estimator.

    Attributes
    ----------
    error_floor
        Added in quadrature to every colour error (mag).
    default_a_max
        Upper bound of the flat A_r prior when the catalogue has no dust-map value (mag).
    dust_scale, dust_offset
        With a dust-map value A_map: A_max = dust_scale * A_map + dust_offset.
    dust_min_fraction
        With a dust-map value, the flat A_r prior starts at A_min = dust_min_fraction * A_map
        instead of 0 (for sightlines whose stars mostly lie beyond the dust). 0, the paper's
        prior, by default.
    chi2_poor
        Best-fit chi2 above which a star is flagged POOR_FIT (default: the 99.9 % point of a
        chi2 distribution with the star's number of usable colours less two degrees of
        freedom, at least one; :func:`poor_fit_thresholds`).
    log_weight_cut
        Locus points whose log weight is below the best by more than this are skipped.
    color_covariance
        Use the covariance of adjacent colours that share a band's error
        (``Photometry.color_covariance``, from catalogues with magnitudes) in chi2. False
        treats every colour error as independent, as the paper does.
    """

    error_floor: float = 0.02
    default_a_max: float = 3.0
    dust_scale: float = 1.3
    dust_offset: float = 0.1
    dust_min_fraction: float = 0.0
    chi2_poor: float | None = None
    log_weight_cut: float = HOPELESS_LOG_WEIGHT
    color_covariance: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.dust_min_fraction) <= 1.0:
            raise ValueError(f"dust_min_fraction must be in [0, 1], got {self.dust_min_fraction!r}")
        if not (
            0.0 <= float(self.dust_scale) < math.inf and 0.0 <= float(self.dust_offset) < math.inf
        ):
            raise ValueError("dust_scale and dust_offset must be finite and >= 0")
        if not 0.0 <= float(self.error_floor) < math.inf:
            raise ValueError(
                f"error_floor must be a finite magnitude >= 0, got {self.error_floor!r}"
            )
        if not 0.0 < float(self.default_a_max) < math.inf:
            raise ValueError(f"default_a_max must be finite and > 0, got {self.default_a_max!r}")
        if not 0.0 < float(self.log_weight_cut) < math.inf:
            raise ValueError(f"log_weight_cut must be finite and > 0, got {self.log_weight_cut!r}")
        if self.chi2_poor is not None and not float(self.chi2_poor) > 0.0:
            raise ValueError(f"chi2_poor must be > 0 (or None), got {self.chi2_poor!r}")


def poor_fit_thresholds(config: BayesConfig) -> np.ndarray:
    """Best-fit chi2 above which a star is flagged POOR_FIT, indexed by the number n of colours
    it uses (0-5): ``config.chi2_poor`` for all, else the 99.9 % point of a chi2 distribution
    with max(n - 2, 1) degrees of freedom, so a star whose unusable colour was dropped is
    judged on the colours it has.

    The best fit adjusts M_r, [Fe/H] and A_r, but the locus's near-degeneracy in M_r and A_r's
    bounds leave about n - 2 effective degrees of freedom: on simulated stars the model
    describes exactly (no error floor), 0.02-0.08 % of the stars lie beyond this point
    (0.00-0.02 % beyond that of n degrees of freedom, which ignores the fitted parameters;
    docs/benchmarks.md)."""
    if config.chi2_poor is not None:
        return np.full(6, float(config.chi2_poor))
    from scipy.stats import chi2

    return chi2.ppf(0.999, np.maximum(np.arange(6) - 2, 1)).astype(np.float64)


#: A_r estimates at or above this fraction of the prior's upper bound A_max are piled
#: against it (:func:`ar_near_bound`)
AR_NEAR_BOUND_FRACTION = 0.9


#: The runs warn when more than this fraction of the A_r estimates, and at least
#: ``AR_NEAR_BOUND_MIN_STARS`` of them, pile against the bound (:func:`many_near_bound`)
AR_NEAR_BOUND_WARNING = 0.05
AR_NEAR_BOUND_MIN_STARS = 3


def many_near_bound(n_near: int | None, n_estimated: int | None) -> bool:
    """Whether ``n_near`` of ``n_estimated`` A_r estimates piled against the bound
    (:func:`ar_near_bound`) are worth a warning: more than ``AR_NEAR_BOUND_WARNING`` of them,
    and at least ``AR_NEAR_BOUND_MIN_STARS`` (one star of a dozen is no sign)."""
    if not n_near or not n_estimated:
        return False
    return n_near >= AR_NEAR_BOUND_MIN_STARS and n_near > AR_NEAR_BOUND_WARNING * n_estimated


#: What AR_NEAR_MAX stars have, and what many of them mean (the runs' warnings)
AR_NEAR_MAX_WHAT = "have A_r estimates within 10 % of the A_r prior's upper bound"
AR_NEAR_MAX_WHY = (
    "the bound is probably below their extinction (without a dust-map column it is --a-max, "
    "3 mag by default), which biases their M_r and distances. Give a dust map "
    "(--dust-column, --ebv-column) or raise the bound (--a-max without a map value; "
    "--a-max-scale, --a-max-offset with one)."
)


def ar_near_max_flags(ar_mean: np.ndarray, a_max: np.ndarray) -> np.ndarray:
    """``Flags.AR_NEAR_MAX`` where the A_r estimate lies at or above
    :data:`AR_NEAR_BOUND_FRACTION` of its prior's upper bound A_max, else 0.

    Such a posterior is pressed against the bound: the star's extinction may exceed it
    (without a dust map the bound is ``BayesConfig.default_a_max``; with one, a map that
    underestimates the sightline's dust), and the colours' excess reddening is then taken up
    along the locus, so M_r comes out too faint. ``AR_AT_BOUND`` catches only the stars whose
    best fit itself lies beyond the bound."""
    ar_mean = np.asarray(ar_mean, dtype=float)
    with np.errstate(invalid="ignore"):
        near = ar_mean >= AR_NEAR_BOUND_FRACTION * np.asarray(a_max, dtype=float)
    return np.where(near, Flags.AR_NEAR_MAX, 0).astype(np.int64)


def ar_near_bound(ar_mean: np.ndarray, a_max: np.ndarray) -> tuple[int, int]:
    """How many of the finite A_r estimates are ``AR_NEAR_MAX`` (:func:`ar_near_max_flags`),
    and how many are finite. Many such stars mean that the bound is below the patch's
    extinction."""
    near = ar_near_max_flags(ar_mean, a_max) != 0
    return int(near.sum()), int(np.isfinite(np.asarray(ar_mean, dtype=float)).sum())


def a_max_for(photometry: Photometry, config: BayesConfig) -> np.ndarray:
    """Upper A_r bound per star: from the dust-map column when present, else the default."""
    n = len(photometry)
    a_max = np.full(n, float(config.default_a_max))
    if photometry.dust is not None:
        dust = photometry.dust
        ok = np.isfinite(dust)
        a_max[ok] = config.dust_scale * dust[ok] + config.dust_offset
    return np.maximum(a_max, MIN_A_MAX)


def a_bounds_for(photometry: Photometry, config: BayesConfig) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (A_min, A_max) of the flat A_r prior per star: A_max from :func:`a_max_for`,
    A_min ``dust_min_fraction`` of the dust-map value (else 0), kept below A_max."""
    a_max = a_max_for(photometry, config)
    a_min = np.zeros(len(photometry))
    fraction = float(config.dust_min_fraction)
    if fraction > 0.0 and photometry.dust is not None:
        dust = photometry.dust
        ok = np.isfinite(dust) & (dust > 0.0)
        a_min[ok] = fraction * dust[ok]
    return np.minimum(a_min, np.maximum(a_max - MIN_A_MAX, 0.0)), a_max


def adjacent_covariance(photometry: Photometry, config: BayesConfig) -> np.ndarray:
    """Covariances of adjacent colours that the estimator uses, shape (N, n_colors - 1):
    the photometry's (:attr:`Photometry.color_covariance`) when ``config.color_covariance``,
    else zeros (independent colour errors)."""
    n, n_colors = photometry.colors.shape
    if config.color_covariance and photometry.color_covariance is not None:
        cov = np.nan_to_num(np.asarray(photometry.color_covariance, dtype=np.float64))
        if cov.shape != (n, n_colors - 1):
            raise ValueError(
                f"color_covariance has shape {cov.shape}, expected {(n, n_colors - 1)}"
            )
        cov = np.array(cov, order="C")
        _drop_inconsistent_covariances(
            np.ascontiguousarray(photometry.colors, dtype=np.float64),
            np.ascontiguousarray(photometry.color_errors, dtype=np.float64),
            cov,
            float(config.error_floor),
        )
        return cov
    return np.zeros((n, n_colors - 1))


@numba.njit(cache=True)
def _drop_inconsistent_covariances(colors, color_errors, cov, error_floor):
    """Zero (in place) the covariances that :func:`_whiten` would ignore: those of unusable
    colours and those that would leave the covariance matrix not positive definite. Every
    estimator, the brute force included, then sees the same, valid matrix."""
    sw = np.zeros(5)
    mw = np.zeros(5)
    cz = np.zeros(5)
    for i in range(colors.shape[0]):
        _whiten(colors[i], color_errors[i], cov[i], error_floor, sw, mw, cz)
        for k in range(cov.shape[1]):
            if mw[k + 1] == 0.0:
                cov[i, k] = 0.0


def without_extinction(photometry: Photometry, a_min: np.ndarray) -> Photometry:
    """``photometry`` with its colours dereddened by ``a_min`` (the flat prior on
    [A_min, A_max] becomes one on [0, A_max - A_min]); itself when ``a_min`` is all 0."""
    if not np.any(a_min):
        return photometry
    colors = photometry.colors - a_min[:, None] * photometry.band_set.reddening_vector()
    return dataclasses.replace(photometry, colors=colors)


def add_extinction(frame: pd.DataFrame, a_min: np.ndarray) -> None:
    """Shift the A_r and Q_r summaries of a dereddened fit (:func:`without_extinction`) back."""
    if not np.any(a_min):
        return
    for p in ("Ar", "Qr"):
        for stat in ("mean", "p16", "p50", "p84"):
            frame[f"{p}_{stat}"] += a_min


class BayesEstimator:
    """Bayesian photo-D estimates of M_r, [Fe/H], A_r, Q_r, DM and distance for each star.

    Parameters
    ----------
    locus
        The stellar locus grid (its grid is the posterior grid; see ``Locus.resample``).
    prior
        A prior map for the patch (``PriorGrid`` or ``photodist.priors.PriorMap``), or None
        for a flat prior (rows flagged NO_PRIOR).
    config
        Estimator settings.
    dust_profile
        A :class:`photodist.dust_profile.DustProfile`: a Gaussian A_r prior whose mean
        follows the patch's extinction against apparent distance modulus r - M_r, multiplying
        the flat prior on [A_min, A_max]. None (default): the flat prior alone, as in the
        paper.
    """

    def __init__(
        self,
        locus: Locus,
        prior: Any = None,
        config: BayesConfig | None = None,
        dust_profile: DustProfile | None = None,
    ):
        self.locus = locus
        self.config = config or BayesConfig()
        self.prior = PriorGrid.flat(locus) if prior is None else PriorGrid.from_prior(prior, locus)
        self.has_prior = prior is not None
        self.dust_profile = dust_profile

    def predict(self, photometry: Photometry) -> pd.DataFrame:
        """Posterior summaries for every star (one output row per input row, same order)."""
        band_set = require_photometry(photometry, "BayesEstimator.predict").band_set
        locus_colors = self.locus.colors_for(band_set)
        n_feh, n_mr = self.locus.shape
        locus_t = np.zeros((5, n_feh * n_mr))
        locus_t[: band_set.n_colors] = locus_colors.reshape(-1, band_set.n_colors).T
        feh_index, mr_index = np.divmod(np.arange(n_feh * n_mr), n_mr)
        n = len(photometry)
        out = np.full((n, len(OUTPUT_COLUMNS)), np.nan)
        flags = np.zeros(n, dtype=np.int64)
        if not self.has_prior:
            flags |= Flags.NO_PRIOR
        a_min, a_max = a_bounds_for(photometry, self.config)
        fitted = without_extinction(photometry, a_min)
        r = np.where(np.isfinite(photometry.r), photometry.r, np.nan)
        bins = self.prior.bin_index(r)
        knots_x, knots_mu, profile_sigma = _profile_arrays(self.dust_profile)
        profile_scale = np.ones(n)
        if self.dust_profile is not None:
            profile_scale = self.dust_profile.scales(photometry.dust, (n,)).astype(np.float64)
        # finite log prior (the fused chi2 pass assumes no infinities)
        log_prior = np.ascontiguousarray(
            np.maximum(self.prior.log_prior.reshape(len(self.prior.r_centres), -1), -1e30)
        )
        if n:
            _estimate_all(
                np.ascontiguousarray(fitted.colors, dtype=np.float64),
                np.ascontiguousarray(photometry.color_errors, dtype=np.float64),
                adjacent_covariance(photometry, self.config),
                r.astype(np.float64),
                a_max - a_min,
                bins,
                log_prior,
                log_prior.astype(np.float32),
                locus_t,
                locus_t.astype(np.float32),
                mr_index.astype(np.int64),
                feh_index.astype(np.int64),
                self.locus.giant.ravel().astype(np.float64),
                self.locus.mr.astype(np.float64)[mr_index],
                self.locus.mr.astype(np.float64),
                self.locus.feh.astype(np.float64),
                np.pad(band_set.reddening_vector(), (0, 5 - band_set.n_colors)),
                float(self.config.error_floor),
                poor_fit_thresholds(self.config),
                float(self.config.log_weight_cut),
                out,
                flags,
                8 * numba.get_num_threads(),
                _truncation_grid(),
                _edge_table(),
                a_min.astype(np.float64),
                profile_scale,
                knots_x,
                knots_mu,
                profile_sigma,
            )
        frame = pd.DataFrame(out, columns=OUTPUT_COLUMNS)
        add_prior_entropy(frame, self.prior, bins)
        add_extinction(frame, a_min)
        frame["Ar_max"] = a_max
        _fill_distance_columns(frame, r)
        frame["flags"] = (
            flags
            | prior_range_flags(self.prior.r_intervals, r)
            | ar_near_max_flags(frame["Ar_mean"], a_max)
        )
        return frame

    def best_fit(self, photometry: Photometry) -> tuple[np.ndarray, np.ndarray]:
        """The model's best fit to each star without the prior: the smallest chi2 over the
        locus points with A_r within the flat prior's bounds, and the flags ``POOR_FIT``
        (that chi2 above :func:`poor_fit_thresholds` for the star's usable colours) and
        ``AR_AT_BOUND`` (the point's unconstrained A_r beyond the bounds by > 1 sigma_A).

        A check of stars that another estimator (the networks) gives values: a star far
        from the locus is flagged as the posterior would flag it, at the cost of one pass
        over a quarter of the locus grid and an exact chi2 around its best point (a few per
        cent of :meth:`predict`'s cost). NaN chi2 for stars with fewer than two
        usable colours.
        """
        require_photometry(photometry, "BayesEstimator.best_fit")
        band_set = photometry.band_set
        n_feh, n_mr = self.locus.shape
        locus_t = np.zeros((5, n_feh * n_mr))
        locus_t[: band_set.n_colors] = (
            self.locus.colors_for(band_set).reshape(-1, band_set.n_colors).T
        )
        # every BEST_FIT_STRIDE-th [Fe/H] row and M_r column, for the coarse pass
        coarse = locus_t.reshape(5, n_feh, n_mr)[:, ::BEST_FIT_STRIDE, ::BEST_FIT_STRIDE]
        coarse_shape = coarse.shape[1:]
        coarse = coarse.reshape(5, -1)
        n = len(photometry)
        fit = np.full((n, 4), np.nan)
        if n:
            a_min, a_max = a_bounds_for(photometry, self.config)
            fitted = without_extinction(photometry, a_min)
            _best_fit_all(
                np.ascontiguousarray(fitted.colors, dtype=np.float64),
                np.ascontiguousarray(photometry.color_errors, dtype=np.float64),
                adjacent_covariance(photometry, self.config),
                (a_max - a_min).astype(np.float64),
                locus_t,
                n_mr,
                np.ascontiguousarray(coarse.astype(np.float32)),
                coarse_shape[1],
                BEST_FIT_STRIDE,
                np.pad(band_set.reddening_vector(), (0, 5 - band_set.n_colors)),
                float(self.config.error_floor),
                fit,
                8 * numba.get_num_threads(),
            )
        chi2, astar_s, amax_s, n_used = fit.T
        limit = poor_fit_thresholds(self.config)[np.nan_to_num(n_used).astype(np.int64)]
        flags = np.where(chi2 > limit, Flags.POOR_FIT, 0)
        with np.errstate(invalid="ignore"):
            beyond = (astar_s < -1.0) | (astar_s > amax_s + 1.0)
        flags |= np.where(beyond, Flags.AR_AT_BOUND, 0)
        return chi2, flags.astype(np.int64)

    def posteriors(self, photometry: Photometry, rows: Any) -> list[Any]:
        """Full marginal posteriors of the stars ``rows`` (a few; for plots), as
        :class:`photodist.posterior.StarPosterior` objects; see
        :func:`photodist.posterior.star_posterior`."""
        from photodist.posterior import star_posterior

        require_photometry(photometry, "BayesEstimator.posteriors")
        rows = np.atleast_1d(rows)
        if rows.size and not (
            np.issubdtype(rows.dtype, np.integer)
            and 0 <= rows.min()
            and rows.max() < len(photometry)
        ):
            raise ValueError(f"rows must be integers in [0, {len(photometry)}), got {rows!r}")
        return [
            star_posterior(
                photometry, int(row), self.locus, self.prior, self.config, self.dust_profile
            )
            for row in rows
        ]


def _profile_arrays(profile: DustProfile | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Knots and width of a dust profile as the kernel takes them (width 0: none)."""
    if profile is None:
        return np.zeros(1), np.zeros(1), 0.0
    return (
        np.ascontiguousarray(profile.knots_x, dtype=np.float64),
        np.ascontiguousarray(profile.knots_mu, dtype=np.float64),
        float(profile.sigma),
    )


@functools.cache
def _truncation_grid() -> np.ndarray:
    """The precomputed truncation grid (built once per process, ~10 ms)."""
    return _build_truncation_grid()


@functools.cache
def _edge_table() -> np.ndarray:
    """The precomputed one-sided truncation table (built once per process)."""
    return _build_edge_table()


def _fill_distance_columns(frame: pd.DataFrame, r: np.ndarray) -> None:
    """DM = r - Q_r (percentiles from the Q_r posterior) and distance in pc."""
    frame["DM_mean"] = r - frame["Qr_mean"]
    frame["DM_std"] = frame["Qr_std"]
    frame["DM_p16"] = r - frame["Qr_p84"]
    frame["DM_p50"] = r - frame["Qr_p50"]
    frame["DM_p84"] = r - frame["Qr_p16"]
    for level in ("p16", "p50", "p84"):
        frame[f"dist_{level}"] = 10.0 ** (0.2 * frame[f"DM_{level}"] + 1.0)


def brute_force_posterior(
    photometry: Photometry,
    index: int,
    locus: Locus,
    prior: PriorGrid | None = None,
    config: BayesConfig | None = None,
    a_step: float = 0.0025,
    dust_profile: DustProfile | None = None,
) -> dict[str, Any]:
    """Reference posterior of one star on an explicit A_r grid (for tests and plots).

    Evaluates exp(-chi2/2) x prior on every (locus point, A_r node) pair, A_r nodes at the
    centres of cells of width ``a_step`` covering [A_min, A_max]; with ``dust_profile`` the
    prior includes its normal factor in A_r at each point's r - M_r. Returns the marginals
    (``Mr``, ``FeH``, ``Ar`` as (values, mass) pairs), 16/50/84 percentiles of M_r, [Fe/H],
    A_r and Q_r with the same cell conventions as :class:`BayesEstimator`, the means and
    standard deviations of M_r, [Fe/H] and A_r (``Mr_mean``, ``Mr_std``, ...) and the log
    evidence (``log_evidence``, as the estimator's column).
    """
    config = config or BayesConfig()
    prior = prior or PriorGrid.flat(locus)
    band_set = photometry.band_set
    colors = photometry.colors[index]
    errors = photometry.color_errors[index]
    used = np.isfinite(colors) & np.isfinite(errors) & (errors > 0)
    cov = np.diag(errors**2 + config.error_floor**2)
    adjacent = adjacent_covariance(photometry.subset(np.array([index])), config)[0]
    for k in range(len(adjacent)):
        cov[k, k + 1] = cov[k + 1, k] = adjacent[k] if used[k] and used[k + 1] else 0.0
    inv_cov = np.linalg.inv(cov[np.ix_(used, used)])
    red = band_set.reddening_vector()[used]
    lc = locus.colors_for(band_set).reshape(-1, band_set.n_colors)[:, used]
    one = photometry.subset(np.array([index]))
    a_min, a_max = (bound[0] for bound in a_bounds_for(one, config))
    n_a = max(int(np.ceil((a_max - a_min) / a_step)), 1)
    a_nodes = a_min + (np.arange(n_a) + 0.5) * ((a_max - a_min) / n_a)
    log_p = prior.log_prior[prior.bin_index(np.array([photometry.r[index]]))[0]].ravel()
    resid = colors[used][None, None, :] - lc[:, None, :] - a_nodes[None, :, None] * red
    log_post = log_p[:, None] - 0.5 * np.einsum("...k,kl,...l->...", resid, inv_cov, resid)
    # log evidence: the Gaussian likelihood's and the A_r prior's normalisations (flat:
    # 1 / (A_max - A_min); the profile's normal alone) and the A_r cell width
    _, log_det = np.linalg.slogdet(cov[np.ix_(used, used)])
    log_norm = np.log((a_max - a_min) / n_a) - 0.5 * (used.sum() * LOG_2PI + log_det)
    log_norm -= np.log(a_max - a_min)
    if dust_profile is not None:
        n_feh, n_mr = locus.shape
        x = np.tile(photometry.r[index] - locus.mr, n_feh)
        dust = None if photometry.dust is None else photometry.dust[index]
        centre = dust_profile.mean_at(x, dust)
        if np.isfinite(centre).all():
            log_post -= 0.5 * ((a_nodes[None, :] - centre[:, None]) / dust_profile.sigma) ** 2
            log_post -= dust_profile.log_mass(centre, a_min, a_max)[:, None]
            log_norm += np.log(a_max - a_min) - 0.5 * LOG_2PI - np.log(dust_profile.sigma)
    peak = log_post.max()
    post = np.exp(log_post - peak)
    log_evidence = float(peak + np.log(post.sum()) + log_norm)
    post /= post.sum()
    n_feh, n_mr = locus.shape
    joint = post.reshape(n_feh, n_mr, n_a)
    mr_mass = joint.sum(axis=(0, 2))
    feh_mass = joint.sum(axis=(1, 2))
    a_mass = joint.sum(axis=(0, 1))

    def cell_percentiles(values: np.ndarray, mass: np.ndarray, width: float) -> np.ndarray:
        edges = np.concatenate([values - width / 2, [values[-1] + width / 2]])
        cdf = np.concatenate([[0.0], np.cumsum(mass)])
        return np.interp([0.16, 0.5, 0.84], cdf, edges)

    # Q_r: each (point, node) pair is a uniform cell of the M_r step (and the A step)
    mr_step = locus.mr_step
    q_values = np.broadcast_to(
        locus.mr[None, :, None] + a_nodes[None, None, :], joint.shape
    ).ravel()
    q_mass = joint.ravel()
    h = min((a_max - a_min) / n_a, mr_step) / 2
    lo = q_values.min() - mr_step
    n_q = int(np.ceil((q_values.max() + mr_step - lo) / h))
    hist = np.bincount(((q_values - lo) / h).astype(int), weights=q_mass, minlength=n_q)
    box = max(int(round(mr_step / h)), 1)
    hist = np.convolve(hist, np.ones(box) / box, mode="same")
    q_edges = lo + np.arange(n_q + 1) * h
    q_cdf = np.concatenate([[0.0], np.cumsum(hist[:n_q])])
    q_cdf /= q_cdf[-1]
    result: dict[str, Any] = {
        "Mr": (locus.mr, mr_mass),
        "FeH": (locus.feh, feh_mass),
        "Ar": (a_nodes, a_mass),
        "Mr_percentiles": cell_percentiles(locus.mr, mr_mass, mr_step),
        "FeH_percentiles": cell_percentiles(locus.feh, feh_mass, locus.feh_step),
        "Ar_percentiles": cell_percentiles(a_nodes, a_mass, (a_max - a_min) / n_a),
        "Qr_percentiles": np.interp([0.16, 0.5, 0.84], q_cdf, q_edges),
        "log_evidence": log_evidence,
    }
    for name in ("Mr", "FeH", "Ar"):
        result[f"{name}_mean"], result[f"{name}_std"] = _weighted_mean_std(*result[name])
    return result


def _weighted_mean_std(values: np.ndarray, mass: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of ``values`` with normalised weights ``mass``."""
    mean = float((values * mass).sum())
    return mean, float(np.sqrt(max(((values - mean) ** 2 * mass).sum(), 0.0)))
