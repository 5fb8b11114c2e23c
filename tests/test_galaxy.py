import numpy as np
import pytest
from scipy.integrate import quad

from photodist.galaxy import (
    HALO,
    LUMINOSITY_FUNCTION_TABLE,
    THICK,
    THIN,
    DustModel,
    GalaxyModel,
    galactocentric,
)

MODEL = GalaxyModel()


def test_solar_position_geometry():
    r_cyl, z = galactocentric(np.array(0.0), 123.0, -45.0, 8000.0, 25.0)
    assert r_cyl == pytest.approx(8000.0)
    assert z == pytest.approx(25.0)
    # towards the Galactic centre in the plane, at d = R0 we reach R = 0
    r_cyl, z = galactocentric(np.array(8000.0), 0.0, 0.0, 8000.0, 25.0)
    assert r_cyl == pytest.approx(0.0, abs=1e-6)
    # towards the north Galactic pole the height grows with distance
    r_cyl, z = galactocentric(np.array(1000.0), 0.0, 90.0, 8000.0, 25.0)
    assert (r_cyl, z) == (pytest.approx(8000.0), pytest.approx(1025.0))


def test_jurić_normalisations_at_the_solar_radius():
    r0 = np.array(8000.0)
    z0 = np.array(0.0)
    assert MODEL.density(r0, z0, "thin") == pytest.approx(1.0)
    assert MODEL.density(r0, z0, THICK) / MODEL.density(r0, z0, THIN) == pytest.approx(0.12)
    assert MODEL.density(r0, z0, "halo") / MODEL.density(r0, z0, "thin") == pytest.approx(0.0051)
    local = np.exp(-25 / 300) + 0.12 * np.exp(-25 / 900) + 0.0051
    assert MODEL.local_density == pytest.approx(local, rel=1e-6)
    assert MODEL.relative_density(r0, np.array(25.0)) == pytest.approx(1.0)


def test_disk_columns_integrate_to_twice_the_scale_heights():
    def column(component: str) -> float:
        f = lambda z: float(MODEL.density(np.array(8000.0), np.array(z), component))  # noqa: E731
        return quad(f, -20000, 0, limit=200)[0] + quad(f, 0, 20000, limit=200)[0]

    assert column("thin") == pytest.approx(2 * 300.0, rel=1e-4)
    assert column("thick") == pytest.approx(2 * 0.12 * 900.0, rel=1e-4)


def test_scale_lengths_and_halo_shape():
    ratio = MODEL.density(np.array(10600.0), np.array(0.0), "thin") / MODEL.density(
        np.array(8000.0), np.array(0.0), "thin"
    )
    assert ratio == pytest.approx(np.exp(-1.0))
    ratio = MODEL.density(np.array(11600.0), np.array(0.0), "thick") / MODEL.density(
        np.array(8000.0), np.array(0.0), "thick"
    )
    assert ratio == pytest.approx(np.exp(-1.0))
    # oblate: the halo density at height q*a above the centre equals that at radius a
    a = 20000.0
    in_plane = MODEL.density(np.array(a), np.array(0.0), "halo")
    on_axis = MODEL.density(np.array(0.0), np.array(0.64 * a), "halo")
    assert on_axis == pytest.approx(in_plane)
    assert in_plane == pytest.approx(0.0051 * (8000.0 / a) ** 2.77)


def test_component_codes_and_total():
    r_cyl = np.array([8000.0, 5000.0, 15000.0])
    z = np.array([0.0, 2000.0, -8000.0])
    parts = MODEL.component_densities(r_cyl, z)
    np.testing.assert_allclose(parts.sum(axis=-1), MODEL.density(r_cyl, z, "total"))
    np.testing.assert_allclose(
        MODEL.density(r_cyl, z, np.array([0, 1, 2])), parts[np.arange(3), [0, 1, 2]]
    )
    with pytest.raises(ValueError, match="unknown component"):
        MODEL.density(r_cyl, z, "bulge")


def test_luminosity_function_nodes_and_log_interpolation():
    table = np.array(LUMINOSITY_FUNCTION_TABLE)
    np.testing.assert_allclose(MODEL.luminosity_function(table[:, 0]), table[:, 1], rtol=1e-12)
    # halfway between nodes the log-interpolated value is the geometric mean
    mid = MODEL.luminosity_function(np.array(4.75))
    assert mid == pytest.approx(np.sqrt(2.26e-3 * 3.60e-3))
    assert MODEL.luminosity_function(np.array([-1.5, 17.5])).tolist() == [0.0, 0.0]


def test_luminosity_function_published_normalisations():
    f = lambda m: float(MODEL.luminosity_function(np.array(m)))  # noqa: E731
    # Ivezić & Jurić (2009) LF file header: 0.061 stars/pc^3 for -1 < M_r < 28, of which
    # 50 % have 4.9 < M_r < 12.
    main_sequence = quad(f, 4.9, 12, limit=400, points=np.arange(5, 12, 0.5))[0]
    assert main_sequence == pytest.approx(0.5 * 0.061, rel=0.03)
    # bright end: log10 phi = C + 0.33 M_r
    slope = np.diff(np.log10(MODEL.luminosity_function(np.array([-1.0, 4.0])))) / 5.0
    assert slope[0] == pytest.approx(0.33, abs=0.005)


def test_metallicity_distributions_recover_their_means():
    rng = np.random.default_rng(3)
    n = 200_000
    halo = MODEL.sample_feh(HALO, np.full(n, 5000.0), rng, feh_range=None)
    assert halo.mean() == pytest.approx(-1.46, abs=0.005)
    assert halo.std() == pytest.approx(0.30, abs=0.005)
    for z in (0.0, 1000.0, 4000.0):
        disk = MODEL.sample_feh("thin", np.full(n, z), rng, feh_range=None)
        mu_d = -0.78 + 0.35 * np.exp(-z / 1000.0)
        expected = mu_d - 0.067 + 0.37 * 0.14
        assert disk.mean() == pytest.approx(expected, abs=0.004)
        assert MODEL.expected_feh(THIN, np.array(z)) == pytest.approx(expected)
        # the mixture variance: 0.2^2 + 0.63 * 0.37 * 0.14^2
        assert disk.std() == pytest.approx(np.sqrt(0.04 + 0.63 * 0.37 * 0.14**2), abs=0.004)
    thick = MODEL.sample_feh(THICK, np.full(n, -1000.0), rng, feh_range=None)
    assert thick.mean() == pytest.approx(MODEL.expected_feh(THICK, np.array(1000.0)), abs=0.004)


def test_metallicity_clipping_and_reproducibility():
    z = np.linspace(0, 5000, 1000)
    a = MODEL.sample_feh(np.full(1000, HALO), z, np.random.default_rng(5), feh_range=(-1.5, -1.4))
    b = MODEL.sample_feh(np.full(1000, HALO), z, np.random.default_rng(5), feh_range=(-1.5, -1.4))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -1.5 and a.max() <= -1.4


def test_component_sampling_follows_density_ratios():
    rng = np.random.default_rng(11)
    r_cyl = np.full(100_000, 9000.0)
    z = np.full(100_000, 1500.0)
    comp = MODEL.sample_component(r_cyl, z, rng)
    dens = MODEL.component_densities(np.array(9000.0), np.array(1500.0))
    expected = dens / dens.sum()
    observed = np.bincount(comp, minlength=3) / len(comp)
    np.testing.assert_allclose(observed, expected, atol=0.006)


def test_dust_profile_reaches_the_sightline_total():
    dust = DustModel()
    dist = np.array([0.0, 50.0, 100.0, 300.0, 1000.0, 1e5])
    ar = dust.ar_along(dist, 120.0, 30.0, ar_inf=0.5)
    assert ar[0] == 0.0
    assert np.all(np.diff(ar) >= 0)
    assert ar[-1] == pytest.approx(0.5, rel=1e-6)
    # exponential layer: half the column toward the pole lies below h ln 2 above the Sun
    toward_pole = dust.ar_along(np.array([100.0 * np.log(2.0)]), 0.0, 90.0, ar_inf=1.0)
    assert toward_pole[0] == pytest.approx(0.5, abs=0.01)


def test_default_extinction_is_a_cosecant_law_at_high_latitude():
    dust = DustModel()
    poles = dust.default_ar_inf(np.array([0.0, 0.0]), np.array([90.0, -90.0]))
    assert poles.mean() == pytest.approx(0.08, rel=0.01)
    # the Sun sits Z0 = 25 pc above the layer's mid-plane: less dust to the north
    above = np.exp(-25.0 / 100.0)
    for b in (30.0, 50.0, -60.0):
        side = above if b > 0 else 2.0 - above
        expected = 0.08 * side / abs(np.sin(np.radians(b)))
        assert dust.default_ar_inf(100.0, b) == pytest.approx(expected, rel=0.05)
    assert dust.default_ar_inf(0.0, 0.0) == pytest.approx(10.0)  # capped toward the centre
    assert 1.0 < dust.default_ar_inf(180.0, 0.0) < 10.0


LITERAL = GalaxyModel(old_population_turnoff=False, same_colour_normalisation=False)


def test_local_shares_follow_juric_on_the_main_sequence():
    shares = MODEL.local_fractions
    thin, thick = np.exp(-25 / 300), 0.12 * np.exp(-25 / 900)
    halo = 0.0051 * (8000 / np.hypot(8000, 25 / 0.64)) ** 2.77
    assert shares[THICK] / shares[THIN] == pytest.approx(thick / thin)
    assert shares[HALO] / shares[THIN] == pytest.approx(halo / thin)
    assert shares.sum() == pytest.approx(1.0)
    sun = (np.array(8000.0), np.array(25.0))
    shift = np.array([MODEL.main_sequence_shift(code) for code in (THIN, THICK, HALO)])
    for mr in (5.0, 8.0, 12.5):  # main sequence below the old turn-offs
        # Jurić's f and f_h compare stars of the same colour: an old component's main-sequence
        # star of that colour is shift_c fainter than the thin disk's
        parts = np.array(
            [
                MODEL.component_number_densities(*sun, np.array(mr + shift[code]))[code]
                for code in (THIN, THICK, HALO)
            ]
        )
        np.testing.assert_allclose(parts / parts.sum(), shares, rtol=1e-12)
        assert parts.sum() == pytest.approx(float(MODEL.luminosity_function(np.array(mr))))
        total = MODEL.component_number_densities(*sun, np.array(mr)).sum()
        assert MODEL.number_density(*sun, np.array(mr)) == pytest.approx(total)
    # the shift is the Ivezić et al. (2008, eq. A7) main-sequence offset between mean [Fe/H]
    delta = lambda feh: 4.50 - 1.11 * feh - 0.18 * feh**2  # noqa: E731
    thin_feh = MODEL.component_mean_feh(THIN)
    assert shift[THIN] == 0.0
    assert shift[HALO] == pytest.approx(delta(-1.46) - delta(thin_feh))
    assert 0.6 < shift[HALO] < 0.8 and 0.0 < shift[THICK] < 0.15
    assert GalaxyModel(same_colour_normalisation=False).main_sequence_shift(HALO) == 0.0


def test_old_population_turnoffs():
    from photodist.galaxy import main_sequence_absmag_at_gr
    from photodist.locus import locus_colors

    assert MODEL.turnoff_absmag(THIN) == -np.inf
    for code, gr, feh in ((HALO, 0.25, -1.46), (THICK, 0.30, MODEL.component_mean_feh(THICK))):
        m_to = MODEL.turnoff_absmag(code)
        assert 3.8 < m_to < 4.5  # "near M_r ~ 4"
        assert m_to == pytest.approx(main_sequence_absmag_at_gr(gr, feh))
        # the locus puts a main-sequence star of that [Fe/H] and M_r at the turn-off colour
        colors, giant_weight = locus_colors(np.array([m_to]), np.array([feh]))
        assert colors[0, 1] == pytest.approx(gr, abs=2e-3)
        assert giant_weight[0] == 0.0
    # the thick disk's mean [Fe/H] is the Ivezić disk metallicity over its vertical profile
    z = np.linspace(0.0, 40000.0, 400001)
    weight = np.exp(-z / 900.0)
    mean = np.sum(MODEL.expected_feh(THICK, z) * weight) / np.sum(weight)
    assert MODEL.component_mean_feh(THICK) == pytest.approx(mean, abs=1e-4)
    with pytest.raises(ValueError, match="outside"):
        main_sequence_absmag_at_gr(-0.5, -1.0)


def test_old_components_lose_the_bright_main_sequence():
    mr = np.linspace(-1.0, 17.0, 18001)
    phi = MODEL.luminosity_function(mr)
    np.testing.assert_array_equal(MODEL.component_luminosity_function(mr, THIN), phi)
    for code in (THICK, HALO):
        m_to = MODEL.turnoff_absmag(code)
        phi_c = MODEL.component_luminosity_function(mr, code)
        shifted = MODEL.luminosity_function(mr - MODEL.main_sequence_shift(code))
        np.testing.assert_array_equal(phi_c[mr >= m_to], shifted[mr >= m_to])
        g = MODEL.giant_scale(code)
        assert 0 < g < 0.5
        np.testing.assert_allclose(phi_c[mr < m_to], g * phi[mr < m_to])
        # stars brighter than the turn-off per main-sequence star in the magnitude below it

        def integral(lo, hi, f=phi_c):
            sel = (mr >= lo) & (mr <= hi)
            return np.trapezoid(f[sel], mr[sel])

        ratio = integral(-1.0, m_to - 1e-9) / integral(m_to, m_to + 1.0)
        assert ratio == pytest.approx(MODEL.old_giant_ratio, rel=0.01)
    # the literal model applies the full table to every component
    for code in (THIN, THICK, HALO):
        np.testing.assert_array_equal(LITERAL.component_luminosity_function(mr, code), phi)
    r_cyl, z = np.array([8000.0, 9000.0]), np.array([25.0, 3000.0])
    np.testing.assert_allclose(
        LITERAL.number_density(r_cyl, z, np.array(2.0)),
        LITERAL.luminosity_function(np.array(2.0)) * LITERAL.relative_density(r_cyl, z),
    )


def test_bright_stars_near_the_sun_are_thin_disk():
    rng = np.random.default_rng(4)
    n = 100_000
    r_cyl, z = np.full(n, 8000.0), np.full(n, 25.0)
    bright = MODEL.sample_component(r_cyl, z, rng, mr=np.full(n, 2.0))
    faint = MODEL.sample_component(r_cyl, z, rng, mr=np.full(n, 8.0))
    shares = MODEL.local_fractions
    np.testing.assert_allclose(np.bincount(faint, minlength=3) / n, shares, atol=0.004)
    expected = shares * np.array([1.0, MODEL.giant_scale(THICK), MODEL.giant_scale(HALO)])
    observed = np.bincount(bright, minlength=3) / n
    np.testing.assert_allclose(observed, expected / expected.sum(), atol=0.003)
    assert observed[THIN] > 0.97


def test_disk_metallicity_median_is_ivezic_mu_d():
    # Ivezić et al. (2008): mu_D(Z) is the median disk [Fe/H] at |Z|; the two-Gaussian mixture
    # with a = mu_D - 0.067 has its median 0.015 dex below mu_D
    rng = np.random.default_rng(8)
    for z in (500.0, 2000.0):
        disk = MODEL.sample_feh(THIN, np.full(400_000, z), rng, feh_range=None)
        mu_d = -0.78 + 0.35 * np.exp(-z / 1000.0)
        assert np.median(disk) == pytest.approx(mu_d - 0.015, abs=0.004)
