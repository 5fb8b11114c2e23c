"""Survey-scale runs: a whole catalogue, patch by patch, on a Dask cluster, safe to kill.

A *patch* is a nested HEALPix pixel (ICRS) of order :attr:`SurveyConfig.order` (4 by default:
13.4 deg^2, the photo-D paper's ~10 deg^2 patches). Each patch is one task: the hybrid pipeline
(:func:`photodist.pipeline.run_patch`) with the patch's own prior map and its own seed, so the
numbers do not depend on how patches are spread over workers.

Inputs
    A HATS catalogue (its partitions are grouped into patches: a partition of higher order
    belongs to its ancestor at the patch order, a coarser partition is split into the patches
    it holds), or a Parquet file/dataset, CSV or FITS table. Flat inputs and HATS catalogues
    without a ``_healpix_29`` column are first *staged*: streamed once in bounded-memory
    batches, each row assigned to its patch from ``ra``/``dec`` and written to a per-patch
    staging folder (``OUTPUT_DIR/_staging``), so that tasks receive file paths and pixel ids,
    never data frames.

Priors
    ``"galaxy"`` (default): built per patch from photodist's Galaxy model
    (:func:`photodist.priors.build_patch_priors`) on the posterior grid, once, and cached on
    disk keyed by patch, grid, seed and size; ``"trilegal"``: read from a TRILEGAL-format
    prior catalogue (each patch uses the prior pixel that contains it, or the mean of the
    prior pixels inside it); ``"none"``: flat prior (rows flagged ``NO_PRIOR``).

Output (``OUTPUT_DIR``)
    A HATS catalogue: ``dataset/Norder=k/Dir=d/Npix=p.parquet`` per patch, rows sorted by
    ``_healpix_29``, the input's id and position columns first, then the estimates as float32
    (columns of :mod:`photodist.pipeline`), ``flags``, ``method``, ``labelled`` and
    ``_healpix_29``; one output row per input row. Once every patch is done, the HATS metadata
    (``dataset/_metadata``, ``dataset/_common_metadata``, ``partition_info.csv``,
    ``hats.properties``) is written, so ``lsdb.open_catalog(OUTPUT_DIR)`` reads it.

Crash safety
    Every patch file is written to a hidden temporary file and renamed into place when
    complete. A run manifest (``photodist_run.json``) records the configuration (input and its
    size/modification times, patch order, prior source, pipeline settings, seeds, package
    version); rerunning the same command skips finished patches (file present with the
    expected row count and its summary in ``photodist_patches/``), redoes the others and
    removes stale temporary files, and a rerun with a different configuration is refused
    (:class:`ManifestMismatchError`). A patch that fails is reported by name; the others
    still run and the summary says the run is not complete (the command-line entry point
    then exits with status 1).

Memory
    A patch of at most :attr:`SurveyConfig.max_patch_rows` rows is processed in memory. A
    larger patch is streamed: a seeded random pool of ``max_patch_rows`` rows gets the full
    hybrid pipeline (Bayesian labels for the training subsample, networks trained on them),
    then the remaining rows are read, predicted and written in ``_healpix_29`` ranges of at
    most ``chunk_size`` rows.

Run it from Python (:func:`run_survey`) or as ``python -m photodist.survey INPUT OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from photodist import __version__, io
from photodist.bands import (
    FLUX_ZERO_POINTS,
    ID_COLUMNS,
    ColumnMap,
    Photometry,
    column_map_from_options,
    get_band_set,
    numeric_column,
    photometry_from_frame,
)
from photodist.bayes import (
    AR_NEAR_BOUND_WARNING,
    AR_NEAR_MAX_WHAT,
    AR_NEAR_MAX_WHY,
    BayesEstimator,
    many_near_bound,
)
from photodist.locus import Locus
from photodist.pipeline import (
    RESULT_FLOAT_COLUMNS,
    PipelineConfig,
    estimate_rows,
    kept_names,
    posterior_grid,
    run_patch,
    used_dust_profile,
    used_error_floor,
    used_prior,
)

__all__ = [
    "DEFAULT_ID_COLUMNS",
    "DEFAULT_ORDER",
    "MANIFEST_NAME",
    "PRIOR_KINDS",
    "SPATIAL_INDEX_COLUMN",
    "ManifestMismatchError",
    "PatchResult",
    "patch_info_path",
    "read_patch_info",
    "PatchTask",
    "SurveyConfig",
    "SurveyLockedError",
    "SurveyPlan",
    "SurveySummary",
    "incomplete_run_note",
    "input_fingerprint",
    "main",
    "patch_seed",
    "plan_patches",
    "process_patch",
    "read_manifest",
    "read_survey_output",
    "run_survey",
    "survey_settings",
    "write_hats_metadata",
]

#: Spatial index column of HATS catalogues (nested HEALPix pixel at order 29).
SPATIAL_INDEX_COLUMN = "_healpix_29"
SPATIAL_INDEX_ORDER = 29
#: Default patch order: 13.4 deg^2 per patch.
DEFAULT_ORDER = 4
#: Run manifest in the output folder.
MANIFEST_NAME = "photodist_run.json"
#: Folder (in the output catalogue) of one JSON file per patch with its pipeline summary.
PATCH_INFO_DIR = "photodist_patches"
#: Id columns carried to the output when the input has them (besides ra, dec).
DEFAULT_ID_COLUMNS: tuple[str, ...] = ID_COLUMNS
#: Prior sources.
PRIOR_KINDS: tuple[str, ...] = ("galaxy", "trilegal", "none")
METHOD_CATEGORIES: tuple[str, ...] = ("bayes", "nn")
_MANIFEST_FORMAT = "photodist-survey-run"
_MANIFEST_VERSION = 1
_STAGING_DIR = "_staging"
_STAGING_MARKER = "staging.json"
_PRIOR_DIR = "priors"
_LOCK_NAME = ".photodist.lock"
_TMP_PREFIX = ".tmp-"
_STAGING_ROW_GROUP = 65_536
#: Finest sub-pixel histogram used to cut a streamed patch into ranges (4**10 bins at most).
_MAX_SUBORDER = 10


class ManifestMismatchError(RuntimeError):
    """The output folder holds a run with a different configuration; resuming is refused."""


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def _column_map_dict(columns: ColumnMap) -> dict[str, Any]:
    return {
        "mags": dict(sorted(columns.mags.items())),
        "errors": dict(sorted(columns.errors.items())),
        "ra": columns.ra,
        "dec": columns.dec,
        "object_id": columns.object_id,
        "dust": columns.dust,
        # flux catalogues and E(B-V) dust columns only (keeps older manifests resumable)
        **({"flux_unit": columns.flux_unit} if columns.flux_unit else {}),
        **({"fluxes": dict(sorted(columns.fluxes.items()))} if columns.fluxes else {}),
        **(
            {"flux_errors": dict(sorted(columns.flux_errors.items()))}
            if columns.flux_errors
            else {}
        ),
        **({"flux_flags": dict(sorted(columns.flux_flags.items()))} if columns.flux_flags else {}),
        **({"ebv": columns.ebv, "ebv_to_ar": columns.ebv_to_ar} if columns.ebv else {}),
    }


@dataclass
class SurveyConfig:
    """Settings of a survey run (everything that changes the numbers is in the manifest).

    Attributes
    ----------
    order
        HEALPix order of the patches (4: 13.4 deg^2; each +1 divides the area by 4).
    pipeline
        Settings of the per-patch hybrid pipeline; each patch runs with ``seed`` replaced by
        :func:`patch_seed` ``(pipeline.seed, order, pixel)``.
    columns
        Catalogue column names (default ``{band}mag``, ``{band}Err``, ``Ar``, ``ra``, ``dec``).
    keep
        Input columns copied to the output besides ``ra``/``dec``, ``columns.object_id`` and
        the columns of :data:`DEFAULT_ID_COLUMNS` the input has (always kept); None: those
        alone. Named columns must exist.
    prior
        ``"galaxy"``, ``"trilegal"`` (needs ``trilegal_path``) or ``"none"``.
    trilegal_path
        TRILEGAL-format prior catalogue (HATS folder) or a single prior partition file (used
        for every patch).
    prior_seed, prior_min_stars
        Seed (combined with each patch's pixel) and stars per r bin of the Galaxy-model priors.
    prior_cache
        Folder of the Galaxy-model prior cache; None: ``OUTPUT_DIR/priors``. Not part of the
        run identity (a cached map is the map that would be built).
    max_patch_rows
        Patches with more rows are streamed (see the module docstring).
    stage_batch_rows
        Rows per batch while staging a flat input (bounds the driver's memory).
    threads_per_task
        Torch and numba threads per task (one task per worker process by default).
    keep_staging
        Keep ``OUTPUT_DIR/_staging`` after a complete run (it is removed by default).
    """

    order: int = DEFAULT_ORDER
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    columns: ColumnMap = field(default_factory=ColumnMap)
    keep: tuple[str, ...] | None = None
    prior: str = "galaxy"
    trilegal_path: str | None = None
    prior_seed: int = 0
    prior_min_stars: int = 20_000
    prior_cache: str | None = None
    max_patch_rows: int = 2_000_000
    stage_batch_rows: int = 1_000_000
    threads_per_task: int = 1
    keep_staging: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or not 0 <= int(self.order) <= SPATIAL_INDEX_ORDER:
            raise ValueError(f"order must be 0..{SPATIAL_INDEX_ORDER}, got {self.order!r}")
        self.order = int(self.order)
        if self.prior not in PRIOR_KINDS:
            raise ValueError(f"prior must be one of {PRIOR_KINDS}, got {self.prior!r}")
        if self.prior == "trilegal" and not self.trilegal_path:
            raise ValueError("prior='trilegal' needs trilegal_path")
        if self.prior != "trilegal" and self.trilegal_path:
            raise ValueError("trilegal_path is only used with prior='trilegal'")
        for name in ("max_patch_rows", "stage_batch_rows", "threads_per_task", "prior_min_stars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_patch_rows < self.pipeline.min_train:
            raise ValueError("max_patch_rows must be at least pipeline.min_train")
        if self.keep is not None:
            self.keep = tuple(str(c) for c in self.keep)

    def identity(self) -> dict[str, Any]:
        """The settings that determine the output (compared on resume)."""
        pipeline = self.pipeline.to_dict()
        pipeline.pop("progress", None)
        return {
            "order": self.order,
            "pipeline": pipeline,
            "columns": _column_map_dict(self.columns),
            "keep": None if self.keep is None else list(self.keep),
            "prior": self.prior,
            "prior_seed": int(self.prior_seed) if self.prior == "galaxy" else None,
            "prior_min_stars": int(self.prior_min_stars) if self.prior == "galaxy" else None,
            "max_patch_rows": int(self.max_patch_rows),
        }


def patch_seed(seed: int, order: int, pixel: int) -> int:
    """Seed of one patch, derived from the run seed and the patch (independent of the layout)."""
    state = np.random.SeedSequence([int(seed), int(order), int(pixel)]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) >> 1)


# ----------------------------------------------------------------------------------------------
# Small file utilities
# ----------------------------------------------------------------------------------------------


def _temp_name(final: Path) -> Path:
    return final.with_name(f"{_TMP_PREFIX}{secrets.token_hex(6)}-{final.name}")


@contextlib.contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """A hidden temporary path next to ``final``, renamed onto it if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(final)
    try:
        yield tmp
        with open(tmp, "ab") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=io.json_default) + "\n")


def _remove_stale_temps(root: Path, min_age_s: float = 0.0) -> int:
    """Delete hidden temporary files (``.tmp-*``) under ``root``; returns how many."""
    if not root.is_dir():
        return 0
    now = time.time()
    removed = 0
    for path in root.rglob(f"{_TMP_PREFIX}*"):
        try:
            if path.is_file() and now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def input_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of an input: absolute path, format, file count, bytes and a digest of the files'
    names, sizes and modification times (a changed input makes a resume refuse)."""
    p = Path(path).resolve()
    fmt = io.detect_format(p)
    if p.is_file():
        files = [p]
    else:
        files = sorted(
            (f for f in p.rglob("*") if f.is_file() and not f.name.startswith(_TMP_PREFIX)),
            key=lambda f: f.relative_to(p).as_posix(),
        )
    digest = hashlib.sha256()
    total = 0
    for f in files:
        st = f.stat()
        total += st.st_size
        rel = f.name if p.is_file() else f.relative_to(p).as_posix()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {
        "path": str(p),
        "format": fmt,
        "n_files": len(files),
        "bytes": total,
        "digest": digest.hexdigest(),
    }


class SurveyLockedError(RuntimeError):
    """Another run holds the output folder's lock."""


def _check_apart(input_path: Path, output_dir: Path) -> None:
    """Refuse an output folder that is, holds or lies inside the input (``--overwrite``
    would delete the catalogue being read)."""
    if io.paths_overlap(input_path, output_dir):
        raise ValueError(
            f"{output_dir} and the input {input_path} overlap; choose an output folder "
            "outside the input"
        )


def _clear_run(folder: Path) -> None:
    """Delete a run's files in ``folder``, all but the lock held on it."""
    for entry in folder.iterdir():
        if entry.name == _LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class _RunLock:
    """An exclusive lock on the output folder (released by the kernel if the process dies).

    A folder that holds no run when the lock is released (the run was refused before it
    began) keeps no lock file, and is removed if ``created`` (made for this run) and empty.
    """

    def __init__(self, folder: Path, created: bool = False) -> None:
        self.path = folder / _LOCK_NAME
        self.created = created
        self._fh: Any = None

    def __enter__(self) -> _RunLock:
        import fcntl

        self._fh = open(self.path, "a")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SurveyLockedError(
                    f"{self.path.parent}: another photodist survey run is using this folder"
                ) from exc
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._fh is not None:
            folder = self.path.parent
            if not (folder / MANIFEST_NAME).is_file():  # unlinked while still held
                self.path.unlink(missing_ok=True)
                if self.created:
                    with contextlib.suppress(OSError):  # only if empty
                        folder.rmdir()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


# ----------------------------------------------------------------------------------------------
# Planning: which rows belong to which patch
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchTask:
    """One patch: its pixel, the Parquet files holding its rows, and its row count.

    Rows of the patch are the rows of ``files`` whose ``_healpix_29`` lies in the pixel.
    """

    order: int
    pixel: int
    files: tuple[str, ...]
    n_rows: int
    prior_files: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``Norder=k/Npix=p`` (the HATS name of the patch)."""
        return f"Norder={self.order}/Npix={self.pixel}"

    @property
    def index_range(self) -> tuple[int, int]:
        """``[lo, hi)`` range of ``_healpix_29`` values inside the patch."""
        shift = 2 * (SPATIAL_INDEX_ORDER - self.order)
        return self.pixel << shift, (self.pixel + 1) << shift


@dataclass
class SurveyPlan:
    """The patches of a catalogue and how its rows were found."""

    patches: list[PatchTask]
    order: int
    source: str  # "hats" (partitions read in place) or "staged"
    keep: tuple[str, ...]
    read_columns: tuple[str, ...]
    n_rows: int

    def patch_rows(self) -> dict[int, int]:
        return {t.pixel: t.n_rows for t in self.patches}


def _partition_files(part: Path) -> list[Path]:
    if part.is_dir():
        return sorted(
            (f for f in part.rglob("*.parquet") if not f.name.startswith((".", "_"))),
            key=lambda f: f.as_posix(),
        )
    return [part]


def _needed_columns(config: SurveyConfig, available: Sequence[str]) -> list[str]:
    """Photometry columns of the input (magnitudes, or colours where a magnitude is absent)."""
    band_set = get_band_set(config.pipeline.band_set)
    try:
        return config.columns.photometry_sources(band_set, available)[0]
    except KeyError as exc:
        raise io.CatalogError(f"input lacks photometry: {exc.args[0]}") from exc


def _resolve_keep(config: SurveyConfig, available: Sequence[str], where: str) -> tuple[str, ...]:
    cols = config.columns
    present = set(available)
    keep = [cols.ra, cols.dec]
    if cols.object_id:
        keep.append(cols.object_id)
    keep += [c for c in DEFAULT_ID_COLUMNS if c in present]
    keep += list(config.keep or ())
    keep = [c for c in dict.fromkeys(keep) if c != SPATIAL_INDEX_COLUMN]
    try:
        kept_names(keep)  # named like an output column: refused before any work
    except ValueError as exc:
        raise io.CatalogError(f"{where}: {exc}") from exc
    missing = [c for c in keep if c not in present]
    if missing:
        raise io.CatalogError(f"{where}: missing column(s) {missing} (positions or kept columns)")
    return tuple(keep)


def _read_columns(config: SurveyConfig, available: Sequence[str], keep: Sequence[str]) -> list[str]:
    """Input columns a task reads: photometry, dust (if present) and the kept columns."""
    cols = _needed_columns(config, available) + config.columns.dust_columns(available)
    return list(dict.fromkeys([*keep, *cols]))


def _plan_hats(path: Path, config: SurveyConfig) -> SurveyPlan | None:
    """Patches of a HATS catalogue read in place; None if it has no ``_healpix_29`` column."""
    parts = io.hats_partitions(path)
    files0 = _partition_files(parts[0][2])
    if not files0:
        raise io.CatalogError(f"{path}: partition {parts[0][2]} holds no Parquet files")
    schema = pq.read_schema(files0[0])
    if SPATIAL_INDEX_COLUMN not in schema.names:
        return None
    keep = _resolve_keep(config, schema.names, str(path))
    read = tuple(_read_columns(config, schema.names, keep))
    order = config.order
    files: dict[int, list[str]] = {}
    counts: dict[int, int] = {}
    for part_order, part_pixel, part in sorted(parts, key=lambda t: (t[0], t[1])):
        for f in _partition_files(part):
            if part_order >= order:
                pixel = part_pixel >> (2 * (part_order - order))
                n = pq.ParquetFile(f).metadata.num_rows
                if n:
                    files.setdefault(pixel, []).append(str(f))
                    counts[pixel] = counts.get(pixel, 0) + n
                continue
            # a coarser partition: split it into the patches it holds
            index = pq.read_table(f, columns=[SPATIAL_INDEX_COLUMN]).column(0).to_numpy()
            pixels, n_in = np.unique(
                index.astype(np.int64) >> (2 * (SPATIAL_INDEX_ORDER - order)), return_counts=True
            )
            for pixel, n in zip(pixels.tolist(), n_in.tolist(), strict=True):
                files.setdefault(pixel, []).append(str(f))
                counts[pixel] = counts.get(pixel, 0) + n
    patches = [
        PatchTask(order, pixel, tuple(files[pixel]), counts[pixel]) for pixel in sorted(files)
    ]
    return SurveyPlan(patches, order, "hats", keep, read, sum(counts.values()))


def _stage(
    path: Path, staging: Path, config: SurveyConfig, fingerprint: dict[str, Any]
) -> SurveyPlan:
    """Stream a flat catalogue once into per-patch Parquet files (bounded memory)."""
    from hats.pixel_math.spatial_index import compute_spatial_index

    available = io.catalog_columns(path)
    keep = _resolve_keep(config, available, str(path))
    read = _read_columns(config, available, keep)
    # measurements are numbers: text in them (e.g. "abc" in a CSV) becomes NaN, a flagged
    # row, as in photodist run; the batches then share one schema
    measured = [c for c in read if c not in keep]
    order = config.order
    stamp = {"input": fingerprint, "order": order, "columns": read}
    marker = staging / _STAGING_MARKER
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("stamp") == stamp:
            patches = [
                PatchTask(order, int(pix), tuple(str(staging / f) for f in entry["files"]), n)
                for pix, entry in sorted(saved["patches"].items(), key=lambda kv: int(kv[0]))
                for n in [int(entry["n_rows"])]
            ]
            n_total = sum(t.n_rows for t in patches)
            return SurveyPlan(patches, order, "staged", keep, tuple(read), n_total)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shift = 2 * (SPATIAL_INDEX_ORDER - order)
    schema: pa.Schema | None = None
    entries: dict[int, dict[str, Any]] = {}
    ra_col, dec_col = config.columns.ra, config.columns.dec
    batches = io.iter_catalog_batches(path, batch_size=config.stage_batch_rows, columns=read)
    offset = 0
    for number, frame in enumerate(batches):
        if len(frame) == 0:
            continue
        ra, dec = numeric_column(frame, ra_col), numeric_column(frame, dec_col)
        bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
        if bad.any():
            first = offset + int(np.flatnonzero(bad)[0])
            raise io.CatalogError(
                f"{path}: {int(bad.sum())} row(s) without a valid position ({ra_col}, {dec_col}),"
                f" e.g. row {first}; every row needs one to be assigned to a patch"
            )
        index = np.asarray(compute_spatial_index(ra, dec), dtype=np.int64)
        frame = frame.assign(**{c: numeric_column(frame, c) for c in measured})
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.append_column(SPATIAL_INDEX_COLUMN, pa.array(index, pa.int64()))
        if schema is None:
            schema = table.schema.remove_metadata()
        try:
            table = table.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise io.CatalogError(
                f"{path}: rows {offset}..{offset + len(frame) - 1} do not have the column types "
                f"of the first batch: {exc}"
            ) from exc
        sort = np.argsort(index, kind="stable")
        table = table.take(pa.array(sort))
        pixels = index[sort] >> shift
        starts = np.flatnonzero(np.r_[True, pixels[1:] != pixels[:-1]])
        ends = np.r_[starts[1:], pixels.size]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            pixel = int(pixels[a])
            rel = f"Npix={pixel}/part-{number:06d}.parquet"
            (staging / rel).parent.mkdir(exist_ok=True)
            pq.write_table(table.slice(a, b - a), staging / rel, row_group_size=_STAGING_ROW_GROUP)
            entry = entries.setdefault(pixel, {"files": [], "n_rows": 0})
            entry["files"].append(rel)
            entry["n_rows"] += b - a
        offset += len(frame)
    _write_json(marker, {"stamp": stamp, "patches": {str(k): v for k, v in entries.items()}})
    patches = [
        PatchTask(order, pix, tuple(str(staging / f) for f in e["files"]), int(e["n_rows"]))
        for pix, e in sorted(entries.items())
    ]
    return SurveyPlan(patches, order, "staged", keep, tuple(read), offset)


def plan_patches(
    input_path: str | os.PathLike[str],
    config: SurveyConfig,
    work_dir: str | os.PathLike[str],
    fingerprint: dict[str, Any] | None = None,
) -> SurveyPlan:
    """Group a catalogue's rows into patches of ``config.order``.

    A HATS catalogue with a ``_healpix_29`` column is read in place: a partition at the patch
    order or finer belongs to its ancestor patch; a coarser partition is split (its spatial
    index column is read to find which patches it holds). Any other input (Parquet, CSV, FITS,
    or HATS without the index) is staged under ``work_dir/_staging``: streamed in batches of
    ``config.stage_batch_rows`` rows, each row's patch computed from ``ra``/``dec`` (its
    ``_healpix_29`` too), one sorted Parquet file per batch and patch. A finished staging is
    reused when the input, order and columns are unchanged.

    Returns
    -------
    SurveyPlan
        Patches with rows, in ascending pixel order.

    Raises
    ------
    photodist.io.CatalogError
        Unreadable input, missing columns, or rows without a valid position.
    """
    path = Path(input_path)
    fmt = io.detect_format(path)
    plan = _plan_hats(path, config) if fmt == "hats" else None
    if plan is None:
        fingerprint = fingerprint or input_fingerprint(path)
        plan = _stage(path, Path(work_dir) / _STAGING_DIR, config, fingerprint)
    if config.prior == "trilegal":
        assert config.trilegal_path is not None
        plan.patches = _assign_trilegal(plan.patches, Path(config.trilegal_path))
        uncovered = [task.name for task in plan.patches if not task.prior_files]
        if uncovered:  # said before any patch runs; such patches fail, the others run
            shown = ", ".join(uncovered[:10]) + (" ..." if len(uncovered) > 10 else "")
            message = (
                f"the TRILEGAL prior {config.trilegal_path} covers none of {len(uncovered)} "
                f"of the catalogue's {len(plan.patches)} patches ({shown})"
            )
            if len(uncovered) == len(plan.patches):
                raise io.CatalogError(
                    f"{message}; select the stars it covers, or use the Galaxy-model prior"
                )
            warnings.warn(f"{message}: they will fail, the others run", stacklevel=2)
    return plan


def _trilegal_pixels(path: Path) -> list[tuple[int, int, Path]] | None:
    """(order, pixel, file) of a TRILEGAL prior catalogue; None for a single prior file."""
    if path.is_file():
        return None
    try:
        parts = io.hats_partitions(path)
    except io.CatalogError:
        parts = []
    found = [(o, p, f) for o, p, part in parts for f in _partition_files(part)]
    if not found:
        raise FileNotFoundError(f"{path}: no TRILEGAL prior partitions (Norder=*/Dir=*/Npix=*)")
    return found


def _assign_trilegal(patches: list[PatchTask], path: Path) -> list[PatchTask]:
    """Each patch's TRILEGAL prior files: the pixel containing it, else the pixels inside it.

    A patch that no prior pixel covers gets no files; its task fails with a message.
    """
    pixels = _trilegal_pixels(path)
    out = []
    for task in patches:
        if pixels is None:
            files = [str(path)]
        else:
            containing = [
                (o, str(f))
                for o, p, f in pixels
                if o <= task.order and task.pixel >> (2 * (task.order - o)) == p
            ]
            if containing:
                files = [max(containing)[1]]  # the finest containing pixel
            else:
                files = [
                    str(f)
                    for o, p, f in sorted(pixels, key=lambda t: (t[0], t[1]))
                    if o > task.order and p >> (2 * (o - task.order)) == task.pixel
                ]
        out.append(dataclasses.replace(task, prior_files=tuple(files)))
    return out


# ----------------------------------------------------------------------------------------------
# Worker side: one patch
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What every task needs besides its patch (small and picklable: settings and paths)."""

    config: SurveyConfig
    output_dir: str
    prior_cache: str
    keep: tuple[str, ...]
    read_columns: tuple[str, ...]
    photometry_columns: tuple[str, ...]


@dataclass
class PatchResult:
    """Outcome of one patch task."""

    name: str
    pixel: int
    n_rows: int
    seconds: float
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    path: str = ""
    error_floor: float | None = None
    prior_power: float | None = None  #: the power of the patch's prior (photodist.prior_temper)
    prior_feh_shift: float | None = None  #: its shift along [Fe/H] (dex)
    #: fraction of its A_r estimates piled against the prior's bound (photodist.bayes.ar_near_bound;
    #: of the training pool for a streamed patch)
    ar_near_bound_fraction: float | None = None
    n_ar_near_bound: int | None = None  #: the number of those estimates
    n_ar_estimates: int | None = None  #: of how many A_r estimates
    #: why the patch's prior was not fitted to its stars though asked (too few of them)
    prior_fit_skipped: str | None = None


_GRIDS: dict[tuple[float | None, float | None], Locus] = {}


def _posterior_grid(config: PipelineConfig) -> Locus:
    """The locus on the posterior grid, built once per process and grid."""
    key = (config.bayes_feh_step, config.bayes_mr_step)
    if key not in _GRIDS:
        _GRIDS[key] = posterior_grid(None, config)
    return _GRIDS[key]


def _prior_cache_key(config: SurveyConfig, grid: Locus) -> str:
    text = json.dumps(
        {
            "feh": [float(grid.feh[0]), float(grid.feh[-1]), len(grid.feh)],
            "mr": [float(grid.mr[0]), float(grid.mr[-1]), len(grid.mr)],
            "seed": int(config.prior_seed),
            "min_stars": int(config.prior_min_stars),
            "version": __version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def galaxy_prior_path(config: SurveyConfig, cache_dir: Path, order: int, pixel: int) -> Path:
    """Cache file of a patch's Galaxy-model prior (keyed by patch, grid, seed and size)."""
    key = _prior_cache_key(config, _posterior_grid(config.pipeline))
    return cache_dir / f"galaxy_o{order}_p{pixel}_{key}.npz"


def load_or_build_prior(task: PatchTask, config: SurveyConfig, cache_dir: str | Path) -> Any:
    """The patch's prior map: from the cache, built and cached, read from TRILEGAL, or None."""
    from photodist.priors import PriorMap, build_patch_priors, read_trilegal_priors

    grid = _posterior_grid(config.pipeline)
    if config.prior == "none":
        return None
    if config.prior == "trilegal":
        if not task.prior_files:
            raise LookupError(f"no TRILEGAL prior pixel covers patch {task.name}")
        maps = [read_trilegal_priors(f, grid) for f in task.prior_files]
        if len(maps) == 1:
            return maps[0]
        first = maps[0]
        if any(not np.allclose(m.r_centres, first.r_centres) for m in maps):
            raise ValueError(f"TRILEGAL priors inside patch {task.name} have different r bins")
        return dataclasses.replace(
            first,
            density=np.mean([m.density for m in maps], axis=0),
            n_stars=np.sum([m.n_stars for m in maps], axis=0),
            metadata=dict(first.metadata, files=[Path(f).name for f in task.prior_files]),
        )
    path = galaxy_prior_path(config, Path(cache_dir), task.order, task.pixel)
    if path.is_file():
        return PriorMap.load(path, grid)
    prior = build_patch_priors(
        task.pixel,
        task.order,
        grid,
        seed=patch_seed(config.prior_seed, task.order, task.pixel),
        min_stars=int(config.prior_min_stars),
    )
    with _atomic_path(path) as tmp:
        prior.save(tmp)
    return prior


#: Worker environment changes for :func:`local_cluster`. Dask starts worker processes with
#: ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``); setting it
#: switches off glibc's dynamic mmap threshold, so every tensor of a training step is mapped and
#: unmapped again: network training ran 2x slower (12.2 s instead of 6.0 s for 256 epochs on
#: one core). None removes the variable (glibc defaults).
WORKER_ENVIRON_OVERRIDES: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None}


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[Any]:
    """A ``dask.distributed.LocalCluster`` of ``n_workers`` single-threaded worker processes
    (no dashboard), with :data:`WORKER_ENVIRON_OVERRIDES` applied to the workers."""
    import dask
    from dask.distributed import LocalCluster

    overrides = {
        f"distributed.nanny.pre-spawn-environ.{name}": value
        for name, value in WORKER_ENVIRON_OVERRIDES.items()
    }
    with dask.config.set(overrides):
        cluster = LocalCluster(
            n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=None
        )
    with cluster:
        yield cluster


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Limit torch and numba threads for the duration of a task."""
    import numba
    import torch

    previous = (torch.get_num_threads(), numba.get_num_threads())
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        numba.set_num_threads(previous[1])


def patch_info_path(output_dir: str | Path, order: int, pixel: int) -> Path:
    """The JSON summary of one patch's pipeline run (mode, error floor, dust profile, stage
    timings), written when the patch is done."""
    return Path(output_dir) / PATCH_INFO_DIR / f"Norder={order}_Npix={pixel}.json"


def read_patch_info(output_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Every patch summary of a survey output (:func:`patch_info_path`), by pixel."""
    folder = Path(output_dir) / PATCH_INFO_DIR
    infos = {}
    for path in sorted(folder.glob("*.json")):
        try:
            info = json.loads(path.read_text())
            infos[int(info["pixel"])] = info
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a patch summary ({exc})") from exc
    return infos


def output_path(output_dir: str | Path, order: int, pixel: int) -> Path:
    """The HATS partition file of a patch in a run's output folder."""
    from hats.io import paths
    from hats.pixel_math import HealpixPixel

    return Path(str(paths.pixel_catalog_file(Path(output_dir), HealpixPixel(order, pixel))))


def _result_fields() -> list[pa.Field]:
    fields = [pa.field(name, pa.float32()) for name in RESULT_FLOAT_COLUMNS]
    fields += [
        pa.field("flags", pa.int64()),
        pa.field("method", pa.dictionary(pa.int8(), pa.string())),
        pa.field("labelled", pa.bool_()),
    ]
    return fields


def _output_schema(kept: pa.Schema) -> pa.Schema:
    fields = [kept.field(n) for n in kept.names]
    fields += _result_fields()
    fields.append(pa.field(SPATIAL_INDEX_COLUMN, pa.int64()))
    return pa.schema(fields)


def _result_table(result: pd.DataFrame) -> pa.Table:
    """The estimate columns of a pipeline result as Arrow (float32 estimates)."""
    method = result["method"]
    if isinstance(method.dtype, pd.CategoricalDtype):
        codes = method.cat.codes.to_numpy()
        categories = [str(c) for c in method.cat.categories]
        names = np.asarray(categories, dtype=object)[codes] if len(codes) else np.empty(0, object)
    else:
        names = method.astype(str).to_numpy(dtype=object)
    lookup = {name: i for i, name in enumerate(METHOD_CATEGORIES)}
    method_codes = np.fromiter((lookup[str(n)] for n in names), dtype=np.int8, count=len(names))
    arrays: list[pa.Array] = [
        pa.array(result[name].to_numpy(np.float32), pa.float32()) for name in RESULT_FLOAT_COLUMNS
    ]
    arrays += [
        pa.array(result["flags"].to_numpy(np.int64), pa.int64()),
        pa.DictionaryArray.from_arrays(
            pa.array(method_codes, pa.int8()), pa.array(list(METHOD_CATEGORIES), pa.string())
        ),
        pa.array(result["labelled"].to_numpy(bool), pa.bool_()),
    ]
    return pa.Table.from_arrays(arrays, schema=pa.schema(_result_fields()))


def _assemble(kept: pa.Table, result: pd.DataFrame, index: pa.Array, schema: pa.Schema) -> pa.Table:
    est = _result_table(result)
    columns = list(kept.columns) + list(est.columns) + [index]
    return pa.Table.from_arrays(columns, schema=schema)


def _patch_dataset(task: PatchTask) -> pads.Dataset:
    return pads.dataset(list(task.files), format="parquet")


def _patch_filter(lo: int, hi: int) -> pc.Expression:
    index = pc.field(SPATIAL_INDEX_COLUMN)
    return (index >= pa.scalar(lo, pa.int64())) & (index < pa.scalar(hi, pa.int64()))


def _read_sorted(dataset: pads.Dataset, columns: Sequence[str], lo: int, hi: int) -> pa.Table:
    """Rows with ``lo <= _healpix_29 < hi``, sorted by it (stable: ties keep file order)."""
    table = dataset.to_table(columns=[*columns, SPATIAL_INDEX_COLUMN], filter=_patch_filter(lo, hi))
    order = pc.sort_indices(table, sort_keys=[(SPATIAL_INDEX_COLUMN, "ascending")])
    return table.take(order)


def _photometry_frame(table: pa.Table, columns: Sequence[str]) -> pd.DataFrame:
    frame = table.select(list(columns)).to_pandas()
    return pd.DataFrame({name: numeric_column(frame, name) for name in columns})


def _task_config(job: _Job, task: PatchTask) -> PipelineConfig:
    return dataclasses.replace(
        job.config.pipeline,
        seed=patch_seed(job.config.pipeline.seed, task.order, task.pixel),
        progress=False,
    )


def process_patch(task: PatchTask, job: _Job) -> PatchResult:
    """Run the hybrid pipeline on one patch and write its partition file atomically.

    Called on a worker with the patch's file paths and pixel; loads the posterior grid once
    per process and the prior from the cache. Returns a short summary.
    """
    start = time.perf_counter()
    config = job.config
    final = output_path(job.output_dir, task.order, task.pixel)
    with _threads(config.threads_per_task):
        grid = _posterior_grid(config.pipeline)
        prior = load_or_build_prior(task, config, job.prior_cache)
        cfg = _task_config(job, task)
        if task.n_rows <= config.max_patch_rows:
            info, timings = _process_in_memory(task, job, cfg, grid, prior, final)
        else:
            info, timings = _process_streamed(task, job, cfg, grid, prior, final)
    temper = info.get("prior_temper") or {}
    _write_json(
        patch_info_path(job.output_dir, task.order, task.pixel),
        {
            "patch": task.name,
            "order": task.order,
            "pixel": task.pixel,
            "n_rows": task.n_rows,
            "mode": info["mode"],
            "error_floor": info.get("error_floor"),
            "prior_temper": info.get("prior_temper"),
            "dust_profile": info.get("dust_profile"),
            "n_duplicate_rows": info.get("n_duplicate_rows"),
            "n_ar_near_bound": info.get("n_ar_near_bound"),
            "n_ar_estimates": info.get("n_ar_estimates"),
            "timings_s": timings,
        },
    )
    n_near, n_estimated = info.get("n_ar_near_bound"), info.get("n_ar_estimates")
    return PatchResult(
        name=task.name,
        pixel=task.pixel,
        n_rows=task.n_rows,
        seconds=time.perf_counter() - start,
        mode=info["mode"],
        timings=timings,
        worker=f"{os.uname().nodename}:{os.getpid()}",
        path=str(final),
        error_floor=used_error_floor(info),
        prior_power=temper.get("beta"),
        prior_feh_shift=temper.get("feh_shift"),
        ar_near_bound_fraction=n_near / n_estimated if n_estimated else None,
        n_ar_near_bound=n_near,
        n_ar_estimates=n_estimated,
        prior_fit_skipped=temper.get("reason") if temper.get("too_few_stars") else None,
    )


def _process_in_memory(
    task: PatchTask, job: _Job, cfg: PipelineConfig, grid: Locus, prior: Any, final: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """Process a patch that fits in memory; returns the pipeline info and the stage timings."""
    lo, hi = task.index_range
    table = _read_sorted(_patch_dataset(task), job.read_columns, lo, hi)
    if table.num_rows != task.n_rows:
        raise io.CatalogError(
            f"patch {task.name}: read {table.num_rows} rows, planned {task.n_rows} "
            "(the input changed since planning?)"
        )
    frame = _photometry_frame(table, job.photometry_columns)
    result, timings, _ = run_patch(frame, prior, grid, cfg, columns=job.config.columns)
    kept = table.select(list(job.keep))
    schema = _output_schema(kept.schema)
    out = _assemble(kept, result, table.column(SPATIAL_INDEX_COLUMN), schema)
    with io.AtomicParquetWriter(final, schema=schema, overwrite=True) as writer:
        writer.write(out)
    info = dict(result.attrs.get("photodist_pipeline", {}))
    info["mode"] = str(info.get("mode", ""))
    return info, {k: float(v) for k, v in timings.items()}


def predict_rows(
    model: Any, estimator: BayesEstimator, phot: Photometry, config: PipelineConfig
) -> pd.DataFrame:
    """Estimates for stars outside the training subsample of an already trained patch
    (:func:`photodist.pipeline.estimate_rows`: the rules of ``run_patch`` for its network
    rows). With ``model`` None every row gets the Bayesian estimate."""
    return estimate_rows(model, estimator, phot, config)


def _sub_ranges(task: PatchTask, dataset: pads.Dataset, chunk: int) -> list[tuple[int, int]]:
    """Split the patch into ``_healpix_29`` ranges of about ``chunk`` rows (from a histogram)."""
    depth = min(_MAX_SUBORDER, SPATIAL_INDEX_ORDER - task.order)
    shift = 2 * (SPATIAL_INDEX_ORDER - task.order - depth)
    lo, hi = task.index_range
    counts = np.zeros(4**depth, dtype=np.int64)
    scanner = dataset.scanner(columns=[SPATIAL_INDEX_COLUMN], filter=_patch_filter(lo, hi))
    for batch in scanner.to_batches():
        if batch.num_rows:
            sub = (batch.column(0).to_numpy().astype(np.int64) - lo) >> shift
            counts += np.bincount(sub, minlength=counts.size)
    ranges = []
    start, filled = 0, 0
    for k in np.flatnonzero(counts).tolist():
        if filled and filled + counts[k] > chunk:
            ranges.append((lo + (start << shift), lo + (k << shift)))
            start, filled = k, 0
        filled += int(counts[k])
    ranges.append((lo + (start << shift), hi))
    return ranges


def _process_streamed(
    task: PatchTask, job: _Job, cfg: PipelineConfig, grid: Locus, prior: Any, final: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """A patch larger than ``max_patch_rows``: hybrid on a random pool, the rest streamed."""
    dataset = _patch_dataset(task)
    chunk = max(1, min(int(cfg.chunk_size), int(job.config.max_patch_rows)))
    ranges = _sub_ranges(task, dataset, chunk)
    fraction = job.config.max_patch_rows / task.n_rows
    pool_seed = patch_seed(cfg.seed, SPATIAL_INDEX_ORDER + 1, task.pixel)
    phot_cols = job.photometry_columns
    columns = job.read_columns

    def pieces() -> Iterator[tuple[pa.Table, np.ndarray]]:
        rng = np.random.default_rng(pool_seed)
        for a, b in ranges:
            table = _read_sorted(dataset, columns, a, b)
            yield table, rng.random(table.num_rows) < fraction

    t0 = time.perf_counter()
    pool_parts = [table.filter(pa.array(chosen)) for table, chosen in pieces()]
    pool = pa.concat_tables(pool_parts) if pool_parts else None
    if pool is None or pool.num_rows == 0:
        raise RuntimeError(f"patch {task.name}: empty training pool")
    pool_frame = _photometry_frame(pool, phot_cols)
    del pool, pool_parts
    pool_result, timings, model = run_patch(
        pool_frame, prior, grid, cfg, columns=job.config.columns
    )
    info = dict(pool_result.attrs["photodist_pipeline"])
    estimator = BayesEstimator(
        grid,
        used_prior(info, prior, grid),
        cfg.bayes_config(used_error_floor(info)),
        dust_profile=used_dust_profile(info),
    )
    t_pool = time.perf_counter() - t0
    t1 = time.perf_counter()
    offset = 0
    n_rows = 0
    schema: pa.Schema | None = None
    writer = io.AtomicParquetWriter(final, overwrite=True)
    with writer:
        for table, chosen in pieces():
            n = table.num_rows
            n_rows += n
            phot = photometry_from_frame(
                _photometry_frame(table, phot_cols), cfg.band_set, job.config.columns
            )
            rest = np.flatnonzero(~chosen)
            part = predict_rows(model, estimator, phot.subset(rest), cfg)
            taken = np.flatnonzero(chosen)
            from_pool = pool_result.iloc[offset : offset + taken.size]
            offset += taken.size
            result = pd.concat(
                [part.set_axis(rest), from_pool.set_axis(taken)], axis=0
            ).sort_index()
            result["method"] = pd.Categorical(
                result["method"].astype(str), categories=list(METHOD_CATEGORIES)
            )
            kept = table.select(list(job.keep))
            if schema is None:
                schema = _output_schema(kept.schema)
                writer.schema = schema
            writer.write(_assemble(kept, result, table.column(SPATIAL_INDEX_COLUMN), schema))
        if n_rows != task.n_rows:
            raise io.CatalogError(
                f"patch {task.name}: read {n_rows} rows, planned {task.n_rows} "
                "(the input changed since planning?)"
            )
    out = {k: float(v) for k, v in timings.items()}
    out["pool"] = t_pool
    out["stream_predict"] = time.perf_counter() - t1
    info["mode"] = f"streamed-{info.get('mode', '')}"
    return info, out


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


@dataclass
class SurveySummary:
    """What a :func:`run_survey` call did.

    Attributes
    ----------
    n_patches, n_rows
        Patches and input rows of the whole catalogue.
    n_done, n_skipped
        Patches computed by this call / found finished from an earlier call.
    failed
        Patch name -> error message for patches that failed in this call.
    complete
        Every patch is done and the HATS metadata is written.
    elapsed_s, rows_processed
        Wall time of the call and rows computed in it (``stars_per_s`` is their ratio,
        counting only the patch-processing phase).
    """

    output_dir: str
    n_patches: int
    n_rows: int
    n_done: int = 0
    n_skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    elapsed_s: float = 0.0
    process_s: float = 0.0
    rows_processed: int = 0
    patches: list[PatchResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and self.complete

    @property
    def stars_per_s(self) -> float:
        return self.rows_processed / self.process_s if self.process_s > 0 else float("nan")

    def ar_bound_note(self) -> str | None:
        """A warning naming the patches computed in this call where many of the A_r
        estimates pile against the prior's upper bound (:func:`photodist.bayes.ar_near_bound`,
        :func:`photodist.bayes.many_near_bound`); None if there are none."""
        high = [p for p in self.patches if many_near_bound(p.n_ar_near_bound, p.n_ar_estimates)]
        if not high:
            return None
        high.sort(key=lambda p: -(p.ar_near_bound_fraction or 0.0))
        listed = ", ".join(
            f"{p.name} ({100 * (p.ar_near_bound_fraction or 0):.0f} %)" for p in high[:5]
        )
        more = f" and {len(high) - 5} more" if len(high) > 5 else ""
        return (
            f"warning: in {len(high)} patches more than {100 * AR_NEAR_BOUND_WARNING:.0f} % of "
            "the stars "
            f"{AR_NEAR_MAX_WHAT}: {listed}{more}; {AR_NEAR_MAX_WHY}"
        )

    def prior_note(self) -> str | None:
        """How the patches computed in this call adjusted their prior
        (:mod:`photodist.prior_temper`), in one line; None if none was computed."""
        if not self.patches:
            return None
        shifts = np.array([p.prior_feh_shift or 0.0 for p in self.patches])
        powers = np.array([1.0 if p.prior_power is None else p.prior_power for p in self.patches])
        changed = (shifts != 0.0) | (powers != 1.0)
        note = f"prior as given in {int((~changed).sum())} of {len(self.patches)} patches"
        if changed.any():

            def span(values: np.ndarray, sign: str = "") -> str:
                low, high = f"{values.min():{sign}g}", f"{values.max():{sign}g}"
                return low if low == high else f"{low} to {high}"

            note += (
                f"; adjusted in {int(changed.sum())}: [Fe/H] shift {span(shifts[changed], '+')} "
                f"dex, power {span(powers[changed])} (per patch: photodist maps)"
            )
        skipped = [p.prior_fit_skipped for p in self.patches if p.prior_fit_skipped]
        if skipped:
            note += (
                f"; not fitted in {len(skipped)} with too few stars (e.g. {skipped[0]}; "
                "larger patches, a lower --order, can be fitted)"
            )
        return note


def _manifest(config: SurveyConfig, fingerprint: dict[str, Any]) -> dict[str, Any]:
    prior: dict[str, Any] = {"kind": config.prior}
    if config.prior == "trilegal":
        assert config.trilegal_path is not None
        prior["trilegal"] = input_fingerprint_any(config.trilegal_path)
    return {
        "input": fingerprint,
        "survey": config.identity(),
        "prior_source": prior,
        "photodist_version": __version__,
    }


def input_fingerprint_any(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Like :func:`input_fingerprint` for any file or folder (e.g. a prior catalogue)."""
    p = Path(path).resolve()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        rel = f.name if p.is_file() else f.relative_to(p).as_posix()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(p), "n_files": len(files), "digest": digest.hexdigest()}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(where)
            else:
                out += _differences(old[key], new[key], where)
        return out
    return [] if old == new else [prefix or "(root)"]


#: Pipeline settings whose default changed what a run does when they were added: a saved
#: configuration without them ran as these values say (the prior was used as given).
_BEHAVIOUR_BEFORE_SETTING: dict[str, Any] = {
    "prior_temper": 1.0,
    "prior_feh_shift": 0.0,
    "nn_fit_check": False,
}


def _with_pipeline_defaults(configuration: Any) -> Any:
    """A saved run configuration with the pipeline settings it predates at their defaults.

    The pipeline settings added since take the behaviour that came before them (their default,
    or :data:`_BEHAVIOUR_BEFORE_SETTING`), so a run started by an earlier version resumes
    unless a setting now differs from that behaviour.
    """
    if not isinstance(configuration, dict) or not isinstance(configuration.get("survey"), dict):
        return configuration
    survey = configuration["survey"]
    if not isinstance(survey.get("pipeline"), dict):
        return configuration
    defaults = {**PipelineConfig().to_dict(), **_BEHAVIOUR_BEFORE_SETTING}
    defaults.pop("progress", None)
    return {**configuration, "survey": {**survey, "pipeline": {**defaults, **survey["pipeline"]}}}


def _check_manifest(output_dir: Path, identity: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Write the manifest of a new run, or check a resumed run against it."""
    path = output_dir / MANIFEST_NAME
    if path.is_file():
        saved = json.loads(path.read_text())
        if not resume:
            raise FileExistsError(
                f"{output_dir} holds a photodist run; rerun with resume (the default) or "
                "choose an empty folder / overwrite"
            )
        if saved.get("format") != _MANIFEST_FORMAT:
            raise ManifestMismatchError(f"{path} is not a photodist survey manifest")
        diffs = _differences(_with_pipeline_defaults(saved.get("configuration")), identity)
        if "photodist_version" in diffs:
            version = (saved.get("configuration") or {}).get("photodist_version")
            raise ManifestMismatchError(
                f"{output_dir} holds a run started by photodist {version}, and this is "
                f"{identity.get('photodist_version')}, whose estimates differ (CHANGELOG.md); "
                "finish it with that version, or start again with overwrite"
            )
        if diffs:
            shown = ", ".join(diffs[:8]) + (", ..." if len(diffs) > 8 else "")
            raise ManifestMismatchError(
                f"{output_dir} holds a run with a different configuration ({shown} differ); "
                "refusing to resume. Use the same settings and input, another output folder, "
                "or overwrite."
            )
        return saved
    foreign = [
        p.name
        for p in output_dir.iterdir()
        if p.name not in {_LOCK_NAME, _PRIOR_DIR} and not p.name.startswith(_TMP_PREFIX)
    ]
    if foreign:
        raise FileExistsError(
            f"{output_dir} is not empty and holds no photodist run "
            f"({', '.join(sorted(foreign)[:5])}); choose an empty folder"
        )
    manifest = {
        "format": _MANIFEST_FORMAT,
        "format_version": _MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "configuration": identity,
        "status": {"complete": False},
    }
    _write_json(path, manifest)
    return manifest


def _patch_done(task: PatchTask, output_dir: Path) -> bool:
    """Whether the patch's partition holds its rows and its summary was written (the
    summary follows the partition, so a run stopped between the two redoes the patch)."""
    path = output_path(output_dir, task.order, task.pixel)
    if not path.is_file():
        return False
    try:
        n = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
        n = -1
    if n == task.n_rows and patch_info_path(output_dir, task.order, task.pixel).is_file():
        return True
    path.unlink()  # not this patch's finished result: redo the patch
    return False


def write_hats_metadata(
    output_dir: str | Path,
    pixels: Sequence[int],
    order: int,
    *,
    ra_column: str = "ra",
    dec_column: str = "dec",
    catalog_name: str | None = None,
) -> int:
    """Write the HATS metadata of a folder of partition files (one per patch).

    Writes ``dataset/_metadata`` and ``dataset/_common_metadata`` (all row-group footers and
    the schema, :func:`hats.io.write_parquet_metadata`), ``partition_info.csv``
    (:class:`hats.catalog.PartitionInfo`) and ``hats.properties`` / ``properties``
    (:class:`hats.catalog.TableProperties`, written last).

    Returns
    -------
    int
        Total rows of the catalogue.
    """
    import hats
    from hats.catalog import HatsProperties, PartitionInfo, TableProperties
    from hats.pixel_math import HealpixPixel

    root = Path(output_dir)
    total = int(hats.io.write_parquet_metadata(root))
    info = PartitionInfo.from_healpix([HealpixPixel(order, int(p)) for p in sorted(pixels)])
    info.write_to_file(root / "partition_info.csv")
    max_rows = max(
        (pq.ParquetFile(output_path(root, order, p)).metadata.num_rows for p in pixels), default=0
    )
    provenance = HatsProperties.new_provenance_dict(root, builder=f"photodist v{__version__}")
    props = TableProperties(
        catalog_name=catalog_name or root.resolve().name,
        catalog_type="object",
        total_rows=total,
        ra_column=ra_column,
        dec_column=dec_column,
        healpix_column=SPATIAL_INDEX_COLUMN,
        healpix_order=SPATIAL_INDEX_ORDER,
        hats_max_rows=int(max_rows),
        moc_sky_fraction=float(f"{info.calculate_fractional_coverage():.5g}"),
        hats_order=int(order),
        **provenance,
    )
    props.to_properties_file(root)
    return total


def _execute(
    tasks: list[PatchTask],
    job: _Job,
    scheduler: str | None,
    n_workers: int | None,
    on_done: Callable[[PatchTask, PatchResult | None, str | None], None],
) -> None:
    """Run the tasks in this process (``"synchronous"``) or on a Dask cluster."""
    if scheduler == "synchronous":
        for task in tasks:
            try:
                outcome = _patch_or_error(task, job)
            except Exception as exc:  # report the patch and go on with the others
                outcome = f"{type(exc).__name__}: {exc}"
            _report(task, outcome, on_done)
        return
    from dask.distributed import Client, as_completed

    with contextlib.ExitStack() as stack:
        if scheduler is None:
            workers = int(n_workers or os.cpu_count() or 1)
            cluster = stack.enter_context(local_cluster(workers))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler))
            except OSError as exc:  # nothing listening, a wrong address, a timeout
                raise ConnectionError(
                    f"cannot reach the Dask scheduler {scheduler}: {exc}"
                ) from exc
        token = secrets.token_hex(4)
        futures = {}
        for task in tasks:
            future = client.submit(
                _patch_or_error,
                task,
                job,
                key=f"photodist-patch-{task.order}-{task.pixel}-{token}",
                pure=False,
                priority=task.n_rows,  # large patches first: better balance at the end
            )
            futures[future.key] = (future, task)
        for future in as_completed([f for f, _ in futures.values()]):
            task = futures[future.key][1]
            try:
                outcome = future.result()
            except Exception as exc:  # report the patch and go on with the others
                outcome = f"{type(exc).__name__}: {exc}"
            _report(task, outcome, on_done)
            future.release()


#: A patch's own refusals (its data, prior or settings): reported by their message alone.
#: Anything else is a fault, which Dask's worker log shows with its traceback.
_PATCH_REFUSALS = (ValueError, LookupError, OSError)


def _patch_or_error(task: PatchTask, job: _Job) -> PatchResult | str:
    """:func:`process_patch`, or the message of a refusal of the patch."""
    try:
        return process_patch(task, job)
    except _PATCH_REFUSALS as exc:
        return f"{type(exc).__name__}: {exc}"


def _report(
    task: PatchTask,
    outcome: PatchResult | str,
    on_done: Callable[[PatchTask, PatchResult | None, str | None], None],
) -> None:
    if isinstance(outcome, str):
        on_done(task, None, outcome)
    else:
        on_done(task, outcome, None)


def run_survey(
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    config: SurveyConfig | None = None,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> SurveySummary:
    """Estimate every star of a catalogue, patch by patch, into a HATS catalogue.

    Parameters
    ----------
    input_path
        HATS catalogue, Parquet file or folder, CSV, whitespace-separated text or FITS table.
    output_dir
        Output folder (created); it becomes a HATS catalogue once every patch is done.
    config
        Survey settings (default :class:`SurveyConfig`).
    scheduler
        None: a ``LocalCluster`` with ``n_workers`` worker processes (default one per core),
        one thread each; ``"tcp://host:port"``: an existing Dask scheduler (its workers must
        have photodist installed and see the input and output paths); ``"synchronous"``: every
        patch in this process, one after the other.
    n_workers
        Workers of the local cluster.
    resume
        Continue a run found in ``output_dir`` (same configuration required); False refuses an
        existing run.
    overwrite
        Delete an existing run in ``output_dir`` first (only a folder holding a photodist run
        manifest is deleted).
    progress
        Show a progress bar (stars, stars/s, ETA; patches done / total).

    Returns
    -------
    SurveySummary
        ``summary.failed`` names the patches that failed; ``summary.complete`` is True once
        every patch is done and the HATS metadata is written.

    Raises
    ------
    ManifestMismatchError
        The folder holds a run with another configuration or input.
    photodist.io.CatalogError
        Unreadable input or missing columns.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    config = config or SurveyConfig()
    # columns absent under their default names are looked up as the estimators do
    available = io.catalog_columns(input_path)
    columns = config.columns.resolved(available, config.pipeline.band_set)
    config = dataclasses.replace(config, columns=columns)
    out = Path(output_dir)
    _check_apart(Path(input_path), out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; OUTPUT_DIR must be a folder")
    if overwrite and out.exists() and not (out / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{out} holds no photodist run; refusing to delete it")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    summary: SurveySummary
    with _RunLock(out, created):  # before deleting: a run still using the folder keeps it
        if overwrite:
            _clear_run(out)
        fingerprint = input_fingerprint(input_path)
        identity = _manifest(config, fingerprint)
        new_run = not (out / MANIFEST_NAME).is_file()
        manifest = _check_manifest(out, identity, resume)
        prior_cache = Path(config.prior_cache) if config.prior_cache else out / _PRIOR_DIR
        _remove_stale_temps(out)
        if config.prior_cache:
            _remove_stale_temps(prior_cache, min_age_s=6 * 3600)
        status = manifest.get("status", {})
        if status.get("complete") and _complete_catalog_intact(out, status):
            return SurveySummary(
                str(out),
                n_patches=len(status["patches"]),
                n_rows=int(status["n_rows"]),
                n_skipped=len(status["patches"]),
                complete=True,
                elapsed_s=time.perf_counter() - start,
            )
        try:
            plan = plan_patches(input_path, config, out, fingerprint)
            if not plan.patches:
                raise io.CatalogError(f"{input_path}: the catalogue has no rows")
        except Exception:
            if new_run:  # an input refused before any work leaves no run behind
                _clear_run(out)
            raise
        phot = _needed_columns(config, plan.read_columns)
        phot += config.columns.dust_columns(plan.read_columns)
        job = _Job(
            config=config,
            output_dir=str(out),
            prior_cache=str(prior_cache),
            keep=plan.keep,
            read_columns=plan.read_columns,
            photometry_columns=tuple(dict.fromkeys(phot)),
        )
        summary = SurveySummary(str(out), n_patches=len(plan.patches), n_rows=plan.n_rows)
        pending = []
        for task in plan.patches:
            if _patch_done(task, out):
                summary.n_skipped += 1
            else:
                pending.append(task)
        t_process = time.perf_counter()
        total_rows = sum(t.n_rows for t in pending)
        bar = tqdm(
            total=total_rows,
            unit="star",
            unit_scale=True,
            desc="survey",
            disable=not progress,
            smoothing=0.1,
        )
        bar.set_postfix_str(f"patches {summary.n_skipped}/{summary.n_patches}")

        def on_done(task: PatchTask, result: PatchResult | None, error: str | None) -> None:
            if result is not None:
                summary.n_done += 1
                summary.rows_processed += task.n_rows
                summary.patches.append(result)
            else:
                summary.failed[task.name] = error or "failed"
                bar.write(f"patch {task.name} failed: {error}", file=sys.stderr)
            bar.update(task.n_rows)
            done = summary.n_done + summary.n_skipped
            bar.set_postfix_str(
                f"patches {done}/{summary.n_patches}"
                + (f", {len(summary.failed)} failed" if summary.failed else "")
            )

        with bar:
            if pending:
                _execute(pending, job, scheduler, n_workers, on_done)
        summary.process_s = time.perf_counter() - t_process
        if not summary.failed:
            pixels = [t.pixel for t in plan.patches]
            written = write_hats_metadata(
                out,
                pixels,
                plan.order,
                ra_column=config.columns.ra,
                dec_column=config.columns.dec,
            )
            if written != plan.n_rows:
                raise RuntimeError(
                    f"{out}: the catalogue holds {written} rows, the input {plan.n_rows}"
                )
            manifest["status"] = {
                "complete": True,
                "order": plan.order,
                "n_rows": plan.n_rows,
                "patches": {str(k): v for k, v in plan.patch_rows().items()},
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_json(out / MANIFEST_NAME, manifest)
            summary.complete = True
            if plan.source == "staged" and not config.keep_staging:
                shutil.rmtree(out / _STAGING_DIR, ignore_errors=True)
    summary.elapsed_s = time.perf_counter() - start
    return summary


def _complete_catalog_intact(out: Path, status: Mapping[str, Any]) -> bool:
    """Whether a run recorded as complete still has every partition with its row count."""
    order = int(status.get("order", -1))
    if order < 0 or not (out / "hats.properties").is_file():
        return False
    for pixel, n in status.get("patches", {}).items():
        path = output_path(out, order, int(pixel))
        try:
            if pq.ParquetFile(path).metadata.num_rows != int(n):
                return False
        except (OSError, pa.ArrowException):
            return False
    return True


def read_manifest(output_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run manifest of a survey output folder; None when the folder has none.

    Raises
    ------
    ValueError
        The manifest is not readable JSON, or not an object.
    """
    path = Path(output_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a survey manifest")
    return manifest


def survey_settings(output_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The survey configuration (``columns``, ``pipeline``, ...) recorded in a survey output
    folder's manifest; None for a folder without one.

    Raises
    ------
    ValueError
        The manifest does not hold a survey configuration.
    """
    manifest = read_manifest(output_dir)
    if manifest is None:
        return None
    try:
        return dict(manifest["configuration"]["survey"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{Path(output_dir) / MANIFEST_NAME}: not a survey manifest ({exc})"
        ) from exc


def incomplete_run_note(output_dir: str | os.PathLike[str]) -> str | None:
    """A warning when ``output_dir`` holds a survey run that has not finished (its manifest
    says so): what is read from it covers only the patches written so far. None for a
    finished run or a folder without a readable manifest."""
    try:
        manifest = read_manifest(output_dir)
    except ValueError:
        return None
    if manifest is None or (manifest.get("status") or {}).get("complete", True):
        return None
    written = len(list((Path(output_dir) / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet")))
    return (
        f"warning: the survey run in {output_dir} has not finished ({written} patch file(s) "
        "written so far): what follows covers only those; rerun `photodist survey` to finish it"
    )


def read_survey_output(output_dir: str | os.PathLike[str], columns: Sequence[str] | None = None):
    """All partition files of a run's output as one DataFrame (pixel order, then row order)."""
    root = Path(output_dir) / "dataset"
    files = sorted(
        (f for f in root.glob("Norder=*/Dir=*/Npix=*.parquet") if not f.name.startswith(".")),
        key=lambda f: (
            int(f.parent.parent.name.split("=")[1]),
            int(f.stem.split("=")[1]),
        ),
    )
    if not files:
        raise io.CatalogError(f"{output_dir}: no partition files")
    tables = [pq.read_table(f, columns=list(columns) if columns else None) for f in files]
    return io.table_to_frame(pa.concat_tables(tables))


# ----------------------------------------------------------------------------------------------
# Command line: python -m photodist.survey
# ----------------------------------------------------------------------------------------------


def _column_map(args: argparse.Namespace) -> ColumnMap:
    """The catalogue's column names from the parsed ``--column``, ``--dust-column``,
    ``--flux-unit`` and ``--ebv-column`` options (as ``photodist survey`` reads them)."""
    return column_map_from_options(args.column, args.dust_column, args.flux_unit, args.ebv_column)


def _pipeline_config(text: str | None, seed: int, band_set: str) -> PipelineConfig:
    settings: dict[str, Any] = {}
    if text:
        source = Path(text)
        settings = json.loads(source.read_text() if source.is_file() else text)
        if not isinstance(settings, dict):
            raise ValueError("--pipeline-config must be a JSON object of PipelineConfig fields")
    settings.setdefault("seed", seed)
    settings.setdefault("band_set", band_set)
    return PipelineConfig.from_dict(settings)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m photodist.survey`` (mirrors ``photodist survey``)."""
    parser = argparse.ArgumentParser(
        prog="python -m photodist.survey",
        description="Run the hybrid photo-D pipeline on a whole catalogue, patch by patch.",
    )
    parser.add_argument("input", help="HATS catalogue, Parquet file/folder, CSV, text or FITS")
    parser.add_argument("output_dir", help="output folder (becomes a HATS catalogue)")
    parser.add_argument("--order", type=int, default=DEFAULT_ORDER, help="patch HEALPix order")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="tcp://host:port of a Dask scheduler, or 'synchronous' (default: a local cluster)",
    )
    parser.add_argument("--workers", type=int, default=None, help="local cluster workers")
    parser.add_argument("--bands", default="lsst", help="band set: lsst or sdss")
    parser.add_argument("--column", action="append", default=[], metavar="KEY=COLUMN")
    parser.add_argument("--dust-column", default="Ar")
    parser.add_argument("--ebv-column", default=None, help="column of the dust map's E(B-V)")
    parser.add_argument(
        "--flux-unit",
        choices=list(FLUX_ZERO_POINTS),
        default=None,
        help="read the bands from flux columns in this unit",
    )
    parser.add_argument("--keep", action="append", default=None, metavar="COLUMN")
    parser.add_argument("--prior", choices=PRIOR_KINDS, default=None)
    parser.add_argument("--trilegal-prior", default=None, metavar="PATH")
    parser.add_argument("--prior-seed", type=int, default=0)
    parser.add_argument("--prior-min-stars", type=int, default=20_000)
    parser.add_argument("--prior-cache", default=None, metavar="DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pipeline-config",
        default=None,
        metavar="JSON",
        help="PipelineConfig fields as a JSON object or a JSON file",
    )
    parser.add_argument("--max-patch-rows", type=int, default=2_000_000)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 complete, 1 failed patches, 2 refused/bad input)."""
    args = build_parser().parse_args(argv)
    try:
        prior = args.prior or ("trilegal" if args.trilegal_prior else "galaxy")
        config = SurveyConfig(
            order=args.order,
            pipeline=_pipeline_config(args.pipeline_config, args.seed, args.bands),
            columns=_column_map(args),
            keep=tuple(args.keep) if args.keep else None,
            prior=prior,
            trilegal_path=args.trilegal_prior,
            prior_seed=args.prior_seed,
            prior_min_stars=args.prior_min_stars,
            prior_cache=args.prior_cache,
            max_patch_rows=args.max_patch_rows,
        )
        summary = run_survey(
            args.input,
            args.output_dir,
            config,
            scheduler=args.scheduler,
            n_workers=args.workers,
            resume=not args.no_resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (
        ManifestMismatchError,
        SurveyLockedError,
        io.CatalogError,
        FileExistsError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary.n_done} patch(es) done, {summary.n_skipped} already finished, "
        f"{len(summary.failed)} failed of {summary.n_patches}; {summary.rows_processed} stars "
        f"in {summary.process_s:.1f} s ({summary.stars_per_s:.0f} stars/s)"
    )
    if summary.failed:
        for name, error in summary.failed.items():
            print(f"failed: {name}: {error}", file=sys.stderr)
        return 1
    print(f"HATS catalogue: {summary.output_dir} ({summary.n_rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
