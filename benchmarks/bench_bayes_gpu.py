"""Benchmark of the batched PyTorch Bayesian estimator against the numba CPU estimator.

Workload: simulated LSST stars of a high-latitude cone (l = 60°, b = 60°, 10-year errors,
r < 25.5, SNR > 5 in all six bands), resampled with replacement to ``n_stars``, with the
cone's Galaxy-model prior (27 r bins), on the posterior grid of 0.05 dex x 0.1 mag
(``build_locus().resample(0.05, 0.1)``, 11,041 points).

Times :meth:`TorchBayesEstimator.predict` from the host photometry to the host DataFrame, so
host-to-device and device-to-host transfers are included (CUDA is synchronised before and
after). Prints microseconds per star (best and median of the repeats), the numba estimator's
microseconds per star on a subset in the same run, their ratio, the issue target
(<= 0.5 us/star on one H100/H200), and the largest differences between the two estimators'
outputs on that subset. ``--batch-size 3039,default,48000`` times each batch size in turn
(``default``: the estimator's memory budget) and compares the fastest with numba.
``--profile`` adds the device kernels that took most time in one more call.

The simulation needs astropy, cdshealpix and photerr; ``--stars-file`` stores the simulated
sample and its prior (``.npz``) on the first run and reuses them afterwards, so that machines
without those packages can run the benchmark from the file.

Usage: ``python benchmarks/bench_bayes_gpu.py [n_stars] [--device cuda|cpu]
[--cpu-stars N] [--batch-size LIST] [--compile auto|on|off] [--stars-file PATH] [--profile]``
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import torch

from photodist.bands import LSST, Photometry
from photodist.bayes import BayesEstimator, PriorGrid
from photodist.bayes_torch import TorchBayesEstimator
from photodist.locus import Locus, build_locus

TARGET_US_PER_STAR = 0.5
CONE = (60.0, 60.0)
COMPARE = ("Mr_p50", "FeH_p50", "Ar_p50", "Qr_p50", "Mr_std", "Ar_std", "P_giant", "chi2min")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _simulate(grid: Locus, radius: float, seed: int) -> tuple[Photometry, PriorGrid]:
    """Stars of the cone with SNR > 5 in all bands, and the cone's prior on ``grid``."""
    from photodist.bands import photometry_from_frame
    from photodist.evaluate import snr_mask
    from photodist.priors import build_patch_priors
    from photodist.simulate import simulate_patch

    cone = (*CONE, radius)
    sim = simulate_patch(cone=cone, r_max=25.5, seed=seed, band_set="lsst")
    frame = sim[snr_mask(sim, "lsst", 5.0)].reset_index(drop=True)
    prior = PriorGrid.from_prior(build_patch_priors(cone=cone, locus=grid, seed=seed + 1), grid)
    return photometry_from_frame(frame, "lsst"), prior


def load_workload(
    grid: Locus, radius: float, seed: int, stars_file: Path | None
) -> tuple[Photometry, PriorGrid]:
    """The simulated sample and prior, from ``stars_file`` when it exists (else simulated,
    and saved there when a path is given)."""
    if stars_file is not None and stars_file.exists():
        data = np.load(stars_file)
        phot = Photometry(
            LSST,
            data["r"],
            data["r_err"],
            data["colors"],
            data["color_errors"],
            data["dust"],
            data["color_covariance"] if "color_covariance" in data.files else None,
        )
        return phot, PriorGrid(data["log_prior"], data["r_centres"])
    phot, prior = _simulate(grid, radius, seed)
    if stars_file is not None:
        stars_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            stars_file,
            r=phot.r,
            r_err=phot.r_err,
            colors=phot.colors,
            color_errors=phot.color_errors,
            dust=phot.dust if phot.dust is not None else np.full(len(phot), np.nan),
            color_covariance=phot.color_covariance,
            log_prior=prior.log_prior,
            r_centres=prior.r_centres,
        )
    return phot, prior


def _profile(estimator: TorchBayesEstimator, phot: Photometry, rows: int = 25) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if estimator.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    with torch.profiler.profile(activities=activities) as prof:
        estimator.predict(phot)
        _sync(estimator.device)
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def time_torch(
    grid: Locus,
    prior: PriorGrid,
    phot: Photometry,
    device: str,
    batch_size: int | None,
    compile_kernels: bool | None,
    repeats: int,
) -> tuple[float, pd.DataFrame, TorchBayesEstimator]:
    """Best microseconds per star of the torch estimator (transfers included), its output and
    the estimator."""
    n_points = grid.colors[..., 0].size
    estimator = TorchBayesEstimator(
        grid, prior, device=device, batch_size=batch_size, compile_kernels=compile_kernels
    )
    dev = estimator.device
    print(
        f"device: {_describe(dev)}; batch size {estimator.batch_size_for(n_points)}; "
        f"compiled kernels {estimator.compile_kernels}"
    )
    t0 = time.perf_counter()
    estimator.predict(phot.subset(np.arange(min(len(phot), 3000))))  # compile, plans, pools
    print(f"  warm-up (compilation included): {time.perf_counter() - t0:.1f} s")
    times = []
    result = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(repeats):
        _sync(dev)
        start = time.perf_counter()
        result = estimator.predict(phot)
        _sync(dev)
        times.append(time.perf_counter() - start)
    best, median = min(times), float(np.median(times))
    us_best = best / len(phot) * 1e6
    print(
        f"  torch ({dev.type}, compiled {estimator.compile_kernels}): {us_best:.3f} us/star "
        f"best, {median / len(phot) * 1e6:.3f} median of {repeats} "
        f"({len(phot) / best:,.0f} stars/s), transfers included"
    )
    per_star = estimator.stats_["n_candidates"] / max(len(phot), 1)
    print(
        f"  candidate points per star {per_star:,.0f} ({per_star / n_points:.1%} of the grid), "
        f"{estimator.stats_['n_batches']} batches"
    )
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
        print(f"  peak device memory {peak:.2f} GiB")
    assert result is not None
    return us_best, result, estimator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n_stars", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--cpu-stars", type=int, default=20_000, help="numba subset size")
    parser.add_argument(
        "--batch-size",
        default="default",
        help="stars per batch; a comma-separated list times each (default: the memory budget)",
    )
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--radius", type=float, default=2.0, help="simulated cone radius (deg)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stars-file", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="print the top device kernels")
    args = parser.parse_args()

    grid = build_locus().resample(0.05, 0.1)
    n_points = grid.colors[..., 0].size
    t0 = time.perf_counter()
    sample, prior = load_workload(grid, args.radius, args.seed, args.stars_file)
    rng = np.random.default_rng(args.seed)
    phot = sample.subset(rng.integers(0, len(sample), args.n_stars))
    print(
        f"{len(phot):,} LSST stars resampled from {len(sample):,} simulated (cone l=60 b=60 "
        f"radius {args.radius} deg); grid {grid.shape[0]} x {grid.shape[1]} = {n_points:,} "
        f"points; prior {len(prior.r_centres)} r bins ({time.perf_counter() - t0:.1f} s)"
    )

    compile_kernels = {"auto": None, "on": True, "off": False}[args.compile]
    sizes = [int(v) if v not in ("", "default") else None for v in args.batch_size.split(",")]
    us_best, result, best_estimator = math.inf, None, None
    for size in sizes:
        us, out, estimator = time_torch(
            grid, prior, phot, args.device, size, compile_kernels, args.repeats
        )
        if us < us_best:
            us_best, result, best_estimator = us, out, estimator

    n_cpu = min(args.cpu_stars, len(phot))
    subset = phot.subset(np.arange(n_cpu))
    cpu = BayesEstimator(grid, prior)
    cpu.predict(subset.subset(np.arange(min(n_cpu, 10))))  # compile / load the numba cache
    start = time.perf_counter()
    reference = cpu.predict(subset)
    us_cpu = (time.perf_counter() - start) / max(n_cpu, 1) * 1e6
    print(
        f"numba CPU ({numba.get_num_threads()} threads, {os.cpu_count()} CPUs): "
        f"{us_cpu:.2f} us/star on {n_cpu:,} stars"
    )
    print(f"ratio numba / torch: {us_cpu / us_best:.1f}x")
    status = "met" if us_best <= TARGET_US_PER_STAR else "NOT met"
    print(f"target <= {TARGET_US_PER_STAR} us/star on one GPU: {status} ({us_best:.3f} us/star)")

    assert result is not None
    head = result.iloc[:n_cpu].reset_index(drop=True)
    diffs = {c: float(np.nanmax(np.abs(head[c] - reference[c]))) for c in COMPARE}
    diffs["chi2min"] /= max(float(np.nanmax(np.abs(reference["chi2min"]))), 1.0)
    same_flags = float((head["flags"].to_numpy() == reference["flags"].to_numpy()).mean())
    print(
        "largest |torch - numba| on the subset: "
        + ", ".join(f"{c} {d:.4f}" for c, d in diffs.items())
        + " (chi2min relative)"
        + f"; identical flags {same_flags:.2%}"
    )
    if args.profile:
        _profile(best_estimator, phot.subset(np.arange(min(len(phot), 200_000))))


if __name__ == "__main__":
    main()
