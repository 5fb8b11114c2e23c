"""SDSS Stripe 82 end to end: photodist on real stars, checked against independent relations.

Runs the hybrid pipeline (the 3,981 stars are fewer than a training set, so every star gets the
Bayesian estimate) on ``../shared/data/s82_0_5`` with the SDSS band set, the catalogue's SFD
``Ar`` as the A_r-prior bound, and (a) priors from the Galaxy model for that sky position and
(b) the TRILEGAL prior maps in ``../shared/data/s82_priors``. Prints:

* how much the answers move between the two priors (median and σ_G of the differences);
* [Fe/H] against the Ivezić et al. (2008) photometric metallicity of F/G dwarfs
  (0.2 < g-r < 0.6 dereddened, u error < 0.03);
* A_r posterior medians against SFD for stars with DM > 10 (beyond the dust);
* the chi2min distribution and the flag fractions;
* the error-model check: how much the colours scatter beyond their quoted errors.

``--independent-colors`` uses the paper's chi2 (independent colour errors) instead of the
covariance of adjacent colours. ``--dust-prior profile`` adds the A_r prior of the patch's
fitted dust profile (``photodist.dust_profile``) and prints the profile.

Usage: ``python validation/s82_end_to_end.py [--out DIR] [--independent-colors]
[--dust-prior profile]`` (``--out`` writes both result tables).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from photodist.bands import SDSS
from photodist.bayes import Flags
from photodist.io import read_catalog
from photodist.locus import build_locus
from photodist.pipeline import PipelineConfig, run_patch
from photodist.priors import galaxy_prior_for_stars, read_trilegal_prior_catalog
from photodist.report import error_model_note

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Ivezić et al. (2008, ApJ 684, 287) photometric metallicity, x = u-g, y = g-r (dereddened)
FEH_PHOT = (-13.13, 14.09, 28.04, -5.51, -5.90, -58.68, 9.14, -20.61, 0.0, 58.20)


def photometric_feh(ug: np.ndarray, gr: np.ndarray) -> np.ndarray:
    """[Fe/H] of F/G dwarfs from u-g and g-r (Ivezić et al. 2008, eq. 4)."""
    a, b, c, d, e, f, g, h, i, j = FEH_PHOT
    x, y = ug, gr
    return (
        a
        + b * x
        + c * y
        + d * x * y
        + e * x**2
        + f * y**2
        + g * x**2 * y
        + h * x * y**2
        + i * x**3
        + j * y**3
    )


def sigma_g(x: np.ndarray) -> float:
    """0.7413 times the interquartile range."""
    q25, q75 = np.nanpercentile(x, [25, 75])
    return float(0.7413 * (q75 - q25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Folder for the result tables.")
    parser.add_argument(
        "--independent-colors", action="store_true", help="chi2 without the colour covariance"
    )
    parser.add_argument("--dust-prior", choices=["flat", "profile"], default="flat")
    args = parser.parse_args()
    stars = read_catalog(SHARED / "s82_0_5")
    locus = build_locus()
    config = PipelineConfig(
        band_set="sdss",
        seed=0,
        color_covariance=not args.independent_colors,
        dust_prior=args.dust_prior,
    )
    ours = galaxy_prior_for_stars(
        stars["ra"], stars["dec"], locus=locus, ar_inf=float(stars["Ar"].median())
    )
    trilegal_maps = read_trilegal_prior_catalog(SHARED / "s82_priors", locus)
    # the order-5 TRILEGAL pixels tile the order-4 patch: use the first (they are similar)
    trilegal = trilegal_maps[min(trilegal_maps)]
    results = {}
    for name, prior in (("galaxy model", ours), ("TRILEGAL", trilegal)):
        result, timings, _ = run_patch(stars, prior, locus, config, keep=("ra", "dec"))
        results[name] = result
        print(
            f"{name} prior: {len(result)} stars in {timings['total']:.1f} s, "
            f"methods {result['method'].value_counts().to_dict()}"
        )
        fit = result.attrs["photodist_pipeline"].get("dust_profile")
        if fit is not None:
            described = (
                f"A_r / SFD {np.round(fit['knots_mu'], 3).tolist()} at r - M_r "
                f"{np.round(fit['knots_x'], 2).tolist()}, width {fit['sigma']:.3f} mag, "
                f"log evidence over the flat prior {fit['log_evidence_gain']:+.3f} per star "
                f"({fit['n_params']} parameters)"
                if fit["fitted"]
                else fit["reason"]
            )
            print(f"  dust profile: {described}")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            result.to_parquet(args.out / f"s82_{name.split()[0].lower()}.parquet")

    print("\nerror-model check (colour scatter beyond the quoted errors):")
    for name, res in results.items():
        print(f"  {name:12s} {error_model_note(res.attrs['photodist_pipeline']['error_floor'])}")

    a, b = results["galaxy model"], results["TRILEGAL"]
    print("\nTRILEGAL minus galaxy-model prior (median, sigma_G):")
    for p in ("Mr", "FeH", "Ar", "DM"):
        d = b[f"{p}_mean"] - a[f"{p}_mean"]
        print(f"  {p:4s} {np.nanmedian(d):+.3f} {sigma_g(d):.3f}")
    # which prior describes the colours better: the log evidence of the same stars
    gain = (b["log_evidence"] - a["log_evidence"]).to_numpy()
    both = np.isfinite(gain)
    print(
        f"  log evidence, TRILEGAL minus galaxy model: {np.mean(gain[both]):+.3f} per star "
        f"({both.sum()} stars; positive: TRILEGAL's prior describes their colours better)"
    )

    reddening = dict(zip(SDSS.colors, SDSS.reddening_vector(), strict=True))
    ug = stars["ug"].to_numpy(float) - reddening["ug"] * stars["Ar"].to_numpy(float)
    gr = stars["gr"].to_numpy(float) - reddening["gr"] * stars["Ar"].to_numpy(float)
    fg = (gr > 0.2) & (gr < 0.6) & (stars["uErr"].to_numpy(float) < 0.03)
    feh_phot = photometric_feh(ug, gr)
    print(
        f"\n[Fe/H] vs Ivezić et al. (2008) photometric metallicity, {fg.sum()} F/G dwarfs "
        "(target: median <= 0.1 dex, sigma_G <= 0.2 dex):"
    )
    for name, res in results.items():
        d = res["FeH_mean"].to_numpy() - feh_phot
        print(f"  {name:12s} median {np.nanmedian(d[fg]):+.3f}  sigma_G {sigma_g(d[fg]):.3f}")

    print("\nA_r posterior median vs SFD for stars with DM > 10 (target: median within 0.05):")
    for name, res in results.items():
        far = res["DM_mean"].to_numpy() > 10
        d = res["Ar_mean"].to_numpy() - stars["Ar"].to_numpy(float)
        print(f"  {name:12s} {far.sum()} stars, median A_r - SFD {np.nanmedian(d[far]):+.3f}")

    print("\nchi2min percentiles (50/90/99) and flag fractions:")
    for name, res in results.items():
        chi2 = res["chi2min"].to_numpy() if "chi2min" in res else np.array([np.nan])
        flags = res["flags"].to_numpy()
        parts = [
            f"{k} {np.mean(flags & v > 0):.3f}"
            for k, v in Flags.describe().items()
            if np.any(flags & v)
        ]
        print(
            f"  {name:12s} chi2 {np.nanpercentile(chi2, [50, 90, 99]).round(2)}; "
            + ", ".join(parts)
        )

    print("\nwhat the flagged stars are (galaxy-model prior; medians of r and dereddened colours):")
    res = results["galaxy model"]
    flags = res["flags"].to_numpy()
    gi = gr + stars["ri"].to_numpy(float) - reddening["ri"] * stars["Ar"].to_numpy(float)
    r = stars["rmag"].to_numpy(float)
    print(
        f"  {'all stars':14s} n={len(r):5d} r {np.median(r):5.2f} u-g {np.median(ug):5.2f} "
        f"g-r {np.median(gr):5.2f} g-i {np.median(gi):5.2f}"
    )
    for key, bit in Flags.describe().items():
        sel = flags & bit > 0
        if sel.any() and bit != Flags.NO_PRIOR:
            print(
                f"  {key:14s} n={sel.sum():5d} r {np.median(r[sel]):5.2f} "
                f"u-g {np.median(ug[sel]):5.2f} g-r {np.median(gr[sel]):5.2f} "
                f"g-i {np.median(gi[sel]):5.2f}  (g-i < 0.2: {np.mean(gi[sel] < 0.2):.0%}, "
                f"u error > 0.1: {np.mean(stars['uErr'].to_numpy(float)[sel] > 0.1):.0%})"
            )


if __name__ == "__main__":
    main()
