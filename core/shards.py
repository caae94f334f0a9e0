"""A resumable store of a computation's pieces ("entries"): each one a file written atomically and stamped with the
fingerprint of everything that decides its content, so that a rerun reuses what a killed run finished and refuses,
with a sentence naming what differs, what another computation wrote.

An entry is an .npz (named arrays, and its record as a JSON string under `record`) or a .json file (the record
itself); the extension of its name decides. Every record holds `identity` (what decides the content, as JSON gives
it back) and `fingerprint` (the SHA-256 of that identity's canonical JSON). Entries are read without unpickling.

The FID runner keeps its shards' feature statistics here, the learned-sampler runner one sampler file per NFE, BOSS
straightening its teacher pool.

Example:
    >>> import os, tempfile
    >>> store = ShardStore(tempfile.mkdtemp(), {"seed": 0})
    >>> store.read("a.npz") is None
    True
    >>> _ = store.write("a.npz", {"x": np.arange(3)}, {"start": 0})
    >>> entry = store.read("a.npz")
    >>> entry.arrays["x"].tolist(), entry.record["start"]
    ([0, 1, 2], 0)
    >>> ShardStore(store.directory, {"seed": 1}).read("a.npz")
    Traceback (most recent call last):
    ...
    ValueError: ...a.npz was written by another computation (it differs in seed: 0 there, 1 here); ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import numpy as np

from fastsamplers.core.atomic import jsonable, read_json, write_atomic, write_npz

RECORD_KEY = "record"  # the .npz member holding an entry's record
_STAMP = ("identity", "fingerprint")


def fingerprint(identity: Any) -> str:
    """The SHA-256 (hex) of `identity`'s canonical JSON (sorted keys; arrays as lists)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=jsonable).encode()).hexdigest()


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Entry:
    """An entry as read back: its arrays (empty for a .json entry) and its record (with identity and fingerprint)."""

    arrays: dict[str, np.ndarray]
    record: dict[str, Any]


Refusal = Callable[[str, "dict | None", "str | None", str], str]


def _refusal(path, differences, stored, expected):
    return f"{path} was written by another computation ({describe(differences)}); remove it or use another folder"


def describe(differences: dict | None) -> str:
    """'it differs in a: 1 there, 2 here; b: ...' of `ShardStore.differences`, or 'a different fingerprint'."""
    if not differences:
        return "a different fingerprint"
    return "it differs in " + "; ".join(f"{k}: {there} there, {here} here" for k, (there, here) in
                                        differences.items())


class ShardStore:
    """Entries of one computation in `directory`, each stamped with `identity`'s fingerprint.

    Args:
      directory: the folder (created on the first write).
      identity: JSON-serialisable; everything that decides the entries' content.
      refuse: (path, differences, stored fingerprint or None, this fingerprint) -> the sentence of the ValueError
        raised when an entry holds another identity; `differences` is {key: (stored value, this value)} of the
        top-level keys that differ, or None when the entry does not hold its identity.
    """

    def __init__(self, directory: str, identity: Any, *, refuse: Refusal | None = None) -> None:
        self.directory = directory
        self.identity = json.loads(json.dumps(identity, default=jsonable))  # as a record gives it back
        self.fingerprint = fingerprint(self.identity)
        self._refuse = refuse or _refusal

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def read(self, name: str) -> Entry | None:
        """The entry `name`, or None when it is not written yet; ValueError (the `refuse` sentence) when another
        computation wrote it."""
        path = self.path(name)
        if not os.path.isfile(path):
            return None
        entry = read_entry(path)
        if entry.record.get("fingerprint") != self.fingerprint:
            raise ValueError(self._refuse(path, self.differences(entry.record), entry.record.get("fingerprint"),
                                          self.fingerprint))
        return entry

    def write(self, name: str, arrays: dict | None = None, record: dict | None = None) -> str:
        """Write the entry `name` atomically (a killed writer leaves the previous file or none); returns its path."""
        record = dict(record or {})
        clash = sorted(set(record) & set(_STAMP))
        if clash:
            raise ValueError(f"an entry's record may not set {clash}: the store stamps them")
        record.update(identity=self.identity, fingerprint=self.fingerprint)
        return write_entry(self.path(name), arrays or {}, record)

    def remove(self, name: str) -> None:
        """Delete the entry `name` if it exists."""
        if os.path.isfile(self.path(name)):
            os.remove(self.path(name))

    def differences(self, record: dict) -> dict | None:
        """{key: (stored, this)} of the identity keys in which `record` differs from this store's, or None when the
        record holds no identity."""
        stored = record.get("identity")
        if not isinstance(stored, dict) or not isinstance(self.identity, dict):
            return None
        keys = sorted(set(stored) | set(self.identity), key=str)
        return {k: (stored.get(k), self.identity.get(k)) for k in keys if stored.get(k) != self.identity.get(k)}


def write_entry(path: str, arrays: dict, record: dict) -> str:
    """An entry file from arrays and a record, atomically: .npz (arrays and the record as JSON) or .json."""
    if path.endswith(".json"):
        if arrays:
            raise ValueError(f"{path}: a .json entry holds a record only, not arrays {sorted(arrays)}")
        return write_atomic(path, json.dumps(record, indent=1, default=jsonable))
    if not path.endswith(".npz"):
        raise ValueError(f"{path}: an entry is an .npz or a .json file")
    if RECORD_KEY in arrays:
        raise ValueError(f"{path}: the array name {RECORD_KEY!r} is the record's")
    return write_npz(path, {**arrays, RECORD_KEY: json.dumps(record, default=jsonable)})


def read_entry(path: str) -> Entry:
    """The arrays and record of an entry file (no fingerprint check; nothing is unpickled)."""
    if path.endswith(".json"):
        record = read_json(path, what="shard entry")
        return Entry({}, record if isinstance(record, dict) else {})
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != RECORD_KEY}
        record = json.loads(str(data[RECORD_KEY])) if RECORD_KEY in data.files else {}
    return Entry(arrays, record if isinstance(record, dict) else {})
