"""segment-unet end to end: palette masks, overlays, skipped files, exit codes."""

import numpy as np
from PIL import Image

from tests.conftest import run_cli


def test_segments_images_and_skips_bad_ones(narrow_export, tmp_path):
    model = narrow_export(input_size=(32, 32), head="argmax").path
    rng = np.random.default_rng(0)
    good = []
    for i, (h, w) in enumerate([(40, 50), (32, 32), (20, 64)]):
        p = tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        good.append((p, (h, w)))
    gray = tmp_path / "gray.png"
    # converted to RGB, fine
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(gray)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    proc = run_cli(
        "unet_runtime.cli",
        str(model),
        *[str(p) for p, _ in good],
        str(gray),
        str(broken),
        "--out",
        str(out),
        "--overlay",
        "--batch",
        "2",
        "--providers",
        "cpu",
    )
    assert proc.returncode == 1, proc.stderr  # one file was skipped
    assert "skipped" in proc.stderr and "broken.png" in proc.stderr
    assert "segmented 4/5 images on CPUExecutionProvider" in proc.stderr
    for p, (h, w) in good:
        mask = Image.open(out / f"{p.stem}.png")
        assert mask.mode == "P" and mask.size == (w, h)
        assert np.asarray(mask).max() < 5
        assert Image.open(out / f"{p.stem}.overlay.png").size == (w, h)
    assert not (out / "broken.png").exists()


def test_bad_model_and_bad_batch(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    proc = run_cli(
        "unet_runtime.cli", str(tmp_path / "nope.onnx"), str(img), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
        "segment-unet: error: model file"
    )
    proc = run_cli(
        "unet_runtime.cli",
        str(tmp_path / "nope.onnx"),
        str(img),
        "--out",
        str(tmp_path / "o"),
        "--batch",
        "0",
    )
    assert proc.returncode == 1 and "--batch 0 must be >= 1" in proc.stderr


def _write_images(folder, names, rng, size=(24, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return [folder / n for n in names]


def test_a_folder_stands_for_its_images(narrow_export, tmp_path):
    model = narrow_export(input_size=(32, 32), head="argmax").path
    a, b = _write_images(tmp_path / "photos", ["a.png", "b.JPG"], np.random.default_rng(1))
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "sub").mkdir()  # not recursed into
    _write_images(tmp_path / "photos" / "sub", ["c.png"], np.random.default_rng(2))
    out = tmp_path / "out"
    # The folder, plus one of its files again under another spelling: each image is segmented once.
    proc = run_cli(
        "unet_runtime.cli",
        str(model),
        str(tmp_path / "photos"),
        str(tmp_path / "photos" / ".." / "photos" / "a.png"),
        "--out",
        str(out),
        "--providers",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "segmented 2/2 images" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_inputs_that_would_overwrite_each_other_stop_before_any_work(narrow_export, tmp_path):
    model = narrow_export(input_size=(32, 32), head="argmax").path
    rng = np.random.default_rng(3)
    (x_png,) = _write_images(tmp_path / "a", ["x.png"], rng)
    (x_jpg,) = _write_images(tmp_path / "b", ["x.jpg"], rng)
    (x_overlay,) = _write_images(tmp_path / "b", ["x.overlay.png"], rng)
    out = tmp_path / "out"
    for inputs, clash in (
        ([x_png, x_jpg], "x.png"),
        ([x_png, x_overlay, "--overlay"], "x.overlay.png"),
    ):
        proc = run_cli(
            "unet_runtime.cli",
            str(model),
            *map(str, inputs),
            "--out",
            str(out),
            "--providers",
            "cpu",
        )
        last = proc.stderr.strip().splitlines()[-1]
        assert (
            proc.returncode == 1
            and f"would both be written as {clash}" in last
            and "separate --out" in last
        ), last
        assert not out.exists()  # nothing segmented, nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("unet_runtime.cli", str(model), str(empty), "--out", str(out))
    assert proc.returncode == 1 and "holds no .png/.jpg" in proc.stderr.strip().splitlines()[-1]


def test_a_mask_that_cannot_be_written_stops_the_run_and_leaves_nothing(
    narrow_export, tmp_path, monkeypatch, capsys
):
    from unet_runtime import cli

    model = narrow_export(input_size=(32, 32), head="argmax").path
    images = _write_images(tmp_path / "in", ["a.png", "b.png"], np.random.default_rng(4))
    out = tmp_path / "out"

    def disk_full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", disk_full)  # the rename step of the atomic write
    assert (
        cli.main([str(model), *map(str, images), "--out", str(out), "--providers", "cpu", "-q"])
        == 1
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        "cannot write" in last
        and "a.png" in last
        and "No space left on device" in last
        and "--out" in last
    )
    assert list(out.iterdir()) == []  # no mask, no temporary file


def test_probabilities_are_written_beside_the_masks(narrow_export, tmp_path):
    from unet_runtime import Segmenter

    model = narrow_export(input_size=(32, 32), head="softmax").path
    paths = _write_images(
        tmp_path / "in", ["a.png", "b.png"], np.random.default_rng(4), size=(40, 50)
    )
    out = tmp_path / "out"
    proc = run_cli(
        "unet_runtime.cli",
        str(model),
        *map(str, paths),
        "--out",
        str(out),
        "--probabilities",
        "--batch",
        "2",
        "--providers",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Segmenter(model, providers="cpu") as seg:
        for p in paths:
            image = np.asarray(Image.open(p).convert("RGB"))
            probs = np.load(out / f"{p.stem}.probs.npy")
            assert probs.dtype == np.float32 and probs.shape == (40, 50, 5)
            # the same engine on the same image: measured equal to the bit
            np.testing.assert_array_equal(probs, seg.predict_proba(image))
            np.testing.assert_array_equal(
                np.asarray(Image.open(out / f"{p.stem}.png")), seg.predict(image)
            )
    assert sorted(f.name for f in out.iterdir()) == ["a.png", "a.probs.npy", "b.png", "b.probs.npy"]


def test_probabilities_of_an_argmax_model_are_refused_before_any_work(narrow_export, tmp_path):
    model = narrow_export(input_size=(32, 32), head="argmax").path
    (img,) = _write_images(tmp_path / "in", ["a.png"], np.random.default_rng(5))
    proc = run_cli(
        "unet_runtime.cli", str(model), str(img), "--out", str(tmp_path / "out"), "--probabilities"
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "--head argmax" in last and "drop --probabilities" in last, (
        proc.stderr
    )
    assert not (tmp_path / "out").exists()


def test_an_out_folder_that_cannot_be_made_is_one_error_line(narrow_export, tmp_path):
    model = narrow_export(input_size=(32, 32), head="argmax").path
    (img,) = _write_images(tmp_path / "in", ["a.png"], np.random.default_rng(6))
    (tmp_path / "afile").write_text("x")
    proc = run_cli(
        "unet_runtime.cli", str(model), str(img), "--out", str(tmp_path / "afile" / "masks")
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        proc.returncode == 1
        and last.startswith("segment-unet: error: cannot create --out folder")
        and "choose another --out" in last
    ), proc.stderr


def test_info_describes_the_model_without_images(narrow_export, tmp_path):
    import onnx

    result = narrow_export(input_size=(32, 48), head="argmax", input_dtype="uint8")
    proc = run_cli("unet_runtime.cli", "--info", str(result.path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "input      input: uint8 (N, 32, 48, 3) NHWC, 32x48" in out
    assert "output     mask: uint8 (N, 32, 48), argmax head" in out and "precision  fp32" in out
    assert "inside the graph" in out and "classes    5: class_0, class_1" in out
    digest = onnx.load(str(result.path)).metadata_props
    sha = {p.key: p.value for p in digest}["unet.weights_sha256"]
    assert f"weights    trained, sha256 {sha[:16]}..." in out and "exported   with python" in out
    assert "graph      reference graph (Resize + Concat decoder)" in out
    # fp16 exports fold the decoder by default; padding is counted (conv1-1's input, the argmax
    # head).
    fast = onnx.load(
        str(
            narrow_export(
                input_size=(32, 32), head="argmax", precision="fp16", pad_channels=True
            ).path
        )
    )
    assert {p.key: p.value for p in fast.metadata_props}[
        "unet.graph"
    ] == "decoder fold convtranspose (4 stages), 2 convs padded to channel multiples of 8"
    # A model without export-unet metadata is described from its graph, and says so.
    bare = onnx.load(str(narrow_export(input_size=(32, 32)).path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    proc = run_cli("unet_runtime.cli", "--info", str(tmp_path / "bare.onnx"))
    assert (
        proc.returncode == 0
        and "no export-unet metadata" in proc.stdout
        and "softmax head" in proc.stdout
    )


def test_images_and_out_are_required_without_info(tmp_path):
    proc = run_cli("unet_runtime.cli", str(tmp_path / "m.onnx"))
    assert proc.returncode == 2 and "required: images, --out (or --info MODEL alone)" in proc.stderr
    proc = run_cli("unet_runtime.cli", "--info", str(tmp_path / "m.onnx"))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
        "segment-unet: error: model file"
    )
