"""Diagnostic report of a photo-D run: the figures and Table 1 of the paper, for any run.

Mrakovčić, Ivezić & Palaversa (2025, AJ 170, 72) judge photometric distances, metallicities
and extinctions with a standard set of diagnostics. :func:`write_report` draws them for any
run of the hybrid pipeline (:func:`photodist.pipeline.run_patch`) into a static HTML page
(``index.html``, opens from disk, no server) with PNG figures and the numbers behind them:

* 1:1 density plots of estimate vs reference for M_r, A_r and [Fe/H] (paper Figs 2, 8, 14,
  20);
* maps in the (u-g, u-g error) plane of the median reference value, the median residual and
  the standard deviation of the residual per pixel (Figs 3-5, 9-11, 15-17, 21-23);
* residuals against the u magnitude, the reference M_r and the residual of the partner
  parameter (Δ[Fe/H] for M_r and A_r, ΔM_r for [Fe/H]) with the running median and
  median +- sigma_G (Figs 6, 12, 18, 24);
* histograms of the normalised residuals against N(0, 1) (Figs 7, 13, 19, 25);
* histograms of sigma_total / sigma_B and sigma_NN / sigma_B (Figs 26, 27) and the
  correlation between the network's emulation error (NN - Bayes) and the Bayesian error
  (Bayes - truth), which the paper finds small (about 0.1, 0.05 and 0.2 for M_r, A_r and
  [Fe/H]) so that adding sigma_NN and sigma_B in quadrature is justified;
* Table 1 (median and sigma_G = 0.7413 IQR of estimate - reference) for every comparison,
  for all stars and split by r magnitude, by giants / blue main sequence / red main sequence
  and by [Fe/H] below / above -1;
* flag fractions per bit, the timing of each pipeline stage and the run configuration.

Comparisons ("estimate vs reference", residual = estimate - reference):

* ``bayes_truth``: Bayesian estimate vs truth (simulated data);
* ``nn_bayes``: network estimate vs Bayesian estimate of the same star (needs Bayesian
  estimates of the network rows: ``bayes_reference``), the only check possible on real data;
* ``nn_truth``: network estimate vs truth (simulated data).

Inputs are pandas frames aligned by row: row ``i`` of ``truth``, ``bayes_reference`` and
``photometry`` describes the same star as row ``i`` of ``result`` (indexes are ignored; use
:func:`load_run` to align frames by an id column). Network values are the rows of ``result``
with ``method == "nn"``; Bayesian values come from ``bayes_reference`` when given (rows not
estimated may be NaN), otherwise from the rows of ``result`` with ``method == "bayes"`` (the
training subsample and the fallbacks: a different set of stars than the network rows, which
the page says). A ``result`` without a ``method`` column counts as network output when it has
``{p}_sigma_nn`` columns and as Bayesian output otherwise (e.g. ``BayesEstimator.predict``).

Stellar classes use the reference values (truth when given, else the Bayesian estimate):
giants are brighter than the main-sequence turn-off by more than half the sub-giant blend
(``M_r < turnoff(FeH) - 0.5``, the locus's giant label, :func:`photodist.locus.turnoff_absmag`);
the other stars are blue main sequence when their main-sequence g-i
(:func:`photodist.locus.ms_gi`) is below ``ms_split_gi`` (default 1.0) and red main sequence
otherwise.

Plots use 2-D histograms rendered as images (never scatter plots), so a 400,000-star patch
renders in seconds per figure with matplotlib's Agg backend.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from photodist import io
from photodist.bands import (
    BandSet,
    ColumnMap,
    first_numeric_column,
    photometry_from_frame,
)
from photodist.bayes import Flags
from photodist.diagnostics import (
    diagnostics_figure,
    dust_profile_figure,
    magnitude_table,
    r_magnitudes,
)
from photodist.evaluate import (
    SIGMA_G_FACTOR,
    TRUTH_ALIASES,
    align_to_run,
    robust_stats,
    run_match_keys,
    truth_values,
)
from photodist.locus import SUBGIANT_WIDTH, ms_gi, turnoff_absmag

__all__ = [
    "COMPARISONS",
    "DEFAULT_MAG_EDGES",
    "PARAMETERS",
    "Comparison",
    "ReportData",
    "RunData",
    "comparison_table",
    "error_correlations",
    "flag_fractions",
    "load_run",
    "prepare_report_data",
    "report_from_run",
    "sigma_ratio_summary",
    "subsample_masks",
    "write_report",
]

#: Parameters compared, with their truth columns, plain-text symbols and units.
PARAMETERS: tuple[str, ...] = ("Mr", "Ar", "FeH")
#: The simulator's truth columns (a run output that kept them is its own truth).
TRUTH_COLUMNS: dict[str, str] = {p: TRUTH_ALIASES[p][0] for p in PARAMETERS}
SYMBOLS: dict[str, str] = {"Mr": "M_r", "Ar": "A_r", "FeH": "[Fe/H]"}
UNITS: dict[str, str] = {"Mr": "mag", "Ar": "mag", "FeH": "dex"}
_TEX: dict[str, str] = {"Mr": "$M_r$", "Ar": "$A_r$", "FeH": "[Fe/H]"}
#: r-magnitude bin edges of the Table-1 split (bins below the first and above the last too).
DEFAULT_MAG_EDGES: tuple[float, ...] = (20.0, 22.0, 23.0, 24.0)
#: Files of a run directory read by :func:`load_run`.
RUN_FILES: dict[str, str] = {
    "result": "result.parquet",
    "truth": "truth.parquet",
    "bayes_reference": "bayes_reference.parquet",
    "photometry": "photometry.parquet",
}
RUN_INFO_FILE = "run.json"
_PIPELINE_ATTR = "photodist_pipeline"
_MIN_PIXEL = 10  # stars needed for a pixel of a (u-g, u-g error) map
_MIN_RUNNING = 20  # stars needed for a point of a running median
_MAP_BINS = 40
_DENSITY_BINS = 120
_RUNNING_BINS = 25


@dataclass(frozen=True)
class Comparison:
    """An "estimate vs reference" comparison; residual = estimate - reference.

    Attributes
    ----------
    key
        Short name used in file names and tables (``bayes_truth``, ``nn_bayes``,
        ``nn_truth``).
    estimate, reference
        Sources compared: ``"NN"``, ``"Bayes"`` or ``"truth"``.
    sigma
        Which uncertainty normalises the residual: ``"bayes"`` (Bayesian posterior width),
        ``"nn"`` (the network's own emulation width sigma_NN) or ``"total"`` (the pipeline's
        total sigma).
    """

    key: str
    estimate: str
    reference: str
    sigma: str

    @property
    def title(self) -> str:
        return f"{self.estimate} vs {self.reference}"


#: The paper's three comparisons, in the order of its Table 1.
COMPARISONS: tuple[Comparison, ...] = (
    Comparison("bayes_truth", "Bayes", "truth", "bayes"),
    Comparison("nn_bayes", "NN", "Bayes", "nn"),
    Comparison("nn_truth", "NN", "truth", "total"),
)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


@dataclass
class ReportData:
    """Row-aligned arrays a report is computed from (see :func:`prepare_report_data`).

    Attributes
    ----------
    n_rows
        Number of stars (rows of the result).
    is_nn
        True for rows estimated by the networks.
    values
        ``values[source][p]`` for source ``"NN"``, ``"Bayes"``, ``"truth"``: estimates (NaN
        where the source has none for a star); a source is absent when not available at all.
    sigmas
        ``sigmas[kind][p]`` for kind ``"total"`` (the result's total sigma on network rows),
        ``"nn"`` (sigma_NN), ``"bayes_pred"`` (the network's prediction of the Bayesian
        width) and ``"bayes"`` (Bayesian posterior width of the Bayesian values).
    photometry
        ``umag``, ``rmag``, ``ug``, ``ug_err`` and ``a_map`` (the input catalogue's dust-map
        A_r) where available.
    bayes_source
        Where the Bayesian values come from (``"bayes_reference"``, ``"result"`` or
        ``"none"``).
    population_source
        Source whose M_r and [Fe/H] define the stellar classes (``"truth"`` or ``"Bayes"``),
        or None.
    method_counts
        Number of rows per estimation method (``{"bayes": ..., "nn": ...}``).
    """

    n_rows: int
    is_nn: np.ndarray
    values: dict[str, dict[str, np.ndarray]]
    sigmas: dict[str, dict[str, np.ndarray]]
    photometry: dict[str, np.ndarray]
    bayes_source: str
    population_source: str | None
    method_counts: dict[str, int] = field(default_factory=dict)

    def pair(self, comparison: Comparison, p: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Estimate and reference arrays of a comparison (None when a source is missing)."""
        est = self.values.get(comparison.estimate, {}).get(p)
        ref = self.values.get(comparison.reference, {}).get(p)
        if est is None or ref is None:
            return None
        return est, ref

    def residual(self, comparison: Comparison, p: str) -> np.ndarray | None:
        """Estimate - reference (NaN where either is missing), or None."""
        pair = self.pair(comparison, p)
        return None if pair is None else pair[0] - pair[1]

    def n_compared(self, comparison: Comparison) -> int:
        """Number of stars with both values of the comparison finite for some parameter."""
        compared = np.zeros(self.n_rows, dtype=bool)
        for p in PARAMETERS:
            res = self.residual(comparison, p)
            if res is not None:
                compared |= np.isfinite(res)
        return int(compared.sum())

    def available(self, comparison: Comparison) -> bool:
        """True when the comparison has at least one star with both values finite."""
        return self.n_compared(comparison) > 0

    def comparisons(self) -> list[Comparison]:
        """The comparisons with data."""
        return [c for c in COMPARISONS if self.available(c)]


def _flux_photometry(frame: pd.DataFrame, columns: ColumnMap) -> dict[str, np.ndarray]:
    """``umag``, ``rmag``, ``ug`` and ``ug_err`` of a flux catalogue, where it has them.

    Read by :func:`photodist.bands.photometry_from_frame`, as the estimators read them: a
    non-detection, a true measurement flag, a sentinel or an unusable colour gives NaN, and u
    is r plus the colours between. Bands without flux columns are left out; without r, all.
    """
    present = {str(c) for c in frame.columns}
    bands = tuple(b for b in "ugr" if set(columns.flux_columns(b)) <= present)
    if "r" not in bands:
        return {}
    read = photometry_from_frame(frame, BandSet("".join(bands), bands), columns)
    mags = {"r": read.r}
    for k in range(len(bands) - 2, -1, -1):  # red to blue: m_blue = m_red + colour
        mags[bands[k]] = mags[bands[k + 1]] + read.colors[:, k]
    phot = {f"{b}mag": mags[b] for b in "ur" if b in mags}
    if bands[:2] == ("u", "g"):
        phot["ug"], phot["ug_err"] = read.colors[:, 0], read.color_errors[:, 0]
    return phot


def _check_length(frame: pd.DataFrame | None, n: int, name: str) -> None:
    if frame is not None and len(frame) != n:
        raise ValueError(
            f"{name} has {len(frame)} rows, result {n}: frames must be aligned row by row"
        )


def prepare_report_data(
    result: pd.DataFrame,
    truth: pd.DataFrame | None = None,
    bayes_reference: pd.DataFrame | None = None,
    photometry: pd.DataFrame | None = None,
    columns: ColumnMap | None = None,
) -> ReportData:
    """Collect the row-aligned arrays of a report (see the module docstring for the rules).

    Parameters
    ----------
    result
        Pipeline output: ``{p}_mean``, ``{p}_sigma`` (or ``{p}_std``), optionally
        ``{p}_sigma_nn``, ``{p}_sigma_bayes``, ``method``, ``flags``.
    truth
        True values per row: a simulated catalogue (``Mr_true``, ``Ar_true``, ``FeH_true``,
        or the photod convention ``Mr``, ``FeH``, ``Ar``; see
        :func:`photodist.evaluate.truth_values`).
    bayes_reference
        Bayesian estimates of the same rows: ``{p}_mean`` and ``{p}_std`` or ``{p}_sigma``
        (``BayesEstimator.predict`` output or a pipeline-style frame); NaN rows allowed.
    photometry
        Columns for u, g, r magnitudes and errors (names from ``columns``, default ``umag``,
        ``uErr``, ...), optionally ``ug`` and ``ugErr``. Columns missing here, and the NaN
        rows of those found, are taken from ``result`` and then ``truth``; rows still without
        a plausible r take ``DM_mean + Qr_mean``
        (:func:`photodist.diagnostics.r_magnitudes`).
    columns
        Catalogue column names (default :class:`photodist.bands.ColumnMap`).

    Returns
    -------
    ReportData
    """
    n = len(result)
    for frame, name in ((truth, "truth"), (bayes_reference, "bayes_reference")):
        _check_length(frame, n, name)
    _check_length(photometry, n, "photometry")
    columns = columns or ColumnMap()

    if "method" in result.columns:
        method = result["method"].astype(str).to_numpy()
    else:
        has_nn = any(f"{p}_sigma_nn" in result.columns for p in PARAMETERS)
        method = np.full(n, "nn" if has_nn else "bayes", dtype=object)
    is_nn = method == "nn"
    is_bayes = method == "bayes"
    counts = {str(k): int(v) for k, v in zip(*np.unique(method, return_counts=True), strict=True)}

    values: dict[str, dict[str, np.ndarray]] = {}
    sigmas: dict[str, dict[str, np.ndarray]] = {"total": {}, "nn": {}, "bayes_pred": {}}
    nan = np.full(n, np.nan)
    if is_nn.any():
        values["NN"] = {}
        for p in PARAMETERS:
            mean = first_numeric_column(result, [f"{p}_mean"])
            if mean is None:
                raise KeyError(f"result has no column {p}_mean")
            values["NN"][p] = np.where(is_nn, mean, np.nan)
            for kind, names in (
                ("total", (f"{p}_sigma", f"{p}_std")),
                ("nn", (f"{p}_sigma_nn",)),
                ("bayes_pred", (f"{p}_sigma_bayes",)),
            ):
                col = first_numeric_column(result, names)
                sigmas[kind][p] = nan.copy() if col is None else np.where(is_nn, col, np.nan)

    bayes_source = "none"
    if bayes_reference is not None:
        bayes_source = "bayes_reference"
        values["Bayes"], sigmas["bayes"] = {}, {}
        for p in PARAMETERS:
            mean = first_numeric_column(bayes_reference, [f"{p}_mean"])
            if mean is None:
                raise KeyError(f"bayes_reference has no column {p}_mean")
            values["Bayes"][p] = mean
            sig = first_numeric_column(bayes_reference, [f"{p}_std", f"{p}_sigma"])
            sigmas["bayes"][p] = nan.copy() if sig is None else sig
    elif is_bayes.any():
        bayes_source = "result"
        values["Bayes"], sigmas["bayes"] = {}, {}
        for p in PARAMETERS:
            mean = first_numeric_column(result, [f"{p}_mean"])
            if mean is None:
                raise KeyError(f"result has no column {p}_mean")
            values["Bayes"][p] = np.where(is_bayes, mean, np.nan)
            sig = first_numeric_column(result, [f"{p}_sigma", f"{p}_std"])
            sigmas["bayes"][p] = nan.copy() if sig is None else np.where(is_bayes, sig, np.nan)

    if truth is not None:
        found = truth_values(truth, required=True)
        values["truth"] = {p: found[p] for p in PARAMETERS}

    frames = [f for f in (photometry, result, truth) if f is not None]

    def lookup(*names: str) -> np.ndarray | None:
        """The column from the first frame that has it, its NaN rows filled from the next."""
        found = None
        for frame in frames:
            col = first_numeric_column(frame, names)
            if col is not None:
                found = col if found is None else np.where(np.isnan(found), col, found)
        return found

    if columns.flux_unit is not None and photometry is not None:  # a flux catalogue
        phot = _flux_photometry(photometry, columns)
        ug, ug_err = phot.pop("ug", None), phot.pop("ug_err", None)
    else:
        umag, gmag, rmag = (lookup(columns.mag_column(b)) for b in "ugr")
        uerr, gerr = (lookup(columns.error_column(b)) for b in "ug")
        phot = {k: v for k, v in (("umag", umag), ("rmag", rmag)) if v is not None}
        ug = None if umag is None or gmag is None else umag - gmag
        ug_err = None if uerr is None or gerr is None else np.hypot(uerr, gerr)
    if "rmag" in phot:  # rows without r (e.g. a truth row not matched): r = DM + Q_r
        phot["rmag"] = r_magnitudes(result, phot["rmag"])
    found_ug, found_ug_err = lookup("ug"), lookup("ugErr")
    ug = ug if found_ug is None else found_ug
    ug_err = ug_err if found_ug_err is None else found_ug_err
    if ug is not None and ug_err is not None:
        phot["ug"], phot["ug_err"] = ug, ug_err
    # the dust map from the input catalogue, or from a simulated one that keeps the true A_r
    # apart (``Ar_true``): under the photod convention a truth frame's ``Ar`` is the true A_r
    a_map = None if photometry is None else columns.dust_values(photometry)
    if a_map is None and truth is not None and TRUTH_ALIASES["Ar"][0] in truth.columns:
        a_map = columns.dust_values(truth)
    if a_map is not None:
        phot["a_map"] = a_map

    population = "truth" if "truth" in values else ("Bayes" if "Bayes" in values else None)
    return ReportData(
        n_rows=n,
        is_nn=is_nn,
        values=values,
        sigmas=sigmas,
        photometry=phot,
        bayes_source=bayes_source,
        population_source=population,
        method_counts=counts,
    )


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


def _mag_label(lo: float, hi: float) -> str:
    if not math.isfinite(lo):
        return f"r < {hi:g}"
    if not math.isfinite(hi):
        return f"r ≥ {lo:g}"
    return f"{lo:g} ≤ r < {hi:g}"


def subsample_masks(
    data: ReportData,
    mag_edges: Sequence[float] = DEFAULT_MAG_EDGES,
    feh_split: float = -1.0,
    ms_split_gi: float = 1.0,
) -> list[tuple[str, str, np.ndarray]]:
    """The Table-1 subsamples as (group, label, boolean mask) in display order.

    Groups: ``all``; ``magnitude`` (r bins from ``mag_edges``, when r is available);
    ``class`` (giants, blue MS, red MS) and ``metallicity`` ([Fe/H] below / at or above
    ``feh_split``), both from :attr:`ReportData.population_source` values. Rows whose
    defining value is not finite belong to none of that group's subsamples.
    """
    n = data.n_rows
    masks: list[tuple[str, str, np.ndarray]] = [("all", "all", np.ones(n, dtype=bool))]
    r = data.photometry.get("rmag")
    if r is not None:
        edges = [-np.inf, *sorted(float(e) for e in mag_edges), np.inf]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            masks.append(("magnitude", _mag_label(lo, hi), (r >= lo) & (r < hi)))
    if data.population_source is not None:
        ref = data.values[data.population_source]
        mr, feh = ref["Mr"], ref["FeH"]
        ok = np.isfinite(mr) & np.isfinite(feh)
        feh_safe = np.where(ok, feh, 0.0)
        giant = ok & (mr < turnoff_absmag(feh_safe) - 0.5 * SUBGIANT_WIDTH)
        gi = ms_gi(np.where(ok, mr, 0.0), feh_safe)
        blue = ok & ~giant & (gi < ms_split_gi)
        red = ok & ~giant & (gi >= ms_split_gi)
        masks += [
            ("class", "giants", giant),
            ("class", f"blue MS (g-i < {ms_split_gi:g})", blue),
            ("class", f"red MS (g-i ≥ {ms_split_gi:g})", red),
        ]
        fin = np.isfinite(feh)
        masks += [
            ("metallicity", f"[Fe/H] < {feh_split:g}", fin & (feh < feh_split)),
            ("metallicity", f"[Fe/H] ≥ {feh_split:g}", fin & (feh >= feh_split)),
        ]
    return masks


def comparison_table(
    data: ReportData,
    mag_edges: Sequence[float] = DEFAULT_MAG_EDGES,
    feh_split: float = -1.0,
    ms_split_gi: float = 1.0,
) -> pd.DataFrame:
    """Table 1: median and sigma_G of estimate - reference, per comparison and subsample.

    Each comparison uses the stars of the subsample where both of its values are finite.

    Returns
    -------
    pandas.DataFrame
        Long format, one row per (subsample, comparison, parameter) with at least one star:
        ``group``, ``subsample``, ``comparison`` (key), ``title``, ``parameter``, ``unit``,
        ``n_stars``, ``median``, ``sigma_g``.
    """
    rows = []
    masks = subsample_masks(data, mag_edges, feh_split, ms_split_gi)
    for comparison in data.comparisons():
        for p in PARAMETERS:
            res = data.residual(comparison, p)
            if res is None:
                continue
            finite = np.isfinite(res)
            for group, label, mask in masks:
                sel = res[mask & finite]
                if sel.size == 0:
                    continue
                median, sigma_g = robust_stats(sel)
                rows.append(
                    {
                        "group": group,
                        "subsample": label,
                        "comparison": comparison.key,
                        "title": comparison.title,
                        "parameter": p,
                        "unit": UNITS[p],
                        "n_stars": int(sel.size),
                        "median": median,
                        "sigma_g": sigma_g,
                    }
                )
    columns = [
        "group",
        "subsample",
        "comparison",
        "title",
        "parameter",
        "unit",
        "n_stars",
        "median",
        "sigma_g",
    ]
    return pd.DataFrame(rows, columns=columns)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def error_correlations(data: ReportData, clip: float = 5.0) -> pd.DataFrame:
    """Correlation between the network's emulation error and the Bayesian error.

    For each parameter, over the network rows with finite NN, Bayes and truth values: the
    Pearson correlation of (NN - Bayes) with (Bayes - truth), on all those stars and after
    dropping stars more than ``clip`` sigma_G from the median in either residual (robust to
    catastrophic outliers). Empty when truth or Bayesian values of the network rows are
    missing.

    Returns
    -------
    pandas.DataFrame
        Indexed by parameter: ``n_stars``, ``pearson_r``, ``n_clipped``,
        ``pearson_r_clipped``.
    """
    if not all(s in data.values for s in ("NN", "Bayes", "truth")):
        return pd.DataFrame(columns=["n_stars", "pearson_r", "n_clipped", "pearson_r_clipped"])
    rows = {}
    for p in PARAMETERS:
        nn, bayes, true = (data.values[s][p] for s in ("NN", "Bayes", "truth"))
        emulation, intrinsic = nn - bayes, bayes - true
        ok = np.isfinite(emulation) & np.isfinite(intrinsic)
        if not ok.any():
            continue
        e, b = emulation[ok], intrinsic[ok]
        keep = np.ones(e.size, dtype=bool)
        for x in (e, b):
            med, sig = robust_stats(x)
            if sig > 0:
                keep &= np.abs(x - med) <= clip * sig
        rows[p] = {
            "n_stars": int(e.size),
            "pearson_r": _pearson(e, b),
            "n_clipped": int(keep.sum()),
            "pearson_r_clipped": _pearson(e[keep], b[keep]),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "parameter"
    return table


def sigma_ratio_summary(data: ReportData) -> pd.DataFrame:
    """Percentiles of sigma_total / sigma_B and sigma_NN / sigma_B on the network rows.

    sigma_B is the network's prediction of the Bayesian posterior width (``{p}_sigma_bayes``),
    sigma_total = sqrt(sigma_NN^2 + sigma_B^2) the pipeline's total uncertainty. Also the
    Pearson correlation of sigma_NN with sigma_B.

    Returns
    -------
    pandas.DataFrame
        Indexed by parameter: ``n_stars``, ``total_over_bayes_p16/p50/p84``,
        ``nn_over_bayes_p16/p50/p84``, ``corr_sigma_nn_sigma_bayes``. Empty without network
        rows carrying both widths.
    """
    rows = {}
    for p in PARAMETERS:
        total = data.sigmas["total"].get(p)
        own = data.sigmas["nn"].get(p)
        pred = data.sigmas["bayes_pred"].get(p)
        if total is None or own is None or pred is None:
            continue
        ok = np.isfinite(total) & np.isfinite(own) & np.isfinite(pred) & (pred > 0)
        if not ok.any():
            continue
        t, o = total[ok] / pred[ok], own[ok] / pred[ok]
        qt, qo = np.percentile(t, [16, 50, 84]), np.percentile(o, [16, 50, 84])
        rows[p] = {
            "n_stars": int(ok.sum()),
            "total_over_bayes_p16": qt[0],
            "total_over_bayes_p50": qt[1],
            "total_over_bayes_p84": qt[2],
            "nn_over_bayes_p16": qo[0],
            "nn_over_bayes_p50": qo[1],
            "nn_over_bayes_p84": qo[2],
            "corr_sigma_nn_sigma_bayes": _pearson(own[ok], pred[ok]),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "parameter"
    return table


def flag_fractions(result: pd.DataFrame) -> pd.DataFrame:
    """Fraction of stars with each flag bit set, overall and per method.

    Returns
    -------
    pandas.DataFrame
        One row per bit of :class:`photodist.bayes.Flags` plus ``any`` (some bit set):
        ``flag``, ``bit``, ``n_stars``, ``fraction`` and, when ``result`` has a ``method``
        column, ``fraction_<method>`` for each method. Empty without a ``flags`` column.
    """
    if "flags" not in result.columns:
        return pd.DataFrame(columns=["flag", "bit", "n_stars", "fraction"])
    flags = pd.to_numeric(result["flags"], errors="coerce").fillna(0).to_numpy(dtype=np.int64)
    groups: dict[str, np.ndarray] = {}
    if "method" in result.columns:
        method = result["method"].astype(str).to_numpy()
        for name in sorted(set(method)):
            groups[name] = method == name
    n = flags.size
    rows = []
    items = [*Flags.describe().items(), ("any", -1)]
    for name, bit in items:
        hit = flags != 0 if bit == -1 else (flags & bit) != 0
        row: dict[str, Any] = {
            "flag": name,
            "bit": bit if bit != -1 else None,
            "n_stars": int(hit.sum()),
            "fraction": float(hit.sum() / n) if n else math.nan,
        }
        for group, mask in groups.items():
            total = int(mask.sum())
            row[f"fraction_{group}"] = float((hit & mask).sum() / total) if total else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    table["bit"] = table["bit"].astype("Int64")
    return table


def error_model_note(record: Mapping[str, Any] | None) -> str:
    """One sentence on the catalogue's error model from a run's ``error_floor`` record."""
    if not record or record.get("floor") is None:
        return ""
    used = f"the Bayesian stage used a colour-error floor of {record['floor']:.4f} mag"
    used += " (fitted)" if record.get("fitted") else ""
    if record.get("scatter") is None:
        return f"Error model: {used}."
    return (
        f"Error model: {record['n_stars']:,} well-measured stars scatter by "
        f"{record['scatter']:.4f} mag beyond their quoted colour errors (posterior predictive "
        f"chi2 check; posterior grid resolution {record['grid']:.4f} mag); {used}."
    )


def prior_power_note(record: Mapping[str, Any] | None) -> str:
    """One sentence on how a run adjusted its prior, from its ``prior_temper`` record."""
    if not record or record.get("beta") is None or record.get("reason") == "flat prior":
        return ""
    beta = float(record["beta"])
    shift = float(record.get("feh_shift") or 0.0)
    changes = [f"moved by {shift:+.2g} dex in [Fe/H]"] if shift else []
    changes += [f"raised to the power {beta:g}"] if beta < 1.0 else []
    what = " and ".join(changes)
    if record.get("fitted") and changes:
        return (
            f"Prior: the ([Fe/H], M_r) prior was {what}, as the stars' marginal "
            f"likelihood prefers ({record['n_stars']:,} stars, "
            f"{record['log_evidence_gain']:+.3f} per star): they follow another population "
            "than the model's."
        )
    if record.get("fitted"):
        return (
            "Prior: the ([Fe/H], M_r) prior was used as given, the most likely on "
            f"{record['n_stars']:,} of the stars."
        )
    if record.get("reason") != "given":
        done = f"{what}; " if changes else "used as given; "
        return f"Prior: the ([Fe/H], M_r) prior was {done}nothing fitted ({record['reason']})."
    return f"Prior: the ([Fe/H], M_r) prior was {what}." if changes else ""


def _timings_table(timings: Mapping[str, float] | None) -> pd.DataFrame:
    if not timings:
        return pd.DataFrame(columns=["stage", "seconds", "fraction_of_total"])
    items = {str(k): float(v) for k, v in timings.items()}
    total = items.get("total", sum(v for k, v in items.items() if k != "total"))
    rows = [
        {
            "stage": k,
            "seconds": v,
            "fraction_of_total": v / total if total > 0 and k != "total" else np.nan,
        }
        for k, v in items.items()
    ]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Binned statistics
# ----------------------------------------------------------------------------------------------


def _grouped_quantiles(
    index: np.ndarray, values: np.ndarray, n_groups: int, quantiles: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and quantiles (linear interpolation, as numpy's default) of values per group.

    ``index`` holds group numbers in [0, n_groups); returns counts (n_groups,) and
    quantiles (len(quantiles), n_groups), NaN for empty groups.
    """
    order = np.lexsort((values, index))
    v = values[order]
    counts = np.bincount(index, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((len(quantiles), n_groups), np.nan)
    has = counts > 0
    first, size = starts[has], counts[has]
    for k, q in enumerate(quantiles):
        pos = first + q * (size - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, first + size - 1)
        out[k, has] = v[lo] + (pos - lo) * (v[hi] - v[lo])
    return counts, out


def _range(x: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    a, b = np.percentile(x, [lo, hi])
    if not b > a:
        a, b = a - 0.5, b + 0.5
    return float(a), float(b)


_LEFT, _BOTTOM, _TITLE, _SUPTITLE = 0.8, 0.6, 0.4, 0.45  # margins (inches)
_CBAR_GAP, _CBAR_WIDTH, _CBAR_LABEL, _RIGHT = 0.1, 0.15, 0.85, 0.25


def _panels(
    n_rows: int, n_cols: int, width: float, height: float, colorbar: bool = False
) -> tuple[Figure, np.ndarray, np.ndarray | None]:
    """A figure with a grid of axes at fixed margins (inches), with colour-bar axes if asked.

    Explicit positions instead of a layout engine: the figure is drawn once when saved.
    """
    cell_w = _LEFT + width + (_CBAR_GAP + _CBAR_WIDTH + _CBAR_LABEL if colorbar else _RIGHT)
    cell_h = _BOTTOM + height + _TITLE
    fig_w, fig_h = n_cols * cell_w, n_rows * cell_h + _SUPTITLE
    fig = Figure(figsize=(fig_w, fig_h))
    axes = np.empty((n_rows, n_cols), dtype=object)
    caxes = np.empty((n_rows, n_cols), dtype=object) if colorbar else None
    for r in range(n_rows):
        y0 = fig_h - _SUPTITLE - (r + 1) * cell_h + _BOTTOM
        for c in range(n_cols):
            x0 = c * cell_w + _LEFT
            axes[r, c] = fig.add_axes((x0 / fig_w, y0 / fig_h, width / fig_w, height / fig_h))
            if caxes is not None:
                xc = x0 + width + _CBAR_GAP
                caxes[r, c] = fig.add_axes(
                    (xc / fig_w, y0 / fig_h, _CBAR_WIDTH / fig_w, height / fig_h)
                )
    return fig, axes, caxes


def _suptitle(fig: Figure, text: str) -> None:
    fig.suptitle(text, y=1.0 - 0.12 / fig.get_figheight(), va="top", fontsize=12)


def _density_image(
    fig: Figure,
    ax: Any,
    cax: Any,
    x: np.ndarray,
    y: np.ndarray,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    bins: int | tuple[int, int] = _DENSITY_BINS,
    cmap: str = "viridis",
) -> None:
    counts, _, _ = np.histogram2d(x, y, bins=bins, range=(x_range, y_range))
    image = ax.imshow(
        np.ma.masked_less(counts.T, 1),
        origin="lower",
        extent=(*x_range, *y_range),
        aspect="auto",
        interpolation="nearest",
        norm=LogNorm(vmin=1, vmax=max(float(counts.max()), 2.0)),
        cmap=cmap,
    )
    bar = fig.colorbar(image, cax=cax, label="stars per pixel")
    # plain numbers (1, 2, 5, 10, ...) rather than 2x10^0 on short log ranges
    bar.ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    bar.ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _label(p: str, source: str) -> str:
    return f"{_TEX[p]} {source} ({UNITS[p]})"


def _delta_label(p: str, comparison: Comparison) -> str:
    return f"Δ{_TEX[p]} = {comparison.estimate} − {comparison.reference} ({UNITS[p]})"


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


@dataclass
class _Artifacts:
    """Figures and data files written, with captions, grouped by page section."""

    out_dir: Path
    dpi: int
    figures: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    data_files: list[str] = field(default_factory=list)

    def save(self, fig: Figure, name: str, section: str, caption: str) -> None:
        path = self.out_dir / "figures" / name
        fig.savefig(path, dpi=self.dpi)
        self.figures.setdefault(section, []).append((f"figures/{name}", caption))

    def table(self, frame: pd.DataFrame, name: str) -> None:
        frame.to_csv(self.out_dir / "data" / name, index=False, float_format="%.6g")
        self.data_files.append(f"data/{name}")


def _one_to_one_figure(data: ReportData, p: str, art: _Artifacts) -> None:
    comps = [c for c in data.comparisons() if data.pair(c, p) is not None]
    pairs = []
    for c in comps:
        est, ref = data.pair(c, p)  # type: ignore[misc]
        ok = np.isfinite(est) & np.isfinite(ref)
        if ok.any():
            pairs.append((c, est[ok], ref[ok]))
    if not pairs:
        return
    fig, axes, caxes = _panels(1, len(pairs), 3.6, 3.6, colorbar=True)
    every = np.concatenate([np.concatenate([e, r]) for _, e, r in pairs])
    lim = _range(every, 0.2, 99.8)
    for ax, cax, (c, est, ref) in zip(axes[0], caxes[0], pairs, strict=True):
        _density_image(fig, ax, cax, ref, est, lim, lim)
        ax.plot(lim, lim, "--", color="C3", lw=1.2, label="1:1")
        median, sigma_g = robust_stats(est - ref)
        ax.text(
            0.03,
            0.97,
            f"N = {est.size:,}\nmedian Δ = {median:+.3f} {UNITS[p]}\n"
            f"σ_G = {sigma_g:.3f} {UNITS[p]}",
            transform=ax.transAxes,
            va="top",
            fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
        ax.set_xlabel(_label(p, c.reference))
        ax.set_ylabel(_label(p, c.estimate))
        ax.set_title(f"{c.title}: {_TEX[p]}")
        ax.legend(loc="lower right", fontsize=8)
    _suptitle(fig, f"{_TEX[p]}: estimate vs reference")
    art.save(
        fig,
        f"one_to_one_{p}.png",
        p,
        f"{SYMBOLS[p]}: 1:1 density plots ({', '.join(c.title for c, _, _ in pairs)}); "
        "cf. the paper's Figs 2, 8, 14, 20.",
    )


def _ug_map_figure(data: ReportData, p: str, c: Comparison, art: _Artifacts) -> None:
    ug, ug_err = data.photometry.get("ug"), data.photometry.get("ug_err")
    pair = data.pair(c, p)
    if ug is None or ug_err is None or pair is None:
        return
    est, ref = pair
    ok = np.isfinite(est) & np.isfinite(ref) & np.isfinite(ug) & np.isfinite(ug_err)
    ok &= ug_err >= 0
    if ok.sum() < _MIN_PIXEL:
        return
    x, y, value, res = ug[ok], ug_err[ok], ref[ok], est[ok] - ref[ok]
    x_range = _range(x, 1.0, 99.0)
    y_range = (0.0, min(float(np.percentile(y, 99.0)), 1.0) or 0.1)
    inside = (x >= x_range[0]) & (x < x_range[1]) & (y >= y_range[0]) & (y < y_range[1])
    x, y, value, res = x[inside], y[inside], value[inside], res[inside]
    # pixels per axis: _MAP_BINS for large samples, fewer (>= 10) when ~25 stars/pixel is not met
    nb = int(np.clip(np.sqrt(x.size / 25.0), 10, _MAP_BINS))
    ix = np.clip(((x - x_range[0]) / (x_range[1] - x_range[0]) * nb).astype(np.int64), 0, nb - 1)
    iy = np.clip(((y - y_range[0]) / (y_range[1] - y_range[0]) * nb).astype(np.int64), 0, nb - 1)
    pixel = ix * nb + iy
    n_pix = nb * nb
    counts, qv = _grouped_quantiles(pixel, value, n_pix, (0.5,))
    _, qr = _grouped_quantiles(pixel, res, n_pix, (0.25, 0.5, 0.75))
    s1 = np.bincount(pixel, weights=res, minlength=n_pix)
    s2 = np.bincount(pixel, weights=res * res, minlength=n_pix)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / counts
        std = np.sqrt(np.maximum(s2 - counts * mean**2, 0.0) / (counts - 1))
    few = counts < _MIN_PIXEL
    maps = {
        "median_reference": qv[0],
        "median_residual": qr[1],
        "std_residual": std,
        "sigma_g_residual": SIGMA_G_FACTOR * (qr[2] - qr[0]),
    }
    for key in maps:
        maps[key] = np.where(few, np.nan, maps[key])

    fig, axes, caxes = _panels(1, 3, 3.6, 3.2, colorbar=True)
    extent = (*x_range, *y_range)
    lim_res = float(np.nanpercentile(np.abs(maps["median_residual"]), 98)) if (~few).any() else 1
    lim_std = float(np.nanpercentile(maps["std_residual"], 98)) if (~few).any() else 1
    panels = [
        (
            "median_reference",
            "viridis",
            None,
            f"median {_TEX[p]} {c.reference} ({UNITS[p]})",
            f"median {_TEX[p]} ({c.reference})",
        ),
        (
            "median_residual",
            "RdBu_r",
            Normalize(-(lim_res or 1e-3), lim_res or 1e-3),
            f"median Δ{_TEX[p]} ({UNITS[p]})",
            f"median Δ{_TEX[p]} ({c.title})",
        ),
        (
            "std_residual",
            "magma",
            Normalize(0.0, lim_std or 1e-3),
            f"std of Δ{_TEX[p]} ({UNITS[p]})",
            f"std of Δ{_TEX[p]} ({c.title})",
        ),
    ]
    for ax, cax, (key, cmap, norm, clabel, title) in zip(axes[0], caxes[0], panels, strict=True):
        image = ax.imshow(
            maps[key].reshape(nb, nb).T,
            origin="lower",
            extent=extent,
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            norm=norm,
        )
        fig.colorbar(image, cax=cax, label=clabel)
        ax.set_xlabel("u-g (mag)")
        ax.set_ylabel("u-g error (mag)")
        ax.set_title(title)
    _suptitle(
        fig,
        f"{c.title}: {_TEX[p]} in the (u-g, u-g error) plane (pixels with ≥ {_MIN_PIXEL} stars)",
    )
    art.save(
        fig,
        f"ug_map_{p}_{c.key}.png",
        p,
        f"{c.title}, {SYMBOLS[p]}: median reference value, median residual and standard "
        "deviation of the residual per (u-g, u-g error) pixel; cf. the paper's Figs 3-5, 9-11, "
        "15-17, 21-23.",
    )
    gx, gy = np.divmod(np.arange(n_pix), nb)
    dx, dy = (x_range[1] - x_range[0]) / nb, (y_range[1] - y_range[0]) / nb
    table = pd.DataFrame(
        {
            "ug_lo": x_range[0] + gx * dx,
            "ug_hi": x_range[0] + (gx + 1) * dx,
            "ug_err_lo": y_range[0] + gy * dy,
            "ug_err_hi": y_range[0] + (gy + 1) * dy,
            "n_stars": counts,
            **maps,
        }
    )
    art.table(table[counts > 0], f"ug_map_{p}_{c.key}.csv")


def _running(x: np.ndarray, y: np.ndarray, x_range: tuple[float, float]) -> pd.DataFrame:
    edges = np.linspace(*x_range, _RUNNING_BINS + 1)
    inside = (x >= edges[0]) & (x < edges[-1])
    idx = np.clip(np.searchsorted(edges, x[inside], side="right") - 1, 0, _RUNNING_BINS - 1)
    counts, q = _grouped_quantiles(idx, y[inside], _RUNNING_BINS, (0.25, 0.5, 0.75))
    sigma_g = SIGMA_G_FACTOR * (q[2] - q[0])
    few = counts < _MIN_RUNNING
    return pd.DataFrame(
        {
            "x_lo": edges[:-1],
            "x_hi": edges[1:],
            "x_centre": 0.5 * (edges[:-1] + edges[1:]),
            "n_stars": counts,
            "median": np.where(few, np.nan, q[1]),
            "sigma_g": np.where(few, np.nan, sigma_g),
        }
    )


def _residual_figure(data: ReportData, p: str, c: Comparison, art: _Artifacts) -> None:
    res = data.residual(c, p)
    if res is None or not np.isfinite(res).any():
        return
    partner = "FeH" if p != "FeH" else "Mr"
    panels: list[tuple[str, str, np.ndarray]] = []
    if "umag" in data.photometry:
        panels.append(("u", "u (mag)", data.photometry["umag"]))
    ref_mr = data.values[c.reference].get("Mr")
    if ref_mr is not None:
        panels.append(("Mr", f"{_TEX['Mr']} {c.reference} (mag)", ref_mr))
    partner_res = data.residual(c, partner)
    if partner_res is not None:
        panels.append((f"d{partner}", _delta_label(partner, c), partner_res))
    valid = [(k, lab, x) for k, lab, x in panels if (np.isfinite(x) & np.isfinite(res)).any()]
    if not valid:
        return
    fin = res[np.isfinite(res)]
    median, sigma_g = robust_stats(fin)
    half = 5.0 * sigma_g if sigma_g > 0 else 1.0
    y_range = (median - half, median + half)
    fig, axes, caxes = _panels(1, len(valid), 3.6, 3.2, colorbar=True)
    tables = []
    for ax, cax, (key, xlabel, x) in zip(axes[0], caxes[0], valid, strict=True):
        ok = np.isfinite(x) & np.isfinite(res)
        xs, ys = x[ok], res[ok]
        x_range = _range(xs)
        _density_image(fig, ax, cax, xs, ys, x_range, y_range, bins=(80, 80), cmap="Greys")
        run = _running(xs, ys, x_range)
        ax.plot(run["x_centre"], run["median"], "-", color="C3", lw=1.6, label="running median")
        ax.plot(run["x_centre"], run["median"] + run["sigma_g"], "--", color="C0", lw=1.2)
        ax.plot(
            run["x_centre"], run["median"] - run["sigma_g"], "--", color="C0", lw=1.2,
            label="median ± σ_G",
        )  # fmt: skip
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_xlim(*x_range)
        ax.set_ylim(*y_range)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_delta_label(p, c))
        ax.set_title(f"{c.title}: Δ{_TEX[p]} vs {xlabel.split(' (')[0]}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
        run.insert(0, "x", key)
        tables.append(run)
    _suptitle(fig, f"{c.title}: residuals of {_TEX[p]}")
    art.save(
        fig,
        f"residuals_{p}_{c.key}.png",
        p,
        f"{c.title}, {SYMBOLS[p]}: residual against u magnitude, reference M_r and the "
        f"{SYMBOLS[partner]} residual, with running median and ± σ_G; cf. the paper's Figs 6, "
        "12, 18, 24.",
    )
    art.table(pd.concat(tables, ignore_index=True), f"running_{p}_{c.key}.csv")


_SIGMA_NAMES = {
    "bayes": "σ_B (Bayesian posterior width)",
    "nn": "σ_NN (network emulation width)",
    "total": "σ_total",
}


def _normalised_figure(data: ReportData, p: str, art: _Artifacts) -> None:
    panels = []
    for c in data.comparisons():
        res = data.residual(c, p)
        sig = data.sigmas.get(c.sigma, {}).get(p)
        if res is None or sig is None:
            continue
        ok = np.isfinite(res) & np.isfinite(sig) & (sig > 0)
        if ok.sum() >= 2:
            panels.append((c, res[ok] / sig[ok]))
    if not panels:
        return
    fig, axes, _ = _panels(1, len(panels), 3.6, 3.0)
    grid = np.linspace(-5, 5, 401)
    gauss = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    for ax, (c, z) in zip(axes[0], panels, strict=True):
        ax.hist(z, bins=100, range=(-5, 5), density=True, histtype="stepfilled", alpha=0.6)
        ax.plot(grid, gauss, color="C3", lw=1.5, label="N(0, 1)")
        median, sigma_g = robust_stats(z)
        tail = float(np.mean(np.abs(z) > 3))
        ax.text(
            0.03,
            0.97,
            f"N = {z.size:,}\nmedian = {median:+.2f}\nσ_G = {sigma_g:.2f}\n|z| > 3: {tail:.3f}",
            transform=ax.transAxes,
            va="top",
            fontsize=9,
        )
        ax.set_xlabel(f"Δ{_TEX[p]} / {_SIGMA_NAMES[c.sigma].split(' ')[0]}")
        ax.set_ylabel("probability density")
        ax.set_title(f"{c.title}: normalised Δ{_TEX[p]}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    _suptitle(fig, f"{_TEX[p]}: normalised residuals against N(0, 1)")
    names = "; ".join(f"{c.title} / {_SIGMA_NAMES[c.sigma]}" for c, _ in panels)
    art.save(
        fig,
        f"normalised_{p}.png",
        p,
        f"{SYMBOLS[p]}: histograms of residual / uncertainty ({names}) with N(0, 1); cf. the "
        "paper's Figs 7, 13, 19, 25.",
    )


def _diagnostics(
    result: pd.DataFrame, data: ReportData, art: _Artifacts, info: Mapping[str, Any]
) -> pd.DataFrame:
    """The by-magnitude table and figure (:mod:`photodist.diagnostics`; empty without r) and,
    for a run with a learned A_r prior, the dust-profile figure."""
    from photodist.pipeline import used_dust_profile

    a_map = data.photometry.get("a_map")
    profile = used_dust_profile(info)
    if profile is not None:
        gain = info["dust_profile"].get("log_evidence_gain")
        support = (
            f" Log evidence over the flat prior: {gain:+.3f} per star." if gain is not None else ""
        )
        art.save(
            dust_profile_figure(result, profile, data.photometry.get("rmag"), a_map),
            "dust_profile.png",
            "diagnostics",
            "The learned A_r prior (--dust-prior profile): the fitted profile and its width "
            "over the Bayesian rows' A_r estimates against r − M_r." + support,
        )
    table = magnitude_table(result, data.photometry.get("rmag"), a_map)
    if len(table) == 0:
        return table
    art.save(
        diagnostics_figure(result, table, a_map),
        "diagnostics.png",
        "diagnostics",
        "Median uncertainties, best-fit χ² (Bayesian rows; network rows fitted without the "
        "prior) and flag fractions against r; the estimates in "
        "(M_r, [Fe/H]); distance moduli by method; A_r minus the dust map against distance.",
    )
    art.table(table, "by_magnitude.csv")
    return table


def _sigma_ratio_figure(data: ReportData, art: _Artifacts, parameters: Sequence[str]) -> None:
    cols = []
    for p in parameters:
        total = data.sigmas["total"].get(p)
        own = data.sigmas["nn"].get(p)
        pred = data.sigmas["bayes_pred"].get(p)
        if total is None or own is None or pred is None:
            continue
        ok = np.isfinite(total) & np.isfinite(own) & np.isfinite(pred) & (pred > 0)
        if ok.sum() >= 2:
            cols.append((p, total[ok] / pred[ok], own[ok] / pred[ok]))
    if not cols:
        return
    fig, axes, _ = _panels(2, len(cols), 3.6, 2.6)
    for k, (p, t, o) in enumerate(cols):
        for row, (ratio, name, lo) in enumerate(
            ((t, "σ_total / σ_B", 1.0), (o, "σ_NN / σ_B", 0.0))
        ):
            ax = axes[row, k]
            hi = float(np.percentile(ratio, 99.5))
            hi = hi if hi > lo else lo + 1.0
            ax.hist(ratio, bins=80, range=(lo, hi), histtype="stepfilled", alpha=0.7)
            med = float(np.median(ratio))
            ax.axvline(med, color="C3", lw=1.2, label=f"median {med:.3f}")
            ax.set_xlabel(f"{name} for {_TEX[p]} (dimensionless)")
            ax.set_ylabel("stars per bin")
            ax.set_title(f"NN rows: {name}, {_TEX[p]}", fontsize=10)
            ax.legend(fontsize=8)
    _suptitle(fig, "Network uncertainties relative to the (predicted) Bayesian width σ_B")
    art.save(
        fig,
        "sigma_ratios.png",
        "sigma",
        "σ_total/σ_B (top) and σ_NN/σ_B (bottom) on the network rows, σ_B being the network's "
        "prediction of the Bayesian posterior width; cf. the paper's Figs 26, 27.",
    )


# ----------------------------------------------------------------------------------------------
# Page
# ----------------------------------------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 1200px; }
.note { color: #555; font-size: 0.92em; max-width: 1200px; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 1em; }
"""


_DISPLAY_NAMES = {
    "parameter": "parameter",
    "n_stars": "N",
    "pearson_r": "r (all)",
    "n_clipped": "N (clipped)",
    "pearson_r_clipped": "r (clipped)",
    "total_over_bayes_p16": "σ_total/σ_B p16",
    "total_over_bayes_p50": "σ_total/σ_B median",
    "total_over_bayes_p84": "σ_total/σ_B p84",
    "nn_over_bayes_p16": "σ_NN/σ_B p16",
    "nn_over_bayes_p50": "σ_NN/σ_B median",
    "nn_over_bayes_p84": "σ_NN/σ_B p84",
    "corr_sigma_nn_sigma_bayes": "corr(σ_NN, σ_B)",
    "fraction_of_total": "fraction of total",
    "chi2min_p50": "χ² median (Bayes rows)",
    "chi2min_p90": "χ² p90 (Bayes rows)",
    "chi2min_nn_p50": "χ² median (NN rows, no prior)",
    "chi2min_nn_p90": "χ² p90 (NN rows, no prior)",
}


def _display_name(column: object) -> str:
    name = str(column)
    if name.startswith("fraction_") and name not in _DISPLAY_NAMES:
        return f"fraction ({name.removeprefix('fraction_')} rows)"
    return _DISPLAY_NAMES.get(name, name)


def _html_table(frame: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
    if frame.empty:
        return '<p class="note">No data.</p>'
    shown = frame.reset_index() if index else frame
    shown = shown.rename(columns=_display_name)
    return shown.to_html(
        index=False,
        border=0,
        na_rep="–",
        float_format=lambda v: f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.{digits}f}",
    )


def _any_finite(values: Mapping[str, np.ndarray]) -> bool:
    return any(np.isfinite(v).any() for v in values.values())


def _no_comparison_note(data: ReportData) -> str:
    """Why no comparison is possible: no stars, no reference given, no estimate, no truth
    value, or no star with both."""
    if data.n_rows == 0:
        why = "the run output holds no stars"
    elif "truth" not in data.values and data.bayes_source != "bayes_reference":
        why = (
            "give truth (simulated data) and/or Bayesian estimates of the network rows "
            "(bayes_reference)"
        )
    elif not any(_any_finite(data.values.get(s, {})) for s in ("NN", "Bayes")):
        why = f"none of the {data.n_rows:,} stars has an estimate"
    elif "truth" in data.values and not _any_finite(data.values["truth"]):
        why = "the truth has no value for any star of the run (no row matched)"
    else:
        why = "no star has both an estimate and a reference value"
    return f'<p class="note">No comparison possible: {html.escape(why)}.</p>'


def _table1_html(table: pd.DataFrame, data: ReportData) -> str:
    """One HTML table per comparison: rows subsamples, columns N / median / sigma_G per p."""
    if table.empty:
        return _no_comparison_note(data)
    parts = []
    for key in [c.key for c in COMPARISONS if c.key in set(table["comparison"])]:
        sub = table[table["comparison"] == key]
        title = sub["title"].iloc[0]
        order = list(dict.fromkeys(sub["subsample"]))
        wide = sub.pivot_table(
            index="subsample",
            columns="parameter",
            values=["n_stars", "median", "sigma_g"],
            aggfunc="first",
        ).reindex(order)
        head = "<tr><th rowspan=2>subsample</th>" + "".join(
            f"<th colspan=3>{html.escape(SYMBOLS[p])} ({UNITS[p]})</th>"
            for p in PARAMETERS
            if ("n_stars", p) in wide.columns
        )
        head += "</tr><tr>" + "".join(
            "<th>N</th><th>median</th><th>σ_G</th>"
            for p in PARAMETERS
            if ("n_stars", p) in wide.columns
        )
        body = []
        for label, row in wide.iterrows():
            cells = [f"<td>{html.escape(str(label))}</td>"]
            for p in PARAMETERS:
                if ("n_stars", p) not in wide.columns:
                    continue
                n, med, sig = row[("n_stars", p)], row[("median", p)], row[("sigma_g", p)]
                if pd.isna(n):
                    cells.append("<td>0</td><td>–</td><td>–</td>")
                else:
                    cells.append(f"<td>{int(n):,}</td><td>{med:+.4f}</td><td>{sig:.4f}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(
            f"<h3>{html.escape(title)} (residual = {html.escape(title.replace(' vs ', ' − '))})"
            f"</h3><table><thead>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )
    return "\n".join(parts)


def _figures_html(items: list[tuple[str, str]]) -> str:
    return "\n".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for src, cap in items
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _records(frame: pd.DataFrame, index: bool = False) -> list[dict[str, Any]]:
    data = frame.reset_index() if index else frame
    out = []
    for row in data.to_dict(orient="records"):
        out.append(
            {
                k: (None if v is pd.NA or (isinstance(v, float) and not math.isfinite(v)) else v)
                for k, v in row.items()
            }
        )
    return out


#: Files every report writes at the top of its folder (figures and data files vary).
REPORT_FILES: tuple[str, ...] = ("index.html", "report.json", "table1.csv")
#: Where a report keeps its figures and data files, and their suffixes.
_LISTED_FILES: tuple[tuple[str, str, str], ...] = (
    ("figures", "figures", ".png"),
    ("data_files", "data", ".csv"),
)


def _refuse_to_overwrite(paths: Sequence[Path]) -> None:
    """Raise :class:`FileExistsError` naming those of ``paths`` that exist."""
    existing = [str(path) for path in paths if path.exists()]
    if not existing:
        return
    more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
    raise FileExistsError(
        f"the report would overwrite {', '.join(existing[:5])}{more}; use --overwrite "
        "(overwrite=True) to replace them"
    )


def _previous_report_files(out: Path) -> list[Path]:
    """The figures and data files the report in ``out`` lists in its ``report.json``: paths
    ``figures/NAME.png`` and ``data/NAME.csv`` only, [] without a readable report.json."""
    try:
        numbers = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(numbers, dict):
        return []
    listed = []
    for key, folder, suffix in _LISTED_FILES:
        names = numbers.get(key)
        for name in names if isinstance(names, list) else []:
            rel = PurePosixPath(name if isinstance(name, str) else "")
            if len(rel.parts) == 2 and rel.parts[0] == folder and rel.suffix == suffix:
                listed.append(out / folder / rel.name)
    return listed


@contextmanager
def _staged_report(out: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden folder in ``out`` (created if missing) to render a report into, with
    ``figures`` and ``data``; moved into ``out`` by :func:`_install` when the block succeeds
    and removed in any case."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".photodist-report-", dir=out))
    try:
        for _, folder, _ in _LISTED_FILES:
            (staging / folder).mkdir()
        yield staging
        _install(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(staging: Path, out: Path, overwrite: bool) -> None:
    """Move a report rendered in ``staging`` into ``out``, ``index.html`` last.

    Without ``overwrite`` no existing file is replaced (:class:`FileExistsError` names them);
    with it, the files of the previous report (:func:`_previous_report_files`) go first and
    the files of this one replace theirs; nothing else in ``out`` is touched.
    """
    new = sorted(
        (path.relative_to(staging) for path in staging.rglob("*") if path.is_file()),
        key=lambda rel: (rel == Path("index.html"), str(rel)),
    )
    if not overwrite:
        _refuse_to_overwrite([out / rel for rel in new])
    else:
        for path in _previous_report_files(out):
            path.unlink(missing_ok=True)
    for _, folder, _ in _LISTED_FILES:
        (out / folder).mkdir(exist_ok=True)
    for rel in new:
        (staging / rel).replace(out / rel)


def write_report(
    result: pd.DataFrame,
    out_dir: str | Path,
    truth: pd.DataFrame | None = None,
    bayes_reference: pd.DataFrame | None = None,
    photometry: pd.DataFrame | None = None,
    config: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    *,
    title: str = "photodist diagnostic report",
    columns: ColumnMap | None = None,
    mag_edges: Sequence[float] = DEFAULT_MAG_EDGES,
    feh_split: float = -1.0,
    ms_split_gi: float = 1.0,
    parameters: Sequence[str] = PARAMETERS,
    dpi: int = 80,
    overwrite: bool = False,
    posteriors: Sequence[tuple[str, Any]] | None = None,
) -> Path:
    """Write the diagnostic report of a run: ``index.html`` with figures and tables.

    Parameters
    ----------
    result
        Pipeline output (:func:`photodist.pipeline.run_patch`), one row per star.
    out_dir
        Output folder (created if missing): ``index.html``, ``figures/*.png``,
        ``table1.csv``, ``report.json`` (every number on the page) and ``data/*.csv`` (the
        binned statistics behind the maps and running medians).
    truth
        True ``Mr_true``, ``Ar_true``, ``FeH_true``, aligned by row with ``result``
        (simulated data); None for real data.
    bayes_reference
        Bayesian estimates of the same stars, aligned by row (``{p}_mean`` and ``{p}_std``
        or ``{p}_sigma``; NaN where not estimated). Needed for "NN vs Bayes".
    photometry
        u, g, r magnitudes and errors aligned by row (``umag``, ``uErr``, ...; see
        ``columns``); columns not found here are looked up in ``result``, then ``truth``.
    config
        Run configuration shown on the page (default: ``result.attrs["photodist_pipeline"]
        ["config"]`` when present).
    timings
        Seconds per pipeline stage (default: from ``result.attrs`` like ``config``).
    title
        Page title.
    columns
        Catalogue column names of the photometry (default :class:`ColumnMap`).
    mag_edges, feh_split, ms_split_gi
        Table-1 subsamples (see :func:`subsample_masks`).
    parameters
        Parameters to report, a subset of ``("Mr", "Ar", "FeH")`` (default all three).
    dpi
        Resolution of the PNG figures.
    overwrite
        Replace an existing report in ``out_dir``: the figures and data files its
        ``report.json`` lists, and any file of the same name as one this report writes;
        other files are kept. Otherwise a file of the same name as one of the report's
        raises :class:`FileExistsError` naming it, before anything is written.
    posteriors
        ``(label, StarPosterior)`` pairs (:func:`example_posteriors`) drawn in an "Example
        posteriors" section; None or empty leaves it out.

    Returns
    -------
    pathlib.Path
        Path of ``index.html``.
    """
    start = time.perf_counter()
    chosen = [p for p in PARAMETERS if p in set(parameters)]
    unknown = set(parameters) - set(PARAMETERS)
    if unknown or not chosen:
        raise ValueError(f"parameters must be a non-empty subset of {PARAMETERS}")
    out = Path(out_dir)
    if not overwrite:  # the files every report writes; figures and data files once drawn
        _refuse_to_overwrite([out / name for name in REPORT_FILES])
    with _staged_report(out, overwrite) as folder:
        info = dict(result.attrs.get(_PIPELINE_ATTR, {}) or {})
        config = dict(config) if config is not None else info.get("config")
        timings = dict(timings) if timings is not None else info.get("timings")

        data = prepare_report_data(result, truth, bayes_reference, photometry, columns)
        art = _Artifacts(folder, int(dpi))
        table1 = comparison_table(data, mag_edges, feh_split, ms_split_gi)
        table1 = table1[table1["parameter"].isin(chosen)].reset_index(drop=True)
        correlations = error_correlations(data)
        correlations = correlations[correlations.index.isin(chosen)]
        ratios = sigma_ratio_summary(data)
        ratios = ratios[ratios.index.isin(chosen)]
        flags = flag_fractions(result)
        timing_table = _timings_table(timings)

        for p in chosen:
            _one_to_one_figure(data, p, art)
            for c in data.comparisons():
                _ug_map_figure(data, p, c, art)
                _residual_figure(data, p, c, art)
            _normalised_figure(data, p, art)
        _sigma_ratio_figure(data, art, chosen)
        _posterior_figures(posteriors or [], result, art)
        by_magnitude = _diagnostics(result, data, art, info)

        table1.to_csv(folder / "table1.csv", index=False, float_format="%.6g")
        render_seconds = time.perf_counter() - start
        comparisons = data.comparisons()
        numbers = {
            "title": title,
            "n_stars": data.n_rows,
            "method_counts": data.method_counts,
            "comparisons": [c.key for c in comparisons],
            "bayes_source": data.bayes_source,
            "population_source": data.population_source,
            "table1": _records(table1),
            "error_correlations": _records(correlations, index=True),
            "sigma_ratios": _records(ratios, index=True),
            "flag_fractions": _records(flags),
            "timings": timings,
            "config": config,
            "pipeline_info": {k: v for k, v in info.items() if k not in ("config", "timings")},
            "posteriors": [_posterior_record(label, post) for label, post in posteriors or []],
            "by_magnitude": _records(by_magnitude),
            "figures": [src for items in art.figures.values() for src, _ in items],
            "data_files": art.data_files,
            "report_seconds": round(render_seconds, 3),
        }
        (folder / "report.json").write_text(
            json.dumps(numbers, indent=2, default=_json_default, allow_nan=False) + "\n"
        )
        page = _page(
            title, data, comparisons, table1, correlations, ratios, flags, timing_table,
            by_magnitude, config, info, art, render_seconds,
        )  # fmt: skip
        (folder / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def _page(
    title: str,
    data: ReportData,
    comparisons: list[Comparison],
    table1: pd.DataFrame,
    correlations: pd.DataFrame,
    ratios: pd.DataFrame,
    flags: pd.DataFrame,
    timing_table: pd.DataFrame,
    by_magnitude: pd.DataFrame,
    config: Mapping[str, Any] | None,
    info: Mapping[str, Any],
    art: _Artifacts,
    render_seconds: float,
) -> str:
    esc = html.escape
    counts = ", ".join(f"{v:,} {k}" for k, v in data.method_counts.items())
    bayes_text = {
        "bayes_reference": "Bayesian reference estimates given",
        "result": "Bayesian rows of the run only",
        "none": "no Bayesian values",
    }[data.bayes_source]
    sources = [
        "truth given" if "truth" in data.values else "no truth",
        bayes_text,
        "u-g photometry found" if "ug" in data.photometry else "no u-g photometry",
    ]
    notes = []
    bayes_truth = next((c for c in comparisons if c.estimate == "Bayes"), None)
    if data.bayes_source == "result" and bayes_truth is not None:
        n_b = data.method_counts.get("bayes", 0)
        n_used = data.n_compared(bayes_truth)
        notes.append(
            f"Bayes vs truth uses the {n_used:,} of the {n_b:,} rows the pipeline estimated "
            "with the Bayesian method (training subsample and fallbacks) that have an estimate "
            "and a true value, not the network rows; give Bayesian estimates of every star "
            "(bayes_reference) to compare on the same stars."
        )
    if "NN" in data.values and data.bayes_source != "bayes_reference":
        notes.append(
            "NN vs Bayes is left out: it needs Bayesian estimates of the network rows "
            "(bayes_reference)."
        )
    if "ug" not in data.photometry:
        notes.append("No u/g photometry found: the (u-g, u-g error) maps are left out.")
    for note in (
        error_model_note(info.get("error_floor")),
        prior_power_note(info.get("prior_temper")),
    ):
        if note:
            notes.append(note)
    if data.population_source is not None:
        notes.append(
            f"Stellar classes and the [Fe/H] split use the {data.population_source} values; "
            "giants: M_r brighter than the turn-off by more than 0.5 mag; blue / red main "
            "sequence by the main-sequence g-i of the locus."
        )
    nav_items = [("table1", "Table 1"), ("errors", "NN vs Bayes errors")]
    nav_items += [(p, SYMBOLS[p]) for p in PARAMETERS if p in art.figures]
    nav_items += [("sigma", "Uncertainties")]
    nav_items += [("posteriors", "Posteriors")] if "posteriors" in art.figures else []
    nav_items += [("diagnostics", "By magnitude")] if "diagnostics" in art.figures else []
    nav_items += [("flags", "Flags"), ("timings", "Timings")]
    nav_items += [("config", "Configuration"), ("files", "Data files")]
    nav = " ".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in nav_items)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{data.n_rows:,} stars{f' ({esc(counts)})' if counts else ''}. Comparisons: "
        f"{esc(', '.join(c.title for c in comparisons) or 'none')}. Inputs: "
        + esc(", ".join(sources))
        + f". Report rendered in {render_seconds:.1f} s.</p>",
        f"<nav>{nav}</nav>",
        *[f'<p class="note">{esc(n)}</p>' for n in notes],
        '<h2 id="table1">Table 1: median and σ<sub>G</sub> of the residuals</h2>',
        '<p class="note">σ<sub>G</sub> = 0.7413 × interquartile range; each comparison uses '
        "the stars of a subsample where both its values are finite. "
        '<a href="table1.csv">table1.csv</a></p>',
        _table1_html(table1, data),
        '<h2 id="errors">Correlation of the NN and Bayes errors</h2>',
        '<p class="note">Pearson correlation of the network emulation error (NN − Bayes) with '
        "the Bayesian error (Bayes − truth) on the network rows; the paper finds about 0.1, "
        "0.05 and 0.2 for M<sub>r</sub>, A<sub>r</sub> and [Fe/H]. Clipped: stars within "
        "5 σ<sub>G</sub> of the median in both residuals.</p>",
        _html_table(correlations, 3, index=True),
        "<h3>Uncertainty ratios on the network rows</h3>",
        _html_table(ratios, 3, index=True),
    ]
    for p in PARAMETERS:
        if p in art.figures:
            parts.append(f'<h2 id="{p}">{esc(SYMBOLS[p])}</h2>')
            parts.append(_figures_html(art.figures[p]))
    parts.append('<h2 id="sigma">Uncertainties: σ<sub>total</sub>/σ<sub>B</sub>, '
                 "σ<sub>NN</sub>/σ<sub>B</sub></h2>")  # fmt: skip
    if "sigma" in art.figures:
        parts.append(_figures_html(art.figures["sigma"]))
    else:
        parts.append('<p class="note">No network rows with σ<sub>NN</sub> and σ<sub>B</sub>.</p>')
    if "posteriors" in art.figures:
        parts.append('<h2 id="posteriors">Example posteriors</h2>')
        parts.append(
            '<p class="note">Full marginal posteriors of a few stars (first row of each kind), '
            "recomputed on the run's posterior grid with its prior and settings "
            "(photodist.posterior). Dashed: 16/50/84 percentiles.</p>"
        )
        parts.append(_figures_html(art.figures["posteriors"]))
    if "diagnostics" in art.figures:
        parts.append('<h2 id="diagnostics">By magnitude: precision, fit quality, flags</h2>')
        parts.append(
            '<p class="note">No truth needed (photodist.diagnostics): per 1-mag bin of r, the '
            "median uncertainties, the best-fit χ² of the Bayesian rows (rising for bright "
            "stars: quoted colour errors too small, see the error-model check above; for "
            "faint stars: objects or colours the stellar locus does not describe, or errors "
            "too small at the faint end) and, apart, of the network rows' best fit without "
            "the prior, flag "
            "fractions and, with the catalogue's dust-map column, the median A<sub>r</sub> − "
            "map A<sub>r</sub> of stars beyond DM = 10, which lie behind most of the dust. "
            '<a href="data/by_magnitude.csv">by_magnitude.csv</a></p>'
        )
        parts.append(_figures_html(art.figures["diagnostics"]))
        parts.append(_html_table(by_magnitude, 3))
    parts += [
        '<h2 id="flags">Flag fractions</h2>',
        '<p class="note">Fraction of stars with each bit of the flags column set '
        "(photodist.bayes.Flags), overall and per estimation method.</p>",
        _html_table(flags, 4),
        '<h2 id="timings">Timing of the pipeline stages</h2>',
        _html_table(timing_table, 3),
    ]
    extra = {k: v for k, v in info.items() if k not in ("config", "timings")}
    parts.append('<h2 id="config">Run configuration</h2>')
    if config or extra:
        text = json.dumps(
            {"config": config, "run": extra}, indent=2, default=_json_default, sort_keys=True
        )
        parts.append(f"<pre>{esc(text)}</pre>")
    else:
        parts.append('<p class="note">No configuration recorded.</p>')
    files = ["table1.csv", "report.json", *art.data_files]
    parts.append('<h2 id="files">Data files</h2><ul>')
    parts += [f'<li><a href="{esc(f)}">{esc(f)}</a></li>' for f in files]
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


#: Kinds of stars whose posteriors the report draws: a label and the flag bit that selects
#: them (0: a star without flags).
POSTERIOR_KINDS = (
    ("typical (no flags)", 0),
    ("two branches", Flags.TWO_BRANCH),
    ("poor fit", Flags.POOR_FIT),
    ("A_r at its bound", Flags.AR_AT_BOUND),
)


def example_rows(result: pd.DataFrame) -> list[tuple[str, int]]:
    """The first row of each kind in :data:`POSTERIOR_KINDS` with a finite M_r estimate."""
    if "Mr_mean" not in result:
        return []
    flags = result["flags"].to_numpy(np.int64) if "flags" in result else np.zeros(len(result))
    estimated = np.isfinite(result["Mr_mean"].to_numpy(float))
    rows = []
    for label, bit in POSTERIOR_KINDS:
        match = (flags == 0) if bit == 0 else (flags & bit) != 0
        found = np.flatnonzero(match & estimated)
        if found.size:
            rows.append((label, int(found[0])))
    return rows


def example_posteriors(
    result: pd.DataFrame,
    photometry: pd.DataFrame,
    prior: Any,
    config: Mapping[str, Any],
    columns: ColumnMap | None = None,
    error_floor: float | None = None,
    dust_profile: Any = None,
) -> list[tuple[str, Any]]:
    """Posteriors of :func:`example_rows`, recomputed as the run's Bayesian stage would.

    ``photometry`` is the run's input catalogue aligned with ``result``; ``prior`` the prior
    map the run used (``OUTPUT.prior.npz``); ``config`` the run's
    :class:`photodist.pipeline.PipelineConfig` as a dict, ``error_floor`` the floor and
    ``dust_profile`` the :class:`photodist.dust_profile.DustProfile` (or None) it used. Stars
    without an estimate are skipped.
    """
    from photodist.bands import photometry_from_frame
    from photodist.pipeline import PipelineConfig, posterior_grid
    from photodist.posterior import star_posterior

    pipeline = PipelineConfig.from_dict(config, ignore_unknown=True)
    phot = photometry_from_frame(photometry, pipeline.band_set, columns)
    locus = posterior_grid(None, pipeline)
    bayes = pipeline.bayes_config(error_floor)
    out = []
    for label, row in example_rows(result):
        try:
            out.append((label, star_posterior(phot, row, locus, prior, bayes, dust_profile)))
        except ValueError:
            continue
    return out


def _posterior_record(label: str, post: Any) -> dict[str, Any]:
    """One example posterior on report.json: its row, kind, means and percentiles."""
    record: dict[str, Any] = {"label": label, "row": post.row, "chi2min": post.chi2min}
    for name, axis, mass in (("Mr", post.mr, post.mr_mass), ("FeH", post.feh, post.feh_mass)):
        record[f"{name}_mean"] = float(np.sum(axis * mass))
    for name in ("Mr", "FeH", "Ar", "Qr"):
        record[f"{name}_percentiles"] = [float(v) for v in post.percentiles(name)]
    return record


def _posterior_figures(
    posteriors: Sequence[tuple[str, Any]], result: pd.DataFrame, art: _Artifacts
) -> None:
    from photodist.plots import posterior_figure

    for label, post in posteriors:
        name = f"posterior_row_{post.row}.png"
        method = result["method"].iloc[post.row] if "method" in result else "bayes"
        flags = int(result["flags"].iloc[post.row]) if "flags" in result else 0
        set_bits = [k for k, v in Flags.describe().items() if flags & v]
        title = f"row {post.row}: {label} ({method}; flags {', '.join(set_bits) or 'none'})"
        posterior_figure(post, art.out_dir / "figures" / name, title=title)
        caption = f"{title}; best-fit chi2 {post.chi2min:.2f}"
        run_values = [
            f"{SYMBOLS[q]} {result[f'{q}_mean'].iloc[post.row]:.2f}"
            + (f" ± {result[f'{q}_sigma'].iloc[post.row]:.2f}" if f"{q}_sigma" in result else "")
            for q in PARAMETERS
            if f"{q}_mean" in result
        ]
        if run_values:
            caption += f"; the run's estimate: {', '.join(run_values)}"
        art.figures.setdefault("posteriors", []).append((f"figures/{name}", caption))


# ----------------------------------------------------------------------------------------------
# Loading a run
# ----------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """Frames of a run, aligned row by row with ``result`` (see :func:`load_run`)."""

    result: pd.DataFrame
    truth: pd.DataFrame | None = None
    bayes_reference: pd.DataFrame | None = None
    photometry: pd.DataFrame | None = None
    config: dict[str, Any] | None = None
    timings: dict[str, float] | None = None


def _read_frame(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)  # keeps DataFrame.attrs (pipeline info)
    return io.read_catalog(path)


def _align(
    frame: pd.DataFrame | str | Path | None,
    result: pd.DataFrame,
    id_columns: Sequence[str],
    name: str,
    in_input_order: bool,
    positions: tuple[str, str] = ("ra", "dec"),
) -> pd.DataFrame | None:
    """``frame`` reordered to the rows of ``result`` (:func:`photodist.evaluate.align_to_run`)."""
    if frame is None:
        return None
    if not isinstance(frame, pd.DataFrame):
        frame = _read_frame(frame)
    return align_to_run(
        frame,
        result,
        name,
        id_columns=id_columns,
        positions=positions,
        in_input_order=in_input_order,
    )


def load_run(
    run_output: str | Path,
    *,
    truth: pd.DataFrame | str | Path | None = None,
    bayes_reference: pd.DataFrame | str | Path | None = None,
    photometry: pd.DataFrame | str | Path | None = None,
    id_column: str | None = "source_id",
) -> RunData:
    """Read a run's output and the frames a report compares it with, aligned row by row.

    Parameters
    ----------
    run_output
        A table file (Parquet keeps the pipeline's ``attrs``; CSV, FITS, HATS via
        :func:`photodist.io.read_catalog`) or a run directory holding ``result.parquet``
        and optionally ``truth.parquet``, ``bayes_reference.parquet``,
        ``photometry.parquet`` and ``run.json`` (``{"config": {...}, "timings": {...}}``).
        A directory without ``result.parquet`` is read as one catalogue.
    truth, bayes_reference, photometry
        Frames or table paths; they override the run directory's files. Truth defaults to
        the run output itself when it carries ``Mr_true``, ``Ar_true`` and ``FeH_true``
        (e.g. a simulated catalogue run with those columns kept).
    id_column
        Column matching rows between frames when both have it (missing ids give NaN rows);
        then the usual id names (``photodist.bands.ID_COLUMNS``, a survey's object-id
        column); otherwise frames are matched by position and must have as many rows as the
        run, except for a survey output (in HEALPix order), matched by ra/dec or refused.

    Returns
    -------
    RunData
        Configuration and timings come from ``run.json`` when present, else from the
        result's ``attrs["photodist_pipeline"]``, else, for a survey output folder, from its
        manifest and patch summaries (:func:`_survey_run_info`).
    """
    path = Path(run_output)
    given = {"truth": truth, "bayes_reference": bayes_reference, "photometry": photometry}
    info: dict[str, Any] = {}
    if path.is_dir() and (path / RUN_FILES["result"]).is_file():
        result = _read_frame(path / RUN_FILES["result"])
        for key in given:
            candidate = path / RUN_FILES[key]
            if given[key] is None and candidate.is_file():
                given[key] = candidate
        if (path / RUN_INFO_FILE).is_file():
            info = json.loads((path / RUN_INFO_FILE).read_text())
    else:
        result = _read_frame(path)
    result = result.reset_index(drop=True)
    attrs = dict(result.attrs.get(_PIPELINE_ATTR, {}) or {})
    if given["truth"] is None and all(c in result.columns for c in TRUTH_COLUMNS.values()):
        given["truth"] = result[list(TRUTH_COLUMNS.values())]
    from photodist.survey import survey_settings

    try:  # a survey output (HEALPix order): matched by id or position, never by order
        survey = survey_settings(path) if path.is_dir() else None
    except ValueError:  # a damaged manifest: still a survey folder
        survey = {}
    survey_output = survey is not None
    ids, positions = run_match_keys(survey, id_column)
    if not (id_column or survey_output):
        ids = []  # a run's output in the input's order: matched row by row
    frames = {k: _align(v, result, ids, k, not survey_output, positions) for k, v in given.items()}
    config = info.get("config", attrs.get("config"))
    timings = info.get("timings", attrs.get("timings"))
    if survey_output and config is None and timings is None:
        config, timings = _survey_run_info(path)
    return RunData(
        result=result,
        truth=frames["truth"],
        bayes_reference=frames["bayes_reference"],
        photometry=frames["photometry"],
        config=config,
        timings=timings,
    )


def _survey_run_info(path: Path) -> tuple[dict[str, Any] | None, dict[str, float] | None]:
    """The configuration a survey output folder's manifest records and the seconds per
    pipeline stage summed over its patch summaries (CPU time of all workers, not wall time);
    None for what is missing or unreadable."""
    from photodist.survey import read_manifest, read_patch_info

    try:
        manifest = read_manifest(path) or {}
    except ValueError:
        manifest = {}
    config = manifest.get("configuration")
    timings: dict[str, float] = {}
    try:
        for patch in read_patch_info(path).values():
            for stage, seconds in (patch.get("timings_s") or {}).items():
                timings[stage] = timings.get(stage, 0.0) + float(seconds)
    except (ValueError, TypeError, AttributeError):  # a damaged patch summary
        timings = {}
    return (config if isinstance(config, dict) else None), (timings or None)


def report_from_run(
    run_output: str | Path,
    out_dir: str | Path,
    *,
    truth: pd.DataFrame | str | Path | None = None,
    bayes_reference: pd.DataFrame | str | Path | None = None,
    photometry: pd.DataFrame | str | Path | None = None,
    id_column: str | None = "source_id",
    **options: Any,
) -> Path:
    """:func:`load_run` then :func:`write_report` (one call for a command line).

    ``options`` are passed to :func:`write_report` (``title``, ``dpi``, ``overwrite``, ...).
    For the output file of ``photodist run`` (with ``OUTPUT.prior.npz`` beside it) and a
    photometry or truth catalogue with the magnitudes, the page also shows example
    posteriors (:func:`example_posteriors`). Returns the path of ``index.html``.
    """
    run = load_run(
        run_output,
        truth=truth,
        bayes_reference=bayes_reference,
        photometry=photometry,
        id_column=id_column,
    )
    if "posteriors" not in options:
        options["posteriors"] = _run_posteriors(Path(run_output), run)
    if options.get("columns") is None:  # the run's own column names (e.g. a flux catalogue)
        options["columns"] = _run_summary(Path(run_output))[1]
    return write_report(
        run.result,
        out_dir,
        truth=run.truth,
        bayes_reference=run.bayes_reference,
        photometry=run.photometry,
        config=run.config,
        timings=run.timings,
        **options,
    )


def _run_summary(path: Path) -> tuple[dict[str, Any], ColumnMap | None]:
    """A ``photodist run`` output's ``OUTPUT.run.json`` and its column names ({} and None
    when there is none)."""
    summary = io.read_run_summary(path)
    columns = ColumnMap.from_mapping(summary["columns"]) if "columns" in summary else None
    return summary, columns


def _run_posteriors(path: Path, run: RunData) -> list[tuple[str, Any]]:
    """Example posteriors of a ``photodist run`` output, or [] when its prior file, its
    configuration or the input magnitudes are not at hand."""
    from photodist.pipeline import (
        PipelineConfig,
        posterior_grid,
        used_dust_profile,
        used_error_floor,
        used_prior,
    )
    from photodist.priors import PriorMap

    prior_file = io.run_file(path, ".prior.npz")
    if not (path.is_file() and prior_file.is_file() and run.config):
        return []
    summary, columns = _run_summary(path)
    info = dict(run.result.attrs.get(_PIPELINE_ATTR, {}) or {}) or summary
    grid = posterior_grid(None, PipelineConfig.from_dict(run.config, ignore_unknown=True))
    prior = used_prior(info, PriorMap.load(prior_file), grid)
    floor = used_error_floor(info)
    for frame in (run.photometry, run.truth):
        if frame is None:
            continue
        try:
            return example_posteriors(
                run.result, frame, prior, run.config, columns, floor, used_dust_profile(info)
            )
        except KeyError:  # this frame lacks the magnitudes: try the next
            continue
    return []
