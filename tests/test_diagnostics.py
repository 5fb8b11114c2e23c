"""Tests of the truth-free run diagnostics (per r bin statistics and their figure)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from photodist.bayes import Flags
from photodist.diagnostics import (
    FLAG_COLUMNS,
    bayesian_rows,
    diagnostics_figure,
    dust_profile_figure,
    magnitude_table,
    r_magnitudes,
)
from photodist.dust_profile import DustProfile


def _result(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A run output whose per-bin statistics are known: r in [18, 21), sigma_Mr = r - 17."""
    rng = np.random.default_rng(seed)
    r = np.repeat([18.5, 19.5, 20.5], n // 3) + rng.uniform(-0.4, 0.4, n)
    qr = rng.uniform(3.0, 10.0, n)
    flags = np.zeros(n, dtype=np.int64)
    flags[::4] |= Flags.POOR_FIT  # a quarter of every bin
    flags[r > 20] |= Flags.AR_AT_BOUND
    result = pd.DataFrame(
        {
            "Mr_mean": qr - 0.1,
            "Mr_sigma": np.floor(r) - 17.0,
            "Ar_mean": np.full(n, 0.2),
            "Ar_sigma": np.full(n, 0.05),
            "FeH_mean": rng.uniform(-2, 0, n),
            "FeH_sigma": np.full(n, 0.2),
            "Qr_mean": qr,
            "DM_mean": r - qr,
            "chi2min": np.where(np.arange(n) % 2 == 0, 1.0, 3.0),
            "flags": flags,
            "method": pd.Categorical(np.where(np.arange(n) % 3 == 0, "bayes", "nn")),
        }
    )
    a_map = np.full(n, 0.25)
    return result, r, a_map


def test_bins_hold_known_statistics():
    result, r, a_map = _result()
    table = magnitude_table(result, r, a_map)
    np.testing.assert_array_equal(table["r_lo"], [18.0, 19.0, 20.0])
    np.testing.assert_array_equal(table["n_stars"], [200, 200, 200])
    np.testing.assert_allclose(table["sigma_Mr"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(table["POOR_FIT"], 0.25, atol=0.01)
    np.testing.assert_allclose(table["AR_AT_BOUND"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(table["estimated"], 1.0)
    np.testing.assert_allclose(table["nn"], 2 / 3, atol=0.01)
    assert set(FLAG_COLUMNS) <= set(table.columns)
    assert np.all(table["chi2min_p50"].between(1.0, 3.0)) and np.all(table["chi2min_p90"] == 3.0)
    # only stars beyond DM = 10 enter the comparison with the dust map
    far = (result["DM_mean"] > 10).to_numpy()
    assert far.any() and not far.all()
    np.testing.assert_allclose(table["ar_minus_map_distant"].dropna(), -0.05)


def test_r_defaults_to_dm_plus_qr_and_small_bins_are_nan():
    result, r, _ = _result()
    from_result = magnitude_table(result)
    pd.testing.assert_frame_equal(from_result, magnitude_table(result, r))
    assert "ar_minus_map_distant" not in from_result
    rows = np.r_[0:25, 200:210]  # 25 stars in the first bin, 10 in the second
    few = magnitude_table(result.iloc[rows], r[rows], min_stars=20)
    np.testing.assert_array_equal(few["n_stars"], [25, 10])
    assert few["sigma_Mr"].iloc[0] == 1.0 and np.isnan(few["sigma_Mr"].iloc[1])
    assert np.isnan(few["POOR_FIT"].iloc[1]) and np.isnan(few["chi2min_p50"].iloc[1])


def test_rows_without_estimates_count_but_have_no_statistics():
    result, r, _ = _result()
    cols = ["Mr_mean", "Mr_sigma", "DM_mean", "Qr_mean", "chi2min"]
    result.loc[:199, cols] = np.nan  # the whole first bin lost its estimates
    table = magnitude_table(result, r)
    assert table["n_stars"].iloc[0] == 200 and table["estimated"].iloc[0] == 0.0
    assert np.isnan(table["sigma_Mr"].iloc[0]) and np.isnan(table["chi2min_p50"].iloc[0])
    # without the given r those rows have no magnitude at all
    assert magnitude_table(result)["n_stars"].sum() == 400
    # nor have sentinel magnitudes
    r[:10] = 99.0
    assert magnitude_table(result, r)["r_hi"].max() == 21.0


def test_bad_arguments_and_empty_input():
    result, r, a_map = _result()
    with pytest.raises(ValueError, match="r has shape"):
        magnitude_table(result, r[:-1])
    with pytest.raises(ValueError, match="a_map has shape"):
        magnitude_table(result, r, a_map[:-1])
    with pytest.raises(ValueError, match="bin_width"):
        magnitude_table(result, r, bin_width=0.0)
    assert len(magnitude_table(result.iloc[:0], r[:0])) == 0


@pytest.mark.parametrize("with_map", [True, False])
def test_figure_draws_six_panels(with_map, tmp_path):
    result, r, a_map = _result()
    table = magnitude_table(result, r, a_map if with_map else None)
    fig = diagnostics_figure(result, table, a_map if with_map else None)
    assert len(fig.axes) >= 6
    fig.savefig(tmp_path / "diagnostics.png", dpi=40)
    assert (tmp_path / "diagnostics.png").stat().st_size > 1000


def test_table_equals_a_direct_per_bin_computation():
    """The grouped reductions give, bin by bin, what masking every bin separately gives."""
    rng = np.random.default_rng(7)
    n = 4000
    r = rng.uniform(15.0, 23.0, n)
    r[rng.random(n) < 0.05] = np.nan
    r[:7] = 99.0  # sentinels have no bin
    r[7:17] = 23.2  # a bin too small for statistics
    qr = rng.uniform(2.0, 10.0, n)
    flags = rng.integers(0, 64, n) * (rng.random(n) < 0.3)
    result = pd.DataFrame(
        {
            "Mr_mean": np.where(rng.random(n) < 0.1, np.nan, qr - 0.1),
            "Mr_sigma": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 0.1, n)),
            "Ar_mean": rng.uniform(0.0, 1.0, n),
            "Ar_sigma": rng.uniform(0.0, 0.2, n),
            "FeH_mean": rng.uniform(-2.0, 0.0, n),
            "FeH_sigma": rng.uniform(0.0, 0.5, n),
            "Qr_mean": qr,
            "DM_mean": r - qr,
            "chi2min": np.where(rng.random(n) < 0.4, np.nan, rng.chisquare(3, n)),
            "flags": np.where(rng.random(n) < 0.05, np.nan, flags),
            "method": rng.choice(["nn", "bayes", "none"], n),
        }
    )
    table = magnitude_table(result, r, bin_width=0.5, min_stars=20)

    ok = np.abs(r) < 40
    bins = np.unique(np.floor(r[ok] / 0.5))
    np.testing.assert_array_equal(table["r_lo"], bins * 0.5)
    f = np.nan_to_num(result["flags"].to_numpy(), nan=0.0).astype(np.int64)
    chi2, sigma = result["chi2min"].to_numpy(), result["Mr_sigma"].to_numpy()
    for row, b in zip(table.itertuples(), bins, strict=True):
        members = ok & (np.floor(np.where(ok, r, 0.0) / 0.5) == b)
        assert row.n_stars == members.sum()
        if members.sum() < 20:
            assert np.isnan(row.POOR_FIT) and np.isnan(row.sigma_Mr)
            continue
        assert row.POOR_FIT == np.mean((f[members] & int(Flags.POOR_FIT)) > 0)
        assert row.flagged == np.mean(f[members] != 0)
        assert row.nn == np.mean(result["method"].to_numpy()[members] == "nn")
        assert row.sigma_Mr == np.nanmedian(sigma[members])
        for column, method in (("chi2min", "bayes"), ("chi2min_nn", "nn")):
            c = chi2[members & (result["method"].to_numpy() == method)]
            expected_p90 = np.nanpercentile(c, 90) if np.isfinite(c).sum() >= 20 else np.nan
            np.testing.assert_equal(getattr(row, f"{column}_p90"), expected_p90)
    assert table["n_stars"].dtype == np.int64 and table["sigma_Mr"].dtype == np.float64
    assert table["n_stars"].sum() == ok.sum() and table["n_stars"].iloc[-1] == 10


def test_only_bins_holding_stars_are_listed():
    """Two stars 2 mag apart in 0.1 micro-mag bins: 2e7 bins, of which two hold stars."""
    result = pd.DataFrame({"Mr_mean": [4.0, 5.0], "Mr_sigma": [0.1, 0.2]})
    table = magnitude_table(result, np.array([15.0, 17.0]), bin_width=1e-7, min_stars=1)
    np.testing.assert_array_equal(table["n_stars"], [1, 1])
    np.testing.assert_array_equal(table["sigma_Mr"], [0.1, 0.2])


@pytest.mark.parametrize("relative", [True, False])
def test_dust_profile_figure_shows_the_bayesian_rows_against_the_profile(relative, tmp_path):
    result, r, a_map = _result()
    profile = DustProfile(np.array([8.0, 12.0]), np.array([0.5, 0.8]), 0.05, relative=relative)
    fig = dust_profile_figure(result, profile, r, a_map)
    (ax,) = fig.axes
    n_bayes = int((result["method"] == "bayes").sum())
    assert f"over {n_bayes:,} Bayesian rows" in ax.get_title()
    assert ax.get_ylabel() == ("A_r estimate / dust map" if relative else "A_r estimate (mag)")
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), profile.mean_at(line.get_xdata(), 1.0))
    fig.savefig(tmp_path / "profile.png", dpi=40)
    assert (tmp_path / "profile.png").stat().st_size > 1000


def test_rows_without_a_given_r_take_dm_plus_qr():
    result, r, _ = _result()
    gaps = r.copy()
    gaps[::10] = np.nan
    gaps[1::10] = 99.0
    pd.testing.assert_frame_equal(magnitude_table(result, gaps), magnitude_table(result, r))
    np.testing.assert_allclose(r_magnitudes(result, gaps), r)


def test_chi2_of_bayesian_and_network_rows_stay_apart():
    result, r, _ = _result()
    is_nn = (result["method"] == "nn").to_numpy()
    result.loc[is_nn, "chi2min"] = 100.0
    table = magnitude_table(result, r)
    assert np.all(table["chi2min_p50"].between(1.0, 3.0)) and np.all(table["chi2min_p90"] == 3.0)
    assert np.all(table["chi2min_nn_p50"] == 100.0) and np.all(table["chi2min_nn_p90"] == 100.0)
    # a Bayesian output without a method column: every row is Bayesian
    bayes_only = magnitude_table(result.drop(columns="method"), r)
    np.testing.assert_array_equal(bayes_only["chi2min_p90"], 100.0)
    assert bayes_only["chi2min_nn_p50"].isna().all()
    np.testing.assert_array_equal(bayesian_rows(result), ~is_nn)
