"""How often a training run is ruined by a loss spike, with and without the rollback.

Labels: 10,000 stratified stars of a simulated LSST cone (l = 60°, b = 60°, radius 3°, SNR > 5
in all bands) labelled by the Bayesian estimator with the given error floor; 5,000 other stars
of the cone, labelled the same way, are held out. For each seed, one run of the moments network
(``n_runs=1``, 512 epochs, Adam learning rate 1e-2, the pipeline's training) is trained with the
default rollback (``divergence_factor=3``) and without it (``None``), and the NN-vs-Bayes σ_G of
M_r, A_r and [Fe/H] on the held-out stars is printed, with the epochs the rollback undid and
the final training loss (a run ruined by a spike ends far above the others).

Usage: ``python validation/training_robustness.py [--floor 0.02] [--seeds 6]
[--factors 3,2,none]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesEstimator
from photodist.evaluate import snr_mask
from photodist.locus import build_locus
from photodist.nn import PARAMETERS, PhotoDNetwork
from photodist.pipeline import PipelineConfig, choose_training_subsample, posterior_grid
from photodist.priors import build_patch_priors
from photodist.simulate import simulate_patch

CONE = (60.0, 60.0, 3.0)


def sigma_g(x: np.ndarray) -> float:
    """Robust width: 0.7413 times the interquartile range of the finite values."""
    q25, q75 = np.percentile(x[np.isfinite(x)], [25, 75])
    return float(0.7413 * (q75 - q25))


def labelled_sets(floor: float) -> dict[str, np.ndarray]:
    """Features and Bayesian labels (means, stds) of the training and held-out stars."""
    locus = build_locus()
    sim = simulate_patch(cone=CONE, r_max=25.5, seed=0, locus=locus)
    frame = sim[snr_mask(sim, "lsst", 5.0)].reset_index(drop=True)
    phot = photometry_from_frame(frame, "lsst")
    prior = build_patch_priors(cone=CONE, locus=locus, seed=1)
    config = PipelineConfig()
    train = choose_training_subsample(phot, 10_000, "stratified", 0)
    rest = np.setdiff1d(np.arange(len(phot)), train)
    held = np.sort(np.random.default_rng(5).choice(rest, 5000, replace=False))
    estimator = BayesEstimator(posterior_grid(locus, config), prior, config.bayes_config(floor))
    sets = {}
    for name, rows in (("train", train), ("held", held)):
        result = estimator.predict(phot.subset(rows))
        sets[f"{name}_x"] = phot.subset(rows).features()
        sets[f"{name}_mean"] = result[[f"{p}_mean" for p in PARAMETERS]].to_numpy()
        sets[f"{name}_sigma"] = result[[f"{p}_std" for p in PARAMETERS]].to_numpy()
    print(f"{len(frame):,} stars with SNR > 5; {len(train):,} labelled, {len(held):,} held out")
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor", type=float, default=0.02, help="colour-error floor (mag)")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument(
        "--factors", default="3,none", help="divergence factors to compare ('none': no rollback)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    factors = [None if f.strip().lower() == "none" else float(f) for f in args.factors.split(",")]
    sets = labelled_sets(args.floor)
    print("seed  rollback  sigma_G Mr / Ar / FeH     epochs undone        final train loss")
    for seed in range(args.seeds):
        for factor in factors:
            model = PhotoDNetwork(
                "lsst",
                seed=seed,
                n_runs=1,
                max_epochs=512,
                learning_rate=1e-2,
                n_threads=1,
                divergence_factor=factor,
            )
            model.fit(sets["train_x"], sets["train_mean"], sets["train_sigma"])
            pred = model.predict(sets["held_x"])
            widths = [
                sigma_g(pred[f"{p}_mean"] - sets["held_mean"][:, j])
                for j, p in enumerate(PARAMETERS)
            ]
            run = model.history_["primary_runs"][0]
            print(
                f"{seed:4d}  {str(factor):>8s}  {widths[0]:.4f} / {widths[1]:.4f} / "
                f"{widths[2]:.4f}  {str(run['rollbacks']):20s} {run['train_loss'][-1]:8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
