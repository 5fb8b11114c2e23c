"""The paper's Figure 1 on simulated patches: network loss against training-set size.

For a high-latitude (l=60, b=60) and a low-latitude (l=60, b=10) patch (LSST 10-year errors,
SNR > 5 in all bands, the patch's simulated priors), 50,000 + 10,000 stars are simulated and
labelled by the Bayesian estimator; 10,000 form the evaluation set (Bayesian labels and truth).
The paper-default networks (:class:`photodist.nn.PhotoDNetwork`, the package's training
protocol with fewer epochs, see the options) are trained on nested random subsets of the other
50,000 stars for eight log-spaced sizes from 500 to 50,000, with several seeds. Prints the
weighted moments losses NN vs truth, NN vs Bayes and Bayes vs truth, their moving averages and
the smallest size within 5 % of the plateau; draws the figure.

Usage: ``python validation/training_size_study.py [--seeds 2] [--epochs 500] [--csv fits.csv]``
(``--from-csv fits.csv`` redoes the summary and the figure from a saved table).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from photodist.training_size import (
    DEFAULT_SIZES,
    patch_training_size_study,
    plateau_reached,
    plateau_size,
    plot_training_size,
    training_size_curve,
)

PATCHES = {
    "high latitude (l=60, b=60)": (60.0, 60.0, 1.5),
    "low latitude (l=60, b=10)": (60.0, 10.0, 0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per size")
    parser.add_argument("--evaluation", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=500, help="max epochs (moments network)")
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--secondary-epochs", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--csv", type=Path, default=None, help="write the per-fit table here")
    parser.add_argument(
        "--from-csv", type=Path, default=None, help="summarise and plot a saved table instead"
    )
    parser.add_argument("--figure", type=Path, default=Path("validation/figures/training_size.png"))
    args = parser.parse_args()

    load_start = os.getloadavg()
    frames = [] if args.from_csv is None else [pd.read_csv(args.from_csv)]
    for name, cone in PATCHES.items() if args.from_csv is None else ():
        start = time.perf_counter()
        frame = patch_training_size_study(
            cone,
            sizes=args.sizes,
            seeds=tuple(range(args.seeds)),
            n_evaluation=args.evaluation,
            seed=args.seed,
            label=name,
            max_epochs=args.epochs,
            patience=args.patience,
            secondary_max_epochs=args.secondary_epochs,
            progress=lambda message, name=name: print(f"  [{name}] {message}", flush=True),
        )
        print(f"{name}: {time.perf_counter() - start:.0f} s")
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if args.csv is not None:
        frame.to_csv(args.csv, index=False)

    columns = ["nn_vs_truth", "nn_vs_bayes", "bayes_vs_truth"]
    for name in PATCHES:
        curve = training_size_curve(frame[frame["patch"] == name])
        print(f"\n{name} (evaluation set {int(frame['n_evaluation'].iloc[0])} stars)")
        shown = ["size", "n_seeds", *columns, *(f"{c}_smooth" for c in columns[:2])]
        print(curve[shown].to_string(index=False, float_format=lambda v: f"{v:9.4g}"))
        for column in ("nn_vs_truth", "nn_vs_bayes", "nn_vs_truth_mse", "nn_vs_bayes_mse"):
            size = plateau_size(curve, args.tolerance, column)
            note = "" if plateau_reached(curve, args.tolerance, column) else " (no plateau)"
            print(
                f"  smallest size within {args.tolerance:.0%} of the plateau ({column}): "
                f"{size}{note}"
            )
    plot_training_size(frame, args.figure, tolerance=args.tolerance)
    load_end = os.getloadavg()
    print(f"\nfigure: {args.figure}")
    print(
        f"load average (1, 5, 15 min): start {', '.join(f'{v:.2f}' for v in load_start)}; "
        f"end {', '.join(f'{v:.2f}' for v in load_end)}"
    )


if __name__ == "__main__":
    main()
