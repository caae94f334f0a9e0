"""Experiment configs: one file per experiment, each with `get_config(arg=None)` returning a locked ConfigDict.

`arg` is the text after the colon in `--config experiments/configs/NAME.py:ARG`, parsed by `parse_arg` in
big_vision's style: comma-separated `key=value` pairs and bare flags, e.g. `smoke` or `smoke,nfe=5`.
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg, **defaults):
    """Parse a config's `arg` string against typed defaults.

    Args:
      arg: None, "" or "a=1,b,c=x": `key=value` pairs and bare keys (a bare key sets a bool default to True).
      **defaults: every accepted key with its default; the default's type converts the given text.

    Returns:
      A locked ConfigDict with every key of `defaults`.

    Example:
        >>> parse_arg("smoke,nfe=5", smoke=False, nfe=10).nfe
        5
    """
    values = dict(defaults)
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, has_value, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config arg {key!r} in {arg!r}; valid args: {sorted(defaults)}")
        values[key] = _convert(key, text.strip(), defaults[key]) if has_value else _flag(key, defaults[key])
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
