"""Atomic file writes (bytes, JSON, .npz): a reader (or a resumed run) never sees half a file, whatever kills the
writer; and the JSON reader whose errors name the file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

import numpy as np


def write_atomic(path: str, data: bytes | str, *, mode: int | None = None) -> str:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`. Returns the path.

    The file gets `mode`, by default the permissions a plain `open(path, "w")` would give (0o666 less the umask), not
    the 0600 of a temporary file, and has them before it appears under its name.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, _default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json(path: str, record: Any, *, indent: int | None = 1) -> str:
    """Write `record` as JSON atomically; numpy and JAX arrays and scalars become lists and numbers, anything else
    unknown its `str`. Returns the path.

    Example:
        >>> import json, os, tempfile
        >>> path = write_json(os.path.join(tempfile.mkdtemp(), "a.json"), {"ts": np.array([1.0, 0.5])})
        >>> json.load(open(path))
        {'ts': [1.0, 0.5]}
    """
    return write_atomic(path, json.dumps(record, indent=indent, default=jsonable))


def read_json(path: str, *, what: str = "file") -> Any:
    """The contents of the JSON file `path`.

    Args:
      path: the file.
      what: what the file is, for the error ("file", "schedule file", ...).

    Returns:
      The parsed JSON value.

    Raises:
      FileNotFoundError: "missing {what} {path}", when there is no such file.
      ValueError: "{what} {path} is not valid JSON: ...", when it does not parse (a damaged or truncated file).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
        >>> read_json(write_json(path, {"nfe": 10}))
        {'nfe': 10}
        >>> _ = write_atomic(path, '{"nfe": 1')
        >>> read_json(path, what="schedule file")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: schedule file ...a.json is not valid JSON: Expecting ',' delimiter: line 1 column 10 (char 9)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {what} {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None  # the sentence says it all


def write_npz(path: str, arrays: dict) -> str:
    """Write named arrays as an .npz atomically (strings as numpy string arrays: loadable without pickles). Returns
    the path."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_atomic(path, buffer.getvalue())


def jsonable(value: Any) -> Any:
    """A JSON-serialisable stand-in for `value` (the `default=` hook of `json.dumps`)."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):
        return np.asarray(value).tolist()
    return str(value)
