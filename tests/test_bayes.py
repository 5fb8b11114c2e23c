import dataclasses

import numpy as np
import pandas as pd
import pytest

from photodist.bands import LSST, SDSS, Photometry, photometry_from_frame
from photodist.bayes import (
    BayesConfig,
    BayesEstimator,
    Flags,
    PriorGrid,
    adjacent_covariance,
    brute_force_posterior,
    prior_range_flags,
)
from photodist.locus import build_locus
from photodist.priors import PriorMap


def _stars(locus, band_set, n, seed, err_range=(0.002, 0.1), a_range=(0.0, 0.3), ar_map=0.25):
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, locus.shape[0], n)
    mi = rng.integers(0, locus.shape[1], n)
    a_true = rng.uniform(*a_range, n)
    nc = band_set.n_colors
    err = np.exp(rng.uniform(np.log(err_range[0]), np.log(err_range[1]), (n, nc)))
    colors = (
        locus.colors_for(band_set)[fi, mi]
        + a_true[:, None] * band_set.reddening_vector()
        + rng.normal(0, 1, (n, nc)) * err
    )
    phot = Photometry(band_set, np.full(n, 20.0), np.full(n, 0.01), colors, err, np.full(n, ar_map))
    return phot, locus.mr[mi], locus.feh[fi], a_true


def test_closed_form_matches_brute_force(coarse_locus):
    """Percentiles and moments of the closed-form marginalisation agree with an explicit A_r
    grid."""
    phot, *_ = _stars(coarse_locus, LSST, 12, seed=5)
    # include very bright stars with tiny errors, where a 0.02-mag A_r grid is too coarse
    phot.color_errors[:3] = 0.001
    rng = np.random.default_rng(2)
    log_prior = np.log(rng.uniform(0.2, 1.0, (1, *coarse_locus.shape)))
    prior = PriorGrid(log_prior, np.array([20.0]))
    config = BayesConfig(error_floor=0.0)
    result = BayesEstimator(coarse_locus, prior, config).predict(phot)
    for i in range(len(phot)):
        ref = brute_force_posterior(phot, i, coarse_locus, prior, config, a_step=0.001)
        for p in ("Mr", "FeH", "Ar", "Qr"):
            got = result.loc[i, [f"{p}_p16", f"{p}_p50", f"{p}_p84"]].to_numpy(float)
            np.testing.assert_allclose(got, ref[f"{p}_percentiles"], atol=0.01, err_msg=p)
        assert result.loc[i, "Ar_mean"] == pytest.approx(ref["Ar_mean"], abs=2e-3)
        for p in ("Mr", "FeH"):
            assert result.loc[i, f"{p}_mean"] == pytest.approx(ref[f"{p}_mean"], abs=1e-3)
            assert result.loc[i, f"{p}_std"] == pytest.approx(ref[f"{p}_std"], abs=1e-3)
        assert result.loc[i, "Ar_std"] == pytest.approx(ref["Ar_std"], abs=2e-3)
        # the log evidence, including the normalisations (the grid's tables: ~1e-3)
        assert result.loc[i, "log_evidence"] == pytest.approx(ref["log_evidence"], abs=3e-3)


def _entropy_bits(mass):
    p = mass / mass.sum()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def test_entropy_drops_are_measured_from_the_prior(coarse_locus):
    """Each marginal's entropy drop is the entropy of the star's prior marginal minus the
    posterior's (bits), as the explicit A_r grid gives it; colours that carry no information
    (a huge error floor) drop nothing, whatever the prior."""
    phot, *_ = _stars(coarse_locus, LSST, 6, seed=5)
    rng = np.random.default_rng(2)
    log_prior = np.log(rng.uniform(0.05, 1.0, (1, *coarse_locus.shape)))
    prior = PriorGrid(log_prior, np.array([20.0]))
    config = BayesConfig(error_floor=0.0)
    result = BayesEstimator(coarse_locus, prior, config).predict(phot)
    density = np.exp(log_prior[0])
    for i in range(len(phot)):
        ref = brute_force_posterior(phot, i, coarse_locus, prior, config, a_step=0.001)
        mr_drop = _entropy_bits(density.sum(axis=0)) - _entropy_bits(ref["Mr"][1])
        feh_drop = _entropy_bits(density.sum(axis=1)) - _entropy_bits(ref["FeH"][1])
        assert result.loc[i, "Mr_entropy_drop"] == pytest.approx(mr_drop, abs=1e-3)
        assert result.loc[i, "FeH_entropy_drop"] == pytest.approx(feh_drop, abs=1e-3)
    vague = BayesEstimator(coarse_locus, prior, BayesConfig(error_floor=20.0)).predict(phot)
    drops = vague[["Mr_entropy_drop", "FeH_entropy_drop", "Ar_entropy_drop"]].to_numpy()
    np.testing.assert_allclose(drops, 0.0, atol=1e-3)


@pytest.mark.parametrize("band_set", [LSST, SDSS], ids=["lsst", "sdss"])
def test_correlated_colours_match_brute_force(coarse_locus, band_set, band_noise_stars):
    """With the covariance of adjacent colours (and a missing colour, which decouples its
    neighbours) the closed form agrees with the explicit grid, whose chi2 inverts the full
    covariance matrix."""
    phot, *_ = band_noise_stars(coarse_locus, band_set, 8, seed=12)
    phot.colors[0, 1] = np.nan
    phot.color_errors[0, 1] = np.nan
    phot.color_errors[1] *= 0.05  # bright: the covariance dominates the shape of chi2
    phot.color_covariance[1] *= 0.05**2
    config = BayesConfig(error_floor=0.01)
    result = BayesEstimator(coarse_locus, None, config).predict(phot)
    independent = BayesEstimator(
        coarse_locus, None, BayesConfig(error_floor=0.01, color_covariance=False)
    ).predict(phot)
    for i in range(len(phot)):
        ref = brute_force_posterior(phot, i, coarse_locus, None, config, a_step=0.001)
        for p in ("Mr", "FeH", "Ar", "Qr"):
            got = result.loc[i, [f"{p}_p16", f"{p}_p50", f"{p}_p84"]].to_numpy(float)
            np.testing.assert_allclose(got, ref[f"{p}_percentiles"], atol=0.01, err_msg=p)
        for p in ("Mr", "FeH", "Ar"):
            assert result.loc[i, f"{p}_mean"] == pytest.approx(ref[f"{p}_mean"], abs=2e-3)
        assert result.loc[i, "log_evidence"] == pytest.approx(ref["log_evidence"], abs=3e-3)
    # the covariance matters: ignoring it changes the posteriors of the bright star
    assert abs(independent.loc[1, "Mr_mean"] - result.loc[1, "Mr_mean"]) > 0.01
    # without a covariance in the photometry, the two settings agree exactly
    plain = dataclasses.replace(phot, color_covariance=None)
    a = BayesEstimator(coarse_locus, None, config).predict(plain)
    b = BayesEstimator(coarse_locus, None, dataclasses.replace(config, color_covariance=False))
    pd.testing.assert_frame_equal(a, b.predict(phot))


def test_lower_extinction_bound_matches_brute_force(coarse_locus):
    """A flat A_r prior on [f A_map, 1.3 A_map + 0.1]: closed form against the explicit grid,
    and every A_r summary inside the bounds."""
    phot, *_ = _stars(coarse_locus, LSST, 10, seed=6, a_range=(0.0, 0.4))
    phot.color_errors[:2] = 0.001
    prior = PriorGrid(
        np.log(np.random.default_rng(3).uniform(0.2, 1.0, (1, *coarse_locus.shape))),
        np.array([20.0]),
    )
    config = BayesConfig(error_floor=0.0, dust_min_fraction=0.8)
    result = BayesEstimator(coarse_locus, prior, config).predict(phot)
    a_min = 0.8 * phot.dust
    assert (result["Ar_p16"] >= a_min - 1e-9).all() and (result["Ar_p84"] <= result["Ar_max"]).all()
    for i in range(len(phot)):
        ref = brute_force_posterior(phot, i, coarse_locus, prior, config, a_step=0.001)
        assert ref["Ar"][0].min() > a_min[i]
        for p in ("Mr", "FeH", "Ar", "Qr"):
            got = result.loc[i, [f"{p}_p16", f"{p}_p50", f"{p}_p84"]].to_numpy(float)
            np.testing.assert_allclose(got, ref[f"{p}_percentiles"], atol=0.01, err_msg=p)
        assert result.loc[i, "Ar_mean"] == pytest.approx(ref["Ar_mean"], abs=2e-3)
    # the default (0) is the paper's prior on [0, A_max]; out-of-range fractions are refused
    plain = BayesEstimator(coarse_locus, prior, BayesConfig(error_floor=0.0)).predict(phot)
    assert (plain["Ar_p16"] < a_min).any()
    with pytest.raises(ValueError, match="dust_min_fraction"):
        BayesEstimator(coarse_locus, prior, BayesConfig(dust_min_fraction=1.5)).predict(phot)


def test_recovers_noise_free_locus_stars(coarse_locus):
    phot, mr, feh, a_true = _stars(coarse_locus, LSST, 200, seed=1, err_range=(0.01, 0.011))
    phot.colors[:] = (
        coarse_locus.colors_for(LSST)[
            np.searchsorted(coarse_locus.feh, feh - 1e-9),
            np.searchsorted(coarse_locus.mr, mr - 1e-9),
        ]
        + a_true[:, None] * LSST.reddening_vector()
    )
    res = BayesEstimator(coarse_locus).predict(phot)
    # truth inside the posterior's 16-84 % interval (widened by one grid cell) for most stars
    for p, truth in (("Mr", mr), ("FeH", feh), ("Ar", a_true)):
        inside = (truth >= res[f"{p}_p16"] - 0.1) & (truth <= res[f"{p}_p84"] + 0.1)
        assert inside.mean() > 0.6, p
    assert (res["chi2min"] < 1e-6).all()  # the generating grid point fits exactly
    assert np.median(np.abs(res["Ar_p50"] - a_true)) < 0.05


def test_chi2min_is_the_best_fit_within_the_extinction_bounds(coarse_locus):
    """chi2min is the grid's smallest chi2 with A_r in [0, A_max], whatever the prior: not
    the chi2 of the posterior's best point, nor a fit with A_r outside its bounds."""
    phot, *_ = _stars(coarse_locus, LSST, 40, seed=8, err_range=(0.005, 0.03))
    phot.colors[:10] -= 0.3 * LSST.reddening_vector()  # bluer than any unreddened point
    rng = np.random.default_rng(4)
    log_prior = np.log(rng.uniform(1e-6, 1.0, (1, *coarse_locus.shape)))  # strong pulls
    prior = PriorGrid(log_prior, np.array([20.0]))
    config = BayesConfig()
    res = BayesEstimator(coarse_locus, prior, config).predict(phot)
    locus_colors = coarse_locus.colors_for(LSST).reshape(-1, 5)
    red = LSST.reddening_vector()
    for i in range(len(phot)):
        w = 1.0 / (phot.color_errors[i] ** 2 + config.error_floor**2)
        resid = phot.colors[i] - locus_colors
        a = np.clip((resid * w) @ red / (w @ red**2), 0.0, res.loc[i, "Ar_max"])
        chi2 = (w * (resid - a[:, None] * red) ** 2).sum(axis=1)
        assert res.loc[i, "chi2min"] == pytest.approx(chi2.min(), rel=1e-6, abs=1e-9), i


def test_inconsistent_covariances_are_dropped(coarse_locus, band_noise_stars):
    """Covariances that no positive-definite matrix allows (or that belong to an unusable
    colour) are zeroed once, so every estimator and the reference see the same matrix."""
    phot, *_ = band_noise_stars(coarse_locus, LSST, 4, seed=13)
    phot.color_covariance[0, 1] = -4.0 * phot.color_errors[0, 1] * phot.color_errors[0, 2]
    phot.colors[1, 2] = np.nan  # r-i unusable: its two covariances go
    config = BayesConfig(error_floor=0.01)
    cov = adjacent_covariance(phot, config)
    assert cov[0, 1] == 0.0 and cov[0, 0] == phot.color_covariance[0, 0]
    np.testing.assert_array_equal(cov[1, 1:3], 0.0)
    np.testing.assert_array_equal(cov[2:], phot.color_covariance[2:])
    result = BayesEstimator(coarse_locus, None, config).predict(phot)
    ref = brute_force_posterior(phot, 0, coarse_locus, None, config, a_step=0.001)
    got = result.loc[0, ["Mr_p16", "Mr_p50", "Mr_p84"]].to_numpy(float)
    np.testing.assert_allclose(got, ref["Mr_percentiles"], atol=0.01)


@pytest.mark.parametrize("noise", ["colour", "band"])
def test_calibrated_on_flat_prior_population(coarse_locus, noise, band_noise_stars):
    """Stars drawn from the (flat) prior: normalised residuals have unit width, with noise
    drawn per colour (independent errors) or per band (adjacent colours covary, and the
    estimator uses that covariance)."""
    make = _stars if noise == "colour" else band_noise_stars
    phot, mr, feh, a_true = make(coarse_locus, SDSS, 3000, seed=7, err_range=(0.02, 0.05))
    res = BayesEstimator(coarse_locus).predict(phot)
    for p, truth in (("Mr", mr), ("FeH", feh), ("Ar", a_true)):
        z = (res[f"{p}_mean"] - truth) / res[f"{p}_std"]
        sigma_g = 0.7413 * np.subtract(*np.percentile(z, [75, 25]))
        assert 0.8 < sigma_g < 1.2, (p, sigma_g)
        coverage = ((truth > res[f"{p}_p16"]) & (truth < res[f"{p}_p84"])).mean()
        assert 0.55 < coverage < 0.8, (p, coverage)


def _frame(n=4):
    rng = np.random.default_rng(0)
    data = {}
    base = np.array([21.5, 20.2, 19.7, 19.55, 19.5])
    for k, b in enumerate("ugriz"):
        data[f"{b}mag"] = base[k] + rng.normal(0, 0.01, n)
        data[f"{b}Err"] = np.full(n, 0.02)
    return pd.DataFrame(data)


def test_posterior_is_calibrated_on_its_own_model(coarse_locus, band_noise_stars):
    """Stars drawn exactly as the posterior assumes (grid points from a prior with a giant and
    a dwarf branch, true values uniform in their cells, A_r uniform on the flat prior, per-band
    noise) fall below their 16, 50 and 84 % points 16, 50 and 84 % of the time.
    ``validation/bayes_self_consistency.py`` does the same with a Galaxy-model prior. (The
    sigma_G of normalised residuals is not such a test: a correct posterior of another shape
    than a Gaussian moves it from 1.)"""
    mr_grid = coarse_locus.mr[None, :]
    feh_grid = coarse_locus.feh[:, None]
    weights = (
        np.exp(-0.5 * ((mr_grid - 6.0) / 1.5) ** 2)
        + 0.4 * np.exp(-0.5 * ((mr_grid - 1.0) / 0.7) ** 2)
    ) * np.exp(-0.5 * ((feh_grid + 0.8) / 0.6) ** 2)
    valid = np.isfinite(coarse_locus.colors_for(SDSS)).all(axis=-1)
    weights = np.where(valid, weights, 0.0)
    a_max = 1.3 * 0.25 + 0.1  # the flat A_r prior for the stars' map value 0.25
    phot, mr, feh, a_true = band_noise_stars(
        coarse_locus,
        SDSS,
        4000,
        seed=11,
        err_range=(0.01, 0.08),
        point_weights=weights,
        a_max=a_max,
    )
    prior = PriorGrid(np.log(weights)[None], np.array([20.0]))
    res = BayesEstimator(coarse_locus, prior, BayesConfig(error_floor=0.0)).predict(phot)
    assert ((res["flags"] & Flags.TWO_BRANCH) != 0).mean() > 0.02  # two branches are tested
    for p, truth in (("Mr", mr), ("FeH", feh), ("Ar", a_true)):
        for level in (16, 50, 84):  # within 5 binomial sigma of 4,000 stars
            below = (truth < res[f"{p}_p{level}"]).mean()
            assert abs(below - level / 100) < 0.04, (p, level, below)


def test_bad_rows_are_flagged_not_dropped(coarse_locus):
    frame = _frame(6)
    frame.loc[0, "umag"] = np.nan  # missing u: u-g dropped
    frame.loc[1, "gErr"] = -1.0  # negative error: g colours dropped
    frame.loc[2, "rmag"] = 99.0  # sentinel r: no r
    frame.loc[3, ["umag", "gmag", "imag", "zmag"]] = np.nan  # < 2 colours
    frame.loc[4, "uErr"] = 0.0  # zero error: u-g dropped
    phot = photometry_from_frame(frame, "sdss")
    res = BayesEstimator(coarse_locus).predict(phot)
    assert len(res) == len(frame)
    assert res.loc[0, "flags"] & Flags.COLOR_UNUSABLE and np.isfinite(res.loc[0, "Mr_p50"])
    assert res.loc[1, "flags"] & Flags.COLOR_UNUSABLE and np.isfinite(res.loc[1, "FeH_p50"])
    assert res.loc[2, "flags"] & Flags.NO_R and np.isnan(res.loc[2, "Mr_p50"])
    assert res.loc[3, "flags"] & Flags.TOO_FEW_COLORS and np.isnan(res.loc[3, "Mr_p50"])
    assert res.loc[4, "flags"] & Flags.COLOR_UNUSABLE
    assert res.loc[5, "flags"] & Flags.NO_PRIOR
    assert not res.loc[5, "flags"] & (Flags.COLOR_UNUSABLE | Flags.NO_R)


def test_empty_input(coarse_locus):
    res = BayesEstimator(coarse_locus).predict(photometry_from_frame(_frame(0), "sdss"))
    assert len(res) == 0 and "Mr_p50" in res.columns


def test_far_off_locus_and_bright_stars_stay_finite(coarse_locus):
    frame = _frame(2)
    frame.loc[0, "umag"] = frame.loc[0, "gmag"] - 3.0  # impossible u-g
    frame.loc[:, [f"{b}Err" for b in "ugriz"]] = 1e-4  # very bright: enormous chi2
    res = BayesEstimator(coarse_locus, config=BayesConfig(error_floor=0.0)).predict(
        photometry_from_frame(frame, "sdss")
    )
    assert np.isfinite(res[["Mr_p50", "FeH_p50", "Ar_p50", "DM_p50"]].to_numpy()).all()
    assert res.loc[0, "flags"] & Flags.POOR_FIT
    assert res.loc[0, "chi2min"] > 1e3


def test_dust_column_bounds_extinction(coarse_locus):
    phot, *_ = _stars(coarse_locus, SDSS, 50, seed=3, ar_map=0.1)
    res = BayesEstimator(coarse_locus).predict(phot)
    assert np.allclose(res["Ar_max"], 1.3 * 0.1 + 0.1)
    assert (res["Ar_p84"] <= res["Ar_max"] + 1e-9).all()
    phot.dust = None
    res = BayesEstimator(coarse_locus).predict(phot)
    assert np.allclose(res["Ar_max"], 3.0)


def test_distance_columns_consistent(coarse_locus):
    phot, *_ = _stars(coarse_locus, SDSS, 20, seed=4)
    res = BayesEstimator(coarse_locus).predict(phot)
    np.testing.assert_allclose(res["DM_p50"], phot.r - res["Qr_p50"])
    np.testing.assert_allclose(res["dist_p50"], 10 ** (0.2 * res["DM_p50"] + 1))
    assert (res["DM_p16"] <= res["DM_p84"]).all()


def test_prior_bins_pick_nearest():
    prior = PriorGrid(np.zeros((3, 2, 2)), np.array([14.0, 14.5, 15.0]))
    np.testing.assert_array_equal(
        prior.bin_index(np.array([10, 14.2, 14.3, 16, np.nan])), [0, 0, 1, 2, 0]
    )


def test_stars_beyond_the_prior_r_bins_are_flagged(coarse_locus):
    """A star brighter or fainter than every r bin (beyond its half-width) gets the end
    bin's prior and the R_OUTSIDE_PRIOR flag; the half-width comes with a PriorMap."""
    phot, *_ = _stars(coarse_locus, SDSS, 6, seed=21)
    phot.r = np.array([10.0, 13.6, 14.8, 15.4, 15.6, np.nan])
    density = np.full((3, *coarse_locus.shape), 1.0 / np.prod(coarse_locus.shape))
    prior = PriorMap(
        density,
        coarse_locus.feh,
        coarse_locus.mr,
        np.array([14.0, 14.5, 15.0]),
        np.full(3, 100),
        r_half_width=0.5,
    )
    result = BayesEstimator(coarse_locus, prior).predict(phot)
    outside = (result["flags"] & Flags.R_OUTSIDE_PRIOR) > 0
    np.testing.assert_array_equal(outside, [True, False, False, False, True, False])
    assert np.isfinite(result.loc[[0, 4], "Mr_mean"]).all()  # still estimated
    flat = BayesEstimator(coarse_locus).predict(phot)  # no prior map: no r range
    assert not (flat["flags"] & Flags.R_OUTSIDE_PRIOR).any()


def test_stars_in_a_gap_between_prior_r_bins_are_flagged(coarse_locus):
    """A prior whose r bins leave a gap (here 15.5-19.5) flags the stars inside it as it
    flags those beyond its ends; a saved model's single [lo, hi] range still reads."""
    phot, *_ = _stars(coarse_locus, SDSS, 6, seed=21)
    phot.r = np.array([14.2, 15.4, 17.0, 19.6, 21.0, np.nan])
    centres = np.array([14.5, 15.0, 20.0])
    prior = PriorGrid(np.zeros((3, *coarse_locus.shape)), centres, r_half_width=0.5)
    assert prior.r_intervals == [[14.0, 15.5], [19.5, 20.5]]
    assert prior.r_range == [14.0, 20.5]
    result = BayesEstimator(coarse_locus, prior).predict(phot)
    outside = (result["flags"] & Flags.R_OUTSIDE_PRIOR) > 0
    np.testing.assert_array_equal(outside, [False, False, True, False, True, False])
    assert np.isfinite(result.loc[2, "Mr_mean"])  # estimated with the nearest bin's prior
    np.testing.assert_array_equal(
        prior_range_flags([14.0, 20.5], phot.r) > 0, [False] * 4 + [True, False]
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda lp, rc: (np.where(np.arange(2)[:, None, None] == 1, -np.inf, lp), rc), "19.0"),
        (lambda lp, rc: (np.where(lp == lp.max(), np.nan, lp), rc), "finite or -inf"),
        (lambda lp, rc: (lp, rc[::-1]), "ascending"),
        (lambda lp, rc: (lp[0], rc), "shape"),
    ],
    ids=["bin-allowing-nothing", "nan", "descending", "two-dimensional"],
)
def test_prior_grid_refuses_unusable_priors(coarse_locus, change, message):
    """A prior grid whose r bin allows no point, or with NaN, unordered bins or a wrong
    shape, is refused where it is made, not met inside the estimators."""
    rng = np.random.default_rng(2)
    log_prior = np.log(rng.uniform(0.1, 1.0, (2, *coarse_locus.shape)))
    with pytest.raises(ValueError, match=message):
        PriorGrid(*change(log_prior, np.array([18.0, 19.0])))


def test_bright_stars_with_wide_extinction_range_match_brute_force():
    """Tiny errors and A_max = 3 mag: the truncation table must stay fine in σ_A units."""
    locus = build_locus(feh_step=0.25, mr_step=0.25)
    phot, *_ = _stars(locus, SDSS, 6, seed=11, err_range=(0.001, 0.002), a_range=(0.0, 1.0))
    phot.dust = None  # flat A_r prior on [0, 3]
    config = BayesConfig(error_floor=0.0)
    result = BayesEstimator(locus, None, config).predict(phot)
    for i in range(len(phot)):
        ref = brute_force_posterior(phot, i, locus, None, config, a_step=0.001)
        for p in ("Mr", "FeH", "Ar", "Qr"):
            got = result.loc[i, [f"{p}_p16", f"{p}_p50", f"{p}_p84"]].to_numpy(float)
            np.testing.assert_allclose(got, ref[f"{p}_percentiles"], atol=0.01, err_msg=p)


def test_negative_dust_values_do_not_crash(coarse_locus):
    phot, *_ = _stars(coarse_locus, SDSS, 3, seed=12)
    phot.dust = np.array([-0.5, -0.08, 0.0])
    result = BayesEstimator(coarse_locus).predict(phot)
    assert (result["Ar_max"] > 0).all() and np.isfinite(result["Mr_p50"]).all()


def test_fast_kernel_helpers_match_reference():
    """The table's truncated normal and the restricted smoothing equal the reference forms."""
    from photodist.bayes import (
        _gaussian_smooth,
        _gaussian_smooth_range,
        _truncated_normal,
        _truncated_normal_table,
    )

    for sigma, upper in ((0.05, 0.2), (0.3, 0.01), (0.01, 3.0)):
        for mu in np.linspace(-40 * sigma, upper + 40 * sigma, 301):
            log_m, mean, var, inv_m = _truncated_normal_table(mu, sigma, upper)
            ref = _truncated_normal(mu, sigma, upper)
            # (the variance cancels in the far tails: equal up to rounding of sigma^2 terms)
            np.testing.assert_allclose([log_m, mean, var], ref, rtol=1e-9, atol=1e-9 * sigma**2)
            assert inv_m == pytest.approx(np.exp(min(-ref[0], 700.0)), rel=1e-9)
    hist = np.random.default_rng(0).uniform(size=80)
    for sigma_bins in (0.2, 2.5, 30.0):
        ref = np.empty(80)
        _gaussian_smooth(hist, sigma_bins, ref)
        got = np.full(80, np.nan)
        _gaussian_smooth_range(hist, sigma_bins, got, 10, 70, np.empty(16))
        np.testing.assert_allclose(got[10:70], ref[10:70], rtol=1e-12, atol=1e-15)


def test_smoothed_percentiles_match_explicit_box_smoothing():
    """Percentiles from kernel-weighted cumulative sums equal those of the smoothed histogram."""
    from photodist.bayes import _box_kernel, _smoothed_percentiles

    rng = np.random.default_rng(3)
    for n, widths in ((200, (9, 9, 9, 41)), (60, (1, 1, 1, 5)), (500, (31, 31, 31, 1))):
        hist = np.zeros(n)
        hist[n // 3 : 2 * n // 3] = rng.exponential(size=2 * n // 3 - n // 3)
        kern = np.empty(1 + sum(w - 1 for w in widths))
        n_k = _box_kernel(widths, kern, np.empty(kern.size + 1))
        assert n_k == kern.size and kern.sum() == pytest.approx(1.0)
        smooth = hist.copy()
        for w in widths:  # explicit centred boxes, zero-padded
            smooth = np.convolve(smooth, np.full(w, 1.0 / w), mode="same")
        cdf = np.concatenate([[0.0], np.cumsum(smooth)])
        lo, h = -1.5, 0.01
        expected = [
            lo + np.interp(p * cdf[-1], cdf, np.arange(n + 1)) * h for p in (0.16, 0.5, 0.84)
        ]
        got = np.full(3, np.nan)
        _smoothed_percentiles(hist, kern, n_k, lo, h, np.empty(n + n_k), got, 0)
        np.testing.assert_allclose(got, expected, atol=1e-9)


def test_truncation_grid_matches_the_exact_truncated_normal():
    """The precomputed (z, U) grid's interpolated tables agree with the direct evaluation."""
    from photodist.bayes import (
        TABLE_NODES_PER_SIGMA,
        TRUNC_U_MAX,
        TRUNC_U_MIN,
        _table_from_grid,
        _truncated_normal,
        _truncation_grid,
    )

    grid = _truncation_grid()
    rng = np.random.default_rng(4)
    sigma = 0.05
    for upper_s in np.exp(rng.uniform(np.log(TRUNC_U_MIN), np.log(TRUNC_U_MAX), 300)):
        per = TABLE_NODES_PER_SIGMA
        k_lo = int(np.floor(per * rng.uniform(-6, upper_s + 5)))
        n_t = int(np.ceil(per * (upper_s + 6))) - k_lo + 2
        tables = np.empty((4, n_t))
        _table_from_grid(grid, upper_s, sigma, k_lo, n_t, tables)
        mu = (k_lo + np.arange(n_t)) * sigma / per
        ref = np.array([_truncated_normal(m, sigma, upper_s * sigma) for m in mu]).T
        np.testing.assert_allclose(tables[0], ref[0], atol=1e-3)
        np.testing.assert_allclose(tables[1], ref[1], atol=5e-4 * sigma)
        np.testing.assert_allclose(tables[2], ref[2], atol=5e-4 * sigma**2)
        np.testing.assert_allclose(tables[3] * np.exp(ref[0]), 1.0, rtol=0.05)


def test_edge_table_matches_the_exact_truncated_normal_for_wide_bounds():
    """With A_max/σ_A >= TRUNC_U_MAX, each node's nearer bound alone sets its truncation."""
    from photodist.bayes import TRUNC_U_MAX, _edge_table, _table_from_edges, _truncated_normal

    edge = _edge_table()
    rng = np.random.default_rng(5)
    sigma = 0.02
    for upper_s in rng.uniform(TRUNC_U_MAX, 300.0, 40):
        t_lo = rng.uniform(-6.0, 0.0) * sigma
        h_t = sigma / rng.choice([4.0, 3.3])
        n_t = int(np.ceil((upper_s * sigma + 6 * sigma - t_lo) / h_t)) + 2
        tables = np.empty((4, n_t))
        _table_from_edges(edge, upper_s, sigma, t_lo, h_t, n_t, tables)
        mu = t_lo + np.arange(n_t) * h_t
        ref = np.array([_truncated_normal(m, sigma, upper_s * sigma) for m in mu]).T
        np.testing.assert_allclose(tables[0], ref[0], atol=1e-4)
        np.testing.assert_allclose(tables[1], ref[1], atol=1e-4 * sigma)
        np.testing.assert_allclose(tables[2], ref[2], atol=1e-4 * sigma**2)
        np.testing.assert_allclose(tables[3] * np.exp(ref[0]), 1.0, rtol=3e-3)


@pytest.mark.parametrize(
    "setting",
    [
        {"error_floor": np.nan},
        {"error_floor": np.inf},
        {"error_floor": -0.02},
        {"default_a_max": np.inf},
        {"default_a_max": 0.0},
        {"log_weight_cut": np.nan},
        {"dust_scale": np.inf},
        {"chi2_poor": 0.0},
    ],
)
def test_bayes_config_refuses_values_the_kernel_cannot_use(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        BayesConfig(**setting)


def test_poor_fit_threshold_counts_the_colours_used(coarse_locus):
    """A star whose unusable colour was dropped is judged against chi2 with the degrees of
    freedom of the colours it has (their number less two), not the band set's."""
    from scipy.stats import chi2

    phot, *_ = _stars(coarse_locus, SDSS, 600, seed=21, err_range=(0.02, 0.05))
    rng = np.random.default_rng(4)
    direction = rng.normal(0.0, 1.0, phot.colors.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    phot.colors[:] += direction * phot.color_errors * rng.uniform(4.0, 12.0, (len(phot), 1))
    dropped = np.arange(len(phot)) % 2 == 0
    phot.colors[dropped, 0] = np.nan
    res = BayesEstimator(coarse_locus, config=BayesConfig(error_floor=0.0)).predict(phot)
    n_used = np.where(dropped, SDSS.n_colors - 1, SDSS.n_colors)
    limit = chi2.ppf(0.999, n_used - 2)
    poor = (res["flags"].to_numpy() & Flags.POOR_FIT) != 0
    np.testing.assert_array_equal(poor, res["chi2min"].to_numpy() > limit)
    # stars this decides differently from the band set's 2 degrees of freedom
    between = dropped & (res["chi2min"] > limit) & (res["chi2min"] <= chi2.ppf(0.999, 2))
    assert between.sum() >= 3
    # a configured threshold applies to every star
    fixed = BayesEstimator(coarse_locus, config=BayesConfig(error_floor=0.0, chi2_poor=17.0))
    flags = fixed.predict(phot)["flags"].to_numpy()
    np.testing.assert_array_equal((flags & Flags.POOR_FIT) != 0, res["chi2min"].to_numpy() > 17.0)


def _exhaustive_best_fit(phot, locus, config):
    """The smallest chi2 over every locus point with A_r in [0, A_max], independent colour
    errors, in plain numpy: the reference of ``BayesEstimator.best_fit``."""
    from photodist.bayes import a_bounds_for

    _, a_max = a_bounds_for(phot, config)
    nc = phot.band_set.n_colors
    locus_colors = locus.colors_for(phot.band_set).reshape(-1, nc)
    reddening = phot.band_set.reddening_vector()
    best = np.full(len(phot), np.nan)
    for i in range(len(phot)):
        ok = np.isfinite(phot.colors[i]) & np.isfinite(phot.color_errors[i])
        w = 1.0 / (phot.color_errors[i, ok] ** 2 + config.error_floor**2)
        resid = phot.colors[i, ok] - locus_colors[:, ok]
        q = np.sum(w * reddening[ok] ** 2)
        b = resid @ (w * reddening[ok])
        a_star = b / q
        chi2 = resid**2 @ w - b**2 / q + q * (a_star - np.clip(a_star, 0.0, a_max[i])) ** 2
        best[i] = chi2.min()
    return best


def test_best_fit_finds_the_smallest_chi2_and_flags_as_the_posterior(coarse_locus):
    """The check of network rows: the coarse-to-fine search finds (nearly) the exhaustive
    minimum of chi2 over the locus and the A_r range, and flags POOR_FIT and AR_AT_BOUND as the
    Bayesian estimator does for stars far from the locus or reddened beyond the bound."""
    phot, *_ = _stars(coarse_locus, LSST, 300, seed=8, err_range=(0.005, 0.08))
    rng = np.random.default_rng(9)
    phot.colors[:60] += rng.normal(0.0, 0.2, (60, LSST.n_colors))  # far from the locus
    phot.colors[60:90] += 1.5 * LSST.reddening_vector()  # reddened beyond A_max = 0.425
    phot.colors[90:100, 0] = np.nan  # one colour dropped
    phot.colors[100, 1:] = np.nan  # one colour left: no fit
    config = BayesConfig(color_covariance=False)
    estimator = BayesEstimator(coarse_locus, config=config)
    chi2, flags = estimator.best_fit(phot)
    reference = _exhaustive_best_fit(phot, coarse_locus, config)
    assert np.isnan(chi2[100]) and flags[100] == 0
    ok = np.arange(len(phot)) != 100
    # a locus point's exact chi2: never below the minimum, and near it (the coarse pass can
    # pick the neighbourhood of a point a little worse than the best one elsewhere)
    excess = chi2[ok] - reference[ok]
    assert (excess > -1e-6 * (1.0 + reference[ok])).all()
    assert excess.max() < 1.0 and (excess < 1e-6).mean() > 0.6
    bayes = estimator.predict(phot)["flags"].to_numpy()
    for bit in (Flags.POOR_FIT, Flags.AR_AT_BOUND):
        assert ((flags & bit) != 0)[ok].sum() >= 20
        # agreement with the posterior's flags (its best point carries the prior and the
        # A_r truncation, so a star near a threshold may differ)
        agree = ((flags & bit) != 0) == ((bayes & bit) != 0)
        assert agree[ok].mean() > 0.97, bit


def test_wrong_argument_types_are_named(coarse_locus) -> None:
    """A catalogue frame instead of a Photometry, or a path instead of a prior map, gets a
    TypeError that says what to pass (it was an AttributeError deep inside)."""
    estimator = BayesEstimator(coarse_locus)
    frame = pd.DataFrame({"rmag": [18.0], "umag": [19.0]})
    for method in (estimator.predict, estimator.best_fit):
        with pytest.raises(TypeError, match="takes a Photometry.*photometry_from_frame"):
            method(frame)
    with pytest.raises(TypeError, match="takes a Photometry"):
        estimator.posteriors(frame, [0])
    with pytest.raises(TypeError, match="prior must be a PriorMap"):
        BayesEstimator(coarse_locus, "prior.npz")


@pytest.mark.parametrize("shift", [-2.0, 2.0])
def test_a_r_percentiles_of_points_far_outside_the_bounds(coarse_locus, shift) -> None:
    """A star bluer than the locus (A* far below 0) or far redder than the bound allows
    (A* far above A_max): the A_r posterior sits against a bound, made of points whose A* is
    many σ_A outside. Their in-bound mass used to fall outside the smoothed histogram
    (percentiles 0.3 mag off, contradicting the mean); now both estimators agree with the
    explicit A_r grid."""
    from photodist.bayes_torch import TorchBayesEstimator

    red = LSST.reddening_vector()
    colors = coarse_locus.colors_for(LSST)[3, 60] + shift * red
    phot = Photometry(
        LSST, np.array([20.0]), np.array([0.01]), colors[None, :], np.full((1, 5), 0.2)
    )
    phot.dust = np.array([0.1])
    config = BayesConfig()
    ref = brute_force_posterior(phot, 0, coarse_locus, None, config, a_step=0.0005)
    for estimator in (BayesEstimator, TorchBayesEstimator):
        kwargs = {"device": "cpu"} if estimator is TorchBayesEstimator else {}
        out = estimator(coarse_locus, None, config, **kwargs).predict(phot)
        got = out.loc[0, ["Ar_p16", "Ar_p50", "Ar_p84"]].to_numpy(float)
        np.testing.assert_allclose(got, ref["Ar_percentiles"], atol=0.005)
        assert out.loc[0, "Ar_p16"] <= out.loc[0, "Ar_mean"] <= out.loc[0, "Ar_p84"] + 0.01


@pytest.mark.parametrize("steps", [5, 10])
def test_ar_at_bound_refers_to_the_best_fit_as_for_network_rows(steps) -> None:
    """A star on a locus point reddened by 0.1 mag, with a prior that puts its weight on a
    redder point (whose A* lies below 0): AR_AT_BOUND describes the best fit without the
    prior, as chi2min and best_fit (the network rows' check) do; it described the prior's
    best point, so the same star got the flag from Bayes and not from the networks."""
    locus = build_locus(feh_step=0.1, mr_step=0.1)
    n_feh, n_mr = locus.shape
    log_prior = np.full((1, n_feh, n_mr), -60.0)
    log_prior[0, 15, 60 + steps] = 0.0  # the prior's favourite, redder
    log_prior[0, 15, 60] = -40.0  # the star's own point
    colors = locus.colors_for(LSST)[15, 60] + 0.1 * LSST.reddening_vector()
    phot = Photometry(
        LSST, np.array([20.0]), np.array([0.01]), colors[None, :], np.full((1, 5), 0.05)
    )
    phot.dust = np.array([0.1])
    estimator = BayesEstimator(locus, PriorGrid(log_prior, np.array([20.0])), BayesConfig())
    flags = estimator.predict(phot)["flags"].to_numpy()
    _, fit_flags = estimator.best_fit(phot)
    assert not flags[0] & Flags.AR_AT_BOUND and not fit_flags[0] & Flags.AR_AT_BOUND
