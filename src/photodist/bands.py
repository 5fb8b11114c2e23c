"""Photometric systems: band sets, colours, extinction ratios and catalogue column mapping.

Extinction ratios A_band / A_r: u, g, r, i, z from Berry et al. (2012, ApJ 757, 166, Table 1);
y from the Cardelli, Clayton & Mathis (1989) law.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: Default extinction ratios A_band / A_r.
DEFAULT_EXTINCTION_RATIOS: dict[str, float] = {
    "u": 1.810,
    "g": 1.400,
    "r": 1.000,
    "i": 0.759,
    "z": 0.561,
    "y": 0.484,
}

#: Magnitudes above this (or below its negative) are survey sentinels such as 99 / -99.
MAX_PLAUSIBLE_MAGNITUDE = 40.0
#: A colour whose error exceeds this (mag) carries no information and is treated as missing.
MAX_USABLE_COLOR_ERROR = 1.0
#: AB zero points of flux units: m = ZP - 2.5 log10(flux); ZP = 8.90 for Jy (m_AB = -2.5
#: log10(f_nu / 3631 Jy), Oke & Gunn 1983), 31.4 for nJy, the unit of Rubin's catalogues.
FLUX_ZERO_POINTS: dict[str, float] = {"nJy": 31.4, "uJy": 23.9, "mJy": 16.4, "Jy": 8.9}
#: A_r / E(B-V) of the SFD dust map for the SDSS r band (Schlegel, Finkbeiner & Davis 1998,
#: Table 6), converting an ``ebv`` column to the map extinction A_r. Schlafly & Finkbeiner
#: (2011) find SFD's reddening ~14 % too high: the prior's bound 1.3 A_r + 0.1 covers that.
SFD_EBV_TO_AR = 2.751
#: Galactic-coordinate columns accepted when a catalogue has no RA/Dec (photod, simulators).
GALACTIC_COLUMNS: tuple[tuple[str, str], ...] = (("glon", "glat"), ("l", "b"))
#: Object-identifier columns (Gaia, Rubin, SDSS CasJobs, generic) carried to the outputs when
#: a catalogue has them.
ID_COLUMNS: tuple[str, ...] = ("source_id", "objectId", "object_id", "objID", "id")
#: Unit of the flux columns of Rubin's catalogues, assumed when a catalogue has them and no
#: magnitudes (:func:`resolve_columns`).
RUBIN_FLUX_UNIT = "nJy"
#: Default name of the map-extinction column; only a default name is looked up under others.
DEFAULT_DUST_COLUMN = "Ar"
_MAG_PER_LN_FLUX = 2.5 / np.log(10.0)  # sigma_m = 1.0857 sigma_f / f


class MissingColumnError(KeyError):
    """A required catalogue column is absent."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly instead
        return str(self.args[0]) if self.args else "missing column"


@dataclass(frozen=True)
class BandSet:
    """An ordered set of photometric bands and their extinction ratios.

    Parameters
    ----------
    name
        Short name, ``"sdss"`` or ``"lsst"`` for the built-in sets.
    bands
        Band letters from blue to red; adjacent pairs define the colours.
    extinction_ratios
        A_band / A_r for every band.
    """

    name: str
    bands: tuple[str, ...]
    extinction_ratios: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_EXTINCTION_RATIOS)
    )

    def __post_init__(self) -> None:
        if "r" not in self.bands:
            raise ValueError(f"band set {self.name!r} must contain the r band")
        missing = [b for b in self.bands if b not in self.extinction_ratios]
        if missing:
            raise ValueError(f"band set {self.name!r} has no extinction ratio for {missing}")

    @property
    def color_pairs(self) -> tuple[tuple[str, str], ...]:
        """Adjacent band pairs, e.g. ``(("u", "g"), ("g", "r"), ...)``."""
        return tuple(zip(self.bands[:-1], self.bands[1:], strict=True))

    @property
    def colors(self) -> tuple[str, ...]:
        """Colour names, e.g. ``("ug", "gr", "ri", "iz")``."""
        return tuple(a + b for a, b in self.color_pairs)

    @property
    def n_colors(self) -> int:
        return len(self.bands) - 1

    def reddening_vector(self) -> np.ndarray:
        """E(colour) / A_r for every colour (differences of the extinction ratios)."""
        ratios = self.extinction_ratios
        return np.array([ratios[a] - ratios[b] for a, b in self.color_pairs])

    def with_extinction_ratios(self, overrides: Mapping[str, float]) -> BandSet:
        """A copy with some extinction ratios replaced."""
        unknown = set(overrides) - set(self.bands)
        if unknown:
            raise ValueError(
                f"extinction overrides for bands not in {self.name}: {sorted(unknown)}"
            )
        bad = {k: v for k, v in overrides.items() if not 0.0 < float(v) < math.inf}
        if bad:
            raise ValueError(f"extinction ratios A_band / A_r must be finite and > 0, got {bad}")
        ratios = dict(self.extinction_ratios)
        ratios.update({k: float(v) for k, v in overrides.items()})
        return BandSet(self.name, self.bands, ratios)


SDSS = BandSet("sdss", ("u", "g", "r", "i", "z"))
LSST = BandSet("lsst", ("u", "g", "r", "i", "z", "y"))
BAND_SETS: dict[str, BandSet] = {"sdss": SDSS, "lsst": LSST}


def get_band_set(
    name: str | BandSet, extinction_ratios: Mapping[str, float] | None = None
) -> BandSet:
    """Look up a band set by name (``"sdss"``/``"ugriz"`` or ``"lsst"``/``"ugrizy"``)."""
    if isinstance(name, BandSet):
        band_set = name
    else:
        key = str(name).strip().lower()
        aliases = {"ugriz": "sdss", "ugrizy": "lsst"}
        key = aliases.get(key, key)
        if key not in BAND_SETS:
            raise ValueError(
                f"unknown band set {name!r}; choose one of {sorted(BAND_SETS) + sorted(aliases)}"
            )
        band_set = BAND_SETS[key]
    if extinction_ratios:
        band_set = band_set.with_extinction_ratios(extinction_ratios)
    return band_set


@dataclass(frozen=True)
class ColumnMap:
    """Names of a catalogue's columns.

    Magnitude and error columns default to ``"{band}mag"`` and ``"{band}Err"`` (the SDSS
    Stripe 82 / photod convention); override any of them with ``mags``/``errors``.
    A catalogue may give colours instead of some magnitudes (photod's simulated catalogues
    hold r, the colours and every band's error): a colour whose two magnitudes are not both
    present is read from its colour column, ``"ug"``, ``"gr"``, ... by default (override with
    ``colors``, e.g. ``{"ug": "ugObs"}``). The r magnitude and all band errors are required.

    With ``flux_unit`` (a key of :data:`FLUX_ZERO_POINTS`, e.g. ``"nJy"``) the bands are
    read from flux columns instead, ``"{band}_psfFlux"`` and ``"{band}_psfFluxErr"`` by
    default as in Rubin's Object tables (override with ``fluxes``/``flux_errors``): AB
    magnitudes and their errors 1.0857 sigma_f / f; a non-positive flux (a non-detection)
    makes the band unusable, and so does a true measurement flag where the catalogue has
    one (``"{band}_psfFlux_flag"``; for a flux column renamed in ``fluxes``, its own flag
    as Rubin names it, e.g. ``u_cModel_flag``; override with ``flux_flags``).

    ``dust`` names an optional column with the map extinction A_r (e.g. SFD) per star; where
    the catalogue lacks it, ``ebv`` may name a column of the map's E(B-V), converted with
    ``ebv_to_ar`` (default :data:`SFD_EBV_TO_AR`).
    """

    mags: Mapping[str, str] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    colors: Mapping[str, str] = field(default_factory=dict)
    ra: str = "ra"
    dec: str = "dec"
    object_id: str | None = None
    dust: str | None = DEFAULT_DUST_COLUMN
    flux_unit: str | None = None
    fluxes: Mapping[str, str] = field(default_factory=dict)
    flux_errors: Mapping[str, str] = field(default_factory=dict)
    flux_flags: Mapping[str, str] = field(default_factory=dict)
    ebv: str | None = None
    ebv_to_ar: float = SFD_EBV_TO_AR

    def __post_init__(self) -> None:
        if self.flux_unit is not None and self.flux_unit not in FLUX_ZERO_POINTS:
            raise ValueError(
                f"unknown flux unit {self.flux_unit!r}; use one of {list(FLUX_ZERO_POINTS)}"
            )
        if not (np.isfinite(self.ebv_to_ar) and self.ebv_to_ar > 0):
            raise ValueError(f"ebv_to_ar must be positive, got {self.ebv_to_ar!r}")

    def flux_column(self, band: str) -> str:
        return self.fluxes.get(band, f"{band}_psfFlux")

    def flux_error_column(self, band: str) -> str:
        return self.flux_errors.get(band, f"{band}_psfFluxErr")

    def resolved(self, available: Sequence[str], band_set: BandSet | str | None) -> ColumnMap:
        """This map with the absent defaults replaced by the catalogue's columns of other
        names (:func:`resolve_columns`)."""
        return resolve_columns(self, available, band_set).columns

    def _dust_source(self, available: Sequence[str]) -> tuple[str | None, float]:
        """The dust-map column of a catalogue with ``available`` columns (None if none) and
        the factor turning its values into A_r (``ebv_to_ar`` for an E(B-V) column)."""
        present = set(available)
        columns = self.resolved(available, None)
        if columns.dust is not None and columns.dust in present:
            return columns.dust, 1.0
        if columns.ebv is not None and columns.ebv in present:
            return columns.ebv, self.ebv_to_ar
        return None, 1.0

    def dust_columns(self, available: Sequence[str]) -> list[str]:
        """The column :meth:`dust_values` reads from a catalogue with ``available`` columns."""
        column, _ = self._dust_source(available)
        return [] if column is None else [column]

    def dust_values(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Map extinction A_r per row: the ``dust`` column, else ``ebv_to_ar`` times the
        ``ebv`` column; None when the catalogue has neither. Non-numeric, negative or
        implausible (>= 50 mag) values become NaN."""
        column, factor = self._dust_source([str(c) for c in frame.columns])
        if column is None:
            return None
        values = numeric_column(frame, column) * factor
        return np.where(np.isfinite(values) & (values >= 0) & (values < 50), values, np.nan)

    def mag_column(self, band: str) -> str:
        return self.mags.get(band, f"{band}mag")

    def error_column(self, band: str) -> str:
        return self.errors.get(band, f"{band}Err")

    def color_column(self, blue: str, red: str) -> str:
        return self.colors.get(blue + red, blue + red)

    def flux_flag_column(self, band: str, available: Iterable[str]) -> str | None:
        """The measurement-flag column of ``band`` among ``available`` (None if absent): the
        one named in ``flux_flags``, else that of the band's flux column as Rubin names
        them, ``{flux}_flag`` or, for a flux column ``{name}Flux``, ``{name}_flag`` (e.g.
        ``u_psfFlux_flag``; ``u_cModel_flag`` for ``u_cModelFlux``)."""
        present = set(available)
        if band in self.flux_flags:
            named = self.flux_flags[band]
            return named if named in present else None
        flux = self.flux_column(band)
        candidates = [f"{flux}_flag"]
        if flux.endswith("Flux"):
            candidates.append(f"{flux[: -len('Flux')]}_flag")
        return next((c for c in candidates if c in present), None)

    def flux_columns(self, band: str) -> tuple[str, str]:
        """The flux and flux-error columns of ``band``."""
        return self.flux_column(band), self.flux_error_column(band)

    def photometry_sources(
        self, band_set: BandSet, available: Sequence[str]
    ) -> tuple[list[str], list[str | None]]:
        """Where the photometry of ``band_set`` comes from in a catalogue with ``available``.

        Returns the columns to read, and per colour the colour column it is read from (None
        when both magnitudes are present and the colour is their difference).

        Raises
        ------
        MissingColumnError
            The r magnitude, a band error, or a colour (neither both magnitudes nor the colour
            column) is missing.
        """
        present = set(available)
        resolution = resolve_columns(self, list(available), band_set)
        columns = resolution.columns
        if columns.flux_unit is not None:
            needed = [c for b in band_set.bands for c in columns.flux_columns(b)]
        else:
            needed = [columns.mag_column("r")] + [columns.error_column(b) for b in band_set.bands]
        for column in needed:
            if column not in present:
                no_y = "y" in band_set.bands and column in (
                    *columns.flux_columns("y"),
                    columns.error_column("y"),
                )
                raise MissingColumnError(
                    f"required column {column!r} not in catalogue "
                    f"(columns: {list(available)[:20]}...)"
                    + _ambiguity_hint(resolution.ambiguous)
                    + (
                        "; a catalogue without the y band is read with the ugriz (sdss) band set"
                        if no_y
                        else ""
                    )
                )
        sources: list[str | None] = []
        if columns.flux_unit is not None:  # with the measurement flags the catalogue has
            flags = [columns.flux_flag_column(b, present) for b in band_set.bands]
            return needed + [f for f in flags if f], [None] * len(band_set.color_pairs)
        named = [columns.mags[b] for b in band_set.bands if b in columns.mags]
        absent = [c for c in named if c not in present]
        if absent:  # a name given explicitly is never replaced by a colour column
            raise MissingColumnError(
                f"required column {absent[0]!r} not in catalogue (columns: "
                f"{list(available)[:20]}...)"
            )
        for blue, red in band_set.color_pairs:
            mag_columns = [columns.mag_column(blue), columns.mag_column(red)]
            if all(c in present for c in mag_columns):
                needed += mag_columns
                sources.append(None)
                continue
            color = columns.color_column(blue, red)
            if color not in present:
                absent = next(c for c in mag_columns if c not in present)
                raise MissingColumnError(
                    f"required column {absent!r} (or the colour column {color!r}) not in "
                    f"catalogue (columns: {list(available)[:20]}...)"
                    + _ambiguity_hint(resolution.ambiguous)
                )
            needed.append(color)
            sources.append(color)
        # a catalogue of magnitudes and fluxes (Rubin's Object table) flags its measurements too
        flags = [columns.flux_flag_column(b, present) for b in band_set.bands]
        needed += [f for f in flags if f]
        return list(dict.fromkeys(needed)), sources

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | None]) -> ColumnMap:
        """Build from flat keys such as ``{"umag": "u_psf", "uerr": "u_psf_err", "ra": "RA"}``.

        Two-letter keys name colour columns, e.g. ``{"ug": "ugObs"}``.
        """
        mags: dict[str, str] = {}
        colors: dict[str, str] = {}
        errors: dict[str, str] = {}
        fluxes: dict[str, str] = {}
        flux_errors: dict[str, str] = {}
        flux_flags: dict[str, str] = {}
        other: dict[str, Any] = {}
        for key, value in mapping.items():
            k = key.strip()
            lower = k.lower()
            if len(k) == 4 and lower.endswith("mag"):
                mags[k[0]] = str(value)
            elif len(k) == 4 and lower.endswith("err"):
                errors[k[0]] = str(value)
            elif len(k) == 5 and lower.endswith("flux"):
                fluxes[k[0]] = str(value)
            elif len(k) == 8 and lower.endswith("fluxerr"):
                flux_errors[k[0]] = str(value)
            elif len(k) == 9 and lower.endswith("fluxflag"):
                flux_flags[k[0]] = str(value)
            elif k in {"ra", "dec", "object_id", "dust", "flux_unit", "ebv"}:
                other[k] = value
            elif k == "ebv_to_ar":
                other[k] = float(value)  # type: ignore[arg-type]
            elif len(k) == 2 and set(k) <= set("ugrizy"):
                colors[k] = str(value)
            else:
                raise ValueError(f"unknown column-map key {key!r}")
        return cls(
            mags=mags,
            errors=errors,
            colors=colors,
            fluxes=fluxes,
            flux_errors=flux_errors,
            flux_flags=flux_flags,
            **other,
        )

    def to_mapping(self) -> dict[str, str | None]:
        """Flat keys that :meth:`from_mapping` reads back (for run summaries)."""
        mapping: dict[str, str | None] = {f"{b}mag": c for b, c in self.mags.items()}
        mapping.update({f"{b}err": c for b, c in self.errors.items()})
        mapping.update(self.colors)
        mapping.update({f"{b}flux": c for b, c in self.fluxes.items()})
        mapping.update({f"{b}fluxerr": c for b, c in self.flux_errors.items()})
        mapping.update({f"{b}fluxflag": c for b, c in self.flux_flags.items()})
        mapping.update(ra=self.ra, dec=self.dec, object_id=self.object_id, dust=self.dust)
        mapping.update(flux_unit=self.flux_unit, ebv=self.ebv, ebv_to_ar=self.ebv_to_ar)
        return mapping


#: Other names under which catalogues give a band's magnitude, its error, the map
#: extinction, E(B-V) and the position (``{b}``: the band letter, matched in lower case only;
#: the rest of a name in any case): SDSS
#: CasJobs (``psfMag_u``, ``psfMagErr_u``, ``extinction_r``), VizieR (``umag``, ``e_umag``,
#: ``RAJ2000``), Rubin (``u_psfMag``, ``coord_ra``, ``ebv``) and common simulation outputs
#: (``u_mag``, ``u_err``, ``magerr_u``). A bare band letter counts as a magnitude only when
#: every band of the set has such a column (``z`` alone may be a redshift).
MAG_ALIASES = ("{b}mag", "{b}_mag", "mag_{b}", "psfmag_{b}", "{b}_psfmag", "{b}psfmag")
ERROR_ALIASES = (
    "{b}err",
    "{b}_err",
    "err_{b}",
    "{b}error",
    "{b}_error",
    "{b}magerr",
    "{b}_magerr",
    "magerr_{b}",
    "{b}mag_err",
    "{b}_mag_err",
    "e_{b}mag",
    "e_{b}",
    "psfmagerr_{b}",
    "{b}_psfmagerr",
    "{b}psfmagerr",
    "sigma_{b}",
    "{b}_sigma",
)
COLOR_ALIASES = ("{a}{b}", "{a}-{b}", "{a}_{b}")
DUST_ALIASES = ("ar", "a_r", "extinction_r", "ar_sfd", "a_r_sfd", "sfd_ar")
EBV_ALIASES = ("ebv", "e_bv", "e(b-v)", "ebv_sfd", "sfd_ebv")
RA_ALIASES = ("ra", "raj2000", "ra_icrs", "radeg", "ra_deg", "coord_ra")
DEC_ALIASES = ("dec", "decl", "dej2000", "dec_icrs", "dedeg", "dec_deg", "coord_dec")


@dataclass(frozen=True)
class ColumnResolution:
    """What :func:`resolve_columns` found.

    Attributes
    ----------
    columns
        The column map with every absent default replaced by the catalogue's column.
    aliases
        Column-map key (``"umag"``, ``"uerr"``, ``"ug"``, ``"dust"``, ``"ebv"``, ``"ra"``,
        ``"dec"``) -> the catalogue column found for it under another name; ``"flux_unit"``
        -> ``"nJy"`` when Rubin's flux columns are read for want of magnitudes.
    ambiguous
        Key -> the catalogue columns that could each be it (none was taken).
    """

    columns: ColumnMap
    aliases: dict[str, str]
    ambiguous: dict[str, list[str]]


def _ambiguity_hint(ambiguous: Mapping[str, list[str]]) -> str:
    """The part of a missing-column message listing the names that had several candidates."""
    if not ambiguous:
        return ""
    listed = "; ".join(f"{key}: {', '.join(found)}" for key, found in ambiguous.items())
    return f"; several columns could be the same quantity ({listed}): name one with KEY=COLUMN"


@functools.lru_cache(maxsize=4096)
def _alias_regex(pattern: str, names: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    """``pattern`` with its ``{name}`` fields filled, the words in any case, the fields not."""
    values = dict(names)
    parts = re.split(r"(\{\w+\})", pattern)
    return re.compile(
        "".join(
            re.escape(values[part[1:-1]]) if part.startswith("{") else f"(?i:{re.escape(part)})"
            for part in parts
            if part
        )
    )


def _find_alias(patterns: Sequence[str], present: Sequence[str], **names: str) -> list[str]:
    """Catalogue columns matching any of ``patterns``, in pattern order.

    The pattern's words match in any case, the band letters (``names``) only in lower case:
    ``psfMag_u`` and ``PSFMAG_u`` are the u band, ``Umag`` (Johnson U) is not.
    """
    found: list[str] = []
    for pattern in patterns:
        regex = _alias_regex(pattern, tuple(sorted(names.items())))
        for column in present:
            if regex.fullmatch(column) and column not in found:
                found.append(column)
    return found


def resolve_columns(
    columns: ColumnMap, available: Sequence[str], band_set: BandSet | str | None
) -> ColumnResolution:
    """Find the columns a catalogue gives under other names than ``columns``' defaults.

    Only names left at their defaults and absent from ``available`` are looked up, among
    :data:`MAG_ALIASES`, :data:`ERROR_ALIASES`, :data:`COLOR_ALIASES`, :data:`DUST_ALIASES`
    (then :data:`EBV_ALIASES`), :data:`RA_ALIASES` and :data:`DEC_ALIASES`; a name given
    explicitly is never replaced. A name is taken when exactly one column matches; with
    several the name stays absent and the candidates are listed in ``ambiguous``. With a
    ``flux_unit`` the bands are read from flux columns and no magnitude names are looked up;
    without one, a catalogue with no r magnitude but every band's flux and flux error under
    the flux columns' names (Rubin's ``{band}_psfFlux``) is read as fluxes in nJy, Rubin's
    unit (key ``flux_unit`` of ``aliases``). Without a ``band_set`` only the dust and
    position columns are looked up.
    """
    bands = () if band_set is None else get_band_set(band_set).bands
    pairs = tuple(zip(bands[:-1], bands[1:], strict=True))
    present = [str(c) for c in available]
    present_set = set(present)
    aliases: dict[str, str] = {}
    ambiguous: dict[str, list[str]] = {}

    def lookup(key: str, default: str, patterns: Sequence[str], **names: str) -> str | None:
        if default in present_set:
            return None
        found = _find_alias(patterns, present, **names)
        if len(found) == 1:
            aliases[key] = found[0]
            return found[0]
        if found:
            ambiguous[key] = found
        return None

    mags = dict(columns.mags)
    errors = dict(columns.errors)
    colors = dict(columns.colors)
    flux_unit = columns.flux_unit
    if (
        flux_unit is None
        and "r" in bands
        and "r" not in columns.mags
        and columns.mag_column("r") not in present_set
        and not _find_alias(MAG_ALIASES, present, b="r")
        and all(c in present_set for b in bands for c in columns.flux_columns(b))
    ):  # a Rubin Object table: fluxes in nJy, no magnitudes
        flux_unit = aliases["flux_unit"] = RUBIN_FLUX_UNIT
    if flux_unit is None:
        bare = bool(bands) and all(b in present_set for b in bands)
        mag_patterns = MAG_ALIASES + (("{b}",) if bare else ())
        for b in bands:
            if b not in columns.mags:
                found = lookup(f"{b}mag", columns.mag_column(b), mag_patterns, b=b)
                if found is not None:
                    mags[b] = found
        for blue, red in pairs:
            key = blue + red
            if key not in columns.colors:
                found = lookup(key, columns.color_column(blue, red), COLOR_ALIASES, a=blue, b=red)
                if found is not None:
                    colors[key] = found
    for b in bands:
        if b not in columns.errors and flux_unit is None:
            found = lookup(f"{b}err", columns.error_column(b), ERROR_ALIASES, b=b)
            if found is not None:
                errors[b] = found
    dust, ebv = columns.dust, columns.ebv
    if dust == DEFAULT_DUST_COLUMN and ebv is None:
        found = lookup("dust", dust, DUST_ALIASES)
        if found is not None:
            dust = found
        elif dust not in present_set and "dust" not in ambiguous:
            found_ebv = _find_alias(EBV_ALIASES, present)
            if len(found_ebv) == 1:
                ebv = aliases["ebv"] = found_ebv[0]
            elif found_ebv:
                ambiguous["ebv"] = found_ebv
    ra, dec = columns.ra, columns.dec
    if ra == "ra" and dec == "dec":
        ra = lookup("ra", ra, RA_ALIASES) or ra
        dec = lookup("dec", dec, DEC_ALIASES) or dec
    resolved = dataclasses.replace(
        columns,
        mags=mags,
        errors=errors,
        colors=colors,
        dust=dust,
        ebv=ebv,
        ra=ra,
        dec=dec,
        flux_unit=flux_unit,
    )
    return ColumnResolution(resolved, aliases, ambiguous)


def sky_positions(frame: pd.DataFrame, columns: ColumnMap | None = None) -> tuple:
    """ICRS RA and Dec (deg) of the stars: the RA/Dec columns (under :data:`RA_ALIASES` and
    :data:`DEC_ALIASES` too), else galactic longitude and latitude (:data:`GALACTIC_COLUMNS`)
    converted. Non-numeric values become NaN.

    Raises
    ------
    MissingColumnError
        The catalogue has neither.
    """
    columns = columns or ColumnMap()
    found = position_columns([str(c) for c in frame.columns], columns)
    if found is None:
        raise MissingColumnError(f"no {columns.ra}/{columns.dec} (or glon/glat, l/b) columns")
    lon, lat = (numeric_column(frame, name) for name in found)
    if found in GALACTIC_COLUMNS:
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        sky = SkyCoord(l=lon * u.deg, b=lat * u.deg, frame="galactic").icrs
        return sky.ra.deg, sky.dec.deg
    return lon, lat


def position_columns(available: Sequence[str], columns: ColumnMap) -> tuple[str, str] | None:
    """The position columns :func:`sky_positions` reads: RA/Dec (also under their other
    names), else a pair of :data:`GALACTIC_COLUMNS`; None if the catalogue has neither.

    Raises
    ------
    MissingColumnError
        An RA or Dec column named explicitly (not ``ra``/``dec``) is absent: it is never
        replaced by another position.
    """
    for name, default in ((columns.ra, "ra"), (columns.dec, "dec")):
        if name != default and name not in available:
            raise MissingColumnError(f"position column {name!r} not in catalogue")
    resolved = columns.resolved(available, None)
    pairs = [(resolved.ra, resolved.dec), *GALACTIC_COLUMNS]
    return next((pair for pair in pairs if pair[0] in available and pair[1] in available), None)


def readable_band_set(
    columns: ColumnMap, available: Sequence[str], preferred: BandSet | str = "lsst"
) -> str | None:
    """The built-in band set, ``preferred`` first, whose photometry a catalogue with
    ``available`` columns holds (:meth:`ColumnMap.photometry_sources`); None if none."""
    first = get_band_set(preferred).name
    for name in [first] + [n for n in BAND_SETS if n != first]:
        try:
            columns.photometry_sources(BAND_SETS[name], available)
        except MissingColumnError:
            continue
        return name
    return None


def key_values(items: Sequence[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` option values as (key, value) pairs; ``ValueError`` for an item without
    ``=`` or a key."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=COLUMN, got {item!r}")
        pairs.append((key.strip(), value))
    return pairs


def column_map_from_options(
    items: Sequence[str],
    dust: str | None,
    flux_unit: str | None = None,
    ebv: str | None = None,
) -> ColumnMap:
    """A :class:`ColumnMap` from ``KEY=COLUMN`` option values (keys of
    :meth:`ColumnMap.from_mapping`) and the dust, flux-unit and E(B-V) options, which a
    ``KEY=COLUMN`` of the same key overrides.

    Raises
    ------
    ValueError
        An item without ``=`` or a key, or an unknown key.
    """
    mapping: dict[str, str | None] = dict(key_values(items))
    mapping.setdefault("dust", dust)
    mapping.setdefault("flux_unit", flux_unit)
    mapping.setdefault("ebv", ebv)
    return ColumnMap.from_mapping(mapping)


@dataclass
class Photometry:
    """Photometry of N stars in one band set, ready for the estimators.

    Attributes
    ----------
    r, r_err
        r magnitude and its error, shape (N,).
    colors, color_errors
        Adjacent-band colours and their errors, shape (N, n_colors). Unusable colours
        (missing, non-finite, sentinel, non-positive or > 1 mag error) are NaN in both;
        arrays given directly are made so.
    dust
        Map extinction A_r per star (NaN where unknown), or None if the catalogue has none.
    color_covariance
        Covariance of each pair of adjacent colours, shape (N, n_colors - 1): colours k and
        k + 1 formed from magnitudes share band k + 1, so their errors correlate with
        covariance -sigma_{k+1}^2. 0 where the colours are independent (a colour taken from
        a colour column, or an unusable colour); None: all independent.
    """

    band_set: BandSet
    r: np.ndarray
    r_err: np.ndarray
    colors: np.ndarray
    color_errors: np.ndarray
    dust: np.ndarray | None = None
    color_covariance: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Float arrays of matching shapes, or a ``ValueError`` naming the mismatch."""
        if isinstance(self.band_set, str):
            self.band_set = get_band_set(self.band_set)
        n_colors = len(self.band_set.bands) - 1
        self.r = np.asarray(self.r, dtype=float).reshape(-1)
        n = self.r.shape[0]
        shapes = {
            "r_err": (n,),
            "colors": (n, n_colors),
            "color_errors": (n, n_colors),
            "dust": (n,),
            "color_covariance": (n, max(n_colors - 1, 0)),
        }
        for name, shape in shapes.items():
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=float)
            if value.shape != shape:
                raise ValueError(
                    f"Photometry.{name} has shape {value.shape}; {n} stars of the "
                    f"{self.band_set.name} bands need {shape}"
                )
            setattr(self, name, value)
        self._blank_unusable_colors()

    def _blank_unusable_colors(self) -> None:
        """Make a colour unusable in both arrays (NaN, its covariances 0) where either of
        them is: a non-finite colour, or an error that is non-finite, not positive or above
        ``MAX_USABLE_COLOR_ERROR``, so that arrays given directly follow the rule the
        catalogue readers apply (the estimators then drop the colour and flag the star)."""
        with np.errstate(invalid="ignore"):
            unusable = (
                ~np.isfinite(self.colors)
                | ~(self.color_errors > 0.0)
                | ~(self.color_errors <= MAX_USABLE_COLOR_ERROR)
            )
        if not unusable.any():
            return
        self.colors = np.where(unusable, np.nan, self.colors)
        self.color_errors = np.where(unusable, np.nan, self.color_errors)
        if self.color_covariance is not None:
            either = unusable[:, :-1] | unusable[:, 1:]
            self.color_covariance = np.where(either, 0.0, self.color_covariance)

    def __len__(self) -> int:
        return len(self.r)

    def features(self, dust: bool = False) -> np.ndarray:
        """Network inputs: r, colours, then r error and colour errors, shape (N, 2 + 2 n_colors);
        with ``dust``, then the dust-map A_r (NaN where there is none)."""
        columns = [self.r, self.colors, self.r_err, self.color_errors]
        if dust:
            columns.append(np.full(len(self), np.nan) if self.dust is None else self.dust)
        return np.column_stack(columns)

    def first_occurrences(self) -> np.ndarray:
        """For each row, the index of the first row with the same photometry (r, colours,
        their errors and the dust-map value; NaN equals NaN): the row itself unless it
        repeats an earlier one. Rows are hashed, and only rows sharing a hash are compared
        value by value."""
        table = pd.DataFrame(self.features(dust=self.dust is not None))
        first = np.arange(len(table))
        if len(table) < 2:
            return first
        hashes = pd.util.hash_pandas_object(table, index=False).to_numpy()
        _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        if shared.size:
            sub = table.iloc[shared]
            group = sub.groupby(list(sub.columns), sort=False, dropna=False).ngroup().to_numpy()
            _, lead = np.unique(group, return_index=True)
            first[shared] = shared[lead[group]]
        return first

    def distinct_rows(self) -> np.ndarray:
        """Indices (ascending) of the rows whose photometry repeats no earlier row's
        (:meth:`first_occurrences`): one star listed several times counts once in the
        per-patch fits and in a training set."""
        first = self.first_occurrences()
        return np.flatnonzero(first == np.arange(len(first)))

    def subset(self, index: np.ndarray) -> Photometry:
        """Rows selected by an integer or boolean index."""
        return Photometry(
            self.band_set,
            self.r[index],
            self.r_err[index],
            self.colors[index],
            self.color_errors[index],
            None if self.dust is None else self.dust[index],
            None if self.color_covariance is None else self.color_covariance[index],
        )


def colors_from_magnitudes(
    mags: np.ndarray, errors: np.ndarray, error_floor: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent-band colours and their errors (magnitude errors in quadrature).

    Parameters
    ----------
    mags, errors
        Arrays of shape (N, n_bands), bands ordered blue to red.
    error_floor
        Optional colour-error floor (mag) added in quadrature.
    """
    mags = np.asarray(mags, dtype=float)
    errors = np.asarray(errors, dtype=float)
    colors = mags[:, :-1] - mags[:, 1:]
    color_errors = np.sqrt(errors[:, :-1] ** 2 + errors[:, 1:] ** 2 + error_floor**2)
    return colors, color_errors


def magnitudes_from_fluxes(
    flux: np.ndarray, flux_error: np.ndarray, unit: str = "nJy"
) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitudes and their errors from fluxes in ``unit`` (see :data:`FLUX_ZERO_POINTS`).

    The error is the linearised 2.5 / ln(10) sigma_f / f. A non-positive or non-finite flux
    (a non-detection) or flux error gives NaN for both.
    """
    if unit not in FLUX_ZERO_POINTS:
        raise ValueError(f"unknown flux unit {unit!r}; use one of {list(FLUX_ZERO_POINTS)}")
    flux = np.asarray(flux, dtype=float)
    flux_error = np.asarray(flux_error, dtype=float)
    ok = np.isfinite(flux) & (flux > 0) & np.isfinite(flux_error) & (flux_error > 0)
    safe = np.where(ok, flux, 1.0)
    mags = np.where(ok, FLUX_ZERO_POINTS[unit] - 2.5 * np.log10(safe), np.nan)
    errors = np.where(ok, _MAG_PER_LN_FLUX * flux_error / safe, np.nan)
    return mags, errors


def numeric_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A catalogue column as float64; entries that are not numbers (text, None) become NaN.
    Raises :class:`MissingColumnError` naming the column when the catalogue lacks it, and
    ``ValueError`` when it has the name more than once."""
    if column not in frame.columns:
        raise MissingColumnError(
            f"required column {column!r} not in catalogue (columns: {list(frame.columns)[:20]}...)"
        )
    values = frame[column]
    if isinstance(values, pd.DataFrame):  # a name the frame holds more than once
        raise ValueError(
            f"column {column!r} appears {values.shape[1]} times in the catalogue; each column "
            "needs its own name"
        )
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def first_numeric_column(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray | None:
    """The first of ``names`` that ``frame`` has, read as :func:`numeric_column` reads it;
    None when it has none of them."""
    for name in names:
        if name in frame.columns:
            return numeric_column(frame, name)
    return None


def band_photometry(
    frame: pd.DataFrame, band_set: BandSet | str, columns: ColumnMap | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every band's magnitude and error as the catalogue gives them, shape (N, n_bands).

    Flux catalogues (``columns.flux_unit``) are converted to AB magnitudes, a flagged
    measurement becoming NaN. A magnitude the catalogue does not have (a catalogue of r and
    colours) is NaN; the third array says which bands' magnitudes it has. No other cleaning:
    :func:`photometry_from_frame` turns sentinels and bad errors into unusable colours.

    Raises
    ------
    MissingColumnError
        As :meth:`ColumnMap.photometry_sources`.
    """
    band_set = get_band_set(band_set)
    available = [str(c) for c in frame.columns]
    columns = (columns or ColumnMap()).resolved(available, band_set)
    columns.photometry_sources(band_set, available)
    n = len(frame)
    if columns.flux_unit is not None:
        fluxes = np.column_stack(
            [numeric_column(frame, columns.flux_column(b)) for b in band_set.bands]
        ).reshape(n, len(band_set.bands))
        _drop_flagged(fluxes, frame, columns, band_set)
        flux_errors = np.column_stack(
            [numeric_column(frame, columns.flux_error_column(b)) for b in band_set.bands]
        ).reshape(n, len(band_set.bands))
        mags, errs = magnitudes_from_fluxes(fluxes, flux_errors, columns.flux_unit)
        return mags, errs, np.ones(len(band_set.bands), dtype=bool)
    has_mag = np.array([columns.mag_column(b) in frame.columns for b in band_set.bands])
    mags = np.full((n, len(band_set.bands)), np.nan)
    for k, b in enumerate(band_set.bands):
        if has_mag[k]:
            mags[:, k] = numeric_column(frame, columns.mag_column(b))
    _drop_flagged(mags, frame, columns, band_set)
    errs = np.column_stack(
        [numeric_column(frame, columns.error_column(b)) for b in band_set.bands]
    ).reshape(n, len(band_set.bands))
    return mags, errs, has_mag


_FLAG_WORDS = {
    "true": True,
    "t": True,
    "yes": True,
    "y": True,
    "1": True,
    "false": False,
    "f": False,
    "no": False,
    "n": False,
    "0": False,
}


def measurement_flags(values: pd.Series, name: str) -> np.ndarray:
    """A measurement-flag column as booleans: True where the measurement is flagged.

    Booleans and numbers (non-zero: flagged) are read as they are, text as true/false, t/f,
    yes/no, y/n or 1/0 in any case. A missing value is no flag (the measurement itself is
    still checked); any other value counts as flagged, with a warning naming the column.
    """
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        numbers = pd.to_numeric(values, errors="coerce").astype("Float64")
        return numbers.fillna(0.0).to_numpy(dtype=float) != 0.0
    text = values.astype("string").str.strip().str.lower()
    flagged = text.map(_FLAG_WORDS, na_action="ignore")
    numbers = pd.to_numeric(text, errors="coerce").astype("Float64")
    flagged = flagged.where(flagged.notna(), numbers != 0.0)
    unknown = (text.notna() & flagged.isna()).to_numpy(dtype=bool)
    if unknown.any():
        warnings.warn(
            f"flag column {name!r}: {int(unknown.sum())} value(s) neither true nor false (e.g. "
            f"{values[unknown].iloc[0]!r}); their measurements are treated as flagged",
            UserWarning,
            stacklevel=3,
        )
    return (flagged.astype("boolean").fillna(False).to_numpy(dtype=bool)) | unknown


def _drop_flagged(
    values: np.ndarray, frame: pd.DataFrame, columns: ColumnMap, band_set: BandSet
) -> None:
    """Set each band's flagged measurements (its flag column, where present) to NaN."""
    for k, b in enumerate(band_set.bands):  # a flagged measurement is no measurement
        flag = columns.flux_flag_column(b, [str(c) for c in frame.columns])
        if flag is not None:
            values[measurement_flags(frame[flag], flag), k] = np.nan


def unusable_measurements(mags: np.ndarray, errs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a band's error is unusable (not finite or not positive), and where its
    measurement is (that, or a magnitude that is not finite or a sentinel, |m| > 40)."""
    bad_err = ~np.isfinite(errs) | (errs <= 0)
    with np.errstate(invalid="ignore"):
        bad = bad_err | ~np.isfinite(mags) | (np.abs(mags) > MAX_PLAUSIBLE_MAGNITUDE)
    return bad_err, bad


def require_photometry(value: Any, where: str) -> Photometry:
    """``value`` if it is a :class:`Photometry`, else a ``TypeError`` from ``where`` that
    says how to make one (a catalogue frame is the usual mistake)."""
    if not isinstance(value, Photometry):
        raise TypeError(
            f"{where} takes a Photometry, got {type(value).__name__}; "
            "photometry_from_frame(frame, band_set) reads one from a catalogue frame"
        )
    return value


def require_frame(value: Any, where: str) -> pd.DataFrame:
    """``value`` if it is a pandas DataFrame, else a ``TypeError`` from ``where``."""
    if not isinstance(value, pd.DataFrame):
        raise TypeError(
            f"{where} takes a pandas DataFrame of the catalogue, got {type(value).__name__} "
            "(pandas.DataFrame(...) or photodist.io.read_catalog(path) makes one)"
        )
    return value


def photometry_from_frame(
    frame: pd.DataFrame,
    band_set: BandSet | str = "lsst",
    columns: ColumnMap | None = None,
    *,
    measurements: tuple[np.ndarray, np.ndarray] | None = None,
) -> Photometry:
    """Read magnitudes and errors from a catalogue and form colours.

    A colour comes from its two magnitudes when the catalogue has both, else from its colour
    column (see :class:`ColumnMap`), with the two band errors in quadrature.

    Columns absent under their default names are looked up under common other names
    (:func:`resolve_columns`). Missing columns raise :class:`MissingColumnError` naming the
    column. Non-numeric entries,
    NaN/inf, sentinels (|mag| > 40), non-positive errors and errors making a colour error
    exceed 1 mag become NaN colours (the estimators drop such colours and flag the star).
    ``measurements``, the magnitudes and errors of :func:`band_photometry` for the same
    frame and columns, saves reading them again when the caller has them.
    """
    require_frame(frame, "photometry_from_frame")
    band_set = get_band_set(band_set)
    columns = (columns or ColumnMap()).resolved([str(c) for c in frame.columns], band_set)
    _, color_sources = columns.photometry_sources(band_set, [str(c) for c in frame.columns])
    n_bands = len(band_set.bands)
    if measurements is None:
        mags, errs, _ = band_photometry(frame, band_set, columns)
    else:
        mags, errs = measurements
    bad_err, bad = unusable_measurements(mags, errs)
    mags = np.where(bad, np.nan, mags)
    colors, color_errors = colors_from_magnitudes(mags, np.where(bad, np.nan, errs))
    from_columns = np.zeros(n_bands - 1, dtype=bool)
    for k, source in enumerate(color_sources):
        if source is not None:  # a colour column: its own value, errors from the two bands
            value = numeric_column(frame, source)
            ok = np.isfinite(value) & (np.abs(value) < MAX_PLAUSIBLE_MAGNITUDE)
            ok &= ~bad_err[:, k] & ~bad_err[:, k + 1]
            colors[:, k] = np.where(ok, value, np.nan)
            color_errors[:, k] = np.where(ok, np.hypot(errs[:, k], errs[:, k + 1]), np.nan)
            from_columns[k] = True
    errs = np.where(bad_err, np.nan, errs)
    r_index = band_set.bands.index("r")
    dust = columns.dust_values(frame)
    r_err = np.where(np.isfinite(mags[:, r_index]), errs[:, r_index], np.nan)
    # adjacent colours from magnitudes share a band: covariance -sigma^2 of that band
    shared = ~(from_columns[:-1] | from_columns[1:])
    covariance = np.where(shared, -(np.nan_to_num(errs[:, 1:-1]) ** 2), 0.0)
    # Photometry blanks the unusable colours (and their covariances) itself
    return Photometry(band_set, mags[:, r_index], r_err, colors, color_errors, dust, covariance)
