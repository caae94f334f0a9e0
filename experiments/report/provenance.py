"""What produced a result: library versions, backend, precision and the git commit, recorded beside the numbers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax
import ml_collections
import numpy as np


def versions() -> dict:
    """What produced the results: library versions, backend, precision and the git commit when there is one.

    Returns:
      A JSON-ready dict: python, platform, jax, jaxlib, numpy, ml_collections, backend, device, x64, git_commit
      (None outside a git checkout).
    """
    import jaxlib

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "ml_collections": getattr(ml_collections, "__version__", None),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "x64": bool(jax.config.jax_enable_x64),
        "git_commit": commit,
    }
