"""Benchmark of the hybrid pipeline on one simulated patch: stage timings and Table 1.

Simulates a high-latitude cone (default l = 60°, b = 60°, radius 4°, LSST 10-year errors,
r < 25.5) and keeps the stars with SNR > 5 in all six bands (about 420,000 stars), builds the
patch's prior map, then runs :func:`photodist.pipeline.run_patch`: Bayesian labels for 10,000
stars, training of both networks, prediction of every other star. Prints the stage timings,
the total and stars/s; the time the Bayesian estimator would need for every star, from its
rate measured on a held-out random subset; and Table 1 (:func:`photodist.evaluate.table1`) on
that held-out subset (network rows that were not in the training set, labelled by the Bayesian
estimator with the same settings). With ``--compare`` (default) the pipeline runs again with a
uniform random training subsample and both are compared on the same held-out stars, including
the [Fe/H] NN-vs-Bayes outlier fraction (|difference| > 0.3 dex) of metal-poor stars.

Paper targets (Mrakovčić, Ivezić & Palaversa 2025): NN vs Bayes sigma_G <= 0.06 mag (M_r),
0.024 mag (A_r), 0.055 dex ([Fe/H]); NN vs truth sigma_G within 5 % of Bayes vs truth;
calibration in [0.9, 1.1]; whole patch <= 45 s.

Usage: ``python benchmarks/bench_pipeline.py [--radius 4] [--heldout 50000] [--no-compare]
[--max-epochs 512] [--learning-rate 1e-2] [--error-floor F|auto] [--independent-colors]
[--a-min-fraction F --a-max-scale S --a-max-offset O] [--dust-prior profile]
[--nn-dust-input]`` (the paper's
training: ``--max-epochs 1024 --learning-rate 1e-3``)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numba
import numpy as np
import pandas as pd
import torch

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesEstimator
from photodist.evaluate import outlier_fraction, robust_stats, snr_mask, table1
from photodist.locus import build_locus
from photodist.pipeline import (
    STAGES,
    PipelineConfig,
    posterior_grid,
    run_patch,
    used_dust_profile,
    used_error_floor,
)
from photodist.priors import build_patch_priors
from photodist.simulate import simulate_patch

TARGET_NN_BAYES = {"Mr": 0.06, "Ar": 0.024, "FeH": 0.055}
TARGET_SECONDS = 45.0
METAL_POOR = -1.5  # [Fe/H] below which a star counts as metal-poor in the comparison


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unavailable"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _print_table(table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.T.to_string(float_format=lambda v: f"{v:.4f}"))


def _check_targets(table: pd.DataFrame, seconds: float) -> None:
    for p, target in TARGET_NN_BAYES.items():
        value = table.loc[p, "nn_bayes_sigma_g"]
        print(
            f"  NN vs Bayes sigma_G {p}: {value:.4f} (target <= {target}): "
            f"{'met' if value <= target else 'NOT met'}"
        )
    for p in TARGET_NN_BAYES:
        ratio = table.loc[p, "nn_truth_over_bayes_truth"]
        print(
            f"  NN vs truth / Bayes vs truth sigma_G {p}: {ratio:.3f} (target <= 1.05): "
            f"{'met' if ratio <= 1.05 else 'NOT met'}"
        )
    for p in TARGET_NN_BAYES:
        cal = table.loc[p, "nn_calibration"]
        print(
            f"  NN calibration {p}: {cal:.3f} (target 0.9-1.1): "
            f"{'met' if 0.9 <= cal <= 1.1 else 'NOT met'}"
        )
    print(
        f"  whole patch: {seconds:.1f} s (target <= {TARGET_SECONDS:.0f} s): "
        f"{'met' if seconds <= TARGET_SECONDS else 'NOT met'}"
    )


def _subset_stats(
    result: pd.DataFrame, bayes: pd.DataFrame, truth: pd.DataFrame, masks: dict[str, np.ndarray]
) -> dict[str, str]:
    rows = {}
    for name, mask in masks.items():
        nn = result["FeH_mean"].to_numpy()[mask]
        by = bayes["FeH_mean"].to_numpy()[mask]
        med, sig = robust_stats(nn - by)
        out = outlier_fraction(nn, by, 0.3)
        _, sig_t = robust_stats(nn - truth["FeH_true"].to_numpy()[mask])
        rows[name] = (
            f"n={mask.sum():6d}  [Fe/H] NN-Bayes median {med:+.4f} sigma_G {sig:.4f} "
            f"outliers(>0.3 dex) {out:.4f}  NN-truth sigma_G {sig_t:.4f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--l", type=float, default=60.0, help="Galactic longitude (deg)")
    parser.add_argument("--b", type=float, default=60.0, help="Galactic latitude (deg)")
    parser.add_argument("--radius", type=float, default=4.0, help="cone radius (deg)")
    parser.add_argument("--r-max", type=float, default=25.5, help="simulated r limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--heldout", type=int, default=50_000, help="held-out Bayes stars")
    parser.add_argument("--max-epochs", type=int, default=512)
    parser.add_argument("--patience", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--n-runs", type=int, default=2)
    parser.add_argument("--error-floor", default="0.02", help="'auto' or a floor in mag")
    parser.add_argument("--device", default="auto", help="network device: auto, cpu, cuda")
    parser.add_argument("--no-compare", action="store_true", help="skip the random subsample")
    parser.add_argument(
        "--independent-colors", action="store_true", help="Bayes chi2 without colour covariance"
    )
    parser.add_argument("--a-min-fraction", type=float, default=0.0, help="A_r prior from F A_map")
    parser.add_argument("--a-max-scale", type=float, default=1.3, help="A_max = S A_map + O")
    parser.add_argument("--a-max-offset", type=float, default=0.1, help="A_max = S A_map + O")
    parser.add_argument(
        "--dust-prior", choices=["flat", "profile"], default="flat", help="A_r prior (pipeline)"
    )
    parser.add_argument(
        "--nn-dust-input", action="store_true", help="the map's A_r as a network input"
    )
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    print(
        f"machine: {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
        f"torch threads {torch.get_num_threads()}, CUDA {torch.cuda.is_available()}"
    )
    print(f"at start: {_load()}")
    cone = (args.l, args.b, args.radius)
    locus = build_locus()

    t0 = time.perf_counter()
    sim = simulate_patch(cone=cone, r_max=args.r_max, seed=args.seed, locus=locus)
    keep = snr_mask(sim, "lsst", 5.0)
    frame = sim[keep].reset_index(drop=True)
    del sim
    print(
        f"simulated cone l={args.l} b={args.b} radius {args.radius} deg, r < {args.r_max}: "
        f"{keep.size:,} stars, {len(frame):,} with SNR > 5 in ugrizy "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    t0 = time.perf_counter()
    prior = build_patch_priors(cone=cone, locus=locus, seed=args.seed + 1)
    print(f"prior map built in {time.perf_counter() - t0:.1f} s (not part of the patch time)")

    base = PipelineConfig(
        n_train=args.n_train,
        nn_max_epochs=args.max_epochs,
        nn_patience=args.patience,
        nn_learning_rate=args.learning_rate,
        nn_n_runs=args.n_runs,
        nn_device=args.device,
        error_floor=args.error_floor,
        color_covariance=not args.independent_colors,
        dust_min_fraction=args.a_min_fraction,
        dust_scale=args.a_max_scale,
        dust_offset=args.a_max_offset,
        dust_prior=args.dust_prior,
        nn_dust_input=args.nn_dust_input,
        seed=args.seed,
        progress=args.progress,
    )
    phot = photometry_from_frame(frame, "lsst")
    warm = BayesEstimator(posterior_grid(locus, base), prior, base.bayes_config())
    warm.predict(phot.subset(np.arange(10)))  # compile / load the numba cache

    strategies = ["stratified"] if args.no_compare else ["stratified", "random"]
    runs = {}
    for strategy in strategies:
        config = dataclasses.replace(base, strategy=strategy)
        print(f"\n== hybrid run, {strategy} subsample ({_load()})")
        result, timings, model = run_patch(frame, prior, locus, config)
        info = result.attrs["photodist_pipeline"]
        total = timings["total"]
        print(f"  error floor {info['error_floor']}")
        for stage in STAGES:
            print(f"  {stage:15s} {timings[stage]:8.2f} s")
        print(f"  {'total':15s} {total:8.2f} s  ({len(frame) / total:,.0f} stars/s)")
        meta = model.training_metadata_ if model is not None else {}
        print(
            f"  mode {info['mode']}: labelled {info['n_labelled']}, NN {info['n_nn']}, "
            f"Bayes fallback {info['n_bayes_fallback']}, out of domain "
            f"{info['n_out_of_domain']}; epochs {meta.get('epochs_run')}, "
            f"training parallel mode {meta.get('parallel')}"
        )
        runs[strategy] = (result, timings)

    # held-out stars: network rows in every run, drawn at random
    eligible = np.ones(len(frame), dtype=bool)
    for result, _ in runs.values():
        eligible &= (result["method"] == "nn").to_numpy()
    rng = np.random.default_rng(args.seed + 2)
    n_held = min(args.heldout, int(eligible.sum()))
    held = np.sort(rng.choice(np.flatnonzero(eligible), size=n_held, replace=False))
    # the Bayesian reference with the floor the (first) run used
    first_info = next(iter(runs.values()))[0].attrs["photodist_pipeline"]
    estimator = BayesEstimator(
        posterior_grid(locus, base),
        prior,
        base.bayes_config(used_error_floor(first_info)),
        dust_profile=used_dust_profile(first_info),
    )
    t0 = time.perf_counter()
    bayes_held = estimator.predict(phot.subset(held))
    bayes_seconds = time.perf_counter() - t0
    rate = n_held / bayes_seconds
    all_bayes = len(frame) / rate
    print(
        f"\nBayes on the {n_held:,} held-out stars: {bayes_seconds:.2f} s "
        f"({rate:,.0f} stars/s, {bayes_seconds / n_held * 1e6 * numba.get_num_threads():.0f} "
        f"us/star/core); all {len(frame):,} stars by Bayes: {all_bayes:.1f} s (estimated)"
    )
    # the best-fit check the pipeline runs on every network row (chi2min, POOR_FIT)
    estimator.best_fit(phot.subset(held[:100]))  # compiled before timing
    t0 = time.perf_counter()
    estimator.best_fit(phot.subset(held))
    check_seconds = time.perf_counter() - t0
    print(
        f"best-fit check of the same stars: {check_seconds:.2f} s "
        f"({check_seconds / n_held * 1e6 * numba.get_num_threads():.1f} us/star/core, "
        f"{check_seconds / bayes_seconds:.3f} of the Bayesian estimator's time)"
    )
    truth = frame.iloc[held].reset_index(drop=True)
    for strategy, (result, timings) in runs.items():
        held_result = result.iloc[held].reset_index(drop=True)
        table = table1(held_result, truth, bayes_held)
        print(
            f"\n== Table 1 ({strategy} subsample; {n_held:,} held-out stars, Bayes on the "
            f"same stars)"
        )
        _print_table(table)
        print(
            f"hybrid / all-Bayes time: {timings['total']:.1f} s / {all_bayes:.1f} s = "
            f"{timings['total'] / all_bayes:.3f}"
        )
        _check_targets(table, timings["total"])

    if len(runs) > 1:
        feh_b = bayes_held["FeH_mean"].to_numpy()
        r = phot.r[held]
        masks = {
            "all": np.isfinite(feh_b),
            f"Bayes [Fe/H] < {METAL_POOR}": feh_b < METAL_POOR,
            f"true [Fe/H] < {METAL_POOR}": truth["FeH_true"].to_numpy() < METAL_POOR,
            "r < 20": r < 20.0,
        }
        print("\n== stratified vs random training subsample (held-out stars)")
        for strategy, (result, _) in runs.items():
            held_result = result.iloc[held].reset_index(drop=True)
            print(f"  {strategy}:")
            for name, line in _subset_stats(held_result, bayes_held, truth, masks).items():
                print(f"    {name:22s} {line}")
    print(f"\nat end: {_load()}")


if __name__ == "__main__":
    main()
