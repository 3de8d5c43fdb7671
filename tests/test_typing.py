"""Static checks: the two library packages ship ``py.typed`` and their annotations must hold; no file has an
undefined name or a dead import.

Applications embedding ``unet_runtime`` (and scripts driving ``unet_export``)
type-check against these annotations, so a wrong one is a bug they inherit.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_accepts_the_library_packages(tmp_path):
    from mypy import api

    # onnxruntime, tensorflow, tf2onnx ... ship no stubs: their imports are Any, ours are checked.
    out, err, status = api.run(
        [
            "--ignore-missing-imports",
            "--check-untyped-defs",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path),
            str(ROOT / "runtime"),
            str(ROOT / "export"),
        ]
    )
    assert status == 0, out + err


def test_library_packages_are_marked_typed():
    import unet_export
    import unet_runtime

    for package in (unet_export, unet_runtime):
        assert (Path(package.__file__).parent / "py.typed").is_file(), package.__name__


def test_pyflakes_finds_nothing():
    """Undefined names (a crash on a rarely taken branch), unused imports and variables, in every Python file."""
    import io

    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter

    out, err = io.StringIO(), io.StringIO()
    found = checkRecursive(
        [str(ROOT / d) for d in ("export", "runtime", "benchmarks", "tests")], Reporter(out, err)
    )
    assert found == 0 and not err.getvalue(), out.getvalue() + err.getvalue()
