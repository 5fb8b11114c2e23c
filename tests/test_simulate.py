import cdshealpix.nested as chp
import numpy as np
import pandas as pd
import photerr
import pytest
from astropy import units as u
from astropy.coordinates import Latitude, Longitude

from photodist.bands import get_band_set, photometry_from_frame
from photodist.simulate import (
    MAX_CELLS,
    NOISE_FREE_ERROR,
    SDSS_M5,
    TRUTH_COLUMNS,
    Patch,
    add_photometric_errors,
    expected_counts,
    read_simulation,
    simulate_patch,
    uniform_points_in_cells,
    write_simulation,
)

# a Stripe 82 order-6 pixel (0.84 deg^2) keeps the tests quick
ORDER, PIXEL = 6, 5


@pytest.fixture(scope="module")
def small(default_locus):
    return simulate_patch(pixel=PIXEL, order=ORDER, r_max=22.0, seed=7, locus=default_locus)


def test_same_seed_reproduces_and_other_seed_differs(small, default_locus, tmp_path):
    again = simulate_patch(pixel=PIXEL, order=ORDER, r_max=22.0, seed=7, locus=default_locus)
    pd.testing.assert_frame_equal(small, again)
    a = write_simulation(small, tmp_path / "a.parquet")
    b = write_simulation(again, tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    other = simulate_patch(pixel=PIXEL, order=ORDER, r_max=22.0, seed=8, locus=default_locus)
    assert len(other) != len(small) or not np.array_equal(other["ra"], small["ra"])


def test_columns_and_truth_relations(small, default_locus):
    bands = get_band_set("lsst").bands
    expected = list(TRUTH_COLUMNS)
    expected += [f"{b}{s}" for b in bands for s in ("mag_true", "mag", "Err")]
    expected += ["ug", "gr", "ri", "iz", "zy", "ugErr", "grErr", "riErr", "izErr", "zyErr"]
    assert sorted(small.columns) == sorted(set(expected))  # rmag_true appears in both lists
    assert len(small) > 1000
    np.testing.assert_array_equal(small["source_id"], np.arange(len(small)))
    np.testing.assert_allclose(small["DM_true"], 5 * np.log10(small["dist_true"]) - 5)
    np.testing.assert_allclose(
        small["rmag_true"], small["Mr_true"] + small["DM_true"] + small["Ar_true"]
    )
    assert small["rmag_true"].max() <= 22.0
    assert set(np.unique(small["component"])) <= {0, 1, 2}
    assert np.all(small["Ar_true"] <= small["Ar_inf"] + 1e-12)
    assert np.all(small["Ar_true"] >= 0)
    assert small["Mr_true"].between(default_locus.mr[0], default_locus.mr[-1]).all()
    assert small["FeH_true"].between(default_locus.feh[0], default_locus.feh[-1]).all()
    # intrinsic colours from the locus plus reddening
    colors = default_locus.interpolate(small["Mr_true"].to_numpy(), small["FeH_true"].to_numpy())
    ratios = get_band_set("lsst").extinction_ratios
    gr_true = small["gmag_true"] - small["rmag_true"]
    np.testing.assert_allclose(
        gr_true, colors[:, 1] + small["Ar_true"] * (ratios["g"] - 1), atol=1e-9
    )
    # observed colours are differences of observed magnitudes
    np.testing.assert_allclose(small["gr"], small["gmag"] - small["rmag"])
    np.testing.assert_allclose(small["grErr"], np.hypot(small["gErr"], small["rErr"]))


def test_stars_lie_in_the_pixel(small):
    ipix = chp.lonlat_to_healpix(
        Longitude(small["ra"].to_numpy() * u.deg), Latitude(small["dec"].to_numpy() * u.deg), ORDER
    )
    assert np.all(ipix == PIXEL)


def test_uniform_points_fill_cells_evenly():
    rng = np.random.default_rng(0)
    n = 64_000
    lon, lat = uniform_points_in_cells(np.full(n, 100, dtype=np.uint64), 3, rng)
    sub = chp.lonlat_to_healpix(Longitude(lon * u.deg), Latitude(lat * u.deg), 6)
    counts = np.bincount(sub.astype(np.int64) - 100 * 64, minlength=64)
    assert counts.size == 64 and counts.min() > 0  # only the 64 children of cell 100
    chi2 = np.sum((counts - n / 64) ** 2 / (n / 64))
    assert chi2 < 120  # 63 degrees of freedom: p ~ 1e-5


def test_counts_match_expectation(default_locus):
    n_expected = expected_counts(pixel=PIXEL, order=ORDER, r_max=21.0, locus=default_locus)
    sims = [
        len(
            simulate_patch(
                pixel=PIXEL, order=ORDER, r_max=21.0, seed=s, truth_only=True, locus=default_locus
            )
        )
        for s in range(3)
    ]
    # the magnitude cut trims a few stars from the edge bins only: Poisson agreement (4 sigma)
    assert abs(np.mean(sims) - n_expected) < 4 * np.sqrt(n_expected / len(sims))
    # counts scale with the oversampling factor
    doubled = simulate_patch(
        pixel=PIXEL,
        order=ORDER,
        r_max=21.0,
        seed=9,
        truth_only=True,
        oversample=2.0,
        locus=default_locus,
    )
    assert len(doubled) == pytest.approx(2 * np.mean(sims), rel=0.1)


def test_cone_patch(default_locus):
    cone = (176.0, -48.0, 0.5)
    frame = simulate_patch(cone=cone, r_max=21.0, seed=1, truth_only=True, locus=default_locus)
    cos_sep = np.sin(np.radians(frame["b"])) * np.sin(np.radians(-48.0)) + np.cos(
        np.radians(frame["b"])
    ) * np.cos(np.radians(-48.0)) * np.cos(np.radians(frame["l"] - 176.0))
    assert np.all(cos_sep >= np.cos(np.radians(0.5)) - 1e-12)
    # the star density matches that of a HEALPix patch at the same place
    area = Patch.cone(*cone).area_deg2
    assert area == pytest.approx(np.pi * 0.5**2, rel=1e-3)
    pix = Patch.healpix(
        6,
        int(
            chp.lonlat_to_healpix(
                Longitude(frame["ra"].median() * u.deg), Latitude(frame["dec"].median() * u.deg), 6
            )[0]
        ),
    )
    ref = expected_counts(cone=pix, r_max=21.0, locus=default_locus) / pix.area_deg2
    assert len(frame) / area == pytest.approx(ref, rel=0.1)
    # a cone's expected count is that of its own area, not of the cells that cover it
    expected = expected_counts(cone=cone, r_max=21.0, locus=default_locus)
    assert frame.attrs["photodist_simulation"]["expected_stars"] == pytest.approx(expected)
    assert expected / area == pytest.approx(ref, rel=0.1)


def test_large_patches_use_coarser_cells():
    ipix, depth = Patch.cone(30.0, 60.0, 40.0).cells()
    assert len(ipix) <= MAX_CELLS and depth < 7
    ipix, depth = Patch.healpix(0, 3).cells()
    assert (len(ipix), depth) == (1024, 5)
    ipix, depth = Patch.healpix(4, 0).cells()
    assert (len(ipix), depth) == (64, 7)
    np.testing.assert_array_equal(ipix, np.arange(64))


def test_r_limits_and_n_max(default_locus):
    frame = simulate_patch(
        pixel=PIXEL,
        order=ORDER,
        r_min=19.0,
        r_max=20.0,
        seed=2,
        truth_only=True,
        locus=default_locus,
    )
    assert frame["rmag_true"].between(19.0, 20.0).all()
    assert "gmag" not in frame
    capped = simulate_patch(
        pixel=PIXEL,
        order=ORDER,
        r_max=21.0,
        seed=2,
        n_max=100,
        truth_only=True,
        locus=default_locus,
    )
    assert 0 < len(capped) <= 100


def test_extinction_override(default_locus):
    frame = simulate_patch(
        pixel=PIXEL,
        order=ORDER,
        r_max=20.0,
        seed=3,
        ar_inf=0.24,
        truth_only=True,
        locus=default_locus,
    )
    assert np.all(frame["Ar_inf"] == 0.24) and np.all(frame["Ar"] == 0.24)
    # distant halo stars lie behind (almost) all the dust
    far = frame["dist_true"] > 5000
    assert frame.loc[far, "Ar_true"].min() > 0.99 * 0.24
    with pytest.raises(ValueError, match="ar_inf"):
        simulate_patch(pixel=PIXEL, order=ORDER, r_max=20.0, ar_inf=-1.0, locus=default_locus)


def test_lsst_errors_follow_ivezic_2019_v1():
    """Errors: sigma^2 = sigma_sys^2 + ((0.04 - gamma) x + gamma x^2) / N, x = 10^(0.4(m - m5))."""
    band_set = get_band_set("lsst")
    mags = pd.DataFrame({b: np.linspace(16, 27, 50) for b in band_set.bands})
    obs, err = add_photometric_errors(mags, "lsst10", band_set, np.random.default_rng(0))
    v1 = photerr.LsstErrorParamsV1()
    for k, band in enumerate(band_set.bands):
        # Ivezić et al. (2019) eq. 6 for 30 s visits at airmass 1.2
        m5 = (
            v1.Cm[band]
            + 0.5 * (v1.msky[band] - 21)
            + 2.5 * np.log10(0.7 / v1.theta[band])
            - v1.km[band] * (1.2 - 1)
        )
        x = 10 ** (0.4 * (mags[band].to_numpy() - m5))
        gamma = v1.gamma[band]
        n_vis = v1.nVisYr[band] * 10
        expected = np.sqrt(0.005**2 + ((0.04 - gamma) * x + gamma * x**2) / n_vis)
        np.testing.assert_allclose(err[:, k], expected, rtol=1e-10)
    # the V1 (Ivezić 2019) parameters, not photerr's newer default (V2)
    _, err_v2 = add_photometric_errors(
        mags,
        photerr.LsstErrorModel(highSNR=True, decorrelate=False),
        band_set,
        np.random.default_rng(0),
    )
    assert not np.allclose(err, err_v2, rtol=1e-3)


def test_sdss_errors_and_noise_statistics():
    band_set = get_band_set("sdss")
    n = 20_000
    mags = pd.DataFrame({b: np.full(n, SDSS_M5[b]) for b in band_set.bands})
    obs, err = add_photometric_errors(mags, "sdss", band_set, np.random.default_rng(1))
    # at the 5-sigma depth the random error is 0.2 mag; plus the 0.02 mag floor
    np.testing.assert_allclose(err, np.sqrt(0.2**2 + 0.02**2))
    pulls = (obs - mags.to_numpy()) / err
    assert pulls.mean() == pytest.approx(0.0, abs=0.03)
    assert pulls.std() == pytest.approx(1.0, abs=0.02)
    # averaging N epochs divides the random part by sqrt(N)
    _, err4 = add_photometric_errors(mags, "sdss4", band_set, np.random.default_rng(1))
    np.testing.assert_allclose(err4, np.sqrt(0.1**2 + 0.02**2))
    with pytest.raises(ValueError, match="no depth"):
        add_photometric_errors(
            mags.assign(y=20.0), "sdss", get_band_set("lsst"), np.random.default_rng(1)
        )


def test_noiseless_option_and_bad_spec(default_locus):
    frame = simulate_patch(
        pixel=PIXEL,
        order=ORDER,
        r_max=19.0,
        seed=4,
        errors="none",
        band_set="sdss",
        locus=default_locus,
    )
    np.testing.assert_array_equal(frame["rmag"], frame["rmag_true"])
    assert (frame["rErr"] == NOISE_FREE_ERROR).all() and "ymag" not in frame
    # a nominal positive error: every measurement stays usable (an error of 0 is not)
    phot = photometry_from_frame(frame, "sdss")
    assert np.isfinite(phot.colors).all() and np.isfinite(phot.color_errors).all()
    assert np.isfinite(phot.r).all()
    with pytest.raises(ValueError, match="unknown error model"):
        simulate_patch(pixel=PIXEL, order=ORDER, errors="hsc", locus=default_locus)
    for bad in ("sdss0", "lsst0"):
        with pytest.raises(ValueError, match="must be > 0"):
            simulate_patch(pixel=PIXEL, order=ORDER, errors=bad, locus=default_locus)
    for r_max in (np.inf, np.nan, 2000.0, -1.0):
        with pytest.raises(ValueError, match="r_max must lie in"):
            simulate_patch(pixel=PIXEL, order=ORDER, r_max=r_max, locus=default_locus)
    for l_deg in (np.nan, np.inf):
        with pytest.raises(ValueError, match="longitude must be finite"):
            simulate_patch(cone=(l_deg, 45.0, 1.0), locus=default_locus)
    with pytest.raises(ValueError, match="exactly one"):
        simulate_patch(pixel=1, cone=(0.0, 90.0, 1.0), locus=default_locus)
    with pytest.raises(ValueError, match="out of range"):
        simulate_patch(pixel=12 * 4**ORDER, order=ORDER, locus=default_locus)


def test_parquet_round_trip_keeps_parameters(small, tmp_path):
    path = write_simulation(small, tmp_path / "sim.parquet")
    back = read_simulation(path)
    pd.testing.assert_frame_equal(back, small, check_like=False)
    params = back.attrs["photodist_simulation"]
    assert params["seed"] == 7 and params["patch"] == {"order": ORDER, "pixel": PIXEL}
    assert params["errors"] == "lsst10"


def test_old_components_follow_their_own_luminosity_function(default_locus):
    """Thick-disk and halo stars brighter than the turn-off are scaled by g; fainter ones are not.

    For the same sightlines and magnitude limits the expected number of old stars brighter
    than the turn-off is exactly g times that of the single-LF model, and the number fainter
    than it is unchanged.
    """
    from photodist.galaxy import HALO, THICK, GalaxyModel

    common = dict(pixel=0, order=5, r_max=21.0, truth_only=True, oversample=10.0, seed=5)
    # both without the same-colour main-sequence shift, which would move the faint old stars
    new_model = GalaxyModel(same_colour_normalisation=False)
    literal_model = GalaxyModel(old_population_turnoff=False, same_colour_normalisation=False)
    new = simulate_patch(**common, locus=default_locus, galaxy=new_model)
    literal = simulate_patch(**common, locus=default_locus, galaxy=literal_model)
    for frame in (new, literal):
        params = frame.attrs["photodist_simulation"]
        per_component = params["expected_stars_per_component"]
        assert sum(per_component.values()) == pytest.approx(params["expected_stars"])
        counts = np.bincount(frame["component"], minlength=3)
        for k, name in enumerate(("thin", "thick", "halo")):
            expected = per_component[name]
            assert abs(counts[k] - expected) < 4 * np.sqrt(expected) + 5
    for code in (THICK, HALO):
        m_to = new_model.turnoff_absmag(code)
        g = new_model.giant_scale(code)
        n_bright = [
            np.sum((f["component"] == code) & (f["Mr_true"] < m_to)) for f in (new, literal)
        ]
        n_faint = [
            np.sum((f["component"] == code) & (f["Mr_true"] >= m_to)) for f in (new, literal)
        ]
        assert n_bright[1] > 1000 and n_faint[1] > 1000
        assert n_bright[0] == pytest.approx(g * n_bright[1], rel=4 / np.sqrt(g * n_bright[1]))
        assert n_faint[0] == pytest.approx(n_faint[1], rel=4 * np.sqrt(2 / n_faint[1]))
    # the thin disk is the same in both models
    thin = [np.sum(f["component"] == 0) for f in (new, literal)]
    assert thin[0] == pytest.approx(thin[1], rel=4 * np.sqrt(2 / thin[1]))
