import numpy as np
import pandas as pd
import pytest

from photodist.locus import build_locus
from photodist.priors import (
    R_BIN_CENTRES,
    GridMismatchError,
    PriorMap,
    binned_kde,
    build_patch_priors,
    build_priors,
    grid_median,
    read_trilegal_prior_catalog,
    read_trilegal_priors,
)


@pytest.fixture(scope="module")
def patch_priors(default_locus):
    return build_patch_priors(pixel=20, order=7, locus=default_locus, seed=3, min_stars=2000)


def _synthetic(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Stars with [Fe/H] ~ N(-1, 0.3), M_r ~ N(3 + r/4, 1), r uniform in 13.5..27.5."""
    r = rng.uniform(13.5, 27.5, n)
    return pd.DataFrame(
        {
            "rmag_true": r,
            "FeH_true": rng.normal(-1.0, 0.3, n),
            "Mr_true": rng.normal(3.0 + r / 4.0, 1.0, n),
        }
    )


def test_r_bins_match_the_paper():
    assert len(R_BIN_CENTRES) == 27
    assert R_BIN_CENTRES[0] == 14.0 and R_BIN_CENTRES[-1] == 27.0
    np.testing.assert_allclose(np.diff(R_BIN_CENTRES), 0.5)


def test_build_priors_recovers_a_known_population(default_locus):
    frame = _synthetic(400_000, np.random.default_rng(0))
    prior = build_priors(frame, default_locus)
    assert prior.density.shape == (27, *default_locus.shape)
    np.testing.assert_allclose(prior.density.sum(axis=(1, 2)), 1.0)
    feh_med, mr_med = prior.marginal_medians()
    np.testing.assert_allclose(feh_med, -1.0, atol=0.03)
    np.testing.assert_allclose(mr_med, 3.0 + R_BIN_CENTRES / 4.0, atol=0.05)
    # each bin holds the stars within +-0.5 mag of its centre (~1/14 of them)
    assert prior.n_stars == pytest.approx(400_000 / 14, rel=0.05)


def test_floor_and_no_zero_prior(default_locus):
    frame = _synthetic(50_000, np.random.default_rng(1))
    prior = build_priors(frame, default_locus, floor_fraction=1e-3)
    n_points = np.prod(default_locus.shape)
    assert prior.density.min() > 0
    assert np.all(np.isfinite(prior.log_prior))
    # the floor is 1e-3 of the mean density (before the final renormalisation)
    assert prior.density.min() == pytest.approx(1e-3 / n_points, rel=0.01)


def test_scott_bandwidth(default_locus):
    rng = np.random.default_rng(2)
    feh = rng.normal(-1.0, 0.3, 20_000)
    mr = rng.normal(8.0, 2.0, 20_000)
    dens, (h_feh, h_mr) = binned_kde(feh, mr, default_locus)
    scott = 20_000 ** (-1 / 6)
    assert h_feh == pytest.approx(0.3 * scott, rel=0.02)
    assert h_mr == pytest.approx(2.0 * scott, rel=0.02)
    inside = (np.abs(feh + 1.0) <= 1.5) & (mr >= -1.0) & (mr <= 17.0)
    # reflecting edges keep the mass of the stars on the grid
    assert dens.sum() == pytest.approx(inside.sum(), rel=1e-9)
    # one star is no density (a flat bin once floored), not a spike on one grid point
    dens, _ = binned_kde(feh[:1], mr[:1], default_locus)
    assert not dens.any()


def test_a_tiny_pixel_borrows_its_sightlines_stars():
    """A high-order pixel (~0.01 arcmin^2) still gets min_stars per r bin, from the same
    sightlines simulated over a larger area, and bins left short are listed."""
    from photodist.priors import build_patch_priors

    prior = build_patch_priors(pixel=100_000, order=20, min_stars=200, seed=1)
    assert np.all(prior.n_stars >= 150)  # 1.2 x the Poisson estimate of what is missing
    short = prior.metadata["bins_below_min_stars"]
    assert all(prior.n_stars[list(prior.r_centres).index(float(r))] == n for r, n in short.items())
    assert prior.density.max() < 0.01  # no bin concentrated on a few grid points
    capped = build_patch_priors(pixel=100_000, order=20, min_stars=200, seed=1, max_oversample=1e-4)
    short = capped.metadata["bins_below_min_stars"]
    assert len(short) == capped.n_bins  # 1e-4 deg^2 holds too few stars for any bin
    assert [short[f"{r:g}"] for r in capped.r_centres] == capped.n_stars.tolist()


def test_bin_index_and_for_r(patch_priors):
    idx = patch_priors.bin_index(np.array([10.0, 14.0, 14.24, 14.26, 20.0, 26.9, 40.0]))
    assert idx.tolist() == [0, 0, 0, 1, 12, 26, 26]
    assert patch_priors.for_r(20.1).shape == patch_priors.density.shape[1:]
    stack = patch_priors.for_r(np.array([15.0, 25.0]))
    np.testing.assert_array_equal(stack[1], patch_priors.log_prior[22])


def test_patch_priors_are_smooth_and_reproducible(patch_priors, default_locus):
    assert np.all(patch_priors.n_stars >= 2000)
    np.testing.assert_allclose(patch_priors.density.sum(axis=(1, 2)), 1.0)
    again = build_patch_priors(pixel=20, order=7, locus=default_locus, seed=3, min_stars=2000)
    np.testing.assert_array_equal(again.density, patch_priors.density)
    feh_med, mr_med = patch_priors.marginal_medians()
    # bright bins: nearby disk stars; faint bins: halo stars
    assert feh_med[0] > -1.0 > feh_med[-1]
    assert patch_priors.metadata["patch"] == {"order": 7, "pixel": 20}


def test_prior_file_round_trip(patch_priors, default_locus, tmp_path):
    path = patch_priors.save(tmp_path / "prior")
    assert path.suffix == ".npz"
    back = PriorMap.load(path, locus=default_locus)
    np.testing.assert_array_equal(back.density, patch_priors.density)
    np.testing.assert_array_equal(back.r_centres, patch_priors.r_centres)
    np.testing.assert_array_equal(back.n_stars, patch_priors.n_stars)
    assert back.metadata["seed"] == 3
    assert back.metadata["bandwidth_mr"] == pytest.approx(patch_priors.metadata["bandwidth_mr"])


def test_grid_mismatch_is_a_clear_error(patch_priors, tmp_path):
    path = patch_priors.save(tmp_path / "prior.npz")
    coarse = build_locus(feh_step=0.1, mr_step=0.05)
    with pytest.raises(GridMismatchError, match=r"\[Fe/H\] axis.*M_r axis"):
        PriorMap.load(path, locus=coarse)
    assert issubclass(GridMismatchError, ValueError)
    # regridding makes it usable on the other grid
    regridded = patch_priors.regrid(coarse)
    regridded.check_grid(coarse)
    f_a, m_a = patch_priors.marginal_medians()
    f_b, m_b = regridded.marginal_medians()
    np.testing.assert_allclose(f_b, f_a, atol=0.06)
    np.testing.assert_allclose(m_b, m_a, atol=0.1)


def test_grid_median():
    axis = np.arange(0.0, 10.0, 0.1)
    weights = np.exp(-0.5 * ((axis - 4.3) / 1.0) ** 2)
    assert grid_median(axis, weights) == pytest.approx(4.3, abs=0.01)
    assert np.isnan(grid_median(axis, np.zeros_like(axis)))


def test_trilegal_priors_load(s82_priors_path, default_locus):
    prior = read_trilegal_priors(s82_priors_path, default_locus, pixel=0)
    np.testing.assert_allclose(prior.r_centres, R_BIN_CENTRES)
    prior.check_grid(default_locus)
    np.testing.assert_allclose(prior.density.sum(axis=(1, 2)), 1.0)
    assert np.all(np.isfinite(prior.log_prior))
    # medians on our grid agree with medians computed on TRILEGAL's own 96 x 36 grid
    raw = pd.read_parquet(s82_priors_path / "dataset/Norder=5/Dir=0/Npix=0.parquet")
    raw = raw.sort_values("rmag")
    row = raw.iloc[10]  # r = 19
    kde = np.frombuffer(row["kde"], np.float64).reshape(96, 36)
    mr_axis = np.frombuffer(row["yGrid"], np.float64).reshape(96, 36)[:, 0]
    feh_axis = np.frombuffer(row["xGrid"], np.float64).reshape(96, 36)[0]
    inside = feh_axis <= default_locus.feh[-1] + 1e-9
    feh_native = grid_median(feh_axis[inside], kde[:, inside].sum(axis=0))
    mr_native = grid_median(mr_axis, kde.sum(axis=1))
    feh_ours, mr_ours = prior.marginal_medians()
    assert feh_ours[10] == pytest.approx(feh_native, abs=0.05)
    assert mr_ours[10] == pytest.approx(mr_native, abs=0.1)
    # a single partition file also loads; a multi-pixel directory needs a pixel
    single = read_trilegal_priors(
        s82_priors_path / "dataset/Norder=5/Dir=0/Npix=1.parquet", default_locus
    )
    assert single.n_bins == 27 and single.metadata["pixel"] == 1
    # a partition file is its own pixel: another pixel is refused, not silently recorded
    with pytest.raises(ValueError, match="is pixel 1, not pixel 2"):
        read_trilegal_priors(
            s82_priors_path / "dataset/Norder=5/Dir=0/Npix=1.parquet", default_locus, pixel=2
        )
    with pytest.raises(ValueError, match="choose one"):
        read_trilegal_priors(s82_priors_path, default_locus)
    maps = read_trilegal_prior_catalog(s82_priors_path, default_locus)
    assert sorted(maps) == [0, 1, 2]


def test_single_lf_model_is_brighter_at_faint_r(patch_priors, default_locus):
    """Without main-sequence stars brighter than the old turn-off, faint bins (halo-dominated)
    have fainter median M_r than with one luminosity function for every component."""
    from photodist.galaxy import GalaxyModel

    assert patch_priors.metadata["galaxy"]["old_population_turnoff"] is True
    literal = build_patch_priors(
        pixel=20,
        order=7,
        locus=default_locus,
        seed=3,
        min_stars=2000,
        galaxy=GalaxyModel(old_population_turnoff=False, same_colour_normalisation=False),
    )
    assert literal.metadata["galaxy"]["old_population_turnoff"] is False
    _, mr_new = patch_priors.marginal_medians()
    _, mr_literal = literal.marginal_medians()
    faint = R_BIN_CENTRES >= 20.0
    assert np.all(mr_new[faint] > mr_literal[faint] + 0.5)


def test_footprint_cone_ignores_bad_positions_and_errors_without_any():
    import numpy as np
    import pytest

    from photodist.priors import footprint_cone

    _, b, radius = footprint_cone(
        np.array([10.0, 10.5, np.nan, 11.0]), np.array([0.0, 0.5, 0.2, 95.0])
    )
    assert 0.5 <= radius < 1.0 and -90 <= b <= 90
    with pytest.raises(ValueError, match="no valid"):
        footprint_cone(np.array([np.nan]), np.array([100.0]))


def test_stray_positions_do_not_widen_the_footprint():
    import numpy as np

    from photodist.priors import footprint_cone

    rng = np.random.default_rng(1)
    ra, dec = 45.0 + rng.uniform(-1, 1, 300), rng.uniform(-1, 1, 300)
    compact = footprint_cone(ra, dec)
    ra[:2], dec[2] = [-10.0, 261.0], 40.0  # sentinels and a typo
    assert footprint_cone(ra, dec)[2] > 30  # every star: the strays set the radius
    l_deg, b_deg, radius = footprint_cone(ra, dec, coverage=0.99)
    assert abs(radius - compact[2]) < 0.05
    assert abs(l_deg - compact[0]) < 0.1 and abs(b_deg - compact[1]) < 0.1
    # a compact footprint keeps every star, whatever the coverage
    assert footprint_cone(ra[3:], dec[3:], coverage=0.99)[2] >= np.float64(compact[2]) - 1e-9


def test_galaxy_prior_refuses_a_footprint_too_wide_for_one_prior():
    import numpy as np
    import pytest

    from photodist.priors import MAX_PRIOR_RADIUS, galaxy_prior_for_stars

    ra = np.linspace(0.0, 4 * MAX_PRIOR_RADIUS, 200)
    with pytest.raises(ValueError, match="photodist survey"):
        galaxy_prior_for_stars(ra, np.zeros_like(ra))


def test_a_wide_patch_is_simulated_at_a_bounded_area():
    """The base simulation of a patch wider than max_area_deg2 stands for that area only: the
    same prior density from a bounded number of simulated stars."""
    from photodist.priors import build_patch_priors

    kwargs = {"cone": (60.0, 60.0, 2.0), "seed": 3, "min_stars": 2000, "max_oversample": 1.0}
    full = build_patch_priors(**kwargs)
    bounded = build_patch_priors(**kwargs, max_area_deg2=3.0)
    assert full.metadata["simulated_area_fraction"] == 1.0
    fraction = bounded.metadata["simulated_area_fraction"]
    assert abs(fraction - 3.0 / full.metadata["area_deg2"]) < 1e-12
    assert bounded.n_stars.sum() < 0.5 * full.n_stars.sum()
    # the faint bins, rich in stars either way, agree in mean M_r and [Fe/H]
    for k in range(len(full.r_centres) - 4, len(full.r_centres)):
        for axis, values in ((1, full.mr), (0, full.feh)):
            means = [
                (p.density[k].sum(axis=1 - axis) * values).sum() / p.density[k].sum()
                for p in (full, bounded)
            ]
            assert abs(means[0] - means[1]) < 0.1


def test_prior_maps_refuse_bad_densities_and_load_by_the_saved_name(tmp_path):
    from photodist.priors import PriorMap

    feh, mr = np.array([-1.0, 0.0]), np.array([4.0, 5.0, 6.0])
    density = np.full((1, 2, 3), 1.0 / 6)
    for bad in (np.nan, -1.0, np.inf):
        broken = density.copy()
        broken[0, 1, 2] = bad
        with pytest.raises(ValueError, match="finite and >= 0"):
            PriorMap(broken, feh, mr, [20.0], [10])
    prior = PriorMap(density, feh, mr, [20.0], [10])
    written = prior.save(tmp_path / "x.prior")
    assert written.name == "x.prior.npz"
    np.testing.assert_array_equal(PriorMap.load(tmp_path / "x.prior").density, density)
    # a file holding an object array (a pickle) is refused without unpickling, naming it
    fields = dict(np.load(written))
    fields["metadata"] = np.array([{"not": "json"}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **fields)
    with pytest.raises(ValueError, match=r"pickled\.npz is not a readable photodist prior map"):
        PriorMap.load(tmp_path / "pickled.npz")


def test_prior_maps_refuse_bad_axes_widths_and_empty_bins():
    """Malformed r bins, axes or half-widths (NaN centres passed the ascending check and
    turned R_OUTSIDE_PRIOR off) and a bin with no density are refused when the map is made."""
    from photodist.priors import PriorMap

    feh, mr = np.array([-1.0, 0.0]), np.array([4.0, 5.0, 6.0])
    density = np.full((2, 2, 3), 1.0 / 6)
    good = {"density": density, "feh": feh, "mr": mr, "r_centres": [20.0, 21.0]}
    for change, message in (
        ({"r_centres": [20.0, np.nan]}, "r-bin centres"),
        ({"feh": np.array([-1.0, np.nan])}, r"\[Fe/H\] axis"),
        ({"mr": np.array([6.0, 5.0, 4.0])}, "M_r axis"),
        ({"r_half_width": -1.0}, "r_half_width"),
        ({"r_half_width": np.nan}, "r_half_width"),
        ({"density": np.concatenate([density[:1], np.zeros((1, 2, 3))])}, "zero everywhere"),
    ):
        with pytest.raises(ValueError, match=message):
            PriorMap(**{**good, **change, "n_stars": [10, 10]})


def _trilegal_copy(s82_priors_path, folder, edit=None):
    """Pixel 0 of the shared TRILEGAL maps copied to ``folder`` (HATS layout), ``edit``
    applied to its table."""
    raw = pd.read_parquet(s82_priors_path / "dataset/Norder=5/Dir=0/Npix=0.parquet")
    if edit is not None:
        raw = edit(raw)
    target = folder / "dataset/Norder=5/Dir=0/Npix=0.parquet"
    target.parent.mkdir(parents=True)
    raw.to_parquet(target)
    return target


def test_trilegal_maps_refuse_bad_densities_and_ambiguous_pixels(
    s82_priors_path, default_locus, tmp_path
):
    """A NaN or negative cell of a TRILEGAL map is refused (a NaN turned its r bin flat,
    silently), and so is a catalogue holding one pixel number at two orders (one of them was
    read, silently)."""

    def one_nan(frame):
        kde = np.frombuffer(frame["kde"].iloc[10], np.float64).copy()
        kde[5 * 36 + 30] = np.nan
        frame = frame.copy()
        frame.iat[10, frame.columns.get_loc("kde")] = kde.tobytes()
        return frame

    broken = _trilegal_copy(s82_priors_path, tmp_path / "nan", one_nan)
    with pytest.raises(ValueError, match="finite, non-negative"):
        read_trilegal_priors(broken, default_locus)
    mixed = tmp_path / "mixed"
    first = _trilegal_copy(s82_priors_path, mixed)
    other = mixed / "dataset/Norder=4/Dir=0/Npix=0.parquet"
    other.parent.mkdir(parents=True)
    other.write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match="holds pixel 0 in 2 files"):
        read_trilegal_priors(mixed, default_locus)
    assert read_trilegal_priors(first, default_locus).n_bins == 27  # the file itself reads


def test_galaxy_prior_for_stars_needs_as_many_ra_as_dec() -> None:
    from photodist.priors import galaxy_prior_for_stars

    with pytest.raises(ValueError, match="ra and dec must have the same shape"):
        galaxy_prior_for_stars(np.array([10.0, 11.0]), np.array([5.0]))


def test_a_star_listed_many_times_does_not_move_the_prior_cone() -> None:
    from photodist.priors import footprint_cone

    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(10.0, 12.0, 500), rng.uniform(-1.0, 1.0, 500)
    copies = footprint_cone(np.r_[ra, [ra[0]] * 3000], np.r_[dec, [dec[0]] * 3000])
    assert copies == footprint_cone(ra, dec)
