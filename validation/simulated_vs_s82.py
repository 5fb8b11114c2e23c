"""Compare a simulated catalogue with the real SDSS Stripe 82 stars of HEALPix order-4 pixel 0.

The real stars (``../shared/data/s82_0_5`` beside the repository, or the path given as the
first argument) cover the part of the order-4 pixel inside the Stripe 82 strip (Dec < 1.26 deg):
a triangle at the pixel's southern corner. The script simulates the whole pixel (SDSS ugriz,
sightline A_r(inf) = median A_r of the real stars) and keeps the simulated stars inside the same
footprint (Dec between the real stars' extremes); the footprint area follows from the fraction
of uniformly drawn points of the pixel that fall inside it.

The real catalogue is colour-selected: its observed g-i spans 0.207-2.999, with ~90 stars per
0.1 mag just below g-i = 3.0 and none above, so the simulated stars are compared inside the same
window, 0.2 <= g-i < 3.0 (observed colours); counts without the window are printed as well.

Printed: star counts in 1-mag bins of observed r for 15 < r < 21 (acceptance: simulated / real
within a factor 1.5), the same ratio for the literal single-luminosity-function model
(``GalaxyModel(old_population_turnoff=False, same_colour_normalisation=False)``)
for comparison, and counts in bins of g-i with
the model's component mix, where the discrepancies show. The figure
``validation/figures/simulated_vs_s82.png`` shows the counts and the g-r and u-g histograms
(15 < r < 21) for single-epoch SDSS errors and for N-epoch averages like the real catalogue
(N = median number of r-band epochs).

Usage: ``python validation/simulated_vs_s82.py [path/to/s82_0_5]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from photodist.galaxy import COMPONENT_NAMES, GalaxyModel  # noqa: E402
from photodist.locus import build_locus  # noqa: E402
from photodist.simulate import Patch, simulate_patch, uniform_points_in_cells  # noqa: E402

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s82_0_5"
FIGURE = Path(__file__).resolve().parent / "figures" / "simulated_vs_s82.png"
ORDER, PIXEL = 4, 0
R_EDGES = np.arange(15.0, 21.0 + 1e-9, 1.0)
GI_EDGES = np.array([-0.5, 0.4, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0])
MAX_RATIO = 1.5
SEEDS = (0, 1, 2)
#: Observed g-i window of the real catalogue (see the module docstring).
GI_WINDOW = (0.2, 3.0)


def load_real(path: Path) -> pd.DataFrame:
    files = sorted(path.glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def footprint_area(dec_lo: float, dec_hi: float, n: int = 2_000_000) -> float:
    """Area (deg^2) of the pixel between two declinations, by uniform sampling in the pixel."""
    patch = Patch.healpix(ORDER, PIXEL)
    _, dec = uniform_points_in_cells(
        np.full(n, PIXEL, dtype=np.uint64), ORDER, np.random.default_rng(0)
    )
    return patch.area_deg2 * float(np.mean((dec >= dec_lo) & (dec <= dec_hi)))


def simulate(
    real: pd.DataFrame, errors: str, seed: int, galaxy: GalaxyModel | None = None
) -> pd.DataFrame:
    sim = simulate_patch(
        pixel=PIXEL,
        order=ORDER,
        r_max=23.0,
        band_set="sdss",
        errors=errors,
        ar_inf=float(real["Ar"].median()),
        seed=seed,
        locus=build_locus(),
        galaxy=galaxy,
    )
    inside = sim["dec"].between(real["dec"].min(), real["dec"].max())
    sim = sim[inside].copy()
    sim["gi"] = sim["gr"] + sim["ri"]
    return sim


def in_window(frame: pd.DataFrame) -> pd.DataFrame:
    """Stars inside the real catalogue's observed g-i window."""
    return frame[(frame["gi"] >= GI_WINDOW[0]) & (frame["gi"] < GI_WINDOW[1])]


def mean_counts(frames: list[pd.DataFrame]) -> np.ndarray:
    return np.mean([np.histogram(f["rmag"], R_EDGES)[0] for f in frames], axis=0)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    if not path.exists():
        print(f"Stripe 82 stars not found at {path}")
        return 1
    real = load_real(path)
    area = footprint_area(real["dec"].min(), real["dec"].max())
    n_epochs = int(round(real["rNobs"].median()))
    print(
        f"real stars: {len(real):,}; footprint {area:.3f} deg^2 (pixel "
        f"{Patch.healpix(ORDER, PIXEL).area_deg2:.2f} deg^2, Dec {real['dec'].min():.3f}.."
        f"{real['dec'].max():.3f}); A_r = {real['Ar'].median():.3f}; median r epochs "
        f"{n_epochs}"
    )
    print(
        f"real g-i range {real['gi'].min():.3f}..{real['gi'].max():.3f}; simulated stars are "
        f"compared inside {GI_WINDOW[0]} <= g-i < {GI_WINDOW[1]}"
    )
    single_all = [simulate(real, "sdss", s) for s in SEEDS]
    single = [in_window(f) for f in single_all]
    averaged = in_window(simulate(real, f"sdss{n_epochs}", SEEDS[0]))
    literal_model = GalaxyModel(old_population_turnoff=False, same_colour_normalisation=False)
    literal = [in_window(simulate(real, "sdss", s, literal_model)) for s in SEEDS]

    real_counts = np.histogram(real["rmag"], R_EDGES)[0]
    sim_counts = mean_counts(single)
    table = pd.DataFrame(
        {
            "r_lo": R_EDGES[:-1],
            "r_hi": R_EDGES[1:],
            "real": real_counts,
            "sim_all_gi": mean_counts(single_all),
            "simulated": sim_counts,
            "ratio": sim_counts / real_counts,
            "ratio_single_LF": mean_counts(literal) / real_counts,
        }
    )
    table["within_1.5"] = (table["ratio"] <= MAX_RATIO) & (table["ratio"] >= 1 / MAX_RATIO)
    print(
        f"\nStar counts in the footprint (simulated: mean of seeds {SEEDS}; sim_all_gi without "
        "the g-i window; ratio_single_LF: the literal single-LF model)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:7.2f}"))
    print(f"{int(table['within_1.5'].sum())}/{len(table)} r bins within a factor {MAX_RATIO}")

    rows = []
    sel_real = real["rmag"].between(15, 21)
    for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=True):
        in_real = real["rmag"].between(lo, hi, inclusive="left")
        h_real = np.histogram(real.loc[in_real, "gi"], GI_EDGES)[0]
        h_sim = np.mean(
            [
                np.histogram(s.loc[s["rmag"].between(lo, hi, inclusive="left"), "gi"], GI_EDGES)[0]
                for s in single_all
            ],
            axis=0,
        )
        rows.append(
            f"{lo:4.0f}-{hi:2.0f}  real "
            + " ".join(f"{v:5d}" for v in h_real)
            + "   sim "
            + " ".join(f"{v:5.0f}" for v in h_sim)
        )
    print(
        "\nCounts in g-i bins (simulated: all colours) "
        + " ".join(f"[{a:g},{b:g})" for a, b in zip(GI_EDGES[:-1], GI_EDGES[1:], strict=True))
    )
    print("\n".join(rows))
    print("\nSimulated component mix (thin/thick/halo) per r bin, 0.2 <= g-i < 1 and g-i >= 1")
    for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=True):
        parts = []
        for name, sel in (("blue", lambda f: f["gi"] < 1.0), ("red", lambda f: f["gi"] >= 1.0)):
            mix = np.mean(
                [
                    np.bincount(
                        f.loc[f["rmag"].between(lo, hi, inclusive="left") & sel(f), "component"],
                        minlength=3,
                    )
                    for f in single
                ],
                axis=0,
            )
            n_real = int((real["rmag"].between(lo, hi, inclusive="left") & sel(real)).sum())
            parts.append(
                f"{name}: real {n_real:5d} sim "
                + "/".join(f"{v:.0f}" for v in mix)
                + f" = {mix.sum():6.0f}"
            )
        print(f"{lo:4.0f}-{hi:2.0f}  " + "   ".join(parts))
    print(f"(components: {'/'.join(COMPONENT_NAMES)})")
    sim_all = pd.concat(single)
    for name, data in (
        ("real", real[sel_real]),
        ("simulated", sim_all[sim_all["rmag"].between(15, 21)]),
    ):
        blue = np.mean(data["gi"] < 1.0)
        print(f"{name:9s}: fraction with g-i < 1 at 15 < r < 21: {blue:.2f}")
    make_figure(real[sel_real], single, averaged, table, n_epochs, area)
    print(f"figure: {FIGURE.relative_to(Path(__file__).resolve().parents[1])}")
    return 0


def make_figure(
    real: pd.DataFrame,
    single: list[pd.DataFrame],
    averaged: pd.DataFrame,
    table: pd.DataFrame,
    n_epochs: int,
    area: float,
) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    ax = axes[0]
    centres = 0.5 * (table["r_lo"] + table["r_hi"])
    ax.semilogy(centres, table["real"] / area, "ko-", label="S82 standard stars")
    ax.semilogy(centres, table["simulated"] / area, "C0s-", label="photodist simulation")
    ax.fill_between(
        centres,
        table["real"] / area / MAX_RATIO,
        table["real"] / area * MAX_RATIO,
        color="0.85",
        label=f"real x/÷ {MAX_RATIO}",
    )
    ax.set_xlabel("r (1-mag bins)")
    ax.set_ylabel("stars / deg$^2$ / mag")
    ax.legend(fontsize=8)
    ax.set_title(f"counts, {area:.2f} deg$^2$ footprint", fontsize=10)
    sim = single[0]
    sim = sim[sim["rmag"].between(15, 21)]
    avg = averaged[averaged["rmag"].between(15, 21)]
    for ax, color, bins in (
        (axes[1], "gr", np.arange(-0.2, 2.0, 0.05)),
        (axes[2], "ug", np.arange(-0.2, 4.0, 0.1)),
    ):
        ax.hist(real[color], bins, histtype="step", color="k", lw=1.5, label="S82 real")
        ax.hist(
            sim[color],
            bins,
            histtype="step",
            color="C0",
            lw=1.2,
            label="simulated, SDSS single epoch",
        )
        ax.hist(
            avg[color],
            bins,
            histtype="step",
            color="C1",
            lw=1.2,
            ls="--",
            label=f"simulated, {n_epochs}-epoch mean",
        )
        ax.set_xlabel(f"{color[0]}-{color[1]} (observed, not dereddened)")
        ax.set_ylabel("stars per bin (15 < r < 21)")
        ax.legend(fontsize=8)
    axes[1].set_title("g-r", fontsize=10)
    axes[2].set_title("u-g", fontsize=10)
    fig.suptitle(
        "Simulated vs real Stripe 82 stars, HEALPix order-4 pixel 0 footprint", fontsize=11
    )
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=70)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
