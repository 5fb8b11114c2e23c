"""The Galaxy-model prior tempered to a patch's stars: its metallicity scale and its power.

The ([Fe/H], M_r) prior comes from a Galaxy model, and no Galaxy model is the sky. Where the
stars follow another population than the prior says, the posteriors are pulled towards the
model: biased, and too narrow. On stars drawn from TRILEGAL's prior maps but estimated with
this package's Galaxy-model prior (``python validation/bayes_self_consistency.py --trilegal
../shared/data/s82_priors --patch 176,-48 --a-map 0.24``) the 16-84 % intervals of M_r and
[Fe/H] held only 41-48 % of the truths.

Two adjustments, each chosen per patch by maximum marginal likelihood (the summed
``log_evidence`` of a sample of the patch's stars, :class:`photodist.bayes.BayesEstimator`):

* a shift of the prior along [Fe/H] (:data:`FEH_SHIFTS`, -0.5 to +0.5 dex in steps of 0.05):
  a Galaxy model's metallicity scale is among its least certain parts (this package's disk is
  ~0.4 dex more metal-poor than TRILEGAL's). It is used only when it raises the mean log
  evidence by at least :data:`FEH_SHIFT_MIN_GAIN` per star: smaller gains also come from the
  other simplifications of the model (the error floor, the flat A_r prior), which a shift of
  the population should not absorb;
* then a power beta of the shifted prior (:data:`TEMPER_VALUES`, 0 to 1): p_j^beta,
  normalised in each r bin, so that a prior that still does not describe the stars weighs
  less (0: flat over the grid).

The same stars serve every trial: those with a finite evidence and without ``POOR_FIT`` with
the prior as given (stars the model cannot fit at all would favour a flat prior whatever the
population). Where the prior describes the stars the evidence peaks at no shift and beta = 1,
and nothing changes (``docs/benchmarks.md``).

Each parameter is found by climbing its grid from the prior as given (shift 0, then power 1)
while the evidence rises, the first step towards the better neighbour. The mean log evidence
is a smooth, single-peaked function of either parameter (measured on the full grids for stars
of both Galaxy models at four latitudes, ``docs/benchmarks.md``), so the climb finds the grid's
maximum in 4 estimator runs where the prior fits and ~8-14 where it does not, instead of 31.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from photodist.bands import Photometry
from photodist.bayes import BayesConfig, BayesEstimator, Flags, PriorGrid
from photodist.locus import Locus

__all__ = [
    "FEH_SHIFTS",
    "FEH_SHIFT_MIN_GAIN",
    "FIT_STARS",
    "MAX_FEH_SHIFT",
    "MIN_FIT_STARS",
    "TEMPER_VALUES",
    "PriorTemperFit",
    "adjusted_prior",
    "fit_prior_temper",
    "parse_feh_shift",
    "parse_prior_temper",
    "resolve_prior_temper",
]

#: Powers of the prior searched by the fit.
TEMPER_VALUES: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(11))
#: Shifts of the prior along [Fe/H] searched by the fit (dex): one step of the default
#: posterior grid (0.05 dex; a coarser grid merges them). On TRILEGAL-drawn stars steps of
#: 0.1 dex gave +0.3 or +0.4 from one sample of 2,000 stars to the next, 0.05 gave +0.35 on
#: all seven tried (``docs/benchmarks.md``).
FEH_SHIFTS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(-10, 11))
#: Largest shift accepted when one is given (dex).
MAX_FEH_SHIFT = 1.0
#: Smallest gain in mean log evidence per star for which a fitted shift is used. Stars of
#: the prior's own Galaxy model gain up to 0.008 from a shift of 0.1 dex (the floor and the
#: flat A_r prior, not the population, then decide it), stars of another Galaxy model 0.1-0.3
#: (``docs/benchmarks.md``).
FEH_SHIFT_MIN_GAIN = 0.02
#: Stars of the patch (a seeded random sample) on which the trials are compared.
FIT_STARS = 2_000
#: Fewest usable stars for a fit; with fewer the prior is used as given.
MIN_FIT_STARS = 200


@dataclass
class PriorTemperFit:
    """How the prior of a patch was adjusted, and how that was chosen.

    Attributes
    ----------
    beta
        The power of the prior (1: as given).
    feh_shift
        Its shift along [Fe/H] (dex; positive: more metal-rich).
    fitted
        Whether anything was fitted (False: both given, or the fit was not possible, see
        ``reason``).
    n_stars
        Stars whose evidence was compared.
    log_evidence
        Mean log evidence per star for every power compared, at the chosen shift.
    log_evidence_by_shift
        Mean log evidence per star for every shift compared, with the given power (or 1).
    reason
        Why nothing was fitted, if nothing was.
    reference
        Mean log evidence per star of the prior as given (what ``gain`` is measured from).
    """

    beta: float
    feh_shift: float = 0.0
    fitted: bool = False
    n_stars: int = 0
    log_evidence: dict[float, float] = field(default_factory=dict)
    log_evidence_by_shift: dict[float, float] = field(default_factory=dict)
    reason: str | None = None
    reference: float = float("nan")
    #: the prior was to be fitted and the stars were too few (``reason`` says how many)
    too_few_stars: bool = False

    @property
    def gain(self) -> float:
        """Mean log evidence per star of the adjusted prior over the prior as given (NaN
        without a fit)."""
        if not self.fitted:
            return float("nan")
        return self.log_evidence[self.beta] - self.reference

    @property
    def changes_prior(self) -> bool:
        """Whether the prior used differs from the prior as given."""
        return self.beta != 1.0 or self.feh_shift != 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record (for run summaries)."""
        return {
            "beta": self.beta,
            "feh_shift": self.feh_shift,
            "fitted": self.fitted,
            "n_stars": self.n_stars,
            "log_evidence_per_star": {str(k): v for k, v in self.log_evidence.items()},
            "log_evidence_per_star_by_shift": {
                str(k): v for k, v in self.log_evidence_by_shift.items()
            },
            "log_evidence_gain": None if not self.fitted else self.gain,
            "reason": self.reason,
            "too_few_stars": self.too_few_stars,
        }


def _auto_or_within(value: float | str, low: float, high: float, what: str) -> float | str:
    """``"auto"``, or ``value`` as a float within [low, high]; else a ValueError naming
    ``what`` and the accepted range."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not low <= number <= high:
        raise ValueError(f"{what} must be 'auto' or within [{low:g}, {high:g}], got {value!r}")
    return number


def parse_prior_temper(value: float | str) -> float | str:
    """``"auto"`` or a power in [0, 1] (as a float); anything else is a ValueError."""
    return _auto_or_within(value, 0.0, 1.0, "the prior's power")


def parse_feh_shift(value: float | str) -> float | str:
    """``"auto"`` or a shift in dex within ±:data:`MAX_FEH_SHIFT`; else a ValueError."""
    return _auto_or_within(value, -MAX_FEH_SHIFT, MAX_FEH_SHIFT, "the prior's [Fe/H] shift (dex)")


def _climb(options: list[float], start: float, score: Callable[[float], float]) -> float:
    """The option (from the sorted ``options``) where ``score`` peaks, climbing from ``start``
    towards its better neighbour while the score rises (exact for a single-peaked score)."""
    k = options.index(start)
    best = score(start)
    for step in (1, -1):  # try upwards first; go downwards only if that did not rise
        moved = False
        while 0 <= k + step < len(options):
            trial = score(options[k + step])
            if not trial > best:
                break
            k, best, moved = k + step, trial, True
        if moved:
            break
    return options[k]


def _shift_rows(shift: float, locus: Locus) -> int:
    return int(round(shift / locus.feh_step)) if locus.feh_step > 0 else 0


def _applied_shift(shift: float, locus: Locus) -> float:
    """The shift in dex that moving the prior by whole grid rows applies for ``shift``."""
    return round(_shift_rows(shift, locus) * locus.feh_step, 6)


def adjusted_prior(prior: Any, locus: Locus, beta: float = 1.0, feh_shift: float = 0.0) -> Any:
    """``prior`` on ``locus``'s grid moved by ``feh_shift`` dex along [Fe/H] (whole grid steps)
    and raised to the power ``beta``; ``prior`` itself when neither changes it (or is None)."""
    rows = _shift_rows(feh_shift, locus)
    if prior is None or (beta == 1.0 and rows == 0):
        return prior
    grid = PriorGrid.from_prior(prior, locus)
    return (grid.feh_shifted(rows) if rows else grid).tempered(beta)


def fit_prior_temper(
    photometry: Photometry,
    locus: Locus,
    prior: Any,
    config: BayesConfig | None = None,
    *,
    seed: int = 0,
    max_stars: int = FIT_STARS,
    values: tuple[float, ...] = TEMPER_VALUES,
    feh_shift: float | str = "auto",
    power: float | str = "auto",
    shifts: tuple[float, ...] = FEH_SHIFTS,
) -> PriorTemperFit:
    """Choose the prior's [Fe/H] shift, then its power, by maximum marginal likelihood.

    Parameters
    ----------
    photometry
        Stars of the patch (a random sample of ``max_stars`` of those with an r is used).
    locus
        Posterior grid.
    prior
        The patch's prior map (``PriorMap`` or :class:`photodist.bayes.PriorGrid`).
    config
        Bayesian settings (error floor, A_r prior) of the run.
    seed
        Seed of the sample.
    max_stars
        Size of the sample.
    values, shifts
        Grids of the powers and [Fe/H] shifts (dex) searched; ``values`` must include 1 and
        ``shifts`` 0.
    feh_shift, power
        ``"auto"`` to fit, or the value to use as given.
    """
    if 1.0 not in values or 0.0 not in shifts:
        raise ValueError("the trials must include the prior as given (power 1, shift 0)")
    grid = PriorGrid.from_prior(prior, locus).tempered(1.0)  # normalised: evidences compare
    candidates = np.flatnonzero(np.isfinite(photometry.r))
    if candidates.size > max_stars:
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, max_stars, replace=False))
    sample = photometry.subset(candidates)

    def evidence(beta: float, shift: float) -> pd.DataFrame:
        trial = adjusted_prior(grid, locus, beta, shift)
        return BayesEstimator(locus, trial, config).predict(sample)

    as_given = evidence(1.0, 0.0)
    usable = np.isfinite(as_given["log_evidence"].to_numpy())
    usable &= (as_given["flags"].to_numpy() & Flags.POOR_FIT) == 0
    n_used = int(usable.sum())
    fixed_beta = 1.0 if power == "auto" else float(power)
    fixed_shift = 0.0 if feh_shift == "auto" else float(feh_shift)
    if n_used < MIN_FIT_STARS:
        reason = f"{n_used} usable stars, fewer than {MIN_FIT_STARS}"
        return PriorTemperFit(
            fixed_beta, fixed_shift, n_stars=n_used, reason=reason, too_few_stars=True
        )
    reference = float(np.mean(as_given["log_evidence"].to_numpy()[usable]))

    def mean_evidence(beta: float, shift: float) -> float:
        if beta == 1.0 and _shift_rows(shift, locus) == 0:
            return reference
        values_ = evidence(beta, shift)["log_evidence"].to_numpy()[usable]
        return float(np.mean(values_)) if np.isfinite(values_).all() else -np.inf

    by_shift: dict[float, float] = {}
    shift = fixed_shift
    if feh_shift == "auto":
        # a coarse grid maps several shifts to one row count: one trial per row count
        options = sorted({_applied_shift(t, locus) for t in shifts})

        def shift_score(trial: float) -> float:
            if trial not in by_shift:
                by_shift[trial] = mean_evidence(fixed_beta, trial)
            return by_shift[trial]

        shift = _climb(options, 0.0, shift_score)
        if by_shift[shift] - by_shift[0.0] < FEH_SHIFT_MIN_GAIN:
            shift = 0.0
        by_shift = dict(sorted(by_shift.items()))
    by_power = {fixed_beta: by_shift[shift]} if feh_shift == "auto" else {}
    beta = fixed_beta
    if power == "auto":

        def power_score(trial: float) -> float:
            if trial not in by_power:
                by_power[trial] = mean_evidence(trial, shift)
            return by_power[trial]

        beta = _climb(sorted(values), 1.0, power_score)
    elif fixed_beta not in by_power:
        by_power[fixed_beta] = mean_evidence(fixed_beta, shift)
    return PriorTemperFit(
        beta,
        float(shift),
        fitted=True,
        n_stars=n_used,
        log_evidence=dict(sorted(by_power.items())),
        log_evidence_by_shift=by_shift,
        reference=reference,
    )


def resolve_prior_temper(
    setting: float | str,
    photometry: Photometry,
    locus: Locus,
    prior: Any,
    config: BayesConfig | None = None,
    *,
    seed: int = 0,
    feh_shift: float | str = "auto",
) -> tuple[Any, PriorTemperFit]:
    """The prior to use and its record: the power (``setting``) and the [Fe/H] shift, each
    fitted (``"auto"``) or as given.

    A prior that is None (flat) is returned as it is, and so is a prior that nothing changes
    (power 1, no shift), so that its results are exactly those of a run without this step.
    """
    power = parse_prior_temper(setting)
    feh_shift = parse_feh_shift(feh_shift)
    if feh_shift != "auto":  # the prior moves by whole grid rows: record what is applied
        applied = _applied_shift(float(feh_shift), locus)
        if abs(applied - float(feh_shift)) > 1e-9:
            warnings.warn(
                f"the prior moves along [Fe/H] by whole steps of the posterior grid "
                f"({locus.feh_step:g} dex): a shift of {float(feh_shift):+g} dex is applied as "
                f"{applied:+g} dex",
                stacklevel=2,
            )
        feh_shift = applied
    if prior is None:
        return None, PriorTemperFit(1.0, reason="flat prior")
    if power == "auto" or feh_shift == "auto":
        fit = fit_prior_temper(
            photometry, locus, prior, config, seed=seed, feh_shift=feh_shift, power=power
        )
    else:
        fit = PriorTemperFit(float(power), float(feh_shift), reason="given")
    return adjusted_prior(prior, locus, fit.beta, fit.feh_shift), fit
