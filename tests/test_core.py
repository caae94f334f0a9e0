"""core/: the registry behind every get_* lookup and the atomic writer."""

import dataclasses
import json
import os
import stat

import pytest

from fastsamplers import core


@dataclasses.dataclass(frozen=True)
class Square:
    side: float = 1.0
    label: str = dataclasses.field(default="sq")


def circle(process, *, radius, filled=False):
    return (process, radius, filled)


def test_registry_builds_and_checks_names_and_options():
    shapes = core.Registry("shape", {"square": Square}, reserved=("process",))
    shapes.register("circle")(circle)
    assert shapes.build("square", side=2.0) == Square(2.0)
    assert shapes.build("circle", "p", radius=3) == ("p", 3, False)
    assert shapes.options("square") == {"side": 1.0, "label": "sq"}
    with pytest.raises(ValueError, match=r"unknown shape 'hexagon'; valid names: \['circle', 'square'\]"):
        shapes.build("hexagon")
    with pytest.raises(ValueError, match=r"shape 'square' has no option\(s\) \['sid'\]; valid options: \['label', "
                                         r"'side'\]"):
        shapes.build("square", sid=2.0)
    with pytest.raises(ValueError, match=r"shape 'circle' needs the option\(s\) \['radius'\]"):
        shapes.build("circle", "p")
    with pytest.raises(ValueError, match="registered twice"):
        shapes.register("circle")(circle)
    with pytest.raises(ValueError, match="unknown shape 3"):
        shapes.lookup(3)


def test_every_get_function_uses_the_one_registry():
    from fastsamplers.experiments.train import couplings
    from fastsamplers.experiments.train import data
    from fastsamplers import models
    import fastsamplers.models.mlp  # noqa: F401
    from fastsamplers import models
    import fastsamplers.models.networks  # noqa: F401
    from fastsamplers import samplers
    from fastsamplers import schedules

    for registry in (samplers.SOLVERS, schedules.PROCESSES, schedules.GRIDS, models.networks.NETWORKS,
                     models.mlp.ACTIVATIONS, data.DATASETS, couplings.COUPLINGS):
        assert isinstance(registry, core.Registry)


def test_atomic_writes_leave_whole_files_with_plain_permissions(tmp_path):
    path = str(tmp_path / "sub" / "record.json")
    core.write_json(path, {"a": [1, 2]})
    assert json.load(open(path)) == {"a": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    core.write_atomic(path, b"x", mode=0o600)
    assert open(path, "rb").read() == b"x" and stat.S_IMODE(os.stat(path).st_mode) == 0o600

    class Unwritable(str):
        def encode(self, *args):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        core.write_atomic(path, Unwritable("y"))
    assert open(path, "rb").read() == b"x"  # the old file is intact
    assert os.listdir(tmp_path / "sub") == ["record.json"]  # and no temporary file is left


def test_read_json_names_the_file_when_it_is_missing_or_broken(tmp_path):
    """The one JSON reader (pretrained configs, schedule files): its errors name the file and what it is."""
    path = str(tmp_path / "s.json")
    assert core.read_json(core.write_json(path, {"ts": [1.0, 0.5]})) == {"ts": [1.0, 0.5]}
    with pytest.raises(FileNotFoundError, match=r"^missing schedule file .*none\.json$"):
        core.read_json(str(tmp_path / "none.json"), what="schedule file")
    core.write_atomic(path, '{"ts": [1.0,')
    with pytest.raises(ValueError, match=rf"^file {path} is not valid JSON: "):
        core.read_json(path)
    core.write_atomic(path, b"\xff\xfe{}")
    with pytest.raises(ValueError, match=rf"^schedule file {path} is not valid JSON: "):
        core.read_json(path, what="schedule file")
