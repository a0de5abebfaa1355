"""The container image's wheels: installed distributions repacked faithfully, the runtime
dependency closure, and `edgistry cluster compose` run from a non-editable install (a wheel in
a fresh venv, no source tree in reach), whose wheel folder installs offline."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from edgistry.cluster.wheels import WheelError, copy_wheels, repack, requirement_closure

ROOT = Path(__file__).resolve().parent.parent
MARKER = b"\n# installed-copy marker: only the venv's installed file has this line\n"


def _record(zf: zipfile.ZipFile) -> dict[str, tuple[str, str]]:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    return {row[0]: (row[1], row[2]) for row in csv.reader(io.StringIO(zf.read(name).decode()))}


@pytest.mark.parametrize("project", ["tomli_w", "msgspec"])  # pure, and with a compiled module
def test_repack_holds_the_installed_files_with_a_true_record(tmp_path: Path, project: str):
    """A repacked wheel holds every installed file under site-packages (no byte code, no
    installer bookkeeping) with its exact bytes, a RECORD whose hashes and sizes are right,
    the installed WHEEL tags in its name, and the same bytes when made twice."""
    dist = metadata.distribution(project)
    wheel = repack(dist, tmp_path / "a")
    again = repack(dist, tmp_path / "b")
    assert wheel.read_bytes() == again.read_bytes()
    tags = [line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")]
    assert tags[0].split("-")[0] in wheel.name and tags[0].split("-")[-1] in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        expected = {str(f) for f in dist.files if not str(f).startswith("..") and "__pycache__" not in str(f)
                    and Path(str(f)).name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
        record = _record(zf)
        assert names - {n for n in names if n.endswith("/RECORD")} == expected
        for name in expected:
            data = zf.read(name)
            assert data == Path(dist.locate_file(name)).read_bytes(), name
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert record[name] == (f"sha256={digest}", str(len(data))), name


def test_closure_follows_markers_and_leaves_extras_out():
    """The closure of Edgistry's runtime requirements reaches transitive ones (aiohttp's
    multidict, yarl) and leaves out extras (pytest) and requirements whose marker is false."""
    reqs = [Requirement(r) for r in metadata.requires("aiohttp") or []] + [Requirement("click>=8.1"),
                                                                           Requirement("pytest; extra == 'test'"),
                                                                           Requirement("click; python_version < '3'")]
    names = {d.metadata["Name"].lower() for d in requirement_closure(reqs, set())}
    assert {"multidict", "yarl", "propcache", "click"} <= names
    assert "pytest" not in names


@pytest.mark.parametrize("requirement, message", [
    ("click<1", "is required but click"),
    ("no-such-project-here>=1", "is required but not installed"),
])
def test_closure_refuses_what_is_not_installed_as_required(requirement: str, message: str):
    """A requirement that the installed version does not meet, or that is not installed, is a
    WheelError naming it, not a silently incomplete image."""
    with pytest.raises(WheelError, match=message):
        requirement_closure([Requirement(requirement)], set())


def test_copy_wheels_needs_exactly_one_edgistry_wheel(tmp_path: Path):
    """A --wheel-dir with two Edgistry wheels is refused (which would pip pick?)."""
    source = tmp_path / "in"
    source.mkdir()
    for name in ("edgistry-0.1.0-py3-none-any.whl", "edgistry-0.2.0-py3-none-any.whl"):
        (source / name).write_bytes(b"")
    with pytest.raises(WheelError, match="exactly one edgistry wheel"):
        copy_wheels(source, tmp_path / "out")


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kw)
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.mark.slow
def test_compose_from_a_non_editable_install(tmp_path: Path):
    """`edgistry cluster compose` run by a wheel installed in a fresh venv (no source tree on its
    path) puts the venv's installed Edgistry into the project, byte for byte (a line added to an
    installed file shows up), and the project's wheel folder alone installs it in a clean venv
    with pip --no-index."""
    built = tmp_path / "built"
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                             "node_modules", "*.so", ".pytest_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(built), str(src)])
    (wheel,) = built.glob("edgistry-*.whl")
    shutil.rmtree(src)  # no source tree left to fall back on

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])  # dependencies: this environment's
    _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([str(venv / "bin/python"), "-c", "import edgistry; print(edgistry.__file__)"], env=env,
                 cwd=tmp_path).stdout.strip()
    installed = Path(where).parent
    assert installed.is_relative_to(venv), where
    marked = installed / "cluster" / "__init__.py"
    marked.write_bytes(marked.read_bytes() + MARKER)

    project = tmp_path / "net"
    _run([str(venv / "bin/edgistry"), "cluster", "compose", "--nodes", "1", "--dir", str(project)], env=env,
         cwd=tmp_path)
    (image_wheel,) = (project / "image" / "wheels").glob("edgistry-*.whl")
    with zipfile.ZipFile(image_wheel) as zf:
        assert zf.read("edgistry/cluster/__init__.py").endswith(MARKER)
        for name in zf.namelist():
            if name.startswith("edgistry/") and name.endswith(".py"):
                assert zf.read(name) == (installed / name.removeprefix("edgistry/")).read_bytes(), name
    dockerfile = (project / "image" / "Dockerfile").read_text()
    assert "--no-index --find-links /wheels" in dockerfile
    assert str(ROOT) not in dockerfile + (project / "docker-compose.yml").read_text()

    clean = tmp_path / "clean"
    _run([sys.executable, "-m", "venv", str(clean)])
    _run([str(clean / "bin/python"), "-m", "pip", "install", "-q", "--no-index", "--find-links",
          str(project / "image" / "wheels"), "edgistry"], env=env)
    show = "import edgistry.cluster, inspect; print(inspect.getsource(edgistry.cluster))"
    shown = _run([str(clean / "bin/python"), "-c", show], env=env, cwd=tmp_path).stdout
    assert shown.strip().endswith(MARKER.decode().strip())
    _run([str(clean / "bin/edgistry"), "--help"], env=env, cwd=tmp_path)


def test_image_python_comes_from_version_specific_wheels_not_stable_abi_ones():
    """A stable-ABI wheel (cp38-abi3) names only its oldest CPython: the image's Python is
    that of the wheels built for one CPython version (a cp38 base could not install them)."""
    from edgistry.cluster.wheels import _python_of

    abi3 = Path("PyNaCl-1.6.2-cp38-abi3-manylinux_2_34_x86_64.whl")
    exact = Path("lmdb-3.0.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert _python_of([abi3, exact]) == (3, 11)
    assert _python_of([exact, abi3]) == (3, 11)
    assert _python_of([abi3]) == sys.version_info[:2]
