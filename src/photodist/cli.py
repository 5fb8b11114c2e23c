"""Command-line interface: a thin layer over the Python API (one API call plus I/O per command)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from photodist import __version__
from photodist.locus import DEFAULT_FEH_STEP, DEFAULT_MR_STEP, Locus, build_locus
from photodist.plots import color_color_figure


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
