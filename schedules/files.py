"""Schedule files: a distilled time grid as a small JSON file with its provenance.

    {"format": "fastsamplers.schedule", "version": 1, "ts": [...], "num_steps": M,
     "process": "vp_linear", "solver": "ddim", "nfe": 10, "method": "oss", "teacher": {...}, "cost": ...,
     "model": "...", "date": "2026-11-22T20:00:00+00:00", ...}

`load_schedule` validates the grid; `schedules.get_timesteps("file", process, num_steps, path=...)` loads it and
resamples it log-linearly in gamma when num_steps differs from the file's.

A learned sampler (`schedules.learn`) is a solver *and* its grid, saved together by `save_learned`:

    {"format": "fastsamplers.learned", "version": 1, "ts": [...], "num_steps": M, "process": ..., "method": "olss",
     "solver": {"name": "linear_table", "options": {"weights": [[...]], "grid": [...], ...}}, "nfe": M, ...}

It is a schedule file too (its "ts" load through the "file" grid); `samplers.get_solver("file", path=...)` (or
"olss", "solver_schedule", which also check the method) rebuilds its solver. Options that are arrays (DPM-Solver-v3's
statistics) or flat dicts of arrays (an AMED predictor's parameters) are stored beside the JSON in
`<path stem>.arrays.npz` (no pickles), the option recorded as {"array": key, "file": name, "sha256": ...} (a dict:
{"arrays": {name: key}, ...}) and read back as the array or the dict. This layer only writes and validates the
record: building a solver belongs to the samplers above it.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

import os

from fastsamplers.core import read_json, sha256_file, write_json, write_npz

if TYPE_CHECKING:
    import jax

    from fastsamplers.core.typing import HostArrayLike
    from fastsamplers.schedules.processes import Process

FORMAT = "fastsamplers.schedule"
LEARNED_FORMAT = "fastsamplers.learned"


class NamedSolver(Protocol):
    """What a learned-sampler file needs of its solver, a `samplers.Solver` (a dataclass of the layer above, which
    this one does not import): its registered name, its count of model calls, and the registry spec it is rebuilt
    from."""

    name: str

    def nfe(self, num_steps: int) -> int: ...

    def spec(self) -> dict[str, Any]: ...


def save_schedule(path: str, ts: HostArrayLike, *, process: Process | str, solver: NamedSolver | str | dict[str, Any],
                  nfe: int, method: str, **provenance: Any) -> str:
    """Write `ts` and its provenance (process, solver, NFE, method, and any JSON-serialisable extras such as teacher,
    cost, model or config) to `path` atomically. Returns the path."""
    return write_json(path, schedule_record(ts, process=process, solver=solver, nfe=nfe, method=method, path=path,
                                            **provenance), indent=1)


def schedule_record(ts: HostArrayLike, *, process: Process | str, solver: NamedSolver | str | dict[str, Any],
                    nfe: int, method: str, path: str = "(unsaved)", **provenance: Any) -> dict[str, Any]:
    """The record of a schedule file (`save_schedule` writes it); `path` names it in a bad grid's error. `solver` is
    recorded by its name (a solver or a name), or as it is (a learned sampler's {name, options} record)."""
    ts = np.asarray(ts, np.float64)
    _check(ts, path)
    return {
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


def save_learned(path: str, solver: NamedSolver, ts: Sequence[float] | np.ndarray | jax.Array, *,
                 process: Process | str, method: str, **provenance: Any) -> str:
    """Write a learned sampler, the pair (solver, ts) that `schedules.learn` returns, with its provenance (teacher,
    calibration, cost, model, ...) to `path` atomically; `samplers.get_solver("file", path=path)` and
    `get_timesteps("file", process, M, path=path)` load it back. Returns the path."""
    arrays: dict[str, np.ndarray] = {}
    record = learned_record(solver, ts, process=process, method=method, arrays=arrays, **provenance)
    if arrays:
        arrays_path = os.path.splitext(path)[0] + ".arrays.npz"
        write_npz(arrays_path, arrays)
        digest = sha256_file(arrays_path)
        stored = {"file": os.path.basename(arrays_path), "sha256": digest}
        for key in arrays:
            name, _, inner = key.partition("/")
            if inner:  # one entry of a dict of arrays
                entry = record["solver"]["options"][name] or dict(stored, arrays={})
                entry["arrays"][inner] = key
                record["solver"]["options"][name] = entry
            else:
                record["solver"]["options"][name] = dict(stored, array=key)
    return write_json(path, record, indent=1)


def learned_record(solver: NamedSolver, ts: Sequence[float] | np.ndarray | jax.Array, *,
                   process: Process | str, method: str, arrays: dict[str, np.ndarray] | None = None,
                   **provenance: Any) -> dict[str, Any]:
    """The record of a learned-sampler file (`save_learned` writes it; a resumable run stores it itself). Options
    that are arrays, or flat dicts of arrays (stored as "option/key"), go into `arrays` (the caller stores them;
    their place in the record holds None meanwhile);
    without `arrays` such a solver is refused (save it with `save_learned`)."""
    if not callable(getattr(solver, "spec", None)) or not isinstance(getattr(solver, "name", None), str):
        raise TypeError(f"save_learned stores a samplers.Solver (with a name and a spec), got {type(solver).__name__}")
    spec = solver.spec()  # ValueError where no registry entry rebuilds the solver
    options = {}
    for name, value in spec["options"].items():
        entries = {name: value} if _is_array(value) else (
            {f"{name}/{k}": v for k, v in value.items()} if isinstance(value, dict) and value and all(
                _is_array(v) for v in value.values()) else {})
        if entries:
            if arrays is None:
                raise ValueError(f"{spec['name']} holds array option {name!r}: save it with schedules.save_learned, "
                                 f"which stores the arrays beside the JSON")
            arrays.update({key: np.asarray(v) for key, v in entries.items()})
            value = None
        options[name] = _jsonable(value)
    return schedule_record(ts, process=process, solver={"name": spec["name"], "options": options},
                           nfe=solver.nfe(len(ts) - 1), method=method, format=LEARNED_FORMAT, **provenance)


def read_learned(path: str, method: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(ts, record) of a learned-sampler file, validated (and, with `method`, checked to hold that method)."""
    ts, record = load_schedule(path)
    solver = record.get("solver")
    if record.get("format") != LEARNED_FORMAT or not isinstance(solver, dict) or not isinstance(
            solver.get("name"), str) or not isinstance(solver.get("options"), dict):
        raise ValueError(f"{path} is not a learned-sampler file (format {LEARNED_FORMAT!r} with a 'solver' entry "
                         f"holding 'name' and 'options'; save one with schedules.save_learned)")
    if method is not None and record.get("method") != method:
        raise ValueError(f"{path} holds a sampler learned by {record.get('method')!r}, not {method!r}")
    for name, value in solver["options"].items():
        if isinstance(value, dict) and "array" in value:
            solver["options"][name] = _stored_array(path, value)
        elif isinstance(value, dict) and isinstance(value.get("arrays"), dict):
            solver["options"][name] = {k: _stored_array(path, dict(value, array=key))
                                       for k, key in value["arrays"].items()}
    return ts, record


def _stored_array(path: str, entry: dict[str, Any]) -> np.ndarray:
    """An array option stored beside the learned file at `path` (`save_learned`), checked against its digest."""
    arrays_path = os.path.join(os.path.dirname(path), os.path.basename(str(entry.get("file"))))
    if not os.path.isfile(arrays_path):
        raise ValueError(f"{path} keeps its array option {entry.get('array')!r} in {arrays_path}, which is missing")
    if entry.get("sha256") and sha256_file(arrays_path) != entry["sha256"]:
        raise ValueError(f"{arrays_path} does not match the digest recorded in {path}: the arrays were changed")
    with np.load(arrays_path, allow_pickle=False) as data:
        if entry["array"] not in data:
            raise ValueError(f"{arrays_path} has no array {entry['array']!r} (it has {sorted(data.files)})")
        return np.asarray(data[entry["array"]])


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("jax")


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_schedule(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(ts as a float64 numpy array, the whole record) from a schedule file, validated."""
    record = read_json(path, what="schedule file")
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

