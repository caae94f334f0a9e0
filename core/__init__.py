"""Plumbing shared by every layer, with no numerics: the name registry behind every `get_*` lookup, atomic file
writes and the JSON reader beside them, the fingerprinted shard store that makes runs resumable, and fixed-size
batches; and the type aliases of the project's signatures (`core.typing`, imported by name, not here). It imports no
other package of the project, so any of them may import it."""

from fastsamplers.core.atomic import read_json, write_atomic, write_json, write_npz
from fastsamplers.core.batches import pad_rows, padded_batches
from fastsamplers.core.registry import Registry
from fastsamplers.core.shards import ShardStore, fingerprint, sha256_file

__all__ = ["Registry", "ShardStore", "fingerprint", "pad_rows", "padded_batches", "read_json", "sha256_file",
           "write_atomic", "write_json", "write_npz"]
