"""The stellar locus: intrinsic colours as a function of absolute magnitude M_r and [Fe/H].

The locus is a regular grid over ([Fe/H], M_r) holding the colours u-g, g-r, r-i, i-z, z-y, the
g-i colour and a main-sequence / giant-branch label. It is assembled from published relations:

* Main sequence M_r(g-i, [Fe/H]) (Ivezić et al. 2008, ApJ 684, 287, eqs. A2 and A7):
  ``M_r = M0(x) + ΔM([Fe/H])``, inverted for g-i (M0 is monotonic on 0.2 < g-i < 4.0; outside
  that range it is continued linearly).
* Main-sequence colours for 0.3 < g-i < 1.6 (Yuan et al. 2015, ApJ 799, 134, Table 1).
* The red end (g-i > 1.6) and the blue end (g-i < 0.3) from median colours of dereddened SDSS
  Stripe 82 stars (``validation/derive_locus_calibration.py`` derives the numbers below), with
  the red end anchored beyond the Stripe 82 colour range by three points of an independent LSST
  locus at [Fe/H] = -2.5. The Yuan polynomials are never extrapolated: past g-i = 1.6 their
  metallicity dependence fades out exponentially (scale 0.3 mag in g-i) onto the calibrated
  table; below g-i = 0.3 the colours continue linearly with the slopes measured in real stars.
* Giant branch for -1 < M_r < 2.5: linear globular-cluster RGB fits in M_r and [Fe/H]. Between
  the base of the giant branch and the main-sequence turn-off (g-i = 0.2, the blue limit of the
  M_r relation) the colours blend smoothly (a cubic smooth-step) from the giant branch to the
  turn-off colour: a sub-giant branch that keeps the locus single-valued in (M_r, [Fe/H]).
* z-y (LSST) from i-z: ``z-y = 0.5 (i-z)`` for i-z <= 0.9 and, redder, a C1-continuous
  saturating curve ``0.45 + 0.1 (1 - exp(-(i-z - 0.9) / 0.2))`` through the reference points.

A locus can be saved and loaded as a plain table with columns ``Mr FeH ug gr ri iz zy`` (the
format of the ``photod`` package), so any other locus on a rectangular grid can be used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator, RegularGridInterpolator

from photodist.bands import BandSet, get_band_set

COLOR_NAMES: tuple[str, ...] = ("ug", "gr", "ri", "iz", "zy")
FEH_RANGE = (-2.5, 0.5)
MR_RANGE = (-1.0, 17.0)
DEFAULT_FEH_STEP = 0.05
DEFAULT_MR_STEP = 0.02
#: File suffixes of locus tables: Parquet, CSV, whitespace text.
LOCUS_FILE_SUFFIXES = (".parquet", ".csv", ".txt", ".dat", "")
#: Most points a locus grid may have (the default grid has 61 x 901 = 54,961).
MAX_GRID_POINTS = 2_000_000

# Ivezić et al. (2008) eq. A7: M0(x), x = g-i, valid 0.2 < x < 4.0.
MS_ABSMAG_COEFFS = (-5.06, 14.32, -12.97, 6.127, -1.267, 0.0967)
MS_GI_VALID = (0.2, 4.0)

# Yuan et al. (2015) Table 1, x = g-i, y = [Fe/H], valid 0.3 < g-i < 1.6.
YUAN_GI_VALID = (0.3, 1.6)
YUAN_UG = (
    1.5003,
    0.0011,
    0.1741,
    0.0910,
    0.0181,
    -3.2190,
    1.1675,
    0.0875,
    0.0031,
    7.9725,
    -0.8190,
    -0.0439,
    -5.2923,
    0.1339,
    1.1459,
)
YUAN_CUBIC = {
    "gr": (0.0596, 0.0348, 0.0239, 0.0044, 0.6070, 0.0261, -0.0044, 0.1532, -0.0136, -0.0613),
    "ri": (-0.0596, -0.0348, -0.0239, -0.0044, 0.3930, -0.0261, 0.0044, -0.1532, 0.0136, 0.0613),
    "iz": (-0.1060, -0.0357, -0.0123, -0.0017, 0.2543, -0.0010, -0.0050, -0.0381, -0.0071, 0.0030),
}

# Red end: median dereddened colours of Stripe 82 stars in 0.1-mag g-i bins (g, r, i, z errors
# < 0.03 mag; u-g also u error < 0.05), from validation/derive_locus_calibration.py, followed
# by three anchors (g-i = 3.273, 3.599, 3.992) from an independent LSST locus at [Fe/H] = -2.5.
RED_END_NODES: dict[str, tuple[tuple[float, float], ...]] = {
    "gr": (
        (1.551, 1.116),
        (1.654, 1.177),
        (1.752, 1.233),
        (1.862, 1.284),
        (1.954, 1.321),
        (2.054, 1.361),
        (2.147, 1.366),
        (2.249, 1.380),
        (2.347, 1.385),
        (2.450, 1.384),
        (2.550, 1.377),
        (2.647, 1.390),
        (2.744, 1.397),
        (2.833, 1.406),
        (3.273, 1.402),
        (3.599, 1.452),
        (3.992, 1.629),
    ),
    "iz": (
        (1.551, 0.243),
        (1.654, 0.270),
        (1.752, 0.287),
        (1.862, 0.322),
        (1.954, 0.351),
        (2.054, 0.388),
        (2.147, 0.430),
        (2.249, 0.468),
        (2.347, 0.514),
        (2.450, 0.566),
        (2.550, 0.620),
        (2.647, 0.659),
        (2.744, 0.711),
        (2.833, 0.757),
        (3.273, 0.847),
        (3.599, 0.978),
        (3.992, 1.160),
    ),
    "ug": (
        (1.549, 2.423),
        (1.668, 2.436),
        (1.759, 2.507),
        (1.873, 2.491),
        (1.956, 2.488),
        (2.066, 2.432),
        (2.161, 2.465),
        (2.241, 2.460),
        (2.341, 2.455),
        (2.433, 2.431),
        (2.558, 2.398),
        (3.273, 2.696),
        (3.599, 2.722),
        (3.992, 2.707),
    ),
}
RED_END_FADE = 0.3  # g-i scale over which the Yuan metallicity dependence fades past g-i = 1.6
# Blue end: d(colour)/d(g-i) of Stripe 82 stars between g-i = 0.27 and 0.35.
BLUE_END_SLOPES = {"ug": 0.573, "gr": 0.710, "iz": 0.264}

# Globular-cluster RGB fits, colour = A + B [Fe/H] + C M_r + D [Fe/H] M_r, valid -1 < M_r < 2.5.
GIANT_BRANCH = {
    "ug": (1.9805, 0.2865, -0.2225, -0.0425),
    "gr": (0.7455, 0.0835, -0.1225, -0.0325),
    "ri": (0.3100, 0.0280, -0.0500, -0.0100),
    "iz": (0.0960, 0.0, -0.0200, 0.0),
}
GIANT_BRANCH_MAX_MR = 2.5
TURNOFF_GI = 0.2
SUBGIANT_WIDTH = 1.0  # minimum M_r span of the sub-giant blend

ZY_LINEAR_LIMIT = 0.9
ZY_SATURATION_SCALE = 0.2


def ms_delta_absmag(feh: np.ndarray) -> np.ndarray:
    """Metallicity correction ΔM = 4.50 - 1.11 [Fe/H] - 0.18 [Fe/H]^2 (Ivezić et al. 2008)."""
    feh = np.asarray(feh, dtype=float)
    return 4.50 - 1.11 * feh - 0.18 * feh**2


def _m0(gi: np.ndarray) -> np.ndarray:
    x = np.asarray(gi, dtype=float)
    lo, hi = MS_GI_VALID
    xc = np.clip(x, lo, hi)
    poly = np.polynomial.polynomial.polyval(xc, MS_ABSMAG_COEFFS)
    deriv = np.polynomial.polynomial.polyval(xc, np.polynomial.polynomial.polyder(MS_ABSMAG_COEFFS))
    return poly + deriv * (x - xc)  # linear continuation outside the validity range


def ms_absmag(gi: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """Main-sequence M_r for g-i colour and [Fe/H] (Ivezić et al. 2008)."""
    return _m0(gi) + ms_delta_absmag(feh)


_GI_TABLE = np.linspace(-1.0, 6.0, 14001)
_M0_TABLE = _m0(_GI_TABLE)


def ms_gi(mr: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """Invert :func:`ms_absmag`: the main-sequence g-i for M_r and [Fe/H]."""
    target = np.asarray(mr, dtype=float) - ms_delta_absmag(feh)
    return np.interp(target, _M0_TABLE, _GI_TABLE)


def yuan_colors(gi: np.ndarray, feh: np.ndarray) -> dict[str, np.ndarray]:
    """Yuan et al. (2015) main-sequence u-g, g-r, r-i, i-z (valid 0.3 < g-i < 1.6 only)."""
    x = np.asarray(gi, dtype=float)
    y = np.asarray(feh, dtype=float)
    b = YUAN_UG
    ug = (
        b[0]
        + b[1] * y
        + b[2] * y**2
        + b[3] * y**3
        + b[4] * y**4
        + b[5] * x
        + b[6] * x * y
        + b[7] * x * y**2
        + b[8] * x * y**3
        + b[9] * x**2
        + b[10] * x**2 * y
        + b[11] * x**2 * y**2
        + b[12] * x**3
        + b[13] * x**3 * y
        + b[14] * x**4
    )
    out = {"ug": ug}
    for name, a in YUAN_CUBIC.items():
        out[name] = (
            a[0]
            + a[1] * y
            + a[2] * y**2
            + a[3] * y**3
            + a[4] * x
            + a[5] * x * y
            + a[6] * x * y**2
            + a[7] * x**2
            + a[8] * y * x**2
            + a[9] * x**3
        )
    return out


def _red_end_table(color: str, gi: np.ndarray) -> np.ndarray:
    nodes = np.array(RED_END_NODES[color])
    spline = PchipInterpolator(nodes[:, 0], nodes[:, 1], extrapolate=False)
    x_last = nodes[-1, 0]
    slope_last = (nodes[-1, 1] - nodes[-2, 1]) / (nodes[-1, 0] - nodes[-2, 0])
    inside = spline(np.clip(gi, nodes[0, 0], x_last))
    return np.where(gi > x_last, nodes[-1, 1] + slope_last * (gi - x_last), inside)


def main_sequence_colors(gi: np.ndarray, feh: np.ndarray) -> dict[str, np.ndarray]:
    """Main-sequence u-g, g-r, r-i, i-z at any g-i (Yuan inside 0.3-1.6, calibrated outside)."""
    x = np.asarray(gi, dtype=float)
    y = np.broadcast_to(np.asarray(feh, dtype=float), x.shape)
    lo, hi = YUAN_GI_VALID
    out = yuan_colors(np.clip(x, lo, hi), y)
    blue = x < lo
    red = x > hi
    at_edge = yuan_colors(np.full_like(x, hi), y)
    fade = np.exp(-(x - hi) / RED_END_FADE)
    for name in ("ug", "gr", "iz"):
        # blue end: continue with the measured real-star slope
        out[name] = np.where(blue, out[name] + BLUE_END_SLOPES[name] * (x - lo), out[name])
        # red end: calibrated table, Yuan metallicity dependence fading out
        table_edge = _red_end_table(name, np.array([hi]))[0]
        red_values = _red_end_table(name, x) + (at_edge[name] - table_edge) * fade
        out[name] = np.where(red, red_values, out[name])
    out["ri"] = x - out["gr"]  # g-r + r-i = g-i by definition
    return out


def giant_branch_colors(mr: np.ndarray, feh: np.ndarray) -> dict[str, np.ndarray]:
    """Red-giant-branch u-g, g-r, r-i, i-z from the globular-cluster fits."""
    mr = np.asarray(mr, dtype=float)
    feh = np.asarray(feh, dtype=float)
    return {
        name: a + b * feh + c * mr + d * feh * mr for name, (a, b, c, d) in GIANT_BRANCH.items()
    }


def zy_from_iz(iz: np.ndarray) -> np.ndarray:
    """LSST z-y as a smooth function of i-z (see module docstring)."""
    iz = np.asarray(iz, dtype=float)
    excess = np.maximum(iz - ZY_LINEAR_LIMIT, 0.0)
    saturating = 0.5 * ZY_LINEAR_LIMIT + 0.5 * ZY_SATURATION_SCALE * (
        1.0 - np.exp(-excess / ZY_SATURATION_SCALE)
    )
    return np.where(iz <= ZY_LINEAR_LIMIT, 0.5 * iz, saturating)


def turnoff_absmag(feh: np.ndarray) -> np.ndarray:
    """M_r of the main-sequence turn-off (g-i = 0.2) for [Fe/H]."""
    return ms_absmag(np.full_like(np.asarray(feh, dtype=float), TURNOFF_GI), feh)


def locus_colors(mr: np.ndarray, feh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsic colours (N, 5: u-g, g-r, r-i, i-z, z-y) and giant weight (N,) at (M_r, [Fe/H])."""
    mr, feh = np.broadcast_arrays(np.asarray(mr, dtype=float), np.asarray(feh, dtype=float))
    m_turnoff = turnoff_absmag(feh)
    m_giant = np.minimum(GIANT_BRANCH_MAX_MR, m_turnoff - SUBGIANT_WIDTH)
    t = np.clip((m_turnoff - mr) / (m_turnoff - m_giant), 0.0, 1.0)
    weight = t * t * (3.0 - 2.0 * t)  # 0 on the main sequence, 1 on the giant branch
    gi = np.maximum(ms_gi(mr, feh), TURNOFF_GI)
    ms = main_sequence_colors(gi, feh)
    rgb = giant_branch_colors(mr, feh)
    colors = np.stack([(1 - weight) * ms[c] + weight * rgb[c] for c in COLOR_NAMES[:4]], axis=-1)
    zy = zy_from_iz(colors[..., 3])
    return np.concatenate([colors, zy[..., None]], axis=-1), weight


def _axis(lo: float, hi: float, step: float) -> np.ndarray:
    """A regular axis from lo to hi with about ``step`` between points (at least two)."""
    if not step > 0:
        raise ValueError(f"locus grid steps must be positive, got {step}")
    n = int(round((hi - lo) / step)) + 1
    if n < 2:
        raise ValueError(f"grid step {step} leaves fewer than 2 points on [{lo:g}, {hi:g}]")
    if n > MAX_GRID_POINTS:
        raise ValueError(f"grid step {step} gives {n:,} points on [{lo:g}, {hi:g}]; too fine")
    return np.round(np.linspace(lo, hi, n), 10)


def _grid_axes(
    feh_range: tuple[float, float], feh_step: float, mr_range: tuple[float, float], mr_step: float
) -> tuple[np.ndarray, np.ndarray]:
    """The ([Fe/H], M_r) axes of a locus grid, refusing grids of over MAX_GRID_POINTS points
    before anything of that size is allocated."""
    feh, mr = _axis(*feh_range, feh_step), _axis(*mr_range, mr_step)
    if len(feh) * len(mr) > MAX_GRID_POINTS:
        raise ValueError(
            f"grid steps {feh_step:g} dex x {mr_step:g} mag give {len(feh) * len(mr):,} "
            f"locus points, more than {MAX_GRID_POINTS:,}; use coarser steps"
        )
    return feh, mr


@dataclass
class Locus:
    """A stellar locus on a regular ([Fe/H], M_r) grid.

    Attributes
    ----------
    feh, mr
        Ascending grid axes, shapes (n_feh,) and (n_mr,).
    colors
        Intrinsic colours, shape (n_feh, n_mr, 5), in the order of :data:`COLOR_NAMES`.
    giant
        True on the giant branch (including the brighter half of the sub-giant blend).
    """

    feh: np.ndarray
    mr: np.ndarray
    colors: np.ndarray
    giant: np.ndarray

    color_names = COLOR_NAMES

    def __post_init__(self) -> None:
        shape = (len(self.feh), len(self.mr))
        if self.colors.shape != (*shape, len(COLOR_NAMES)):
            raise ValueError(f"locus colours have shape {self.colors.shape}, expected {shape}+(5,)")
        if self.giant.shape != shape:
            raise ValueError("locus giant label does not match the grid")
        if min(shape) < 2:
            raise ValueError(
                f"a locus grid needs at least 2 [Fe/H] and 2 M_r values, got {shape[0]} x "
                f"{shape[1]}"
            )
        if not (np.isfinite(self.feh).all() and np.isfinite(self.mr).all()):
            raise ValueError("locus axes must be finite")
        if np.any(np.diff(self.feh) <= 0) or np.any(np.diff(self.mr) <= 0):
            raise ValueError("locus axes must be strictly ascending")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.feh), len(self.mr)

    @property
    def gi(self) -> np.ndarray:
        """g-i colour on the grid."""
        return self.colors[..., 1] + self.colors[..., 2]

    @property
    def feh_step(self) -> float:
        return float(np.median(np.diff(self.feh))) if len(self.feh) > 1 else 0.0

    @property
    def mr_step(self) -> float:
        return float(np.median(np.diff(self.mr))) if len(self.mr) > 1 else 0.0

    @staticmethod
    def color_indices(band_set: BandSet | str) -> list[int]:
        """Positions of the band set's colours along the last axis of ``colors``."""
        return [COLOR_NAMES.index(c) for c in get_band_set(band_set).colors]

    def colors_for(self, band_set: BandSet | str) -> np.ndarray:
        """Intrinsic colours of the band set's colours, shape (n_feh, n_mr, n_colors)."""
        return self.colors[..., self.color_indices(band_set)]

    def interpolate(self, mr: np.ndarray, feh: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of the colours at (M_r, [Fe/H]); NaN outside the grid."""
        if np.shape(mr) != np.shape(feh):
            raise ValueError(
                f"mr and feh must have the same shape, got {np.shape(mr)} and {np.shape(feh)}"
            )
        interp = RegularGridInterpolator(
            (self.feh, self.mr), self.colors, bounds_error=False, fill_value=np.nan
        )
        points = np.column_stack([np.ravel(feh), np.ravel(mr)])
        return interp(points).reshape(*np.shape(mr), len(COLOR_NAMES))

    def resample(self, feh_step: float, mr_step: float) -> Locus:
        """The same locus on another regular grid over the same ranges (bilinear)."""
        feh, mr = _grid_axes(
            (self.feh[0], self.feh[-1]), feh_step, (self.mr[0], self.mr[-1]), mr_step
        )
        ff, mm = np.meshgrid(feh, mr, indexing="ij")
        colors = self.interpolate(mm, ff)
        giant_interp = RegularGridInterpolator(
            (self.feh, self.mr), self.giant.astype(float), method="nearest"
        )
        giant = giant_interp(np.column_stack([ff.ravel(), mm.ravel()])).reshape(ff.shape) > 0.5
        return Locus(feh, mr, colors, giant)

    def to_frame(self) -> pd.DataFrame:
        """Long table with columns ``Mr FeH ug gr ri iz zy gi giant`` (one row per grid point)."""
        ff, mm = np.meshgrid(self.feh, self.mr, indexing="ij")
        frame = pd.DataFrame({"Mr": mm.ravel(), "FeH": ff.ravel()})
        for k, name in enumerate(COLOR_NAMES):
            frame[name] = self.colors[..., k].ravel()
        frame["gi"] = self.gi.ravel()
        frame["giant"] = self.giant.ravel().astype(int)
        return frame

    def save(self, path: str | Path) -> Path:
        """Write the locus as Parquet (``.parquet``), CSV (``.csv``) or whitespace text
        (``.txt``, ``.dat`` or no suffix)."""
        path = Path(path)
        if path.suffix not in LOCUS_FILE_SUFFIXES:
            raise ValueError(
                f"{path}: a locus table is written as one of "
                f"{', '.join(s or '(no suffix)' for s in LOCUS_FILE_SUFFIXES)}"
            )
        frame = self.to_frame()
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        elif path.suffix == ".csv":
            frame.to_csv(path, index=False, float_format="%.5f")
        else:
            frame.to_csv(path, sep=" ", index=False, float_format="%.5f")
        return path

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Locus:
        """Build from a long table with at least ``Mr FeH ug gr ri iz``; ``zy`` is optional.

        The points must fill a rectangular grid. Without a ``giant`` column the label is
        derived from the turn-off magnitude of the built-in relations.
        """
        required = ["Mr", "FeH", "ug", "gr", "ri", "iz"]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise ValueError(f"locus table lacks required columns {missing}")
        frame = frame.copy()
        frame["Mr"] = frame["Mr"].astype(float).round(6)
        frame["FeH"] = frame["FeH"].astype(float).round(6)
        if "zy" not in frame.columns:
            frame["zy"] = zy_from_iz(frame["iz"].to_numpy(float))
        if frame.duplicated(["FeH", "Mr"]).any():
            raise ValueError("locus table has duplicate (FeH, Mr) points")
        feh = np.sort(frame["FeH"].unique())
        mr = np.sort(frame["Mr"].unique())
        if len(frame) != len(feh) * len(mr):
            raise ValueError(
                f"locus table does not fill a rectangular grid: {len(frame)} rows for "
                f"{len(feh)} [Fe/H] x {len(mr)} M_r values"
            )
        frame = frame.sort_values(["FeH", "Mr"])
        colors = frame[list(COLOR_NAMES)].to_numpy(float).reshape(len(feh), len(mr), -1)
        if not np.all(np.isfinite(colors)):
            raise ValueError("locus table contains non-finite colours")
        if "giant" in frame.columns:
            giant = frame["giant"].to_numpy().astype(bool).reshape(len(feh), len(mr))
        else:
            ff, mm = np.meshgrid(feh, mr, indexing="ij")
            giant = mm < turnoff_absmag(ff) - 0.5 * SUBGIANT_WIDTH
        return cls(feh, mr, colors, giant)

    @classmethod
    def load(cls, path: str | Path) -> Locus:
        """Read a locus table (Parquet, CSV or whitespace text with a header line)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"locus file {path} does not exist")
        try:
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
            elif path.suffix == ".csv":
                frame = pd.read_csv(path)
            else:
                with path.open() as handle:
                    header = handle.readline().lstrip("#").split()
                frame = pd.read_csv(path, sep=r"\s+", comment=None, skiprows=1, names=header)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a readable locus table: {exc}") from exc
        return cls.from_frame(frame)


def build_locus(
    feh_step: float = DEFAULT_FEH_STEP,
    mr_step: float = DEFAULT_MR_STEP,
    feh_range: tuple[float, float] = FEH_RANGE,
    mr_range: tuple[float, float] = MR_RANGE,
) -> Locus:
    """Build the default stellar locus on a regular grid.

    Parameters
    ----------
    feh_step, mr_step
        Grid steps in dex and mag (defaults 0.05 and 0.02).
    feh_range, mr_range
        Inclusive grid limits (defaults [-2.5, 0.5] and [-1, 17], the range of the published
        relations; a wider one is extrapolated, with a warning).
    """
    feh, mr = _grid_axes(feh_range, feh_step, mr_range, mr_step)
    for name, (lo, hi), (lo_ok, hi_ok) in (
        ("feh_range", (feh[0], feh[-1]), FEH_RANGE),
        ("mr_range", (mr[0], mr[-1]), MR_RANGE),
    ):
        if lo < lo_ok - 1e-9 or hi > hi_ok + 1e-9:
            warnings.warn(
                f"{name} [{lo:g}, {hi:g}] goes beyond [{lo_ok:g}, {hi_ok:g}], the range of the "
                "relations the locus is built from: its colours there are extrapolated "
                "(and can turn back: u-g reddens again below [Fe/H] = -3)",
                UserWarning,
                stacklevel=2,
            )
    ff, mm = np.meshgrid(feh, mr, indexing="ij")
    colors, weight = locus_colors(mm, ff)
    return Locus(feh, mr, colors, weight >= 0.5)


def load_locus(path: str | Path | None = None) -> Locus:
    """Load a locus table, or build the default locus when ``path`` is None."""
    return build_locus() if path is None else Locus.load(path)
