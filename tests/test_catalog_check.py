import json

import cdshealpix.nested as chp
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from photodist.catalog_check import GALAXY_PRIOR_R_RANGE, check_catalog
from photodist.cli import cli


def _catalogue(n: int = 400, seed: int = 3) -> pd.DataFrame:
    """SDSS-like stars in two distant patches, with known bad rows."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(15.0, 22.0, n)
    # the centres of two order-4 patches (~3.7 deg across), stars within 0.1 deg of them
    lon, lat = chp.healpix_to_lonlat(np.array([100, 2000]), 4)
    first = np.arange(n) < n // 4
    frame = pd.DataFrame(
        {
            "ra": np.where(first, lon.deg[0], lon.deg[1]) + rng.uniform(-0.1, 0.1, n),
            "dec": np.where(first, lat.deg[0], lat.deg[1]) + rng.uniform(-0.1, 0.1, n),
            "Ar": rng.uniform(0.05, 0.15, n),
            **{
                f"{b}mag": r + off
                for b, off in zip("ugriz", (1.5, 0.5, 0.0, -0.2, -0.3), strict=True)
            },
            **{f"{b}Err": np.full(n, 0.03) for b in "ugriz"},
        }
    )
    frame.loc[0, "rmag"] = np.nan  # NO_R
    frame.loc[1, ["uErr", "gErr", "iErr"]] = -1.0  # no usable colour
    frame.loc[2, "umag"] = 99.0  # sentinel: COLOR_UNUSABLE
    frame.loc[3, "uErr"] = 0.5  # SNR < 5 in u, still usable
    frame.loc[4, "rmag"] = GALAXY_PRIOR_R_RANGE[1] + 0.4  # R_OUTSIDE_PRIOR
    frame.loc[5, "Ar"] = -1.0  # not a map value
    frame.loc[6, "ra"] = np.nan  # no position
    return frame


def test_check_counts_what_the_estimators_will_flag(tmp_path):
    frame = _catalogue()
    path = tmp_path / "stars.parquet"
    frame.to_parquet(path)
    found = check_catalog(path, "sdss")
    n = len(frame)
    assert found.readable and found.n_rows == n
    assert found.n_no_r == 1
    assert found.n_too_few_colors == 1
    # row 0: no r (ug, iz stay); row 1: every colour; row 2: the sentinel u
    assert found.n_color_unusable == 3
    assert found.band_usable == {"u": n - 2, "g": n - 1, "r": n - 1, "i": n - 1, "z": n}
    assert found.band_snr5["u"] == n - 3
    assert found.color_usable == {"ug": n - 2, "gr": n - 2, "ri": n - 2, "iz": n - 1}
    assert found.n_r_outside_prior == 1
    assert found.dust_column == "Ar" and found.n_dust_valid == n - 1
    assert found.n_no_position == 1
    # usable stars per patch, as `run` counts them: rows 0-2 (no r, no colour, a sentinel)
    # and 6 (no position) are in the first patch and not counted
    assert sorted(found.stars_per_patch.values()) == [n // 4 - 4, n - n // 4]
    assert found.r_quantiles[2] == pytest.approx(np.nanmedian(frame["rmag"]), abs=0.01)
    assert found.band_error_median["g"] == pytest.approx(0.03, abs=0.001)
    # streamed in small batches: the same findings
    assert check_catalog(path, "sdss", batch_size=37).to_dict() == found.to_dict()
    text = "\n".join(found.lines(n_train=200, min_train=100))
    assert "2 HEALPix order-4 patches" in text and "1 with more than 200 (networks)" in text
    # as `run` decides: no networks with fewer labels than they need
    text = "\n".join(found.lines(n_train=200))
    assert "(networks)" not in text and "below the 1,000 labels networks need" in text
    assert "photodist survey" in text


def test_check_of_an_unreadable_catalogue_says_why(tmp_path):
    path = tmp_path / "stars.csv"
    _catalogue(20).drop(columns=["zErr"]).to_csv(path, index=False)
    found = check_catalog(path, "sdss")
    assert not found.readable and found.n_rows == 20
    assert "zErr" in found.error
    _catalogue(20).to_csv(path, index=False)
    lsst = check_catalog(path, "lsst")
    assert "yErr" in lsst.error and "ugriz (sdss) band set" in lsst.error


def test_check_command(tmp_path):
    frame = _catalogue(100).rename(columns={"ra": "RAJ2000", "dec": "DEJ2000"})
    path = tmp_path / "stars.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "check.json"
    # without --bands a ugriz catalogue is read with the sdss band set, and the switch said
    result = CliRunner().invoke(cli, ["check", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "band set: sdss" in result.output
    assert "ra=RAJ2000" in result.output and "TOO_FEW_COLORS" in result.output
    assert json.loads(out.read_text())["n_no_r"] == 1
    bad = CliRunner().invoke(cli, ["check", str(path), "--bands", "lsst"])  # as asked: no y
    assert bad.exit_code == 1 and "yErr" in bad.output
    # --json keeps an existing file without --overwrite, and the catalogue always (before,
    # `check stars.csv --json stars.csv` replaced the catalogue with the findings)
    before = path.read_bytes()
    for target, message in ((out, "already exists"), (path, "is the input")):
        again = CliRunner().invoke(cli, ["check", str(path), "--json", str(target)])
        assert again.exit_code == 2 and message in again.output, again.output
    again = CliRunner().invoke(cli, ["check", str(path), "--json", str(path), "--overwrite"])
    assert again.exit_code == 2 and path.read_bytes() == before
    again = CliRunner().invoke(cli, ["check", str(path), "--json", str(out), "--overwrite"])
    assert again.exit_code == 0 and json.loads(out.read_text())["n_no_r"] == 1
