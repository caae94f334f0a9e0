"""Experiment configs: one file per experiment, each with `get_config(arg=None)` returning a locked ConfigDict.

`arg` is the text after the colon in `--config experiments/configs/NAME.py:ARG`, parsed by `parse_arg` in
big_vision's style: comma-separated `key=value` pairs and bare flags, e.g. `smoke` or `smoke,nfe=5`. A key whose
values are names (`model=`, `method=`) is checked by the registry of those names (`choices`), before anything is built.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from fastsamplers.core import Registry

ARGS_UNKNOWN = "unknown config arg {name!r} in {arg!r}; valid args: {valid}"


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
