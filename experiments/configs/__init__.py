"""Experiment configs: one file per experiment, each with `get_config(arg=None)` returning a locked ConfigDict.

`arg` is the text after the colon in `--config experiments/configs/NAME.py:ARG`, parsed by `parse_arg` in
big_vision's style: comma-separated `key=value` pairs and bare flags, e.g. `smoke` or `smoke,nfe=5`. A key whose
values are names (`model=`, `method=`) is checked by the registry of those names (`choices`), before anything is built.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections
import numpy as np

from fastsamplers import schedules

from fastsamplers.core import Registry

ARGS_UNKNOWN = "unknown config arg {name!r} in {arg!r}; valid args: {valid}"
# A flow-matching config's `path=P`: its name of a Gaussian path -> the process (schedules.PROCESSES). "kinetic" is
# the training set's kinetic-optimal path, estimated at a run's first build and kept in its workdir.
PATHS = Registry("path", {"ot": "ot", "kinetic": "kinetic_optimal"}, ordered=True)


def parse_arg(arg: str | None, *, choices: Mapping[str, Registry] | None = None,
              **defaults: Any) -> ml_collections.ConfigDict:
    """Parse a config's `arg` string against typed defaults.

    Args:
      arg: None, "" or "a=1,b,c=x": `key=value` pairs and bare keys (a bare key sets a bool default to True).
      choices: {key: the registry of its valid values}: the value of each (given or default) must be registered
        there; an unknown one raises that registry's sentence, with the key as the kind.
      **defaults: every accepted key with its default; the default's type converts the given text.

    Returns:
      A locked ConfigDict with every key of `defaults`.

    Example:
        >>> parse_arg("smoke,nfe=5", smoke=False, nfe=10).nfe
        5
        >>> parse_arg("model=big", choices={"model": Registry.of_names("model", ("small",))}, model="small")
        Traceback (most recent call last):
        ...
        ValueError: unknown model 'big'; valid names: ['small']
    """
    keys = Registry("config arg", defaults, unknown=ARGS_UNKNOWN)
    values = dict(defaults)
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, has_value, text = item.partition("=")
        key = keys.check(key.strip(), arg=arg)
        values[key] = _convert(key, text.strip(), defaults[key]) if has_value else _flag(key, defaults[key])
    for key, registry in (choices or {}).items():
        registry.check(values[keys.check(key, arg=arg)], kind=key)
    config = ml_collections.ConfigDict(values)
    config.lock()
    return config


def _flag(key, default):
    if not isinstance(default, bool):
        raise ValueError(f"config arg {key!r} needs a value ({key}=...), it is not a flag")
    return True


def _convert(key, text, default):
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config arg {key!r} is a bool: use {key}=True or {key}=False, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        return type(default)(text)
    except ValueError as err:
        raise ValueError(f"config arg {key!r} expects a {type(default).__name__}, got {text!r}") from err


FILE_GRID = "file:"  # a grid "file:PATH" names a schedule file; {nfe} and {num_steps} in PATH are filled in


def grid_file(grid: str, nfe: int, num_steps: int) -> str | None:
    """The schedule file a grid "file:PATH" names for one cell (None for a grid name); FileNotFoundError when it
    does not exist, so a table fails before sampling.

    Example:
        >>> grid_file("logsnr", 10, 5) is None
        True
    """
    if not grid.startswith(FILE_GRID):
        return None
    path = grid[len(FILE_GRID):].format(nfe=nfe, num_steps=num_steps)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"schedule file {path!r} not found (grid {grid!r})")
    return path


def grid_spec(grid: str, nfe: int, num_steps: int) -> tuple[str, dict[str, str]]:
    """(name, options) of a grid key for `schedules.get_timesteps`, and for the schedule optimisers' `teacher_grid`
    (`schedules.distill`, `schedules.learn`): a grid name of `schedules.GRIDS` as it is, "file:PATH" as ("file",
    {"path": PATH}) (`grid_file`: {nfe} and {num_steps} filled in, FileNotFoundError when it does not exist).

    Example:
        >>> grid_spec("logsnr", 10, 5)
        ('logsnr', {})
    """
    path = grid_file(grid, nfe, num_steps)
    return (grid, {}) if path is None else ("file", {"path": path})


def grid_timesteps(grid: str, process, num_steps: int, nfe: int, t_min: float | None = None,
                   t_max: float | None = None, grid_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """The time grid of one cell: a grid name of `schedules.GRIDS` with its `grid_options` (between t_min and t_max,
    None: the process's ends), or "file:PATH" (a distilled schedule file with its own ends, resampled to num_steps
    by `get_timesteps("file", ...)`). Returns float numpy (num_steps + 1,)."""
    name, options = grid_spec(grid, nfe, num_steps)
    ends = {} if options else {k: v for k, v in (("t_min", t_min), ("t_max", t_max)) if v is not None}
    return np.asarray(schedules.get_timesteps(name, process, num_steps, **options, **ends, **(grid_options or {})))
