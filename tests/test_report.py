"""Tests of the diagnostic report (photodist.report) on synthetic runs with known errors."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from photodist.bands import ColumnMap
from photodist.dust_profile import DustProfile
from photodist.locus import turnoff_absmag
from photodist.report import (
    COMPARISONS,
    PARAMETERS,
    _flux_photometry,
    _grouped_quantiles,
    comparison_table,
    error_correlations,
    error_model_note,
    flag_fractions,
    load_run,
    prepare_report_data,
    prior_power_note,
    report_from_run,
    sigma_ratio_summary,
    write_report,
)

CHROMIUM = Path("/usr/bin/chromium")
N_STARS = 3000
N_BAYES = 300


def synthetic_run(
    n: int = N_STARS, n_bayes: int = N_BAYES, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """A run with known errors: Bayes = truth + noise, NN = Bayes + smaller noise.

    Returns the pipeline-style result (``n_bayes`` random rows estimated by the Bayesian method),
    the truth, Bayesian estimates of every row and the photometry, all aligned by row.
    """
    rng = np.random.default_rng(seed)
    poor = rng.random(n) < 0.3
    truth = {
        "Mr": rng.uniform(-0.5, 12.0, n),
        "Ar": rng.uniform(0.0, 0.4, n),
        "FeH": np.where(poor, rng.normal(-1.5, 0.3, n), rng.normal(-0.5, 0.2, n)),
    }
    rmag = rng.uniform(16.0, 24.5, n)
    ug_true = 0.84 + 0.34 * 10 ** (0.45 * truth["FeH"]) + 0.05 * np.clip(truth["Mr"] - 5, 0, None)
    gmag = rmag + 0.2 + 0.1 * np.clip(truth["Mr"] - 4, 0, None)
    uerr = np.minimum(0.01 + 0.2 * 10 ** (0.4 * (gmag + ug_true - 25.0)), 1.5)
    gerr = 0.005 + 0.1 * 10 ** (0.4 * (gmag - 26.0))
    umag = gmag + ug_true + uerr * rng.standard_normal(n)
    ug_err = np.hypot(uerr, gerr)
    phot = pd.DataFrame(
        {"umag": umag, "gmag": gmag, "rmag": rmag, "uErr": uerr, "gErr": gerr, "rErr": gerr}
    )
    s_b = {"Mr": 0.2 + 1.5 * ug_err, "Ar": 0.03 + 0.2 * ug_err, "FeH": 0.08 + 2.0 * ug_err}
    bayes = {p: truth[p] + s_b[p] * rng.standard_normal(n) for p in PARAMETERS}
    s_nn = {p: 0.3 * s_b[p] for p in PARAMETERS}
    nn = {p: bayes[p] + s_nn[p] * rng.standard_normal(n) for p in PARAMETERS}
    is_b = np.zeros(n, dtype=bool)
    is_b[rng.choice(n, n_bayes, replace=False)] = True
    columns: dict[str, object] = {"source_id": np.arange(n) + 1000}
    for p in PARAMETERS:
        columns[f"{p}_mean"] = np.where(is_b, bayes[p], nn[p])
        columns[f"{p}_sigma"] = np.where(is_b, s_b[p], np.hypot(s_nn[p], s_b[p]))
        columns[f"{p}_sigma_nn"] = np.where(is_b, np.nan, s_nn[p])
        columns[f"{p}_sigma_bayes"] = s_b[p] * (1 + 0.05 * rng.standard_normal(n))
    columns["flags"] = (rng.random(n) < 0.1) * 2 + (rng.random(n) < 0.02) * 512
    columns["method"] = pd.Categorical(np.where(is_b, "bayes", "nn"), categories=["bayes", "nn"])
    result = pd.DataFrame(columns)
    result.attrs["photodist_pipeline"] = {
        "mode": "hybrid",
        "timings": {"prepare": 0.5, "bayes_label": 30.0, "train": 60.0, "predict": 5.0},
        "config": {"band_set": "lsst", "n_train": n_bayes, "seed": seed},
        "error_floor": {
            "floor": 0.02,
            "fitted": False,
            "n_stars": 812,
            "scatter": 0.0101,
            "grid": 0.007,
            "reason": "fixed",
        },
    }
    reference = pd.DataFrame(
        {**{f"{p}_mean": bayes[p] for p in PARAMETERS}, **{f"{p}_std": s_b[p] for p in PARAMETERS}}
    )
    truth_frame = pd.DataFrame(
        {"source_id": result["source_id"], **{f"{p}_true": truth[p] for p in PARAMETERS}}
    )
    return {"result": result, "truth": truth_frame, "bayes": reference, "phot": phot}


def _links(index: Path) -> tuple[set[str], set[str]]:
    page = index.read_text(encoding="utf-8")
    sources = {html.unescape(s) for s in re.findall(r'<img src="([^"]+)"', page)}
    hrefs = {html.unescape(s) for s in re.findall(r'href="([^"#][^"]*)"', page)}
    return sources, hrefs


@pytest.fixture(scope="module")
def run() -> dict[str, pd.DataFrame]:
    return synthetic_run()


@pytest.fixture(scope="module")
def full_report(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_full")
    return write_report(
        run["result"], out, truth=run["truth"], bayes_reference=run["bayes"], photometry=run["phot"]
    )


def test_every_figure_written_is_referenced_and_exists(full_report):
    out = full_report.parent
    sources, hrefs = _links(full_report)
    written = {f"figures/{p.name}" for p in (out / "figures").glob("*.png")}
    # 1:1 per parameter; maps and residuals per parameter and comparison; normalised residuals
    # per parameter; sigma ratios; the by-magnitude diagnostics
    assert len(written) == 3 + 2 * 3 * len(COMPARISONS) + 3 + 1 + 1
    assert "figures/diagnostics.png" in written and "data/by_magnitude.csv" in hrefs
    assert sources == written
    for src in sources:
        assert (out / src).is_file() and (out / src).stat().st_size > 1000
    for href in hrefs:
        assert (out / href).is_file(), href
    data_files = {f"data/{p.name}" for p in (out / "data").glob("*.csv")}
    assert data_files and data_files <= hrefs
    numbers = json.loads((out / "report.json").read_text())
    assert set(numbers["figures"]) == written
    assert numbers["comparisons"] == ["bayes_truth", "nn_bayes", "nn_truth"]
    assert numbers["timings"]["train"] == 60.0
    assert numbers["config"]["n_train"] == N_BAYES


def _direct(est: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[int, float, float]:
    diff = (est - ref)[mask]
    diff = diff[np.isfinite(diff)]
    q25, q50, q75 = np.percentile(diff, [25, 50, 75])
    return diff.size, q50, 0.7413 * (q75 - q25)


def test_table1_equals_direct_computation(run, full_report):
    table = pd.read_csv(full_report.parent / "table1.csv")
    result, truth, bayes = run["result"], run["truth"], run["bayes"]
    is_nn = (result["method"].astype(str) == "nn").to_numpy()
    r = run["phot"]["rmag"].to_numpy()
    true = {p: truth[f"{p}_true"].to_numpy() for p in PARAMETERS}
    giant = true["Mr"] < turnoff_absmag(true["FeH"]) - 0.5
    cases = [
        ("all", "nn_truth", "FeH", is_nn, result, true),
        ("all", "bayes_truth", "Mr", np.ones(len(result), bool), bayes, true),
        ("[Fe/H] < -1", "nn_bayes", "Mr", is_nn & (true["FeH"] < -1), result, None),
        ("[Fe/H] ≥ -1", "nn_truth", "Ar", is_nn & (true["FeH"] >= -1), result, true),
        ("22 ≤ r < 23", "nn_truth", "FeH", is_nn & (r >= 22) & (r < 23), result, true),
        ("giants", "bayes_truth", "FeH", giant, bayes, true),
    ]
    for subsample, key, p, mask, estimate, reference in cases:
        est = estimate[f"{p}_mean"].to_numpy()
        ref = bayes[f"{p}_mean"].to_numpy() if reference is None else reference[p]
        n, median, sigma_g = _direct(est, ref, mask)
        row = table[
            (table["subsample"] == subsample)
            & (table["comparison"] == key)
            & (table["parameter"] == p)
        ]
        assert len(row) == 1, (subsample, key, p)
        assert row["n_stars"].iloc[0] == n
        assert row["median"].iloc[0] == pytest.approx(median, rel=1e-5, abs=1e-9)
        assert row["sigma_g"].iloc[0] == pytest.approx(sigma_g, rel=1e-5)
    # the synthetic errors are recovered: NN vs Bayes is the smaller, injected noise
    all_rows = table[table["subsample"] == "all"].set_index(["comparison", "parameter"])
    for p in PARAMETERS:
        assert (
            all_rows.loc[("nn_bayes", p), "sigma_g"] < all_rows.loc[("bayes_truth", p), "sigma_g"]
        )


def test_classes_partition_the_stars(run):
    data = prepare_report_data(run["result"], run["truth"], run["bayes"], run["phot"])
    table = comparison_table(data)
    counts = table[(table["comparison"] == "bayes_truth") & (table["parameter"] == "Mr")]
    n = counts.set_index("subsample")["n_stars"]
    classes = [s for s in n.index if s == "giants" or "MS" in s]
    assert len(classes) == 3 and all(n[c] > 0 for c in classes)
    assert sum(n[c] for c in classes) == n["all"] == N_STARS
    mags = [s for s in n.index if "r <" in s or "r ≥" in s]
    assert sum(n[m] for m in mags) == N_STARS


def test_real_data_report_has_only_nn_vs_bayes(run, tmp_path):
    index = write_report(
        run["result"],
        tmp_path,
        bayes_reference=run["bayes"],
        photometry=run["phot"],
        parameters=("FeH",),
    )
    written = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert "ug_map_FeH_nn_bayes.png" in written
    assert not any("truth" in name for name in written)
    sources, _ = _links(index)
    assert sources == {f"figures/{name}" for name in written}
    table = pd.read_csv(tmp_path / "table1.csv")
    assert set(table["comparison"]) == {"nn_bayes"}
    # the error-model check of the run is stated on the page
    page = html.unescape(index.read_text(encoding="utf-8"))
    assert "812 well-measured stars scatter by 0.0101 mag beyond their quoted" in page
    # without truth the classes come from the Bayesian estimates
    assert "giants" in set(table["subsample"])


def test_prior_power_note():
    assert prior_power_note(None) == prior_power_note({"beta": 1.0, "reason": "flat prior"}) == ""
    assert prior_power_note({"beta": 1.0, "feh_shift": 0.0, "reason": "given"}) == ""
    fitted = {
        "beta": 0.5,
        "feh_shift": 0.3,
        "fitted": True,
        "n_stars": 2000,
        "log_evidence_gain": 0.145,
    }
    note = prior_power_note(fitted)
    assert "+0.3 dex" in note and "power 0.5" in note and "+0.145" in note
    assert "2,000 stars" in note
    assert "power" not in prior_power_note(dict(fitted, beta=1.0))
    same = dict(fitted, beta=1.0, feh_shift=0.0, log_evidence_gain=0.0)
    assert "used as given" in prior_power_note(same)
    few = {"beta": 1.0, "fitted": False, "reason": "150 usable stars, fewer than 200"}
    assert "fewer than 200" in prior_power_note(few) and "as given" in prior_power_note(few)
    given = {"beta": 0.3, "feh_shift": -0.2, "fitted": False, "reason": "given"}
    assert prior_power_note(given) == (
        "Prior: the ([Fe/H], M_r) prior was moved by -0.2 dex in [Fe/H] and raised to the "
        "power 0.3."
    )


def test_error_model_note():
    assert error_model_note(None) == ""
    fitted = {"floor": 0.0123, "fitted": True, "n_stars": 1000, "scatter": 0.0101, "grid": 0.007}
    note = error_model_note(fitted)
    assert "1,000 well-measured stars scatter by 0.0101 mag" in note
    assert "floor of 0.0123 mag (fitted)" in note
    fixed = {"floor": 0.02, "fitted": False, "n_stars": 0, "scatter": None, "grid": None}
    assert error_model_note(fixed) == (
        "Error model: the Bayesian stage used a colour-error floor of 0.0200 mag."
    )


def test_without_reference_bayes_rows_of_the_result_are_used(run, tmp_path):
    data = prepare_report_data(run["result"], truth=run["truth"], photometry=run["phot"])
    assert [c.key for c in data.comparisons()] == ["bayes_truth", "nn_truth"]
    table = comparison_table(data)
    row = table[
        (table["subsample"] == "all")
        & (table["comparison"] == "bayes_truth")
        & (table["parameter"] == "Ar")
    ]
    assert row["n_stars"].iloc[0] == N_BAYES
    index = write_report(
        run["result"], tmp_path, truth=run["truth"], photometry=run["phot"], parameters=("Ar",)
    )
    assert "training subsample and fallbacks" in index.read_text(encoding="utf-8")
    written = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert written == {
        "one_to_one_Ar.png",
        "normalised_Ar.png",
        "sigma_ratios.png",
        "diagnostics.png",
        *(
            f"{kind}_Ar_{key}.png"
            for kind in ("ug_map", "residuals")
            for key in ("bayes_truth", "nn_truth")
        ),
    }


def test_error_correlation_is_recovered():
    rng = np.random.default_rng(3)
    n, rho = 40_000, 0.3
    truth = pd.DataFrame({f"{p}_true": rng.normal(0, 1, n) for p in PARAMETERS})
    bayes_error = rng.normal(0, 0.2, n)
    # emulation error with correlation rho to the Bayesian error
    emulation = 0.05 * (rho * bayes_error / 0.2 + np.sqrt(1 - rho**2) * rng.normal(0, 1, n))
    bayes = pd.DataFrame(
        {f"{p}_mean": truth[f"{p}_true"] + bayes_error for p in PARAMETERS}
        | {f"{p}_std": np.full(n, 0.2) for p in PARAMETERS}
    )
    result = pd.DataFrame(
        {f"{p}_mean": bayes[f"{p}_mean"] + emulation for p in PARAMETERS}
        | {f"{p}_sigma_nn": np.full(n, 0.05) for p in PARAMETERS}
    )
    data = prepare_report_data(result, truth, bayes)
    table = error_correlations(data)
    for p in PARAMETERS:
        assert table.loc[p, "n_stars"] == n
        assert table.loc[p, "pearson_r"] == pytest.approx(rho, abs=0.02)
        assert table.loc[p, "pearson_r_clipped"] == pytest.approx(rho, abs=0.02)


def test_sigma_ratios(run):
    data = prepare_report_data(run["result"], run["truth"], run["bayes"])
    table = sigma_ratio_summary(data)
    n_nn = N_STARS - N_BAYES
    for p in PARAMETERS:
        assert table.loc[p, "n_stars"] == n_nn
        # sigma_NN = 0.3 sigma_B and sigma_B predicted to 5 %
        assert table.loc[p, "nn_over_bayes_p50"] == pytest.approx(0.3, abs=0.01)
        assert table.loc[p, "total_over_bayes_p50"] == pytest.approx(np.hypot(1, 0.3), abs=0.01)
        assert table.loc[p, "total_over_bayes_p16"] < table.loc[p, "total_over_bayes_p84"]


def test_flag_fractions_per_bit_and_method():
    result = pd.DataFrame(
        {
            "flags": [0, 2, 2 | 512, 1024, 0, 2],
            "method": ["nn", "nn", "nn", "bayes", "bayes", "bayes"],
        }
    )
    table = flag_fractions(result).set_index("flag")
    assert table.loc["TWO_BRANCH", "n_stars"] == 3
    assert table.loc["TWO_BRANCH", "fraction"] == pytest.approx(0.5)
    assert table.loc["TWO_BRANCH", "fraction_nn"] == pytest.approx(2 / 3)
    assert table.loc["TWO_BRANCH", "fraction_bayes"] == pytest.approx(1 / 3)
    assert table.loc["NN_OUT_OF_DOMAIN", "n_stars"] == 1
    assert table.loc["NN_INVALID_INPUT", "fraction_bayes"] == pytest.approx(1 / 3)
    assert table.loc["POOR_FIT", "n_stars"] == 0
    assert table.loc["any", "n_stars"] == 4


def test_grouped_quantiles_match_numpy():
    rng = np.random.default_rng(1)
    index = rng.integers(0, 7, 500)
    index[index == 4] = 5  # an empty group
    values = rng.normal(size=500)
    counts, q = _grouped_quantiles(index, values, 7, (0.25, 0.5, 0.9))
    for g in range(7):
        sel = values[index == g]
        assert counts[g] == sel.size
        if sel.size == 0:
            assert np.isnan(q[:, g]).all()
        else:
            np.testing.assert_allclose(q[:, g], np.percentile(sel, [25, 50, 90]), rtol=1e-12)


def test_misaligned_frames_are_rejected(run, tmp_path):
    with pytest.raises(ValueError, match="aligned row by row"):
        write_report(run["result"], tmp_path, truth=run["truth"].iloc[:-1])


def test_existing_report_needs_overwrite_and_stale_figures_go(run, tmp_path):
    small = synthetic_run(n=800, n_bayes=100, seed=4)
    only = {"parameters": ("FeH",)}
    write_report(small["result"], tmp_path, truth=small["truth"], photometry=small["phot"], **only)
    with pytest.raises(FileExistsError):
        write_report(small["result"], tmp_path, bayes_reference=small["bayes"], **only)
    index = write_report(
        small["result"], tmp_path, bayes_reference=small["bayes"], overwrite=True, **only
    )
    written = {f"figures/{p.name}" for p in (tmp_path / "figures").glob("*.png")}
    sources, _ = _links(index)
    assert written == sources
    assert not any("truth" in name for name in written)


def test_load_run_directory_aligns_by_id(run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run["result"]
    result.to_parquet(run_dir / "result.parquet")
    shuffled = run["truth"].sample(frac=1.0, random_state=2)  # matched back by source_id
    shuffled.to_parquet(run_dir / "truth.parquet")
    run["bayes"].to_parquet(run_dir / "bayes_reference.parquet")  # no id: by position
    timings = {"bayes_label": 1.5, "train": 2.5, "total": 4.0}
    (run_dir / "run.json").write_text(json.dumps({"timings": timings}))

    loaded = load_run(run_dir, photometry=run["phot"])
    np.testing.assert_array_equal(
        loaded.truth["source_id"].to_numpy(), result["source_id"].to_numpy()
    )
    assert loaded.timings == timings
    assert loaded.config == result.attrs["photodist_pipeline"]["config"]

    index = report_from_run(
        run_dir, tmp_path / "report", photometry=run["phot"], parameters=("Mr",)
    )
    from_dir = pd.read_csv(index.parent / "table1.csv")
    data = prepare_report_data(result, run["truth"], run["bayes"], run["phot"])
    direct = comparison_table(data)
    direct = direct[direct["parameter"] == "Mr"].reset_index(drop=True)
    assert len(direct) > 10
    pd.testing.assert_frame_equal(from_dir[["n_stars"]], direct[["n_stars"]], check_dtype=False)
    np.testing.assert_allclose(from_dir["sigma_g"], direct["sigma_g"], rtol=1e-5)
    assert json.loads((index.parent / "report.json").read_text())["timings"] == timings


def test_load_run_uses_truth_columns_carried_in_the_output(run, tmp_path):
    combined = pd.concat([run["result"], run["truth"].drop(columns="source_id")], axis=1)
    path = tmp_path / "combined.parquet"
    combined.to_parquet(path)
    loaded = load_run(path)
    assert loaded.truth is not None
    np.testing.assert_array_equal(loaded.truth["FeH_true"], run["truth"]["FeH_true"])


_CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); })
                     .map(function (img) { return img.getAttribute("src"); });
  var out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({n: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def _chromium_image_check(page: Path, profile: Path) -> dict:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    found = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no image report from Chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install -y chromium)"
)
def test_page_images_load_in_headless_chromium(full_report, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(full_report.parent, site)
    page = (site / "index.html").read_text(encoding="utf-8")
    n_images = len(re.findall(r"<img ", page))
    good = site / "check.html"
    good.write_text(page.replace("</body>", _CHECK_SCRIPT + "</body>"), encoding="utf-8")
    check = _chromium_image_check(good, tmp_path / "profile")
    assert check == {"n": n_images, "broken": []}
    # the check itself sees a broken link
    bad = site / "check_broken.html"
    missing = '<img src="figures/missing.png" alt="missing">'
    bad.write_text(page.replace("</body>", missing + _CHECK_SCRIPT + "</body>"), encoding="utf-8")
    check = _chromium_image_check(bad, tmp_path / "profile")
    assert check["broken"] == ["figures/missing.png"]


def test_report_without_references_still_shows_uncertainties_and_flags(run, tmp_path):
    index = write_report(run["result"], tmp_path)
    page = index.read_text(encoding="utf-8")
    sources, _ = _links(index)
    assert sources == {"figures/sigma_ratios.png"}
    assert "No comparison possible" in page
    assert "TWO_BRANCH" in page and "bayes_label" in page
    assert pd.read_csv(tmp_path / "table1.csv").empty


def test_dust_map_comes_from_the_catalogue_never_from_a_true_ar():
    n = 5
    result = pd.DataFrame({f"{p}_{s}": np.ones(n) for p in PARAMETERS for s in ("mean", "sigma")})
    simulator = pd.DataFrame(
        {
            "Mr_true": np.ones(n),
            "FeH_true": np.ones(n),
            "Ar_true": np.zeros(n),
            "Ar": np.full(n, 0.3),
        }
    )
    photod = pd.DataFrame({"Mr": np.ones(n), "FeH": np.ones(n), "Ar": np.full(n, 0.1)})
    catalogue = pd.DataFrame({"Ar": np.full(n, 0.2)})
    for truth, phot, expected in (
        (simulator, None, 0.3),  # the simulator's Ar is the map value, Ar_true the truth
        (photod, None, None),  # the photod convention's Ar is the true extinction
        (photod, catalogue, 0.2),
    ):
        data = prepare_report_data(result, truth=truth, photometry=phot)
        if expected is None:
            assert "a_map" not in data.photometry
        else:
            np.testing.assert_array_equal(data.photometry["a_map"], expected)


def test_report_of_a_run_reads_the_runs_column_names(tmp_path):
    """A run on a flux catalogue with an E(B-V) column: the report finds r and the dust map."""
    rng = np.random.default_rng(2)
    n = 400
    r = rng.uniform(16.0, 20.0, n)
    qr = rng.uniform(3.0, 8.0, n)
    result = pd.DataFrame({f"{p}_{s}": np.ones(n) for p in PARAMETERS for s in ("mean", "sigma")})
    result["Ar_mean"] = 0.2
    result["Qr_mean"], result["DM_mean"] = qr, r - qr
    result["flags"] = 0
    run_output = tmp_path / "run.parquet"
    result.to_parquet(run_output)
    (tmp_path / "run.parquet.run.json").write_text(
        json.dumps({"columns": {"flux_unit": "nJy", "ebv": "ebv", "dust": None}})
    )
    photometry = pd.DataFrame({"r_psfFlux": 10 ** (0.4 * (31.4 - r)), "r_psfFluxErr": 1.0})
    photometry["ebv"] = 0.3 / 2.751
    index = report_from_run(run_output, tmp_path / "report", photometry=photometry)
    rows = json.loads((index.parent / "report.json").read_text())["by_magnitude"]
    assert [row["r_lo"] for row in rows] == [16.0, 17.0, 18.0, 19.0]
    distant = [row["ar_minus_map_distant"] for row in rows if row["ar_minus_map_distant"]]
    assert distant and np.allclose(distant, -0.1)


def test_flux_catalogue_photometry_follows_the_measurement_flags():
    """A true u flag makes u unusable (as for the estimators): no u and no u-g on that row."""
    n = 6
    mags = {"u": np.full(n, 20.0), "g": np.full(n, 19.0), "r": np.full(n, 18.5)}
    catalogue = pd.DataFrame(
        {
            col: value
            for b, m in mags.items()
            for col, value in (
                (f"{b}_psfFlux", 10 ** (0.4 * (31.4 - m))),
                (f"{b}_psfFluxErr", np.full(n, 50.0)),
            )
        }
    )
    catalogue["u_psfFlux_flag"] = [False, True, False, True, False, False]
    catalogue["g_psfFlux_flag"] = False
    columns = ColumnMap(flux_unit="nJy")
    flagged = catalogue["u_psfFlux_flag"].to_numpy()

    phot = _flux_photometry(catalogue, columns)
    assert list(phot) == ["umag", "rmag", "ug", "ug_err"]
    for key in ("umag", "ug", "ug_err"):
        assert np.isnan(phot[key][flagged]).all() and np.isfinite(phot[key][~flagged]).all()
    np.testing.assert_allclose(phot["umag"][~flagged], 20.0)
    np.testing.assert_allclose(phot["ug"][~flagged], 1.0)
    np.testing.assert_allclose(phot["rmag"], 18.5)

    result = pd.DataFrame({f"{p}_{s}": np.ones(n) for p in PARAMETERS for s in ("mean", "sigma")})
    data = prepare_report_data(result, photometry=catalogue, columns=columns)
    assert np.isnan(data.photometry["ug"][flagged]).all()
    np.testing.assert_allclose(data.photometry["ug"][~flagged], 1.0)
    # without the u flux columns there is no u, but r still comes from the fluxes
    no_u = _flux_photometry(catalogue.drop(columns=["u_psfFlux", "u_psfFluxErr"]), columns)
    assert list(no_u) == ["rmag"]


def test_a_run_with_a_learned_dust_prior_shows_its_profile(run, tmp_path):
    result = run["result"].copy()
    info = dict(result.attrs.get("photodist_pipeline", {}))
    profile = DustProfile(np.array([8.0, 14.0]), np.array([0.02, 0.06]), 0.02)
    info["dust_profile"] = {"fitted": True, **profile.to_dict(), "n_stars": 500}
    result.attrs["photodist_pipeline"] = info
    index = write_report(result, tmp_path / "with")
    assert "figures/dust_profile.png" in _links(index)[0]
    info["dust_profile"] = {"fitted": False, "reason": "only 12 stars with a usable estimate"}
    index = write_report(result, tmp_path / "without")
    assert "figures/dust_profile.png" not in _links(index)[0]


def _small_run(seed: int = 5) -> dict[str, pd.DataFrame]:
    """A small synthetic run whose result also carries DM_mean and Qr_mean."""
    small = synthetic_run(n=600, n_bayes=200, seed=seed)
    result = small["result"]
    result["Qr_mean"] = result["Mr_mean"] + result["Ar_mean"]
    result["DM_mean"] = small["phot"]["rmag"] - result["Qr_mean"]
    return small


def test_no_file_is_overwritten_without_overwrite(tmp_path):
    small = _small_run()
    only = {"parameters": ("FeH",), "truth": small["truth"], "photometry": small["phot"]}
    (tmp_path / "table1.csv").write_text("evaluate's table\n")
    with pytest.raises(FileExistsError, match="table1.csv"):
        write_report(small["result"], tmp_path, **only)
    assert (tmp_path / "table1.csv").read_text() == "evaluate's table\n"
    # a figure of the same name as one the report draws: refused before anything is written
    folder = tmp_path / "figures_only"
    (folder / "figures").mkdir(parents=True)
    (folder / "figures" / "one_to_one_FeH.png").write_text("mine")
    with pytest.raises(FileExistsError, match="one_to_one_FeH.png"):
        write_report(small["result"], folder, **only)
    assert (folder / "figures" / "one_to_one_FeH.png").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["figures"]
    assert [p.name for p in (folder / "figures").iterdir()] == ["one_to_one_FeH.png"]


def test_overwrite_removes_only_the_files_of_the_previous_report(tmp_path):
    small = _small_run()
    out = tmp_path / "report"
    only = {"parameters": ("FeH",), "photometry": small["phot"]}
    write_report(small["result"], out, truth=small["truth"], **only)
    mine = [out / "data" / "my_notes.csv", out / "figures" / "my_plot.png", tmp_path / "x.csv"]
    for path in mine:
        path.write_text("mine")
    numbers = json.loads((out / "report.json").read_text())
    numbers["data_files"].append("data/../../x.csv")  # never followed out of data/
    (out / "report.json").write_text(json.dumps(numbers))
    index = write_report(
        small["result"], out, bayes_reference=small["bayes"], overwrite=True, **only
    )
    assert all(path.read_text() == "mine" for path in mine)
    sources, hrefs = _links(index)
    figures = {f"figures/{p.name}" for p in (out / "figures").iterdir()}
    assert figures == sources | {"figures/my_plot.png"}
    data = {f"data/{p.name}" for p in (out / "data").iterdir()}
    assert data == {h for h in hrefs if h.startswith("data/")} | {"data/my_notes.csv"}
    assert not any("truth" in name for name in figures | data)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("missing", [0.1, 1.0])
def test_by_magnitude_keeps_the_rows_the_truth_lacks(missing, tmp_path):
    small = _small_run()
    n = len(small["result"])
    truth = pd.concat([small["truth"], small["phot"]], axis=1)
    lost = np.random.default_rng(1).random(n) < missing  # rows no truth id matched
    truth.loc[lost, truth.columns != "source_id"] = np.nan
    data = prepare_report_data(small["result"], truth=truth)
    np.testing.assert_allclose(data.photometry["rmag"], small["phot"]["rmag"])
    index = write_report(small["result"], tmp_path, truth=truth, parameters=("FeH",))
    by_magnitude = json.loads((tmp_path / "report.json").read_text())["by_magnitude"]
    assert sum(row["n_stars"] for row in by_magnitude) == n
    assert 'id="diagnostics"' in index.read_text(encoding="utf-8")


def test_photometry_columns_fill_their_missing_rows_from_the_next_frame():
    small = _small_run()
    phot = small["phot"].copy()
    phot.loc[:99, "umag"] = np.nan
    truth = pd.concat([small["truth"], small["phot"]], axis=1)
    data = prepare_report_data(small["result"], photometry=phot, truth=truth)
    np.testing.assert_allclose(data.photometry["umag"], small["phot"]["umag"])
    np.testing.assert_allclose(data.photometry["ug"], small["phot"]["umag"] - phot["gmag"])


def test_empty_run_output_has_no_fractions(run, tmp_path):
    empty = run["result"].iloc[:0]
    table = flag_fractions(empty)
    assert len(table) > 0 and table["fraction"].isna().all()
    index = write_report(empty, tmp_path, truth=run["truth"].iloc[:0], parameters=("FeH",))
    page = index.read_text(encoding="utf-8")
    assert "0 stars." in page and "()" not in page
    assert "No comparison possible: the run output holds no stars." in page


def test_truth_without_any_estimate_says_why_nothing_is_compared(tmp_path):
    small = _small_run()
    result = small["result"].copy()
    result[[f"{p}_mean" for p in PARAMETERS]] = np.nan
    index = write_report(result, tmp_path, truth=small["truth"], parameters=("FeH",))
    page = index.read_text(encoding="utf-8")
    assert "No comparison possible: none of the 600 stars has an estimate." in page
    assert "give truth" not in page


def test_bayes_vs_truth_note_counts_the_rows_compared(tmp_path):
    small = _small_run()
    result, truth = small["result"], small["truth"].copy()
    bayes_rows = np.flatnonzero(result["method"] == "bayes")
    truth.loc[bayes_rows[:50], [f"{p}_true" for p in PARAMETERS]] = np.nan
    index = write_report(result, tmp_path, truth=truth, parameters=("FeH",))
    page = index.read_text(encoding="utf-8")
    assert "Bayes vs truth uses the 150 of the 200 rows" in page
    table1 = pd.read_csv(tmp_path / "table1.csv")
    all_bayes = table1[(table1["subsample"] == "all") & (table1["comparison"] == "bayes_truth")]
    assert all_bayes["n_stars"].tolist() == [150]


def test_survey_output_report_shows_its_configuration_and_timings(run, tmp_path):
    from photodist.survey import MANIFEST_NAME, patch_info_path

    out = tmp_path / "survey"
    out.mkdir()
    run["result"].iloc[:400].to_parquet(out / "part.parquet")
    configuration = {"survey": {"columns": {"object_id": None}, "pipeline": {"seed": 3}}}
    manifest = {"format": "photodist-survey-run", "configuration": configuration}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    for pixel, seconds in ((3, 1.5), (6, 2.0)):
        path = patch_info_path(out, 7, pixel)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"pixel": pixel, "timings_s": {"prepare": seconds}}))
    loaded = load_run(out)
    assert loaded.config == configuration
    assert loaded.timings == {"prepare": 3.5}
    index = report_from_run(out, tmp_path / "report", parameters=("FeH",))
    page = index.read_text(encoding="utf-8")
    assert "No configuration recorded" not in page and "&quot;seed&quot;: 3" in page
    assert "<td>prepare</td>" in page
