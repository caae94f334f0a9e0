"""Schedule files: a distilled time grid as a small JSON file with its provenance.

    {"format": "fastsamplers.schedule", "version": 1, "ts": [...], "num_steps": M,
     "process": "vp_linear", "solver": "ddim", "nfe": 10, "method": "oss", "teacher": {...}, "cost": ...,
     "model": "...", "date": "2026-11-22T20:00:00+00:00", ...}

`load_schedule` validates the grid; `schedules.get_timesteps("file", process, num_steps, path=...)` loads it and
resamples it log-linearly in gamma when num_steps differs from the file's.
"""

from __future__ import annotations

import datetime
import json

import numpy as np

from core import write_json

FORMAT = "fastsamplers.schedule"


def save_schedule(path: str, ts, *, process, solver, nfe: int, method: str, **provenance) -> str:
    """Write `ts` and its provenance (process, solver, NFE, method, and any JSON-serialisable extras such as teacher,
    cost, model or config) to `path` atomically. Returns the path."""
    ts = np.asarray(ts, np.float64)
    _check(ts, path)
    record = {
        "format": FORMAT,
        "version": 1,
        "ts": ts.tolist(),
        "num_steps": int(ts.size - 1),
        "process": getattr(process, "name", process),
        "solver": getattr(solver, "name", solver),
        "nfe": int(nfe),
        "method": method,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **provenance,
    }
    return write_json(path, record, indent=1)


def load_schedule(path: str) -> tuple[np.ndarray, dict]:
    """(ts as a float64 numpy array, the whole record) from a schedule file, validated."""
    with open(path) as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"schedule file {path} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or "ts" not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"schedule file {path} has no 'ts' entry (keys: {keys})")
    ts = np.asarray(record["ts"], np.float64)
    _check(ts, path)
    return ts, record


def _check(ts, path):
    if ts.ndim != 1 or ts.size < 2 or not np.all(np.isfinite(ts)) or not np.all(np.diff(ts) < 0) or ts[-1] < 0:
        raise ValueError(f"schedule {path}: ts must be a finite, strictly decreasing list of >= 2 times >= 0, "
                         f"got {ts.tolist()}")

