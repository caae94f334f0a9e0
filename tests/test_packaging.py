"""`pip install .` adds exactly one top-level import name, `fastsamplers`: the wheel is built from this checkout,
installed into a fresh virtual environment, and imported from a folder that holds a user's own `models/` and `core/`
packages, which keep their names.

Network-free: the wheel is built without build isolation (the test environment's setuptools) and installed without
dependencies; the fresh environment borrows the test environment's dependencies (jax, flax, ...) through PYTHONPATH,
which does not run that environment's .pth files, so this checkout's editable install is not seen there."""

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ("core", "schedules", "models", "samplers", "experiments")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(out), ROOT], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (path,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    return path


def test_the_wheel_holds_one_top_level_name_and_every_subpackage(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fastsamplers"}
    packages = {os.path.dirname(name) for name in names if name.endswith("/__init__.py")}
    on_disk = {"fastsamplers/" + os.path.relpath(folder, ROOT) for top_folder in SUBPACKAGES
               for folder, _, files in os.walk(os.path.join(ROOT, top_folder)) if "__init__.py" in files}
    assert packages == on_disk | {"fastsamplers"}  # a new subpackage must be listed in pyproject.toml
    assert "fastsamplers/py.typed" in names
    assert any(name.startswith("fastsamplers/experiments/results/oss_vp/") for name in names)  # schedule files


def test_installed_beside_a_users_own_models_and_core(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                              "--quiet", wheel], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    project = tmp_path / "project"
    for package in ("models", "core"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"WHOSE = 'the users {package}'\n")
    probe = textwrap.dedent("""
        import models, core
        import fastsamplers
        from fastsamplers import samplers, schedules
        from fastsamplers.models import GaussianMixture
        assert models.WHOSE == "the users models" and core.WHOSE == "the users core", (models, core)
        assert fastsamplers.__file__.startswith(SITE), fastsamplers.__file__
        assert samplers.__file__.startswith(SITE), samplers.__file__
        process = schedules.get_process("vp_linear")
        print("OK", samplers.get_solver("deis_tab").name)
    """)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"], JAX_PLATFORMS="cpu")
    run = subprocess.run([python, "-c", f"SITE = {site!r}\n" + probe], cwd=project, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("OK deis_tab")
