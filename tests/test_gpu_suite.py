"""bench-unet gpu-suite, dry-run on the CPU with a narrow network at tiny sizes: every step runs and writes its file.

The suite is what a machine with a GPU runs once to re-measure every GPU
figure of the docs; this test keeps it from breaking between such machines.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


#: The suite's plumbing is under test, not its figures: a narrow network exports in a fraction of the time.
NARROW = 0.125


def _export_here(out, *flags):
    """export-unet's main in this process (six TensorFlow imports fewer than a child per model), narrow."""
    import unet_export.pipeline

    export_model = unet_export.pipeline.export_model

    def narrow(config, *args, **kwargs):
        return export_model(dataclasses.replace(config, width_multiplier=NARROW), *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(unet_export.pipeline, "export_model", narrow)
        proc = run_cli("unet_export.cli", "--out", out, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from unet_bench.gpu_suite import prepare

    folder = tmp_path_factory.mktemp("suite-models")
    return folder, prepare(folder, size=32, export=_export_here)


def test_prepare_writes_small_weight_free_models(prepared):
    import onnx

    from unet_bench.weights import is_stripped

    folder, written = prepared
    assert sorted(written) == sorted(
        [
            "fp32-softmax-32.onnx",
            "fp16-softmax-32.onnx",
            "fp16-argmax-32.onnx",
            "fp16-argmax-32-u8.onnx",
            "frames/plain.onnx",
            "frames/graph.onnx",
        ]
    )
    for name in written:
        assert is_stripped(onnx.load(str(folder / name)))
        # The weights are gone: a GPU host receives kilobytes (the full network's 30 M too).
        assert (folder / name).stat().st_size < 200_000, name


def test_the_whole_suite_runs_on_the_cpu(prepared, tmp_path, monkeypatch):
    folder, _ = prepared
    monkeypatch.chdir(ROOT)  # the tests step runs tests/test_gpu.py from the clone
    out = tmp_path / "dry"
    argv = ["--models-from", folder, "--out", out, "--providers", "cpu", "--size", "32"]
    argv += ["--batch", "1", "2", "--frames", "64x48", "100x60", "--tile-image", "96"]
    argv += ["--iters", "2", "--warmup", "0", "--torch", "off", "--budget-s", "900"]
    proc = run_cli("unet_bench.gpu_suite", *argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "dry.json").read_text())["steps"]
    assert list(summary) == ["tests", "matrix", "frames", "tiles", "kernels", "tensorrt"]
    for name, step in summary.items():
        assert step["status"] in ("ok", "not run"), (name, step)
    # tests: pytest ran tests/test_gpu.py and, without a GPU, every test skipped naming why.
    log = (tmp_path / "dry-tests.txt").read_text()
    assert "test_gpu.py" in log and "needs onnxruntime-gpu and a CUDA device" in log
    # matrix: the reference graph and the default fold, padded and not, at both batches.
    rows = json.loads((tmp_path / "dry-matrix.json").read_text())["rows"]
    names = {(r["name"], r["batch"]) for r in rows}
    for fold in ("", " fold=convtranspose"):
        for pad in ("", " pad8"):
            for batch in (1, 2):
                assert (f"ort cpu fp16 argmax u8-in{fold}{pad}", batch) in names, names
    assert all(r["numerics"]["agreement_images"] == 8 for r in rows if r.get("numerics"))
    frames = json.loads((tmp_path / "dry-frames.json").read_text())["rows"]
    assert {r["frame"] for r in frames} == {"64x48", "100x60"}
    assert {r["way"] for r in frames} >= {"host resize, numpy", "resize in graph"}
    tiles = json.loads((tmp_path / "dry-tiles.json").read_text())
    assert tiles["image"] == [96, 96] and tiles["windows"] > 1
    assert "TensorRT: NOT AVAILABLE" in (tmp_path / "dry-tensorrt.txt").read_text()
    assert "TensorRT: NOT AVAILABLE" in (tmp_path / "dry.md").read_text()


def test_bad_suite_flags_write_nothing(tmp_path):
    proc = run_cli(
        "unet_bench.gpu_suite", "--models-from", tmp_path / "none", "--out", tmp_path / "x"
    )
    assert proc.returncode == 1 and "make it with --prepare" in proc.stderr
    assert not list(tmp_path.iterdir())
