"""Accuracy of the hybrid estimates: robust statistics and the paper's Table 1.

Table 1 of Mrakovčić, Ivezić & Palaversa (2025, AJ 170, 72) compares, for M_r, A_r and [Fe/H],
the Bayesian estimates with the truth, the network estimates with the Bayesian ones, and the
network estimates with the truth, each by the median and the robust width
sigma_G = 0.7413 x (75th - 25th percentile) of the differences. :func:`table1` adds the
calibration of the uncertainties (sigma_G of the normalised residuals, 1 when the quoted
sigmas are right) and the coverage of the Gaussian 16-84 % interval mu +- sigma (0.683 when
right), and the fraction of stars whose network and Bayesian [Fe/H] differ by more than
0.3 dex.

"NN vs Bayes" needs Bayesian estimates of the same stars the networks estimated: pass them as
``bayes_full`` (the paper runs the Bayesian estimator on every star; on a large patch a random
held-out subset of a few thousand stars labelled by the Bayesian estimator gives the same
statistics with sampling noise, see ``benchmarks/bench_pipeline.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from photodist.bands import (
    ID_COLUMNS,
    ColumnMap,
    band_photometry,
    first_numeric_column,
    numeric_column,
    unusable_measurements,
)

__all__ = [
    "SIGMA_G_FACTOR",
    "align_to_run",
    "check_same_row_order",
    "run_match_keys",
    "TABLE1_COLUMNS",
    "calibration",
    "gaussian_coverage",
    "max_error_for_snr",
    "outlier_fraction",
    "robust_stats",
    "snr_mask",
    "table1",
    "truth_values",
]

#: sigma_G = SIGMA_G_FACTOR x interquartile range (equals sigma for a Gaussian).
SIGMA_G_FACTOR = 0.7413
#: Parameters compared in Table 1 (estimate prefixes).
TABLE1_PARAMETERS: tuple[str, ...] = ("Mr", "Ar", "FeH")
#: Truth columns of a simulated catalogue, in order of preference: photodist's simulator
#: (``Mr_true``) and the photod package's convention (``Mr``, ``FeH``, ``Ar``).
TRUTH_ALIASES: dict[str, tuple[str, str]] = {
    "Mr": ("Mr_true", "Mr"),
    "Ar": ("Ar_true", "Ar"),
    "FeH": ("FeH_true", "FeH"),
}
#: Other names of the truth columns in simulated catalogues, compared case-insensitively,
#: looked up after the simulator's name and before the photod convention.
TRUTH_OTHER_NAMES: dict[str, tuple[str, ...]] = {
    "Mr": ("Mr_true", "M_r_true", "true_Mr", "true_M_r", "Mr_truth", "M_r_truth", "Mr_sim"),
    "Ar": ("Ar_true", "A_r_true", "true_Ar", "true_A_r", "Ar_truth", "A_r_truth", "Ar_sim"),
    "FeH": (
        "FeH_true",
        "Fe_H_true",
        "[Fe/H]_true",
        "true_FeH",
        "true_Fe_H",
        "FeH_truth",
        "Fe_H_truth",
        "FeH_sim",
    ),
}
#: Truth values at or below this are "no value" sentinels (photod writes -99).
TRUTH_SENTINEL_MAX = -90.0
#: Columns of the frame returned by :func:`table1`.
TABLE1_COLUMNS: tuple[str, ...] = (
    "n_stars",
    "n_bayes_stars",
    "bayes_truth_median",
    "bayes_truth_sigma_g",
    "nn_bayes_median",
    "nn_bayes_sigma_g",
    "nn_bayes_calibration",
    "nn_truth_median",
    "nn_truth_sigma_g",
    "nn_truth_over_bayes_truth",
    "nn_calibration",
    "nn_coverage",
    "bayes_calibration",
    "bayes_coverage",
    "nn_bayes_outlier_fraction",
)
#: |NN - Bayes| above which a star counts as an outlier (only [Fe/H] by default, 0.3 dex).
DEFAULT_OUTLIER_THRESHOLDS: dict[str, float] = {"FeH": 0.3}


def _truth_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    values = numeric_column(frame, name)
    return np.where(values > TRUTH_SENTINEL_MAX, values, np.nan)


def truth_values(
    frame: pd.DataFrame, overrides: Mapping[str, str] | None = None, *, required: bool = False
) -> dict[str, np.ndarray]:
    """True M_r, A_r and [Fe/H] of a simulated catalogue, keyed ``Mr``, ``Ar``, ``FeH``.

    Columns are looked up in this order: ``overrides`` (parameter -> column), the simulator's
    ``Mr_true``/``Ar_true``/``FeH_true``, the other names of :data:`TRUTH_OTHER_NAMES`
    (``true_Mr``, ``A_r_truth``, ...), then the photod convention ``Mr``/``FeH``/``Ar``.
    Under the photod convention ``Ar`` counts as the true extinction only when ``Mr`` or
    ``FeH`` holds true values: in a real catalogue ``Ar`` is the dust-map value and the truth
    columns hold the -99 sentinel. Sentinels (<= -90) and non-numeric values become NaN.
    Parameters without truth are left out of the result, or with ``required`` raise.

    Raises
    ------
    KeyError
        An override names a column that is not in the frame, or an unknown parameter; with
        ``required``, a parameter has no truth column (the message names the accepted ones).
    """
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(TRUTH_ALIASES)
    if unknown:
        raise KeyError(f"unknown truth parameter(s) {sorted(unknown)}; use {list(TRUTH_ALIASES)}")
    found: dict[str, np.ndarray] = {}
    by_lower = {str(c).lower(): c for c in reversed(frame.columns)}  # the first of equals
    for p, (simulator_name, _) in TRUTH_ALIASES.items():
        if p in overrides:
            if overrides[p] not in frame.columns:
                raise KeyError(f"truth column {overrides[p]!r} for {p} is not in the catalogue")
            found[p] = _truth_column(frame, overrides[p])
        elif simulator_name in frame.columns:
            found[p] = _truth_column(frame, simulator_name)
        else:
            other = next(
                (by_lower[n.lower()] for n in TRUTH_OTHER_NAMES[p] if n.lower() in by_lower), None
            )
            if other is not None:
                found[p] = _truth_column(frame, other)
    photod = {
        p: _truth_column(frame, TRUTH_ALIASES[p][1])
        for p in ("Mr", "FeH")
        if p not in found and TRUTH_ALIASES[p][1] in frame.columns
    }
    photod = {p: v for p, v in photod.items() if np.isfinite(v).any()}
    found.update(photod)
    if photod and "Ar" not in found and TRUTH_ALIASES["Ar"][1] in frame.columns:
        found["Ar"] = _truth_column(frame, TRUTH_ALIASES["Ar"][1])
    missing = [p for p in TRUTH_ALIASES if p not in found]
    if required and missing:
        raise KeyError(
            f"no truth for {missing}: expected columns "
            + ", ".join(" or ".join(TRUTH_ALIASES[p]) for p in missing)
        )
    return {p: found[p] for p in TRUTH_ALIASES if p in found}


def _unique_key(frame: pd.DataFrame, names: Sequence[str]) -> bool:
    """Whether ``frame`` has the columns ``names`` and they identify every row once."""
    if not all(n in frame.columns for n in names):
        return False
    keys = frame[list(names)]
    return bool(keys.notna().all(axis=None)) and not keys.duplicated().any()


def _once(frame: pd.DataFrame, names: Sequence[str], distinct: list) -> pd.DataFrame | None:
    """``frame``, or ``frame`` with rows that repeat another row entirely left out (a
    catalogue listing a star several times; computed once into the one-item cache
    ``distinct``), if ``names`` then identify every row once; else None."""
    if _unique_key(frame, names):
        return frame
    if not all(n in frame.columns for n in names):
        return None
    if not distinct:
        distinct.append(frame[~frame.duplicated(keep="first")])
    return distinct[0] if _unique_key(distinct[0], names) else None


def run_match_keys(
    survey: dict[str, Any] | None, id_column: str | None = None
) -> tuple[list[str], tuple[str, str]]:
    """The id columns (``id_column``, a survey's recorded object id, then
    :data:`ID_COLUMNS`) and the position columns (a survey's recorded ra/dec names, else
    ra/dec) by which :func:`align_to_run` matches a catalogue to a run."""
    columns = (survey or {}).get("columns") or {}
    ids = [c for c in (id_column, columns.get("object_id")) if c]
    positions = (columns.get("ra") or "ra", columns.get("dec") or "dec")
    return list(dict.fromkeys([*ids, *ID_COLUMNS])), positions


def align_to_run(
    frame: pd.DataFrame,
    result: pd.DataFrame,
    name: str,
    *,
    id_columns: Sequence[str] = ID_COLUMNS,
    positions: Sequence[str] = ("ra", "dec"),
    in_input_order: bool = True,
) -> pd.DataFrame:
    """``frame`` (a truth or photometry catalogue) reordered to the rows of a run's ``result``.

    Rows are matched by the first of ``id_columns`` that both tables have and that identifies
    every row of ``frame`` once (result rows whose id ``frame`` lacks get NaN), else, for a
    result not in the input's order (``in_input_order`` False: a survey output, in HEALPix
    order), by the ``positions`` columns, else by position in the table, which needs as many
    rows and the input's order (:func:`check_same_row_order` refuses rows evidently in
    another order).

    Raises
    ------
    ValueError
        No id column is shared and the result is not in the input's order without unique
        positions, or the row counts differ, or the shared id column matches no row.
    """
    repeated = []
    distinct: list[pd.DataFrame] = []
    for key in id_columns:
        if key in result.columns and key in frame.columns:
            once = _once(frame, [key], distinct)
            if once is not None:
                return _matched_by_id(once, result, key, name)
            repeated.append(key)
    if not in_input_order:
        shared = all(c in result.columns for c in positions)
        once = _once(frame, positions, distinct) if shared else None
        if once is not None:
            keyed = once.set_index(list(positions))
            index = pd.MultiIndex.from_frame(result[list(positions)])
            return keyed.reindex(index).reset_index()
        why = f"; {', '.join(repeated)} repeats with different values in {name}" if repeated else ""
        raise ValueError(
            f"{name}: the run's rows are not in the input's order (a survey output is in "
            f"HEALPix order), and no id column ({', '.join(id_columns)}) or unique "
            f"{'/'.join(positions)} position is shared to match them by{why}"
        )
    if len(frame) != len(result):
        raise ValueError(
            f"{name} has {len(frame)} rows, the run {len(result)}, and no id column "
            f"({', '.join(id_columns)}) is shared to match them by"
        )
    check_same_row_order(frame, result, name, positions=positions)
    return frame.reset_index(drop=True)


#: Largest sky separation (deg) of two rows paired by table position that are the same star
SAME_STAR_TOLERANCE_DEG = 1.0 / 3600.0


def check_same_row_order(
    frame: pd.DataFrame,
    result: pd.DataFrame,
    name: str,
    *,
    positions: Sequence[str] = ("ra", "dec"),
) -> None:
    """Refuse to pair ``frame``'s rows with ``result``'s by table position when they are
    evidently other stars: ``frame`` labelled (not 0, 1, 2, ...) with the same unique index
    labels as ``result`` in another order (``run_patch`` keeps the input's index), or sky
    positions (``positions``, in both) more than :data:`SAME_STAR_TOLERANCE_DEG` apart.

    Raises
    ------
    ValueError
        Naming ``name`` and how many rows differ.
    """
    if len(frame) != len(result):
        return
    labels, wanted = frame.index, result.index
    default = isinstance(labels, pd.RangeIndex) and labels.start == 0 and labels.step == 1
    if not default and labels.is_unique and wanted.is_unique and not labels.equals(wanted):
        if (labels.get_indexer(wanted) >= 0).all():
            raise ValueError(
                f"{name}: its rows carry the run's index labels in another order; reorder "
                "it to the run's rows (frame.loc[result.index]) or give both an id column"
            )
    if not all(c in frame.columns and c in result.columns for c in positions):
        return
    ra_a, dec_a = (pd.to_numeric(frame[c], errors="coerce").to_numpy(float) for c in positions)
    ra_b, dec_b = (pd.to_numeric(result[c], errors="coerce").to_numpy(float) for c in positions)
    with np.errstate(invalid="ignore"):
        d_ra = np.abs((ra_a - ra_b + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec_b))
        apart = (d_ra > SAME_STAR_TOLERANCE_DEG) | (np.abs(dec_a - dec_b) > SAME_STAR_TOLERANCE_DEG)
    if apart.any():
        first = int(np.flatnonzero(apart)[0])
        raise ValueError(
            f"{name}: {int(apart.sum()):,} of its {len(frame):,} rows lie more than 1 arcsec "
            f"from the run's row at the same place in the table (first: row {first}, "
            f"{positions[0]}/{positions[1]} {ra_a[first]:.6f}/{dec_a[first]:.6f} against "
            f"{ra_b[first]:.6f}/{dec_b[first]:.6f}): the rows are in another order; give "
            "both an id column to match them by"
        )


def _matched_by_id(frame: pd.DataFrame, result: pd.DataFrame, key: str, name: str) -> pd.DataFrame:
    """``frame`` reindexed to ``result``'s ``key`` values; ids of different types (e.g. 7
    and "7") are matched by their text. None matched is an error, under half a warning."""
    ids, wanted = frame[key], result[key]
    found = wanted.isin(ids)
    if not found.any() and ids.dtype != wanted.dtype:
        ids, wanted = ids.astype(str), wanted.astype(str)
        found = wanted.isin(ids)
    if len(result) and not found.any():
        raise ValueError(
            f"{name}: none of the run's {len(result):,} {key} values is in its {key} column "
            f"(e.g. {wanted.iloc[0]!r} against {ids.iloc[0] if len(ids) else 'no rows'!r})"
        )
    if found.mean() < 0.5:
        warnings.warn(
            f"{name}: only {int(found.sum()):,} of the run's {len(result):,} rows have a "
            f"{key} in it; the others are compared with nothing",
            stacklevel=3,
        )
    return frame.assign(**{key: ids}).set_index(key).reindex(wanted.to_numpy()).reset_index()


def robust_stats(x: np.ndarray | Sequence[float] | pd.Series) -> tuple[float, float]:
    """Median and sigma_G = 0.7413 x IQR of the finite values (NaN, NaN when there are none).

    Percentiles use numpy's default linear interpolation.
    """
    values = np.asarray(x, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    q25, q50, q75 = np.percentile(values, [25.0, 50.0, 75.0])
    return float(q50), float(SIGMA_G_FACTOR * (q75 - q25))


def _aligned(*arrays: Any) -> tuple[np.ndarray, ...]:
    """The arrays as float, or a ``ValueError`` when their lengths differ."""
    out = tuple(np.asarray(a, dtype=float) for a in arrays)
    if len({a.shape for a in out}) > 1:
        raise ValueError(f"arrays of different shapes: {[a.shape for a in out]}")
    return out


def calibration(estimate: np.ndarray, sigma: np.ndarray, truth: np.ndarray) -> float:
    """sigma_G of (estimate - truth) / sigma over rows where all three are finite, sigma > 0.

    1 when the quoted uncertainties match the scatter; above 1 when they are too small.
    """
    estimate, sigma, truth = _aligned(estimate, sigma, truth)
    ok = np.isfinite(estimate) & np.isfinite(sigma) & np.isfinite(truth) & (sigma > 0)
    return robust_stats((estimate[ok] - truth[ok]) / sigma[ok])[1]


def gaussian_coverage(estimate: np.ndarray, sigma: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of rows whose truth lies within estimate +- sigma (0.683 for correct Gaussians).

    Rows where any of the three is not finite are left out; NaN when none is left.
    """
    estimate, sigma, truth = _aligned(estimate, sigma, truth)
    ok = np.isfinite(estimate) & np.isfinite(sigma) & np.isfinite(truth)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(estimate[ok] - truth[ok]) <= sigma[ok]))


def outlier_fraction(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """Fraction of rows (both finite) with |a - b| > threshold; NaN when none is finite."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(a[ok] - b[ok]) > threshold))


def max_error_for_snr(min_snr: float = 5.0) -> float:
    """Magnitude error at signal-to-noise ``min_snr``: 2.5 / ln(10) / SNR (0.2171 for 5)."""
    if not min_snr > 0:
        raise ValueError("min_snr must be positive")
    return float(2.5 / np.log(10.0) / min_snr)


def snr_mask(
    frame: pd.DataFrame,
    band_set: str = "lsst",
    min_snr: float = 5.0,
    columns: ColumnMap | None = None,
) -> np.ndarray:
    """True for stars with SNR > ``min_snr`` in every band of the band set.

    A band passes when its magnitude is usable (when the catalogue has the magnitude; a
    catalogue of r and colours has only r): finite and not a sentinel such as 99, as
    :func:`photodist.bands.unusable_measurements` decides, and its error is positive and
    below :func:`max_error_for_snr` (0.2171 mag for SNR 5). Columns are read as the
    estimators read them (:func:`photodist.bands.band_photometry`: other names, fluxes). A
    band no star has a usable measurement in (a band the catalogue lacks, e.g. u) is left out,
    so that it does not leave no star at all.
    """
    mags, errs, has_mag = band_photometry(frame, band_set, columns)
    bad_error, unusable = unusable_measurements(mags, errs)
    with np.errstate(invalid="ignore"):
        good_error = ~bad_error & (errs < max_error_for_snr(min_snr))
    passes = good_error & (~unusable | ~has_mag)
    absent = (bad_error | (unusable & has_mag)).all(axis=0)
    return np.all(passes[:, ~absent], axis=1)


def _column(frame: pd.DataFrame, *names: str) -> np.ndarray:
    values = first_numeric_column(frame, names)
    if values is None:
        raise KeyError(f"none of the columns {list(names)} in the frame")
    return values


def table1(
    result: pd.DataFrame,
    truth: pd.DataFrame | Mapping[str, np.ndarray],
    bayes_full: pd.DataFrame | None = None,
    *,
    outlier_thresholds: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Table-1 statistics of the network and Bayesian estimates against each other and truth.

    Parameters
    ----------
    result
        Pipeline output (:func:`photodist.pipeline.run_patch`): ``{p}_mean``, ``{p}_sigma``
        and ``method``; the network statistics use the rows with ``method == "nn"`` (all rows
        when there is no ``method`` column).
    truth
        True values, aligned row by row with ``result``: a simulated catalogue with the
        columns :func:`truth_values` recognises, or a mapping parameter -> array.
    bayes_full
        Bayesian estimates of the same rows (``BayesEstimator.predict`` output with
        ``{p}_mean``/``{p}_std``, or a pipeline-style frame with ``{p}_sigma``); rows not
        estimated may be NaN. When given, every statistic is computed on the same stars: the
        network rows with a finite Bayesian estimate and a finite truth. When None, "Bayes vs
        truth" uses the rows of ``result`` estimated by the Bayesian method (a different set:
        the training subsample and the fallbacks) and the "NN vs Bayes" columns are NaN.
    outlier_thresholds
        |NN - Bayes| thresholds per parameter for ``nn_bayes_outlier_fraction`` (default
        0.3 dex for [Fe/H] only; NaN for parameters without one).

    Returns
    -------
    pandas.DataFrame
        Indexed by parameter (``Mr``, ``Ar``, ``FeH``), columns :data:`TABLE1_COLUMNS`:
        medians and sigma_G of the differences (first minus second), ``n_stars`` (network
        rows compared) and ``n_bayes_stars`` (Bayesian rows in the "Bayes vs truth" columns),
        the ratio of the network's to the Bayesian sigma_G against the truth, calibration
        (sigma_G of the residuals over the total sigma) and Gaussian 16-84 % coverage for
        both estimators, ``nn_bayes_calibration`` (sigma_G of (NN - Bayes) / sigma_nn: whether
        the network's own width describes its emulation error; needs ``{p}_sigma_nn``) and the
        outlier fraction. ``attrs["bayes_source"]`` says which
        Bayesian rows were used.
    """
    if bayes_full is not None and len(bayes_full) != len(result):
        raise ValueError(f"bayes_full has {len(bayes_full)} rows, result {len(result)}")
    thresholds = (
        DEFAULT_OUTLIER_THRESHOLDS if outlier_thresholds is None else dict(outlier_thresholds)
    )
    if "method" in result.columns:
        is_nn = (result["method"].astype(str) == "nn").to_numpy()
    else:
        is_nn = np.ones(len(result), dtype=bool)
    if isinstance(truth, pd.DataFrame):
        check_same_row_order(truth, result, "truth")
        true_values = truth_values(truth, required=True)
    else:
        true_values = {p: np.asarray(v, dtype=float) for p, v in truth.items()}
        missing = [p for p in TABLE1_PARAMETERS if p not in true_values]
        if missing:
            raise KeyError(f"no truth for {missing}")
    for p, values in true_values.items():
        if len(values) != len(result):
            raise ValueError(f"truth of {p} has {len(values)} rows, result {len(result)}")
    rows = {}
    for p in TABLE1_PARAMETERS:
        nn = _column(result, f"{p}_mean")
        nn_sigma = _column(result, f"{p}_sigma")
        true = true_values[p]
        base = is_nn & np.isfinite(nn) & np.isfinite(true)
        if bayes_full is not None:
            bayes = _column(bayes_full, f"{p}_mean")
            bayes_sigma = _column(bayes_full, f"{p}_std", f"{p}_sigma")
            nn_rows = base & np.isfinite(bayes)
            bayes_rows = nn_rows
        else:
            bayes, bayes_sigma = nn, nn_sigma  # the result's own Bayesian rows
            nn_rows = base
            bayes_rows = ~is_nn & np.isfinite(nn) & np.isfinite(true)
        bt = robust_stats(bayes[bayes_rows] - true[bayes_rows])
        nt = robust_stats(nn[nn_rows] - true[nn_rows])
        if bayes_full is not None:
            nb = robust_stats(nn[nn_rows] - bayes[nn_rows])
            nb_cal = (
                calibration(nn[nn_rows], _column(result, f"{p}_sigma_nn")[nn_rows], bayes[nn_rows])
                if f"{p}_sigma_nn" in result.columns
                else float("nan")
            )
            threshold = thresholds.get(p)
            outliers = (
                outlier_fraction(nn[nn_rows], bayes[nn_rows], threshold)
                if threshold is not None
                else float("nan")
            )
        else:
            nb = (float("nan"), float("nan"))
            nb_cal = float("nan")
            outliers = float("nan")
        rows[p] = {
            "n_stars": int(nn_rows.sum()),
            "n_bayes_stars": int(bayes_rows.sum()),
            "bayes_truth_median": bt[0],
            "bayes_truth_sigma_g": bt[1],
            "nn_bayes_median": nb[0],
            "nn_bayes_sigma_g": nb[1],
            "nn_bayes_calibration": nb_cal,
            "nn_truth_median": nt[0],
            "nn_truth_sigma_g": nt[1],
            "nn_truth_over_bayes_truth": nt[1] / bt[1] if bt[1] > 0 else float("nan"),
            "nn_calibration": calibration(nn[nn_rows], nn_sigma[nn_rows], true[nn_rows]),
            "nn_coverage": gaussian_coverage(nn[nn_rows], nn_sigma[nn_rows], true[nn_rows]),
            "bayes_calibration": calibration(
                bayes[bayes_rows], bayes_sigma[bayes_rows], true[bayes_rows]
            ),
            "bayes_coverage": gaussian_coverage(
                bayes[bayes_rows], bayes_sigma[bayes_rows], true[bayes_rows]
            ),
            "nn_bayes_outlier_fraction": outliers,
        }
    table = pd.DataFrame.from_dict(rows, orient="index")[list(TABLE1_COLUMNS)]
    table.index.name = "parameter"
    table.attrs["bayes_source"] = (
        "bayes_full on the network rows" if bayes_full is not None else "result's Bayesian rows"
    )
    table.attrs["outlier_thresholds"] = dict(thresholds)
    return table
