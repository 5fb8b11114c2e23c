"""Compare photodist prior maps with the TRILEGAL-based prior maps of Stripe 82.

For the three order-5 HEALPix pixels of ``../shared/data/s82_priors`` (beside the repository,
or the path given as the first argument) this script builds photodist's prior maps from its own
Galaxy model (:func:`photodist.priors.build_patch_priors`, sightline A_r(inf) = 0.24 mag, the
SFD value of the Stripe 82 stars there), reads the TRILEGAL maps, and prints per r bin the
median [Fe/H] and median M_r of both (TRILEGAL medians on its own 96 x 36 grid; ours on the
locus grid) averaged over the three pixels, and the component mix of our simulated stars.

Acceptance (r bins 16-24): |median [Fe/H] difference| <= 0.3 dex, |median M_r difference| <=
1.0 mag. The figure ``validation/figures/priors_vs_trilegal.png`` shows both maps per r bin.
``--single-lf`` uses the literal single-luminosity-function model
(``GalaxyModel(old_population_turnoff=False, same_colour_normalisation=False)``)
instead of the default model, for comparison;
it does not overwrite the figure.

Usage: ``python validation/priors_vs_trilegal.py [path/to/s82_priors] [--single-lf]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from photodist.galaxy import GalaxyModel  # noqa: E402
from photodist.locus import build_locus  # noqa: E402
from photodist.priors import R_BIN_CENTRES, build_patch_priors, grid_median  # noqa: E402
from photodist.simulate import simulate_patch  # noqa: E402

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s82_priors"
FIGURE = Path(__file__).resolve().parent / "figures" / "priors_vs_trilegal.png"
ORDER, PIXELS = 5, (0, 1, 2)
AR_INF = 0.24
ACCEPT_RANGE = (16.0, 24.0)
MAX_DFEH, MAX_DMR = 0.3, 1.0
PLOT_BINS = (16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0)


def read_trilegal_native(path: Path, pixel: int) -> dict[float, tuple[np.ndarray, ...]]:
    """TRILEGAL maps on their own grid: r centre -> (feh axis, M_r axis ascending, kde)."""
    file = path / "dataset" / f"Norder={ORDER}" / "Dir=0" / f"Npix={pixel}.parquet"
    out = {}
    for _, row in pd.read_parquet(file).iterrows():
        kde = np.frombuffer(row["kde"], np.float64).reshape(96, 36)
        feh = np.frombuffer(row["xGrid"], np.float64).reshape(96, 36)[0]
        mr = np.frombuffer(row["yGrid"], np.float64).reshape(96, 36)[:, 0]
        order = np.argsort(mr)
        out[round(float(row["rmag"]), 3)] = (feh, mr[order], kde[order].T)  # (n_feh, n_mr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument(
        "--single-lf", action="store_true", help="literal single-luminosity-function model"
    )
    args = parser.parse_args()
    path = args.path
    if not path.exists():
        print(f"TRILEGAL priors not found at {path}")
        return 1
    literal = args.single_lf
    galaxy = GalaxyModel(old_population_turnoff=not literal, same_colour_normalisation=not literal)
    print(f"model: {'single LF for all components' if args.single_lf else 'default'}")
    locus = build_locus()
    ours, tri = {}, {}
    for pixel in PIXELS:
        start = time.perf_counter()
        ours[pixel] = build_patch_priors(
            pixel=pixel, order=ORDER, locus=locus, seed=pixel, ar_inf=AR_INF, galaxy=galaxy
        )
        print(
            f"pixel {pixel}: built prior map in {time.perf_counter() - start:.1f} s "
            f"({ours[pixel].n_stars.min():,}-{ours[pixel].n_stars.max():,} stars per bin)"
        )
        tri[pixel] = read_trilegal_native(path, pixel)

    # component mix of our model per r bin (truth of one simulated pixel, no oversampling)
    sim = simulate_patch(
        pixel=PIXELS[0],
        order=ORDER,
        seed=99,
        r_min=13.5,
        r_max=27.5,
        ar_inf=AR_INF,
        truth_only=True,
        locus=locus,
        galaxy=galaxy,
    )

    rows = []
    for k, centre in enumerate(R_BIN_CENTRES):
        f_o, m_o, f_t, m_t = [], [], [], []
        for pixel in PIXELS:
            fo, mo = ours[pixel].marginal_medians()
            f_o.append(fo[k])
            m_o.append(mo[k])
            feh, mr, kde = tri[pixel][round(float(centre), 3)]
            f_t.append(grid_median(feh, kde.sum(axis=1)))
            m_t.append(grid_median(mr, kde.sum(axis=0)))
        sel = np.abs(sim["rmag_true"] - centre) <= 0.5
        mix = np.bincount(sim.loc[sel, "component"], minlength=3) / max(sel.sum(), 1)
        rows.append(
            {
                "r": centre,
                "FeH_ours": np.mean(f_o),
                "FeH_trilegal": np.mean(f_t),
                "Mr_ours": np.mean(m_o),
                "Mr_trilegal": np.mean(m_t),
                "thin": mix[0],
                "thick": mix[1],
                "halo": mix[2],
            }
        )
    table = pd.DataFrame(rows)
    table["dFeH"] = table["FeH_ours"] - table["FeH_trilegal"]
    table["dMr"] = table["Mr_ours"] - table["Mr_trilegal"]
    in_range = table["r"].between(*ACCEPT_RANGE)
    table["pass"] = (table["dFeH"].abs() <= MAX_DFEH) & (table["dMr"].abs() <= MAX_DMR)
    print("\nMedians per r bin (mean over pixels 0-2); component fractions of our model")
    print(table.to_string(index=False, float_format=lambda v: f"{v:6.2f}"))
    accepted = table.loc[in_range, "pass"]
    print(
        f"\nr bins {ACCEPT_RANGE[0]:g}-{ACCEPT_RANGE[1]:g}: {int(accepted.sum())}/{len(accepted)}"
        f" within |d[Fe/H]| <= {MAX_DFEH} and |dM_r| <= {MAX_DMR}"
    )
    print(
        f"max |d[Fe/H]| = {table.loc[in_range, 'dFeH'].abs().max():.2f} dex, "
        f"max |dM_r| = {table.loc[in_range, 'dMr'].abs().max():.2f} mag"
    )
    if not args.single_lf:
        make_figure(ours[PIXELS[0]], tri[PIXELS[0]], table)
        print(f"figure: {FIGURE.relative_to(Path(__file__).resolve().parents[1])}")
    return 0


def make_figure(ours, tri, table: pd.DataFrame) -> None:
    """Contours of both maps for selected r bins (pixel 0) and the medians against r."""
    fig, axes = plt.subplots(2, 5, figsize=(15, 6.4), constrained_layout=True)
    for ax, centre in zip(axes.ravel()[:-1], PLOT_BINS, strict=True):
        k = int(np.argmin(np.abs(ours.r_centres - centre)))
        dens = ours.density[k]
        feh, mr, kde = tri[round(centre, 3)]
        for grid_f, grid_m, d, color, label in (
            (ours.feh, ours.mr, dens, "C0", "photodist"),
            (feh, mr, kde, "C3", "TRILEGAL"),
        ):
            d = d / d.max()
            ax.contour(grid_f, grid_m, d.T, levels=[0.05, 0.3, 0.7], colors=color, linewidths=1.0)
            ax.plot([], [], color=color, label=label)
        ax.set_title(f"r = {centre:g} ± 0.5", fontsize=9)
        ax.set_xlim(-2.5, 1.0)
        ax.set_ylim(17, -1)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("[Fe/H]", fontsize=8)
        ax.set_ylabel("$M_r$", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    ax = axes.ravel()[-1]
    ax.plot(table["r"], table["Mr_ours"], "C0-", label="$M_r$ photodist")
    ax.plot(table["r"], table["Mr_trilegal"], "C3-", label="$M_r$ TRILEGAL")
    ax2 = ax.twinx()
    ax2.plot(table["r"], table["FeH_ours"], "C0--", label="[Fe/H] photodist")
    ax2.plot(table["r"], table["FeH_trilegal"], "C3--", label="[Fe/H] TRILEGAL")
    ax.axvspan(*ACCEPT_RANGE, color="0.92", zorder=0)
    ax.set_xlabel("r", fontsize=8)
    ax.set_ylabel("median $M_r$ (solid)", fontsize=8)
    ax2.set_ylabel("median [Fe/H] (dashed)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax2.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title("medians, pixels 0-2", fontsize=9)
    fig.suptitle(
        "Prior maps p([Fe/H], $M_r$ | r), Stripe 82 order-5 pixel 0: contours at 5, 30, "
        "70 % of the peak",
        fontsize=10,
    )
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=70)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
