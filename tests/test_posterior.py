import numpy as np
import pytest

from photodist.bands import LSST
from photodist.bayes import BayesConfig, BayesEstimator, PriorGrid
from photodist.dust_profile import DustProfile
from photodist.plots import posterior_figure
from photodist.posterior import LEVELS, star_posterior


@pytest.fixture(scope="module")
def locus(coarse_locus):
    return coarse_locus


@pytest.fixture(scope="module")
def stars(locus, band_noise_stars):
    """Locus stars with per-band noise (adjacent colours covary); the first has no r."""
    phot, *_ = band_noise_stars(locus, LSST, 12, seed=21, err_range=(0.005, 0.05))
    phot.r[0] = np.nan  # no estimate
    return phot


def _cdf_at(post, name, values):
    """The posterior's cumulative mass at ``values`` (same conventions as its percentiles)."""
    if name in ("Mr", "FeH"):
        axis, mass = (post.mr, post.mr_mass) if name == "Mr" else (post.feh, post.feh_mass)
        half = 0.5 * (axis[1] - axis[0])
        edges = np.concatenate([axis - half, [axis[-1] + half]])
        cdf = np.concatenate([[0.0], np.cumsum(mass)])
        return np.interp(values, edges, cdf)
    nodes, density = (post.ar, post.ar_density) if name == "Ar" else (post.qr, post.qr_density)
    steps = 0.5 * (density[1:] + density[:-1]) * np.diff(nodes)
    return np.interp(values, nodes, np.concatenate([[0.0], np.cumsum(steps)]))


_PROFILE = DustProfile(np.array([8.0, 14.0]), np.array([0.3, 0.8]), 0.03, relative=True)


@pytest.mark.parametrize(
    "fraction, profile, dust",
    [(0.0, None, 0.25), (0.6, None, 0.25), (0.0, _PROFILE, 0.25), (0.0, None, 10.0)],
    ids=["flat", "A_min", "profile", "wide_A_r_bound"],
)
def test_marginals_agree_with_the_estimator(locus, stars, fraction, profile, dust):
    """The estimator's percentiles match those of the full marginals to 0.002, or sit at the
    16/50/84 % levels of the marginals (M_r, [Fe/H] to 0.003, A_r from its histogram to
    0.006, Q_r, which the estimator smooths by a Gaussian, to 0.02; the level is the test where
    a percentile falls in a gap between two branches)."""
    rng = np.random.default_rng(3)
    prior = PriorGrid(np.log(rng.uniform(0.2, 1.0, (1, *locus.shape))), np.array([20.0]))
    config = BayesConfig(dust_min_fraction=fraction)
    estimator = BayesEstimator(locus, prior, config, dust_profile=profile)
    # a map value of 10 mag: A_r bound 13.1 mag, ~100 times the posteriors' widths
    stars = stars.subset(np.arange(len(stars)))
    stars.dust[:] = dust
    result = estimator.predict(stars)
    posts = estimator.posteriors(stars, np.arange(1, len(stars)))
    for post in posts:
        i = post.row
        assert post.joint.sum() == pytest.approx(1.0)
        assert post.ar.min() == pytest.approx(fraction * dust)
        assert post.ar.max() == pytest.approx(result.loc[i, "Ar_max"])
        assert post.chi2min == pytest.approx(result.loc[i, "chi2min"], rel=1e-9)
        for name, tol in (("Mr", 0.003), ("FeH", 0.003), ("Ar", 0.006), ("Qr", 0.02)):
            got = result.loc[i, [f"{name}_p16", f"{name}_p50", f"{name}_p84"]].to_numpy(float)
            # each percentile within 0.002 (mag or dex), or at its level to ``tol``
            close = np.abs(got - post.percentiles(name)) <= 0.002
            at_level = np.abs(_cdf_at(post, name, got) - LEVELS) <= tol
            assert (close | at_level).all(), (i, name, got, post.percentiles(name))
            assert _cdf_at(post, name, np.array([np.inf]))[0] == pytest.approx(1.0, abs=1e-6)


def test_rows_without_estimates_and_files(locus, stars, tmp_path):
    with pytest.raises(ValueError, match="no estimate"):
        star_posterior(stars, 0, locus)
    post = star_posterior(stars, 3, locus)
    saved = np.load(post.save(tmp_path / "star.npz"))
    np.testing.assert_array_equal(saved["joint"], post.joint)
    assert int(saved["row"]) == 3
    png = posterior_figure(post, tmp_path / "fig" / "star.png")
    assert png.exists() and png.stat().st_size > 10_000


def test_unknown_marginals_and_rows_are_refused():
    from photodist.bands import Photometry
    from photodist.locus import build_locus

    locus = build_locus().resample(0.25, 0.5)
    colors = locus.colors_for(LSST)[5, 10][None]
    phot = Photometry(LSST, [18.0], [0.01], colors, np.full((1, 5), 0.02))
    estimator = BayesEstimator(locus, config=BayesConfig(error_floor=0.02))
    (posterior,) = estimator.posteriors(phot, [0])
    assert np.all(np.diff(posterior.percentiles("Qr")) >= 0)
    with pytest.raises(ValueError, match="choose Mr, FeH, Ar or Qr"):
        posterior.percentiles("DM")
    for rows in ([1], [-1], [0.5]):
        with pytest.raises(ValueError, match="rows must be integers"):
            estimator.posteriors(phot, rows)
