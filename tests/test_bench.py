"""bench-unet smoke runs: JSON schema, table, plot, peers and errors (no timing assertions)."""

import json
import shutil
import sys

import numpy as np
import onnx
import pytest

from tests.conftest import bench_argv, run_cli
from unet_bench.flops import conv_flops
from unet_bench.weights import is_stripped, refill

ROW_KEYS = {
    "name",
    "engine",
    "provider",
    "precision",
    "head",
    "size",
    "batch",
    "device",
    "host",
    "raw_device_s",
    "raw_host_s",
    "setup_s",
    "numerics",
    "peak_rss_mb",
}
STAT_KEYS = {
    "n",
    "median_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "min_ms",
    "ms_per_image",
    "images_per_s",
    "tflops",
}


@pytest.fixture(scope="module")
def full_width_run(tmp_path_factory):
    """One real run: exports the full-width model at 32x32 and times Keras and ORT rows."""
    root = tmp_path_factory.mktemp("bench")
    proc = run_cli(
        "unet_bench.cli",
        "--out",
        str(root / "r"),
        "--size",
        "32",
        "--batch",
        "1",
        "2",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--plot",
        "--save-models",
        str(root / "models"),
    )
    return proc, root


def test_json_table_and_plot(full_width_run):
    proc, root = full_width_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((root / "r.json").read_text())
    assert {"command", "date", "machine", "rows"} <= data.keys()
    assert "versions" in data["machine"] and data["command"].startswith("bench-unet --out")
    names = [(r["name"], r["batch"]) for r in data["rows"]]
    assert (
        ("keras.predict", 1) in names
        and ("keras tf.function", 2) in names
        and ("ort cpu fp32 softmax", 2) in names
    )
    for row in data["rows"]:
        assert ROW_KEYS <= row.keys()
        assert (
            STAT_KEYS <= row["device"].keys()
            and row["device"]["n"] == len(row["raw_device_s"]) == 3
        )
        # every row agrees with Keras fp32: measured on every pixel; one near-tie in a thousand may
        # round the other way on another CPU
        assert row["numerics"]["mask_agreement"] >= 0.999
    ort_rows = [r for r in data["rows"] if r["engine"] == "onnxruntime"]
    assert all(r["host"]["n"] == len(r["raw_host_s"]) >= 3 and r["setup_s"] > 0 for r in ort_rows)
    table = (root / "r.md").read_text()
    assert "| keras.predict | 32 | 1 |" in table and "vs keras.predict" in table
    # Seeded random weights: no confident pixel, and the table says so instead of leaving the column
    # blank.
    assert (
        "% of all (0 confident, 8 img) |" in table
        and "'0 confident': the reference has no pixel" in table
    )
    assert (root / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flops_come_from_the_graph(full_width_run):
    _, root = full_width_run
    model = refill(onnx.load(str(root / "models" / "fp32-softmax-32.onnx")))
    # The reference network: about 494 GFLOP at 512x512; cost scales with H*W.
    assert conv_flops(model, 1, 512, 512) == pytest.approx(494e9, rel=0.01)
    assert conv_flops(model, 2, 256, 256) == conv_flops(model, 1, 512, 512) // 2


def test_stripped_models_are_small_and_refill_deterministically(full_width_run, tmp_path):
    _, root = full_width_run
    path = root / "models" / "fp32-softmax-32.onnx"
    assert path.stat().st_size < 200_000  # 120 MB of weights stripped away
    m = onnx.load(str(path))
    assert is_stripped(m)
    a, b = refill(onnx.load(str(path))), refill(onnx.load(str(path)))
    assert not is_stripped(a)
    assert [i.raw_data for i in a.graph.initializer] == [i.raw_data for i in b.graph.initializer]
    onnx.checker.check_model(a)


def test_models_from_folder_with_refill(full_width_run, tmp_path):
    _, root = full_width_run
    models = tmp_path / "m"
    shutil.copytree(root / "models", models)
    # folders that do not exist yet: created at the first write
    out = tmp_path / "results" / "cpu" / "x"
    proc = run_cli(
        "unet_bench.cli",
        *bench_argv(out, models, size=32, iters=2),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["engine"] for r in rows] == ["onnxruntime"]  # no Keras without exporting


def test_fold_rows_side_by_side(full_width_run, tmp_path):
    _, root = full_width_run
    models = tmp_path / "m"
    shutil.copytree(root / "models", models)
    # No fp32-softmax-32-fold_phase.onnx in the folder: bench-unet derives it from the unfolded
    # model.
    proc = run_cli(
        "unet_bench.cli",
        *bench_argv(tmp_path / "x", models, "--fold-upsample", "auto", "phase", size=32, iters=2),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "x.json").read_text())["rows"]}
    assert set(rows) == {"ort cpu fp32 softmax", "ort cpu fp32 softmax fold=phase"}
    # Same function: the folded model's probabilities match the reference's to fp32 rounding.
    # measured 1.6e-6; 3x that
    assert rows["ort cpu fp32 softmax fold=phase"]["numerics"]["rel_l2"] < 5e-6
    proc = run_cli(
        "unet_bench.cli",
        *bench_argv(
            tmp_path / "y", models, "--precision", "int8", "--fold-upsample", "phase", size=32
        ),
    )
    assert proc.returncode == 1 and "int8-softmax-32-fold_phase.onnx' is missing" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "30"], "--size 30 is not allowed"),
        (["--batch", "0"], "every batch size must be >= 1"),
        (["--iters", "0"], "--iters 0 must be >= 1"),
        (["--models-from", "/nonexistent"], "is not a folder"),
    ],
)
def test_bad_flags_exit_1_with_one_line(tmp_path, args, message):
    proc = run_cli("unet_bench.cli", "--out", str(tmp_path / "r"), *args)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("bench-unet: error:")
        and message in proc.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_out_prefix_is_checked_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for out, message in (
        (
            tmp_path / "afile" / "sub" / "r",
            "cannot be created: '{}' is a file".format(tmp_path / "afile"),
        ),
        (tmp_path / "adir", "is a folder; name a file inside it"),
    ):
        proc = run_cli("unet_bench.cli", "--out", str(out), "--size", "32")
        assert proc.returncode == 1 and message in proc.stderr.strip().splitlines()[-1], (
            proc.stderr[-500:]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"] and not any(
        (tmp_path / "adir").iterdir()
    )


def test_a_discarded_run_removes_the_folders_it_created(tmp_path):
    from unet_bench.report import Results

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "other.txt").write_text("not ours")
    for prefix in (tmp_path / "new" / "deeper" / "r", tmp_path / "kept" / "r"):
        results = Results(
            prefix, {"command": "t", "date": "d", "machine": {"cpu": "c", "versions": {}}}
        )
        results._write(complete=False)  # the first row's write creates the folders
        assert prefix.with_suffix(".json").is_file()
        results.discard()
    # "new" went; "kept" and its file stayed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["other.txt"]


def test_bad_choice_is_a_usage_error(tmp_path):
    proc = run_cli("unet_bench.cli", "--out", str(tmp_path / "r"), "--providers", "tpu")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.slow  # builds the full-width Keras model twice
def test_keras_peer_is_the_seed_model_at_the_timed_size(tmp_path):
    import numpy as np

    from unet_bench.peers import keras_model

    a, b = keras_model(32, seed=0), keras_model(64, seed=0)
    # The reference fixed-size model, one per timed size, with the same seeded weights at every size.
    assert a.input_shape == (None, 32, 32, 3) and b.input_shape == (None, 64, 64, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    other = keras_model(32, seed=1)
    assert not np.array_equal(other.get_weights()[0], a.get_weights()[0])
    other.save_weights(str(tmp_path / "w.weights.h5"))
    loaded = keras_model(32, seed=0, weights=str(tmp_path / "w.weights.h5"))
    assert all(
        np.array_equal(x, y) for x, y in zip(loaded.get_weights(), other.get_weights(), strict=True)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--keras", "on"], "--keras on needs TensorFlow"),
        ([], "exporting needs tensorflow"),
    ],
)
def test_missing_tensorflow_is_a_clear_error(tmp_path, monkeypatch, capsys, args, message):
    from unet_bench import cli

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # find_spec now reports it absent
    assert cli.main(["--out", str(tmp_path / "r"), "--size", "32", "-q", *args]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("bench-unet: error:") and message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--torch", "--torch-compile"])
def test_missing_torch_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys, flag):
    from unet_bench import cli

    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec now reports it absent
    assert cli.main(["--out", str(tmp_path / "r"), "--size", "32", "-q", flag]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip().splitlines()[-1].startswith("bench-unet: error:")
        and "--torch needs PyTorch" in err
    )
    assert list(tmp_path.iterdir()) == []


def test_torch_peer_is_the_same_network(full_width_run, tmp_path):
    """The PyTorch peer carries the ONNX model's weights: same probabilities, and its rows come one at a time."""
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (the PyTorch peer is optional)"
    )
    import numpy as np
    import onnxruntime as ort

    from unet_bench.peers import torch_from_onnx
    from unet_bench.torch_bench import torch_rows
    from unet_runtime import images as im

    _, root = full_width_run
    model = refill(onnx.load(str(root / "models" / "fp32-softmax-32.onnx")))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    x = im.to_model_input(images, (0, 0, 0), (1, 1, 1), "nhwc")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [32, 32, 3]
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]

    net = torch_from_onnx(model, "fp32", channels_last=False, device="cpu")
    with torch.inference_mode():
        probs = net(
            torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), "softmax"
        ).numpy()
    probs = probs.transpose(0, 2, 3, 1)
    assert np.linalg.norm(probs - ref) / np.linalg.norm(ref) < 1e-5

    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    rows = torch_rows(
        ref_model_path=path,
        images=images,
        size=32,
        batch=2,
        flops=10**9,
        warmup=0,
        iters=2,
        ref_probs=list(ref),
        device="cpu",
        fold=True,
    )
    row = next(rows)  # handed out before any compile would start
    assert row.name == "torch fp32 channels_last" and row.batch == 2 and row.device["n"] == 2
    assert row.numerics["mask_agreement"] >= 0.99 and row.numerics["agreement_images"] == 2
    folded = next(rows)  # the decoder fold is the same function in PyTorch too
    assert (
        folded.name == "torch fp32 channels_last fold=convtranspose"
        and folded.numerics["mask_agreement"] >= 0.99
    )
    net = torch_from_onnx(model, "fp32", channels_last=False, device="cpu", fold=True)
    with torch.inference_mode():
        folded_probs = net(
            torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), "softmax"
        ).numpy()
    assert np.linalg.norm(folded_probs.transpose(0, 2, 3, 1) - ref) / np.linalg.norm(ref) < 1e-5
    assert next(rows, None) is None


def test_ab_times_the_torch_twin_beside_the_onnx_model(full_width_run, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (the PyTorch peer is optional)")
    from unet_bench import ab
    from unet_export.fold import fold_upsample_convs

    _, root = full_width_run
    model = refill(onnx.load(str(root / "models" / "fp32-softmax-32.onnx")))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    res = ab.run(
        [str(path)], rounds=2, warmup=1, size=32, threads=None, keras_weights=None, torch_peer=True
    )
    rows = {r["name"]: r for r in res["rows"]}
    assert (
        list(rows) == [str(path), "torch fp32 eager"]
        and len(rows["torch fp32 eager"]["raw_s"]) == 2
    )
    # same weights, same function
    assert rows["torch fp32 eager"]["mask_agreement_vs_first"] >= 0.99
    # A folded graph's Conv weights do not map onto the twin: refused, not silently mis-assigned.
    folded, _ = fold_upsample_convs(model, "phase")
    onnx.save(folded, str(tmp_path / "f.onnx"))
    with pytest.raises(ValueError, match="Conv nodes, the reference network 25"):
        ab.run(
            [str(tmp_path / "f.onnx")],
            rounds=1,
            warmup=0,
            size=32,
            threads=None,
            keras_weights=None,
            torch_peer=True,
        )


def test_cuda_graph_rows_warm_up_past_the_capture(narrow_export, monkeypatch):
    """ORT captures a CUDA graph on a shape's third run: a graph row's timed runs must start after it."""
    from unet_bench import runner
    from unet_runtime import ProviderConfig
    from unet_runtime.segmenter import CUDA_GRAPH_CAPTURE_RUNS

    warmups = []
    real = runner.time_calls
    monkeypatch.setattr(
        runner,
        "time_calls",
        lambda fn, warmup, iters, **kw: (
            warmups.append(warmup) or real(fn, warmup=warmup, iters=iters, **kw)
        ),
    )
    model = narrow_export(input_size=(32, 32), head="argmax").path
    images = [np.zeros((32, 32, 3), np.uint8)]
    device_warmups = []
    for config in (ProviderConfig(cuda_graph=True), ProviderConfig()):
        warmups.clear()
        runner.bench_ort(
            model,
            provider="cpu",
            config=config,
            head="argmax",
            precision="fp32",
            size=32,
            batch=1,
            images=images,
            ref_probs=None,
            warmup=0,
            iters=1,
            flops=None,
        )
        device_warmups.append(warmups[0])  # the device timing comes first in a row
    assert device_warmups == [CUDA_GRAPH_CAPTURE_RUNS, 0] and CUDA_GRAPH_CAPTURE_RUNS == 3


def test_rows_name_the_fold_auto_stands_for():
    """``auto`` becomes the precision's fold (export-unet's default), so rows and model files say which graph ran,
    and ``auto`` beside the form it stands for is one row, not two."""
    from argparse import Namespace

    from unet_bench.cli import Variant, variants

    args = Namespace(
        precision=["fp32", "fp16", "int8"],
        head=["argmax"],
        input_dtype=["uint8"],
        fold_upsample=["auto", "convtranspose"],
        pad_channels=["off"],
    )
    assert variants(args) == [
        Variant("fp32", "argmax", "uint8", "off"),
        Variant("fp32", "argmax", "uint8", "convtranspose"),
        Variant("fp16", "argmax", "uint8", "convtranspose"),
        Variant("int8", "argmax", "uint8", "phase_nhwc"),
        Variant("int8", "argmax", "uint8", "convtranspose"),
    ]
    # The reference graph keeps the plain name (models saved before the fp16 default changed still load).
    assert Variant("fp16", "argmax", "uint8").file_name(512) == "fp16-argmax-512-u8.onnx"
    v = Variant("fp16", "argmax", "uint8", "convtranspose", pad=True)
    assert v.file_name(512) == "fp16-argmax-512-u8-fold_convtranspose-pad8.onnx"
    assert v.label("cuda", "graph") == "ort cuda fp16 argmax u8-in fold=convtranspose pad8 [graph]"
    assert v.plain == Variant("fp16", "argmax", "uint8")


def test_three_photos_and_their_labels(full_width_run, tmp_path):
    """A user timing on three photos: no calibration minimum, the images repeated to fill the batch, every
    row scored over the three distinct ones and against the labels (VOC palette PNGs)."""
    from PIL import Image

    from unet_runtime.images import voc_palette

    _, root = full_width_run
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"p{i}.jpg"
        )
        label = Image.fromarray(rng.integers(0, 21, (40, 48), dtype=np.uint8), mode="P")
        label.putpalette(voc_palette().flatten().tolist())
        label.save(tmp_path / "lab" / f"p{i}.png")
    proc = run_cli(
        "unet_bench.cli",
        *bench_argv(
            tmp_path / "r",
            root / "models",
            "--images",
            tmp_path / "img",
            "--labels",
            tmp_path / "lab",
            "--agreement-images",
            "5",
            size=32,
            batch=(4,),
        ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    # Three distinct photos, however many copies filled the batch: each counted once, and said.
    assert row["batch"] == 4 and row["numerics"]["agreement_images"] == 3
    assert 0 <= row["numerics"]["mean_iou"] <= 1 and row["numerics"]["pixels"] == 3 * 32 * 32
    assert "holds 3 images: they were repeated" in (tmp_path / "r.md").read_text()
    (tmp_path / "lab" / "p2.png").unlink()
    proc = run_cli(
        "unet_bench.cli",
        *bench_argv(
            tmp_path / "s",
            root / "models",
            "--images",
            tmp_path / "img",
            "--labels",
            tmp_path / "lab",
            size=32,
        ),
    )
    assert proc.returncode == 1 and "p2.png' is missing" in proc.stderr.strip().splitlines()[-1]
