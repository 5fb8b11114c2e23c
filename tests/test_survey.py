"""Tests of the survey runner: planning, HATS output, resume, failures, Dask cluster, kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from photodist.bands import SFD_EBV_TO_AR, ColumnMap, photometry_from_frame
from photodist.bayes import BayesEstimator
from photodist.pipeline import (
    RESULT_FLOAT_COLUMNS,
    PipelineConfig,
    posterior_grid,
    run_patch,
    used_error_floor,
)
from photodist.simulate import simulate_patch
from photodist.survey import (
    MANIFEST_NAME,
    ManifestMismatchError,
    PatchResult,
    SurveyConfig,
    SurveyLockedError,
    SurveySummary,
    _column_map,
    _patch_done,
    _RunLock,
    build_parser,
    incomplete_run_note,
    input_fingerprint,
    main,
    output_path,
    patch_info_path,
    patch_seed,
    plan_patches,
    predict_rows,
    read_patch_info,
    read_survey_output,
    run_survey,
)

pytest.importorskip("hats")
pytest.importorskip("lsdb")

ORDER = 7
# three sibling order-7 pixels (one order-6 parent) near l = 60, b = 50
PIXELS = (39036, 39037, 39038)
PARENT = 39036 >> 2
PIPELINE = {
    "n_train": 800,
    "min_train": 200,
    "nn_max_epochs": 30,
    "nn_patience": 10,
    "nn_n_runs": 1,
    "nn_device": "cpu",
    "nn_options": {"secondary_max_epochs": 30},
    "seed": 5,
}


def survey_config(cache: Path, **overrides) -> SurveyConfig:
    pipeline = dict(PIPELINE)
    pipeline.update(overrides.pop("pipeline", {}))
    settings = {
        "order": ORDER,
        "pipeline": PipelineConfig(**pipeline),
        "prior_min_stars": 2000,
        "prior_cache": str(cache),
    }
    settings.update(overrides)
    return SurveyConfig(**settings)


def frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("survey")


@pytest.fixture(scope="module")
def catalog(workdir) -> pd.DataFrame:
    """Three simulated patches, shuffled, a few rows with missing photometry."""
    parts = [
        simulate_patch(pixel=p, order=ORDER, r_max=22.5, seed=10 + k) for k, p in enumerate(PIXELS)
    ]
    frame = pd.concat(parts, ignore_index=True)
    frame["source_id"] = np.arange(len(frame), dtype=np.int64) + 1_000_000
    frame = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    frame.loc[[5, 50], "umag"] = np.nan
    frame.loc[[7], "rmag"] = np.nan
    return frame


@pytest.fixture(scope="module")
def catalog_path(workdir, catalog) -> Path:
    path = workdir / "stars.parquet"
    catalog.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def prior_cache(workdir) -> Path:
    return workdir / "prior_cache"


@pytest.fixture(scope="module")
def reference(workdir, catalog_path, prior_cache):
    """An uninterrupted single-process run."""
    out = workdir / "reference"
    summary = run_survey(
        catalog_path, out, survey_config(prior_cache), scheduler="synchronous", progress=False
    )
    return out, summary


def test_command_line_column_options():
    """``python -m photodist.survey`` reads the columns as ``photodist survey`` does."""

    def columns(*options: str) -> ColumnMap:
        return _column_map(build_parser().parse_args(["in", "out", *options]))

    by_keys = columns("--column", "flux_unit=nJy", "--column", "ebv=ebv")
    assert by_keys.flux_unit == "nJy" and by_keys.ebv == "ebv" and by_keys.dust == "Ar"
    assert columns("--flux-unit", "nJy", "--ebv-column", "ebv") == by_keys
    named = columns("--column", " umag=u_psf", "--dust-column", "sfd", "--column", "ra=RA")
    assert named.mag_column("u") == "u_psf" and named.dust == "sfd" and named.ra == "RA"
    assert columns() == ColumnMap()
    for bad in ("umag", "=u_psf", "colour=x"):
        with pytest.raises(ValueError):
            columns("--column", bad)


def test_command_line_rejects_a_bad_column_mapping(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out"), "--column", "=u_psf"]) == 2
    assert "expected KEY=COLUMN" in capsys.readouterr().err


def test_summary_states_how_the_priors_were_adjusted():
    def patch(pixel: int, power: float | None, shift: float | None) -> PatchResult:
        return PatchResult(f"p{pixel}", pixel, 10, 1.0, "hybrid", prior_power=power,
                           prior_feh_shift=shift)  # fmt: skip

    summary = SurveySummary("out", n_patches=4, n_rows=40)
    assert summary.prior_note() is None  # nothing computed
    summary.patches = [patch(1, 1.0, 0.0), patch(2, None, None)]
    assert summary.prior_note() == "prior as given in 2 of 2 patches"
    summary.patches += [patch(3, 0.7, 0.3), patch(4, 1.0, -0.1)]
    note = summary.prior_note()
    assert note.startswith("prior as given in 2 of 4 patches; adjusted in 2:")
    assert "shift -0.1 to +0.3 dex, power 0.7 to 1" in note
    # patches too small for the fit are counted, with the reason
    summary.patches += [
        PatchResult(
            "p5",
            5,
            10,
            1.0,
            "bayes_only",
            prior_power=1.0,
            prior_feh_shift=0.0,
            prior_fit_skipped="10 usable stars, fewer than 200",
        )  # fmt: skip
    ]
    assert summary.prior_note().endswith(
        "; not fitted in 1 with too few stars (e.g. 10 usable stars, fewer than 200; larger "
        "patches, a lower --order, can be fitted)"
    )
    summary.patches.pop()
    summary.patches = [patch(3, 1.0, -0.4)]
    assert summary.prior_note().endswith(
        "adjusted in 1: [Fe/H] shift -0.4 dex, power 1 (per patch: photodist maps)"
    )


def test_summary_names_patches_whose_extinction_piles_against_its_bound():
    def patch(pixel: int, fraction: float | None, n: int = 100) -> PatchResult:
        near = None if fraction is None else round(fraction * n)
        return PatchResult(f"p{pixel}", pixel, n, 1.0, "hybrid", ar_near_bound_fraction=fraction,
                           n_ar_near_bound=near, n_ar_estimates=n)  # fmt: skip

    summary = SurveySummary("out", n_patches=10, n_rows=1000)
    # one star of twelve is no sign
    summary.patches = [patch(1, 0.0), patch(2, None), patch(3, 0.05), patch(10, 1 / 12, 12)]
    assert summary.ar_bound_note() is None
    summary.patches += [patch(k, 0.1 * k) for k in range(4, 10)]
    note = summary.ar_bound_note()
    assert note.startswith("warning: in 6 patches more than 5 % of the stars")
    assert "p9 (90 %), p8 (80 %)" in note and note.count("%)") == 5 and "and 1 more" in note


def test_patch_seed_depends_on_seed_and_pixel_only():
    assert patch_seed(5, 7, 39036) == patch_seed(5, 7, 39036)
    seeds = {patch_seed(5, 7, p) for p in PIXELS} | {patch_seed(6, 7, 39036)}
    assert len(seeds) == len(PIXELS) + 1
    assert patch_seed(5, 7, 39036) != patch_seed(5, 8, 39036)


def test_reference_run_is_a_complete_hats_catalog(reference, catalog, catalog_path, prior_cache):
    import lsdb

    out, summary = reference
    assert summary.ok and summary.n_done == len(PIXELS) and summary.n_skipped == 0
    assert summary.n_rows == len(catalog) == summary.rows_processed
    cat = lsdb.open_catalog(out)
    assert sorted(p.pixel for p in cat.get_healpix_pixels()) == list(PIXELS)
    assert {p.order for p in cat.get_healpix_pixels()} == {ORDER}
    data = cat.compute()
    assert len(data) == len(catalog)  # one output row per input row
    assert sorted(data["source_id"]) == sorted(catalog["source_id"])
    result = read_survey_output(out)
    merged = result.merge(catalog[["source_id", "ra", "dec"]], on="source_id")
    np.testing.assert_array_equal(merged["ra_x"], merged["ra_y"])  # positions carried through
    for name in RESULT_FLOAT_COLUMNS:
        assert result[name].dtype == np.float32, name
    assert set(result["method"].astype(str)) == {"bayes", "nn"}
    # each partition sorted by _healpix_29 and inside its pixel
    for pixel in PIXELS:
        part = pq.read_table(output_path(out, ORDER, pixel)).to_pandas()
        index = part["_healpix_29"].to_numpy()
        assert np.all(np.diff(index) >= 0)
        assert np.all(index >> (2 * (29 - ORDER)) == pixel)
        # n_train complete stars, plus the few lacking a colour at the same rate
        assert PIPELINE["n_train"] <= part["labelled"].sum() <= 1.1 * PIPELINE["n_train"]
    # the damaged rows are kept and flagged
    damaged = result.set_index("source_id").loc[catalog.loc[[5, 7, 50], "source_id"]]
    assert (damaged["flags"] != 0).all()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    config = manifest["configuration"]
    assert config["survey"]["order"] == ORDER
    assert config["survey"]["pipeline"]["seed"] == PIPELINE["seed"]
    assert config["input"]["path"] == str(catalog_path.resolve())
    assert config["input"]["bytes"] == catalog_path.stat().st_size
    assert manifest["status"]["complete"] and manifest["status"]["n_rows"] == len(catalog)
    assert not (out / "_staging").exists()  # staging removed after a complete run
    assert len(list(prior_cache.glob("galaxy_o7_p*.npz"))) == len(PIXELS)
    assert temp_files(out) == []


def test_rerun_skips_a_complete_run(reference, catalog_path, prior_cache):
    out, _ = reference
    summary = run_survey(
        catalog_path, out, survey_config(prior_cache), scheduler="synchronous", progress=False
    )
    assert summary.ok and summary.n_done == 0 and summary.n_skipped == len(PIXELS)


def test_resume_with_another_configuration_is_refused(reference, catalog_path, prior_cache):
    out, _ = reference
    other = survey_config(prior_cache, pipeline={"seed": 6})
    with pytest.raises(ManifestMismatchError, match="pipeline.seed"):
        run_survey(catalog_path, out, other, scheduler="synchronous", progress=False)
    with pytest.raises(ManifestMismatchError, match="order"):
        run_survey(
            catalog_path,
            out,
            survey_config(prior_cache, order=6),
            scheduler="synchronous",
            progress=False,
        )
    with pytest.raises(FileExistsError):
        run_survey(
            catalog_path,
            out,
            survey_config(prior_cache),
            resume=False,
            scheduler="synchronous",
            progress=False,
        )


def test_a_run_started_before_a_setting_existed_resumes(
    reference, catalog_path, prior_cache, tmp_path
):
    """A manifest without a pipeline setting added since (the run used its default) matches
    a configuration with that default, and not one that changes it."""
    out, _ = reference
    work = tmp_path / "run"
    shutil.copytree(out, work)
    manifest = json.loads((work / MANIFEST_NAME).read_text())
    for key in ("dust_prior", "bayes_all_below"):
        del manifest["configuration"]["survey"]["pipeline"][key]
    (work / MANIFEST_NAME).write_text(json.dumps(manifest))
    summary = run_survey(
        catalog_path, work, survey_config(prior_cache), scheduler="synchronous", progress=False
    )
    assert summary.ok and summary.n_skipped == len(PIXELS)
    other = survey_config(prior_cache, pipeline={"dust_prior": "profile"})
    with pytest.raises(ManifestMismatchError, match="pipeline.dust_prior"):
        run_survey(catalog_path, work, other, scheduler="synchronous", progress=False)
    # a run from before the prior's power was fitted used the prior as given: resuming it
    # with the new default would mix two behaviours, so it is refused, and allowed with 1
    for key in ("prior_temper", "prior_feh_shift"):
        del manifest["configuration"]["survey"]["pipeline"][key]
    (work / MANIFEST_NAME).write_text(json.dumps(manifest))
    fitted = survey_config(prior_cache, pipeline={"prior_temper": "auto"})
    with pytest.raises(ManifestMismatchError, match="pipeline.prior_feh_shift"):
        run_survey(catalog_path, work, fitted, scheduler="synchronous", progress=False)
    as_given = survey_config(prior_cache, pipeline={"prior_temper": 1.0, "prior_feh_shift": 0.0})
    summary = run_survey(catalog_path, work, as_given, scheduler="synchronous", progress=False)
    assert summary.ok and summary.n_skipped == len(PIXELS)


def test_changed_input_is_refused(reference, catalog_path, prior_cache, tmp_path):
    out, _ = reference
    copy = tmp_path / "stars.parquet"
    shutil.copy2(catalog_path, copy)
    work = tmp_path / "run"
    shutil.copytree(out, work)
    manifest = json.loads((work / MANIFEST_NAME).read_text())
    manifest["configuration"]["input"] = input_fingerprint(copy)
    (work / MANIFEST_NAME).write_text(json.dumps(manifest))
    config = survey_config(prior_cache)
    summary = run_survey(copy, work, config, scheduler="synchronous", progress=False)
    assert summary.n_skipped == len(PIXELS)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ManifestMismatchError, match="input.digest"):
        run_survey(copy, work, config, scheduler="synchronous", progress=False)


def test_partial_run_is_completed_identically(reference, catalog_path, prior_cache, tmp_path):
    out, _ = reference
    work = tmp_path / "run"
    shutil.copytree(out, work)
    # an interrupted run: one patch missing, one patch file damaged, a stale temporary file,
    # no HATS metadata yet
    output_path(work, ORDER, PIXELS[1]).unlink()
    damaged = output_path(work, ORDER, PIXELS[2])
    damaged.write_bytes(damaged.read_bytes()[:200])
    stale = damaged.with_name(".tmp-0123456789ab-" + damaged.name)
    stale.write_bytes(b"partial")
    for name in ("hats.properties", "properties", "partition_info.csv"):
        (work / name).unlink()
    manifest = json.loads((work / MANIFEST_NAME).read_text())
    manifest["status"] = {"complete": False}
    (work / MANIFEST_NAME).write_text(json.dumps(manifest))

    summary = run_survey(
        catalog_path, work, survey_config(prior_cache), scheduler="synchronous", progress=False
    )
    assert summary.ok
    assert (summary.n_skipped, summary.n_done) == (1, 2)
    assert sorted(p.pixel for p in summary.patches) == [PIXELS[1], PIXELS[2]]
    frames_equal(read_survey_output(work), read_survey_output(out))
    assert temp_files(work) == []
    assert (work / "hats.properties").is_file()


def test_hats_input_coarse_and_fine_partitions(catalog, workdir, tmp_path):
    import lsdb
    from hats.pixel_math.spatial_index import compute_spatial_index

    for hats_order in (ORDER - 1, ORDER + 1):
        path = workdir / f"hats_o{hats_order}"
        if not path.exists():
            lsdb.from_dataframe(
                catalog,
                lowest_order=hats_order,
                highest_order=hats_order,
                margin_threshold=None,
            ).write_catalog(path, as_collection=False, progress_bar=False)
        plan = plan_patches(path, survey_config(tmp_path), tmp_path)
        assert plan.source == "hats"  # read in place, nothing staged
        assert not (tmp_path / "_staging").exists()
        assert [t.pixel for t in plan.patches] == list(PIXELS)
        index = compute_spatial_index(catalog["ra"].to_numpy(), catalog["dec"].to_numpy())
        expected = pd.Series(np.asarray(index) >> (2 * (29 - ORDER))).value_counts().sort_index()
        assert [t.n_rows for t in plan.patches] == expected.tolist()
        if hats_order < ORDER:  # one coarse partition split into the three patches
            assert all(len(t.files) == 1 for t in plan.patches)
            assert len({t.files[0] for t in plan.patches}) == 1
        else:  # fine partitions grouped under their order-7 ancestor
            for t in plan.patches:
                assert all(f"Norder={ORDER + 1}" in f for f in t.files)
                pixels = {int(Path(f).stem.split("=")[1]) >> 2 for f in t.files}
                assert pixels == {t.pixel}


def test_hats_input_gives_the_same_catalog(catalog, workdir, reference, prior_cache):
    """A coarse HATS input, split into patches in place, reproduces the flat-input run."""
    import lsdb

    out, _ = reference
    path = workdir / f"hats_o{ORDER - 1}"
    if not path.exists():
        lsdb.from_dataframe(
            catalog, lowest_order=ORDER - 1, highest_order=ORDER - 1, margin_threshold=None
        ).write_catalog(path, as_collection=False, progress_bar=False)
    run = workdir / "from_hats"
    summary = run_survey(
        path, run, survey_config(prior_cache), scheduler="synchronous", progress=False
    )
    assert summary.ok
    frames_equal(read_survey_output(run), read_survey_output(out))


def test_flux_input_with_ebv_gives_the_same_catalog(catalog, workdir, reference, prior_cache):
    """Rubin-style nJy fluxes, an E(B-V) column and Rubin's position names reproduce the
    magnitude catalogue's run, with no column map (the names are looked up)."""
    out, _ = reference
    fluxes = catalog.drop(columns=[c for b in "ugrizy" for c in (f"{b}mag", f"{b}Err")] + ["Ar"])
    fluxes = fluxes.rename(columns={"ra": "coord_ra", "dec": "coord_dec"})
    for b in "ugrizy":
        flux = 10 ** (0.4 * (31.4 - catalog[f"{b}mag"]))
        fluxes[f"{b}_psfFlux"] = flux
        fluxes[f"{b}_psfFluxErr"] = catalog[f"{b}Err"] * flux / (2.5 / np.log(10))
    fluxes["ebv"] = catalog["Ar"] / SFD_EBV_TO_AR
    path = workdir / "fluxes.parquet"
    fluxes.to_parquet(path, index=False)
    run = workdir / "from_fluxes"
    summary = run_survey(
        path, run, survey_config(prior_cache), scheduler="synchronous", progress=False
    )
    assert summary.ok
    got, expected = read_survey_output(run), read_survey_output(out)
    assert len(got) == len(expected)
    np.testing.assert_array_equal(got["flags"], expected["flags"])
    for column in ("Mr_mean", "FeH_mean", "Ar_mean", "Mr_sigma", "dist_pc"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-5, atol=1e-6)


def test_staging_needs_positions_and_photometry(catalog, tmp_path):
    bad = catalog.head(50).copy()
    bad.loc[3, "dec"] = np.nan
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    from photodist.io import CatalogError

    with pytest.raises(CatalogError, match="without a valid position"):
        plan_patches(tmp_path / "bad.parquet", survey_config(tmp_path), tmp_path / "w1")
    # without z the colours i-z and z-y come from their colour columns; without those too,
    # the missing column is named
    catalog.head(50).drop(columns=["zmag"]).to_csv(tmp_path / "nz.csv", index=False)
    plan = plan_patches(tmp_path / "nz.csv", survey_config(tmp_path), tmp_path / "w2")
    assert {"iz", "zy"} <= set(plan.read_columns)
    no_z = catalog.head(50).drop(columns=["zmag", "iz", "zy"])
    no_z.to_csv(tmp_path / "nz2.csv", index=False)
    with pytest.raises(CatalogError, match="zmag"):
        plan_patches(tmp_path / "nz2.csv", survey_config(tmp_path), tmp_path / "w3")


def test_overwrite_never_deletes_the_input_or_a_running_survey(catalog, tmp_path):
    """Refused before any work (each of these lost data before): an output folder that holds
    the input, or is it; ``overwrite`` while another run holds the folder's lock. An input
    refused by its checks leaves no run behind, so the corrected input starts afresh."""
    config = survey_config(tmp_path / "cache")
    out = tmp_path / "run"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{}")  # a run folder, as overwrite requires
    inside = out / "input.parquet"
    catalog.head(50).to_parquet(inside, index=False)
    for source, target in ((inside, out), (inside, inside)):
        with pytest.raises(ValueError, match="overlap"):
            run_survey(source, target, config, overwrite=True, progress=False)
    assert inside.is_file()
    source = tmp_path / "stars.parquet"
    catalog.head(50).to_parquet(source, index=False)
    with _RunLock(out), pytest.raises(SurveyLockedError, match="another photodist survey"):
        run_survey(source, out, config, overwrite=True, progress=False)
    assert inside.is_file() and (out / MANIFEST_NAME).is_file()
    # a bad input leaves no manifest: the corrected catalogue is not refused as "changed"
    bad = catalog.head(50).copy()
    bad.loc[3, "dec"] = np.nan
    fresh = tmp_path / "fresh"
    bad.to_parquet(source, index=False)
    from photodist.io import CatalogError

    with pytest.raises(CatalogError, match="without a valid position"):
        run_survey(source, fresh, config, scheduler="synchronous", progress=False)
    assert not fresh.exists()  # made for the run and left empty: removed, lock file too
    # a user's own folder is refused and left as it was, without a lock file
    own = tmp_path / "notes"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    catalog.head(50).to_parquet(source, index=False)
    with pytest.raises(FileExistsError, match="not empty and holds no photodist run"):
        run_survey(source, own, config, scheduler="synchronous", progress=False)
    assert [p.name for p in own.iterdir()] == ["notes.txt"]


def test_flat_staging_conserves_rows(catalog, tmp_path):
    path = tmp_path / "stars.csv"
    catalog.to_csv(path, index=False)
    plan = plan_patches(path, survey_config(tmp_path, stage_batch_rows=1000), tmp_path)
    assert plan.source == "staged" and plan.n_rows == len(catalog)
    assert [t.pixel for t in plan.patches] == list(PIXELS)
    staged = pd.concat([pq.read_table(list(t.files)).to_pandas() for t in plan.patches])
    assert sorted(staged["source_id"]) == sorted(catalog["source_id"])
    assert all(len(t.files) == int(np.ceil(len(catalog) / 1000)) for t in plan.patches)
    # a finished staging is reused
    marker = tmp_path / "_staging" / "staging.json"
    mtime = marker.stat().st_mtime_ns
    again = plan_patches(path, survey_config(tmp_path, stage_batch_rows=1000), tmp_path)
    assert [t.files for t in again.patches] == [t.files for t in plan.patches]
    assert marker.stat().st_mtime_ns == mtime


def test_text_in_a_measurement_becomes_nan_in_any_batch(catalog, tmp_path):
    """A CSV whose later batch holds text in a magnitude and an error column: staged as
    float with NaN there (the pipeline flags those rows), every row kept."""
    frame = catalog.head(3000).astype({"umag": object, "gErr": object})
    frame.loc[[5, 2500], "umag"] = "abc"  # the first and the third batch
    frame.loc[2999, "gErr"] = "n/a"
    path = tmp_path / "text.csv"
    frame.to_csv(path, index=False)
    plan = plan_patches(path, survey_config(tmp_path, stage_batch_rows=1000), tmp_path)
    staged = pd.concat([pq.read_table(list(t.files)).to_pandas() for t in plan.patches])
    assert plan.n_rows == len(staged) == 3000
    staged = staged.set_index("source_id").loc[frame["source_id"]]
    assert staged["umag"].dtype == np.float64 and staged["gErr"].dtype == np.float64
    assert np.isnan(staged["umag"].to_numpy()[[5, 2500]]).all()
    assert np.isnan(staged["gErr"].to_numpy()[2999])
    assert np.isfinite(staged["umag"].to_numpy()[:5]).all()


def test_big_ids_with_nulls_in_a_later_batch_are_staged_exactly(catalog, tmp_path):
    """64-bit IDs above 2**53 with a null only in the second batch: staged as nullable int64,
    every ID exact (a float64 batch would round them or fail the first batch's schema)."""
    frame = catalog.head(2000).copy()
    ids = 1_237_663_783_666_974_001 + 2 * np.arange(len(frame), dtype=np.int64)
    frame["source_id"] = pd.array(ids, dtype="Int64")
    frame.loc[1500, "source_id"] = pd.NA
    path = tmp_path / "ids.csv"
    frame.to_csv(path, index=False)
    plan = plan_patches(path, survey_config(tmp_path, stage_batch_rows=1000), tmp_path)
    staged = pa.concat_tables([pq.read_table(list(t.files)) for t in plan.patches])
    assert staged.schema.field("source_id").type == pa.int64()
    got = staged.column("source_id").to_pylist()
    assert len(got) == 2000 and got.count(None) == 1
    assert sorted(i for i in got if i is not None) == sorted(np.delete(ids, 1500).tolist())


def write_trilegal(root: Path, order: int, pixels: list[int]) -> Path:
    """A TRILEGAL-format prior catalogue (96 x 36 float64 grids per r bin)."""
    feh = np.round(np.arange(-2.5, 1.0 + 1e-9, 0.1), 6)
    mr = np.round(np.arange(17.0, -2.0 - 1e-9, -0.2), 6)
    x_grid, y_grid = np.meshgrid(feh, mr)
    kde = np.exp(-0.5 * ((x_grid + 0.8) / 0.5) ** 2 - 0.5 * ((y_grid - 6.0) / 3.0) ** 2)
    rows = pd.DataFrame(
        {
            "rmag": np.arange(14.0, 27.01, 0.5),
            "kde": [kde.tobytes()] * 27,
            "xGrid": [x_grid.tobytes()] * 27,
            "yGrid": [y_grid.tobytes()] * 27,
        }
    )
    for pixel in pixels:
        path = root / "dataset" / f"Norder={order}" / "Dir=0" / f"Npix={pixel}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(path, index=False)
    return root


def test_trilegal_prior_assignment(catalog_path, tmp_path):
    from photodist.io import CatalogError

    coarse = write_trilegal(tmp_path / "coarse", ORDER - 1, [PARENT])
    plan = plan_patches(
        catalog_path,
        survey_config(tmp_path, prior="trilegal", trilegal_path=str(coarse), prior_cache=None),
        tmp_path / "w1",
    )
    assert all(len(t.prior_files) == 1 and "Npix=9759" in t.prior_files[0] for t in plan.patches)
    fine = write_trilegal(tmp_path / "fine", ORDER + 1, [4 * PIXELS[0], 4 * PIXELS[0] + 3])
    with pytest.warns(UserWarning, match="covers none of 2 of the catalogue's 3 patches"):
        plan = plan_patches(
            catalog_path,
            survey_config(tmp_path, prior="trilegal", trilegal_path=str(fine), prior_cache=None),
            tmp_path / "w2",
        )
    files = {t.pixel: t.prior_files for t in plan.patches}
    assert len(files[PIXELS[0]]) == 2  # the prior pixels inside the patch (averaged)
    assert files[PIXELS[1]] == () and files[PIXELS[2]] == ()
    # a prior that covers no patch at all: refused before any patch runs
    elsewhere = write_trilegal(tmp_path / "elsewhere", ORDER, [PIXELS[0] + 5000])
    with pytest.raises(CatalogError, match="covers none of 3 of the catalogue's 3 patches"):
        plan_patches(
            catalog_path,
            survey_config(tmp_path, prior="trilegal", trilegal_path=str(elsewhere)),
            tmp_path / "w3",
        )


def test_failed_patches_are_reported_and_the_others_finish(catalog_path, tmp_path, capsys):
    priors = write_trilegal(tmp_path / "trilegal", ORDER, [PIXELS[0]])
    settings = tmp_path / "pipeline.json"
    settings.write_text(json.dumps(PIPELINE))
    out = tmp_path / "run"
    args = [
        str(catalog_path),
        str(out),
        "--order",
        str(ORDER),
        "--scheduler",
        "synchronous",
        "--trilegal-prior",
        str(priors),
        "--pipeline-config",
        str(settings),
        "--no-progress",
    ]
    with pytest.warns(UserWarning, match="they will fail, the others run"):
        assert main(args) == 1
    err = capsys.readouterr().err
    for pixel in PIXELS[1:]:
        assert f"Norder={ORDER}/Npix={pixel}" in err
    assert f"Npix={PIXELS[0]}:" not in err
    assert output_path(out, ORDER, PIXELS[0]).is_file()
    assert not output_path(out, ORDER, PIXELS[1]).exists()
    assert not (out / "hats.properties").exists()  # incomplete: no HATS metadata
    assert json.loads((out / MANIFEST_NAME).read_text())["status"]["complete"] is False
    with pytest.warns(UserWarning, match="they will fail"):
        assert main(args) == 1  # the finished patch is skipped, the others fail again
    captured = capsys.readouterr()
    assert "0 patch(es) done, 1 already finished, 2 failed" in captured.out


def test_predict_rows_matches_run_patch(catalog):
    config = PipelineConfig(**PIPELINE)
    frame = catalog.head(2500).reset_index(drop=True)
    result, _, model = run_patch(frame, None, None, config)
    assert model is not None
    rest = np.flatnonzero(~result["labelled"].to_numpy())
    phot = photometry_from_frame(frame, config.band_set)
    floor = used_error_floor(result.attrs["photodist_pipeline"])
    estimator = BayesEstimator(posterior_grid(None, config), None, config.bayes_config(floor))
    predicted = predict_rows(model, estimator, phot.subset(rest), config)
    expected = result.iloc[rest].reset_index(drop=True)
    assert list(predicted.columns) == list(expected.columns)
    frames_equal(predicted, expected)
    # without a model every row gets the Bayesian estimate
    bayes = predict_rows(None, estimator, phot.subset(rest[:50]), config)
    assert (bayes["method"] == "bayes").all() and bayes["Mr_sigma_nn"].isna().all()


@pytest.mark.parametrize("dust_prior", ["flat", "profile"])
def test_large_patches_are_streamed(catalog_path, catalog, prior_cache, tmp_path, dust_prior):
    config = survey_config(
        prior_cache,
        max_patch_rows=800,
        pipeline={"n_train": 300, "min_train": 100, "dust_prior": dust_prior},
    )
    summary = run_survey(
        catalog_path, tmp_path / "run", config, scheduler="synchronous", progress=False
    )
    assert summary.ok
    assert all(p.mode == "streamed-hybrid" for p in summary.patches)
    result = read_survey_output(tmp_path / "run")
    assert len(result) == len(catalog)
    assert sorted(result["source_id"]) == sorted(catalog["source_id"])
    for pixel in PIXELS:
        part = pq.read_table(output_path(tmp_path / "run", ORDER, pixel)).to_pandas()
        assert np.all(np.diff(part["_healpix_29"].to_numpy()) >= 0)
        assert part["labelled"].sum() == 300  # the training subsample, drawn from the pool
        assert (part["method"] == "nn").sum() > len(part) // 2
    good = result["flags"] == 0
    assert np.isfinite(result.loc[good, "Mr_mean"]).all()
    # each patch's summary: mode, error floor and, with the profile, its fit (or why not)
    infos = read_patch_info(tmp_path / "run")
    assert sorted(infos) == sorted(PIXELS)
    powers = {p.pixel: p.prior_power for p in summary.patches}
    shifts = {p.pixel: p.prior_feh_shift for p in summary.patches}
    for pixel, info in infos.items():
        assert info["mode"] == "streamed-hybrid" and info["error_floor"]["floor"] > 0
        # the prior's power, fitted per patch, is recorded with the patch
        assert info["prior_temper"]["fitted"] and 0.0 <= powers[pixel] <= 1.0
        assert powers[pixel] == info["prior_temper"]["beta"]
        assert shifts[pixel] == info["prior_temper"]["feh_shift"]
        # the pool's A_r estimates against their bound, and its repeated rows, are recorded
        assert 0 <= info["n_ar_near_bound"] <= info["n_ar_estimates"] > 0
        assert info["n_duplicate_rows"] == 0
        if dust_prior == "flat":
            assert info["dust_profile"] is None
        else:
            assert "fitted" in info["dust_profile"]


# ----------------------------------------------------------------------------------------------
# A real Dask cluster: scheduler and two workers as separate processes on 127.0.0.1
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "cluster.log", "w")  # noqa: SIM115 - closed below
    procs: list[subprocess.Popen] = []
    common = {"stdout": log, "stderr": subprocess.STDOUT, "start_new_session": True}
    try:
        procs.append(
            subprocess.Popen(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                **common,
            )
        )
        for k in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"worker-{k}",
                        "--local-directory",
                        str(tmp_path / f"worker-{k}"),
                    ],
                    **common,
                )
            )
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        _stop(procs)
        log.close()


def test_dask_cluster_matches_single_process(
    dask_cluster, reference, catalog_path, prior_cache, tmp_path
):
    out, _ = reference
    run = tmp_path / "cluster"
    summary = run_survey(
        catalog_path, run, survey_config(prior_cache), scheduler=dask_cluster, progress=False
    )
    assert summary.ok and summary.n_done == len(PIXELS)
    assert len({p.worker for p in summary.patches}) == 2  # both worker processes took patches
    assert all(str(os.getpid()) not in p.worker for p in summary.patches)
    frames_equal(read_survey_output(run), read_survey_output(out))  # identical numbers
    # a patch refused on a worker (no prior covers it) is reported by its message, without a
    # worker traceback in the cluster's log
    priors = write_trilegal(tmp_path / "trilegal", ORDER, [PIXELS[0]])
    config = survey_config(prior_cache, prior="trilegal", trilegal_path=str(priors))
    with pytest.warns(UserWarning, match="they will fail"):
        partial = run_survey(
            catalog_path, tmp_path / "partial", config, scheduler=dask_cluster, progress=False
        )
    assert set(partial.failed) == {f"Norder={ORDER}/Npix={p}" for p in PIXELS[1:]}
    assert all(m.startswith("LookupError: no TRILEGAL") for m in partial.failed.values())
    assert "Compute Failed" not in (tmp_path / "cluster.log").read_text()


# ----------------------------------------------------------------------------------------------
# Kill -9 in the middle, rerun, same catalogue
# ----------------------------------------------------------------------------------------------


def test_sigkill_then_rerun_gives_the_same_catalog(reference, catalog_path, prior_cache, tmp_path):
    out, _ = reference
    settings = tmp_path / "pipeline.json"
    settings.write_text(json.dumps(PIPELINE))
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "photodist.survey",
        str(catalog_path),
        str(run),
        "--order",
        str(ORDER),
        "--scheduler",
        "synchronous",
        "--pipeline-config",
        str(settings),
        "--prior-min-stars",
        "2000",
        "--prior-cache",
        str(prior_cache),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    pattern = f"dataset/Norder={ORDER}/Dir=*/Npix=*.parquet"
    deadline = time.monotonic() + 180
    try:
        while proc.poll() is None and not list(run.glob(pattern)):
            assert time.monotonic() < deadline, "no patch finished in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    written = list(run.glob(pattern))
    assert 1 <= len(written) < len(PIXELS)
    # a patch is finished once its summary follows its partition (the kill may fall between)
    pixels = [int(p.stem.split("=")[1]) for p in written]
    finished = [p for p in pixels if patch_info_path(run, ORDER, p).is_file()]
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    assert manifest["status"]["complete"] is False

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished)} already finished" in rerun.stdout
    frames_equal(read_survey_output(run), read_survey_output(out))
    assert temp_files(run) == []
    assert not (run / "_staging").exists()
    assert json.loads((run / MANIFEST_NAME).read_text())["status"]["complete"] is True


def test_a_partition_without_its_summary_is_redone(reference, catalog_path, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    plan = plan_patches(catalog_path, survey_config(tmp_path), tmp_path / "work")
    task = plan.patches[0]
    assert _patch_done(task, out)
    patch_info_path(out, task.order, task.pixel).unlink()  # as if stopped between the two
    assert not _patch_done(task, out)
    assert not output_path(out, task.order, task.pixel).exists()


def test_local_cluster_workers_keep_glibc_malloc_defaults():
    """Dask's MALLOC_TRIM_THRESHOLD_ halves network-training speed; local workers drop it."""
    from dask.distributed import Client

    from photodist.survey import local_cluster

    with local_cluster(1) as cluster, Client(cluster) as client:
        environ = client.run(lambda: dict(os.environ))
    (worker_env,) = environ.values()
    assert "MALLOC_TRIM_THRESHOLD_" not in worker_env
    assert worker_env.get("OMP_NUM_THREADS") == "1"  # the other dask settings stay


def test_an_unfinished_run_is_noted_by_its_readers(tmp_path):
    """`maps` and `report` warn that an unfinished run covers only its written patches."""
    assert incomplete_run_note(tmp_path) is None  # no manifest: not a survey run
    part = tmp_path / "dataset" / "Norder=4" / "Dir=0" / "Npix=5.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"")
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"status": {"complete": False}}))
    assert "not finished (1 patch file(s)" in incomplete_run_note(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"status": {"complete": True}}))
    assert incomplete_run_note(tmp_path) is None


def test_named_kept_columns_come_with_the_id_columns(tmp_path):
    """`keep` adds to the id columns found, as `photodist survey --keep` does (the module's
    own command line dropped `source_id` when a column was named)."""
    from photodist.survey import _resolve_keep

    available = ["ra", "dec", "source_id", "tag", "rmag"]
    for keep, expected in (
        (None, ("ra", "dec", "source_id")),
        (("tag",), ("ra", "dec", "source_id", "tag")),
    ):
        config = survey_config(tmp_path, keep=keep)
        assert _resolve_keep(config, available, "input") == expected
