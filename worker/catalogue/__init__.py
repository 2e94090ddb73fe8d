"""What this worker may load: every model version is resolved by `name@version` through a
catalogue, never taken from the copy a request carries.

registry.py  the registry (its Watch-fed cache, read-through GetModel), the default
file.py      an operator-owned list of models, for workers run without a registry
checks.py    what a resolved model must satisfy before any file or URL is touched
build.py     which of them the settings ask for
"""

from worker.catalogue.base import Catalogue, NoCatalogue
from worker.catalogue.build import open_catalogue
from worker.catalogue.file import FileCatalogue, read_catalog_file
from worker.catalogue.registry import RegistryCatalogue

__all__ = [
    "Catalogue",
    "FileCatalogue",
    "NoCatalogue",
    "RegistryCatalogue",
    "open_catalogue",
    "read_catalog_file",
]
