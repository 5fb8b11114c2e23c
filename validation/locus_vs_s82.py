"""Real-star check of the stellar locus against SDSS Stripe 82 stars.

For stars with all five magnitude errors < 0.03 mag, finds the minimum distance in
(u-g, g-r, r-i, i-z) space between the observed colours and the reddened locus, with A_r free in
[0, 1.3 A_r(SFD) + 0.1] at every grid point. Prints the median and 90th percentile and writes a
colour-colour figure of stars and locus.

Usage: ``python validation/locus_vs_s82.py [path/to/s82_0_5] [--figure out.png]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from photodist.bands import SDSS
from photodist.locus import build_locus
from photodist.plots import color_color_figure

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s82_0_5"


def min_locus_distance(
    colors: np.ndarray,
    a_max: np.ndarray,
    locus_colors: np.ndarray,
    reddening: np.ndarray,
    chunk: int = 64,
) -> np.ndarray:
    """Minimum Euclidean colour distance to the reddened locus, A_r free in [0, a_max]."""
    r2 = reddening @ reddening
    out = np.empty(len(colors))
    for start in range(0, len(colors), chunk):
        c = colors[start : start + chunk, None, :]  # (n, 1, k)
        diff = c - locus_colors[None, :, :]  # (n, J, k)
        a = np.clip(diff @ reddening / r2, 0.0, a_max[start : start + chunk, None])
        resid = diff - a[..., None] * reddening
        out[start : start + chunk] = np.sqrt((resid**2).sum(-1).min(axis=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--figure", default="validation/figures/locus_vs_s82.png")
    args = parser.parse_args()
    files = sorted(Path(args.path).glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    stars = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    errs = stars[[f"{b}Err" for b in SDSS.bands]].to_numpy(float)
    good = (errs < 0.03).all(axis=1)
    stars = stars[good]
    colors = stars[list(SDSS.colors)].to_numpy(float)
    ar = stars["Ar"].to_numpy(float)
    locus = build_locus()
    lc = locus.colors_for(SDSS).reshape(-1, SDSS.n_colors)
    reddening = SDSS.reddening_vector()
    dist = min_locus_distance(colors, 1.3 * ar + 0.1, lc, reddening)
    print(f"stars with all errors < 0.03 mag: {len(stars)}")
    print(
        f"minimum colour distance to the reddened locus: median {np.median(dist):.4f} mag, "
        f"90th percentile {np.percentile(dist, 90):.4f} mag"
    )

    dered = colors - ar[:, None] * reddening
    color_color_figure(
        locus,
        args.figure,
        dered,
        title=f"Stellar locus vs {len(stars)} Stripe 82 stars (dereddened): median distance "
        f"{np.median(dist):.3f} mag, 90th percentile {np.percentile(dist, 90):.3f} mag",
    )
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
