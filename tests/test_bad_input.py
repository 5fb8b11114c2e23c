"""Bad input never crashes deep inside and never loses a row: a clear error or a flagged row."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesEstimator, Flags
from photodist.cli import cli
from photodist.locus import build_locus

LOCUS = build_locus(feh_step=0.25, mr_step=0.5)
BAD_VALUES = [np.nan, np.inf, -np.inf, 99.0, -99.0, 0.0, -1.0, 1e30]


def _good_frame(n: int) -> pd.DataFrame:
    base = {"u": 21.5, "g": 20.2, "r": 19.7, "i": 19.55, "z": 19.5}
    data = {f"{b}mag": np.full(n, m) for b, m in base.items()}
    data.update({f"{b}Err": np.full(n, 0.03) for b in base})
    data["Ar"] = np.full(n, 0.1)
    return pd.DataFrame(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=1, max_value=12),
    corruptions=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=11),
            st.sampled_from(
                [
                    "umag",
                    "gmag",
                    "rmag",
                    "imag",
                    "zmag",
                    "uErr",
                    "gErr",
                    "rErr",
                    "iErr",
                    "zErr",
                    "Ar",
                ]
            ),
            st.sampled_from(BAD_VALUES),
        ),
        max_size=20,
    ),
)
def test_fuzzed_values_keep_every_row(n, corruptions):
    frame = _good_frame(n)
    for row, column, value in corruptions:
        frame.loc[row % n, column] = value
    result = BayesEstimator(LOCUS).predict(photometry_from_frame(frame, "sdss"))
    assert len(result) == n
    flags = result["flags"].to_numpy()
    estimated = np.isfinite(result["Mr_p50"].to_numpy())
    # every row either has an estimate or says why not
    why_not = Flags.NO_R | Flags.TOO_FEW_COLORS | Flags.POOR_FIT
    assert np.all(estimated | (flags & why_not > 0))
    # rows untouched by corruption are never flagged as having unusable colours
    touched = {row % n for row, _, _ in corruptions}
    for row in set(range(n)) - touched:
        assert not flags[row] & Flags.COLOR_UNUSABLE


def test_non_numeric_column_is_flagged_not_crashed():
    frame = _good_frame(3).astype({"umag": object})
    frame.loc[1, "umag"] = "n/a"
    result = BayesEstimator(LOCUS).predict(photometry_from_frame(frame, "sdss"))
    assert len(result) == 3 and result.loc[1, "flags"] & Flags.COLOR_UNUSABLE


def _run(args):
    return CliRunner().invoke(cli, args)


BAYES_FAST = ["--bands", "sdss", "--feh-step", "0.25", "--mr-step", "0.5", "--flat-prior"]


def test_cli_empty_csv(tmp_path):
    src = tmp_path / "empty.csv"
    src.write_text("")
    result = _run(["bayes", str(src), str(tmp_path / "o.parquet"), *BAYES_FAST])
    assert result.exit_code != 0 and "empty.csv" in result.output
    assert "Traceback" not in result.output


def test_cli_header_only_csv_gives_empty_output(tmp_path):
    src = tmp_path / "header.csv"
    _good_frame(0).to_csv(src, index=False)
    # with the default Galaxy-model prior too: no positions are needed when there are no stars
    for command, options in (
        ("bayes", BAYES_FAST),
        ("bayes", BAYES_FAST[:-1]),
        ("run", ["--bands", "sdss"]),
    ):
        out = tmp_path / f"o_{command}_{len(options)}.parquet"
        result = _run([command, str(src), str(out), *options])
        assert result.exit_code == 0, result.output
        assert len(pd.read_parquet(out)) == 0


def test_cli_truncated_parquet(tmp_path):
    src = tmp_path / "cut.parquet"
    _good_frame(50).to_parquet(src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    result = _run(["bayes", str(src), str(tmp_path / "o.parquet"), *BAYES_FAST])
    assert result.exit_code != 0 and "cut.parquet" in result.output
    assert "Traceback" not in result.output


def test_cli_duplicate_ids_and_order_kept(tmp_path):
    frame = _good_frame(4)
    frame["ra"] = [4.0, 3.0, 2.0, 1.0]
    frame["id"] = [7, 7, 8, 8]
    src = tmp_path / "dup.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "o.parquet"
    result = _run(["bayes", str(src), str(out), *BAYES_FAST, "--keep", "id", "--keep", "ra"])
    assert result.exit_code == 0, result.output
    res = pd.read_parquet(out)
    assert list(res["id"]) == [7, 7, 8, 8] and list(res["ra"]) == [4.0, 3.0, 2.0, 1.0]


def test_cli_unwritable_output(tmp_path):
    src = tmp_path / "in.csv"
    _good_frame(2).to_csv(src, index=False)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = _run(["bayes", str(src), str(blocker / "o.parquet"), *BAYES_FAST])
    assert result.exit_code != 0 and "afile" in result.output
    assert "Traceback" not in result.output


def test_cli_unknown_band_set(tmp_path):
    src = tmp_path / "in.csv"
    _good_frame(2).to_csv(src, index=False)
    result = _run(["bayes", str(src), str(tmp_path / "o.parquet"), "--bands", "johnson"])
    assert result.exit_code != 0 and "johnson" in result.output


@pytest.mark.parametrize("bad", ["umag=", "nonsense"])
def test_cli_bad_column_mapping(tmp_path, bad):
    src = tmp_path / "in.csv"
    _good_frame(2).to_csv(src, index=False)
    result = _run(["bayes", str(src), str(tmp_path / "o.parquet"), *BAYES_FAST, "--column", bad])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
