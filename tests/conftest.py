"""Shared fixtures: the reference data beside the repository and cached loci."""

from __future__ import annotations

from pathlib import Path

import pytest

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
