"""Full marginal posteriors of single stars, for plots and inspection.

The estimator (:class:`photodist.bayes.BayesEstimator`) keeps only summaries per star. For a few
stars, :func:`star_posterior` evaluates the same posterior on the whole locus grid, in closed
form and in float64, and returns its marginals: the joint ([Fe/H], M_r) mass, the M_r and
[Fe/H] masses, and the A_r and Q_r = M_r + A_r densities on fine grids. With the inverse colour
covariance C^-1 (:func:`photodist.bayes.adjacent_covariance`, error floor on the variances)::

    q = R^T C^-1 R,  b_j = R^T C^-1 (c - L_j),  A*_j = b_j / q,
    chi2min_j = (c - L_j)^T C^-1 (c - L_j) - b_j^2 / q,
    weight_j ∝ p_j exp(-chi2min_j / 2) [Φ((A_max - A*_j) √q) - Φ(-A*_j √q)],

and given j, A_r is N(A*_j, 1/q) truncated to the prior's [A_min, A_max].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import special

from photodist.bands import Photometry
from photodist.bayes import (
    BayesConfig,
    PriorGrid,
    _log_ndtr_diff,
    a_bounds_for,
    adjacent_covariance,
)
from photodist.locus import Locus

if TYPE_CHECKING:
    from photodist.dust_profile import DustProfile

#: Points below the best by more than this (e^-30) are left out of the densities.
NEGLIGIBLE_LOG_WEIGHT = 30.0
#: Nodes of the A_r and Q_r density grids: at least this many, and finer where the
#: posterior's width asks (NODES_PER_SIGMA per conditional A_r width), up to MAX_DENSITY_NODES
DENSITY_NODES = 400
NODES_PER_SIGMA = 16
MAX_DENSITY_NODES = 20_000
#: points per block of the densities' (points x nodes) temporaries
_BLOCK = 256
LEVELS = (0.16, 0.5, 0.84)


@dataclass
class StarPosterior:
    """Marginal posteriors of one star.

    Attributes
    ----------
    row
        The star's row in the photometry.
    feh, mr
        The grid axes ([Fe/H] in dex, M_r in mag).
    joint
        Posterior mass on the grid, shape (n_feh, n_mr), summing to 1.
    feh_mass, mr_mass
        Its marginals.
    ar, ar_density
        A_r nodes (mag) spanning the prior's [A_min, A_max] and the posterior density there.
    qr, qr_density
        Q_r = M_r + A_r nodes and density (each M_r grid point a uniform cell of the grid step).
    chi2min
        Best-fit chi2 over the grid, A_r within its bounds (as the estimator's column).
    """

    row: int
    feh: np.ndarray
    mr: np.ndarray
    joint: np.ndarray
    feh_mass: np.ndarray
    mr_mass: np.ndarray
    ar: np.ndarray
    ar_density: np.ndarray
    qr: np.ndarray
    qr_density: np.ndarray
    chi2min: float

    def percentiles(self, name: str) -> np.ndarray:
        """16/50/84 percentiles of ``"Mr"``, ``"FeH"``, ``"Ar"`` or ``"Qr"``, with the
        estimator's conventions (grid points as uniform cells; densities interpolated)."""
        if name not in ("Mr", "FeH", "Ar", "Qr"):
            raise ValueError(f"no marginal {name!r}; choose Mr, FeH, Ar or Qr")
        if name in ("Mr", "FeH"):
            values, mass = (self.mr, self.mr_mass) if name == "Mr" else (self.feh, self.feh_mass)
            half = 0.5 * (values[1] - values[0]) if len(values) > 1 else 0.0
            edges = np.concatenate([values - half, [values[-1] + half]])
            cdf = np.concatenate([[0.0], np.cumsum(mass)])
            return np.interp(LEVELS, cdf / cdf[-1], edges)
        nodes, density = (self.ar, self.ar_density) if name == "Ar" else (self.qr, self.qr_density)
        cdf = np.concatenate(
            [[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(nodes))]
        )
        return np.interp(LEVELS, cdf / cdf[-1], nodes)

    def save(self, path: str | Path) -> Path:
        """Write the posterior as a ``.npz`` file (plain arrays; load with ``np.load``)."""
        path = Path(path)
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in vars(self).items()})
        return path


def _blocks(n: int) -> list[slice]:
    """Slices of ``_BLOCK`` points covering ``n`` (bounded temporaries)."""
    return [slice(start, start + _BLOCK) for start in range(0, n, _BLOCK)]


def _with_profile(
    profile: DustProfile | None,
    one: Photometry,
    locus: Locus,
    a_min: float,
    q: float,
    astar: np.ndarray,
    sigma: float,
    width: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Each point's normal likelihood in A_r, N(A*_j, sigma^2), times a dust profile's
    normal prior restricted to [0, ``width``] (A_r less A_min) and normalised there: the log
    of their overlap, and the mean and width of their product (again normal). Without a
    profile (or a map value for a relative one): 0, A*_j and sigma."""
    if profile is None or not np.isfinite(profile.scales(one.dust, (1,))[0]):
        return np.zeros_like(astar), astar, sigma
    x = np.tile(one.r[0] - locus.mr, locus.shape[0])
    centre = profile.mean_at(x, None if one.dust is None else one.dust[0]) - a_min
    kappa = q * profile.sigma**2
    log_overlap = -0.5 * (astar - centre) ** 2 / (1.0 / q + profile.sigma**2)
    log_overlap -= profile.log_mass(centre, 0.0, width)
    return (
        log_overlap,
        (kappa * astar + centre) / (1.0 + kappa),
        sigma * np.sqrt(kappa / (1 + kappa)),
    )


def star_posterior(
    photometry: Photometry,
    row: int,
    locus: Locus,
    prior: Any = None,
    config: BayesConfig | None = None,
    dust_profile: DustProfile | None = None,
) -> StarPosterior:
    """Marginal posteriors of star ``row`` (see the module docstring).

    ``prior`` is a :class:`photodist.bayes.PriorGrid`, a prior map or None (flat), as for
    :class:`photodist.bayes.BayesEstimator`. Raises ``ValueError`` for a star the estimator
    gives no estimate (no r magnitude or fewer than two usable colours).
    """
    config = config or BayesConfig()
    grid = PriorGrid.flat(locus) if prior is None else PriorGrid.from_prior(prior, locus)
    one = photometry.subset(np.array([row]))
    colors, errors = one.colors[0], one.color_errors[0]
    used = np.isfinite(colors) & np.isfinite(errors) & (errors > 0)
    if not np.isfinite(one.r[0]) or used.sum() < 2:
        raise ValueError("no r magnitude or fewer than two usable colours: no estimate")
    cov = np.diag(np.where(used, errors, 1.0) ** 2 + config.error_floor**2)
    adjacent = adjacent_covariance(one, config)[0]
    for k in np.flatnonzero(used[:-1] & used[1:]):
        cov[k, k + 1] = cov[k + 1, k] = adjacent[k]
    inv_cov = np.linalg.inv(cov[np.ix_(used, used)])
    a_min, a_max = (float(bound[0]) for bound in a_bounds_for(one, config))
    width = max(a_max - a_min, 1e-6)

    red = one.band_set.reddening_vector()[used]
    resid = (
        colors[used] - a_min * red - locus.colors_for(one.band_set).reshape(-1, len(used))[:, used]
    )
    weighted = resid @ inv_cov
    q = float(red @ inv_cov @ red)
    sigma = 1.0 / np.sqrt(q)
    astar = weighted @ red / q
    chi2min = np.einsum("jk,jk->j", weighted, resid) - q * astar**2
    # the best fit keeps A_r within its bounds (as the estimator's chi2min column)
    outside = astar - np.clip(astar, 0.0, width)
    best_fit = float(np.min(chi2min + q * outside**2))
    log_prior = grid.log_prior[grid.bin_index(one.r)[0]].ravel()
    log_overlap, astar, sigma = _with_profile(
        dust_profile, one, locus, a_min, q, astar, sigma, width
    )
    log_prior = log_prior + log_overlap
    log_mass = np.vectorize(_log_ndtr_diff, otypes=[float])(-astar / sigma, (width - astar) / sigma)
    log_w = log_prior - 0.5 * chi2min + log_mass
    log_w -= np.max(log_w)
    weight = np.where(log_w > -NEGLIGIBLE_LOG_WEIGHT, np.exp(log_w), 0.0)
    weight /= weight.sum()
    joint = weight.reshape(locus.shape)

    # A_r | j: N(A*_j, sigma^2) truncated to [0, width] (then shifted by A_min), sampled
    # exactly at nodes fine enough for the conditional width
    keep = np.flatnonzero(weight > 0.0)
    mass = np.exp(log_mass[keep])
    centre = astar[keep]
    n_nodes = int(
        np.clip(np.ceil(width * NODES_PER_SIGMA / sigma) + 1, DENSITY_NODES, MAX_DENSITY_NODES)
    )
    a_nodes = np.linspace(0.0, width, n_nodes)
    ar_density = np.zeros(n_nodes)
    for part in _blocks(len(keep)):
        z = (a_nodes[None, :] - centre[part, None]) / sigma
        ar_density += (weight[keep][part] / mass[part]) @ np.exp(-0.5 * z * z)

    # Q_r = M_r + A_r: each point's truncated normal shifted by its M_r and spread uniformly
    # over its M_r cell, in closed form: (F(Q - m_lo) - F(Q - m_hi)) / step with F the
    # conditional A_r distribution function
    mr_j = np.broadcast_to(locus.mr[None, :], locus.shape).ravel()[keep] + a_min
    step = locus.mr_step if len(locus.mr) > 1 else 0.0
    q_lo = mr_j.min() - step
    q_hi = mr_j.max() + step + width
    h = min(sigma / NODES_PER_SIGMA, (q_hi - q_lo) / DENSITY_NODES)
    h = max(h, (q_hi - q_lo) / MAX_DENSITY_NODES)
    qr = q_lo + h * np.arange(int(np.ceil((q_hi - q_lo) / h)) + 1)
    qr_density = np.zeros(len(qr))
    lower = special.ndtr(-centre / sigma)

    def conditional_cdf(a: np.ndarray, part: slice) -> np.ndarray:
        inside = np.clip(a, 0.0, width)
        return (special.ndtr((inside - centre[part, None]) / sigma) - lower[part, None]) / mass[
            part, None
        ]

    for part in _blocks(len(keep)):
        a = qr[None, :] - mr_j[part, None]
        if step:
            cell = conditional_cdf(a + 0.5 * step, part) - conditional_cdf(a - 0.5 * step, part)
            qr_density += weight[keep][part] @ (cell / step)
        else:
            z = (a - centre[part, None]) / sigma
            inside = (a >= 0.0) & (a <= width)
            qr_density += (weight[keep][part] / mass[part]) @ np.where(
                inside, np.exp(-0.5 * z * z), 0.0
            )

    def normalised(nodes: np.ndarray, density: np.ndarray) -> np.ndarray:
        total = np.sum(0.5 * (density[1:] + density[:-1]) * np.diff(nodes))
        return density / total if total > 0 else density

    return StarPosterior(
        row=int(row),
        feh=locus.feh.copy(),
        mr=locus.mr.copy(),
        joint=joint,
        feh_mass=joint.sum(axis=1),
        mr_mass=joint.sum(axis=0),
        ar=a_min + a_nodes,
        ar_density=normalised(a_nodes, ar_density),
        qr=qr,
        qr_density=normalised(qr, qr_density),
        chi2min=best_fit,
    )
