"""A patch's extinction against distance, learned from its stars: an A_r prior for the
Bayesian estimator.

The paper's A_r prior is flat on [0, 1.3 A_map + 0.1]. At high latitude, where the dust lies
in front of nearly every star, that interval is several times wider than the spread of the
stars' true A_r, so the A_r posteriors, and through the A_r-M_r degeneracy the M_r posteriors,
come out wider than their errors (``docs/benchmarks.md``). Dust, however, only accumulates
along a sightline: within a patch, A_r is close to a non-decreasing function of distance.
Line-of-sight dust mapping (e.g. Green et al. 2014, ApJ 783, 114) infers that function
from the stars themselves; this module does the same in its simplest form:

* the prior of a star's A_r at locus point j is a normal N(A_map g(x), s^2) times the flat
  prior on [A_min, A_max], where x = r - M_r,j = DM + A_r is the apparent distance modulus of
  the point, g a non-decreasing piecewise-linear profile (a fraction of the star's dust-map
  value A_map; in mag when the catalogue has no dust map) and s one width per patch;
* :func:`fit_dust_profile` estimates g and s on a subsample of the patch by maximum
  likelihood in a Gaussian hierarchical model. Each star's A_r likelihood is approximated by
  a normal: its posterior with the current prior (first the flat one) divided by that prior.
  Then a_i ~ N(A_map,i g(x_i), var_i + s^2); g comes from weighted isotonic bin means, s from
  a one-dimensional maximisation, alternately, and the estimator is rerun with the new prior
  until g and s settle (a plain EM update of s converges very slowly when s is much smaller
  than the per-star widths, which is the usual case at high latitude).
* dividing a narrow prior out of a posterior is unstable, so that first stage keeps s above
  :data:`MIN_SIGMA` (and :data:`MIN_SIGMA_FRACTION` of the map), and the Gaussian
  approximation of each star's A_r likelihood biases s when the likelihoods are much wider
  than s. The final width therefore maximises the exact marginal likelihood of the stars the
  model describes, the sum of the estimator's ``log_evidence`` (type-II maximum likelihood,
  g's shape kept), over s >= :data:`EVIDENCE_MIN_SIGMA` (and
  :data:`EVIDENCE_MIN_SIGMA_FRACTION` of the map: no dust map predicts A_r to better than a
  few per cent), and so does an overall factor on g (the first stage's bin means of
  approximate likelihoods, without the two-branch stars, run low: a few per cent where A_r
  rises over the whole sightline, ~20 % for single-epoch SDSS colours). The factor's own
  uncertainty (the evidence's curvature) joins the width in quadrature.
* the profile is kept only if it raises the summed evidence over the flat prior's by more
  than ln(n)/2 per free parameter (the Bayesian information criterion).

The estimator marginalises the Gaussian factor in closed form (:class:`BayesEstimator`
``dust_profile``): per locus point the normal likelihood in A_r times the normal prior is
again normal, truncated to [A_min, A_max]. The profile's shape comes from the stars (a map
only sets its scale across the patch), so stars nearer than the dust keep low A_r.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression, minimize_scalar
from scipy.special import ndtr

from photodist.bands import Photometry
from photodist.bayes import BayesConfig, BayesEstimator, Flags
from photodist.locus import Locus

#: Smallest width (mag) of the first, approximate stage of the fit...
MIN_SIGMA = 0.01
#: ... and, with a dust map, the smallest fraction of the patch's median map value.
MIN_SIGMA_FRACTION = 0.1
#: Smallest width of the final, exact-evidence fit (mag, and fraction of the median map).
EVIDENCE_MIN_SIGMA = 0.003
EVIDENCE_MIN_SIGMA_FRACTION = 0.03
#: Range of the overall factor on the first stage's profile that the evidence fits (its
#: bin means of approximate likelihoods run low when those are wide, e.g. by 20-35 % for
#: single-epoch SDSS colours at high latitude).
LEVEL_RANGE = (0.25, 4.0)
#: Step in log level of the evidence's curvature (the level's uncertainty).
LEVEL_STEP = 0.05
#: Stars used by the fit (a random subsample of the usable ones when there are more)...
FIT_STARS = 5000
#: ... and by its exact-evidence stage (width and level).
EVIDENCE_STARS = 2500
#: Fewest well-fitted stars a profile is fitted from.
MIN_FIT_STARS = 200
#: Stars per profile knot (bins of apparent distance modulus), and the most knots.
STARS_PER_KNOT = 120
MAX_KNOTS = 30
#: Rows whose flags include any of these bits do not inform the profile's first stage...
_EXCLUDED = Flags.POOR_FIT | Flags.TWO_BRANCH | Flags.NO_R | Flags.TOO_FEW_COLORS
#: ... and these not its evidence (stars the model does not describe).
_MISFIT = Flags.POOR_FIT | Flags.NO_R | Flags.TOO_FEW_COLORS


@dataclass(frozen=True)
class DustProfile:
    """Gaussian A_r prior whose mean follows apparent distance modulus x = r - M_r.

    Attributes
    ----------
    knots_x
        Apparent distance moduli of the knots (ascending, mag).
    knots_mu
        Profile g at the knots (non-decreasing); linear in between, constant beyond the ends.
        With ``relative``, the prior mean of a star's A_r is g times its dust-map value (the
        profile then follows the map's variation across the patch); otherwise g in mag.
    sigma
        Prior width (mag), the same for every star of the patch.
    relative
        Whether g is a fraction of the dust-map value (catalogues with a dust-map column).
    """

    knots_x: np.ndarray
    knots_mu: np.ndarray
    sigma: float
    relative: bool = False

    def __post_init__(self) -> None:
        x = np.asarray(self.knots_x, dtype=float)
        mu = np.asarray(self.knots_mu, dtype=float)
        if x.ndim != 1 or x.shape != mu.shape or x.size == 0:
            raise ValueError("knots_x and knots_mu must be 1-d arrays of the same, non-zero size")
        if not (np.isfinite(x).all() and np.isfinite(mu).all()) or np.any(np.diff(x) <= 0):
            raise ValueError("knots must be finite, with strictly ascending knots_x")
        if np.any(np.diff(mu) < 0.0):
            raise ValueError(f"knots_mu must be non-decreasing, got {mu.tolist()}")
        if not float(self.sigma) > 0.0:
            raise ValueError(f"sigma must be positive, got {self.sigma!r}")
        object.__setattr__(self, "knots_x", x)
        object.__setattr__(self, "knots_mu", mu)
        object.__setattr__(self, "sigma", float(self.sigma))

    def mean_at(self, x: np.ndarray, dust: np.ndarray | None = None) -> np.ndarray:
        """Prior mean of A_r (mag) at apparent distance moduli ``x``; a relative profile
        needs the stars' dust-map values ``dust`` (NaN where absent)."""
        g = np.interp(np.asarray(x, dtype=float), self.knots_x, self.knots_mu)
        return g * self.scales(dust, np.shape(g))

    def log_mass(self, centre: np.ndarray, lower: float, upper: float) -> np.ndarray:
        """log of the mass of N(``centre``, sigma^2) inside [``lower``, ``upper``]: the prior
        given a locus point is that normal restricted to the flat prior's interval and
        divided by this mass."""
        lo = (lower - np.asarray(centre, dtype=float)) / self.sigma
        hi = (upper - np.asarray(centre, dtype=float)) / self.sigma
        # the side of the median with the smaller tail, for precision
        mass = np.where(lo > 0.0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
        return np.log(np.maximum(mass, 1e-300))

    def scales(self, dust: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        """Per-star factor of g (:func:`map_scales` for this profile)."""
        return map_scales(dust, self.relative, shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (see :meth:`from_dict`)."""
        return {
            "knots_x": [float(v) for v in self.knots_x],
            "knots_mu": [float(v) for v in self.knots_mu],
            "sigma": self.sigma,
            "relative": self.relative,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DustProfile:
        """Inverse of :meth:`to_dict`."""
        return cls(
            np.asarray(data["knots_x"]),
            np.asarray(data["knots_mu"]),
            data["sigma"],
            bool(data.get("relative", False)),
        )


def map_scales(dust: np.ndarray | None, relative: bool, shape: tuple[int, ...]) -> np.ndarray:
    """Per-star factor of a profile's g: with ``relative``, the dust-map value (NaN where there
    is none, which leaves that star the flat prior alone), else 1."""
    if not relative:
        return np.ones(shape)
    if dust is None:
        return np.full(shape, np.nan)
    dust = np.broadcast_to(np.asarray(dust, dtype=float), shape)
    return np.where(np.isfinite(dust) & (dust > 0.0), dust, np.nan)


def _usable(result: Any) -> np.ndarray:
    """Rows whose estimates may inform the profile."""
    flags = result["flags"].to_numpy()
    finite = np.isfinite(result[["Mr_mean", "Ar_mean", "Ar_std"]].to_numpy()).all(axis=1)
    return finite & (flags & _EXCLUDED == 0)


def _isotonic_profile(
    x: np.ndarray, value: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing, non-negative piecewise-linear profile through weighted bin means of
    ``value`` against ``x`` (bins of :data:`STARS_PER_KNOT` stars, at most
    :data:`MAX_KNOTS`): extinction grows with distance and is never negative."""
    n_knots = int(np.clip(x.size // STARS_PER_KNOT, 1, MAX_KNOTS))
    bins = np.array_split(np.argsort(x, kind="stable"), n_knots)
    knots_x = np.array([np.median(x[b]) for b in bins])
    totals = np.array([weight[b].sum() for b in bins])
    means = np.array([(weight[b] * value[b]).sum() for b in bins]) / totals
    knots_mu = np.maximum(isotonic_regression(means, weights=totals, increasing=True).x, 0.0)
    knots_x, first = np.unique(knots_x, return_index=True)  # ties in x merge
    return knots_x, knots_mu[first]


def _neg_log_likelihood(log_sigma: float, var_like: np.ndarray, dev2: np.ndarray) -> float:
    """Twice the negative log likelihood of squared deviations ``dev2`` from the profile,
    each of variance ``var_like`` + sigma^2 (constants dropped)."""
    total = var_like + np.exp(2.0 * log_sigma)
    return float(np.sum(np.log(total) + dev2 / total))


def _profile_step(
    x: np.ndarray,
    scale: np.ndarray,
    a_like: np.ndarray,
    var_like: np.ndarray,
    min_sigma: float,
    n_rounds: int = 20,
    relative: bool = False,
) -> DustProfile:
    """Maximum-likelihood profile for Gaussian per-star A_r likelihoods N(a_like, var_like):
    A_r ~ N(scale g(x), s^2) with g non-decreasing, so a_like ~ N(scale g(x), var_like + s^2).

    Alternates g (weighted isotonic bin means of a_like / scale) and s (one-dimensional
    maximisation of the marginal likelihood).
    """
    sigma = max(float(np.sqrt(np.median(var_like))), min_sigma)
    knots_x = knots_mu = np.zeros(1)
    for _ in range(n_rounds):
        total = var_like + sigma**2
        knots_x, knots_mu = _isotonic_profile(x, a_like / scale, scale**2 / total)
        dev2 = (a_like - scale * np.interp(x, knots_x, knots_mu)) ** 2

        best = minimize_scalar(
            _neg_log_likelihood,
            args=(var_like, dev2),
            bounds=(np.log(min_sigma), np.log(3.0)),
            method="bounded",
        )
        new_sigma = float(np.exp(best.x))
        if abs(new_sigma - sigma) < 1e-4:
            sigma = new_sigma
            break
        sigma = new_sigma
    return DustProfile(knots_x, knots_mu, max(sigma, min_sigma), relative)


def fit_dust_profile(
    photometry: Photometry,
    locus: Locus,
    prior: Any = None,
    config: BayesConfig | None = None,
    *,
    max_stars: int = FIT_STARS,
    max_iter: int = 10,
    tolerance: float = 0.002,
    min_sigma: float = MIN_SIGMA,
    seed: int = 0,
) -> tuple[DustProfile, dict[str, Any]]:
    """Fit a patch's dust profile: its shape and a first width by iterated Gaussian
    approximations, then the width by exact maximum likelihood (see the module docstring).

    Parameters
    ----------
    photometry
        Stars of one patch (a random subsample of ``max_stars`` is used when there are more).
    locus, prior, config
        As for :class:`photodist.bayes.BayesEstimator`.
    max_stars
        Most stars used.
    max_iter
        Most maximisation steps.
    tolerance
        Stop when no knot mean and not the width moved by more than this (mag).
    min_sigma
        Smallest width of the first stage (mag); with a dust map, at least
        :data:`MIN_SIGMA_FRACTION` of the median map value.
    seed
        Seed of the subsample.

    Returns
    -------
    profile : DustProfile
    info : dict
        ``n_stars`` (stars fitted), ``iterations``, ``converged`` (of the first stage),
        ``em_sigma`` (its width, before the exact-evidence width), ``level_sigma`` (the
        relative uncertainty of the profile's level, added to the width), ``log_evidence_gain``
        (mean log evidence per fitted star with the profile less that with the flat prior;
        natural log) and ``n_params`` (the profile's free parameters: distinct levels, the
        width and the overall factor).

    Raises
    ------
    ValueError
        If ``max_iter`` < 1; if fewer than :data:`MIN_FIT_STARS` stars have a usable
        estimate; or if the profile does not raise the stars' summed log evidence above
        the flat prior's by more than ln(n) / 2 per free parameter (the Bayesian
        information criterion: the data do not support it).
    """
    if isinstance(max_iter, bool) or int(max_iter) < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter!r}")
    n = len(photometry)
    rows = np.arange(n)
    if n > max_stars:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_stars, replace=False))
    sample = photometry.subset(rows)
    r = np.asarray(sample.r, dtype=float)
    dust = None if sample.dust is None else np.asarray(sample.dust, dtype=float)
    scale = map_scales(dust, True, r.shape)  # the map values, NaN where unusable
    relative = bool(np.isfinite(scale).any())
    width_floor = EVIDENCE_MIN_SIGMA
    map_median = 1.0  # a profile change of 1 in g is this many mag
    if relative:
        map_median = float(np.nanmedian(scale))
        min_sigma = max(min_sigma, MIN_SIGMA_FRACTION * map_median)
        width_floor = max(width_floor, EVIDENCE_MIN_SIGMA_FRACTION * map_median)
    else:
        scale = map_scales(dust, False, r.shape)
    profile: DustProfile | None = None
    converged = False
    iterations = 0
    n_fit = 0
    while iterations < max_iter:
        iterations += 1
        result = BayesEstimator(locus, prior, config, dust_profile=profile).predict(sample)
        if profile is None:
            flat_evidence = result["log_evidence"].to_numpy()
            flat_flags = result["flags"].to_numpy()
        x = r - result["Mr_mean"].to_numpy()
        good = _usable(result) & np.isfinite(x) & np.isfinite(scale)
        # each star's A_r likelihood as a normal: its posterior with the current prior divided
        mean = result["Ar_mean"].to_numpy()
        precision = 1.0 / np.maximum(result["Ar_std"].to_numpy(), 1e-6) ** 2
        info = precision.copy()
        if profile is not None:
            info -= 1.0 / profile.sigma**2
            mean = (mean * precision - profile.mean_at(x, dust) / profile.sigma**2) / info
        good &= info > 1e-6
        n_fit = int(good.sum())
        if n_fit < MIN_FIT_STARS:
            raise ValueError(
                f"only {n_fit} stars with a usable estimate (at least {MIN_FIT_STARS} needed)"
            )
        new = _profile_step(
            x[good], scale[good], mean[good], 1.0 / info[good], min_sigma, relative=relative
        )
        if profile is not None:
            grid = np.union1d(new.knots_x, profile.knots_x)
            # in mag: a relative profile's change times the typical map value
            shift = np.max(np.abs(new.mean_at(grid, 1.0) - profile.mean_at(grid, 1.0)))
            shift *= map_median
            converged = bool(shift < tolerance and abs(new.sigma - profile.sigma) < tolerance)
        profile = new
        if converged:
            break
    assert profile is not None
    em_sigma = profile.sigma
    # every star the model describes (two-branch ones included: leaving them out biased the
    # level low by ~20 % on single-epoch SDSS colours)
    rows = np.flatnonzero(np.isfinite(flat_evidence) & (flat_flags & _MISFIT == 0))
    if rows.size > EVIDENCE_STARS:  # two parameters need fewer stars than the shape
        rows = np.sort(np.random.default_rng(seed + 1).choice(rows, EVIDENCE_STARS, False))
    profile, log_evidence, level_sigma = _evidence_width(
        sample, locus, prior, config, profile, rows, width_floor
    )
    gain = log_evidence - float(np.sum(flat_evidence[rows]))
    # Schwarz (BIC): each free parameter (distinct profile levels, the width, the overall
    # factor) must buy ln(n) / 2 nats
    n_params = np.unique(profile.knots_mu).size + 2
    needed = 0.5 * n_params * np.log(max(rows.size, 2))
    if not gain > needed:
        raise ValueError(
            f"the fitted profile does not describe the stars better than the flat prior "
            f"(log evidence {gain:+.1f} over {rows.size} stars, {needed:.1f} needed for "
            f"{n_params} parameters)"
        )
    info = {"n_stars": n_fit, "iterations": iterations, "converged": converged}
    return profile, info | {
        "em_sigma": em_sigma,
        "level_sigma": level_sigma,
        "log_evidence_gain": gain / max(rows.size, 1),
        "n_params": n_params,
    }


def fit_profile_record(
    photometry: Photometry, locus: Locus, prior: Any, config: BayesConfig | None, seed: int = 0
) -> tuple[DustProfile | None, dict[str, Any]]:
    """:func:`fit_dust_profile`, or None where it fails, with the record a run summary keeps
    (``fitted`` and the profile and fit information, or ``reason``; read back by
    :func:`photodist.pipeline.used_dust_profile`)."""
    try:
        profile, info = fit_dust_profile(photometry, locus, prior, config, seed=seed)
    except ValueError as exc:
        return None, {"fitted": False, "reason": str(exc)}
    return profile, {"fitted": True, **profile.to_dict(), **info}


def _evidence_width(
    sample: Photometry,
    locus: Locus,
    prior: Any,
    config: BayesConfig | None,
    profile: DustProfile,
    rows: np.ndarray,
    floor: float,
) -> tuple[DustProfile, float, float]:
    """The profile with the width, then the overall level (a factor in :data:`LEVEL_RANGE` on
    g), then the width again that maximise the summed log evidence of the stars ``rows`` (exact
    marginal likelihood; the profile's shape kept), its width widened by the level's own
    uncertainty; that sum; and the level's relative uncertainty."""
    subset = sample.subset(rows)

    def negative_log_evidence(level: float, log_sigma: float) -> float:
        trial = DustProfile(
            profile.knots_x, level * profile.knots_mu, float(np.exp(log_sigma)), profile.relative
        )
        result = BayesEstimator(locus, prior, config, dust_profile=trial).predict(subset)
        return -float(np.nansum(result["log_evidence"].to_numpy()))

    bounds = (np.log(floor), np.log(3.0))
    options = {"xatol": 0.02}
    best = minimize_scalar(
        lambda v: negative_log_evidence(1.0, v), bounds=bounds, method="bounded", options=options
    )
    log_sigma = float(best.x)
    fixed = minimize_scalar(
        lambda v: negative_log_evidence(float(np.exp(v)), log_sigma),
        bounds=(np.log(LEVEL_RANGE[0]), np.log(LEVEL_RANGE[1])),
        method="bounded",
        options={"xatol": 0.002},
    )
    level = float(np.exp(fixed.x))
    best = minimize_scalar(
        lambda v: negative_log_evidence(level, v), bounds=bounds, method="bounded", options=options
    )
    width = float(np.exp(best.x))
    # the level is known only to ~1/sqrt(curvature) of the log evidence in log level (Laplace);
    # the width takes that uncertainty in quadrature, so the prior marginalises over it
    step = LEVEL_STEP
    curvature = (
        negative_log_evidence(level * np.exp(step), best.x)
        + negative_log_evidence(level * np.exp(-step), best.x)
        - 2.0 * float(best.fun)
    ) / step**2
    level_sigma = 1.0 / np.sqrt(curvature) if curvature > 0.0 else 0.0
    typical = level * float(np.median(np.abs(profile.knots_mu)))
    if profile.relative:
        typical *= float(np.nanmedian(map_scales(subset.dust, True, (len(subset),))))
    width = float(np.hypot(width, level_sigma * typical))
    fitted = DustProfile(profile.knots_x, level * profile.knots_mu, width, profile.relative)
    return fitted, -float(best.fun), float(level_sigma)
