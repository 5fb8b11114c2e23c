"""Simulated star catalogues with known truth for a sky patch, drawn from :mod:`photodist.galaxy`.

A patch is a HEALPix pixel (nested scheme, equatorial ICRS coordinates as in HATS catalogues)
or a cone in Galactic coordinates. The patch is split into small HEALPix cells (order >= 7,
about 0.46 deg); along each cell's central sightline the expected number of stars in a grid of
distance modulus (0.02 mag steps) and M_r is

    lambda_c = Omega_cell x integral(rho_c(d) / rho(R0, Z0) d^2 dd) x integral(phi_c(M_r) dM_r)

for each component c (thin disk, thick disk, halo; each with its own luminosity function
phi_c, see :mod:`photodist.galaxy`), restricted to stars that can reach ``r_min <= r <= r_max``
with ``r = M_r + DM + A_r(d)``. Counts are Poisson draws of ``sum_c lambda_c``; each star gets
a component (probabilities ``lambda_c / sum_c lambda_c`` of its bin), a distance (uniform in
volume within its bin), an M_r (inverse CDF of its component's luminosity function), a
position uniform within its cell (the HEALPix projection is equal-area, so a uniform point in
the projected cell is uniform on the sky), [Fe/H] from its component and height, and A_r from
the 3D dust model. Stars whose exact r falls outside the limits are discarded (an exact thinning
of the Poisson process). Colours come from the stellar locus, magnitudes from r and the colours
plus extinction, and photometric errors from:

* ``"lsst10"`` (default): ``photerr.LsstErrorModelV1`` (Ivezić et al. 2019 parameters, 10-year
  coadd) in its high-SNR mode without decorrelation, i.e. exactly
  ``sigma^2 = sigma_sys^2 + ((0.04 - gamma) x + gamma x^2) / N_visits``,
  ``x = 10^(0.4 (m - m5))``, with Gaussian noise in magnitudes. ``"lsstN"`` uses N years.
* ``"sdss"``: the same formula for one SDSS epoch, with the 95 % completeness depths for point
  sources u, g, r, i, z = 22.0, 22.2, 22.2, 21.3, 20.5 (Abazajian et al. 2004, AJ 128, 502)
  taken as 5-sigma depths, gamma = 0.039 and sigma_sys = 0.02 mag (Ivezić et al. 2004, AN 325,
  583: ~2 % single-epoch calibration). ``"sdssN"`` averages N epochs (random part / sqrt(N)).
* ``"none"``: no noise. The error columns hold :data:`NOISE_FREE_ERROR` (1 mmag), a nominal
  positive error: an error of 0 marks a measurement unusable (as in real catalogues), so a
  catalogue of zeros could not be estimated at all.

Noise is Gaussian in magnitudes with the error computed from the true magnitude, so bands far
below the depth (e.g. u of faint M dwarfs) get errors of several magnitudes and meaningless
values; ``photodist.bands.photometry_from_frame`` treats colours with errors > 1 mag as missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import astropy.units as u
import cdshealpix.nested as chp
import numpy as np
import pandas as pd
import photerr
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.coordinates import Latitude, Longitude, SkyCoord

from photodist.bands import BandSet, colors_from_magnitudes, get_band_set
from photodist.galaxy import COMPONENT_NAMES, DustModel, GalaxyModel, galactocentric
from photodist.locus import COLOR_NAMES, Locus, build_locus

#: Default faint limit: the paper's simulated depth.
DEFAULT_R_MAX = 27.5
#: Cells finer than this HEALPix order carry their own sightline.
WORK_ORDER = 7
#: At most this many sightline cells (large patches use coarser cells, bounding memory).
MAX_CELLS = 2048
#: Error (mag) written for every band of a noise-free catalogue (``errors="none"``).
NOISE_FREE_ERROR = 0.001
#: The simulator's r limits lie within this range (mag).
R_LIMIT_RANGE = (0.0, 30.0)
#: Distance-modulus grid: start (DM = -2.5 is 3.2 pc) and step (mag).
DM_MIN = -2.5
DM_STEP = 0.02
#: SDSS single-epoch 5-sigma depths (see module docstring), gamma and systematic floor.
SDSS_M5 = {"u": 22.0, "g": 22.2, "r": 22.2, "i": 21.3, "z": 20.5}
SDSS_GAMMA = 0.039
SDSS_SIGMA_SYS = 0.02
#: Truth columns present in every simulated catalogue.
TRUTH_COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "l",
    "b",
    "Mr_true",
    "FeH_true",
    "Ar_true",
    "dist_true",
    "DM_true",
    "component",
    "Ar_inf",
    "Ar",
    "rmag_true",
)
_PARQUET_KEY = b"photodist.simulation"


@dataclass(frozen=True)
class Patch:
    """A sky patch: a nested HEALPix pixel in ICRS, or a cone in Galactic coordinates.

    Use :meth:`healpix` or :meth:`cone` to build one.
    """

    order: int | None = None
    pixel: int | None = None
    l: float | None = None  # noqa: E741 - Galactic longitude, the standard name
    b: float | None = None
    radius: float | None = None

    @classmethod
    def healpix(cls, order: int, pixel: int) -> Patch:
        """A nested HEALPix pixel of ``order`` in equatorial (ICRS) coordinates."""
        if not 0 <= order <= 29:
            raise ValueError(f"HEALPix order must be 0..29, got {order}")
        if not 0 <= pixel < 12 * 4**order:
            raise ValueError(f"pixel {pixel} out of range for order {order}")
        return cls(order=int(order), pixel=int(pixel))

    @classmethod
    def cone(cls, l: float, b: float, radius: float) -> Patch:  # noqa: E741
        """A cone centred on Galactic (l, b) with ``radius`` (all degrees)."""
        if not np.isfinite(l):
            raise ValueError(f"cone longitude must be finite, got {l}")
        if not 0 < radius <= 90:
            raise ValueError(f"cone radius must be in (0, 90] deg, got {radius}")
        if not -90 <= b <= 90:
            raise ValueError(f"latitude must be in [-90, 90], got {b}")
        return cls(l=float(l) % 360.0, b=float(b), radius=float(radius))

    @property
    def is_healpix(self) -> bool:
        return self.pixel is not None

    @property
    def area_deg2(self) -> float:
        """Solid angle of the patch (deg^2)."""
        full_sky = 4 * np.pi * (180 / np.pi) ** 2
        if self.is_healpix:
            return full_sky / (12 * 4**self.order)
        return 2 * np.pi * (1 - np.cos(np.deg2rad(self.radius))) * (180 / np.pi) ** 2

    def cells(self) -> tuple[np.ndarray, int]:
        """HEALPix cells (indices, order) tiling the patch; cone cells may overlap its edge.

        Cells are of order >= 7 (about 0.46 deg) unless the patch would need more than
        :data:`MAX_CELLS` of them.
        """
        if self.is_healpix:
            depth = max(self.order, min(WORK_ORDER, self.order + 5))  # 4^5 = 1024 cells max
            shift = 2 * (depth - self.order)
            ipix = (np.uint64(self.pixel) << np.uint64(shift)) + np.arange(
                4 ** (depth - self.order), dtype=np.uint64
            )
            return ipix, depth
        size = np.rad2deg(np.sqrt(4 * np.pi / 12))  # 58.6 deg: order-0 cell size
        depth = int(np.clip(np.ceil(np.log2(size / (0.5 * self.radius))), WORK_ORDER, 12))
        while True:
            ipix, _, _ = chp.cone_search(
                Longitude(self.l * u.deg),
                Latitude(self.b * u.deg),
                self.radius * u.deg,
                depth,
                flat=True,
            )
            if len(ipix) <= MAX_CELLS or depth == 0:
                return np.sort(np.asarray(ipix, dtype=np.uint64)), depth
            depth -= 1

    def cell_fractions(self, ipix: np.ndarray, depth: int) -> np.ndarray:
        """Fraction of each cell (of :meth:`cells`) inside the patch, from 64 sub-cells each."""
        if self.is_healpix:
            return np.ones(len(ipix))
        children = (np.asarray(ipix, dtype=np.uint64)[:, None] << np.uint64(6)) + np.arange(
            64, dtype=np.uint64
        )
        lon, lat = chp.healpix_to_lonlat(children.ravel(), depth + 3)
        inside = self.contains(np.asarray(lon.deg), np.asarray(lat.deg))
        return inside.reshape(len(ipix), 64).mean(axis=1)

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Whether points (in the patch's own frame, degrees) lie inside a cone patch."""
        if self.is_healpix:
            return np.ones(np.shape(lon), dtype=bool)
        lon0, lat0 = np.deg2rad(self.l), np.deg2rad(self.b)
        lo, la = np.deg2rad(lon), np.deg2rad(lat)
        cos_sep = np.sin(la) * np.sin(lat0) + np.cos(la) * np.cos(lat0) * np.cos(lo - lon0)
        return cos_sep >= np.cos(np.deg2rad(self.radius))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def resolve_patch(
    pixel: int | None, order: int, cone: tuple[float, float, float] | Patch | None
) -> Patch:
    """The :class:`Patch` of a HEALPix ``pixel`` of ``order``, or of a ``cone``
    ``(l, b, radius)`` (degrees, Galactic) or a given :class:`Patch`."""
    if isinstance(cone, Patch):
        return cone
    if (pixel is None) == (cone is None):
        raise ValueError("give exactly one of pixel (with order) or cone=(l, b, radius)")
    if pixel is not None:
        return Patch.healpix(order, pixel)
    l_deg, b_deg, radius = cone  # type: ignore[misc]
    return Patch.cone(l_deg, b_deg, radius)


def _icrs_to_galactic(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gal = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs").galactic
    return gal.l.deg, gal.b.deg


def _galactic_to_icrs(l_deg: np.ndarray, b_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eq = SkyCoord(l=l_deg * u.deg, b=b_deg * u.deg, frame="galactic").icrs
    return eq.ra.deg, eq.dec.deg


def uniform_points_in_cells(
    ipix: np.ndarray, depth: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One point uniformly distributed on the sphere inside each given HEALPix cell.

    The point is drawn uniformly inside the cell's diamond in the HEALPix projection plane,
    which is equal-area, and projected back (cdshealpix). Returns (lon, lat) in degrees.
    """
    ipix = np.asarray(ipix, dtype=np.uint64)
    xc, yc = chp.healpix_to_xy(ipix, depth)
    half = 2.0**-depth
    a = rng.uniform(-1.0, 1.0, len(ipix))
    c = rng.uniform(-1.0, 1.0, len(ipix))
    x = (np.asarray(xc) + 0.5 * half * (a + c)) % 8.0
    y = np.clip(np.asarray(yc) + 0.5 * half * (c - a), -2.0, 2.0)
    lon, lat = chp.xy_to_lonlat(x, y)
    return np.asarray(lon.deg), np.asarray(lat.deg)


@dataclass(frozen=True)
class _Sightlines:
    """Per-cell quantities along the distance-modulus grid."""

    ipix: np.ndarray
    depth: int
    l: np.ndarray  # noqa: E741
    b: np.ndarray
    ar_inf: np.ndarray
    dust_fraction: np.ndarray  # (n_cells, n_edges)


def _error_model(errors: str | photerr.ErrorModel, band_set: BandSet) -> photerr.ErrorModel | None:
    """The photerr model for an ``errors`` spec (see the module docstring); None for no noise."""
    if isinstance(errors, photerr.ErrorModel):
        return errors
    spec = str(errors).strip().lower()
    if spec == "none":
        return None
    match = re.fullmatch(r"(lsst|sdss)(\d+(?:\.\d+)?)?", spec)
    if match is None:
        raise ValueError(
            f"unknown error model {errors!r}; use 'lsst10', 'lsstN', 'sdss', 'sdssN' or 'none'"
        )
    kind, number = match.group(1), match.group(2)
    if number is not None and float(number) <= 0:
        raise ValueError(f"error model {errors!r}: the number of years or epochs must be > 0")
    common = {"highSNR": True, "decorrelate": False, "sigLim": 0.0, "ndMode": "flag"}
    if kind == "lsst":
        years = float(number) if number else 10.0
        return photerr.LsstErrorModelV1(nYrObs=years, **common)
    missing = [b for b in band_set.bands if b not in SDSS_M5]
    if missing:
        raise ValueError(f"the SDSS error model has no depth for bands {missing}")
    epochs = float(number) if number else 1.0
    return photerr.ErrorModel(
        nYrObs=1.0,
        nVisYr=epochs,
        gamma=SDSS_GAMMA,
        m5=dict(SDSS_M5),
        sigmaSys=SDSS_SIGMA_SYS,
        **common,
    )


def add_photometric_errors(
    true_mags: pd.DataFrame,
    errors: str | photerr.ErrorModel,
    band_set: BandSet,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Observed magnitudes and errors (N, n_bands) for true magnitudes in band columns."""
    model = _error_model(errors, band_set)
    bands = list(band_set.bands)
    if model is None:
        values = true_mags[bands].to_numpy(float)
        return values.copy(), np.full_like(values, NOISE_FREE_ERROR)
    absent = [b for b in bands if b not in model._bands]
    if absent:
        raise ValueError(f"error model has no parameters for bands {absent}")
    out = model(true_mags[bands], random_state=rng)
    return out[bands].to_numpy(float), out[[f"{b}_err" for b in bands]].to_numpy(float)


class _LFSampler:
    """Cumulative component luminosity functions on a fine M_r grid, for inverse-CDF sampling."""

    def __init__(self, galaxy: GalaxyModel, mr_min: float, mr_max: float, step: float = 0.005):
        n = int(round((mr_max - mr_min) / step)) + 1
        self.mr = np.linspace(mr_min, mr_max, n)
        cums = []
        for code in range(len(COMPONENT_NAMES)):
            phi = galaxy.component_luminosity_function(self.mr, code)
            steps = 0.5 * (phi[1:] + phi[:-1]) * np.diff(self.mr)
            cums.append(np.concatenate([[0.0], np.cumsum(steps)]))
        self.cum = np.array(cums)  # (n_components, n_mr)

    def cdf(self, mr: np.ndarray, component: int) -> np.ndarray:
        return np.interp(mr, self.mr, self.cum[component])

    def inverse(self, cum: np.ndarray, component: int) -> np.ndarray:
        return np.interp(cum, self.cum[component], self.mr)


def _sightlines(
    patch: Patch, dm_edges: np.ndarray, dust: DustModel, ar_inf: float | None
) -> _Sightlines:
    ipix, depth = patch.cells()
    lon, lat = chp.healpix_to_lonlat(ipix, depth)
    lon, lat = np.asarray(lon.deg), np.asarray(lat.deg)
    if patch.is_healpix:
        l_c, b_c = _icrs_to_galactic(lon, lat)
    else:
        l_c, b_c = lon, lat
    if ar_inf is None:
        ar = np.asarray(dust.default_ar_inf(l_c, b_c), dtype=float)
    else:
        if not np.isfinite(ar_inf) or ar_inf < 0:
            raise ValueError(f"ar_inf must be a finite non-negative number, got {ar_inf}")
        ar = np.full(len(ipix), float(ar_inf))
    frac = dust.fraction_along(10.0 ** (dm_edges / 5 + 1), l_c, b_c)
    return _Sightlines(ipix, depth, l_c, b_c, ar, frac)


def simulate_patch(
    pixel: int | None = None,
    order: int = 4,
    cone: tuple[float, float, float] | Patch | None = None,
    n_max: int | None = None,
    r_max: float = DEFAULT_R_MAX,
    band_set: str | BandSet = "lsst",
    errors: str | photerr.ErrorModel = "lsst10",
    seed: int = 0,
    ar_inf: float | None = None,
    locus: Locus | None = None,
    *,
    r_min: float | None = None,
    oversample: float = 1.0,
    truth_only: bool = False,
    galaxy: GalaxyModel | None = None,
    dust: DustModel | None = None,
) -> pd.DataFrame:
    """Simulate the stars of a sky patch with their true parameters and photometry.

    Parameters
    ----------
    pixel, order
        A nested HEALPix pixel (ICRS) and its order; or give ``cone`` instead.
    cone
        ``(l, b, radius)`` in degrees (Galactic), or a :class:`Patch`.
    n_max
        Keep at most this many stars (a random subset of the Poisson draw, before the exact
        magnitude cut); None keeps all.
    r_max, r_min
        Apparent r-band limits (r_min None: no bright limit).
    band_set
        ``"lsst"`` (ugrizy) or ``"sdss"`` (ugriz).
    errors
        ``"lsst10"``, ``"lsstN"``, ``"sdss"``, ``"sdssN"``, ``"none"`` or a photerr model.
    seed
        Seed of the numpy random generator; the same seed gives the same catalogue.
    ar_inf
        Total sightline extinction A_r(inf) for the whole patch (e.g. SFD); None uses the
        default dust model per cell.
    locus
        Stellar locus for colours and the simulated M_r and [Fe/H] range (default locus).
    oversample
        Multiply the expected counts (equivalent to a patch this many times larger along the
        same sightlines); used to build smooth prior maps for small patches.
    truth_only
        Skip colours and photometry (faster); only the truth columns and ``rmag_true``.
    galaxy, dust
        Model overrides.

    Returns
    -------
    pandas.DataFrame
        One row per star; see :data:`TRUTH_COLUMNS` and the photometry columns
        ``{b}mag_true {b}mag {b}Err`` and colours ``ug gr ...`` with ``ugErr ...``.
    """
    patch = resolve_patch(pixel, order, cone)
    galaxy = galaxy or GalaxyModel()
    dust = dust or DustModel(r_sun=galaxy.r_sun, z_sun=galaxy.z_sun)
    locus = locus or build_locus()
    band_set = get_band_set(band_set)
    if oversample <= 0:
        raise ValueError("oversample must be positive")
    for name, value in (("r_max", r_max), ("r_min", r_min)):
        if value is not None and not R_LIMIT_RANGE[0] <= value <= R_LIMIT_RANGE[1]:
            raise ValueError(f"{name} must lie in {list(R_LIMIT_RANGE)} mag, got {value}")
    if r_min is not None and r_min >= r_max:
        raise ValueError(f"r_min ({r_min}) must be below r_max ({r_max})")
    if not truth_only:
        _error_model(errors, band_set)  # fail early on a bad spec
    rng = np.random.default_rng(seed)
    mr_lo_grid, mr_hi_grid = float(locus.mr[0]), float(locus.mr[-1])
    feh_range = (float(locus.feh[0]), float(locus.feh[-1]))

    # distance-modulus grid out to where the brightest star is fainter than r_max
    n_bins = int(np.ceil((r_max - mr_lo_grid - DM_MIN) / DM_STEP))
    dm_edges = DM_MIN + DM_STEP * np.arange(n_bins + 1)
    d_edges = 10.0 ** (dm_edges / 5 + 1)
    sl = _sightlines(patch, dm_edges, dust, ar_inf)
    omega = 4 * np.pi / (12 * 4**sl.depth)
    vol = (d_edges[1:] ** 3 - d_edges[:-1] ** 3) / 3.0
    d_mid = (0.5 * (d_edges[1:] ** 3 + d_edges[:-1] ** 3)) ** (1 / 3)
    r_cyl, z = galactocentric(
        d_mid[None, :], sl.l[:, None], sl.b[:, None], galaxy.r_sun, galaxy.z_sun
    )
    share = galaxy.component_densities(r_cyl, z) / galaxy.local_density  # (n_cells, n_bins, 3)
    del r_cyl, z
    a_edges = sl.ar_inf[:, None] * sl.dust_fraction  # (n_cells, n_edges)
    mr_hi = np.minimum(mr_hi_grid, r_max - dm_edges[None, :-1] - a_edges[:, :-1])
    if r_min is None:
        mr_lo = np.full_like(mr_hi, mr_lo_grid)
    else:
        mr_lo = np.maximum(mr_lo_grid, r_min - dm_edges[None, 1:] - a_edges[:, 1:])
    lf = _LFSampler(galaxy, mr_lo_grid, mr_hi_grid)
    scale = oversample * omega * vol[None, :]
    for code in range(share.shape[-1]):  # share becomes lambda_c in place (bounds memory)
        weight = np.clip(lf.cdf(mr_hi, code) - lf.cdf(mr_lo, code), 0.0, None)
        share[..., code] *= scale * weight
    lam_c = share
    lam = lam_c.sum(axis=-1)
    inside_fraction = patch.cell_fractions(sl.ipix, sl.depth)
    counts = rng.poisson(lam.ravel())
    if n_max is not None and counts.sum() > n_max:
        counts = rng.multivariate_hypergeometric(counts, int(n_max))
    flat = np.repeat(np.arange(counts.size), counts)
    cell, dm_bin = np.divmod(flat, n_bins)

    # component from the bin's lambda_c; distance uniform in volume within the bin; M_r from
    # the component's luminosity function truncated to the bin's limits
    cum_c = np.cumsum(lam_c[cell, dm_bin], axis=-1)
    u_c = rng.random(flat.size) * cum_c[:, -1]
    component = (u_c[:, None] >= cum_c[:, :-1]).sum(axis=-1).astype(np.int8)
    d3_lo, d3_hi = d_edges[dm_bin] ** 3, d_edges[dm_bin + 1] ** 3
    dist = np.cbrt(d3_lo + rng.random(flat.size) * (d3_hi - d3_lo))
    dm = 5.0 * np.log10(dist) - 5.0
    u_mr = rng.random(flat.size)
    mr = np.empty(flat.size)
    for code in range(lam_c.shape[-1]):
        sel = component == code
        c_lo = lf.cdf(mr_lo[cell[sel], dm_bin[sel]], code)
        c_hi = lf.cdf(mr_hi[cell[sel], dm_bin[sel]], code)
        mr[sel] = lf.inverse(c_lo + u_mr[sel] * (c_hi - c_lo), code)
    t = np.clip((dm - dm_edges[dm_bin]) / DM_STEP, 0.0, 1.0)
    frac = sl.dust_fraction[cell, dm_bin] * (1 - t) + sl.dust_fraction[cell, dm_bin + 1] * t
    ar = sl.ar_inf[cell] * frac
    r_true = mr + dm + ar
    keep = r_true <= r_max
    if r_min is not None:
        keep &= r_true >= r_min
    cell, dist, dm, mr, ar, r_true, component = (
        x[keep] for x in (cell, dist, dm, mr, ar, r_true, component)
    )
    n = len(cell)

    # positions within the cells (cone: drop the part of edge cells outside the cone)
    lon, lat = uniform_points_in_cells(sl.ipix[cell], sl.depth, rng)
    inside = patch.contains(lon, lat)
    if not np.all(inside):
        cell, dist, dm, mr, ar, r_true, component, lon, lat = (
            x[inside] for x in (cell, dist, dm, mr, ar, r_true, component, lon, lat)
        )
        n = len(cell)
    if patch.is_healpix:
        ra, dec = lon, lat
        l_deg, b_deg = _icrs_to_galactic(ra, dec)
    else:
        l_deg, b_deg = lon, lat
        ra, dec = _galactic_to_icrs(l_deg, b_deg)
    _, z = galactocentric(dist, l_deg, b_deg, galaxy.r_sun, galaxy.z_sun)
    feh = galaxy.sample_feh(component, z, rng, feh_range=feh_range)

    frame = pd.DataFrame(
        {
            "source_id": np.arange(n, dtype=np.int64),
            "ra": ra,
            "dec": dec,
            "l": l_deg,
            "b": b_deg,
            "Mr_true": mr,
            "FeH_true": feh,
            "Ar_true": ar,
            "dist_true": dist,
            "DM_true": dm,
            "component": component.astype(np.int8),
            "Ar_inf": sl.ar_inf[cell],
            "Ar": sl.ar_inf[cell],
            "rmag_true": r_true,
        }
    )
    if not truth_only:
        _add_photometry(frame, locus, band_set, errors, rng)
    frame.attrs["photodist_simulation"] = {
        "patch": patch.to_dict(),
        "area_deg2": patch.area_deg2,
        "seed": int(seed),
        "r_max": float(r_max),
        "r_min": None if r_min is None else float(r_min),
        "n_max": n_max,
        "oversample": float(oversample),
        "band_set": band_set.name,
        "errors": str(errors) if not truth_only else None,
        "ar_inf": None if ar_inf is None else float(ar_inf),
        "expected_stars": float((lam.sum(axis=1) * inside_fraction).sum()),
        "expected_stars_per_component": {
            name: float((lam_c[..., k].sum(axis=1) * inside_fraction).sum())
            for k, name in enumerate(COMPONENT_NAMES)
        },
        "galaxy": asdict(galaxy),
        "dust": asdict(dust),
        "locus_feh": [float(locus.feh[0]), float(locus.feh[-1]), locus.feh_step],
        "locus_mr": [float(locus.mr[0]), float(locus.mr[-1]), locus.mr_step],
    }
    return frame


def _add_photometry(
    frame: pd.DataFrame,
    locus: Locus,
    band_set: BandSet,
    errors: str | photerr.ErrorModel,
    rng: np.random.Generator,
) -> None:
    """Add true and observed magnitudes, errors and colours to a truth frame (in place)."""
    colors = locus.interpolate(frame["Mr_true"].to_numpy(), frame["FeH_true"].to_numpy())
    ug, gr, ri, iz, zy = (colors[:, COLOR_NAMES.index(c)] for c in COLOR_NAMES)
    r0 = frame["Mr_true"].to_numpy() + frame["DM_true"].to_numpy()
    intrinsic = {"r": r0, "g": r0 + gr, "u": r0 + gr + ug, "i": r0 - ri}
    intrinsic["z"] = intrinsic["i"] - iz
    intrinsic["y"] = intrinsic["z"] - zy
    ar = frame["Ar_true"].to_numpy()
    true = pd.DataFrame(
        {b: intrinsic[b] + ar * band_set.extinction_ratios[b] for b in band_set.bands}
    )
    observed, errs = add_photometric_errors(true, errors, band_set, rng)
    new: dict[str, np.ndarray] = {}
    for k, b in enumerate(band_set.bands):
        new[f"{b}mag_true"] = true[b].to_numpy()
        new[f"{b}mag"] = observed[:, k]
        new[f"{b}Err"] = errs[:, k]
    col, col_err = colors_from_magnitudes(observed, errs)
    for k, name in enumerate(band_set.colors):
        new[name] = col[:, k]
    for k, name in enumerate(band_set.colors):
        new[f"{name}Err"] = col_err[:, k]
    for key, values in new.items():
        frame[key] = values


def expected_counts(
    pixel: int | None = None,
    order: int = 4,
    cone: tuple[float, float, float] | Patch | None = None,
    r_max: float = DEFAULT_R_MAX,
    **kwargs: Any,
) -> float:
    """Expected number of stars with r <= r_max in a patch (no random draws kept)."""
    frame = simulate_patch(pixel, order, cone, r_max=r_max, truth_only=True, n_max=0, **kwargs)
    return float(frame.attrs["photodist_simulation"]["expected_stars"])


def write_simulation(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a simulated catalogue to Parquet with its parameters in the file metadata.

    The output is byte-for-byte reproducible for the same frame.
    """
    path = Path(path)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)  # keeps the file free of library-version strings
    params = frame.attrs.get("photodist_simulation", {})
    meta[_PARQUET_KEY] = json.dumps(params, sort_keys=True, default=float).encode()
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, compression="zstd")
    return path


def read_simulation(path: str | Path) -> pd.DataFrame:
    """Read a catalogue written by :func:`write_simulation` (parameters in ``frame.attrs``)."""
    table = pq.read_table(path)
    frame = table.to_pandas()
    raw = (table.schema.metadata or {}).get(_PARQUET_KEY)
    if raw is not None:
        frame.attrs["photodist_simulation"] = json.loads(raw)
    return frame
