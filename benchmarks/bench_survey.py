"""Survey-scale benchmark: millions of stars over tens of patches on a local Dask cluster.

Simulates the stars of ``--patches`` HEALPix patches of order ``--order`` (default: 36
consecutive order-4 patches starting at the order-2 pixel around Galactic l = 90°, b = 45°;
LSST 10-year errors, r < ``--r-max`` = 24; about 5.5 million stars), written as a Parquet
dataset (one file per patch). Simulation time is excluded. The Galaxy-model priors of every
patch are built once into a cache (timed separately, as a survey builds them once). Then
:func:`photodist.survey.run_survey` processes the catalogue on a ``LocalCluster`` with 1 and
with 2 worker processes (one thread each), each run from scratch into its own folder: staging
(streaming the input into per-patch files), one task per patch, atomic partition files and the
HATS metadata. The two outputs are checked to be identical (same seeds, any layout).

Printed: stars/s of the patch phase with 1 and 2 workers and their ratio; the per-patch fixed
cost (error-model check, fit of the prior, Bayesian labels, network training) and the per-star
cost (prediction, Bayesian fallback for stars the networks cannot take, I/O), measured inside
the tasks; and the projected cost of 10^10 stars: naively from the measured stars/s, and from
the cost model with LSST-like patch sizes (10^10 stars over the 3,072 order-4 patches of the
sky), in core-hours and in days on N cores. The machine's load average is printed before and
after (other users share the CPUs).

Usage: ``python benchmarks/bench_survey.py [--workdir DIR] [--r-max 24] [--epochs N]``
(``--epochs`` and ``--learning-rate`` override the pipeline's ``nn_max_epochs`` = 512 and
``nn_learning_rate`` = 1e-2; the paper's training is ``--epochs 1024 --learning-rate 1e-3``;
``--bayes-all-below N`` gives patches of at most N usable stars the Bayesian estimate for
every star instead of the networks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import astropy.units as u
import cdshealpix.nested as chp
import numpy as np
import pyarrow.parquet as pq
from astropy.coordinates import SkyCoord

from photodist.pipeline import PipelineConfig
from photodist.simulate import simulate_patch
from photodist.survey import (
    SurveyConfig,
    load_or_build_prior,
    output_path,
    plan_patches,
    run_survey,
)

N_STARS_LSST = 1.0e10
ORDER4_PATCHES = 12 * 4**4
#: Pipeline stages whose cost does not grow with a patch's stars (``photodist.pipeline.STAGES``).
FIXED_STAGES = ("prepare", "error_floor", "prior_temper", "dust_profile", "bayes_label", "train")
KEEP_COLUMNS = ("source_id", "ra", "dec", "Ar", "FeH_true", "Mr_true", "Ar_true", "dist_true")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return (
        f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min), {os.cpu_count()} CPUs"
    )


def _patches(order: int, n: int, l_deg: float, b_deg: float) -> list[int]:
    """``n`` consecutive order-``order`` pixels starting at the parent containing (l, b)."""
    eq = SkyCoord(l=[l_deg] * u.deg, b=[b_deg] * u.deg, frame="galactic").icrs
    parent_order = max(order - 2, 0)
    parent = int(chp.lonlat_to_healpix(eq.ra, eq.dec, parent_order)[0])
    first = parent << (2 * (order - parent_order))
    return list(range(first, first + n))


def simulate(workdir: Path, pixels: list[int], order: int, r_max: float) -> Path:
    folder = workdir / "input"
    done = folder / "DONE"
    if done.is_file() and json.loads(done.read_text()) == {"pixels": pixels, "r_max": r_max}:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    offset = 0
    for k, pixel in enumerate(pixels):
        frame = simulate_patch(pixel=pixel, order=order, r_max=r_max, seed=1000 + k)
        columns = [*KEEP_COLUMNS]
        columns += [c for c in frame.columns if c.endswith(("mag", "Err")) and len(c) <= 4]
        frame = frame[columns].copy()
        frame["source_id"] = np.arange(len(frame), dtype=np.int64) + offset
        offset += len(frame)
        frame.to_parquet(folder / f"patch-{k:03d}.parquet", index=False)
    done.write_text(json.dumps({"pixels": pixels, "r_max": r_max}))
    return folder


def _identical(a: Path, b: Path, order: int, pixels: list[int]) -> bool:
    for pixel in pixels:
        ta = pq.read_table(output_path(a, order, pixel)).to_pandas()
        tb = pq.read_table(output_path(b, order, pixel)).to_pandas()
        if not ta.equals(tb):  # NaN in the same places counts as equal
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_survey_work"))
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--patches", type=int, default=36)
    parser.add_argument("--l", type=float, default=90.0)
    parser.add_argument("--b", type=float, default=45.0)
    parser.add_argument("--r-max", type=float, default=24.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="nn_max_epochs (default 512)")
    parser.add_argument("--learning-rate", type=float, default=None, help="nn_learning_rate")
    parser.add_argument(
        "--bayes-all-below",
        type=int,
        default=0,
        help="patches with at most this many usable stars: Bayes on every star",
    )
    parser.add_argument("--cores", type=int, nargs="+", default=[2, 100])
    args = parser.parse_args()

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(_load())
    pixels = _patches(args.order, args.patches, args.l, args.b)
    t0 = time.perf_counter()
    source = simulate(workdir, pixels, args.order, args.r_max)
    n_stars = sum(pq.ParquetFile(f).metadata.num_rows for f in source.glob("*.parquet"))
    print(
        f"catalogue: {n_stars:,} stars in {len(pixels)} order-{args.order} patches "
        f"(r < {args.r_max:g}); simulated in {time.perf_counter() - t0:.0f} s (excluded)"
    )

    settings = {"nn_device": "cpu", "bayes_all_below": args.bayes_all_below}
    if args.epochs is not None:
        settings["nn_max_epochs"] = args.epochs
    if args.learning_rate is not None:
        settings["nn_learning_rate"] = args.learning_rate
    config = SurveyConfig(
        order=args.order,
        pipeline=PipelineConfig(**settings),
        prior_cache=str(workdir / "priors"),
    )
    print(f"pipeline: {json.dumps(config.pipeline.to_dict(), sort_keys=True)}")
    t0 = time.perf_counter()
    plan = plan_patches(source, config, workdir / "plan")
    t_stage = time.perf_counter() - t0
    t0 = time.perf_counter()
    for task in plan.patches:
        load_or_build_prior(task, config, workdir / "priors")
    t_priors = time.perf_counter() - t0
    print(f"staging (driver, once per run): {t_stage:.1f} s; priors (once): {t_priors:.1f} s")
    shutil.rmtree(workdir / "plan", ignore_errors=True)

    setup = {
        "pixels": pixels,
        "order": args.order,
        "r_max": args.r_max,
        "n_stars": n_stars,
        "pipeline": config.pipeline.to_dict(),
    }
    saved = workdir / "results.json"
    results: dict = {}
    if saved.is_file():  # runs of an earlier, interrupted call with the same setup
        previous = json.loads(saved.read_text())
        if previous.get("setup") == setup:
            results = {int(k): v for k, v in previous.get("runs", {}).items()}
            print(f"earlier runs with the same setup: {sorted(results)} worker(s)")
    for n_workers in args.workers:
        out = workdir / f"run_w{n_workers}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"\n{n_workers} worker(s): {_load()}")
        summary = run_survey(source, out, config, n_workers=n_workers, progress=False)
        assert summary.ok and summary.rows_processed == n_stars, summary.failed
        patches = summary.patches
        fixed = sum(sum(p.timings.get(k, 0.0) for k in FIXED_STAGES) for p in patches)
        task_s = sum(p.seconds for p in patches)
        results[n_workers] = {
            "stars_per_s": summary.stars_per_s,
            "patch_phase_s": summary.process_s,
            "run_s": summary.elapsed_s,
            "task_core_s": task_s,
            "fixed_core_s_per_patch": fixed / len(patches),
            "variable_core_us_per_star": (task_s - fixed) / n_stars * 1e6,
            "stage_s": {
                k: sum(p.timings.get(k, 0.0) for p in patches)
                for k in (*FIXED_STAGES[1:], "predict", "bayes_fallback")
            },
            "load_after": _load(),
        }
        r = results[n_workers]
        print(
            f"  patch phase {summary.process_s:.0f} s -> {summary.stars_per_s:,.0f} stars/s; "
            f"whole run (staging, cluster start/stop, metadata) {summary.elapsed_s:.0f} s"
        )
        print(
            f"  per patch: fixed {r['fixed_core_s_per_patch']:.1f} core-s (error model, prior fit, "
            "labels, training); "
            f"per star: {r['variable_core_us_per_star']:.1f} core-us (prediction, fallback, I/O)"
        )
        print(
            "  stage totals (core-s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["stage_s"].items())
        )
        print(f"  {r['load_after']}")
        saved.write_text(json.dumps({"setup": setup, "runs": results}, indent=2, default=str))

    if 1 in results and 2 in results:
        ratio = results[2]["stars_per_s"] / results[1]["stars_per_s"]
        same = _identical(workdir / "run_w1", workdir / "run_w2", args.order, pixels)
        print(f"\nspeed-up 2 workers / 1 worker: {ratio:.2f}; outputs identical: {same}")
    base = results[min(results)]
    per_core = base["stars_per_s"] / min(results)
    naive_core_h = N_STARS_LSST / per_core / 3600
    model_core_s = (
        ORDER4_PATCHES * base["fixed_core_s_per_patch"]
        + N_STARS_LSST * base["variable_core_us_per_star"] * 1e-6
    )
    print(
        f"\n10^10 stars, naive (measured {per_core:,.0f} stars/s per core with "
        f"{n_stars / len(pixels):,.0f} stars per patch): {naive_core_h:,.0f} core-hours"
    )
    print(
        f"10^10 stars, cost model ({ORDER4_PATCHES} order-4 patches of "
        f"{N_STARS_LSST / ORDER4_PATCHES:,.0f} stars): {model_core_s / 3600:,.0f} core-hours"
    )
    for cores in args.cores:
        print(
            f"  on {cores} cores: naive {naive_core_h / cores / 24:.2f} days, "
            f"model {model_core_s / 3600 / cores / 24:.2f} days"
        )
    summary = {
        "naive_core_hours_1e10": naive_core_h,
        "model_core_hours_1e10": model_core_s / 3600,
        "staging_s": t_stage,
        "priors_s": t_priors,
    }
    saved.write_text(
        json.dumps({"setup": setup, "runs": results, "summary": summary}, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
