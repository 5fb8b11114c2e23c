"""Toy model of the paper's Appendix: an estimator trained on a prior is biased at large errors.

Mrakovčić, Ivezić & Palaversa (2025, AJ 170, 72, Appendix) explain why the networks' [Fe/H]
(and the Bayesian posterior means they learn) are pulled towards the prior when the u-g error
is large, with a one-dimensional toy model:

* [Fe/H] is drawn from a prior: uniform on [-3, 0] (:data:`UNIFORM_PRIOR`) or an equal-weight
  mixture of two Gaussians, N(-1.5, 0.3) and N(-0.5, 0.2) (:data:`TWO_GAUSSIAN_PRIOR`);
* the true colour is ``u-g = 0.84 + 0.34 * 10**(0.45 [Fe/H])`` (:func:`ug_from_feh`);
* the observed colour has Gaussian noise of standard deviation ``sigma`` (0.1 mag for the
  binned-median figures, for both priors).

A network trained with a squared-error loss on (noisy u-g, its error) -> [Fe/H] pairs drawn
from the prior converges to the conditional mean E[[Fe/H] | u-g_obs, sigma], i.e. the Bayesian
posterior mean under that prior. Here that estimator is computed exactly, by integrating the
posterior on a fine [Fe/H] grid (:func:`posterior_summary`), instead of training a network.

Two measures of its bias are computed for a star whose true colour is ``u-g_0`` (true
[Fe/H] ``F_0`` from the inverted relation, :func:`feh_from_ug`):

* ``bias``: E_noise[estimate] - F_0, the estimator's expectation over the noise of the
  observed colour (Gauss-Hermite quadrature over the Gaussian noise) minus the truth;
* ``offset_at_observed``: the estimate for a star *observed* at exactly ``u-g_0`` minus F_0
  (what a plot of the estimate against observed u-g shows).

Both vanish as sigma -> 0 (the posterior collapses onto the relation; at sigma = 0 exactly
the estimator is the inverted relation itself) and grow with sigma. At large errors they are
positive (metal-richer, towards the prior's bulk) at the blue, metal-poor end and negative at
the red, metal-rich end, where the prior ends at or just above the true value. With the
uniform prior the blue end (u-g = 0.89) is first pulled slightly metal-poorer (the relation
is flat there, so a colour error of a few hundredths of a magnitude already spans the prior's
metal-poor edge at -3) before the pull towards the prior's bulk takes over above about
0.07 mag; with the two-Gaussian prior the bias grows monotonically at both ends.

:func:`run_toy_model` draws a sample under each prior, writes the figures corresponding to the
paper's Figures 28-30 (median [Fe/H] in u-g bins for each prior; bias against the u-g error at
u-g = 0.89, 0.99 and 1.09) and the numbers behind them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = [
    "OUTPUT_FILES",
    "TWO_GAUSSIAN_PRIOR",
    "UG_POINTS",
    "UNIFORM_PRIOR",
    "FehPrior",
    "ToyModelResult",
    "bias_curves",
    "binned_median",
    "feh_from_ug",
    "posterior_summary",
    "run_toy_model",
    "simulate_sample",
    "ug_from_feh",
]

#: u-g = UG_ZERO + UG_AMPLITUDE * 10**(UG_SLOPE * [Fe/H]) (the Appendix's relation).
UG_ZERO = 0.84
UG_AMPLITUDE = 0.34
UG_SLOPE = 0.45
#: Colours at which the bias is traced against the u-g error (paper's Figure 30).
UG_POINTS: tuple[float, ...] = (0.89, 0.99, 1.09)
#: Default u-g noise of the binned-median figures (mag).
DEFAULT_UG_ERROR = 0.1
#: [Fe/H] grid of the exact posterior (dex): wide enough for both priors' support.
GRID_LIMITS = (-4.5, 1.0)
GRID_STEP = 0.001
_N_QUADRATURE = 64  # Gauss-Hermite nodes for the expectation over the colour noise
#: Files :func:`run_toy_model` writes in its output folder, by :class:`ToyModelResult` key.
OUTPUT_FILES: dict[str, str] = {
    "fig28": "toy_fig28_uniform.png",
    "fig29": "toy_fig29_two_gaussians.png",
    "fig30": "toy_fig30_bias.png",
    "binned": "toy_binned.csv",
    "bias": "toy_bias.csv",
    "summary": "toy_model.json",
}


def _check_error(value: float, name: str, positive: bool = False) -> float:
    """``value`` as a float, or ``ValueError`` unless finite and >= 0 (> 0 if ``positive``)."""
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {bound} number of magnitudes, got {value}")
    return number


def ug_from_feh(feh: np.ndarray | float) -> np.ndarray:
    """True u-g colour of the toy model for [Fe/H]: 0.84 + 0.34 x 10^(0.45 [Fe/H])."""
    return UG_ZERO + UG_AMPLITUDE * 10.0 ** (UG_SLOPE * np.asarray(feh, dtype=float))


def feh_from_ug(ug: np.ndarray | float) -> np.ndarray:
    """[Fe/H] whose true colour is ``ug`` (inverse of :func:`ug_from_feh`; NaN for u-g <= 0.84)."""
    x = (np.asarray(ug, dtype=float) - UG_ZERO) / UG_AMPLITUDE
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)) / UG_SLOPE, np.nan)


@dataclass(frozen=True)
class FehPrior:
    """A prior on [Fe/H]: uniform on an interval, or a mixture of Gaussians.

    Attributes
    ----------
    name
        Label used in figures and tables.
    kind
        ``"uniform"`` (``low``, ``high``) or ``"gaussians"`` (``means``, ``sigmas``,
        ``weights``; weights are normalised).
    """

    name: str
    kind: str
    low: float = -3.0
    high: float = 0.0
    means: tuple[float, ...] = ()
    sigmas: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "uniform":
            if not self.high > self.low:
                raise ValueError("a uniform prior needs high > low")
        elif self.kind == "gaussians":
            n = len(self.means)
            if n == 0 or len(self.sigmas) != n or len(self.weights) != n:
                raise ValueError("means, sigmas and weights must have the same, non-zero length")
            if min(self.sigmas) <= 0 or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError("sigmas must be positive and weights non-negative")
        else:
            raise ValueError(f"kind must be 'uniform' or 'gaussians', got {self.kind!r}")

    def pdf(self, feh: np.ndarray) -> np.ndarray:
        """Probability density at ``feh`` (per dex)."""
        feh = np.asarray(feh, dtype=float)
        if self.kind == "uniform":
            inside = (feh >= self.low) & (feh <= self.high)
            return np.where(inside, 1.0 / (self.high - self.low), 0.0)
        w = np.asarray(self.weights, dtype=float)
        w = w / w.sum()
        density = np.zeros_like(feh)
        for weight, mean, sigma in zip(w, self.means, self.sigmas, strict=True):
            z = (feh - mean) / sigma
            density += weight * np.exp(-0.5 * z * z) / (sigma * np.sqrt(2.0 * np.pi))
        return density

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws of [Fe/H]."""
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, size=n)
        w = np.asarray(self.weights, dtype=float)
        component = rng.choice(len(w), size=n, p=w / w.sum())
        means = np.asarray(self.means, dtype=float)[component]
        sigmas = np.asarray(self.sigmas, dtype=float)[component]
        return rng.normal(means, sigmas)

    def describe(self) -> str:
        """One-line description, e.g. ``uniform on [-3, 0]``."""
        if self.kind == "uniform":
            return f"uniform on [{self.low:g}, {self.high:g}]"
        w = np.asarray(self.weights, dtype=float)
        w = w / w.sum()
        parts = [
            f"{wk:.2g} N({m:g}, {s:g})" for wk, m, s in zip(w, self.means, self.sigmas, strict=True)
        ]
        return " + ".join(parts)


#: [Fe/H] uniform on [-3, 0].
UNIFORM_PRIOR = FehPrior("uniform", "uniform", low=-3.0, high=0.0)
#: Equal-weight mixture of N(-1.5, 0.3) and N(-0.5, 0.2).
TWO_GAUSSIAN_PRIOR = FehPrior(
    "two Gaussians", "gaussians", means=(-1.5, -0.5), sigmas=(0.3, 0.2), weights=(0.5, 0.5)
)


def _grid() -> np.ndarray:
    lo, hi = GRID_LIMITS
    return np.linspace(lo, hi, int(round((hi - lo) / GRID_STEP)) + 1)


def posterior_summary(
    ug_obs: np.ndarray | float,
    ug_error: float,
    prior: FehPrior,
    grid: np.ndarray | None = None,
    *,
    with_median: bool = True,
) -> dict[str, np.ndarray]:
    """Exact posterior mean and median of [Fe/H] given observed u-g and its error, on a grid.

    p([Fe/H] | u-g_obs) is proportional to prior([Fe/H]) x N(u-g_obs; u-g([Fe/H]), sigma),
    evaluated on ``grid`` (default: [-4.5, 1.0] in steps of 0.001 dex) and normalised there.

    Parameters
    ----------
    ug_obs
        Observed colours (any shape; flattened).
    ug_error
        Gaussian colour error sigma (mag). At 0 the posterior is a point on the relation: mean
        and median are :func:`feh_from_ug`, clipped to the grid (NaN where the colour is not
        on the relation).
    prior
        The [Fe/H] prior.
    grid
        [Fe/H] grid (dex), increasing and uniform.
    with_median
        Also compute the posterior median (skip it when only the mean is needed).

    Returns
    -------
    dict
        ``mean`` and (with ``with_median``) ``median`` arrays (dex), one value per observed
        colour.
    """
    x = np.atleast_1d(np.asarray(ug_obs, dtype=float)).ravel()
    sigma = _check_error(ug_error, "ug_error")
    feh = _grid() if grid is None else np.asarray(grid, dtype=float)
    if sigma == 0.0:
        value = np.clip(feh_from_ug(x), feh[0], feh[-1])
        return {"mean": value, "median": value.copy()}
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior.pdf(feh))
    model = ug_from_feh(feh)
    log_w = log_prior[None, :] - 0.5 * ((x[:, None] - model[None, :]) / sigma) ** 2
    log_w -= log_w.max(axis=1, keepdims=True)
    w = np.exp(log_w)
    total = w.sum(axis=1)
    mean = (w @ feh) / total
    if not with_median:
        return {"mean": mean}
    cdf = np.cumsum(w, axis=1) / total[:, None]
    median = np.array([np.interp(0.5, c, feh) for c in cdf])
    return {"mean": mean, "median": median}


def simulate_sample(
    prior: FehPrior, n: int, ug_error: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """True [Fe/H] drawn from ``prior`` and u-g observed with Gaussian noise ``ug_error``."""
    sigma = _check_error(ug_error, "ug_error")
    feh = prior.sample(int(n), rng)
    ug = ug_from_feh(feh) + rng.normal(0.0, sigma, size=feh.size)
    return feh, ug


def binned_median(
    x: np.ndarray, y: np.ndarray, edges: np.ndarray, min_count: int = 50
) -> pd.DataFrame:
    """Median of ``y`` in bins of ``x`` (bins with fewer than ``min_count`` points get NaN).

    Returns
    -------
    pandas.DataFrame
        Columns ``x_lo``, ``x_hi``, ``x_centre``, ``n``, ``median``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    edges = np.asarray(edges, dtype=float)
    index = np.digitize(x, edges) - 1
    rows = []
    for k in range(edges.size - 1):
        values = y[index == k]
        median = float(np.median(values)) if values.size >= min_count else float("nan")
        rows.append((edges[k], edges[k + 1], 0.5 * (edges[k] + edges[k + 1]), values.size, median))
    return pd.DataFrame(rows, columns=["x_lo", "x_hi", "x_centre", "n", "median"])


def bias_curves(
    prior: FehPrior,
    ug_points: Sequence[float] = UG_POINTS,
    ug_errors: Sequence[float] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Bias of the posterior-mean estimator against the u-g error at fixed true colours.

    Parameters
    ----------
    prior
        The [Fe/H] prior the estimator was "trained" on.
    ug_points
        True colours u-g_0 (on the relation: 0.84 < u-g_0 <= 1.18).
    ug_errors
        Colour errors (mag); default 0 to 0.3 in steps of 0.01.

    Returns
    -------
    pandas.DataFrame
        One row per (u-g_0, error): ``prior``, ``ug``, ``feh_true`` (F_0), ``ug_error``,
        ``expected_estimate`` (E_noise[posterior mean]), ``bias`` (minus F_0),
        ``estimate_at_observed`` (posterior mean for u-g_obs = u-g_0) and
        ``offset_at_observed`` (minus F_0).
    """
    errors = np.linspace(0.0, 0.3, 31) if ug_errors is None else np.asarray(ug_errors, float)
    for sigma in errors:
        _check_error(sigma, "ug_errors")
    nodes, weights = np.polynomial.hermite_e.hermegauss(_N_QUADRATURE)
    weights = weights / weights.sum()  # expectation over a standard normal
    grid = _grid()
    rows = []
    for ug0 in ug_points:
        feh0 = float(feh_from_ug(ug0))
        if not np.isfinite(feh0) or ug0 > float(ug_from_feh(0.0)) + 1e-12:
            raise ValueError(f"u-g = {ug0} is not on the relation's range (0.84, 1.18]")
        for sigma in errors:
            at_obs = float(posterior_summary(ug0, sigma, prior, grid, with_median=False)["mean"][0])
            if sigma == 0.0:
                expected = at_obs
            else:
                means = posterior_summary(
                    ug0 + sigma * nodes, sigma, prior, grid, with_median=False
                )["mean"]
                expected = float(np.sum(weights * means))
            rows.append(
                {
                    "prior": prior.name,
                    "ug": float(ug0),
                    "feh_true": feh0,
                    "ug_error": float(sigma),
                    "expected_estimate": expected,
                    "bias": expected - feh0,
                    "estimate_at_observed": at_obs,
                    "offset_at_observed": at_obs - feh0,
                }
            )
    return pd.DataFrame(rows)


@dataclass
class ToyModelResult:
    """What :func:`run_toy_model` wrote and computed.

    Attributes
    ----------
    figures
        Paths of the PNG figures, keyed ``fig28`` (uniform prior), ``fig29`` (two Gaussians)
        and ``fig30`` (bias against u-g error) (see :data:`OUTPUT_FILES`).
    binned
        Median [Fe/H] in u-g bins with the exact posterior median and mean at the bin centres
        (one frame for both priors, column ``prior``).
    bias
        :func:`bias_curves` for both priors, concatenated.
    files
        Paths of the CSV/JSON tables written, keyed ``binned``, ``bias`` and ``summary``.
    """

    figures: dict[str, Path]
    binned: pd.DataFrame
    bias: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


def _median_figure(
    prior: FehPrior,
    feh: np.ndarray,
    ug: np.ndarray,
    binned: pd.DataFrame,
    ug_error: float,
    path: Path,
    paper_figure: int,
    dpi: int,
) -> Path:
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    ax_density, ax_offset = fig.subplots(1, 2)
    x_range, y_range = (0.55, 1.55), (-3.5, 0.7)
    counts, xe, ye = np.histogram2d(ug, feh, bins=(100, 84), range=(x_range, y_range))
    image = ax_density.imshow(
        np.ma.masked_equal(counts.T, 0),
        origin="lower",
        extent=(*x_range, *y_range),
        aspect="auto",
        norm=LogNorm(vmin=1),
        cmap="Greys",
    )
    fig.colorbar(image, ax=ax_density, label="stars per pixel")
    curve = np.linspace(float(ug_from_feh(-3.5)), float(ug_from_feh(0.7)), 200)
    ax_density.plot(curve, feh_from_ug(curve), color="C3", lw=1.5, label="true relation")
    centre = binned["x_centre"].to_numpy()
    ax_density.plot(centre, binned["median"], "o", ms=3.5, color="C0", label="sample median")
    ax_density.plot(
        centre, binned["posterior_median"], "-", color="C0", lw=1.2, label="posterior median"
    )
    ax_density.plot(
        centre, binned["posterior_mean"], "--", color="C2", lw=1.2, label="posterior mean"
    )
    ax_density.set_xlim(*x_range)
    ax_density.set_ylim(*y_range)
    ax_density.set_xlabel("observed u-g (mag)")
    ax_density.set_ylabel("true [Fe/H] (dex)")
    ax_density.legend(loc="upper left", fontsize=8)
    ax_density.set_title(f"[Fe/H] vs noisy u-g (σ = {ug_error:g} mag)")

    relation = feh_from_ug(centre)
    # where the relation is steep enough to invert usefully: true [Fe/H] in [-3, 0]
    ok = np.isfinite(relation) & (relation >= -3.0) & (relation <= 0.0)
    ax_offset.axhline(0.0, color="0.5", lw=0.8)
    ax_offset.plot(
        centre[ok],
        (binned["median"] - relation)[ok],
        "o",
        ms=3.5,
        color="C0",
        label="sample median",
    )
    ax_offset.plot(
        centre[ok],
        (binned["posterior_median"] - relation)[ok],
        "-",
        color="C0",
        lw=1.2,
        label="posterior median",
    )
    ax_offset.plot(
        centre[ok],
        (binned["posterior_mean"] - relation)[ok],
        "--",
        color="C2",
        label="posterior mean",
    )
    ax_offset.set_xlabel("observed u-g (mag)")
    ax_offset.set_ylabel("estimate − [Fe/H](u-g) from relation (dex)")
    ax_offset.set_title("offset of the estimate from the relation")
    ax_offset.legend(fontsize=8)
    fig.suptitle(f"Toy model (cf. paper Fig. {paper_figure}): [Fe/H] prior {prior.describe()}")
    fig.savefig(path, dpi=dpi)
    return path


def _bias_figure(bias: pd.DataFrame, priors: Sequence[FehPrior], path: Path, dpi: int) -> Path:
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    axes = fig.subplots(1, len(priors), sharey=True, squeeze=False)[0]
    for ax, prior in zip(axes, priors, strict=True):
        part = bias[bias["prior"] == prior.name]
        for k, (ug0, rows) in enumerate(part.groupby("ug", sort=True)):
            label = f"u-g = {ug0:.2f} ([Fe/H] = {rows['feh_true'].iloc[0]:+.2f})"
            ax.plot(rows["ug_error"], rows["bias"], "-", color=f"C{k}", label=label)
            ax.plot(rows["ug_error"], rows["offset_at_observed"], ":", color=f"C{k}")
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel("u-g error σ (mag)")
        ax.set_title(f"[Fe/H] prior: {prior.describe()}", fontsize=10)
        ax.legend(fontsize=8, title="solid: E[estimate] − true; dotted: at observed u-g")
    axes[0].set_ylabel("bias of posterior-mean [Fe/H] (dex)")
    fig.suptitle("Toy model (cf. paper Fig. 30): bias of the estimate vs u-g error")
    fig.savefig(path, dpi=dpi)
    return path


def run_toy_model(
    out_dir: str | Path,
    *,
    n_stars: int = 200_000,
    ug_error: float = DEFAULT_UG_ERROR,
    ug_points: Sequence[float] = UG_POINTS,
    max_error: float = 0.3,
    n_errors: int = 61,
    bin_width: float = 0.02,
    seed: int = 0,
    dpi: int = 100,
    overwrite: bool = False,
) -> ToyModelResult:
    """Run the Appendix toy model and write its figures (paper Figs 28-30) and tables.

    Parameters
    ----------
    out_dir
        Folder for the :data:`OUTPUT_FILES`: ``toy_fig28_uniform.png``,
        ``toy_fig29_two_gaussians.png``, ``toy_fig30_bias.png``, ``toy_binned.csv``,
        ``toy_bias.csv`` and ``toy_model.json`` (created if missing).
    n_stars
        Stars drawn per prior for the binned-median figures.
    ug_error
        u-g noise of those samples (mag).
    ug_points
        True colours at which the bias is traced (Fig. 30).
    max_error, n_errors
        The bias is computed at ``n_errors`` errors evenly spaced in [0, max_error] (mag).
    bin_width
        u-g bin width of the binned medians (mag).
    seed
        Seed of the samples.
    dpi
        Resolution of the PNG figures.
    overwrite
        Replace files of the same name; otherwise ``FileExistsError`` before any work.

    Returns
    -------
    ToyModelResult
    """
    if int(n_stars) < 1 or int(n_errors) < 2:
        raise ValueError(f"need n_stars >= 1 and n_errors >= 2, got {n_stars} and {n_errors}")
    ug_error = _check_error(ug_error, "ug_error")
    max_error = _check_error(max_error, "max_error", positive=True)
    bin_width = _check_error(bin_width, "bin_width", positive=True)
    out = Path(out_dir)
    paths = {key: out / name for key, name in OUTPUT_FILES.items()}
    existing = [path.name for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}; pass overwrite=True to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    priors = (UNIFORM_PRIOR, TWO_GAUSSIAN_PRIOR)
    edges = np.arange(0.55, 1.55 + 0.5 * bin_width, bin_width)
    errors = np.linspace(0.0, float(max_error), int(n_errors))
    figures: dict[str, Path] = {}
    binned_parts, bias_parts = [], []
    for key, prior, paper_figure in zip(("fig28", "fig29"), priors, (28, 29), strict=True):
        feh, ug = simulate_sample(prior, n_stars, ug_error, rng)
        binned = binned_median(ug, feh, edges)
        post = posterior_summary(binned["x_centre"].to_numpy(), ug_error, prior)
        binned["posterior_median"] = post["median"]
        binned["posterior_mean"] = post["mean"]
        binned.insert(0, "prior", prior.name)
        binned_parts.append(binned)
        figures[key] = _median_figure(
            prior, feh, ug, binned, ug_error, paths[key], paper_figure, dpi
        )
        bias_parts.append(bias_curves(prior, ug_points, errors))
    bias = pd.concat(bias_parts, ignore_index=True)
    figures["fig30"] = _bias_figure(bias, priors, paths["fig30"], dpi)
    binned_all = pd.concat(binned_parts, ignore_index=True)
    files = {key: paths[key] for key in ("binned", "bias", "summary")}
    binned_all.to_csv(files["binned"], index=False, float_format="%.6g")
    bias.to_csv(files["bias"], index=False, float_format="%.6g")
    summary = {
        "relation": f"u-g = {UG_ZERO} + {UG_AMPLITUDE} * 10**({UG_SLOPE} [Fe/H])",
        "priors": {p.name: p.describe() for p in priors},
        "estimator": "exact posterior mean of [Fe/H] on a 0.001 dex grid",
        "n_stars": int(n_stars),
        "ug_error": float(ug_error),
        "seed": int(seed),
        "bias_at_max_error": {
            p.name: {
                f"{ug0:.2f}": float(
                    bias[(bias["prior"] == p.name) & (bias["ug"] == ug0)]["bias"].iloc[-1]
                )
                for ug0 in ug_points
            }
            for p in priors
        },
    }
    files["summary"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return ToyModelResult(figures=figures, binned=binned_all, bias=bias, files=files)
