"""Architecture search for the moments network with Hyperband (Li et al. 2018).

Mrakovčić, Ivezić & Palaversa (2025, AJ 170, 72) chose their network with Hyperband over
1-10 hidden layers of 1-50 neurons, each with its own activation, trained with Adam from a
learning rate of 0.01 reduced by a factor 0.9 on plateaus. This module redoes that search for
one labelled training set on one machine:

* the search space is :func:`suggest_spec` (every activation of :data:`photodist.nn.ACTIVATIONS`);
* every trial trains the moments network on the same split and standardisation as
  :meth:`photodist.nn.PhotoDNetwork.fit` (same seed: same split, same initialisation) and
  reports the best validation moments loss after every epoch; optuna's
  :class:`~optuna.pruners.HyperbandPruner` (epochs as the resource) stops poor trials early;
* the study lives in an optuna journal file (or an SQLite database), so a second call resumes
  it and several processes, or Dask workers, can share it;
* the paper's winning architecture is enqueued as a fixed first trial, which shows where it
  ranks on the user's data;
* the best searched trials and the paper default are finally retrained on other splits
  ("re-checks"): one split's loss is noisy, so the recommended architecture is the one with
  the lowest mean loss over those splits.

Inputs are a labelled set (:class:`LabelledSet`): network features and Bayesian posterior means
and standard deviations, read from a file (:func:`labelled_set_from_file`) or made from a
simulated patch (:func:`labelled_set_from_patch`). :func:`run_tune` returns a
:class:`TuneResult` (best :class:`~photodist.nn.NetworkSpec`, table of the top trials, the
paper default's loss and rank) whose :meth:`TuneResult.write` stores the spec as JSON, the
table as CSV and a figure of the search (:func:`plot_search`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from photodist.bands import (
    ColumnMap,
    MissingColumnError,
    Photometry,
    first_numeric_column,
    get_band_set,
    numeric_column,
    photometry_from_frame,
)
from photodist.nn import (
    ACTIVATIONS,
    DEFAULT_DIVERGENCE_FACTOR,
    DEFAULT_LOSS_WEIGHTS,
    PARAMETERS,
    NetworkSpec,
    derive_seeds,
    fill_missing_colors,
    train_moments_run,
)

if TYPE_CHECKING:
    import optuna

__all__ = [
    "DEFAULT_MAX_EPOCHS",
    "DEFAULT_N_TRIALS",
    "DEFAULT_TIMEOUT",
    "SEARCH_SPACE",
    "LabelledSet",
    "SpecResult",
    "TuneData",
    "TuneResult",
    "feature_columns",
    "labelled_set_from_file",
    "labelled_set_from_frame",
    "labelled_set_from_patch",
    "load_study",
    "plot_search",
    "prepare_tune_data",
    "run_tune",
    "spec_params",
    "suggest_spec",
    "train_spec",
    "trials_table",
]

#: The paper's search space: hidden layers, neurons per layer, activations.
SEARCH_SPACE: dict[str, Any] = {
    "layers": (1, 10),
    "units": (1, 50),
    "activations": ACTIVATIONS,
}
#: Default budget of :func:`run_tune`: at most this many trials ...
DEFAULT_N_TRIALS = 1000
#: ... or this many seconds of search, whichever comes first; with the re-checks about 25
#: minutes in all on a 2-core machine with 10,000 labelled stars and two workers.
DEFAULT_TIMEOUT = 1260.0
#: Epochs of a trial that Hyperband does not stop (the maximum resource).
DEFAULT_MAX_EPOCHS = 243
#: Epochs of the first Hyperband rung (the minimum resource) and its reduction factor.
DEFAULT_MIN_EPOCHS = 3
DEFAULT_REDUCTION_FACTOR = 3
#: Training protocol of every trial (the paper's: Adam from 0.01, ReduceLROnPlateau 0.9).
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_LR_FACTOR = 0.9
DEFAULT_LR_PATIENCE = 10
DEFAULT_PATIENCE = 100
#: Re-checks after the search: the best searched trials retrained on this many other splits.
DEFAULT_N_RECHECK = 3
DEFAULT_RECHECK_SEEDS = 3
DEFAULT_BATCH_SIZE = 1024
DEFAULT_STUDY_NAME = "photodist-tune"
_SETTINGS_ATTR = "photodist_tune_settings"
_FIXED_ATTR = "fixed_spec"
_PAPER_ATTR = "paper_default"


def _optuna() -> Any:
    """The optuna module (an optional dependency: ``pip install photodist[scale]``)."""
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is installed with the scale extra
        raise ImportError(
            "architecture search needs optuna; install it with 'pip install photodist[scale]'"
        ) from exc
    return optuna


# ----------------------------------------------------------------------------------------------
# Labelled sets
# ----------------------------------------------------------------------------------------------


def feature_columns(band_set: str = "lsst") -> list[str]:
    """Column names of the network features in a labelled-set file.

    ``r``, the colours (``ug``, ``gr``, ...), ``r_err`` and the colour errors (``ug_err``, ...),
    in the order of :meth:`photodist.bands.Photometry.features`.
    """
    colors = list(get_band_set(band_set).colors)
    return ["r", *colors, "r_err", *[f"{c}_err" for c in colors]]


@dataclass
class LabelledSet:
    """Network features with Bayesian labels (and, for simulations, the truth).

    Attributes
    ----------
    features
        Shape (N, 2 + 2 n_colors), the columns of :func:`feature_columns`.
    label_mean, label_sigma
        Bayesian posterior means and standard deviations of (M_r, A_r, [Fe/H]), shape (N, 3).
    band_set
        Band set of the features.
    truth
        True (M_r, A_r, [Fe/H]), shape (N, 3), or None.
    """

    features: np.ndarray
    label_mean: np.ndarray
    label_sigma: np.ndarray
    band_set: str = "lsst"
    truth: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.band_set = get_band_set(self.band_set).name
        self.features = np.asarray(self.features, dtype=np.float64)
        self.label_mean = np.asarray(self.label_mean, dtype=np.float64)
        self.label_sigma = np.asarray(self.label_sigma, dtype=np.float64)
        n = self.features.shape[0]
        n_features = len(feature_columns(self.band_set))
        if self.features.ndim != 2 or self.features.shape[1] != n_features:
            raise ValueError(
                f"features must have shape (N, {n_features}) for band set {self.band_set!r}, "
                f"got {self.features.shape}"
            )
        arrays = [("label_mean", self.label_mean), ("label_sigma", self.label_sigma)]
        if self.truth is not None:
            self.truth = np.asarray(self.truth, dtype=np.float64)
            arrays.append(("truth", self.truth))
        for name, array in arrays:
            if array.shape != (n, len(PARAMETERS)):
                raise ValueError(f"{name} must have shape ({n}, {len(PARAMETERS)})")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, rows: np.ndarray) -> LabelledSet:
        """The rows selected by an integer or boolean index."""
        truth = None if self.truth is None else self.truth[rows]
        return LabelledSet(
            self.features[rows], self.label_mean[rows], self.label_sigma[rows], self.band_set, truth
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per star: the feature columns, ``{p}_mean``, ``{p}_std`` and ``{p}_true``."""
        data: dict[str, np.ndarray] = dict(
            zip(feature_columns(self.band_set), self.features.T, strict=True)
        )
        for j, p in enumerate(PARAMETERS):
            data[f"{p}_mean"] = self.label_mean[:, j]
            data[f"{p}_std"] = self.label_sigma[:, j]
        if self.truth is not None:
            for j, p in enumerate(PARAMETERS):
                data[f"{p}_true"] = self.truth[:, j]
        return pd.DataFrame(data)

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write :meth:`to_frame` (Parquet, CSV or FITS by suffix); :func:`labelled_set_from_file`
        reads it back."""
        from photodist.io import write_table

        return write_table(self.to_frame(), path, overwrite=overwrite)


def _label_column(frame: pd.DataFrame, param: str, kinds: Sequence[str]) -> np.ndarray:
    values = first_numeric_column(frame, [f"{param}_{kind}" for kind in kinds])
    if values is not None:
        return values
    names = " or ".join(f"{param}_{k}" for k in kinds)
    raise MissingColumnError(f"labelled set needs a column {names}")


def labelled_set_from_frame(
    frame: pd.DataFrame, band_set: str = "lsst", columns: ColumnMap | None = None
) -> LabelledSet:
    """A :class:`LabelledSet` from a table of features (or photometry) and Bayesian labels.

    Features come from the :func:`feature_columns` when all are present, otherwise from the
    magnitudes and errors (``columns``, default ``{band}mag`` / ``{band}Err``) through
    :func:`photodist.bands.photometry_from_frame`. Labels are ``{p}_mean`` with ``{p}_std``
    (the output of ``photodist bayes``) or ``{p}_sigma`` (the pipeline output) for p in M_r,
    A_r, [Fe/H]. A pipeline output keeps only its ``labelled`` rows (those carry Bayesian
    labels). Optional truth columns ``{p}_true`` (or the simulation's ``Mr_true``,
    ``Ar_true``, ``FeH_true``) are kept.
    """
    if "labelled" in frame.columns:
        frame = frame[frame["labelled"].astype(bool).to_numpy()]
    frame = frame.reset_index(drop=True)
    names = feature_columns(band_set)
    if all(c in frame.columns for c in names):
        features = np.column_stack([numeric_column(frame, name) for name in names])
    else:
        features = photometry_from_frame(frame, band_set, columns).features()
    mean = np.column_stack([_label_column(frame, p, ("mean",)) for p in PARAMETERS])
    sigma = np.column_stack([_label_column(frame, p, ("std", "sigma")) for p in PARAMETERS])
    truth = None
    if all(f"{p}_true" in frame.columns for p in PARAMETERS):
        truth = np.column_stack([_label_column(frame, p, ("true",)) for p in PARAMETERS])
    return LabelledSet(features, mean, sigma, band_set, truth)


def labelled_set_from_file(
    path: str | os.PathLike[str], band_set: str = "lsst", columns: ColumnMap | None = None
) -> LabelledSet:
    """Read a labelled set (Parquet, HATS, CSV or FITS); see :func:`labelled_set_from_frame`.

    For example the output of ``photodist bayes`` run with ``--keep`` of the magnitude and
    error columns, a pipeline output with those columns kept, or a file written by
    :meth:`LabelledSet.save`.
    """
    from photodist.io import read_catalog

    return labelled_set_from_frame(read_catalog(path), band_set, columns)


def labelled_set_from_patch(
    cone: tuple[float, float, float],
    n: int,
    seed: int = 0,
    *,
    r_max: float = 25.5,
    min_snr: float = 5.0,
    band_set: str = "lsst",
    errors: str = "lsst10",
    feh_step: float = 0.05,
    mr_step: float = 0.1,
    error_floor: float = 0.02,
) -> LabelledSet:
    """Simulate a patch, keep ``n`` random stars with SNR > ``min_snr`` and label them by Bayes.

    The patch (a Galactic cone ``(l, b, radius)`` in degrees, down to ``r_max``) is simulated
    with :func:`photodist.simulate.simulate_patch`; when it holds fewer than ``n`` stars above
    the SNR cut the expected counts are scaled up (``oversample``, the same sightlines) until it
    does. The Bayesian estimator uses the patch's simulated priors
    (:func:`photodist.priors.build_patch_priors`) and the locus on the (``feh_step``,
    ``mr_step``) posterior grid. The truth is kept.
    """
    from photodist.bayes import BayesConfig, BayesEstimator
    from photodist.evaluate import snr_mask
    from photodist.locus import build_locus
    from photodist.priors import build_patch_priors
    from photodist.simulate import simulate_patch

    if int(n) < 1:
        raise ValueError(f"n must be positive, got {n!r}")
    band = get_band_set(band_set).name
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(4)]
    oversample = 1.0
    for attempt in range(4):
        catalog = simulate_patch(
            cone=cone,
            r_max=r_max,
            band_set=band,
            errors=errors,
            seed=seeds[0] + attempt,
            oversample=oversample,
        )
        catalog = catalog[snr_mask(catalog, band, min_snr)].reset_index(drop=True)
        if len(catalog) >= n:
            break
        oversample *= 1.2 * n / max(len(catalog), 1)
    else:
        raise ValueError(f"the patch {cone} has only {len(catalog)} stars with SNR > {min_snr}")
    rng = np.random.default_rng(seeds[1])
    rows = np.sort(rng.choice(len(catalog), size=int(n), replace=False))
    catalog = catalog.iloc[rows].reset_index(drop=True)
    locus = build_locus().resample(feh_step, mr_step)
    prior = build_patch_priors(cone=cone, seed=seeds[2], locus=locus)
    phot = photometry_from_frame(catalog, band)
    bayes = BayesEstimator(locus, prior, BayesConfig(error_floor=error_floor)).predict(phot)
    mean = np.column_stack([bayes[f"{p}_mean"].to_numpy() for p in PARAMETERS])
    sigma = np.column_stack([bayes[f"{p}_std"].to_numpy() for p in PARAMETERS])
    truth = np.column_stack(
        [catalog[c].to_numpy(dtype=float) for c in ("Mr_true", "Ar_true", "FeH_true")]
    )
    return LabelledSet(phot.features(), mean, sigma, band, truth)


# ----------------------------------------------------------------------------------------------
# Training protocol
# ----------------------------------------------------------------------------------------------


@dataclass
class TuneData:
    """A labelled set split and standardised exactly as :meth:`PhotoDNetwork.fit` does.

    The same ``seed`` gives the same validation rows, input standardisation, output scaling,
    initialisation seed and shuffling as ``PhotoDNetwork(seed=seed)`` (its first run).
    Build it with :func:`prepare_tune_data`.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    out_offset: np.ndarray
    out_scale: np.ndarray
    loss_weights: tuple[float, float, float]
    run_seed: int
    seed: int
    validation_fraction: float

    @property
    def n_inputs(self) -> int:
        return int(self.x_train.shape[1])

    def fingerprint(self) -> str:
        """SHA-256 of the arrays and settings (a resumed study must use the same data)."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_val, self.y_val):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(repr((self.loss_weights, self.run_seed)).encode())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Store as an ``.npz`` file (for worker processes)."""
        np.savez(
            path,
            x_train=self.x_train,
            y_train=self.y_train,
            x_val=self.x_val,
            y_val=self.y_val,
            out_offset=self.out_offset,
            out_scale=self.out_scale,
            loss_weights=np.asarray(self.loss_weights, dtype=np.float64),
            meta=np.asarray([self.run_seed, self.seed], dtype=np.int64),
            validation_fraction=np.asarray(self.validation_fraction),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TuneData:
        """Inverse of :meth:`save`."""
        with np.load(path) as data:
            run_seed, seed = (int(v) for v in data["meta"])
            return cls(
                data["x_train"],
                data["y_train"],
                data["x_val"],
                data["y_val"],
                data["out_offset"],
                data["out_scale"],
                tuple(float(w) for w in data["loss_weights"]),  # type: ignore[arg-type]
                run_seed,
                seed,
                float(data["validation_fraction"]),
            )


def _arrays(
    features: np.ndarray | Photometry | LabelledSet,
    label_mean: np.ndarray | None,
    label_sigma: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features and labels as float64 arrays (N, F), (N, 3), (N, 3)."""
    if isinstance(features, LabelledSet):
        features, label_mean, label_sigma = (
            features.features,
            features.label_mean,
            features.label_sigma,
        )
    elif isinstance(features, Photometry):
        features = features.features()
    if label_mean is None or label_sigma is None:
        raise ValueError("label_mean and label_sigma are required with a feature array")
    x = np.asarray(features, dtype=np.float64)
    y_mean = np.asarray(label_mean, dtype=np.float64)
    y_sigma = np.asarray(label_sigma, dtype=np.float64)
    if (
        x.ndim != 2
        or y_mean.shape != (x.shape[0], len(PARAMETERS))
        or y_sigma.shape != y_mean.shape
    ):
        raise ValueError("features must be (N, F) and the labels (N, 3)")
    return x, y_mean, y_sigma


def prepare_tune_data(
    features: np.ndarray | Photometry | LabelledSet,
    label_mean: np.ndarray | None = None,
    label_sigma: np.ndarray | None = None,
    *,
    validation_fraction: float = 0.25,
    seed: int = 0,
    loss_weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
) -> TuneData:
    """Split and standardise a labelled set like :meth:`photodist.nn.PhotoDNetwork.fit`.

    Unusable colours are filled as the networks do (:func:`photodist.nn.fill_missing_colors`:
    the colour's median with a large error where enough rows lack it); rows still with a
    non-finite feature or label are dropped; ``validation_fraction`` of the rest are held out
    (a seeded permutation); inputs are standardised with the training rows' mean and standard
    deviation and the label means scaled with theirs.
    """
    x, y_mean, y_sigma = _arrays(features, label_mean, label_sigma)
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError("validation_fraction must be between 0 and 1")
    x = fill_missing_colors(x, y_mean, y_sigma, (x.shape[1] - 2) // 2)[0]
    usable = np.isfinite(x).all(axis=1) & np.isfinite(y_mean).all(axis=1)
    usable &= np.isfinite(y_sigma).all(axis=1)
    rows = np.flatnonzero(usable)
    n_val = int(round(float(validation_fraction) * rows.size))
    if n_val < 1 or rows.size - n_val < 2:
        raise ValueError(f"only {rows.size} usable rows; too few to train and validate")
    _, seeds = derive_seeds(int(seed), 2)
    split = np.random.default_rng(seeds[0]).permutation(rows.size)
    val_rows, train_rows = rows[split[:n_val]], rows[split[n_val:]]
    x_train = x[train_rows]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    offset = y_mean[train_rows].mean(axis=0)
    scale = y_mean[train_rows].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    weights = tuple(float(w) for w in loss_weights)
    if len(weights) != len(PARAMETERS) or min(weights) <= 0:
        raise ValueError(f"loss_weights must be {len(PARAMETERS)} positive numbers")
    return TuneData(
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_mean[train_rows].astype(np.float32),
        x_val=((x[val_rows] - mean) / std).astype(np.float32),
        y_val=y_mean[val_rows].astype(np.float32),
        out_offset=offset,
        out_scale=scale,
        loss_weights=weights,  # type: ignore[arg-type]
        run_seed=seeds[1],
        seed=int(seed),
        validation_fraction=float(validation_fraction),
    )


@dataclass
class SpecResult:
    """Outcome of training one architecture under the tuning protocol."""

    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    stopped_by_callback: bool
    seconds: float
    val_loss: list[float] = field(default_factory=list)


def train_spec(
    spec: NetworkSpec,
    data: TuneData,
    *,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    patience: int = DEFAULT_PATIENCE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    lr_factor: float = DEFAULT_LR_FACTOR,
    lr_patience: int = DEFAULT_LR_PATIENCE,
    divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR,
    callback: Callable[[int, float, float], bool] | None = None,
) -> SpecResult:
    """Train the moments network of ``spec`` and return its best validation loss.

    The loop is that of :class:`photodist.nn.PhotoDNetwork` (mini-batch Adam, early stopping
    after ``patience`` epochs without improvement, ReduceLROnPlateau) on one CPU thread, so the
    same ``data`` and settings give the validation loss ``PhotoDNetwork`` reaches with
    ``n_runs=1``. After every epoch ``callback(epoch, val_loss, best_val_loss)`` may return
    True to stop the training (a Hyperband decision).
    """
    run = train_moments_run(
        spec,
        data.x_train,
        data.y_train,
        data.x_val,
        data.y_val,
        out_offset=data.out_offset,
        out_scale=data.out_scale,
        loss_weights=data.loss_weights,
        seed=data.run_seed,
        max_epochs=max_epochs,
        patience=patience,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_factor=lr_factor,
        lr_patience=lr_patience,
        divergence_factor=divergence_factor,
        callback=callback,
    )
    return SpecResult(
        best_val_loss=run.best_val_loss,
        best_epoch=run.best_epoch,
        epochs_run=run.epochs_run,
        stopped_early=run.stopped_early,
        stopped_by_callback=run.stopped_by_callback,
        seconds=run.seconds,
        val_loss=run.val_loss,
    )


# ----------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------


def suggest_spec(
    trial: optuna.trial.BaseTrial,
    max_layers: int = 10,
    max_units: int = 50,
    activations: Sequence[str] = ACTIVATIONS,
) -> NetworkSpec:
    """Draw an architecture from the paper's search space.

    ``n_layers`` in 1..``max_layers``; for each layer i ``units_i`` in 1..``max_units`` and
    ``activation_i`` from ``activations``.
    """
    n_layers = trial.suggest_int("n_layers", 1, int(max_layers))
    hidden = []
    for i in range(n_layers):
        units = trial.suggest_int(f"units_{i}", 1, int(max_units))
        activation = trial.suggest_categorical(f"activation_{i}", list(activations))
        hidden.append((units, activation))
    return NetworkSpec(tuple(hidden))


def spec_params(spec: NetworkSpec) -> dict[str, Any]:
    """The trial parameters of :func:`suggest_spec` that give ``spec`` (for ``enqueue_trial``)."""
    if spec.batch_norm:
        raise ValueError("the search space has no batch normalisation")
    params: dict[str, Any] = {"n_layers": len(spec.hidden)}
    for i, (units, activation) in enumerate(spec.hidden):
        params[f"units_{i}"] = units
        params[f"activation_{i}"] = activation
    return params


def _spec_of(trial: optuna.trial.FrozenTrial) -> NetworkSpec | None:
    text = trial.user_attrs.get("spec")
    if text is not None:
        return NetworkSpec.from_json(text)
    params = trial.params
    if "n_layers" not in params:
        return None
    try:
        return NetworkSpec(
            tuple(
                (params[f"units_{i}"], params[f"activation_{i}"]) for i in range(params["n_layers"])
            )
        )
    except KeyError:
        return None


def _describe(spec: NetworkSpec | None) -> str:
    if spec is None:
        return ""
    return ", ".join(f"{u} {a}" for u, a in spec.hidden)


def _n_weights(spec: NetworkSpec | None, n_inputs: int) -> int:
    if spec is None:
        return 0
    widths = [n_inputs, *(u for u, _ in spec.hidden), 2 * len(PARAMETERS)]
    return int(sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True)))


# ----------------------------------------------------------------------------------------------
# Study
# ----------------------------------------------------------------------------------------------


def _storage(path: str | os.PathLike[str], check_end: bool = False) -> Any:
    """An optuna storage on disk: SQLite for ``.db``/``.sqlite``, a journal file otherwise.

    An unreadable journal raises ``ValueError`` naming the file; ``check_end`` also refuses one
    whose last record is cut or not a record (only while no other process may be writing to
    it: optuna skips such a last line as one being written, then appends after it)."""
    optuna = _optuna()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() in {".db", ".sqlite", ".sqlite3"}:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return optuna.storages.RDBStorage(f"sqlite:///{target.resolve()}")
        except SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            raise ValueError(f"{target} is not a readable optuna SQLite study: {reason}") from exc
    from optuna.storages.journal import JournalFileBackend

    try:  # reads the whole journal
        if check_end and target.is_file() and target.stat().st_size > 0:
            last = _last_line(target)
            if not last.endswith(b"\n"):  # a cut last record: optuna would append to it
                raise ValueError("its last record is incomplete")
            if last.strip() and not isinstance(json.loads(last), dict):
                raise ValueError("its last line is not a journal record")
        return optuna.storages.JournalStorage(JournalFileBackend(str(target)))
    except ValueError as exc:  # also json.JSONDecodeError and optuna's "Invalid log format."
        raise ValueError(
            f"{target} is not a readable optuna journal (truncated or corrupted? {exc}); "
            "repair it, or give another study file"
        ) from exc


def _last_line(path: Path, block: int = 1 << 16) -> bytes:
    """The last line of a non-empty file (with its newline, if any), read from the end."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        tail = b""
        while True:
            start = max(end - len(tail) - block, 0)
            handle.seek(start)
            tail = handle.read(end - start)
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0 or start == 0:
                return tail[cut + 1 :]


def _pruner(settings: Mapping[str, Any]) -> Any:
    optuna = _optuna()
    return optuna.pruners.HyperbandPruner(
        min_resource=int(settings["min_epochs"]),
        max_resource=int(settings["max_epochs"]),
        reduction_factor=int(settings["reduction_factor"]),
    )


def load_study(
    storage_path: str | os.PathLike[str], study_name: str = DEFAULT_STUDY_NAME
) -> optuna.Study:
    """Open a stored study (with its Hyperband pruner, for inspection or plotting)."""
    optuna = _optuna()
    storage = _storage(storage_path)
    study = optuna.load_study(study_name=study_name, storage=storage)
    settings = study.user_attrs.get(_SETTINGS_ATTR)
    if settings is not None:
        study.pruner = _pruner(settings)
    return study


def _objective_factory(
    data: TuneData, settings: Mapping[str, Any]
) -> Callable[[optuna.Trial], float]:
    optuna = _optuna()

    def objective(trial: optuna.Trial) -> float:
        spec = suggest_spec(trial, settings["max_layers"], settings["max_units"])
        trial.set_user_attr("spec", spec.to_json())

        def report(epoch: int, val: float, best: float) -> bool:
            trial.report(best, epoch)
            return trial.should_prune()

        result = train_spec(spec, data, callback=report, **settings["training"])
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", round(result.seconds, 3))
        if result.stopped_by_callback:
            raise optuna.TrialPruned()
        if not math.isfinite(result.best_val_loss):
            trial.set_user_attr("diverged", True)
            return math.nan  # recorded as a failed trial
        return float(result.best_val_loss)

    return objective


def _optimize_worker(config: Mapping[str, Any], data: TuneData | None = None) -> int:
    """One search worker: run trials of the stored study until its budget or deadline.

    ``config`` is JSON-serialisable (storage path, study name, settings, this worker's trial
    count and sampler seed, the absolute deadline); ``data`` defaults to the ``.npz`` file named
    in it. Returns how many trials the study gained while it ran (all workers together).
    """
    optuna = _optuna()
    optuna.logging.set_verbosity(int(config.get("verbosity", optuna.logging.WARNING)))
    if data is None:
        data = TuneData.load(config["data_path"])
    settings = config["settings"]
    sampler = optuna.samplers.TPESampler(
        seed=int(config["sampler_seed"]), constant_liar=bool(config.get("constant_liar", False))
    )
    study = optuna.load_study(
        study_name=config["study_name"],
        storage=_storage(config["storage_path"]),
        sampler=sampler,
        pruner=_pruner(settings),
    )
    deadline = config.get("deadline")
    timeout = None if deadline is None else max(0.0, float(deadline) - time.time())
    if timeout == 0.0:
        return 0
    before = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        study.optimize(
            _objective_factory(data, settings),
            n_trials=config.get("n_trials"),
            timeout=timeout,
            gc_after_trial=False,
        )
    return len(study.get_trials(deepcopy=False)) - before


# The child reads its configuration file (written by run_tune) and runs one search worker.
_CHILD_CODE = (
    "import json, sys\n"
    "from photodist.tune import _interrupt_on_sigterm, _optimize_worker\n"
    "_interrupt_on_sigterm()\n"
    "with open(sys.argv[1]) as handle:\n"
    "    _optimize_worker(json.load(handle))\n"
)


def _interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in a search worker process: optuna then marks the
    running trial failed and the worker ends (SIGINT may be ignored in background jobs)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@dataclass
class TuneResult:
    """Outcome of :func:`run_tune`.

    Attributes
    ----------
    best_spec, best_trial, best_value, best_recheck
        The recommended architecture, its trial number, its validation loss on the search
        split and its mean loss over the re-check splits. With re-checks it is the candidate
        with the lowest re-check mean (the paper default included); without, the completed
        trial with the lowest search loss (``best_recheck`` None).
    best_searched_spec, best_searched_value
        The trial proposed by the sampler (fixed trials excluded) with the lowest search loss.
    paper_value, paper_rank, paper_recheck
        The paper default's search loss, its rank (1 = best) among the completed trials and
        its re-check mean; None when it was not enqueued. If Hyperband stopped the enqueued
        trial, it is trained to the end without pruning for ``paper_value``.
    top_trials
        Table of the best completed trials (see :func:`trials_table`).
    recheck
        The re-checked candidates: ``trial``, ``fixed``, ``architecture``, ``spec``,
        ``search_value``, ``split_1``... (loss on each re-check split), ``recheck_mean``,
        ``recheck_median`` and ``splits_beating_paper``; best first. None without re-checks.
    n_trials, n_complete, n_pruned, n_failed
        Trial counts of the whole study (all runs).
    seconds
        Wall time of this call.
    study
        The optuna study.
    settings
        The protocol (epochs, Hyperband and training settings, data fingerprint).
    """

    best_spec: NetworkSpec
    best_value: float
    best_trial: int
    best_recheck: float | None
    best_searched_spec: NetworkSpec | None
    best_searched_value: float | None
    paper_value: float | None
    paper_rank: int | None
    paper_recheck: float | None
    top_trials: pd.DataFrame
    recheck: pd.DataFrame | None
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float
    study: Any
    settings: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        recheck = None
        if self.recheck is not None:
            recheck = self.recheck.drop(columns="spec").to_dict(orient="records")
        return {
            "best_spec": self.best_spec.to_dict(),
            "best_trial": self.best_trial,
            "best_value": self.best_value,
            "best_recheck_mean": self.best_recheck,
            "best_searched_spec": (
                None if self.best_searched_spec is None else self.best_searched_spec.to_dict()
            ),
            "best_searched_value": self.best_searched_value,
            "paper_default_value": self.paper_value,
            "paper_default_rank": self.paper_rank,
            "paper_default_recheck_mean": self.paper_recheck,
            "recheck": recheck,
            "n_trials": self.n_trials,
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "n_failed": self.n_failed,
            "seconds": round(self.seconds, 1),
            "settings": self.settings,
        }

    def write(self, out_dir: str | os.PathLike[str], top: int = 20) -> dict[str, Path]:
        """Write ``best_spec.json``, ``top_trials.csv``, ``search.png``, ``summary.json`` and,
        with re-checks, ``recheck.csv``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "spec": out / "best_spec.json",
            "table": out / "top_trials.csv",
            "figure": out / "search.png",
            "summary": out / "summary.json",
        }
        paths["spec"].write_text(self.best_spec.to_json() + "\n")
        self.top_trials.head(top).to_csv(paths["table"], index=False)
        if self.recheck is not None:
            paths["recheck"] = out / "recheck.csv"
            self.recheck.to_csv(paths["recheck"], index=False)
        plot_search(self.study, paths["figure"], recommended=self.best_trial)
        paths["summary"].write_text(json.dumps(self.summary(), indent=2, default=_jsonable) + "\n")
        return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def trials_table(study: optuna.Study, n_inputs: int | None = None) -> pd.DataFrame:
    """Completed trials, best first.

    Columns: ``rank``, ``trial``, ``value`` (best validation loss), ``epochs`` (run),
    ``best_epoch``, ``seconds``, ``n_layers``, ``n_weights`` (moments network, when
    ``n_inputs`` is known), ``fixed`` (an enqueued architecture, e.g. the paper default),
    ``architecture`` (e.g. ``"45 gelu, 33 tanh"``) and ``spec`` (its JSON).
    """
    optuna = _optuna()
    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        spec = _spec_of(t)
        rows.append(
            {
                "trial": t.number,
                "value": float(t.value),
                "epochs": t.user_attrs.get("epochs_run"),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "seconds": t.user_attrs.get("seconds"),
                "n_layers": len(spec.hidden) if spec else 0,
                "n_weights": _n_weights(spec, n_inputs) if n_inputs else None,
                "fixed": t.user_attrs.get(_FIXED_ATTR, ""),
                "architecture": _describe(spec),
                "spec": spec.to_json() if spec else "",
            }
        )
    columns = ["rank", "trial", "value", "epochs", "best_epoch", "seconds", "n_layers"]
    columns += ["n_weights", "fixed", "architecture", "spec"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).sort_values(["value", "trial"], kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)[columns]


def _store_settings(study: optuna.Study, settings: Mapping[str, Any], where: str) -> None:
    """Record the data and protocol of a study, or check them against the recorded ones.

    They bind the study once a trial has finished (completed or pruned: its losses and
    Hyperband's decisions depend on them); until then new ones replace the old.
    """
    optuna = _optuna()
    stored = study.user_attrs.get(_SETTINGS_ATTR)
    if stored == json.loads(json.dumps(settings)):
        return
    state = optuna.trial.TrialState
    if stored is not None and study.get_trials(
        deepcopy=False, states=(state.COMPLETE, state.PRUNED)
    ):
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise ValueError(
            f"{where} was run with other data or settings ({', '.join(changed)}); "
            "use a new study name or storage file"
        )
    study.set_user_attr(_SETTINGS_ATTR, dict(settings))


def _fail_stale(study: optuna.Study) -> int:
    """Mark trials left RUNNING or never started by an interrupted run as failed."""
    optuna = _optuna()
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def run_tune(
    features: np.ndarray | Photometry | LabelledSet,
    label_mean: np.ndarray | None = None,
    label_sigma: np.ndarray | None = None,
    storage_path: str | os.PathLike[str] = "photodist-tune.journal",
    *,
    n_trials: int | None = DEFAULT_N_TRIALS,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    min_epochs: int | None = None,
    reduction_factor: int = DEFAULT_REDUCTION_FACTOR,
    patience: int = DEFAULT_PATIENCE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    lr_factor: float = DEFAULT_LR_FACTOR,
    lr_patience: int = DEFAULT_LR_PATIENCE,
    max_layers: int = 10,
    max_units: int = 50,
    validation_fraction: float = 0.25,
    loss_weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
    n_jobs: int = 1,
    dask_client: Any = None,
    seed: int = 0,
    study_name: str = DEFAULT_STUDY_NAME,
    enqueue_paper_default: bool = True,
    enqueue: Sequence[NetworkSpec] = (),
    fail_stale_trials: bool = True,
    n_recheck: int = DEFAULT_N_RECHECK,
    recheck_seeds: int = DEFAULT_RECHECK_SEEDS,
    top: int = 20,
    verbose: bool = False,
) -> TuneResult:
    """Hyperband search of the moments-network architecture on a labelled set.

    Parameters
    ----------
    features, label_mean, label_sigma
        Network features and Bayesian labels (as for :meth:`PhotoDNetwork.fit`), or a
        :class:`LabelledSet` alone.
    storage_path
        Study file: an optuna journal (any suffix) or SQLite (``.db``, ``.sqlite``). An existing
        study of the same name is resumed: its trials count and the new ones add to them; its
        data and protocol must match (else ``ValueError``).
    n_trials, timeout
        Budget of this call: trials to add and/or seconds of search (None: no limit; at least
        one must be set). Trials running at the deadline finish.
    max_epochs, min_epochs, reduction_factor
        Hyperband: the maximum and minimum resource (epochs) and eta; brackets
        ``floor(log_eta(max / min)) + 1``. ``min_epochs`` None: 3 epochs, or ``max_epochs``
        when that is smaller.
    patience, batch_size, learning_rate, lr_factor, lr_patience
        Training protocol of every trial (:func:`train_spec`).
    max_layers, max_units
        Search space (:func:`suggest_spec`).
    validation_fraction, loss_weights, seed
        Split and loss (:func:`prepare_tune_data`); ``seed`` also seeds the samplers.
    n_jobs
        Parallel search workers. Beyond the first (this process), each is a separate Python
        process sharing the study file (processes avoid contention for the interpreter lock).
    dask_client
        A ``dask.distributed.Client``: the ``n_jobs`` workers run as Dask tasks instead (the
        study file must be on a file system that every Dask worker sees).
    study_name
        Name of the study in the storage.
    enqueue_paper_default, enqueue
        Fixed trials run first in a new study: the paper's architecture and any others.
    fail_stale_trials
        Mark trials left running by an interrupted earlier run as failed (do not run two
        searches on one study at the same time with this on).
    n_recheck, recheck_seeds
        After the search, the ``n_recheck`` best searched trials and the fixed trials are
        trained again on ``recheck_seeds`` other splits (other seeds, same protocol; in
        ``n_jobs`` processes or on Dask) and the lowest mean loss over those splits picks
        :attr:`TuneResult.best_spec`. A single split's loss is noisy (the moments loss is
        dominated by a few stars far from their labels), so the search winner's own loss is
        biased low. 0 skips this step.
    top
        Rows of :attr:`TuneResult.top_trials`.
    verbose
        Log every trial (optuna's INFO logging).
    """
    optuna = _optuna()
    if n_trials is None and timeout is None:
        raise ValueError("give a budget: n_trials and/or timeout")
    if n_trials is not None and int(n_trials) < 1:
        raise ValueError("n_trials must be positive")
    if int(n_jobs) < 1:
        raise ValueError("n_jobs must be positive")
    if int(max_epochs) < 1:
        raise ValueError(f"max_epochs must be positive, got {max_epochs}")
    if min_epochs is None:
        min_epochs = min(DEFAULT_MIN_EPOCHS, int(max_epochs))
    if not 1 <= int(min_epochs) <= int(max_epochs):
        raise ValueError(
            f"min_epochs must be between 1 and max_epochs ({max_epochs}), got {min_epochs}"
        )
    if int(reduction_factor) < 2:
        raise ValueError("reduction_factor must be at least 2")
    if timeout is not None and not float(timeout) > 0.0:  # (NaN too)
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if int(max_layers) < 1 or int(max_units) < 1:
        raise ValueError(
            f"max_layers and max_units must be positive, got {max_layers} and {max_units}"
        )
    if int(n_recheck) < 0:
        raise ValueError(f"n_recheck must be 0 or more, got {n_recheck}")
    start = time.perf_counter()
    deadline = None if timeout is None else time.time() + float(timeout)
    arrays = _arrays(features, label_mean, label_sigma)
    data = prepare_tune_data(
        *arrays,
        validation_fraction=validation_fraction,
        seed=seed,
        loss_weights=loss_weights,
    )
    training = {
        "max_epochs": int(max_epochs),
        "patience": int(patience),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "lr_factor": float(lr_factor),
        "lr_patience": int(lr_patience),
    }
    settings = {
        "max_epochs": int(max_epochs),
        "min_epochs": int(min_epochs),
        "reduction_factor": int(reduction_factor),
        "max_layers": int(max_layers),
        "max_units": int(max_units),
        "training": training,
        "validation_fraction": float(validation_fraction),
        "loss_weights": list(data.loss_weights),
        "seed": int(seed),
        "n_train": int(data.x_train.shape[0]),
        "n_validation": int(data.x_val.shape[0]),
        "data_sha256": data.fingerprint(),
    }
    previous_verbosity = optuna.logging.get_verbosity()
    verbosity = optuna.logging.INFO if verbose else optuna.logging.WARNING
    optuna.logging.set_verbosity(verbosity)
    try:
        storage = _storage(storage_path, check_end=True)
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="minimize",
            load_if_exists=True,
            pruner=_pruner(settings),
        )
        _store_settings(study, settings, f"study {study_name!r} in {storage_path}")
        if fail_stale_trials:
            _fail_stale(study)
        n_before = len(study.get_trials(deepcopy=False))
        fixed: list[tuple[str, NetworkSpec]] = []
        if n_before == 0:
            if enqueue_paper_default:
                fixed.append((_PAPER_ATTR, NetworkSpec.paper_default()))
            fixed += [(f"enqueued_{i}", s) for i, s in enumerate(enqueue)]
        for label, spec in fixed:
            if len(spec.hidden) > max_layers or max(u for u, _ in spec.hidden) > max_units:
                warnings.warn(
                    f"{label} ({_describe(spec)}) lies outside the search space; not enqueued",
                    stacklevel=2,
                )
                continue
            study.enqueue_trial(spec_params(spec), user_attrs={_FIXED_ATTR: label})
        _run_workers(
            study_name,
            storage_path,
            data,
            settings,
            n_trials=None if n_trials is None else int(n_trials),
            deadline=deadline,
            n_jobs=int(n_jobs),
            dask_client=dask_client,
            seed=int(seed),
            n_before=n_before,
            verbosity=verbosity,
        )
        study = optuna.load_study(study_name=study_name, storage=_storage(storage_path))
        study.pruner = _pruner(settings)
        result = _collect(
            study,
            data,
            arrays,
            settings,
            top,
            n_recheck=int(n_recheck),
            recheck_seeds=int(recheck_seeds),
            n_jobs=int(n_jobs),
            dask_client=dask_client,
        )
    finally:
        optuna.logging.set_verbosity(previous_verbosity)
    result.seconds = time.perf_counter() - start
    return result


def _run_workers(
    study_name: str,
    storage_path: str | os.PathLike[str],
    data: TuneData,
    settings: Mapping[str, Any],
    *,
    n_trials: int | None,
    deadline: float | None,
    n_jobs: int,
    dask_client: Any,
    seed: int,
    n_before: int,
    verbosity: int,
) -> None:
    """Run ``n_jobs`` search workers on the stored study (this process plus subprocesses, or
    Dask tasks) and wait for all of them."""
    if n_trials is not None:
        shares = [n_trials // n_jobs + (w < n_trials % n_jobs) for w in range(n_jobs)]
    else:
        shares = [None] * n_jobs
    workers = [w for w in range(n_jobs) if shares[w] is None or shares[w] > 0]
    configs = []
    for w in workers:
        sampler_seed = np.random.SeedSequence([seed, n_before, w]).generate_state(1)[0]
        configs.append(
            {
                "storage_path": str(Path(storage_path).resolve()),
                "study_name": study_name,
                "settings": settings,
                "n_trials": shares[w],
                "deadline": deadline,
                "sampler_seed": int(sampler_seed),
                "constant_liar": len(workers) > 1,
                "verbosity": verbosity,
            }
        )
    if dask_client is not None:
        futures = [
            dask_client.submit(_optimize_worker, config, data, pure=False) for config in configs
        ]
        dask_client.gather(futures)
        return
    if len(configs) == 1:
        _optimize_worker(configs[0], data)
        return
    folder = Path(storage_path).resolve().parent
    with tempfile.TemporaryDirectory(prefix=".photodist-tune-", dir=folder) as tmp:
        data_path = Path(tmp) / "data.npz"
        data.save(data_path)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
        procs = []
        for i, config in enumerate(configs[1:], start=1):
            path = Path(tmp) / f"worker{i}.json"
            path.write_text(json.dumps({**config, "data_path": str(data_path)}))
            log = open(Path(tmp) / f"worker{i}.log", "wb")  # noqa: SIM115 - closed below
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-c", _CHILD_CODE, str(path)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    ),
                    log,
                    path.with_suffix(".log"),
                )
            )
        interrupted = False
        try:
            _optimize_worker(configs[0], data)
        except BaseException:  # an error, Ctrl-C or SIGTERM (SystemExit): stop the workers too
            interrupted = True
            _stop_workers([proc for proc, _, _ in procs])
            raise
        finally:
            for proc, log, log_path in procs:
                with contextlib.suppress(KeyboardInterrupt):
                    proc.wait()
                log.close()
                if proc.returncode != 0 and not interrupted:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                    warnings.warn(
                        f"search worker exited with status {proc.returncode}: " + " / ".join(tail),
                        RuntimeWarning,
                        stacklevel=3,
                    )


def _stop_workers(procs: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """Stop worker subprocesses (SIGTERM: each fails its running trial and exits, see
    :func:`_interrupt_on_sigterm`), then kill those still running after ``grace`` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _recheck_job(
    spec_json: str,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    prepare: Mapping[str, Any],
    training: Mapping[str, Any],
) -> float:
    """Train one architecture on one split (a re-check job; runs in any process)."""
    data = prepare_tune_data(*arrays, **prepare)
    return float(train_spec(NetworkSpec.from_json(spec_json), data, **training).best_val_loss)


def _run_jobs(jobs: list[tuple[Any, ...]], n_jobs: int, dask_client: Any) -> list[float]:
    """Run :func:`_recheck_job` calls serially, in ``n_jobs`` processes or on Dask."""
    if dask_client is not None:
        futures = [dask_client.submit(_recheck_job, *job, pure=False) for job in jobs]
        return [float(v) for v in dask_client.gather(futures)]
    if n_jobs < 2 or len(jobs) < 2:
        return [_recheck_job(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=context) as pool:
        return [float(v) for v in pool.map(_recheck_job, *zip(*jobs, strict=True))]


def _recheck_seeds(seed: int, n: int) -> list[int]:
    return [int(np.random.SeedSequence([seed, 7, k]).generate_state(1)[0]) for k in range(n)]


def _recheck(
    study: optuna.Study,
    table: pd.DataFrame,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    settings: Mapping[str, Any],
    paper_value: float | None,
    *,
    n_recheck: int,
    recheck_seeds: int,
    n_jobs: int,
    dask_client: Any,
) -> pd.DataFrame:
    """Retrain the best searched trials and the fixed ones on other splits (other seeds).

    One trial's validation loss is that of one split and one initialisation, and the search
    keeps the lowest of many: the winner's loss is biased low. Each candidate is trained again
    on ``recheck_seeds`` other splits (same protocol); the mean over those splits compares
    the candidates without that bias. Results are cached in the study.
    """
    candidates = pd.concat(
        [table[table["fixed"] == ""].head(int(n_recheck)), table[table["fixed"] != ""]]
    )
    rows = [
        {
            "trial": int(r.trial),
            "fixed": r.fixed,
            "architecture": r.architecture,
            "spec": r.spec,
            "search_value": float(r.value),
        }
        for r in candidates.itertuples()
    ]
    paper = NetworkSpec.paper_default().to_json()
    if paper_value is not None and not any(r["fixed"] == _PAPER_ATTR for r in rows):
        trial = next(t.number for t in study.trials if t.user_attrs.get(_FIXED_ATTR) == _PAPER_ATTR)
        rows.append(
            {
                "trial": trial,
                "fixed": _PAPER_ATTR,
                "architecture": _describe(NetworkSpec.paper_default()),
                "spec": paper,
                "search_value": paper_value,
            }
        )
    seeds = _recheck_seeds(int(settings["seed"]), int(recheck_seeds))
    cache: dict[str, float] = dict(study.user_attrs.get("photodist_recheck", {}))
    prepare = {
        "validation_fraction": settings["validation_fraction"],
        "loss_weights": tuple(settings["loss_weights"]),
    }
    todo = sorted({(r["spec"], s) for r in rows for s in seeds if f"{s}|{r['spec']}" not in cache})
    jobs = [(spec, arrays, {**prepare, "seed": s}, settings["training"]) for spec, s in todo]
    for (spec, s), value in zip(todo, _run_jobs(jobs, n_jobs, dask_client), strict=True):
        cache[f"{s}|{spec}"] = value
    if todo:
        study.set_user_attr("photodist_recheck", cache)
    for row in rows:
        values = [cache[f"{s}|{row['spec']}"] for s in seeds]
        for k, value in enumerate(values):
            row[f"split_{k + 1}"] = value
        row["recheck_mean"] = float(np.mean(values))
        row["recheck_median"] = float(np.median(values))
    frame = pd.DataFrame(rows)
    if paper_value is not None:
        paper_row = frame[frame["fixed"] == _PAPER_ATTR].iloc[0]
        splits = [f"split_{k + 1}" for k in range(len(seeds))]
        frame["splits_beating_paper"] = (
            frame[splits].to_numpy() < paper_row[splits].to_numpy(dtype=float)
        ).sum(axis=1)
    return frame.sort_values(["recheck_mean", "trial"], kind="stable").reset_index(drop=True)


def _collect(
    study: optuna.Study,
    data: TuneData,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    settings: Mapping[str, Any],
    top: int,
    *,
    n_recheck: int,
    recheck_seeds: int,
    n_jobs: int,
    dask_client: Any,
) -> TuneResult:
    optuna = _optuna()
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    table = trials_table(study, data.n_inputs)
    if table.empty:
        raise ValueError("no trial completed; raise the budget (n_trials or timeout)")
    searched = table[table["fixed"] == ""]
    paper_value: float | None = None
    paper_rank: int | None = None
    paper = [t for t in trials if t.user_attrs.get(_FIXED_ATTR) == _PAPER_ATTR]
    if paper:
        if paper[0].state == state.COMPLETE:
            paper_value = float(paper[0].value)
        else:
            cached = study.user_attrs.get("paper_default_full_value")
            if cached is None:
                spec = NetworkSpec.paper_default()
                cached = train_spec(spec, data, **settings["training"]).best_val_loss
                study.set_user_attr("paper_default_full_value", float(cached))
            paper_value = float(cached)
        others = table[table["fixed"] != _PAPER_ATTR]["value"].to_numpy()
        paper_rank = int(np.count_nonzero(others < paper_value)) + 1
    recheck = None
    best = table.iloc[0]
    best_spec_json, best_trial, best_value = best["spec"], int(best["trial"]), float(best["value"])
    best_recheck = paper_recheck = None
    if int(n_recheck) > 0 and int(recheck_seeds) > 0:
        recheck = _recheck(
            study,
            table,
            arrays,
            settings,
            paper_value,
            n_recheck=n_recheck,
            recheck_seeds=recheck_seeds,
            n_jobs=n_jobs,
            dask_client=dask_client,
        )
        winner = recheck.iloc[0]
        best_spec_json, best_trial = winner["spec"], int(winner["trial"])
        best_value, best_recheck = float(winner["search_value"]), float(winner["recheck_mean"])
        if paper_value is not None:
            paper_recheck = float(
                recheck.loc[recheck["fixed"] == _PAPER_ATTR, "recheck_mean"].iloc[0]
            )
    counts = {s: sum(t.state == s for t in trials) for s in state}
    return TuneResult(
        best_spec=NetworkSpec.from_json(best_spec_json),
        best_value=best_value,
        best_trial=best_trial,
        best_recheck=best_recheck,
        best_searched_spec=None
        if searched.empty
        else NetworkSpec.from_json(searched.iloc[0]["spec"]),
        best_searched_value=None if searched.empty else float(searched.iloc[0]["value"]),
        paper_value=paper_value,
        paper_rank=paper_rank,
        paper_recheck=paper_recheck,
        top_trials=table.head(int(top)).reset_index(drop=True),
        recheck=recheck,
        n_trials=len(trials),
        n_complete=counts[state.COMPLETE],
        n_pruned=counts[state.PRUNED],
        n_failed=counts[state.FAIL],
        seconds=0.0,
        study=study,
        settings=dict(settings),
    )


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------


def plot_search(
    study: optuna.Study, path: str | os.PathLike[str], recommended: int | None = None
) -> Path:
    """Figure of a search: learning curves by trial state, and loss against trial number.

    Left: the reported (best-so-far) validation loss against epoch for every trial, pruned
    trials in grey, completed ones coloured by their final loss; the trial with the lowest
    loss, the paper default and the ``recommended`` trial (e.g. the re-check winner,
    :attr:`TuneResult.best_trial`) are highlighted; Hyperband's rung epochs are marked. Right:
    each trial's last reported loss against its number (pruned: grey crosses, completed: dots)
    and the running best.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from photodist.plots import save_figure

    optuna = _optuna()
    state = optuna.trial.TrialState
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    complete = [t for t in trials if t.state == state.COMPLETE]
    values = np.array([t.value for t in complete], dtype=float)
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min(), np.percentile(finite, 90)) if finite.size else (0.0, 1.0)
    cmap = plt.get_cmap("viridis")
    best = min(complete, key=lambda t: t.value) if complete else None
    for t in trials:
        steps = sorted(t.intermediate_values)
        vals = [t.intermediate_values[s] for s in steps]
        if t.state == state.COMPLETE:
            frac = 0.0 if hi <= lo else min(1.0, (t.value - lo) / (hi - lo))
            ax1.plot(steps, vals, color=cmap(frac), lw=0.8, alpha=0.8)
        else:
            ax1.plot(steps, vals, color="0.7", lw=0.5, alpha=0.5)
    chosen = [t for t in complete if t.number == recommended and t is not best]
    for t, colour, label in (
        (best, "red", "lowest loss"),
        *[(t, "darkorange", "recommended") for t in chosen],
        *[
            (t, "black", "paper default")
            for t in trials
            if t.user_attrs.get(_FIXED_ATTR) == _PAPER_ATTR
        ],
    ):
        if t is None:
            continue
        steps = sorted(t.intermediate_values)
        ax1.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            color=colour,
            lw=2.0,
            label=f"{label} (trial {t.number})",
        )
    settings = study.user_attrs.get(_SETTINGS_ATTR)
    if settings:
        rung = int(settings["min_epochs"])
        while rung < int(settings["max_epochs"]):
            ax1.axvline(rung, color="0.85", lw=0.8, zorder=0)
            rung *= int(settings["reduction_factor"])
    all_last = [t.intermediate_values[max(t.intermediate_values)] for t in trials]
    last_finite = np.array([v for v in all_last if math.isfinite(v)])
    if last_finite.size:
        top = np.percentile(last_finite, 95)
        ax1.set_ylim(0.95 * last_finite.min(), top * 1.05 if top > 0 else None)
        ax2.set_ylim(0.95 * last_finite.min(), top * 1.05 if top > 0 else None)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch (Hyperband resource)")
    ax1.set_ylabel("best validation loss so far")
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title(
        f"{len(trials)} trials: {len(complete)} completed, "
        f"{sum(t.state == state.PRUNED for t in trials)} pruned"
    )
    numbers = np.array([t.number for t in trials])
    last = np.array(all_last, dtype=float)
    pruned = np.array([t.state == state.PRUNED for t in trials], dtype=bool)
    ax2.scatter(numbers[pruned], last[pruned], marker="x", s=10, c="0.6", label="pruned (last)")
    ax2.scatter(numbers[~pruned], last[~pruned], s=12, c="C0", label="completed")
    if complete:
        order = sorted(complete, key=lambda t: t.number)
        running = np.minimum.accumulate([t.value for t in order])
        ax2.step([t.number for t in order], running, where="post", color="red", label="best")
    ax2.set_yscale("log")
    ax2.set_xlabel("trial")
    ax2.set_ylabel("validation loss")
    ax2.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)
