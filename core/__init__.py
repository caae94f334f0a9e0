"""Plumbing shared by every layer, with no numerics: the name registry behind every `get_*` lookup and atomic file
writes. It imports no other package of the project, so any of them may import it."""

from fastsamplers.core.atomic import write_atomic, write_json
from fastsamplers.core.registry import Registry

__all__ = ["Registry", "write_atomic", "write_json"]
