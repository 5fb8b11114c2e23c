"""Tests of the Hyperband architecture search (tiny budgets on a small synthetic labelled set)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import optuna
import pandas as pd
import pytest

from photodist import tune
from photodist.nn import ACTIVATIONS, MISSING_COLOR_ERROR, NetworkSpec, PhotoDNetwork
from photodist.tune import (
    LabelledSet,
    _recheck_seeds,
    feature_columns,
    labelled_set_from_file,
    labelled_set_from_frame,
    load_study,
    prepare_tune_data,
    run_tune,
    spec_params,
    suggest_spec,
    train_spec,
)

SMOKE = {
    "n_trials": 8,
    "timeout": None,
    "max_epochs": 9,
    "min_epochs": 1,
    "seed": 0,
    "n_recheck": 0,
}


@pytest.fixture(scope="module")
def small_set(synthetic_set) -> LabelledSet:
    return synthetic_set(1000, seed=1)


@pytest.fixture(scope="module")
def smoke_run(small_set, tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "study.journal"
    return path, run_tune(
        small_set, storage_path=path, **{**SMOKE, "n_recheck": 2, "recheck_seeds": 2}
    )


def test_smoke_search_prunes_and_writes_a_loadable_spec(smoke_run, tmp_path):
    path, result = smoke_run
    assert result.n_trials == 8
    assert result.n_pruned >= 1, "Hyperband pruned no trial"
    assert result.n_complete >= 1
    assert result.n_complete + result.n_pruned + result.n_failed == 8
    pruned = [t for t in result.study.get_trials() if t.state == optuna.trial.TrialState.PRUNED]
    assert all(max(t.intermediate_values) < 9 for t in pruned)  # stopped before max_epochs
    paths = result.write(tmp_path / "out")
    spec = NetworkSpec.from_json(paths["spec"].read_text())
    assert spec == result.best_spec
    table = pd.read_csv(paths["table"])
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert np.all(np.diff(table["value"]) >= 0)
    assert paths["figure"].stat().st_size > 10_000
    summary = json.loads(paths["summary"].read_text())
    assert summary["n_pruned"] == result.n_pruned


def test_paper_default_is_the_first_trial_and_ranked(smoke_run):
    _, result = smoke_run
    first = result.study.trials[0]
    assert first.user_attrs["fixed_spec"] == "paper_default"
    assert NetworkSpec.from_json(first.user_attrs["spec"]) == NetworkSpec.paper_default()
    assert result.paper_value is not None and math.isfinite(result.paper_value)
    values = result.top_trials.loc[result.top_trials["fixed"] == "", "value"]
    assert result.paper_rank == 1 + int((values < result.paper_value).sum())
    assert result.best_searched_value == float(values.iloc[0])


def test_recheck_retrains_the_candidates_on_other_splits(smoke_run, small_set):
    _, result = smoke_run
    recheck = result.recheck
    assert (recheck["fixed"] == "paper_default").sum() == 1
    assert (recheck["fixed"] == "").sum() == 2
    assert np.allclose(recheck["recheck_mean"], recheck[["split_1", "split_2"]].mean(axis=1))
    assert np.all(np.diff(recheck["recheck_mean"]) >= 0)
    assert NetworkSpec.from_json(recheck["spec"].iloc[0]) == result.best_spec
    assert result.best_recheck == recheck["recheck_mean"].iloc[0]
    assert result.paper_recheck == float(
        recheck.loc[recheck["fixed"] == "paper_default", "recheck_mean"].iloc[0]
    )
    # a re-check value is the loss of an independent training on another split
    row = recheck.iloc[-1]
    seed = _recheck_seeds(0, 2)[1]
    data = prepare_tune_data(small_set, seed=seed)
    assert data.x_val.tobytes() != prepare_tune_data(small_set, seed=0).x_val.tobytes()
    expected = train_spec(NetworkSpec.from_json(row["spec"]), data, **result.settings["training"])
    assert row["split_2"] == expected.best_val_loss


def test_study_resumes_from_the_journal(small_set, tmp_path):
    path = tmp_path / "resume.journal"
    first = run_tune(small_set, storage_path=path, **{**SMOKE, "n_trials": 4})
    values = {t.number: t.value for t in first.study.trials}
    second = run_tune(small_set, storage_path=path, **{**SMOKE, "n_trials": 3})
    assert second.n_trials == 7
    assert {t.number: t.value for t in second.study.trials[:4]} == values
    fixed = [t for t in second.study.trials if t.user_attrs.get("fixed_spec")]
    assert len(fixed) == 1  # the paper default is not enqueued again
    assert len(load_study(path).trials) == 7
    with pytest.raises(ValueError, match="other data or settings"):
        run_tune(small_set, storage_path=path, **{**SMOKE, "n_trials": 1, "max_epochs": 12})


def test_sqlite_storage_and_fixed_seed_reproduce_the_search(small_set, tmp_path):
    kwargs = {**SMOKE, "n_trials": 5, "enqueue_paper_default": False}
    a = run_tune(small_set, storage_path=tmp_path / "a.journal", **kwargs)
    b = run_tune(small_set, storage_path=tmp_path / "b.db", **kwargs)
    assert [t.params for t in a.study.trials] == [t.params for t in b.study.trials]
    assert [t.value for t in a.study.trials] == [t.value for t in b.study.trials]
    assert a.paper_value is None and a.paper_rank is None


def test_parallel_workers_share_the_study(small_set, tmp_path):
    kwargs = {**SMOKE, "n_trials": 4, "max_epochs": 3, "n_recheck": 1, "recheck_seeds": 1}
    result = run_tune(small_set, storage_path=tmp_path / "par.journal", n_jobs=2, **kwargs)
    assert result.n_trials == 4
    assert len(result.recheck) == 2 and np.isfinite(result.recheck["split_1"]).all()
    assert len({t.number for t in result.study.trials}) == 4
    assert result.study.trials[0].user_attrs["fixed_spec"] == "paper_default"


def test_dask_workers_run_the_search(small_set, tmp_path):
    distributed = pytest.importorskip("distributed")
    kwargs = {**SMOKE, "n_trials": 2, "max_epochs": 3}
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0"
    ) as client:
        result = run_tune(
            small_set, storage_path=tmp_path / "dask.journal", dask_client=client, **kwargs
        )
    assert result.n_trials == 2


@pytest.mark.parametrize("n_lacking_u", [0, 80])
def test_train_spec_reproduces_photodnetwork(small_set, n_lacking_u):
    """Same rows, fill of unusable colours, split and standardisation as the networks'."""
    if n_lacking_u:
        small_set = small_set.subset(np.arange(len(small_set)))
        small_set.features[:n_lacking_u, [1, 7]] = np.nan  # u-g and its error
    spec = NetworkSpec(((12, "gelu"), (7, "softsign")))
    data = prepare_tune_data(small_set, seed=5)
    assert len(data.x_train) + len(data.x_val) == len(small_set)
    result = train_spec(spec, data, max_epochs=6, patience=3, learning_rate=0.01)
    model = PhotoDNetwork(
        "lsst",
        spec,
        seed=5,
        device="cpu",
        max_epochs=6,
        patience=3,
        n_runs=1,
        learning_rate=0.01,
        secondary_max_epochs=1,
        n_threads=1,
    ).fit(small_set.features, small_set.label_mean, small_set.label_sigma)
    history = model.history_["primary_runs"][0]
    assert result.best_val_loss == history["best_val_loss"]
    assert result.val_loss == history["val_loss"]
    filled = small_set.features.copy()
    filled[:n_lacking_u, 1] = model.color_fill_[0]
    filled[:n_lacking_u, 7] = MISSING_COLOR_ERROR
    standardised = (filled[model.validation_index_] - model.input_mean_) / model.input_std_
    assert np.array_equal(standardised.astype(np.float32), data.x_val)


def test_train_spec_stops_when_the_callback_says_so(small_set):
    data = prepare_tune_data(small_set, seed=0)
    seen = []

    def callback(epoch: int, val: float, best: float) -> bool:
        seen.append((epoch, val, best))
        return epoch == 2

    result = train_spec(NetworkSpec(((5, "tanh"),)), data, max_epochs=10, callback=callback)
    assert result.stopped_by_callback and result.epochs_run == 2
    assert [e for e, _, _ in seen] == [1, 2]
    assert seen[1][2] == min(seen[0][1], seen[1][1])


def test_search_space_bounds_and_spec_params_roundtrip():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    specs = []

    def objective(trial: optuna.Trial) -> float:
        specs.append(suggest_spec(trial))
        return 0.0

    study.optimize(objective, n_trials=40)
    assert {len(s.hidden) for s in specs} <= set(range(1, 11))
    assert all(1 <= u <= 50 and a in ACTIVATIONS for s in specs for u, a in s.hidden)
    assert len({a for s in specs for _, a in s.hidden}) > 6
    for spec in (NetworkSpec.paper_default(), specs[0]):
        assert suggest_spec(optuna.trial.FixedTrial(spec_params(spec))) == spec


def test_paper_default_outside_a_narrow_space_is_not_enqueued(small_set, tmp_path):
    with pytest.warns(UserWarning, match="outside the search space"):
        result = run_tune(
            small_set,
            storage_path=tmp_path / "narrow.journal",
            max_units=20,
            **{**SMOKE, "n_trials": 2, "max_epochs": 3},
        )
    assert result.paper_value is None
    assert all(u <= 20 for u, _ in result.best_spec.hidden)


def test_budget_and_argument_checks(small_set, tmp_path):
    with pytest.raises(ValueError, match="budget"):
        run_tune(small_set, storage_path=tmp_path / "x.journal", n_trials=None, timeout=None)
    with pytest.raises(ValueError, match="min_epochs"):
        run_tune(small_set, storage_path=tmp_path / "x.journal", min_epochs=10, max_epochs=5)
    with pytest.raises(ValueError, match="max_epochs must be positive"):
        run_tune(small_set, storage_path=tmp_path / "x.journal", max_epochs=0)
    for bad, message in (
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_layers": 0}, "max_layers"),
        ({"max_units": 0}, "max_units"),
        ({"n_recheck": -1}, "n_recheck"),
    ):
        with pytest.raises(ValueError, match=message):
            run_tune(small_set, storage_path=tmp_path / "x.journal", **bad)
    assert not (tmp_path / "x.journal").exists()  # refused before the study was made


def test_fewer_max_epochs_than_the_default_first_rung(small_set, tmp_path):
    kwargs = {k: v for k, v in SMOKE.items() if k != "min_epochs"}
    result = run_tune(
        small_set, storage_path=tmp_path / "e.journal", **{**kwargs, "n_trials": 2, "max_epochs": 1}
    )
    assert result.n_complete + result.n_pruned == 2
    assert result.settings["min_epochs"] == result.settings["max_epochs"] == 1


def test_settings_bind_the_study_only_once_a_trial_finished(small_set, tmp_path):
    path = tmp_path / "late.journal"
    with pytest.raises(ValueError, match="no trial completed"):
        run_tune(small_set, storage_path=path, **{**SMOKE, "n_trials": None, "timeout": 1e-9})
    result = run_tune(small_set, storage_path=path, **{**SMOKE, "n_trials": 2, "max_epochs": 3})
    assert result.settings["max_epochs"] == 3 and result.n_trials == 2
    assert result.study.user_attrs["photodist_tune_settings"]["max_epochs"] == 3
    assert result.study.trials[0].user_attrs["fixed_spec"] == "paper_default"
    with pytest.raises(ValueError, match="other data or settings"):
        run_tune(small_set, storage_path=path, **{**SMOKE, "n_trials": 1, "max_epochs": 4})


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("cut.journal", b'{"op_code":0,"worker_id":"w","study_name":"s","dir'),
        ("bad.journal", b'{"op_code":0,"worker_id":"w","st\n{"op_code":0}\n'),
        ("garbage.journal", b'{"op_code":0,"worker_id":"w","study_name":"s"}\ngarbage\n'),
        ("bad.db", b"not a database"),
    ],
)
def test_unreadable_study_file_is_a_clear_error(small_set, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{name} is not a readable optuna"):
        run_tune(small_set.subset(np.arange(100)), storage_path=path, **SMOKE)
    assert path.read_bytes() == content  # left as it was


def test_an_interrupted_search_stops_its_worker_processes(small_set, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM (SystemExit) in the main process also stops the other workers, which
    would otherwise search until the timeout."""

    def interrupted_worker(config, data=None):
        time.sleep(2.0)  # the second worker is starting or searching
        raise KeyboardInterrupt

    monkeypatch.setattr(tune, "_optimize_worker", interrupted_worker)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_tune(
            small_set,
            storage_path=tmp_path / "stop.journal",
            n_jobs=2,
            **{**SMOKE, "n_trials": None, "timeout": 120.0},
        )
    assert time.monotonic() - start < 40.0


def test_labelled_set_file_roundtrip(small_set, tmp_path):
    path = small_set.save(tmp_path / "labels.parquet")
    back = labelled_set_from_file(path)
    assert np.array_equal(back.features, small_set.features)
    assert np.array_equal(back.label_sigma, small_set.label_sigma)
    assert np.array_equal(back.truth, small_set.truth)
    csv = small_set.subset(np.arange(5)).save(tmp_path / "labels.csv")
    assert np.allclose(labelled_set_from_file(csv).label_mean, small_set.label_mean[:5])


def test_labelled_set_from_photometry_and_pipeline_columns():
    mags = {"u": [20.0, 21.0, 22.0], "g": [19.0, 19.5, 20.0], "r": [18.5, 19.0, 19.2]}
    mags.update({"i": [18.3, 18.7, 18.9], "z": [18.2, 18.6, 18.8], "y": [18.1, 18.5, 18.7]})
    frame = pd.DataFrame({f"{b}mag": v for b, v in mags.items()})
    for b in mags:
        frame[f"{b}Err"] = 0.02
    for p, v in (("Mr", 5.0), ("Ar", 0.1), ("FeH", -1.0)):
        frame[f"{p}_mean"] = v
        frame[f"{p}_sigma"] = 0.1
    frame["labelled"] = [True, False, True]
    data = labelled_set_from_frame(frame)
    assert len(data) == 2 and data.truth is None
    assert list(feature_columns()) == ["r", "ug", "gr", "ri", "iz", "zy"] + [
        f"{c}_err" for c in ("r", "ug", "gr", "ri", "iz", "zy")
    ]
    assert np.allclose(data.features[:, 0], [18.5, 19.2])
    assert np.allclose(data.features[:, 1], [1.0, 2.0])  # u - g
    with pytest.raises(KeyError, match="Mr_std or Mr_sigma") as error:
        labelled_set_from_frame(frame.drop(columns="Mr_sigma"))
    assert str(error.value) == "labelled set needs a column Mr_std or Mr_sigma"  # not quoted
