"""GPU numerics (CUDA EP): run where onnxruntime-gpu sees a CUDA device, skipped cleanly elsewhere.

The models are full-size graphs with deterministic, confident weights
(unet_bench.weights.refill): CPU fp32 of the same graph is the reference
(and CPU fp32 equals Keras, see test_export_parity). They are exported here
when TensorFlow is installed, or read from ``UNET_GPU_MODELS`` (a folder
written by ``bench-unet --save-models``) on a GPU host without TensorFlow.
"""

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

# fp32 with TF32 off against CPU fp32. Measured on an H100 (2026-11-25,
# benchmarks/results/h100-2026-11-25-exact-fp32-probe.txt): logits differ by rel L2 3.3e-6 whatever
# the head scale; probabilities by 3.0e-6 with plain weights, but 1.9e-5 with the x40-sharpened head
# the mask tests need (the softmax amplifies summation-order differences). So this test uses plain
# weights; the sharpened ones serve the mask-agreement tests only.
EXACT_REL_L2 = 1e-5
MASK_MIN = 0.99
# File name -> export settings (the --models-from names of bench-unet; no fold, no padding: the
# tests apply those rewrites themselves where they test them).
GPU_MODELS = {
    "fp32-softmax-512.onnx": {"precision": "fp32", "head": "softmax"},
    "fp16-softmax-512.onnx": {"precision": "fp16", "head": "softmax"},
    "fp16-argmax-512.onnx": {"precision": "fp16", "head": "argmax"},
    "fp16-argmax-512-u8.onnx": {"precision": "fp16", "head": "argmax", "input_dtype": "uint8"},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The folder holding every GPU_MODELS file: ``UNET_GPU_MODELS``, or exported here (needs TensorFlow)."""
    if os.environ.get("UNET_GPU_MODELS"):
        root = Path(os.environ["UNET_GPU_MODELS"])
        missing = [n for n in GPU_MODELS if not (root / n).is_file()]
        if missing:
            pytest.fail(
                f"UNET_GPU_MODELS={str(root)!r} lacks {missing}: write them with "
                "bench-unet --save-models DIR --precision fp32 fp16 --head softmax argmax "
                "--input-dtype float32 uint8 --fold-upsample off"
            )
        return root
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip(
            "the GPU tests need their models and TensorFlow is not installed: install the 'export' extra to export them here, "
            "or set UNET_GPU_MODELS to a folder written by bench-unet --save-models"
        )
    from unet_export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("gpu_models")
    for name, settings in GPU_MODELS.items():
        export_model(ExportConfig(fold_upsample="off", verify=False, **settings), root / name)
    return root


def _load(root: Path, name: str, head_scale: float = 40.0):
    """``name`` from ``root`` with seeded weights (a stripped file is refilled, an exported one re-seeded)."""
    import onnx

    from unet_bench.weights import refill, strip

    m = onnx.load(str(root / name))
    return refill(strip(m), head_scale=head_scale)


@pytest.fixture(scope="module")
def models(source, tmp_path_factory):
    import onnx

    root = tmp_path_factory.mktemp("gpu")
    out = {}
    for name in ("fp32-softmax-512.onnx", "fp16-softmax-512.onnx", "fp16-argmax-512.onnx"):
        onnx.save(_load(source, name), str(root / name))
        out[name] = root / name
    onnx.save(_load(source, "fp32-softmax-512.onnx", head_scale=1.0), str(root / "plain.onnx"))
    out["plain"] = root / "plain.onnx"
    return out


@pytest.fixture(scope="module")
def reference(models):
    from unet_runtime import Segmenter

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(2)]
    with Segmenter(models["fp32-softmax-512.onnx"], providers="cpu") as seg:
        return imgs, seg.predict_proba(imgs)


def _graph_segmenter(path):
    """A Segmenter on the CUDA provider alone (no silent CPU fallback) with CUDA graphs on."""
    from unet_runtime import ProviderConfig, Segmenter

    return Segmenter(path, providers=["cuda"], strict=True, config=ProviderConfig(cuda_graph=True))


def _confident_agreement(ref, mask):
    part = np.partition(ref, -2, axis=-1)
    conf = (part[..., -1] - part[..., -2]) >= 0.05
    return float((mask[conf] == ref.argmax(-1)[conf]).mean()), int(conf.sum())


def test_cuda_exact_fp32_matches_cpu(models, reference):
    from unet_runtime import ProviderConfig, Segmenter

    imgs, _ = reference
    with Segmenter(models["plain"], providers="cpu") as seg:
        ref = seg.predict_proba(imgs)
    with Segmenter(
        models["plain"], providers=["cuda"], strict=True, config=ProviderConfig(exact=True)
    ) as seg:
        assert seg.providers[0] == "CUDAExecutionProvider"
        probs = seg.predict_proba(imgs)
    for r, p in zip(ref, probs, strict=True):
        rel = np.linalg.norm(p - r) / np.linalg.norm(r)
        print(f"exact fp32 CUDA vs CPU: rel L2 {rel:.2e}")
        assert rel <= EXACT_REL_L2


@pytest.mark.parametrize(
    "name, config",
    [
        ("fp32-softmax-512.onnx", {}),
        ("fp16-softmax-512.onnx", {}),
        ("fp16-argmax-512.onnx", {}),
        ("fp16-argmax-512.onnx", {"cuda_graph": True}),
    ],
)
def test_tf32_and_fp16_masks_agree_on_confident_pixels(models, reference, name, config):
    from unet_runtime import ProviderConfig, Segmenter

    imgs, ref = reference
    with Segmenter(
        models[name], providers=["cuda"], strict=True, config=ProviderConfig(**config)
    ) as seg:
        masks = seg.predict(imgs)
        again = seg.predict(imgs)  # buffers reused (and the CUDA graph replayed)
    for r, m, m2 in zip(ref, masks, again, strict=True):
        agree, n = _confident_agreement(r, m)
        print(f"{name} {config}: agreement {agree:.4%} on {n} confident pixels of {m.size}")
        assert n > 0.2 * m.size and agree >= MASK_MIN
        np.testing.assert_array_equal(m, m2)


def test_cuda_graph_serves_every_batch_shape(models, reference):
    """Batch 2, then 1, then 2 again on one graph-enabled Segmenter: ORT replays a captured graph on the buffers
    it was captured with, so each input shape needs a graph of its own (gpu_graph_id); with a shared id the
    batch-1 call would return stale buffers.

    A batch-1 mask is compared with the reference, not bit for bit with the same image's batch-2 mask: cuDNN
    may pick other kernels for another batch size, and fp16 near-ties then flip (seen on an H200, 2026-11-26:
    166 of 262,144 pixels, benchmarks/results/h200-2026-11-26-gpu-tests.txt). Stale buffers would show as the other image's mask, far below MASK_MIN."""

    imgs, ref = reference
    with _graph_segmenter(models["fp16-argmax-512.onnx"]) as seg:
        first = seg.predict(imgs)
        # capture, replays, new input
        runs = [seg.predict(imgs[1]) for _ in range(3)] + [seg.predict(imgs[0])]
        last = seg.predict(imgs)
    for r, m in zip(ref, first, strict=True):
        agree, n = _confident_agreement(r, m)
        assert n > 0.2 * m.size and agree >= MASK_MIN
    for m in runs[1:3]:  # same shape, same kernels: the replays repeat the capture exactly
        np.testing.assert_array_equal(m, runs[0])
    # runs[3]: the replayed graph must read the new input
    for r, m, batch2 in ((ref[1], runs[0], first[1]), (ref[0], runs[3], first[0])):
        agree, n = _confident_agreement(r, m)
        print(
            f"batch-1 graph replay: agreement {agree:.4%} on {n} confident pixels; "
            f"{int((m != batch2).sum())} pixels differ from batch 2"
        )
        assert n > 0.2 * m.size and agree >= MASK_MIN
    for m, f in zip(last, first, strict=True):
        np.testing.assert_array_equal(m, f)


def test_warmup_then_another_thread_gets_the_same_masks(models, reference):
    """warmup() on this thread captures its graphs; ORT keeps CUDA graphs per calling thread, so a second
    thread runs its first calls uncaptured and captures its own on the same device buffers: every mask must
    still be the one this thread got."""
    import threading

    imgs, ref = reference
    with _graph_segmenter(models["fp16-argmax-512.onnx"]) as seg:
        timings = seg.warmup(batch_sizes=(1, 2))
        print(
            "warmup seconds per run:", {b: [round(t, 4) for t in ts] for b, ts in timings.items()}
        )
        here = [seg.predict(imgs[i % 2]) for i in range(4)] + [seg.predict(imgs)]
        there: list = []
        worker = threading.Thread(
            target=lambda: there.extend(
                [seg.predict(imgs[i % 2]) for i in range(4)] + [seg.predict(imgs)]
            )
        )
        worker.start()
        worker.join(timeout=300)
    assert not worker.is_alive() and len(there) == 5
    for r, m in zip(ref, here[4], strict=True):
        agree, n = _confident_agreement(r, m)
        assert n > 0.2 * m.size and agree >= MASK_MIN
    for a, b in zip(here[:4], there[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(here[4], there[4], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def u8_variants(source, tmp_path_factory):
    """The uint8-input fp16 argmax model, plain and with the GPU rewrites (fold convtranspose + channel padding)."""
    import onnx

    from unet_export.fold import fold_upsample_convs
    from unet_export.pad import pad_channels

    root = tmp_path_factory.mktemp("gpu_u8")
    plain = _load(source, "fp16-argmax-512-u8.onnx")
    onnx.save(plain, str(root / "plain.onnx"))
    rewritten, _ = pad_channels(fold_upsample_convs(plain, "convtranspose")[0])
    onnx.save(rewritten, str(root / "rewritten.onnx"))
    return root / "plain.onnx", root / "rewritten.onnx"


def test_fold_and_padding_keep_the_fp16_masks_on_the_gpu(u8_variants, reference):

    imgs, ref = reference
    masks = {}
    for path in u8_variants:
        with _graph_segmenter(path) as seg:
            masks[path.stem] = seg.predict(imgs)
    for r, m, p in zip(ref, masks["rewritten"], masks["plain"], strict=True):
        agree, n = _confident_agreement(r, m)
        part = np.partition(r, -2, axis=-1)
        conf = (part[..., -1] - part[..., -2]) >= 0.05
        same, same_conf = float((m == p).mean()), float((m[conf] == p[conf]).mean())
        print(
            f"fp16 u8 fold=convtranspose + pad8 [graph]: agreement {agree:.4%} on {n} confident pixels; "
            f"same mask as the plain fp16 model on {same:.4%} of all and {same_conf:.4%} of the confident pixels"
        )
        assert n > 0.2 * m.size and agree >= MASK_MIN and m.max() < 21
        # Exact in real arithmetic; the folded kernels are tap sums rounded to fp16, so near-ties
        # may flip (CPU dry run: 99.95% of all pixels the same), confident pixels must not.
        assert same_conf >= 0.999


def test_tensorrt_request_without_tensorrt_is_noticed(models):
    import onnxruntime as ort

    from unet_runtime import ProviderError, Segmenter

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build does not list TensorRT at all")
    try:
        import ctypes

        ctypes.CDLL("libnvinfer.so.10")
        pytest.skip("TensorRT is installed here: the fallback cannot be exercised")
    except OSError:
        pass
    with pytest.warns(RuntimeWarning, match="requested tensorrt"):
        seg = Segmenter(models["fp16-argmax-512.onnx"], providers=["tensorrt", "cuda"])
    assert "TensorrtExecutionProvider" not in seg.providers and seg.fallback == [
        "TensorrtExecutionProvider"
    ]
    with pytest.raises(ProviderError):
        Segmenter(models["fp16-argmax-512.onnx"], providers=["tensorrt"], strict=True)


def test_auto_leaves_out_a_tensorrt_that_cannot_load(models):
    """onnxruntime-gpu lists TensorRT without TensorRT installed; 'auto' must then run CUDA with no load error
    and no warning about a provider nobody asked for."""
    import warnings

    import onnxruntime as ort

    from unet_runtime import Segmenter
    from unet_runtime.providers import tensorrt_loadable

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build does not list TensorRT at all")
    if tensorrt_loadable():
        pytest.skip("TensorRT loads here: 'auto' rightly asks for it")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with Segmenter(models["fp16-argmax-512.onnx"], providers="auto") as seg:
            assert seg.providers[0] == "CUDAExecutionProvider" and seg.fallback == []
            assert "TensorrtExecutionProvider" not in seg.engine.requested_providers
