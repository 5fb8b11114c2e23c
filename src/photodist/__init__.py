"""photodist: photometric distances, metallicities and extinctions for billions of stars."""

from photodist.bands import LSST, SDSS, BandSet, ColumnMap, Photometry, get_band_set
from photodist.locus import Locus, build_locus, load_locus

#: The code's own version (pyproject.toml reads it from here): survey manifests and model
#: files record it, so it must follow the code being run, not an installation's metadata.
__version__ = "0.3.5"

__all__ = [
    "LSST",
    "SDSS",
    "BandSet",
    "ColumnMap",
    "Locus",
    "Photometry",
    "__version__",
    "build_locus",
    "get_band_set",
    "load_locus",
]
