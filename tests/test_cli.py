import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from photodist.bands import ColumnMap, photometry_from_frame
from photodist.bayes import BayesConfig, BayesEstimator, Flags
from photodist.cli import cli
from photodist.dust_profile import fit_dust_profile
from photodist.locus import build_locus
from photodist.nn import PhotoDNetwork
from photodist.pipeline import PipelineConfig, posterior_grid, used_dust_profile, used_error_floor
from photodist.priors import PriorMap


def test_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("locus", "bayes", "train", "predict", "columns", "demo"):
        assert command in result.output


def test_help_texts_state_the_fit_sample_size():
    from photodist.cli import FIT_SAMPLE_ROWS

    text = " ".join(CliRunner().invoke(cli, ["bayes", "--help"]).output.split())
    assert text.count(f"first {FIT_SAMPLE_ROWS:,} rows") == 2  # --dust-prior, --prior-temper


def test_columns_command_lists_units_of_each_output():
    from photodist.bayes import OUTPUT_COLUMNS
    from photodist.pipeline import RESULT_COLUMNS

    for output_of, names in (("run", RESULT_COLUMNS), ("bayes", [*OUTPUT_COLUMNS, "flags"])):
        result = CliRunner().invoke(cli, ["columns", output_of])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert [line.split()[0] for line in lines[:-1]] == list(names)
        assert "2048 R_OUTSIDE_PRIOR" in lines[-1]
    listed = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[:-1]}
    assert listed["FeH_p16"] == "dex" and listed["dist_p84"] == "pc" and listed["P_giant"] == "-"


def test_locus_command(tmp_path):
    out = tmp_path / "locus.csv"
    result = CliRunner().invoke(
        cli, ["locus", "--out", str(out), "--feh-step", "0.5", "--mr-step", "1"]
    )
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(out).columns[:7]) == ["Mr", "FeH", "ug", "gr", "ri", "iz", "zy"]
    runner = CliRunner()
    # an existing table is kept without --overwrite; a folder, a FITS name and a figure
    # type matplotlib cannot write are usage errors before any work
    for args, message in (
        (["--out", str(out)], "--overwrite"),
        (["--out", str(tmp_path), "--overwrite"], "is a folder"),
        (["--out", str(tmp_path / "locus.fits")], "write the locus as"),
        (["--out", str(tmp_path / "l.txt"), "--figure", str(tmp_path / "f.txt")], ".png"),
    ):
        result = runner.invoke(cli, ["locus", *args, "--feh-step", "0.5", "--mr-step", "1"])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "l.txt").exists()
    result = runner.invoke(
        cli, ["locus", "--out", str(out), "--feh-step", "0.5", "--mr-step", "2", "--overwrite"]
    )
    assert result.exit_code == 0 and len(pd.read_csv(out)) == 7 * 10, result.output


def _catalog(tmp_path):
    frame = pd.DataFrame(
        {
            "ra": [1.0, 2.0, 3.0],
            "umag": [21.5, 99.0, 21.0],
            "gmag": [20.2, 20.1, 19.9],
            "rmag": [19.7, 19.6, 19.5],
            "imag": [19.55, 19.4, 19.3],
            "zmag": [19.5, 19.3, 19.2],
            **{f"{b}Err": [0.02, 0.02, 0.03] for b in "ugriz"},
        }
    )
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    return path


def test_bayes_command_keeps_every_row(tmp_path):
    src = _catalog(tmp_path)
    out = tmp_path / "out.parquet"
    args = [
        "bayes",
        str(src),
        str(out),
        "--bands",
        "sdss",
        "--feh-step",
        "0.25",
        "--mr-step",
        "0.5",
        "--flat-prior",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # three stars are too few for the error-model check: only the floor used is stated
    assert "Error model: the Bayesian stage used a colour-error floor of 0.0200 mag." in (
        result.output
    )
    res = pd.read_parquet(out)
    assert len(res) == 3 and list(res["ra"]) == [1.0, 2.0, 3.0]
    assert res.loc[1, "flags"] & 32  # sentinel u magnitude flagged, row kept
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "overwrite" in again.output


def test_bayes_command_keeps_big_ids_exact_across_batches(tmp_path):
    """FITS 64-bit IDs above 2**53 with a TNULL null in the second batch: every kept ID
    comes out exact (the batch with the null was once read as float64 and rounded)."""
    from astropy.io import fits

    frame = pd.read_csv(_catalog(tmp_path))
    frame = pd.concat([frame] * 2, ignore_index=True)
    ids = 1_237_663_783_666_974_001 + np.arange(6, dtype=np.int64)
    ids[4] = -1
    columns = [fits.Column(name="objid", format="K", null=-1, array=ids)]
    columns += [fits.Column(name=c, format="D", array=frame[c].to_numpy()) for c in frame]
    src = tmp_path / "ids.fits"
    fits.BinTableHDU.from_columns(columns).writeto(src)
    out = tmp_path / "out.parquet"
    args = ["bayes", str(src), str(out), "--bands", "sdss", "--flat-prior", "--keep", "objid"]
    result = CliRunner().invoke(cli, [*args, "--batch-size", "3", "--mr-step", "0.5"])
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    got = pq.read_table(out).column("objid").to_pylist()
    assert got == [None if i < 0 else int(i) for i in ids]


def test_keep_takes_comma_separated_names_and_reports_absent_ones(tmp_path):
    """``--keep objid,tag`` keeps both; a name the catalogue lacks is reported, not silently
    dropped (before, the comma-separated value matched no column and nothing was kept)."""
    frame = pd.read_csv(_catalog(tmp_path)).assign(objid=[7, 8, 9], tag=["a", "b", "c"])
    src = tmp_path / "tagged.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    args = ["bayes", str(src), str(out), "--bands", "sdss", "--flat-prior", "--mr-step", "0.5"]
    result = CliRunner().invoke(cli, [*args, "--keep", "objid,tag", "--keep", "objectId"])
    assert result.exit_code == 0, result.output
    assert "--keep columns not in the catalogue: objectId" in result.output
    got = pd.read_parquet(out)
    assert got["objid"].tolist() == [7, 8, 9] and got["tag"].tolist() == ["a", "b", "c"]


def test_bayes_command_reads_a_flux_catalogue_with_ebv(tmp_path):
    """Rubin-style fluxes in nJy and an E(B-V) column give the magnitude catalogue's result."""
    mags = pd.read_csv(_catalog(tmp_path))
    mags["Ar"] = [0.1, 0.2, 0.3]
    fluxes = mags[["ra"]].copy()
    for b in "ugriz":
        flux = 10 ** (0.4 * (31.4 - mags[f"{b}mag"]))
        fluxes[f"{b}_psfFlux"] = np.where(mags[f"{b}mag"] > 90, -1.0, flux)  # 99: no detection
        fluxes[f"{b}_psfFluxErr"] = mags[f"{b}Err"] * flux / (2.5 / np.log(10))
    fluxes["ebv"] = mags["Ar"] / 2.751
    mags.to_csv(tmp_path / "mags.csv", index=False)
    fluxes.to_csv(tmp_path / "fluxes.csv", index=False)
    grid = ["--bands", "sdss", "--feh-step", "0.25", "--mr-step", "0.5", "--flat-prior"]
    runner = CliRunner()
    result = runner.invoke(
        cli, ["bayes", str(tmp_path / "mags.csv"), str(tmp_path / "m.csv"), *grid]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        ["bayes", str(tmp_path / "fluxes.csv"), str(tmp_path / "f.csv"), *grid]
        + ["--flux-unit", "nJy", "--ebv-column", "ebv"],
    )
    assert result.exit_code == 0, result.output
    from_mags, from_fluxes = pd.read_csv(tmp_path / "m.csv"), pd.read_csv(tmp_path / "f.csv")
    assert len(from_fluxes) == 3 and (from_fluxes["flags"] == from_mags["flags"]).all()
    for column in ("Mr_mean", "Ar_mean", "FeH_p50", "DM_mean"):
        np.testing.assert_allclose(from_fluxes[column], from_mags[column], rtol=1e-4)
    # the report reads the flux catalogue's r with the same options
    report = runner.invoke(
        cli,
        ["report", str(tmp_path / "f.csv"), "--out", str(tmp_path / "rep")]
        + ["--photometry", str(tmp_path / "fluxes.csv"), "--flux-unit", "nJy"]
        + ["--ebv-column", "ebv"],
    )
    assert report.exit_code == 0, report.output
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["by_magnitude"]
    assert sum(row["n_stars"] for row in rows) == 3
    # without --bands, --flux-unit and --ebv-column: Rubin's flux columns and no magnitudes
    # are read in nJy, the ugriz set is chosen and "ebv" is found
    plain = runner.invoke(
        cli, ["bayes", str(tmp_path / "fluxes.csv"), str(tmp_path / "x.csv"), *grid[2:]]
    )
    assert plain.exit_code == 0, plain.output
    assert "band set: sdss" in plain.output and "flux_unit=nJy" in plain.output
    assert "ebv=ebv" in plain.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "x.csv"), from_fluxes)


def test_bayes_command_device_choice(tmp_path):
    """--device cpu runs the numba estimator; an unknown or absent device is a clear error."""
    import torch

    src = _catalog(tmp_path)
    base = ["bayes", str(src), "--bands", "sdss", "--feh-step", "0.25", "--mr-step", "0.5"]
    base.append("--flat-prior")
    ok = CliRunner().invoke(
        cli, [*base[:2], str(tmp_path / "cpu.parquet"), *base[2:], "--device", "cpu"]
    )
    assert ok.exit_code == 0, ok.output
    assert "PyTorch" not in ok.output
    bad = CliRunner().invoke(
        cli, [*base[:2], str(tmp_path / "x.parquet"), *base[2:], "--device", "tpu"]
    )
    assert bad.exit_code != 0 and "--device" in bad.output
    if not torch.cuda.is_available():
        gpu = CliRunner().invoke(
            cli, [*base[:2], str(tmp_path / "g.parquet"), *base[2:], "--device", "cuda"]
        )
        assert gpu.exit_code != 0 and "no CUDA device" in gpu.output
        assert not (tmp_path / "g.parquet").exists()


def test_device_of_remote_workers_is_checked_by_name_only():
    import click
    import torch

    from photodist.cli import _checked_device

    # a login node without a GPU may send the networks to a scheduler's GPU workers
    assert _checked_device("cuda", remote=True) == "cuda"
    assert _checked_device("cuda:1", remote=True) == "cuda:1"
    for bad in ("tpu", "gpu", "mps"):
        with pytest.raises(click.BadParameter, match="device"):
            _checked_device(bad, remote=True)
    if not torch.cuda.is_available():
        with pytest.raises(click.BadParameter, match="no CUDA device"):
            _checked_device("cuda")


def test_bayes_command_lower_extinction_bound(tmp_path):
    src = _catalog(tmp_path)
    frame = pd.read_csv(src).assign(Ar=[0.3, 0.2, 0.4])
    frame.to_csv(src, index=False)
    out = tmp_path / "out.csv"
    args = ["bayes", str(src), str(out), "--bands", "sdss", "--flat-prior", "--feh-step", "0.25"]
    result = CliRunner().invoke(cli, [*args, "--mr-step", "0.5", "--a-min-fraction", "0.8"])
    assert result.exit_code == 0, result.output
    res = pd.read_csv(out)
    ok = res["Ar_p16"].notna()
    assert ok.sum() >= 2
    assert (res["Ar_p16"][ok] >= 0.8 * frame["Ar"][ok] - 1e-4).all()
    bad = CliRunner().invoke(cli, [*args, "--a-min-fraction", "1.5", "--overwrite"])
    assert bad.exit_code != 0 and "a-min-fraction" in bad.output


def test_bayes_command_independent_colors(tmp_path):
    """By default chi2 uses the covariance of adjacent colours; --independent-colors drops it
    (same rows, different posteriors for the well-measured stars)."""
    src = _catalog(tmp_path)
    frame = pd.read_csv(src)
    for b in "ugriz":
        frame[f"{b}Err"] = 0.005
    frame.to_csv(src, index=False)
    args = ["--bands", "sdss", "--flat-prior", "--feh-step", "0.1", "--mr-step", "0.1"]
    outs = {}
    for flag in ([], ["--independent-colors"]):
        out = tmp_path / f"out{len(flag)}.csv"
        result = CliRunner().invoke(cli, ["bayes", str(src), str(out), *args, *flag])
        assert result.exit_code == 0, result.output
        outs[len(flag)] = pd.read_csv(out)
    assert len(outs[0]) == len(outs[1]) == 3
    assert not np.allclose(outs[0]["chi2min"], outs[1]["chi2min"], rtol=1e-3)


def test_bayes_command_writes_posteriors_of_chosen_rows(tmp_path):
    src = _catalog(tmp_path)
    out = tmp_path / "out.parquet"
    args = ["bayes", str(src), str(out), "--bands", "sdss", "--flat-prior", "--feh-step", "0.25"]
    # refused before any work: rows beyond the catalogue, a file where the folder would go
    beyond = CliRunner().invoke(cli, [*args, "--posterior-rows", "2,0,7"])
    assert beyond.exit_code != 0 and "[7] are beyond the catalogue's 3 rows" in beyond.output
    (tmp_path / "a_file").write_text("")
    for bad_args in (
        ["--posterior-rows", "a,b"],
        ["--posterior-rows", "99999999999999999999"],
        ["--posterior-rows", "1", "--posterior-dir", str(tmp_path / "a_file")],
    ):
        bad = CliRunner().invoke(cli, [*args, *bad_args])
        assert bad.exit_code == 2 and bad_args[-2] in bad.output, bad.output
    assert not out.exists()
    result = CliRunner().invoke(cli, [*args, "--mr-step", "0.5", "--posterior-rows", "2,0"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out_posteriors"
    assert sorted(p.name for p in folder.iterdir()) == [
        "row_0.npz",
        "row_0.png",
        "row_2.npz",
        "row_2.png",
    ]
    post = np.load(folder / "row_2.npz")
    assert post["joint"].sum() == pytest.approx(1.0) and int(post["row"]) == 2


def test_bayes_command_missing_column_is_clear(tmp_path):
    src = _catalog(tmp_path)
    frame = pd.read_csv(src).drop(columns=["zErr"])
    frame.to_csv(src, index=False)
    result = CliRunner().invoke(
        cli, ["bayes", str(src), str(tmp_path / "o.parquet"), "--bands", "sdss"]
    )
    assert result.exit_code != 0
    assert "zErr" in result.output


def test_bayes_command_finds_columns_under_other_names(tmp_path):
    """SDSS CasJobs names give the default names' result, and the command says what it took."""
    src = _catalog(tmp_path)
    frame = pd.read_csv(src)
    names = {f"{b}mag": f"psfMag_{b}" for b in "ugriz"}
    names.update({f"{b}Err": f"psfMagErr_{b}" for b in "ugriz"}, ra="RA")
    renamed = tmp_path / "casjobs.csv"
    frame.rename(columns=names).assign(objID=[7, 8, 9]).to_csv(renamed, index=False)
    coarse = ["--feh-step", "0.25", "--mr-step", "0.5", "--flat-prior"]
    outputs = []
    for path, bands in ((src, ["--bands", "sdss"]), (renamed, [])):
        out = tmp_path / f"{path.stem}.parquet"
        result = CliRunner().invoke(cli, ["bayes", str(path), str(out), *coarse, *bands])
        assert result.exit_code == 0, result.output
        outputs.append(pd.read_parquet(out))
    assert "band set: sdss" in result.output  # no y band: chosen without --bands
    assert "columns found under other names: umag=psfMag_u" in result.output
    assert "ra=RA" in result.output
    assert list(outputs[1]["RA"]) == list(outputs[0]["ra"])  # --keep ra follows the name
    assert list(outputs[1]["objID"]) == [7, 8, 9]  # and the catalogue's identifiers are kept
    estimates = [c for c in outputs[0].columns if c != "ra"]
    pd.testing.assert_frame_equal(outputs[1][estimates], outputs[0][estimates])


def test_a_wide_footprint_is_warned_about(tmp_path, monkeypatch):
    """One Galaxy-model prior for stars spread over tens of degrees: the run says so."""
    from photodist import priors

    def uniform_prior(ra, dec, locus=None, **kwargs):  # the cone, without building the model
        n_feh, n_mr = len(locus.feh), len(locus.mr)
        density = np.full((1, n_feh, n_mr), 1.0 / (n_feh * n_mr))
        prior = priors.PriorMap(density, locus.feh, locus.mr, [20.0], [1], r_half_width=np.inf)
        prior.metadata["footprint_cone"] = list(priors.footprint_cone(ra, dec))
        return prior

    monkeypatch.setattr(priors, "galaxy_prior_for_stars", uniform_prior)
    src = _catalog(tmp_path)
    frame = pd.read_csv(src).assign(dec=[0.0, 5.0, 10.0])
    coarse = ["--bands", "sdss", "--feh-step", "0.25", "--mr-step", "0.5"]
    for spread, warned in ((1.0, False), (10.0, True)):
        frame.assign(ra=frame["ra"] * spread, dec=frame["dec"] * spread / 10).to_csv(
            src, index=False
        )
        out = tmp_path / f"wide{spread}.parquet"
        result = CliRunner().invoke(cli, ["bayes", str(src), str(out), *coarse])
        assert result.exit_code == 0, result.output
        assert ("photodist survey" in result.output) is warned, result.output


def test_bayes_command_with_trilegal_prior(tmp_path, s82_stars_path, s82_priors_path):
    out = tmp_path / "s82.parquet"
    result = CliRunner().invoke(
        cli,
        [
            "bayes",
            str(s82_stars_path),
            str(out),
            "--bands",
            "sdss",
            "--feh-step",
            "0.1",
            "--mr-step",
            "0.2",
            "--trilegal-prior",
            str(s82_priors_path),
            "--trilegal-pixel",
            "0",
            "--error-floor",
            "auto",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "error floor 0.0" in result.output and "fitted on 1000 stars" in result.output
    res = pd.read_parquet(out)
    assert len(res) == 3981
    assert not (res["flags"] & 128).any()  # a prior was used: no NO_PRIOR flag


def _assert_bayes_usage_error(tmp_path, src, options: list[str], message: str) -> None:
    """``photodist bayes SRC OUT OPTIONS`` stops with a usage error (exit code 2) that says
    ``message``."""
    result = CliRunner().invoke(cli, ["bayes", str(src), str(tmp_path / "o.parquet"), *options])
    assert result.exit_code == 2 and message in result.output, result.output


def test_prior_temper_option(tmp_path, s82_stars_path, s82_priors_path):
    """A given power of the prior widens the posteriors and is recorded; a bad one is refused."""
    src = _catalog(tmp_path)
    for bad in ("1.5", "strong"):
        _assert_bayes_usage_error(tmp_path, src, ["--prior-temper", bad], "'auto' or within [0, 1]")
    _assert_bayes_usage_error(tmp_path, src, ["--prior-feh-shift", "2"], "within [-1, 1]")
    args = ["bayes", str(s82_stars_path), "--bands", "sdss", "--feh-step", "0.1"]
    args += ["--mr-step", "0.2", "--trilegal-prior", str(s82_priors_path)]
    args += ["--trilegal-pixel", "0"]
    spreads = {}
    for power in ("1", "0.5"):
        out = tmp_path / f"power_{power}.parquet"
        options = ["--prior-temper", power, "--prior-feh-shift", "0"]
        result = CliRunner().invoke(cli, [*args[:2], str(out), *args[2:], *options])
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / f"power_{power}.parquet.run.json").read_text())
        assert summary["prior_temper"]["beta"] == float(power)
        assert not summary["prior_temper"]["fitted"]
        spreads[power] = pd.read_parquet(out)["FeH_std"].median()
    assert "raised to the power 0.5" in result.output
    assert spreads["0.5"] > 1.1 * spreads["1"]


def test_batch_size_must_be_positive(tmp_path):
    src = _catalog(tmp_path)
    for command in (["bayes", str(src), str(tmp_path / "o.parquet")], ["check", str(src)]):
        result = CliRunner().invoke(cli, [*command, "--batch-size", "0"])
        assert result.exit_code == 2 and "--batch-size" in result.output
        assert "Traceback" not in result.output


def test_error_floor_option_is_auto_or_a_magnitude(tmp_path):
    src = _catalog(tmp_path)
    for bad in ("nope", "-0.01"):
        message = "neither 'auto' nor a finite magnitude"
        _assert_bayes_usage_error(tmp_path, src, ["--error-floor", bad], message)
    # three stars are too few to fit a floor: the fixed fallback is used and said
    result = CliRunner().invoke(
        cli,
        ["bayes", str(src), str(tmp_path / "o.parquet"), "--bands", "sdss", "--flat-prior"]
        + ["--feh-step", "0.25", "--mr-step", "0.5", "--error-floor", "auto"],
    )
    assert result.exit_code == 0, result.output
    assert "error floor 0.0200 mag" in result.output and "at least 100 needed" in result.output


def test_bayes_summary_and_an_unreadable_one(tmp_path):
    src = _catalog(tmp_path)
    labels = tmp_path / "labels.parquet"
    coarse = ["--bands", "sdss", "--flat-prior", "--feh-step", "0.25", "--mr-step", "0.5"]
    result = CliRunner().invoke(cli, ["bayes", str(src), str(labels), *coarse])
    assert result.exit_code == 0, result.output
    summary_path = tmp_path / "labels.parquet.run.json"
    summary = json.loads(summary_path.read_text())
    assert summary["n_stars"] == 3 and summary["dust_profile"] is None
    assert summary["prior_r_range"] is None  # a flat prior has no r bins
    assert summary["error_floor"]["floor"] == 0.02 and summary["bands"] == "sdss"
    # the summary exists: a second run needs --overwrite
    again = CliRunner().invoke(cli, ["bayes", str(src), str(labels), *coarse])
    assert again.exit_code != 0 and "overwrite" in again.output
    summary_path.write_text(json.dumps({"dust_profile": {"fitted": True, "knots_x": [1.0]}}))
    model = tmp_path / "m.safetensors"
    result = CliRunner().invoke(
        cli, ["train", str(src), str(labels), str(model), "--bands", "sdss"]
    )
    assert result.exit_code != 0 and "unreadable summary" in result.output
    assert "Traceback" not in result.output and not model.exists()


def test_simulate_run_evaluate_chain(tmp_path):
    sim = tmp_path / "sim.parquet"
    out = tmp_path / "run.parquet"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["simulate", str(sim), "--cone", "60", "60", "0.4", "--r-max", "24", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    n = len(pd.read_parquet(sim))
    bad = runner.invoke(cli, ["run", str(sim), str(out), "--nn-device", "gpu0"])
    assert bad.exit_code != 0 and "--nn-device" in bad.output and not out.exists()
    args = ["run", str(sim), str(out), "--n-train", "1000", "--epochs", "5", "--seed", "1"]
    model = tmp_path / "model.safetensors"
    result = runner.invoke(cli, [*args, "--nn-device", "cpu", "--save-model", str(model)])
    assert result.exit_code == 0, result.output
    res = pd.read_parquet(out)
    assert len(res) == n and set(res["method"]) <= {"bayes", "nn"}
    summary = json.loads((tmp_path / "run.parquet.run.json").read_text())
    assert summary["config"]["error_floor"] == 0.02
    assert summary["config"]["nn_device"] == "cpu"
    floor = summary["error_floor"]
    assert floor["floor"] == 0.02 and not floor["fitted"] and floor["reason"] == "fixed"
    # the error-model check still ran: a simulated catalogue has no extra colour scatter
    assert floor["n_stars"] >= 100 and 0.0 <= floor["scatter"] < 0.005
    assert (tmp_path / "run.parquet.prior.npz").exists()
    # the prior's shift and power, fitted on the patch's stars: simulated with the same
    # Galaxy model, so the prior barely moves
    temper = summary["prior_temper"]
    assert temper["fitted"] and temper["n_stars"] >= 1000 and temper["beta"] >= 0.8
    assert abs(temper["feh_shift"]) <= 0.1 and "Prior: the ([Fe/H], M_r) prior" in result.output
    # the A_r prior from the patch's fitted dust profile
    profiled = tmp_path / "profiled.parquet"
    result = runner.invoke(
        cli,
        ["run", str(sim), str(profiled), "--n-train", "1000", "--epochs", "2"]
        + ["--nn-device", "cpu", "--dust-prior", "profile", "--nn-dust-input"]
        + ["--save-model", str(tmp_path / "dust.safetensors")],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "profiled.parquet.run.json").read_text())
    assert summary["config"]["dust_prior"] == "profile" and summary["dust_profile"]["fitted"]
    assert summary["config"]["nn_dust_input"]
    assert len(pd.read_parquet(profiled)) == n
    # a model that takes the map's A_r reads the dust column, and refuses a catalogue without
    dust_model = ["predict", str(tmp_path / "dust.safetensors")]
    result = runner.invoke(cli, [*dust_model, str(sim), str(tmp_path / "dp.parquet")])
    assert result.exit_code == 0, result.output
    no_map = tmp_path / "no_map.parquet"
    pd.read_parquet(sim).drop(columns=["Ar"]).to_parquet(no_map)
    result = runner.invoke(cli, [*dust_model, str(no_map), str(tmp_path / "dq.parquet")])
    assert result.exit_code != 0 and "no dust column" in result.output
    # evaluate's Bayesian reference is the run's Bayesian stage, dust profile included
    saved = tmp_path / "profiled_bayes.parquet"
    result = runner.invoke(
        cli,
        ["evaluate", str(profiled), str(sim), "--bayes-sample", "40"]
        + ["--out", str(tmp_path / "tp.csv"), "--save-bayes", str(saved)],
    )
    assert result.exit_code == 0, result.output
    reference = pd.read_parquet(saved)
    rows = np.flatnonzero(np.isfinite(reference["Ar_mean"].to_numpy()))
    assert rows.size > 0
    config = PipelineConfig.from_dict(summary["config"])
    expected = BayesEstimator(
        posterior_grid(build_locus(), config),
        PriorMap.load(summary["prior"]),
        config.bayes_config(used_error_floor(summary)),
        dust_profile=used_dust_profile(summary),
    ).predict(photometry_from_frame(pd.read_parquet(sim).iloc[rows], "lsst"))
    np.testing.assert_allclose(reference["Ar_mean"].to_numpy()[rows], expected["Ar_mean"])
    # photodist bayes fits the profile on its first batch, as it fits the error floor
    bayes_out = tmp_path / "bayes_profile.parquet"
    result = runner.invoke(
        cli,
        ["bayes", str(sim), str(bayes_out), "--flat-prior", "--error-floor", "0.02"]
        + ["--dust-prior", "profile", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "dust profile fitted on" in result.output
    catalogue = photometry_from_frame(pd.read_parquet(sim), "lsst")
    grid = build_locus().resample(0.05, 0.1)
    bayes_config = BayesConfig(error_floor=0.02)
    fitted, _ = fit_dust_profile(catalogue, grid, None, bayes_config, seed=0)
    expected = BayesEstimator(grid, None, bayes_config, dust_profile=fitted).predict(catalogue)
    np.testing.assert_allclose(
        pd.read_parquet(bayes_out)["Ar_mean"], expected["Ar_mean"], rtol=1e-6, atol=1e-7
    )
    # its summary records the profile, and networks trained on these labels take the map
    bayes_summary = json.loads((tmp_path / "bayes_profile.parquet.run.json").read_text())
    assert bayes_summary["n_stars"] == n and bayes_summary["dust_profile"]["fitted"]
    assert used_dust_profile(bayes_summary).sigma == pytest.approx(fitted.sigma)
    model3 = tmp_path / "model3.safetensors"
    result = runner.invoke(
        cli,
        ["train", str(sim), str(bayes_out), str(model3), "--epochs", "2", "--nn-device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "relative to the map" in result.output
    assert PhotoDNetwork.load(model3).dust_input
    # so are the report's example posteriors, and the report draws the profile
    report_dir = tmp_path / "profiled_report"
    result = runner.invoke(
        cli, ["report", str(profiled), "--out", str(report_dir), "--truth", str(sim)]
    )
    assert result.exit_code == 0, result.output
    assert (report_dir / "figures" / "dust_profile.png").exists()
    profiled_result = pd.read_parquet(profiled)
    examples = json.loads((report_dir / "report.json").read_text())["posteriors"]
    bayes_examples = [e for e in examples if profiled_result["method"].iloc[e["row"]] == "bayes"]
    assert bayes_examples
    for example in bayes_examples:
        assert example["Mr_mean"] == pytest.approx(
            profiled_result["Mr_mean"].iloc[example["row"]], abs=2e-3
        )
    # the saved networks predict the catalogue again, batch by batch, as the run did
    pred_out = tmp_path / "pred.parquet"
    predict = ["predict", str(model), str(sim), str(pred_out), "--nn-device", "cpu"]
    result = runner.invoke(cli, [*predict, "--batch-size", "1500"])
    assert result.exit_code == 0, result.output
    pred = pd.read_parquet(pred_out)
    assert len(pred) == n and (pred["method"] == "nn").all()
    nn_rows = (res["method"] == "nn").to_numpy()
    for key in ("Mr_mean", "FeH_sigma", "dist_pc"):
        np.testing.assert_allclose(pred.loc[nn_rows, key], res.loc[nn_rows, key], rtol=1e-6)
    assert runner.invoke(cli, predict).exit_code != 0  # the output exists: --overwrite needed
    size = sim.stat().st_size
    onto_input = runner.invoke(cli, ["predict", str(model), str(sim), str(sim), "--overwrite"])
    assert onto_input.exit_code != 0 and "is the input" in onto_input.output
    assert sim.stat().st_size == size
    not_a_model = runner.invoke(cli, ["predict", str(sim), str(sim), str(tmp_path / "x.csv")])
    assert not_a_model.exit_code != 0 and "Traceback" not in not_a_model.output
    assert "training domain (their" not in result.output  # the patch's own stars: no warning
    # stars of a dustier sightline than the model's patch: out of its domain, and a warning
    dusty = tmp_path / "dusty.parquet"
    pd.read_parquet(sim).assign(Ar=lambda f: 4.0 * f["Ar"] + 0.3).to_parquet(dusty)
    result = runner.invoke(cli, [*predict[:2], str(dusty), str(tmp_path / "dusty_out.parquet")])
    assert result.exit_code == 0, result.output
    assert "outside the networks' training domain" in result.output
    # the networks stage alone: Bayesian labels of a subsample, training, prediction
    sub = tmp_path / "sub.parquet"
    pd.read_parquet(sim).iloc[::3].to_parquet(sub)
    labels = tmp_path / "labels.parquet"
    run_prior = ["--prior", str(tmp_path / "run.parquet.prior.npz")]  # the run's prior map
    bayes = runner.invoke(cli, ["bayes", str(sub), str(labels), *run_prior])
    assert bayes.exit_code == 0, bayes.output
    labels_summary = json.loads(labels.with_name("labels.parquet.run.json").read_text())
    assert labels_summary["prior_r_range"] == [13.5, 27.5]  # bins 14-27, each +-0.5
    model2 = tmp_path / "model2.safetensors"
    train = ["train", str(sub), str(labels), str(model2), "--epochs", "3", "--nn-device", "cpu"]
    result = runner.invoke(cli, train)
    assert result.exit_code == 0, result.output
    assert "networks trained on" in result.output and model2.exists()
    assert runner.invoke(cli, train).exit_code != 0  # the model exists: --overwrite needed
    # the model never replaces an input (labels, their summary, the catalogue), nor a folder
    for target in (labels, labels.with_name("labels.parquet.run.json"), sub, tmp_path):
        before = target.stat().st_mtime_ns
        onto = runner.invoke(cli, [*train[:3], str(target), "--epochs", "1", "--overwrite"])
        assert onto.exit_code != 0 and "MODEL" in onto.output, onto.output
        assert "networks trained" not in onto.output and target.stat().st_mtime_ns == before
    # the labels' estimator settings and grid go with the model, for predict's best-fit check
    custom = tmp_path / "labels_custom.parquet"
    custom_settings = ["--error-floor", "0.05", "--a-max-scale", "2.0", "--independent-colors"]
    result = runner.invoke(
        cli, ["bayes", str(sub), str(custom), *run_prior, *custom_settings, "--mr-step", "0.2"]
    )
    assert result.exit_code == 0, result.output
    model_custom = tmp_path / "model_custom.safetensors"
    result = runner.invoke(cli, [*train[:2], str(custom), str(model_custom), *train[4:]])
    assert result.exit_code == 0, result.output
    check = PhotoDNetwork.load(model_custom).training_metadata_["user"]["fit_check"]
    assert check["posterior_grid"] == pytest.approx([0.05, 0.2])
    assert check["bayes_config"]["error_floor"] == 0.05
    assert check["bayes_config"]["dust_scale"] == 2.0
    assert check["bayes_config"]["color_covariance"] is False
    onto_model = runner.invoke(cli, ["predict", str(model2), str(sim), str(model2), "--overwrite"])
    assert onto_model.exit_code != 0 and "is the input" in onto_model.output
    result = runner.invoke(cli, ["predict", str(model2), str(sim), str(tmp_path / "p2.parquet")])
    assert result.exit_code == 0, result.output
    p2 = pd.read_parquet(tmp_path / "p2.parquet")
    assert len(p2) == n
    # the labels' prior range went with the model: stars beyond it are flagged
    assert PhotoDNetwork.load(model2).training_metadata_["user"]["prior_r_range"] == [13.5, 27.5]
    r = pd.read_parquet(sim)["rmag"].to_numpy()
    beyond = np.isfinite(r) & ((r < 13.5) | (r > 27.5))
    np.testing.assert_array_equal((p2["flags"] & Flags.R_OUTSIDE_PRIOR) > 0, beyond)
    wrong = runner.invoke(cli, ["train", str(sim), str(labels), str(tmp_path / "m3.safetensors")])
    assert wrong.exit_code != 0 and "label rows" in wrong.output
    sdss = tmp_path / "sdss.csv"  # the model's band set needs y
    pd.read_parquet(sim).drop(columns=["ymag", "yErr"]).head(50).to_csv(sdss, index=False)
    no_y = runner.invoke(cli, ["predict", str(model), str(sdss), str(tmp_path / "y.csv")])
    assert no_y.exit_code != 0 and "trained on the lsst bands" in no_y.output
    assert "yErr" in no_y.output
    # labels of the lsst bands, networks of the sdss bands: refused (the labels' summary says)
    mixed = [*train[:3], str(tmp_path / "m4.safetensors"), "--bands", "sdss", "--epochs", "1"]
    mixed = runner.invoke(cli, mixed)
    assert mixed.exit_code != 0 and "use --bands lsst" in mixed.output
    # the architecture search checks the same (it searched on the mismatched labels)
    tune = ["tune", train[2], "--out", str(tmp_path / "tune"), "--bands", "sdss"]
    mixed = runner.invoke(cli, tune)
    assert mixed.exit_code != 0 and "use --bands lsst" in mixed.output
    assert not (tmp_path / "tune").exists()
    again = runner.invoke(cli, ["run", str(sim), str(out)])
    assert again.exit_code != 0 and "overwrite" in again.output
    result = runner.invoke(
        cli,
        [
            "evaluate",
            str(out),
            str(sim),
            "--bayes-sample",
            "200",
            "--out",
            str(tmp_path / "t1.csv"),
            "--save-bayes",
            str(tmp_path / "bayes.parquet"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bayes.parquet").exists()
    result = runner.invoke(
        cli,
        [
            "report",
            str(out),
            "--out",
            str(tmp_path / "report"),
            "--truth",
            str(sim),
            "--bayes-reference",
            str(tmp_path / "bayes.parquet"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "index.html").exists()
    # example posteriors, recomputed with the run's prior file and settings: for rows the
    # run estimated by the Bayesian method they reproduce its means
    numbers = json.loads((tmp_path / "report" / "report.json").read_text())
    examples = numbers["posteriors"]
    assert examples and examples[0]["label"].startswith("typical")
    assert "Example posteriors" in (tmp_path / "report" / "index.html").read_text()
    for example in examples:
        assert (tmp_path / "report" / "figures" / f"posterior_row_{example['row']}.png").exists()
        if res["method"].iloc[example["row"]] == "bayes":
            assert example["Mr_mean"] == pytest.approx(
                res["Mr_mean"].iloc[example["row"]], abs=2e-3
            )
            assert example["FeH_mean"] == pytest.approx(
                res["FeH_mean"].iloc[example["row"]], abs=2e-3
            )
    table = pd.read_csv(tmp_path / "t1.csv", index_col=0)
    assert set(table.index) == {"Mr", "Ar", "FeH"}
    assert table.loc["Mr", "bayes_truth_sigma_g"] > 0


def test_evaluate_reads_photod_truth_with_the_runs_column_mapping(tmp_path, monkeypatch):
    """A photod-style simulated catalogue (truth in Mr/FeH/Ar, renamed magnitude columns)."""
    sim = tmp_path / "sim.parquet"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["simulate", str(sim), "--cone", "60", "60", "0.4", "--r-max", "24", "--seed", "4"]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(sim)
    frame = frame.rename(columns={"Mr_true": "Mr", "FeH_true": "FeH", "umag": "u_psf"})
    frame["Ar"] = frame.pop("Ar_true")
    photod = tmp_path / "photod.parquet"
    frame.to_parquet(photod)
    out = tmp_path / "run.parquet"
    args = ["run", str(photod), str(out), "--column", "umag=u_psf", "--n-train", "1000"]
    result = runner.invoke(cli, [*args, "--epochs", "3"])
    assert result.exit_code == 0, result.output
    t1 = tmp_path / "t1.csv"
    result = runner.invoke(
        cli, ["evaluate", str(out), str(photod), "--bayes-sample", "100", "--out", str(t1)]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(t1, index_col=0)
    assert (table["n_stars"] > 0).all() and np.isfinite(table["bayes_truth_sigma_g"]).all()
    # a run started in the output's folder records its prior relative to that folder;
    # evaluate run from elsewhere finds the map beside the output
    summary_file = out.with_name(out.name + ".run.json")
    summary = json.loads(summary_file.read_text())
    summary_file.write_text(json.dumps({**summary, "prior": out.name + ".prior.npz"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(cli, ["evaluate", str(out), str(photod), "--bayes-sample", "50"])
    assert result.exit_code == 0, result.output
    # without the run's summary (a `predict` output) there is no prior for NN vs Bayes: said,
    # not replaced by a flat prior; --save-bayes would write nothing, so it is refused
    bare = tmp_path / "bare.parquet"
    bare.write_bytes(out.read_bytes())
    result = runner.invoke(cli, ["evaluate", str(bare), str(photod), "--bayes-sample", "50"])
    assert result.exit_code == 0 and "no run summary" in result.output, result.output
    assert "nn_bayes_sigma_g" in result.output
    result = runner.invoke(
        cli, ["evaluate", str(bare), str(photod), "--save-bayes", str(tmp_path / "sb.parquet")]
    )
    assert result.exit_code == 2 and "nothing to save" in result.output
    result = runner.invoke(cli, ["evaluate", str(out), str(photod), "--bands", "sdss"])
    assert result.exit_code == 2 and "the run used the lsst bands" in result.output
    # Bayes on every star: no network rows, the Bayes vs truth columns still filled
    bayes_only = tmp_path / "bayes_only.parquet"
    result = runner.invoke(
        cli, [*args[:2], str(bayes_only), *args[3:], "--bayes-all-below", "1000000"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli, ["evaluate", str(bayes_only), str(photod), "--out", str(t1), "--overwrite"]
    )
    assert result.exit_code == 0 and "no network rows" in result.output, result.output
    table = pd.read_csv(t1, index_col=0)
    assert (table["n_stars"] == 0).all() and np.isfinite(table["bayes_truth_sigma_g"]).all()
    assert (table["n_bayes_stars"] > 0).all()  # the rows the Bayes columns describe
    assert np.isfinite(table["bayes_calibration"]).all()
    # no truth at all: a clear message, not a traceback
    frame.drop(columns=["Mr", "FeH"]).to_parquet(photod)
    result = runner.invoke(cli, ["evaluate", str(out), str(photod), "--bayes-sample", "0"])
    assert result.exit_code != 0 and "--truth-column" in result.output
    assert "Traceback" not in result.output


def test_bayes_command_places_a_galaxy_prior_from_positions(tmp_path):
    frame = pd.read_csv(_catalog(tmp_path))
    frame["dec"] = [0.5, 0.6, 0.7]
    src = tmp_path / "pos.parquet"
    frame.to_parquet(src)
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli,
        ["bayes", str(src), str(out), "--bands", "sdss", "--feh-step", "0.25", "--mr-step", "0.5"],
    )
    assert result.exit_code == 0, result.output
    res = pd.read_parquet(out)
    assert len(res) == 3 and not (res["flags"] & 128).any()  # a prior was used
    no_positions = tmp_path / "nopos.csv"
    frame.drop(columns=["ra", "dec"]).to_csv(no_positions, index=False)
    result = CliRunner().invoke(
        cli, ["bayes", str(no_positions), str(tmp_path / "o2.parquet"), "--bands", "sdss"]
    )
    assert result.exit_code != 0 and "--flat-prior" in result.output
    # galactic coordinates only (the photod convention): converted, and the same prior placed
    from astropy.coordinates import SkyCoord

    sky = SkyCoord(ra=frame["ra"].to_numpy(), dec=frame["dec"].to_numpy(), unit="deg").galactic
    galactic = tmp_path / "gal.csv"
    frame.drop(columns=["ra", "dec"]).assign(glon=sky.l.deg, glat=sky.b.deg).to_csv(
        galactic, index=False
    )
    out_gal = tmp_path / "gal.parquet"
    args = ["--bands", "sdss", "--feh-step", "0.25", "--mr-step", "0.5"]
    result = CliRunner().invoke(cli, ["bayes", str(galactic), str(out_gal), *args])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_parquet(out_gal), res.drop(columns=["ra", "dec"]))


def test_survey_resume_refusal_and_maps(tmp_path):
    runner = CliRunner()
    sim = tmp_path / "sim.parquet"
    result = runner.invoke(
        cli, ["simulate", str(sim), "--cone", "60", "60", "0.6", "--r-max", "20", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    args = [
        "survey",
        str(sim),
        str(tmp_path / "run"),
        "--order",
        "5",
        "--scheduler",
        "synchronous",
        "--epochs",
        "3",
    ]
    keep = ["--keep", "Mr_true,component", "--keep", "FeH_true"]
    absent = [*args[:2], str(tmp_path / "other"), *args[3:], "--keep", "nope"]
    result = runner.invoke(cli, absent)
    assert result.exit_code != 0 and "nope" in result.output
    result = runner.invoke(cli, [*args, *keep])
    assert result.exit_code == 0, result.output
    assert "prior as given in" in result.output  # how the patches' priors were fitted
    from photodist.survey import read_survey_output

    kept = read_survey_output(tmp_path / "run")
    assert {"source_id", "Mr_true", "component", "FeH_true"} <= set(kept.columns)
    again = runner.invoke(cli, [*args, *keep])
    assert again.exit_code == 0 and "already done" in again.output
    assert "prior as given" not in again.output  # nothing computed in this call
    changed = runner.invoke(cli, [*args[:-1], "4", *keep])
    assert changed.exit_code != 0 and "different configuration" in changed.output
    maps = ["maps", str(tmp_path / "run"), "--order", "4", "--out", str(tmp_path / "maps")]
    result = runner.invoke(cli, maps)
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "maps").glob("*.png"))
    again = runner.invoke(cli, maps)
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert runner.invoke(cli, [*maps, "--overwrite"]).exit_code == 0
    # the patch maps: one row per patch the survey ran, with what its pipeline fitted
    from photodist.skymaps import load_maps
    from photodist.survey import read_patch_info

    patches = load_maps(tmp_path / "maps" / "patches_order5.fits")
    infos = read_patch_info(tmp_path / "run")
    assert sorted(patches["pixel"]) == sorted(infos) and patches.attrs["healpix_order"] == 5
    for row in patches.itertuples():
        info = infos[row.pixel]
        assert row.n_rows == info["n_rows"]
        assert row.prior_power == info["prior_temper"]["beta"]
        assert row.prior_feh_shift == info["prior_temper"]["feh_shift"]
        assert row.error_floor == info["error_floor"]["floor"]
    assert "patch_prior_power" in result.output


def test_tune_smoke_and_run_with_its_spec(tmp_path):
    runner = CliRunner()
    out = tmp_path / "tune"
    result = runner.invoke(
        cli,
        [
            "tune",
            "--out",
            str(out),
            "--simulate-cone",
            "60",
            "60",
            "0.5",
            "--stars",
            "600",
            "--trials",
            "4",
            "--max-epochs",
            "3",
            "--timeout",
            "60",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "best_spec.json").exists()
    sim = tmp_path / "sim.parquet"
    runner.invoke(cli, ["simulate", str(sim), "--cone", "60", "60", "0.3", "--r-max", "22"])
    result = runner.invoke(
        cli,
        [
            "run",
            str(sim),
            str(tmp_path / "run.parquet"),
            "--spec",
            str(out / "best_spec.json"),
            "--n-train",
            "1000",
            "--epochs",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output


def test_training_option_defaults_match_the_pipeline():
    from photodist.cli import run_command, survey_command
    from photodist.pipeline import PipelineConfig

    defaults = PipelineConfig()
    for command in (run_command, survey_command):
        params = {p.name: p.default for p in command.params}
        assert params["epochs"] == defaults.nn_max_epochs
        assert params.get("error_floor", defaults.error_floor) == defaults.error_floor
        assert params["learning_rate"] == defaults.nn_learning_rate


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--feh-step", "0"], "'--feh-step': 0.0 is not in the range x>0.0"),
        (["--mr-step", "100"], "grid step 100.0 leaves fewer than 2 points"),
        (["--seed", "-1"], "'--seed': -1 is not in the range x>=0"),
        (["--error-floor", "inf"], "neither 'auto' nor a finite magnitude"),
        (["--a-max", "0"], "'--a-max': 0.0 is not in the range x>0.0"),
        (["--a-max", "nan"], "'--a-max': nan is not a finite number"),
        (["--a-max-scale", "inf"], "'--a-max-scale': inf is not a finite number"),
        (["--a-min-fraction", "nan"], "'--a-min-fraction': nan is not a finite number"),
    ],
)
def test_bad_bayes_options_are_usage_errors(tmp_path, options, message):
    """Each bad value is refused before any work, naming the option (no traceback)."""
    src = _catalog(tmp_path)
    result = CliRunner().invoke(cli, ["bayes", str(src), str(tmp_path / "o.parquet"), *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["locus", "--out", "{tmp}/l.csv", "--mr-step", "-1"], "'--mr-step'"),
        (["survey", "{src}", "{tmp}/run", "--order", "30"], "'--order': 30 is not in the range"),
        (["run", "{src}", "{tmp}/r.parquet", "--n-train", "0"], "'--n-train': 0 is not in"),
        (["bayes", "{src}", "{src}", "--overwrite"], "is the input"),
        (["run", "{src}", "{src}", "--overwrite", "--flat-prior"], "is the input"),
        (["maps", "{tmp}", "--order", "4", "--out", "{src}"], "is a file"),
        (["bayes", "{src}", "{tmp}/o.parquet", "--prior", "{src}"], "not a photodist prior map"),
        (
            ["bayes", "{src}", "{tmp}/o.parquet", "--flat-prior", "--trilegal-pixel", "3"],
            "give both",
        ),
    ],
)
def test_bad_arguments_of_other_commands_are_clear_errors(tmp_path, args, message):
    src = _catalog(tmp_path)
    args = [a.format(tmp=tmp_path, src=src) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert isinstance(result.exception, SystemExit)
    assert src.stat().st_size > 0 and pd.read_csv(src).shape[0] == 3  # the input untouched


def test_trilegal_pixel_errors_name_the_option(tmp_path, s82_priors_path):
    src = _catalog(tmp_path)
    base = ["bayes", str(src), str(tmp_path / "o.parquet"), "--bands", "sdss"]
    base += ["--trilegal-prior", str(s82_priors_path)]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 1 and "--trilegal-pixel" in result.output, result.output
    result = CliRunner().invoke(cli, [*base, "--trilegal-pixel", "7"])
    assert result.exit_code == 1 and "pixel 7 not in" in result.output, result.output


def test_a_footprint_too_wide_for_one_prior_is_refused(tmp_path):
    src = _catalog(tmp_path)
    pd.read_csv(src).assign(ra=[0.0, 30.0, 60.0], dec=0.0).to_csv(src, index=False)
    out = tmp_path / "o.parquet"
    result = CliRunner().invoke(cli, ["bayes", str(src), str(out), "--bands", "sdss"])
    assert result.exit_code == 1 and "photodist survey" in result.output, result.output
    assert "--flat-prior" in result.output and not out.exists()


def test_evaluate_reads_a_bayes_output(tmp_path):
    """`photodist evaluate` on a `photodist bayes` output: Bayes vs truth, with its std."""
    sim = tmp_path / "sim.parquet"
    runner = CliRunner()
    args = ["simulate", str(sim), "--cone", "60", "60", "0.3", "--r-max", "19.5", "--seed", "2"]
    assert runner.invoke(cli, args).exit_code == 0
    out = tmp_path / "b.parquet"
    coarse = ["--feh-step", "0.1", "--mr-step", "0.2"]
    result = runner.invoke(cli, ["bayes", str(sim), str(out), *coarse])
    assert result.exit_code == 0, result.output
    # the fits (error model, prior's shift and power) use the same rows whatever the batches
    small = tmp_path / "b7.parquet"
    result = runner.invoke(cli, ["bayes", str(sim), str(small), *coarse, "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    summaries = [json.loads(p.with_name(p.name + ".run.json").read_text()) for p in (out, small)]
    for key in ("error_floor", "prior_temper"):
        assert summaries[0][key] == summaries[1][key], key
    assert summaries[0]["prior_temper"]["n_stars"] > 7
    pd.testing.assert_frame_equal(pd.read_parquet(small), pd.read_parquet(out))
    table = tmp_path / "new" / "t.csv"  # a folder that does not exist yet
    result = runner.invoke(cli, ["evaluate", str(out), str(sim), "--out", str(table)])
    assert result.exit_code == 0, result.output
    assert "no network rows" in result.output
    stats = pd.read_csv(table).set_index("parameter")
    assert stats.loc["Mr", "bayes_truth_sigma_g"] > 0 and stats.loc["FeH", "bayes_coverage"] > 0
    # existing files are kept without --overwrite, and the inputs always (before: replaced)
    before = sim.read_bytes()
    for target in (table, sim, out):
        again = runner.invoke(cli, ["evaluate", str(out), str(sim), "--out", str(target)])
        assert again.exit_code != 0 and str(target.name) in again.output
    assert sim.read_bytes() == before
    again = runner.invoke(cli, ["evaluate", str(out), str(sim), "--save-bayes", str(sim)])
    assert again.exit_code != 0 and sim.read_bytes() == before
    again = runner.invoke(cli, ["evaluate", str(out), str(sim), "--out", str(table), "--overwrite"])
    assert again.exit_code == 0, again.output
    # rows are matched by id: a shuffled truth catalogue gives the same table
    shuffled = tmp_path / "shuffled.parquet"
    pd.read_parquet(sim).sample(frac=1.0, random_state=3).to_parquet(shuffled)
    table2 = tmp_path / "t2.csv"
    again = runner.invoke(cli, ["evaluate", str(out), str(shuffled), "--out", str(table2)])
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(pd.read_csv(table2), pd.read_csv(table))


def test_sigterm_unwinds_like_an_error_so_partial_outputs_are_removed(tmp_path):
    """A killed run (SIGTERM from a batch system) raises SystemExit inside the work, so the
    atomic writers remove their temporary files (they stayed behind before)."""
    import os
    import signal

    from photodist import io
    from photodist.cli import _exit_cleanly_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        _exit_cleanly_on_sigterm()
        target = tmp_path / "out.parquet"
        with pytest.raises(SystemExit) as stopped:
            with io.AtomicParquetWriter(target) as writer:
                writer.write(pd.DataFrame({"x": [1.0, 2.0]}))
                os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.value.code == 128 + signal.SIGTERM
        assert list(tmp_path.iterdir()) == []
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_report_column_options_keep_the_runs_other_column_names(tmp_path):
    """`report --dust-column X` on a run made with renamed magnitude columns keeps those
    names (it restarted from the defaults, and the report lost its u-g photometry)."""
    from photodist.cli import _run_columns_with

    output = tmp_path / "run.parquet"
    recorded = ColumnMap.from_mapping({"umag": "u_psf", "uerr": "u_psf_err", "dust": "A_old"})
    summary = {"columns": recorded.to_mapping()}
    output.with_name(output.name + ".run.json").write_text(json.dumps(summary))
    columns = _run_columns_with(output, [("gmag", "g_psf")], "A_sfd", None, None)
    assert columns.mags["u"] == "u_psf" and columns.errors["u"] == "u_psf_err"
    assert columns.mags["g"] == "g_psf" and columns.dust == "A_sfd"
    # no summary: the defaults, with what was given
    bare = _run_columns_with(tmp_path / "other.parquet", [], None, "nJy", None)
    assert bare.flux_unit == "nJy" and bare.mags == ColumnMap().mags


def test_toy_model_and_training_size_check_their_options_and_outputs(tmp_path):
    """Bad values are usage errors before any work, results in --out are kept without
    --overwrite, and the success message names the files written."""
    runner = CliRunner()
    toy = ["toy-model", "--out", str(tmp_path / "toy"), "--n-stars", "2000"]
    for bad in (["--ug-error", "-0.1"], ["--max-error", "0"], ["--ug-error", "nan"]):
        result = runner.invoke(cli, [*toy, *bad])
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "toy").exists()
    result = runner.invoke(cli, toy)
    assert result.exit_code == 0, result.output
    assert "toy_bias.csv" in result.output and "DataFrame" not in result.output
    assert len(result.output.splitlines()) == 6  # three figures, three tables
    again = runner.invoke(cli, [*toy, "--seed", "1"])
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert runner.invoke(cli, [*toy, "--seed", "1", "--overwrite"]).exit_code == 0
    size = ["training-size", "--out", str(tmp_path / "ts"), "--cone", "180", "-50", "0.3"]
    for bad, message in (
        (["--tolerance", "-0.1"], "--tolerance"),
        (["--cone", "180", "-50", "0.3"], "the same cone is given twice"),
        (["--cone", "180", "100", "0.3"], "latitude"),
    ):
        result = runner.invoke(cli, [*size, *bad])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "ts").exists()


def test_run_with_a_flat_prior_and_networks_says_bayes_may_serve_better(tmp_path):
    """With a flat prior every row is flagged NO_PRIOR (network rows learnt from labels
    without one), a note points to `photodist bayes`, and an earlier run's prior map beside
    the output is removed (it is not this run's)."""
    runner = CliRunner()
    sim = tmp_path / "sim.parquet"
    args = ["simulate", str(sim), "--cone", "60", "60", "0.5", "--r-max", "23", "--seed", "2"]
    assert runner.invoke(cli, args).exit_code == 0
    out = tmp_path / "out.parquet"
    run = ["run", str(sim), str(out), "--n-train", "1000", "--epochs", "2"]
    result = runner.invoke(cli, run)  # the Galaxy-model prior: no note
    assert result.exit_code == 0 and "note: with a flat prior" not in result.output
    prior_file = out.with_name(out.name + ".prior.npz")
    assert prior_file.exists()
    result = runner.invoke(cli, [*run, "--flat-prior", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "note: with a flat prior" in result.output and "photodist bayes" in result.output
    assert not prior_file.exists()
    flags = pd.read_parquet(out)["flags"].to_numpy()
    assert np.all(flags & Flags.NO_PRIOR)
    # a model file already there is kept without --overwrite, refused before any work
    model = tmp_path / "model.safetensors"
    model.write_text("precious")
    result = runner.invoke(
        cli, [*run[:2], str(tmp_path / "o2.parquet"), "--save-model", str(model)]
    )
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert model.read_text() == "precious" and not (tmp_path / "o2.parquet").exists()
    # a kept column named like an output column: refused by bayes (it crashed or wrote two
    # columns) and survey (every patch failed after the work)
    frame = pd.read_parquet(sim).assign(flags=0)
    flagged = tmp_path / "flagged.parquet"
    frame.to_parquet(flagged)
    for command in (
        ["bayes", str(flagged), str(tmp_path / "b.csv"), "--keep", "source_id,flags"],
        ["survey", str(flagged), str(tmp_path / "sv"), "--keep", "flags"]
        + ["--scheduler", "synchronous", "--order", "6"],
    ):
        result = runner.invoke(cli, command)
        assert result.exit_code != 0 and "names of output columns" in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "b.csv").exists()


def test_version_is_the_code_s_own_and_the_changelog_s_latest():
    import re
    from pathlib import Path

    import photodist

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and photodist.__version__ in result.output
    changelog = Path(__file__).parents[1] / "CHANGELOG.md"
    latest = re.search(r"^## (\S+)", changelog.read_text(), re.MULTILINE)
    assert latest is not None and latest.group(1) == photodist.__version__


def test_the_prior_is_placed_from_a_bounded_sample_of_positions(tmp_path, monkeypatch):
    """`bayes` places the Galaxy-model prior from at most MAX_PRIOR_POSITIONS rows'
    positions (every k-th row, streamed), not from every row of the catalogue."""
    import photodist.cli as cli_module

    frame = pd.DataFrame({"ra": np.linspace(10.0, 11.0, 95), "dec": 1.0, "Ar": 0.1, "rmag": 20.0})
    path = tmp_path / "stars.parquet"
    frame.to_parquet(path)
    monkeypatch.setattr(cli_module, "MAX_PRIOR_POSITIONS", 10)
    positions = cli_module._positions_reader(path, ColumnMap())()
    assert positions.attrs["sample_step"] == 10 and len(positions) == 10
    np.testing.assert_array_equal(positions["ra"], frame["ra"].to_numpy()[::10])
    monkeypatch.setattr(cli_module, "MAX_PRIOR_POSITIONS", 500_000)
    assert len(cli_module._positions_reader(path, ColumnMap())()) == 95


def test_default_kept_ids_are_found_in_any_case(tmp_path):
    """An SDSS-style ``OBJID`` (or ``SOURCE_ID``) column is carried to the output by the
    default --keep list, whatever the case of its name (it was dropped, silently)."""
    path = _catalog(tmp_path)
    frame = pd.read_csv(path)
    frame["OBJID"] = [2**62 + 1, 2**62 + 2, 2**62 + 3]
    frame.to_csv(path, index=False)
    out = tmp_path / "o.parquet"
    result = CliRunner().invoke(cli, ["bayes", str(path), str(out), "--flat-prior"])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["OBJID"].tolist() == frame["OBJID"].tolist()


def test_bayes_warns_when_extinction_piles_against_the_prior_bound(tmp_path):
    """Stars reddened by 1.5 mag with A_max = 0.5 mag: the posteriors pile against the bound,
    the run says so (and records it), and a bound above their extinction is quiet."""
    from photodist.bands import get_band_set
    from photodist.locus import build_locus

    locus = build_locus(feh_step=0.25, mr_step=0.5)
    colors = locus.interpolate(np.array([4.5]), np.array([-0.5]))[0][:4]
    colors = colors + 1.5 * get_band_set("sdss").reddening_vector()
    r = 19.0 + 0.1 * np.arange(5)
    frame = pd.DataFrame({"rmag": r, "gmag": r + colors[1], "imag": r - colors[2]})
    frame["umag"] = frame["gmag"] + colors[0]
    frame["zmag"] = frame["imag"] - colors[3]
    for band in "ugriz":
        frame[f"{band}Err"] = 0.02
    src = tmp_path / "red.csv"
    frame.to_csv(src, index=False)
    grid = ["--bands", "sdss", "--feh-step", "0.25", "--mr-step", "0.5", "--flat-prior"]
    low = CliRunner().invoke(
        cli, ["bayes", str(src), str(tmp_path / "a.csv"), *grid, "--a-max", "0.5"]
    )
    assert low.exit_code == 0, low.output
    assert "warning: 5 of 5 stars (100 %) have A_r estimates within 10 %" in low.output
    summary = json.loads((tmp_path / "a.csv.run.json").read_text())
    assert summary["n_ar_near_bound"] == 5 and summary["n_ar_estimates"] == 5
    assert (pd.read_csv(tmp_path / "a.csv")["flags"] & 4096).all()  # AR_NEAR_MAX
    high = CliRunner().invoke(cli, ["bayes", str(src), str(tmp_path / "b.csv"), *grid])
    assert high.exit_code == 0 and "upper bound" not in high.output
    # run (and survey) take the same bound, and warn alike
    run = ["run", str(src), str(tmp_path / "c.csv"), "--bands", "sdss", "--flat-prior"]
    low = CliRunner().invoke(cli, [*run, "--a-max", "0.5"])
    assert low.exit_code == 0, low.output
    assert "warning: 5 of 5 stars (100 %) have A_r estimates within 10 %" in low.output
    assert json.loads((tmp_path / "c.csv.run.json").read_text())["config"]["default_a_max"] == 0.5
