"""Tests of the HEALPix sky maps of a survey run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from photodist.io import CatalogError
from photodist.skymaps import (
    HISTOGRAM_BINS,
    MAP_COLUMNS,
    PATCH_MAP_COLUMNS,
    load_maps,
    make_maps,
    patch_maps,
    plot_mollweide,
    rasterize,
    save_maps,
    write_maps,
)
from photodist.survey import output_path, patch_info_path, write_hats_metadata

pytest.importorskip("hats")

PART_ORDER = 5
# two neighbouring order-3 parents, several order-5 partitions each
PARTITIONS = (4 * 16 * 100 + 1, 4 * 16 * 100 + 6, 4 * 16 * 100 + 15, 4 * 16 * 101 + 2)


def stars(pixel: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
    shift = 2 * (29 - PART_ORDER)
    index = (pixel << shift) + rng.integers(0, 1 << shift, n, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "FeH_mean": rng.normal(-0.8, 0.5, n).astype(np.float32),
            "Ar_mean": rng.uniform(0.0, 0.6, n).astype(np.float32),
            "dist_pc": (10 ** rng.uniform(2.0, 4.5, n)).astype(np.float32),
            "flags": np.where(rng.random(n) < 0.1, 4, 0).astype(np.int64),
            "_healpix_29": index,
        }
    )
    frame.loc[rng.random(n) < 0.05, "FeH_mean"] = np.nan
    return frame.sort_values("_healpix_29", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def run_output(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(42)
    frames = []
    for k, pixel in enumerate(PARTITIONS):
        frame = stars(pixel, 3000 + 500 * k, rng)
        path = output_path(root, PART_ORDER, pixel)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        frames.append(frame)
    return root, pd.concat(frames, ignore_index=True)


def expected_maps(frame: pd.DataFrame, order: int) -> pd.DataFrame:
    pixel = frame["_healpix_29"].to_numpy() >> (2 * (29 - order))
    values = frame.astype({c: np.float64 for c in ("FeH_mean", "Ar_mean", "dist_pc")})
    groups = values.assign(pixel=pixel).groupby("pixel")
    out = pd.DataFrame(
        {
            "n_stars": groups.size(),
            "FeH_median": groups["FeH_mean"].agg(np.nanmedian),
            "Ar_median": groups["Ar_mean"].agg(np.median),
            "dist_median": groups["dist_pc"].agg(np.median),
            "flagged_fraction": groups["flags"].agg(lambda v: np.mean(v != 0)),
        }
    )
    return out.reset_index()


@pytest.mark.parametrize("order", [3, PART_ORDER, 7])
def test_exact_maps_match_groupby(run_output, order):
    root, frame = run_output
    maps = make_maps(root, order, batch_rows=700)  # batches split pixels: the carry is tested
    expected = expected_maps(frame, order)
    assert maps.attrs["healpix_order"] == order
    assert list(maps.columns) == ["pixel", *MAP_COLUMNS]
    np.testing.assert_array_equal(maps["pixel"], expected["pixel"])
    np.testing.assert_array_equal(maps["n_stars"], expected["n_stars"])
    for name in MAP_COLUMNS[1:]:
        np.testing.assert_allclose(maps[name], expected[name], rtol=1e-12, err_msg=name)
    if order == 3:
        assert len(maps) == 2  # partitions of one parent merged into one map pixel


def test_histogram_medians_for_crowded_pixels(run_output):
    root, frame = run_output
    maps = make_maps(root, 3, max_exact_rows=1000, batch_rows=700)
    expected = expected_maps(frame, 3)
    np.testing.assert_array_equal(maps["n_stars"], expected["n_stars"])
    np.testing.assert_allclose(maps["flagged_fraction"], expected["flagged_fraction"])
    for name in ("FeH_median", "Ar_median"):
        step = HISTOGRAM_BINS[name][2]
        assert np.all(np.abs(maps[name] - expected[name]) <= step), name
    step = HISTOGRAM_BINS["dist_median"][2]
    ratio = np.log10(maps["dist_median"] / expected["dist_median"])
    assert np.all(np.abs(ratio) <= step)
    assert not np.array_equal(maps["FeH_median"], expected["FeH_median"])  # histogram path


def test_maps_of_a_hats_catalog_and_unsorted_input(run_output, tmp_path):
    root, frame = run_output
    # with HATS metadata the partitions are listed by hats; the maps do not change
    copy = tmp_path / "catalog"
    for pixel in PARTITIONS:
        target = output_path(copy, PART_ORDER, pixel)
        target.parent.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(output_path(root, PART_ORDER, pixel))
        table = table.append_column("ra", pa.array(np.zeros(table.num_rows)))
        table = table.append_column("dec", pa.array(np.zeros(table.num_rows)))
        pq.write_table(table, target)
    assert write_hats_metadata(copy, PARTITIONS, PART_ORDER) == len(frame)
    pd.testing.assert_frame_equal(make_maps(copy, 6), make_maps(root, 6))
    bad = output_path(copy, PART_ORDER, PARTITIONS[0])
    table = pq.read_table(bad)
    pq.write_table(table.take(pa.array(np.arange(table.num_rows)[::-1])), bad)
    with pytest.raises(CatalogError, match="not sorted"):
        make_maps(copy, 6)


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_save_and_load(run_output, tmp_path, suffix):
    root, _ = run_output
    maps = make_maps(root, 6)
    path = save_maps(maps, tmp_path / f"maps{suffix}")
    back = load_maps(path)
    assert back.attrs["healpix_order"] == 6
    pd.testing.assert_frame_equal(back, maps)
    if suffix == ".fits":
        from astropy.io import fits

        header = fits.getheader(path, "PHOTODIST_MAPS")
        assert header["ORDERING"] == "NESTED" and header["INDXSCHM"] == "EXPLICIT"
        assert header["NSIDE"] == 64 and header["PIXTYPE"] == "HEALPIX"
        # units and descriptions, as the estimate tables have them ([Fe/H]'s dex in words)
        units = {header[f"TTYPE{k}"]: header.get(f"TUNIT{k}") for k in range(1, 7)}
        comments = {header[f"TTYPE{k}"]: header.get(f"TCOMM{k}") for k in range(1, 7)}
        assert units["AR_MEDIAN"] == "mag" and units["DIST_MEDIAN"] == "pc"
        assert units["FEH_MEDIAN"] is None and "(dex)" in comments["FEH_MEDIAN"]
        assert comments["FLAGGED_FRACTION"] == "fraction of the pixel's stars with any flag set"
    else:
        fields = pq.read_schema(path)
        assert fields.field("Ar_median").metadata[b"unit"] == b"mag"
        assert fields.field("FeH_median").metadata[b"unit"] == b"dex"
        assert b"pixel's stars" in fields.field("dist_median").metadata[b"description"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_rasterize_puts_values_at_their_pixels(run_output):
    import astropy.units as u
    import cdshealpix.nested as chp
    from astropy.coordinates import SkyCoord

    root, _ = run_output
    maps = make_maps(root, PART_ORDER)
    shape = (360, 720)
    for galactic in (False, True):
        lon, lat, values = rasterize(maps, "n_stars", galactic=galactic, shape=shape)
        assert values.shape == shape
        assert np.isfinite(values).sum() > 0
        for _, row in maps.iterrows():
            ra, dec = chp.healpix_to_lonlat(np.array([int(row["pixel"])]), PART_ORDER)
            x, y = ra.deg[0], dec.deg[0]
            if galactic:
                gal = SkyCoord(ra=x * u.deg, dec=y * u.deg).galactic
                x, y = gal.l.deg, gal.b.deg
            x = (x + 180.0) % 360.0 - 180.0
            j = int(np.argmin(np.abs(lon - x)))
            i = int(np.argmin(np.abs(lat - y)))
            assert values[i, j] == row["n_stars"]
        assert np.isnan(values).mean() > 0.9  # four small pixels: the rest of the sky is empty


def test_figures_are_written(run_output, tmp_path):
    root, _ = run_output
    paths = write_maps(root, 6, tmp_path / "maps", fmt="parquet", galactic=True)
    assert set(paths) == {"maps", *MAP_COLUMNS}
    for column in MAP_COLUMNS:
        png = paths[column]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    fig = plot_mollweide(make_maps(root, 6), "FeH_median", title="test")
    assert fig.axes[0].get_title() == "test"
    assert len(fig.axes) == 2  # map and colour bar
    plt.close(fig)
    with pytest.raises(ValueError, match="column"):
        plot_mollweide(make_maps(root, 6), "nope")


def write_patch_info(root: Path, pixel: int, shift: float, beta: float, **extra) -> None:
    """A patch summary as a survey run writes it (``photodist.survey.process_patch``)."""
    path = patch_info_path(root, PART_ORDER, pixel)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "patch": f"Norder={PART_ORDER}/Npix={pixel}",
        "order": PART_ORDER,
        "pixel": pixel,
        "n_rows": 1000 + pixel % 7,
        "mode": "hybrid",
        "error_floor": {"floor": 0.02, "fitted": False, "scatter": 0.004},
        "prior_temper": {"beta": beta, "feh_shift": shift, "log_evidence_gain": 0.1},
        "dust_profile": None,
        "timings_s": {"total": 12.5},
        **extra,
    }
    path.write_text(json.dumps(info))


def test_patch_maps_from_the_patch_summaries(run_output, tmp_path):
    root, _ = run_output
    with pytest.raises(FileNotFoundError, match="no patch summaries"):
        patch_maps(root)
    run = tmp_path / "run"
    write_patch_info(run, PARTITIONS[0], 0.3, 0.7, mode="streamed-hybrid")  # networks too
    write_patch_info(
        run,
        PARTITIONS[1],
        0.0,
        1.0,
        mode="bayes_only",
        dust_profile={"fitted": True, "sigma": 0.02},
        error_floor={"floor": 0.011, "fitted": True, "scatter": None},
    )
    maps = patch_maps(run)
    assert list(maps.columns) == ["pixel", *PATCH_MAP_COLUMNS]
    assert maps.attrs["healpix_order"] == PART_ORDER
    first, second = (maps.set_index("pixel").loc[p] for p in PARTITIONS[:2])
    assert (first["prior_feh_shift"], first["prior_power"], first["hybrid"]) == (0.3, 0.7, 1.0)
    assert (second["prior_feh_shift"], second["prior_power"], second["hybrid"]) == (0, 1, 0)
    assert np.isnan(first["dust_profile_width"]) and second["dust_profile_width"] == 0.02
    assert np.isnan(second["color_scatter"]) and second["error_floor"] == 0.011
    assert first["seconds"] == 12.5
    for suffix in (".fits", ".parquet"):
        back = load_maps(save_maps(maps, tmp_path / f"patches{suffix}"))
        pd.testing.assert_frame_equal(back, maps)
    # written beside the star maps, the shift drawn on a scale centred on 0
    with_summaries = tmp_path / "with_summaries"
    shutil.copytree(root, with_summaries)
    shutil.copytree(run / "photodist_patches", with_summaries / "photodist_patches")
    paths = write_maps(with_summaries, 4, tmp_path / "maps", fmt="parquet")
    assert paths["patches"].name == f"patches_order{PART_ORDER}.parquet"
    for key in ("patch_prior_feh_shift", "patch_prior_power", "patch_color_scatter"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # another order's maps in the same folder share the patch maps: refused before any work
    # unless overwriting (they were replaced silently)
    before = paths["patches"].read_bytes()
    with pytest.raises(FileExistsError, match="use --overwrite"):
        write_maps(with_summaries, 5, tmp_path / "maps", fmt="parquet", overwrite=False)
    assert paths["patches"].read_bytes() == before
    assert not (tmp_path / "maps" / "maps_order5.parquet").exists()
    fig = plot_mollweide(maps, "prior_feh_shift", symmetric=True)
    low, high = fig.axes[0].collections[0].get_clim()
    assert low == -high == -0.3
    import matplotlib.pyplot as plt

    plt.close(fig)
    write_patch_info(run, 4 * PARTITIONS[2], 0.0, 1.0, order=PART_ORDER + 1)
    with pytest.raises(ValueError, match="several orders"):
        patch_maps(run)
    broken = patch_info_path(run, PART_ORDER, PARTITIONS[0])
    broken.write_text("{broken")
    with pytest.raises(ValueError, match=f"{broken.name}: not a patch summary"):
        patch_maps(run)
