"""photodist: photometric distances, metallicities and extinctions for billions of stars."""

from importlib.metadata import PackageNotFoundError, version

from photodist.bands import LSST, SDSS, BandSet, ColumnMap, Photometry, get_band_set
from photodist.locus import Locus, build_locus, load_locus

try:
    __version__ = version("photodist")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

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
