"""Units and descriptions of the output columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy import units

from photodist.bands import get_band_set, photometry_from_frame
from photodist.bayes import BayesConfig, BayesEstimator
from photodist.output_columns import column_info
from photodist.pipeline import RESULT_COLUMNS


def _bayes_frame(locus) -> pd.DataFrame:
    """A real BayesEstimator output of two stars (one without r)."""
    band_set = get_band_set("sdss")
    rows = {f"{b}mag": [17.0 + k * 0.5, np.nan] for k, b in enumerate("ugriz")}
    rows.update({f"{b}Err": [0.02, 0.02] for b in "ugriz"})
    rows["rmag"] = [18.0, np.nan]
    phot = photometry_from_frame(pd.DataFrame(rows), band_set)
    return BayesEstimator(locus, config=BayesConfig()).predict(phot)


def test_every_estimate_column_has_a_unit_and_description(coarse_locus) -> None:
    names = list(_bayes_frame(coarse_locus).columns) + list(RESULT_COLUMNS)
    for name in names:
        info = column_info(name)
        assert info is not None, name
        assert 0 < len(info.description) <= 62, name
        if info.unit:
            units.Unit(info.unit)  # an astropy unit
    assert column_info("FeH_p84").unit == "dex"
    assert column_info("dist_p50").unit == "pc"
    assert column_info("Mr_entropy_drop").unit == "bit"
    assert column_info("chi2min").unit == ""


@pytest.mark.parametrize("name", ["ra", "umag", "Mr", "Mr_mean_x", "xMr_mean", "Mr_sigma_Bayes"])
def test_other_columns_have_no_info(name: str) -> None:
    assert column_info(name) is None
