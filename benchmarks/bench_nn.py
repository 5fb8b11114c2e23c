"""Benchmark of the photo-D networks: training time and inference throughput.

A synthetic but realistic labelled set (10,000 SDSS-like stars, 10 inputs) stands in for the
Bayesian labels of one sky patch: r ~ U(16, 24); intrinsic colours on a metallicity-dependent
stellar locus; reddening by A_r with the SDSS extinction ratios; photometric errors growing
with magnitude; labels M_r (photometric-parallax relation of Ivezić et al. 2008), A_r and
[Fe/H] with posterior-like noise and widths that grow with the colour errors.

Run ``python benchmarks/bench_nn.py`` (``--help`` for options). Targets: both networks trained
in at most 30 s on a 2-core CPU; inference of at least 2 million stars per second; on one
H100/H200 GPU, at least 300 million stars per second with the rows in device memory
(:meth:`PhotoDNetwork.predict_tensor`, timed when CUDA is available). ``--save-model`` keeps
the trained networks and ``--model`` times a saved model without training, e.g. on a GPU:
``python benchmarks/bench_nn.py --model model.safetensors --device cuda --n-predict 50000000``.
``--compare-with REV`` times the CPU inference of ``src/photodist/nn.py`` at an earlier git
revision against the current code on the same model, alternately in one process, and prints
the speed-up and the largest change of any output.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from revision import module_at

from photodist import nn_triton
from photodist.bands import get_band_set
from photodist.nn import FLAG_KEYS, NetworkSpec, PhotoDNetwork, resolve_device

TRAIN_SECONDS_TARGET = 30.0
STARS_PER_SECOND_TARGET = 2.0e6
GPU_STARS_PER_SECOND_TARGET = 300.0e6
#: Fused-kernel settings timed on a GPU: (rows per program, warps, matrix-product precision)
TRITON_SETTINGS = (
    (64, 4, "tf32x3"),
    (128, 4, "tf32x3"),
    (128, 8, "tf32x3"),
    (256, 8, "tf32x3"),
)


def _band_error(mag: np.ndarray, depth: float) -> np.ndarray:
    """Photometric error rising from a 0.01 mag floor to ~0.2 mag at ``depth``."""
    return np.hypot(0.01, 0.2 * 10.0 ** (0.4 * (mag - depth)))


def make_training_set(
    n: int = 10_000, seed: int = 1, missing_fraction: float = 0.01
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, 10), label means (n, 3) and label sigmas (n, 3) for SDSS ugriz.

    Feature columns: r, u-g, g-r, r-i, i-z, r error, then the four colour errors.
    A fraction ``missing_fraction`` of rows lose their u-g colour (NaN), as in real catalogues.
    """
    rng = np.random.default_rng(seed)
    reddening = get_band_set("sdss").reddening_vector()  # E(colour) / A_r
    r = rng.uniform(16.0, 24.0, n)
    halo = rng.random(n) < 0.3
    feh = np.where(halo, rng.normal(-1.5, 0.4, n), rng.normal(-0.5, 0.25, n))
    feh = np.clip(feh, -2.5, 0.5)
    gi = rng.uniform(0.25, 3.0, n)  # intrinsic g - i
    mr0 = -5.06 + 14.32 * gi - 12.97 * gi**2 + 6.127 * gi**3 - 1.267 * gi**4 + 0.0967 * gi**5
    mr = np.clip(mr0 + 4.50 - 1.11 * feh - 0.18 * feh**2, 0.0, 15.0)
    ar = np.clip(0.5 * rng.beta(1.5, 4.0, n), 0.0, 0.5)
    gr0 = 0.06 + 0.66 * gi - 0.05 * gi**2 + 0.04 * (feh + 0.5)
    ri0 = gi - gr0
    iz0 = 0.02 + 0.42 * ri0 + 0.03 * ri0**2
    ug0 = 0.85 + 1.1 * np.tanh(1.4 * gr0) + 0.28 * (feh + 0.5) + 0.05 * (feh + 0.5) ** 2
    colours = np.column_stack([ug0, gr0, ri0, iz0]) + ar[:, None] * reddening
    mags = {"r": r}
    mags["g"] = r + colours[:, 1]
    mags["u"] = mags["g"] + colours[:, 0]
    mags["i"] = r - colours[:, 2]
    mags["z"] = mags["i"] - colours[:, 3]
    depth = {"u": 24.8, "g": 25.5, "r": 25.0, "i": 24.5, "z": 23.5}  # deep co-add depths
    err = {b: _band_error(m, depth[b]) for b, m in mags.items()}
    colour_err = np.column_stack(
        [np.hypot(err[a], err[b]) for a, b in (("u", "g"), ("g", "r"), ("r", "i"), ("i", "z"))]
    )
    observed = colours + colour_err * rng.standard_normal(colours.shape)
    r_obs = r + err["r"] * rng.standard_normal(n)
    unusable = colour_err > 1.0  # as in photometry_from_frame: such colours are missing
    unusable[:, 0] |= rng.random(n) < missing_fraction
    observed[unusable] = np.nan
    colour_err = np.where(unusable, np.nan, colour_err)
    features = np.column_stack([r_obs, observed, err["r"], colour_err])

    truth = np.column_stack([mr, ar, feh])
    # posterior widths grow with the errors of the colours that constrain each parameter and
    # saturate at the prior width; posterior means scatter around the truth by about half that
    ce = np.nan_to_num(colour_err, nan=1.0)
    sigma = np.column_stack(
        [
            np.minimum(np.hypot(0.12, 3.5 * ce[:, 1:3].mean(axis=1)), 1.5),
            np.minimum(np.hypot(0.02, 0.6 * ce[:, 1]), 0.15),
            np.minimum(np.hypot(0.10, 3.0 * ce[:, 0]), 0.8),
        ]
    )
    mean = truth + 0.5 * sigma * rng.standard_normal(truth.shape)
    mean = np.clip(mean, [0.0, 0.0, -2.5], [15.0, 0.6, 0.5])
    return features, mean, sigma


def make_inference_set(n: int, seed: int = 2) -> np.ndarray:
    """``n`` feature rows (resampled from fresh synthetic stars)."""
    base, _, _ = make_training_set(50_000, seed=seed, missing_fraction=0.0)
    rng = np.random.default_rng(seed)
    return base[rng.integers(0, len(base), n)]


def _fit_report(model: PhotoDNetwork, name: str, seconds: float) -> None:
    meta = model.training_metadata_
    status = "met" if seconds <= TRAIN_SECONDS_TARGET else "NOT met"
    print(
        f"fit [{name}] on {meta['device']} ({meta['parallel']}): {seconds:.1f} s (target <= "
        f"{TRAIN_SECONDS_TARGET:.0f} s: {status}); rows {meta['n_rows']}, excluded "
        f"{meta['n_excluded_nonfinite']}, train {meta['n_train']}, "
        f"validation {meta['n_validation']}"
    )
    for i, run in enumerate(model.history_["primary_runs"]):
        print(
            f"  moments run {i}: {run['epochs_run']} epochs (best {run['best_epoch']}), "
            f"{run['seconds']:.1f} s, best validation loss {run['best_val_loss']:.4f}"
        )
    sec = model.history_["secondary"]
    print(
        f"  secondary: {sec['epochs_run']} epochs (best {sec['best_epoch']}), "
        f"{sec['seconds']:.1f} s, best validation loss {sec['best_val_loss']:.5f}"
    )


def _fit_variant(job: tuple[int, bool, int, str]) -> dict[str, float]:
    """Fit one (seed, batch_norm) variant on its own synthetic set; returns its scores."""
    seed, batch_norm, n_train, device = job
    features, label_mean, label_sigma = make_training_set(n_train, seed=100 + seed)
    spec = NetworkSpec.paper_default(batch_norm=batch_norm)
    model = PhotoDNetwork("sdss", spec=spec, seed=seed, device=device, n_threads=2)
    start = time.perf_counter()
    model.fit(features, label_mean, label_sigma)
    meta = model.training_metadata_
    return {
        "seed": seed,
        "batch_norm": batch_norm,
        "moments": meta["validation_loss"],
        "secondary": meta["secondary_validation_loss"],
        "epochs": max(meta["epochs_run"]),
        "seconds": time.perf_counter() - start,
    }


def compare_batch_norm(seeds: list[int], n_train: int, device: str, jobs: int) -> None:
    """Validation losses with and without batch normalisation over several seeds and sets."""
    tasks = [(seed, bn, n_train, device) for seed in seeds for bn in (False, True)]
    if jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            rows = list(pool.map(_fit_variant, tasks))
    else:
        rows = [_fit_variant(task) for task in tasks]
    print("seed  batch_norm  moments_val_loss  secondary_val_loss  max_epochs  fit_s")
    for r in rows:
        print(
            f"{r['seed']:>4}  {str(r['batch_norm']):>10}  {r['moments']:>16.4f}  "
            f"{r['secondary']:>18.5f}  {r['epochs']:>10}  {r['seconds']:>5.1f}"
        )
    by = {bn: {r["seed"]: r for r in rows if r["batch_norm"] == bn} for bn in (False, True)}
    wins = sum(by[True][s]["moments"] < by[False][s]["moments"] for s in seeds)
    sec_wins = sum(by[True][s]["secondary"] < by[False][s]["secondary"] for s in seeds)
    for bn in (False, True):
        label = "batch norm" if bn else "no batch norm"
        mean = {k: np.mean([r[k] for r in by[bn].values()]) for k in ("moments", "secondary")}
        seconds = np.mean([r["seconds"] for r in by[bn].values()])
        print(
            f"{label:>13}: mean moments loss {mean['moments']:.4f}, "
            f"mean secondary loss {mean['secondary']:.5f}, mean fit {seconds:.1f} s"
        )
    print(
        f"batch norm validates better for the moments network in {wins}/{len(seeds)} sets and "
        f"for the secondary network in {sec_wins}/{len(seeds)}"
    )


def train_and_check(n_train: int, seed: int, device: str) -> PhotoDNetwork:
    """Train both networks on the synthetic set and print the time and accuracy."""
    features, label_mean, label_sigma = make_training_set(n_train)
    model = PhotoDNetwork("sdss", seed=seed, device=device)
    start = time.perf_counter()
    model.fit(features, label_mean, label_sigma, metadata={"source": "synthetic benchmark"})
    _fit_report(model, "paper default", time.perf_counter() - start)

    # accuracy on fresh labelled stars
    test_x, test_mean, test_sigma = make_training_set(20_000, seed=7, missing_fraction=0.0)
    pred = model.predict(test_x)
    ok = ~pred["invalid_input"]
    print(
        f"fresh stars: {ok.sum()} valid, {pred['invalid_input'].sum()} invalid (NaN colours), "
        f"{pred['out_of_domain'].sum()} out of the training domain"
    )
    for j, p in enumerate(("Mr", "Ar", "FeH")):
        resid = pred[f"{p}_mean"][ok] - test_mean[ok, j]
        pull = resid / pred[f"{p}_sigma"][ok]
        print(
            f"  {p}: rms(mean - label) {np.sqrt(np.mean(resid**2)):.3f}, "
            f"median sigma_nn {np.median(pred[f'{p}_sigma_nn'][ok]):.3f}, "
            f"median sigma_bayes {np.median(pred[f'{p}_sigma_bayes'][ok]):.3f} "
            f"(label {np.median(test_sigma[ok, j]):.3f}), std(residual / sigma) {np.std(pull):.2f}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(os.path.join(tmp, "model.safetensors"))
        print(f"artefact size: {path.stat().st_size / 1024:.0f} KiB")
    return model


def _device_rate(model: PhotoDNetwork, rows: torch.Tensor, repeats: int) -> float:
    """Median rows/s of :meth:`PhotoDNetwork.predict_tensor` (CUDA events, after warm-up)."""
    times = []
    for _ in range(repeats + 2):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model.predict_tensor(rows)
        stop.record()
        torch.cuda.synchronize(rows.device)
        times.append(start.elapsed_time(stop) / 1e3)
    return len(rows) / float(np.median(times[2:]))


def _largest_difference(model: PhotoDNetwork, rows: torch.Tensor, reference: dict) -> float:
    got = model.predict_tensor(rows)
    return max(
        float(np.nanmax(np.abs(got[k].cpu().numpy() - reference[k])))
        for k in reference
        if got[k].dtype.is_floating_point
    )


def _print_rate(label: str, n: int, rate: float, worst: float) -> None:
    status = "met" if rate >= GPU_STARS_PER_SECOND_TARGET else "NOT met"
    print(
        f"predict_tensor {n:,} rows resident, {label}: {rate / 1e6:.0f} M stars/s "
        f"(target >= {GPU_STARS_PER_SECOND_TARGET / 1e6:.0f} M/s: {status}); "
        f"largest |GPU - CPU| {worst:.1e}",
        flush=True,
    )


def time_on_device(model: PhotoDNetwork, x: np.ndarray, path: Path, repeats: int = 20) -> None:
    """Throughput of :meth:`PhotoDNetwork.predict_tensor` with the rows already in device
    memory: the fused Triton kernel (at several settings) and, in the same run, the
    layer-by-layer cuBLAS path of a second copy of the model. Each line gives the largest
    difference from the CPU prediction of the first 100,000 rows."""
    device = torch.device("cuda")
    rows = torch.from_numpy(x.astype(np.float32)).to(device)
    head = rows[:100_000]
    reference = PhotoDNetwork.load(path, device="cpu").predict(x[:100_000])
    name = torch.cuda.get_device_name(device)
    print(f"{name}: default backend {model.inference_backend(device)}")
    if model.inference_backend(device) == "triton":
        default = (nn_triton.BLOCK_ROWS, nn_triton.NUM_WARPS, nn_triton.PRECISION)
        for setting in TRITON_SETTINGS:
            nn_triton.BLOCK_ROWS, nn_triton.NUM_WARPS, nn_triton.PRECISION = setting
            label = f"triton, {setting[0]} rows x {setting[1]} warps, {setting[2]}"
            label += " (default)" if setting == default else ""
            try:
                worst = _largest_difference(model, head, reference)
                _print_rate(label, len(x), _device_rate(model, rows, repeats), worst)
            except Exception as exc:  # a setting the compiler rejects: report, go on
                print(f"{label}: failed ({type(exc).__name__}: {exc})")
        nn_triton.BLOCK_ROWS, nn_triton.NUM_WARPS, nn_triton.PRECISION = default
    nn_triton.ENABLED = False
    layered = PhotoDNetwork.load(path, device="cuda")
    label = f"{layered.inference_backend(device)} (layer by layer)"
    worst = _largest_difference(layered, head, reference)
    _print_rate(label, len(x), _device_rate(layered, rows, repeats), worst)
    nn_triton.ENABLED = True


def compare_with(revision: str, model: PhotoDNetwork, x: np.ndarray) -> None:
    """Time the CPU inference of ``src/photodist/nn.py`` at ``revision`` against the current
    code, alternately on the same model and rows (best of 5 each), and compare the outputs."""
    with tempfile.TemporaryDirectory() as workdir:
        path = model.save(Path(workdir) / "model.safetensors")
        old_model = module_at(revision, "nn", workdir).PhotoDNetwork.load(path, device="cpu")
        new_model = PhotoDNetwork.load(path, device="cpu")
        old_out, new_out = old_model.predict(x), new_model.predict(x)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(5):
            for name, net in (("old", old_model), ("new", new_model)):
                start = time.perf_counter()
                net.predict(x)
                times[name].append(time.perf_counter() - start)
    old_rate, new_rate = (len(x) / min(times[k]) / 1e6 for k in ("old", "new"))
    print(
        f"{revision}: {old_rate:.2f} M stars/s, current: {new_rate:.2f} M stars/s (cpu, "
        f"best of 5, alternately); speed-up {new_rate / old_rate:.2f}x"
    )
    worst = max(
        float(np.nanmax(np.abs(new_out[k].astype(np.float64) - old_out[k])))
        for k in new_out
        if k in old_out
    )
    changed = sum(int((new_out[k] != old_out[k]).sum()) for k in FLAG_KEYS)
    print(f"largest output change: {worst:.2e}; flags changed on {changed} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-predict", type=int, default=2_000_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-batch-norm",
        action="store_true",
        help="only compare validation losses with and without batch normalisation",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds for the comparison")
    parser.add_argument("--jobs", type=int, default=1, help="parallel fits for the comparison")
    parser.add_argument(
        "--batch-sizes",
        default="",
        help="comma-separated inference chunk sizes to time in addition to the default",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile one prediction from host arrays"
    )
    parser.add_argument("--model", type=Path, default=None, help="time this saved model")
    parser.add_argument(
        "--compare-with", metavar="REV", help="git revision whose CPU inference to time against"
    )
    parser.add_argument("--save-model", type=Path, default=None, help="save the trained model")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if args.compare_batch_norm:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        compare_batch_norm(seeds, args.n_train, args.device, args.jobs)
        return

    if args.model is not None:
        model = PhotoDNetwork.load(args.model, device=args.device)
        print(f"loaded {args.model} (trained on {model.training_metadata_['device']})")
    else:
        model = train_and_check(args.n_train, args.seed, args.device)
        if args.save_model is not None:
            print(f"saved {model.save(args.save_model)}")

    x = make_inference_set(args.n_predict)
    sizes = [None] + [int(s) for s in args.batch_sizes.split(",") if s]
    for size in sizes:
        model.predict_batch_size = size
        model.predict(x[:100_000])  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model.predict(x)
            times.append(time.perf_counter() - start)
        best_time = min(times)
        rate = len(x) / best_time
        status = "met" if rate >= STARS_PER_SECOND_TARGET else "NOT met"
        print(
            f"predict {len(x):,} rows from host arrays on {resolve_device(model.device)} "
            f"({model.inference_backend()}) "
            f"(chunk {size or 'default'}): best of 3 {best_time:.3f} s "
            f"= {rate / 1e6:.2f} M stars/s (target >= 2 M/s: {status}); "
            f"all runs {', '.join(f'{t:.3f}' for t in times)} s"
        )
    if args.compare_with:
        compare_with(args.compare_with, model, x)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(model.predict, x)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(14)
    if torch.cuda.is_available() and resolve_device(model.device).type == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            time_on_device(model, x, model.save(Path(tmp) / "model.safetensors"))


if __name__ == "__main__":
    main()
