"""The package version and the distribution's name, alone at the bottom.

Modules that record the version (cache metadata, the cluster's version check)
import it from here, never from the package ``__init__`` that imports them;
messages that tell how to install an extra use :func:`install_hint`, so the
name users type is written in one place.
"""

__version__ = "0.2.0"

# The import name is ``preload``; on PyPI that name belongs to an unrelated
# project, so the distribution is published under this one.
DISTRIBUTION = "preload-images"


def install_hint(extra: str) -> str:
    """The pip command that adds an optional feature, for both kinds of user.

    Examples
    --------
    >>> install_hint("dask")
    'pip install "preload-images[dask]" (from a clone of preload: pip install ".[dask]")'
    """
    return f'pip install "{DISTRIBUTION}[{extra}]" (from a clone of preload: pip install ".[{extra}]")'
