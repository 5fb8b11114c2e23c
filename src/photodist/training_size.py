"""How many Bayesian labels the networks need: the training-size study (the paper's Figure 1).

Mrakovčić, Ivezić & Palaversa (2025, AJ 170, 72) trained the networks on growing subsamples of
a simulated patch and found that the loss stops improving at about 10,000 training stars. For a
pool of Bayes-labelled stars with known truth and a held-out evaluation set (also Bayes-labelled,
with truth), :func:`training_size_study` trains :class:`photodist.nn.PhotoDNetwork` on subsets
of increasing size and evaluates, on the evaluation set, the weighted moments loss
(:func:`photodist.nn.moments_loss`, weights 0.1, 0.02, 0.1 for M_r, A_r, [Fe/H]) of

* ``nn_vs_bayes``: network means and widths sigma_NN against the Bayesian means (the quantity
  the networks are trained to minimise);
* ``nn_vs_truth``: network means and total widths ``sqrt(sigma_NN**2 + sigma_B**2)`` against
  the truth;
* ``bayes_vs_truth``: Bayesian means and posterior widths against the truth (independent of the
  training size: the flat line the networks approach from above);

and the weighted mean squared errors of the same pairs (``*_mse``, no width term).
:func:`training_size_curve` averages the seeds and adds a moving average over neighbouring
sizes; :func:`plateau_size` is the smallest size whose smoothed loss stays within a tolerance
of the plateau; :func:`plot_training_size` draws Figure 1.

A "training size" is the number of labelled stars handed to the networks (the pipeline's
``n_train``); :class:`~photodist.nn.PhotoDNetwork` holds out a quarter of them for validation.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from photodist.bands import Photometry, get_band_set
from photodist.nn import DEFAULT_LOSS_WEIGHTS, PARAMETERS, NetworkSpec, PhotoDNetwork, moments_loss
from photodist.nn import weighted_mse as _weighted_mse
from photodist.pipeline import choose_training_subsample
from photodist.tune import LabelledSet, labelled_set_from_patch

__all__ = [
    "COMPARISONS",
    "DEFAULT_SIZES",
    "check_tolerance",
    "patch_label",
    "patch_training_size_study",
    "plateau_reached",
    "plateau_size",
    "plot_training_size",
    "training_size_curve",
    "training_size_study",
    "weighted_losses",
]

#: Eight log-spaced training sizes from 500 to 50,000 stars.
DEFAULT_SIZES: tuple[int, ...] = tuple(int(round(v, -1)) for v in np.geomspace(500, 50_000, 8))
#: Loss columns of the study, in plotting order.
COMPARISONS: tuple[str, ...] = ("nn_vs_truth", "nn_vs_bayes", "bayes_vs_truth")
_LABELS = {
    "nn_vs_truth": "NN vs truth",
    "nn_vs_bayes": "NN vs Bayes",
    "bayes_vs_truth": "Bayes vs truth",
}


def weighted_losses(
    mean: np.ndarray,
    sigma: np.ndarray,
    reference: np.ndarray,
    weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
) -> tuple[float, float]:
    """Weighted moments loss and weighted mean squared error of estimates against a reference.

    Parameters
    ----------
    mean, sigma
        Estimates and their widths, shape (N, 3) for (M_r, A_r, [Fe/H]).
    reference
        The values to compare with (Bayesian means or the truth), shape (N, 3).
    weights
        Target precision per parameter (each term is divided by its square).

    Returns
    -------
    (moments, mse)
        ``sum_p mean(d2 + (d2 - sigma**2)**2) / w_p**2`` and ``sum_p mean(d2) / w_p**2`` with
        ``d2 = (reference - mean)**2``.
    """

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

    mu, sd, ref = tensor(mean), tensor(sigma), tensor(reference)
    return (
        float(moments_loss(mu, sd, ref, weights)),
        float(_weighted_mse(mu, ref, weights)),
    )


def _photometry(features: np.ndarray, band_set: str) -> Photometry:
    n_colors = get_band_set(band_set).n_colors
    return Photometry(
        get_band_set(band_set),
        features[:, 0],
        features[:, 1 + n_colors],
        features[:, 1 : 1 + n_colors],
        features[:, 2 + n_colors :],
    )


def _usable(data: LabelledSet) -> np.ndarray:
    ok = np.isfinite(data.features).all(axis=1)
    ok &= np.isfinite(data.label_mean).all(axis=1) & np.isfinite(data.label_sigma).all(axis=1)
    if data.truth is not None:
        ok &= np.isfinite(data.truth).all(axis=1)
    return ok


def training_size_study(
    pool: LabelledSet,
    evaluation: LabelledSet,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seeds: Sequence[int] = (0,),
    *,
    spec: NetworkSpec | None = None,
    strategy: str = "random",
    max_epochs: int = 500,
    patience: int = 50,
    n_runs: int = 1,
    secondary_max_epochs: int = 200,
    network_options: Mapping[str, Any] | None = None,
    loss_weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Train the networks on growing subsets of ``pool`` and evaluate them on ``evaluation``.

    Parameters
    ----------
    pool
        Bayes-labelled stars to draw the training sets from.
    evaluation
        Held-out stars with Bayesian labels and truth (``evaluation.truth`` is required).
    sizes
        Training sizes (labelled stars per network, validation quarter included).
    seeds
        One training set and network initialisation per seed and size. With
        ``strategy="random"`` the sets of one seed are nested (the first n of one permutation).
    spec
        Network architecture (None: the paper default).
    strategy
        ``"random"`` or ``"stratified"`` (:func:`photodist.pipeline.choose_training_subsample`).
    max_epochs, patience, n_runs, secondary_max_epochs, network_options
        Training settings of :class:`~photodist.nn.PhotoDNetwork` (other options by name).
    loss_weights
        Target precision of the losses.
    progress
        Called with a one-line message after every fit.

    Returns
    -------
    pandas.DataFrame
        One row per (size, seed): ``size``, ``seed``, ``n_train``, ``n_validation``,
        ``epochs`` (moments network), ``seconds``, ``validation_loss`` (the network's own),
        the losses of :data:`COMPARISONS` and their ``*_mse`` variants, ``n_evaluation``.
    """
    if evaluation.truth is None:
        raise ValueError("the evaluation set needs the truth")
    if pool.band_set != evaluation.band_set:
        raise ValueError("pool and evaluation set are in different band sets")
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 8:
        raise ValueError("training sizes must be at least 8 stars")
    pool = pool.subset(np.flatnonzero(_usable(pool)))
    if sizes[-1] > len(pool):
        raise ValueError(f"the pool has {len(pool)} usable stars, fewer than {sizes[-1]}")
    evaluation = evaluation.subset(np.flatnonzero(_usable(evaluation)))
    if len(evaluation) == 0:
        raise ValueError("the evaluation set has no usable star")
    truth = evaluation.truth
    assert truth is not None
    bayes = weighted_losses(evaluation.label_mean, evaluation.label_sigma, truth, loss_weights)
    options = dict(network_options or {})
    rows = []
    for seed in seeds:
        seq = np.random.SeedSequence(int(seed))
        draw_seed, net_seed = (int(s.generate_state(1)[0]) for s in seq.spawn(2))
        order = np.random.default_rng(draw_seed).permutation(len(pool))
        phot = _photometry(pool.features, pool.band_set) if strategy == "stratified" else None
        for size in sizes:
            if strategy == "random":
                chosen = np.sort(order[:size])
            elif strategy == "stratified":
                assert phot is not None
                chosen = choose_training_subsample(phot, size, "stratified", draw_seed)
            else:
                raise ValueError(f"strategy must be 'random' or 'stratified', got {strategy!r}")
            train = pool.subset(chosen)
            start = time.perf_counter()
            model = PhotoDNetwork(
                band_set=pool.band_set,
                spec=spec,
                seed=net_seed,
                max_epochs=int(max_epochs),
                patience=int(patience),
                n_runs=int(n_runs),
                secondary_max_epochs=int(secondary_max_epochs),
                loss_weights=tuple(loss_weights),
                **options,
            ).fit(train.features, train.label_mean, train.label_sigma)
            pred = model.predict(evaluation.features)
            seconds = time.perf_counter() - start
            nn_mean = np.column_stack([pred[f"{p}_mean"] for p in PARAMETERS])
            nn_sigma_nn = np.column_stack([pred[f"{p}_sigma_nn"] for p in PARAMETERS])
            nn_sigma = np.column_stack([pred[f"{p}_sigma"] for p in PARAMETERS])
            vs_bayes = weighted_losses(nn_mean, nn_sigma_nn, evaluation.label_mean, loss_weights)
            vs_truth = weighted_losses(nn_mean, nn_sigma, truth, loss_weights)
            meta = model.training_metadata_
            row = {
                "size": size,
                "seed": int(seed),
                "n_train": int(meta["n_train"]),
                "n_validation": int(meta["n_validation"]),
                "epochs": int(meta["epochs_run"][meta["selected_run"]]),
                "seconds": round(seconds, 2),
                "validation_loss": float(meta["validation_loss"]),
                "nn_vs_truth": vs_truth[0],
                "nn_vs_bayes": vs_bayes[0],
                "bayes_vs_truth": bayes[0],
                "nn_vs_truth_mse": vs_truth[1],
                "nn_vs_bayes_mse": vs_bayes[1],
                "bayes_vs_truth_mse": bayes[1],
                "n_evaluation": len(evaluation),
            }
            rows.append(row)
            if progress is not None:
                progress(
                    f"size {size:6d} seed {seed}: NN-truth {vs_truth[0]:.3g}, NN-Bayes "
                    f"{vs_bayes[0]:.3g} (Bayes-truth {bayes[0]:.3g}), {row['epochs']} epochs, "
                    f"{seconds:.0f} s"
                )
    return pd.DataFrame(rows)


def patch_training_size_study(
    cone: tuple[float, float, float],
    sizes: Sequence[int] = DEFAULT_SIZES,
    seeds: Sequence[int] = (0,),
    *,
    n_evaluation: int = 10_000,
    seed: int = 0,
    label: str | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`training_size_study` on a simulated patch.

    ``max(sizes) + n_evaluation`` stars with SNR > 5 are simulated and Bayes-labelled
    (:func:`photodist.tune.labelled_set_from_patch`, seeded by ``seed``); a random
    ``n_evaluation`` of them form the evaluation set, the rest the pool. Further keyword
    arguments go to :func:`training_size_study`. The result has a ``patch`` column
    (``label``, default :func:`patch_label`).
    """
    total = int(max(sizes)) + int(n_evaluation)
    stars = labelled_set_from_patch(cone, total, seed=seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    order = rng.permutation(len(stars))
    evaluation = stars.subset(np.sort(order[: int(n_evaluation)]))
    pool = stars.subset(np.sort(order[int(n_evaluation) :]))
    frame = training_size_study(pool, evaluation, sizes, seeds, **kwargs)
    frame.insert(0, "patch", label or patch_label(cone))
    return frame


def patch_label(cone: tuple[float, float, float]) -> str:
    """Label of a simulated patch, e.g. ``"l=180, b=-50, r=0.3"`` (Galactic cone in degrees)."""
    l, b, radius = (float(v) for v in cone)  # noqa: E741 - Galactic longitude
    return f"l={l:g}, b={b:g}, r={radius:g}"


def training_size_curve(
    frame: pd.DataFrame, window: int = 3, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean over seeds per size and its moving average over neighbouring sizes.

    ``window`` consecutive sizes (centred; fewer at the ends) are averaged into
    ``{column}_smooth``; ``{column}_std`` is the scatter between seeds. One curve per
    ``patch`` when the frame has that column.
    """
    if int(window) < 1:
        raise ValueError("window must be positive")
    if columns is None:
        columns = [c for c in frame.columns if c in COMPARISONS or c.endswith("_mse")]
    keys = ["patch", "size"] if "patch" in frame.columns else ["size"]
    grouped = frame.groupby(keys, sort=True)[list(columns)]
    curve = grouped.mean()
    spread = grouped.std(ddof=1).fillna(0.0).add_suffix("_std")
    curve = curve.join(spread).reset_index()
    curve.insert(len(keys), "n_seeds", grouped.size().to_numpy())
    parts = []
    for _, part in curve.groupby(keys[:-1], sort=False) if len(keys) > 1 else [(None, curve)]:
        part = part.sort_values("size").copy()
        for column in columns:
            part[f"{column}_smooth"] = (
                part[column].rolling(int(window), center=True, min_periods=1).mean().to_numpy()
            )
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` of :func:`plateau_size` as a float, or ``ValueError`` unless finite and
    non-negative (check it before a long study)."""
    value = float(tolerance)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"tolerance must be a finite non-negative number, got {tolerance}")
    return value


def plateau_size(
    curve: pd.DataFrame,
    tolerance: float = 0.05,
    column: str = "nn_vs_truth",
    tail: int = 2,
) -> int:
    """Smallest training size whose smoothed loss stays within ``tolerance`` of the plateau.

    The plateau is the mean of ``{column}_smooth`` (``column`` if the curve has no smoothed
    column) over the ``tail`` largest sizes; the result is the smallest size from which on
    every smoothed loss is at most ``(1 + tolerance)`` times the plateau.

    Parameters
    ----------
    curve
        Output of :func:`training_size_curve` for one patch (``size`` and the loss columns).
    tolerance
        Allowed excess over the plateau (0.05: within 5 %).
    column
        Loss to use (``nn_vs_truth``, ``nn_vs_bayes`` or an ``*_mse`` column).
    tail
        Number of largest sizes defining the plateau.
    """
    if "patch" in curve.columns and curve["patch"].nunique() > 1:
        raise ValueError("the curve holds several patches; select one")
    check_tolerance(tolerance)
    if int(tail) < 1:
        raise ValueError(f"tail must be positive, got {tail}")
    name = f"{column}_smooth" if f"{column}_smooth" in curve.columns else column
    part = curve.sort_values("size")
    sizes = part["size"].to_numpy()
    loss = part[name].to_numpy(dtype=float)
    if sizes.size == 0 or not np.all(np.isfinite(loss)):
        raise ValueError(f"no finite {name} values")
    plateau = float(loss[-int(tail) :].mean())
    inside = loss <= (1.0 + tolerance) * plateau
    # the last size outside the band; everything after it stays inside
    outside = np.flatnonzero(~inside)
    first = 0 if outside.size == 0 else int(outside[-1]) + 1
    if first >= sizes.size:  # the largest size itself sits above a plateau set by the tail
        first = sizes.size - 1
    return int(sizes[first])


def plateau_reached(
    curve: pd.DataFrame, tolerance: float = 0.05, column: str = "nn_vs_truth"
) -> bool:
    """Whether the smoothed loss has levelled off: it changes by at most ``tolerance``
    (relative) between the two largest sizes. If not, :func:`plateau_size` only says that
    the largest sizes tried are needed, not that they suffice."""
    if "patch" in curve.columns and curve["patch"].nunique() > 1:
        raise ValueError("the curve holds several patches; select one")
    check_tolerance(tolerance)
    name = f"{column}_smooth" if f"{column}_smooth" in curve.columns else column
    loss = curve.sort_values("size")[name].to_numpy(dtype=float)
    if loss.size < 2:
        return False
    return bool(abs(loss[-2] - loss[-1]) <= tolerance * abs(loss[-1]))


def plot_training_size(
    frame: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    tolerance: float = 0.05,
    column: str = "nn_vs_truth",
    window: int = 3,
    mse: bool = False,
) -> Path:
    """Figure 1: weighted loss against training size, one panel per patch.

    Points are single fits (one per seed); lines are the moving averages of NN vs truth and
    NN vs Bayes; the horizontal line is Bayes vs truth; the dashed vertical line marks
    :func:`plateau_size` of ``column``. ``mse=True`` plots the weighted mean squared errors
    instead of the moments losses.
    """
    check_tolerance(tolerance)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from photodist.plots import save_figure

    suffix = "_mse" if mse else ""
    columns = [f"{c}{suffix}" for c in COMPARISONS]
    patches = list(frame["patch"].unique()) if "patch" in frame.columns else [None]
    fig, axes = plt.subplots(1, len(patches), figsize=(6.2 * len(patches), 4.6), squeeze=False)
    colours = {"nn_vs_truth": "C3", "nn_vs_bayes": "C0", "bayes_vs_truth": "0.3"}
    for ax, patch in zip(axes[0], patches, strict=True):
        part = frame if patch is None else frame[frame["patch"] == patch]
        curve = training_size_curve(part, window=window, columns=columns)
        for base, col in zip(COMPARISONS, columns, strict=True):
            if base == "bayes_vs_truth":
                ax.axhline(
                    float(curve[col].mean()), color=colours[base], ls=":", label=_LABELS[base]
                )
                continue
            ax.scatter(part["size"], part[col], s=12, color=colours[base], alpha=0.5)
            ax.plot(
                curve["size"],
                curve[f"{col}_smooth"],
                color=colours[base],
                lw=2,
                label=f"{_LABELS[base]} (moving average)",
            )
        chosen = plateau_size(curve, tolerance, f"{column}{suffix}")
        label = f"{_LABELS.get(column, column)} within {tolerance:.0%} of plateau: {chosen}"
        if not plateau_reached(curve, tolerance, f"{column}{suffix}"):
            label += " (no plateau reached)"
        ax.axvline(chosen, color="k", ls="--", lw=1, label=label)
        notes = [
            f"{_LABELS[base]}: no plateau up to {int(curve['size'].max())}"
            for base, col in zip(COMPARISONS[:2], columns[:2], strict=True)
            if f"{column}{suffix}" != col and not plateau_reached(curve, tolerance, col)
        ]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training size (labelled stars)")
        ax.set_ylabel("weighted " + ("MSE" if mse else "moments loss"))
        title = [str(patch)] if patch is not None else []
        if title or notes:
            ax.set_title("\n".join(title + notes), fontsize=10)
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)
