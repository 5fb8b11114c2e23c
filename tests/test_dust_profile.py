import dataclasses

import numpy as np
import pandas as pd
import pytest

from photodist.bands import LSST, SDSS, Photometry
from photodist.bayes import BayesConfig, BayesEstimator, PriorGrid, brute_force_posterior
from photodist.dust_profile import MIN_SIGMA_FRACTION, DustProfile, fit_dust_profile


def _profile_stars(
    locus, n, seed, fraction_of_map, a_map=0.4, err_range=(0.005, 0.05), scatter=0.0
):
    """Main-sequence locus stars (M_r 4-10, r 14-22) whose A_r is ``fraction_of_map(r - M_r)``
    times the map value, plus normal scatter of ``scatter`` mag (at least 0)."""
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, locus.shape[0], n)
    mi = rng.choice(np.flatnonzero((locus.mr >= 4.0) & (locus.mr <= 10.0)), n)
    r = rng.uniform(14.0, 22.0, n)
    a_true = fraction_of_map(r - locus.mr[mi]) * a_map
    a_true = np.clip(a_true + scatter * rng.normal(0.0, 1.0, n), 0.0, None)
    err = np.exp(rng.uniform(*np.log(err_range), (n, 5)))
    colors = (
        locus.colors_for(LSST)[fi, mi]
        + a_true[:, None] * LSST.reddening_vector()
        + rng.normal(0, 1, (n, 5)) * err
    )
    phot = Photometry(LSST, r, np.full(n, 0.01), colors, err, np.full(n, a_map))
    return phot, a_true


def test_closed_form_with_profile_matches_brute_force(coarse_locus):
    """The normal prior of a dust profile, marginalised in closed form, agrees with the
    explicit A_r grid; relative and absolute profiles, narrow and wide."""
    phot, _ = _profile_stars(coarse_locus, 10, seed=4, fraction_of_map=lambda x: 0.7 + 0 * x)
    phot.color_errors[:2] = 0.002  # bright: the likelihood is narrower than the prior
    prior = PriorGrid(
        np.log(np.random.default_rng(1).uniform(0.2, 1.0, (1, *coarse_locus.shape))),
        np.array([20.0]),
    )
    config = BayesConfig(error_floor=0.005)
    profiles = [
        DustProfile(np.array([5.0, 10.0, 15.0]), np.array([0.2, 0.6, 0.9]), 0.03, relative=True),
        DustProfile(np.array([8.0, 14.0]), np.array([0.05, 0.3]), 0.1),
    ]
    for profile in profiles:
        result = BayesEstimator(coarse_locus, prior, config, dust_profile=profile).predict(phot)
        for i in range(len(phot)):
            ref = brute_force_posterior(
                phot, i, coarse_locus, prior, config, a_step=0.0005, dust_profile=profile
            )
            for p in ("Mr", "FeH", "Ar", "Qr"):
                got = result.loc[i, [f"{p}_p16", f"{p}_p50", f"{p}_p84"]].to_numpy(float)
                np.testing.assert_allclose(got, ref[f"{p}_percentiles"], atol=0.01, err_msg=p)
            for p in ("Mr", "FeH", "Ar"):
                assert result.loc[i, f"{p}_mean"] == pytest.approx(ref[f"{p}_mean"], abs=2e-3)
                assert result.loc[i, f"{p}_std"] == pytest.approx(ref[f"{p}_std"], abs=2e-3)
            assert result.loc[i, "log_evidence"] == pytest.approx(ref["log_evidence"], abs=3e-3)


def test_a_wide_profile_is_the_flat_prior_and_a_narrow_one_pins_extinction(coarse_locus):
    phot, a_true = _profile_stars(coarse_locus, 40, seed=7, fraction_of_map=lambda x: 0.5 + 0 * x)
    config = BayesConfig(error_floor=0.01)
    flat = BayesEstimator(coarse_locus, None, config).predict(phot)
    wide = DustProfile(np.array([0.0]), np.array([0.5]), 100.0, relative=True)
    got = BayesEstimator(coarse_locus, None, config, dust_profile=wide).predict(phot)
    for column in ("Mr_mean", "Mr_std", "FeH_mean", "Ar_mean", "Ar_p50", "Qr_p50"):
        np.testing.assert_allclose(got[column], flat[column], atol=2e-3, err_msg=column)
    pd.testing.assert_series_equal(got["chi2min"], flat["chi2min"])
    # normalised on [A_min, A_max], the wide normal is the flat prior's density there
    np.testing.assert_allclose(got["log_evidence"], flat["log_evidence"], atol=2e-3)
    narrow = DustProfile(np.array([0.0]), np.array([0.5]), 0.005, relative=True)
    pinned = BayesEstimator(coarse_locus, None, config, dust_profile=narrow).predict(phot)
    assert np.abs(pinned["Ar_mean"] - a_true).max() < 0.01
    assert (pinned["Ar_std"] < 0.006).all()
    assert np.abs(pinned["Mr_mean"] - flat["Mr_mean"]).max() > 0.05  # the prior matters
    # a relative profile leaves the flat prior to stars without a map value
    no_map = dataclasses.replace(phot, dust=np.where(np.arange(40) < 5, np.nan, phot.dust))
    mixed = BayesEstimator(coarse_locus, None, config, dust_profile=narrow).predict(no_map)
    flat_no_map = BayesEstimator(coarse_locus, None, config).predict(no_map)
    pd.testing.assert_frame_equal(mixed.iloc[:5], flat_no_map.iloc[:5])


def test_fit_recovers_a_rising_profile(coarse_locus):
    """Stars with A_r = map x (0.3 below x = 9, rising to 0.9 at x = 13): the fitted profile
    follows it, and estimates with it are closer to the truth than with the flat prior."""

    def fraction(x):
        return np.interp(x, [9.0, 13.0], [0.3, 0.9])

    phot, a_true = _profile_stars(coarse_locus, 2200, seed=3, fraction_of_map=fraction)
    config = BayesConfig(error_floor=0.01)
    profile, info = fit_dust_profile(phot, coarse_locus, None, config, max_stars=2000, seed=0)
    assert profile.relative and info["n_stars"] > 800  # two-branch stars sit out
    # no scatter about the profile: the evidence takes the width to (near) its floor, below
    # the first stage's
    assert info["em_sigma"] == pytest.approx(MIN_SIGMA_FRACTION * 0.4, abs=0.02)
    assert profile.sigma < 0.02
    assert info["log_evidence_gain"] > 0.1  # nats per star over the flat prior
    assert np.all(np.diff(profile.knots_mu) >= 0)
    inner = (profile.knots_x > 7.0) & (profile.knots_x < 15.0)
    np.testing.assert_allclose(profile.knots_mu[inner], fraction(profile.knots_x[inner]), atol=0.12)
    flat = BayesEstimator(coarse_locus, None, config).predict(phot)
    fitted = BayesEstimator(coarse_locus, None, config, dust_profile=profile).predict(phot)
    error_flat = np.median(np.abs(flat["Ar_mean"] - a_true))
    error_fitted = np.median(np.abs(fitted["Ar_mean"] - a_true))
    assert error_fitted < 0.6 * error_flat
    # deterministic
    again, _ = fit_dust_profile(phot, coarse_locus, None, config, max_stars=2000, seed=0)
    np.testing.assert_array_equal(again.knots_mu, profile.knots_mu)


@pytest.mark.parametrize("scatter", [0.06, 0.12])
def test_fit_recovers_the_scatter_about_the_profile(coarse_locus, scatter):
    """A_r scattered about the profile: the exact-evidence width finds the scatter."""
    phot, _ = _profile_stars(
        coarse_locus, 2000, seed=5, fraction_of_map=lambda x: 0.8 + 0 * x, scatter=scatter
    )
    profile, _ = fit_dust_profile(phot, coarse_locus, None, BayesConfig(error_floor=0.01))
    assert profile.sigma == pytest.approx(scatter, rel=0.2)


def test_fit_refuses_a_profile_the_evidence_does_not_support(coarse_locus):
    """A_r uniform over the flat prior's whole range [0, 1.3 A_map + 0.1] (no relation to
    distance): the flat prior describes the stars better, and the fit says so."""
    rng = np.random.default_rng(1)
    phot, _ = _profile_stars(
        coarse_locus, 2000, seed=1, fraction_of_map=lambda x: rng.uniform(0.0, 1.55, x.size)
    )
    with pytest.raises(ValueError, match="better than the flat prior"):
        fit_dust_profile(phot, coarse_locus, None, BayesConfig(error_floor=0.01))


def test_fit_without_a_dust_map_is_absolute_and_refuses_too_few_stars(coarse_locus):
    phot, _ = _profile_stars(coarse_locus, 1000, seed=9, fraction_of_map=lambda x: 0.5 + 0 * x)
    no_map = dataclasses.replace(phot, dust=None)
    profile, _ = fit_dust_profile(no_map, coarse_locus, None, BayesConfig(), max_iter=3)
    assert not profile.relative
    assert profile.mean_at(np.array([14.0]))[0] == pytest.approx(0.2, abs=0.1)
    with pytest.raises(ValueError, match="usable estimate"):
        fit_dust_profile(phot.subset(np.arange(50)), coarse_locus, None, BayesConfig())


def test_profile_validation_and_round_trip():
    profile = DustProfile(np.array([10.0, 12.0]), np.array([0.2, 0.4]), 0.05, relative=True)
    back = DustProfile.from_dict(profile.to_dict())
    np.testing.assert_array_equal(back.knots_x, profile.knots_x)
    np.testing.assert_array_equal(back.knots_mu, profile.knots_mu)
    assert (back.sigma, back.relative) == (0.05, True)
    np.testing.assert_allclose(profile.mean_at(np.array([9.0, 11.0, 13.0]), 2.0), [0.4, 0.6, 0.8])
    assert np.isnan(profile.mean_at(np.array([11.0]), np.nan)[0])
    with pytest.raises(ValueError, match="ascending"):
        DustProfile(np.array([12.0, 10.0]), np.array([0.2, 0.4]), 0.05)
    with pytest.raises(ValueError, match="sigma"):
        DustProfile(np.array([10.0]), np.array([0.2]), 0.0)
    with pytest.raises(ValueError, match="same"):
        DustProfile(np.array([10.0, 11.0]), np.array([0.2]), 0.1)


def test_a_decreasing_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        DustProfile(np.array([5.0, 10.0, 15.0]), np.array([1.0, 0.5, -0.2]), 0.05)
    DustProfile(np.array([5.0, 10.0, 15.0]), np.array([0.5, 0.5, 1.0]), 0.05)  # flat parts


def test_a_profile_never_goes_negative():
    """Bin means below 0 (noise, or stars the model misdescribes) give a profile at 0 there,
    never a negative extinction."""
    from photodist.dust_profile import _isotonic_profile

    x = np.repeat(np.arange(6.0), 200)
    value = np.repeat([-3.0, -1.0, 0.5, 0.8, 0.9, 1.0], 200)
    knots_x, knots_mu = _isotonic_profile(x, value, np.ones_like(x))
    assert knots_mu.min() == 0.0 and np.all(np.diff(knots_mu) >= 0.0)
    assert 0.8 < knots_mu[-1] <= 1.0  # the positive part as it was


def test_a_fit_needs_a_step(coarse_locus, band_noise_stars):
    phot = band_noise_stars(coarse_locus, SDSS, 300, seed=3)[0]
    with pytest.raises(ValueError, match="at least 1"):
        fit_dust_profile(phot, coarse_locus, max_iter=0)
