"""Batched PyTorch version of the Bayesian photo-D estimator, for GPUs (runs on CPU too).

It evaluates the same posterior as :class:`photodist.bayes.BayesEstimator` (see that module
for the mathematics) and returns the same columns with the same conventions and flags. Stars
are processed in batches; per batch the inputs go to the device once and the results come back
once. Per batch:

1. Per star, the whitened colours define a quadratic form, so ``lw0_ij = log p_j -
   chi2min_ij / 2`` and the scaled best-fit extinction ``A*_ij / sigma_A`` of every locus
   point come out of two float64 matrix products with per-point features (1, centred
   colours, their squares and pairwise products, and the log priors of the r bins, selected
   by a one-hot code per star).
2. The CPU kernel's upper bound of each point's log weight (the truncation factor replaced by
   the Gaussian distance of ``A*`` from ``[0, A_max]``) picks the best point and the
   candidate points within ``log_weight_cut`` of it.
3. For the candidates only (a compacted list of (star, point) pairs): the exact log
   truncation factor ``log(Phi(beta) - Phi(alpha))`` (tail-stable, through ``erfcx``), the
   truncated-normal moments of A_r, the weights, and their sums per star (``index_add``):
   the M_r and [Fe/H] marginals, moments, giant-branch mass, and cloud-in-cell deposits of
   the A_r histogram on the CPU kernel's per-star bins.
4. Per star: the A_r histogram smoothed by the CPU kernel's sampled Gaussian (batched FFT
   convolution with per-star kernels) and cut to ``[0, A_max]``; the Q_r histogram smoothed
   by the same three box passes and M_r-cell box (their exact transfer functions, applied
   by FFT); percentiles, entropies and flags.

The CPU kernel interpolates the truncation factor and the truncated moments from a per-star
table; here they are evaluated exactly for every candidate, which is the only systematic
difference between the two (a few 0.001 in the outputs; up to about 0.015 mag for very
bright stars with a wide ``A_max``, where this version agrees with the brute-force posterior).

On CUDA the dense bound and the candidate pass are compiled with ``torch.compile`` (fusing
their elementwise work) unless ``compile_kernels=False``; if compilation fails, the
estimator warns and continues with eager kernels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from photodist.bands import BandSet, Photometry, require_photometry
from photodist.bayes import (
    FAR_ASTAR_SIGMA,
    FAR_NEGLIGIBLE,
    MAX_HIST_BINS,
    OUTPUT_COLUMNS,
    BayesConfig,
    BayesEstimator,
    Flags,
    PriorGrid,
    _fill_distance_columns,
    a_bounds_for,
    add_extinction,
    add_prior_entropy,
    adjacent_covariance,
    ar_near_max_flags,
    poor_fit_thresholds,
    prior_range_flags,
    without_extinction,
)
from photodist.locus import Locus
from photodist.nn import resolve_device

if TYPE_CHECKING:
    from photodist.dust_profile import DustProfile

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
LOG_2PI = math.log(2.0 * math.pi)
LOG_HALF = math.log(0.5)
SQRT_HALF = math.sqrt(0.5)
LOG_FLOOR = -1e30  # stands for log(0) in the prior (keeps the matrix products finite)
LEVELS = (0.16, 0.5, 0.84)
MIN_A_MAX = 1e-6  # smallest A_r bound used (mag); A_max <= 0 would leave no histogram bins
#: Device-memory budget of one batch (bytes) on CUDA devices: this fraction of the device's
#: memory, at most CUDA_BATCH_BYTES (larger batches spread the per-batch host overhead)
CUDA_BATCH_FRACTION = 1 / 4
CUDA_BATCH_BYTES = 32 * 1024**3
#: Memory budget of one batch (bytes) on the CPU.
CPU_BATCH_BYTES = 256 * 1024**2
#: float64 arrays of the size of the (stars x locus points) problem held at once, per star
#: (lw0, bb, the bound's temporaries, the mask and the retained candidate arrays, with margin)
_DENSE_ARRAYS = 8
#: bytes per candidate of the temporaries of the eager candidate pass (~40 float64 arrays)
_CANDIDATE_BYTES = 320
#: bytes per histogram bin and star of the A_r and Q_r smoothing (histogram, spectra,
#: transfer function and smoothed copies, float64 and complex128)
_FFT_ROW_BYTES = 64
_COL = {name: k for k, name in enumerate(OUTPUT_COLUMNS)}
_N_OUT = len(OUTPUT_COLUMNS)


# --------------------------------------------------------------------------- kernels
def log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Phi(x), accurate in both tails (``erfcx`` below zero, ``log1p`` above)."""
    z = -x * SQRT_HALF
    lower = LOG_HALF + torch.log(torch.special.erfcx(z)) - z * z
    upper = torch.log1p(-0.5 * torch.special.erfc(-z))
    return torch.where(x < 0.0, lower, upper)


def log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (-inf where it underflows)."""
    flip = a > 0.0  # upper tail: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    lb = log_ndtr(hi)
    d = log_ndtr(lo) - lb
    out = lb + torch.log1p(-torch.exp(d))
    return torch.where(d >= 0.0, -math.inf, out)


def _whitening(
    errors: torch.Tensor, cov: torch.Tensor, used: torch.Tensor, floor: float
) -> torch.Tensor:
    """Per-star whitening matrices W = L^-1, (B, nc, nc), as the CPU kernel's ``_whiten``.

    L is the bidiagonal Cholesky factor of the tridiagonal colour covariance (variances
    sigma_k^2 + floor^2, covariances ``cov`` of adjacent usable colours); row k of W is
    sw_k e_k - mw_k W_{k-1}. Rows and columns of unusable colours are zero.
    """
    n_b, nc = errors.shape
    var = torch.where(used, errors * errors + floor * floor, 1.0)
    eye = torch.eye(nc, dtype=errors.dtype, device=errors.device)
    rows = []
    diag_prev = torch.zeros(n_b, dtype=errors.dtype, device=errors.device)
    for k in range(nc):
        off = torch.zeros_like(diag_prev)
        if k > 0:
            adjacent = (diag_prev > 0.0) & torch.isfinite(cov[:, k - 1])
            off = torch.where(adjacent, cov[:, k - 1] / torch.where(adjacent, diag_prev, 1.0), 0.0)
        off = torch.where(off * off >= 0.999 * var[:, k], 0.0, off)
        diag = torch.sqrt(var[:, k] - off * off)
        sw = torch.where(used[:, k], 1.0 / diag, 0.0)
        mw = torch.where(used[:, k], off / diag, 0.0)
        row = sw[:, None] * eye[k]
        if k > 0:
            row = row - mw[:, None] * rows[-1]
        rows.append(row)
        diag_prev = torch.where(used[:, k], diag, 0.0)
    return torch.stack(rows, dim=1)


def _bound_candidates(
    lw0: torch.Tensor, bb: torch.Tensor, amax_s: torch.Tensor, cut: float
) -> tuple[torch.Tensor, ...]:
    """The log-weight bound (``lw0`` less the squared distance of ``bb`` outside [0, amax_s]),
    its best value per star and the candidates within ``cut`` of it."""
    zero = torch.zeros((), dtype=bb.dtype, device=bb.device)
    dist = bb - torch.clamp(bb, min=zero, max=amax_s[:, None])
    bound = lw0 - 0.5 * dist * dist
    best = bound.amax(dim=1)
    mask = bound >= (best - cut)[:, None]
    return best, mask


def _fit_and_weight(
    f_lw: torch.Tensor, f_bb: torch.Tensor, features_t: torch.Tensor, n_prior: int
) -> tuple[torch.Tensor, ...]:
    """-chi2min/2 and ``lw0`` (the same plus the log prior, the last ``n_prior`` feature
    rows) and ``A*/sigma_A`` of every (star, point)."""
    k = features_t.shape[0] - n_prior
    fit = f_lw[:, :k] @ features_t[:k]
    lw0 = fit + f_lw[:, k:] @ features_t[k:]
    bb = f_bb @ features_t[: f_bb.shape[1]]
    return fit, lw0, bb


def _best_fit_point(fit: torch.Tensor, bb: torch.Tensor, amax_s: torch.Tensor) -> torch.Tensor:
    """Per star, the point of the smallest chi2 with A_r within [0, A_max] (no prior)."""
    zero = torch.zeros((), dtype=bb.dtype, device=bb.device)
    dist = bb - torch.clamp(bb, min=zero, max=amax_s[:, None])
    return (fit - 0.5 * dist * dist).argmax(dim=1)


def _dense_pass(
    f_lw: torch.Tensor,
    f_bb: torch.Tensor,
    features_t: torch.Tensor,
    n_prior: int,
    amax_s: torch.Tensor,
    cut: float,
) -> tuple[torch.Tensor, ...]:
    """``lw0`` and ``A*/sigma_A`` of every (star, point), the best-fit point, the bound's
    best value and the candidate mask."""
    fit, lw0, bb = _fit_and_weight(f_lw, f_bb, features_t, n_prior)
    return (lw0, bb, _best_fit_point(fit, bb, amax_s), *_bound_candidates(lw0, bb, amax_s, cut))


def _dense_pass_profile(
    f_lw: torch.Tensor,
    f_bb: torch.Tensor,
    features_t: torch.Tensor,
    n_prior: int,
    amax_s: torch.Tensor,
    amax_p: torch.Tensor,
    cut: float,
    mu_s: torch.Tensor,
    kappa: torch.Tensor,
    log_norm: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """:func:`_dense_pass` with a dust profile's normal A_r prior: ``mu_s`` (B, n_mr) its
    centres in units of sigma_A per M_r column (points are [Fe/H]-major), ``kappa`` (B,)
    q s^2, ``log_norm`` (B, n_mr) the log of its inverse mass inside [0, A_max]. Returns
    ``lw0`` with the prior's overlap factor, the combined normal's centre in units of its
    width (in place of A*/sigma_A), the likelihood's best-fit point (``amax_s`` its A_r
    bound in units of sigma_A), the best value and the candidate mask."""
    fit, lw0, bb = _fit_and_weight(f_lw, f_bb, features_t, n_prior)
    fit_j = _best_fit_point(fit, bb, amax_s)
    repeats = bb.shape[1] // mu_s.shape[1]
    mu = mu_s.repeat(1, repeats)
    k = kappa[:, None]
    dev = bb - mu
    lw0 = lw0 - 0.5 * dev * dev / (1.0 + k) + log_norm.repeat(1, repeats)
    bb = (k * bb + mu) / torch.sqrt(k * (1.0 + k))
    return (lw0, bb, fit_j, *_bound_candidates(lw0, bb, amax_p, cut))


def _deposit(
    hist: torch.Tensor,
    row: torch.Tensor,
    pos: torch.Tensor,
    mass: torch.Tensor,
    n_row: torch.Tensor,
) -> None:
    """Cloud-in-cell deposits into the rows of ``hist`` (B, N) at fractional bin ``pos``.

    Bins outside ``[0, n_row)`` of the row are skipped, as in the CPU kernel.
    """
    size = hist.shape[1]
    x = (pos - 0.5).clamp(-2.0, size + 1.0)
    k = torch.floor(x)
    f = x - k
    k = k.long()
    flat = hist.view(-1)
    base = row * size
    ok0 = (k >= 0) & (k < n_row)
    ok1 = (k >= -1) & (k + 1 < n_row)
    flat.index_add_(0, base + k.clamp(0, size - 1), torch.where(ok0, (1.0 - f) * mass, 0.0))
    flat.index_add_(0, base + (k + 1).clamp(0, size - 1), torch.where(ok1, f * mass, 0.0))


def _candidate_pass(
    flat: torch.Tensor,
    lw0: torch.Tensor,
    bb: torch.Tensor,
    star_par: torch.Tensor,
    n_a: torch.Tensor,
    mr_axis: torch.Tensor,
    giant: torch.Tensor,
    sums: torch.Tensor,
    mr_mass: torch.Tensor,
    feh_mass: torch.Tensor,
    q_min: torch.Tensor,
    q_max: torch.Tensor,
    a_hist: torch.Tensor,
    n_mr: int,
) -> tuple[torch.Tensor, ...]:
    """Exact weights of candidate (star, point) pairs (flat indices into the dense arrays),
    accumulated into the per-star sums, marginals, Q_r range and A_r histogram in place.

    Returns the star index, weight and conditional mean of Q_r of every candidate, and
    its A*/sigma_A with the mask of those left out of the histogram, far outside [0, A_max]
    (for :func:`_far_deposits`).
    """
    n_pts = lw0.shape[1]
    s = torch.div(flat, n_pts, rounding_mode="floor")
    j = flat - s * n_pts
    par = star_par[s]
    best, amax_s, sigma, a_max, a_lo, h_a = par.unbind(dim=1)
    bb_c = torch.take(bb, flat)
    log_u = torch.take(lw0, flat) - best
    alpha = -bb_c
    beta = amax_s - bb_c
    log_m = log_ndtr_diff(alpha, beta)
    ok = torch.isfinite(log_m)
    ra = torch.exp(-0.5 * alpha * alpha - LOG_SQRT_2PI - log_m)
    rb = torch.exp(-0.5 * beta * beta - LOG_SQRT_2PI - log_m)
    mu = bb_c * sigma  # A*
    mean = mu + sigma * (ra - rb)
    var = sigma * sigma * (1.0 + alpha * ra - beta * rb - (ra - rb) ** 2)
    edge = torch.where(mu < 0.5 * a_max, 0.0, a_max)
    mean = torch.where(ok, torch.minimum(mean.clamp(min=0.0), a_max), edge)
    var = torch.where(ok, torch.minimum(var.clamp(min=0.0), sigma * sigma), 0.0)
    inv_m = torch.exp(torch.clamp(-log_m, max=700.0))
    log_uw = log_u + log_m
    w = torch.where(log_uw >= -700.0, torch.exp(log_uw), 0.0)
    feh_i = torch.div(j, n_mr, rounding_mode="floor")
    mr_i = j - feh_i * n_mr
    qv = mr_axis[mr_i] + mean
    wm = w * mean
    wv = w * var
    terms = torch.stack([w, w * giant[j], wm, wv + wm * mean, wv, w * (qv * qv) + wv], dim=1)
    sums.index_add_(0, s, terms)
    mr_mass.view(-1).index_add_(0, s * n_mr + mr_i, w)
    feh_mass.view(-1).index_add_(0, s * feh_mass.shape[1] + feh_i, w)
    kept = w > 0.0
    q_min.scatter_reduce_(0, s, torch.where(kept, qv, math.inf), reduce="amin")
    q_max.scatter_reduce_(0, s, torch.where(kept, qv, -math.inf), reduce="amax")
    # points far outside [0, A_max] go in exactly afterwards (_far_deposits)
    far = (bb_c < -FAR_ASTAR_SIGMA) | (bb_c > amax_s + FAR_ASTAR_SIGMA)
    _deposit(a_hist, s, (mu - a_lo) / h_a, torch.where(far, 0.0, w * inv_m), n_a[s])
    return s, w, qv, bb_c, far


def _far_deposits(
    direct: torch.Tensor,
    s: torch.Tensor,
    bstar: torch.Tensor,
    w: torch.Tensor,
    amax_s: torch.Tensor,
    h_s: torch.Tensor,
    n_in: torch.Tensor,
) -> None:
    """Add to ``direct`` (n_stars, bins of [0, A_max]) the exact in-bound A_r mass ``w`` of
    candidates whose A* = ``bstar`` σ_A lies more than ``FAR_ASTAR_SIGMA`` outside (their
    stars ``s``; ``amax_s``, ``h_s`` and ``n_in`` per candidate, in units of σ_A): bin masses
    from the normal tail at the bin edges counted from the nearer bound, as the CPU kernel's
    ``_deposit_beyond``, down to e^-12 of the first bin's."""
    below = bstar < 0.0
    dist = torch.where(below, -bstar, bstar - amax_s)
    # each point's bins until the tail falls below e^-12 of the bound's (Q(z) ~ e^{-z^2/2})
    need = torch.minimum(
        torch.ceil((torch.sqrt(dist * dist + 24.0) - dist) / h_s) + 1, n_in.to(dist.dtype)
    )
    k = torch.arange(int(need.max().item()) + 1, device=direct.device, dtype=bstar.dtype)
    edges = log_ndtr(-(dist[:, None] + k[None, :] * h_s[:, None]))
    tail = torch.exp(edges - edges[:, :1])
    mass = (tail[:, :-1] - tail[:, 1:]).clamp(min=0.0)
    mass = torch.where(k[None, :-1] < need[:, None], mass, 0.0)
    mass = mass * (w / mass.sum(dim=1).clamp(min=1e-300))[:, None]
    kk = k[:-1].long()[None, :]
    index = torch.where(below[:, None], kk, n_in[:, None] - 1 - kk).clamp(min=0)
    width = direct.shape[1]
    ok = index < width
    flat = (s[:, None] * width + index.clamp(max=width - 1)).reshape(-1)
    direct.view(-1).index_add_(0, flat, torch.where(ok, mass, 0.0).reshape(-1))


# ----------------------------------------------------------------- per-star helpers
def _entropy_bits(mass: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (bits) of each row of non-negative masses."""
    p = mass / mass.sum(dim=1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(dim=1) / math.log(2.0)


def _search(mass: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bin, fraction of the bin below the level, and whether it was reached, for the
    16/50/84 % levels of each row of non-negative masses, (B, 3) each."""
    cum = mass.cumsum(dim=1)
    levels = torch.tensor(LEVELS, dtype=cum.dtype, device=cum.device)
    target = cum[:, -1:] * levels
    idx = torch.searchsorted(cum, target.contiguous())
    n = cum.shape[1]
    found = idx < n
    idx = idx.clamp(max=n - 1)
    m = mass.gather(1, idx)
    before = cum.gather(1, idx) - m
    return idx, (target - before) / m, found


def _cell_percentiles(mass: torch.Tensor, centres: torch.Tensor, half: float) -> torch.Tensor:
    """16/50/84 percentiles of marginals whose grid points are uniform cells, (B, 3)."""
    idx, frac, found = _search(mass)
    value = centres[idx] - half + frac * (2.0 * half)
    return torch.where(found, value, centres[-1] + half)


def _density_percentiles(
    density: torch.Tensor, lo: torch.Tensor, h: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """16/50/84 percentiles of densities sampled at bin centres ``lo + (m + 0.5) h``.

    Row i has ``n[i]`` bins (zero beyond); returns (B, 3).
    """
    idx, frac, found = _search(density)
    value = lo[:, None] + (idx + frac) * h[:, None]
    return torch.where(found, value, (lo + n * h)[:, None])


def _box_transfer(width: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Real DFT (rfft frequencies) of centred moving averages of odd ``width`` bins, (B, F)."""
    k = torch.arange(n_fft // 2 + 1, device=width.device, dtype=torch.float64)
    x = math.pi * k / n_fft
    wk = width.to(torch.float64)[:, None]
    ratio = torch.sin(wk * x) / (wk * torch.sin(x))
    return torch.where(k == 0, 1.0, ratio)


def _pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


# ------------------------------------------------------------------------ estimator
@dataclass
class _Grid:
    """Device tensors of the locus grid for one band set."""

    n_colors: int
    n_points: int
    n_feh: int
    n_mr: int
    mr_half: float
    feh_half: float
    reddening: torch.Tensor  # (nc,)
    mean_color: torch.Tensor  # (nc,) centre subtracted from colours before the products
    centred: torch.Tensor  # (J, nc) locus colours minus mean_color
    features_t: torch.Tensor  # (K, J): 1, colours, squares, cross products, log priors
    mr_axis: torch.Tensor
    feh_axis: torch.Tensor
    giant: torch.Tensor  # (J,) float 0/1
    pairs: list[tuple[int, int]]
    n_rbins: int


class TorchBayesEstimator:
    """Batched PyTorch Bayesian photo-D estimates (same outputs as ``BayesEstimator``).

    Parameters
    ----------
    locus
        The stellar locus grid (its grid is the posterior grid; see ``Locus.resample``).
    prior
        A prior map for the patch (``PriorGrid`` or ``photodist.priors.PriorMap``), or None
        for a flat prior (rows flagged NO_PRIOR).
    config
        Estimator settings (as for ``BayesEstimator``).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_size
        Stars per batch; None sizes batches to a quarter of the device's memory, at most
        32 GiB, on CUDA (256 MiB on the CPU) for the locus grid used. The eager kernels'
        peak use was measured at 0.6-1.7 times that budget on the CPU (the most on fine grids,
        in the dense pass); the histogram stages are chunked to stay within it.
    compile_kernels
        Compile the dense bound and the candidate pass with ``torch.compile``; None (default)
        compiles on CUDA devices only. Falls back to eager kernels (with a warning) if
        compilation fails.
    dust_profile
        A :class:`photodist.dust_profile.DustProfile` (as for ``BayesEstimator``), or None.
    """

    def __init__(
        self,
        locus: Locus,
        prior: Any = None,
        config: BayesConfig | None = None,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        compile_kernels: bool | None = None,
        dust_profile: DustProfile | None = None,
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.locus = locus
        self.config = config or BayesConfig()
        self.prior = PriorGrid.flat(locus) if prior is None else PriorGrid.from_prior(prior, locus)
        self.has_prior = prior is not None
        self.dust_profile = dust_profile
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.compile_kernels = (
            self.device.type == "cuda" if compile_kernels is None else bool(compile_kernels)
        )
        self._grids: dict[tuple[Any, ...], _Grid] = {}
        self._compiled: dict[str, Callable[..., Any]] = {}
        #: counts of the last ``predict``: batches and candidate (star, point) pairs
        self.stats_: dict[str, int] = {"n_batches": 0, "n_candidates": 0}

    # ------------------------------------------------------------------ setup
    @property
    def memory_budget(self) -> int:
        """Device-memory budget of one batch in bytes."""
        if self.device.type != "cuda":
            return CPU_BATCH_BYTES
        total = torch.cuda.get_device_properties(self.device).total_memory
        return min(CUDA_BATCH_BYTES, int(total * CUDA_BATCH_FRACTION))

    def batch_size_for(self, n_points: int) -> int:
        """Stars per batch for a locus of ``n_points`` points."""
        if self.batch_size is not None:
            return int(self.batch_size)
        # the per-star arrays: the (stars x points) problem and the A_r histogram, whose
        # length is at most MAX_HIST_BINS (the rest is chunked by star or by candidate)
        per_star = 8 * max(n_points * _DENSE_ARRAYS, 2 * MAX_HIST_BINS)
        return max(int(self.memory_budget // per_star), 16)

    def _kernel(self, name: str) -> Callable[..., Any]:
        fn = {
            "dense": _dense_pass,
            "dense_profile": _dense_pass_profile,
            "candidates": _candidate_pass,
        }[name]
        if not self.compile_kernels:
            return fn
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, dynamic=True)
        return self._compiled[name]

    def _grid(self, band_set: BandSet) -> _Grid:
        key = (band_set.colors, tuple(band_set.reddening_vector().tolist()))
        if key in self._grids:
            return self._grids[key]
        nc = band_set.n_colors
        n_feh, n_mr = self.locus.shape
        colors = self.locus.colors_for(band_set).reshape(-1, nc).astype(np.float64)
        mean_color = colors.mean(axis=0)
        centred = colors - mean_color
        pairs = [(k, m) for k in range(nc) for m in range(k + 1, nc)]
        n_rbins = len(self.prior.r_centres)
        log_prior = np.maximum(self.prior.log_prior.reshape(n_rbins, -1), LOG_FLOOR)
        products = np.array([centred[:, k] * centred[:, m] for k, m in pairs])
        features = np.concatenate(
            [
                np.ones((1, len(colors))),
                centred.T,
                (centred**2).T,
                products.reshape(len(pairs), len(colors)),
                log_prior,
            ]
        )
        dev = self.device

        def tensor(x: Any) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=dev)

        mr, feh = self.locus.mr.astype(np.float64), self.locus.feh.astype(np.float64)
        grid = _Grid(
            n_colors=nc,
            n_points=len(colors),
            n_feh=n_feh,
            n_mr=n_mr,
            mr_half=0.5 * (mr[1] - mr[0]) if n_mr > 1 else 0.0,
            feh_half=0.5 * (feh[1] - feh[0]) if n_feh > 1 else 0.0,
            reddening=tensor(band_set.reddening_vector()),
            mean_color=tensor(mean_color),
            centred=tensor(centred),
            features_t=tensor(features),
            mr_axis=tensor(mr),
            feh_axis=tensor(feh),
            giant=tensor(self.locus.giant.ravel().astype(np.float64)),
            pairs=pairs,
            n_rbins=n_rbins,
        )
        self._grids[key] = grid
        return grid

    # ---------------------------------------------------------------- predict
    def predict(self, photometry: Photometry) -> pd.DataFrame:
        """Posterior summaries for every star (one output row per input row, same order)."""
        band_set = require_photometry(photometry, "TorchBayesEstimator.predict").band_set
        grid = self._grid(band_set)
        nc = grid.n_colors
        n = len(photometry)
        a_min, a_max = a_bounds_for(photometry, self.config)
        fitted = without_extinction(photometry, a_min)
        r = np.where(np.isfinite(photometry.r), photometry.r, np.nan)
        bins = self.prior.bin_index(r) % grid.n_rbins
        # one array in, one array out per batch
        host = np.empty((n, 3 * nc + 4))
        host[:, :nc] = fitted.colors
        host[:, nc : 2 * nc] = photometry.color_errors
        host[:, 2 * nc : 3 * nc - 1] = adjacent_covariance(photometry, self.config)
        host[:, 3 * nc - 1] = r
        host[:, 3 * nc] = a_max - a_min
        host[:, 3 * nc + 1] = bins
        host[:, 3 * nc + 2] = a_min
        host[:, 3 * nc + 3] = (
            np.nan if self.dust_profile is None else self.dust_profile.scales(photometry.dust, (n,))
        )
        result = np.empty((n, _N_OUT + 1))
        batch = self.batch_size_for(grid.n_points)
        chi2_poor = torch.from_numpy(poor_fit_thresholds(self.config)).to(self.device)
        self.stats_ = {"n_batches": 0, "n_candidates": 0}
        for start in range(0, n, batch):
            self.stats_["n_batches"] += 1
            block = torch.from_numpy(host[start : start + batch]).to(self.device)
            out = self._predict_batch(grid, block, chi2_poor)
            result[start : start + batch] = out.cpu().numpy()
        frame = pd.DataFrame(result[:, :_N_OUT], columns=OUTPUT_COLUMNS)
        add_prior_entropy(frame, self.prior, bins)
        add_extinction(frame, a_min)
        frame["Ar_max"] = a_max
        _fill_distance_columns(frame, r)
        beyond = prior_range_flags(self.prior.r_intervals, r)
        near_max = ar_near_max_flags(frame["Ar_mean"], a_max)
        frame["flags"] = result[:, _N_OUT].astype(np.int64) | beyond | near_max
        return frame

    def _predict_batch(
        self, grid: _Grid, block: torch.Tensor, chi2_poor: torch.Tensor
    ) -> torch.Tensor:
        if self.compile_kernels:
            counted = self.stats_["n_candidates"]
            try:
                return self._run_batch(grid, block, chi2_poor)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # a missing compiler or unsupported op: run eagerly
                self.stats_["n_candidates"] = counted  # the batch is counted once, below
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {exc}); using eager kernels",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.compile_kernels = False
        return self._run_batch(grid, block, chi2_poor)

    @torch.inference_mode()
    def _run_batch(self, grid: _Grid, block: torch.Tensor, chi2_poor: torch.Tensor) -> torch.Tensor:
        """Outputs (OUTPUT_COLUMNS then the flags) of one batch of stars, (B, n_out + 1)."""
        dev = block.device
        nc = grid.n_colors
        n_b = block.shape[0]
        colors = block[:, :nc]
        errors = block[:, nc : 2 * nc]
        cov = block[:, 2 * nc : 3 * nc - 1]
        r = block[:, 3 * nc - 1]
        a_max = block[:, 3 * nc]
        bins = block[:, 3 * nc + 1].long()
        a_min = block[:, 3 * nc + 2]
        scale = block[:, 3 * nc + 3]
        floor = float(self.config.error_floor)

        used = torch.isfinite(colors) & torch.isfinite(errors) & (errors > 0.0)
        whiten = _whitening(errors, cov, used, floor)
        rho = whiten @ grid.reddening
        q = (rho * rho).sum(dim=1)
        n_used = used.sum(dim=1)
        finite_r = torch.isfinite(r)
        flags = torch.zeros(n_b, dtype=torch.int64, device=dev)
        if not self.has_prior:
            flags |= Flags.NO_PRIOR
        flags |= torch.where(n_used < nc, Flags.COLOR_UNUSABLE, 0)
        flags |= torch.where(finite_r, 0, Flags.NO_R)
        too_few = finite_r & ((n_used < 2) | (q <= 0.0))
        flags |= torch.where(too_few, Flags.TOO_FEW_COLORS, 0)
        out = torch.full((n_b, _N_OUT + 1), math.nan, dtype=torch.float64, device=dev)
        valid = (finite_r & ~too_few).nonzero().squeeze(1)
        if valid.numel():
            centred_colors = torch.where(used, colors - grid.mean_color, 0.0)
            res, vflags = self._posterior(
                grid,
                whiten[valid],
                centred_colors[valid],
                q[valid],
                a_max[valid],
                bins[valid],
                chi2_poor,
                self._profile_means(grid, r[valid], a_min[valid], scale[valid]),
            )
            out[valid, :_N_OUT] = res
            flags[valid] |= vflags
        out[:, _N_OUT] = flags.to(torch.float64)
        return out

    def _profile_means(
        self, grid: _Grid, r: torch.Tensor, a_min: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor | None:
        """The dust profile's prior mean of A_r (mag, less A_min) per star and M_r column,
        NaN rows for stars it does not apply to; None without a profile."""
        profile = self.dust_profile
        if profile is None:
            return None
        knots_x = torch.as_tensor(profile.knots_x, dtype=r.dtype, device=r.device)
        knots_mu = torch.as_tensor(profile.knots_mu, dtype=r.dtype, device=r.device)
        x = (r[:, None] - grid.mr_axis[None, :]).clamp(knots_x[0], knots_x[-1])
        if len(knots_x) > 1:
            k = (torch.searchsorted(knots_x, x.contiguous()) - 1).clamp(0, len(knots_x) - 2)
            fr = (x - knots_x[k]) / (knots_x[k + 1] - knots_x[k])
            g = knots_mu[k] + fr * (knots_mu[k + 1] - knots_mu[k])
        else:
            g = knots_mu[0].expand_as(x)
        return scale[:, None] * g - a_min[:, None]

    def _posterior(
        self,
        grid: _Grid,
        whiten: torch.Tensor,
        cc: torch.Tensor,
        q: torch.Tensor,
        a_max: torch.Tensor,
        bins: torch.Tensor,
        chi2_poor: torch.Tensor,
        prior_mean: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and flags of stars with at least two usable colours and an r magnitude.

        ``whiten`` is each star's whitening matrix W (:func:`_whitening`; zero rows and columns
        for unusable colours), ``cc`` the colours minus the grid's mean colour (0 where
        unusable), ``q`` = |W R|^2, ``prior_mean`` the dust profile's A_r centres per M_r
        column (:meth:`_profile_means`; NaN rows: the flat prior alone).
        """
        dev = whiten.device
        f64 = torch.float64
        n_s = whiten.shape[0]
        a_max = a_max.clamp(min=MIN_A_MAX)
        sqrt_q = torch.sqrt(q)
        sigma = 1.0 / sqrt_q
        amax_s = a_max * sqrt_q

        # whitened colours a = W c and unit reddening direction u = W R / sqrt(q); chi2min_j
        # is the squared norm of the whitened residual W (c - L_j) projected orthogonally to
        # u: c^T M c - 2 (M c).L_j + L_j^T M L_j with M = W^T (I - u u^T) W = W^T W - g g^T,
        # g = W^T u; and A*_j sqrt(q) = u.W (c - L_j) = g.c - g.L_j
        a = (whiten @ cc[:, :, None]).squeeze(2)
        u = (whiten @ grid.reddening) / sqrt_q[:, None]
        ua = (a * u).sum(dim=1)
        pa = a - u * ua[:, None]
        g = (whiten.transpose(1, 2) @ u[:, :, None]).squeeze(2)
        metric = whiten.transpose(1, 2) @ whiten - g[:, :, None] * g[:, None, :]
        cross = [-metric[:, k, m] for k, m in grid.pairs]
        f_lw = torch.cat(
            [
                (-0.5 * (pa * pa).sum(dim=1))[:, None],
                (metric @ cc[:, :, None]).squeeze(2),
                -0.5 * torch.diagonal(metric, dim1=1, dim2=2),
                torch.stack(cross, dim=1) if cross else cc[:, :0],
                torch.nn.functional.one_hot(bins, grid.n_rbins).to(f64),
            ],
            dim=1,
        )
        f_bb = torch.cat([ua[:, None], -g], dim=1)

        # dense pass: bound of the log weight, best point and candidates
        cut = float(self.config.log_weight_cut)
        amax_flat = amax_s  # AR_AT_BOUND refers to the likelihood's A* alone
        # the A_r prior's share of the log evidence (flat: 1 / (A_max - A_min))
        log_prior_norm = -torch.log(a_max)
        if prior_mean is None or self.dust_profile is None:
            lw0, bb, fit_j, best, mask = self._kernel("dense")(
                f_lw, f_bb, grid.features_t, grid.n_rbins, amax_s, cut
            )
        else:
            # each point's normal likelihood in A times the profile's normal prior is normal:
            # width sigma sqrt(kappa / (1 + kappa)), kappa = q s^2; stars without a profile
            # value keep the flat prior (kappa so large that nothing changes)
            active = torch.isfinite(prior_mean).all(dim=1)
            s2 = float(self.dust_profile.sigma) ** 2
            kappa = torch.where(active, q * s2, 1e16)
            mu_s = torch.where(active[:, None], prior_mean * sqrt_q[:, None], 0.0)
            # the prior given a point: the normal restricted to [0, A_max] and normalised
            root_k = torch.sqrt(kappa)[:, None]
            log_norm = -log_ndtr_diff(-mu_s / root_k, (amax_s[:, None] - mu_s) / root_k)
            log_norm = torch.where(active[:, None], log_norm.clamp(max=700.0), 0.0)
            sigma = sigma * torch.sqrt(kappa / (1.0 + kappa))
            # the profile's normal convolved with the likelihood: 1 / sqrt(2 pi (1/q + s^2))
            log_prior_norm = torch.where(
                active, 0.5 * (torch.log(q) - LOG_2PI - torch.log1p(kappa)), log_prior_norm
            )
            amax_s = a_max / sigma
            lw0, bb, fit_j, best, mask = self._kernel("dense_profile")(
                f_lw,
                f_bb,
                grid.features_t,
                grid.n_rbins,
                amax_flat,
                amax_s,
                cut,
                mu_s,
                kappa,
                log_norm,
            )
        cand = mask.view(-1).nonzero().squeeze(1)
        del mask
        n_cand = cand.numel()
        self.stats_["n_candidates"] += n_cand

        # the best fit (chi2 with A_r within [0, A_max], no prior), exact at its point
        e_fit = a - (whiten @ grid.centred[fit_j][:, :, None]).squeeze(2)
        bb_fit = (e_fit * u).sum(dim=1)
        outside = bb_fit - bb_fit.clamp(min=0.0).minimum(amax_flat)
        chi2_best = (e_fit * e_fit).sum(dim=1) - bb_fit * bb_fit + outside * outside

        # per-star A_r histogram bins (as the CPU kernel: 0 and A_max are bin edges)
        h_a = torch.maximum(
            torch.minimum(torch.clamp(sigma / 5.0, min=0.0005).clamp(max=0.02), a_max / 20.0),
            a_max / 1000.0,
        )
        n_in = torch.ceil(a_max / h_a)
        h_a = a_max / n_in
        n_in = n_in.long()
        n_margin = torch.minimum(
            torch.ceil(4.0 * sigma / h_a).clamp(max=MAX_HIST_BINS).long(),
            torch.div(MAX_HIST_BINS - n_in, 2, rounding_mode="floor"),
        )
        a_lo = -n_margin * h_a
        n_a = n_in + 2 * n_margin
        sigma_bins = sigma / h_a
        half = torch.ceil(4.0 * sigma_bins).clamp(max=MAX_HIST_BINS).long()
        smooth = (half >= 1) & (sigma_bins >= 0.3)
        half = torch.where(smooth, torch.minimum(half, n_a), 0)
        sizes = torch.stack([n_a.max(), (n_a + half).max(), n_in.max(), smooth.sum()])
        size_a, size_fft, width_in, n_smooth = (int(x) for x in sizes.tolist())  # one sync

        # candidate pass (chunks bound the temporaries)
        star_par = torch.stack([best, amax_s, sigma, a_max, a_lo, h_a], dim=1)
        sums = torch.zeros((n_s, 6), dtype=f64, device=dev)
        mr_mass = torch.zeros((n_s, grid.n_mr), dtype=f64, device=dev)
        feh_mass = torch.zeros((n_s, grid.n_feh), dtype=f64, device=dev)
        q_min = torch.full((n_s,), math.inf, dtype=f64, device=dev)
        q_max = torch.full((n_s,), -math.inf, dtype=f64, device=dev)
        a_hist = torch.zeros((n_s, size_a), dtype=f64, device=dev)
        a_direct = torch.zeros((n_s, width_in), dtype=f64, device=dev)
        masses = torch.zeros(2 * n_s, dtype=f64, device=dev)
        far_parts = [(cand[:0], bb.new_zeros(0), bb.new_zeros(0))]
        c_star = torch.empty(n_cand, dtype=torch.int64, device=dev)
        c_w = torch.empty(n_cand, dtype=f64, device=dev)
        c_q = torch.empty(n_cand, dtype=f64, device=dev)
        chunk = max(self.memory_budget // _CANDIDATE_BYTES, 1 << 16)
        candidate_pass = self._kernel("candidates")
        for start in range(0, n_cand, chunk):
            stop = min(start + chunk, n_cand)
            s, w, qv, bb_c, far = candidate_pass(
                cand[start:stop],
                lw0,
                bb,
                star_par,
                n_a,
                grid.mr_axis,
                grid.giant,
                sums,
                mr_mass,
                feh_mass,
                q_min,
                q_max,
                a_hist,
                grid.n_mr,
            )
            c_star[start:stop] = s
            c_w[start:stop] = w
            c_q[start:stop] = qv
            masses.index_add_(0, s * 2 + far.long(), w)  # (near, far) mass per star
            far &= w > 0.0
            far_parts.append((s[far], bb_c[far], w[far]))
        del lw0, bb, cand
        # the far points' exact deposits, where they matter (as the CPU kernel)
        f_s, f_b, f_w = (torch.cat(parts) for parts in zip(*far_parts, strict=True))
        masses = masses.view(n_s, 2)
        use = (masses[:, 1] > FAR_NEGLIGIBLE * masses[:, 0])[f_s]
        if bool(use.any()):
            f_s, f_b, f_w = f_s[use], f_b[use], f_w[use]
            h_s = (h_a / sigma)[f_s]
            _far_deposits(a_direct, f_s, f_b, f_w, amax_s[f_s], h_s, n_in[f_s])

        # moments
        w_tot = sums[:, 0]
        good = w_tot > 0.0
        w_div = torch.where(good, w_tot, 1.0)
        res = torch.full((n_s, _N_OUT), math.nan, dtype=f64, device=dev)
        for name, mass, axis, half_cell in (
            ("Mr", mr_mass, grid.mr_axis, grid.mr_half),
            ("FeH", feh_mass, grid.feh_axis, grid.feh_half),
        ):
            k0 = _COL[f"{name}_mean"]
            mean = (mass * axis).sum(dim=1) / w_div
            var = (mass * (axis - mean[:, None]) ** 2).sum(dim=1) / w_div
            res[:, k0] = mean
            res[:, k0 + 1] = torch.sqrt(var)
            res[:, k0 + 2 : k0 + 5] = _cell_percentiles(mass, axis, half_cell)
        mean_a = sums[:, 2] / w_div
        k0 = _COL["Ar_mean"]
        res[:, k0] = mean_a
        res[:, k0 + 1] = torch.sqrt(torch.clamp(sums[:, 3] / w_div - mean_a * mean_a, min=0.0))
        mean_q = res[:, _COL["Mr_mean"]] + mean_a
        k0 = _COL["Qr_mean"]
        res[:, k0] = mean_q
        res[:, k0 + 1] = torch.sqrt(torch.clamp(sums[:, 5] / w_div - mean_q * mean_q, min=0.0))

        # A_r: histogram of A* smoothed by the sampled N(0, sigma_A^2), cut to [0, A_max]
        inside = self._ar_inside(
            a_hist, n_a, n_in, n_margin, half, sigma_bins, smooth, width_in, size_fft, n_smooth
        )
        inside = inside + a_direct
        fallback = inside.sum(dim=1) <= 0.0  # all mass outside: the data want A_r beyond
        m_in = torch.arange(inside.shape[1], device=dev)
        edge = torch.where(mean_a > 0.5 * a_max, n_in - 1, 0)
        inside = torch.where(fallback[:, None], (m_in == edge[:, None]).to(f64), inside)
        res[:, _COL["Ar_p16"] : _COL["Ar_p84"] + 1] = _density_percentiles(
            inside, a_lo + n_margin * h_a, h_a, n_in.to(f64)
        )

        # Q_r: conditional means smoothed by the mean conditional A_r variance and M_r cell
        res[:, _COL["Qr_p16"] : _COL["Qr_p84"] + 1] = self._qr_percentiles(
            grid, sums[:, 4] / w_div, good, q_min, q_max, c_star, c_w, c_q
        )

        # best fit, evidence (as the CPU kernel), entropy drops, branch mass, flags
        res[:, _COL["chi2min"]] = chi2_best
        diag = torch.diagonal(whiten, dim1=1, dim2=2)
        used = diag > 0.0
        log_det = torch.where(used, torch.log(torch.where(used, diag, 1.0)), 0.0).sum(dim=1)
        res[:, _COL["log_evidence"]] = torch.where(
            good,
            best
            + torch.log(w_div)
            + log_det
            - 0.5 * used.sum(dim=1) * LOG_2PI
            + 0.5 * (LOG_2PI - torch.log(q))
            + log_prior_norm,
            math.nan,
        )
        # minus the posterior entropies; predict adds the prior's (add_prior_entropy)
        res[:, _COL["Mr_entropy_drop"]] = -_entropy_bits(mr_mass)
        res[:, _COL["FeH_entropy_drop"]] = -_entropy_bits(feh_mass)
        res[:, _COL["Ar_entropy_drop"]] = torch.where(
            n_in > 1, torch.log2(n_in.to(f64)) - _entropy_bits(inside), 0.0
        )
        p_giant = sums[:, 1] / w_div
        res[:, _COL["P_giant"]] = p_giant
        flags = torch.zeros(n_s, dtype=torch.int64, device=dev)
        flags |= torch.where(chi2_best > chi2_poor[used.sum(dim=1)], Flags.POOR_FIT, 0)
        flags |= torch.where((bb_fit < -1.0) | (bb_fit > amax_flat + 1.0), Flags.AR_AT_BOUND, 0)
        flags |= torch.where(torch.minimum(p_giant, 1.0 - p_giant) > 0.05, Flags.TWO_BRANCH, 0)
        for name, axis, half_cell, bit in (
            ("FeH", grid.feh_axis, grid.feh_half, Flags.FEH_EDGE),
            ("Mr", grid.mr_axis, grid.mr_half, Flags.MR_EDGE),
        ):
            p50 = res[:, _COL[f"{name}_p50"]]
            near = (p50 < axis[0] + 3 * half_cell) | (p50 > axis[-1] - 3 * half_cell)
            flags |= torch.where(near, bit, 0)
        # no usable weight: POOR_FIT and no estimates (as the CPU kernel)
        res = torch.where(good[:, None], res, math.nan)
        flags = torch.where(good, flags, Flags.POOR_FIT)
        return res, flags

    def _ar_inside(
        self,
        a_hist: torch.Tensor,
        n_a: torch.Tensor,
        n_in: torch.Tensor,
        n_margin: torch.Tensor,
        half: torch.Tensor,
        sigma_bins: torch.Tensor,
        smooth: torch.Tensor,
        width: int,
        size_fft: int,
        n_smooth: int,
    ) -> torch.Tensor:
        """The smoothed A_r histogram on the bins inside [0, A_max], (n_stars, max n_in).

        The smoothing is a circular FFT convolution long enough that no wrapped term reaches
        the inside bins; stars without smoothing use the histogram itself. Inside bins that no
        deposit reaches within the kernel are exactly zero (the CPU kernel's fallback test
        relies on that).
        """
        dev = a_hist.device
        n_s, size_a = a_hist.shape
        m_in = torch.arange(width, device=dev)
        index = (n_margin[:, None] + m_in).clamp(max=size_a - 1)
        in_row = m_in < n_in[:, None]
        inside = torch.where(in_row, a_hist.gather(1, index), 0.0)
        if not n_smooth:
            return inside
        n_fft = _pow2_at_least(size_fft)
        rows = max(int(self.memory_budget // (n_fft * _FFT_ROW_BYTES)), 1)
        t = torch.arange(n_fft, device=dev)
        offset = torch.where(t <= n_fft // 2, t, t - n_fft).to(torch.float64)
        for start in range(0, n_s, rows):
            sl = slice(start, start + rows)
            # normalised, so that the far points' exact masses (_far_deposits) add up with it
            sb = torch.where(smooth[sl], sigma_bins[sl], 1.0)[:, None]
            kern = torch.exp(-0.5 * (offset / sb) ** 2)
            kern = torch.where(offset.abs() <= half[sl, None], kern, 0.0)
            kern = kern / kern.sum(dim=1, keepdim=True)
            spec = torch.fft.rfft(a_hist[sl], n=n_fft) * torch.fft.rfft(kern)
            conv = torch.fft.irfft(spec, n=n_fft).clamp(min=0.0)
            cum = torch.nn.functional.pad(a_hist[sl].cumsum(dim=1), (1, 0))
            lo = (n_margin[sl] - half[sl]).clamp(min=0)
            hi = torch.minimum(n_margin[sl] + n_in[sl] + half[sl], n_a[sl])
            reach = cum.gather(1, hi[:, None]) - cum.gather(1, lo[:, None]) > 0.0
            smoothed = conv.gather(1, index[sl].clamp(max=n_fft - 1))
            smoothed = torch.where(in_row[sl] & reach, smoothed, 0.0)
            inside[sl] = torch.where(smooth[sl, None], smoothed, inside[sl])
        return inside

    def _qr_percentiles(
        self,
        grid: _Grid,
        var_q: torch.Tensor,
        good: torch.Tensor,
        q_min: torch.Tensor,
        q_max: torch.Tensor,
        c_star: torch.Tensor,
        c_w: torch.Tensor,
        c_q: torch.Tensor,
    ) -> torch.Tensor:
        """16/50/84 percentiles of Q_r = M_r + A_r per star (the CPU kernel's histogram).

        The CPU kernel smooths by three box passes of ``n_gauss`` bins and one of the M_r cell
        (``n_cell`` bins); the histogram's margins hold the whole smoothing kernel, so the
        passes are one circular convolution, applied here through the boxes' exact DFTs.
        """
        dev = var_q.device
        q_min = torch.where(good, q_min, 0.0)
        q_max = torch.where(good, q_max, 0.0)
        sigma_q = torch.sqrt(var_q)
        mr_half = grid.mr_half
        h_q = torch.maximum(
            torch.clamp(sigma_q / 4.0, min=0.002).clamp(max=0.02), (q_max - q_min) / 1500.0
        )
        n_cell = torch.ones_like(q_min, dtype=torch.int64)
        if mr_half > 0.0:  # an odd number of bins per M_r cell keeps the boxes centred
            n_cell = torch.ceil(2.0 * mr_half / h_q).long()
            n_cell = n_cell + 1 - n_cell % 2
            h_q = 2.0 * mr_half / n_cell
        q_lo = q_min - 4.0 * sigma_q - mr_half - 2 * h_q
        q_hi = q_max + 4.0 * sigma_q + mr_half + 2 * h_q
        n_q = torch.ceil((q_hi - q_lo) / h_q)
        capped = n_q > MAX_HIST_BINS
        h_q = torch.where(capped, (q_hi - q_lo) / MAX_HIST_BINS, h_q)
        n_q = torch.where(capped, MAX_HIST_BINS, n_q).long()
        n_gauss = torch.round(torch.sqrt(4.0 * (sigma_q / h_q) ** 2 + 1.0)).long()
        n_gauss = n_gauss + 1 - n_gauss % 2
        support = 3 * (n_gauss // 2) + n_cell // 2  # zero padding beyond it: no wrapping
        size_q, max_support = (int(x) for x in torch.stack([n_q.max(), support.max()]).tolist())
        n_fft = _pow2_at_least(size_q + max_support)
        # stars in chunks that keep the histograms and their spectra within the budget; the
        # candidates are sorted by star, so each chunk's candidates are one slice
        n_s = len(q_min)
        rows = max(int(self.memory_budget // (n_fft * _FFT_ROW_BYTES)), 1)
        starts = torch.arange(0, n_s + rows, rows, device=dev).clamp(max=n_s)
        slices = torch.searchsorted(c_star, starts).tolist()
        m = torch.arange(size_q, device=dev)
        out = torch.empty((n_s, len(LEVELS)), dtype=torch.float64, device=dev)
        for i, start in enumerate(range(0, n_s, rows)):
            sl = slice(start, min(start + rows, n_s))
            cs = slice(slices[i], slices[i + 1])
            star = c_star[cs]
            q_hist = torch.zeros((sl.stop - start, size_q), dtype=torch.float64, device=dev)
            _deposit(q_hist, star - start, (c_q[cs] - q_lo[star]) / h_q[star], c_w[cs], n_q[star])
            transfer = _box_transfer(n_gauss[sl], n_fft) ** 3 * _box_transfer(n_cell[sl], n_fft)
            smoothed = torch.fft.irfft(torch.fft.rfft(q_hist, n=n_fft) * transfer, n=n_fft)
            smoothed = torch.where(m < n_q[sl, None], smoothed[:, :size_q].clamp(min=0.0), 0.0)
            out[sl] = _density_percentiles(smoothed, q_lo[sl], h_q[sl], n_q[sl].to(torch.float64))
        return out


def make_estimator(
    locus: Locus,
    prior: Any = None,
    config: BayesConfig | None = None,
    device: str | torch.device = "cpu",
    dust_profile: DustProfile | None = None,
) -> BayesEstimator | TorchBayesEstimator:
    """The Bayesian estimator for ``device``: the numba :class:`~photodist.bayes.BayesEstimator`
    on the CPU cores for ``"cpu"``, :class:`TorchBayesEstimator` on a CUDA device (``"cuda"``,
    ``"cuda:N"``); ``"auto"`` takes CUDA when a device is present. Both give the same
    posterior summaries and columns; on CPUs the numba kernel is the faster."""
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        return BayesEstimator(locus, prior, config, dust_profile=dust_profile)
    return TorchBayesEstimator(locus, prior, config, device=resolved, dust_profile=dust_profile)
