"""Prior maps p([Fe/H], M_r | r) per sky patch and r-band bin, on the locus grid.

For every r bin (27 centres r = 14.0, 14.5, ..., 27.0; each bin holds the stars within
+-0.5 mag of its centre, so neighbouring bins overlap, as in the TRILEGAL-based maps of the
photo-D paper) the prior is the density of a simulated population in ([Fe/H], M_r):

* a 2D histogram on the locus grid (one cell per grid node),
* smoothed with a Gaussian filter (a binned KDE; reflecting edges) whose bandwidth per axis is
  Scott's rule ``h = sigma n^(-1/6)`` for two dimensions (Scott 1992, Multivariate Density
  Estimation, eq. 6.42),
* floored at ``floor_fraction`` (default 1e-3) times the mean density over the grid points where
  the locus is valid, so that no valid point has zero prior, and normalised to sum to 1 per bin.

Maps are saved as ``.npz`` with the grid axes and the build parameters; loading against a
locus whose grid differs raises :class:`GridMismatchError`. TRILEGAL prior maps in the photo-D
HATS format (rows ``rmag, kde, xGrid, yGrid`` holding 96 x 36 float64 grids) can be read and
interpolated onto the locus grid with :func:`read_trilegal_priors`.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import gaussian_filter

from photodist.io import json_default
from photodist.locus import Locus, build_locus
from photodist.simulate import DEFAULT_R_MAX, Patch, resolve_patch, simulate_patch

#: Centres of the r-band bins (the photo-D paper's 27 bins).
R_BIN_CENTRES: np.ndarray = np.round(np.arange(14.0, 27.0 + 1e-9, 0.5), 6)
#: Half-width of each r bin (mag).
R_BIN_HALF_WIDTH = 0.5
#: Floor of the prior relative to the mean density over valid grid points.
DEFAULT_FLOOR_FRACTION = 1e-3
#: Stars per r bin that :func:`build_patch_priors` aims for.
DEFAULT_MIN_STARS = 20_000
#: Largest sky area (deg^2) whose stars :func:`build_patch_priors` simulates in full, about
#: two HEALPix order-4 patches; a wider patch is simulated at this area's expected counts,
#: spread over its whole area (the same density, memory and time bounded whatever the width)
PRIOR_MAX_AREA_DEG2 = 30.0
#: Smallest cone radius (deg) of :func:`footprint_cone`
MIN_FOOTPRINT_RADIUS = 0.5
#: Fraction of a catalogue's stars the cone of :func:`galaxy_prior_for_stars` holds
FOOTPRINT_COVERAGE = 0.99
#: Widest cone (radius, deg) that :func:`galaxy_prior_for_stars` gives one prior
MAX_PRIOR_RADIUS = 15.0
FORMAT_VERSION = 1
_GRID_ATOL = 1e-6


class GridMismatchError(ValueError):
    """A prior map's ([Fe/H], M_r) grid differs from the locus grid it is used with."""


def _axis_summary(axis: np.ndarray) -> str:
    step = float(np.median(np.diff(axis))) if len(axis) > 1 else 0.0
    return f"{axis[0]:g}..{axis[-1]:g} step {step:g} ({len(axis)} points)"


def locus_valid_mask(locus: Locus) -> np.ndarray:
    """Grid points where the locus has finite colours, shape (n_feh, n_mr)."""
    return np.all(np.isfinite(locus.colors), axis=-1)


def grid_median(axis: np.ndarray, weights: np.ndarray) -> float:
    """Median of a distribution tabulated as weights on grid nodes (linear in the CDF)."""
    weights = np.clip(np.asarray(weights, dtype=float), 0.0, None)
    order = np.argsort(axis)
    axis, weights = np.asarray(axis, dtype=float)[order], weights[order]
    total = weights.sum()
    if total <= 0:
        return float("nan")
    cdf = np.cumsum(weights) / total
    # node k carries the mass between the midpoints to its neighbours
    return float(np.interp(0.5, np.concatenate([[0.0], cdf]), _grid_edges(axis)))


@dataclass
class PriorMap:
    """Normalised prior densities on the ([Fe/H], M_r) locus grid, one map per r bin.

    Attributes
    ----------
    density
        Shape (n_rbins, n_feh, n_mr); each bin sums to 1 (probability per grid point).
    feh, mr
        Ascending grid axes.
    r_centres
        Centres of the r bins, ascending.
    n_stars
        Number of simulated stars behind each bin.
    metadata
        Build parameters (JSON-serialisable): source, bandwidths, floor, patch, seed, ...
    """

    density: np.ndarray
    feh: np.ndarray
    mr: np.ndarray
    r_centres: np.ndarray
    n_stars: np.ndarray
    r_half_width: float = R_BIN_HALF_WIDTH
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.density = np.asarray(self.density, dtype=float)
        self.feh = np.asarray(self.feh, dtype=float)
        self.mr = np.asarray(self.mr, dtype=float)
        self.r_centres = np.asarray(self.r_centres, dtype=float)
        self.n_stars = np.asarray(self.n_stars, dtype=np.int64)
        expected = (len(self.r_centres), len(self.feh), len(self.mr))
        if self.density.shape != expected:
            raise ValueError(f"prior density has shape {self.density.shape}, expected {expected}")
        if not (np.isfinite(self.density).all() and (self.density >= 0.0).all()):
            raise ValueError("prior density must be finite and >= 0 everywhere")
        if self.r_centres.ndim != 1 or not np.isfinite(self.r_centres).all():
            raise ValueError("r-bin centres must be a 1-d array of numbers")
        if np.any(np.diff(self.r_centres) <= 0):
            raise ValueError("r-bin centres must be strictly ascending")
        for name, axis in (("[Fe/H]", self.feh), ("M_r", self.mr)):
            if axis.ndim != 1 or not np.isfinite(axis).all() or np.any(np.diff(axis) <= 0):
                raise ValueError(f"the {name} axis must be strictly ascending numbers")
        if not (float(self.r_half_width) > 0.0):  # NaN too; inf: no range
            raise ValueError(f"r_half_width must be positive, got {self.r_half_width!r}")
        empty = [float(r) for r, d in zip(self.r_centres, self.density, strict=True) if not d.any()]
        if empty:
            raise ValueError(f"prior density is zero everywhere in the r bin(s) {empty}")
        if len(self.n_stars) != len(self.r_centres):
            raise ValueError("n_stars must have one entry per r bin")

    @property
    def n_bins(self) -> int:
        return len(self.r_centres)

    @property
    def log_prior(self) -> np.ndarray:
        """Natural log of :attr:`density` (-inf where the locus is invalid)."""
        with np.errstate(divide="ignore"):
            return np.log(self.density)

    def bin_index(self, r: np.ndarray | float) -> np.ndarray:
        """Index of the nearest r-bin centre for each r, clipped to the first/last bin.

        Ties go to the brighter bin; NaN maps to the last bin.
        """
        r = np.asarray(r, dtype=float)
        if self.n_bins == 1:
            return np.zeros(r.shape, dtype=np.intp)
        idx = np.clip(np.searchsorted(self.r_centres, r), 1, self.n_bins - 1)
        nearer_left = (r - self.r_centres[idx - 1]) <= (self.r_centres[idx] - r)
        return np.where(nearer_left, idx - 1, idx).astype(np.intp)

    def for_r(self, r: np.ndarray | float) -> np.ndarray:
        """Log-prior map of the nearest r bin: (n_feh, n_mr) for a scalar, (N, n_feh, n_mr)."""
        return self.log_prior[self.bin_index(r)]

    def marginal_medians(self) -> tuple[np.ndarray, np.ndarray]:
        """Median [Fe/H] and median M_r of each bin's prior, shapes (n_rbins,)."""
        feh_med = np.array([grid_median(self.feh, d.sum(axis=1)) for d in self.density])
        mr_med = np.array([grid_median(self.mr, d.sum(axis=0)) for d in self.density])
        return feh_med, mr_med

    def check_grid(self, locus: Locus) -> None:
        """Raise :class:`GridMismatchError` unless the map's grid equals the locus grid."""
        problems = []
        for name, mine, theirs in (("[Fe/H]", self.feh, locus.feh), ("M_r", self.mr, locus.mr)):
            if len(mine) != len(theirs) or not np.allclose(mine, theirs, rtol=0, atol=_GRID_ATOL):
                problems.append(
                    f"{name} axis: prior {_axis_summary(mine)} vs locus {_axis_summary(theirs)}"
                )
        if problems:
            raise GridMismatchError(
                "prior map grid does not match the locus grid; rebuild the priors for this "
                "locus (or regrid with read_trilegal_priors / PriorMap.regrid): "
                + "; ".join(problems)
            )

    def regrid(self, locus: Locus, floor_fraction: float = DEFAULT_FLOOR_FRACTION) -> PriorMap:
        """This map interpolated (bilinearly) onto another locus grid, floored and normalised."""
        ff, mm = np.meshgrid(locus.feh, locus.mr, indexing="ij")
        points = np.column_stack([ff.ravel(), mm.ravel()])
        maps = []
        for dens in self.density:
            interp = RegularGridInterpolator(
                (self.feh, self.mr), dens, bounds_error=False, fill_value=0.0
            )
            maps.append(interp(points).reshape(ff.shape))
        density = _floor_and_normalise(np.array(maps), locus_valid_mask(locus), floor_fraction)
        meta = dict(
            self.metadata,
            regridded_from={"feh": _axis_summary(self.feh), "mr": _axis_summary(self.mr)},
        )
        return PriorMap(
            density,
            locus.feh.copy(),
            locus.mr.copy(),
            self.r_centres.copy(),
            self.n_stars.copy(),
            self.r_half_width,
            meta,
        )

    def save(self, path: str | Path) -> Path:
        """Write the map, its grid and build parameters to a compressed ``.npz`` file."""
        path = prior_file_path(path)
        meta = dict(self.metadata, format_version=FORMAT_VERSION)
        np.savez_compressed(
            path,
            density=self.density,
            feh=self.feh,
            mr=self.mr,
            r_centres=self.r_centres,
            n_stars=self.n_stars,
            r_half_width=np.array(self.r_half_width),
            metadata=np.array(json.dumps(meta, sort_keys=True, default=json_default)),
        )
        return path

    @classmethod
    def _from_npz(cls, data: Any, path: Path) -> tuple[PriorMap, dict[str, Any]]:
        """The map and its metadata from an open ``.npz`` (closed on return)."""
        with data:
            missing = {"density", "feh", "mr", "r_centres", "n_stars", "metadata"} - set(data)
            if missing:
                raise ValueError(f"{path} is not a photodist prior map (missing {sorted(missing)})")
            try:
                meta = json.loads(str(data["metadata"]))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: unreadable prior metadata ({exc})") from exc
            prior = cls(
                density=data["density"],
                feh=data["feh"],
                mr=data["mr"],
                r_centres=data["r_centres"],
                n_stars=data["n_stars"],
                r_half_width=float(
                    data["r_half_width"] if "r_half_width" in data else R_BIN_HALF_WIDTH
                ),
                metadata=meta,
            )
        return prior, meta

    @classmethod
    def load(cls, path: str | Path, locus: Locus | None = None) -> PriorMap:
        """Read a map written by :meth:`save` (the same ``path``: ``.npz`` is appended as
        :meth:`save` appends it); with ``locus``, refuse a mismatched grid."""
        path = Path(path)
        if not path.exists() and prior_file_path(path).exists():
            path = prior_file_path(path)
        if not path.exists():
            raise FileNotFoundError(f"prior map file {path} does not exist")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"{path} is not a photodist prior map (an .npz file of `photodist priors`)"
            ) from exc
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is a single array, not a photodist prior map (.npz)")
        try:
            prior, meta = cls._from_npz(data, path)
        except (ValueError, TypeError) as exc:  # e.g. an object array (pickle) inside
            if str(exc).startswith(str(path)):
                raise
            raise ValueError(f"{path} is not a readable photodist prior map ({exc})") from exc
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path} has prior format version {meta['format_version']}; this "
                f"photodist reads up to {FORMAT_VERSION}"
            )
        if locus is not None:
            prior.check_grid(locus)
        return prior


def prior_file_path(path: str | Path) -> Path:
    """The file name :meth:`PriorMap.save` writes for ``path`` (``.npz`` appended if missing)."""
    path = Path(path)
    if path.suffix == ".npz":
        return path
    return path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")


def _floor_and_normalise(
    density: np.ndarray, valid: np.ndarray, floor_fraction: float
) -> np.ndarray:
    """Normalise each map over valid points, floor it, normalise again; 0 where invalid."""
    out = np.where(valid[None], np.clip(density, 0.0, None), 0.0)
    n_valid = max(int(valid.sum()), 1)
    for k in range(len(out)):
        total = out[k].sum()
        out[k] = out[k] / total if total > 0 else valid / n_valid
        floor = floor_fraction / n_valid  # floor_fraction x the mean over valid points
        out[k] = np.where(valid, np.maximum(out[k], floor), 0.0)
        out[k] /= out[k].sum()
    return out


def _grid_edges(axis: np.ndarray) -> np.ndarray:
    mids = 0.5 * (axis[1:] + axis[:-1])
    return np.concatenate(
        [[axis[0] - (mids[0] - axis[0])], mids, [axis[-1] + (axis[-1] - mids[-1])]]
    )


def binned_kde(
    feh: np.ndarray, mr: np.ndarray, locus: Locus
) -> tuple[np.ndarray, tuple[float, float]]:
    """Histogram of stars on the locus grid smoothed with Scott's-rule Gaussian bandwidths.

    Returns the (unnormalised) density (n_feh, n_mr) and the bandwidths (dex, mag). Fewer
    than two stars make no density (zeros: the bin's prior becomes flat), not a spike.
    """
    feh = np.asarray(feh, dtype=float)
    mr = np.asarray(mr, dtype=float)
    hist, _, _ = np.histogram2d(feh, mr, bins=[_grid_edges(locus.feh), _grid_edges(locus.mr)])
    n = len(feh)
    if n < 2:
        return np.zeros_like(hist), (locus.feh_step, locus.mr_step)
    scott = n ** (-1.0 / 6.0)
    h_feh = max(float(np.std(feh)) * scott, locus.feh_step)
    h_mr = max(float(np.std(mr)) * scott, locus.mr_step)
    smooth = gaussian_filter(
        hist, sigma=(h_feh / locus.feh_step, h_mr / locus.mr_step), mode="reflect", truncate=4.0
    )
    return smooth, (h_feh, h_mr)


def build_priors(
    catalog: pd.DataFrame | Sequence[pd.DataFrame],
    locus: Locus | None = None,
    r_centres: Sequence[float] = R_BIN_CENTRES,
    r_half_width: float = R_BIN_HALF_WIDTH,
    floor_fraction: float = DEFAULT_FLOOR_FRACTION,
    r_column: str = "rmag_true",
    feh_column: str = "FeH_true",
    mr_column: str = "Mr_true",
    metadata: dict[str, Any] | None = None,
) -> PriorMap:
    """Prior map from simulated stars with true [Fe/H], M_r and r.

    Parameters
    ----------
    catalog
        A catalogue (e.g. from :func:`photodist.simulate.simulate_patch`), or several whose
        stars are pooled. A catalogue's attribute ``attrs["photodist_simulation"]`` with
        ``r_min``/``r_max`` marks its magnitude coverage: it only contributes to bins it covers
        completely.
    locus
        Defines the grid (default locus).
    r_centres, r_half_width
        r bins: stars with ``|r - centre| <= r_half_width``.
    floor_fraction
        Floor relative to the mean density over valid grid points.
    r_column, feh_column, mr_column
        Column names of the apparent r magnitude (noiseless, with extinction) and the truth.
    metadata
        Extra entries stored with the map.
    """
    locus = locus or build_locus()
    catalogs = [catalog] if isinstance(catalog, pd.DataFrame) else list(catalog)
    centres = np.asarray(r_centres, dtype=float)
    maps, counts, bandwidths = [], [], []
    columns = []
    for frame in catalogs:
        for col in (r_column, feh_column, mr_column):
            if col not in frame.columns:
                raise KeyError(f"catalogue lacks column {col!r}")
        sim = frame.attrs.get("photodist_simulation", {})
        lo = sim.get("r_min")
        hi = sim.get("r_max")
        columns.append(
            (
                frame[r_column].to_numpy(float),
                frame[feh_column].to_numpy(float),
                frame[mr_column].to_numpy(float),
                -np.inf if lo is None else lo,
                np.inf if hi is None else hi,
            )
        )
    for centre in centres:
        fehs, mrs = [], []
        for r, feh, mr, lo, hi in columns:
            if lo > centre - r_half_width + 1e-9 or hi < centre + r_half_width - 1e-9:
                continue  # this catalogue does not cover the whole bin
            sel = np.abs(r - centre) <= r_half_width
            fehs.append(feh[sel])
            mrs.append(mr[sel])
        feh_all = np.concatenate(fehs) if fehs else np.empty(0)
        mr_all = np.concatenate(mrs) if mrs else np.empty(0)
        dens, bw = binned_kde(feh_all, mr_all, locus)
        maps.append(dens)
        counts.append(len(feh_all))
        bandwidths.append(bw)
    density = _floor_and_normalise(np.array(maps), locus_valid_mask(locus), floor_fraction)
    meta = {
        "source": "photodist",
        "smoothing": "histogram + Gaussian filter, Scott's rule, reflecting edges",
        "bandwidth_feh": [b[0] for b in bandwidths],
        "bandwidth_mr": [b[1] for b in bandwidths],
        "floor_fraction": floor_fraction,
        "r_column": r_column,
    }
    meta.update(metadata or {})
    return PriorMap(
        density,
        locus.feh.copy(),
        locus.mr.copy(),
        centres,
        np.array(counts),
        float(r_half_width),
        meta,
    )


def build_patch_priors(
    pixel: int | None = None,
    order: int = 4,
    locus: Locus | None = None,
    seed: int = 0,
    *,
    cone: tuple[float, float, float] | Patch | None = None,
    min_stars: int = DEFAULT_MIN_STARS,
    max_oversample: float = 1.0e5,
    max_area_deg2: float = PRIOR_MAX_AREA_DEG2,
    ar_inf: float | None = None,
    r_centres: Sequence[float] = R_BIN_CENTRES,
    r_half_width: float = R_BIN_HALF_WIDTH,
    floor_fraction: float = DEFAULT_FLOOR_FRACTION,
    **simulate_kwargs: Any,
) -> PriorMap:
    """Simulate a patch (truth only) and build its prior map.

    The patch is simulated once over the full r range of the bins. Bins with fewer than
    ``min_stars`` stars (the bright ones, for a small patch) get extra simulations restricted
    to that bin with the expected counts multiplied (``oversample``) until they reach
    ``min_stars`` (at most ``max_oversample`` patch areas, or ``max_oversample`` deg^2 for a
    patch smaller than 1 deg^2): the same sightlines, a proportionally larger area. Each bin
    pools all runs that cover it; bins still short of ``min_stars`` are listed in the
    metadata (``bins_below_min_stars``). A patch wider than
    ``max_area_deg2`` is simulated at that area's expected counts (a random sample of its
    stars, over its whole area), which bounds memory and time for any footprint.
    """
    locus = locus or build_locus()
    area_deg2 = resolve_patch(pixel, order, cone).area_deg2
    # the patch areas the base simulation stands for: below 1 for a wide patch
    base_fraction = min(1.0, max_area_deg2 / area_deg2)
    # a tiny patch (a high-order pixel) may borrow its sightlines' stars from up to
    # max_oversample deg^2, not max_oversample of its own few arcsec^2
    area_cap = max_oversample * max(1.0, 1.0 / area_deg2)
    centres = np.asarray(r_centres, dtype=float)
    r_lo, r_hi = float(centres[0] - r_half_width), float(centres[-1] + r_half_width)
    common = {
        "pixel": pixel,
        "order": order,
        "cone": cone,
        "locus": locus,
        "ar_inf": ar_inf,
        "truth_only": True,
        **simulate_kwargs,
    }
    base = simulate_patch(seed=seed, r_max=r_hi, r_min=r_lo, oversample=base_fraction, **common)
    r = base["rmag_true"].to_numpy()
    runs = [base]
    extra: dict[str, float] = {}
    short: dict[str, int] = {}
    for k, centre in enumerate(centres):
        have = int(np.count_nonzero(np.abs(r - centre) <= r_half_width))
        area_factor = base_fraction  # patch areas simulated so far for this bin
        attempt = 0
        while have < min_stars and area_factor < area_cap and attempt < 5:
            # stars per unit area so far set the next factor; for a bin still empty, the
            # model's expected count in one patch area (or one star in all so far)
            rate = max(have, 1) / area_factor
            if have == 0:
                expected = simulate_patch(
                    seed=0,
                    r_min=float(centre - r_half_width),
                    r_max=float(centre + r_half_width),
                    n_max=0,
                    **common,
                ).attrs["photodist_simulation"]["expected_stars"]
                rate = expected if expected > 0 else rate
            factor = min(area_cap - area_factor, 1.2 * (min_stars - have) / rate)
            sub_seed = int(np.random.SeedSequence([seed, k + 1, attempt]).generate_state(1)[0])
            run = simulate_patch(
                seed=sub_seed,
                r_min=float(centre - r_half_width),
                r_max=float(centre + r_half_width),
                oversample=factor,
                **common,
            )
            runs.append(run)
            have += len(run)
            area_factor += factor
            attempt += 1
        if area_factor > base_fraction:
            extra[f"{centre:g}"] = area_factor
        if have < min_stars:
            short[f"{centre:g}"] = have
    sim = base.attrs["photodist_simulation"]
    metadata = {
        "patch": sim["patch"],
        "area_deg2": sim["area_deg2"],
        "seed": seed,
        "oversample_per_bin": extra,
        "bins_below_min_stars": short,
        "simulated_area_fraction": base_fraction,
        "min_stars": min_stars,
        "ar_inf": ar_inf,
        "galaxy": sim["galaxy"],
        "dust": sim["dust"],
        "r_max_simulated": r_hi,
    }
    return build_priors(runs, locus, centres, r_half_width, floor_fraction, metadata=metadata)


def _trilegal_files(path: Path) -> dict[int, Path]:
    """The partition files of a TRILEGAL prior catalogue by pixel ({-1: path} for a file).

    A pixel number names a sky patch only with its order: a catalogue that holds one number
    in two files (two orders, or two copies) is refused, naming them."""
    if path.is_file():
        return {-1: path}
    files = sorted(path.glob("**/Norder=*/Dir=*/Npix=*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no HATS partition files (Norder=*/Dir=*/Npix=*.parquet) in {path}"
        )
    by_pixel: dict[int, list[Path]] = {}
    for file in files:
        by_pixel.setdefault(int(file.stem.split("=")[1]), []).append(file)
    clashes = {pixel: found for pixel, found in by_pixel.items() if len(found) > 1}
    if clashes:
        pixel, found = next(iter(clashes.items()))
        names = ", ".join(str(f.relative_to(path)) for f in found)
        raise ValueError(
            f"{path} holds pixel {pixel} in {len(found)} files ({names}): a pixel number is "
            "ambiguous there; give the partition file itself"
        )
    return {pixel: found[0] for pixel, found in by_pixel.items()}


def _trilegal_map(
    frame: pd.DataFrame, locus: Locus, floor_fraction: float, source: str
) -> PriorMap:
    for col in ("rmag", "kde", "xGrid", "yGrid"):
        if col not in frame.columns:
            raise ValueError(f"TRILEGAL prior table {source} lacks column {col!r}")
    r_bins = pd.to_numeric(frame["rmag"], errors="coerce").to_numpy(float)
    if not np.isfinite(r_bins).all():
        raise ValueError(f"TRILEGAL prior table {source} has r bins that are not numbers")
    frame = frame.sort_values("rmag")
    ff, mm = np.meshgrid(locus.feh, locus.mr, indexing="ij")
    points = np.column_stack([ff.ravel(), mm.ravel()])
    maps = []
    for _, row in frame.iterrows():
        grids = [np.frombuffer(row[c], dtype=np.float64) for c in ("kde", "xGrid", "yGrid")]
        if any(g.size != 96 * 36 for g in grids):
            raise ValueError(f"TRILEGAL prior grids in {source} are not 96 x 36 float64")
        kde, x_grid, y_grid = (g.reshape(96, 36) for g in grids)
        if not (np.isfinite(kde).all() and (kde >= 0.0).all() and kde.any()):
            raise ValueError(
                f"TRILEGAL prior map of r = {row['rmag']} in {source}: its densities must be "
                "finite, non-negative and not all zero"
            )
        feh_axis, mr_axis = x_grid[0], y_grid[:, 0]  # [Fe/H] along columns, M_r along rows
        if not (np.allclose(x_grid, feh_axis[None, :]) and np.allclose(y_grid, mr_axis[:, None])):
            raise ValueError(f"TRILEGAL prior grids in {source} are not a regular mesh")
        order = np.argsort(mr_axis)  # their M_r axis descends
        interp = RegularGridInterpolator(
            (feh_axis, mr_axis[order]), kde[order].T, bounds_error=False, fill_value=0.0
        )
        maps.append(interp(points).reshape(ff.shape))
    density = _floor_and_normalise(np.array(maps), locus_valid_mask(locus), floor_fraction)
    meta = {
        "source": "trilegal",
        "file": Path(source).name,
        "floor_fraction": floor_fraction,
        "interpolation": "bilinear from the 96 x 36 TRILEGAL grid; [Fe/H] > locus range dropped",
    }
    return PriorMap(
        density,
        locus.feh.copy(),
        locus.mr.copy(),
        frame["rmag"].to_numpy(float),
        np.zeros(len(frame), dtype=np.int64),
        R_BIN_HALF_WIDTH,
        meta,
    )


def read_trilegal_prior_catalog(
    path: str | Path, locus: Locus | None = None, floor_fraction: float = DEFAULT_FLOOR_FRACTION
) -> dict[int, PriorMap]:
    """All TRILEGAL prior maps of a HATS catalogue, keyed by pixel, on the locus grid."""
    locus = locus or build_locus()
    files = _trilegal_files(Path(path))
    return {
        pix: _trilegal_map(pd.read_parquet(f), locus, floor_fraction, str(f))
        for pix, f in files.items()
    }


def read_trilegal_priors(
    path: str | Path,
    locus: Locus | None = None,
    pixel: int | None = None,
    floor_fraction: float = DEFAULT_FLOOR_FRACTION,
) -> PriorMap:
    """Read one TRILEGAL prior map (photo-D HATS format) and interpolate it onto the locus grid.

    Parameters
    ----------
    path
        A partition Parquet file, or a HATS catalogue directory (then give ``pixel`` unless
        it holds a single pixel).
    locus
        Target grid (default locus).
    pixel
        HEALPix pixel to read from a catalogue directory.
    """
    locus = locus or build_locus()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"TRILEGAL prior path {path} does not exist")
    files = _trilegal_files(path)
    file_pixel = None
    if path.is_file():
        chosen = files[-1]
        match = re.fullmatch(r"Npix=(\d+)", path.stem)
        file_pixel = int(match.group(1)) if match else None
        if pixel is not None and pixel != file_pixel:
            raise ValueError(
                f"{path} is "
                + ("a single prior file" if file_pixel is None else f"pixel {file_pixel}")
                + f", not pixel {pixel}; give its folder to choose a pixel"
            )
    elif pixel is not None:
        if pixel not in files:
            raise ValueError(f"pixel {pixel} not in {path}; it holds pixels {sorted(files)}")
        chosen = files[pixel]
    elif len(files) == 1:
        chosen = next(iter(files.values()))
    else:
        raise ValueError(
            f"{path} holds pixels {sorted(files)}; choose one (the pixel: --trilegal-pixel of "
            "bayes and run, --pixel of priors --trilegal)"
        )
    prior = _trilegal_map(pd.read_parquet(chosen), locus, floor_fraction, str(chosen))
    prior.metadata["pixel"] = (
        pixel if pixel is not None else (file_pixel if path.is_file() else next(iter(files)))
    )
    return prior


__all__ = [
    "DEFAULT_R_MAX",
    "R_BIN_CENTRES",
    "GridMismatchError",
    "PriorMap",
    "binned_kde",
    "build_patch_priors",
    "build_priors",
    "grid_median",
    "locus_valid_mask",
    "prior_file_path",
    "read_trilegal_prior_catalog",
    "read_trilegal_priors",
]


#: Footprint radius (deg) beyond which one prior for a whole catalogue blurs lines of sight
#: that differ in the Galaxy model: the paper's patches are HEALPix order 4 (~13 deg^2, a
#: cone of radius ~2 deg); a radius of 4 deg already spans ~4 of them.
WIDE_FOOTPRINT_RADIUS = 4.0


def _footprint(ra: np.ndarray, dec: np.ndarray, coverage: float) -> tuple[Any, np.ndarray, float]:
    """Centre (ICRS), the valid stars' distances from it (deg) and the cone's radius.

    The radius reaches the farthest star within 1.5 times the radius holding the fraction
    ``coverage`` of the stars plus 0.5 deg: every star of a compact footprint, but not a few
    stray ones far from it. The centre is the normalised mean of the unit vectors, recomputed
    from the stars within the radius, so that stray stars do not move it either."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    if ra.shape != dec.shape:
        raise ValueError(f"ra and dec must have the same shape, got {ra.shape} and {dec.shape}")
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    if not ok.any():
        raise ValueError("no valid (ra, dec) positions to place the prior on the sky")
    stars = SkyCoord(ra=ra[ok] * u.deg, dec=dec[ok] * u.deg)
    # a star listed several times counts once: copies would move the centre, and the prior
    distinct = np.unique(np.column_stack([ra[ok], dec[ok]]), axis=0, return_index=True)[1]
    xyz = stars.cartesian.xyz.value[:, np.sort(distinct)]
    core = np.ones(xyz.shape[1], dtype=bool)
    for _ in range(2):
        mean = xyz[:, core].mean(axis=1)
        centre = SkyCoord(x=mean[0], y=mean[1], z=mean[2], representation_type="cartesian")
        centre = SkyCoord(centre.represent_as("unitspherical"), frame="icrs")
        distance = stars.separation(centre).deg
        own = distance[np.sort(distinct)]
        held = float(np.quantile(own, coverage)) if coverage < 1.0 else own.max()
        core = own <= 1.5 * held + 0.5
        radius = float(own[core].max())
        if core.all():  # no stray star: recomputing the centre would give the same
            break
    return centre, distance, radius


def footprint_cone(
    ra: np.ndarray,
    dec: np.ndarray,
    min_radius: float = MIN_FOOTPRINT_RADIUS,
    coverage: float = 1.0,
) -> tuple[float, float, float]:
    """Galactic cone (l, b, radius in degrees) covering a set of ICRS positions.

    The centre is the normalised mean of the unit vectors; the radius reaches the farthest
    star (at least ``min_radius``). With ``coverage`` < 1, stars beyond 1.5 times the radius
    holding that fraction of them, plus 0.5 deg, are left out of both (stray positions).
    Positions that are not finite or have |dec| > 90 are ignored.
    """
    centre, _, radius = _footprint(ra, dec, coverage)
    return _galactic_cone(centre, max(radius, min_radius))


def _galactic_cone(centre: Any, radius: float) -> tuple[float, float, float]:
    gal = centre.galactic
    return float(gal.l.deg), float(gal.b.deg), radius


def galaxy_prior_for_stars(
    ra: np.ndarray,
    dec: np.ndarray,
    locus: Locus | None = None,
    seed: int = 0,
    ar_inf: float | None = None,
    **kwargs: Any,
) -> PriorMap:
    """Galaxy-model prior map for the sky area covered by a catalogue's stars.

    Builds :func:`build_patch_priors` for the cone of :func:`footprint_cone` with
    ``coverage=FOOTPRINT_COVERAGE``, so that a few stray positions (sentinels, mistakes) do
    not widen it; ``metadata["n_outside_cone"]`` counts the others, which get the
    same prior. ``ar_inf`` is the sightline extinction A_r(∞) (e.g. the median SFD value of
    the stars), default: the Galaxy model's dust map.

    Raises
    ------
    ValueError
        Without a valid position, or for a cone wider than :data:`MAX_PRIOR_RADIUS`.
    """
    centre, distance, radius = _footprint(ra, dec, FOOTPRINT_COVERAGE)
    cone = _galactic_cone(centre, max(radius, MIN_FOOTPRINT_RADIUS))
    if cone[2] > MAX_PRIOR_RADIUS:
        raise ValueError(
            f"the stars span a cone of radius {cone[2]:.1f} deg, "
            f"wider than {MAX_PRIOR_RADIUS:g} deg: one Galaxy-model prior cannot stand for so "
            "many lines of sight (`photodist survey` gives each HEALPix patch its own)"
        )
    prior = build_patch_priors(locus=locus, seed=seed, cone=cone, ar_inf=ar_inf, **kwargs)
    prior.metadata["footprint_cone"] = list(cone)
    prior.metadata["n_outside_cone"] = int(np.count_nonzero(distance > cone[2]))
    return prior
