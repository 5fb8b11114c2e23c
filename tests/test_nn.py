"""Tests of the photo-D networks (photodist.nn)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

import photodist.nn
from photodist.bands import SDSS, Photometry
from photodist.nn import (
    ACTIVATIONS,
    FLAG_KEYS,
    FLOAT_KEYS,
    ModelFileError,
    NetworkSpec,
    NotFittedError,
    PhotoDNetwork,
    _fold_network,
    _InferencePlan,
    _MomentsNet,
    _SigmaNet,
    moments_loss,
    moments_loss_terms,
    resolve_device,
    weighted_mse,
)

SMALL_SPEC = NetworkSpec(((24, "gelu"), (24, "softsign"), (16, "tanh")))
FAST = dict(
    spec=SMALL_SPEC,
    device="cpu",
    max_epochs=40,
    patience=15,
    batch_size=256,
    n_runs=2,
    secondary_max_epochs=20,
)


def synthetic(n: int, n_colors: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Features and labels that are smooth functions of the inputs plus a little noise."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(16.0, 24.0, n)
    base = rng.normal(0.8, 0.35, n)
    colours = np.column_stack(
        [0.9 * base + 0.15 * k + rng.normal(0.0, 0.1, n) for k in range(n_colors)]
    )
    r_err = 0.01 + 0.1 * 10.0 ** (0.4 * (r - 24.0))
    colour_err = np.sqrt(2.0) * r_err[:, None] * (1.0 + 0.2 * np.arange(n_colors))
    features = np.column_stack([r, colours, r_err, colour_err])
    mr = 2.0 + 6.0 * colours[:, 1] + 0.8 * np.sin(2.0 * colours[:, 0])
    ar = 0.25 + 0.2 * np.tanh(2.0 * (colours[:, 2] - colours[:, 1] - 0.15))
    feh = -1.0 + 1.5 * (colours[:, 0] - colours[:, 1]) + 0.05 * (r - 20.0)
    truth = np.column_stack([mr, ar, feh])
    sigma = np.column_stack([0.1 + 2 * r_err, 0.02 + 0.3 * r_err, 0.1 + 1.5 * r_err])
    labels = truth + 0.3 * sigma * rng.standard_normal(truth.shape)
    return features, labels, sigma, truth


@pytest.fixture(scope="module")
def sdss_data() -> tuple[np.ndarray, ...]:
    return synthetic(3000, n_colors=4, seed=1)


@pytest.fixture(scope="module")
def fitted(sdss_data: tuple[np.ndarray, ...]) -> PhotoDNetwork:
    x, y, s, _ = sdss_data
    return PhotoDNetwork("sdss", seed=0, **FAST).fit(x, y, s, metadata={"patch": 7})


# -- losses ------------------------------------------------------------------------------------


def test_moments_loss_matches_hand_computation() -> None:
    mu = torch.tensor([[1.0, 0.1, -1.0], [2.0, 0.3, 0.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.5, 0.05, 0.2], [1.0, 0.1, 0.3]], dtype=torch.float64)
    theta = torch.tensor([[1.5, 0.2, -0.5], [1.0, 0.25, 0.1]], dtype=torch.float64)
    # hand computation, parameter by parameter: mean over stars of d2 + (d2 - s^2)^2
    l_mr = ((0.25 + (0.25 - 0.25) ** 2) + (1.0 + (1.0 - 1.0) ** 2)) / 2
    l_ar = ((0.01 + (0.01 - 0.0025) ** 2) + (0.0025 + (0.0025 - 0.01) ** 2)) / 2
    l_feh = ((0.25 + (0.25 - 0.04) ** 2) + (0.01 + (0.01 - 0.09) ** 2)) / 2
    terms = moments_loss_terms(mu, sigma, theta)
    np.testing.assert_allclose(terms.numpy(), [l_mr, l_ar, l_feh], rtol=1e-12)
    expected = l_mr / 0.1**2 + l_ar / 0.02**2 + l_feh / 0.1**2
    assert moments_loss(mu, sigma, theta).item() == pytest.approx(expected, rel=1e-12)
    custom = moments_loss(mu, sigma, theta, weights=(1.0, 1.0, 2.0)).item()
    assert custom == pytest.approx(l_mr + l_ar + l_feh / 4.0, rel=1e-12)


def test_moments_loss_is_minimised_by_the_true_spread() -> None:
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(200_000, 3, generator=gen, dtype=torch.float64) * 0.3
    mu = torch.zeros_like(theta)
    losses = [moments_loss(mu, torch.full_like(theta, s), theta).item() for s in (0.2, 0.3, 0.4)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


def test_weighted_mse_matches_hand_computation() -> None:
    pred = torch.tensor([[0.2, 0.03, 0.1], [0.4, 0.01, 0.3]])
    target = torch.tensor([[0.1, 0.02, 0.2], [0.2, 0.02, 0.2]])
    expected = (0.01 + 0.04) / 2 / 0.01 + (1e-4 + 1e-4) / 2 / 4e-4 + (0.01 + 0.01) / 2 / 0.01
    assert weighted_mse(pred, target).item() == pytest.approx(expected, rel=1e-5)


# -- spec --------------------------------------------------------------------------------------


def test_spec_json_round_trip_and_paper_default() -> None:
    spec = NetworkSpec.paper_default()
    assert spec.hidden == (
        (45, "gelu"),
        (45, "softsign"),
        (42, "softsign"),
        (33, "sigmoid"),
        (36, "gelu"),
    )
    assert not spec.batch_norm
    text = '{"hidden": [[45, "gelu"], [45, "softsign"], [12, "SWISH"]], "batch_norm": true}'
    parsed = NetworkSpec.from_json(text)
    assert parsed.hidden[2] == (12, "swish") and parsed.batch_norm
    assert NetworkSpec.from_json(parsed.to_json()) == parsed
    assert json.loads(parsed.to_json()) == {
        "hidden": [[45, "gelu"], [45, "softsign"], [12, "swish"]],
        "batch_norm": True,
    }
    for name in ACTIVATIONS:
        assert NetworkSpec.from_json(json.dumps({"hidden": [[3, name]]})).hidden == ((3, name),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"hidden": [[45, "mish"]]}', "unknown activation 'mish'"),
        ('{"hidden": [[0, "relu"]]}', "positive integer"),
        ('{"hidden": [[4.5, "relu"]]}', "positive integer"),
        ('{"hidden": []}', "at least one hidden layer"),
        ('{"hidden": [[4, "relu"]], "batchnorm": true}', "unknown network-spec keys"),
        ('{"hidden": [[4, "relu", 3]]}', "pair"),
        ('{"hidden": [[4, "relu"]]', "not valid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkSpec.from_json(text)


def test_unknown_activation_in_estimator_is_clear(sdss_data: tuple[np.ndarray, ...]) -> None:
    x, y, s, _ = sdss_data
    model = PhotoDNetwork("sdss", spec={"hidden": [[8, "leaky"]]}, device="cpu")
    with pytest.raises(ValueError, match="unknown activation 'leaky'"):
        model.fit(x, y, s)


# -- inference plan vs training modules ---------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [False, True])
def test_folded_inference_matches_modules_for_every_activation(batch_norm: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    hidden = tuple((5 + i, name) for i, name in enumerate(ACTIVATIONS))
    spec = NetworkSpec(hidden, batch_norm=batch_norm)
    n_inputs = 10
    primary, secondary = _MomentsNet(n_inputs, spec), _SigmaNet(n_inputs, spec)
    for net in (primary, secondary):
        net.init_weights(gen)
        with torch.no_grad():
            for p in net.parameters():  # non-trivial biases and batch-norm affines
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            for norm in net.norms or []:
                norm.running_mean.copy_(0.2 * torch.randn(norm.running_mean.shape, generator=gen))
                norm.running_var.copy_(0.5 + torch.rand(norm.running_var.shape, generator=gen))
        net.eval()
    primary.out_offset.copy_(torch.tensor([5.0, 0.2, -1.0]))
    primary.out_scale.copy_(torch.tensor([3.0, 0.1, 0.5]))
    secondary.out_scale.copy_(torch.tensor([0.2, 0.02, 0.1]))
    mean = np.linspace(15.0, 20.0, n_inputs)
    std = np.linspace(0.5, 2.0, n_inputs)
    x = mean + std * np.random.default_rng(0).standard_normal((500, n_inputs))

    folded_p = _fold_network(primary, 1.0 / std, -mean / std)
    w, b, _ = folded_p[-1]
    w, b = w.copy(), b.copy()
    w[:, :3] *= primary.out_scale.double().numpy()
    b[:3] = b[:3] * primary.out_scale.double().numpy() + primary.out_offset.double().numpy()
    folded_p[-1] = (w, b, None)
    plan = _InferencePlan(
        folded_p,
        _fold_network(secondary, 1.0 / std, -mean / std),
        primary.out_scale.double().numpy(),
        secondary.out_scale.double().numpy(),
        x.min(axis=0),
        x.max(axis=0),
        torch.device("cpu"),
    )
    with torch.inference_mode():
        result, outside, invalid = plan.run(torch.from_numpy(x.astype(np.float32)))
        xs = torch.from_numpy(((x - mean) / std).astype(np.float32))
        mu, sigma_nn = primary(xs)
        sigma_b = secondary(xs)
        fused = plan.onednn
        for layer in (layer for net in plan.hidden for layer in net):
            layer.fused = False  # the plain matrix-product path must agree as well
        unfused, _, _ = plan.run(torch.from_numpy(x.astype(np.float32)))
    for out in (result, unfused):
        cols = {k: out[i].numpy() for i, k in enumerate(FLOAT_KEYS)}
        for j, p in enumerate(("Mr", "Ar", "FeH")):
            np.testing.assert_allclose(cols[f"{p}_mean"], mu[:, j], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(cols[f"{p}_sigma_nn"], sigma_nn[:, j], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(
                cols[f"{p}_sigma_bayes"], sigma_b[:, j], rtol=1e-4, atol=1e-6
            )
    assert outside.numel() == 0 and invalid.numel() == 0
    if torch.backends.mkldnn.is_available():
        assert fused, "the fused oneDNN path should be usable on this CPU build"


# -- training ----------------------------------------------------------------------------------


def test_network_learns_a_smooth_function() -> None:
    x, y, s, truth = synthetic(5000, n_colors=4, seed=2)
    model = PhotoDNetwork(
        "sdss",
        spec=NetworkSpec(((32, "gelu"), (32, "softsign"))),
        device="cpu",
        seed=1,
        max_epochs=150,
        patience=30,
        batch_size=256,
        n_runs=1,
        secondary_max_epochs=60,
    ).fit(x[:4000], y[:4000], s[:4000])
    run = model.history_["primary_runs"][0]
    assert run["best_val_loss"] < 0.05 * run["val_loss"][0]
    sec = model.history_["secondary"]
    assert sec["best_val_loss"] < 0.2 * sec["val_loss"][0]
    pred = model.predict(x[4000:])
    for j, p in enumerate(("Mr", "Ar", "FeH")):
        assert np.corrcoef(pred[f"{p}_mean"], truth[4000:, j])[0, 1] > 0.95, p
    # the secondary network tracks the Bayesian widths
    assert np.corrcoef(pred["Mr_sigma_bayes"], s[4000:, 0])[0, 1] > 0.9
    assert np.all(pred["Ar_sigma_nn"] > 0)


def test_prediction_columns_and_combinations(
    fitted: PhotoDNetwork, sdss_data: tuple[np.ndarray, ...]
) -> None:
    x = sdss_data[0]
    pred = fitted.predict(x[:500])
    assert set(pred) == set(FLOAT_KEYS) | set(FLAG_KEYS)
    for key in FLOAT_KEYS:
        assert pred[key].shape == (500,) and pred[key].dtype == np.float32
    for p in ("Mr", "Ar", "FeH"):
        combined = np.hypot(pred[f"{p}_sigma_nn"], pred[f"{p}_sigma_bayes"])
        np.testing.assert_allclose(pred[f"{p}_sigma"], combined, rtol=1e-6)
    np.testing.assert_allclose(pred["Qr_mean"], pred["Mr_mean"] + pred["Ar_mean"], rtol=1e-6)
    np.testing.assert_allclose(
        pred["Qr_sigma"], np.hypot(pred["Mr_sigma"], pred["Ar_sigma"]), rtol=1e-6
    )
    # training inputs are inside the training range
    assert not pred["out_of_domain"].any() and not pred["invalid_input"].any()


def test_fit_records_state_and_metadata(
    fitted: PhotoDNetwork, sdss_data: tuple[np.ndarray, ...]
) -> None:
    x = sdss_data[0]
    assert fitted.n_features_in_ == 10 and fitted.band_set_ == "sdss"
    np.testing.assert_array_equal(fitted.training_range_[:, 0], x.min(axis=0))
    np.testing.assert_array_equal(fitted.training_range_[:, 1], x.max(axis=0))
    assert fitted.input_mean_.shape == (10,) and np.all(fitted.input_std_ > 0)
    meta = fitted.training_metadata_
    assert meta["n_rows"] == 3000 and meta["n_excluded_nonfinite"] == 0
    assert meta["n_train"] + meta["n_validation"] == 3000 and meta["n_validation"] == 750
    assert len(meta["validation_losses"]) == 2 and meta["user"] == {"patch": 7}
    assert meta["validation_loss"] == min(meta["validation_losses"])
    runs = fitted.history_["primary_runs"]
    assert all(1 <= r["epochs_run"] <= 40 for r in runs)
    assert fitted.history_["secondary"]["epochs_run"] <= 20


def test_rows_with_nan_are_excluded_from_training(sdss_data: tuple[np.ndarray, ...]) -> None:
    x, y, s, _ = (a.copy() for a in sdss_data)
    x[:10, 2] = np.nan
    y[10:15, 1] = np.nan
    s[15:17, 0] = np.inf
    model = PhotoDNetwork("sdss", seed=0, **{**FAST, "max_epochs": 3, "n_runs": 1})
    model.fit(x, y, s)
    assert model.training_metadata_["n_excluded_nonfinite"] == 17
    assert model.training_metadata_["n_train"] + model.training_metadata_["n_validation"] == 2983
    assert np.all(np.isfinite(model.training_range_))


def test_early_stopping_restores_the_best_epoch(sdss_data: tuple[np.ndarray, ...]) -> None:
    x, y, s, _ = (a[:800] for a in sdss_data)
    # a large learning rate makes the validation loss fluctuate, so a short patience triggers
    opts = {**FAST, "max_epochs": 500, "patience": 3, "n_runs": 1, "learning_rate": 0.03}
    model = PhotoDNetwork("sdss", seed=0, **opts).fit(x, y, s)
    run = model.history_["primary_runs"][0]
    assert run["stopped_early"] and run["epochs_run"] == run["best_epoch"] + 3 < 500
    assert run["best_val_loss"] == min(run["val_loss"])
    # the restored weights reproduce the best validation loss
    val = model.validation_index_
    assert len(val) == 200 and len(np.intersect1d(val, model.train_index_)) == 0
    xs = torch.from_numpy(((x[val] - model.input_mean_) / model.input_std_).astype(np.float32))
    with torch.no_grad():
        mu, sigma = model.primary_(xs)
        loss = moments_loss(mu, sigma, torch.from_numpy(y[val].astype(np.float32)))
    assert loss.item() == pytest.approx(run["best_val_loss"], rel=1e-5)
    assert run["val_loss"][-1] > run["best_val_loss"]


def test_diverging_epochs_are_rolled_back(sdss_data: tuple[np.ndarray, ...]) -> None:
    """A loss spike (validation loss above 3x the best) restores the best weights and
    halves the learning rate; without the option the spikes stay."""
    x, y, s, _ = (a[:800] for a in sdss_data)
    opts = {**FAST, "max_epochs": 60, "patience": 60, "n_runs": 1, "learning_rate": 1.0}
    model = PhotoDNetwork("sdss", seed=0, **opts).fit(x, y, s)
    run = model.history_["primary_runs"][0]
    val, lr = np.array(run["val_loss"]), np.array(run["learning_rate"])
    assert run["rollbacks"], "a learning rate of 1 should make the loss spike"
    for epoch in run["rollbacks"]:
        i = epoch - 1
        assert not val[i] <= 3.0 * val[:i].min()  # a spike (or NaN)
        if i + 1 < len(lr):
            assert lr[i + 1] <= 0.5 * lr[i] * (1 + 1e-12)
    assert np.isfinite(run["best_val_loss"])
    plain = PhotoDNetwork("sdss", seed=0, divergence_factor=None, **opts).fit(x, y, s)
    plain_run = plain.history_["primary_runs"][0]
    assert plain_run["rollbacks"] == []
    assert max(plain_run["val_loss"]) > 3.0 * plain_run["best_val_loss"]
    with pytest.raises(ValueError, match="divergence_factor"):
        PhotoDNetwork("sdss", divergence_factor=1.0, **FAST).fit(x, y, s)


def test_batch_norm_variant_trains_and_round_trips(
    sdss_data: tuple[np.ndarray, ...], tmp_path
) -> None:
    x, y, s, _ = sdss_data
    spec = NetworkSpec(SMALL_SPEC.hidden, batch_norm=True)
    model = PhotoDNetwork("sdss", seed=0, **{**FAST, "spec": spec, "n_runs": 1, "max_epochs": 15})
    model.fit(x, y, s)
    pred = model.predict(x[:300])
    assert all(np.isfinite(pred[k]).all() for k in FLOAT_KEYS)
    loaded = PhotoDNetwork.load(model.save(tmp_path / "bn.safetensors"), device="cpu")
    assert loaded.spec_.batch_norm
    again = loaded.predict(x[:300])
    for key in pred:
        np.testing.assert_array_equal(pred[key], again[key])


def test_same_seed_identical_different_seed_differs(sdss_data: tuple[np.ndarray, ...]) -> None:
    x, y, s, _ = sdss_data
    opts = {**FAST, "max_epochs": 8, "secondary_max_epochs": 4}
    a = PhotoDNetwork("sdss", seed=5, n_threads=2, **opts).fit(x, y, s)
    b = PhotoDNetwork("sdss", seed=5, n_threads=1, **opts).fit(x, y, s)
    c = PhotoDNetwork("sdss", seed=6, n_threads=2, **opts).fit(x, y, s)
    for name, value in a.primary_.state_dict().items():
        assert torch.equal(value, b.primary_.state_dict()[name]), name
    for name, value in a.secondary_.state_dict().items():
        assert torch.equal(value, b.secondary_.state_dict()[name]), name
    pa, pb, pc = a.predict(x[:400]), b.predict(x[:400]), c.predict(x[:400])
    for key in FLOAT_KEYS:
        np.testing.assert_array_equal(pa[key], pb[key])
    assert not np.array_equal(pa["Mr_mean"], pc["Mr_mean"])
    assert not np.array_equal(pa["FeH_sigma_bayes"], pc["FeH_sigma_bayes"])


def test_subprocess_training_matches_threads(sdss_data: tuple[np.ndarray, ...]) -> None:
    x, y, s, _ = sdss_data
    opts = {**FAST, "max_epochs": 6, "secondary_max_epochs": 3, "n_threads": 2}
    a = PhotoDNetwork("sdss", seed=9, parallel="threads", **opts).fit(x, y, s)
    b = PhotoDNetwork("sdss", seed=9, parallel="processes", **opts).fit(x, y, s)
    assert a.training_metadata_["parallel"] == "threads"
    assert b.training_metadata_["parallel"] == "processes"
    for net_a, net_b in ((a.primary_, b.primary_), (a.secondary_, b.secondary_)):
        for name, value in net_a.state_dict().items():
            assert torch.equal(value, net_b.state_dict()[name]), name
    for run_a, run_b in zip(a.history_["primary_runs"], b.history_["primary_runs"], strict=True):
        assert run_a["val_loss"] == run_b["val_loss"]
    with pytest.raises(ValueError, match="parallel must be"):
        PhotoDNetwork("sdss", parallel="mpi", **opts).fit(x, y, s)


def test_failed_subprocess_falls_back_to_this_process(
    sdss_data: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y, s, _ = sdss_data
    opts = {**FAST, "max_epochs": 4, "secondary_max_epochs": 2, "n_threads": 2}
    reference = PhotoDNetwork("sdss", seed=2, parallel="threads", **opts).fit(x, y, s)
    monkeypatch.setattr(photodist.nn, "_CHILD_CODE", "import sys; sys.exit(3)")
    with pytest.warns(RuntimeWarning, match="exit status 3"):
        model = PhotoDNetwork("sdss", seed=2, parallel="processes", **opts).fit(x, y, s)
    for name, value in reference.primary_.state_dict().items():
        assert torch.equal(value, model.primary_.state_dict()[name]), name


def test_lsst_twelve_inputs_work() -> None:
    x, y, s, _ = synthetic(1500, n_colors=5, seed=4)
    assert x.shape[1] == 12
    model = PhotoDNetwork("lsst", seed=0, **{**FAST, "max_epochs": 10, "n_runs": 1})
    pred = model.fit(x, y, s).predict(x[:100])
    assert model.n_features_in_ == 12 and pred["Mr_mean"].shape == (100,)
    assert np.isfinite(pred["FeH_sigma"]).all()
    with pytest.raises(ValueError, match="expected 12 input columns"):
        model.predict(x[:, :10])


def test_feature_count_mismatch_is_a_clear_error(fitted: PhotoDNetwork) -> None:
    with pytest.raises(ValueError, match="expected 10 input columns .* got 12"):
        fitted.predict(np.zeros((5, 12)))
    with pytest.raises(ValueError, match="2-D"):
        fitted.predict(np.zeros(10))


def test_label_shape_and_fit_argument_errors(sdss_data: tuple[np.ndarray, ...]) -> None:
    x, y, s, _ = sdss_data
    model = PhotoDNetwork("sdss", **FAST)
    with pytest.raises(ValueError, match="label_mean must have shape"):
        model.fit(x, y[:, :2], s)
    with pytest.raises(ValueError, match="label_sigma must be non-negative"):
        model.fit(x, y, -s)
    with pytest.raises(ValueError, match="JSON"):
        model.fit(x, y, s, metadata={"bad": object()})
    with pytest.raises(ValueError, match="too few"):
        model.fit(x[:2], y[:2], s[:2])
    with pytest.raises(ValueError, match="max_epochs"):
        PhotoDNetwork("sdss", max_epochs=0).fit(x, y, s)
    with pytest.raises(NotFittedError):
        PhotoDNetwork("sdss").predict(x)


# -- invalid and out-of-domain inputs ---------------------------------------------------------


def test_nan_rows_are_flagged_and_do_not_disturb_other_rows(
    fitted: PhotoDNetwork, sdss_data: tuple[np.ndarray, ...]
) -> None:
    x = sdss_data[0][:1000].copy()
    clean = fitted.predict(x)
    bad_rows = [0, 3, 517, 999]
    x[0, 1] = np.nan
    x[3, :] = np.nan
    x[517, 9] = np.inf
    x[999, 0] = -np.inf
    pred = fitted.predict(x)
    expected = np.zeros(len(x), dtype=bool)
    expected[bad_rows] = True
    np.testing.assert_array_equal(pred["invalid_input"], expected)
    assert not pred["out_of_domain"][bad_rows].any()
    for key in FLOAT_KEYS:
        assert np.isnan(pred[key][bad_rows]).all(), key
        np.testing.assert_array_equal(pred[key][~expected], clean[key][~expected])


def test_only_sets_of_missing_colours_seen_in_training_are_filled(
    sdss_data: tuple[np.ndarray, ...], tmp_path
) -> None:
    """Each colour missing alone in many training rows does not make a row missing all of
    them (r only), or a pair never missing together, a network row: such rows are
    invalid_input with NaN estimates, in every prediction path and after save/load."""
    x, y, s, _ = sdss_data
    x = x.copy()
    rng = np.random.default_rng(4)
    for k in range(4):  # each colour (and its error) missing alone in 5 % of the rows
        lacks = (rng.random(len(x)) < 0.05) & np.isfinite(x[:, 1:5]).all(axis=1)
        x[lacks, 1 + k] = np.nan
        x[lacks, 6 + k] = np.nan
    model = PhotoDNetwork("sdss", seed=0, **FAST).fit(x, y, s)
    assert model.missing_supported_.all()
    test = np.repeat(x[:1], 4, axis=0)
    test[:, 1:5] = x[np.isfinite(x[:, 1:5]).all(axis=1)][0, 1:5]
    test[:, 6:10] = 0.02
    test[1, [1, 6]] = np.nan  # u-g alone missing: seen in training
    test[2, [1, 2, 6, 7]] = np.nan  # u-g and g-r together: never seen
    test[3, 1:5] = test[3, 6:10] = np.nan  # r only
    loaded = PhotoDNetwork.load(model.save(tmp_path / "m.safetensors"))
    for pred in (model.predict(test), loaded.predict(test)):
        assert pred["invalid_input"].tolist() == [False, False, True, True]
        assert np.isfinite(pred["Mr_mean"][:2]).all() and np.isnan(pred["Mr_mean"][2:]).all()
    on_tensor = model.predict_tensor(torch.from_numpy(test))
    assert on_tensor["invalid_input"].numpy().tolist() == [False, False, True, True]


def test_missing_colours_are_learned_when_the_training_set_has_them(
    sdss_data: tuple[np.ndarray, ...], tmp_path
) -> None:
    """A colour missing (NaN) in enough training rows enters as the training median with a
    2-mag error; other missing colours stay invalid; the rule survives save/load."""
    from photodist.nn import MISSING_COLOR_ERROR

    x, y, s, _ = sdss_data
    x = x.copy()
    lacks_u = np.random.default_rng(3).random(len(x)) < 0.2
    x[lacks_u, 1] = np.nan  # the first colour (u-g)
    x[lacks_u, 6] = np.nan  # and its error
    x[5, 2] = np.nan  # one row without the second colour: too rare to learn
    model = PhotoDNetwork("sdss", seed=0, **FAST).fit(x, y, s)
    assert model.missing_counts_[0] == lacks_u.sum()
    assert model.missing_supported_.tolist() == [True, False, False, False]
    np.testing.assert_allclose(model.color_fill_[0], np.median(x[~lacks_u, 1]))
    assert model.training_range_[6, 1] == MISSING_COLOR_ERROR
    pred = model.predict(x)
    assert not pred["invalid_input"][lacks_u & (np.arange(len(x)) != 5)].any()
    assert pred["invalid_input"][5] and np.isnan(pred["Mr_mean"][5])
    filled = x.copy()
    filled[lacks_u, 1] = model.color_fill_[0]
    filled[lacks_u, 6] = MISSING_COLOR_ERROR
    again = model.predict(filled)
    ok = ~pred["invalid_input"]
    np.testing.assert_array_equal(pred["Mr_mean"][ok], again["Mr_mean"][ok])
    loaded = PhotoDNetwork.load(model.save(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded.predict(x)["FeH_mean"], pred["FeH_mean"])
    # rows already in a tensor: the same fill, flags and values, without host arrays
    on_tensor = model.predict_tensor(torch.from_numpy(x))
    assert set(on_tensor) == set(pred)
    for key, value in on_tensor.items():
        assert isinstance(value, torch.Tensor) and value.shape == (len(x),)
        if key in FLAG_KEYS:
            np.testing.assert_array_equal(value.numpy(), pred[key])
        else:
            np.testing.assert_allclose(value.numpy(), pred[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected an"):
        model.predict_tensor(torch.zeros(3, 12))
    # switched off: every row with a NaN is invalid
    strict = PhotoDNetwork("sdss", seed=0, missing_colors=False, **FAST).fit(x, y, s)
    assert strict.predict(x)["invalid_input"][lacks_u].all()


def test_out_of_domain_rows_are_flagged(fitted: PhotoDNetwork) -> None:
    lo, hi = fitted.training_range_[:, 0], fitted.training_range_[:, 1]
    centre = (lo + hi) / 2
    x = np.tile(centre, (4, 1))
    x[1, 0] = hi[0] + 0.01 * (hi[0] - lo[0])  # inside the 5 % margin
    x[2, 0] = hi[0] + 0.2 * (hi[0] - lo[0])  # r far too faint
    x[3, 5] = lo[5] - 0.5  # r error below anything seen
    pred = fitted.predict(x)
    np.testing.assert_array_equal(pred["out_of_domain"], [False, False, True, True])
    assert np.isfinite(pred["Mr_mean"]).all()


def test_chunked_multithreaded_prediction_matches_single_chunk(
    fitted: PhotoDNetwork, sdss_data: tuple[np.ndarray, ...]
) -> None:
    x = sdss_data[0]
    fitted.set_params(n_threads=1, predict_batch_size=128)
    one = fitted.predict(x)
    fitted.set_params(n_threads=2, predict_batch_size=128)
    two = fitted.predict(x)
    fitted.set_params(n_threads=None, predict_batch_size=None)
    whole = fitted.predict(x.astype(np.float32))
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
        np.testing.assert_allclose(one[key], whole[key], rtol=1e-5, atol=1e-6)
    assert fitted.predict(x[:0])["Mr_mean"].shape == (0,)


def test_device_chunk_loop_matches_cpu_prediction(
    fitted: PhotoDNetwork, sdss_data: tuple[np.ndarray, ...]
) -> None:
    """The staged chunk loop used for GPUs, run with the CPU plan: same rows, same flags."""
    from photodist.nn import FLOAT_KEYS

    x = sdss_data[0].copy()
    x[3, 1] = np.nan  # invalid
    x[7, 0] = 99.0  # out of the training domain
    expected = fitted.predict(x)
    assert fitted.inference_backend("cpu") in {"onednn", "torch-cpu"}
    floats = np.full((len(FLOAT_KEYS), len(x)), np.nan, dtype=np.float32)
    flags = np.zeros((len(FLAG_KEYS), len(x)), dtype=bool)
    fitted.set_params(predict_batch_size=97)
    try:
        fitted._predict_device(fitted._plan(torch.device("cpu")), x, floats, flags)
    finally:
        fitted.set_params(predict_batch_size=None)
    for i, key in enumerate(FLOAT_KEYS):
        np.testing.assert_allclose(floats[i], expected[key], rtol=1e-5, atol=1e-6)
    for i, key in enumerate(FLAG_KEYS):
        np.testing.assert_array_equal(flags[i], expected[key])
    assert flags[1, 3] and flags[0, 7] and flags.sum() == 2


# -- persistence ------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(
    fitted: PhotoDNetwork, sdss_data: tuple[np.ndarray, ...], tmp_path
) -> None:
    x = sdss_data[0].copy()
    x[7, 3] = np.nan
    path = fitted.save(tmp_path / "sub" / "model.safetensors")
    loaded = PhotoDNetwork.load(path, band_set="sdss", device="cpu")
    before, after = fitted.predict(x), loaded.predict(x)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert loaded.band_set_ == "sdss" and loaded.spec_ == fitted.spec_
    assert loaded.training_metadata_["user"] == {"patch": 7}
    assert loaded.training_metadata_["seed"] == 0
    assert "package_version" in loaded.training_metadata_
    np.testing.assert_array_equal(loaded.training_range_, fitted.training_range_)
    np.testing.assert_array_equal(loaded.input_mean_, fitted.input_mean_)
    assert loaded.history_["selected_run"] == fitted.history_["selected_run"]
    assert loaded.get_params()["max_epochs"] == fitted.max_epochs


def test_load_refuses_another_band_set(fitted: PhotoDNetwork, tmp_path) -> None:
    path = fitted.save(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="band set 'sdss', not 'lsst'"):
        PhotoDNetwork.load(path, band_set="lsst")
    assert PhotoDNetwork.load(path, band_set="ugriz", device="cpu").band_set_ == "sdss"


def test_damaged_or_foreign_files_raise_model_file_error(fitted: PhotoDNetwork, tmp_path) -> None:
    good = fitted.save(tmp_path / "model.safetensors").read_bytes()
    cases = {
        "flipped": bytearray(good),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "text": b"this is not a model file at all, just some text\n",
        "bad_header": good[:8] + b"{" * (len(good) - 8),
        "foreign": safetensors_save({"w": torch.zeros(3)}),
        "foreign_meta": safetensors_save({"w": torch.zeros(3)}, metadata={"format": "pt"}),
    }
    cases["flipped"][-100] ^= 0xFF  # inside the weights: only the checksum can tell
    for name, payload in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(bytes(payload))
        with pytest.raises(ModelFileError):
            PhotoDNetwork.load(path)
    with pytest.raises(FileNotFoundError):
        PhotoDNetwork.load(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="folder"):
        PhotoDNetwork.load(tmp_path)


def _model_file_parts(model: PhotoDNetwork, path):
    """The metadata dictionary and tensors of a saved network file."""
    import json

    from safetensors.torch import load as safetensors_load

    good = model.save(path).read_bytes()
    (header_size,) = np.frombuffer(good[:8], dtype="<u8")
    return json.loads(good[8 : 8 + int(header_size)])["__metadata__"], safetensors_load(good)


def test_settings_a_model_cannot_use_are_refused_at_load(fitted: PhotoDNetwork, tmp_path) -> None:
    """Metadata or statistics that only failed at predict time (or made every row NaN or out
    of domain) are refused when the file is read, also in a deliberately crafted file whose
    checksum was recomputed."""
    import json

    from photodist.nn import _content_digest

    metadata, tensors = _model_file_parts(fitted, tmp_path / "model.safetensors")

    def written(name, info_text=metadata["photodist"], tensor_values=tensors):
        path = tmp_path / f"{name}.safetensors"
        meta = {
            **metadata,
            "photodist": info_text,
            "sha256": _content_digest(tensor_values, info_text),
        }
        path.write_bytes(safetensors_save(tensor_values, metadata=meta))
        return path

    for setting, value in (("n_threads", 0), ("predict_batch_size", -5), ("domain_margin", -10)):
        info = json.loads(metadata["photodist"])
        info["params"][setting] = value
        with pytest.raises(ModelFileError, match=f"parameters.*{setting}"):
            PhotoDNetwork.load(written(f"bad_{setting}", json.dumps(info)))
    for name, change, message in (
        ("input_std", 0.0, "standard deviations must be positive"),
        ("input_mean", np.nan, "non-finite values in input_mean"),
    ):
        edited = dict(tensors)
        edited[name] = torch.full_like(tensors[name], change)
        with pytest.raises(ModelFileError, match=message):
            PhotoDNetwork.load(written(f"bad_{name}", tensor_values=edited))
    for training in ([1, 2], {"user": "x"}):
        info = json.loads(metadata["photodist"])
        info["training"] = training
        with pytest.raises(ModelFileError, match="training record"):
            PhotoDNetwork.load(written("bad_training", json.dumps(info)))
    assert PhotoDNetwork.load(written("same")).band_set_ == fitted.band_set_


def test_edited_metadata_fail_the_checksum(fitted: PhotoDNetwork, tmp_path) -> None:
    """The checksum covers the metadata (input fills, domain, fit-check settings), not only
    the weights: one changed digit is refused. A file of the earlier format, whose checksum
    covers the weights alone, still loads, with a warning."""
    import json

    from photodist.nn import _content_digest

    metadata, tensors = _model_file_parts(fitted, tmp_path / "model.safetensors")
    info = json.loads(metadata["photodist"])
    info["missing_counts"] = [count + 1 for count in info["missing_counts"]]
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(
        safetensors_save(tensors, metadata={**metadata, "photodist": json.dumps(info)})
    )
    with pytest.raises(ModelFileError, match="checksum"):
        PhotoDNetwork.load(edited)
    older = {k: v for k, v in metadata.items() if k != "sha256_covers"}
    older["sha256"] = _content_digest(tensors)
    old_path = tmp_path / "older.safetensors"
    old_path.write_bytes(safetensors_save(tensors, metadata=older))
    with pytest.warns(UserWarning, match="before 0.3.3"):
        loaded = PhotoDNetwork.load(old_path)
    x, *_ = synthetic(50, seed=9)
    got, expected = loaded.predict(x), fitted.predict(x)
    for key in FLOAT_KEYS:
        np.testing.assert_array_equal(got[key], expected[key])
    # an earlier-format checksum that does not match is refused as before
    older["sha256"] = _content_digest({**tensors, "input_mean": tensors["input_mean"] + 1})
    old_path.write_bytes(safetensors_save(tensors, metadata=older))
    with pytest.raises(ModelFileError, match="checksum"):
        PhotoDNetwork.load(old_path)


def test_model_files_get_the_umask_s_permissions(fitted: PhotoDNetwork, tmp_path) -> None:
    """A saved network is readable by whoever may read the other outputs (umask 022: 0644),
    e.g. survey workers under another account."""
    previous = os.umask(0o022)
    try:
        path = fitted.save(tmp_path / "model.safetensors")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_unfitted_save_and_bad_device() -> None:
    with pytest.raises(NotFittedError):
        PhotoDNetwork().save("never-written.safetensors")
    with pytest.raises(ValueError, match="device"):
        PhotoDNetwork(device="tpu").fit(np.zeros((10, 12)), np.zeros((10, 3)), np.ones((10, 3)))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            PhotoDNetwork(device="cuda").fit(
                np.zeros((10, 12)), np.zeros((10, 3)), np.ones((10, 3))
            )


def test_device_names_are_checked_against_the_machine(monkeypatch) -> None:
    assert resolve_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a one-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("CUDA") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:3'.*1 CUDA device"):
        resolve_device("cuda:3")


def test_networks_ignore_torch_default_device() -> None:
    x, y, s, _ = synthetic(600, seed=5)
    options = {**FAST, "max_epochs": 3, "secondary_max_epochs": 2, "n_runs": 1}
    expected = PhotoDNetwork("sdss", seed=0, **options).fit(x, y, s).predict(x[:50])
    # a notebook's torch.set_default_device("cuda") would send implicit allocations to the
    # GPU; "meta" stands in for it here (no data): any implicit allocation fails
    torch.set_default_device("meta")
    try:
        got = PhotoDNetwork("sdss", seed=0, **options).fit(x, y, s).predict(x[:50])
    finally:
        torch.set_default_device(None)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_get_set_params() -> None:
    model = PhotoDNetwork("sdss", seed=3)
    params = model.get_params()
    assert params["seed"] == 3 and params["max_epochs"] == 1024 and params["n_runs"] == 2
    assert params["batch_size"] == 1024 and params["patience"] == 100
    assert params["learning_rate"] == 1e-3 and params["validation_fraction"] == 0.25
    assert model.set_params(max_epochs=5) is model and model.max_epochs == 5
    with pytest.raises(ValueError, match="unknown parameter"):
        model.set_params(epochs=3)
    assert math.isclose(PhotoDNetwork().lr_factor, 0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_and_inference(sdss_data: tuple[np.ndarray, ...], tmp_path) -> None:
    x, y, s, truth = sdss_data
    x = x.copy()
    x[5, 2] = np.nan
    model = PhotoDNetwork("sdss", seed=0, **{**FAST, "device": "cuda"}).fit(x, y, s)
    assert model.training_metadata_["device"].startswith("cuda")
    assert next(model.primary_.parameters()).is_cuda
    pred = model.predict(x)
    assert pred["invalid_input"][5] and np.isnan(pred["Mr_mean"][5])
    assert np.isfinite(pred["Mr_mean"][np.arange(len(x)) != 5]).all()
    path = model.save(tmp_path / "gpu.safetensors")
    on_gpu = PhotoDNetwork.load(path, device="cuda").predict(x)
    on_cpu = PhotoDNetwork.load(path, device="cpu").predict(x)
    for key in pred:
        np.testing.assert_array_equal(pred[key], on_gpu[key])
        if key in FLAG_KEYS:
            np.testing.assert_array_equal(pred[key], on_cpu[key])
        else:
            np.testing.assert_allclose(pred[key], on_cpu[key], rtol=1e-4, atol=1e-5)
    assert np.corrcoef(pred["Mr_mean"][6:], truth[6:, 0])[0, 1] > 0.9
    if photodist.nn.nn_triton.available():
        assert model.inference_backend() == "triton"
    on_device = model.predict_tensor(torch.from_numpy(x).cuda())
    for key in pred:
        assert on_device[key].is_cuda
        got = on_device[key].cpu().numpy()
        if key in FLAG_KEYS:
            np.testing.assert_array_equal(got, pred[key])
        else:
            np.testing.assert_allclose(got, pred[key], rtol=1e-6, atol=1e-6)


def test_dust_input_lets_the_networks_follow_the_map(tmp_path) -> None:
    """Labels whose A_r follows a per-star dust-map value: with ``dust_input`` the networks
    see it and follow it, without they cannot; rows without a map value are invalid, missing
    colours still fill, and the input survives save/load."""
    x, y, s, _ = synthetic(4000, n_colors=4, seed=4)
    rng = np.random.default_rng(5)
    dust = rng.uniform(0.1, 0.5, len(x))
    y = y.copy()
    y[:, 1] = 0.9 * dust + 0.005 * rng.standard_normal(len(x))
    settings = dict(FAST, max_epochs=80, patience=30, n_runs=1)
    xd = np.column_stack([x, dust])
    with_map = PhotoDNetwork("sdss", seed=0, dust_input=True, **settings).fit(
        xd[:3000], y[:3000], s[:3000]
    )
    without = PhotoDNetwork("sdss", seed=0, **settings).fit(x[:3000], y[:3000], s[:3000])
    err_with = np.std(with_map.predict(xd[3000:])["Ar_mean"] - y[3000:, 1])
    err_without = np.std(without.predict(x[3000:])["Ar_mean"] - y[3000:, 1])
    assert err_with < 0.4 * err_without, (err_with, err_without)
    # the photometry's own dust column is the extra input
    phot = Photometry(SDSS, x[:, 0], x[:, 5], x[:, 1:5], x[:, 6:10], dust)
    np.testing.assert_array_equal(phot.features(dust=True), xd)
    np.testing.assert_array_equal(
        with_map.predict(phot.subset(np.arange(3000, 3100)))["Ar_mean"],
        with_map.predict(xd[3000:3100])["Ar_mean"],
    )
    probe = xd[3000:3010].copy()
    probe[0, -1] = np.nan  # no map value
    probe[1, 1] = probe[1, 6] = np.nan  # no u: the training set had none missing either
    flags = with_map.predict(probe)["invalid_input"]
    assert flags[0] and flags[1] and not flags[2:].any()
    with pytest.raises(ValueError, match="dust-map A_r"):
        with_map.predict(x[:5])
    loaded = PhotoDNetwork.load(with_map.save(tmp_path / "dust.safetensors"))
    assert loaded.dust_input
    np.testing.assert_array_equal(
        loaded.predict(xd[3000:])["Ar_mean"], with_map.predict(xd[3000:])["Ar_mean"]
    )


def test_a_catalogue_frame_is_refused_with_a_hint(fitted: PhotoDNetwork) -> None:
    import pandas as pd

    frame = pd.DataFrame(np.zeros((2, 10)), columns=[f"c{k}" for k in range(10)])
    with pytest.raises(TypeError, match="takes a Photometry .*photometry_from_frame"):
        fitted.predict(frame)
