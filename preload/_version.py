"""The package version, alone at the bottom: modules that record it (cache metadata, the cluster's
version check) import it from here, never from the package ``__init__`` that imports them."""

__version__ = "0.1.0"
