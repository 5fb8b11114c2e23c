"""HEALPix sky maps of a survey run: star counts, median [Fe/H], A_r, distance, flagged fraction.

:func:`make_maps` reads a run's output catalogue (the HATS folder written by
:func:`photodist.survey.run_survey`; an unfinished run gives the maps of its finished
patches) and returns one row per occupied HEALPix pixel (nested, ICRS) of the chosen order:

* ``n_stars``: rows in the pixel;
* ``FeH_median``, ``Ar_median``, ``dist_median``: medians of ``FeH_mean``, ``Ar_mean`` and
  ``dist_pc`` over the rows where they are finite (NaN if none);
* ``flagged_fraction``: fraction of rows with any flag bit set.

The partitions are streamed in ``_healpix_29`` order (the run writes them sorted), so memory
is bounded by one map pixel: medians are exact for pixels of up to ``max_exact_rows`` stars;
beyond that a pixel's values go to fine histograms (bins of :data:`HISTOGRAM_BINS`) and the
median is interpolated within its bin.

:func:`save_maps` writes the maps as Parquet or as a HEALPix FITS binary table with explicit
pixel indices (``INDXSCHM = 'EXPLICIT'``, ``ORDERING = 'NESTED'``); :func:`plot_mollweide`
draws one quantity on a Mollweide projection (equatorial or Galactic) with a colour bar.

:func:`patch_maps` maps what each patch's pipeline fitted, one row per patch at the run's
patch order (from the patch summaries the run writes, ``photodist_patches/``): the Galaxy-model
prior's [Fe/H] shift and power and their evidence gain (:mod:`photodist.prior_temper`; where
they move away from 0 and 1 the stars follow another population than the model's), the
colour scatter beyond the quoted errors, the error floor used, the dust profile's width, the
mode and the time per patch. :func:`write_maps` writes them beside the star maps.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from photodist import io
from photodist.output_columns import ColumnInfo

__all__ = [
    "HISTOGRAM_BINS",
    "MAP_COLUMNS",
    "MAP_LABELS",
    "PATCH_MAP_COLUMNS",
    "load_maps",
    "make_maps",
    "patch_maps",
    "plot_mollweide",
    "rasterize",
    "save_maps",
    "write_maps",
]

SPATIAL_INDEX_COLUMN = "_healpix_29"
SPATIAL_INDEX_ORDER = 29
#: Map columns besides ``pixel``.
MAP_COLUMNS: tuple[str, ...] = (
    "n_stars",
    "FeH_median",
    "Ar_median",
    "dist_median",
    "flagged_fraction",
)
#: Colour-bar labels.
MAP_LABELS: dict[str, str] = {
    "n_stars": "stars per pixel",
    "FeH_median": "median [Fe/H] (dex)",
    "Ar_median": "median $A_r$ (mag)",
    "dist_median": "median distance (pc)",
    "flagged_fraction": "fraction of stars flagged",
}
#: Catalogue column behind each median.
_SOURCES: dict[str, str] = {
    "FeH_median": "FeH_mean",
    "Ar_median": "Ar_mean",
    "dist_median": "dist_pc",
}
#: Histogram bins (start, stop, step) used for pixels above ``max_exact_rows`` stars; the
#: distance histogram is in log10(pc).
HISTOGRAM_BINS: dict[str, tuple[float, float, float]] = {
    "FeH_median": (-3.0, 1.0, 0.001),
    "Ar_median": (0.0, 10.0, 0.001),
    "dist_median": (0.0, 6.0, 0.0005),
}
_READ_COLUMNS = (SPATIAL_INDEX_COLUMN, *_SOURCES.values(), "flags")
#: Patch map columns besides ``pixel`` (:func:`patch_maps`).
PATCH_MAP_COLUMNS: tuple[str, ...] = (
    "n_rows",
    "hybrid",
    "prior_feh_shift",
    "prior_power",
    "prior_evidence_gain",
    "color_scatter",
    "error_floor",
    "dust_profile_width",
    "seconds",
)
MAP_LABELS.update(
    {
        "n_rows": "stars per patch",
        "hybrid": "patch mode (1: networks, 0: Bayes on every star)",
        "prior_feh_shift": "shift of the prior along [Fe/H] (dex)",
        "prior_power": "power of the prior",
        "prior_evidence_gain": "log evidence gain of the fitted prior per star",
        "color_scatter": "colour scatter beyond the quoted errors (mag)",
        "error_floor": "colour-error floor used (mag)",
        "dust_profile_width": "width of the dust profile (mag)",
        "seconds": "pipeline time per patch (s)",
    }
)
#: Patch map quantities drawn by :func:`write_maps`, with their colour maps.
PATCH_FIGURES: dict[str, str] = {
    "prior_feh_shift": "RdBu_r",
    "prior_power": "viridis",
    "color_scatter": "viridis",
}
#: Integer columns of either kind of map.
_INTEGER_COLUMNS = ("pixel", "n_stars", "n_rows")

#: Unit and description of every map column: FITS ``TUNITn`` / ``TCOMMn`` and Parquet
#: field metadata (``unit``, ``description``), as the estimate tables have them.
MAP_COLUMN_INFO: dict[str, ColumnInfo] = {
    "pixel": ColumnInfo("", "HEALPix pixel index (NESTED)"),
    "n_stars": ColumnInfo("", "stars in the pixel"),
    "FeH_median": ColumnInfo("dex", "median [Fe/H] estimate of the pixel's stars"),
    "Ar_median": ColumnInfo("mag", "median A_r estimate of the pixel's stars"),
    "dist_median": ColumnInfo("pc", "median distance estimate of the pixel's stars"),
    "flagged_fraction": ColumnInfo("", "fraction of the pixel's stars with any flag set"),
    "n_rows": ColumnInfo("", "stars in the patch"),
    "hybrid": ColumnInfo("", "patch mode: 1 networks, 0 Bayes on every star"),
    "prior_feh_shift": ColumnInfo("dex", "shift of the prior along [Fe/H]"),
    "prior_power": ColumnInfo("", "power of the prior fitted to the patch"),
    "prior_evidence_gain": ColumnInfo("", "ln evidence gain per star of the fitted prior"),
    "color_scatter": ColumnInfo("mag", "colour scatter beyond the quoted errors"),
    "error_floor": ColumnInfo("mag", "colour-error floor used"),
    "dust_profile_width": ColumnInfo("mag", "width of the fitted dust profile"),
    "seconds": ColumnInfo("s", "pipeline time of the patch"),
}


def map_column_info(name: str) -> ColumnInfo | None:
    """Unit and description of the map column ``name`` (any case: FITS names are upper
    case); None for another column."""
    return MAP_COLUMN_INFO.get(_BY_FITS_NAME.get(name.upper(), name))


# ----------------------------------------------------------------------------------------------
# Map making
# ----------------------------------------------------------------------------------------------


def _partition_files(run_output: Path) -> list[tuple[int, int, Path]]:
    """Partition files of a run output in nested-pixel (``_healpix_29``) order."""
    try:
        parts = io.hats_partitions(run_output)
    except io.CatalogError:
        base = run_output / "dataset"
        parts = []
        for f in base.glob("Norder=*/Dir=*/Npix=*.parquet"):
            if not f.name.startswith((".", "_")):
                order = int(f.parent.parent.name.split("=")[1])
                parts.append((order, int(f.stem.split("=")[1]), f))
        if not parts:
            raise io.CatalogError(f"{run_output}: no partition files of a survey run") from None
    files = []
    for order, pixel, path in parts:
        inner = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        files += [(order, pixel, f) for f in inner]
    return sorted(files, key=lambda t: (t[1] << (2 * (SPATIAL_INDEX_ORDER - t[0])), str(t[2])))


def _iter_batches(files: Sequence[tuple[int, int, Path]], batch_rows: int) -> Iterator[pa.Table]:
    for _, _, path in files:
        handle = pq.ParquetFile(path)
        missing = [c for c in _READ_COLUMNS if c not in handle.schema_arrow.names]
        if missing:
            raise io.CatalogError(f"{path}: not a survey run partition (missing {missing})")
        for batch in handle.iter_batches(batch_size=batch_rows, columns=list(_READ_COLUMNS)):
            yield pa.Table.from_batches([batch])


def _segment_medians(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Median of the finite values in each ``[start, end)`` segment (NaN if none)."""
    n_seg = starts.size
    seg = np.repeat(np.arange(n_seg), ends - starts)
    finite = np.isfinite(values)
    counts = np.bincount(seg[finite], minlength=n_seg)
    order = np.lexsort((np.where(finite, values, np.inf), seg))
    ranked = values[order]  # by segment, finite values first in ascending order
    lo = starts + np.maximum(counts - 1, 0) // 2
    hi = starts + counts // 2
    hi = np.minimum(hi, np.maximum(ends - 1, starts))
    med = 0.5 * (ranked[lo] + ranked[hi])
    med[counts == 0] = np.nan
    return med


def _histogram_index(name: str, values: np.ndarray) -> np.ndarray:
    start, stop, step = HISTOGRAM_BINS[name]
    n_bins = int(round((stop - start) / step))
    if name == "dist_median":
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log10(values)
    index = np.floor((values - start) / step)
    return np.clip(index, 0, n_bins - 1).astype(np.int64)


def _histogram_median(name: str, counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return float("nan")
    start, _, step = HISTOGRAM_BINS[name]
    cdf = np.cumsum(counts)
    k = int(np.searchsorted(cdf, 0.5 * total))
    below = cdf[k - 1] if k > 0 else 0
    inside = counts[k]
    value = start + step * (k + (0.5 * total - below) / inside)
    return float(10.0**value) if name == "dist_median" else float(value)


@dataclass
class _LargePixel:
    """Histogram accumulator of one map pixel with too many stars for exact medians."""

    pixel: int
    n_stars: int = 0
    n_flagged: int = 0
    hist: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, data: dict[str, np.ndarray]) -> None:
        n = data["flags"].size
        self.n_stars += n
        self.n_flagged += int(np.count_nonzero(data["flags"]))
        for name in _SOURCES:
            start, stop, step = HISTOGRAM_BINS[name]
            n_bins = int(round((stop - start) / step))
            values = data[name]
            values = values[np.isfinite(values)]
            index = _histogram_index(name, values)
            counts = np.bincount(index, minlength=n_bins)
            self.hist[name] = self.hist.get(name, np.zeros(n_bins, np.int64)) + counts

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pixel": self.pixel, "n_stars": self.n_stars}
        for name in _SOURCES:
            out[name] = _histogram_median(name, self.hist[name])
        out["flagged_fraction"] = self.n_flagged / self.n_stars if self.n_stars else np.nan
        return out


def _exact_rows(pixels: np.ndarray, data: dict[str, np.ndarray]) -> pd.DataFrame:
    """Map rows for complete pixels held in memory (``pixels`` non-decreasing)."""
    starts = np.flatnonzero(np.r_[True, pixels[1:] != pixels[:-1]])
    ends = np.r_[starts[1:], pixels.size]
    counts = ends - starts
    out: dict[str, Any] = {"pixel": pixels[starts], "n_stars": counts}
    for name in _SOURCES:
        out[name] = _segment_medians(data[name], starts, ends)
    flagged = np.add.reduceat((data["flags"] != 0).astype(np.int64), starts)
    out["flagged_fraction"] = flagged / counts
    return pd.DataFrame(out)


def make_maps(
    run_output: str | os.PathLike[str],
    order: int,
    *,
    max_exact_rows: int = 20_000_000,
    batch_rows: int = 1_000_000,
) -> pd.DataFrame:
    """HEALPix maps (nested, ICRS, ``order``) of a survey run's output.

    Parameters
    ----------
    run_output
        Output folder of :func:`photodist.survey.run_survey`.
    order
        HEALPix order of the maps (any order 0..29, finer or coarser than the patches).
    max_exact_rows
        Pixels with more stars get histogram medians (bounded memory).
    batch_rows
        Rows read at a time.

    Returns
    -------
    pandas.DataFrame
        Columns ``pixel`` and :data:`MAP_COLUMNS`, one row per occupied pixel in ascending
        order; ``attrs["healpix_order"]`` holds the order.

    Raises
    ------
    photodist.io.CatalogError
        No partitions, a partition without the estimate columns, or rows not sorted by
        ``_healpix_29``.
    """
    if isinstance(order, bool) or not 0 <= int(order) <= SPATIAL_INDEX_ORDER:
        raise ValueError(f"order must be 0..{SPATIAL_INDEX_ORDER}, got {order!r}")
    order = int(order)
    shift = 2 * (SPATIAL_INDEX_ORDER - order)
    files = _partition_files(Path(run_output))
    names = ("flags", *_SOURCES)
    pieces: list[pd.DataFrame] = []
    large: list[dict[str, Any]] = []
    carry_pix = np.empty(0, np.int64)
    carry = {name: np.empty(0) for name in names}
    big: _LargePixel | None = None
    last_pixel = -1

    for table in _iter_batches(files, batch_rows):
        index = table.column(SPATIAL_INDEX_COLUMN).to_numpy().astype(np.int64)
        pixels = index >> shift
        if pixels.size and (np.any(np.diff(pixels) < 0) or pixels[0] < last_pixel):
            raise io.CatalogError(f"{run_output}: rows are not sorted by {SPATIAL_INDEX_COLUMN}")
        if not pixels.size:
            continue
        last_pixel = int(pixels[-1])
        data = {
            "flags": table.column("flags").to_numpy().astype(np.int64),
            **{
                name: table.column(src).to_numpy(zero_copy_only=False).astype(np.float64)
                for name, src in _SOURCES.items()
            },
        }
        if big is not None:
            same = pixels == big.pixel
            if same.any():
                big.add({k: v[same] for k, v in data.items()})
                pixels = pixels[~same]
                data = {k: v[~same] for k, v in data.items()}
            if pixels.size:
                large.append(big.row())
                big = None
        if not pixels.size:
            continue
        pixels = np.concatenate([carry_pix, pixels])
        data = {k: np.concatenate([carry[k], data[k]]) for k in names}
        tail = int(np.searchsorted(pixels, pixels[-1]))  # first row of the last (open) pixel
        if tail:
            pieces.append(_exact_rows(pixels[:tail], {k: v[:tail] for k, v in data.items()}))
        carry_pix = pixels[tail:]
        carry = {k: v[tail:] for k, v in data.items()}
        if carry_pix.size > max_exact_rows:
            big = _LargePixel(int(carry_pix[0]))
            big.add(carry)
            carry_pix = np.empty(0, np.int64)
            carry = {name: np.empty(0) for name in names}
    if big is not None:
        large.append(big.row())
    if carry_pix.size:
        pieces.append(_exact_rows(carry_pix, carry))
    if large:
        pieces.append(pd.DataFrame(large))
    columns = ["pixel", *MAP_COLUMNS]
    maps = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=columns)
    maps = maps[columns].sort_values("pixel", kind="stable").reset_index(drop=True)
    maps = maps.astype({"pixel": np.int64, "n_stars": np.int64})
    for name in (*_SOURCES, "flagged_fraction"):
        maps[name] = maps[name].astype(np.float64)
    maps.attrs["healpix_order"] = order
    return maps


def _number(value: Any) -> float:
    """A summary value as a float (NaN for None or a missing value)."""
    return float("nan") if value is None else float(value)


def patch_maps(run_output: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per finished patch of a survey run: what its pipeline fitted.

    Reads the patch summaries of a run (:func:`photodist.survey.read_patch_info`). Columns
    ``pixel`` and :data:`PATCH_MAP_COLUMNS`: ``prior_feh_shift`` / ``prior_power`` /
    ``prior_evidence_gain`` from the fit of the Galaxy-model prior (0 / 1 / NaN where it was
    not fitted), ``color_scatter`` the colour scatter beyond the quoted errors and
    ``error_floor`` the floor used (:mod:`photodist.error_floor`), ``dust_profile_width`` the
    fitted dust profile's width (NaN without one), ``hybrid`` 1 for a patch whose stars went
    through the networks and 0 for Bayes on every star, and ``seconds`` the pipeline's time.
    ``attrs["healpix_order"]`` holds the patches' order.

    Raises
    ------
    FileNotFoundError
        The run has no patch summaries (no patch finished).
    ValueError
        Patches of more than one order.
    """
    from photodist.survey import PATCH_INFO_DIR, read_patch_info

    infos = read_patch_info(run_output)
    if not infos:
        raise FileNotFoundError(f"{run_output}: no patch summaries in {PATCH_INFO_DIR}/")
    orders = {int(info["order"]) for info in infos.values()}
    if len(orders) > 1:
        raise ValueError(f"{run_output}: patches of several orders {sorted(orders)}")
    rows = []
    for pixel, info in sorted(infos.items()):
        temper = info.get("prior_temper") or {}
        floor = info.get("error_floor") or {}
        profile = info.get("dust_profile") or {}
        rows.append(
            {
                "pixel": pixel,
                "n_rows": int(info["n_rows"]),
                # "hybrid", or "streamed-hybrid" for a patch too large for memory
                "hybrid": 1.0 if str(info.get("mode", "")).endswith("hybrid") else 0.0,
                "prior_feh_shift": float(temper.get("feh_shift", 0.0)),
                "prior_power": float(temper.get("beta", 1.0)),
                "prior_evidence_gain": _number(temper.get("log_evidence_gain")),
                "color_scatter": _number(floor.get("scatter")),
                "error_floor": _number(floor.get("floor")),
                "dust_profile_width": _number(profile.get("sigma"))
                if profile.get("fitted")
                else float("nan"),
                "seconds": _number((info.get("timings_s") or {}).get("total")),
            }
        )
    maps = pd.DataFrame(rows, columns=["pixel", *PATCH_MAP_COLUMNS])
    maps = maps.astype({"pixel": np.int64, "n_rows": np.int64})
    maps.attrs["healpix_order"] = orders.pop()
    return maps


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

#: Column names of either kind of map, by FITS column name.
_BY_FITS_NAME = {c.upper(): c for c in ("pixel", *MAP_COLUMNS, *PATCH_MAP_COLUMNS)}


def _map_order(maps: pd.DataFrame, order: int | None) -> int:
    value = order if order is not None else maps.attrs.get("healpix_order")
    if value is None:
        raise ValueError("the maps' HEALPix order is unknown; pass order=")
    return int(value)


def save_maps(maps: pd.DataFrame, path: str | os.PathLike[str], order: int | None = None) -> Path:
    """Write maps atomically as Parquet (``.parquet``) or a HEALPix FITS table (``.fits``).

    The FITS file is a binary table of the occupied pixels with the HEALPix keywords
    ``PIXTYPE = 'HEALPIX'``, ``ORDERING = 'NESTED'``, ``COORDSYS = 'C'``, ``NSIDE``,
    ``INDXSCHM = 'EXPLICIT'``, ``OBJECT = 'PARTIAL'``; Parquet keeps the order in its metadata.
    Every column is written (the star maps of :func:`make_maps` or the patch maps of
    :func:`patch_maps`).
    """
    final = Path(path)
    order = _map_order(maps, order)
    suffix = final.suffix.lower()
    if suffix not in (".parquet", ".fits"):
        raise ValueError(f"{final}: maps are written as .parquet or .fits")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{secrets.token_hex(6)}-{final.name}")
    try:
        if suffix == ".parquet":
            table = pa.Table.from_pandas(maps, preserve_index=False)
            table = table.cast(io.with_column_info(table.schema, map_column_info))
            meta = {
                b"healpix_order": str(order).encode(),
                b"healpix_ordering": b"NESTED",
                b"healpix_coordsys": b"C",
            }
            pq.write_table(table.replace_schema_metadata(meta), tmp)
        else:
            from astropy.io import fits
            from astropy.table import Table

            table = Table(
                [
                    maps[name].to_numpy(np.int64 if name in _INTEGER_COLUMNS else np.float64)
                    for name in maps.columns
                ],
                names=[str(name).upper() for name in maps.columns],
            )
            hdu = io.fits_hdu_with_units(table, map_column_info)
            hdu.name = "PHOTODIST_MAPS"
            header = hdu.header
            header["PIXTYPE"] = ("HEALPIX", "HEALPix pixelisation")
            header["ORDERING"] = ("NESTED", "pixel ordering scheme")
            header["COORDSYS"] = ("C", "celestial (equatorial ICRS) coordinates")
            header["NSIDE"] = (2**order, "HEALPix resolution parameter")
            header["ORDER"] = (order, "HEALPix order (NSIDE = 2**ORDER)")
            header["INDXSCHM"] = ("EXPLICIT", "pixel indices given in the PIXEL column")
            header["OBJECT"] = ("PARTIAL", "sky coverage")
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load_maps(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read maps written by :func:`save_maps` (``attrs["healpix_order"]`` restored)."""
    p = Path(path)
    if p.suffix.lower() == ".parquet":
        table = pq.read_table(p)
        maps = table.to_pandas()
        maps.attrs["healpix_order"] = int((table.schema.metadata or {})[b"healpix_order"])
        return maps
    from astropy.io import fits

    with fits.open(p) as hdul:
        hdu = hdul["PHOTODIST_MAPS"]
        order = int(hdu.header["ORDER"])
        data = {}
        for fits_name in hdu.columns.names:
            name = _BY_FITS_NAME.get(fits_name, fits_name.lower())
            kind = np.int64 if name in _INTEGER_COLUMNS else np.float64
            data[name] = np.asarray(hdu.data[fits_name]).astype(kind)
    maps = pd.DataFrame(data)
    maps.attrs["healpix_order"] = order
    return maps


# ----------------------------------------------------------------------------------------------
# Mollweide figures
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid_cells(
    order: int, galactic: bool, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell-centre longitudes, latitudes and the HEALPix pixel of every grid cell."""
    import astropy.units as u
    import cdshealpix.nested as chp
    from astropy.coordinates import Latitude, Longitude, SkyCoord

    n_lat, n_lon = shape
    lon = -180.0 + (np.arange(n_lon) + 0.5) * 360.0 / n_lon
    lat = -90.0 + (np.arange(n_lat) + 0.5) * 180.0 / n_lat
    grid_lon, grid_lat = np.meshgrid(lon, lat)
    if galactic:
        eq = SkyCoord(l=grid_lon.ravel() * u.deg, b=grid_lat.ravel() * u.deg, frame="galactic")
        ra, dec = eq.icrs.ra.deg, eq.icrs.dec.deg
    else:
        ra, dec = np.mod(grid_lon.ravel(), 360.0), grid_lat.ravel()
    cells = np.asarray(
        chp.lonlat_to_healpix(Longitude(ra * u.deg), Latitude(dec * u.deg), order), dtype=np.int64
    )
    for array in (lon, lat, cells):
        array.flags.writeable = False
    return lon, lat, cells


def rasterize(
    maps: pd.DataFrame,
    column: str,
    *,
    order: int | None = None,
    galactic: bool = False,
    shape: tuple[int, int] = (600, 1200),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample a map on a regular longitude-latitude grid (cell centres).

    Returns longitudes (deg, ascending from -180 to 180), latitudes (deg, ascending) and the
    values, shape ``shape`` = (n_lat, n_lon), NaN outside the map. Longitudes and latitudes
    are Galactic with ``galactic``, else right ascension (wrapped to [-180, 180)) and
    declination.
    """
    order = _map_order(maps, order)
    lon, lat, cells = _grid_cells(order, bool(galactic), (int(shape[0]), int(shape[1])))
    pixels = maps["pixel"].to_numpy(np.int64)
    values = maps[column].to_numpy(np.float64)
    sort = np.argsort(pixels)
    pixels, values = pixels[sort], values[sort]
    where = np.clip(np.searchsorted(pixels, cells), 0, max(pixels.size - 1, 0))
    out = np.full(cells.size, np.nan)
    if pixels.size:
        hit = pixels[where] == cells
        out[hit] = values[where[hit]]
    return lon, lat, out.reshape(shape)


def plot_mollweide(
    maps: pd.DataFrame,
    column: str,
    path: str | os.PathLike[str] | None = None,
    *,
    order: int | None = None,
    galactic: bool = False,
    title: str | None = None,
    cmap: str | None = None,
    log: bool | None = None,
    symmetric: bool = False,
    shape: tuple[int, int] = (600, 1200),
) -> Any:
    """Draw one map quantity on a Mollweide projection with a colour bar.

    Longitude increases to the left (the sky seen from inside), centred on 0. Star counts
    use a logarithmic colour scale by default; ``symmetric`` centres the colour scale on 0
    (e.g. for a shift). Returns the figure; with ``path`` it is also
    saved (PNG) and closed.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if column == "pixel" or column not in maps.columns:
        names = [c for c in maps.columns if c != "pixel"]
        raise ValueError(f"column must be one of {names}, got {column!r}")
    order = _map_order(maps, order)
    lon, lat, values = rasterize(maps, column, order=order, galactic=galactic, shape=shape)
    log = (column == "n_stars") if log is None else log
    finite = values[np.isfinite(values)]
    norm = None
    if symmetric:
        from matplotlib.colors import Normalize

        extent = float(np.max(np.abs(finite))) if finite.size else 0.0
        extent = extent if extent > 0 else 1.0
        norm = Normalize(vmin=-extent, vmax=extent)
    elif log and finite.size and np.nanmax(finite) > 0:
        positive = finite[finite > 0]
        norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
        values = np.where(values > 0, values, np.nan)
    fig = plt.figure(figsize=(10, 5.6))
    ax = fig.add_subplot(111, projection="mollweide")
    lon_edges = np.radians(np.linspace(180.0, -180.0, lon.size + 1))  # longitude to the left
    lat_edges = np.radians(np.linspace(-90.0, 90.0, lat.size + 1))
    # draw only the rows and columns between the first and last occupied ones (fast figures
    # of partial surveys)
    rows = np.flatnonzero(np.isfinite(values).any(axis=1))
    cols = np.flatnonzero(np.isfinite(values).any(axis=0))
    if rows.size:
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        values = values[r0:r1, c0:c1]
        lat_edges, lon_edges = lat_edges[r0 : r1 + 1], lon_edges[c0 : c1 + 1]
    mesh = ax.pcolormesh(
        lon_edges,
        lat_edges,
        np.ma.masked_invalid(values),
        cmap=cmap or ("viridis" if column != "FeH_median" else "plasma"),
        norm=norm,
        shading="flat",
        rasterized=True,
    )
    ticks = np.arange(-150, 151, 30)
    ax.set_xticks(np.radians(-ticks))
    ax.set_xticklabels([f"{t % 360:d}°" for t in ticks], fontsize=8)
    ax.grid(True, alpha=0.4)
    frame = "Galactic" if galactic else "equatorial (ICRS)"
    ax.set_xlabel("$l$" if galactic else "RA")
    ax.set_ylabel("$b$" if galactic else "Dec")
    bar = fig.colorbar(mesh, ax=ax, orientation="horizontal", pad=0.07, fraction=0.05)
    bar.set_label(MAP_LABELS.get(column, column))
    n_pix = int(np.count_nonzero(np.isfinite(maps[column].to_numpy(np.float64))))
    plural = "" if n_pix == 1 else "s"
    label = MAP_LABELS.get(column, column)
    ax.set_title(
        title or f"{label} — HEALPix order {order}, {n_pix} pixel{plural}, {frame}",
        fontsize=10,
    )
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig


def write_maps(
    run_output: str | os.PathLike[str],
    order: int,
    out_dir: str | os.PathLike[str],
    *,
    fmt: str = "fits",
    galactic: bool = False,
    max_exact_rows: int = 20_000_000,
    shape: tuple[int, int] = (600, 1200),
    overwrite: bool = True,
) -> dict[str, Path]:
    """Make, save and draw all maps of a run (what ``photodist maps`` does).

    Writes ``out_dir/maps_order{order}.{fits|parquet}`` and one Mollweide PNG per quantity
    (``out_dir/{column}_order{order}.png``). A run with patch summaries also gets its patch
    maps (:func:`patch_maps`): ``out_dir/patches_order{patch order}.{fits|parquet}`` and a
    PNG per quantity of :data:`PATCH_FIGURES` (``out_dir/patch_{column}.png``). Returns the
    paths by key (``"maps"``, the column names, and ``"patches"`` and ``"patch_{column}"``).
    With ``overwrite`` False, any of these files already there is a ``FileExistsError``
    before any map is made.
    """
    if fmt not in ("fits", "parquet"):
        raise ValueError(f"fmt must be 'fits' or 'parquet', got {fmt!r}")
    out = Path(out_dir)
    try:
        patches: pd.DataFrame | None = patch_maps(run_output)
    except FileNotFoundError:  # no summaries (e.g. a catalogue written elsewhere)
        patches = None
    paths = {"maps": out / f"maps_order{order}.{fmt}"}
    paths.update({column: out / f"{column}_order{order}.png" for column in MAP_COLUMNS})
    if patches is not None:
        paths["patches"] = out / f"patches_order{patches.attrs['healpix_order']}.{fmt}"
        paths.update({f"patch_{c}": out / f"patch_{c}.png" for c in PATCH_FIGURES})
    there = [str(path) for path in paths.values() if path.exists()]
    if there and not overwrite:
        raise FileExistsError(
            f"{len(there)} of the maps' files are already in {out} ({', '.join(there[:3])}"
            f"{', ...' if len(there) > 3 else ''}); use --overwrite to replace them"
        )
    maps = make_maps(run_output, order, max_exact_rows=max_exact_rows)
    save_maps(maps, paths["maps"])
    for column in MAP_COLUMNS:
        plot_mollweide(maps, column, paths[column], galactic=galactic, shape=shape)
    if patches is None:
        return paths
    save_maps(patches, paths["patches"])
    for column, cmap in PATCH_FIGURES.items():
        symmetric = column == "prior_feh_shift"
        plot_mollweide(
            patches,
            column,
            paths[f"patch_{column}"],
            galactic=galactic,
            cmap=cmap,
            symmetric=symmetric,
            shape=shape,
        )
    return paths
