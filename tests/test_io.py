"""Tests for catalogue reading and atomic writing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from photodist.io import (
    AtomicParquetWriter,
    CatalogError,
    catalog_columns,
    check_output_path,
    count_rows,
    detect_format,
    hats_partitions,
    iter_catalog_batches,
    read_catalog,
    table_to_frame,
    write_table,
)

SAMPLE_HATS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s82_0_5"
needs_sample = pytest.mark.skipif(
    not (SAMPLE_HATS / "properties").is_file(), reason="sample HATS catalogue not available"
)


def _frame(n: int = 25) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "umag": rng.uniform(15, 22, n),
            "uErr": rng.uniform(0.01, 0.2, n).astype(np.float32),
            "nobs": np.arange(n, dtype=np.int16),
            "name": [f"star_{i}" for i in range(n)],
            "flag": np.arange(n) % 2 == 0,
        }
    )


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------------------------
# format detection
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.parquet", "parquet"),
        ("a.PQ", "parquet"),
        ("a.csv", "csv"),
        ("a.csv.gz", "csv"),
        ("a.fits", "fits"),
        ("a.fit", "fits"),
        ("a.fits.gz", "fits"),
    ],
)
def test_detect_format_by_suffix(tmp_path: Path, name: str, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    assert detect_format(path) == expected


def test_detect_format_by_magic_bytes_and_layout(tmp_path: Path) -> None:
    write_table(_frame(), tmp_path / "a.parquet")
    (tmp_path / "a.parquet").rename(tmp_path / "noext")
    assert detect_format(tmp_path / "noext") == "parquet"

    dataset = tmp_path / "dataset_dir"
    dataset.mkdir()
    write_table(_frame(), dataset / "part.0.parquet")
    assert detect_format(dataset) == "parquet"

    hats_like = tmp_path / "hats_like"
    (hats_like / "dataset" / "Norder=0").mkdir(parents=True)
    assert detect_format(hats_like) == "hats"


def test_detect_format_rejects_unknown_and_missing(tmp_path: Path) -> None:
    weird = tmp_path / "stars.xyz"
    weird.write_text("hello")
    with pytest.raises(CatalogError, match="stars.xyz.*unknown catalogue format"):
        detect_format(weird)
    with pytest.raises(CatalogError, match="nothere.parquet.*no such file"):
        detect_format(tmp_path / "nothere.parquet")
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(CatalogError, match="emptydir"):
        detect_format(empty_dir)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz", ".fits"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    frame = _frame()
    path = write_table(frame, tmp_path / f"cat{suffix}")
    assert path == tmp_path / f"cat{suffix}"
    assert _visible(tmp_path) == [f"cat{suffix}"]  # no temporary file left behind

    back = read_catalog(path)
    assert list(back.columns) == list(frame.columns)
    assert isinstance(back.index, pd.RangeIndex) and back.index[0] == 0
    # numeric columns become plain numpy float64 / int64
    assert back["umag"].dtype == np.float64
    assert back["uErr"].dtype == np.float64
    assert back["nobs"].dtype == np.int64
    assert back["flag"].dtype == bool
    np.testing.assert_array_equal(back["umag"].to_numpy(), frame["umag"].to_numpy())
    # float32 input comes back as float64 holding the same float32 value (CSV writes its repr)
    np.testing.assert_array_equal(back["uErr"].to_numpy().astype(np.float32), frame["uErr"])
    np.testing.assert_array_equal(back["nobs"].to_numpy(), frame["nobs"].to_numpy())
    np.testing.assert_array_equal(back["flag"].to_numpy(), frame["flag"].to_numpy())
    assert list(back["name"]) == list(frame["name"])  # strings survive
    assert count_rows(path) == len(frame)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_missing_values_survive(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame({"x": [1.0, np.nan, 3.0], "name": ["a", None, "c"]})
    back = read_catalog(write_table(frame, tmp_path / f"m{suffix}"))
    assert np.isnan(back["x"].to_numpy()[1])
    assert back["name"].isna().tolist() == [False, True, False]


def test_named_index_is_written_as_a_column(tmp_path: Path) -> None:
    frame = _frame(5).set_index("name")
    back = read_catalog(write_table(frame, tmp_path / "i.parquet"))
    assert list(back["name"]) == list(frame.index)


def test_parquet_pandas_index_and_arrow_dtypes_become_numpy(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"a": pd.array([1.5, None, 2.5], dtype="double[pyarrow]"), "n": [1, 2, 3]},
        index=pd.Index([7, 8, 9]),
    )
    path = tmp_path / "arrow.parquet"
    frame.to_parquet(path)  # stores the unnamed index as __index_level_0__
    back = read_catalog(path)
    assert list(back.columns) == ["a", "n"]
    assert back["a"].dtype == np.float64 and back["n"].dtype == np.int64
    assert np.isnan(back["a"].to_numpy()[1])


def test_parquet_integers_with_nulls_stay_exact(tmp_path: Path) -> None:
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"k": pa.array([1, None, 3], pa.int32())}), path)
    back = read_catalog(path)
    assert back["k"].dtype == pd.Int64Dtype()
    assert back["k"].isna().tolist() == [False, True, False]
    assert back["k"].iloc[[0, 2]].tolist() == [1, 3]


#: 64-bit object IDs above 2**53, which a float64 would round (SDSS objID-like)
_BIG_IDS = np.array([1237663783666974001, -1, 1237663783666974003, 1237663783666974005])


def _big_id_frame() -> pd.DataFrame:
    ids = pd.array([None if i < 0 else int(i) for i in _BIG_IDS], dtype="Int64")
    return pd.DataFrame({"objid": ids, "mag": [1.0, 2.0, 3.0, 4.0]})


def _assert_big_ids(column: pd.Series) -> None:
    assert column.isna().tolist() == [False, True, False, False]
    assert column.dropna().tolist() == [int(i) for i in _BIG_IDS if i >= 0]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".fits"])
def test_big_ids_with_nulls_stay_exact_in_every_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ids{suffix}"
    if suffix == ".fits":
        values = np.where(_BIG_IDS < 0, -99, _BIG_IDS)
        cols = fits.ColDefs(
            [
                fits.Column(name="objid", format="K", null=-99, array=values),
                fits.Column(name="mag", format="D", array=np.arange(1.0, 5.0)),
            ]
        )
        fits.BinTableHDU.from_columns(cols).writeto(path)
    else:
        write_table(_big_id_frame(), path)
    _assert_big_ids(read_catalog(path)["objid"])
    # the first batch has the null: every batch nullable (one type per column), all exact
    batches = list(iter_catalog_batches(path, batch_size=2))
    assert [str(b["objid"].dtype) for b in batches] == ["Int64", "Int64"]
    _assert_big_ids(pd.concat(batches)["objid"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".fits"])
def test_written_big_ids_with_nulls_read_back_exactly(tmp_path: Path, suffix: str) -> None:
    path = write_table(_big_id_frame(), tmp_path / f"out{suffix}")
    _assert_big_ids(read_catalog(path)["objid"])


def test_fits_null_integers_and_big_endian_columns(tmp_path: Path) -> None:
    cols = fits.ColDefs(
        [
            fits.Column(name="id", format="J", null=-1, array=np.array([5, -1, 7], ">i4")),
            fits.Column(name="mag", format="E", array=np.array([1.0, 2.0, np.nan], ">f4")),
            fits.Column(name="vec", format="2D", array=np.arange(6.0).reshape(3, 2)),
        ]
    )
    path = tmp_path / "nulls.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    back = read_catalog(path)
    assert back["id"].dtype == pd.Int64Dtype()
    assert back["id"].tolist()[::2] == [5, 7] and back["id"].isna().tolist() == [0, 1, 0]
    assert back["mag"].dtype == np.float64 and back["mag"].to_numpy().dtype.isnative
    np.testing.assert_array_equal(back["vec"].iloc[2], [4.0, 5.0])


# ---------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".fits"])
def test_batches_concatenate_to_whole(tmp_path: Path, suffix: str) -> None:
    frame = _frame(103)
    path = tmp_path / f"b{suffix}"
    if suffix == ".parquet":  # several small row groups, so batches cross row-group edges
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=17)
    else:
        write_table(frame, path)
    batches = list(iter_catalog_batches(path, batch_size=10))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    whole = read_catalog(path)
    pd.testing.assert_frame_equal(pd.concat(batches), whole)
    assert len(whole) == count_rows(path) == 103


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".fits"])
def test_column_selection_keeps_requested_order(tmp_path: Path, suffix: str) -> None:
    path = write_table(_frame(), tmp_path / f"c{suffix}")
    back = read_catalog(path, columns=["uErr", "umag"])
    assert list(back.columns) == ["uErr", "umag"]
    first = next(iter_catalog_batches(path, batch_size=4, columns=["name"]))
    assert list(first.columns) == ["name"] and len(first) == 4
    with pytest.raises(CatalogError, match=r"missing column.*'gmag'"):
        read_catalog(path, columns=["umag", "gmag"])


def test_empty_table_yields_one_empty_frame_with_columns(tmp_path: Path) -> None:
    path = write_table(_frame(0), tmp_path / "empty_rows.parquet")
    batches = list(iter_catalog_batches(path))
    assert len(batches) == 1 and len(batches[0]) == 0
    assert list(batches[0].columns) == list(_frame(0).columns)
    assert count_rows(path) == 0

    header_only = tmp_path / "header.csv"
    header_only.write_text("umag,uErr\n")
    assert list(read_catalog(header_only).columns) == ["umag", "uErr"]


def test_bad_batch_size_is_rejected(tmp_path: Path) -> None:
    path = write_table(_frame(), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="batch_size"):
        iter_catalog_batches(path, batch_size=0)


def test_parquet_dataset_directory_in_natural_file_order(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    for i in (10, 2, 0):  # natural order 0, 2, 10 (lexical would put 10 before 2)
        write_table(pd.DataFrame({"x": [float(i)] * 3, "k": [i] * 3}), root / f"part.{i}.parquet")
    (root / "_SUCCESS").write_text("")
    write_table(pd.DataFrame({"x": [-1.0], "k": [-1]}), root / ".hidden.parquet")
    (root / "_metadata.parquet").write_bytes(b"not data")

    back = read_catalog(root)
    assert back["k"].tolist() == [0, 0, 0, 2, 2, 2, 10, 10, 10]
    assert count_rows(root) == 9
    batches = list(iter_catalog_batches(root, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 1]
    pd.testing.assert_frame_equal(pd.concat(batches), back)


def test_hive_partitioned_dataset_keeps_partition_columns(tmp_path: Path) -> None:
    root = tmp_path / "hive"
    for band, year in [("u", 2021), ("g", 2020)]:
        part = root / f"band={band}" / f"year={year}" / "part.parquet"
        write_table(pd.DataFrame({"mag": [1.0, 2.0]}), part)
    back = read_catalog(root)
    assert back["band"].tolist() == ["g", "g", "u", "u"]
    assert back["year"].tolist() == [2020, 2020, 2021, 2021]
    assert back["year"].dtype == np.int64
    assert list(read_catalog(root, columns=["year", "mag"]).columns) == ["year", "mag"]


def test_dataset_files_with_inconsistent_columns_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_table(pd.DataFrame({"x": [1.0], "k": [1]}), root / "part.0.parquet")
    write_table(pd.DataFrame({"x": [2.0]}), root / "part.1.parquet")
    with pytest.raises(CatalogError, match=r"part.1.parquet lacks column.*'k'"):
        read_catalog(root)

    write_table(pd.DataFrame({"x": ["text"], "k": [2]}), root / "part.1.parquet", overwrite=True)
    with pytest.raises(CatalogError, match=r"part.1.parquet column 'x' has type"):
        read_catalog(root)

    # a compatible type change (int32 where the first file has int64) is cast
    pq.write_table(pa.table({"x": [3.0], "k": pa.array([3], pa.int32())}), root / "part.1.parquet")
    assert read_catalog(root)["k"].tolist() == [1, 3]


# ---------------------------------------------------------------------------------------------
# CSV column types across batches, duplicate column names
# ---------------------------------------------------------------------------------------------

#: Columns whose values pandas would type differently in different 4-row batches; ``None`` is
#: a missing value. ``uid`` exceeds int64 in the last batch only (exact ``UInt64`` over all).
_MIXED_COLUMNS: dict[str, list[object]] = {
    "id": [1, 2, 3, 4, 5, 6, 7, 8, "1150a", 10, 11, 12],  # integer, then text
    "late": [None] * 4 + [5, 6, 7.5, 8, 9, 10, 11, 12],  # blank, then decimals
    "later": [None] * 4 + [5, 6, 7, 8, 9, 10, 11, 12],  # blank, then integers
    "mix": [1, 2, 3, 4, 5, 6, 7, 8, 9.5, 10, 11, 12],  # integers, then decimals
    "name": ["a", "b", "c", "d", 1, 2, 3, 4, "e", "f", "g", "h"],  # text, then numbers
    "flag": [True, False, True, False] + [None] * 4 + [True] * 4,  # booleans, then blank
    "uid": [1] * 8 + [2**63 + 5, 2, 3, 4],
    "objid": [2**60 + i for i in range(11)] + [None],  # exact 64-bit IDs, one missing
}

#: Each column's dtypes over the batches: the type pandas gives it read at once (a batch
#: without missing values has the plain numpy type of a nullable one)
_MIXED_DTYPES = {
    "id": {"str"},
    "late": {"float64"},
    "later": {"Int64", "int64"},
    "mix": {"float64"},
    "name": {"str"},
    "flag": {"bool", "boolean"},
    "uid": {"uint64"},
    "objid": {"int64", "Int64"},
}


@pytest.mark.parametrize("missing", ["", "nan", "NULL"])
@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_csv_unsigned_ids_above_2_63_with_a_missing_one(tmp_path, suffix, missing) -> None:
    """pandas parses such a column as text (the missing value as text too); it is read as
    exact ``UInt64``, whole and in batches."""
    if suffix == ".txt" and not missing:
        pytest.skip("a whitespace-separated table has no blank fields")
    ids = [2**63 + 5, None, 5, 2**64 - 1]
    sep = "," if suffix == ".csv" else "  "
    lines = [f"id{sep}umag"] + [f"{missing if v is None else v}{sep}1.5" for v in ids]
    path = tmp_path / f"ids{suffix}"
    path.write_text("\n".join(lines) + "\n")
    whole = read_catalog(path)
    assert whole["id"].dtype == "UInt64"
    assert whole["id"].isna().tolist() == [False, True, False, False]
    assert whole["id"].dropna().tolist() == [2**63 + 5, 5, 2**64 - 1]
    batches = list(iter_catalog_batches(path, batch_size=1))
    assert {str(b["id"].dtype) for b in batches} == {"UInt64"}
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), whole)
    # text that is not all unsigned integers stays text
    path.write_text(path.read_text().replace("\n5", "\n-5"))
    assert read_catalog(path)["id"].dtype != "UInt64"


def _write_mixed_table(path: Path) -> Path:
    """``_MIXED_COLUMNS`` as CSV, or as whitespace-separated text (``nan`` for missing)."""
    sep, missing = (",", "") if path.suffix == ".csv" else ("  ", "nan")
    lines = [sep.join(_MIXED_COLUMNS)]
    for row in zip(*_MIXED_COLUMNS.values(), strict=True):
        lines.append(sep.join(missing if v is None else str(v) for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("scan_rows", [None, 5])
@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_csv_batches_agree_on_column_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, scan_rows: int | None
) -> None:
    if scan_rows is not None:  # the first pass in several chunks, which disagree
        monkeypatch.setattr("photodist.io._CSV_SCAN_ROWS", scan_rows)
    path = _write_mixed_table(tmp_path / f"mixed{suffix}")
    batches = list(iter_catalog_batches(path, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 4]
    for column, dtypes in _MIXED_DTYPES.items():
        assert {str(b[column].dtype) for b in batches} <= dtypes, column
    whole = read_catalog(path)
    pd.testing.assert_frame_equal(pd.concat(batches), whole)
    assert whole["id"].tolist() == [str(v) for v in _MIXED_COLUMNS["id"]]
    assert whole["uid"].tolist() == _MIXED_COLUMNS["uid"]  # exact above 2**63
    assert whole["objid"].iloc[:11].tolist() == _MIXED_COLUMNS["objid"][:11]
    assert whole["flag"].isna().tolist() == [v is None for v in _MIXED_COLUMNS["flag"]]

    # the batches stream into one Parquet file (cast to the first batch's schema) and FITS
    with AtomicParquetWriter(tmp_path / "out.parquet") as writer:
        for batch in iter_catalog_batches(path, batch_size=4):
            writer.write(batch)
    assert read_catalog(tmp_path / "out.parquet")["id"].tolist() == whole["id"].tolist()
    write_table(pd.concat(batches), tmp_path / "out.fits")


def test_csv_id_turning_text_after_200000_rows_streams_to_parquet(tmp_path: Path) -> None:
    """The reported failure: ``Failed to parse string: '1150a' as a scalar of type int64``
    once every batch was computed (and an object column in a whole read)."""
    n = 210_000
    ids = [str(i) for i in range(n)]
    ids[200_000] = "1150a"
    path = tmp_path / "late_text.csv"
    path.write_text("id,rmag\n" + "".join(f"{s},{k % 7}.5\n" for k, s in enumerate(ids)))
    with AtomicParquetWriter(tmp_path / "out.parquet") as writer:
        for batch in iter_catalog_batches(path, batch_size=100_000):
            assert batch["id"].dtype == "str"
            writer.write(batch)
    whole = read_catalog(path)
    assert whole["id"].dtype == "str" and whole["id"].tolist() == ids
    assert read_catalog(tmp_path / "out.parquet")["id"].tolist() == ids


def test_csv_within_one_batch_is_parsed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_mixed_table(tmp_path / "mixed.csv")
    passes = []
    read_csv = pd.read_csv

    def spy(*args: object, **kwargs: object) -> object:
        if "nrows" not in kwargs:  # a pass over the data, not a look at the header
            passes.append(kwargs.get("chunksize"))
        return read_csv(*args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", spy)
    one = next(iter_catalog_batches(path, batch_size=12))
    assert len(passes) == 1 and len(one) == 12
    passes.clear()
    assert len(list(iter_catalog_batches(path, batch_size=5))) == 3
    assert len(passes) == 2  # the first pass, then the batches with dtype= set


def _write_fits_repeating(path: Path, name: str, other: str) -> Path:
    """A FITS table with columns ``name``, ``other``, ``name``: astropy refuses to write a
    repeated name, so the third is renamed in the written header."""
    placeholder = "X" * len(name)
    cols = [fits.Column(name=n, format="D", array=[1.0, 2.0]) for n in (name, other, placeholder)]
    fits.BinTableHDU.from_columns(cols).writeto(path)
    path.write_bytes(path.read_bytes().replace(f"'{placeholder}".encode(), f"'{name}".encode()))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".txt", ".fits"])
def test_duplicate_column_names_are_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"dup{suffix}"
    if suffix == ".parquet":
        names = ["rmag", "gmag", "rmag"]
        pq.write_table(pa.Table.from_arrays([pa.array([1.0, 2.0])] * 3, names=names), path)
    elif suffix == ".fits":
        _write_fits_repeating(path, "rmag", "gmag")
    else:
        sep = "," if suffix == ".csv" else "  "
        path.write_text(f"rmag{sep}gmag{sep}rmag\n1{sep}2{sep}3\n")
    match = rf"dup{suffix}: duplicate column name\(s\) \['rmag'\]"
    with pytest.raises(CatalogError, match=match):
        read_catalog(path)
    with pytest.raises(CatalogError, match=match):  # at the call, before any batch
        iter_catalog_batches(path, batch_size=1, columns=["gmag"])
    if suffix in (".parquet", ".fits"):  # counted from the same header
        with pytest.raises(CatalogError, match=match):
            count_rows(path)


def test_duplicate_column_names_in_a_later_dataset_file_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_table(pd.DataFrame({"rmag": [1.0], "gmag": [2.0]}), root / "part.0.parquet")
    table = pa.Table.from_arrays([pa.array([1.0])] * 3, names=["rmag", "gmag", "rmag"])
    pq.write_table(table, root / "part.1.parquet")
    with pytest.raises(
        CatalogError, match=r"part.1.parquet: duplicate column name\(s\) \['rmag'\]"
    ):
        read_catalog(root)


def test_near_duplicate_column_names_are_read(tmp_path: Path) -> None:
    csv = tmp_path / "near.csv"
    csv.write_text("rmag,rmag.1,,\n1,2,3,4\n")  # names as written; blank ones are unnamed
    assert list(read_catalog(csv).columns) == ["rmag", "rmag.1", "Unnamed: 2", "Unnamed: 3"]
    cols = [fits.Column(name=n, format="D", array=[1.0, 2.0]) for n in ("rmag", "RMAG")]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "near.fits")
    back = read_catalog(tmp_path / "near.fits")
    assert list(back.columns) == ["rmag", "RMAG"] and back["RMAG"].tolist() == [1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# HATS
# ---------------------------------------------------------------------------------------------


@needs_sample
def test_hats_sample_catalogue() -> None:
    assert detect_format(SAMPLE_HATS) == "hats"
    parts = hats_partitions(SAMPLE_HATS)
    assert [(o, p) for o, p, _ in parts] == [(4, 0)]
    assert parts[0][2].is_file() and parts[0][2].name == "Npix=0.parquet"
    assert count_rows(SAMPLE_HATS) == 3981

    cat = read_catalog(SAMPLE_HATS)
    assert len(cat) == 3981
    for column in ("umag", "uErr", "ra", "dec", "gmag", "_healpix_29"):
        assert column in cat.columns
    assert cat["umag"].dtype == np.float64 and cat["uNobs"].dtype == np.int64
    assert cat["Norder"].dtype == np.int64
    assert np.isfinite(np.mean(cat["ra"].to_numpy()))
    assert cat["CALIBSTARS"].iloc[0].startswith("CALIBSTARS_")  # string column survives
    # file row order, same as the partition read directly
    direct = pq.read_table(parts[0][2], columns=["umag"]).column("umag").to_numpy()
    np.testing.assert_array_equal(cat["umag"].to_numpy(), direct)

    batches = list(iter_catalog_batches(SAMPLE_HATS, batch_size=1000))
    assert [len(b) for b in batches] == [1000, 1000, 1000, 981]
    pd.testing.assert_frame_equal(pd.concat(batches), cat)

    sub = read_catalog(SAMPLE_HATS, columns=["ra", "umag", "uErr"])
    assert list(sub.columns) == ["ra", "umag", "uErr"]
    pd.testing.assert_frame_equal(sub, cat[["ra", "umag", "uErr"]])


def test_hats_layout_without_metadata_is_read_in_partition_order(tmp_path: Path) -> None:
    root = tmp_path / "mini_hats"
    for order, pixel in [(1, 12), (0, 1), (1, 3)]:
        part = root / "dataset" / f"Norder={order}" / "Dir=0" / f"Npix={pixel}.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        write_table(pd.DataFrame({"pix": [pixel, pixel], "mag": [1.0, 2.0]}), part)
    (root / "properties").write_text("not a valid properties file\n")

    parts = hats_partitions(root)
    assert [(o, p) for o, p, _ in parts] == [(0, 1), (1, 3), (1, 12)]
    assert read_catalog(root)["pix"].tolist() == [1, 1, 3, 3, 12, 12]
    assert count_rows(root) == 6


def test_hats_partitions_rejects_other_formats(tmp_path: Path) -> None:
    path = write_table(_frame(), tmp_path / "a.parquet")
    with pytest.raises(CatalogError, match="not a HATS catalogue"):
        hats_partitions(path)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.parquet", "empty.csv", "empty.fits"])
def test_empty_file_raises_catalog_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.touch()
    with pytest.raises(CatalogError, match=name):
        read_catalog(path)
    with pytest.raises(CatalogError, match=name):
        iter_catalog_batches(path)  # fails on the call, before any iteration
    with pytest.raises(CatalogError, match=name):
        count_rows(path)


def test_truncated_parquet_raises_catalog_error(tmp_path: Path) -> None:
    path = write_table(_frame(200), tmp_path / "cut.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for call in (read_catalog, count_rows, iter_catalog_batches):
        with pytest.raises(CatalogError, match="cut.parquet") as info:
            call(path)
        assert "\n" not in str(info.value)


def test_truncated_parquet_in_dataset_names_the_catalogue(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    write_table(_frame(), root / "part.0.parquet")
    bad = write_table(_frame(), root / "part.1.parquet")
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CatalogError, match="part.1.parquet"):
        read_catalog(root)


def test_truncated_fits_raises_catalog_error(tmp_path: Path) -> None:
    path = write_table(_frame(500), tmp_path / "cut.fits")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2880])
    with pytest.raises(CatalogError, match="cut.fits.*truncated"):
        read_catalog(path)


def test_fits_without_table_raises_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(path)
    with pytest.raises(CatalogError, match="image.fits.*no table HDU"):
        read_catalog(path)
    with pytest.raises(CatalogError, match="image.fits"):
        count_rows(path)


def test_fits_with_several_tables_reads_the_first_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "two.fits"
    first = fits.BinTableHDU.from_columns(
        [fits.Column(name="rmag", format="D", array=np.array([18.0, 19.0]))], name="STARS"
    )
    second = fits.BinTableHDU.from_columns(
        [fits.Column(name="other", format="D", array=np.zeros(3))], name="EXTRA"
    )
    fits.HDUList([fits.PrimaryHDU(), first, second]).writeto(path)
    with pytest.warns(UserWarning, match=r"2 table HDUs; reading HDU 1 \(STARS\), not HDU 2"):
        frame = read_catalog(path)
    assert list(frame.columns) == ["rmag"] and len(frame) == 2


@pytest.mark.parametrize(
    ("name", "content"), [("junk.fits", b"hello world"), ("junk.parquet", b"not parquet")]
)
def test_not_a_table_raises_catalog_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=name):
        read_catalog(path)


def test_malformed_csv_raises_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3,4,5,6\n")
    with pytest.raises(CatalogError, match="ragged.csv"):
        read_catalog(path)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".fits"])
def test_existing_output_needs_overwrite(tmp_path: Path, suffix: str) -> None:
    path = write_table(_frame(3), tmp_path / f"out{suffix}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_table(_frame(5), path)
    assert len(read_catalog(path)) == 3
    write_table(_frame(5), path, overwrite=True)
    assert len(read_catalog(path)) == 5
    assert _visible(tmp_path) == [f"out{suffix}"]


def test_unknown_output_suffix_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="out.xlsx"):
        write_table(_frame(), tmp_path / "out.xlsx")
    assert _visible(tmp_path) == []


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    path = write_table(_frame(), tmp_path / "a" / "b" / "out.parquet")
    assert path.is_file()


def test_parent_that_is_a_file_gives_clear_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="afile.*not a directory"):
        write_table(_frame(), afile / "out.parquet")
    with pytest.raises(NotADirectoryError, match="afile"):
        with AtomicParquetWriter(afile / "sub" / "out.parquet"):
            pass
    assert _visible(tmp_path) == ["afile"]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_unwritable_directory_gives_permission_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="locked.*not writable"):
            write_table(_frame(), locked / "out.parquet")
    finally:
        locked.chmod(0o700)
    assert _visible(locked) == []


def test_permission_denied_gives_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError, match=r"out.parquet.*directory .* is not writable"):
        write_table(_frame(), tmp_path / "out.parquet")
    with pytest.raises(PermissionError, match="not writable"):
        check_output_path(tmp_path / "out.csv")
    monkeypatch.undo()
    assert _visible(tmp_path) == []


def test_check_output_path(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new" / "out.fits") == tmp_path / "new" / "out.fits"
    assert _visible(tmp_path / "new") == []  # the probe file is removed
    existing = write_table(_frame(), tmp_path / "out.csv")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_path(existing)
    assert check_output_path(existing, overwrite=True) == existing
    with pytest.raises(CatalogError, match="out.txt"):
        check_output_path(tmp_path / "out.txt")


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    bad = pd.DataFrame({"mixed": [1, "a", 2.5]})  # pyarrow cannot convert mixed objects
    with pytest.raises((pa.ArrowException, TypeError, ValueError)):
        write_table(bad, tmp_path / "bad.parquet")
    assert _visible(tmp_path) == []


def test_atomic_parquet_writer_streams_batches(tmp_path: Path) -> None:
    src = write_table(_frame(95), tmp_path / "src.parquet")
    out = tmp_path / "out.parquet"
    with AtomicParquetWriter(out) as writer:
        for batch in iter_catalog_batches(src, batch_size=20):
            writer.write(batch)
            assert not out.exists()  # only the temporary file exists until the block ends
    assert writer.rows_written == 95
    pd.testing.assert_frame_equal(read_catalog(out), read_catalog(src))
    assert sorted(_visible(tmp_path)) == ["out.parquet", "src.parquet"]


def test_atomic_parquet_writer_accepts_arrow_and_casts_to_schema(tmp_path: Path) -> None:
    schema = pa.schema([("x", pa.float64()), ("k", pa.int64())])
    out = tmp_path / "arrow.parquet"
    with AtomicParquetWriter(out, schema=schema) as writer:
        writer.write(pa.record_batch({"k": pa.array([1], pa.int32()), "x": pa.array([0.5])}))
        writer.write(pd.DataFrame({"x": [1.5, 2.5], "k": [2, 3]}))
    table = pq.read_table(out)
    assert table.schema.equals(schema)
    assert table.column("k").to_pylist() == [1, 2, 3]


def test_atomic_parquet_writer_removes_temp_file_on_exception(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicParquetWriter(out) as writer:
            writer.write(_frame(10))
            assert len(_visible(tmp_path)) == 1  # the hidden temporary file
            raise RuntimeError("boom")
    assert _visible(tmp_path) == []


@pytest.mark.parametrize(
    "second",
    [
        pd.DataFrame({"y": [1.0]}),  # wrong name
        pd.DataFrame({"x": [1.0], "extra": [2.0]}),  # a column would be silently dropped
        pd.DataFrame({"x": ["text"]}),  # cannot be cast
    ],
)
def test_atomic_parquet_writer_schema_mismatch_cleans_up(
    tmp_path: Path, second: pd.DataFrame
) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match="out.parquet.*schema"):
        with AtomicParquetWriter(out) as writer:
            writer.write(pd.DataFrame({"x": [1.0]}))
            writer.write(second)
    assert _visible(tmp_path) == []


def test_atomic_parquet_writer_refuses_existing_output(tmp_path: Path) -> None:
    out = write_table(_frame(3), tmp_path / "out.parquet")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with AtomicParquetWriter(out):
            pass
    with AtomicParquetWriter(out, overwrite=True) as writer:
        writer.write(_frame(7))
    assert count_rows(out) == 7
    assert _visible(tmp_path) == ["out.parquet"]


def test_atomic_parquet_writer_with_no_rows_writes_empty_file(tmp_path: Path) -> None:
    schema = pa.schema([("x", pa.float64())])
    out = tmp_path / "none.parquet"
    with AtomicParquetWriter(out, schema=schema):
        pass
    assert count_rows(out) == 0
    assert list(read_catalog(out).columns) == ["x"]


def test_atomic_parquet_writer_requires_context_manager(tmp_path: Path) -> None:
    writer = AtomicParquetWriter(tmp_path / "x.parquet")
    with pytest.raises(RuntimeError, match="context manager"):
        writer.write(_frame(2))
    with pytest.raises(CatalogError, match="out.csv"):
        with AtomicParquetWriter(tmp_path / "out.csv"):
            pass


def test_whitespace_text_tables_are_read_in_batches(tmp_path: Path) -> None:
    """photod writes its simulated catalogues as space-aligned text with a header line."""
    frame = _frame()[["umag", "uErr"]].rename(columns={"umag": "rmag", "uErr": "rErr"})
    lines = ["   " + "  ".join(f"{c:>10s}" for c in frame.columns)]
    lines += ["   " + "  ".join(f"{v:10.5f}" for v in row) for row in frame.to_numpy(float)]
    path = tmp_path / "sim.txt"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "text"
    pd.testing.assert_frame_equal(read_catalog(path), frame.astype(float), atol=1e-5)
    batches = list(iter_catalog_batches(path, batch_size=2, columns=["rmag"]))
    assert sum(len(b) for b in batches) == len(frame) and list(batches[0].columns) == ["rmag"]
    with pytest.raises(CatalogError, match="text tables are read, not written"):
        write_table(frame, tmp_path / "out.dat")


def test_parquet_outputs_dictionary_encode_only_categorical_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "Mr_mean": np.linspace(0, 1, 50),
            "method": pd.Categorical(["nn", "bayes"] * 25, categories=["nn", "bayes"]),
        }
    )
    path = write_table(frame, tmp_path / "t.parquet")
    with AtomicParquetWriter(tmp_path / "s.parquet") as writer:
        writer.write(frame)
    for written in (path, tmp_path / "s.parquet"):
        back = read_catalog(written)
        np.testing.assert_array_equal(back["Mr_mean"], frame["Mr_mean"])
        assert list(back["method"].astype(str)) == list(frame["method"].astype(str))
        meta = pq.ParquetFile(written).metadata.row_group(0)
        encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(2)}
        assert not any("DICTIONARY" in e for e in encodings["Mr_mean"])
        assert any("DICTIONARY" in e for e in encodings["method"])


def test_table_to_frame_keeps_integers_exact_and_other_types() -> None:
    table = pa.table(
        {
            "objid": pa.array([1, None, 2**60 + 1], pa.int64()),
            "n": pa.array([1, 2, 3], pa.int32()),
            "x": pa.array([1.0, 2.0, 3.0], pa.float32()),
        }
    )
    frame = table_to_frame(table)
    assert frame["objid"].dtype == pd.Int64Dtype()
    assert frame["objid"].tolist()[::2] == [1, 2**60 + 1] and frame["objid"].isna()[1]
    assert frame["n"].dtype == np.int32 and frame["x"].dtype == np.float32


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".txt", ".fits"])
def test_catalog_columns_reads_the_names_alone(tmp_path: Path, suffix: str) -> None:
    frame = _frame(5)
    path = tmp_path / f"c{suffix}"
    if suffix == ".txt":
        frame.to_csv(path, sep=" ", index=False)
    else:
        write_table(frame, path)
    assert catalog_columns(path) == [str(c) for c in frame.columns]
    empty = tmp_path / f"empty{suffix}"
    empty.touch()
    with pytest.raises(CatalogError, match="empty"):
        catalog_columns(empty)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".fits"])
def test_nullable_columns_keep_one_type_in_every_batch(tmp_path: Path, suffix: str) -> None:
    """Missing values in the first batch only: the later batches keep its nullable types
    (they came back int64 / bool there), and a boolean with nulls is not turned into objects."""
    frame = pd.DataFrame(
        {
            "rmag": [18.0, 19.0, 20.0, 21.0],
            "objid": pd.array([2**60 + 1, None, 3, 4], dtype="Int64"),
            "flag": pd.array([True, None, False, True], dtype="boolean"),
        }
    )
    path = write_table(frame, tmp_path / f"t{suffix}")
    whole = read_catalog(path)
    batches = list(iter_catalog_batches(path, batch_size=2))
    for batch in batches:
        assert dict(batch.dtypes) == dict(whole.dtypes)
    assert whole["objid"].tolist()[0] == 2**60 + 1 and whole["objid"].isna().tolist()[1]
    assert whole["flag"].isna().tolist() == [False, True, False, False]  # FITS: 0/1 with nulls


def test_fits_output_keeps_missing_booleans_and_writes_missing_text_empty(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "flag": pd.array([False, None, True], dtype="boolean"),
            "name": pd.array(["a", None, "c"], dtype="string"),
            "other": pd.Series(["x", None, "z"], dtype=object),
        }
    )
    back = read_catalog(write_table(frame, tmp_path / "t.fits"))
    assert back["flag"].tolist()[::2] == [0, 1] and back["flag"].isna().tolist()[1]
    assert back["name"].tolist() == ["a", "", "c"] and back["other"].tolist() == ["x", "", "z"]


def test_run_summary_beside_an_output(tmp_path: Path) -> None:
    from photodist.io import read_run_summary, run_file

    output = tmp_path / "run.parquet"
    assert run_file(output, ".run.json") == tmp_path / "run.parquet.run.json"
    assert read_run_summary(output) == {}
    run_file(output, ".run.json").write_text('{"bands": "sdss"}')
    assert read_run_summary(output) == {"bands": "sdss"}
    for broken in ("{cut", "[1, 2]"):
        run_file(output, ".run.json").write_text(broken)
        with pytest.raises(CatalogError, match="run.parquet.run.json: unreadable run summary"):
            read_run_summary(output)


def test_text_tables_with_a_commented_header_or_trailing_separators(tmp_path):
    """A commented header line (astropy's ``commented_header``: ``# id ra ...``) names the
    columns, and data lines that end with a separator are read column by column (both shifted
    every column by one before); a data line with more values than names is refused."""
    from astropy.table import Table

    frame = _frame(30)
    frame["id"] = np.arange(30, dtype=np.int64) + 10
    text = tmp_path / "stars.dat"
    Table.from_pandas(frame).write(text, format="ascii.commented_header")
    assert text.read_text().startswith("# ")
    back = read_catalog(text)
    assert list(back.columns) == list(frame.columns) and count_rows(text) == 30
    np.testing.assert_array_equal(back["id"], frame["id"])
    np.testing.assert_allclose(back["umag"], frame["umag"])
    lines = frame.to_csv(index=False).splitlines()
    trailing = tmp_path / "trailing.csv"
    trailing.write_text(lines[0] + "\n" + "".join(f"{line},\n" for line in lines[1:]))
    batches = list(iter_catalog_batches(trailing, batch_size=7))
    back = pd.concat(batches)
    assert list(back.columns) == list(frame.columns) and len(back) == count_rows(trailing) == 30
    np.testing.assert_array_equal(back["id"], frame["id"])
    extra = tmp_path / "extra.csv"
    extra.write_text(lines[0] + "\n" + "".join(f"{line},5\n" for line in lines[1:]))
    with pytest.raises(CatalogError, match="fields"):
        read_catalog(extra)
    header_only = tmp_path / "header.csv"
    header_only.write_text(lines[0] + "\n")
    assert read_catalog(header_only).shape == (0, frame.shape[1])


def test_integer_ids_keep_one_exact_type_across_batches(tmp_path):
    """A 64-bit id column whose only missing value comes in a late batch is nullable in
    every batch (Parquet statistics, FITS TNULL, the CSV scan), so a Parquet file written
    batch by batch reads back exactly with pandas too."""
    from photodist.io import write_table

    ids = pd.array([2**62 + i for i in range(40)], dtype="Int64")
    ids[33] = pd.NA
    frame = pd.DataFrame({"objid": ids, "rmag": np.linspace(15, 20, 40)})
    sources = {"parquet": tmp_path / "in.parquet", "csv": tmp_path / "in.csv"}
    frame.to_parquet(sources["parquet"], row_group_size=10)
    write_table(frame, sources["csv"])
    sources["fits"] = write_table(frame, tmp_path / "in.fits")
    for kind, source in sources.items():
        batches = list(iter_catalog_batches(source, batch_size=10))
        assert {str(b["objid"].dtype) for b in batches} == {"Int64"}, kind
        out = tmp_path / f"out_{kind}.parquet"
        with AtomicParquetWriter(out) as writer:
            for batch in batches:
                writer.write(batch)
        again = pd.read_parquet(out)["objid"]  # pandas, with the file's pandas metadata
        assert str(again.dtype) == "Int64", kind
        assert again.isna().sum() == 1 and again[0] == 2**62, kind


def test_fits_output_keeps_every_integer_value(tmp_path):
    """A missing id is written with a TNULL that no id takes (a valid 999999 stayed missing
    before), unsigned 64-bit ids above 2**63 with a missing one read back exactly, 8-bit
    integers stay integers, and Parquet decimals become floats."""
    import decimal

    ids = pd.array([999990 + i for i in range(10)], dtype="Int64")
    ids[0] = pd.NA
    unsigned = pd.array([2**63 + 5 + i for i in range(10)], dtype="UInt64")
    unsigned[3] = pd.NA
    frame = pd.DataFrame(
        {
            "objid": ids,
            "big": unsigned,
            "small": np.arange(10, dtype=np.int8) - 3,
            "price": [decimal.Decimal("1.25")] * 10,
        }
    )
    back = read_catalog(write_table(frame, tmp_path / "out.fits"))
    assert back["objid"].isna().sum() == 1 and back["objid"][9] == 999999
    assert back["big"].isna().sum() == 1 and back["big"][9] == 2**63 + 14
    np.testing.assert_array_equal(back["small"], np.arange(10) - 3)
    np.testing.assert_allclose(back["price"], 1.25)


def test_fits_vector_columns_convert_to_parquet(tmp_path):
    """A FITS vector column (big-endian cells) reads as native arrays, so a kept one can be
    written to Parquet (Arrow refused byte-swapped arrays)."""
    path = tmp_path / "vec.fits"
    columns = [
        fits.Column(name="rmag", format="D", array=np.linspace(15, 16, 4)),
        fits.Column(name="flux", format="3E", array=np.arange(12, dtype=">f4").reshape(4, 3)),
    ]
    fits.BinTableHDU.from_columns(columns).writeto(path)
    frame = read_catalog(path)
    assert frame["flux"][0].dtype.isnative
    frame.to_parquet(tmp_path / "vec.parquet")
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "vec.parquet")["flux"][3], [9, 10, 11])


def test_write_batches_streams_parquet_and_csv(tmp_path, monkeypatch):
    """Parquet and CSV outputs are written batch by batch, never holding the whole table
    (the frames are never concatenated), and read back as one table; FITS too, in memory."""
    from photodist.io import write_batches

    parts = [_frame(10).assign(part=k) for k in range(3)]

    def refuse_concat(*args, **kwargs):
        raise AssertionError("the batches were concatenated")

    for name in ("out.parquet", "out.csv", "out.csv.gz"):
        with monkeypatch.context() as patched:
            patched.setattr(pd, "concat", refuse_concat)
            assert write_batches(iter(parts), tmp_path / name) == 30
        back = read_catalog(tmp_path / name)
        assert len(back) == 30 and back["part"].tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert write_batches(iter(parts), tmp_path / "out.fits") == 30
    assert len(read_catalog(tmp_path / "out.fits")) == 30
    with pytest.raises(FileExistsError):
        write_batches(iter(parts), tmp_path / "out.csv")
    assert write_batches(iter([]), tmp_path / "empty.csv") == 0


def test_outputs_carry_units_and_descriptions(tmp_path):
    """FITS outputs get TUNITn / TCOMMn, Parquet outputs field metadata, for the estimate
    columns only; a unit FITS lacks (dex) goes into the description."""
    from astropy.table import Table

    from photodist.io import write_batches

    frame = pd.DataFrame(
        {
            "objid": np.arange(4),
            "Mr_mean": np.linspace(3.0, 6.0, 4),
            "FeH_sigma": np.full(4, 0.1),
            "dist_pc": np.full(4, 800.0),
            "flags": np.zeros(4, np.int64),
        }
    )
    write_table(frame, tmp_path / "out.fits")
    header = fits.getheader(tmp_path / "out.fits", 1)
    units = {header[f"TTYPE{k}"]: header.get(f"TUNIT{k}") for k in range(1, 6)}
    comments = {header[f"TTYPE{k}"]: header.get(f"TCOMM{k}") for k in range(1, 6)}
    assert units == {
        "objid": None,
        "Mr_mean": "mag",
        "FeH_sigma": None,
        "dist_pc": "pc",
        "flags": None,
    }
    assert comments["objid"] is None
    assert comments["FeH_sigma"] == "total uncertainty of [Fe/H] (dex)"
    assert comments["flags"].startswith("quality bits")
    table = Table.read(tmp_path / "out.fits")
    assert str(table["Mr_mean"].unit) == "mag" and table["objid"].unit is None
    for name in ("out.parquet", "batches.parquet"):
        if name == "out.parquet":
            write_table(frame, tmp_path / name)
        else:
            assert write_batches(iter([frame[:2], frame[2:]]), tmp_path / name) == 4
        schema = pq.read_schema(tmp_path / name)
        assert schema.field("Mr_mean").metadata[b"unit"] == b"mag"
        assert schema.field("FeH_sigma").metadata[b"unit"] == b"dex"
        assert b"description" in schema.field("flags").metadata
        assert b"unit" not in schema.field("flags").metadata
        assert schema.field("objid").metadata is None
        pd.testing.assert_frame_equal(read_catalog(tmp_path / name), frame)
