import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special

from photodist.bands import LSST, SDSS, Photometry
from photodist.bayes import (
    MAX_HIST_BINS,
    OUTPUT_COLUMNS,
    BayesConfig,
    BayesEstimator,
    Flags,
    PriorGrid,
    brute_force_posterior,
)
from photodist.bayes_torch import TorchBayesEstimator, log_ndtr, log_ndtr_diff

PERCENTILE_COLUMNS = [
    f"{p}_{s}"
    for p in ("Mr", "FeH", "Ar", "Qr", "DM")
    for s in ("mean", "std", "p16", "p50", "p84")
]
OTHER_COLUMNS = [
    "Mr_entropy_drop",
    "FeH_entropy_drop",
    "Ar_entropy_drop",
    "P_giant",
    "Ar_max",
    "log_evidence",
]


@pytest.fixture(scope="module")
def random_prior(coarse_locus):
    rng = np.random.default_rng(3)
    log_prior = np.log(rng.uniform(0.05, 1.0, (3, *coarse_locus.shape)))
    log_prior[1, :3, :] = -np.inf  # a zero-prior corner
    return PriorGrid(log_prior, np.array([16.0, 19.0, 22.0]), r_half_width=1.5)


def _stars(locus, band_set, n, seed, err_range=(0.001, 0.1), dust=True):
    """Random locus stars: reddened, noisy, some colours missing, plus awkward rows."""
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, locus.shape[0], n)
    mi = rng.integers(0, locus.shape[1], n)
    nc = band_set.n_colors
    red = band_set.reddening_vector()
    err = np.exp(rng.uniform(np.log(err_range[0]), np.log(err_range[1]), (n, nc)))
    colors = (
        locus.colors_for(band_set)[fi, mi]
        + rng.uniform(0.0, 0.4, n)[:, None] * red
        + rng.normal(0, 1, (n, nc)) * err
    )
    missing = rng.random((n, nc)) < 0.1
    colors[missing] = np.nan
    err[missing] = np.nan
    r = rng.uniform(15.0, 24.0, n)
    colors[0] = locus.colors_for(band_set)[10, 60] - 2.0 * red  # far bluer than the locus
    colors[1] = locus.colors_for(band_set)[10, 60] + 5.0 * red  # reddened beyond A_max
    err[:2] = 0.005
    r[2] = np.nan  # no r
    colors[3, 1:] = np.nan  # a single colour
    err[3, 1:] = np.nan
    dust_map = rng.uniform(0.0, 0.5, n) if dust else None
    return Photometry(band_set, r, np.full(n, 0.01), colors, err, dust_map)


def _assert_same(ref: pd.DataFrame, got: pd.DataFrame) -> None:
    """Identical flags and NaNs; outputs within 0.01 (0.03 for at most 1 % of the rows).

    The CPU kernel interpolates the truncation factor from a table (relative weight errors
    up to ~1e-3), which moves a percentile that falls where the posterior density is low
    (e.g. the Q_r median between two branches) by slightly more than 0.01 in rare stars.
    """
    assert list(got.columns) == list(ref.columns)
    np.testing.assert_array_equal(got["flags"].to_numpy(), ref["flags"].to_numpy())
    for col in PERCENTILE_COLUMNS + OTHER_COLUMNS + ["dist_p16", "dist_p50", "dist_p84"]:
        a, b = ref[col].to_numpy(), got[col].to_numpy()
        np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=col)
        if col.startswith("dist"):  # compared as distance moduli
            a, b = 5.0 * np.log10(a), 5.0 * np.log10(b)
        diff = np.abs(np.nan_to_num(b - a))
        assert diff.max() <= 0.03, (col, diff.max(), int(diff.argmax()))
        assert (diff > 0.01).mean() <= 0.01, (col, np.nonzero(diff > 0.01)[0])
    np.testing.assert_allclose(got["chi2min"], ref["chi2min"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("band_set", [LSST, SDSS], ids=["lsst", "sdss"])
def test_matches_cpu_estimator(coarse_locus, random_prior, band_set):
    phot = _stars(coarse_locus, band_set, 160, seed=1)
    ref = BayesEstimator(coarse_locus, random_prior).predict(phot)
    got = TorchBayesEstimator(coarse_locus, random_prior, device="cpu").predict(phot)
    _assert_same(ref, got)
    # the awkward rows behave as in the CPU estimator
    assert got.loc[0, "flags"] & Flags.AR_AT_BOUND and got.loc[1, "flags"] & Flags.AR_AT_BOUND
    assert got.loc[0, "Ar_p84"] < 0.02
    assert got.loc[1, "Ar_p16"] > got.loc[1, "Ar_max"] - 0.02
    assert got.loc[2, "flags"] & Flags.NO_R and np.isnan(got.loc[2, OUTPUT_COLUMNS[:-1]]).all()
    assert got.loc[3, "flags"] & Flags.TOO_FEW_COLORS and np.isnan(got.loc[3, "Mr_p50"])
    assert (got["flags"] & Flags.COLOR_UNUSABLE).sum() > 10
    beyond = (got["flags"] & Flags.R_OUTSIDE_PRIOR) > 0  # r in 15-24, bins cover 14.5-23.5
    np.testing.assert_array_equal(beyond, (phot.r < 14.5) | (phot.r > 23.5))
    assert beyond.sum() > 5


def test_correlated_colours_match_cpu_estimator(coarse_locus, random_prior):
    """Adjacent colours that share a band's error (and missing colours between them)."""
    phot = _stars(coarse_locus, LSST, 120, seed=4)
    rng = np.random.default_rng(9)
    cov = -((np.nan_to_num(phot.color_errors[:, :-1]) * rng.uniform(0.1, 0.7, (len(phot), 4))) ** 2)
    cov = np.minimum(cov, 0.0) * np.isfinite(phot.color_errors[:, 1:])
    phot = dataclasses.replace(phot, color_covariance=cov)
    ref = BayesEstimator(coarse_locus, random_prior).predict(phot)
    got = TorchBayesEstimator(coarse_locus, random_prior, device="cpu").predict(phot)
    _assert_same(ref, got)
    independent = BayesEstimator(
        coarse_locus, random_prior, BayesConfig(color_covariance=False)
    ).predict(phot)
    assert np.nanmax(np.abs(independent["Mr_mean"] - ref["Mr_mean"])) > 0.01


def test_lower_extinction_bound_matches_cpu_estimator(coarse_locus, random_prior):
    phot = _stars(coarse_locus, LSST, 80, seed=11)
    config = BayesConfig(dust_min_fraction=0.7)
    ref = BayesEstimator(coarse_locus, random_prior, config).predict(phot)
    got = TorchBayesEstimator(coarse_locus, random_prior, config, device="cpu").predict(phot)
    _assert_same(ref, got)


def test_flat_prior_without_dust_and_no_floor(coarse_locus):
    phot = _stars(coarse_locus, LSST, 80, seed=2, err_range=(0.002, 0.05), dust=False)
    config = BayesConfig(error_floor=0.005)
    ref = BayesEstimator(coarse_locus, config=config).predict(phot)
    got = TorchBayesEstimator(coarse_locus, config=config, device="cpu").predict(phot)
    _assert_same(ref, got)
    assert (got["flags"] & Flags.NO_PRIOR).all()
    assert np.allclose(got["Ar_max"], config.default_a_max)


def test_bright_stars_match_brute_force(coarse_locus, random_prior):
    """0.001-mag errors and no floor: chi2 in the thousands across the grid."""
    phot = _stars(coarse_locus, LSST, 10, seed=5, err_range=(0.001, 0.0011))
    phot.r[:] = 20.0
    keep = np.arange(4, 10)  # complete, well-behaved rows
    phot = phot.subset(keep)
    phot.colors[np.isnan(phot.colors)] = 1.0
    phot.color_errors[np.isnan(phot.color_errors)] = 0.001
    prior = PriorGrid(random_prior.log_prior[[0]], np.array([20.0]))
    config = BayesConfig(error_floor=0.0)
    got = TorchBayesEstimator(coarse_locus, prior, config, device="cpu").predict(phot)
    # the log evidence as the CPU kernel's (the explicit grid is too coarse for it here:
    # the A_r posteriors are narrower than its step)
    cpu = BayesEstimator(coarse_locus, prior, config).predict(phot)
    np.testing.assert_allclose(got["log_evidence"], cpu["log_evidence"], rtol=1e-9, atol=3e-3)
    for i in range(len(phot)):
        ref = brute_force_posterior(phot, i, coarse_locus, prior, config, a_step=0.001)
        for p in ("Mr", "FeH", "Ar", "Qr"):
            value = got.loc[i, [f"{p}_p16", f"{p}_p50", f"{p}_p84"]].to_numpy(float)
            np.testing.assert_allclose(value, ref[f"{p}_percentiles"], atol=0.01, err_msg=p)
        assert got.loc[i, "Mr_mean"] == pytest.approx(ref["Mr_mean"], abs=2e-3)
        assert got.loc[i, "Ar_mean"] == pytest.approx(ref["Ar_mean"], abs=2e-3)


def test_batch_size_does_not_change_results(coarse_locus, random_prior):
    phot = _stars(coarse_locus, LSST, 60, seed=4)
    whole = TorchBayesEstimator(coarse_locus, random_prior, device="cpu").predict(phot)
    batched = TorchBayesEstimator(coarse_locus, random_prior, device="cpu", batch_size=7).predict(
        phot
    )
    np.testing.assert_array_equal(batched["flags"], whole["flags"])
    # equal to rounding (distances reach 1e5 pc, where 1e-9 absolute is 1e-14 relative)
    pd.testing.assert_frame_equal(batched, whole, check_exact=False, rtol=1e-12, atol=1e-9)


def test_smoothing_in_chunks_does_not_change_results(coarse_locus, random_prior, monkeypatch):
    phot = _stars(coarse_locus, LSST, 60, seed=4)
    whole = TorchBayesEstimator(coarse_locus, random_prior, device="cpu").predict(phot)
    # a budget of a few histogram rows: the A_r and Q_r smoothing run star by star or so
    monkeypatch.setattr(TorchBayesEstimator, "memory_budget", property(lambda self: 200_000))
    chunked = TorchBayesEstimator(coarse_locus, random_prior, device="cpu", batch_size=60)
    pd.testing.assert_frame_equal(
        chunked.predict(phot), whole, check_exact=False, rtol=1e-12, atol=1e-9
    )


def test_batches_of_a_coarse_grid_fit_their_histograms(coarse_locus):
    est = TorchBayesEstimator(coarse_locus, device="cpu")
    # a grid of 50 points: the A_r histograms (up to MAX_HIST_BINS float64 per star), not
    # the (stars x points) arrays, bound the batch
    assert est.batch_size_for(50) * 8 * 2 * MAX_HIST_BINS <= est.memory_budget
    assert est.batch_size_for(50) == est.batch_size_for(500)


def test_empty_input(coarse_locus):
    empty = Photometry(LSST, np.zeros(0), np.zeros(0), np.zeros((0, 5)), np.zeros((0, 5)), None)
    res = TorchBayesEstimator(coarse_locus, device="cpu").predict(empty)
    assert len(res) == 0
    assert list(res.columns) == list(BayesEstimator(coarse_locus).predict(empty).columns)


def test_device_selection(coarse_locus):
    assert TorchBayesEstimator(coarse_locus, device="cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        TorchBayesEstimator(coarse_locus, device="tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            TorchBayesEstimator(coarse_locus, device="cuda")
    with pytest.raises(ValueError, match="batch_size"):
        TorchBayesEstimator(coarse_locus, device="cpu", batch_size=0)


def test_failed_compilation_falls_back_to_eager(coarse_locus, monkeypatch):
    phot = _stars(coarse_locus, SDSS, 20, seed=6)
    reference = TorchBayesEstimator(coarse_locus, device="cpu")
    eager = reference.predict(phot)

    def broken_compile(fn, **kwargs):
        if fn.__name__ != "_candidate_pass":  # fails after the dense pass counted candidates
            return fn

        def run(*args, **kw):
            raise RuntimeError("no compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    estimator = TorchBayesEstimator(coarse_locus, device="cpu", compile_kernels=True)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        res = estimator.predict(phot)
    assert not estimator.compile_kernels
    pd.testing.assert_frame_equal(res, eager)
    assert estimator.stats_ == reference.stats_  # the failed batch is not counted twice


def test_log_ndtr_accurate_in_both_tails():
    x = np.concatenate([np.linspace(-60, 40, 2001), [-1e3, -38.5, 0.0, 8.3, 37.0]])
    got = log_ndtr(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, special.log_ndtr(x), rtol=1e-13, atol=1e-300)
    a = np.array([-3.0, 5.0, -40.0, 30.0, -1.0, 2.0])
    b = np.array([-2.0, 6.0, -39.0, 31.0, 1.0, 2.0])
    got = log_ndtr_diff(torch.tensor(a), torch.tensor(b)).numpy()
    # reference from the CDF for moderate arguments, from the tail expansion otherwise
    assert got[0] == pytest.approx(math.log(special.ndtr(-2.0) - special.ndtr(-3.0)), rel=1e-12)
    assert got[1] == pytest.approx(math.log(special.ndtr(-5.0) - special.ndtr(-6.0)), rel=1e-12)
    for k, (lo, hi) in ((2, (-40.0, -39.0)), (3, (-31.0, -30.0))):  # Phi(hi) dominates
        expected = special.log_ndtr(hi) + math.log1p(
            -math.exp(special.log_ndtr(lo) - special.log_ndtr(hi))
        )
        assert got[k] == pytest.approx(expected, rel=1e-12)
    assert got[4] == pytest.approx(math.log(special.ndtr(1.0) - special.ndtr(-1.0)), rel=1e-12)
    assert got[5] == -math.inf


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_estimator(coarse_locus, random_prior):
    phot = _stars(coarse_locus, LSST, 300, seed=8)
    ref = BayesEstimator(coarse_locus, random_prior).predict(phot)
    for compile_kernels in (False, True):
        got = TorchBayesEstimator(
            coarse_locus, random_prior, device="cuda", compile_kernels=compile_kernels
        ).predict(phot)
        _assert_same(ref, got)


def test_make_estimator_picks_the_backend(coarse_locus, random_prior):
    from photodist.bayes_torch import make_estimator

    cpu = make_estimator(coarse_locus, random_prior, device="cpu")
    assert type(cpu) is BayesEstimator
    auto = make_estimator(coarse_locus, random_prior, device="auto")
    expected = TorchBayesEstimator if torch.cuda.is_available() else BayesEstimator
    assert type(auto) is expected
    if torch.cuda.is_available():
        phot = _stars(coarse_locus, LSST, 200, seed=9)
        _assert_same(cpu.predict(phot), auto.predict(phot))
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            make_estimator(coarse_locus, random_prior, device="cuda")


def test_dust_profile_matches_the_cpu_kernel(coarse_locus, random_prior):
    """With a dust profile (relative, some stars without a map value; and absolute) the
    PyTorch estimator gives the CPU kernel's outputs."""
    from photodist.dust_profile import DustProfile

    phot = _stars(coarse_locus, LSST, 120, seed=8)
    phot.dust[::7] = np.nan  # these keep the flat prior under a relative profile
    config = BayesConfig(error_floor=0.01)
    for profile in (
        DustProfile(np.array([6.0, 10.0, 15.0]), np.array([0.3, 0.7, 0.9]), 0.04, relative=True),
        DustProfile(np.array([10.0]), np.array([0.15]), 0.08),
    ):
        ref = BayesEstimator(coarse_locus, random_prior, config, dust_profile=profile).predict(phot)
        got = TorchBayesEstimator(
            coarse_locus, random_prior, config, device="cpu", dust_profile=profile
        ).predict(phot)
        _assert_same(ref, got)
        plain = BayesEstimator(coarse_locus, random_prior, config).predict(phot)
        assert np.nanmax(np.abs(plain["Ar_mean"] - ref["Ar_mean"])) > 0.05  # it matters


def test_gap_between_prior_r_bins_flagged_as_cpu_estimator(coarse_locus, random_prior):
    """Stars in a gap between r bins get R_OUTSIDE_PRIOR from both estimators alike."""
    gapped = PriorGrid(random_prior.log_prior, random_prior.r_centres, r_half_width=1.0)
    phot = _stars(coarse_locus, LSST, 120, seed=6)
    ref = BayesEstimator(coarse_locus, gapped).predict(phot)
    got = TorchBayesEstimator(coarse_locus, gapped, device="cpu").predict(phot)
    in_gap = ((phot.r > 17.0) & (phot.r < 18.0)) | ((phot.r > 20.0) & (phot.r < 21.0))
    assert in_gap.sum() > 5
    for result in (ref, got):
        np.testing.assert_array_equal(
            (result["flags"] & Flags.R_OUTSIDE_PRIOR) > 0,
            in_gap | (phot.r < 15.0) | (phot.r > 23.0),
        )
