"""Doctests of the optional adapters run only where their library is installed."""

import importlib.util

collect_ignore = [
    module
    for module, needs in (("preload/torch.py", "torch"), ("preload/distributed.py", "distributed"))
    if importlib.util.find_spec(needs) is None
]
