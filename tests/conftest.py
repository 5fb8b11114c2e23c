"""Shared fixtures: the reference data beside the repository and cached loci."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photodist.bands import Photometry
from photodist.locus import Locus, build_locus

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
S82_STARS = SHARED_DATA / "s82_0_5"
S82_PRIORS = SHARED_DATA / "s82_priors"


@pytest.fixture(scope="session")
def default_locus() -> Locus:
    return build_locus()


@pytest.fixture(scope="session")
def coarse_locus() -> Locus:
    """The locus on a 0.1 dex x 0.1 mag grid (fast posteriors for tests)."""
    return build_locus(feh_step=0.1, mr_step=0.1)


@pytest.fixture(scope="session")
def s82_stars_path() -> Path:
    if not S82_STARS.exists():
        pytest.skip("reference Stripe 82 data not available")
    return S82_STARS


@pytest.fixture(scope="session")
def s82_priors_path() -> Path:
    if not S82_PRIORS.exists():
        pytest.skip("reference TRILEGAL priors not available")
    return S82_PRIORS


def _band_noise_stars(
    locus, band_set, n, seed, err_range=(0.002, 0.08), point_weights=None, a_max=0.3
):
    """Locus stars whose noise is drawn per band, so adjacent colours covary (-sigma^2 of
    the shared band), as in catalogues of magnitudes; A_r uniform on [0, a_max].

    With ``point_weights`` (one per grid point) the grid points are drawn with those
    probabilities and the true [Fe/H] and M_r uniformly within the point's grid cell: the
    model the estimator's posterior describes for a prior of those weights.
    """
    rng = np.random.default_rng(seed)
    if point_weights is None:
        fi = rng.integers(0, locus.shape[0], n)
        mi = rng.integers(0, locus.shape[1], n)
        feh, mr = locus.feh[fi], locus.mr[mi]
    else:
        weights = np.ravel(point_weights)
        fi, mi = np.divmod(rng.choice(weights.size, n, p=weights / weights.sum()), locus.shape[1])
        cell = rng.uniform(-0.5, 0.5, (2, n))
        feh = locus.feh[fi] + cell[0] * (locus.feh[1] - locus.feh[0])
        mr = locus.mr[mi] + cell[1] * (locus.mr[1] - locus.mr[0])
    a_true = rng.uniform(0.0, a_max, n)
    band_err = np.exp(rng.uniform(*np.log(err_range), (n, band_set.n_colors + 1)))
    band_noise = rng.normal(0, 1, band_err.shape) * band_err
    colors = (
        locus.colors_for(band_set)[fi, mi]
        + a_true[:, None] * band_set.reddening_vector()
        + band_noise[:, :-1]
        - band_noise[:, 1:]
    )
    err = np.hypot(band_err[:, :-1], band_err[:, 1:])
    cov = -(band_err[:, 1:-1] ** 2)
    phot = Photometry(
        band_set, np.full(n, 20.0), band_err[:, 2], colors, err, np.full(n, 0.25), cov
    )
    return phot, mr, feh, a_true


@pytest.fixture(scope="session")
def band_noise_stars():
    """Factory ``(locus, band_set, n, seed, err_range, point_weights, a_max)`` of locus stars
    with per-band noise: ``(photometry, M_r, [Fe/H], A_r)`` truths included."""
    return _band_noise_stars


def _synthetic_labelled_set(n: int, seed: int = 0) -> Any:
    """LSST-like features whose colours follow (M_r, A_r, [Fe/H]); labels are noisy truth."""
    rng = np.random.default_rng(seed)
    mr, ar, feh = rng.uniform(3, 12, n), rng.uniform(0, 0.3, n), rng.uniform(-2, 0, n)
    gi = (mr - 3) / 5 + 0.1 * feh
    colors = gi[:, None] * np.array([0.5, 0.6, 0.4, 0.2, 0.1])
    colors[:, 0] += 0.3 * feh
    colors += ar[:, None] * np.array([0.41, 0.4, 0.24, 0.2, 0.08])
    colors += rng.normal(0, 0.02, colors.shape)
    errors = 0.01 + 0.02 * rng.random((n, 6))
    features = np.column_stack([rng.uniform(16, 24, n), colors, errors])
    truth = np.column_stack([mr, ar, feh])
    sigma = np.tile([0.3, 0.05, 0.2], (n, 1))
    mean = truth + 0.5 * sigma * rng.standard_normal((n, 3))
    from photodist.tune import LabelledSet

    return LabelledSet(features, mean, sigma, "lsst", truth)


@pytest.fixture(scope="session")
def synthetic_set():
    """Factory ``(n, seed)`` of a small synthetic labelled set (``photodist.tune.LabelledSet``)
    for the tuner and the training-size study."""
    return _synthetic_labelled_set
