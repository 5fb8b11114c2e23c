"""Benchmark of the photo-D networks: training time and inference throughput.

A synthetic but realistic labelled set (10,000 SDSS-like stars, 10 inputs) stands in for the
Bayesian labels of one sky patch: r ~ U(16, 24); intrinsic colours on a metallicity-dependent
stellar locus; reddening by A_r with the SDSS extinction ratios; photometric errors growing
with magnitude; labels M_r (photometric-parallax relation of Ivezić et al. 2008), A_r and
[Fe/H] with posterior-like noise and widths that grow with the colour errors.

Run ``python benchmarks/bench_nn.py`` (``--help`` for options). Targets: both networks trained
in at most 30 s on a 2-core CPU; inference of at least 2 million stars per second.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from photodist.bands import get_band_set
from photodist.nn import NetworkSpec, PhotoDNetwork

TRAIN_SECONDS_TARGET = 30.0
STARS_PER_SECOND_TARGET = 2.0e6


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


def _validation_loss(model: PhotoDNetwork) -> float:
    return float(model.training_metadata_["validation_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-predict", type=int, default=2_000_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-batch-norm",
        action="store_true",
        help="also train with batch normalisation after every hidden layer and compare",
    )
    parser.add_argument(
        "--batch-sizes",
        default="",
        help="comma-separated inference chunk sizes to time in addition to the default",
    )
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    features, label_mean, label_sigma = make_training_set(args.n_train)
    specs = {"no batch norm": NetworkSpec.paper_default(batch_norm=False)}
    if args.compare_batch_norm:
        specs["batch norm"] = NetworkSpec.paper_default(batch_norm=True)

    models = {}
    for name, spec in specs.items():
        model = PhotoDNetwork("sdss", spec=spec, seed=args.seed, device=args.device)
        start = time.perf_counter()
        model.fit(features, label_mean, label_sigma, metadata={"source": "synthetic benchmark"})
        seconds = time.perf_counter() - start
        meta = model.training_metadata_
        status = "met" if seconds <= TRAIN_SECONDS_TARGET else "NOT met"
        print(
            f"fit [{name}] on {meta['device']}: {seconds:.1f} s (target <= "
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
            f"{sec['seconds']:.1f} s, best validation loss {sec['best_val_loss']:.4f}"
        )
        models[name] = model

    if args.compare_batch_norm:
        losses = {name: _validation_loss(m) for name, m in models.items()}
        best = min(losses, key=losses.__getitem__)
        print("validation moments loss: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        print(f"better validation: {best}")
    model = models["no batch norm"]

    # accuracy on fresh stars against the noiseless generating relations
    test_x, test_mean, test_sigma = make_training_set(20_000, seed=7, missing_fraction=0.0)
    pred = model.predict(test_x)
    for j, p in enumerate(("Mr", "Ar", "FeH")):
        resid = pred[f"{p}_mean"] - test_mean[:, j]
        print(
            f"  {p}: rms(mean - label) {np.sqrt(np.mean(resid**2)):.3f}, "
            f"median sigma {np.median(pred[f'{p}_sigma']):.3f}, "
            f"median sigma_bayes {np.median(pred[f'{p}_sigma_bayes']):.3f} "
            f"(label {np.median(test_sigma[:, j]):.3f})"
        )

    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(os.path.join(tmp, "model.safetensors"))
        print(f"artefact size: {path.stat().st_size / 1024:.0f} KiB")

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
            f"predict {len(x):,} rows (chunk {size or 'default'}): best of 3 {best_time:.3f} s "
            f"= {rate / 1e6:.2f} M stars/s (target >= 2 M/s: {status}); "
            f"all runs {', '.join(f'{t:.3f}' for t in times)} s"
        )


if __name__ == "__main__":
    main()
