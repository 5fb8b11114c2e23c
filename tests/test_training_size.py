"""Tests of the training-size study (Figure 1): losses, smoothing, plateau and a tiny run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from photodist import training_size
from photodist.training_size import (
    DEFAULT_SIZES,
    patch_training_size_study,
    plateau_reached,
    plateau_size,
    plot_training_size,
    training_size_curve,
    training_size_study,
    weighted_losses,
)
from photodist.tune import LabelledSet


def test_default_sizes_are_log_spaced_from_500_to_50000():
    assert len(DEFAULT_SIZES) == 8
    assert DEFAULT_SIZES[0] == 500 and DEFAULT_SIZES[-1] == 50_000
    ratios = np.diff(np.log(DEFAULT_SIZES))
    assert np.allclose(ratios, ratios.mean(), rtol=0.03)


def test_weighted_losses_match_the_formula():
    rng = np.random.default_rng(0)
    mean, ref = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    sigma = rng.uniform(0.1, 1.0, (50, 3))
    w = np.array([0.1, 0.02, 0.1])
    d2 = (ref - mean) ** 2
    moments, mse = weighted_losses(mean, sigma, ref)
    assert moments == pytest.approx(((d2 + (d2 - sigma**2) ** 2).mean(axis=0) / w**2).sum())
    assert mse == pytest.approx((d2.mean(axis=0) / w**2).sum())


def _curve(sizes, values, column="nn_vs_truth"):
    return pd.DataFrame({"size": sizes, column: values})


def test_plateau_size_on_a_synthetic_curve():
    sizes = np.array([500, 1000, 2000, 4000, 8000, 16000, 32000, 64000])
    loss = 1.0 + 400.0 / sizes  # plateau (mean of the last two) 1.0094; 5 % band up to 1.0598
    assert plateau_size(_curve(sizes, loss)) == 8000  # loss 1.05 at 8000, 1.1 at 4000
    assert plateau_size(_curve(sizes, loss), tolerance=0.01) == 32000
    assert plateau_size(_curve(sizes, loss), tolerance=0.5) == 1000
    assert plateau_size(_curve(sizes, loss), tail=1) == 8000


def test_plateau_size_needs_the_curve_to_stay_inside():
    sizes = [500, 1000, 2000, 4000, 8000]
    # inside at 1000, out again at 2000 (a bump), inside from 4000 on
    loss = [2.0, 1.0, 1.3, 1.02, 1.0]
    assert plateau_size(_curve(sizes, loss), tail=1) == 4000
    flat = [1.0, 1.0, 1.0, 1.0, 1.0]
    assert plateau_size(_curve(sizes, flat)) == 500
    rising = [1.0, 1.0, 1.0, 1.0, 2.0]  # the last point alone is above its tail mean band
    assert plateau_size(_curve(sizes, rising), tail=2) == 8000
    two = pd.DataFrame({"patch": ["a", "b"], "size": [1, 2], "nn_vs_truth": [1.0, 1.0]})
    with pytest.raises(ValueError, match="several patches"):
        plateau_size(two)


def test_plateau_reached_compares_the_two_largest_sizes():
    assert plateau_reached(_curve([500, 1000, 2000], [3.0, 1.04, 1.0]))
    assert not plateau_reached(_curve([500, 1000, 2000], [3.0, 2.0, 1.0]))
    assert not plateau_reached(_curve([500, 1000, 2000], [3.0, 1.04, 1.0]), tolerance=0.01)


def test_training_size_curve_averages_seeds_and_smooths():
    frame = pd.DataFrame(
        {
            "size": [100, 100, 200, 200, 400, 400],
            "seed": [0, 1, 0, 1, 0, 1],
            "nn_vs_truth": [4.0, 6.0, 2.0, 4.0, 1.0, 1.0],
        }
    )
    curve = training_size_curve(frame, window=3, columns=["nn_vs_truth"])
    assert list(curve["size"]) == [100, 200, 400]
    assert list(curve["nn_vs_truth"]) == [5.0, 3.0, 1.0]
    assert list(curve["n_seeds"]) == [2, 2, 2]
    assert curve["nn_vs_truth_smooth"].tolist() == pytest.approx([4.0, 3.0, 2.0])
    assert curve["nn_vs_truth_std"].tolist() == pytest.approx([np.sqrt(2), np.sqrt(2), 0.0])
    assert plateau_size(curve, tolerance=0.05, tail=1) == 400


def test_tiny_training_size_run(tmp_path, synthetic_set):
    pool, evaluation = synthetic_set(400, seed=1), synthetic_set(300, seed=2)
    frame = training_size_study(
        pool,
        evaluation,
        sizes=(60, 200),
        seeds=(0, 1),
        max_epochs=30,
        patience=30,
        secondary_max_epochs=5,
        network_options={"n_threads": 1, "device": "cpu", "learning_rate": 0.01},
    )
    assert len(frame) == 4
    assert sorted(set(frame["size"])) == [60, 200]
    assert np.isfinite(frame[["nn_vs_truth", "nn_vs_bayes", "bayes_vs_truth"]].to_numpy()).all()
    assert frame["bayes_vs_truth"].nunique() == 1
    assert (frame["n_train"] + frame["n_validation"] == frame["size"]).all()
    assert (frame["n_evaluation"] == 300).all()
    # more labels help on this easy problem: the larger sets beat the smaller ones
    by_size = frame.groupby("size")["nn_vs_bayes"].mean()
    assert by_size[200] < by_size[60]
    frame.insert(0, "patch", "synthetic")
    path = plot_training_size(frame, tmp_path / "fig1.png")
    assert path.stat().st_size > 10_000


def test_training_size_study_checks_its_inputs(synthetic_set):
    pool = synthetic_set(100, seed=1)
    no_truth = LabelledSet(pool.features, pool.label_mean, pool.label_sigma, "lsst")
    with pytest.raises(ValueError, match="truth"):
        training_size_study(pool, no_truth, sizes=(50,))
    with pytest.raises(ValueError, match="fewer than"):
        training_size_study(pool, pool, sizes=(500,))


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf")])
def test_tolerance_must_be_finite_and_non_negative(tolerance, tmp_path):
    curve = _curve([500, 1000, 2000], [3.0, 1.04, 1.0])
    for check in (plateau_size, plateau_reached):
        with pytest.raises(ValueError, match="tolerance must be a finite non-negative"):
            check(curve, tolerance=tolerance)
    with pytest.raises(ValueError, match="tolerance"):
        plot_training_size(curve.assign(seed=0), tmp_path / "fig.png", tolerance=tolerance)
    assert not (tmp_path / "fig.png").exists()


def test_patches_differing_only_in_radius_stay_apart(synthetic_set, monkeypatch):
    def labelled_patch(cone, n, seed=0):
        return synthetic_set(n, seed=seed)

    monkeypatch.setattr(training_size, "labelled_set_from_patch", labelled_patch)
    options = {"max_epochs": 2, "patience": 2, "secondary_max_epochs": 1}
    options["network_options"] = {"n_threads": 1, "device": "cpu"}
    frames = [
        patch_training_size_study(cone, sizes=(20,), n_evaluation=30, **options)
        for cone in ((180.0, -50.0, 0.3), (180.0, -50.0, 0.6))
    ]
    table = pd.concat(frames, ignore_index=True)
    assert list(table["patch"]) == ["l=180, b=-50, r=0.3", "l=180, b=-50, r=0.6"]
    assert (training_size_curve(table)["n_seeds"] == 1).all()
