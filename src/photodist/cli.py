"""Command-line interface: a thin layer over the Python API (one API call plus I/O per command)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import pandas as pd
from click.core import ParameterSource

from photodist import __version__
from photodist.bands import (
    DEFAULT_DUST_COLUMN,
    GALACTIC_COLUMNS,
    ID_COLUMNS,
    ColumnMap,
    MissingColumnError,
    column_map_from_options,
    get_band_set,
    key_values,
    photometry_from_frame,
    readable_band_set,
    resolve_columns,
    sky_positions,
)
from photodist.locus import DEFAULT_FEH_STEP, DEFAULT_MR_STEP, Locus, build_locus, load_locus
from photodist.plots import color_color_figure

if TYPE_CHECKING:  # the pipeline loads PyTorch: imported where a command needs it
    from photodist.pipeline import PipelineConfig

#: Default posterior grid of the Bayesian estimator (dex, mag); see docs/benchmarks.md.
BAYES_FEH_STEP = 0.05
BAYES_MR_STEP = 0.1
BAND_SET_CHOICE = click.Choice(["lsst", "sdss", "ugrizy", "ugriz"], case_sensitive=False)


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses NaN and infinities (``click.FloatRange`` lets them
    through: no comparison with NaN fails)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


#: Option types: a bad value is a usage error naming the option, before any work
SEED = click.IntRange(min=0)
GRID_STEP = FiniteFloatRange(min=0.0, min_open=True)
#: File types of the figures a user names (matplotlib writes each).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
HEALPIX_ORDER = click.IntRange(0, 29)
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = FiniteFloatRange(min=0.0, min_open=True)


def _check_output(output_path: Path, overwrite: bool, *inputs: Path) -> None:
    """:func:`photodist.io.check_output_path`, and refuse an OUTPUT that is (or lies inside) an
    input: ``--overwrite`` would replace the catalogue being read."""
    from photodist import io

    for source in inputs:
        if io.paths_overlap(output_path, source):
            raise click.BadParameter(
                f"{output_path} is the input {source.resolve()}; choose another output",
                param_hint="OUTPUT",
            )
    io.check_output_path(output_path, overwrite=overwrite)


def _check_file_output(path: Path, overwrite: bool, option: str, *inputs: Path) -> None:
    """Before any work, a usage error naming ``option`` unless a file (not a table, e.g.
    JSON) can be written at ``path``: not an input, not a folder, not an existing file
    without ``--overwrite``; its folder is created."""
    from photodist import io

    for source in inputs:
        if io.paths_overlap(path, source):
            raise click.BadParameter(f"{path} is the input {source.resolve()}", param_hint=option)
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint=option)
    if path.exists() and not overwrite:
        raise click.BadParameter(
            f"{path} already exists; use --overwrite to replace it", param_hint=option
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {path.parent}: {exc}", param_hint=option) from exc
    if not os.access(path.parent, os.W_OK):
        raise click.BadParameter(f"{path.parent} is not writable", param_hint=option)


def _stepped(make: Callable[[], Locus]) -> Locus:
    """A locus on the grid of ``--feh-step`` / ``--mr-step``; a step that leaves fewer than
    two grid points is a usage error naming the options."""
    try:
        return make()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--feh-step / --mr-step") from exc


def _training_options(command: Any) -> Any:
    """``--epochs``, ``--learning-rate``, ``--nn-device`` and ``--nn-dust-input`` of the
    networks (the defaults of ``PipelineConfig``; not imported here, which would load PyTorch
    for every command)."""
    command = click.option(
        "--nn-dust-input",
        is_flag=True,
        help="Give the networks the dust-map A_r as one more input (the Bayesian labels depend "
        "on it; stars without a map value then get the Bayesian estimate). Default: the "
        "paper's inputs.",
    )(command)
    command = click.option(
        "--nn-device",
        default="auto",
        show_default=True,
        help="Where the networks train and predict: cpu, cuda (or cuda:N), or auto (cuda when "
        "a CUDA device is present).",
    )(command)
    command = click.option(
        "--learning-rate",
        type=POSITIVE_FLOAT,
        default=1e-2,
        show_default=True,
        help="Adam learning rate of the networks (the paper: 1e-3; see docs/benchmarks.md).",
    )(command)
    return click.option(
        "--epochs",
        type=POSITIVE_INT,
        default=512,
        show_default=True,
        help="Maximum training epochs of the moments network (the paper: 1024).",
    )(command)


_FIT_CHECK_OPTION = click.option(
    "--no-fit-check",
    is_flag=True,
    help="Skip the check of network rows against the model without the prior (chi2min, "
    "POOR_FIT, AR_AT_BOUND; ~0.09 of the Bayesian estimator's time per star), for throughput.",
)


def _a_prior_options(command: Any) -> Any:
    """Bounds of the flat A_r prior: [F A_map, S A_map + O] with a dust-map value A_map,
    [0, --a-max] without one."""
    command = click.option(
        "--a-max",
        type=POSITIVE_FLOAT,
        default=3.0,
        show_default=True,
        help="A_r prior bound (mag) for stars without a dust-map value (near the plane "
        "without a map, raise it above the sightline's extinction).",
    )(command)
    for name, default, what in (
        ("--a-max-offset", 0.1, "O of the A_r prior's upper bound S A_map + O (mag)."),
        ("--a-max-scale", 1.3, "S of the A_r prior's upper bound S A_map + O."),
    ):
        command = click.option(
            name, type=FiniteFloatRange(0.0), default=default, show_default=True, help=what
        )(command)
    return click.option(
        "--a-min-fraction",
        type=FiniteFloatRange(0.0, 1.0),
        default=0.0,
        show_default=True,
        help="Start the flat A_r prior at this fraction F of the dust-map value instead of 0 "
        "(for sightlines whose stars lie beyond the dust; docs/benchmarks.md).",
    )(command)


def _independent_colors_option(command: Any) -> Any:
    """``--independent-colors``: the paper's chi2, without the colours' covariance."""
    return click.option(
        "--independent-colors",
        is_flag=True,
        help="Treat the colour errors as independent (the paper's chi2). By default adjacent "
        "colours formed from magnitudes covary through their shared band's error.",
    )(command)


def _keep_option(command: Any) -> Any:
    """``--keep``: input columns copied to the output."""
    return click.option(
        "--keep",
        multiple=True,
        default=(*ID_COLUMNS, "ra", "dec"),
        show_default=True,
        help="Input columns copied to the output when present (repeat the option, or give "
        "comma-separated names; ra/dec: the position columns, e.g. RAJ2000 or coord_ra when the "
        "catalogue has no ra). Names given here that the catalogue lacks are reported.",
    )(command)


def _kept_columns(keep: tuple[str, ...], columns: ColumnMap, catalog: Path) -> tuple[str, ...]:
    """``--keep`` columns with ``ra``/``dec`` read as the catalogue's position columns
    (e.g. ``RAJ2000`` found by :func:`photodist.bands.resolve_columns`); a comma-separated
    value names several. Names given on the command line that the catalogue lacks are
    reported; the default list is kept where present, silently, its id names in any case
    (``OBJID``, ``SOURCE_ID``)."""
    from photodist import io

    renamed = {"ra": columns.ra, "dec": columns.dec}
    names = [name.strip() for value in keep for name in value.split(",") if name.strip()]
    kept = tuple(dict.fromkeys(renamed.get(c, c) for c in names))
    context = click.get_current_context(silent=True)
    given = context is not None and (
        context.get_parameter_source("keep") is ParameterSource.COMMANDLINE
    )
    try:
        available = io.catalog_columns(catalog)
    except (io.CatalogError, OSError):  # reported when the catalogue is read
        return kept
    if not given:
        by_lower: dict[str, str] = {}
        for name in available:
            by_lower.setdefault(name.lower(), name)
        return tuple(
            dict.fromkeys(c if c in available else by_lower.get(c.lower(), c) for c in kept)
        )
    absent = [c for c in kept if c not in available]
    if absent:
        click.echo(f"warning: --keep columns not in the catalogue: {', '.join(absent)}", err=True)
    return kept


def _checked_device(device: str, option: str = "--nn-device", remote: bool = False) -> str:
    """``device`` if it names a usable device, else a usage error about ``option``.

    ``remote``: the device is used on other machines (a Dask scheduler's workers), so only
    its name is checked here, not whether this machine has it."""
    from photodist.nn import resolve_device

    try:
        resolve_device(device, present=not remote)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc
    return device


def _pipeline_config(params: dict[str, Any], **settings: Any) -> PipelineConfig:
    """The ``PipelineConfig`` of ``run`` and ``survey`` from the options they share, read
    from the command's parsed options ``params`` (``click.get_current_context().params``)
    under their option names; ``settings`` are further config fields."""
    from photodist.pipeline import PipelineConfig

    return PipelineConfig(
        band_set=get_band_set(params["bands"]).name,
        n_train=params["n_train"],
        bayes_all_below=params["bayes_all_below"],
        nn_max_epochs=params["epochs"],
        nn_learning_rate=params["learning_rate"],
        # survey's networks run on the workers of a given scheduler, not on this machine
        nn_device=_checked_device(
            params["nn_device"], remote=params.get("scheduler") not in (None, "synchronous")
        ),
        nn_dust_input=params["nn_dust_input"],
        nn_fit_check=not params["no_fit_check"],
        default_a_max=params["a_max"],
        dust_min_fraction=params["a_min_fraction"],
        dust_scale=params["a_max_scale"],
        dust_offset=params["a_max_offset"],
        dust_prior=params["dust_prior"],
        prior_temper=params["prior_temper"],
        prior_feh_shift=params["prior_feh_shift"],
        color_covariance=not params["independent_colors"],
        error_floor=params["error_floor"],
        seed=params["seed"],
        **settings,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="photodist")
def cli() -> None:
    """photodist: photometric distances, metallicities and extinctions of stars."""
    _exit_cleanly_on_sigterm()


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (a batch system's kill, ``timeout``) unwind like Ctrl-C, so that partial
    outputs are removed as after an error (a killed run left its temporary file before)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


@cli.command("locus")
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default="locus.parquet",
    show_default=True,
    help="Locus table (.parquet, .csv, or whitespace text).",
)
@click.option(
    "--feh-step",
    type=GRID_STEP,
    default=DEFAULT_FEH_STEP,
    show_default=True,
    help="[Fe/H] grid step (dex).",
)
@click.option(
    "--mr-step",
    type=GRID_STEP,
    default=DEFAULT_MR_STEP,
    show_default=True,
    help="M_r grid step (mag).",
)
@click.option(
    "--figure",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a colour-colour figure (.png, .pdf or .svg).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def locus_command(
    out_path: Path, feh_step: float, mr_step: float, figure: Path | None, overwrite: bool
) -> None:
    """Build the stellar locus and write it as a table (columns Mr FeH ug gr ri iz zy)."""
    from photodist.locus import LOCUS_FILE_SUFFIXES

    if out_path.suffix not in LOCUS_FILE_SUFFIXES:
        raise click.BadParameter(
            f"{out_path}: write the locus as .parquet, .csv or text (.txt, .dat, no suffix)",
            param_hint="--out",
        )
    _check_file_output(out_path, overwrite, "--out")
    if figure is not None:
        if figure.suffix.lower() not in FIGURE_SUFFIXES:
            raise click.BadParameter(
                f"{figure}: write the figure as one of {', '.join(FIGURE_SUFFIXES)}",
                param_hint="--figure",
            )
        _check_file_output(figure, overwrite, "--figure", out_path)
    locus = _stepped(lambda: build_locus(feh_step=feh_step, mr_step=mr_step))
    locus.save(out_path)
    click.echo(f"locus: {locus.shape[0]} [Fe/H] x {locus.shape[1]} M_r points -> {out_path}")
    if figure is not None:
        color_color_figure(locus, figure)
        click.echo(f"figure: {figure}")


def _key_values(items: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` option values as pairs (:func:`photodist.bands.key_values`), or a clear
    usage error."""
    try:
        return key_values(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


def _column_map(
    column: tuple[str, ...],
    dust: str | None,
    flux_unit: str | None = None,
    ebv_column: str | None = None,
) -> ColumnMap:
    """The column map of the options (a usage error for a malformed ``--column``)."""
    try:
        return column_map_from_options(column, dust, flux_unit, ebv_column)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--column") from exc


def _run_columns_with(
    run_output: Path,
    given: list[tuple[str, str]],
    dust: str | None,
    flux_unit: str | None,
    ebv: str | None,
) -> ColumnMap:
    """The column names a run recorded (its summary, or a survey's manifest), with the
    ``--column``, ``--dust-column``, ``--flux-unit`` and ``--ebv-column`` values given on top:
    naming one column keeps the run's names of the others."""
    from photodist import io
    from photodist.survey import survey_settings

    try:
        survey = survey_settings(run_output)
        if survey is not None:
            recorded = ColumnMap(**survey["columns"]).to_mapping()
        else:
            recorded = dict(io.read_run_summary(run_output).get("columns") or {})
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    options = {"dust": dust, "flux_unit": flux_unit, "ebv": ebv}
    recorded.update({key: value for key, value in options.items() if value is not None})
    recorded.update(given)
    recorded.setdefault("dust", DEFAULT_DUST_COLUMN)
    try:
        return ColumnMap.from_mapping(recorded)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--column") from exc


def _checked_cone(cone: Iterable[float], option: str) -> tuple[float, float, float]:
    """``cone`` (l, b, radius in degrees), or a usage error naming ``option``."""
    from photodist.simulate import Patch

    l_deg, b_deg, radius = (float(x) for x in cone)
    try:
        Patch.cone(l_deg, b_deg, radius)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc
    return l_deg, b_deg, radius


def _recorded_bands(summary: Mapping[str, Any]) -> str | None:
    """The band set a run summary records (`bayes`: ``bands``; `run`: its configuration's)."""
    return summary.get("bands") or (summary.get("config") or {}).get("band_set")


def _check_labels_bands(summary: Mapping[str, Any], summary_path: Path, bands: str) -> None:
    """A usage error when labels (a `bayes` or `run` output whose summary is ``summary``)
    were computed from another band set than the networks would learn them from."""
    labelled_with = _recorded_bands(summary)
    if labelled_with and get_band_set(labelled_with).name != get_band_set(bands).name:
        raise click.ClickException(
            f"the labels were computed with the {labelled_with} bands ({summary_path}), "
            f"and the networks would learn them from the {get_band_set(bands).name} bands: "
            f"use --bands {labelled_with}"
        )


def _chosen_bands(columns: ColumnMap, available: list[str], bands: str) -> str:
    """``bands``, or, when ``--bands`` was not given and the catalogue cannot be read with
    the default band set but can with another (a ugriz catalogue: no y band), that one: the
    command's ``bands`` parameter is updated and the switch said."""
    ctx = click.get_current_context()
    if ctx.get_parameter_source("bands") is not ParameterSource.DEFAULT:
        return bands
    found = readable_band_set(columns, available, preferred=bands)
    if found is None or found == get_band_set(bands).name:
        return bands
    click.echo(
        f"band set: {found} (the catalogue cannot be read with {bands}; --bands chooses)",
        err=True,
    )
    ctx.params["bands"] = found
    return found


def _catalog_columns(
    column: tuple[str, ...],
    dust: str | None,
    flux_unit: str | None,
    ebv_column: str | None,
    catalog: Path,
    bands: str,
    *,
    choose_bands: bool = True,
) -> tuple[ColumnMap, str]:
    """The column map of the options resolved against the catalogue's columns, and the band
    set to read it with.

    Names absent under their defaults are looked up under common other names
    (:func:`photodist.bands.resolve_columns`); the command says which columns it found so,
    which names had several candidates, and when there is no dust-map column. With
    ``choose_bands`` the band set may change (:func:`_chosen_bands`).
    """
    from photodist import io

    columns = _column_map(column, dust, flux_unit, ebv_column)
    try:
        available = io.catalog_columns(catalog)
    except io.CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    if choose_bands:
        bands = _chosen_bands(columns, available, bands)
    resolution = resolve_columns(columns, available, bands)
    if resolution.aliases:
        found_names = ", ".join(f"{key}={name}" for key, name in resolution.aliases.items())
        click.echo(f"columns found under other names: {found_names}", err=True)
    for key, names in resolution.ambiguous.items():
        click.echo(
            f"warning: several columns could be {key} ({', '.join(names)}); none was taken, "
            f"name one with --column {key}=COLUMN",
            err=True,
        )
    if columns.dust and not resolution.columns.dust_columns(available):
        others = " or common names of A_r and E(B-V)" if columns.dust == DEFAULT_DUST_COLUMN else ""
        click.echo(
            f"no dust-map column ({columns.dust!r}{others}): the A_r prior of every star spans "
            "0 to the configured maximum (3 mag by default)",
            err=True,
        )
    return resolution.columns, bands


_BAYES_ALL_BELOW_OPTION = click.option(
    "--bayes-all-below",
    type=NON_NEGATIVE_INT,
    default=0,
    show_default=True,
    help="Give every star of a patch the Bayesian estimate (exact) when it has at most this "
    "many usable stars: on 2 cores Bayes on ~450,000 stars takes as long as training the "
    "networks (docs/benchmarks.md). 0: the hybrid whenever a patch exceeds --n-train.",
)
_DUST_PRIOR_OPTION = click.option(
    "--dust-prior",
    type=click.Choice(["flat", "profile"]),
    default="flat",
    show_default=True,
    help="A_r prior of the Bayesian estimator: flat on its bounds (the paper's), or also a "
    "normal prior around the patch's extinction against distance, fitted to the patch's own "
    "stars (photodist.dust_profile; docs/benchmarks.md; `bayes` fits it on "
    "the catalogue's first 200,000 rows). "
    "With a dust map the networks of `run` and `survey` then also take the map's A_r.",
)


class AutoOrNumberType(click.ParamType):
    """``auto`` or a number, checked by ``parser`` (a ``photodist.prior_temper`` parser)."""

    def __init__(self, parser_name: str, name: str) -> None:
        self.parser_name = parser_name
        self.name = name

    def convert(self, value, param, ctx):
        from photodist import prior_temper

        try:
            return getattr(prior_temper, self.parser_name)(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _prior_temper_options(function):
    """The options that adjust the Galaxy-model prior to a patch's stars."""
    function = click.option(
        "--prior-temper",
        type=AutoOrNumberType("parse_prior_temper", "auto|POWER"),
        default="auto",
        show_default=True,
        help="Power of the ([Fe/H], M_r) prior in [0, 1] (1: as given, as in the paper; 0: "
        "flat), or 'auto': per patch, the power that maximises the marginal likelihood of "
        "2,000 of its stars (photodist.prior_temper; `bayes` fits it on the catalogue's "
        "first 200,000 rows). It stays 1 where the stars follow the prior and falls where "
        "they follow another population, so that the posteriors are not too narrow.",
    )(function)
    return click.option(
        "--prior-feh-shift",
        type=AutoOrNumberType("parse_feh_shift", "auto|DEX"),
        default="auto",
        show_default=True,
        help="Shift of the prior along [Fe/H] in dex (0: as given), or 'auto': per patch, the "
        "shift within ±0.5 dex that maximises the marginal likelihood of 2,000 of its stars, "
        "used if it gains at least 0.02 nats per star, fitted before the power. A Galaxy "
        "model's metallicity scale is among its least certain parts.",
    )(function)


#: Fraction of the stars outside a model's training domain beyond which `predict` warns
OUT_OF_DOMAIN_WARNING = 0.05


def _warn_ar_near_bound(n_near: int, n_estimated: int) -> None:
    """Warn when many A_r estimates sit at their prior's upper bound
    (:func:`photodist.bayes.ar_near_bound`)."""
    from photodist.bayes import AR_NEAR_MAX_WHAT, AR_NEAR_MAX_WHY, many_near_bound

    if many_near_bound(n_near, n_estimated):
        click.echo(
            f"warning: {n_near:,} of {n_estimated:,} stars ({100 * n_near / n_estimated:.0f} %) "
            f"{AR_NEAR_MAX_WHAT}: {AR_NEAR_MAX_WHY}",
            err=True,
        )


def _echo_prior_temper(record: dict[str, Any]) -> None:
    """Say how a run adjusted its prior (``PriorTemperFit.to_dict()``)."""
    from photodist.report import prior_power_note

    note = prior_power_note(record)
    if note:
        click.echo(note)


#: Rows at the start of a catalogue on which `bayes` fits the error floor, the prior's shift
#: and power and the dust profile (the same rows whatever ``--batch-size``).
FIT_SAMPLE_ROWS = 200_000


def _leading_rows(
    batches: Iterator[pd.DataFrame], n_rows: int
) -> tuple[pd.DataFrame | None, Iterator[pd.DataFrame]]:
    """The first ``n_rows`` rows of a stream of batches (None for an empty stream) and the
    whole stream again, its first batches held in memory."""
    held: list[pd.DataFrame] = []
    count = 0
    for frame in batches:
        held.append(frame)
        count += len(frame)
        if count >= n_rows:
            break
    if not held:
        return None, iter(())
    lead = (
        pd.concat(held, ignore_index=True).head(n_rows) if len(held) > 1 else held[0].head(n_rows)
    )
    return lead, itertools.chain(held, batches)


def _batch_size_option(default: int):
    """The ``--batch-size`` option of the streaming commands (a positive number of rows)."""
    return click.option(
        "--batch-size",
        type=POSITIVE_INT,
        default=default,
        show_default=True,
        help="Stars per batch (bounds memory).",
    )


_SPEC_OPTION = click.option(
    "--spec",
    "spec_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Network architecture JSON (e.g. best_spec.json from `photodist tune`).",
)
_FLUX_UNIT_OPTION = click.option(
    "--flux-unit",
    type=click.Choice(["nJy", "uJy", "mJy", "Jy"]),
    default=None,
    help="Read the bands from flux columns in this unit ({band}_psfFlux and {band}_psfFluxErr "
    "as in Rubin's Object tables; rename with --column uflux=COL --column ufluxerr=COL) and "
    "convert them to AB magnitudes; a non-positive flux makes its band unusable.",
)


def _default(module: str, name: str) -> object:
    """A constant of a photodist module, imported only when a command needs it (fast start)."""
    import importlib

    return getattr(importlib.import_module(f"photodist.{module}"), name)


def _patch_from_options(
    pixel: int | None, order: int, cone: tuple[float, float, float] | None
) -> dict[str, object]:
    """``pixel``/``order`` or ``cone`` keyword arguments for the simulator; exactly one patch."""
    if (pixel is None) == (cone is None):
        raise click.UsageError("give exactly one of --pixel (with --order) or --cone L B RADIUS")
    if pixel is not None:
        return {"pixel": pixel, "order": order}
    return {"cone": tuple(cone)}


@cli.command("simulate")
@click.argument("output_path", type=click.Path(path_type=Path))
@click.option("--pixel", type=int, default=None, help="Nested HEALPix pixel (ICRS).")
@click.option(
    "--order", type=HEALPIX_ORDER, default=4, show_default=True, help="HEALPix order of --pixel."
)
@click.option(
    "--cone",
    type=float,
    nargs=3,
    default=None,
    metavar="L B RADIUS",
    help="Cone in Galactic coordinates (degrees) instead of a pixel.",
)
@click.option("--bands", type=BAND_SET_CHOICE, default="lsst", show_default=True)
@click.option(
    "--errors",
    default="lsst10",
    show_default=True,
    help="Photometric errors: lsst10 (lsstN: N years), sdss (sdssN: N epochs) or none.",
)
@click.option(
    "--r-max",
    type=float,
    default=lambda: _default("simulate", "DEFAULT_R_MAX"),
    help="Faint limit in true r (mag).  [default: 27.5]",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@click.option(
    "--ar-inf",
    type=float,
    default=None,
    help="Total sightline extinction A_r(inf) (mag) for the patch; default: the dust model.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def simulate_command(
    output_path: Path,
    pixel: int | None,
    order: int,
    cone: tuple[float, float, float] | None,
    bands: str,
    errors: str,
    r_max: float,
    seed: int,
    ar_inf: float | None,
    overwrite: bool,
) -> None:
    """Simulate the stars of a sky patch with their true parameters -> OUTPUT (.parquet)."""
    from photodist import io
    from photodist.simulate import simulate_patch, write_simulation

    patch = _patch_from_options(pixel, order, cone)
    if output_path.suffix.lower() != ".parquet":
        raise click.BadParameter("the output must be a .parquet file", param_hint="OUTPUT")
    try:
        io.check_output_path(output_path, overwrite=overwrite)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    start = time.perf_counter()
    try:
        frame = simulate_patch(
            **patch, r_max=r_max, band_set=bands, errors=errors, seed=seed, ar_inf=ar_inf
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    write_simulation(frame, output_path)
    click.echo(
        f"{len(frame)} stars (r <= {r_max:g}) -> {output_path} in "
        f"{time.perf_counter() - start:.1f} s"
    )


@cli.command("priors")
@click.argument("output_path", type=click.Path(path_type=Path))
@click.option("--pixel", type=int, default=None, help="Nested HEALPix pixel (ICRS).")
@click.option(
    "--order", type=HEALPIX_ORDER, default=4, show_default=True, help="HEALPix order of --pixel."
)
@click.option(
    "--cone",
    type=float,
    nargs=3,
    default=None,
    metavar="L B RADIUS",
    help="Cone in Galactic coordinates (degrees) instead of a pixel.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@click.option(
    "--feh-step",
    type=GRID_STEP,
    default=DEFAULT_FEH_STEP,
    show_default=True,
    help="Grid step (dex).",
)
@click.option(
    "--mr-step", type=GRID_STEP, default=DEFAULT_MR_STEP, show_default=True, help="Grid step (mag)."
)
@click.option(
    "--ar-inf",
    type=float,
    default=None,
    help="Total sightline extinction A_r(inf) (mag); default: the dust model.",
)
@click.option(
    "--min-stars",
    type=click.IntRange(1, 1_000_000),
    default=lambda: _default("priors", "DEFAULT_MIN_STARS"),
    help="Simulated stars per r bin the map aims for.  [default: 20000]",
)
@click.option(
    "--trilegal",
    "trilegal_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Convert this TRILEGAL prior catalogue (HATS folder or partition file) instead; "
    "--pixel picks a pixel of a folder.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def priors_command(
    output_path: Path,
    pixel: int | None,
    order: int,
    cone: tuple[float, float, float] | None,
    seed: int,
    feh_step: float,
    mr_step: float,
    ar_inf: float | None,
    min_stars: int,
    trilegal_path: Path | None,
    overwrite: bool,
) -> None:
    """Prior maps p([Fe/H], M_r | r) of a sky patch on the locus grid -> OUTPUT (.npz)."""
    from photodist.priors import (
        build_patch_priors,
        prior_file_path,
        read_trilegal_priors,
    )

    if output_path.is_dir():
        raise click.UsageError(f"{output_path} is a folder; give the prior file's name (.npz)")
    final = prior_file_path(output_path)
    if final.is_dir() or (final.exists() and not overwrite):
        raise click.ClickException(f"{final} already exists; use --overwrite to replace it")
    if trilegal_path is not None and cone is not None:
        raise click.UsageError("--cone cannot be used with --trilegal")
    locus = _stepped(lambda: build_locus(feh_step=feh_step, mr_step=mr_step))
    start = time.perf_counter()
    try:
        if trilegal_path is not None:
            prior = read_trilegal_priors(trilegal_path, locus, pixel=pixel)
        else:
            patch = _patch_from_options(pixel, order, cone)
            prior = build_patch_priors(
                **patch, locus=locus, seed=seed, ar_inf=ar_inf, min_stars=min_stars
            )
    except (ValueError, KeyError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    final.parent.mkdir(parents=True, exist_ok=True)
    path = prior.save(final)
    source = "TRILEGAL" if trilegal_path is not None else "photodist"
    click.echo(
        f"{source} prior map: {prior.n_bins} r bins on a {len(prior.feh)} x {len(prior.mr)} "
        f"([Fe/H], M_r) grid -> {path} in {time.perf_counter() - start:.1f} s"
    )
    short = prior.metadata.get("bins_below_min_stars") or {}
    if short:
        listed = ", ".join(f"r = {r}: {n}" for r, n in short.items())
        click.echo(
            f"warning: r bins short of --min-stars {min_stars} ({listed} simulated stars); "
            "their prior is broader (flat with fewer than 2)",
            err=True,
        )


def _resolve_prior(
    choice: PriorChoice,
    positions,
    columns: ColumnMap,
    locus: Locus,
    seed: int,
    n_stars: int,
):
    """The prior for a one-patch run: a file, TRILEGAL maps, the Galaxy model, or flat.

    ``positions`` is the catalogue (or a function returning its position columns), read only
    when the Galaxy-model prior has to be placed on the sky; an empty catalogue (``n_stars``
    0) needs none.
    """
    given = [x is not None for x in (choice.prior_path, choice.trilegal_path)]
    if sum(given) + choice.flat_prior > 1:
        raise click.UsageError("give at most one of --prior, --trilegal-prior, --flat-prior")
    if choice.trilegal_pixel is not None and choice.trilegal_path is None:
        raise click.UsageError("--trilegal-pixel chooses a pixel of --trilegal-prior; give both")
    if choice.flat_prior:
        return None
    from photodist import priors

    try:
        if choice.prior_path is not None:
            return priors.PriorMap.load(choice.prior_path)
        if choice.trilegal_path is not None:
            return priors.read_trilegal_priors(
                choice.trilegal_path, locus, pixel=choice.trilegal_pixel
            )
    except (ValueError, KeyError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if n_stars == 0:  # nothing to place on the sky; the output is empty too
        return None
    frame = positions() if callable(positions) else positions
    ra, dec = _equatorial_positions(frame, columns)
    ar_inf = None
    dust = columns.dust_values(frame)
    if dust is not None and np.isfinite(dust).any():
        # a star listed several times counts once, as in placing the cone
        once = ~pd.DataFrame({"ra": ra, "dec": dec, "dust": dust}).duplicated().to_numpy()
        ar_inf = float(np.nanmedian(dust[once]))
    try:
        prior = priors.galaxy_prior_for_stars(
            ra,
            dec,
            locus=locus,
            seed=seed,
            ar_inf=ar_inf,
        )
    except ValueError as exc:
        raise click.ClickException(
            f"{exc}; give --prior, --trilegal-prior or --flat-prior"
        ) from exc
    radius = prior.metadata["footprint_cone"][2]
    outside = prior.metadata.get("n_outside_cone", 0)
    step = frame.attrs.get("sample_step", 1)
    if outside:
        sampled = f" (in a sample of one row in {step})" if step > 1 else ""
        click.echo(
            f"warning: {outside} star(s){sampled} lie beyond the Galaxy-model prior's cone (radius "
            f"{radius:.1f} deg around the other stars' centre); they get its prior too: check "
            "their positions",
            err=True,
        )
    if radius > priors.WIDE_FOOTPRINT_RADIUS:
        click.echo(
            f"warning: the catalogue spans a cone of radius {radius:.1f} deg; one Galaxy-model "
            "prior averaged over it blurs lines of sight (the paper's patches are HEALPix "
            "order 4, ~13 deg^2): `photodist survey` gives each patch its own prior and dust",
            err=True,
        )
    return prior


def _equatorial_positions(frame: pd.DataFrame, columns: ColumnMap) -> tuple:
    """RA and Dec (deg) of the stars (:func:`photodist.bands.sky_positions`), or a usage
    error asking for a prior that needs no position."""
    try:
        return sky_positions(frame, columns)
    except MissingColumnError as exc:
        raise click.UsageError(
            f"{exc} to place a Galaxy-model prior on the sky; give --prior, --trilegal-prior "
            "or --flat-prior"
        ) from exc


@dataclasses.dataclass(frozen=True)
class PriorChoice:
    """The ([Fe/H], M_r) prior options of a one-patch run (``--prior``, ``--trilegal-prior``,
    ``--trilegal-pixel``, ``--flat-prior``)."""

    prior_path: Path | None = None
    trilegal_path: Path | None = None
    trilegal_pixel: int | None = None
    flat_prior: bool = False


def _existing_prior_file(
    ctx: click.Context, param: click.Parameter, value: Path | None
) -> Path | None:
    """``--prior`` as given, or with the ``.npz`` that ``photodist priors`` appends."""
    if value is None:
        return None
    from photodist.priors import prior_file_path

    for candidate in (value, prior_file_path(value)):
        if candidate.is_file():
            return candidate
    raise click.BadParameter(f"no prior file {value}", ctx=ctx, param=param)


def _prior_options(function):
    """Options choosing the ([Fe/H], M_r) prior of a one-patch run, passed to the command as
    one ``prior_choice`` (:class:`PriorChoice`)."""
    names = [f.name for f in dataclasses.fields(PriorChoice)]

    @functools.wraps(function)
    def command(*args, **kwargs):
        choice = PriorChoice(**{name: kwargs.pop(name) for name in names})
        return function(*args, prior_choice=choice, **kwargs)

    options = [
        click.option(
            "--prior",
            "prior_path",
            type=click.Path(path_type=Path),
            default=None,
            callback=_existing_prior_file,
            help="Prior map file from `photodist priors` (.npz; the name it was given works).",
        ),
        click.option(
            "--trilegal-prior",
            "trilegal_path",
            type=click.Path(exists=True, path_type=Path),
            default=None,
            help="TRILEGAL-format prior map (HATS catalogue or partition file).",
        ),
        click.option(
            "--trilegal-pixel",
            type=int,
            default=None,
            help="Pixel to read from a multi-pixel TRILEGAL prior catalogue.",
        ),
        click.option(
            "--flat-prior",
            is_flag=True,
            help="Flat prior in ([Fe/H], M_r) (rows flagged NO_PRIOR).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class ErrorFloorType(click.ParamType):
    """``auto`` or a finite non-negative number of magnitudes."""

    name = "auto|MAG"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        try:
            floor = float(value)
        except (TypeError, ValueError):
            floor = float("nan")
        if not 0.0 <= floor < math.inf:
            self.fail(f"{value!r} is neither 'auto' nor a finite magnitude >= 0", param, ctx)
        return floor


def _error_floor_option(function):
    """The colour-error floor option of the Bayesian stage."""
    return click.option(
        "--error-floor",
        type=ErrorFloorType(),
        default=0.02,
        show_default=True,
        help="Colour-error floor added in quadrature (mag), or 'auto': fitted to the "
        "catalogue's well-measured stars (0.02 when it has fewer than 100); see "
        "docs/benchmarks.md for when each is better.",
    )(function)


def _catalog_options(function):
    """Options naming the catalogue's band set and columns."""
    options = [
        click.option(
            "--bands",
            type=BAND_SET_CHOICE,
            default="lsst",
            show_default=True,
            help="Band set: sdss (ugriz) or lsst (ugrizy). Not given, a catalogue that has "
            "no y band is read as sdss (and said so).",
        ),
        click.option(
            "--column",
            multiple=True,
            metavar="KEY=COLUMN",
            help="Column mapping, e.g. --column umag=u_psf --column uerr=u_psf_err --column ra=RA.",
        ),
        click.option(
            "--dust-column",
            default=DEFAULT_DUST_COLUMN,
            show_default=True,
            help="Column with the map A_r per star (bounds the A_r prior); where the default "
            "is absent, common other names of A_r and E(B-V) are used; '' for no map.",
        ),
        click.option(
            "--ebv-column",
            default=None,
            help="Column with the dust map's E(B-V) (e.g. 'ebv' of Rubin's Object tables), used "
            "where the catalogue has no --dust-column: A_r(map) = 2.751 E(B-V) (SFD, SDSS r).",
        ),
        _FLUX_UNIT_OPTION,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _read_spec(path: Path):
    """A network architecture from its JSON file, or a clear error."""
    from photodist.nn import NetworkSpec

    try:
        return NetworkSpec.from_json(path.read_text())
    except ValueError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


def _check_columns(available: list[str], band_set: str, columns: ColumnMap) -> None:
    """Fail early, naming the column, when a required magnitude or error column is missing."""
    try:
        photometry_from_frame(pd.DataFrame(columns=available), band_set, columns)
    except KeyError as exc:
        raise click.ClickException(str(exc)) from exc


#: At most this many rows' positions place a Galaxy-model prior (`bayes`): every k-th row of
#: a larger catalogue, so that memory stays bounded whatever its size
MAX_PRIOR_POSITIONS = 500_000


def _positions_reader(path: Path, columns: ColumnMap):
    """A loader of the catalogue's position (and dust) columns, for placing the prior: every
    row, or every k-th row of a catalogue beyond :data:`MAX_PRIOR_POSITIONS` (streamed; k in
    ``attrs["sample_step"]``)."""

    def read() -> pd.DataFrame:
        from photodist import io

        try:
            available = io.catalog_columns(path)
            wanted = [columns.ra, columns.dec, *columns.dust_columns(available)]
            wanted += list(sum(GALACTIC_COLUMNS, ()))
            wanted = [c for c in wanted if c and c in available]
            step = max(1, math.ceil(io.count_rows(path) / MAX_PRIOR_POSITIONS))
            parts = [
                batch[batch.index % step == 0]
                for batch in io.iter_catalog_batches(path, batch_size=200_000, columns=wanted)
            ]
        except io.CatalogError as exc:
            raise click.ClickException(str(exc)) from exc
        frame = pd.concat(parts) if len(parts) > 1 else parts[0]
        frame.attrs["sample_step"] = step
        return frame

    return read


@cli.command("check")
@click.argument("input_path", type=click.Path(exists=True, path_type=Path))
@_catalog_options
@click.option(
    "--order",
    type=HEALPIX_ORDER,
    default=4,
    show_default=True,
    help="HEALPix order of the patches.",
)
@click.option(
    "--n-train",
    type=POSITIVE_INT,
    default=10_000,
    show_default=True,
    help="Patches with more usable stars than this get networks, as `run` and `survey` "
    "decide (none when this is below their minimum training set).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the findings as JSON.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")
@_batch_size_option(1_000_000)
def check_command(
    input_path: Path,
    bands: str,
    column: tuple[str, ...],
    dust_column: str,
    ebv_column: str | None,
    flux_unit: str | None,
    order: int,
    n_train: int,
    json_path: Path | None,
    overwrite: bool,
    batch_size: int,
) -> None:
    """Check a catalogue before a run, without any fit (streamed, any size).

    Says which columns the estimators will read (and which were found under other names),
    per band the usable measurements, median error and SNR > 5 counts, the rows that will be
    flagged whatever the fit (NO_R, TOO_FEW_COLORS, COLOR_UNUSABLE, R_OUTSIDE_PRIOR), the r
    and dust-map distributions, and the stars per HEALPix patch. Exits with status 1 when a
    required column is missing.
    """
    import json

    from tqdm import tqdm

    from photodist import io
    from photodist.catalog_check import check_catalog

    columns = _column_map(column, dust_column, flux_unit, ebv_column)
    if json_path is not None:
        _check_file_output(json_path, overwrite, "--json", input_path)
    try:
        bands = _chosen_bands(columns, io.catalog_columns(input_path), bands)
        with tqdm(total=io.count_rows(input_path), unit="star", desc="check") as bar:
            result = check_catalog(
                input_path, bands, columns, order=order, batch_size=batch_size, progress=bar.update
            )
    except io.CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(result.lines(n_train)))
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_dict(), indent=2))
        click.echo(f"findings -> {json_path}")
    if not result.readable:
        raise SystemExit(1)


@cli.command("bayes")
@click.argument("input_path", type=click.Path(exists=True, path_type=Path))
@click.argument("output_path", type=click.Path(path_type=Path))
@_catalog_options
@_prior_options
@click.option(
    "--locus",
    "locus_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Locus table to use instead of the built-in locus (on its own grid, unless "
    "--feh-step or --mr-step is given).",
)
@click.option("--feh-step", type=GRID_STEP, default=BAYES_FEH_STEP, show_default=True)
@click.option("--mr-step", type=GRID_STEP, default=BAYES_MR_STEP, show_default=True)
@_error_floor_option
@_a_prior_options
@_DUST_PRIOR_OPTION
@_prior_temper_options
@_independent_colors_option
@_batch_size_option(200_000)
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help="Seed of the Galaxy-model prior simulation and of the star samples the error-floor, "
    "prior and dust-profile fits use.",
)
@_keep_option
@click.option(
    "--posterior-rows",
    default=None,
    help="Comma-separated input rows (0-based) whose full marginal posteriors are written "
    "(.npz and .png per star) to --posterior-dir.",
)
@click.option(
    "--posterior-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for --posterior-rows [default: OUTPUT's name + '_posteriors'].",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu: the numba estimator on the CPU cores; cuda (or cuda:N): the batched PyTorch "
    "estimator on a GPU; auto: cuda when a CUDA device is present.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def bayes_command(
    input_path: Path,
    output_path: Path,
    bands: str,
    column: tuple[str, ...],
    dust_column: str,
    ebv_column: str | None,
    flux_unit: str | None,
    prior_choice: PriorChoice,
    locus_path: Path | None,
    feh_step: float,
    mr_step: float,
    error_floor: float | str,
    a_max: float,
    a_min_fraction: float,
    a_max_scale: float,
    a_max_offset: float,
    dust_prior: str,
    prior_temper: float | str,
    prior_feh_shift: float | str,
    independent_colors: bool,
    batch_size: int,
    seed: int,
    keep: tuple[str, ...],
    posterior_rows: str | None,
    posterior_dir: Path | None,
    device: str,
    overwrite: bool,
) -> None:
    """Bayesian estimates for every star of INPUT (Parquet, HATS, CSV, text or FITS) -> OUTPUT.

    The catalogue is streamed in batches; a Parquet or CSV OUTPUT is written batch by batch
    (bounded memory), a FITS one assembled in memory. The ([Fe/H], M_r) prior is the Galaxy
    model's for the catalogue's sky area unless --prior, --trilegal-prior or --flat-prior
    says otherwise. OUTPUT.run.json records the
    settings, the error floor and the dust profile used (`photodist train` reads it).
    """
    import json

    from tqdm import tqdm

    from photodist import io
    from photodist.bayes import BayesConfig, PriorGrid, ar_near_bound
    from photodist.bayes_torch import make_estimator
    from photodist.error_floor import resolve_error_floor
    from photodist.nn import resolve_device
    from photodist.prior_temper import resolve_prior_temper
    from photodist.report import error_model_note

    columns, bands = _catalog_columns(column, dust_column, flux_unit, ebv_column, input_path, bands)
    band_set = get_band_set(bands)
    keep = _kept_columns(keep, columns, input_path)
    resolved_device = resolve_device(_checked_device(device, "--device"))
    summary_path = io.run_file(output_path, ".run.json")
    wanted = _parse_rows(posterior_rows)
    post_dir = posterior_dir or output_path.with_name(output_path.stem + "_posteriors")
    if wanted.size and post_dir.exists() and not post_dir.is_dir():
        raise click.BadParameter(
            f"{post_dir} exists and is not a folder", param_hint="--posterior-dir"
        )
    try:
        _check_output(output_path, overwrite, input_path)
        if summary_path.exists() and not overwrite:
            raise FileExistsError(f"{summary_path} already exists; use --overwrite to replace it")
        total = io.count_rows(input_path)
        if wanted.size and total is not None and wanted.max() >= total:
            raise click.BadParameter(
                f"rows {wanted[wanted >= total].tolist()} are beyond the catalogue's {total} "
                "rows (numbered from 0)",
                param_hint="--posterior-rows",
            )
        batches = io.iter_catalog_batches(input_path, batch_size=batch_size)
        _check_columns(io.catalog_columns(input_path), bands, columns)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        locus = load_locus(locus_path)
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--locus") from exc
    ctx = click.get_current_context()
    steps_given = any(
        ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
        for name in ("feh_step", "mr_step")
    )
    if locus_path is None or steps_given:  # a --locus table keeps its grid unless asked
        locus = _stepped(lambda: locus.resample(feh_step, mr_step))
    prior = _resolve_prior(
        prior_choice, _positions_reader(input_path, columns), columns, locus, seed, total
    )
    config = BayesConfig(
        default_a_max=a_max,
        dust_scale=a_max_scale,
        dust_offset=a_max_offset,
        color_covariance=not independent_colors,
        dust_min_fraction=a_min_fraction,
    )
    auto = error_floor == "auto"
    floor_info: dict[str, Any] | None = None
    # the floor fit ("auto") or the error-model check of a fixed floor, the prior's fit and
    # the dust profile: on the catalogue's first FIT_SAMPLE_ROWS rows, whatever the batches
    first, batches = _leading_rows(batches, FIT_SAMPLE_ROWS)
    if first is not None:
        try:
            sample = photometry_from_frame(first, band_set, columns)
        except KeyError as exc:
            raise click.ClickException(str(exc)) from exc
        sample = sample.subset(sample.distinct_rows())  # a repeated star counts once
        # Bayes only: the measured scatter alone (no grid term) calibrates best
        fit = resolve_error_floor(
            error_floor, sample, locus, prior, config, seed=seed, grid_term=False
        )
        error_floor = fit.floor
        floor_info = fit.to_dict()
        if auto:
            how = f"fitted on {fit.n_stars} stars" if fit.fitted else fit.reason
            click.echo(f"error floor {error_floor:.4f} mag ({how})")
        else:
            click.echo(error_model_note(fit.to_dict()))
    elif auto:
        error_floor = config.error_floor
    config = dataclasses.replace(config, error_floor=float(error_floor))
    temper_info: dict[str, Any] | None = None
    if first is not None:  # the prior's power: fitted on the same rows as the floor
        prior, temper = resolve_prior_temper(
            prior_temper, sample, locus, prior, config, seed=seed, feh_shift=prior_feh_shift
        )
        temper_info = temper.to_dict()
        _echo_prior_temper(temper_info)
    profile = None
    profile_info: dict[str, Any] | None = None
    if dust_prior == "profile" and first is not None:  # fitted on the same rows as the floor
        from photodist.dust_profile import fit_profile_record

        profile, profile_info = fit_profile_record(sample, locus, prior, config, seed=seed)
        if profile is None:
            reason = profile_info["reason"]
            click.echo(f"dust profile not fitted ({reason}): the flat A_r prior alone")
        else:
            unit = "of the map" if profile.relative else "mag"
            click.echo(
                f"dust profile fitted on {profile_info['n_stars']} stars: A_r "
                f"{profile.knots_mu.min():.3f}-{profile.knots_mu.max():.3f} {unit}, width "
                f"{profile.sigma:.3f} mag, log evidence {profile_info['log_evidence_gain']:+.3f} "
                "per star over the flat prior"
            )
    estimator = make_estimator(locus, prior, config, resolved_device, dust_profile=profile)
    if resolved_device.type == "cuda":
        click.echo(f"Bayesian estimator on {resolved_device} (batched PyTorch)")
    prior_grid = PriorGrid.from_prior(prior, locus) if prior is not None and wanted.size else None
    start = time.perf_counter()

    near_bound = [0, 0]  # A_r estimates near their bound, finite ones

    def parts() -> Iterator[pd.DataFrame]:
        n_done = 0
        with tqdm(total=total, unit="star", desc="bayes") as bar:
            for frame in batches:
                try:
                    phot = photometry_from_frame(frame, band_set, columns)
                except KeyError as exc:
                    raise click.ClickException(str(exc)) from exc
                result = estimator.predict(phot)
                clash = sorted(set(keep) & set(result.columns))
                if clash:  # (the first batch: before anything is written)
                    raise click.BadParameter(
                        f"kept columns {clash} have the names of output columns; rename them",
                        param_hint="--keep",
                    )
                for row in wanted[(wanted >= n_done) & (wanted < n_done + len(phot))]:
                    _write_posterior(
                        phot, int(row), n_done, locus, prior_grid, config, post_dir, profile
                    )
                kept = frame[[c for c in keep if c in frame.columns]].reset_index(drop=True)
                near, finite = ar_near_bound(result["Ar_mean"], result["Ar_max"])
                near_bound[0] += near
                near_bound[1] += finite
                floats = {c: "float32" for c in result.columns if c != "flags"}
                yield pd.concat([kept, result.astype(floats)], axis=1)
                n_done += len(phot)
                bar.update(len(frame))

    n_out = _write_parts(parts(), output_path, overwrite)
    elapsed = time.perf_counter() - start
    summary = {
        "input": str(input_path),
        "output": str(output_path),
        "n_stars": n_out,
        "bands": band_set.name,
        "config": dataclasses.asdict(config),
        "dust_prior": dust_prior,
        "error_floor": floor_info,
        "prior_temper": temper_info,
        "dust_profile": profile_info,
        "prior_r_range": estimator.prior.r_range,
        "prior_r_intervals": estimator.prior.r_intervals,
        "posterior_grid": {"feh_step": locus.feh_step, "mr_step": locus.mr_step},
        "n_ar_near_bound": near_bound[0],
        "n_ar_estimates": near_bound[1],
        "columns": columns.to_mapping(),
        "device": str(resolved_device),
        "seconds": elapsed,
    }
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    _warn_ar_near_bound(*near_bound)
    click.echo(
        f"{n_out} stars -> {output_path} in {elapsed:.1f} s "
        + (f"({elapsed / n_out * 1e6:.0f} us/star; " if n_out else "(")
        + f"summary {summary_path})"
    )
    if wanted.size and wanted.max() >= n_out:
        click.echo(f"posterior rows beyond the catalogue's {n_out} rows: {wanted[wanted >= n_out]}")


def _write_parts(parts: Iterable[pd.DataFrame], output_path: Path, overwrite: bool) -> int:
    """Write the frames to OUTPUT (:func:`photodist.io.write_batches`: Parquet and CSV batch
    by batch, FITS at the end); an interrupted or failed run leaves no partial file."""
    from photodist import io

    return io.write_batches(parts, output_path, overwrite=overwrite)


def _parse_rows(text: str | None) -> np.ndarray:
    """Row numbers of ``--posterior-rows`` ("3,17,42"), sorted and unique."""
    if not text:
        return np.zeros(0, dtype=np.int64)
    try:
        rows = np.unique(np.array([int(part) for part in text.split(",") if part.strip()]))
        rows = rows.astype(np.int64)
    except (ValueError, OverflowError) as exc:
        raise click.BadParameter(
            f"expected comma-separated row numbers, got {text!r}", param_hint="--posterior-rows"
        ) from exc
    if rows.size and rows.min() < 0:
        raise click.BadParameter("row numbers must be >= 0", param_hint="--posterior-rows")
    return rows.astype(np.int64)


def _write_posterior(
    phot: Any,
    row: int,
    offset: int,
    locus: Locus,
    prior: Any,
    config: Any,
    folder: Path,
    dust_profile: Any = None,
) -> None:
    """Full posterior of input row ``row`` (``row - offset`` in this batch): .npz and .png."""
    from photodist.plots import posterior_figure
    from photodist.posterior import star_posterior

    try:
        posterior = star_posterior(phot, row - offset, locus, prior, config, dust_profile)
    except ValueError as exc:
        click.echo(f"posterior of row {row} not written: {exc}")
        return
    posterior.row = row
    folder.mkdir(parents=True, exist_ok=True)
    posterior.save(folder / f"row_{row}.npz")
    posterior_figure(posterior, folder / f"row_{row}.png")
    click.echo(f"posterior of row {row} -> {folder / f'row_{row}.png'}")


@cli.command("train")
@click.argument("input_path", type=click.Path(exists=True, path_type=Path))
@click.argument("labels_path", type=click.Path(exists=True, path_type=Path))
@click.argument("model_path", type=click.Path(path_type=Path))
@_catalog_options
@_training_options
@_SPEC_OPTION
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
def train_command(
    input_path: Path,
    labels_path: Path,
    model_path: Path,
    bands: str,
    column: tuple[str, ...],
    dust_column: str,
    ebv_column: str | None,
    flux_unit: str | None,
    epochs: int,
    learning_rate: float,
    nn_device: str,
    nn_dust_input: bool,
    spec_path: Path | None,
    seed: int,
    overwrite: bool,
) -> None:
    """Train the networks on Bayesian labels: LABELS from `photodist bayes INPUT LABELS`.

    INPUT holds the labelled stars (e.g. a representative subsample of a patch) and LABELS
    their Bayesian estimates, row by row. The model (MODEL, safetensors) then predicts any
    star of the patch with `photodist predict`. When LABELS.run.json says the labels used a
    dust profile relative to the map, the networks take the map's A_r as an input (as
    `--nn-dust-input`; the labels follow the map); the r range of the labels' prior goes
    with the model, and `predict` flags stars beyond it R_OUTSIDE_PRIOR, as do the labels'
    estimator settings (error floor, A_r bounds, colour covariance, posterior grid), with
    which `predict` checks each star's best fit (chi2min, POOR_FIT, AR_AT_BOUND).
    """

    from photodist import io
    from photodist.pipeline import PipelineConfig, train_networks, used_dust_profile

    labels_summary = io.run_file(labels_path, ".run.json")
    _check_file_output(model_path, overwrite, "MODEL", input_path, labels_path, labels_summary)
    columns, bands = _catalog_columns(column, dust_column, flux_unit, ebv_column, input_path, bands)
    try:
        frame = io.read_catalog(input_path)
        labels = io.read_catalog(labels_path)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    _check_columns([str(c) for c in frame.columns], bands, columns)
    summary = None
    if labels_summary.exists():
        try:
            summary = io.read_run_summary(labels_path)
            profile = used_dust_profile(summary)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise click.ClickException(f"{labels_summary}: unreadable summary ({exc})") from exc
        _check_labels_bands(summary, labels_summary, bands)
        if profile is not None and profile.relative and not nn_dust_input:
            nn_dust_input = True
            click.echo(
                f"the labels used a dust profile relative to the map ({labels_summary}): the "
                "networks take the map's A_r as an input"
            )
    config = PipelineConfig(
        band_set=get_band_set(bands).name,
        nn_max_epochs=epochs,
        nn_learning_rate=learning_rate,
        nn_device=_checked_device(nn_device),
        nn_dust_input=nn_dust_input,
        nn_spec=None if spec_path is None else _read_spec(spec_path),
        seed=seed,
    )
    start = time.perf_counter()
    try:
        model = train_networks(frame, labels, config, columns=columns, labels_info=summary)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    model.save(model_path)
    meta = model.training_metadata_
    click.echo(
        f"networks trained on {meta['n_train']} + {meta['n_validation']} (validation) labelled "
        f"stars in {time.perf_counter() - start:.1f} s -> {model_path}"
    )


@cli.command("predict")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("input_path", type=click.Path(exists=True, path_type=Path))
@click.argument("output_path", type=click.Path(path_type=Path))
@click.option(
    "--column",
    multiple=True,
    metavar="KEY=COLUMN",
    help="Column mapping, e.g. --column umag=u_psf --column uerr=u_psf_err.",
)
@click.option(
    "--nn-device",
    default="auto",
    show_default=True,
    help="Where the networks predict: cpu, cuda (or cuda:N), or auto (cuda when present).",
)
@_batch_size_option(1_000_000)
@click.option(
    "--dust-column",
    default=DEFAULT_DUST_COLUMN,
    show_default=True,
    help="Column with the map A_r per star (read for a model trained with --nn-dust-input).",
)
@click.option("--ebv-column", default=None, help="Column with the dust map's E(B-V).")
@_FLUX_UNIT_OPTION
@_keep_option
@_FIT_CHECK_OPTION
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def predict_command(
    model_path: Path,
    input_path: Path,
    output_path: Path,
    column: tuple[str, ...],
    dust_column: str,
    ebv_column: str | None,
    flux_unit: str | None,
    nn_device: str,
    batch_size: int,
    keep: tuple[str, ...],
    no_fit_check: bool,
    overwrite: bool,
) -> None:
    """Network estimates for every star of INPUT with MODEL (from `run --save-model`) -> OUTPUT.

    For more stars of a patch whose networks were trained already. The catalogue is streamed
    in batches and must be in the model's band set; a Parquet or CSV OUTPUT is written batch
    by batch (bounded memory), a FITS one assembled in memory. One row per input row,
    same order, with `run`'s columns; rows the networks cannot take (no r, too few usable
    colours) keep NaN estimates and the NN_INVALID_INPUT flag (`photodist bayes` estimates
    them), rows outside the training domain (their inputs, or a dust-map A_r beyond the
    training stars') are flagged NN_OUT_OF_DOMAIN, with a warning above 5 % of the stars.
    """
    from tqdm import tqdm

    from photodist import io
    from photodist.nn import ModelFileError, PhotoDNetwork
    from photodist.pipeline import predict_with_model, training_record

    try:
        model = PhotoDNetwork.load(model_path, device=_checked_device(nn_device))
    except (ModelFileError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        training_record(model)
    except ModelFileError as exc:
        raise click.ClickException(f"{model_path}: {exc}") from exc
    band_set = model.band_set_
    columns, _ = _catalog_columns(
        column, dust_column, flux_unit, ebv_column, input_path, band_set, choose_bands=False
    )
    try:
        available = io.catalog_columns(input_path)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    readable = readable_band_set(columns, available, preferred="lsst")
    if readable is not None and readable != get_band_set(band_set).name:
        try:  # a ugriz model on a ugrizy catalogue runs, without the catalogue's extra bands
            columns.photometry_sources(get_band_set(band_set), available)
            extra = [
                b for b in get_band_set(readable).bands if b not in get_band_set(band_set).bands
            ]
            click.echo(
                f"the model was trained on the {band_set} bands: the catalogue's "
                f"{', '.join(extra)} band{'s' if len(extra) > 1 else ''} not used",
                err=True,
            )
        except MissingColumnError as exc:
            raise click.ClickException(
                f"the model was trained on the {band_set} bands, and the catalogue has the "
                f"{readable} bands only ({exc.args[0].split(' (')[0]})"
            ) from exc
    keep = _kept_columns(keep, columns, input_path)
    try:
        _check_output(output_path, overwrite, input_path, model_path)
        total = io.count_rows(input_path)
        batches = io.iter_catalog_batches(input_path, batch_size=batch_size)
        _check_columns(available, band_set, columns)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    counts = {"n_out_of_domain": 0, "n_invalid_input": 0}
    locus = build_locus()  # of the best-fit check, built once for every batch

    def parts() -> Iterator[pd.DataFrame]:
        with tqdm(total=total, unit="star", desc=f"nn ({band_set})") as bar:
            for frame in batches:
                try:
                    result = predict_with_model(
                        model,
                        frame,
                        columns=columns,
                        keep=keep,
                        locus=locus,
                        fit_check=not no_fit_check,
                    )
                except (KeyError, ValueError) as exc:
                    raise click.ClickException(str(exc)) from exc
                for key in counts:
                    counts[key] += result.attrs["photodist_pipeline"][key]
                yield result
                bar.update(len(frame))

    start = time.perf_counter()
    n_out = _write_parts(parts(), output_path, overwrite)
    elapsed = time.perf_counter() - start
    click.echo(
        f"{n_out} stars -> {output_path} in {elapsed:.1f} s; {counts['n_invalid_input']} without "
        f"a network estimate (NN_INVALID_INPUT), {counts['n_out_of_domain']} outside the "
        "training domain (NN_OUT_OF_DOMAIN)"
    )
    if counts["n_out_of_domain"] > OUT_OF_DOMAIN_WARNING * max(n_out, 1):
        click.echo(
            f"warning: {counts['n_out_of_domain'] / n_out:.0%} of the stars lie outside the "
            "networks' training domain (their colours, magnitudes or dust-map A_r): is "
            f"{model_path.name} the model of this patch? `photodist run` or `bayes` estimates "
            "them",
            err=True,
        )


@cli.command("run")
@click.argument("input_path", type=click.Path(exists=True, path_type=Path))
@click.argument("output_path", type=click.Path(path_type=Path))
@_catalog_options
@_prior_options
@click.option(
    "--n-train",
    type=POSITIVE_INT,
    default=10_000,
    show_default=True,
    help="Stars labelled by the Bayesian estimator to train the networks (at least 1,000, "
    "PipelineConfig.min_train: below that, or in a patch of at most this many usable stars, "
    "every star gets the Bayesian estimate).",
)
@click.option(
    "--strategy",
    type=click.Choice(["stratified", "random"]),
    default="stratified",
    show_default=True,
    help="How the training subsample is chosen.",
)
@_BAYES_ALL_BELOW_OPTION
@_training_options
@_FIT_CHECK_OPTION
@_a_prior_options
@_DUST_PRIOR_OPTION
@_prior_temper_options
@_independent_colors_option
@_error_floor_option
@_SPEC_OPTION
@click.option("--seed", type=SEED, default=0, show_default=True)
@_keep_option
@click.option(
    "--save-model",
    type=click.Path(path_type=Path),
    default=None,
    help="Also save the trained networks to this file.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def run_command(
    input_path: Path,
    output_path: Path,
    bands: str,
    column: tuple[str, ...],
    dust_column: str,
    ebv_column: str | None,
    flux_unit: str | None,
    prior_choice: PriorChoice,
    n_train: int,
    strategy: str,
    bayes_all_below: int,
    epochs: int,
    learning_rate: float,
    nn_device: str,
    nn_dust_input: bool,
    no_fit_check: bool,
    a_max: float,
    a_min_fraction: float,
    a_max_scale: float,
    a_max_offset: float,
    dust_prior: str,
    prior_temper: float | str,
    prior_feh_shift: float | str,
    independent_colors: bool,
    error_floor: float | str,
    spec_path: Path | None,
    seed: int,
    keep: tuple[str, ...],
    save_model: Path | None,
    overwrite: bool,
) -> None:
    """Hybrid photo-D for one patch: Bayes on a subsample, networks for the rest.

    Writes OUTPUT (one row per input row, same order) and, beside it, OUTPUT.run.json (the
    configuration, counts and stage timings) and OUTPUT.prior.npz (the prior used; none
    with --flat-prior).
    """
    import json

    from photodist import io
    from photodist.pipeline import run_patch

    summary_path = io.run_file(output_path, ".run.json")
    prior_out = io.run_file(output_path, ".prior.npz")
    columns, bands = _catalog_columns(column, dust_column, flux_unit, ebv_column, input_path, bands)
    keep = _kept_columns(keep, columns, input_path)
    if save_model is not None:
        _check_file_output(save_model, overwrite, "--save-model", input_path, output_path)
    try:
        _check_output(output_path, overwrite, input_path)
        if summary_path.exists() and not overwrite:
            raise FileExistsError(f"{summary_path} already exists; use --overwrite to replace it")
        frame = io.read_catalog(input_path)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    config = _pipeline_config(
        click.get_current_context().params,
        strategy=strategy,
        progress=True,
        nn_spec=None if spec_path is None else _read_spec(spec_path),
    )
    _check_columns([str(c) for c in frame.columns], bands, columns)
    locus = build_locus()
    start = time.perf_counter()
    prior = _resolve_prior(prior_choice, frame, columns, locus, seed, len(frame))
    prior_seconds = time.perf_counter() - start
    try:
        result, timings, model = run_patch(frame, prior, locus, config, columns=columns, keep=keep)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    timings = {"prior": prior_seconds, **timings}
    n_repeated = result.attrs["photodist_pipeline"].get("n_duplicate_rows", 0)
    if n_repeated:
        click.echo(
            f"note: {n_repeated:,} rows repeat an earlier row's photometry exactly; each star "
            "counts once in the training set and the prior, floor and dust fits"
        )
    _echo_prior_temper(result.attrs["photodist_pipeline"]["prior_temper"])
    _warn_ar_near_bound(
        result.attrs["photodist_pipeline"]["n_ar_near_bound"],
        result.attrs["photodist_pipeline"]["n_ar_estimates"],
    )
    if result.attrs["photodist_pipeline"].get("reason"):
        click.echo(
            "every star got the Bayesian estimate: " + result.attrs["photodist_pipeline"]["reason"]
        )
    io.write_table(result, output_path, overwrite=overwrite)
    if prior_out.exists() and overwrite:  # a previous run's prior map is not this run's
        prior_out.unlink()
    if prior is not None:
        prior.save(prior_out)
    if save_model is not None:
        if model is not None:
            model.save(save_model)
        else:
            click.echo(
                f"no networks trained (every star got the Bayesian estimate): {save_model} "
                "not written"
            )
    summary = {
        "input": str(input_path),
        "output": str(output_path),
        "n_stars": len(result),
        "methods": result["method"].value_counts().to_dict() if len(result) else {},
        "prior": str(prior_out) if prior is not None else None,
        "config": config.to_dict(),
        "error_floor": result.attrs["photodist_pipeline"]["error_floor"],
        "prior_temper": result.attrs["photodist_pipeline"].get("prior_temper"),
        "dust_profile": result.attrs["photodist_pipeline"].get("dust_profile"),
        "prior_r_range": result.attrs["photodist_pipeline"].get("prior_r_range"),
        "prior_r_intervals": result.attrs["photodist_pipeline"].get("prior_r_intervals"),
        "posterior_grid": result.attrs["photodist_pipeline"].get("posterior_grid"),
        "n_duplicate_rows": result.attrs["photodist_pipeline"].get("n_duplicate_rows"),
        "n_ar_near_bound": result.attrs["photodist_pipeline"].get("n_ar_near_bound"),
        "n_ar_estimates": result.attrs["photodist_pipeline"].get("n_ar_estimates"),
        "columns": columns.to_mapping(),
        "timings_s": timings,
    }
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    click.echo("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    click.echo(f"{len(result)} stars -> {output_path} (summary {summary_path})")
    if prior is None and model is not None:
        click.echo(
            "note: with a flat prior most stars' posteriors have two branches, and networks "
            f"trained on {config.n_train:,} labels emulate their means less well than with a "
            "Galaxy-model prior; `photodist bayes` (exact, and faster on a few cores than "
            "training) or a larger --n-train help (docs/benchmarks.md, 'With a flat prior')",
            err=True,
        )


def _run_prior_file(result_path: Path, summary: Mapping[str, Any]) -> Path:
    """The prior map a `photodist run` wrote beside its output (OUTPUT.prior.npz), wherever
    the command is run from; else the path its summary recorded (relative to the folder the
    run was started in, or to the output's folder)."""
    from photodist import io

    recorded = Path(summary["prior"])
    for candidate in (
        io.run_file(result_path, ".prior.npz"),
        recorded,
        result_path.parent / recorded.name,
    ):
        if candidate.is_file():
            return candidate
    raise click.ClickException(
        f"{result_path}: the run's prior map {recorded} is not beside it; NN vs Bayes needs "
        "it (or give --bayes-sample 0)"
    )


@cli.command("evaluate")
@click.argument("result_path", type=click.Path(exists=True, path_type=Path))
@click.argument("truth_path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--bayes-sample",
    type=NON_NEGATIVE_INT,
    default=5000,
    show_default=True,
    help="Network rows re-estimated by the Bayesian method for 'NN vs Bayes' (0: skip).",
)
@click.option(
    "--min-snr",
    type=POSITIVE_FLOAT,
    default=5.0,
    show_default=True,
    help="Evaluate stars with at least this SNR in every band.",
)
@click.option(
    "--truth-column",
    multiple=True,
    metavar="PARAM=COLUMN",
    help="Column holding the true value of Mr, Ar or FeH, e.g. --truth-column Ar=A_r_sim.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the table as CSV.",
)
@click.option(
    "--save-bayes",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the Bayesian estimates of the sampled rows (NaN elsewhere), "
    "aligned with RESULT, for `photodist report --bayes-reference`.",
)
@click.option(
    "--bands",
    type=click.Choice(["lsst", "sdss", "ugrizy", "ugriz"]),
    default=None,
    help="Band set of RESULT when no run summary lies beside it (a `predict` output); "
    "default: the summary's, else lsst.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing --out / --save-bayes files.")
def evaluate_command(
    result_path: Path,
    truth_path: Path,
    bayes_sample: int,
    min_snr: float,
    truth_column: tuple[str, ...],
    out_path: Path | None,
    save_bayes: Path | None,
    bands: str | None,
    overwrite: bool,
) -> None:
    """Table 1 of the paper for a `photodist run` output against a simulated truth catalogue.

    TRUTH is the catalogue given to `photodist run` with true values per row: the simulator's
    Mr_true, Ar_true, FeH_true, the photod convention Mr, FeH, Ar (-99 = none), or columns
    named with --truth-column. Its photometry columns are read with the run's column mapping.
    Rows are matched by an id column both have (source_id, objectId, ...), else by position
    in the table. A `photodist survey` output folder (in HEALPix order) is matched by id or
    by ra/dec, with the survey's band set and column names.
    """

    from photodist import io
    from photodist.bayes import BayesEstimator
    from photodist.evaluate import align_to_run, run_match_keys, snr_mask, table1, truth_values
    from photodist.pipeline import (
        PARAMETERS,
        PipelineConfig,
        posterior_grid,
        used_dust_profile,
        used_error_floor,
        used_prior,
    )
    from photodist.priors import PriorMap
    from photodist.survey import survey_settings

    overrides = dict(_key_values(truth_column, "--truth-column"))
    try:
        for path in (out_path, save_bayes):
            if path is not None:
                _check_output(path, overwrite, result_path, truth_path)
        result = io.read_catalog(result_path).reset_index(drop=True)
        truth = io.read_catalog(truth_path)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        survey = survey_settings(result_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    ids, positions = run_match_keys(survey)
    try:
        truth = align_to_run(
            truth,
            result,
            str(truth_path),
            id_columns=ids,
            positions=positions,
            in_input_order=survey is None,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        true_values = truth_values(truth, overrides, required=True)
    except KeyError as exc:
        raise click.ClickException(
            f"{truth_path}: {exc.args[0]} (or name them with --truth-column, "
            "e.g. --truth-column Mr=M_r_sim)"
        ) from exc
    summary_path = io.run_file(result_path, ".run.json")
    try:
        summary = io.read_run_summary(result_path)
    except io.CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    no_bayes = None  # why there is no Bayesian re-run of network rows
    if survey is not None:  # each patch had its own prior and fits: no Bayesian re-run
        summary = {"config": survey["pipeline"]}
        no_bayes = "a survey output: NN vs Bayes needs each patch's own prior"
    elif not summary:
        no_bayes = (
            f"no run summary ({summary_path.name}; a `predict` output has none): NN vs Bayes "
            "needs the run's prior and settings"
        )
    elif bayes_sample == 0:
        no_bayes = "--bayes-sample 0"
    if no_bayes is not None:
        if save_bayes is not None:
            raise click.UsageError(f"--save-bayes: nothing to save ({no_bayes})")
        if bayes_sample > 0:
            click.echo(f"{no_bayes}; not computed")
        bayes_sample = 0
    if bands is not None:
        bands = get_band_set(bands).name
        recorded = _recorded_bands(summary)
        if recorded and get_band_set(recorded).name != bands:
            raise click.UsageError(f"--bands {bands}: the run used the {recorded} bands")
    # a `photodist bayes` output: every row Bayesian, its uncertainty the posterior std
    bayes_output = "method" not in result.columns and all(
        f"{p}_std" in result.columns and f"{p}_sigma" not in result.columns for p in PARAMETERS
    )
    if bayes_output:
        result = result.assign(
            method="bayes", **{f"{p}_sigma": result[f"{p}_std"] for p in PARAMETERS}
        )
        config = PipelineConfig(band_set=summary.get("bands", bands or PipelineConfig().band_set))
    else:
        try:
            config = PipelineConfig.from_dict(dict(summary.get("config", {}), progress=False))
        except (TypeError, ValueError) as exc:
            raise click.ClickException(
                f"{summary_path} is not the summary of a `photodist run` output: {exc}"
            ) from exc
        if bands is not None:
            config = dataclasses.replace(config, band_set=bands)
    columns = ColumnMap.from_mapping(summary["columns"]) if "columns" in summary else ColumnMap()
    if survey is not None:
        columns = ColumnMap(**survey["columns"])
    try:
        keep = snr_mask(truth, config.band_set, min_snr, columns)
    except KeyError as exc:
        raise click.ClickException(
            f"{truth_path}: no photometry column {exc.args[0]} for the {config.band_set} bands"
            + (
                " (the run's column mapping)"
                if summary
                else f" (without {summary_path.name} the bands are --bands, default lsst)"
            )
        ) from exc
    bayes_full = None
    is_nn = (result["method"] == "nn").to_numpy() if "method" in result.columns else None
    nn_rows = np.flatnonzero(keep & is_nn) if is_nn is not None else np.empty(0, np.int64)
    if is_nn is not None and nn_rows.size == 0:
        n_bayes = int(np.count_nonzero(keep & ~is_nn))
        click.echo(
            f"no network rows (every star got the Bayesian estimate): only the Bayes vs truth "
            f"columns apply, on {n_bayes} stars with SNR > {min_snr:g}"
        )
        if save_bayes is not None:
            raise click.UsageError("--save-bayes: nothing to save (no network rows)")
    if bayes_sample > 0 and nn_rows.size:
        rng = np.random.default_rng(config.seed + 1)
        sample = np.sort(rng.choice(nn_rows, size=min(bayes_sample, len(nn_rows)), replace=False))
        prior = (
            PriorMap.load(_run_prior_file(result_path, summary)) if summary.get("prior") else None
        )
        grid = posterior_grid(build_locus(), config)
        estimator = BayesEstimator(  # the run's Bayesian stage: floor, prior power, profile
            grid,
            used_prior(summary, prior, grid),
            config.bayes_config(used_error_floor(summary)),
            dust_profile=used_dust_profile(summary),
        )
        phot = photometry_from_frame(truth.iloc[sample], config.band_set, columns)
        estimates = estimator.predict(phot)
        bayes_full = pd.DataFrame(np.nan, index=result.index, columns=estimates.columns)
        bayes_full.iloc[sample] = estimates.to_numpy()
    try:
        table = table1(
            result[keep],
            {p: v[keep] for p, v in true_values.items()},
            None if bayes_full is None else bayes_full[keep],
        )
    except KeyError as exc:
        raise click.ClickException(
            f"{result_path}: {exc.args[0]}; expected a `photodist run` or `bayes` output"
        ) from exc
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        click.echo(table.round(4).T.to_string())
    if out_path is not None:
        io.write_table(table, out_path, overwrite=overwrite)
        click.echo(f"table -> {out_path}")
    if save_bayes is not None and bayes_full is not None:
        io.write_table(bayes_full, save_bayes, overwrite=overwrite)
        click.echo(f"Bayesian reference -> {save_bayes}")


@cli.command("survey")
@click.argument("input_path", type=click.Path(exists=True, path_type=Path))
@click.argument("output_dir", type=click.Path(path_type=Path))
@_catalog_options
@click.option(
    "--order",
    type=HEALPIX_ORDER,
    default=4,
    show_default=True,
    help="HEALPix order of the patches (4: 13.4 deg^2).",
)
@click.option(
    "--scheduler",
    default=None,
    help="Address of an existing Dask scheduler (tcp://host:port), or 'synchronous'; "
    "default: a local cluster with --workers processes.",
)
@click.option(
    "--workers",
    type=POSITIVE_INT,
    default=None,
    help="Local-cluster worker processes (default: one per core).",
)
@click.option(
    "--trilegal-prior",
    "trilegal_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="TRILEGAL-format prior catalogue instead of the Galaxy model.",
)
@click.option("--n-train", type=POSITIVE_INT, default=10_000, show_default=True)
@_BAYES_ALL_BELOW_OPTION
@_training_options
@_FIT_CHECK_OPTION
@_a_prior_options
@_DUST_PRIOR_OPTION
@_prior_temper_options
@_independent_colors_option
@_error_floor_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--keep",
    "survey_keep",
    multiple=True,
    help="Input columns copied to the output besides the positions and the id columns found "
    "(repeat the option, or give comma-separated names); a name the catalogue lacks is an "
    "error.",
)
@click.option("--overwrite", is_flag=True, help="Delete an existing run in OUTPUT_DIR first.")
def survey_command(
    input_path: Path,
    output_dir: Path,
    bands: str,
    column: tuple[str, ...],
    dust_column: str,
    ebv_column: str | None,
    flux_unit: str | None,
    order: int,
    scheduler: str | None,
    workers: int | None,
    trilegal_path: Path | None,
    n_train: int,
    bayes_all_below: int,
    epochs: int,
    learning_rate: float,
    nn_device: str,
    nn_dust_input: bool,
    no_fit_check: bool,
    a_max: float,
    a_min_fraction: float,
    a_max_scale: float,
    a_max_offset: float,
    dust_prior: str,
    prior_temper: float | str,
    prior_feh_shift: float | str,
    independent_colors: bool,
    error_floor: float | str,
    seed: int,
    survey_keep: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Whole catalogue, patch by patch on Dask, into a HATS catalogue (resumable).

    Rerunning the same command skips finished patches and redoes partial ones; a different
    configuration is refused. Failed patches are listed and the exit status is non-zero.
    """
    from photodist import io
    from photodist.survey import (
        ManifestMismatchError,
        SurveyConfig,
        SurveyLockedError,
        run_survey,
    )

    # the pipeline's band set comes from the parameters, which a chosen band set updates
    columns, _ = _catalog_columns(column, dust_column, flux_unit, ebv_column, input_path, bands)
    pipeline = _pipeline_config(click.get_current_context().params)
    keep = None
    if survey_keep:  # besides the id columns found
        keep = tuple(n.strip() for value in survey_keep for n in value.split(",") if n.strip())
    config = SurveyConfig(
        order=order,
        pipeline=pipeline,
        columns=columns,
        keep=keep,
        prior="trilegal" if trilegal_path is not None else "galaxy",
        trilegal_path=None if trilegal_path is None else str(trilegal_path),
        prior_seed=seed,
    )
    try:
        summary = run_survey(
            input_path,
            output_dir,
            config,
            scheduler=scheduler,
            n_workers=workers,
            overwrite=overwrite,
        )
    except (ManifestMismatchError, SurveyLockedError, io.CatalogError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    rate = f", {summary.stars_per_s:,.0f} stars/s" if summary.n_done else ""
    click.echo(
        f"{summary.n_patches} patches ({summary.n_done} computed, {summary.n_skipped} "
        f"already done), {summary.n_rows} stars{rate}"
    )
    if summary.prior_note():
        click.echo(summary.prior_note())
    if note := summary.ar_bound_note():
        click.echo(note, err=True)
    for name, message in summary.failed.items():
        click.echo(f"FAILED {name}: {message}", err=True)
    if not summary.ok:
        raise SystemExit(1)
    click.echo(f"HATS catalogue: {output_dir}")


@cli.command("maps")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--order", type=HEALPIX_ORDER, required=True, help="HEALPix order of the maps.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--format", "fmt", type=click.Choice(["fits", "parquet"]), default="fits", show_default=True
)
@click.option("--galactic", is_flag=True, help="Draw the Mollweide maps in Galactic coordinates.")
@click.option("--overwrite", is_flag=True, help="Replace the maps' files in --out.")
def maps_command(
    run_dir: Path, order: int, out_dir: Path, fmt: str, galactic: bool, overwrite: bool
) -> None:
    """Sky maps of a survey run: counts, median [Fe/H], A_r, distance, flagged fraction."""
    from photodist.skymaps import write_maps
    from photodist.survey import incomplete_run_note

    if note := incomplete_run_note(run_dir):
        click.echo(note, err=True)
    try:
        written = write_maps(
            run_dir, order, out_dir, fmt=fmt, galactic=galactic, overwrite=overwrite
        )
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    for key, path in written.items():
        click.echo(f"{key}: {path}")


@cli.command("tune")
@click.argument("labelled_path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for best_spec.json, top_trials.csv, search.png, summary.json.",
)
@_catalog_options
@click.option(
    "--simulate-cone",
    nargs=3,
    type=float,
    default=None,
    metavar="L B RADIUS",
    help="Label a simulated patch instead of reading LABELLED_PATH.",
)
@click.option(
    "--stars",
    type=POSITIVE_INT,
    default=10_000,
    show_default=True,
    help="Stars labelled from the simulated patch.",
)
@click.option("--trials", type=POSITIVE_INT, default=1000, show_default=True)
@click.option(
    "--timeout",
    type=POSITIVE_FLOAT,
    default=1260.0,
    show_default=True,
    help="Search wall-time budget (s).",
)
@click.option(
    "--max-epochs",
    type=POSITIVE_INT,
    default=243,
    show_default=True,
    help="Hyperband's largest resource (epochs).",
)
@click.option(
    "--jobs",
    type=POSITIVE_INT,
    default=1,
    show_default=True,
    help="Worker processes sharing the study.",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
def tune_command(
    labelled_path: Path | None,
    out_dir: Path,
    bands: str,
    column: tuple[str, ...],
    dust_column: str,
    ebv_column: str | None,
    flux_unit: str | None,
    simulate_cone: tuple[float, float, float] | None,
    stars: int,
    trials: int,
    timeout: float,
    max_epochs: int,
    jobs: int,
    seed: int,
) -> None:
    """Hyperband architecture search (resumable study in OUT/study.journal)."""
    from photodist import io
    from photodist.tune import labelled_set_from_file, labelled_set_from_patch, run_tune

    if (labelled_path is None) == (not simulate_cone):
        raise click.UsageError("give LABELLED_PATH or --simulate-cone L B RADIUS")
    try:
        if labelled_path is not None:
            columns, bands = _catalog_columns(
                column, dust_column, flux_unit, ebv_column, labelled_path, bands
            )
            summary_path = io.run_file(labelled_path, ".run.json")
            _check_labels_bands(io.read_run_summary(labelled_path), summary_path, bands)
            data = labelled_set_from_file(labelled_path, get_band_set(bands).name, columns)
        else:
            ctx = click.get_current_context()
            given = [
                f"--{name.replace('_', '-')}"
                for name in ("column", "dust_column", "ebv_column", "flux_unit")
                if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
            ]
            if given:
                raise click.UsageError(
                    f"{', '.join(given)}: column options name LABELLED_PATH's columns, not "
                    "--simulate-cone's"
                )
            band_set = get_band_set(bands).name
            errors = "sdss" if band_set == "sdss" else "lsst10"  # the survey's error model
            data = labelled_set_from_patch(
                _checked_cone(simulate_cone, "--simulate-cone"),
                stars,
                seed=seed,
                band_set=band_set,
                errors=errors,
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        result = run_tune(
            data,
            storage_path=out_dir / "study.journal",
            n_trials=trials,
            timeout=timeout,
            max_epochs=max_epochs,
            n_jobs=jobs,
            seed=seed,
        )
        written = result.write(out_dir)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise click.ClickException(str(message)) from exc
    click.echo(
        f"trials: {result.n_trials} ({result.n_complete} complete, {result.n_pruned} "
        f"pruned) in {result.seconds:.0f} s"
    )
    click.echo(
        f"recommended (trial {result.best_trial}): re-check loss {result.best_recheck}, "
        f"paper default: {result.paper_recheck} (rank {result.paper_rank})"
    )
    click.echo(
        f"best spec: {written.get('spec', out_dir / 'best_spec.json')} "
        "(use with `photodist run --spec`)"
    )


@cli.command("training-size")
@click.option(
    "--cone",
    "cones",
    nargs=3,
    type=float,
    multiple=True,
    required=True,
    metavar="L B RADIUS",
    help="Simulated patch (repeatable).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seeds", type=POSITIVE_INT, default=2, show_default=True)
@click.option("--epochs", type=POSITIVE_INT, default=500, show_default=True)
@click.option(
    "--tolerance",
    type=FiniteFloatRange(min=0.0),
    default=0.05,
    show_default=True,
    help="Relative loss above the plateau that counts as reaching it.",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--overwrite", is_flag=True, help="Replace training_size.csv and training_size.png in --out."
)
def training_size_command(
    cones: tuple[tuple[float, float, float], ...],
    out_dir: Path,
    seeds: int,
    epochs: int,
    tolerance: float,
    seed: int,
    overwrite: bool,
) -> None:
    """Figure 1 of the paper: loss vs training-set size, and the size at the plateau."""
    from photodist.training_size import (
        check_tolerance,
        patch_label,
        patch_training_size_study,
        plateau_reached,
        plateau_size,
        plot_training_size,
        training_size_curve,
    )

    try:
        tolerance = check_tolerance(tolerance)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tolerance") from exc
    checked = [_checked_cone(cone, "--cone") for cone in cones]
    if len({patch_label(cone) for cone in checked}) < len(checked):
        raise click.BadParameter("the same cone is given twice", param_hint="--cone")
    table_path, figure_path = out_dir / "training_size.csv", out_dir / "training_size.png"
    existing = [str(p) for p in (table_path, figure_path) if p.exists()]
    if existing and not overwrite:
        raise click.ClickException(f"{', '.join(existing)} exist; use --overwrite to replace them")
    try:
        frames = [
            patch_training_size_study(cone, seeds=tuple(range(seeds)), seed=seed, max_epochs=epochs)
            for cone in checked
        ]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    table = pd.concat(frames, ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(table_path, index=False)
    plot_training_size(table, figure_path, tolerance=tolerance)
    for patch, part in table.groupby("patch", sort=False):
        curve = training_size_curve(part)
        if plateau_reached(curve, tolerance=tolerance):
            size = plateau_size(curve, tolerance=tolerance)
            click.echo(
                f"{patch}: smallest training size within {tolerance:.0%} of the plateau: {size}"
            )
        else:
            click.echo(f"{patch}: no plateau reached up to {int(curve['size'].max())} stars")
    click.echo(f"table: {table_path}; figure: {figure_path}")


@cli.command("report")
@click.argument("run_output", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for index.html, figures and tables.",
)
@click.option(
    "--truth",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Catalogue with true values (simulations), matched to the run's rows by an id "
    "column (a survey output: by id or ra/dec), else row by row.",
)
@click.option(
    "--bayes-reference",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Bayesian estimates of the same stars (e.g. from `photodist evaluate "
    "--save-bayes`) for the NN vs Bayes comparisons.",
)
@click.option(
    "--photometry",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The run's input catalogue (u magnitudes and errors for the maps).",
)
@click.option(
    "--column",
    multiple=True,
    metavar="KEY=COLUMN",
    help="Column names of --photometry, as for `run` (default: those recorded in "
    "OUTPUT.run.json of a `photodist run` output, else umag, uErr, ..., Ar).",
)
@click.option("--dust-column", default=None, help="Column with the map A_r per star.")
@click.option("--ebv-column", default=None, help="Column with the dust map's E(B-V).")
@_FLUX_UNIT_OPTION
@click.option("--title", default=None, help="Page title.")
@click.option("--dpi", type=POSITIVE_INT, default=80, show_default=True)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the previous report's files in --out (other files there are kept).",
)
def report_command(
    run_output: Path,
    out_dir: Path,
    truth: Path | None,
    bayes_reference: Path | None,
    photometry: Path | None,
    column: tuple[str, ...],
    dust_column: str | None,
    ebv_column: str | None,
    flux_unit: str | None,
    title: str | None,
    dpi: int,
    overwrite: bool,
) -> None:
    """Diagnostic report (the paper's figures and Table 1) for a run, as static HTML."""
    from photodist.report import report_from_run
    from photodist.survey import incomplete_run_note

    if note := incomplete_run_note(run_output):
        click.echo(note, err=True)
    options: dict[str, Any] = {"dpi": dpi, "overwrite": overwrite}
    if title:
        options["title"] = title
    if column or dust_column or ebv_column or flux_unit:
        options["columns"] = _run_columns_with(
            run_output, _key_values(column, "--column"), dust_column, flux_unit, ebv_column
        )
    try:
        page = report_from_run(
            run_output,
            out_dir,
            truth=truth,
            bayes_reference=bayes_reference,
            photometry=photometry,
            **options,
        )
    except KeyError as exc:  # str() of a KeyError quotes its message
        raise click.ClickException(
            f"{run_output}: {exc.args[0] if exc.args else exc}; expected the output of "
            "`photodist run`, `bayes` or `survey`"
        ) from exc
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"report: {page}")


@cli.command("toy-model")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--n-stars", type=POSITIVE_INT, default=200_000, show_default=True)
@click.option(
    "--ug-error",
    type=FiniteFloatRange(min=0.0),
    default=0.1,
    show_default=True,
    help="u-g error of the median-[Fe/H] figure (mag).",
)
@click.option(
    "--max-error",
    type=POSITIVE_FLOAT,
    default=0.3,
    show_default=True,
    help="Largest u-g error of the bias figure (mag).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the toy-model files in --out.")
def toy_model_command(
    out_dir: Path, n_stars: int, ug_error: float, max_error: float, seed: int, overwrite: bool
) -> None:
    """The paper's appendix toy model: prior-driven bias of [Fe/H] from noisy u-g."""
    from photodist.toy_model import run_toy_model

    try:
        result = run_toy_model(
            out_dir,
            n_stars=n_stars,
            ug_error=ug_error,
            max_error=max_error,
            seed=seed,
            overwrite=overwrite,
        )
    except FileExistsError as exc:
        raise click.ClickException(f"{exc} (use --overwrite)") from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for key, path in {**result.figures, **result.files}.items():
        click.echo(f"{key}: {path}")


@cli.command("columns")
@click.argument("output_of", type=click.Choice(["run", "bayes"]), default="run")
def columns_command(output_of: str) -> None:
    """Units and meanings of the estimate columns of an output.

    OUTPUT_OF is ``run`` (also ``predict`` and ``survey`` outputs) or ``bayes``. FITS outputs
    carry the units as TUNITn and the descriptions as TCOMMn; Parquet outputs as field
    metadata.
    """
    from photodist.output_columns import column_info

    if output_of == "bayes":
        from photodist.bayes import OUTPUT_COLUMNS

        names = [*OUTPUT_COLUMNS, "flags"]
    else:
        from photodist.pipeline import RESULT_COLUMNS

        names = list(RESULT_COLUMNS)
    width = max(len(name) for name in names)
    for name in names:
        info = column_info(name)
        if info is not None:
            click.echo(f"{name:<{width}}  {info.unit or '-':<4} {info.description}")
    from photodist.bayes import Flags

    bits = ", ".join(f"{bit} {name}" for name, bit in Flags.describe().items())
    click.echo(f"flags bits: {bits}")


@cli.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="demo_output",
    show_default=True,
    help="Folder for everything the demo writes.",
)
@click.option(
    "--radius",
    type=float,
    default=1.45,
    show_default=True,
    help="Radius (deg) of the simulated patch at l = 60, b = 60 (~200,000 stars).",
)
@click.pass_context
def demo_command(ctx: click.Context, out_dir: Path, radius: float) -> None:
    """Run the main job on built-in defaults and say where the results are.

    Builds the locus, simulates a high-latitude patch with truth, runs the hybrid pipeline
    (Galaxy-model prior, Bayes on 10,000 stars, networks for the rest) and evaluates it
    against the truth (Table 1 of the paper).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    locus = build_locus()
    table = locus.save(out_dir / "locus.txt")
    figure = color_color_figure(Locus.load(table), out_dir / "locus_color_color.png")
    click.echo(f"[1/5] locus table ({locus.shape[0]} x {locus.shape[1]} grid): {table}")
    simulated = out_dir / "simulated_patch.parquet"
    click.echo("[2/5] simulating a patch with truth")
    ctx.invoke(simulate_command, output_path=simulated, cone=(60.0, 60.0, radius), overwrite=True)
    result = out_dir / "photodist_run.parquet"
    click.echo("[3/5] hybrid pipeline: Bayes labels, networks, predictions")
    ctx.invoke(run_command, input_path=simulated, output_path=result, overwrite=True)
    click.echo("[4/5] evaluation against the truth (stars with SNR > 5 in all bands)")
    ctx.invoke(
        evaluate_command,
        result_path=result,
        truth_path=simulated,
        out_path=out_dir / "table1.csv",
        save_bayes=out_dir / "bayes_reference.parquet",
    )
    click.echo("[5/5] diagnostic report")
    ctx.invoke(
        report_command,
        run_output=result,
        out_dir=out_dir / "report",
        truth=simulated,
        bayes_reference=out_dir / "bayes_reference.parquet",
        title="photodist demo: simulated patch at l = 60, b = 60",
        overwrite=True,
    )
    click.echo(f"\nlocus figure: {figure}")
    click.echo(f"results: {result} (one row per simulated star); Table 1: {out_dir / 'table1.csv'}")
    click.echo(f"report: {out_dir / 'report' / 'index.html'} (open it in a browser)")
    click.echo(f"demo done in {time.perf_counter() - start:.0f} s")


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
