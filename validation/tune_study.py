"""Default-budget Hyperband search on a simulated patch, against the paper's architecture.

Simulates a high-latitude patch (l=60, b=60, LSST 10-year errors, SNR > 5 in all bands),
labels 10,000 random stars with the Bayesian estimator (the patch's simulated priors), runs
:func:`photodist.tune.run_tune` with its default budget (the paper default enqueued as trial 0)
and prints the best validation loss, the paper default's loss and rank under the same
protocol (same split, same epochs), the re-checks on other splits (the best searched trials
and the paper default retrained with other seeds), the wall time and the machine load.

Usage: ``python validation/tune_study.py [--jobs 2] [--figure validation/figures/tune_search.png]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from photodist.tune import (
    DEFAULT_N_TRIALS,
    DEFAULT_TIMEOUT,
    labelled_set_from_patch,
    plot_search,
    run_tune,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cone", type=float, nargs=3, default=(60.0, 60.0, 1.0))
    parser.add_argument("--stars", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=DEFAULT_N_TRIALS)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", type=Path, default=None, help="study file (default: temp)")
    parser.add_argument("--figure", type=Path, default=Path("validation/figures/tune_search.png"))
    args = parser.parse_args()

    wall = time.perf_counter()
    load_start = os.getloadavg()
    labelled = labelled_set_from_patch(tuple(args.cone), args.stars, seed=args.seed + 1)
    t_label = time.perf_counter() - wall
    print(f"labelled {len(labelled)} stars of cone {tuple(args.cone)} in {t_label:.0f} s")

    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or Path(tmp) / "tune.journal"
        result = run_tune(
            labelled,
            storage_path=storage,
            n_trials=args.trials,
            timeout=args.timeout,
            n_jobs=args.jobs,
            seed=args.seed,
        )
        plot_search(result.study, args.figure, recommended=result.best_trial)
    total = time.perf_counter() - wall
    load_end = os.getloadavg()
    print(
        f"search: {result.n_trials} trials ({result.n_complete} completed, {result.n_pruned} "
        f"pruned, {result.n_failed} failed) in {result.seconds:.0f} s; total with labelling "
        f"{total:.0f} s on {os.cpu_count()} cores with {args.jobs} workers"
    )
    print(
        "load average (1, 5, 15 min): start "
        + ", ".join(f"{v:.2f}" for v in load_start)
        + "; end "
        + ", ".join(f"{v:.2f}" for v in load_end)
    )
    if result.best_searched_spec is not None:
        print(
            f"lowest search-split loss: {result.best_searched_value:.3f}  "
            f"{result.best_searched_spec.to_json()}"
        )
    print(f"paper default search-split loss: {result.paper_value:.3f}, rank {result.paper_rank}")
    print(
        f"recommended (trial {result.best_trial}, search-split loss {result.best_value:.3f}): "
        f"{result.best_spec.to_json()}"
    )
    print(result.top_trials.drop(columns="spec").head(10).to_string(index=False))
    print(f"figure: {args.figure}")

    if result.recheck is not None:
        print("re-checks (other splits and initialisations, same protocol):")
        shown = result.recheck.drop(columns=["spec", "architecture"])
        print(shown.to_string(index=False, float_format=lambda v: f"{v:8.3f}"))
        print(
            f"recommended (trial {result.best_trial}): re-check mean {result.best_recheck:.3f} "
            f"vs paper default {result.paper_recheck:.3f}"
        )


if __name__ == "__main__":
    main()
