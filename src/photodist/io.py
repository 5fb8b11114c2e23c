"""Catalogue input and output: Parquet (file or directory), HATS, CSV and FITS tables.

Reading is streamable with bounded memory (:func:`iter_catalog_batches`); numeric columns come
back as numpy ``float64`` / ``int64`` (``uint64`` where unsigned), integer columns with missing
values as pandas' nullable ``Int64`` / ``UInt64`` (exact 64-bit ids). Every input problem
raises :class:`CatalogError` with a one-line message naming the file. Writing is atomic: data go
to a hidden temporary file in the destination directory, which is renamed into place only once
complete, so a failure never leaves a partial output behind.
"""

from __future__ import annotations

import collections
import contextlib
import decimal
import json
import os
import re
import secrets
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from photodist.output_columns import ColumnInfo, column_info

__all__ = [
    "AtomicParquetWriter",
    "CatalogError",
    "catalog_columns",
    "check_output_path",
    "count_rows",
    "detect_format",
    "fits_hdu_with_units",
    "hats_partitions",
    "iter_catalog_batches",
    "json_default",
    "read_catalog",
    "read_run_summary",
    "run_file",
    "table_to_frame",
    "write_batches",
    "write_bytes_atomic",
    "write_table",
]

PathLike = str | os.PathLike[str]

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
CSV_SUFFIXES = (".csv",)
#: Whitespace-separated text tables with a header line (e.g. photod's simulated catalogues).
TEXT_SUFFIXES = (".txt", ".dat")
FITS_SUFFIXES = (".fits", ".fit", ".fts")
#: Compression suffixes understood after a CSV or FITS suffix, e.g. ``stars.csv.gz``.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
#: Index columns pandas stores in Parquet files; they carry no catalogue data.
_PANDAS_INDEX_COLUMN = re.compile(r"__index_level_\d+__")


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as plain numbers
    and lists, paths as strings; anything else is refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class CatalogError(ValueError):
    """A catalogue cannot be read: missing, empty, corrupted, unknown format or not a table."""


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception message (library messages can span lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------


def _file_format(path: Path) -> str | None:
    """Format implied by a file name's suffixes, or ``None`` when unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in PARQUET_SUFFIXES and path.suffix.lower() == last:
        return "parquet"
    if last in CSV_SUFFIXES:
        return "csv"
    if last in TEXT_SUFFIXES:
        return "text"
    if last in FITS_SUFFIXES:
        return "fits"
    return None


def _is_hats_dir(path: Path) -> bool:
    if any((path / name).is_file() for name in ("properties", "hats.properties")):
        return True
    if (path / "collection.properties").is_file():
        return True
    return any(p.is_dir() for p in (path / "dataset").glob("Norder=*")) or any(
        p.is_dir() for p in path.glob("Norder=*")
    )


def _natural_key(text: str) -> list[Any]:
    """Sort key putting ``part.2`` before ``part.10``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def _parquet_files(root: Path) -> list[Path]:
    """Parquet files under a directory, in natural path order, skipping hidden/``_`` entries."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file():
            found.append(p)
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def detect_format(path: PathLike) -> str:
    """Return the catalogue format of ``path``: ``"parquet"``, ``"hats"``, ``"csv"``, ``"text"``
    (whitespace-separated columns with a header line, ``.txt``/``.dat``) or ``"fits"``.

    A directory holding a HATS ``properties`` file or ``dataset/Norder=*`` folders is HATS; any
    other directory containing ``.parquet`` files is a Parquet dataset. Files are recognised by
    suffix, or by their magic bytes when the suffix is unknown.

    Raises
    ------
    CatalogError
        If the path is missing or its format cannot be recognised.
    """
    p = Path(path)
    if not p.exists():
        raise CatalogError(f"{p}: no such file or directory")
    if p.is_dir():
        if _is_hats_dir(p):
            return "hats"
        if _parquet_files(p):
            return "parquet"
        raise CatalogError(f"{p}: directory holds neither a HATS catalogue nor Parquet files")
    if not p.is_file():
        raise CatalogError(f"{p}: not a regular file or directory")
    fmt = _file_format(p)
    if fmt is not None:
        return fmt
    try:
        with p.open("rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CatalogError(f"{p}: cannot read file: {_one_line(exc)}") from exc
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    raise CatalogError(
        f"{p}: unknown catalogue format (expected .parquet, .csv, whitespace-separated "
        ".txt/.dat, .fits or a HATS directory)"
    )


# --------------------------------------------------------------------------------------------
# HATS
# --------------------------------------------------------------------------------------------


def _hats_partitions_via_hats(root: Path) -> list[tuple[int, int, Path]] | None:
    """Partitions listed by the catalogue's metadata, or ``None`` when hats cannot read it."""
    try:
        import hats
        from hats.io import paths
    except ImportError:
        return None
    try:
        catalog = hats.read_hats(root, read_moc=False)
    except Exception:  # any unreadable metadata: fall back to the directory layout
        return None
    catalog = getattr(catalog, "main_catalog", catalog)  # a collection: use its main catalogue
    if not hasattr(catalog, "get_healpix_pixels"):
        return None
    suffix = getattr(catalog.catalog_info, "npix_suffix", ".parquet")
    return [
        (
            int(pixel.order),
            int(pixel.pixel),
            Path(
                str(paths.pixel_catalog_file(catalog.catalog_base_dir, pixel, npix_suffix=suffix))
            ),
        )
        for pixel in catalog.get_healpix_pixels()
    ]


def _hats_partitions_by_glob(root: Path) -> list[tuple[int, int, Path]]:
    base = root / "dataset" if (root / "dataset").is_dir() else root
    pattern = re.compile(r"Npix=(\d+)")
    found = []
    for order_dir in base.glob("Norder=*"):
        order = int(order_dir.name.split("=", 1)[1])
        for item in order_dir.glob("Dir=*/Npix=*"):
            match = pattern.match(item.name)
            if match and (item.is_dir() or item.suffix.lower() in PARQUET_SUFFIXES):
                found.append((order, int(match.group(1)), item))
    return sorted(found, key=lambda t: (t[0], t[1]))


def hats_partitions(path: PathLike) -> list[tuple[int, int, Path]]:
    """List the partitions of a HATS catalogue as ``(order, pixel, parquet_path)``.

    The order is the catalogue's own partition listing (read with ``hats``); if that fails, the
    ``dataset/Norder=*/Dir=*/Npix=*.parquet`` files sorted by order and pixel. A partition stored
    as a directory of Parquet files (``npix_suffix = /``) is returned as that directory.

    Raises
    ------
    CatalogError
        If ``path`` is not a HATS catalogue, has no partitions or lists a missing partition.
    """
    root = Path(path)
    if detect_format(root) != "hats":
        raise CatalogError(f"{root}: not a HATS catalogue")
    parts = _hats_partitions_via_hats(root)
    if parts is None:
        parts = _hats_partitions_by_glob(root)
    if not parts:
        raise CatalogError(f"{root}: HATS catalogue has no partitions")
    missing = [str(p) for _, _, p in parts if not p.exists()]
    if missing:
        raise CatalogError(
            f"{root}: {len(missing)} listed partition(s) missing on disk, e.g. {missing[0]}"
        )
    return parts


def _hats_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for _, _, part in hats_partitions(root):
        files.extend(_parquet_files(part) if part.is_dir() else [part])
    return files


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def _plain_dtypes(frame: pd.DataFrame, keep_nullable: Collection[str] = ()) -> pd.DataFrame:
    """Convert numeric columns to native numpy ``float64`` / ``int64`` (in place).

    Integer columns with missing values become pandas' nullable ``Int64`` (``UInt64`` for
    unsigned 64-bit), which keeps every value exact: a float64 would round 64-bit object IDs
    above 2**53 (SDSS, Gaia and Rubin IDs); so do the integer and boolean columns named in
    ``keep_nullable`` (those with missing values elsewhere in the catalogue). ``uint64`` stays as
    is; strings and other types are left alone.
    """
    for i, dtype in enumerate(frame.dtypes):
        col = frame.iloc[:, i]
        if frame.columns[i] in keep_nullable and (
            pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        ):
            wanted = (
                pd.BooleanDtype()
                if pd.api.types.is_bool_dtype(dtype)
                else _nullable_integer_dtype(dtype)
            )
            if dtype != wanted:
                frame.isetitem(i, col.astype(wanted))
            continue
        target: np.dtype | None = None
        na_value: Any = None
        if isinstance(dtype, np.dtype):
            if dtype.kind == "f" and dtype != np.float64:
                target = np.dtype(np.float64)
            elif dtype.kind == "i" and dtype != np.int64:
                target = np.dtype(np.int64)
            elif dtype.kind == "u" and dtype.itemsize < 8:
                target = np.dtype(np.int64)
            elif dtype.kind in "biufc" and not dtype.isnative:
                target = dtype.newbyteorder("=")
        elif isinstance(dtype, pd.StringDtype) and dtype != _DEFAULT_STRING:
            frame.isetitem(i, col.astype(_DEFAULT_STRING))
        elif pd.api.types.is_bool_dtype(dtype):
            if not col.hasnans:
                target = np.dtype(bool)
        elif pd.api.types.is_float_dtype(dtype):
            target, na_value = np.dtype(np.float64), np.nan
        elif pd.api.types.is_integer_dtype(dtype):
            if col.hasnans:
                nullable = _nullable_integer_dtype(dtype)
                if dtype != nullable:
                    frame.isetitem(i, col.astype(nullable))
                continue
            elif pd.api.types.is_unsigned_integer_dtype(dtype) and dtype.itemsize >= 8:
                target = np.dtype(np.uint64)
            else:
                target = np.dtype(np.int64)
        if target is not None:
            if isinstance(dtype, np.dtype):
                values = col.to_numpy().astype(target)
            else:
                values = col.to_numpy(dtype=target, na_value=na_value)
            frame.isetitem(i, values)
    return frame


#: pandas' default text type, also for text read with nullable types
_DEFAULT_STRING = pd.Series(["a"]).dtype

# integers and booleans through pandas' nullable types: a column with nulls stays exact (a
# boolean one is not turned into objects); :func:`_plain_dtypes` makes the ones without nulls
# numpy types again
_ARROW_INTEGERS: dict[pa.DataType, Any] = {
    pa.bool_(): pd.BooleanDtype(),
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
}


def _nullable_integer_dtype(dtype: Any) -> Any:
    """pandas' exact nullable integer type for an integer column with missing values."""
    unsigned64 = pd.api.types.is_unsigned_integer_dtype(dtype) and dtype.itemsize >= 8
    return pd.UInt64Dtype() if unsigned64 else pd.Int64Dtype()


def _arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow table to a pandas frame with numpy dtypes, ignoring stored pandas index metadata."""
    drop = [name for name in table.column_names if _PANDAS_INDEX_COLUMN.fullmatch(name)]
    if drop:
        table = table.drop_columns(drop)
    return table.to_pandas(ignore_metadata=True, types_mapper=_ARROW_INTEGERS.get)


def table_to_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as a DataFrame whose integer columns stay exact: numpy integers, or
    pandas' nullable integers where a column has nulls (``Table.to_pandas`` would make those
    float64, rounding 64-bit IDs). Other columns convert as ``to_pandas`` converts them."""
    frame = _arrow_to_pandas(table)
    for i, dtype in enumerate(frame.dtypes):
        column = frame.iloc[:, i]
        if isinstance(dtype, pd.api.extensions.ExtensionDtype) and not column.hasnans:
            if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
                frame.isetitem(i, column.to_numpy(dtype.numpy_dtype))
    return frame


def _check_columns(path: Path, available: Sequence[str], columns: list[str] | None) -> None:
    if columns is None:
        return
    present = set(available)
    missing = [c for c in columns if c not in present]
    if missing:
        shown = ", ".join(list(available)[:20]) + (", ..." if len(available) > 20 else "")
        raise CatalogError(f"{path}: missing column(s) {missing}; available: {shown}")


def _check_unique_columns(where: str | Path, names: Iterable[str]) -> None:
    """Raise :class:`CatalogError` naming the column names that occur more than once."""
    duplicated = [name for name, count in collections.Counter(names).items() if count > 1]
    if duplicated:
        raise CatalogError(
            f"{where}: duplicate column name(s) {duplicated}; each column needs its own name"
        )


def _normalise_columns(columns: Sequence[str] | str | None) -> list[str] | None:
    if columns is None:
        return None
    return [columns] if isinstance(columns, str) else list(columns)


# --------------------------------------------------------------------------------------------
# Readers: each yields at least one (possibly empty) frame, so callers always see the columns.
# ``batch_size=None`` means "everything in one frame".
# --------------------------------------------------------------------------------------------


def _rebatch(batches: Iterable[pa.RecordBatch], size: int | None) -> Iterator[pa.Table]:
    """Regroup record batches into tables of exactly ``size`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while size is not None and count >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _partition_keys(root: Path, file: Path) -> dict[str, str]:
    """Hive ``key=value`` folder names between ``root`` and ``file``."""
    keys = {}
    for part in file.relative_to(root).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            keys[unquote(key)] = unquote(value)
    return keys


def _partition_array(values: list[str | None]) -> pa.Array:
    """Typed array of hive partition values: int64, else float64, else string."""
    for kind in (pa.int64(), pa.float64()):
        try:
            return pa.array(values, pa.string()).cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return pa.array(values, pa.string())


class _ParquetSource:
    """The Parquet files of a catalogue (single file, directory dataset or HATS partitions).

    Files are read one at a time with ``ParquetFile.iter_batches`` (no pre-buffering), which
    keeps memory to about one row group plus one batch. The first file's schema is the
    catalogue's schema; hive ``key=value`` folders of a directory dataset add columns.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        if fmt == "hats":
            self.files = _hats_files(path)
            keys: list[dict[str, str]] = [{} for _ in self.files]
        elif path.is_dir():
            self.files = _parquet_files(path)
            keys = [_partition_keys(path, f) for f in self.files]
        else:
            self.files, keys = [path], [{}]
        if not self.files:
            raise CatalogError(f"{path}: no Parquet files found")
        with self._open(self.files[0]) as first:
            physical = first.schema_arrow
        _check_unique_columns(self._where(self.files[0]), physical.names)
        names = [n for n in physical.names if not _PANDAS_INDEX_COLUMN.fullmatch(n)]
        key_names = [k for k in dict.fromkeys(k for d in keys for k in d) if k not in names]
        # one typed value per file and partition key (None where a file lacks the key)
        self.keys: dict[str, pa.Array] = {
            k: _partition_array([d.get(k) for d in keys]) for k in key_names
        }
        fields = [physical.field(n) for n in names]
        fields += [pa.field(k, arr.type) for k, arr in self.keys.items()]
        self.schema = pa.schema(fields)

    def _where(self, file: Path) -> str:
        """How messages name ``file``: the catalogue, and the file when it is a part."""
        return f"{self.path}" if file == self.path else f"{self.path}: file {file}"

    def _open(self, file: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(file, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise CatalogError(
                f"{self._where(file)}: not a readable Parquet file: {_one_line(exc)}"
            ) from exc

    def _error(self, file: Path, exc: BaseException) -> CatalogError:
        return CatalogError(
            f"{self._where(file)}: corrupted or unreadable Parquet data: {_one_line(exc)}"
        )

    def count_rows(self) -> int:
        total = 0
        for file in self.files:
            with self._open(file) as handle:
                total += handle.metadata.num_rows
        return total

    def columns_with_nulls(self, columns: list[str]) -> set[str]:
        """The integer and boolean ``columns`` that hold a null in some file, by the files'
        row-group statistics (a column without statistics counts as one that may)."""
        wanted = {
            c
            for c in columns
            if c not in self.keys
            and (
                pa.types.is_integer(self.schema.field(c).type)
                or pa.types.is_boolean(self.schema.field(c).type)
            )
        }
        found: set[str] = set()
        for file in self.files:
            if not wanted - found:
                break
            with self._open(file) as handle:
                meta = handle.metadata
                index = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
                for name in wanted - found:
                    j = index.get(name)
                    for g in range(meta.num_row_groups if j is not None else 0):
                        stats = meta.row_group(g).column(j).statistics
                        if stats is None or not stats.has_null_count or stats.null_count > 0:
                            found.add(name)
                            break
        return found

    def record_batches(self, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        """Record batches of ``columns`` (cast to the catalogue schema), file after file."""
        target = pa.schema([self.schema.field(c) for c in columns])
        for i, file in enumerate(self.files):
            with self._open(file) as handle:
                _check_unique_columns(self._where(file), handle.schema_arrow.names)
                present = set(handle.schema_arrow.names)
                physical = [c for c in columns if c not in self.keys]
                missing = [c for c in physical if c not in present]
                if missing:
                    raise CatalogError(f"{self.path}: file {file} lacks column(s) {missing}")
                try:
                    for batch in handle.iter_batches(batch_size=batch_size, columns=physical):
                        n = batch.num_rows
                        arrays = [
                            pa.repeat(self.keys[c][i], n) if c in self.keys else batch.column(c)
                            for c in columns
                        ]
                        yield pa.RecordBatch.from_arrays(
                            [self._cast(file, a, f) for a, f in zip(arrays, target, strict=True)],
                            schema=target,
                        )
                except (pa.ArrowException, OSError) as exc:
                    raise self._error(file, exc) from exc

    def _cast(self, file: Path, array: pa.Array, field: pa.Field) -> pa.Array:
        if array.type == field.type:
            return array
        try:
            return array.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise CatalogError(
                f"{self.path}: file {file} column {field.name!r} has type {array.type}, "
                f"not {field.type} as in the first file"
            ) from exc


def _read_parquet(
    path: Path, fmt: str, batch_size: int | None, columns: list[str] | None, nullable: set[str]
) -> Iterator[pd.DataFrame]:
    source = _ParquetSource(path, fmt)
    _check_columns(path, source.schema.names, columns)
    wanted = columns if columns is not None else source.schema.names
    if batch_size is not None:
        nullable.update(source.columns_with_nulls(wanted))
    batches = source.record_batches(wanted, min(batch_size or 1 << 16, 1 << 16))
    empty = True
    for table in _rebatch(batches, batch_size):
        empty = False
        yield _arrow_to_pandas(table)
    if empty:
        yield _arrow_to_pandas(pa.schema([source.schema.field(c) for c in wanted]).empty_table())


#: Rows per chunk of a CSV file's first pass, which finds the type of each column
_CSV_SCAN_ROWS = 1 << 16

#: The nullable dtype pandas parses for each kind of CSV column chunk (see :func:`_csv_kinds`);
#: an all-blank chunk is parsed as ``Int64``
_CSV_KIND_DTYPES = {
    "empty": "Int64",
    "int": "Int64",
    "negint": "Int64",
    "uint": "UInt64",
    "float": "Float64",
    "bool": "boolean",
    "text": "string",
    "uint_text": "string",
}


def _csv_kinds(chunk: pd.DataFrame) -> dict[str, str]:
    """What each column of a parsed CSV chunk holds: ``empty`` (all missing), ``int`` /
    ``negint`` (``Int64`` without / with negative values), ``uint``, ``float``, ``bool``,
    ``uint_text`` (text of unsigned integers: pandas parses an integer above 2**63 with a
    blank in its chunk as text), ``text`` or ``mixed`` (any other dtype)."""
    kinds = {}
    for i, (name, dtype) in enumerate(chunk.dtypes.items()):
        column = chunk.iloc[:, i]
        if column.isna().all():
            kind = "empty"
        elif dtype == pd.Int64Dtype():
            kind = "negint" if column.min() < 0 else "int"
        elif dtype == pd.UInt64Dtype():
            kind = "uint"
        elif dtype == pd.Float64Dtype():
            kind = "float"
        elif dtype == pd.BooleanDtype():
            kind = "bool"
        elif isinstance(dtype, pd.StringDtype):
            kind = "uint_text" if _unsigned_integer_text(column) else "text"
        else:
            kind = "mixed"
        kinds[str(name)] = kind
    return kinds


#: The texts pandas' ``read_csv`` reads as missing by default (its ``na_values`` docs)
_CSV_MISSING_TEXTS = frozenset(
    "|#N/A|#N/A N/A|#NA|-1.#IND|-1.#QNAN|-NaN|-nan|1.#IND|1.#QNAN|<NA>|N/A|NA|NULL|NaN|None"
    "|n/a|nan|null".split("|")
)


def _unsigned_integer_text(column: pd.Series) -> bool:
    """Whether every value of a text column is a decimal integer within 0 .. 2**64 - 1 or a
    missing value (pandas leaves those as text, e.g. "", in such a column)."""
    values = column.dropna()
    values = values[~values.isin(_CSV_MISSING_TEXTS)]
    if not len(values) or not values.str.fullmatch(r"\d{1,20}").all():
        return False
    return max(map(int, values)) < 2**64


def _common_csv_dtype(kinds: set[str]) -> str:
    """The dtype pandas parses for a CSV column whose chunks hold ``kinds``, had it seen all
    its values at once: integers stay exact integers, integers and decimals make floats,
    anything else mixed makes text."""
    kinds = kinds - {"empty"}
    if "uint_text" in kinds:
        return "UInt64" if kinds <= {"int", "uint", "uint_text"} else "string"
    if kinds == {"bool"}:
        return "boolean"
    if kinds <= {"int", "negint"}:
        return "Int64"
    if kinds <= {"int", "uint"}:
        return "UInt64"
    if kinds <= {"int", "negint", "uint", "float"}:
        return "Float64"
    return "string"


def _csv_dtypes(chunk_kinds: list[dict[str, str]]) -> tuple[dict[str, str], bool]:
    """The ``dtype=`` that makes every part of a CSV file parse as the file parsed at once,
    from what its chunks hold, and whether the chunks were parsed alike.

    Every column but those of integers (or blanks) throughout is set: a part of a float,
    boolean or text column can look like integers, or be blank, and parse as ``Int64``.
    """
    dtypes = {}
    agree = True
    for name in chunk_kinds[0]:
        kinds = {chunk[name] for chunk in chunk_kinds}
        common = _common_csv_dtype(kinds)
        agree = agree and {_CSV_KIND_DTYPES.get(kind) for kind in kinds} == {common}
        if common != "Int64":
            dtypes[name] = common
    return dtypes, agree


def _csv_options(path: Path, whitespace: bool) -> dict[str, Any]:
    """pandas' CSV options: nullable types while parsing (an integer column with blanks stays
    exact, ``Int64``), whitespace-separated for a text table, never the first column as the
    index (a file whose data lines end with a separator would shift every column), and the
    names of a commented header line (``# id ra dec ...``, astropy's ``commented_header``)."""
    options: dict[str, Any] = {"dtype_backend": "numpy_nullable", "index_col": False}
    if whitespace:
        options["sep"] = r"\s+"
    names = _commented_header(path, whitespace)
    if names is not None:
        options.update(names=names, header=None, skiprows=1)
    return options


def _commented_header(path: Path, whitespace: bool) -> list[str] | None:
    """The column names of a header line that starts with ``#``, else None."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            first = handle.readline()
    except OSError:
        return None  # pandas reports it
    if not first.startswith("#"):
        return None
    text = first[1:].strip()
    names = text.split() if whitespace else [name.strip() for name in text.split(",")]
    return names if names and all(names) else None


@contextlib.contextmanager
def _csv_errors(path: Path, whitespace: bool) -> Iterator[None]:
    """pandas' errors on a CSV or text table as :class:`CatalogError` naming the file."""
    kind = "text table" if whitespace else "CSV"
    try:
        yield
    except pd.errors.EmptyDataError as exc:
        raise CatalogError(f"{path}: empty {kind} file (no header line)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        if isinstance(exc, CatalogError):
            raise
        raise CatalogError(f"{path}: cannot parse {kind}: {_one_line(exc)}") from exc


def _csv_header(path: Path, whitespace: bool) -> pd.DataFrame:
    """The columns of a CSV or text table as an empty frame, from its header line alone;
    :class:`CatalogError` for a file without one or with a name given twice."""
    options = _csv_options(path, whitespace)
    with _csv_errors(path, whitespace):
        names = options.get("names")
        if names is None:
            # the header line as written (pandas renames a repeated name rmag to rmag.1)
            raw = pd.read_csv(
                path, header=None, nrows=1, dtype=str, keep_default_na=False, **options
            )
            names = [name for name in raw.iloc[0] if name]
        _check_unique_columns(path, list(names))
        header = pd.read_csv(path, nrows=0, **options)
        try:
            first = pd.read_csv(
                path, nrows=1, header=None, skiprows=1, dtype=str, **_separator(options)
            )
        except pd.errors.EmptyDataError:  # a header line alone
            return header
        if first.shape[1] > header.shape[1] and first.iloc[0, header.shape[1] :].notna().any():
            raise CatalogError(
                f"{path}: its first data line has {first.shape[1]} fields, its header "
                f"{header.shape[1]} names: the columns cannot be matched to their names"
            )
        return header


def _separator(options: Mapping[str, Any]) -> dict[str, Any]:
    """The separator option alone, of :func:`_csv_options`."""
    return {"sep": options["sep"]} if "sep" in options else {}


def _read_csv(
    path: Path,
    batch_size: int | None,
    columns: list[str] | None,
    nullable: set[str],
    whitespace: bool = False,
) -> Iterator[pd.DataFrame]:
    """CSV, or whitespace-separated text when ``whitespace`` (both with a header line).

    pandas types each chunk of a file from that chunk alone, so a column could come out
    integer in one batch and text or float in the next. A first pass reads the file in chunks
    (the requested columns only) to find each column's type over the whole file; a file in one
    batch whose chunks agree is then put together from them, any other is read again with
    ``dtype=`` set, so every batch (and the whole read) has the type pandas gives the column
    read at once: integers (exact ``Int64``) where all are, float where some are decimals, text
    where any is not a number.
    """
    options = _csv_options(path, whitespace)
    header = _csv_header(path, whitespace)
    _check_columns(path, [str(c) for c in header.columns], columns)

    def read(size: int | None, **kwargs: Any) -> Iterator[pd.DataFrame]:
        """The file in frames of ``size`` rows, or in one frame."""
        if size is None:
            frame = pd.read_csv(path, usecols=columns, **options, **kwargs)
            yield frame if columns is None else frame[columns]
            return
        with pd.read_csv(path, usecols=columns, chunksize=size, **options, **kwargs) as reader:
            for chunk in reader:
                yield chunk if columns is None else chunk[columns]

    with _csv_errors(path, whitespace):
        chunk_kinds: list[dict[str, str]] = []
        kept: list[pd.DataFrame] = []  # the chunks, while they fit in one batch
        rows = 0
        # each chunk typed as a whole (pandas' low_memory types parts of it separately)
        for chunk in read(_CSV_SCAN_ROWS, low_memory=False):
            kinds = _csv_kinds(chunk)
            chunk_kinds.append(kinds)
            nullable.update(str(c) for c in chunk.columns[chunk.isna().any().to_numpy()])
            nullable.update(  # missing values pandas left as text (see _csv_kinds)
                name
                for name, kind in kinds.items()
                if kind == "uint_text" and chunk[name].isin(_CSV_MISSING_TEXTS).any()
            )
            rows += len(chunk)
            if batch_size is None or rows <= batch_size:
                kept.append(chunk)
            else:
                kept.clear()
        if not chunk_kinds:
            yield header if columns is None else header[columns]
            return
        dtypes, agree = _csv_dtypes(chunk_kinds)
        if kept and agree:  # one batch, parsed alike throughout: no second pass
            yield kept[0] if len(kept) == 1 else pd.concat(kept, ignore_index=True)
            return
        kept.clear()
        yield from read(batch_size, dtype=dtypes)


def _fits_table_hdu(hdul: Any, path: Path) -> Any:
    """The first table HDU of an open FITS file, its column names checked to be unique; a
    warning names it when the file holds more than one table."""
    from astropy.io import fits

    with warnings.catch_warnings():  # astropy only warns about a truncated file: make it fail
        warnings.filterwarnings("error", message="(?s).*(truncated|corrupted)")
        try:
            tables = [
                (index, hdu)
                for index, hdu in enumerate(hdul)
                if isinstance(hdu, fits.BinTableHDU | fits.TableHDU)
                and not isinstance(hdu, fits.CompImageHDU)
            ]
        except (OSError, ValueError, Warning) as exc:
            raise CatalogError(
                f"{path}: corrupted or truncated FITS file: {_one_line(exc)}"
            ) from exc
    if not tables:
        raise CatalogError(f"{path}: FITS file has no table HDU (only images or headers)")
    index, table = tables[0]
    if len(tables) > 1:
        others = ", ".join(str(i) for i, _ in tables[1:])
        warnings.warn(
            f"{path}: {len(tables)} table HDUs; reading HDU {index} ({table.name or 'no name'}),"
            f" not HDU {others}",
            UserWarning,
            stacklevel=3,
        )
    _check_unique_columns(path, table.columns.names)
    return table


def _fits_column(values: Any, null: Any) -> Any:
    """One FITS column slice as a 1-d array in native byte order; vector cells become an
    object column of native arrays; integers equal to the column's ``null`` (TNULL) are
    missing values of a nullable integer column."""
    arr = np.asarray(values)
    if arr.ndim > 1 or arr.dtype == object:
        return [_native(np.asarray(cell)) for cell in arr]
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "ascii", errors="replace")
    mask = _fits_null_mask(arr, null)
    if mask is not None and mask.any():
        unsigned64 = arr.dtype.kind == "u" and arr.dtype.itemsize >= 8
        if unsigned64:
            return pd.arrays.IntegerArray(_native(arr).astype(np.uint64), mask)
        return pd.arrays.IntegerArray(_native(arr).astype(np.int64), mask)
    return arr


def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (FITS stores big-endian; Arrow needs native)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _fits_null_mask(arr: np.ndarray, null: Any) -> np.ndarray | None:
    """Where an integer column equals its TNULL value; None when it has none."""
    if null is None or arr.dtype.kind not in "iu":
        return None
    try:
        return arr == int(null)
    except (TypeError, ValueError):
        return None


def _fits_has_null(data: Any, name: str, null: Any, step: int) -> bool:
    """Whether an integer FITS column takes its TNULL value anywhere (read slice by slice)."""
    for start in range(0, len(data) if null is not None else 0, step):
        mask = _fits_null_mask(np.asarray(data[start : start + step].field(name)), null)
        if mask is None:
            return False
        if mask.any():
            return True
    return False


def _read_fits(
    path: Path, batch_size: int | None, columns: list[str] | None, nullable: set[str]
) -> Iterator[pd.DataFrame]:
    from astropy.io import fits

    try:
        hdul = fits.open(path, memmap=True, mode="readonly")
    except (OSError, ValueError, TypeError) as exc:
        raise CatalogError(f"{path}: not a readable FITS file: {_one_line(exc)}") from exc
    with hdul:
        hdu = _fits_table_hdu(hdul, path)
        fcols = hdu.columns
        _check_columns(path, fcols.names, columns)
        names = columns if columns is not None else list(fcols.names)
        nulls = {c.name: c.null for c in fcols}
        nrows = int(hdu.header.get("NAXIS2", 0))
        step = max(nrows, 1) if batch_size is None else batch_size
        try:
            data = hdu.data
            if data is None:
                yield pd.DataFrame({n: [] for n in names})
                return
            if step < nrows:  # integer columns with a TNULL value somewhere stay nullable
                nullable.update(n for n in names if _fits_has_null(data, n, nulls[n], step))
            for start in range(0, max(nrows, 1), step):
                chunk = data[start : start + step]
                yield pd.DataFrame({n: _fits_column(chunk.field(n), nulls[n]) for n in names})
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise CatalogError(
                f"{path}: corrupted or truncated FITS table: {_one_line(exc)}"
            ) from exc


def _batches(
    path: PathLike, batch_size: int | None, columns: Sequence[str] | str | None
) -> Iterator[pd.DataFrame]:
    p = Path(path)
    fmt = detect_format(p)
    if p.is_file() and p.stat().st_size == 0:
        raise CatalogError(f"{p}: file is empty (0 bytes)")
    cols = _normalise_columns(columns)
    # integer and boolean columns with missing values anywhere: nullable in every batch (the
    # readers fill it before their first batch)
    nullable: set[str] = set()
    if fmt in ("parquet", "hats"):
        frames = _read_parquet(p, fmt, batch_size, cols, nullable)
    elif fmt in ("csv", "text"):
        frames = _read_csv(p, batch_size, cols, nullable, whitespace=fmt == "text")
    else:
        frames = _read_fits(p, batch_size, cols, nullable)
    offset = 0
    first: pd.Series | None = None
    for frame in frames:
        frame = _plain_dtypes(frame, nullable)
        if first is None:
            first = frame.dtypes
        else:
            _as_first_batch(frame, first)
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        offset += len(frame)
        yield frame


def _as_first_batch(frame: pd.DataFrame, first: pd.Series) -> None:
    """Give ``frame``'s integer and boolean columns the first batch's nullable types where
    that batch had missing values and this one has none (in place), so that a column keeps
    one type from batch to batch. (A column whose first missing value comes after the first
    batch turns nullable from that batch on: numpy types cannot hold it.)"""
    for i, (dtype, wanted) in enumerate(zip(frame.dtypes, first, strict=True)):
        if dtype == wanted or not isinstance(wanted, pd.api.extensions.ExtensionDtype):
            continue
        if isinstance(dtype, np.dtype) and dtype.kind in "biu" and dtype.kind == wanted.kind:
            frame.isetitem(i, frame.iloc[:, i].astype(wanted))


def iter_catalog_batches(
    path: PathLike, batch_size: int = 1_000_000, columns: Sequence[str] | None = None
) -> Iterator[pd.DataFrame]:
    """Stream a catalogue as DataFrames of ``batch_size`` rows (the last may be shorter).

    Memory stays bounded by a few batches whatever the catalogue size. Batch indexes continue
    one another, so ``pd.concat(batches)`` equals :func:`read_catalog`. A column has the same
    type in every batch: a CSV or text file longer than one batch is first scanned for the
    types, and an integer or boolean column with a missing value anywhere (by the Parquet
    files' statistics, the FITS column's TNULL, the CSV scan) is nullable (``Int64``,
    ``boolean``) in every batch, so that a file written batch by batch records one type.
    (A Parquet column without statistics counts as one with missing values.) An empty
    catalogue yields one empty frame with the columns.

    Raises
    ------
    CatalogError
        For a missing, empty, corrupted or unrecognised catalogue, a missing column or
        duplicate column names.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    frames = _batches(path, batch_size, columns)
    first = next(frames)  # fail now, not at the caller's first iteration, on a bad input

    def stream() -> Iterator[pd.DataFrame]:
        try:
            yield first
            yield from frames
        finally:
            frames.close()

    return stream()


def catalog_columns(path: PathLike) -> list[str]:
    """A catalogue's column names, read without its data (a CSV's header line, a Parquet
    schema, a FITS table's first row).

    Raises
    ------
    CatalogError
        As :func:`read_catalog` does, for a file it could not read.
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt in ("csv", "text") and not (p.is_file() and p.stat().st_size == 0):
        return [str(c) for c in _csv_header(p, whitespace=fmt == "text").columns]
    return [str(c) for c in next(_batches(p, 1, None)).columns]


def read_catalog(path: PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a whole catalogue (Parquet file/directory, HATS, CSV, text or FITS) into a DataFrame.

    Numeric columns are numpy ``float64`` / ``int64``; rows keep file order (HATS: partition
    order as listed by the catalogue, then row order); the index is a ``RangeIndex``.

    Raises
    ------
    CatalogError
        For a missing, empty, corrupted or unrecognised catalogue, a missing column or
        duplicate column names.
    """
    frames = list(_batches(path, None, columns))
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def count_rows(path: PathLike) -> int:
    """Number of rows in a catalogue, from metadata where the format allows (Parquet, HATS, FITS).

    CSV files are scanned in chunks (one column parsed).
    """
    p = Path(path)
    fmt = detect_format(p)
    if p.is_file() and p.stat().st_size == 0:
        raise CatalogError(f"{p}: file is empty (0 bytes)")
    if fmt in ("parquet", "hats"):
        return _ParquetSource(p, fmt).count_rows()
    if fmt == "fits":
        from astropy.io import fits

        try:
            with fits.open(p, memmap=True, mode="readonly") as hdul:
                return int(_fits_table_hdu(hdul, p).header.get("NAXIS2", 0))
        except (OSError, ValueError, TypeError) as exc:
            if isinstance(exc, CatalogError):
                raise
            raise CatalogError(f"{p}: not a readable FITS file: {_one_line(exc)}") from exc
    whitespace = fmt == "text"
    with _csv_errors(p, whitespace):
        options = _csv_options(p, whitespace)
        with pd.read_csv(p, usecols=[0], chunksize=1 << 20, **options) as reader:
            return sum(len(chunk) for chunk in reader)


# --------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------


def with_column_info(
    schema: pa.Schema, info_of: Callable[[str], ColumnInfo | None] = column_info
) -> pa.Schema:
    """``schema`` with each column's unit and description from ``info_of`` (default the
    estimate columns of :mod:`photodist.output_columns`) in its field metadata (keys
    ``unit`` and ``description``); other fields and their metadata are left as they are."""
    fields = []
    for field in schema:
        info = info_of(field.name)
        if info is not None:
            meta = dict(field.metadata or {})
            if info.unit:
                meta[b"unit"] = info.unit.encode()
            meta[b"description"] = info.description.encode()
            field = field.with_metadata(meta)
        fields.append(field)
    return pa.schema(fields, metadata=schema.metadata)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth Parquet dictionary encoding: categorical (Arrow dictionary) ones.

    Trying a dictionary on every column (the Parquet writer's default) costs ~10x the write
    time on the float columns of a result table, and makes the file larger.
    """
    return [f.name for f in schema if pa.types.is_dictionary(f.type)]


def _output_format(path: Path) -> str:
    fmt = _file_format(path)
    if fmt is None:
        raise CatalogError(f"{path}: unsupported output format (use .parquet, .csv or .fits)")
    if fmt == "text":
        raise CatalogError(f"{path}: text tables are read, not written; use .parquet or .csv")
    if fmt == "parquet" and path.suffix.lower() not in PARQUET_SUFFIXES:
        raise CatalogError(f"{path}: compressed Parquet names are not supported; use .parquet")
    return fmt


def _prepare_output(path: PathLike, overwrite: bool) -> Path:
    """Check the destination and create its missing parent directories."""
    final = Path(path)
    if final.is_dir():
        raise FileExistsError(f"{final} is a directory; refusing to replace it")
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; use --overwrite to replace it")
    parent = final.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot write {final}: {ancestor} is a file, not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise PermissionError(
            f"cannot write {final}: no permission to create directory {parent}"
        ) from exc
    return final


def _reserve_temp(final: Path) -> Path:
    """Create an empty hidden temporary file next to ``final`` (same suffixes, umask honoured)."""
    tmp = final.with_name(f".tmp-{secrets.token_hex(6)}-{final.name}")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except PermissionError as exc:
        raise PermissionError(
            f"cannot write {final}: directory {final.parent} is not writable"
        ) from exc
    except OSError as exc:
        raise OSError(f"cannot write {final}: {_one_line(exc)}") from exc
    os.close(fd)
    return tmp


@contextlib.contextmanager
def _written_then_moved(final: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden temporary file beside ``final`` to write; moved onto ``final`` when the block
    ends normally (:func:`_commit`), removed if it raises."""
    tmp = _reserve_temp(final)
    try:
        yield tmp
        _commit(tmp, final, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` (its folder created if needed) through a hidden temporary
    file beside it, moved onto it when complete; new files get the umask's permissions."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _written_then_moved(final, overwrite=True) as tmp:
        tmp.write_bytes(payload)
    return final


def _commit(tmp: Path, final: Path, overwrite: bool) -> None:
    """Flush ``tmp`` to disk and move it onto ``final``."""
    with open(tmp, "ab") as fh:
        os.fsync(fh.fileno())
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; use --overwrite to replace it")
    os.replace(tmp, final)


def run_file(output: PathLike, suffix: str) -> Path:
    """A file a run writes beside its OUTPUT: ``OUTPUT.run.json`` (``suffix`` ".run.json",
    the summary) or ``OUTPUT.prior.npz`` (".prior.npz", the prior map used)."""
    output = Path(output)
    return output.with_name(output.name + suffix)


def read_run_summary(output: PathLike) -> dict[str, Any]:
    """The summary ``OUTPUT.run.json`` that ``photodist run`` and ``bayes`` write beside
    their output; {} when there is none.

    Raises
    ------
    CatalogError
        The summary is not a readable JSON object (naming the file).
    """
    path = run_file(output, ".run.json")
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path}: unreadable run summary ({exc})") from exc
    if not isinstance(summary, dict):
        raise CatalogError(f"{path}: unreadable run summary (not a JSON object)")
    return summary


def paths_overlap(first: PathLike, second: PathLike) -> bool:
    """Whether two paths are the same or one lies inside the other (an output that would
    replace, or be deleted with, an input)."""
    a, b = Path(first).resolve(), Path(second).resolve()
    return a == b or a in b.parents or b in a.parents


def check_output_path(path: PathLike, overwrite: bool = False) -> Path:
    """Check, before any long computation, that :func:`write_table` could write ``path``.

    Validates the suffix, refuses an existing file unless ``overwrite``, creates missing parent
    directories and tries creating (then removes) a temporary file there.

    Raises
    ------
    FileExistsError, PermissionError, NotADirectoryError, CatalogError
        As :func:`write_table` would.
    """
    final = Path(path)
    _output_format(final)
    final = _prepare_output(final, overwrite)
    _reserve_temp(final).unlink()
    return final


def _frame_for_output(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep a meaningful index as columns; drop a plain unnamed ``RangeIndex``."""
    index = frame.index
    if isinstance(index, pd.RangeIndex) and index.name is None:
        return frame
    return frame.reset_index()


def write_table(frame: pd.DataFrame, path: PathLike, overwrite: bool = False) -> Path:
    """Write ``frame`` atomically as Parquet, CSV or FITS, chosen by the suffix of ``path``.

    The data go to a hidden temporary file in the same directory, renamed onto ``path`` only
    when complete. Missing parent directories are created. A named or non-range index is
    written as columns. FITS cannot store missing strings; they are written as empty strings.
    A FITS boolean column with missing values is written as integers 0 / 1 with nulls
    (astropy's FITS logical columns have no missing value).

    Returns
    -------
    Path
        The written path.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    PermissionError, NotADirectoryError
        If the destination directory cannot be written.
    CatalogError
        If the suffix is not a supported output format.
    """
    final = Path(path)
    fmt = _output_format(final)
    final = _prepare_output(final, overwrite)
    data = _frame_for_output(frame)
    with _written_then_moved(final, overwrite) as tmp:
        if fmt == "parquet":
            categorical = [
                str(c) for c in data.columns if isinstance(data[c].dtype, pd.CategoricalDtype)
            ]
            table = pa.Table.from_pandas(data, preserve_index=False)
            table = table.cast(with_column_info(table.schema))
            pq.write_table(table, tmp, use_dictionary=categorical)
        elif fmt == "csv":
            data.to_csv(tmp, index=False)
        else:
            fits_hdu_with_units(_fits_table(data)).writeto(tmp, overwrite=True)
    return final


def write_batches(parts: Iterable[pd.DataFrame], path: PathLike, overwrite: bool = False) -> int:
    """Write frames one after another as one table at ``path`` (atomically, as
    :func:`write_table`); returns the rows written.

    Parquet and CSV are written batch by batch, so memory stays that of a batch whatever
    the number of rows. A FITS binary table is assembled in memory first (about three times
    its size on disk): for catalogues of many millions of rows, write Parquet or CSV.
    """
    final = Path(path)
    fmt = _output_format(final)
    if fmt == "parquet":
        n_rows = 0
        with AtomicParquetWriter(final, overwrite=overwrite) as writer:
            for part in parts:
                writer.write(part)
                n_rows += len(part)
        return n_rows
    if fmt == "fits":
        frames = list(parts)
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        write_table(table, final, overwrite=overwrite)
        return len(table)
    n_rows = 0
    with _written_then_moved(_prepare_output(final, overwrite), overwrite) as tmp:
        for part in parts:
            first = n_rows == 0
            _frame_for_output(part).to_csv(
                tmp, mode="w" if first else "a", header=first, index=False
            )
            n_rows += len(part)
        if n_rows == 0 and tmp.stat().st_size == 0:
            pd.DataFrame().to_csv(tmp, index=False)
    return n_rows


def _fits_table(frame: pd.DataFrame) -> Any:
    """``frame`` as an astropy table ready for FITS (:func:`_fits_ready`), each integer column
    with missing values given a TNULL value that none of its values takes (astropy's
    default, 999999, would turn a valid 999999 into a missing value)."""
    from astropy.table import MaskedColumn, Table

    table = Table.from_pandas(_fits_ready(frame), index=False)
    for name in table.colnames:
        column = table[name]
        if isinstance(column, MaskedColumn) and column.dtype.kind in "iu" and column.mask.any():
            column.fill_value = _unused_integer(np.asarray(column.data)[~column.mask], column.dtype)
    return table


def fits_hdu_with_units(
    table: Any, info_of: Callable[[str], ColumnInfo | None] = column_info
) -> Any:
    """The binary-table HDU of ``table`` (as astropy's FITS writer makes it) with each
    column's unit (``TUNITn``) and description (``TCOMMn``) from ``info_of`` (default the
    estimate columns of :mod:`photodist.output_columns`). A unit the FITS standard lacks
    (``dex``) goes into the description instead, since FITS readers could not parse it."""
    from astropy import units
    from astropy.io import fits

    comments = {}
    for name in table.colnames:
        info = info_of(name)
        if info is None:
            continue
        comments[name] = info.description
        if not info.unit:
            continue
        try:
            units.Unit(info.unit).to_string("fits")
        except ValueError:
            comments[name] = f"{info.description} ({info.unit})"
        else:
            table[name].unit = info.unit
    hdu = fits.table_to_hdu(table, character_as_bytes=True)
    for k, name in enumerate(table.colnames, start=1):
        if name in comments:
            hdu.header[f"TCOMM{k}"] = comments[name]
    return hdu


def _unused_integer(values: np.ndarray, dtype: np.dtype) -> int:
    """An integer of ``dtype`` that ``values`` do not take: its smallest value when free,
    else the smallest gap above the values' minimum. (astropy writes an unsigned 64-bit
    column's TNULL as the value itself, which must then lie below 2**63.)"""
    info = np.iinfo(dtype)
    extreme = info.min
    if values.size == 0 or not (values == extreme).any():
        return int(extreme)
    taken = np.unique(values)
    gaps = np.flatnonzero(np.diff(taken) > 1)
    if gaps.size:
        return int(taken[gaps[0]]) + 1
    return int(taken[-1]) + 1 if taken[-1] < info.max else int(taken[0]) - 1


def _fits_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the columns FITS cannot hold as they are made writable: missing text
    as empty strings, a boolean column with missing values as nullable 0 / 1 integers,
    8-bit signed integers as 16-bit (FITS has no signed byte: astropy would write them as
    logical)."""
    out = frame.copy(deep=False)
    for i, dtype in enumerate(out.dtypes):
        column = out.iloc[:, i]
        if pd.api.types.is_bool_dtype(dtype) and column.hasnans:
            out.isetitem(i, column.astype(pd.Int16Dtype()))  # (FITS stores int8 as logical)
        elif pd.api.types.is_signed_integer_dtype(dtype) and dtype.itemsize == 1:
            out.isetitem(i, column.astype(pd.Int16Dtype() if column.hasnans else np.int16))
        elif dtype == np.dtype(object) and _all_of(column, decimal.Decimal):
            out.isetitem(i, column.astype(float))  # (Parquet decimals)
        elif dtype == np.dtype(object) and _all_of(column, dict):  # Parquet structs
            name = out.columns[i]
            warnings.warn(f"column {name!r}: records written as JSON text", UserWarning, 3)
            out.isetitem(i, column.map(_json_text, na_action="ignore").fillna(""))
        elif (isinstance(dtype, pd.StringDtype) or dtype == np.dtype(object)) and column.hasnans:
            if _all_of(column, str):
                out.isetitem(i, column.fillna("").astype(_DEFAULT_STRING))
    return out


def _all_of(column: pd.Series, kind: type) -> bool:
    """Whether every non-missing value of ``column`` is a ``kind`` (and there is one)."""
    values = column.dropna()
    return bool(len(values)) and bool(values.map(lambda v: isinstance(v, kind)).all())


def _json_text(value: Any) -> str:
    return json.dumps(value, default=json_default)


class AtomicParquetWriter:
    """Write a Parquet file incrementally and atomically.

    Batches (``pyarrow.RecordBatch``, ``pyarrow.Table`` or ``pandas.DataFrame``) go to a hidden
    temporary file next to ``path``; it is renamed onto ``path`` when the ``with`` block exits
    normally and removed if it raises. The schema is ``schema`` or that of the first batch;
    every batch must have the same column names (any order) and is cast to it.
    ``rows_written`` counts the rows so far.

    Examples
    --------
    >>> with AtomicParquetWriter("out.parquet") as writer:  # doctest: +SKIP
    ...     for batch in iter_catalog_batches("in.parquet"):
    ...         writer.write(batch)
    """

    def __init__(
        self, path: PathLike, schema: pa.Schema | None = None, overwrite: bool = False
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.overwrite = overwrite
        self.rows_written = 0
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> AtomicParquetWriter:
        if self.path.suffix.lower() not in PARQUET_SUFFIXES:
            raise CatalogError(f"{self.path}: output name must end in .parquet")
        final = _prepare_output(self.path, self.overwrite)
        self._tmp = _reserve_temp(final)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _as_table(self, data: pa.RecordBatch | pa.Table | pd.DataFrame) -> pa.Table:
        if isinstance(data, pd.DataFrame):
            return pa.Table.from_pandas(_frame_for_output(data), preserve_index=False)
        if isinstance(data, pa.RecordBatch):
            return pa.Table.from_batches([data])
        if isinstance(data, pa.Table):
            return data
        raise TypeError(f"cannot write {type(data).__name__}; expected a DataFrame or Arrow data")

    def write(self, data: pa.RecordBatch | pa.Table | pd.DataFrame) -> None:
        """Append a batch of rows."""
        if self._tmp is None:
            raise RuntimeError("AtomicParquetWriter must be used as a context manager")
        table = self._as_table(data)
        if self.schema is None:
            self.schema = table.schema
        if self._writer is None:
            self.schema = with_column_info(self.schema)
            self._writer = pq.ParquetWriter(
                self._tmp, self.schema, use_dictionary=_dictionary_columns(self.schema)
            )
        if sorted(table.column_names) != sorted(self.schema.names):
            missing = sorted(set(self.schema.names) - set(table.column_names))
            extra = sorted(set(table.column_names) - set(self.schema.names))
            raise ValueError(
                f"{self.path}: batch columns do not match the output schema "
                f"(missing {missing}, unexpected {extra})"
            )
        try:
            table = table.select(self.schema.names).cast(self.schema)
        except pa.ArrowException as exc:
            raise ValueError(
                f"{self.path}: batch does not match the output schema: {_one_line(exc)}"
            ) from exc
        self._writer.write_table(table)
        self.rows_written += table.num_rows

    def close(self) -> None:
        """Finish the file and move it into place (called on normal exit of the block)."""
        if self._tmp is None:
            return
        try:
            if self._writer is None:  # nothing written: still produce a valid (empty) file
                self._writer = pq.ParquetWriter(self._tmp, self.schema or pa.schema([]))
            self._writer.close()
            _commit(self._tmp, self.path, self.overwrite)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            self._writer = None
            self._tmp = None

    def abort(self) -> None:
        """Discard everything written; no file is left behind."""
        if self._tmp is None:
            return
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)
            self._writer = None
            self._tmp = None
