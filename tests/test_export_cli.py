"""export-unet end to end: the default full-size export, and every bad input."""

import json
import os

import numpy as np
import onnx
import pytest

from tests.conftest import run_cli
from unet_export import ExportConfig, VerificationError, export_model
from unet_export import verify as verify_mod
from unet_export.graph import FORBIDDEN_OPS, op_histogram
from unet_runtime.atomic import atomic_write_bytes

KERNEL_WEIGHTS = 30_194_688  # the reference model's 30,202,133 parameters minus 7,445 biases


def _cli(*args):
    return run_cli("unet_export.cli", *map(str, args))


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("full")
    # In a child, through export-unet's main: what `make model` runs, with TensorFlow in its own
    # process as for a user (tfside.py); the child also says whether it imported TensorFlow itself.
    result, err = _export_in_child_mode(
        "--out", out_dir / "model.onnx", "--report", out_dir / "report.json", tmp_path=out_dir
    )
    return result, err, out_dir


@pytest.mark.fullsize
def test_default_export_is_the_reference_model_verified(default_export):
    result, err, out_dir = default_export
    # export-unet never imported TensorFlow; its child did the TensorFlow work, and said so
    assert result == {"code": 0, "tensorflow_here": False}, err[-3000:]
    assert "UNTRAINED" in err
    assert "TensorFlow's process peaked at" in err and "and has exited" in err
    model = onnx.load(str(out_dir / "model.onnx"))
    report = json.loads((out_dir / "report.json").read_text())
    assert report["params"] == 30_202_133 and report["verification"]["passed"]
    assert report["tensorflow"] == "child process"
    assert [c["batch"] for c in report["verification"]["cases"]] == [1, 2]
    assert all(c["rel_l2"] <= verify_mod.FP32_REL_L2 for c in report["verification"]["cases"])
    conv_w = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    kernels = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.name in conv_w)
    assert kernels == KERNEL_WEIGHTS
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [512, 512, 3]
    hist = op_histogram(model)
    assert hist["Conv"] == 25 and hist["Resize"] == 4 and not FORBIDDEN_OPS & hist.keys()
    assert report["graph"][0]["ops"] != hist  # the histogram before clean-up is reported too
    # Independent of the export's own verification: the reference network built here with the
    # export's seed, against the written file, on an image of its own.
    import onnxruntime as ort

    from unet_export import build_vgg19_unet

    keras_model = build_vgg19_unet((512, 512, 3), 21, seed=0)
    x = np.random.default_rng(77).random((1, 512, 512, 3), dtype=np.float32)
    want = np.asarray(keras_model(x, training=False))
    got = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"\nfull-size export vs a Keras model built here: rel L2 {rel:.2e}")
    # only summation order differs: measured 9.9e-8 (2-core Xeon, oneDNN in Keras); 3x that
    assert rel <= 3e-7


def test_help_lists_every_flag_with_defaults():
    proc = _cli("--help")
    assert proc.returncode == 0
    for flag in (
        "--out",
        "--weights",
        "--encoder-weights",
        "--input-size",
        "--dynamic-size",
        "--layout",
        "--head",
        "--precision",
        "--opset",
        "--no-verify",
        "--report",
        "--class-names",
        "--seed",
        "--model",
        "--custom-objects",
    ):
        assert flag in proc.stdout
    assert "default: 17" in proc.stdout and "default: softmax" in proc.stdout
    flat = " ".join(proc.stdout.split())  # argparse wraps lines anywhere
    assert (
        "(default: 512 512, or a --model's own size)" in flat and "(default: 0.0 0.0 0.0)" in flat
    )


@pytest.mark.parametrize(
    "module",
    [
        "unet_export.cli",
        "unet_runtime.cli",
        "unet_bench.cli",
        "unet_bench.ab",
        "unet_bench.fixture",
    ],
)
def test_help_shows_only_defaults_that_say_something(module):
    proc = run_cli(module, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout
    # argparse would print these for every unset flag and every switch.
    assert "(default: None)" not in proc.stdout and "(default: False)" not in proc.stdout
    # Several values are shown as typed on the command line, not as a Python list.
    assert "(default: [" not in " ".join(proc.stdout.split())
    # ...while a flag with a real default keeps it.
    assert "default: " in proc.stdout


@pytest.mark.parametrize(
    "module, prog",
    [
        ("unet_export.cli", "export-unet"),
        ("unet_runtime.cli", "segment-unet"),
        ("unet_bench.cli", "bench-unet"),
        ("unet_export", "export-unet"),
        ("unet_runtime", "segment-unet"),
        ("unet_bench", "bench-unet"),
    ],
)
def test_version_is_the_installed_distribution(module, prog):
    # `python -m PACKAGE` is the console script too (a venv whose bin/ is not on PATH).
    import importlib.metadata as md

    proc = run_cli(module, "--version")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"{prog} {md.version('unet-onnx')}"


def test_usage_error_exits_2(tmp_path):
    proc = _cli("--out", tmp_path / "m.onnx", "--head", "sigmoid")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input-size", "500", "512"], "use 496 or 512"),
        (["--num-classes", "0"], "--num-classes 0 must be an integer >= 1"),
        (["--opset", "9"], "--opset 9 is not supported; choose 13 to 18"),
        (["--weights", "missing.keras"], "does not exist"),
        (["--class-names", "missing.txt"], "cannot be read"),
    ],
)
def test_bad_input_one_line_exit_1_nothing_written(tmp_path, args, message):
    out = tmp_path / "m.onnx"
    proc = _cli("--out", out, *args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("export-unet: error:") and message in last, last
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folders_are_made_only_for_a_verified_model(tmp_path, confident_weights):
    cfg = dict(
        input_size=(32, 32), num_classes=5, width_multiplier=0.125, weights=str(confident_weights)
    )
    out, report = tmp_path / "models" / "v1" / "m.onnx", tmp_path / "reports" / "m.json"
    export_model(ExportConfig(**cfg), out, report_path=report)
    assert out.is_file() and json.loads(report.read_text())["output"] == str(out)
    # An export that fails (here: weights of another class count) leaves no folder behind.
    bad = tmp_path / "bad" / "m.onnx"
    proc = _cli(
        "--out",
        bad,
        "--weights",
        str(confident_weights),
        "--num-classes",
        "21",
        "--input-size",
        "32",
        "32",
    )
    assert proc.returncode == 1 and not (tmp_path / "bad").exists(), proc.stderr[-1000:]
    # A folder that cannot be made is refused before any work.
    (tmp_path / "afile").write_text("x")
    proc = _cli("--out", tmp_path / "afile" / "sub" / "m.onnx")
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        proc.returncode == 1 and f"cannot be created: '{tmp_path / 'afile'}' is a file" in last
    ), last


def test_a_failed_write_removes_the_folders_it_made(tmp_path, monkeypatch):
    from unet_export import ExportError, pipeline

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "atomic_write_bytes", disk_full)
    with pytest.raises(ExportError, match="No space left on device"):
        pipeline._write(tmp_path / "a" / "b" / "m.onnx", b"x", "--out")
    assert list(tmp_path.iterdir()) == []


def test_weights_of_another_class_count_fail_before_writing(tmp_path):
    from unet_export import build_vgg19_unet

    w = tmp_path / "five.weights.h5"
    build_vgg19_unet((32, 32, 3), 5).save_weights(w)
    proc = _cli(
        "--out",
        tmp_path / "m.onnx",
        "--input-size",
        "32",
        "32",
        "--weights",
        w,
        "--num-classes",
        "21",
    )
    assert proc.returncode == 1
    last = proc.stderr.splitlines()[-1]
    assert (
        "--num-classes 21" in last and "has 5 classes" in last and "pass --num-classes 5" in last
    ), last
    assert not (tmp_path / "m.onnx").exists()


def test_class_count_comes_from_the_weights_file(tmp_path, confident_weights):
    import onnx

    from unet_runtime.model_info import ModelInfo

    cfg = ExportConfig(input_size=(32, 32), width_multiplier=0.125, weights=str(confident_weights))
    assert cfg.num_classes is None and cfg.resolved().num_classes == 5
    assert ExportConfig().resolved().num_classes == 21  # no weights file: Pascal VOC
    result = export_model(cfg, tmp_path / "m.onnx")
    props = {
        p.key: p.value for p in onnx.load(result.path, load_external_data=False).metadata_props
    }
    assert (
        ModelInfo.from_metadata(props).num_classes == 5
        and result.report["config"]["num_classes"] == 5
    )


def test_failed_verification_writes_nothing(tmp_path, monkeypatch, confident_weights):
    # A tolerance no real export can meet: the gate must fail and stop the write.
    monkeypatch.setitem(verify_mod.LOGITS_REL_L2, "fp32", 0.0)
    out, rep = tmp_path / "m.onnx", tmp_path / "r.json"
    cfg = ExportConfig(
        input_size=(32, 32), num_classes=5, width_multiplier=0.125, weights=str(confident_weights)
    )
    with pytest.raises(VerificationError, match="would have been needed") as info:
        export_model(cfg, out, report_path=rep)
    assert info.value.report["cases"][0]["rel_l2"] > 0
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "m.onnx", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o644


def test_atomic_write_never_sets_the_umask(tmp_path, monkeypatch):
    """Setting the umask to read it is process-wide and races with other threads creating files."""
    monkeypatch.setattr(
        os, "umask", lambda *_: pytest.fail("atomic_write_bytes changed the process umask")
    )
    atomic_write_bytes(tmp_path / "m.onnx", b"x")
    assert (tmp_path / "m.onnx").read_bytes() == b"x"


def test_atomic_write_interrupted_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# ----------------------------------------------------------------------------- TensorFlow's process
_CHILD_EXPORT = """
import json, sys
from unet_export.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "tensorflow_here": "tensorflow" in sys.modules}))
"""


def _export_in_child_mode(*flags, tmp_path):
    """export-unet with TensorFlow in its own process; whether this process imported TensorFlow."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CHILD_EXPORT, *map(str, flags)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, UNET_EXPORT_IN_PROCESS="0"),
        cwd=tmp_path,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.exports
def test_own_network_and_frames_with_tensorflow_in_its_own_process(tmp_path):
    """--model is loaded and checked in TensorFlow's process; --resize-in-graph keeps it until verify."""
    from unet_bench.networks import deeplab_v3

    model = tmp_path / "deeplab.keras"
    deeplab_v3(64).save(model)
    out = tmp_path / "m.onnx"
    result, err = _export_in_child_mode(
        "--model", model, "--out", out, "--resize-in-graph", "--head", "argmax", tmp_path=tmp_path
    )
    assert result == {"code": 0, "tensorflow_here": False}, err[-3000:]
    assert "frame 1080x1920" in err and out.exists()
    out.unlink()
    result, err = _export_in_child_mode(
        "--model", model, "--out", out, "--num-classes", "9", tmp_path=tmp_path
    )
    assert result["code"] == 1 and "--num-classes 9 does not match model 'deeplabv3'" in err
    assert not out.exists()
