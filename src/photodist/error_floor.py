"""Fit the colour-error floor of the Bayesian estimator to a catalogue (no truth needed).

The floor (added in quadrature to every colour error) stands for what the quoted errors leave
out: calibration errors, the scatter of real stars about the locus model, the step of the
posterior grid. A floor too large inflates every uncertainty of well-measured stars; one too
small makes their posteriors too narrow. Real catalogues and simulations need different values
(the fixed default of 0.02 mag suits the former only), so :func:`fit_error_floor` measures it.

Method: a posterior predictive check of the best-fit chi2. For a trial floor f, the
well-measured stars (every colour error below ``max_error``) are fitted, giving their observed
median chi2min. Each star is then replaced by its model colours (the locus at its posterior
mean M_r and [Fe/H], reddened by its posterior mean A_r) plus noise as noisy magnitudes make it
(drawn per band from the r error and the colour errors, so adjacent colours share it,
:func:`correlated_color_noise`) and an independent N(0, f^2) per colour, and fitted again:
the median chi2min of these replicas is what the data would give if the error model were
right. The smallest f at which the observed median is no longer above the replicated one
(bisection; both sides use the same noise draws, so the comparison is smooth in f) is the
catalogue's extra scatter.

The check cannot see the posterior grid's own error, since the replicas are fitted on the same
grid: a star between grid points is compared with the colours of the nearest points, a
quantisation error of RMS step/sqrt(12) per colour (:func:`grid_error`, ~0.007 mag on the
default 0.05 dex x 0.1 mag grid). The floor is the extra scatter and that grid error added in
quadrature. Without the grid term, the fitted floor of a simulated catalogue (~0.002 mag) made
the posterior means jump between neighbouring grid points, and the networks trained on them
missed their targets (``docs/benchmarks.md``). The Bayesian uncertainties themselves are best
calibrated without it, so Bayes-only runs (``photodist bayes``) fit the scatter alone
(``grid_term=False``) and the hybrid pipeline keeps the term.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from photodist.bands import BandSet, Photometry
from photodist.bayes import BayesConfig, BayesEstimator
from photodist.locus import Locus

#: Largest colour error (mag) of a star used for the fit: the floor matters for such stars only.
MAX_ERROR = 0.03
#: Fewest well-measured stars for a fit; with fewer the given fallback floor is kept.
MIN_STARS = 100
#: Largest floor considered (mag).
MAX_FLOOR = 0.05
#: Well-measured stars used by a fit ("auto") and by the error-model check of a fixed floor.
FIT_STARS = 1000
CHECK_STARS = 500


@dataclass(frozen=True)
class ErrorFloorFit:
    """Result of :func:`fit_error_floor`.

    Attributes
    ----------
    floor
        The floor to use (mag): ``scatter`` and ``grid`` in quadrature, or the fallback when
        ``fitted`` is False.
    fitted
        Whether ``floor`` was measured (False: too few well-measured stars, or a fixed floor
        whose catalogue was only checked, see ``PipelineConfig.check_error_model``).
    n_stars
        Well-measured stars used.
    observed_median, replicated_median
        Median chi2min of the stars and of their replicas at ``scatter`` (NaN when not
        fitted).
    scatter
        The catalogue's colour scatter beyond its quoted errors (mag; NaN when not fitted).
    grid
        Quantisation error of the posterior grid (mag, :func:`grid_error`; NaN when not
        fitted).
    reason
        Why the fallback was kept (empty when fitted); "at the upper bound" notes a floor
        that reached ``MAX_FLOOR``.
    """

    floor: float
    fitted: bool
    n_stars: int
    observed_median: float = float("nan")
    replicated_median: float = float("nan")
    scatter: float = float("nan")
    grid: float = float("nan")
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (NaN as None)."""
        data = dataclasses.asdict(self)
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in data.items()}


def grid_error(locus: Locus, band_set: BandSet | str) -> float:
    """Typical colour error (mag) of representing a star by the nearest posterior grid point.

    Per grid cell, the colour changes over one M_r step and one [Fe/H] step, as the RMS of a
    uniform quantisation error ((step_Mr^2 + step_FeH^2) / 12, worst colour); the median over
    cells.
    """
    colors = locus.colors_for(band_set)
    if min(colors.shape[:2]) < 2:
        return 0.0
    d_mr = np.diff(colors, axis=1)[:-1]
    d_feh = np.diff(colors, axis=0)[:, :-1]
    return float(np.median(np.sqrt(((d_mr**2 + d_feh**2) / 12.0).max(axis=-1))))


def well_measured_rows(photometry: Photometry, max_error: float = MAX_ERROR) -> np.ndarray:
    """Rows with a finite r and every colour finite with an error in (0, ``max_error``)."""
    errors = photometry.color_errors
    ok = np.isfinite(photometry.r) & np.isfinite(photometry.colors).all(axis=1)
    with np.errstate(invalid="ignore"):
        ok &= ((errors > 0) & (errors < max_error)).all(axis=1)
    return np.flatnonzero(ok)


def band_errors(photometry: Photometry) -> np.ndarray:
    """Per-band magnitude errors implied by the r error and the colour errors, shape (N, bands).

    Colours are differences of adjacent bands, so sigma(colour k)^2 = e_k^2 + e_(k+1)^2; starting
    from r the other bands follow (negative variances clipped to zero).
    """
    band_set = photometry.band_set
    ir = band_set.bands.index("r")
    var_c = np.nan_to_num(photometry.color_errors**2)
    var = np.zeros((len(photometry), len(band_set.bands)))
    var[:, ir] = np.nan_to_num(photometry.r_err**2)
    for k in range(ir - 1, -1, -1):
        var[:, k] = np.maximum(var_c[:, k] - var[:, k + 1], 0.0)
    for k in range(ir, len(band_set.bands) - 1):
        var[:, k + 1] = np.maximum(var_c[:, k] - var[:, k], 0.0)
    return np.sqrt(var)


def correlated_color_noise(photometry: Photometry, rng: np.random.Generator) -> np.ndarray:
    """Colour noise as made by noisy magnitudes: differences of independent band noises.

    Adjacent colours share a band, so their errors are correlated (as the estimator's chi2
    assumes, given the photometry's colour covariance); each colour's noise is scaled to its
    quoted error.
    """
    errors = band_errors(photometry)
    bands = rng.standard_normal(errors.shape) * errors
    noise = bands[:, :-1] - bands[:, 1:]
    implied = np.sqrt(errors[:, :-1] ** 2 + errors[:, 1:] ** 2)
    quoted = np.nan_to_num(photometry.color_errors)
    scale = np.divide(quoted, implied, out=np.ones_like(quoted), where=implied > 0)
    return noise * scale


class _Check:
    """Observed and replicated median chi2min of a fixed star sample, per trial floor."""

    def __init__(
        self,
        photometry: Photometry,
        locus: Locus,
        prior: Any,
        config: BayesConfig,
        seed: int,
    ) -> None:
        self.photometry = photometry
        self.locus = locus
        self.config = config
        # the prior is adapted to the grid once and shared by every trial estimator
        self.prior = BayesEstimator(locus, prior, config).prior if prior is not None else None
        rng = np.random.default_rng(seed)
        self.noise = correlated_color_noise(photometry, rng)
        self.floor_noise = rng.standard_normal(photometry.colors.shape)
        band_set = photometry.band_set
        self.reddening = band_set.reddening_vector()
        self.color_index = locus.color_indices(band_set)

    def medians(self, floor: float) -> tuple[float, float]:
        phot = self.photometry
        estimator = BayesEstimator(
            self.locus, self.prior, dataclasses.replace(self.config, error_floor=float(floor))
        )
        fit = estimator.predict(phot)
        model = self.locus.interpolate(fit["Mr_mean"].to_numpy(), fit["FeH_mean"].to_numpy())
        model = model[:, self.color_index] + np.outer(fit["Ar_mean"].to_numpy(), self.reddening)
        extra = float(floor) * self.floor_noise
        replica = dataclasses.replace(phot, colors=model + self.noise + extra)
        refit = estimator.predict(replica)
        return float(np.nanmedian(fit["chi2min"])), float(np.nanmedian(refit["chi2min"]))


def fit_error_floor(
    photometry: Photometry,
    locus: Locus,
    prior: Any = None,
    config: BayesConfig | None = None,
    *,
    fallback: float | None = None,
    max_stars: int = FIT_STARS,
    max_error: float = MAX_ERROR,
    tolerance: float = 0.001,
    seed: int = 0,
    grid_term: bool = True,
) -> ErrorFloorFit:
    """Colour-error floor that makes the best-fit chi2 of well-measured stars match the model.

    Parameters
    ----------
    photometry
        The catalogue (or a representative sample of it).
    locus, prior
        Posterior grid and prior map, as for :class:`photodist.bayes.BayesEstimator`.
    config
        Estimator settings other than the floor (default :class:`BayesConfig`).
    fallback
        Floor returned when there are fewer than ``MIN_STARS`` well-measured stars (default:
        ``config.error_floor``).
    max_stars
        Well-measured stars used at most (a seeded random draw).
    max_error
        Largest colour error (mag) of a star used.
    tolerance
        Width (mag) at which the bisection stops.
    seed
        Seed of the star draw and of the replica noise.
    grid_term
        Add the posterior grid's quantisation error to the fitted scatter (for labels that
        train networks); False returns the catalogue's extra scatter alone, with which the
        Bayesian uncertainties are best calibrated (``docs/benchmarks.md``).

    Returns
    -------
    ErrorFloorFit
    """
    config = config or BayesConfig()
    fallback = float(config.error_floor if fallback is None else fallback)
    rows = well_measured_rows(photometry, max_error)
    rng = np.random.default_rng(seed)
    if rows.size > max_stars:
        rows = np.sort(rng.choice(rows, max_stars, replace=False))
    if rows.size < MIN_STARS:
        return ErrorFloorFit(
            fallback,
            False,
            int(rows.size),
            reason=f"{rows.size} stars with every colour error < {max_error} mag "
            f"(at least {MIN_STARS} needed)",
        )
    check = _Check(photometry.subset(rows), locus, prior, config, seed)
    grid = grid_error(locus, photometry.band_set) if grid_term else 0.0
    lo, hi = 0.0, MAX_FLOOR
    best = check.medians(lo)
    reason = ""
    if best[0] > best[1]:
        best = check.medians(hi)
        reason = "at the upper bound" if best[0] > best[1] else ""
        while not reason and hi - lo > tolerance:
            mid = 0.5 * (lo + hi)
            medians = check.medians(mid)
            if medians[0] > medians[1]:
                lo = mid
            else:
                hi, best = mid, medians
    else:
        hi = lo
    return ErrorFloorFit(
        float(np.hypot(hi, grid)), True, int(rows.size), best[0], best[1], hi, grid, reason
    )


def parse_error_floor(value: Any) -> str | float:
    """``"auto"``, or ``value`` as a finite magnitude >= 0.

    Raises
    ------
    ValueError
        Anything else, naming the setting.
    """
    if isinstance(value, str) and value == "auto":
        return "auto"
    try:
        floor = float(value)
    except (TypeError, ValueError):
        floor = math.nan
    if not 0.0 <= floor < math.inf:
        raise ValueError(f"error_floor must be 'auto' or a finite magnitude >= 0, got {value!r}")
    return floor


def resolve_error_floor(
    error_floor: float | str,
    photometry: Photometry,
    locus: Locus,
    prior: Any = None,
    config: BayesConfig | None = None,
    *,
    check: bool = True,
    fallback: float | None = None,
    seed: int = 0,
    grid_term: bool = True,
) -> ErrorFloorFit:
    """The floor to use for ``photometry``: fitted when ``error_floor`` is ``"auto"`` (with
    the grid's quantisation error when ``grid_term``, see :func:`fit_error_floor`).

    A fixed (numeric) floor is returned as given, with ``fitted`` False; with ``check`` the
    catalogue's scatter is still measured on up to ``CHECK_STARS`` stars as a diagnostic of its
    error model (``scatter``, the medians; ``reason`` starts with "fixed").
    """
    error_floor = parse_error_floor(error_floor)
    if error_floor == "auto":
        return fit_error_floor(
            photometry,
            locus,
            prior,
            config,
            fallback=fallback,
            max_stars=FIT_STARS,
            seed=seed,
            grid_term=grid_term,
        )
    fixed = float(error_floor)
    if not check:
        return ErrorFloorFit(fixed, False, 0, reason="fixed")
    fit = fit_error_floor(
        photometry, locus, prior, config, fallback=fallback, max_stars=CHECK_STARS, seed=seed
    )
    reason = "fixed" + (f"; check: {fit.reason}" if fit.reason else "")
    return dataclasses.replace(fit, floor=fixed, fitted=False, reason=reason)
