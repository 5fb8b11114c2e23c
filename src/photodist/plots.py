"""Figures shared by the CLI, the report and the validation scripts (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from photodist.locus import COLOR_NAMES, Locus  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from photodist.posterior import StarPosterior


def save_figure(fig: Figure, path: str | Path, dpi: int = 80) -> Path:
    """Lay out ``fig``, write it to ``path`` (parent folders created) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def color_color_figure(
    locus: Locus,
    path: str | Path,
    star_colors: np.ndarray | None = None,
    title: str = "Stellar locus",
    feh_values: tuple[float, ...] = (-2.0, -1.0, 0.0),
) -> Path:
    """Draw u-g vs g-r, g-r vs r-i and r-i vs i-z for the locus (and optional stars).

    Parameters
    ----------
    locus
        The stellar locus; one line per [Fe/H] in ``feh_values`` (nearest grid row).
    path
        Output PNG path; parent folders are created.
    star_colors
        Optional (N, >=4) array of dereddened u-g, g-r, r-i, i-z to scatter underneath.
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    pairs = [(0, 1), (1, 2), (2, 3)]
    labels = [f"{c[0]}-{c[1]} (mag)" for c in COLOR_NAMES]
    for ax, (i, j) in zip(axes, pairs, strict=True):
        if star_colors is not None:
            ax.scatter(star_colors[:, i], star_colors[:, j], s=2, c="0.45", label="stars")
        for k, feh in enumerate(feh_values):
            row = int(np.argmin(np.abs(locus.feh - feh)))
            ms = ~locus.giant[row]
            ax.plot(
                locus.colors[row, ms, i],
                locus.colors[row, ms, j],
                lw=1.5,
                color=f"C{k}",
                label=f"main sequence [Fe/H] = {locus.feh[row]:+.1f}",
            )
            ax.plot(
                locus.colors[row, ~ms, i],
                locus.colors[row, ~ms, j],
                lw=1.5,
                ls="--",
                color=f"C{k}",
                label=f"giant branch [Fe/H] = {locus.feh[row]:+.1f}",
            )
        ax.set_xlabel(labels[i])
        ax.set_ylabel(labels[j])
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=90)


def posterior_figure(posterior: StarPosterior, path: str | Path, title: str | None = None) -> Path:
    """Draw one star's posterior: the joint ([Fe/H], M_r) mass and the M_r, [Fe/H], A_r and
    Q_r marginals, with their 16/50/84 percentiles (dashed).

    Parameters
    ----------
    posterior
        From :func:`photodist.posterior.star_posterior`.
    path
        Output PNG path; parent folders are created.
    """
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8))
    joint = np.ma.masked_less_equal(posterior.joint, 1e-6 * posterior.joint.max())
    axes[0].pcolormesh(posterior.mr, posterior.feh, np.ma.log10(joint), shading="nearest")
    axes[0].set_xlabel("M_r (mag)")
    axes[0].set_ylabel("[Fe/H] (dex)")
    axes[0].set_title("log10 joint mass (6 decades)")
    step = {
        "Mr": (posterior.mr, posterior.mr_mass, "M_r (mag)"),
        "FeH": (posterior.feh, posterior.feh_mass, "[Fe/H] (dex)"),
        "Ar": (posterior.ar, posterior.ar_density, "A_r (mag)"),
        "Qr": (posterior.qr, posterior.qr_density, "Q_r = M_r + A_r (mag)"),
    }
    for ax, (name, (x, y, label)) in zip(axes[1:], step.items(), strict=True):
        if name in ("Mr", "FeH"):
            ax.step(x, y, where="mid", color="C0")
        else:
            ax.plot(x, y, color="C0")
        for value in posterior.percentiles(name):
            ax.axvline(value, color="C1", ls="--", lw=1)
        ax.set_xlabel(label)
        ax.set_yticks([])
    fig.suptitle(title or f"row {posterior.row}: posterior (chi2min {posterior.chi2min:.2f})")
    return save_figure(fig, path)
