"""core.ShardStore: entries round-trip with their identity, a writer killed (an exception, or kill -9 mid-write) leaves
the previous entry or none, an entry of another identity is refused with the keys that differ, and a rerun resumes
from the entries that are there."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastsamplers import core
from fastsamplers.core import shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_entries_round_trip_with_their_identity(tmp_path):
    store = core.ShardStore(str(tmp_path), {"seed": 0, "ts": np.array([1.0, 0.5])})
    assert store.identity == {"seed": 0, "ts": [1.0, 0.5]}  # as JSON gives it back
    assert store.fingerprint == core.fingerprint({"ts": [1.0, 0.5], "seed": 0})  # key order does not matter
    assert store.read("a.npz") is None and store.read("b.json") is None
    store.write("a.npz", {"x": np.arange(4.0), "name": "text"}, {"start": 0, "stop": 4})
    store.write("b.json", record={"value": 1.5})
    a, b = store.read("a.npz"), store.read("b.json")
    np.testing.assert_array_equal(a.arrays["x"], np.arange(4.0))
    assert str(a.arrays["name"]) == "text" and a.record["start"] == 0 and a.record["identity"] == store.identity
    assert b.arrays == {} and b.record["value"] == 1.5 and b.record["fingerprint"] == store.fingerprint
    assert json.load(open(tmp_path / "b.json"))["value"] == 1.5  # a plain JSON file
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:  # a plain .npz, read without pickles
        assert sorted(data.files) == ["name", "record", "x"]
    store.remove("a.npz")
    assert store.read("a.npz") is None
    with pytest.raises(ValueError, match=r"may not set \['fingerprint'\]"):
        store.write("c.json", record={"fingerprint": "mine"})
    with pytest.raises(ValueError, match="holds a record only"):
        store.write("c.json", {"x": np.zeros(2)})
    with pytest.raises(ValueError, match="an .npz or a .json"):
        store.write("c.txt", {"x": np.zeros(2)})
    (tmp_path / "d.json").write_text('{"value": 1')  # a damaged .json entry: core.read_json's sentence names it
    with pytest.raises(ValueError, match="^" + re.escape(f"shard entry {tmp_path / 'd.json'} is not valid JSON: ")):
        store.read("d.json")


def test_another_identity_is_refused_naming_what_differs(tmp_path):
    core.ShardStore(str(tmp_path), {"seed": 0, "grid": "logsnr", "nfe": 10}).write("a.npz", {"x": np.zeros(1)})
    other = core.ShardStore(str(tmp_path), {"seed": 1, "grid": "uniform", "nfe": 10})
    with pytest.raises(ValueError, match=r"a.npz was written by another computation \(it differs in grid: logsnr "
                                         r"there, uniform here; seed: 0 there, 1 here\)"):
        other.read("a.npz")

    def refuse(path, differences, stored, expected):
        return f"{os.path.basename(path)}: {sorted(differences)} {stored[:8]} != {expected[:8]}"

    custom = core.ShardStore(str(tmp_path), {"seed": 2, "grid": "logsnr", "nfe": 10}, refuse=refuse)
    with pytest.raises(ValueError, match=rf"a.npz: \['seed'\] \w{{8}} != {custom.fingerprint[:8]}"):
        custom.read("a.npz")
    # A file that holds no identity (another format) is refused too, never mixed in.
    np.savez(tmp_path / "old.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match="a different fingerprint"):
        other.read("old.npz")


def test_a_writer_killed_by_an_exception_leaves_the_previous_entry(tmp_path, monkeypatch):
    store = core.ShardStore(str(tmp_path), {"run": 1})
    store.write("a.npz", {"x": np.zeros(3)})

    def killed(*args):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write("a.npz", {"x": np.ones(3)})
    monkeypatch.undo()
    np.testing.assert_array_equal(store.read("a.npz").arrays["x"], np.zeros(3))
    assert os.listdir(tmp_path) == ["a.npz"]  # the temporary file is gone


WRITER = """
import sys
import numpy as np
from fastsamplers import core
store = core.ShardStore(sys.argv[1], {"run": 1})
for k in range(10**6):  # 8 MiB entries, rewritten until killed
    store.write("big.npz", {"x": np.full(2**20, float(k))}, {"k": k})
    print(k, flush=True)
"""


def test_kill_9_mid_write_leaves_a_whole_entry(tmp_path):
    """kill -9 of a process that rewrites an 8 MiB entry in a loop: the entry on disk is always a whole one (its
    array and record from one write), whatever the moment of the kill."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # a few writes done, then kill in the middle of later ones
            assert writer.stdout.readline(), writer.stderr.read()
        time.sleep(0.05)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    entry = core.ShardStore(str(tmp_path), {"run": 1}).read("big.npz")
    k = entry.record["k"]
    assert k >= 2 and np.all(entry.arrays["x"] == float(k))
    # Left-over temporary files of the killed write are not entries: a fresh write still works beside them.
    core.ShardStore(str(tmp_path), {"run": 1}).write("big.npz", {"x": np.zeros(1)}, {"k": -1})
    assert shards.read_entry(str(tmp_path / "big.npz")).record["k"] == -1


def test_a_rerun_resumes_from_the_entries_there(tmp_path):
    """The pattern of the runners: compute only the entries not written yet."""
    computed = []

    def run(names):
        store = core.ShardStore(str(tmp_path), {"task": "squares"})
        out = {}
        for n in names:
            entry = store.read(f"{n}.npz")
            if entry is None:
                computed.append(n)
                store.write(f"{n}.npz", {"value": np.asarray(n * n)})
                entry = store.read(f"{n}.npz")
            out[n] = int(entry.arrays["value"])
        return out

    assert run([1, 2]) == {1: 1, 2: 4}
    assert run([1, 2, 3]) == {1: 1, 2: 4, 3: 9}
    assert computed == [1, 2, 3]
