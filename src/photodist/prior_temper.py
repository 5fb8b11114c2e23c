"""How much to trust the Galaxy-model prior: its power, fitted to the patch's own stars.

The ([Fe/H], M_r) prior comes from a Galaxy model, and no Galaxy model is the sky: where the
stars follow another population than the prior says, the posteriors are pulled towards the
model and come out too narrow. On stars drawn from TRILEGAL's prior maps but estimated with
this package's Galaxy-model prior (``python validation/bayes_self_consistency.py --trilegal
../shared/data/s82_priors --patch 176,-48 --a-map 0.24``) the 16-84 % intervals of M_r and
[Fe/H] held only 47 % and 43 % of the truths.

Here the prior enters as p_j^beta, normalised in each r bin, with beta in [0, 1]: 1 is the
model as given, 0 a flat prior over the grid. beta is chosen per patch by maximum marginal
likelihood: the sum over a sample of the patch's stars of their log evidence
(``log_evidence`` of :class:`photodist.bayes.BayesEstimator`) is computed for every beta of
:data:`TEMPER_VALUES` and the largest wins. The same stars serve every beta: those with a
finite evidence and without ``POOR_FIT`` at beta = 1 (stars the model cannot fit at all would
favour a flat prior whatever the population). When the prior describes the stars, the
evidence peaks at beta = 1 and nothing changes: stars drawn from the model itself and the
real Stripe 82 stars both keep beta = 1 (``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from photodist.bands import Photometry
from photodist.bayes import BayesConfig, BayesEstimator, Flags, PriorGrid
from photodist.locus import Locus

__all__ = [
    "FIT_STARS",
    "MIN_FIT_STARS",
    "TEMPER_VALUES",
    "PriorTemperFit",
    "fit_prior_temper",
    "parse_prior_temper",
    "resolve_prior_temper",
]

#: Powers of the prior compared by the fit.
TEMPER_VALUES: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(11))
#: Stars of the patch (a seeded random sample) on which the powers are compared.
FIT_STARS = 2_000
#: Fewest usable stars for a fit; with fewer the prior is used as given.
MIN_FIT_STARS = 200


@dataclass
class PriorTemperFit:
    """The power of the prior used for a patch and how it was chosen.

    Attributes
    ----------
    beta
        The power used (1: the prior as given).
    fitted
        Whether beta was fitted (False: given, or the fit was not possible, see ``reason``).
    n_stars
        Stars whose evidence was compared.
    log_evidence
        Mean log evidence per star for every power compared (power -> value).
    reason
        Why beta was not fitted, if it was not.
    """

    beta: float
    fitted: bool = False
    n_stars: int = 0
    log_evidence: dict[float, float] = field(default_factory=dict)
    reason: str | None = None

    @property
    def gain(self) -> float:
        """Mean log evidence per star of the chosen power over the prior as given (NaN
        without a fit)."""
        if not self.fitted:
            return float("nan")
        return self.log_evidence[self.beta] - self.log_evidence[1.0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record (for run summaries)."""
        return {
            "beta": self.beta,
            "fitted": self.fitted,
            "n_stars": self.n_stars,
            "log_evidence_per_star": {str(k): v for k, v in self.log_evidence.items()},
            "log_evidence_gain": None if not self.fitted else self.gain,
            "reason": self.reason,
        }


def parse_prior_temper(value: float | str) -> float | str:
    """``"auto"`` or a power in [0, 1] (as a float); anything else is a ValueError."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        beta = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the prior's power must be 'auto' or in [0, 1], got {value!r}") from None
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"the prior's power must be 'auto' or in [0, 1], got {value!r}")
    return beta


def fit_prior_temper(
    photometry: Photometry,
    locus: Locus,
    prior: Any,
    config: BayesConfig | None = None,
    *,
    seed: int = 0,
    max_stars: int = FIT_STARS,
    values: tuple[float, ...] = TEMPER_VALUES,
) -> PriorTemperFit:
    """Choose the prior's power by maximum marginal likelihood on a sample of the stars.

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
    values
        Powers compared; must include 1.
    """
    if 1.0 not in values:
        raise ValueError("the powers compared must include 1 (the prior as given)")
    grid = PriorGrid.from_prior(prior, locus)
    candidates = np.flatnonzero(np.isfinite(photometry.r))
    if candidates.size > max_stars:
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, max_stars, replace=False))
    sample = photometry.subset(candidates)
    evidence = {}
    for beta in sorted(values, reverse=True):
        estimates = BayesEstimator(locus, grid.tempered(beta), config).predict(sample)
        evidence[beta] = estimates["log_evidence"].to_numpy()
        if beta == 1.0:
            poor = (estimates["flags"].to_numpy() & Flags.POOR_FIT) != 0
    usable = ~poor & np.all([np.isfinite(v) for v in evidence.values()], axis=0)
    n_used = int(usable.sum())
    if n_used < MIN_FIT_STARS:
        return PriorTemperFit(
            1.0, n_stars=n_used, reason=f"{n_used} usable stars, fewer than {MIN_FIT_STARS}"
        )
    means = {beta: float(np.mean(v[usable])) for beta, v in sorted(evidence.items())}
    best = max(means, key=means.get)
    return PriorTemperFit(best, fitted=True, n_stars=n_used, log_evidence=means)


def resolve_prior_temper(
    setting: float | str,
    photometry: Photometry,
    locus: Locus,
    prior: Any,
    config: BayesConfig | None = None,
    *,
    seed: int = 0,
) -> tuple[Any, PriorTemperFit]:
    """The prior to use and its record: fitted (``"auto"``), or raised to the given power.

    A prior that is None (flat) is returned as it is. The prior as given (power 1) is
    returned unchanged, so its results are exactly those of a run without this step.
    """
    setting = parse_prior_temper(setting)
    if prior is None:
        return None, PriorTemperFit(1.0, reason="flat prior")
    if setting == "auto":
        fit = fit_prior_temper(photometry, locus, prior, config, seed=seed)
    else:
        fit = PriorTemperFit(float(setting), reason="given")
    if fit.beta == 1.0:
        return prior, fit
    return PriorGrid.from_prior(prior, locus).tempered(fit.beta), fit
