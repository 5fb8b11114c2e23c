"""Diagnostics of a run that need no truth: precision, fit quality, flags and extinction by depth.

On a real catalogue there is nothing to compare the estimates with, but a run still shows
whether it behaved: how the uncertainties grow with magnitude, where the fits degrade (best-fit
chi2 rising for bright stars points to colour errors that are too small, see
``photodist.error_floor``), which flags appear at which depth, and, with a dust-map column,
whether the extinction of distant stars matches the map (stars beyond the dust layer should
have A_r close to the map's A_r).

:func:`magnitude_table` bins a result (``photodist run`` or ``photodist bayes`` output) in r;
:func:`diagnostics_figure` draws it with the distribution of the estimates;
:func:`dust_profile_figure` shows a run's learned A_r prior (``--dust-prior profile``) over the
estimates it was fitted to. The report (``photodist report``) shows them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from photodist.bands import MAX_PLAUSIBLE_MAGNITUDE, first_numeric_column
from photodist.bayes import Flags

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from photodist.dust_profile import DustProfile

__all__ = [
    "FLAG_COLUMNS",
    "MIN_BIN_STARS",
    "diagnostics_figure",
    "dust_profile_figure",
    "bayesian_rows",
    "magnitude_table",
    "r_magnitudes",
]

#: Fewest stars in an r bin for its statistics (fewer: NaN).
MIN_BIN_STARS = 20
#: Flags whose fraction per r bin the table lists.
FLAG_COLUMNS: tuple[str, ...] = (
    "POOR_FIT",
    "TWO_BRANCH",
    "AR_AT_BOUND",
    "COLOR_UNUSABLE",
    "NN_OUT_OF_DOMAIN",
)
_PARAMETERS = ("Mr", "Ar", "FeH")
_DISTANT_DM = 10.0  # distance modulus (1 kpc) beyond which stars lie behind most of the dust


def _column(result: pd.DataFrame, *names: str) -> np.ndarray:
    values = first_numeric_column(result, names)
    return np.full(len(result), np.nan) if values is None else values


def _plausible(magnitudes: np.ndarray) -> np.ndarray:
    """True where a magnitude is finite and no survey sentinel (99, -99)."""
    return np.abs(magnitudes) < MAX_PLAUSIBLE_MAGNITUDE


def r_magnitudes(result: pd.DataFrame, r: np.ndarray | None = None) -> np.ndarray:
    """r per row: the given r where it is a plausible magnitude, else r = DM + Q_r from the
    result; NaN where the row has neither (no r and no estimate, or a sentinel).

    Raises
    ------
    ValueError
        ``r`` is not one value per row of ``result``.
    """
    from_estimates = _column(result, "DM_mean") + _column(result, "Qr_mean")
    if r is None:
        r = from_estimates
    r = np.asarray(r, dtype=float)
    if r.shape != (len(result),):
        raise ValueError(f"r has shape {r.shape}, expected ({len(result)},)")
    r = np.where(_plausible(r), r, from_estimates)
    return np.where(_plausible(r), r, np.nan)


def bayesian_rows(result: pd.DataFrame) -> np.ndarray:
    """True for the rows of the Bayesian estimator: ``method == "bayes"``; without a
    ``method`` column every row of a Bayesian output (no ``{p}_sigma_nn`` column)."""
    if "method" in result:
        return result["method"].astype(str).to_numpy() == "bayes"
    is_network = any(f"{p}_sigma_nn" in result for p in _PARAMETERS)
    return np.full(len(result), not is_network)


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def magnitude_table(
    result: pd.DataFrame,
    r: np.ndarray | None = None,
    a_map: np.ndarray | None = None,
    bin_width: float = 1.0,
    min_stars: int = MIN_BIN_STARS,
) -> pd.DataFrame:
    """Statistics of a run per r bin.

    Parameters
    ----------
    result
        Run output: ``{p}_mean`` and ``{p}_sigma`` (or ``{p}_std``) for p in Mr, Ar, FeH,
        ``flags``, optionally ``chi2min``, ``method``, ``DM_mean``, ``Qr_mean``.
    r
        r magnitude per row; rows where it is missing or a sentinel take ``DM_mean +
        Qr_mean`` (:func:`r_magnitudes`; rows without an estimate lack it too).
    a_map
        Dust-map A_r per row (e.g. the catalogue's SFD ``Ar``), or None.
    bin_width
        Width of the r bins (mag); bins start at a multiple of it.
    min_stars
        Bins with fewer stars get NaN statistics (their counts are kept).

    Returns
    -------
    pandas.DataFrame
        One row per r bin holding stars: ``r_lo``, ``r_hi``, ``n_stars``, ``estimated``
        (fraction with an M_r estimate), ``nn`` (fraction estimated by the networks),
        ``flagged`` (fraction with any flag), the fraction of each flag in
        :data:`FLAG_COLUMNS`, the median uncertainties ``sigma_Mr``, ``sigma_Ar``,
        ``sigma_FeH``, the median and 90th percentile of the best-fit chi2 of the Bayesian
        rows (``chi2min_p50``, ``chi2min_p90``; :func:`bayesian_rows`) and of the network
        rows' best fit without the prior (``chi2min_nn_p50``, ``chi2min_nn_p90``) and, with
        ``a_map``, the median of ``Ar_mean - a_map`` over stars with DM > 10
        (``ar_minus_map_distant``).
    """
    if bin_width <= 0:
        raise ValueError("bin_width must be positive")
    n = len(result)
    r = r_magnitudes(result, r)
    flags = _column(result, "flags")
    flags = np.where(np.isfinite(flags), flags, 0).astype(np.int64)
    method = result["method"].astype(str).to_numpy() if "method" in result else np.full(n, "")
    mr = _column(result, "Mr_mean")
    sigmas = {p: _column(result, f"{p}_sigma", f"{p}_std") for p in _PARAMETERS}
    chi2_all = _column(result, "chi2min")
    chi2 = {
        "chi2min": np.where(bayesian_rows(result), chi2_all, np.nan),
        "chi2min_nn": np.where(method == "nn", chi2_all, np.nan),
    }
    distant = _column(result, "DM_mean") > _DISTANT_DM
    ar_excess = None
    if a_map is not None:
        a_map = np.asarray(a_map, dtype=float)
        if a_map.shape != (n,):
            raise ValueError(f"a_map has shape {a_map.shape}, expected ({n},)")
        ar_excess = np.where(distant, _column(result, "Ar_mean") - a_map, np.nan)
    finite = np.isfinite(r)
    if not finite.any():
        return pd.DataFrame(columns=["r_lo", "r_hi", "n_stars"])
    first = math.floor(float(r[finite].min()) / bin_width)
    # one grouped pass: the rows with a magnitude sorted by bin (stable: row order kept within
    # a bin), then every bin is a contiguous slice
    rows_in = np.flatnonzero(finite)
    index = np.floor(r[finite] / bin_width).astype(np.int64) - first
    order = np.argsort(index, kind="stable")
    index, rows_in = index[order], rows_in[order]
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    counts = np.diff(np.r_[starts, index.size])
    bits = [int(getattr(Flags, name)) for name in FLAG_COLUMNS]
    f = flags[rows_in]
    shares = {
        "estimated": np.isfinite(mr[rows_in]),
        "nn": method[rows_in] == "nn",
        "flagged": f != 0,
        **{name: (f & bit) > 0 for name, bit in zip(FLAG_COLUMNS, bits, strict=True)},
    }
    hits = {name: np.add.reduceat(mask.astype(np.int64), starts) for name, mask in shares.items()}
    sigmas = {p: values[rows_in] for p, values in sigmas.items()}
    chi2 = {name: values[rows_in] for name, values in chi2.items()}
    if ar_excess is not None:
        ar_excess = ar_excess[rows_in]
    rows = []
    for j, (start, count) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
        members = slice(start, start + count)
        lo = (first + int(index[start])) * bin_width
        row: dict[str, float] = {"r_lo": lo, "r_hi": lo + bin_width, "n_stars": count}
        enough = count >= min_stars
        for name, hit in hits.items():
            row[name] = float(hit[j] / count) if enough else math.nan
        for p in _PARAMETERS:
            row[f"sigma_{p}"] = _median(sigmas[p][members]) if enough else math.nan
        for name, values in chi2.items():
            c = values[members]
            c = c[np.isfinite(c)]
            has_chi2 = c.size >= min_stars
            row[f"{name}_p50"] = float(np.median(c)) if has_chi2 else math.nan
            row[f"{name}_p90"] = float(np.percentile(c, 90)) if has_chi2 else math.nan
        if ar_excess is not None:
            e = ar_excess[members]
            e = e[np.isfinite(e)]
            row["ar_minus_map_distant"] = float(np.median(e)) if e.size >= min_stars else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def diagnostics_figure(
    result: pd.DataFrame,
    table: pd.DataFrame,
    a_map: np.ndarray | None = None,
) -> Figure:
    """Six panels: uncertainties, best-fit chi2 and flag fractions against r (from ``table``,
    :func:`magnitude_table`), the M_r-[Fe/H] and distance-modulus distributions of the
    estimates, and A_r minus the dust map against distance modulus (when ``a_map`` is given;
    else the A_r distribution)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.0, 8.0), layout="constrained")
    axes = fig.subplots(2, 3)
    centre = 0.5 * (table["r_lo"] + table["r_hi"]) if len(table) else pd.Series(dtype=float)

    ax = axes[0, 0]
    for p, label in (("Mr", "σ(M_r) (mag)"), ("FeH", "σ([Fe/H]) (dex)"), ("Ar", "σ(A_r) (mag)")):
        if f"sigma_{p}" in table:
            ax.plot(centre, table[f"sigma_{p}"], "o-", ms=3, label=label)
    ax.set_xlabel("r (mag)")
    ax.set_ylabel("median uncertainty")
    ax.set_title("Precision against depth", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    drawn = False
    for name, rows, colour in (
        ("chi2min", "Bayesian rows", "C0"),
        ("chi2min_nn", "network rows, fit without prior", "C1"),
    ):
        if f"{name}_p50" in table and np.isfinite(table[f"{name}_p50"]).any():
            ax.plot(centre, table[f"{name}_p50"], "o-", ms=3, color=colour, label=f"{rows}: median")
            ax.plot(centre, table[f"{name}_p90"], "s--", ms=3, color=colour, label=f"{rows}: p90")
            drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no best-fit χ²", ha="center", transform=ax.transAxes)
    ax.set_xlabel("r (mag)")
    ax.set_ylabel("best-fit χ²")
    ax.set_title("Fit quality against depth", fontsize=10)

    ax = axes[0, 2]
    for name in ("flagged", *FLAG_COLUMNS):
        if name in table and np.nanmax(table[name].to_numpy(float), initial=0.0) > 0:
            ax.plot(
                centre, table[name], "o-", ms=3, label="any flag" if name == "flagged" else name
            )
    ax.set_xlabel("r (mag)")
    ax.set_ylabel("fraction of stars")
    ax.set_title("Flags against depth", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)

    mr, feh = _column(result, "Mr_mean"), _column(result, "FeH_mean")
    ok = np.isfinite(mr) & np.isfinite(feh)
    ax = axes[1, 0]
    if ok.sum() > 1:
        ax.hist2d(feh[ok], mr[ok], bins=(60, 80), cmap="Greys", cmin=1)
        ax.invert_yaxis()
    ax.set_xlabel("[Fe/H] estimate (dex)")
    ax.set_ylabel("M_r estimate (mag)")
    ax.set_title(f"Estimates of {int(ok.sum()):,} stars", fontsize=10)

    dm = _column(result, "DM_mean")
    method = result["method"].astype(str).to_numpy() if "method" in result else None
    ax = axes[1, 1]
    fin = np.isfinite(dm)
    if fin.any():
        bins = np.linspace(*np.percentile(dm[fin], [0.5, 99.5]), 50)
        groups = [("all", fin)] if method is None else [
            (m, fin & (method == m)) for m in np.unique(method[fin])
        ]  # fmt: skip
        for label, mask in groups:
            ax.hist(dm[mask], bins=bins, histtype="step", label=label)
        ax.legend(fontsize=8)
    ax.set_xlabel("distance modulus DM = r − Q_r (mag)")
    ax.set_ylabel("stars")
    ax.set_title("Distances", fontsize=10)

    ax = axes[1, 2]
    ar = _column(result, "Ar_mean")
    if a_map is not None:
        excess = ar - np.asarray(a_map, dtype=float)
        ok = np.isfinite(excess) & fin
        if ok.sum() > 1:
            ax.hist2d(dm[ok], excess[ok], bins=(50, 60), cmap="Greys", cmin=1)
            ax.axhline(0.0, color="C3", lw=1.0)
            ax.axvline(_DISTANT_DM, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("distance modulus (mag)")
        ax.set_ylabel("A_r estimate − dust map A_r (mag)")
        ax.set_title("Extinction against the dust map", fontsize=10)
    else:
        ok = np.isfinite(ar)
        if ok.any():
            ax.hist(ar[ok], bins=50, histtype="step")
        ax.set_xlabel("A_r estimate (mag)")
        ax.set_ylabel("stars")
        ax.set_title("Extinction (no dust-map column)", fontsize=10)
    return fig


def dust_profile_figure(
    result: pd.DataFrame,
    profile: DustProfile,
    r: np.ndarray | None = None,
    a_map: np.ndarray | None = None,
) -> Figure:
    """The fitted dust profile over the estimates it came from.

    The Bayesian rows' A_r estimates (as a fraction of the dust map for a relative profile)
    against their apparent distance modulus r - M_r, with the profile and its +-1 width band
    (the band in mag, divided by the median map value for a relative profile). A profile that
    does not follow the cloud of points, or a band much narrower than its spread, says the
    prior does not describe the patch.
    """
    from matplotlib.figure import Figure

    r = r_magnitudes(result, r)
    x = r - _column(result, "Mr_mean")
    y = _column(result, "Ar_mean")
    label = "A_r estimate (mag)"
    scale = 1.0
    if profile.relative:
        dust = np.full(len(result), np.nan) if a_map is None else np.asarray(a_map, float)
        dust = np.where(dust > 0.0, dust, np.nan)
        y = y / dust
        scale = _median(dust)
        label = "A_r estimate / dust map"
    if "method" in result:
        y = np.where(result["method"].astype(str).to_numpy() == "bayes", y, np.nan)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() > 1:
        ax.hist2d(x[ok], y[ok], bins=(60, 60), cmap="Greys", cmin=1)
    lo = min(float(np.nanmin(x[ok])), profile.knots_x[0]) if ok.any() else profile.knots_x[0]
    hi = max(float(np.nanmax(x[ok])), profile.knots_x[-1]) if ok.any() else profile.knots_x[-1]
    grid = np.linspace(lo, hi, 200)
    g = np.interp(grid, profile.knots_x, profile.knots_mu)
    width = profile.sigma / scale if np.isfinite(scale) and scale > 0 else np.nan
    ax.plot(grid, g, color="C3", lw=1.5, label="fitted profile")
    ax.fill_between(grid, g - width, g + width, color="C3", alpha=0.2, label="± width")
    ax.plot(profile.knots_x, profile.knots_mu, "o", color="C3", ms=3)
    ax.set_xlabel("apparent distance modulus r − M_r (mag)")
    ax.set_ylabel(label)
    ax.set_title(
        f"Dust profile (width {profile.sigma:.3f} mag) over {int(ok.sum()):,} Bayesian rows",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return fig
