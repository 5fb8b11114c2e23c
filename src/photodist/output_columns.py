"""Units and meanings of the estimate columns that photodist writes.

Every table writer (:func:`photodist.io.write_table`, :func:`photodist.io.write_batches`,
:class:`photodist.io.AtomicParquetWriter`, the survey's HATS partitions) attaches them:
FITS columns get ``TUNITn`` (read by astropy as the column's unit) and ``TCOMMn`` (the
description, as TOPCAT shows it); Parquet fields get ``unit`` and ``description`` in their
field metadata (``pyarrow.parquet.read_schema(path).field("Mr_mean").metadata``). CSV has
no place for either: ``photodist columns`` prints the list. Columns kept from the input get
nothing; their meaning is the catalogue's.

Units are FITS / astropy unit strings (``mag``, ``dex``, ``pc``, ``bit``); a dimensionless
column has the unit ``""``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ColumnInfo", "column_info"]


@dataclass(frozen=True)
class ColumnInfo:
    """A column's unit (``""``: dimensionless) and a one-line description (at most 62
    characters: with a unit FITS lacks, " (dex)", it fits a FITS ``TCOMMn`` card)."""

    unit: str
    description: str


#: Estimated quantities: unit and short name.
_QUANTITIES: dict[str, tuple[str, str]] = {
    "Mr": ("mag", "M_r"),
    "FeH": ("dex", "[Fe/H]"),
    "Ar": ("mag", "A_r"),
    "Qr": ("mag", "Q_r = M_r + A_r"),
    "DM": ("mag", "DM = r - Q_r"),
}

#: Statistics: description template ({} the quantity).
_STATISTICS: dict[str, str] = {
    "mean": "estimate of {} (posterior or network mean)",
    "std": "posterior standard deviation of {}",
    "sigma": "total uncertainty of {}",
    "sigma_nn": "network's own uncertainty of {} (NaN on bayes rows)",
    "sigma_bayes": "Bayesian posterior width of {} (predicted on nn rows)",
    "p16": "16th percentile of the posterior of {}",
    "p50": "median of the posterior of {}",
    "p84": "84th percentile of the posterior of {}",
}

_FIXED: dict[str, ColumnInfo] = {
    "dist_pc": ColumnInfo("pc", "distance, 10**(0.2 DM_mean + 1)"),
    "dist_p16": ColumnInfo("pc", "16th percentile of the distance"),
    "dist_p50": ColumnInfo("pc", "median distance"),
    "dist_p84": ColumnInfo("pc", "84th percentile of the distance"),
    "chi2min": ColumnInfo("", "best-fit chi2 of the locus, A_r within its bounds, no prior"),
    "log_evidence": ColumnInfo("", "ln of the marginal likelihood of the colours (bayes rows)"),
    "Mr_entropy_drop": ColumnInfo(
        "bit", "drop in M_r entropy from the r bin's prior to the posterior"
    ),
    "FeH_entropy_drop": ColumnInfo(
        "bit", "drop in [Fe/H] entropy from the r bin's prior to the posterior"
    ),
    "Ar_entropy_drop": ColumnInfo(
        "bit", "drop in A_r entropy from the flat prior to the posterior"
    ),
    "P_giant": ColumnInfo("", "posterior probability of the giant branch"),
    "Ar_max": ColumnInfo("mag", "upper bound of the A_r prior"),
    "flags": ColumnInfo("", "quality bits, photodist.bayes.Flags"),
    "method": ColumnInfo("", "estimator of the row: bayes or nn"),
    "labelled": ColumnInfo("", "true for the Bayesian training subsample"),
}

_PATTERN = re.compile(r"^(?P<q>{})_(?P<s>{})$".format("|".join(_QUANTITIES), "|".join(_STATISTICS)))


def column_info(name: str) -> ColumnInfo | None:
    """Unit and description of the output column ``name``; None for any other column."""
    fixed = _FIXED.get(name)
    if fixed is not None:
        return fixed
    match = _PATTERN.match(name)
    if match is None:
        return None
    unit, quantity = _QUANTITIES[match["q"]]
    return ColumnInfo(unit, _STATISTICS[match["s"]].format(quantity))
