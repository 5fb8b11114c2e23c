import numpy as np
import pandas as pd
import pytest

from photodist.locus import (
    Locus,
    build_locus,
    giant_branch_colors,
    ms_absmag,
    ms_gi,
    yuan_colors,
    zy_from_iz,
)


def test_ivezic_absmag_spot_values():
    # M0(x) = -5.06 + 14.32x - 12.97x^2 + 6.127x^3 - 1.267x^4 + 0.0967x^5, dM(0) = 4.50
    x = 1.0
    m0 = -5.06 + 14.32 - 12.97 + 6.127 - 1.267 + 0.0967
    assert ms_absmag(np.array(x), np.array(0.0)) == pytest.approx(m0 + 4.50)
    # dM(-1.5) = 4.50 + 1.665 - 0.405
    assert ms_absmag(np.array(x), np.array(-1.5)) == pytest.approx(m0 + 5.76)


def test_absmag_inversion_round_trips():
    rng = np.random.default_rng(1)
    gi = rng.uniform(0.2, 4.0, 500)
    feh = rng.uniform(-2.5, 0.5, 500)
    np.testing.assert_allclose(ms_gi(ms_absmag(gi, feh), feh), gi, atol=1e-3)


def test_yuan_spot_values():
    # at [Fe/H] = 0 only the x terms remain
    x = 1.0
    c = yuan_colors(np.array(x), np.array(0.0))
    assert c["gr"] == pytest.approx(0.0596 + 0.6070 + 0.1532 - 0.0613)
    assert c["ug"] == pytest.approx(1.5003 - 3.2190 + 7.9725 - 5.2923 + 1.1459)
    assert c["gr"] + c["ri"] == pytest.approx(x)  # g-r + r-i = g-i
    c = yuan_colors(np.array(0.5), np.array(-1.0))
    expected_iz = (
        -0.1060
        + 0.0357
        - 0.0123
        + 0.0017
        + 0.2543 * 0.5
        + 0.0010 * 0.5
        - 0.0050 * 0.5
        - 0.0381 * 0.25
        + 0.0071 * 0.25
        + 0.0030 * 0.125
    )
    assert c["iz"] == pytest.approx(expected_iz)


def test_giant_branch_spot_value():
    c = giant_branch_colors(np.array(1.0), np.array(-1.0))
    assert c["gr"] == pytest.approx(0.7455 - 0.0835 - 0.1225 + 0.0325)


def test_zy_relation_is_smooth_and_hits_reference_points():
    iz = np.array([0.2, 0.847, 0.978, 1.160])
    np.testing.assert_allclose(zy_from_iz(iz), [0.1, 0.415, 0.487, 0.523], atol=0.01)
    grid = np.linspace(-0.2, 1.5, 1000)
    assert np.all(np.diff(zy_from_iz(grid)) > 0)


def test_default_grid_covers_ranges(default_locus):
    assert default_locus.feh[0] == -2.5 and default_locus.feh[-1] == 0.5
    assert default_locus.mr[0] == -1.0 and default_locus.mr[-1] == 17.0
    assert default_locus.shape == (61, 901)
    assert np.isfinite(default_locus.colors).all()
    assert default_locus.giant[:, 0].all() and not default_locus.giant[:, -1].any()


def test_locus_is_smooth(default_locus):
    # neighbours along M_r (0.02 mag) never differ by more than 0.05 mag
    assert np.abs(np.diff(default_locus.colors, axis=1)).max() < 0.05
    # along [Fe/H] the colours are steep but continuous: halving the step halves the
    # largest neighbour difference (a discontinuity would not shrink), and at 0.025 dex it
    # stays below 0.05 mag
    coarse = np.abs(np.diff(default_locus.colors, axis=0)).max()
    fine_locus = build_locus(feh_step=0.025, mr_step=0.1)
    fine = np.abs(np.diff(fine_locus.colors, axis=0)).max()
    assert fine < 0.05
    assert fine < 0.6 * coarse


def test_red_end_reference_points(default_locus):
    # independent LSST locus at [Fe/H] = -2.5: g-r, r-i, i-z at three g-i colours
    feh = np.full(3, -2.5)
    reference = np.array([[1.402, 1.871, 0.847], [1.452, 2.147, 0.978], [1.629, 2.363, 1.160]])
    gi = reference[:, 0] + reference[:, 1]
    from photodist.locus import main_sequence_colors

    c = main_sequence_colors(gi, feh)
    np.testing.assert_allclose(c["gr"], reference[:, 0], atol=0.03)
    np.testing.assert_allclose(c["iz"], reference[:, 2], atol=0.03)


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".parquet"])
def test_save_load_round_trip(tmp_path, suffix):
    locus = build_locus(feh_step=0.25, mr_step=0.5)
    path = locus.save(tmp_path / f"locus{suffix}")
    back = Locus.load(path)
    np.testing.assert_allclose(back.colors, locus.colors, atol=1e-5)
    np.testing.assert_array_equal(back.giant, locus.giant)


def test_load_photod_format_table(tmp_path):
    # a photod-style table: whitespace-separated, columns Mr FeH ug gr ri iz zy, no label
    locus = build_locus(feh_step=0.5, mr_step=1.0)
    frame = locus.to_frame()[["Mr", "FeH", "ug", "gr", "ri", "iz", "zy"]]
    frame = frame.sample(frac=1.0, random_state=3)  # any row order
    path = tmp_path / "MSandRGBcolors.txt"
    frame.to_csv(path, sep=" ", index=False)
    back = Locus.load(path)
    np.testing.assert_allclose(back.colors, locus.colors, atol=1e-9)
    assert back.giant[:, 0].all()


def test_bad_locus_tables(tmp_path):
    frame = build_locus(feh_step=0.5, mr_step=1.0).to_frame()
    with pytest.raises(ValueError, match="rectangular"):
        Locus.from_frame(frame.iloc[1:])
    with pytest.raises(ValueError, match="required columns"):
        Locus.from_frame(frame.drop(columns=["ri"]))
    with pytest.raises(FileNotFoundError):
        Locus.load(tmp_path / "nope.txt")
    # one [Fe/H] row is no grid: every star would get that [Fe/H] with zero width
    with pytest.raises(ValueError, match="at least 2"):
        Locus.from_frame(frame[frame["FeH"] == frame["FeH"].min()])
    with pytest.raises(ValueError, match="written as one of"):
        build_locus(feh_step=0.5, mr_step=1.0).save(tmp_path / "locus.fits")


def test_grids_too_fine_are_refused_before_allocation(default_locus):
    with pytest.raises(ValueError, match="too fine"):
        build_locus(feh_step=1e-7)
    with pytest.raises(ValueError, match="more than 2,000,000"):
        build_locus(feh_step=0.001, mr_step=0.001)
    with pytest.raises(ValueError, match="more than 2,000,000"):
        default_locus.resample(0.001, 0.001)


def test_resample_and_interpolate(default_locus):
    coarse = default_locus.resample(0.1, 0.1)
    assert coarse.shape == (31, 181)
    pts = default_locus.interpolate(np.array([5.0, 30.0]), np.array([-1.0, 0.0]))
    np.testing.assert_allclose(pts[0], coarse.colors[15, 60], atol=1e-9)
    assert np.isnan(pts[1]).all()


def test_colors_for_band_sets(default_locus):
    assert default_locus.colors_for("sdss").shape[-1] == 4
    assert default_locus.colors_for("lsst").shape[-1] == 5
    with pytest.raises(ValueError):
        default_locus.colors_for("johnson")


def test_stripe82_stars_close_to_locus(s82_stars_path):
    """Bright S82 stars lie within a few hundredths of a magnitude of the reddened locus."""
    from photodist.bands import SDSS
    from photodist.locus import build_locus as build

    files = sorted(s82_stars_path.glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    stars = pd.concat([pd.read_parquet(f) for f in files])
    good = (stars[[f"{b}Err" for b in "ugriz"]].to_numpy(float) < 0.03).all(axis=1)
    stars = stars[good].iloc[:300]
    colors = stars[list(SDSS.colors)].to_numpy(float)
    lc = build(feh_step=0.05, mr_step=0.05).colors_for(SDSS).reshape(-1, 4)
    red = SDSS.reddening_vector()
    a_max = 1.3 * stars["Ar"].to_numpy(float) + 0.1
    diff = colors[:, None, :] - lc[None]
    a = np.clip(diff @ red / (red @ red), 0, a_max[:, None])
    dist = np.sqrt(((diff - a[..., None] * red) ** 2).sum(-1)).min(1)
    assert np.median(dist) < 0.03
    assert np.percentile(dist, 90) < 0.08


def test_an_empty_locus_file_is_a_clear_error(tmp_path):
    from photodist.locus import Locus

    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="not a readable locus table"):
        Locus.load(path)


def test_mismatched_shapes_and_extrapolated_ranges_are_named() -> None:
    locus = build_locus(feh_step=0.5, mr_step=1.0)
    with pytest.raises(ValueError, match="mr and feh must have the same shape"):
        locus.interpolate(np.array([4.0, 5.0, 6.0]), np.array([-1.0, -0.5]))
    with pytest.warns(UserWarning, match="feh_range .* extrapolated"):
        build_locus(feh_step=0.5, mr_step=1.0, feh_range=(-4.0, 0.5))
    with pytest.warns(UserWarning, match="mr_range"):
        build_locus(feh_step=0.5, mr_step=1.0, mr_range=(-1.0, 18.0))
