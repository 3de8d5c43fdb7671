"""The two library packages ship ``py.typed``: applications type-check against their annotations.

``make lint`` runs mypy over them (and ruff and pyflakes over every file), so
a wrong annotation fails CI there; this test pins the marker files that make
the annotations visible to users at all.
"""

from pathlib import Path


def test_library_packages_are_marked_typed():
    import unet_export
    import unet_runtime

    for package in (unet_export, unet_runtime):
        assert (Path(package.__file__).parent / "py.typed").is_file(), package.__name__
