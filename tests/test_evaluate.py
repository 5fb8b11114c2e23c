"""Tests of the evaluation statistics (Table 1) against hand computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from photodist.bands import ID_COLUMNS
from photodist.evaluate import (
    SIGMA_G_FACTOR,
    TABLE1_COLUMNS,
    align_to_run,
    calibration,
    gaussian_coverage,
    max_error_for_snr,
    outlier_fraction,
    robust_stats,
    run_match_keys,
    snr_mask,
    table1,
    truth_values,
)


def test_robust_stats_by_hand():
    # percentiles with linear interpolation: q25 = 2.75, q50 = 4.5, q75 = 6.25
    median, sigma_g = robust_stats([8, 1, 7, 2, 6, 3, 5, 4, np.nan, np.inf])
    assert median == pytest.approx(4.5)
    assert sigma_g == pytest.approx(0.7413 * 3.5)
    assert SIGMA_G_FACTOR == 0.7413
    assert all(np.isnan(v) for v in robust_stats([np.nan]))
    assert robust_stats(pd.Series([2.0])) == (2.0, 0.0)


def test_robust_stats_of_a_gaussian():
    x = np.random.default_rng(0).normal(3.0, 2.0, 200_000)
    median, sigma_g = robust_stats(x)
    assert median == pytest.approx(3.0, abs=0.02)
    assert sigma_g == pytest.approx(2.0, rel=0.01)


def test_calibration_and_coverage():
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, 100_000)
    sigma = rng.uniform(0.1, 0.5, truth.size)
    estimate = truth + sigma * rng.normal(0, 1, truth.size)
    assert calibration(estimate, sigma, truth) == pytest.approx(1.0, abs=0.02)
    assert gaussian_coverage(estimate, sigma, truth) == pytest.approx(0.6827, abs=0.005)
    assert calibration(estimate, sigma / 2, truth) == pytest.approx(2.0, abs=0.04)
    assert gaussian_coverage(estimate, 2 * sigma, truth) == pytest.approx(0.9545, abs=0.005)
    # hand-made: residuals 0, 0.5, -1, 2 with sigma 1 -> |r| <= 1 for three of four
    assert gaussian_coverage([0, 0.5, -1, 2, np.nan], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]) == 0.75
    assert outlier_fraction([0.0, 0.31, -0.5, 0.1, np.nan], [0, 0, 0, 0, 0], 0.3) == 0.5


def test_snr_mask():
    limit = max_error_for_snr(5.0)
    assert limit == pytest.approx(0.21715, abs=1e-5)
    frame = pd.DataFrame({f"{b}mag": [20.0, 21.0, 22.0, np.nan] for b in "ugriz"})
    for b in "ugriz":
        frame[f"{b}Err"] = [0.05, 0.05, 0.05, 0.05]
    frame.loc[1, "uErr"] = 0.2172  # SNR just below 5 in u
    frame.loc[2, "zErr"] = 0.2171  # SNR just above 5
    np.testing.assert_array_equal(snr_mask(frame, "sdss"), [True, False, True, False])
    # a sentinel magnitude with a small error is no measurement (as the estimators read it)
    frame.loc[0, "gmag"] = 99.0
    frame.loc[2, "imag"] = -99.0
    np.testing.assert_array_equal(snr_mask(frame, "sdss"), [False, False, False, False])
    with pytest.raises(KeyError):
        snr_mask(frame, "lsst")  # no y columns
    # a band without data for any star (no u) is left out rather than failing every star
    no_u = frame.assign(umag=np.nan, gmag=20.0, imag=21.0)
    np.testing.assert_array_equal(snr_mask(no_u, "sdss"), [True, True, True, False])


def _toy() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Five network rows and one Bayesian row with differences chosen by hand."""
    truth = pd.DataFrame({"Mr_true": np.zeros(6), "Ar_true": np.zeros(6), "FeH_true": np.zeros(6)})
    nn_minus_truth = np.array([0.0, 0.1, -0.1, 0.2, 0.35, 9.0])
    bayes_minus_truth = np.array([0.0, 0.0, 0.0, 0.1, 0.1, 9.0])
    result = pd.DataFrame({"method": ["nn"] * 5 + ["bayes"]})
    bayes = pd.DataFrame(index=range(6))
    for p in ("Mr", "Ar", "FeH"):
        result[f"{p}_mean"] = nn_minus_truth
        result[f"{p}_sigma"] = [0.1, 0.1, 0.1, 0.1, 0.1, 1.0]
        result[f"{p}_sigma_nn"] = [0.05, 0.05, 0.05, 0.05, 0.05, np.nan]
        bayes[f"{p}_mean"] = bayes_minus_truth
        bayes[f"{p}_std"] = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    return result, truth, bayes


def test_table1_by_hand():
    result, truth, bayes = _toy()
    table = table1(result, truth, bayes)
    assert list(table.columns) == list(TABLE1_COLUMNS)
    assert list(table.index) == ["Mr", "Ar", "FeH"]
    row = table.loc["FeH"]
    assert row["n_stars"] == 5  # the Bayesian row of the result is not a network estimate
    assert row["n_bayes_stars"] == 5  # bayes_full on the same network rows
    # NN - truth over the five network rows: 0, .1, -.1, .2, .35 -> median .1, IQR 0..0.2
    assert row["nn_truth_median"] == pytest.approx(0.1)
    assert row["nn_truth_sigma_g"] == pytest.approx(0.7413 * 0.2)
    # Bayes - truth on the same rows: 0, 0, 0, .1, .1 -> median 0, IQR 0..0.1
    assert row["bayes_truth_median"] == pytest.approx(0.0)
    assert row["bayes_truth_sigma_g"] == pytest.approx(0.7413 * 0.1)
    assert row["nn_truth_over_bayes_truth"] == pytest.approx(2.0)
    # NN - Bayes: 0, .1, -.1, .1, .25 -> median .1, IQR 0..0.1; none above 0.3
    assert row["nn_bayes_median"] == pytest.approx(0.1)
    assert row["nn_bayes_sigma_g"] == pytest.approx(0.7413 * 0.1)
    assert row["nn_bayes_outlier_fraction"] == pytest.approx(0.0)
    # (NN - Bayes) / sigma_nn: 0, 2, -2, 2, 5 -> IQR 0..2
    assert row["nn_bayes_calibration"] == pytest.approx(0.7413 * 2.0)
    # (NN - truth) / 0.1: 0, 1, -1, 2, 3.5 -> IQR 0..2; within 1 sigma: 0, 1, -1 -> 3 of 5
    assert row["nn_calibration"] == pytest.approx(0.7413 * 2.0)
    assert row["nn_coverage"] == pytest.approx(0.6)
    # (Bayes - truth) / 0.2: 0, 0, 0, .5, .5 -> IQR 0..0.5; all within 1 sigma
    assert row["bayes_calibration"] == pytest.approx(0.7413 * 0.5)
    assert row["bayes_coverage"] == pytest.approx(1.0)
    assert np.isnan(table.loc["Mr", "nn_bayes_outlier_fraction"])  # only [Fe/H] by default

    # one more network row, 0.5 above Bayes in [Fe/H]: 1 of 6 outliers at 0.3 dex; in M_r
    # |NN - Bayes| = 0, .1, .1, .1, .25, 0: 4 of 6 above 0.05
    result.loc[5, "method"] = "nn"
    result.loc[5, "FeH_mean"] = 9.5
    table = table1(result, truth, bayes, outlier_thresholds={"FeH": 0.3, "Mr": 0.05})
    assert table.loc["FeH", "nn_bayes_outlier_fraction"] == pytest.approx(1 / 6)
    assert table.loc["Mr", "nn_bayes_outlier_fraction"] == pytest.approx(4 / 6)


def test_table1_without_full_bayes_uses_the_bayes_rows():
    result, truth, _ = _toy()
    result.loc[4, "method"] = "bayes"  # Bayesian rows: 4 (0.35) and 5 (9.0)
    table = table1(result, truth)
    row = table.loc["Mr"]
    assert row["n_stars"] == 4
    assert row["n_bayes_stars"] == 2
    assert row["bayes_truth_median"] == pytest.approx(4.675)
    assert row["bayes_truth_sigma_g"] == pytest.approx(0.7413 * 0.5 * 8.65)
    assert np.isnan(row["nn_bayes_sigma_g"]) and np.isnan(row["nn_bayes_outlier_fraction"])
    assert row["nn_truth_median"] == pytest.approx(0.05)
    assert table.attrs["bayes_source"] == "result's Bayesian rows"


def test_table1_checks_lengths():
    result, truth, bayes = _toy()
    with pytest.raises(ValueError, match="truth"):
        table1(result, truth.iloc[:3], bayes)
    # the run's index labels in another order: the truth is not aligned row by row
    labelled = result.set_axis(range(10, 10 + len(result)))
    reordered = truth.set_axis(labelled.index)[::-1]
    with pytest.raises(ValueError, match="index labels in another order"):
        table1(labelled, reordered, bayes)
    table1(labelled, reordered[::-1], bayes)
    with pytest.raises(ValueError, match="bayes_full"):
        table1(result, truth, bayes.iloc[:3])


def test_truth_values_reads_simulator_and_photod_conventions():
    sim = pd.DataFrame({"Mr_true": [4.0], "Ar_true": [0.1], "FeH_true": [-1.0], "Ar": [0.3]})
    found = truth_values(sim)
    assert {p: v[0] for p, v in found.items()} == {"Mr": 4.0, "Ar": 0.1, "FeH": -1.0}
    # photod: truth in Mr / FeH / Ar, -99 = no value
    photod = pd.DataFrame({"Mr": [4.0, -99.0], "FeH": [-1.0, -99.0], "Ar": [0.2, 0.3]})
    found = truth_values(photod)
    np.testing.assert_array_equal(found["Mr"], [4.0, np.nan])
    np.testing.assert_array_equal(found["FeH"], [-1.0, np.nan])
    np.testing.assert_array_equal(found["Ar"], [0.2, 0.3])
    # a real photod-format catalogue: only sentinels, so Ar is the dust map, not a truth
    real = pd.DataFrame({"Mr": [-99.0, -99.0], "FeH": [-99.0, -99.0], "Ar": [0.24, 0.25]})
    assert truth_values(real) == {}
    # explicit columns win; bad names are clear errors
    named = truth_values(photod.assign(A_sim=[0.5, 0.6]), {"Ar": "A_sim"})
    np.testing.assert_array_equal(named["Ar"], [0.5, 0.6])
    with pytest.raises(KeyError, match="A_none"):
        truth_values(photod, {"Ar": "A_none"})
    with pytest.raises(KeyError, match="unknown truth parameter"):
        truth_values(photod, {"logg": "Mr"})
    # other common names of simulated truth, in any case; the simulator's name wins
    other = pd.DataFrame({"true_Mr": [4.5], "A_R_TRUTH": [0.05], "[Fe/H]_true": [-2.0]})
    found = truth_values(other.assign(Ar=[0.3]), required=True)
    assert {p: v[0] for p, v in found.items()} == {"Mr": 4.5, "Ar": 0.05, "FeH": -2.0}
    assert truth_values(other.assign(Mr_true=[3.0]))["Mr"][0] == 3.0


def test_table1_takes_photod_truth_and_names_missing_truth():
    result, truth, bayes = _toy()
    photod = truth.rename(columns={"Mr_true": "Mr", "Ar_true": "Ar", "FeH_true": "FeH"})
    pd.testing.assert_frame_equal(table1(result, photod, bayes), table1(result, truth, bayes))
    arrays = {p: truth[f"{p}_true"].to_numpy() for p in ("Mr", "Ar", "FeH")}
    pd.testing.assert_frame_equal(table1(result, arrays, bayes), table1(result, truth, bayes))
    with pytest.raises(KeyError, match="FeH_true or FeH"):
        table1(result, truth.drop(columns="FeH_true"), bayes)
    with pytest.raises(ValueError, match="rows"):
        table1(result, truth.iloc[:3], bayes)


def test_calibration_refuses_arrays_of_different_lengths():
    from photodist.evaluate import calibration, gaussian_coverage

    for statistic in (calibration, gaussian_coverage):
        with pytest.raises(ValueError, match="different shapes"):
            statistic([1.0, 2.0], [1.0], [1.0, 2.0])


def test_truth_rows_are_matched_to_the_run_by_id_position_or_order():
    truth = pd.DataFrame(
        {"source_id": [10, 11, 12], "ra": [1.0, 2.0, 3.0], "dec": [0.5, 0.5, 0.5], "x": [0, 1, 2]}
    )
    run = pd.DataFrame({"source_id": [12, 10, 99], "ra": [3.0, 1.0, 9.0], "dec": [0.5] * 3})
    by_id = align_to_run(truth, run, "truth")
    np.testing.assert_array_equal(by_id["x"], [2, 0, np.nan])  # an id truth lacks: NaN
    # ids written as text in one table match by their text; ids that match nothing are an
    # error (every statistic would be over 0 stars), few matches a warning
    as_text = align_to_run(truth.assign(source_id=truth["source_id"].astype(str)), run, "truth")
    np.testing.assert_array_equal(as_text["x"], [2, 0, np.nan])
    with pytest.raises(ValueError, match="none of the run's 3 source_id values"):
        align_to_run(truth.assign(source_id=[1, 2, 3]), run, "truth")
    with pytest.warns(UserWarning, match="only 1 of the run's 3 rows"):
        align_to_run(truth.assign(source_id=[1, 2, 12]), run, "truth")
    # a survey output (HEALPix order) without ids: by position on the sky
    by_position = align_to_run(truth, run.drop(columns="source_id"), "truth", in_input_order=False)
    np.testing.assert_array_equal(by_position["x"], [2, 0, np.nan])
    # in the input's order: row by row, same length needed; rows whose positions differ
    # (another order) are refused
    in_order = truth[["ra", "dec"]].assign(dec=truth["dec"] + 1e-4)  # 0.36 arcsec apart
    same = align_to_run(truth, in_order, "truth")
    np.testing.assert_array_equal(same["x"], [0, 1, 2])
    np.testing.assert_array_equal(align_to_run(truth, in_order[["ra"]], "truth")["x"], [0, 1, 2])
    with pytest.raises(ValueError, match="3 of its 3 rows lie more than 1 arcsec"):
        align_to_run(truth, run.drop(columns="source_id"), "truth")
    with pytest.raises(ValueError, match="2 rows, the run 3"):
        align_to_run(truth.head(2), run.drop(columns="source_id"), "truth")
    # neither ids nor unique positions for a survey output: refused, never paired by order
    twins = truth.assign(ra=1.0, dec=0.5).drop(columns="source_id")
    with pytest.raises(ValueError, match="HEALPix order"):
        align_to_run(twins, run.drop(columns="source_id"), "truth", in_input_order=False)
    # a catalogue listing a star twice (the whole row repeated) still matches by id, also a
    # survey output; ids that repeat with other values do not, and the error says so
    listed_twice = pd.concat([truth, truth.iloc[[0]]], ignore_index=True)
    by_id_twice = align_to_run(listed_twice, run, "truth", in_input_order=False)
    np.testing.assert_array_equal(by_id_twice["x"], [2, 0, np.nan])
    clash = listed_twice.assign(x=[0, 1, 2, 3])  # the same id and position, other values
    with pytest.raises(ValueError, match="source_id repeats with different values"):
        align_to_run(clash, run, "truth", in_input_order=False)
    # duplicate ids cannot match: the next way is used
    dup = truth.assign(source_id=[10, 10, 12])
    np.testing.assert_array_equal(align_to_run(dup, in_order, "truth")["x"], [0, 1, 2])
    # labelled rows (an index kept by run_patch) in another order than the run's: refused
    shuffled = truth.drop(columns=["source_id", "ra", "dec"]).iloc[[2, 0, 1]]
    with pytest.raises(ValueError, match="index labels in another order"):
        align_to_run(shuffled, in_order.drop(columns=["ra", "dec"]), "truth")
    # the same labels in the same order, or a plain 0, 1, 2 index, are paired row by row
    plain = shuffled.reset_index(drop=True)
    np.testing.assert_array_equal(
        align_to_run(plain, in_order.iloc[[2, 0, 1]], "truth")["x"], [2, 0, 1]
    )


def test_survey_outputs_match_by_their_recorded_ids_and_positions():
    # a survey that recorded no object id and found its positions under other names
    manifest = {"columns": {"object_id": None, "ra": "RAJ2000", "dec": "DEJ2000"}}
    ids, positions = run_match_keys(manifest)
    assert None not in ids and positions == ("RAJ2000", "DEJ2000")
    assert run_match_keys(None) == (list(ID_COLUMNS), ("ra", "dec"))
    assert run_match_keys({"columns": {"object_id": "objID"}}, "star")[0][:2] == ["star", "objID"]
    truth = pd.DataFrame({"RAJ2000": [1.0, 2.0, 3.0], "DEJ2000": [0.5] * 3, "x": [0, 1, 2]})
    run = truth[["RAJ2000", "DEJ2000"]].iloc[[2, 0]]
    kw = {"id_columns": ids, "in_input_order": False}
    matched = align_to_run(truth, run, "truth", positions=positions, **kw)
    np.testing.assert_array_equal(matched["x"], [2, 0])
    with pytest.raises(ValueError, match="RAJ2000/DEJ2000"):
        align_to_run(truth.assign(RAJ2000=1.0), run, "truth", positions=positions, **kw)
