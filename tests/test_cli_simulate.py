import numpy as np
from click.testing import CliRunner

from photodist.cli import cli
from photodist.locus import build_locus
from photodist.priors import DEFAULT_MIN_STARS, PriorMap
from photodist.simulate import DEFAULT_R_MAX, read_simulation

CONE = ["--cone", "176", "-48", "0.2"]


def _run(args):
    return CliRunner().invoke(cli, args)


def test_help_lists_the_new_commands_and_their_defaults():
    result = _run(["--help"])
    assert result.exit_code == 0
    assert "simulate" in result.output and "priors" in result.output
    # defaults shown in the help are the library constants
    assert f"[default: {DEFAULT_R_MAX:g}]" in _run(["simulate", "--help"]).output
    assert f"[default: {DEFAULT_MIN_STARS}]" in _run(["priors", "--help"]).output


def test_simulate_writes_a_reproducible_catalogue(tmp_path):
    out = tmp_path / "sim.parquet"
    args = ["simulate", str(out), *CONE, "--r-max", "18", "--bands", "sdss", "--errors", "sdss"]
    args += ["--seed", "3", "--ar-inf", "0.2"]
    result = _run(args)
    assert result.exit_code == 0, result.output
    frame = read_simulation(out)
    params = frame.attrs["photodist_simulation"]
    assert params["seed"] == 3 and params["band_set"] == "sdss" and params["errors"] == "sdss"
    assert params["patch"] == {"l": 176.0, "b": -48.0, "radius": 0.2}
    assert len(frame) > 0 and frame["rmag_true"].max() <= 18.0
    assert np.all(frame["Ar_inf"] == 0.2) and "ymag" not in frame
    first = out.read_bytes()
    again = _run(args)
    assert again.exit_code != 0 and "overwrite" in again.output
    assert out.read_bytes() == first  # refused: the file is untouched
    replaced = _run([*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert out.read_bytes() == first  # same seed, same bytes


def test_simulate_pixel_and_bad_arguments(tmp_path):
    out = tmp_path / "pix.parquet"
    result = _run(["simulate", str(out), "--pixel", "5", "--order", "8", "--r-max", "17"])
    assert result.exit_code == 0, result.output
    frame = read_simulation(out)
    assert frame.attrs["photodist_simulation"]["patch"] == {"order": 8, "pixel": 5}
    assert "ymag" in frame  # LSST bands by default
    both = _run(["simulate", str(tmp_path / "b.parquet"), "--pixel", "1", *CONE])
    assert both.exit_code != 0 and "exactly one" in both.output
    neither = _run(["simulate", str(tmp_path / "n.parquet")])
    assert neither.exit_code != 0 and "exactly one" in neither.output
    csv = _run(["simulate", str(tmp_path / "s.csv"), *CONE, "--r-max", "15"])
    assert csv.exit_code != 0 and ".parquet" in csv.output
    bad = _run(["simulate", str(tmp_path / "e.parquet"), *CONE, "--errors", "hsc"])
    assert bad.exit_code != 0 and "unknown error model" in bad.output
    assert not (tmp_path / "e.parquet").exists()


def test_priors_builds_and_saves_a_map(tmp_path):
    out = tmp_path / "prior"  # .npz is appended
    args = ["priors", str(out), *CONE, "--seed", "2", "--feh-step", "0.5", "--mr-step", "0.5"]
    args += ["--min-stars", "300"]
    result = _run(args)
    assert result.exit_code == 0, result.output
    path = tmp_path / "prior.npz"
    prior = PriorMap.load(path, locus=build_locus(feh_step=0.5, mr_step=0.5))
    assert prior.n_bins == 27
    np.testing.assert_allclose(prior.density.sum(axis=(1, 2)), 1.0)
    assert np.all(prior.n_stars >= 300)
    assert prior.metadata["seed"] == 2 and prior.metadata["min_stars"] == 300
    assert prior.metadata["patch"] == {"l": 176.0, "b": -48.0, "radius": 0.2}
    again = _run(args)
    assert again.exit_code != 0 and "overwrite" in again.output
    assert _run([*args, "--overwrite"]).exit_code == 0
    np.testing.assert_array_equal(PriorMap.load(path).density, prior.density)
    # the name given to `priors` (without .npz) is accepted by --prior
    sim = tmp_path / "sim.parquet"
    assert _run(["simulate", str(sim), *CONE, "--r-max", "16", "--bands", "sdss"]).exit_code == 0
    grid = ["--feh-step", "0.5", "--mr-step", "0.5", "--bands", "sdss"]
    used = _run(["bayes", str(sim), str(tmp_path / "b.parquet"), "--prior", str(out), *grid])
    assert used.exit_code == 0, used.output
    # a folder is not a prior file name (it wrote folder.npz beside it before)
    folder = _run(["priors", str(tmp_path), *CONE, "--min-stars", "10"])
    assert folder.exit_code == 2 and "is a folder" in folder.output
    assert not tmp_path.with_suffix(".npz").exists()


def test_priors_of_the_smallest_pixel_have_stars_in_every_bin(tmp_path):
    """An order-29 pixel (~1e-14 deg^2) expects ~1e-11 stars per r bin: its prior comes from
    its sightline simulated over a larger area, not from an empty (flat) simulation."""
    out = tmp_path / "p.npz"
    result = _run(
        ["priors", str(out), "--pixel", "3", "--order", "29", "--min-stars", "10"]
        + ["--feh-step", "0.5", "--mr-step", "0.5"]
    )
    assert result.exit_code == 0, result.output
    prior = PriorMap.load(out, locus=build_locus(feh_step=0.5, mr_step=0.5))
    assert np.all(prior.n_stars >= 5)
    assert ("warning: r bins short" in result.output) == bool(
        prior.metadata["bins_below_min_stars"]
    )


def test_priors_argument_errors(tmp_path):
    out = str(tmp_path / "p.npz")
    neither = _run(["priors", out])
    assert neither.exit_code != 0 and "exactly one" in neither.output
    trilegal = tmp_path / "t.parquet"
    trilegal.write_bytes(b"")
    mixed = _run(["priors", out, "--trilegal", str(trilegal), *CONE])
    assert mixed.exit_code != 0 and "--cone" in mixed.output


def test_priors_converts_a_trilegal_catalogue(s82_priors_path, tmp_path):
    out = tmp_path / "trilegal.npz"
    args = ["priors", str(out), "--trilegal", str(s82_priors_path), "--pixel", "1"]
    result = _run([*args, "--feh-step", "0.1", "--mr-step", "0.1"])
    assert result.exit_code == 0, result.output
    assert "TRILEGAL" in result.output
    prior = PriorMap.load(out, locus=build_locus(feh_step=0.1, mr_step=0.1))
    assert prior.metadata["source"] == "trilegal" and prior.metadata["pixel"] == 1
    assert prior.n_bins == 27
    missing = _run(["priors", str(tmp_path / "x.npz"), "--trilegal", str(s82_priors_path)])
    assert missing.exit_code != 0 and "choose one" in missing.output
    partition = s82_priors_path / "dataset/Norder=5/Dir=0/Npix=1.parquet"
    other = _run(["priors", str(tmp_path / "y.npz"), "--trilegal", str(partition), "--pixel", "2"])
    assert other.exit_code == 1 and "is pixel 1, not pixel 2" in other.output
