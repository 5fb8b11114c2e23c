"""Figures shared by the CLI, the report and the validation scripts (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from photodist.locus import COLOR_NAMES, Locus  # noqa: E402


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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
