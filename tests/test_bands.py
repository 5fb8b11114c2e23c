import numpy as np
import pandas as pd
import pytest

from photodist.bands import (
    FLUX_ZERO_POINTS,
    LSST,
    SDSS,
    SFD_EBV_TO_AR,
    ColumnMap,
    MissingColumnError,
    band_photometry,
    colors_from_magnitudes,
    column_map_from_options,
    get_band_set,
    magnitudes_from_fluxes,
    photometry_from_frame,
    readable_band_set,
    resolve_columns,
)


def test_band_sets_and_colors():
    assert SDSS.colors == ("ug", "gr", "ri", "iz")
    assert LSST.colors == ("ug", "gr", "ri", "iz", "zy")
    assert get_band_set("ugriz") is SDSS
    assert get_band_set("LSST") is LSST


def test_reddening_vector_from_berry_ratios():
    # A_u - A_g = 1.810 - 1.400 etc. (Berry et al. 2012; y from Cardelli et al. 1989)
    np.testing.assert_allclose(SDSS.reddening_vector(), [0.41, 0.40, 0.241, 0.198])
    assert LSST.reddening_vector()[-1] == pytest.approx(0.561 - 0.484)


def test_extinction_override():
    custom = get_band_set("sdss", {"u": 1.9})
    assert custom.reddening_vector()[0] == pytest.approx(0.5)
    assert SDSS.extinction_ratios["u"] == 1.810  # original untouched
    with pytest.raises(ValueError, match="not in"):
        SDSS.with_extinction_ratios({"y": 0.5})


def test_unknown_band_set_is_clear_error():
    with pytest.raises(ValueError, match="unknown band set 'ubv'"):
        get_band_set("ubv")


def test_color_errors_in_quadrature_with_floor():
    mags = np.array([[20.0, 19.0, 18.5]])
    errs = np.array([[0.03, 0.04, 0.0]])
    colors, cerr = colors_from_magnitudes(mags, errs, error_floor=0.02)
    np.testing.assert_allclose(colors, [[1.0, 0.5]])
    np.testing.assert_allclose(
        cerr, [[np.sqrt(0.03**2 + 0.04**2 + 0.02**2), np.sqrt(0.04**2 + 0.02**2)]]
    )


def _frame(n=3, **overrides):
    data = {f"{b}mag": np.full(n, 20.0 - i * 0.5) for i, b in enumerate("ugriz")}
    data.update({f"{b}Err": np.full(n, 0.02) for b in "ugriz"})
    data.update(overrides)
    return pd.DataFrame(data)


def test_photometry_from_frame_default_columns():
    phot = photometry_from_frame(_frame(), "sdss")
    assert phot.colors.shape == (3, 4)
    np.testing.assert_allclose(phot.colors, 0.5)
    np.testing.assert_allclose(phot.r, 19.0)
    assert phot.features().shape == (3, 10)


def test_colours_read_from_colour_columns_when_magnitudes_are_absent():
    """photod's simulated catalogues: r, observed colours and every band's error."""
    rng = np.random.default_rng(3)
    mags = pd.DataFrame({f"{b}mag": rng.uniform(17, 22, 6) for b in "ugriz"})
    errors = pd.DataFrame({f"{b}Err": rng.uniform(0.01, 0.1, 6) for b in "ugriz"})
    errors.loc[2, "gErr"] = -1.0  # a bad g error spoils u-g and g-r either way
    full = pd.concat([mags, errors], axis=1)
    reference = photometry_from_frame(full, "sdss")
    colours = errors.assign(
        rmag=mags["rmag"],
        ugObs=mags["umag"] - mags["gmag"],
        grObs=mags["gmag"] - mags["rmag"],
        ri=mags["rmag"] - mags["imag"],
        iz=mags["imag"] - mags["zmag"],
    )
    colours.loc[4, "iz"] = -99.0  # a sentinel colour is unusable, like a sentinel magnitude
    columns = ColumnMap.from_mapping({"ug": "ugObs", "gr": "grObs"})
    phot = photometry_from_frame(colours, "sdss", columns)
    expected = reference.colors.copy()
    expected[4, 3] = np.nan
    np.testing.assert_allclose(phot.colors, expected, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(phot.color_errors), np.isnan(expected))
    np.testing.assert_allclose(phot.r, reference.r)
    # a magnitude column named explicitly but absent is an error, not replaced by the colour
    # column (``--column umag=nope`` read u-g from ugObs silently before)
    with pytest.raises(MissingColumnError, match="'nope'"):
        photometry_from_frame(
            colours, "sdss", ColumnMap.from_mapping({"ug": "ugObs", "gr": "grObs", "umag": "nope"})
        )
    # a colour without its magnitudes or colour column names the magnitude and the colour
    with pytest.raises(MissingColumnError, match="'imag'.*'ri'"):
        photometry_from_frame(colours.drop(columns="ri"), "sdss", columns)
    with pytest.raises(MissingColumnError, match="rmag"):
        photometry_from_frame(colours.drop(columns="rmag"), "sdss", columns)


def test_adjacent_colours_from_magnitudes_covary():
    """Colours from magnitudes share a band: covariance -sigma^2 of that band, matching the
    scatter of many noisy realisations; colours from colour columns and unusable colours
    are independent (0)."""
    rng = np.random.default_rng(4)
    n = 20000
    band_err = np.array([0.05, 0.02, 0.01, 0.03, 0.04])
    true = np.array([21.5, 20.2, 19.7, 19.55, 19.5])
    frame = pd.DataFrame(
        {f"{b}mag": true[k] + rng.normal(0, band_err[k], n) for k, b in enumerate("ugriz")}
        | {f"{b}Err": np.full(n, band_err[k]) for k, b in enumerate("ugriz")}
    )
    phot = photometry_from_frame(frame, "sdss")
    np.testing.assert_allclose(phot.color_covariance, -np.tile(band_err[1:-1] ** 2, (n, 1)))
    empirical = np.cov(phot.colors.T)
    for k in range(3):
        assert empirical[k, k + 1] == pytest.approx(phot.color_covariance[0, k], rel=0.05)
    # a colour column breaks the link to its neighbours; so does an unusable colour
    frame["ug"] = frame["umag"] - frame["gmag"]
    with_column = photometry_from_frame(frame.drop(columns="umag"), "sdss")
    np.testing.assert_allclose(with_column.colors, phot.colors)
    np.testing.assert_allclose(with_column.color_covariance[:, 0], 0.0)
    np.testing.assert_allclose(with_column.color_covariance[:, 1:], phot.color_covariance[:, 1:])
    frame.loc[0, "gErr"] = -1.0
    bad = photometry_from_frame(frame, "sdss")
    np.testing.assert_array_equal(bad.color_covariance[0], [0.0, 0.0, -(band_err[3] ** 2)])
    assert bad.subset(np.array([0, 1])).color_covariance.shape == (2, 3)


def test_missing_column_names_it():
    frame = _frame().drop(columns=["iErr"])
    with pytest.raises(MissingColumnError, match="iErr"):
        photometry_from_frame(frame, "sdss")


def test_custom_column_map():
    frame = _frame().rename(columns={"umag": "u_psf", "uErr": "u_psf_err"})
    columns = ColumnMap.from_mapping({"umag": "u_psf", "uerr": "u_psf_err"})
    phot = photometry_from_frame(frame, "sdss", columns)
    np.testing.assert_allclose(phot.colors[:, 0], 0.5)
    with pytest.raises(ValueError, match="unknown column-map key"):
        ColumnMap.from_mapping({"colour": "x"})
    mapping = {"umag": "u_psf", "uerr": "u_psf_err", "ra": "RA", "dust": None}
    again = ColumnMap.from_mapping(ColumnMap.from_mapping(mapping).to_mapping())
    assert again == ColumnMap.from_mapping(mapping)
    assert again.mag_column("u") == "u_psf" and again.ra == "RA" and again.dust is None


def test_column_map_from_options():
    columns = column_map_from_options([" umag =u_psf", "flux_unit=uJy"], "A", "nJy", "ebv")
    assert columns.mag_column("u") == "u_psf" and columns.dust == "A" and columns.ebv == "ebv"
    assert columns.flux_unit == "uJy"  # KEY=COLUMN overrides the dedicated option
    assert column_map_from_options([], None) == ColumnMap(dust=None)
    for bad, match in (("umag", "expected KEY=COLUMN"), ("=x", "expected"), ("a=b", "unknown")):
        with pytest.raises(ValueError, match=match):
            column_map_from_options([bad], "Ar")


def test_bad_values_become_nan_colors():
    frame = _frame(
        5,
        umag=[99.0, np.nan, 20.0, 20.0, "bad"],
        uErr=[0.02, 0.02, -0.1, 1.5, 0.02],
    )
    phot = photometry_from_frame(frame, "sdss")
    assert np.isnan(phot.colors[:, 0]).all()  # sentinel, NaN, negative error, huge error, text
    assert np.isfinite(phot.colors[:, 1:]).all()
    # the same from measurements the caller already read, which stay as they were
    mags, errs, _ = band_photometry(frame, "sdss")
    kept = mags.copy(), errs.copy()
    again = photometry_from_frame(frame, "sdss", measurements=(mags, errs))
    for name in ("r", "r_err", "colors", "color_errors", "color_covariance"):
        np.testing.assert_array_equal(getattr(again, name), getattr(phot, name))
    np.testing.assert_array_equal(mags, kept[0])
    np.testing.assert_array_equal(errs, kept[1])


def test_empty_frame():
    phot = photometry_from_frame(_frame(0), "sdss")
    assert len(phot) == 0 and phot.colors.shape == (0, 4)


def test_negative_or_sentinel_dust_is_ignored():
    frame = _frame(3, Ar=[0.2, -0.3, 99.0])
    phot = photometry_from_frame(frame, "sdss")
    assert phot.dust[0] == 0.2 and np.isnan(phot.dust[1:]).all()


def _as_fluxes(frame: pd.DataFrame, bands: str, unit: str = "nJy") -> pd.DataFrame:
    """The catalogue with {band}_psfFlux / {band}_psfFluxErr in ``unit`` instead of magnitudes."""
    out = frame.drop(columns=[c for b in bands for c in (f"{b}mag", f"{b}Err")])
    for b in bands:
        flux = 10 ** (0.4 * (FLUX_ZERO_POINTS[unit] - frame[f"{b}mag"]))
        out[f"{b}_psfFlux"] = flux
        out[f"{b}_psfFluxErr"] = frame[f"{b}Err"] * flux / 1.0857362047581294
    return out


def test_flags_in_every_spelling_and_with_missing_values():
    """Flag columns as pandas reads them from CSV (nullable booleans with blanks), Parquet
    (Arrow booleans), text (t/f, yes/no) or numbers; a missing flag is no flag, an unreadable
    one a flag with a warning. Before, a blank in a nullable boolean column raised TypeError
    and text other than True/False flagged every measurement silently."""
    fluxes = _as_fluxes(_frame(4, Ar=np.full(4, 0.1)), "ugriz")
    cases = {
        "boolean": pd.array([False, True, None, False], dtype="boolean"),
        "bool[pyarrow]": pd.array([False, True, None, False], dtype="bool[pyarrow]"),
        "text": ["f", "T", None, " no "],
        "numbers": [0.0, 2.0, np.nan, 0.0],
    }
    for kind, flags in cases.items():
        frame = fluxes.assign(g_psfFlux_flag=flags)
        phot = photometry_from_frame(frame, "sdss", ColumnMap(flux_unit="nJy"))
        usable = np.isfinite(phot.colors)
        np.testing.assert_array_equal(usable[:, 1], [True, False, True, True], err_msg=kind)
    frame = fluxes.assign(g_psfFlux_flag=["f", "maybe", "f", "f"])
    with pytest.warns(UserWarning, match="g_psfFlux_flag.*1 value.*'maybe'"):
        phot = photometry_from_frame(frame, "sdss", ColumnMap(flux_unit="nJy"))
    assert np.isfinite(phot.colors[[0, 2, 3]]).all() and np.isnan(phot.colors[1, :2]).all()


def test_flags_apply_to_magnitudes_of_a_catalogue_that_has_both():
    """Rubin's Object table has magnitudes and fluxes: the magnitudes are read, and a flagged
    flux measurement still makes its band unusable."""
    frame = _frame(3, Ar=np.full(3, 0.1))
    frame["g_psfFlux_flag"] = [False, True, False]
    needed, _ = ColumnMap().photometry_sources(SDSS, list(frame.columns))
    assert "g_psfFlux_flag" in needed
    phot = photometry_from_frame(frame, "sdss")
    np.testing.assert_array_equal(np.isfinite(phot.colors[:, :2]), [[1, 1], [0, 0], [1, 1]])
    assert np.isfinite(phot.colors[:, 2:]).all()


def test_magnitudes_from_fluxes():
    mags, errs = magnitudes_from_fluxes(
        np.array([3631e9, 1e9 * 3631 / 100, -5.0, 0.0, np.nan, 10.0]),
        np.array([3631e7, 1.0, 1.0, 1.0, 1.0, -1.0]),
    )
    np.testing.assert_allclose(mags[:2], [0.0, 5.0], atol=1e-3)  # AB: 3631 Jy is magnitude 0
    np.testing.assert_allclose(errs[0], 2.5 / np.log(10) * 0.01)
    assert np.isnan(mags[2:]).all() and np.isnan(errs[2:]).all()  # no detection or error
    np.testing.assert_allclose(magnitudes_from_fluxes(1.0, 0.1, "uJy")[0], 23.9)
    with pytest.raises(ValueError, match="flux unit"):
        magnitudes_from_fluxes(1.0, 0.1, "erg")


@pytest.mark.parametrize("unit", ["nJy", "uJy"])
def test_flux_catalogue_gives_the_magnitude_catalogue_photometry(unit):
    rng = np.random.default_rng(4)
    frame = _frame(50, Ar=np.full(50, 0.1))
    for b in "ugriz":
        frame[f"{b}mag"] = frame[f"{b}mag"] + rng.normal(0, 0.3, 50)
        frame[f"{b}Err"] = rng.uniform(0.01, 0.2, 50)
    expected = photometry_from_frame(frame, "sdss")
    fluxes = _as_fluxes(frame, "ugriz", unit)
    fluxes.loc[3, "u_psfFlux"] = -20.0  # a u non-detection
    got = photometry_from_frame(fluxes, "sdss", ColumnMap(flux_unit=unit))
    keep = np.arange(50) != 3
    for name in ("r", "r_err", "colors", "color_errors", "color_covariance"):
        np.testing.assert_allclose(
            getattr(got, name)[keep], getattr(expected, name)[keep], rtol=1e-9, atol=1e-9
        )
    assert np.isnan(got.colors[3, 0]) and np.isfinite(got.colors[3, 1:]).all()
    np.testing.assert_allclose(got.dust, expected.dust)
    # renamed flux columns, and a clear error for a missing one
    renamed = fluxes.rename(columns={"g_psfFlux": "g_cModelFlux"})
    columns = ColumnMap.from_mapping({"flux_unit": unit, "gflux": "g_cModelFlux"})
    np.testing.assert_allclose(
        photometry_from_frame(renamed, "sdss", columns).colors[keep], expected.colors[keep]
    )
    with pytest.raises(MissingColumnError, match="g_psfFlux"):
        photometry_from_frame(renamed, "sdss", ColumnMap(flux_unit=unit))
    with pytest.raises(ValueError, match="flux unit"):
        ColumnMap(flux_unit="counts")
    # without a unit, a catalogue of Rubin's flux columns and no magnitudes is read in nJy
    if unit == "nJy":
        auto = photometry_from_frame(fluxes, "sdss")
        np.testing.assert_allclose(auto.colors[keep], expected.colors[keep], rtol=1e-9)
        resolution = resolve_columns(ColumnMap(), list(fluxes.columns), "sdss")
        assert resolution.aliases["flux_unit"] == "nJy"
        with_mags = fluxes.assign(rmag=frame["rmag"])  # magnitudes present: no guess
        with pytest.raises(MissingColumnError, match="uErr"):
            photometry_from_frame(with_mags, "sdss")


def test_dust_map_from_an_ebv_column():
    frame = _frame(3, ebv=[0.1, -0.2, np.nan])
    # found by its common name; not where the dust column was named (or switched off)
    np.testing.assert_allclose(photometry_from_frame(frame, "sdss").dust[0], SFD_EBV_TO_AR * 0.1)
    assert photometry_from_frame(frame, "sdss", ColumnMap(dust=None)).dust is None
    assert photometry_from_frame(frame, "sdss", ColumnMap(dust="")).dust is None  # --dust-column ''
    assert photometry_from_frame(frame, "sdss", ColumnMap(dust="A_sfd")).dust is None
    columns = ColumnMap(ebv="ebv")
    dust = photometry_from_frame(frame, "sdss", columns).dust
    np.testing.assert_allclose(dust[0], SFD_EBV_TO_AR * 0.1)
    assert np.isnan(dust[1:]).all()
    assert columns.dust_columns(list(frame.columns)) == ["ebv"]
    # a map A_r column wins over E(B-V); the factor is configurable
    frame["Ar"] = [0.5, 0.5, 0.5]
    np.testing.assert_allclose(photometry_from_frame(frame, "sdss", columns).dust, 0.5)
    assert columns.dust_columns(list(frame.columns)) == ["Ar"]
    scaled = ColumnMap(dust=None, ebv="ebv", ebv_to_ar=2.0)
    np.testing.assert_allclose(scaled.dust_values(frame)[0], 0.2)
    with pytest.raises(ValueError, match="ebv_to_ar"):
        ColumnMap(ebv="ebv", ebv_to_ar=0.0)


def test_column_map_round_trips_through_its_mapping():
    columns = ColumnMap(
        mags={"u": "u_psf"},
        flux_unit="nJy",
        fluxes={"g": "g_cModelFlux"},
        flux_errors={"g": "g_cModelFluxErr"},
        ebv="ebv",
        ebv_to_ar=2.3,
    )
    assert ColumnMap.from_mapping(columns.to_mapping()) == columns
    assert ColumnMap.from_mapping(ColumnMap().to_mapping()) == ColumnMap()


def test_flagged_flux_measurements_are_unusable():
    fluxes = _as_fluxes(_frame(4, Ar=np.full(4, 0.1)), "ugriz")
    fluxes["g_psfFlux_flag"] = [False, True, False, False]
    fluxes["i_custom_flag"] = [0, 0, 1, 0]
    columns = ColumnMap.from_mapping({"flux_unit": "nJy", "ifluxflag": "i_custom_flag"})
    needed, _ = columns.photometry_sources(SDSS, list(fluxes.columns))
    assert {"g_psfFlux_flag", "i_custom_flag"} <= set(needed)
    phot = photometry_from_frame(fluxes, "sdss", columns)
    usable = np.isfinite(phot.colors)
    np.testing.assert_array_equal(usable[1], [False, False, True, True])  # no g: u-g, g-r
    np.testing.assert_array_equal(usable[2], [True, True, False, False])  # no i: r-i, i-z
    assert usable[[0, 3]].all()
    assert ColumnMap.from_mapping(columns.to_mapping()) == columns


def _renamed(frame: pd.DataFrame, mag: str, err: str, bands: str = "ugriz") -> pd.DataFrame:
    names = {f"{b}mag": mag.format(b=b) for b in bands}
    names.update({f"{b}Err": err.format(b=b) for b in bands})
    return frame.rename(columns=names)


@pytest.mark.parametrize(
    ("mag", "err", "extra"),
    [
        ("psfMag_{b}", "psfMagErr_{b}", {"extinction_r": 0.1, "RA": 1.0, "DEC": 2.0}),
        ("{b}mag", "e_{b}mag", {"A_r": 0.1, "RAJ2000": 1.0, "DEJ2000": 2.0}),
        ("{b}", "{b}_err", {"Ar": 0.1, "coord_ra": 1.0, "coord_dec": 2.0}),
        ("{b}_mag", "magerr_{b}", {"ebv": 0.1 / SFD_EBV_TO_AR, "ra_deg": 1.0, "dec_deg": 2.0}),
    ],
)
def test_columns_under_common_other_names_are_found(mag, err, extra):
    frame = _frame(3, Ar=0.1, ra=1.0, dec=2.0)
    reference = photometry_from_frame(frame, "sdss")
    renamed = _renamed(frame.drop(columns=["Ar", "ra", "dec"]), mag, err).assign(**extra)
    phot = photometry_from_frame(renamed, "sdss")
    np.testing.assert_allclose(phot.colors, reference.colors)
    np.testing.assert_allclose(phot.color_errors, reference.color_errors)
    np.testing.assert_allclose(phot.r, reference.r)
    np.testing.assert_allclose(phot.dust, reference.dust)
    resolution = resolve_columns(ColumnMap(), list(renamed.columns), "sdss")
    found = resolution.columns
    assert renamed[found.ra].iloc[0] == 1.0 and renamed[found.dec].iloc[0] == 2.0
    assert resolution.ambiguous == {}
    assert resolution.columns.resolved(list(renamed.columns), "sdss") == found  # idempotent


def test_column_lookup_never_guesses():
    frame = _frame(3)
    # an explicitly named column is never replaced by another name
    explicit = ColumnMap(mags={"u": "u_psf"})
    with pytest.raises(MissingColumnError, match="u_psf"):
        photometry_from_frame(_renamed(frame, "{b}_mag", "{b}Err"), "sdss", explicit)
    # Johnson U is not SDSS u: band letters match in lower case only
    johnson = frame.rename(columns={"umag": "Umag"})
    assert "umag" not in resolve_columns(ColumnMap(), list(johnson.columns), "sdss").aliases
    # a bare letter counts only when every band has one ("z" alone may be a redshift)
    redshift = frame.rename(columns={"zmag": "z"})
    with pytest.raises(MissingColumnError, match="zmag"):
        photometry_from_frame(redshift, "sdss")
    # two candidates: neither is taken, and the error lists both
    twice = _renamed(frame, "{b}_mag", "{b}Err").assign(mag_u=frame["umag"])
    resolution = resolve_columns(ColumnMap(), list(twice.columns), "sdss")
    assert resolution.ambiguous == {"umag": ["u_mag", "mag_u"]}
    with pytest.raises(MissingColumnError, match="umag: u_mag, mag_u"):
        photometry_from_frame(twice, "sdss")


def test_readable_band_set_prefers_the_given_one():
    ugriz = list(_frame(2).columns)
    ugrizy = [*ugriz, "ymag", "yErr"]
    assert readable_band_set(ColumnMap(), ugrizy) == "lsst"
    assert readable_band_set(ColumnMap(), ugrizy, preferred="sdss") == "sdss"
    assert readable_band_set(ColumnMap(), ugriz) == "sdss"
    assert readable_band_set(ColumnMap(), [c for c in ugriz if c != "rErr"]) is None


def test_first_numeric_column_reads_nullable_integers_and_text():
    from photodist.bands import first_numeric_column

    frame = pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64"), "b": ["1.5", "x", None]})
    np.testing.assert_array_equal(first_numeric_column(frame, ["z", "a"]), [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(first_numeric_column(frame, ["b", "a"]), [1.5, np.nan, np.nan])
    assert first_numeric_column(frame, ["z"]) is None


def test_photometry_refuses_mismatched_shapes():
    from photodist.bands import SDSS, Photometry

    good = dict(r=[18.0], r_err=[0.01], colors=[[1.0, 0.5, 0.2, 0.1]], color_errors=[[0.02] * 4])
    phot = Photometry(SDSS, **good)
    assert phot.colors.dtype == float and len(phot) == 1
    with pytest.raises(ValueError, match=r"colors has shape \(1, 3\)"):
        Photometry(SDSS, **{**good, "colors": [[1.0, 0.5, 0.2]]})
    with pytest.raises(ValueError, match=r"colors has shape \(1, 4\); 2 stars"):
        Photometry(SDSS, **{**good, "r": [18.0, 19.0], "r_err": [0.01, 0.01]})
    with pytest.raises(ValueError, match="dust"):
        Photometry(SDSS, **good, dust=[0.1, 0.2])


def test_a_column_name_given_twice_is_a_clear_error():
    from photodist.bands import numeric_column

    frame = pd.DataFrame([[1.0, 2.0]], columns=["rmag", "rmag"])
    with pytest.raises(ValueError, match="'rmag' appears 2 times"):
        numeric_column(frame, "rmag")


def test_extinction_ratios_must_be_positive():
    from photodist.bands import get_band_set

    for bad in (-5.0, 0.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="finite and > 0"):
            get_band_set("sdss", {"g": bad})
    assert get_band_set("sdss", {"g": 1.3}).extinction_ratios["g"] == 1.3


def test_positions_come_from_ra_dec_else_galactic_but_a_named_column_is_never_replaced():
    from photodist.bands import position_columns, sky_positions

    frame = pd.DataFrame({"RAJ2000": [10.0], "DEJ2000": [-5.0], "l": [100.0], "b": [30.0]})
    assert position_columns(list(frame.columns), ColumnMap()) == ("RAJ2000", "DEJ2000")
    only_galactic = frame.drop(columns=["RAJ2000", "DEJ2000"])
    assert position_columns(list(only_galactic.columns), ColumnMap()) == ("l", "b")
    ra, dec = sky_positions(only_galactic)
    assert np.isfinite(ra).all() and np.isfinite(dec).all()
    # `--column ra=nope`: an error, not the l/b columns (check fell back to them silently)
    named = ColumnMap.from_mapping({"ra": "nope"})
    with pytest.raises(MissingColumnError, match="'nope'"):
        position_columns(list(frame.columns), named)
    with pytest.raises(MissingColumnError, match="'nope'"):
        sky_positions(frame, named)


def test_photometry_from_frame_names_a_wrong_input_type() -> None:
    rows = [{"rmag": 18.0, "rErr": 0.01}]
    with pytest.raises(TypeError, match="takes a pandas DataFrame.*got list"):
        photometry_from_frame(rows, "sdss")


def test_photometry_given_directly_blanks_unusable_colours():
    """Arrays given to Photometry follow the readers' rule: a colour whose error is missing,
    not positive or above 1 mag is NaN in both arrays, and its covariances are 0; the
    caller's arrays are left as they were."""
    from photodist.bands import SDSS, Photometry
    from photodist.bayes import BayesEstimator, Flags
    from photodist.locus import build_locus

    colors = np.array([[1.2, 0.4, 0.15, 0.05]] * 4)
    errors = np.array(
        [[0.03] * 4, [1.5, 0.03, 0.03, 0.03], [0.03, -0.01, 0.03, 0.03], [0.03, 0.03, np.nan, 0.03]]
    )
    covariance = np.full((4, 3), -1e-4)
    phot = Photometry(SDSS, [18.0] * 4, [0.01] * 4, colors, errors, None, covariance)
    np.testing.assert_array_equal(np.isnan(phot.colors), np.isnan(phot.color_errors))
    np.testing.assert_array_equal(
        np.isnan(phot.colors).nonzero(), (np.array([1, 2, 3]), np.array([0, 1, 2]))
    )
    np.testing.assert_array_equal(
        phot.color_covariance[1:] == 0.0, [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    )
    assert np.isfinite(colors).all() and (covariance == -1e-4).all()  # not modified
    flags = BayesEstimator(build_locus(feh_step=0.5, mr_step=0.5)).predict(phot)["flags"]
    np.testing.assert_array_equal((flags & Flags.COLOR_UNUSABLE) > 0, [False, True, True, True])


def test_first_occurrences_compare_rows_exactly(monkeypatch):
    """Repeated rows (NaN equal to NaN) point at their first copy; rows that merely share a
    hash (forced here) stay distinct."""
    from photodist.bands import SDSS, Photometry

    colors = np.array([[1.0, 0.5, np.nan, 0.1], [1.1, 0.5, 0.2, 0.1], [1.0, 0.5, np.nan, 0.1]])
    phot = Photometry(SDSS, [18.0] * 3, [0.01] * 3, colors, np.full((3, 4), 0.02))
    both = phot.subset(np.array([0, 1, 2, 1, 0]))
    np.testing.assert_array_equal(both.first_occurrences(), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(both.distinct_rows(), [0, 1])
    monkeypatch.setattr(
        pd.util, "hash_pandas_object", lambda table, index: pd.Series(np.zeros(len(table), int))
    )
    np.testing.assert_array_equal(both.first_occurrences(), [0, 1, 0, 1, 0])


def test_a_renamed_flux_column_takes_its_own_flag() -> None:
    """`--column gflux=g_cModelFlux` reads g_cModel_flag, Rubin's flag of that flux, not
    the PSF flux's g_psfFlux_flag; `--column gfluxflag=...` names another."""
    frame = pd.DataFrame(
        {
            **{f"{b}_cModelFlux": [3631e9 * 10 ** (-0.4 * 18.0)] * 3 for b in "ugriz"},
            **{f"{b}_cModelFluxErr": [3631e9 * 10 ** (-0.4 * 18.0) * 0.01] * 3 for b in "ugriz"},
            "g_psfFlux_flag": [True, False, False],
            "g_cModel_flag": [False, True, False],
            "g_other_flag": [False, False, True],
        }
    )
    mapping = {f"{b}flux": f"{b}_cModelFlux" for b in "ugriz"}
    mapping.update({f"{b}fluxerr": f"{b}_cModelFluxErr" for b in "ugriz"})
    columns = ColumnMap.from_mapping({"flux_unit": "nJy", "dust": None, **mapping})
    needed, _ = columns.photometry_sources(SDSS, list(frame.columns))
    assert "g_cModel_flag" in needed and "g_psfFlux_flag" not in needed
    phot = photometry_from_frame(frame, "sdss", columns)
    np.testing.assert_array_equal(np.isfinite(phot.colors[:, 1]), [True, False, True])
    other = ColumnMap.from_mapping(
        {"flux_unit": "nJy", "dust": None, **mapping, "gfluxflag": "g_other_flag"}
    )
    phot = photometry_from_frame(frame, "sdss", other)
    np.testing.assert_array_equal(np.isfinite(phot.colors[:, 1]), [True, True, False])
