"""A simple Milky Way model: stellar number density, luminosity functions, metallicity and dust.

The model is the one the simulator (:mod:`photodist.simulate`) draws stars from and the prior
maps (:mod:`photodist.priors`) are built from.

* Geometry: the Sun is at R0 = 8.0 kpc from the Galactic centre and Z0 = 25 pc above the plane
  (Jurić et al. 2008, ApJ 673, 864).
* Number density (Jurić et al. 2008, bias-corrected fit, their Table 10): an exponential thin
  disk (H1 = 300 pc, L1 = 2600 pc), a thick disk with f = 0.12 of the thin-disk density at the
  solar position (H2 = 900 pc, L2 = 3600 pc) and an oblate power-law halo with f_h = 0.0051,
  q_H = 0.64, n_H = 2.77. All three are normalised to the thin-disk density in the plane at
  R = R0, ``rho_D(R0, 0)``, as in Jurić et al. (2008, eqs. 22-24):
  ``rho_thin = exp(-(R - R0)/L1 - |Z|/H1)``, ``rho_thick = f exp(-(R - R0)/L2 - |Z|/H2)``,
  ``rho_halo = f_h (R0 / sqrt(R^2 + (Z/q_H)^2))^n_H``, with Z the height above the plane.
  There is no bulge or bar: sightlines into the inner Galaxy (R < ~2 kpc) are not realistic.
* Luminosity functions. The tabulated local luminosity function phi(M_r) (Jurić et al. 2008 /
  Ivezić et al., -1 < M_r < 17, stars pc^-3 mag^-1) is the density of all stars at the Sun per
  unit M_r. Jurić et al. measured the component normalisations f and f_h as ratios of the
  densities of main-sequence stars of the same colour (M dwarfs for the disks, stars near the
  turn-off for the halo), with one photometric parallax relation. At a given colour an old,
  metal-poor component's main-sequence star is fainter than a thin-disk star by ``shift_c =
  DeltaM(<[Fe/H]>_c) - DeltaM(<[Fe/H]>_thin)`` with DeltaM of Ivezić et al. (2008, eq. A7):
  0.70 mag for the halo, 0.08 mag for the thick disk (``main_sequence_shift``). So on the main
  sequence component c has ``phi_c(M_r) = phi(M_r - shift_c)``: at every colour it contributes
  the fraction ``rho_c(R0, Z0) / rho(R0, Z0)`` of the stars at the Sun. The density of component
  c anywhere is ``phi_c(M_r) rho_c(R, Z) / rho(R0, Z0)``, with ``rho(R0, Z0)`` the total density
  at the Sun. ``same_colour_normalisation=False`` drops the shift (ratios at the same M_r).

  - Thin disk: ``phi_thin = phi``, the full table. Its bright end (M_r < ~4) is made of young
    main-sequence stars and giants, which only the thin disk has (``old_population_turnoff``).
  - Thick disk and halo (ages ~10-12 Gyr) have no main-sequence stars brighter than their
    turn-off M_TO: ``phi_c = phi(M_r - shift_c)`` for M_r >= M_TO and ``phi_c = g_c phi`` for
    M_r < M_TO, a small sub-giant / giant population with the bright-end shape of the table.
  - Turn-off: Jurić et al. (2008) and Ivezić et al. (2008) place the halo main-sequence
    turn-off at g-r ~ 0.2-0.3; we take the middle, g-r = 0.25, for the
    halo and the red end, g-r = 0.30, for the ~0.85 dex more metal-rich thick disk (an old
    population's turn-off reddens with metallicity). M_TO is the main-sequence M_r at that
    colour and the component's mean [Fe/H] from the locus colours (Yuan et al. 2015) and the
    Ivezić et al. (2008, eqs. A2 and A7) M_r(g-i, [Fe/H]) relation: M_TO = 4.23 for the halo
    ([Fe/H] = -1.46) and 4.03 for the thick disk ([Fe/H] = -0.61, the Ivezić disk
    metallicity averaged over the thick disk's vertical profile at R0), both "near M_r ~ 4".
    A shift of 0.05 mag in the turn-off g-r moves M_TO by about 0.5 mag.
  - Giants: the number of stars in a post-main-sequence phase equals the rate at which stars
    leave the main sequence times the duration of the phase (the fuel-consumption theorem,
    Renzini & Buzzoni 1986). With main-sequence lifetimes ``t ~ m^-(beta-1)`` for ``L ~
    m^beta`` and post-main-sequence phases (sub-giant, red giant, horizontal and asymptotic
    giant branch) lasting a fraction eps of the main-sequence lifetime, the number of stars
    brighter than the turn-off per main-sequence star in the magnitude below it is
    ``R = eps 2.5 beta / (ln(10) (beta - 1))`` = 0.14 for eps = 0.1 (the Sun: ~11 Gyr on the
    main sequence, ~1 Gyr beyond it; Sackmann, Boothroyd & Kraemer 1993, ApJ 418, 457) and
    beta = 4-5 (R changes by < 5 % over that range). ``g_c`` makes the integral of
    ``g_c phi`` over -1 < M_r < M_TO equal R times that of phi_c over M_TO < M_r < M_TO + 1.

  ``GalaxyModel(old_population_turnoff=False, same_colour_normalisation=False)`` is the literal
  single-LF model (every component has ``phi``) for comparison.
* Metallicity (Ivezić et al. 2008, ApJ 684, 287, eqs. 8-10): halo [Fe/H] ~ N(-1.46, 0.30)
  everywhere; disk (thin and thick alike) ``0.63 N(a, 0.2) + 0.37 N(a + 0.14, 0.2)`` with
  ``a = mu_D(Z) - 0.067`` and ``mu_D(Z) = -0.78 + 0.35 exp(-|Z| / 1 kpc)``, where mu_D is the
  median disk metallicity at |Z| (the mixture's median is ``mu_D - 0.015``). Ivezić et al.
  fit stars at |Z| > ~0.5 kpc; near the plane the formula gives [Fe/H] ~ -0.45, lower than
  the solar neighbourhood's ~ -0.15 (e.g. the Geneva-Copenhagen survey, Nordström et al. 2004)
  and TRILEGAL's thin disk. Bond et al. (2010, ApJ 716, 1, eq. A2) later refitted mu_D with
  mu_inf = -0.82, Delta_mu = 0.55, H_mu = 0.5 kpc (``disk_feh_inf``, ``disk_feh_delta``,
  ``disk_feh_scale``); the default stays Ivezić et al. (2008).
* Dust: an exponential layer ``exp(-(R - R0)/L_d - |Z|/h_d)`` (h_d = 100 pc, L_d = 3 kpc, a
  common simple choice, e.g. Drimmel & Spergel 2001 find h_d ~ 0.1-0.2 kpc). Along a sightline
  A_r(d) = A_r(inf) x (dust column to d) / (column to infinity), so any total A_r(inf) (e.g. an
  SFD value) can be imposed. The default A_r(inf) is ``A0 x column(l, b) / h_d``: the column
  relative to the mean column to the two Galactic poles (= h_d): close to the cosecant law
  ``A0 / |sin b|`` at high latitude (the Sun's height above the plane makes it 0.062 mag
  at the north pole and 0.098 at the south), finite in the plane; A0 = 0.08 mag (a typical
  polar SFD value, E(B-V) ~ 0.03 times A_r/E(B-V) = 2.75), capped at ``a_max`` = 10 mag.

Known limitations (measured by ``validation/simulated_vs_s82.py`` and
``validation/priors_vs_trilegal.py``): the locus is age-free, so sub-giants of the old components
between the locus turn-off (g-i = 0.2) and M_TO get main-sequence colours slightly bluer than
the turn-off. Towards Stripe 82 total counts are 1.07-1.46 times the real ones for 15 < r < 21
(1.56-2.24 for the literal single-LF model); red (g-i > 1) counts agree within ~20 %, but the
model still has ~2 times more blue (0.4 < g-i < 1) stars at 19 < r < 21, nearly all halo. The
Ivezić et al. disk metallicity is ~0.4 dex lower than TRILEGAL's at 16 < r < 22 towards Stripe
82, and at r > 20 TRILEGAL's median M_r is 1-2 mag fainter (more M dwarfs, fewer distant halo
turn-off stars).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from photodist import locus as _locus

#: Component codes used in simulated catalogues.
THIN, THICK, HALO = 0, 1, 2
COMPONENT_NAMES: tuple[str, ...] = ("thin", "thick", "halo")

#: Local luminosity function (M_r, stars pc^-3 mag^-1), all components (Jurić et al. 2008;
#: values as tabulated by Ivezić et al. for the photometric-distance work).
LUMINOSITY_FUNCTION_TABLE: tuple[tuple[float, float], ...] = (
    (-1.0, 3.45e-5),
    (0.0, 7.38e-5),
    (1.0, 1.58e-4),
    (2.0, 3.37e-4),
    (3.0, 7.21e-4),
    (4.0, 1.54e-3),
    (4.5, 2.26e-3),
    (5.0, 3.60e-3),
    (5.5, 2.53e-3),
    (6.0, 2.22e-3),
    (6.5, 2.33e-3),
    (7.0, 2.13e-3),
    (7.5, 1.97e-3),
    (8.0, 2.25e-3),
    (8.5, 2.90e-3),
    (9.0, 3.90e-3),
    (9.5, 5.16e-3),
    (10.0, 6.46e-3),
    (10.5, 7.50e-3),
    (11.0, 8.02e-3),
    (11.5, 7.79e-3),
    (12.0, 6.68e-3),
    (12.5, 5.62e-3),
    (13.0, 4.99e-3),
    (13.5, 4.53e-3),
    (14.0, 4.06e-3),
    (14.5, 3.49e-3),
    (15.0, 2.79e-3),
    (15.5, 2.00e-3),
    (16.0, 1.29e-3),
    (16.5, 9.0e-4),
    (17.0, 8.5e-4),
)
_LF = np.array(LUMINOSITY_FUNCTION_TABLE)
#: Step (mag) of the M_r grid on which the component luminosity functions are integrated.
_LF_INTEGRATION_STEP = 1.0e-3


@lru_cache(maxsize=256)
def _integrate_lf(lo: float, hi: float) -> float:
    """Integral of the tabulated luminosity function over lo < M_r < hi (stars pc^-3)."""
    lo, hi = max(lo, float(_LF[0, 0])), min(hi, float(_LF[-1, 0]))
    if hi <= lo:
        return 0.0
    n = max(int(np.ceil((hi - lo) / _LF_INTEGRATION_STEP)), 1) + 1
    mr = np.linspace(lo, hi, n)
    phi = GalaxyModel.luminosity_function(mr)
    return float(np.sum(0.5 * (phi[1:] + phi[:-1]) * np.diff(mr)))


@lru_cache(maxsize=256)
def main_sequence_absmag_at_gr(gr: float, feh: float) -> float:
    """Main-sequence M_r at colour g-r and [Fe/H].

    The locus main-sequence colours (Yuan et al. 2015 and the calibrated blue end, see
    :mod:`photodist.locus`) give the g-i of that g-r; the Ivezić et al. (2008, eqs. A2 and A7)
    relation gives M_r(g-i, [Fe/H]).
    """
    gi = np.linspace(_locus.MS_GI_VALID[0], 1.5, 13001)
    gr_ms = _locus.main_sequence_colors(gi, np.full_like(gi, feh))["gr"]
    if not np.all(np.diff(gr_ms) > 0):
        raise ValueError("main-sequence g-r is not monotonic in g-i; cannot invert")
    if not gr_ms[0] <= gr <= gr_ms[-1]:
        raise ValueError(
            f"g-r = {gr} is outside the main-sequence range {gr_ms[0]:.3f}..{gr_ms[-1]:.3f} "
            f"at [Fe/H] = {feh}"
        )
    return float(_locus.ms_absmag(np.interp(gr, gr_ms, gi), feh))


def _as_component_codes(component: int | str | np.ndarray) -> np.ndarray:
    """Component names or codes as an integer array (0 thin, 1 thick, 2 halo)."""
    if isinstance(component, str):
        if component not in COMPONENT_NAMES:
            raise ValueError(f"unknown component {component!r}; choose from {COMPONENT_NAMES}")
        return np.asarray(COMPONENT_NAMES.index(component))
    codes = np.asarray(component)
    if codes.size and (np.any(codes < THIN) or np.any(codes > HALO)):
        raise ValueError("component codes must be 0 (thin), 1 (thick) or 2 (halo)")
    return codes.astype(int)


def galactocentric(
    dist: np.ndarray, l_deg: np.ndarray, b_deg: np.ndarray, r_sun: float, z_sun: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cylindrical radius R and height Z above the plane (pc) for heliocentric (d, l, b).

    Parameters
    ----------
    dist
        Heliocentric distance (pc).
    l_deg, b_deg
        Galactic longitude and latitude (degrees); broadcast against ``dist``.
    r_sun, z_sun
        Solar Galactocentric radius and height above the plane (pc).
    """
    lr = np.deg2rad(l_deg)
    br = np.deg2rad(b_deg)
    proj = dist * np.cos(br)
    x = r_sun - proj * np.cos(lr)
    y = proj * np.sin(lr)
    return np.hypot(x, y), z_sun + dist * np.sin(br)


@dataclass(frozen=True)
class GalaxyModel:
    """Three-component Milky Way number-density model with a luminosity function.

    Lengths are in pc. Densities from :meth:`density` are relative to the thin-disk density in
    the plane at the solar radius (the Jurić et al. 2008 normalisation).

    ``old_population_turnoff`` (default True) gives the thick disk and halo their own
    luminosity function without main-sequence stars brighter than their turn-off
    (``thick_turnoff_gr``, ``halo_turnoff_gr``) plus ``old_giant_ratio`` post-main-sequence
    stars per main-sequence star in the magnitude below the turn-off; False applies the
    tabulated luminosity function to every component (the literal single-LF model). See the
    module docstring for the sources.
    """

    r_sun: float = 8000.0
    z_sun: float = 25.0
    thin_scale_height: float = 300.0
    thin_scale_length: float = 2600.0
    thick_fraction: float = 0.12
    thick_scale_height: float = 900.0
    thick_scale_length: float = 3600.0
    halo_fraction: float = 0.0051
    halo_axis_ratio: float = 0.64
    halo_power: float = 2.77
    halo_min_radius: float = 1.0  # pc; only guards the power law against r = 0
    halo_feh_mean: float = -1.46
    halo_feh_sigma: float = 0.30
    disk_feh_inf: float = -0.78
    disk_feh_delta: float = 0.35
    disk_feh_scale: float = 1000.0
    disk_feh_offset: float = -0.067
    disk_feh_second_shift: float = 0.14
    disk_feh_first_weight: float = 0.63
    disk_feh_sigma: float = 0.2
    old_population_turnoff: bool = True
    thick_turnoff_gr: float = 0.30
    halo_turnoff_gr: float = 0.25
    old_giant_ratio: float = 0.14
    same_colour_normalisation: bool = True

    def density(
        self, r_cyl: np.ndarray, z: np.ndarray, component: int | str | np.ndarray = "total"
    ) -> np.ndarray:
        """Number density of one component (or ``"total"``) relative to rho_thin(R0, 0).

        Parameters
        ----------
        r_cyl, z
            Galactocentric cylindrical radius and height above the plane (pc).
        component
            ``"thin"``, ``"thick"``, ``"halo"``, ``"total"`` or an integer code.
        """
        r_cyl = np.asarray(r_cyl, dtype=float)
        z = np.asarray(z, dtype=float)
        if isinstance(component, str) and component == "total":
            return sum(self.density(r_cyl, z, c) for c in range(3))  # type: ignore[return-value]
        code = _as_component_codes(component)
        if code.ndim:
            out = np.empty(np.broadcast(r_cyl, z, code).shape)
            rr, zz, cc = np.broadcast_arrays(r_cyl, z, code)
            for c in range(3):
                sel = cc == c
                out[sel] = self.density(rr[sel], zz[sel], c)
            return out
        code = int(code)
        absz = np.abs(z)
        if code == THIN:
            return np.exp(
                -(r_cyl - self.r_sun) / self.thin_scale_length - absz / self.thin_scale_height
            )
        if code == THICK:
            return self.thick_fraction * np.exp(
                -(r_cyl - self.r_sun) / self.thick_scale_length - absz / self.thick_scale_height
            )
        radius = np.sqrt(r_cyl**2 + (z / self.halo_axis_ratio) ** 2)
        radius = np.maximum(radius, self.halo_min_radius)
        return self.halo_fraction * (self.r_sun / radius) ** self.halo_power

    def component_densities(self, r_cyl: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Densities of thin disk, thick disk and halo, shape ``(..., 3)``."""
        return np.stack([self.density(r_cyl, z, c) for c in range(3)], axis=-1)

    @property
    def local_density(self) -> float:
        """Total density at the Sun's position (R0, Z0), relative to rho_thin(R0, 0)."""
        return float(self.density(np.array(self.r_sun), np.array(self.z_sun), "total"))

    def relative_density(self, r_cyl: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Total density relative to its value at the Sun (1 at the solar position)."""
        return self.density(r_cyl, z, "total") / self.local_density

    @staticmethod
    def luminosity_function(mr: np.ndarray) -> np.ndarray:
        """Local luminosity function phi(M_r) (stars pc^-3 mag^-1), 0 outside -1..17.

        Interpolated linearly in log phi between the tabulated values.
        """
        mr = np.asarray(mr, dtype=float)
        log_phi = np.interp(mr, _LF[:, 0], np.log(_LF[:, 1]))
        inside = (mr >= _LF[0, 0]) & (mr <= _LF[-1, 0])
        return np.where(inside, np.exp(log_phi), 0.0)

    @property
    def local_fractions(self) -> np.ndarray:
        """Shares of thin disk, thick disk and halo in the total density at the Sun, (3,)."""
        local = self.component_densities(np.array(self.r_sun), np.array(self.z_sun))
        return local / local.sum()

    def component_mean_feh(self, component: int | str) -> float:
        """Mean [Fe/H] of a component: the halo mean, or the disk metallicity averaged over the
        component's vertical density profile at R0 (``E[exp(-|Z|/H_mu)] = H_mu / (H_mu + H)``).
        """
        code = int(_as_component_codes(component))
        if code == HALO:
            return float(self.halo_feh_mean)
        height = self.thin_scale_height if code == THIN else self.thick_scale_height
        mu_d = self.disk_feh_inf + self.disk_feh_delta * self.disk_feh_scale / (
            self.disk_feh_scale + height
        )
        second = 1.0 - self.disk_feh_first_weight
        return float(mu_d + self.disk_feh_offset + second * self.disk_feh_second_shift)

    def main_sequence_shift(self, component: int | str) -> float:
        """How much fainter (mag) a component's main sequence is than the thin disk's at the same
        colour: ``M_r(g-i, [Fe/H]_c) - M_r(g-i, [Fe/H]_thin)`` from the component mean [Fe/H]
        (Ivezić et al. 2008, eq. A7; independent of g-i). 0 without
        ``same_colour_normalisation``."""
        code = int(_as_component_codes(component))
        if not self.same_colour_normalisation or code == THIN:
            return 0.0
        feh = np.array([self.component_mean_feh(code), self.component_mean_feh(THIN)])
        delta = _locus.ms_delta_absmag(feh)
        return float(delta[0] - delta[1])

    @cached_property
    def _lf_cuts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Turn-off M_r, bright-end scale g and main-sequence shift of each component (-inf, 1
        and 0 for the tabulated LF)."""
        turnoff = np.full(3, -np.inf)
        scale = np.ones(3)
        shift = np.array([self.main_sequence_shift(code) for code in range(3)])
        if self.old_population_turnoff:
            if self.old_giant_ratio < 0:
                raise ValueError("old_giant_ratio must be non-negative")
            for code, colour in ((THICK, self.thick_turnoff_gr), (HALO, self.halo_turnoff_gr)):
                m_to = main_sequence_absmag_at_gr(float(colour), self.component_mean_feh(code))
                below = _integrate_lf(m_to - shift[code], m_to + 1.0 - shift[code])
                above = _integrate_lf(-np.inf, m_to)
                turnoff[code] = m_to
                scale[code] = self.old_giant_ratio * below / above if above > 0 else 0.0
        return turnoff, scale, shift

    def turnoff_absmag(self, component: int | str) -> float:
        """Main-sequence turn-off M_r of a component (-inf: the full luminosity function)."""
        return float(self._lf_cuts[0][int(_as_component_codes(component))])

    def giant_scale(self, component: int | str) -> float:
        """Factor g on the tabulated luminosity function brighter than the turn-off."""
        return float(self._lf_cuts[1][int(_as_component_codes(component))])

    def component_luminosity_function(
        self, mr: np.ndarray, component: int | str | np.ndarray
    ) -> np.ndarray:
        """LF shape phi_c(M_r) of a component (stars pc^-3 mag^-1 for a component alone at the
        Sun's total density): ``phi(M_r - shift_c)`` on the main sequence (M_r at or below the
        turn-off), ``g_c phi(M_r)`` brighter.

        Parameters
        ----------
        mr
            Absolute magnitudes.
        component
            Component name or codes (broadcast against ``mr``).
        """
        mr = np.asarray(mr, dtype=float)
        code = _as_component_codes(component)
        turnoff, scale, shift = self._lf_cuts
        bright = mr < turnoff[code]
        main_sequence = self.luminosity_function(mr - shift[code])
        return np.where(bright, scale[code] * self.luminosity_function(mr), main_sequence)

    def component_number_densities(
        self, r_cyl: np.ndarray, z: np.ndarray, mr: np.ndarray
    ) -> np.ndarray:
        """Stars pc^-3 mag^-1 of each component, ``phi_c(M_r) rho_c(R, Z) / rho(R0, Z0)``,
        shape ``(..., 3)`` (thin, thick, halo)."""
        dens = self.component_densities(r_cyl, z) / self.local_density
        mr = np.asarray(mr, dtype=float)[..., None]
        phi = np.stack([self.component_luminosity_function(mr[..., 0], c) for c in range(3)], -1)
        return dens * phi

    def number_density(self, r_cyl: np.ndarray, z: np.ndarray, mr: np.ndarray) -> np.ndarray:
        """Stars pc^-3 mag^-1 at (R, Z) and M_r, summed over the components.

        At the Sun this is phi(M_r) on the main sequence below the old components' turn-off.
        """
        return self.component_number_densities(r_cyl, z, mr).sum(axis=-1)

    def disk_feh_mean(self, z: np.ndarray) -> np.ndarray:
        """Median-defining disk metallicity mu_D(Z) (Ivezić et al. 2008, eq. 9)."""
        return self.disk_feh_inf + self.disk_feh_delta * np.exp(
            -np.abs(np.asarray(z, dtype=float)) / self.disk_feh_scale
        )

    def expected_feh(self, component: int | str | np.ndarray, z: np.ndarray) -> np.ndarray:
        """Mean [Fe/H] (before clipping) of a component at height Z above the plane."""
        code = _as_component_codes(component)
        first = self.disk_feh_mean(z) + self.disk_feh_offset
        second_weight = 1.0 - self.disk_feh_first_weight
        disk = first + second_weight * self.disk_feh_second_shift
        return np.where(code == HALO, self.halo_feh_mean, disk)

    def sample_feh(
        self,
        component: int | str | np.ndarray,
        z: np.ndarray,
        rng: np.random.Generator,
        feh_range: tuple[float, float] | None = (-2.5, 0.5),
    ) -> np.ndarray:
        """Draw [Fe/H] for stars of given components at heights Z (pc), clipped to a range.

        Parameters
        ----------
        component
            Component name or codes (broadcast against ``z``).
        z
            Height above the Galactic plane (pc).
        rng
            Random generator; the draws are reproducible for a seeded generator.
        feh_range
            Clip the draws to this range (the locus range); None leaves them unclipped.
        """
        z = np.asarray(z, dtype=float)
        code = np.broadcast_to(_as_component_codes(component), z.shape)
        normal = rng.standard_normal(z.shape)
        second = rng.random(z.shape) >= self.disk_feh_first_weight
        disk_centre = self.disk_feh_mean(z) + self.disk_feh_offset
        disk_centre = disk_centre + np.where(second, self.disk_feh_second_shift, 0.0)
        feh = np.where(
            code == HALO,
            self.halo_feh_mean + self.halo_feh_sigma * normal,
            disk_centre + self.disk_feh_sigma * normal,
        )
        if feh_range is not None:
            feh = np.clip(feh, feh_range[0], feh_range[1])
        return feh

    def sample_component(
        self,
        r_cyl: np.ndarray,
        z: np.ndarray,
        rng: np.random.Generator,
        mr: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw each star's component with probabilities proportional to the local densities.

        With ``mr`` the probabilities are the component number densities at that M_r
        (:meth:`component_number_densities`), which differ from the density ratios brighter
        than the old components' turn-off.
        """
        if mr is None:
            dens = self.component_densities(r_cyl, z)
        else:
            dens = self.component_number_densities(r_cyl, z, mr)
        cum = np.cumsum(dens, axis=-1)
        u = rng.random(cum.shape[:-1]) * cum[..., -1]
        return (u[..., None] >= cum[..., :-1]).sum(axis=-1).astype(np.int8)


@dataclass(frozen=True)
class DustModel:
    """Exponential dust layer giving A_r as a function of distance along a sightline.

    Attributes
    ----------
    scale_height, scale_length
        Layer scale height and scale length (pc).
    polar_ar
        A_r(inf) averaged over the two Galactic poles (mag); sets the default A_r(inf).
    max_ar
        Cap on the default A_r(inf) (mag).
    r_sun, z_sun
        Solar position (pc); keep equal to the :class:`GalaxyModel` values.
    """

    scale_height: float = 100.0
    scale_length: float = 3000.0
    polar_ar: float = 0.08
    max_ar: float = 10.0
    r_sun: float = 8000.0
    z_sun: float = 25.0

    def density(self, r_cyl: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Dust density relative to the plane at the solar radius."""
        return np.exp(
            -(np.asarray(r_cyl) - self.r_sun) / self.scale_length - np.abs(z) / self.scale_height
        )

    def _grid(self) -> np.ndarray:
        # 0 plus log-spaced distances 0.1 pc .. 1 Mpc (2 % steps): the integrand is smooth
        return np.concatenate([[0.0], np.geomspace(0.1, 1.0e6, 1200)])

    def cumulative_column(
        self, dist: np.ndarray, l_deg: np.ndarray, b_deg: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dust column (pc, in plane-density units) from 0 to each distance, and to infinity.

        Parameters
        ----------
        dist
            Distances (pc), shape (n_d,), ascending.
        l_deg, b_deg
            Sightline directions, shape (n_sightlines,) or scalars.

        Returns
        -------
        column, total
            Shapes (n_sightlines, n_d) and (n_sightlines,).
        """
        l_arr = np.atleast_1d(np.asarray(l_deg, dtype=float))[:, None]
        b_arr = np.atleast_1d(np.asarray(b_deg, dtype=float))[:, None]
        grid = self._grid()
        r_cyl, z = galactocentric(grid[None, :], l_arr, b_arr, self.r_sun, self.z_sun)
        rho = self.density(r_cyl, z)
        steps = 0.5 * (rho[:, 1:] + rho[:, :-1]) * np.diff(grid)[None, :]
        cum = np.concatenate([np.zeros((len(rho), 1)), np.cumsum(steps, axis=1)], axis=1)
        dist = np.asarray(dist, dtype=float)
        column = np.stack([np.interp(dist, grid, row) for row in cum])
        return column, cum[:, -1]

    def fraction_along(self, dist: np.ndarray, l_deg: np.ndarray, b_deg: np.ndarray) -> np.ndarray:
        """Fraction of the total sightline dust column in front of each distance, (n_sl, n_d)."""
        column, total = self.cumulative_column(dist, l_deg, b_deg)
        return column / total[:, None]

    def ar_along(
        self, dist: np.ndarray, l_deg: float, b_deg: float, ar_inf: float | None = None
    ) -> np.ndarray:
        """A_r at distances ``dist`` (pc) along one sightline whose total is ``ar_inf``.

        ``ar_inf`` defaults to :meth:`default_ar_inf` for the sightline.
        """
        if ar_inf is None:
            ar_inf = float(self.default_ar_inf(l_deg, b_deg))
        dist = np.asarray(dist, dtype=float)
        frac = self.fraction_along(dist.ravel(), l_deg, b_deg)[0]
        return (ar_inf * frac).reshape(dist.shape)

    def default_ar_inf(self, l_deg: np.ndarray, b_deg: np.ndarray) -> np.ndarray:
        """Default total extinction A_r(inf) of a sightline (see the module docstring)."""
        _, total = self.cumulative_column(np.array([0.0]), l_deg, b_deg)
        ar = np.minimum(self.polar_ar * total / self.scale_height, self.max_ar)
        return ar if np.ndim(l_deg) or np.ndim(b_deg) else ar[0]
