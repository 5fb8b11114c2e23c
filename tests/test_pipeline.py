"""Tests of the hybrid per-patch pipeline on a small simulated cone."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesEstimator, Flags
from photodist.dust_profile import DustProfile
from photodist.pipeline import (
    RESULT_FLOAT_COLUMNS,
    STAGES,
    PipelineConfig,
    choose_training_subsample,
    network_inputs_usable,
    posterior_grid,
    predict_with_model,
    run_patch,
    strata,
    train_networks,
    used_dust_profile,
    used_error_floor,
    used_prior,
)
from photodist.priors import build_patch_priors
from photodist.simulate import simulate_patch

CONE = (60.0, 60.0, 0.3)
# rows damaged on purpose: no u (one colour missing), no r (no estimate), a sentinel g
NO_U = [3, 100, 777]
NO_R = [10, 1500]
SENTINEL_G = [42]


def small_config(**overrides) -> PipelineConfig:
    settings = {
        "n_train": 800,
        "min_train": 200,
        "nn_max_epochs": 30,
        "nn_patience": 10,
        "nn_n_runs": 1,
        "nn_device": "cpu",
        "nn_options": {"secondary_max_epochs": 30, "n_threads": 1},
        "seed": 5,
    }
    settings.update(overrides)
    return PipelineConfig(**settings)


@pytest.fixture(scope="module")
def catalog(default_locus) -> pd.DataFrame:
    frame = simulate_patch(cone=CONE, r_max=23.0, seed=1, locus=default_locus)
    frame.loc[NO_U, "umag"] = np.nan
    frame.loc[NO_R, "rmag"] = np.nan
    frame.loc[SENTINEL_G, "gmag"] = 99.0
    return frame


@pytest.fixture(scope="module")
def prior(default_locus):
    return build_patch_priors(cone=CONE, locus=default_locus, seed=2, min_stars=2000)


@pytest.fixture(scope="module")
def hybrid(catalog, prior, default_locus):
    return run_patch(catalog, prior, default_locus, small_config(), keep=("source_id",))


@pytest.fixture(scope="module")
def bayes_all(catalog, prior, default_locus, hybrid) -> pd.DataFrame:
    """The Bayesian estimator on every star, with the pipeline's settings and fitted floor."""
    config = small_config()
    floor = used_error_floor(hybrid[0].attrs["photodist_pipeline"])
    estimator = BayesEstimator(
        posterior_grid(default_locus, config), prior, config.bayes_config(floor)
    )
    return estimator.predict(photometry_from_frame(catalog, "lsst"))


def test_rows_preserved_in_order(catalog, hybrid):
    result, timings, model = hybrid
    assert len(result) == len(catalog)
    np.testing.assert_array_equal(result["source_id"], catalog["source_id"])
    for name in RESULT_FLOAT_COLUMNS:
        assert name in result.columns
    assert set(result["method"].astype(str)) == {"bayes", "nn"}
    assert set(STAGES) | {"total"} == set(timings)
    assert all(v >= 0 for v in timings.values())
    info = result.attrs["photodist_pipeline"]
    assert info["mode"] == "hybrid"
    assert info["config"]["n_train"] == 800
    assert info["n_labelled"] + info["n_nn"] + info["n_bayes_fallback"] == len(catalog)
    assert info["n_label_copies"] == 0
    json.dumps(info)  # the record travels with the output (e.g. Parquet metadata)


def test_rows_beyond_the_prior_r_bins_are_flagged(catalog, prior, default_locus):
    """Bayesian and network rows beyond the prior's r bins (here fainter than the last bin,
    or brighter than the first) get R_OUTSIDE_PRIOR."""
    keep = prior.r_centres <= 21.0
    short = dataclasses.replace(
        prior,
        density=prior.density[keep],
        r_centres=prior.r_centres[keep],
        n_stars=prior.n_stars[keep],
    )
    result, _, _ = run_patch(catalog, short, default_locus, small_config(nn_max_epochs=5))
    beyond = (result["flags"] & Flags.R_OUTSIDE_PRIOR) > 0
    r = catalog["rmag"].to_numpy()
    bright = r < short.r_centres[0] - short.r_half_width  # brighter than the first bin
    np.testing.assert_array_equal(beyond, bright | (r > 21.0 + short.r_half_width))
    assert bright.sum() > 5 and (r > 21.5).sum() > 100
    assert set(result.loc[beyond, "method"].astype(str)) == {"bayes", "nn"}
    full = run_patch(catalog.iloc[:200], prior, default_locus, small_config())[0]
    np.testing.assert_array_equal((full["flags"] & Flags.R_OUTSIDE_PRIOR) > 0, bright[:200])


def test_trained_networks_keep_the_prior_r_range(catalog, hybrid, tmp_path):
    """``train_networks(prior_r_range=...)`` stores the labels' prior range with the model,
    and its later predictions (after a save and load too) flag rows beyond it."""
    result, _, model = hybrid
    assert model.training_metadata_["user"]["prior_r_range"] == [13.5, 27.5]
    assert model.training_metadata_["user"]["prior_r_intervals"] == [[13.5, 27.5]]
    r = catalog["rmag"].to_numpy()
    # one range, or intervals with a gap (a prior whose r bins leave one)
    for given, outside in (
        ([15.0, 21.0], (r < 15.0) | (r > 21.0)),
        ([[15.0, 17.0], [18.0, 21.0]], (r < 15.0) | ((r > 17.0) & (r < 18.0)) | (r > 21.0)),
    ):
        trained = train_networks(
            catalog, result, small_config(nn_max_epochs=3), prior_r_range=given
        )
        assert trained.training_metadata_["user"]["prior_r_range"] == [15.0, 21.0]
        trained.save(tmp_path / "m.safetensors")
        loaded = type(trained).load(tmp_path / "m.safetensors")
        expected = np.isfinite(r) & outside
        assert ((r > 17.0) & (r < 18.0)).sum() > 20
        for net in (trained, loaded):
            flags = predict_with_model(net, catalog)["flags"].to_numpy()
            np.testing.assert_array_equal((flags & Flags.R_OUTSIDE_PRIOR) > 0, expected)
    unbounded = train_networks(catalog, result, small_config(nn_max_epochs=3))
    flags = predict_with_model(unbounded, catalog)["flags"].to_numpy()
    assert not (flags & Flags.R_OUTSIDE_PRIOR).any()
    assert (
        not (flags & Flags.NO_PRIOR).any()
        and model.training_metadata_["user"]["flat_prior"] is False
    )
    # labels made with a flat prior (every label row NO_PRIOR): the model's rows say so too
    flat_labels = result.assign(flags=result["flags"] | Flags.NO_PRIOR)
    flat = train_networks(catalog, flat_labels, small_config(nn_max_epochs=3))
    assert np.all(predict_with_model(flat, catalog)["flags"].to_numpy() & Flags.NO_PRIOR)
    # labels of the same stars in another order: refused by their ids, not trained on
    shuffled = result.assign(source_id=result["source_id"].to_numpy()[::-1])
    with pytest.raises(ValueError, match="source_id values are not the catalogue's"):
        train_networks(catalog, shuffled, small_config(nn_max_epochs=3))


def test_labelled_rows_keep_bayes_values(catalog, hybrid, bayes_all):
    result, _, _ = hybrid
    labelled = result["labelled"].to_numpy()
    # 800 complete stars plus those lacking a colour at the same rate (see the subsample test)
    complete = network_inputs_usable(photometry_from_frame(catalog, "lsst"), missing_colors=False)
    assert labelled[complete].sum() == 800 and 0 < labelled[~complete].sum() <= 10
    assert (result.loc[labelled, "method"] == "bayes").all()
    for p in ("Mr", "Ar", "FeH"):
        np.testing.assert_array_equal(
            result.loc[labelled, f"{p}_mean"], bayes_all.loc[labelled, f"{p}_mean"]
        )
        np.testing.assert_array_equal(
            result.loc[labelled, f"{p}_sigma"], bayes_all.loc[labelled, f"{p}_std"]
        )
        assert result.loc[labelled, f"{p}_sigma_nn"].isna().all()
    np.testing.assert_array_equal(result.loc[labelled, "flags"], bayes_all.loc[labelled, "flags"])
    np.testing.assert_allclose(
        result.loc[labelled, "DM_mean"], bayes_all.loc[labelled, "DM_mean"], rtol=1e-12
    )


def test_network_rows_match_the_model(catalog, hybrid):
    result, _, model = hybrid
    phot = photometry_from_frame(catalog, "lsst")
    pred = model.predict(phot.features())
    nn_rows = (result["method"] == "nn").to_numpy()
    assert nn_rows.sum() > 0.5 * len(catalog)
    # (float32 kernels may round differently for another batch: compare to float32 precision)
    for key in ("Mr_mean", "Ar_sigma", "FeH_sigma_nn", "Mr_sigma_bayes", "Qr_mean"):
        np.testing.assert_allclose(result.loc[nn_rows, key], pred[key][nn_rows], rtol=1e-6)
    dm = phot.r[nn_rows] - result.loc[nn_rows, "Qr_mean"].to_numpy()
    np.testing.assert_allclose(result.loc[nn_rows, "DM_mean"], dm, rtol=1e-12)
    np.testing.assert_allclose(result.loc[nn_rows, "dist_pc"], 10 ** (0.2 * dm + 1), rtol=1e-12)
    # out-of-domain network rows are flagged, the others are not
    ood = pred["out_of_domain"][nn_rows]
    flagged = (result.loc[nn_rows, "flags"].to_numpy() & Flags.NN_OUT_OF_DOMAIN) > 0
    np.testing.assert_array_equal(flagged, ood)
    # and, brighter than the prior's first r bin, R_OUTSIDE_PRIOR
    beyond = (result.loc[nn_rows, "flags"].to_numpy() & Flags.R_OUTSIDE_PRIOR) > 0
    np.testing.assert_array_equal(beyond, phot.r[nn_rows] < 13.5)
    # the model's best fit without the prior: chi2min, POOR_FIT and AR_AT_BOUND; no other flag
    floor = used_error_floor(result.attrs["photodist_pipeline"])
    grid = posterior_grid(None, small_config())
    check = BayesEstimator(grid, config=small_config().bayes_config(floor))
    chi2, fit_flags = check.best_fit(phot.subset(np.flatnonzero(nn_rows)))
    np.testing.assert_allclose(result.loc[nn_rows, "chi2min"], chi2, rtol=1e-12)
    fit_bits = Flags.POOR_FIT | Flags.AR_AT_BOUND
    np.testing.assert_array_equal(result.loc[nn_rows, "flags"].to_numpy() & fit_bits, fit_flags)
    others = ~(Flags.NN_OUT_OF_DOMAIN | Flags.R_OUTSIDE_PRIOR | fit_bits)
    assert not np.any(result.loc[nn_rows, "flags"].to_numpy() & others)


def test_bad_rows_get_bayes(hybrid, bayes_all):
    result, _, _ = hybrid
    for row in NO_U + SENTINEL_G:
        # a missing colour that (almost) no training star lacked: the network cannot take it
        # (a stratified subsample gives such rare stars a cell of their own: some are labelled)
        assert result.loc[row, "method"] == "bayes"
        flags = int(result.loc[row, "flags"])
        assert bool(flags & Flags.NN_INVALID_INPUT) != bool(result.loc[row, "labelled"])
        assert flags & Flags.COLOR_UNUSABLE
        assert np.isfinite(result.loc[row, "FeH_mean"])
        assert result.loc[row, "Mr_mean"] == bayes_all.loc[row, "Mr_mean"]
    for row in NO_R:  # no r: no estimate from either method, the row is kept and flagged
        assert result.loc[row, "method"] == "bayes"
        assert int(result.loc[row, "flags"]) & Flags.NO_R
        assert np.isnan(result.loc[row, "Mr_mean"]) and np.isnan(result.loc[row, "dist_pc"])
    # every other row has an estimate
    others = np.setdiff1d(np.arange(len(result)), NO_R)
    assert np.isfinite(result.loc[others, ["Mr_mean", "Ar_mean", "FeH_mean"]].to_numpy()).all()


def test_saved_model_predicts_every_row_as_the_run_did(catalog, hybrid, tmp_path):
    result, _, model = hybrid
    model.save(tmp_path / "model.safetensors")
    loaded = type(model).load(tmp_path / "model.safetensors")
    pred = predict_with_model(loaded, catalog, keep=("source_id",), chunk_size=997)
    assert len(pred) == len(catalog) and list(pred.columns) == list(result.columns)
    np.testing.assert_array_equal(pred["source_id"], catalog["source_id"])
    assert (pred["method"] == "nn").all() and not pred["labelled"].any()
    # the run's network rows, values and flags alike (float32 kernels: compare to their
    # precision), the best fit's chi2 too (the model keeps the run's estimator settings)
    nn_rows = (result["method"] == "nn").to_numpy()
    for key in ("Mr_mean", "Ar_sigma", "FeH_sigma_nn", "Qr_mean", "dist_pc", "chi2min"):
        np.testing.assert_allclose(pred.loc[nn_rows, key], result.loc[nn_rows, key], rtol=1e-6)
    np.testing.assert_array_equal(pred.loc[nn_rows, "flags"], result.loc[nn_rows, "flags"])
    # rows the networks cannot take stay, NaN and flagged with the reason
    for row in NO_R:
        flags = int(pred.loc[row, "flags"])
        assert flags & Flags.NN_INVALID_INPUT and flags & Flags.NO_R
        assert np.isnan(pred.loc[row, ["Mr_mean", "Ar_mean", "FeH_mean", "dist_pc"]]).all()
    for row in NO_U + SENTINEL_G:
        flags = int(pred.loc[row, "flags"])
        assert flags & Flags.NN_INVALID_INPUT and flags & Flags.COLOR_UNUSABLE
        assert not flags & Flags.NO_R
    info = pred.attrs["photodist_pipeline"]
    n_invalid = int(((pred["flags"].to_numpy() & Flags.NN_INVALID_INPUT) > 0).sum())
    assert info["n_invalid_input"] == n_invalid >= len(NO_R + NO_U + SENTINEL_G)
    assert info["n_nn"] + n_invalid == len(catalog)
    # one usable colour (r-i): TOO_FEW_COLORS, as run and bayes flag such a row
    lone = catalog.iloc[:3].copy()
    lone[["umag", "gmag", "zmag"]] = np.nan
    flags = predict_with_model(loaded, lone)["flags"].to_numpy()
    assert np.all(flags & Flags.TOO_FEW_COLORS) and np.all(flags & Flags.NN_INVALID_INPUT)


def test_network_rows_far_from_the_locus_are_flagged(catalog, hybrid):
    """Stars whose colours no star has (g 0.5 mag too faint) get POOR_FIT from the best-fit
    check, whatever the networks make of them; before, network rows had no such flag."""
    _, _, model = hybrid
    shifted = catalog.copy()
    mags = shifted[[f"{b}mag" for b in "ugrizy"]].to_numpy()
    measured = (np.isfinite(mags) & (mags < 40)).all(axis=1)
    rows = np.flatnonzero(measured & (shifted["rmag"] < 20.0).to_numpy())[:50]
    shifted.loc[rows, "gmag"] += 0.5
    pred = predict_with_model(model, shifted)
    flags = pred["flags"].to_numpy()
    assert (flags[rows] & Flags.POOR_FIT).all() and (pred.loc[rows, "chi2min"] > 100).all()
    assert ((flags & Flags.POOR_FIT) > 0).mean() < 0.05
    assert np.isfinite(pred.loc[rows, "Mr_mean"]).all()  # estimates kept, flagged
    # the check can be left out for throughput (PipelineConfig.nn_fit_check)
    unchecked = predict_with_model(model, shifted, fit_check=False)
    assert unchecked["chi2min"].isna().all()
    assert not (unchecked["flags"].to_numpy() & (Flags.POOR_FIT | Flags.AR_AT_BOUND)).any()
    np.testing.assert_array_equal(unchecked["Mr_mean"], pred["Mr_mean"])


def test_networks_train_on_the_bayesian_rows_of_a_result(catalog, hybrid):
    result, _, _ = hybrid
    config = small_config()
    model = train_networks(catalog, result, config)
    phot = photometry_from_frame(catalog, "lsst")
    bayes_rows = (result["method"] == "bayes").to_numpy() & np.isfinite(phot.r)
    usable = bayes_rows & np.isfinite(result["Mr_sigma"].to_numpy())
    meta = model.training_metadata_
    assert meta["n_train"] + meta["n_validation"] <= usable.sum()
    assert meta["n_train"] + meta["n_validation"] >= usable.sum() - 10  # rows lacking 2 colours
    # the same seed and labels give the same networks
    again = train_networks(catalog, result, config)
    x = phot.features()[:500]
    np.testing.assert_array_equal(model.predict(x)["Mr_mean"], again.predict(x)["Mr_mean"])
    with pytest.raises(ValueError, match="label rows"):
        train_networks(catalog, result.iloc[:-1], config)
    with pytest.raises(ValueError, match="at least 20000"):
        train_networks(catalog, result, small_config(min_train=20_000))
    with pytest.raises(KeyError, match="FeH_mean"):
        train_networks(catalog, result.drop(columns="FeH_mean"), config)


def test_saved_model_refuses_another_band_set(catalog, hybrid):
    _, _, model = hybrid
    frame = simulate_patch(cone=CONE, r_max=18.0, seed=3, band_set="sdss", errors="sdss")
    sdss = photometry_from_frame(frame, "sdss")
    with pytest.raises(ValueError, match="band set"):
        predict_with_model(model, sdss)
    with pytest.raises(ValueError, match="chunk_size"):
        predict_with_model(model, catalog, chunk_size=0)


def test_small_patch_runs_bayes_on_all(catalog, prior, default_locus):
    phot = photometry_from_frame(catalog, "lsst")
    for config, why in (
        # more stars than the patch has
        (small_config(n_train=10_000, error_floor="auto"), "not more than n_train"),
        # a subsample below the minimum
        (small_config(train_fraction=0.05, min_train=1000), "below min_train"),
        # Bayes on all is cheaper than training
        (small_config(bayes_all_below=len(catalog)), "bayes_all_below"),
    ):
        result, timings, model = run_patch(catalog, prior, default_locus, config)
        assert model is None
        info = result.attrs["photodist_pipeline"]
        assert info["mode"] == "bayes_only" and why in info["reason"]
        assert (result["method"] == "bayes").all()
        assert not result["labelled"].any()
        assert timings["train"] == 0 and timings["bayes_all"] > 0
        # an "auto" floor was fitted on the patch's own stars, and every row used it
        assert info["error_floor"]["fitted"] == (config.error_floor == "auto")
        grid = posterior_grid(default_locus, config)
        bayes_all = BayesEstimator(
            grid, used_prior(info, prior, grid), config.bayes_config(used_error_floor(info))
        ).predict(phot)
        np.testing.assert_array_equal(result["FeH_mean"], bayes_all["FeH_mean"])
        np.testing.assert_array_equal(result["flags"], bayes_all["flags"])
        assert len(result) == len(catalog)


def test_prior_power_is_fitted_recorded_and_reused(catalog, prior, default_locus, hybrid):
    """The default fits the prior's [Fe/H] shift and power on the patch (stars of the prior's
    own Galaxy model keep them near 0 and 1); given values are used as given, and
    ``used_prior`` rebuilds the prior used."""
    temper = hybrid[0].attrs["photodist_pipeline"]["prior_temper"]
    assert temper["fitted"] and temper["beta"] >= 0.8 and temper["n_stars"] >= 1000
    assert abs(temper["feh_shift"]) <= 0.1
    config = small_config(bayes_all_below=len(catalog), prior_temper=0.3, prior_feh_shift=0.1)
    result, timings, _ = run_patch(catalog, prior, default_locus, config)
    info = result.attrs["photodist_pipeline"]
    assert info["prior_temper"]["beta"] == 0.3 and not info["prior_temper"]["fitted"]
    assert info["prior_temper"]["feh_shift"] == 0.1
    assert "prior_temper" in timings
    grid = posterior_grid(default_locus, config)
    used = used_prior(info, prior, grid)
    as_grid = BayesEstimator(grid, prior).prior
    np.testing.assert_allclose(used.log_prior, as_grid.feh_shifted(2).tempered(0.3).log_prior)
    expected = BayesEstimator(grid, used, config.bayes_config(used_error_floor(info))).predict(
        photometry_from_frame(catalog, "lsst")
    )
    np.testing.assert_array_equal(result["FeH_mean"], expected["FeH_mean"])
    as_given = small_config(bayes_all_below=len(catalog), prior_temper=1.0, prior_feh_shift=0)
    wide = result["FeH_sigma"].median()
    assert wide > 1.1 * run_patch(catalog, prior, default_locus, as_given)[0]["FeH_sigma"].median()
    assert used_prior({}, prior, grid) is prior and used_prior(info, None, grid) is None


def test_empty_catalog(catalog, prior, default_locus):
    result, _, model = run_patch(catalog.iloc[:0], prior, default_locus, small_config())
    assert len(result) == 0 and model is None
    assert list(result.columns[: len(RESULT_FLOAT_COLUMNS)]) == list(RESULT_FLOAT_COLUMNS)


def test_train_fraction_sets_the_subsample(catalog, prior, default_locus):
    config = small_config(train_fraction=0.1, min_train=100, nn_max_epochs=5, nn_patience=5)
    result, _, model = run_patch(catalog, prior, default_locus, config)
    phot = photometry_from_frame(catalog, "lsst")
    complete = network_inputs_usable(phot, missing_colors=False)
    labelled = result["labelled"].to_numpy()
    assert labelled[complete].sum() == int(np.ceil(0.1 * complete.sum()))
    assert model is not None


def test_same_seed_same_result(catalog, prior, default_locus, hybrid):
    result, _, model = hybrid
    again, _, model2 = run_patch(catalog, prior, default_locus, small_config(), keep=("source_id",))
    pd.testing.assert_frame_equal(result, again)
    other, _, _ = run_patch(catalog, prior, default_locus, small_config(seed=6))
    assert not np.array_equal(result["labelled"], other["labelled"])


def test_photometry_input_and_band_check(catalog, prior, default_locus, hybrid):
    phot = photometry_from_frame(catalog, "lsst")
    result, _, _ = run_patch(phot, prior, default_locus, small_config())
    pd.testing.assert_frame_equal(result, hybrid[0].drop(columns="source_id"))
    with pytest.raises(ValueError, match="band set"):
        run_patch(phot, prior, default_locus, small_config(band_set="sdss"))


def test_fixed_error_floor_is_used_as_given(catalog, default_locus):
    phot = photometry_from_frame(catalog, "lsst")
    unchecked = small_config(error_floor="0.015", check_error_model=False)
    fixed = unchecked.resolve_error_floor(phot, default_locus)
    assert fixed.floor == 0.015 and not fixed.fitted and fixed.reason == "fixed"
    assert fixed.n_stars == 0 and np.isnan(fixed.scatter)
    # the check measures the scatter but keeps the fixed floor
    checked = small_config(error_floor=0.015).resolve_error_floor(phot, default_locus)
    assert checked.floor == 0.015 and not checked.fitted and checked.reason == "fixed"
    assert checked.n_stars > 0 and checked.scatter < 0.005
    assert small_config(error_floor=0.015).bayes_config().error_floor == 0.015
    auto = small_config(error_floor="auto")
    assert auto.bayes_config().error_floor == auto.fallback_error_floor
    assert auto.bayes_config(0.004).error_floor == 0.004


def test_subsample_excludes_unusable_rows_and_is_seeded(catalog):
    phot = photometry_from_frame(catalog, "lsst")
    usable = network_inputs_usable(phot)
    assert not usable[NO_R].any() and usable[NO_U + SENTINEL_G].all()  # 3 or 4 colours left
    strict = network_inputs_usable(phot, missing_colors=False)
    assert not strict[NO_U + NO_R + SENTINEL_G].any()
    assert np.array_equal(strict, usable & np.isfinite(phot.colors).all(axis=1))
    for strategy in ("stratified", "random"):
        idx = choose_training_subsample(phot, 500, strategy, seed=3)
        # 500 complete stars, plus stars lacking a colour at the same rate
        partial = usable & ~strict
        n_partial = min(500, int(np.ceil(500 * partial.sum() / strict.sum())))
        assert strict[idx].sum() == 500 and partial[idx].sum() == n_partial
        assert idx.size == 500 + n_partial and np.all(np.diff(idx) > 0)
        assert usable[idx].all()
        np.testing.assert_array_equal(idx, choose_training_subsample(phot, 500, strategy, seed=3))
        assert not np.array_equal(idx, choose_training_subsample(phot, 500, strategy, seed=4))
    everything = choose_training_subsample(phot, 10**6, "stratified", seed=0)
    np.testing.assert_array_equal(everything, np.flatnonzero(usable))
    with pytest.raises(ValueError, match="strategy"):
        choose_training_subsample(phot, 10, "kmeans")


def test_stratified_subsample_covers_rare_regions(catalog):
    """Sparse input cells and the brightest stars are represented far better than at random."""
    phot = photometry_from_frame(catalog, "lsst")
    rows = np.flatnonzero(network_inputs_usable(phot))
    cell = strata(phot, rows, (6, 10, 10))
    counts = np.bincount(cell)
    # stars in cells holding at most 10 stars (the sparse edges of the input space)
    sparse = np.zeros(len(phot), dtype=bool)
    sparse[rows[counts[cell] <= 10]] = True
    bright = np.zeros(len(phot), dtype=bool)
    bright[rows] = phot.r[rows] <= np.percentile(phot.r[rows], 5)
    n = 300
    stratified = np.array(
        [choose_training_subsample(phot, n, "stratified", seed=s) for s in range(5)]
    )
    random = np.array([choose_training_subsample(phot, n, "random", seed=s) for s in range(5)])
    # at random each draw holds on average n x (fraction of such stars)
    for mask in (sparse, bright):
        expected_random = n * mask[rows].mean()
        assert random.size and abs(mask[random].sum(axis=1).mean() - expected_random) < 8
        assert mask[stratified].sum(axis=1).min() > 2 * expected_random
    # distinct cells covered
    position = np.full(len(phot), -1)
    position[rows] = cell
    n_cells = [np.unique(position[idx]).size for idx in stratified]
    n_cells_random = [np.unique(position[idx]).size for idx in random]
    assert min(n_cells) > max(n_cells_random)


def test_config_validation():
    with pytest.raises(ValueError, match="strategy"):
        PipelineConfig(strategy="grid")
    with pytest.raises(ValueError, match="n_train"):
        PipelineConfig(n_train=0)
    with pytest.raises(ValueError, match="train_fraction"):
        PipelineConfig(train_fraction=1.5)
    with pytest.raises(ValueError, match="nn_options"):
        PipelineConfig(nn_options={"seed": 3})
    with pytest.raises(ValueError, match="band set"):
        PipelineConfig(band_set="hsc")
    with pytest.raises(ValueError, match="bayes_all_below"):
        PipelineConfig(bayes_all_below=-1)
    for bad in ("0.02x", -0.01, None):
        with pytest.raises(
            ValueError, match="error_floor must be 'auto' or a finite magnitude >= 0"
        ):
            PipelineConfig(error_floor=bad)
    for bad in ("strong", 1.2, -0.5):
        with pytest.raises(ValueError, match="prior's power"):
            PipelineConfig(prior_temper=bad)
    for bad in ("metal-rich", 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[Fe/H\] shift"):
            PipelineConfig(prior_feh_shift=bad)
    assert PipelineConfig(prior_temper="0.5").prior_temper == 0.5
    config = PipelineConfig(train_fraction=0.05)
    assert config.training_size(200_000) == 10_000
    assert PipelineConfig().training_size(5) == 10_000
    assert PipelineConfig().to_dict()["strata_bins"] == [6, 10, 10]


def test_networks_take_stars_without_u(catalog, prior, default_locus):
    """When many stars lack u (faint stars), the networks learn them from the labelled ones that
    lack it; such rows are flagged COLOR_UNUSABLE (accuracy: ``benchmarks/bench_pipeline.py``)."""
    frame = catalog.copy()
    no_u = np.random.default_rng(9).random(len(frame)) < 0.3
    no_u[NO_R] = False
    frame.loc[no_u, "umag"] = np.nan
    colors = photometry_from_frame(frame, "lsst").colors
    no_u |= ~np.isfinite(colors[:, 0])  # (a few faint stars have u errors > 1 mag anyway)
    complete = np.isfinite(colors).all(axis=1)
    result, _, model = run_patch(frame, prior, default_locus, small_config())
    assert (
        model is not None and model.missing_supported_[0] and not model.missing_supported_[1:].any()
    )
    nn_rows = (result["method"] == "nn").to_numpy()
    taken = nn_rows & no_u
    assert taken.sum() > 0.5 * (no_u & ~result["labelled"].to_numpy()).sum()
    flags = result["flags"].to_numpy()
    assert np.all(flags[taken] & Flags.COLOR_UNUSABLE) and not np.any(
        flags[taken] & Flags.NN_INVALID_INPUT
    )
    assert not np.any(flags[nn_rows & complete] & Flags.COLOR_UNUSABLE)
    assert np.isfinite(result.loc[taken, ["Mr_mean", "Ar_mean", "FeH_mean"]].to_numpy()).all()
    # the labelled stars without u carry their Bayesian (u dropped) labels
    assert model.training_metadata_["n_missing_color_rows"][0] > 50
    # switched off, every star without u gets the Bayesian estimate
    off, _, _ = run_patch(frame, prior, default_locus, small_config(nn_missing_colors=False))
    assert not np.any((off["method"] == "nn").to_numpy() & no_u)


def test_learning_rate_setting_reaches_the_networks():
    assert PipelineConfig().network(0).learning_rate == 1e-2
    paper = PipelineConfig(nn_max_epochs=1024, nn_learning_rate=1e-3).network(0)
    assert paper.learning_rate == 1e-3 and paper.max_epochs == 1024
    with pytest.raises(ValueError, match="nn_learning_rate"):
        PipelineConfig(nn_learning_rate=0.0)
    with pytest.raises(ValueError, match="learning_rate"):
        PipelineConfig(nn_options={"learning_rate": 0.01})


def test_config_from_its_json_form():
    """A run summary's config (JSON: tuples become lists) rebuilds the same settings;
    unknown keys are refused unless told to ignore them."""
    import dataclasses
    import json

    from photodist.pipeline import PipelineConfig

    config = PipelineConfig(strata_bins=(4, 5, 6), seed=3, color_covariance=False)
    data = json.loads(json.dumps(dataclasses.asdict(config)))
    assert PipelineConfig.from_dict(data) == config
    with pytest.raises(TypeError):
        PipelineConfig.from_dict({**data, "no_such_setting": 1})
    assert PipelineConfig.from_dict({**data, "no_such_setting": 1}, ignore_unknown=True) == config


def test_dust_profile_prior_labels_the_patch(catalog, prior, default_locus, hybrid):
    """``dust_prior="profile"``: the profile is fitted to the training subsample, its labels
    are the Bayesian estimator's with that profile, and A_r moves closer to the truth; a
    patch where the fit fails keeps the flat prior and says why."""
    config = small_config(dust_prior="profile")
    result, timings, model = run_patch(catalog, prior, default_locus, config)
    info = result.attrs["photodist_pipeline"]
    fit = info["dust_profile"]
    assert fit["fitted"] and fit["relative"] and fit["n_stars"] > 200
    assert timings["dust_profile"] > 0 and model is not None and len(result) == len(catalog)
    # labels relative to the map: the networks take the map's A_r (the flat run's do not)
    assert model.dust_input and not hybrid[2].dust_input
    profile = DustProfile.from_dict(fit)
    grid = posterior_grid(default_locus, config)
    estimator = BayesEstimator(
        grid, prior, config.bayes_config(used_error_floor(info)), dust_profile=profile
    )
    labelled = np.flatnonzero(result["labelled"].to_numpy())
    expected = estimator.predict(photometry_from_frame(catalog, "lsst").subset(labelled))
    assert used_dust_profile(info).sigma == profile.sigma
    np.testing.assert_allclose(result["Ar_mean"].to_numpy()[labelled], expected["Ar_mean"], 1e-6)
    truth = catalog["Ar_true"].to_numpy()
    flat_error = np.nanmedian(np.abs(hybrid[0]["Ar_mean"].to_numpy() - truth)[labelled])
    profile_error = np.nanmedian(np.abs(result["Ar_mean"].to_numpy() - truth)[labelled])
    assert profile_error < 0.7 * flat_error
    few, _, _ = run_patch(catalog.iloc[:150], prior, default_locus, config)
    reason = few.attrs["photodist_pipeline"]["dust_profile"]
    assert not reason["fitted"] and "usable estimate" in reason["reason"]
    with pytest.raises(ValueError, match="dust_prior"):
        small_config(dust_prior="map")


def test_networks_with_the_dust_map_as_input(catalog, prior, default_locus):
    """``nn_dust_input``: the networks take the map's A_r as an input; a row without a map
    value gets the Bayesian estimate, flagged NN_INVALID_INPUT; the saved model wants it."""
    frame = catalog.copy()
    frame.loc[[20, 21], "Ar"] = np.nan
    config = small_config(nn_dust_input=True)
    result, _, model = run_patch(frame, prior, default_locus, config)
    assert model is not None and model.dust_input and model.n_features_in_ == 13
    assert len(result) == len(frame)
    for row in (20, 21):
        if not result.loc[row, "labelled"]:
            assert result.loc[row, "method"] == "bayes"
            assert result.loc[row, "flags"] & Flags.NN_INVALID_INPUT
    again = predict_with_model(model, frame, keep=())
    nn_rows = (result["method"] == "nn").to_numpy()
    np.testing.assert_allclose(again.loc[nn_rows, "Ar_mean"], result.loc[nn_rows, "Ar_mean"], 1e-6)
    with pytest.raises(ValueError, match="no dust column"):
        predict_with_model(model, frame.drop(columns=["Ar"]))
    # without map values the networks cannot train: said before the Bayesian labels
    for no_map in (frame.drop(columns=["Ar"]), frame.assign(Ar=np.nan)):
        with pytest.raises(ValueError, match="no dust-map values"):
            run_patch(no_map, prior, default_locus, config)
    with pytest.raises(ValueError, match="nn_options"):
        small_config(nn_options={"dust_input": True})


@pytest.mark.parametrize(
    "setting",
    [
        {"seed": -1},
        {"nn_max_epochs": 0},
        {"nn_batch_size": 0},
        {"error_floor": float("inf")},
        {"min_train": 2},
    ],
)
def test_pipeline_config_refuses_settings_before_any_work(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        PipelineConfig(**setting)


def test_results_keep_the_input_index_and_refuse_clashing_kept_columns(
    catalog, prior, default_locus
):
    """``frame["x"] = result[...]`` aligns whatever the frame's index (here shuffled)."""
    frame = catalog.iloc[:300].sample(frac=1.0, random_state=4)
    config = small_config(n_train=10_000)  # Bayes on all: fast
    result, _, _ = run_patch(frame, prior, default_locus, config, keep="source_id")
    assert result.index.equals(frame.index)
    assert (result["source_id"] == frame["source_id"]).all()
    plain, _, _ = run_patch(frame.reset_index(drop=True), prior, default_locus, config)
    np.testing.assert_array_equal(result["Mr_mean"].to_numpy(), plain["Mr_mean"].to_numpy())
    with pytest.raises(ValueError, match="Mr_mean"):
        run_patch(frame.assign(Mr_mean=1.0), prior, default_locus, config, keep=["Mr_mean"])


def test_labels_settings_are_read_from_bayes_and_run_summaries():
    """The best-fit check a model keeps is that of its labels: from a ``photodist bayes``
    summary (BayesConfig fields, its floor and grid) or a ``run`` summary (PipelineConfig
    fields, an "auto" floor resolved in its error-floor record, the grid steps)."""
    from photodist.pipeline import _labels_fit_check

    config = PipelineConfig()
    bayes_summary = {
        "config": {"error_floor": 0.05, "dust_scale": 2.0, "color_covariance": False},
        "error_floor": {"floor": 0.05, "fitted": False},
        "posterior_grid": {"feh_step": 0.1, "mr_step": 0.2},
    }
    record = _labels_fit_check(bayes_summary, config)
    assert record["posterior_grid"] == [0.1, 0.2]
    settings = record["bayes_config"]
    assert settings["error_floor"] == 0.05 and settings["dust_scale"] == 2.0
    assert settings["color_covariance"] is False
    assert settings["dust_offset"] == config.dust_offset  # not recorded: the config's
    run_summary = {
        "config": {**config.to_dict(), "error_floor": "auto", "bayes_mr_step": 0.25},
        "error_floor": {"floor": 0.0123, "fitted": True},
    }
    record = _labels_fit_check(run_summary, config)
    assert record["bayes_config"]["error_floor"] == 0.0123
    assert record["posterior_grid"] == [config.bayes_feh_step, 0.25]
    # a summary without settings: the config's, as without a summary
    assert _labels_fit_check({}, config)["bayes_config"]["error_floor"] == 0.02


def test_run_patch_names_a_wrong_input_type() -> None:
    with pytest.raises(TypeError, match="DataFrame of the catalogue or a Photometry, got list"):
        run_patch([{"rmag": 18.0}], None, None, PipelineConfig(band_set="sdss"))


def test_a_star_listed_many_times_counts_once(catalog, prior, default_locus, hybrid) -> None:
    """Copies of one star's row change neither the fits of the patch nor its training set:
    the original rows get exactly the estimates they get without the copies (before, 20,000
    copies of one star pulled the fitted prior to power 0.5 and +0.4 dex)."""
    labelled = np.flatnonzero(hybrid[0]["labelled"].to_numpy())[:2]
    extra = [20] * (2 * len(catalog)) + [*labelled] * 30
    copies = pd.concat([catalog, catalog.iloc[extra]], ignore_index=True)
    result, _, _ = run_patch(copies, prior, default_locus, small_config(), keep=("source_id",))
    info = result.attrs["photodist_pipeline"]
    assert info["n_duplicate_rows"] == len(extra)
    assert info["prior_temper"] == hybrid[0].attrs["photodist_pipeline"]["prior_temper"]
    assert not result["labelled"].iloc[len(catalog) :].any()
    assert 0 <= info["n_ar_near_bound"] < 0.05 * info["n_ar_estimates"]  # A_r within bounds
    pd.testing.assert_frame_equal(result.iloc[: len(catalog)], hybrid[0], check_like=False)
    # the copies of a labelled star take its Bayesian estimate, not the networks'
    assert info["n_label_copies"] == 60
    assert info["n_labelled"] + info["n_label_copies"] + info["n_nn"] + info[
        "n_bayes_fallback"
    ] == len(copies)
    tail = result.iloc[-60:].drop(columns="labelled").reset_index(drop=True)
    originals = hybrid[0].iloc[[*labelled] * 30].drop(columns="labelled").reset_index(drop=True)
    pd.testing.assert_frame_equal(tail, originals)
    assert set(tail["method"].astype(str)) == {"bayes"}


def test_a_band_missing_everywhere_is_named(catalog, prior, default_locus) -> None:
    """y without data for every star: no star is complete, every star gets the Bayesian
    estimate, and the reason names the colour and the way out."""
    frame = catalog.head(300).assign(ymag=np.nan)
    result, _, model = run_patch(
        frame, prior, default_locus, small_config(min_train=50, n_train=100)
    )
    reason = result.attrs["photodist_pipeline"]["reason"]
    assert model is None and "zy is unusable for nearly every star" in reason
    assert np.isfinite(result["Mr_mean"]).mean() > 0.9


def test_estimates_pressed_against_the_a_r_bound_are_flagged(default_locus) -> None:
    """Near the plane (l = 30, b = 1.5: A_r ~ 3.5-4) without a dust map, the default 3-mag
    bound is below the stars' extinction: estimates reaching 90 % of it get AR_NEAR_MAX,
    Bayesian and network rows by the same rule, and the run counts them."""
    cone = (30.0, 1.5, 0.03)
    stars = simulate_patch(cone=cone, r_max=23.0, seed=3, locus=default_locus).drop(columns="Ar")
    plane = build_patch_priors(cone=cone, locus=default_locus, seed=2, min_stars=2000)
    result, _, _ = run_patch(stars, plane, default_locus, small_config(n_train=600))
    info = result.attrs["photodist_pipeline"]
    near = (result["flags"] & Flags.AR_NEAR_MAX).to_numpy() != 0
    assert near.sum() == info["n_ar_near_bound"] > 0.1 * info["n_ar_estimates"]
    assert near[(result["method"] == "bayes").to_numpy()].mean() > 0.3
    np.testing.assert_array_equal(near, result["Ar_mean"].to_numpy() >= 0.9 * 3.0)


def test_stars_of_other_dust_map_values_are_outside_the_domain(catalog, hybrid) -> None:
    """A model keeps its training stars' dust-map A_r range: stars of a dustier sightline
    (here the map values x4 + 0.3 mag), whose labels would have had other A_r bounds, are
    flagged NN_OUT_OF_DOMAIN; the patch's own stars hardly ever."""
    model = hybrid[2]
    lo, hi = model.training_metadata_["user"]["dust_map_range"]
    assert (
        0.0 <= lo < hi == pytest.approx(catalog["Ar"].iloc[hybrid[0]["labelled"].to_numpy()].max())
    )
    own = predict_with_model(model, catalog)["flags"].to_numpy() & Flags.NN_OUT_OF_DOMAIN
    dusty = catalog.assign(Ar=4.0 * catalog["Ar"] + 0.3)
    flags = predict_with_model(model, dusty)["flags"].to_numpy()
    valid = (flags & Flags.NN_INVALID_INPUT) == 0
    assert (flags[valid] & Flags.NN_OUT_OF_DOMAIN).all()
    assert (own != 0).mean() < 0.05
    without_map = predict_with_model(model, catalog.drop(columns="Ar"))["flags"].to_numpy()
    assert ((without_map & Flags.NN_OUT_OF_DOMAIN) != 0).sum() <= (own != 0).sum()


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"prior_r_range": [13.5]}, "prior_r_range is not"),
        ({"prior_r_intervals": "ab"}, "prior_r_intervals is not"),
        ({"dust_map_range": [0.3, 0.1]}, "dust_map_range is not"),
        ({"dust_map_range": [[0.1, 0.3], [0.4, 0.5]]}, "dust_map_range is not"),
        ({"fit_check": {"posterior_grid": "ab"}}, "best-fit check"),
        ({"fit_check": {"bayes_config": {"error_floor": "x"}}}, "best-fit check"),
    ],
)
def test_an_unusable_training_record_is_refused(hybrid, catalog, edit, message) -> None:
    """A model whose training record was edited into values the predictions cannot use
    is refused with ModelFileError naming the entry (before: IndexError, TypeError)."""
    from photodist.nn import ModelFileError

    model = copy.deepcopy(hybrid[2])
    model.training_metadata_["user"].update(edit)
    with pytest.raises(ModelFileError, match=message):
        predict_with_model(model, catalog.head(20))
