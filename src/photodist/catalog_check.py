"""Check a catalogue before a run: what photodist will read from it and what it will flag.

:func:`check_catalog` streams a catalogue (bounded memory, any size) and reports, without any
fit:

* the columns it reads (including those found under other names,
  :func:`photodist.bands.resolve_columns`), or why it cannot be read;
* per band the usable measurements, the median error and the measurements with SNR > 5;
  per colour the usable fraction (what :func:`photodist.bands.photometry_from_frame` keeps);
* the rows that will be flagged whatever the fit: no r (``NO_R``), fewer than two usable
  colours (``TOO_FEW_COLORS``), an unusable colour (``COLOR_UNUSABLE``), r beyond the
  Galaxy-model prior's r bins (``R_OUTSIDE_PRIOR``);
* the r distribution, the dust-map values and the sky footprint in HEALPix patches (stars
  per patch, and which patches are large enough for the networks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photodist import io
from photodist.bands import (
    GALACTIC_COLUMNS,
    MAX_PLAUSIBLE_MAGNITUDE,
    ColumnMap,
    MissingColumnError,
    band_photometry,
    get_band_set,
    photometry_from_frame,
    position_columns,
    resolve_columns,
    sky_positions,
    unusable_measurements,
)
from photodist.evaluate import max_error_for_snr
from photodist.priors import R_BIN_CENTRES, R_BIN_HALF_WIDTH

__all__ = ["CatalogCheck", "check_catalog"]

#: Quantiles reported for r, the band errors and the dust-map values.
QUANTILES: tuple[float, ...] = (0.0, 0.01, 0.5, 0.99, 1.0)
#: r range of the Galaxy-model prior's r bins; stars beyond it are flagged ``R_OUTSIDE_PRIOR``.
GALAXY_PRIOR_R_RANGE: tuple[float, float] = (
    float(R_BIN_CENTRES[0] - R_BIN_HALF_WIDTH),
    float(R_BIN_CENTRES[-1] + R_BIN_HALF_WIDTH),
)


class _Quantiles:
    """Quantiles of a stream of values from a fine histogram on [lo, hi] (values beyond it
    count at the ends; the extremes are exact)."""

    def __init__(self, lo: float, hi: float, step: float) -> None:
        self.lo, self.step = lo, step
        self.counts = np.zeros(int(round((hi - lo) / step)) + 1, dtype=np.int64)
        self.minimum, self.maximum = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        index = np.clip(((values - self.lo) / self.step).astype(np.int64), 0, len(self.counts) - 1)
        self.counts += np.bincount(index, minlength=len(self.counts))

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        total = int(self.counts.sum())
        if total == 0:
            return None
        cumulative = np.cumsum(self.counts)
        out = []
        for q in qs:
            if q <= 0.0:
                out.append(self.minimum)
            elif q >= 1.0:
                out.append(self.maximum)
            else:
                k = int(np.searchsorted(cumulative, q * total, side="left"))
                centre = self.lo + (k + 0.5) * self.step
                out.append(float(min(max(centre, self.minimum), self.maximum)))
        return out


@dataclass
class CatalogCheck:
    """What :func:`check_catalog` found (see the module docstring).

    Counts are numbers of rows; ``*_quantiles`` are the :data:`QUANTILES` (None without any
    value); ``stars_per_patch`` maps nested HEALPix pixels (ICRS, ``order``) with rows to
    the number of usable stars there (finite r and r error and every colour usable: what
    `run` and `survey` count to choose between networks and Bayes on every star).
    """

    path: str
    band_set: str
    n_rows: int = 0
    error: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    band_usable: dict[str, int] = field(default_factory=dict)
    band_snr5: dict[str, int] = field(default_factory=dict)
    band_error_median: dict[str, float | None] = field(default_factory=dict)
    color_usable: dict[str, int] = field(default_factory=dict)
    n_no_r: int = 0
    n_too_few_colors: int = 0
    n_color_unusable: int = 0
    n_snr5_all_bands: int = 0
    r_quantiles: list[float] | None = None
    prior_r_range: tuple[float, float] = GALAXY_PRIOR_R_RANGE
    n_r_outside_prior: int = 0
    dust_column: str | None = None
    n_dust_valid: int = 0
    dust_quantiles: list[float] | None = None
    position_columns: tuple[str, str] | None = None
    n_no_position: int = 0
    order: int = 4
    stars_per_patch: dict[int, int] = field(default_factory=dict)

    @property
    def readable(self) -> bool:
        """Whether the estimators can read the catalogue as it is."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (patch keys as strings)."""
        out = asdict(self)
        out["stars_per_patch"] = {str(k): v for k, v in self.stars_per_patch.items()}
        return out

    def lines(self, n_train: int = 10_000, min_train: int | None = None) -> list[str]:
        """A readable report; patches with more than ``n_train`` usable stars get networks,
        as ``run`` decides: none when ``n_train`` is below ``min_train`` (default
        ``PipelineConfig.min_train``)."""
        if min_train is None:
            from photodist.pipeline import PipelineConfig

            min_train = PipelineConfig().min_train
        n = self.n_rows

        def share(count: int) -> str:
            return f"{count:,} ({100.0 * count / n:.1f} %)" if n else f"{count:,}"

        out = [f"catalogue: {self.path}, {n:,} rows, band set {self.band_set}"]
        if self.aliases:
            found = ", ".join(f"{k}={v}" for k, v in self.aliases.items())
            out.append(f"columns found under other names: {found}")
        for key, names in self.ambiguous.items():
            out.append(f"several columns could be {key}: {', '.join(names)} (none taken)")
        if self.error is not None:
            out.append(f"cannot be read as it is: {self.error}")
            return out
        out.append("band  usable rows        median error  SNR > 5")
        for band, usable in self.band_usable.items():
            median = self.band_error_median[band]
            error_text = "-" if median is None else f"{median:.3f}"
            out.append(
                f"{band:<5} {share(usable):<18} {error_text:<13} {share(self.band_snr5[band])}"
            )
        out.append(
            "usable colours: " + ", ".join(f"{c} {share(k)}" for c, k in self.color_usable.items())
        )
        out.append(f"SNR > 5 in every band: {share(self.n_snr5_all_bands)}")
        out.append(
            f"flagged whatever the fit: no r (NO_R) {share(self.n_no_r)}; fewer than two "
            f"usable colours (TOO_FEW_COLORS) {share(self.n_too_few_colors)}; a colour "
            f"unusable (COLOR_UNUSABLE) {share(self.n_color_unusable)}"
        )
        if self.r_quantiles is not None:
            lo, hi = self.prior_r_range
            out.append(
                "r min / 1 % / median / 99 % / max: "
                + " / ".join(f"{v:.2f}" for v in self.r_quantiles)
                + f"; beyond the Galaxy-model prior's {lo}-{hi} (R_OUTSIDE_PRIOR): "
                + share(self.n_r_outside_prior)
            )
        if self.dust_column is None:
            out.append("dust map: none (the A_r prior of every star spans 0 to its maximum)")
        else:
            text = f"dust map: {self.dust_column!r}, valid for {share(self.n_dust_valid)}"
            if self.dust_quantiles is not None:
                text += "; A_r min / 1 % / median / 99 % / max: " + " / ".join(
                    f"{v:.3f}" for v in self.dust_quantiles
                )
            out.append(text)
        if self.position_columns is None:
            out.append(
                "position: none (a Galaxy-model prior cannot be placed: give a prior file, "
                "TRILEGAL maps or the flat prior)"
            )
            return out
        counts = np.array(sorted(self.stars_per_patch.values()), dtype=np.int64)
        lon, lat = self.position_columns
        text = f"position: {lon}/{lat}; {len(counts):,} HEALPix order-{self.order} patches"
        if len(counts):
            text += (
                f", usable stars (r and every colour) per patch min / median / max "
                f"{counts.min():,} / {int(np.median(counts)):,} / {counts.max():,}; "
                + (
                    f"{int((counts > n_train).sum())} with more than {n_train:,} (networks), "
                    "the others Bayes on every star"
                    if n_train >= min_train
                    else f"Bayes on every star (n_train {n_train:,} is below the {min_train:,} "
                    "labels networks need)"
                )
            )
        out.append(text)
        if self.n_no_position:
            out.append(
                f"rows without a valid position: {share(self.n_no_position)} (`photodist "
                "survey` needs one for every row to place it in a patch)"
            )
        if len(counts) > 1:
            galactic = (lon, lat) in GALACTIC_COLUMNS
            out.append(
                "more than one patch: `photodist survey` gives each its own prior (`run` "
                "places one prior over the whole footprint)"
                + (
                    f"; it needs ra/dec columns, and this catalogue has {lon}/{lat}"
                    if galactic
                    else ""
                )
            )
        return out


def _healpix(ra: np.ndarray, dec: np.ndarray, order: int) -> np.ndarray:
    import astropy.units as u
    import cdshealpix.nested as chp
    from astropy.coordinates import Latitude, Longitude

    return np.asarray(
        chp.lonlat_to_healpix(Longitude(ra * u.deg), Latitude(dec * u.deg), order), dtype=np.int64
    )


def check_catalog(
    path: str | Path,
    band_set: str = "lsst",
    columns: ColumnMap | None = None,
    order: int = 4,
    batch_size: int = 1_000_000,
    prior_r_range: tuple[float, float] = GALAXY_PRIOR_R_RANGE,
    progress: Callable[[int], None] | None = None,
) -> CatalogCheck:
    """Stream the catalogue at ``path`` and report what the estimators will make of it.

    ``progress``, if given, is called with each batch's row count. A catalogue the
    estimators cannot read (a required column missing) gives a result with ``error`` set
    rather than an exception.

    Raises
    ------
    photodist.io.CatalogError
        The file cannot be read at all.
    """
    bands = get_band_set(band_set)
    available = io.catalog_columns(path)
    resolution = resolve_columns(columns or ColumnMap(), available, bands)
    cols = resolution.columns
    check = CatalogCheck(
        path=str(path),
        band_set=bands.name,
        columns=cols.to_mapping(),
        aliases=resolution.aliases,
        ambiguous=resolution.ambiguous,
        order=order,
        prior_r_range=tuple(prior_r_range),
    )
    try:
        needed, _ = cols.photometry_sources(bands, available)
    except MissingColumnError as exc:
        check.error = str(exc)
        check.n_rows = io.count_rows(path)
        return check
    dust = cols.dust_columns(available)
    check.dust_column = dust[0] if dust else None
    try:
        check.position_columns = position_columns(available, cols)
    except MissingColumnError as exc:
        check.error = str(exc.args[0])
        check.n_rows = io.count_rows(path)
        return check
    read = list(dict.fromkeys(needed + dust + list(check.position_columns or ())))
    r_quantiles = _Quantiles(0.0, MAX_PLAUSIBLE_MAGNITUDE, 0.01)
    dust_quantiles = _Quantiles(0.0, 10.0, 0.001)
    error_quantiles = {b: _Quantiles(0.0, 1.0, 0.0005) for b in bands.bands}
    check.band_usable = dict.fromkeys(bands.bands, 0)
    check.band_snr5 = dict.fromkeys(bands.bands, 0)
    check.color_usable = dict.fromkeys(bands.colors, 0)
    snr_limit = max_error_for_snr(5.0)
    patches: dict[int, int] = {}
    for frame in io.iter_catalog_batches(path, batch_size=batch_size, columns=read):
        n = len(frame)
        check.n_rows += n
        if n == 0:
            continue
        mags, errs, has_mag = band_photometry(frame, bands, cols)
        phot = photometry_from_frame(frame, bands, cols, measurements=(mags, errs))
        bad_err, bad = unusable_measurements(mags, errs)
        usable = ~bad | (~bad_err & ~has_mag)  # a band without a magnitude: its error
        snr5 = usable & (errs < snr_limit)
        for k, band in enumerate(bands.bands):
            check.band_usable[band] += int(usable[:, k].sum())
            check.band_snr5[band] += int(snr5[:, k].sum())
            error_quantiles[band].add(errs[usable[:, k], k])
        colour_ok = np.isfinite(phot.colors)
        for k, colour in enumerate(bands.colors):
            check.color_usable[colour] += int(colour_ok[:, k].sum())
        has_r = np.isfinite(phot.r)
        check.n_no_r += int((~has_r).sum())
        check.n_too_few_colors += int((has_r & (colour_ok.sum(axis=1) < 2)).sum())
        check.n_color_unusable += int((~colour_ok).any(axis=1).sum())
        check.n_snr5_all_bands += int(snr5.all(axis=1).sum())
        r_quantiles.add(phot.r)
        lo, hi = prior_r_range
        check.n_r_outside_prior += int((has_r & ((phot.r < lo) | (phot.r > hi))).sum())
        if phot.dust is not None:
            valid = np.isfinite(phot.dust)
            check.n_dust_valid += int(valid.sum())
            dust_quantiles.add(phot.dust)
        if check.position_columns is not None:
            ra, dec = sky_positions(frame, cols)
            ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
            check.n_no_position += int((~ok).sum())
            # what `run`/`survey` count to choose networks: finite r and every colour usable
            complete = np.isfinite(phot.r) & np.isfinite(phot.r_err)
            complete &= (np.isfinite(phot.colors) & np.isfinite(phot.color_errors)).all(axis=1)
            pixels, inverse = np.unique(_healpix(ra[ok], dec[ok], order), return_inverse=True)
            counts = np.bincount(inverse, weights=complete[ok], minlength=len(pixels))
            for pixel, count in zip(pixels.tolist(), counts.tolist(), strict=True):
                patches[pixel] = patches.get(pixel, 0) + int(count)
        if progress is not None:
            progress(n)
    check.band_error_median = {b: _median(q) for b, q in error_quantiles.items()}
    check.r_quantiles = r_quantiles.quantiles(QUANTILES)
    check.dust_quantiles = dust_quantiles.quantiles(QUANTILES)
    check.stars_per_patch = dict(sorted(patches.items()))
    return check


def _median(quantiles: _Quantiles) -> float | None:
    values = quantiles.quantiles([0.5])
    return None if values is None else values[0]
