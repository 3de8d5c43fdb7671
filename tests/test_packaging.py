"""The wheel a user builds installs outside the tree, with its three commands and its type markers.

The README tells users to install from a clone (``pip install ".[cpu]"``) or
from a wheel built with ``python -m build`` (or ``pip wheel``): this builds
that wheel and installs it, without dependencies, into a fresh virtual
environment in a temporary folder; the dependencies it needs to start come
from this environment's site-packages, appended after the wheel's own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the tree's files (what a clone holds), so the build writes nothing here.
    src = tmp / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp / "dist")],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("unet_onnx-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + [str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # numpy, onnxruntime ... from here, after the wheel's own packages (a plain path, so this
    # environment's editable install of the project is not picked up).
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, venv


def test_the_wheel_holds_the_three_packages_and_their_markers(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("unet_export", "unet_runtime", "unet_bench"):
        assert f"{package}/__init__.py" in names, package
    assert {"unet_export/py.typed", "unet_runtime/py.typed"} <= set(names)
    assert not [n for n in names if n.startswith("tests/")], "the tests are not part of the wheel"


@pytest.mark.parametrize("command", ["segment-unet", "export-unet", "bench-unet"])
def test_entry_points_run_from_the_installed_wheel(installed, command, tmp_path):
    _, venv = installed
    proc = subprocess.run(
        [str(venv / "bin" / command), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # outside the tree: nothing can come from the clone
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0+unknown" not in proc.stdout and proc.stdout.strip(), proc.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import unet_runtime; print(unet_runtime.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where
