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
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(gray)  # converted to RGB, fine
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    proc = run_cli("unet_runtime.cli", str(model), *[str(p) for p, _ in good], str(gray), str(broken),
                   "--out", str(out), "--overlay", "--batch", "2", "--providers", "cpu")
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
    proc = run_cli("unet_runtime.cli", str(tmp_path / "nope.onnx"), str(img), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("segment-unet: error: model file")
    proc = run_cli("unet_runtime.cli", str(tmp_path / "nope.onnx"), str(img), "--out", str(tmp_path / "o"), "--batch", "0")
    assert proc.returncode == 1 and "--batch 0 must be >= 1" in proc.stderr
