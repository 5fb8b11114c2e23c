"""Command-line interface: a thin layer over the Python API (one API call plus I/O per command)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import pandas as pd

from photodist import __version__
from photodist.bands import ColumnMap, get_band_set, photometry_from_frame
from photodist.locus import DEFAULT_FEH_STEP, DEFAULT_MR_STEP, Locus, build_locus, load_locus
from photodist.plots import color_color_figure

#: Default posterior grid of the Bayesian estimator (dex, mag); see docs/benchmarks.md.
BAYES_FEH_STEP = 0.05
BAYES_MR_STEP = 0.1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="photodist")
def cli() -> None:
    """photodist: photometric distances, metallicities and extinctions of stars."""


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
    type=float,
    default=DEFAULT_FEH_STEP,
    show_default=True,
    help="[Fe/H] grid step (dex).",
)
@click.option(
    "--mr-step", type=float, default=DEFAULT_MR_STEP, show_default=True, help="M_r grid step (mag)."
)
@click.option(
    "--figure",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a colour-colour figure (PNG).",
)
def locus_command(out_path: Path, feh_step: float, mr_step: float, figure: Path | None) -> None:
    """Build the stellar locus and write it as a table (columns Mr FeH ug gr ri iz zy)."""
    locus = build_locus(feh_step=feh_step, mr_step=mr_step)
    locus.save(out_path)
    click.echo(f"locus: {locus.shape[0]} [Fe/H] x {locus.shape[1]} M_r points -> {out_path}")
    if figure is not None:
        color_color_figure(locus, figure)
        click.echo(f"figure: {figure}")


def _column_map(column: tuple[str, ...], dust: str | None) -> ColumnMap:
    mapping: dict[str, str | None] = {}
    for item in column:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=COLUMN, got {item!r}", param_hint="--column")
        mapping[key] = value
    mapping.setdefault("dust", dust)
    return ColumnMap.from_mapping(mapping)


@cli.command("bayes")
@click.argument("input_path", type=click.Path(exists=True, path_type=Path))
@click.argument("output_path", type=click.Path(path_type=Path))
@click.option("--bands", default="lsst", show_default=True, help="Band set: sdss or lsst.")
@click.option(
    "--column",
    multiple=True,
    metavar="KEY=COLUMN",
    help="Column mapping, e.g. --column umag=u_psf --column uerr=u_psf_err.",
)
@click.option(
    "--dust-column",
    default="Ar",
    show_default=True,
    help="Column with the map A_r per star (bounds the A_r prior); absent = default.",
)
@click.option(
    "--locus",
    "locus_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Locus table to use instead of the built-in locus.",
)
@click.option("--feh-step", type=float, default=BAYES_FEH_STEP, show_default=True)
@click.option("--mr-step", type=float, default=BAYES_MR_STEP, show_default=True)
@click.option(
    "--error-floor",
    type=float,
    default=0.02,
    show_default=True,
    help="Colour-error floor added in quadrature (mag).",
)
@click.option(
    "--a-max",
    type=float,
    default=3.0,
    show_default=True,
    help="A_r prior bound (mag) for stars without a dust-map value.",
)
@click.option(
    "--batch-size",
    type=int,
    default=200_000,
    show_default=True,
    help="Stars per batch (bounds memory).",
)
@click.option(
    "--keep",
    multiple=True,
    default=("ra", "dec"),
    show_default=True,
    help="Input columns copied to the output when present.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def bayes_command(
    input_path: Path,
    output_path: Path,
    bands: str,
    column: tuple[str, ...],
    dust_column: str,
    locus_path: Path | None,
    feh_step: float,
    mr_step: float,
    error_floor: float,
    a_max: float,
    batch_size: int,
    keep: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Bayesian estimates for every star of INPUT (Parquet, HATS, CSV or FITS) -> OUTPUT.

    Runs with a flat ([Fe/H], M_r) prior; rows are flagged NO_PRIOR (see docs).
    """
    from tqdm import tqdm

    from photodist import io
    from photodist.bayes import BayesConfig, BayesEstimator

    band_set = get_band_set(bands)
    columns = _column_map(column, dust_column)
    try:
        io.check_output_path(output_path, overwrite=overwrite)
        total = io.count_rows(input_path)
        batches = io.iter_catalog_batches(input_path, batch_size=batch_size)
    except (io.CatalogError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    locus = load_locus(locus_path)
    if locus_path is None:
        locus = locus.resample(feh_step, mr_step)
    config = BayesConfig(error_floor=error_floor, default_a_max=a_max)
    estimator = BayesEstimator(locus, None, config)
    start = time.perf_counter()
    parts = []
    with tqdm(total=total, unit="star", desc="bayes") as bar:
        for frame in batches:
            try:
                phot = photometry_from_frame(frame, band_set, columns)
            except KeyError as exc:
                raise click.ClickException(str(exc)) from exc
            result = estimator.predict(phot)
            kept = frame[[c for c in keep if c in frame.columns]].reset_index(drop=True)
            parts.append(
                pd.concat(
                    [kept, result.astype({c: "float32" for c in result.columns if c != "flags"})],
                    axis=1,
                )
            )
            bar.update(len(frame))
    output = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    io.write_table(output, output_path, overwrite=overwrite)
    elapsed = time.perf_counter() - start
    click.echo(
        f"{len(output)} stars -> {output_path} in {elapsed:.1f} s "
        f"({elapsed / max(len(output), 1) * 1e6:.0f} us/star)"
    )


@cli.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default="demo_output",
    show_default=True,
    help="Folder for everything the demo writes.",
)
def demo_command(out_dir: Path) -> None:
    """Run the main job on built-in defaults and say where the results are."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    locus = build_locus()
    table = locus.save(out_dir / "locus.txt")
    check = Locus.load(table)
    figure = color_color_figure(check, out_dir / "locus_color_color.png")
    click.echo(f"locus table ({locus.shape[0]} x {locus.shape[1]} grid): {table}")
    click.echo(f"colour-colour figure: {figure}")
    click.echo(f"done in {time.perf_counter() - start:.1f} s")


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
