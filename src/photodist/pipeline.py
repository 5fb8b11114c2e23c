"""Per-patch hybrid photo-D: Bayesian labels for a subsample, networks for everyone else.

For one sky patch (Mrakovčić, Ivezić & Palaversa 2025, AJ 170, 72, Section 4):

1. choose a training subsample (default 10,000 stars) among the stars the networks can take
   (finite r and r error and at least two usable colours; see ``nn_missing_colors``), stratified
   to cover the input space (:func:`choose_training_subsample`);
2. label it with the Bayesian estimator (posterior means and standard deviations of M_r, A_r
   and [Fe/H]);
3. train the moments and secondary networks (:class:`photodist.nn.PhotoDNetwork`) on those
   labels;
4. predict every other star in chunks (bounded memory); stars the networks cannot take get
   the Bayesian estimate instead: no r, fewer than two usable colours, or an unusable colour
   that too few training stars lacked (the networks learn what the Bayesian estimator does
   without a colour, e.g. u for faint stars, from the training stars that lack it).

Labelled stars keep their Bayesian values. Patches with too few usable stars for a training
set run the Bayesian estimator on every star. The ``method`` column says which estimator
produced each row (``"bayes"`` or ``"nn"``); ``labelled`` marks the training subsample.

Output columns (one row per input row, same order), for p in ``Mr``, ``Ar``, ``FeH``:

* ``{p}_mean`` and ``{p}_sigma``: the estimate and its total uncertainty (networks:
  ``sqrt(sigma_nn**2 + sigma_bayes**2)``; Bayesian rows: the posterior standard deviation);
* ``{p}_sigma_nn`` (networks only, NaN on Bayesian rows) and ``{p}_sigma_bayes`` (the network's
  prediction of the Bayesian width, or the Bayesian posterior width itself);

then ``Qr_mean``, ``Qr_sigma`` (Q_r = M_r + A_r), ``DM_mean = r - Qr_mean``, ``DM_sigma``,
``dist_pc = 10**(0.2 DM_mean + 1)``, ``chi2min`` (every row: the model's best fit without
the prior, A_r within its bounds; :meth:`photodist.bayes.BayesEstimator.best_fit` for network
rows), ``log_evidence`` (Bayesian rows; NaN for
network rows),
``flags`` (bits of :class:`photodist.bayes.Flags`),
``method`` and ``labelled``.

Flags: Bayesian rows carry the Bayesian flags; network rows get ``NN_OUT_OF_DOMAIN`` when an
input lies outside the training range (plus margin), ``COLOR_UNUSABLE`` when a colour was
unusable (as Bayesian rows do), and ``POOR_FIT`` / ``AR_AT_BOUND`` from the best fit (a star
far from the stellar locus, or reddened beyond the A_r prior, whatever the networks say of
it), and every row ``R_OUTSIDE_PRIOR`` when its r lies beyond the
prior's r bins (``NO_PRIOR`` with a flat prior); rows handed back to the Bayesian
estimator because an input was not finite get ``NN_INVALID_INPUT`` besides their Bayesian
flags (in a Bayes-only run no row is handed back and the bit is not used). The configuration,
mode, counts and timings are stored in ``result.attrs["photodist_pipeline"]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from photodist.bands import (
    ID_COLUMNS,
    BandSet,
    ColumnMap,
    MissingColumnError,
    Photometry,
    get_band_set,
    photometry_from_frame,
)
from photodist.bayes import (
    BayesConfig,
    BayesEstimator,
    Flags,
    a_max_for,
    ar_near_bound,
    ar_near_max_flags,
    prior_range_flags,
)
from photodist.dust_profile import DustProfile, fit_profile_record
from photodist.error_floor import ErrorFloorFit, parse_error_floor, resolve_error_floor
from photodist.locus import Locus, build_locus
from photodist.nn import MIN_USABLE_COLORS, ModelFileError, NetworkSpec, PhotoDNetwork
from photodist.prior_temper import (
    adjusted_prior,
    parse_feh_shift,
    parse_prior_temper,
    resolve_prior_temper,
)

__all__ = [
    "DUST_PRIORS",
    "PARAMETERS",
    "RESULT_COLUMNS",
    "RESULT_FLOAT_COLUMNS",
    "STAGES",
    "STRATEGIES",
    "PipelineConfig",
    "choose_training_subsample",
    "estimate_rows",
    "network_inputs_usable",
    "posterior_grid",
    "predict_with_model",
    "run_patch",
    "strata",
    "train_networks",
    "used_dust_profile",
    "used_error_floor",
    "used_prior",
]

#: Estimated parameters, in the column order of the network labels.
PARAMETERS: tuple[str, ...] = ("Mr", "Ar", "FeH")
#: Fewest labelled stars :attr:`PipelineConfig.min_train` may ask for: with the 25 %
#: validation split, 2 stars to validate on and 8 to train on
MIN_TRAIN_FLOOR = 10
#: Subsample strategies accepted by :func:`choose_training_subsample`.
STRATEGIES: tuple[str, ...] = ("stratified", "random")
#: A_r priors of the Bayesian estimator (see ``PipelineConfig.dust_prior``).
DUST_PRIORS: tuple[str, ...] = ("flat", "profile")
#: Timed stages (seconds in the timings dict; zero when a stage did not run).
STAGES: tuple[str, ...] = (
    "prepare",
    "error_floor",
    "prior_temper",
    "dust_profile",
    "bayes_label",
    "train",
    "predict",
    "bayes_fallback",
    "bayes_all",
)
#: Floating-point output columns, in order.
RESULT_FLOAT_COLUMNS: tuple[str, ...] = tuple(
    f"{p}_{s}" for p in PARAMETERS for s in ("mean", "sigma", "sigma_nn", "sigma_bayes")
) + ("Qr_mean", "Qr_sigma", "DM_mean", "DM_sigma", "dist_pc", "chi2min", "log_evidence")
#: Every output column of the pipeline, in order (the input's kept columns come first).
RESULT_COLUMNS: tuple[str, ...] = RESULT_FLOAT_COLUMNS + ("flags", "method", "labelled")
_METHODS = ("bayes", "nn")
_LABEL_CHUNK = 2_000  # stars per Bayesian call while labelling (granularity of the progress bar)


@dataclass
class PipelineConfig:
    """Settings of the hybrid pipeline (stored with every result).

    Attributes
    ----------
    band_set
        Band set of the catalogue (``"lsst"`` or ``"sdss"``).
    n_train
        Size of the training subsample (the paper uses 10,000 stars per patch).
    train_fraction
        If set, the training subsample is this fraction of the usable stars instead of
        ``n_train`` (the paper suggests 5-10 %).
    min_train
        Smallest training subsample worth a network; below it (or when the patch has no more
        usable stars than the subsample size) every star gets the Bayesian estimate.
    bayes_all_below
        Patches with at most this many usable stars get the Bayesian estimate for every star
        (exact, and faster than training when the patch is small: on 2 cores the ~21 s of
        training equal the Bayesian estimator's time for ~450,000 stars, see
        ``docs/benchmarks.md``); 0, the default, keeps the paper's hybrid for every patch
        larger than its training subsample.
    strategy
        ``"stratified"`` (cover the input space, see :func:`choose_training_subsample`) or
        ``"random"`` (uniform).
    stratified_fraction
        Fraction of a stratified subsample drawn evenly over the occupied cells; the rest is
        drawn uniformly at random from the remaining stars.
    strata_bins
        Number of equal-width bins in r, u-g and g-r defining the cells.
    bayes_feh_step, bayes_mr_step
        Posterior grid of the Bayesian estimator (dex, mag); the locus is resampled to it.
        None for either uses the given locus as it is.
    error_floor
        Colour-error floor of the Bayesian estimator (mag, added in quadrature; 0.02 as in the
        reference method), or ``"auto"`` to fit it per patch on the well-measured stars of the
        training subsample (all stars of a patch too small for one) with
        :func:`photodist.error_floor.fit_error_floor`; when a patch has too few such stars,
        ``fallback_error_floor`` is used. ``"auto"`` makes the Bayesian estimates of simulated
        catalogues more accurate and better calibrated, but their posterior means become
        harder to learn: the networks then miss their targets on smaller patches
        (``docs/benchmarks.md``), so the default stays fixed.
    fallback_error_floor
        Floor (mag) of an ``"auto"`` patch without enough well-measured stars; 0.02 mag, the
        fixed floor of the reference method.
    check_error_model
        With a fixed floor, still measure the catalogue's colour scatter beyond its quoted
        errors (the same fit on up to ``error_floor.CHECK_STARS`` stars, ~0.5 s per patch) and
        record it as a diagnostic (``info["error_floor"]["scatter"]``); the floor used is
        unchanged.
    default_a_max
        A_r prior bound of the Bayesian estimator for stars without a dust-map value (mag).
    dust_min_fraction, dust_scale, dust_offset
        Bounds of the flat A_r prior with a dust-map value A_map: [dust_min_fraction A_map,
        dust_scale A_map + dust_offset]; the paper's [0, 1.3 A_map + 0.1] by default (see
        :class:`photodist.bayes.BayesConfig`).
    color_covariance
        Use the covariance of adjacent colours that share a band's error in the Bayesian
        chi2 (:class:`photodist.bayes.BayesConfig`); False: independent errors, as the paper.
    prior_feh_shift, prior_temper
        Shift of the ([Fe/H], M_r) prior along [Fe/H] (dex, within ±1) and its power (in
        [0, 1]); 0 and 1 give the Galaxy model's prior as given, as in the paper. ``"auto"``
        (both by default) fits each per patch by maximum marginal likelihood on 2,000 of its
        stars, the shift first (:mod:`photodist.prior_temper`, 0.5-0.7 s per patch on 2 cores
        where the prior fits, more where it does not).
        Where the stars follow the prior they stay 0 and 1; where they follow another
        population the prior moves to their metallicity scale and then weighs less.
    dust_prior
        ``"flat"``: the paper's flat A_r prior alone. ``"profile"``: also a normal A_r prior
        around the patch's extinction against apparent distance modulus, fitted to the
        training subsample (all stars of a Bayes-only patch) by
        :func:`photodist.dust_profile.fit_dust_profile` (~1-3 s per patch on 2 cores); a
        patch where the fit fails keeps the flat prior (``info["dust_profile"]`` says why).
    nn_spec
        Network architecture (:class:`photodist.nn.NetworkSpec` or its dict); None: the
        paper's default.
    nn_max_epochs, nn_patience, nn_n_runs, nn_batch_size, nn_learning_rate, nn_device
        Training settings passed to :class:`photodist.nn.PhotoDNetwork`. The paper trains for
        up to 1,024 epochs at an Adam learning rate of 1e-3 (batch 1,024, patience 100, 2
        runs); with ~10,000 labels that is only ~8,000 optimiser steps and the validation loss
        is still falling steeply at the end. The defaults here, 512 epochs at 1e-2, reach a
        lower validation loss in about half the time (``docs/benchmarks.md``; 256 epochs miss
        the network-vs-Bayes targets on some patches, ``validation/nn_accuracy_patches.py``);
        set ``nn_max_epochs=1024, nn_learning_rate=1e-3`` for the paper's settings.
    nn_options
        Further keyword arguments of :class:`photodist.nn.PhotoDNetwork` (JSON-serialisable).
    nn_missing_colors
        Train on and predict stars with unusable colours too (``missing_colors`` of
        :class:`photodist.nn.PhotoDNetwork`); False: such stars all get the Bayesian estimate.
    nn_dust_input
        Give the networks the dust-map A_r as one more input (``dust_input`` of
        :class:`photodist.nn.PhotoDNetwork`): the Bayesian labels depend on it through the A_r
        prior, so where the map varies across a patch the networks can follow it. Stars
        without a map value then get the Bayesian estimate. False: the paper's inputs, except
        in a patch whose labels come from a dust profile relative to the map
        (``dust_prior="profile"`` with a dust-map column), where the networks always take it
        (without it they miss their targets at low latitude, ``docs/benchmarks.md``).
    nn_fit_check
        Check every network row against the model without the prior
        (:meth:`photodist.bayes.BayesEstimator.best_fit`: ``chi2min``, ``POOR_FIT``,
        ``AR_AT_BOUND``; a few µs per star, ~0.09 of the Bayesian estimator's time). False
        leaves network rows without these (their ``chi2min`` NaN), for throughput.
    bayes_out_of_domain
        Also hand rows outside the networks' training domain to the Bayesian estimator (they
        keep the ``NN_OUT_OF_DOMAIN`` flag). Off by default: such rows keep the network
        estimate and the flag.
    chunk_size
        Rows per prediction / Bayesian-fallback chunk (bounds the working memory).
    seed
        Seed of the subsample and of the networks; the same seed gives the same result.
    progress
        Show a progress bar per stage.
    """

    band_set: str = "lsst"
    n_train: int = 10_000
    train_fraction: float | None = None
    min_train: int = 1_000
    bayes_all_below: int = 0
    strategy: str = "stratified"
    stratified_fraction: float = 0.5
    strata_bins: tuple[int, int, int] = (6, 10, 10)
    bayes_feh_step: float | None = 0.05
    bayes_mr_step: float | None = 0.1
    error_floor: float | str = 0.02
    fallback_error_floor: float = 0.02
    check_error_model: bool = True
    default_a_max: float = 3.0
    dust_min_fraction: float = 0.0
    dust_scale: float = 1.3
    dust_offset: float = 0.1
    color_covariance: bool = True
    prior_feh_shift: float | str = "auto"
    prior_temper: float | str = "auto"
    dust_prior: str = "flat"
    nn_spec: NetworkSpec | Mapping[str, Any] | None = None
    nn_max_epochs: int = 512
    nn_patience: int = 100
    nn_n_runs: int = 2
    nn_batch_size: int = 1024
    nn_learning_rate: float = 1e-2
    nn_device: str = "auto"
    nn_options: dict[str, Any] = field(default_factory=dict)
    nn_missing_colors: bool = True
    nn_dust_input: bool = False
    nn_fit_check: bool = True
    bayes_out_of_domain: bool = False
    chunk_size: int = 500_000
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        get_band_set(self.band_set)
        if self.dust_prior not in DUST_PRIORS:
            raise ValueError(f"dust_prior must be one of {DUST_PRIORS}, got {self.dust_prior!r}")
        self.prior_temper = parse_prior_temper(self.prior_temper)
        self.prior_feh_shift = parse_feh_shift(self.prior_feh_shift)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        # checked here, not after the Bayesian labels: the network settings too
        positive = ("n_train", "min_train", "chunk_size", "nn_max_epochs", "nn_patience")
        for name in (*positive, "nn_n_runs", "nn_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("bayes_all_below", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.min_train < MIN_TRAIN_FLOOR:
            raise ValueError(
                f"min_train must be at least {MIN_TRAIN_FLOOR} (the networks need a training "
                f"and a validation set), got {self.min_train!r}"
            )
        if not 0.0 < float(self.nn_learning_rate) < math.inf:
            raise ValueError(f"nn_learning_rate must be > 0, got {self.nn_learning_rate!r}")
        self.error_floor = parse_error_floor(self.error_floor)
        if not float(self.fallback_error_floor) >= 0.0:
            raise ValueError("fallback_error_floor must be >= 0")
        if self.train_fraction is not None and not 0.0 < float(self.train_fraction) <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction!r}")
        if not 0.0 <= float(self.stratified_fraction) <= 1.0:
            raise ValueError("stratified_fraction must be in [0, 1]")
        bins = tuple(int(b) for b in self.strata_bins)
        if len(bins) != 3 or min(bins) < 1:
            raise ValueError("strata_bins must be three positive integers (r, u-g, g-r)")
        self.strata_bins = bins  # type: ignore[assignment]
        for name in ("bayes_feh_step", "bayes_mr_step"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be positive or None")
        reserved = {"band_set", "seed", "spec", "max_epochs", "patience", "n_runs"}
        reserved |= {"missing_colors", "learning_rate", "dust_input"}
        if not float(self.nn_learning_rate) > 0:
            raise ValueError(f"nn_learning_rate must be positive, got {self.nn_learning_rate!r}")
        clash = (reserved | {"batch_size", "device"}) & set(self.nn_options)
        if clash:
            raise ValueError(f"nn_options may not set {sorted(clash)}; use the nn_* fields")
        self.bayes_config()  # checks the estimator settings (A_r prior bounds)

    def training_size(self, n_usable: int) -> int:
        """Size of the training subsample for a patch with ``n_usable`` usable stars."""
        if self.train_fraction is not None:
            return int(math.ceil(float(self.train_fraction) * n_usable))
        return int(self.n_train)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy of the settings."""
        data = asdict(self)
        spec = self.nn_spec
        data["nn_spec"] = spec.to_dict() if isinstance(spec, NetworkSpec) else spec
        data["strata_bins"] = list(self.strata_bins)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], ignore_unknown: bool = False) -> PipelineConfig:
        """Settings from their JSON form (a run summary's ``config``, a survey's
        ``--pipeline-config``). Unknown keys raise ``TypeError`` unless ``ignore_unknown``
        (e.g. a summary written by another version)."""
        settings = dict(data)
        if ignore_unknown:
            names = {f.name for f in fields(cls)}
            settings = {k: v for k, v in settings.items() if k in names}
        if "strata_bins" in settings:
            settings["strata_bins"] = tuple(settings["strata_bins"])
        return cls(**settings)

    def bayes_config(self, error_floor: float | None = None) -> BayesConfig:
        """Settings of the Bayesian estimator (``error_floor`` replaces an ``"auto"`` floor)."""
        if error_floor is None:
            auto = self.error_floor == "auto"
            error_floor = self.fallback_error_floor if auto else float(self.error_floor)
        return BayesConfig(
            error_floor=float(error_floor),
            default_a_max=float(self.default_a_max),
            dust_min_fraction=float(self.dust_min_fraction),
            dust_scale=float(self.dust_scale),
            dust_offset=float(self.dust_offset),
            color_covariance=bool(self.color_covariance),
        )

    def resolve_error_floor(
        self, photometry: Photometry, locus: Locus, prior: Any = None
    ) -> ErrorFloorFit:
        """The floor for a patch: fitted to ``photometry`` when ``"auto"``, else the fixed one
        (:func:`photodist.error_floor.resolve_error_floor`)."""
        return resolve_error_floor(
            self.error_floor,
            photometry,
            locus,
            prior,
            self.bayes_config(),
            check=self.check_error_model,
            fallback=float(self.fallback_error_floor),
            seed=int(self.seed),
        )

    def network(self, seed: int, dust_input: bool | None = None) -> PhotoDNetwork:
        """An unfitted :class:`PhotoDNetwork` with these settings (``dust_input`` overrides
        ``nn_dust_input``)."""
        return PhotoDNetwork(
            band_set=self.band_set,
            spec=self.nn_spec,
            seed=seed,
            device=self.nn_device,
            max_epochs=int(self.nn_max_epochs),
            patience=int(self.nn_patience),
            n_runs=int(self.nn_n_runs),
            batch_size=int(self.nn_batch_size),
            learning_rate=float(self.nn_learning_rate),
            missing_colors=bool(self.nn_missing_colors),
            dust_input=bool(self.nn_dust_input if dust_input is None else dust_input),
            **self.nn_options,
        )


# ----------------------------------------------------------------------------------------------
# Training subsample
# ----------------------------------------------------------------------------------------------


#: Fewest usable colours of a star the networks may take (the Bayesian estimator's minimum).
MIN_NETWORK_COLORS = MIN_USABLE_COLORS


def used_error_floor(info: Mapping[str, Any]) -> float | None:
    """The colour-error floor a run used, from its info (``result.attrs["photodist_pipeline"]``
    or the CLI's run summary); None when it is not recorded."""
    floor = info.get("error_floor")
    if isinstance(floor, Mapping):
        floor = floor.get("floor")
    return None if floor is None else float(floor)


def used_dust_profile(info: Mapping[str, Any]) -> DustProfile | None:
    """The dust profile a run's Bayesian estimates used, from its info (as for
    :func:`used_error_floor`); None for the flat prior alone."""
    fit = info.get("dust_profile")
    if not isinstance(fit, Mapping) or not fit.get("fitted"):
        return None
    return DustProfile.from_dict(fit)


def used_prior(info: Mapping[str, Any], prior: Any, locus: Locus) -> Any:
    """The prior a run's Bayesian estimates used: ``prior`` (its map, as saved) shifted along
    [Fe/H] and raised to the power recorded in its info (as for :func:`used_error_floor`);
    ``prior`` itself when neither changes it or nothing is recorded."""
    fit = info.get("prior_temper")
    if not isinstance(fit, Mapping):
        return prior
    beta, shift = float(fit.get("beta", 1.0)), float(fit.get("feh_shift", 0.0))
    return adjusted_prior(prior, locus, beta, shift)


def network_inputs_usable(photometry: Photometry, missing_colors: bool = True) -> np.ndarray:
    """True for rows the networks can take: finite r and r error and, with ``missing_colors``,
    at least :data:`MIN_NETWORK_COLORS` usable colours (without: every colour usable)."""
    ok = np.isfinite(photometry.r) & np.isfinite(photometry.r_err)
    usable = np.isfinite(photometry.colors) & np.isfinite(photometry.color_errors)
    if missing_colors:
        return ok & (usable.sum(axis=1) >= MIN_NETWORK_COLORS)
    return ok & usable.all(axis=1)


def _colors_missing_everywhere(photometry: Photometry) -> str:
    """Why no star is usable for the networks when a colour is unusable for (nearly) every
    star, e.g. a band the catalogue lacks; "" otherwise."""
    usable = np.isfinite(photometry.colors) & np.isfinite(photometry.color_errors)
    if len(photometry) == 0 or usable.all(axis=1).sum() > 0.01 * len(photometry):
        return ""
    names = photometry.band_set.colors
    absent = [names[k] for k in range(usable.shape[1]) if usable[:, k].mean() < 0.01]
    if not absent:
        return ""
    return (
        f" (the networks train on stars with every colour, and {', '.join(absent)} "
        f"{'is' if len(absent) == 1 else 'are'} unusable for nearly every star: a band the "
        "catalogue lacks? A band set without it, e.g. sdss for a catalogue without y, lets "
        "them run)"
    )


def _bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins between the 0.5th and 99.5th percentiles (outliers in the end bins);
    NaN values get their own bin, ``n_bins``."""
    index = np.full(values.size, n_bins, dtype=np.int64)
    finite = np.isfinite(values)
    if n_bins == 1 or not finite.any():
        index[finite] = 0
        return index
    lo, hi = np.percentile(values[finite], [0.5, 99.5])
    if not hi > lo:
        index[finite] = 0
        return index
    bins = np.floor((values[finite] - lo) / (hi - lo) * n_bins).astype(np.int64)
    index[finite] = np.clip(bins, 0, n_bins - 1)
    return index


def strata(photometry: Photometry, rows: np.ndarray, bins: Sequence[int]) -> np.ndarray:
    """Cell number of each row in a grid of r, u-g and g-r (the first two colours); an unusable
    colour is a cell of its own."""
    n_r, n_c1, n_c2 = (int(b) for b in bins)
    i_r = _bin_index(photometry.r[rows], n_r)
    i_1 = _bin_index(photometry.colors[rows, 0], n_c1)
    i_2 = _bin_index(photometry.colors[rows, 1], n_c2)
    return (i_r * (n_c1 + 1) + i_1) * (n_c2 + 1) + i_2


def choose_training_subsample(
    photometry: Photometry,
    n: int,
    strategy: str = "stratified",
    seed: int = 0,
    *,
    stratified_fraction: float = 0.5,
    bins: Sequence[int] = (6, 10, 10),
    missing_colors: bool = True,
) -> np.ndarray:
    """Indices (ascending) of the stars to label with the Bayesian estimator.

    Only rows the networks can take are eligible (:func:`network_inputs_usable` with
    ``missing_colors``; the pipeline estimates the others with the Bayesian method anyway).
    ``n`` stars are drawn among those with every colour usable; with ``missing_colors``, stars
    lacking a colour are drawn on top, at the same rate (at most ``n`` of them), so that they do
    not take training examples away from the complete stars.

    Parameters
    ----------
    photometry
        The patch's photometry.
    n
        Subsample size; all eligible rows are returned when there are no more than ``n``.
    strategy
        ``"random"``: a uniform draw. ``"stratified"``: the eligible stars are binned in r,
        u-g and g-r (``bins`` equal-width bins each, between the 0.5th and 99.5th percentiles,
        outliers joining the end bins); ``stratified_fraction`` of the subsample is drawn
        evenly over the occupied cells (round robin: every cell gives one star, then a second,
        ..., cells that run out drop out), so that sparse regions of the input space such as
        blue metal-poor stars or bright stars are represented; the rest is drawn uniformly at
        random from the remaining stars, so the dense regions keep most of the weight.
    seed
        Seed of the draw; the same seed gives the same subsample.
    stratified_fraction, bins
        See ``strategy``.

    Returns
    -------
    numpy.ndarray
        Sorted int64 row indices: ``min(n, complete)`` complete stars plus the stars lacking a
        colour.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(n, bool) or int(n) < 0:
        raise ValueError(f"subsample size must be a non-negative integer, got {n!r}")
    n = int(n)
    complete = network_inputs_usable(photometry, missing_colors=False)
    partial = network_inputs_usable(photometry, missing_colors) & ~complete
    seeds = np.random.SeedSequence(seed).spawn(2)
    chosen = _draw(
        photometry, np.flatnonzero(complete), n, strategy, seeds[0], stratified_fraction, bins
    )
    if partial.any():
        n_complete = max(int(complete.sum()), 1)
        n_partial = min(n, int(math.ceil(n * int(partial.sum()) / n_complete)))
        extra = _draw(
            photometry,
            np.flatnonzero(partial),
            n_partial,
            strategy,
            seeds[1],
            stratified_fraction,
            bins,
        )
        chosen = np.sort(np.concatenate([chosen, extra]))
    return chosen.astype(np.int64)


def _draw(
    photometry: Photometry,
    eligible: np.ndarray,
    n: int,
    strategy: str,
    seed: np.random.SeedSequence,
    stratified_fraction: float,
    bins: Sequence[int],
) -> np.ndarray:
    """``min(n, eligible.size)`` of the ``eligible`` rows, sorted (see
    :func:`choose_training_subsample`)."""
    if eligible.size <= n:
        return eligible.astype(np.int64)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return np.sort(rng.choice(eligible, size=n, replace=False)).astype(np.int64)

    n_even = int(round(float(stratified_fraction) * n))
    cell = strata(photometry, eligible, bins)
    # random order, then each star's rank within its cell: rank 0 of every cell comes first
    order = rng.permutation(eligible.size)
    by_cell = order[np.argsort(cell[order], kind="stable")]
    sorted_cells = cell[by_cell]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, sorted_cells.size]))
    rank = np.arange(sorted_cells.size) - group_start
    # within a rank, cells in random order
    key = rank + rng.random(rank.size)
    even = by_cell[np.argsort(key, kind="stable")[:n_even]]
    taken = np.zeros(eligible.size, dtype=bool)
    taken[even] = True
    rest = np.flatnonzero(~taken)
    fill = rng.choice(rest, size=n - n_even, replace=False)
    chosen = np.concatenate([even, fill])
    return np.sort(eligible[chosen]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------


def posterior_grid(locus: Locus | None, config: PipelineConfig) -> Locus:
    """The locus on the configured posterior grid (the built-in locus when ``locus`` is None)."""
    return _grid_with_steps(locus, config.bayes_feh_step, config.bayes_mr_step)


def _grid_with_steps(locus: Locus | None, feh_step: float | None, mr_step: float | None) -> Locus:
    """``locus`` (the built-in one when None) resampled to the steps, unless None or equal."""
    base = locus if locus is not None else build_locus()
    if feh_step is None or mr_step is None:
        return base
    same = math.isclose(base.feh_step, feh_step, rel_tol=1e-6) and math.isclose(
        base.mr_step, mr_step, rel_tol=1e-6
    )
    return base if same else base.resample(float(feh_step), float(mr_step))


def _chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, rows.size, size):
        yield rows[start : start + size]


def _progress(enabled: bool, total: int, desc: str, unit: str = "star") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


class _Output:
    """Column arrays of the result, filled stage by stage."""

    def __init__(self, n: int) -> None:
        self.floats = {name: np.full(n, np.nan) for name in RESULT_FLOAT_COLUMNS}
        self.flags = np.zeros(n, dtype=np.int64)
        self.method = np.zeros(n, dtype=np.int8)  # index into _METHODS
        self.labelled = np.zeros(n, dtype=bool)

    def put_bayes(self, rows: np.ndarray, bayes: pd.DataFrame, r: np.ndarray) -> None:
        f = self.floats
        for p in PARAMETERS:
            f[f"{p}_mean"][rows] = bayes[f"{p}_mean"].to_numpy()
            std = bayes[f"{p}_std"].to_numpy()
            f[f"{p}_sigma"][rows] = std
            f[f"{p}_sigma_bayes"][rows] = std
            f[f"{p}_sigma_nn"][rows] = np.nan
        f["Qr_mean"][rows] = bayes["Qr_mean"].to_numpy()
        f["Qr_sigma"][rows] = bayes["Qr_std"].to_numpy()
        f["chi2min"][rows] = bayes["chi2min"].to_numpy()
        f["log_evidence"][rows] = bayes["log_evidence"].to_numpy()
        self._distance(rows, r)
        self.flags[rows] &= ~_FIT_FLAGS  # a network row handed back: the posterior's flags
        self.flags[rows] |= bayes["flags"].to_numpy(dtype=np.int64)
        self.method[rows] = _METHODS.index("bayes")

    def copy_rows(self, rows: np.ndarray, sources: np.ndarray) -> None:
        """Give ``rows`` the estimates, flags and method of ``sources`` (``labelled`` stays)."""
        for values in self.floats.values():
            values[rows] = values[sources]
        self.flags[rows] = self.flags[sources]
        self.method[rows] = self.method[sources]

    def put_nn(self, rows: np.ndarray, pred: Mapping[str, np.ndarray], r: np.ndarray) -> None:
        f = self.floats
        for p in PARAMETERS:
            for s in ("mean", "sigma", "sigma_nn", "sigma_bayes"):
                f[f"{p}_{s}"][rows] = pred[f"{p}_{s}"]
        f["Qr_mean"][rows] = pred["Qr_mean"]
        f["Qr_sigma"][rows] = pred["Qr_sigma"]
        self._distance(rows, r)
        self.method[rows] = _METHODS.index("nn")

    def _distance(self, rows: np.ndarray, r: np.ndarray) -> None:
        f = self.floats
        dm = r - f["Qr_mean"][rows]
        f["DM_mean"][rows] = dm
        f["DM_sigma"][rows] = f["Qr_sigma"][rows]
        f["dist_pc"][rows] = 10.0 ** (0.2 * dm + 1.0)

    def frame(self) -> pd.DataFrame:
        data: dict[str, Any] = dict(self.floats)
        data["flags"] = self.flags
        data["method"] = pd.Categorical.from_codes(self.method, categories=list(_METHODS))
        data["labelled"] = self.labelled
        return pd.DataFrame(data)


def _bayes_rows(
    estimator: BayesEstimator,
    photometry: Photometry,
    rows: np.ndarray,
    out: _Output,
    chunk: int,
    bar: Any,
) -> None:
    """Bayesian estimates of ``rows`` into ``out``, ``chunk`` rows per call."""
    for part in _chunks(rows, chunk):
        bayes = estimator.predict(photometry.subset(part))
        out.put_bayes(part, bayes, photometry.r[part])
        bar.update(part.size)


def _as_photometry(
    data: pd.DataFrame | Photometry, band_set: BandSet, columns: ColumnMap | None, expected: str
) -> Photometry:
    """``data`` as photometry in ``band_set``: a catalogue is read with ``columns``; photometry
    in another band set is refused (``expected`` names what sets the band set)."""
    if not isinstance(data, Photometry | pd.DataFrame):
        raise TypeError(
            "the stars must be a pandas DataFrame of the catalogue or a Photometry, got "
            f"{type(data).__name__}"
        )
    if not isinstance(data, Photometry):
        return photometry_from_frame(data, band_set, columns)
    if data.band_set.name != band_set.name:
        raise ValueError(
            f"photometry is in band set {data.band_set.name!r}, {expected} {band_set.name!r}"
        )
    return data


def _network_rows(
    model: PhotoDNetwork,
    photometry: Photometry,
    rows: np.ndarray,
    out: _Output,
    fit_check: BayesEstimator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Network estimates of ``rows`` into ``out``, flagged ``NN_OUT_OF_DOMAIN``,
    ``NN_INVALID_INPUT``, ``COLOR_UNUSABLE`` and ``TOO_FEW_COLORS`` (as the Bayesian estimator
    flags a row with an unusable colour or fewer than two usable ones, whichever estimator
    gives it its values), with the chi2 and the
    ``POOR_FIT`` and ``AR_AT_BOUND`` flags of ``fit_check.best_fit`` for the rows the networks
    estimate.

    Returns the rows' out-of-domain and invalid-input masks.
    """
    sub = photometry.subset(rows)
    pred = model.predict(sub)
    out.put_nn(rows, pred, sub.r)
    ood = pred["out_of_domain"] | (beyond_dust_domain(model, sub) & ~pred["invalid_input"])
    invalid = pred["invalid_input"]
    usable = np.isfinite(sub.colors) & np.isfinite(sub.color_errors)
    out.flags[rows[ood]] |= Flags.NN_OUT_OF_DOMAIN
    out.flags[rows[invalid]] |= Flags.NN_INVALID_INPUT
    out.flags[rows[~usable.all(axis=1)]] |= Flags.COLOR_UNUSABLE
    out.flags[rows[usable.sum(axis=1) < 2]] |= Flags.TOO_FEW_COLORS
    if fit_check is not None:
        estimated = np.flatnonzero(~invalid)  # (rows handed back to Bayes later get its own)
        chi2, fit_flags = fit_check.best_fit(sub.subset(estimated))
        out.floats["chi2min"][rows[estimated]] = chi2
        out.flags[rows[estimated]] |= fit_flags
        a_max = a_max_for(sub.subset(estimated), fit_check.config)
        out.flags[rows[estimated]] |= ar_near_max_flags(pred["Ar_mean"][estimated], a_max)
    return ood, invalid


def estimate_rows(
    model: PhotoDNetwork | None,
    estimator: BayesEstimator,
    photometry: Photometry,
    config: PipelineConfig,
) -> pd.DataFrame:
    """Estimates for stars outside the training subsample of a trained patch, by
    :func:`run_patch`'s rules for its network rows: network estimates and flags, the
    best-fit check (``config.nn_fit_check``), the Bayesian ``estimator`` for rows the networks
    cannot take (and out-of-domain rows if ``config.bayes_out_of_domain``), and the prior's
    flags. With ``model`` None every row gets the Bayesian estimate. Columns as
    :func:`run_patch`'s, ``labelled`` False."""
    rows = np.arange(len(photometry))
    out = _Output(len(photometry))
    back = rows
    if model is not None and rows.size:
        check = estimator if config.nn_fit_check else None
        ood, invalid = _network_rows(model, photometry, rows, out, check)
        back = rows[invalid | ood] if config.bayes_out_of_domain else rows[invalid]
    with _progress(False, back.size, "bayes") as bar:
        _bayes_rows(estimator, photometry, back, out, int(config.chunk_size), bar)
    out.flags |= _prior_flags(estimator, photometry.r)
    return out.frame()


def _prior_r_record(intervals: Sequence[Any] | None) -> dict[str, Any]:
    """A prior's r coverage as run summaries and model files keep it: ``prior_r_range``
    [lo, hi] from its first to its last bin, ``prior_r_intervals`` the [lo, hi] each that its
    bins cover (several where they leave gaps); None for both without a range. ``intervals``:
    ``PriorGrid.r_intervals``, or one [lo, hi] range."""
    if intervals is None:
        return {"prior_r_range": None, "prior_r_intervals": None}
    pairs = np.asarray(intervals, dtype=float).reshape(-1, 2)
    return {
        "prior_r_range": [float(pairs[:, 0].min()), float(pairs[:, 1].max())],
        "prior_r_intervals": pairs.tolist(),
    }


def _prior_flags(estimator: BayesEstimator, r: np.ndarray) -> np.ndarray:
    """The prior's flags of every row, network rows too (their labels came from the same
    prior): ``R_OUTSIDE_PRIOR`` outside its r bins, ``NO_PRIOR`` for a flat prior."""
    flags = prior_range_flags(estimator.prior.r_intervals, r)
    return flags | (0 if estimator.has_prior else Flags.NO_PRIOR)


#: the flags of the best-fit check
_FIT_FLAGS = Flags.POOR_FIT | Flags.AR_AT_BOUND

#: BayesConfig fields a model keeps for the best-fit check of its predictions
_FIT_CHECK_SETTINGS = (
    "error_floor",
    "default_a_max",
    "dust_min_fraction",
    "dust_scale",
    "dust_offset",
    "color_covariance",
)


def _labels_fit_check(info: Mapping[str, Any], config: PipelineConfig) -> dict[str, Any]:
    """The fit-check record (:func:`_fit_check_record`) of labels made by ``photodist bayes``
    or ``run``, from their run summary ``info``: the estimator settings and posterior grid
    they used, ``config``'s where the summary is silent."""
    recorded = info.get("config")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    base = config.bayes_config()
    settings = {
        k: recorded.get(k, getattr(base, k)) for k in _FIT_CHECK_SETTINGS if k != "error_floor"
    }
    floor = used_error_floor(info)
    if floor is None and isinstance(recorded.get("error_floor"), int | float):
        floor = float(recorded["error_floor"])
    settings["error_floor"] = base.error_floor if floor is None else floor
    grid = info.get("posterior_grid")
    if isinstance(grid, Mapping):
        steps = (grid.get("feh_step"), grid.get("mr_step"))
    else:
        steps = (recorded.get("bayes_feh_step"), recorded.get("bayes_mr_step"))
    if None in steps:
        steps = (config.bayes_feh_step, config.bayes_mr_step)
    return {
        "bayes_config": {k: settings[k] for k in _FIT_CHECK_SETTINGS},
        "posterior_grid": [float(steps[0]), float(steps[1])],
    }


def _fit_check_record(bayes_config: BayesConfig, grid: Locus) -> dict[str, Any]:
    """What :func:`predict_with_model` needs to check a model's predictions as
    :func:`run_patch` does: the labels' estimator settings and posterior grid steps."""
    return {
        "bayes_config": {k: getattr(bayes_config, k) for k in _FIT_CHECK_SETTINGS},
        "posterior_grid": [float(grid.feh_step), float(grid.mr_step)],
    }


def training_record(model: PhotoDNetwork) -> dict[str, Any]:
    """The pipeline's record kept with a trained model (``training_metadata_["user"]``:
    the labels' prior r intervals, the training stars' dust-map range, the best-fit check's
    settings), checked; ``{}`` for a model trained without one.

    Raises
    ------
    ModelFileError
        An entry of the record that the predictions could not use (e.g. a model file edited
        by hand).
    """
    meta = getattr(model, "training_metadata_", None) or {}
    user = meta.get("user") if isinstance(meta, Mapping) else None
    if not isinstance(user, Mapping | None):
        raise ModelFileError("the network's training record is not a mapping")
    user = dict(user or {})
    for key in ("prior_r_intervals", "prior_r_range", "dust_map_range"):
        value = user.get(key)
        if value is None:
            continue
        try:
            pairs = np.asarray(value, dtype=float).reshape(-1, 2)
        except (TypeError, ValueError):
            pairs = np.empty((0, 2))
        single = key != "prior_r_intervals"
        if (
            not pairs.size
            or (single and len(pairs) != 1)
            or np.isnan(pairs).any()
            or np.any(pairs[:, 0] > pairs[:, 1])
        ):
            raise ModelFileError(f"the network's {key} is not [low, high] numbers: {value!r}")
    fit = user.get("fit_check") or {}
    settings = fit.get("bayes_config") if isinstance(fit, Mapping) else None
    grid = fit.get("posterior_grid") if isinstance(fit, Mapping) else None
    try:
        BayesConfig(**{k: v for k, v in dict(settings or {}).items() if k in _FIT_CHECK_SETTINGS})
        steps = [float(v) for v in grid or (0.05, 0.1)]
        if len(steps) != 2 or not all(math.isfinite(v) and v > 0.0 for v in steps):
            raise ValueError("two positive grid steps needed")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"the network's best-fit check settings are unusable ({exc})") from exc
    return user


def _fit_check_for(record: Mapping[str, Any], locus: Locus | None) -> BayesEstimator:
    """The best-fit check of a saved model's predictions, from its :func:`training_record`
    (the estimator's defaults for models saved without one)."""
    record = record.get("fit_check") or {}
    settings = record.get("bayes_config") or {}
    config = BayesConfig(**{k: v for k, v in settings.items() if k in _FIT_CHECK_SETTINGS})
    feh_step, mr_step = record.get("posterior_grid") or (0.05, 0.1)
    return BayesEstimator(_grid_with_steps(locus, feh_step, mr_step), config=config)


#: Slack of the dust-map domain (:func:`beyond_dust_domain`): a fraction of the training
#: stars' range, and at least this many mag.
DUST_DOMAIN_SLACK = (0.1, 0.02)


def _dust_map_range(photometry: Photometry) -> list[float] | None:
    """[lowest, highest] dust-map A_r of the stars (None without map values)."""
    if photometry.dust is None:
        return None
    values = photometry.dust[np.isfinite(photometry.dust)]
    return [float(values.min()), float(values.max())] if values.size else None


def beyond_dust_domain(model: PhotoDNetwork, photometry: Photometry) -> np.ndarray:
    """Rows whose dust-map A_r lies beyond the range of the model's training stars (by more
    than :data:`DUST_DOMAIN_SLACK`): their labels would have had other A_r prior bounds
    (1.3 A_map + 0.1) than any the networks learnt from, e.g. stars of a dustier patch than
    the model's. False where the model or the stars have no map values."""
    outside = np.zeros(len(photometry), dtype=bool)
    record = training_record(model).get("dust_map_range")
    if record is None or photometry.dust is None:
        return outside
    lo, hi = np.asarray(record, dtype=float).reshape(2)
    slack = max(DUST_DOMAIN_SLACK[0] * (hi - lo), DUST_DOMAIN_SLACK[1])
    with np.errstate(invalid="ignore"):
        return (photometry.dust < lo - slack) | (photometry.dust > hi + slack)


def train_networks(
    data: pd.DataFrame | Photometry,
    labels: pd.DataFrame,
    config: PipelineConfig | None = None,
    *,
    columns: ColumnMap | None = None,
    prior_r_range: Sequence[float] | None = None,
    labels_info: Mapping[str, Any] | None = None,
) -> PhotoDNetwork:
    """Train the moments and secondary networks on Bayesian labels of a catalogue's stars.

    The networks stage on its own (``photodist train``): label stars of a patch with
    ``photodist bayes`` (a subsample chosen as one likes), train here, then predict any number
    of the patch's stars with :func:`predict_with_model`. :func:`run_patch` does all three
    for one patch.

    Parameters
    ----------
    data
        The labelled stars (columns as in ``columns``) or their :class:`Photometry`.
    labels
        Bayesian estimates of the same rows, in the same order: ``{p}_mean`` and ``{p}_std``
        (``BayesEstimator.predict`` output) or ``{p}_sigma`` for p in Mr, Ar, FeH. A
        :func:`run_patch` result serves too: only its ``method == "bayes"`` rows are used.
    config
        Network settings (``nn_*`` fields, ``band_set``, ``seed``, ``min_train``) of
        :class:`PipelineConfig`.
    columns
        Catalogue column names (default ``{band}mag``, ``{band}Err``).
    prior_r_range
        The r intervals of the labels' prior (``PriorGrid.r_intervals``, or one [lo, hi]
        range), kept with the model: :func:`predict_with_model` flags rows outside them
        ``R_OUTSIDE_PRIOR``; by default those ``labels_info`` records.
    labels_info
        The labels' run summary (``LABELS.run.json`` of ``photodist bayes`` or ``run``): the
        estimator settings (error floor, A_r bounds, colour covariance) and posterior grid
        it records go with the model, so that :func:`predict_with_model`'s best-fit check
        judges stars as the labels' estimator did. None: ``config``'s.

    Raises
    ------
    ValueError
        The label rows do not match the stars, or fewer than ``config.min_train`` stars have
        finite labels and network inputs.
    """
    config = config or PipelineConfig()
    phot = _as_photometry(data, get_band_set(config.band_set), columns, "the configuration says")
    if len(labels) != len(phot):
        raise ValueError(
            f"{len(labels)} label rows for {len(phot)} stars: the labels must be the Bayesian "
            "estimates of the same catalogue, row by row"
        )
    if isinstance(data, pd.DataFrame):
        for key in (c for c in ID_COLUMNS if c in data.columns and c in labels.columns):
            if not np.array_equal(data[key].to_numpy(), labels[key].to_numpy()):
                raise ValueError(
                    f"the labels' {key} values are not the catalogue's, row by row: the labels "
                    "must be the Bayesian estimates of the same catalogue in the same order"
                )

    def label(p: str, kinds: Sequence[str]) -> np.ndarray:
        for kind in kinds:
            if f"{p}_{kind}" in labels.columns:
                values = pd.to_numeric(labels[f"{p}_{kind}"], errors="coerce")
                return values.to_numpy(dtype=float, na_value=np.nan)
        raise MissingColumnError(f"labels have no column {p}_{kinds[0]}")

    mean = np.column_stack([label(p, ("mean",)) for p in PARAMETERS])
    sigma = np.column_stack([label(p, ("std", "sigma")) for p in PARAMETERS])
    rows = np.isfinite(mean).all(axis=1) & np.isfinite(sigma).all(axis=1)
    rows &= network_inputs_usable(phot, missing_colors=config.nn_missing_colors)
    if "method" in labels.columns:
        rows &= labels["method"].astype(str).to_numpy() == "bayes"
    n_labels = int(rows.sum())
    if n_labels < config.min_train:
        raise ValueError(
            f"only {n_labels} stars have Bayesian labels and network inputs; at least "
            f"{config.min_train} are needed (PipelineConfig.min_train)"
        )
    if labels_info is None:
        fit_check = _fit_check_record(config.bayes_config(), posterior_grid(None, config))
    else:
        fit_check = _labels_fit_check(labels_info, config)
        if prior_r_range is None:
            prior_r_range = labels_info.get("prior_r_intervals", labels_info.get("prior_r_range"))
    model = config.network(int(config.seed))
    model.fit(
        phot.subset(rows),
        mean[rows],
        sigma[rows],
        metadata={
            "labels": "Bayesian posterior means and standard deviations",
            "pipeline": config.to_dict(),
            "n_label_rows": len(labels),
            **_prior_r_record(prior_r_range),
            "dust_map_range": _dust_map_range(phot.subset(rows)),
            "flat_prior": _labelled_without_prior(labels, rows),
            "fit_check": fit_check,
        },
    )
    return model


def _labelled_without_prior(labels: pd.DataFrame, rows: np.ndarray) -> bool:
    """Whether every label row used carries NO_PRIOR (labels made with a flat prior)."""
    if "flags" not in labels.columns or not rows.any():
        return False
    flags = pd.to_numeric(labels["flags"], errors="coerce").to_numpy()[rows]
    return bool(np.all(np.isfinite(flags)) and np.all(flags.astype(np.int64) & Flags.NO_PRIOR))


def kept_names(keep: Sequence[str] | str) -> list[str]:
    """The ``keep`` column names (a bare string is one name); names of output columns are
    refused, before any work when called first."""
    keep = [keep] if isinstance(keep, str) else list(keep)
    clash = sorted(set(keep) & set(_Output(0).frame().columns))
    if clash:
        raise ValueError(f"kept columns {clash} have the names of output columns; rename them")
    return keep


def _with_input_rows(
    result: pd.DataFrame, frame: pd.DataFrame | None, keep: Sequence[str] | str
) -> pd.DataFrame:
    """The estimates with the input's ``keep`` columns first and the input's index, so that
    ``frame["Mr"] = result["Mr_mean"]`` aligns row by row whatever the frame's index."""
    if frame is None:
        return result
    keep = kept_names(keep)
    if keep:
        kept = frame[[c for c in keep if c in frame.columns]].reset_index(drop=True)
        result = pd.concat([kept, result], axis=1)
    result.index = frame.index
    return result


def predict_with_model(
    model: PhotoDNetwork,
    data: pd.DataFrame | Photometry,
    *,
    columns: ColumnMap | None = None,
    keep: Sequence[str] = (),
    chunk_size: int = 1_000_000,
    locus: Locus | None = None,
    fit_check: bool = True,
) -> pd.DataFrame:
    """Network estimates for every row of a catalogue, with a model trained earlier.

    For catalogues of a patch whose networks were trained already (``photodist run
    --save-model``, :meth:`photodist.nn.PhotoDNetwork.save`): a later data release, or stars
    that were not in the training run. There is no Bayesian fallback: rows the networks cannot
    take (no r, too few usable colours) keep NaN estimates and are flagged
    ``NN_INVALID_INPUT`` (and ``NO_R``, ``COLOR_UNUSABLE`` or ``TOO_FEW_COLORS``);
    ``photodist bayes`` estimates
    them.

    Parameters
    ----------
    model
        A fitted :class:`photodist.nn.PhotoDNetwork`; the catalogue must be in its band set.
    data
        The catalogue (columns as in ``columns``) or its :class:`Photometry`.
    columns
        Catalogue column names (default ``{band}mag``, ``{band}Err``).
    keep
        Catalogue columns copied to the front of the result when present (e.g. ids).
    chunk_size
        Rows per network call (bounds the working memory).
    locus
        The stellar locus of the best-fit check (``chi2min``, ``POOR_FIT``, ``AR_AT_BOUND``;
        default the built-in one), on the grid and with the settings the model was trained
        with.
    fit_check
        Run that check (``PipelineConfig.nn_fit_check``); False leaves ``chi2min`` NaN.

    Returns
    -------
    pandas.DataFrame
        One row per input row, same order, with :func:`run_patch`'s columns (``method`` is
        ``"nn"``, ``labelled`` False, ``log_evidence`` NaN, ``chi2min`` the best fit).
    """
    if not getattr(model, "band_set_", None):
        raise ValueError("the model is not fitted")
    phot = _as_photometry(data, get_band_set(model.band_set_), columns, "the model was trained on")
    if getattr(model, "dust_input", False) and phot.dust is None and len(phot):
        raise ValueError(
            "the model takes the dust-map A_r as an input, and the catalogue has no dust column "
            "(see ColumnMap.dust / --dust-column, --ebv-column)"
        )
    frame = None if isinstance(data, Photometry) else data
    kept_names(keep)  # before any work
    if int(chunk_size) < 1:
        raise ValueError("chunk_size must be positive")
    out = _Output(len(phot))
    n_ood = n_invalid = 0
    user = training_record(model)
    check = _fit_check_for(user, locus) if fit_check else None
    for part in _chunks(np.arange(len(phot)), int(chunk_size)):
        ood, invalid = _network_rows(model, phot, part, out, check)
        n_ood += int(ood.sum())
        n_invalid += int(invalid.sum())
        # a row without a network estimate for want of r says so, as a Bayesian row would
        bad = part[invalid]
        out.flags[bad[~np.isfinite(phot.r[bad])]] |= Flags.NO_R
    # the r range of the labels' prior, when the model's metadata has it
    out.flags |= prior_range_flags(user.get("prior_r_intervals", user.get("prior_r_range")), phot.r)
    if user.get("flat_prior"):  # labels without a prior: NO_PRIOR, as the run flagged them
        out.flags |= Flags.NO_PRIOR
    result = out.frame()
    result = _with_input_rows(result, frame, keep)
    result.attrs["photodist_pipeline"] = {
        "mode": "nn_only",
        "n_stars": len(phot),
        "n_nn": len(phot) - n_invalid,
        "n_invalid_input": n_invalid,
        "n_out_of_domain": n_ood,
    }
    return result


def run_patch(
    data: pd.DataFrame | Photometry,
    prior: Any = None,
    locus: Locus | None = None,
    config: PipelineConfig | None = None,
    *,
    columns: ColumnMap | None = None,
    keep: Sequence[str] = (),
) -> tuple[pd.DataFrame, dict[str, float], PhotoDNetwork | None]:
    """Estimate M_r, A_r, [Fe/H] and distances for every star of one patch (hybrid method).

    Parameters
    ----------
    data
        The patch's catalogue (columns as in ``columns``) or its :class:`Photometry`.
    prior
        Prior map for the patch (``photodist.priors.PriorMap`` or ``photodist.bayes.PriorGrid``);
        None for a flat prior (every row flagged NO_PRIOR: the network rows learnt from
        labels without a prior).
    locus
        Stellar locus (default: the built-in locus); resampled to the configured posterior grid.
    config
        Pipeline settings (default :class:`PipelineConfig`).
    columns
        Catalogue column names (default ``{band}mag``, ``{band}Err``, dust ``Ar``).
    keep
        Catalogue columns copied to the front of the result when present (e.g. ids).

    Returns
    -------
    result : pandas.DataFrame
        One row per input row, same order; columns described in the module docstring.
    timings : dict
        Seconds per stage (:data:`STAGES`) and ``total``.
    model : PhotoDNetwork or None
        The trained networks, or None when every star got the Bayesian estimate.
    """
    config = config or PipelineConfig()
    band_set = get_band_set(config.band_set)
    timings = dict.fromkeys(STAGES, 0.0)
    start_all = time.perf_counter()
    frame = None if isinstance(data, Photometry) else data
    kept_names(keep)  # before any work
    phot = _as_photometry(data, band_set, columns, "the configuration says")
    grid = posterior_grid(locus, config)
    n = len(phot)
    # the training size counts stars with every colour usable (see choose_training_subsample)
    n_usable = int(network_inputs_usable(phot, missing_colors=False).sum())
    n_train = config.training_size(n_usable)
    seeds = np.random.SeedSequence(int(config.seed)).spawn(2)
    subsample_seed, nn_seed = (int(s.generate_state(1)[0]) for s in seeds)
    out = _Output(n)
    chunk = int(config.chunk_size)
    info: dict[str, Any] = {"n_stars": n, "n_usable": n_usable, "n_train_requested": n_train}

    hybrid = n_usable > n_train and n_train >= config.min_train
    reason = None
    if n_train < config.min_train:
        reason = f"n_train = {n_train} is below min_train = {config.min_train}"
    elif not hybrid:
        reason = f"{n_usable} usable stars, not more than n_train = {n_train}"
        reason += _colors_missing_everywhere(phot)
    if hybrid and n_usable <= config.bayes_all_below:
        hybrid = False
        reason = f"{n_usable} usable stars, at most bayes_all_below = {config.bayes_all_below}"
    if hybrid and config.nn_dust_input and (phot.dust is None or not np.isfinite(phot.dust).any()):
        raise ValueError(
            "nn_dust_input gives the networks the dust-map A_r as an input, and the catalogue "
            "has no dust-map values (see ColumnMap.dust / --dust-column, --ebv-column)"
        )
    model: PhotoDNetwork | None = None
    train_rows = np.empty(0, dtype=np.int64)
    # a star listed several times counts once in the fits and the training set
    first = phot.first_occurrences()
    distinct = np.flatnonzero(first == np.arange(n))
    info["n_duplicate_rows"] = n - distinct.size
    fit_phot = phot if distinct.size == n else phot.subset(distinct)
    if hybrid:
        chosen = choose_training_subsample(
            fit_phot,
            n_train,
            config.strategy,
            subsample_seed,
            stratified_fraction=config.stratified_fraction,
            bins=config.strata_bins,
            missing_colors=config.nn_missing_colors,
        )
        train_rows = distinct[chosen]
    timings["prepare"] = time.perf_counter() - start_all
    t0 = time.perf_counter()
    floor = config.resolve_error_floor(phot.subset(train_rows) if hybrid else fit_phot, grid, prior)
    info["error_floor"] = floor.to_dict()
    bayes_config = config.bayes_config(floor.floor)
    timings["error_floor"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prior, temper = resolve_prior_temper(
        config.prior_temper,
        fit_phot,
        grid,
        prior,
        bayes_config,
        seed=subsample_seed,
        feh_shift=config.prior_feh_shift,
    )
    info["prior_temper"] = temper.to_dict()
    timings["prior_temper"] = time.perf_counter() - t0
    profile: DustProfile | None = None
    if config.dust_prior == "profile":
        t0 = time.perf_counter()
        fit_stars = phot.subset(train_rows) if hybrid else fit_phot
        profile, info["dust_profile"] = fit_profile_record(
            fit_stars, grid, prior, bayes_config, seed=subsample_seed
        )
        timings["dust_profile"] = time.perf_counter() - t0
    estimator = BayesEstimator(grid, prior, bayes_config, dust_profile=profile)
    if hybrid:
        t0 = time.perf_counter()
        with _progress(config.progress, train_rows.size, "bayes (labels)") as bar:
            _bayes_rows(estimator, phot, train_rows, out, _LABEL_CHUNK, bar)
        out.labelled[train_rows] = True
        # the other copies of a labelled star take its Bayesian estimate as they are
        label_copies = np.flatnonzero((first != np.arange(n)) & out.labelled[first])
        out.copy_rows(label_copies, first[label_copies])
        timings["bayes_label"] = time.perf_counter() - t0

        f = out.floats
        label_mean = np.column_stack([f[f"{p}_mean"][train_rows] for p in PARAMETERS])
        label_sigma = np.column_stack([f[f"{p}_sigma"][train_rows] for p in PARAMETERS])
        finite = np.isfinite(label_mean).all(axis=1) & np.isfinite(label_sigma).all(axis=1)
        n_labels = int(finite.sum())
        if n_labels < config.min_train:
            hybrid = False
            reason = f"only {n_labels} finite Bayesian labels"
    if hybrid:
        t0 = time.perf_counter()
        with _progress(config.progress, 1, "train", unit="model") as bar:
            # a profile relative to the map gives labels that follow each star's map value:
            # the networks then take it as an input, whatever nn_dust_input says
            relative = profile is not None and profile.relative
            model = config.network(nn_seed, dust_input=config.nn_dust_input or relative)
            model.fit(
                phot.subset(train_rows),
                label_mean,
                label_sigma,
                metadata={
                    "labels": "Bayesian posterior means and standard deviations",
                    "pipeline": config.to_dict(),
                    "n_stars_patch": n,
                    # rows outside it are flagged R_OUTSIDE_PRIOR, later predictions too
                    **_prior_r_record(estimator.prior.r_intervals),
                    # rows of other map values are flagged NN_OUT_OF_DOMAIN
                    "dust_map_range": _dust_map_range(phot.subset(train_rows)),
                    "flat_prior": not estimator.has_prior,  # rows flagged NO_PRIOR
                    "fit_check": _fit_check_record(bayes_config, grid),
                },
            )
            bar.update(1)
        timings["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        todo = np.setdiff1d(np.flatnonzero(~out.labelled), label_copies, assume_unique=True)
        fallback_parts = []
        n_ood = 0
        with _progress(config.progress, todo.size, "nn (predict)") as bar:
            for part in _chunks(todo, chunk):
                check = estimator if config.nn_fit_check else None
                ood, invalid = _network_rows(model, phot, part, out, check)
                n_ood += int(ood.sum())
                back = invalid | ood if config.bayes_out_of_domain else invalid
                fallback_parts.append(part[back])
                bar.update(part.size)
        timings["predict"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fallback = np.concatenate(fallback_parts) if fallback_parts else train_rows[:0]
        with _progress(config.progress, fallback.size, "bayes (fallback)") as bar:
            _bayes_rows(estimator, phot, fallback, out, chunk, bar)
        timings["bayes_fallback"] = time.perf_counter() - t0
        info.update(
            mode="hybrid",
            n_labelled=int(train_rows.size),
            n_label_copies=int(label_copies.size),
            n_nn=int(np.count_nonzero(out.method == _METHODS.index("nn"))),
            n_bayes_fallback=int(fallback.size),
            n_out_of_domain=n_ood,
        )
    else:
        t0 = time.perf_counter()
        rows = np.flatnonzero(~out.labelled)  # rows labelled already keep their estimates
        out.labelled[:] = False
        with _progress(config.progress, rows.size, "bayes (all)") as bar:
            _bayes_rows(estimator, phot, rows, out, chunk, bar)
        timings["bayes_all"] = time.perf_counter() - t0
        info.update(
            mode="bayes_only",
            reason=reason,
            n_labelled=0,
            n_label_copies=0,
            n_nn=0,
            n_bayes_fallback=0,
        )
        info["n_out_of_domain"] = 0
    out.flags |= _prior_flags(estimator, phot.r)
    info["n_ar_near_bound"], info["n_ar_estimates"] = ar_near_bound(
        out.floats["Ar_mean"], a_max_for(phot, bayes_config)
    )

    result = out.frame()
    result = _with_input_rows(result, frame, keep)
    timings["total"] = time.perf_counter() - start_all
    info["timings"] = {k: round(v, 4) for k, v in timings.items()}
    info["config"] = config.to_dict()
    info["posterior_grid"] = {
        "feh_step": grid.feh_step,
        "mr_step": grid.mr_step,
        "shape": list(grid.shape),
    }
    info["prior"] = prior is not None
    info.update(_prior_r_record(estimator.prior.r_intervals))
    result.attrs["photodist_pipeline"] = info
    return result, timings, model
