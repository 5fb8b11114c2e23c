"""Derive the real-star calibration of the stellar locus ends from SDSS Stripe 82 stars.

Reads the Stripe 82 standard stars (``../shared/data/s82_0_5`` beside the repository, or the
path given as the first argument), dereddens them with their SFD A_r and the default extinction
ratios, and prints median colours in bins of g-i for

* the red end (g-i > 1.6, beyond the Yuan et al. 2015 polynomials): g-r, i-z, u-g;
* the blue end (g-i < 0.4): g-r, i-z, u-g slopes that continue the polynomials blueward.

The printed tables are committed in ``photodist.locus`` (``RED_END_NODES``, ``BLUE_END_SLOPES``).

Usage: ``python validation/derive_locus_calibration.py [path/to/s82_0_5]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from photodist.bands import SDSS

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s82_0_5"
BIN_WIDTH = 0.1
MIN_STARS = 15


def load_dereddened(path: Path) -> pd.DataFrame:
    """Dereddened colours of stars with g, r, i, z errors < 0.03 mag."""
    files = sorted(path.glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    reddening = dict(zip(SDSS.colors, SDSS.reddening_vector(), strict=True))
    out = pd.DataFrame(
        {
            c: frame[c].to_numpy(float) - reddening[c] * frame["Ar"].to_numpy(float)
            for c in SDSS.colors
        }
    )
    out["gi"] = out["gr"] + out["ri"]
    out["uErr"] = frame["uErr"].to_numpy(float)
    good = (frame[["gErr", "rErr", "iErr", "zErr"]].max(axis=1) < 0.03).to_numpy()
    return out[good]


def binned_medians(
    stars: pd.DataFrame, lo: float, hi: float, color: str, max_u_err: float
) -> list[tuple[float, float, int]]:
    """(bin centre in g-i, median colour, count) for bins with enough stars."""
    rows = []
    for left in np.arange(lo, hi - 1e-9, BIN_WIDTH):
        sel = (stars["gi"] >= left) & (stars["gi"] < left + BIN_WIDTH)
        if color == "ug":
            sel &= stars["uErr"] < max_u_err
        n = int(sel.sum())
        if n >= MIN_STARS:
            rows.append(
                (float(np.median(stars.loc[sel, "gi"])), float(np.median(stars.loc[sel, color])), n)
            )
    return rows


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    stars = load_dereddened(path)
    print(f"# {len(stars)} stars with g, r, i, z errors < 0.03 mag")
    print("RED_END_NODES = {")
    for color in ("gr", "iz", "ug"):
        rows = binned_medians(stars, 1.5, 2.9, color, max_u_err=0.05)
        body = ", ".join(f"({x:.3f}, {m:.3f})" for x, m, _ in rows)
        counts = ", ".join(str(n) for *_, n in rows)
        print(f"    # counts per bin: {counts}")
        print(f'    "{color}": ({body}),')
    print("}")
    print("BLUE_END_SLOPES = {")
    for color in ("ug", "gr", "iz"):
        rows = binned_medians(stars, 0.2, 0.4, color, max_u_err=0.03)
        (x0, m0, _), (x1, m1, _) = rows[0], rows[-1]
        print(f'    "{color}": {(m1 - m0) / (x1 - x0):.3f},  # from g-i {x0:.3f} to {x1:.3f}')
    print("}")


if __name__ == "__main__":
    main()
