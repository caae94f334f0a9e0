"""fastsamplers: fast diffusion and flow samplers in JAX.

    from fastsamplers import schedules, samplers, models

The subpackages (`core`, `schedules`, `models`, `samplers`, `experiments`) are folders at the top of the repository
(the layout of the design notes); installed, by `pip install .` or `pip install -e .`, they are this one package, so
the install adds exactly one top-level import name. In a checkout that is not installed (the repository root on
sys.path, as `scripts/` and the tests arrange) the folders are found beside this one.
"""

import os as _os

__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "samplers")):  # a checkout: the subpackages sit beside this folder
    __path__.append(_os.path.dirname(_here))  # noqa: F821  (a package's __path__)
