"""Tests of the Appendix toy model: the prior-pulled bias of a posterior-mean estimator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from photodist.toy_model import (
    OUTPUT_FILES,
    TWO_GAUSSIAN_PRIOR,
    UG_POINTS,
    UNIFORM_PRIOR,
    FehPrior,
    bias_curves,
    feh_from_ug,
    posterior_summary,
    run_toy_model,
    simulate_sample,
    ug_from_feh,
)

PRIORS = (UNIFORM_PRIOR, TWO_GAUSSIAN_PRIOR)
ERRORS = np.round(np.linspace(0.0, 0.3, 61), 4)


@pytest.fixture(scope="module")
def curves():
    return {prior.name: bias_curves(prior, UG_POINTS, ERRORS) for prior in PRIORS}


def _bias(table, ug, column="bias"):
    rows = table[np.isclose(table["ug"], ug)].sort_values("ug_error")
    return rows["ug_error"].to_numpy(), rows[column].to_numpy()


def test_relation_and_inverse():
    feh = np.linspace(-3, 0, 31)
    np.testing.assert_allclose(feh_from_ug(ug_from_feh(feh)), feh, atol=1e-12)
    assert ug_from_feh(0.0) == pytest.approx(1.18)
    assert np.isnan(feh_from_ug(0.84))
    # the colours of the paper's Figure 30
    np.testing.assert_allclose(
        feh_from_ug(np.array(UG_POINTS)), [-1.850, -0.790, -0.297], atol=2e-3
    )


def test_priors_are_normalised_and_sample_correctly():
    grid = np.linspace(-6, 3, 90_001)
    rng = np.random.default_rng(0)
    for prior in PRIORS:
        assert np.trapezoid(prior.pdf(grid), grid) == pytest.approx(1.0, abs=1e-3)
        draws = prior.sample(200_000, rng)
        mean = np.trapezoid(grid * prior.pdf(grid), grid)
        assert draws.mean() == pytest.approx(mean, abs=0.01)
    with pytest.raises(ValueError):
        FehPrior("bad", "gaussians", means=(0.0,), sigmas=(0.0,), weights=(1.0,))


def test_no_bias_at_zero_error(curves):
    for prior in PRIORS:
        table = curves[prior.name]
        for ug in UG_POINTS:
            errors, bias = _bias(table, ug)
            assert bias[0] == pytest.approx(0.0, abs=1e-9)  # sigma = 0: the inverted relation
            # a genuine small error: the grid posterior collapses onto the relation
            small = posterior_summary(ug, 0.002, prior)["mean"][0]
            assert small == pytest.approx(float(feh_from_ug(ug)), abs=0.02)
            assert abs(bias[errors == 0.005][0]) < 0.03


def test_bias_grows_with_error_and_has_opposite_signs_at_the_ends(curves):
    blue, red = min(UG_POINTS), max(UG_POINTS)
    for prior in PRIORS:
        table = curves[prior.name]
        errors, bias_blue = _bias(table, blue)
        _, bias_red = _bias(table, red)
        large = errors >= 0.15
        # blue (metal-poor) end pulled metal-richer, red (metal-rich) end metal-poorer
        assert (bias_blue[large] > 0.1).all(), prior.name
        assert (bias_red[large] < -0.1).all(), prior.name
        # the red end's bias grows monotonically with the error
        assert (np.diff(bias_red) <= 1e-9).all(), prior.name
        assert abs(bias_red[-1]) > 0.5 and abs(bias_blue[-1]) > 0.25
        # and the same holds for the estimate at the observed colour
        _, offset_blue = _bias(table, blue, "offset_at_observed")
        _, offset_red = _bias(table, red, "offset_at_observed")
        assert offset_blue[-1] > 0.2 and offset_red[-1] < -0.5
    # with the two-Gaussian prior the blue end grows monotonically too
    _, bias_blue = _bias(curves[TWO_GAUSSIAN_PRIOR.name], blue)
    assert (np.diff(bias_blue) >= -1e-9).all()


def test_grid_posterior_agrees_with_monte_carlo():
    """The exact posterior mean equals the mean [Fe/H] of simulated stars at that colour."""
    rng = np.random.default_rng(11)
    for prior in PRIORS:
        feh, ug = simulate_sample(prior, 600_000, 0.1, rng)
        for centre in (0.9, 1.0, 1.1):
            sel = np.abs(ug - centre) < 0.005
            assert sel.sum() > 5000
            expected = posterior_summary(np.array([centre]), 0.1, prior)
            assert feh[sel].mean() == pytest.approx(expected["mean"][0], abs=0.03)
            assert np.median(feh[sel]) == pytest.approx(expected["median"][0], abs=0.04)


def test_run_toy_model_writes_figures_and_tables(tmp_path):
    result = run_toy_model(tmp_path, n_stars=20_000, n_errors=7, seed=3)
    assert set(result.figures) == {"fig28", "fig29", "fig30"}
    written = {**result.figures, **result.files}
    assert {key: path.name for key, path in written.items()} == OUTPUT_FILES
    for path in written.values():
        assert path.is_file() and path.stat().st_size > 0
    summary = json.loads(result.files["summary"].read_text())
    for prior in PRIORS:
        at_max = summary["bias_at_max_error"][prior.name]
        assert at_max["0.89"] > 0 > at_max["1.09"]
    # binned sample medians follow the exact posterior median where bins are well populated
    full = result.binned[result.binned["n"] >= 1000]
    assert len(full) > 10
    np.testing.assert_allclose(full["median"], full["posterior_median"], atol=0.08)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ug_error", -0.1),
        ("ug_error", float("nan")),
        ("ug_error", float("inf")),
        ("max_error", 0.0),
        ("max_error", -1.0),
        ("max_error", float("inf")),
        ("max_error", float("nan")),
        ("bin_width", 0.0),
    ],
)
def test_run_toy_model_refuses_bad_errors_before_any_work(tmp_path, option, value):
    with pytest.raises(ValueError, match=f"{option} must be a finite"):
        run_toy_model(tmp_path / "out", n_stars=100, n_errors=2, **{option: value})
    assert not (tmp_path / "out").exists()


def test_posterior_and_sample_refuse_bad_errors():
    rng = np.random.default_rng(0)
    for value in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="ug_error"):
            posterior_summary(1.0, value, UNIFORM_PRIOR)
        with pytest.raises(ValueError, match="ug_error"):
            simulate_sample(UNIFORM_PRIOR, 10, value, rng)
        with pytest.raises(ValueError, match="ug_errors"):
            bias_curves(UNIFORM_PRIOR, ug_errors=[0.1, value])


def test_run_toy_model_keeps_existing_outputs_without_overwrite(tmp_path):
    (tmp_path / OUTPUT_FILES["bias"]).write_text("mine")
    with pytest.raises(FileExistsError, match=OUTPUT_FILES["bias"]):
        run_toy_model(tmp_path, n_stars=100, n_errors=2)
    assert (tmp_path / OUTPUT_FILES["bias"]).read_text() == "mine"
    assert not (tmp_path / OUTPUT_FILES["fig28"]).exists()
    result = run_toy_model(tmp_path, n_stars=100, n_errors=2, overwrite=True)
    assert result.files["bias"].read_text() != "mine"
