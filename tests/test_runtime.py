"""unet_runtime on CPU: masks equal Keras, batching, threads, providers, bad input."""

import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import onnx
import pytest

from unet_export.verify import FP32_TIE_MARGIN
from unet_runtime import (
    InputImageError,
    ModelFileError,
    ProviderConfig,
    ProviderError,
    Segmenter,
    SegmenterClosedError,
    SegmenterError,
)
from unet_runtime import images as im
from unet_runtime.metrics import mask_agreement
from unet_runtime.providers import check_fallback, provider_options, resolve_providers


def _images(seed, sizes):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("head", ["softmax", "logits", "argmax"])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_masks_equal_keras_argmax(narrow_export, confident_keras, head, layout):
    path = narrow_export(head=head, layout=layout, input_size=(64, 96)).path
    imgs = _images(1, [(64, 96)] * 2)  # model size: no resize, so the inputs are identical
    with Segmenter(path, providers="cpu") as seg:
        masks = seg.predict(imgs)
    x = im.to_model_input(imgs, (0, 0, 0), (1, 1, 1), "nhwc")
    ref = confident_keras(x, training=False).numpy()
    for i, mask in enumerate(masks):
        assert mask.shape == (64, 96) and mask.dtype == np.uint8
        agree = mask_agreement(ref[i], mask, FP32_TIE_MARGIN)
        assert agree["confident_agreement"] == 1.0, agree


def test_float32_and_uint8_input_models_see_the_same_input(narrow_export):
    # The runtime normalizes a float32-input model's images with the same float32 Mul and Add that a
    # uint8-input model runs in its graph, so the two exports give bit-identical logits.
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    imgs = _images(4, [(64, 96)] * 2)
    outs = []
    for input_dtype in ("float32", "uint8"):
        path = narrow_export(
            input_dtype=input_dtype,
            layout="nhwc",
            head="logits",
            mean=mean,
            std=std,
            fold_upsample="off",
            input_size=(64, 96),
        ).path
        with Segmenter(path, providers="cpu") as seg:
            outs.append(seg.predict_proba(imgs))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dynamic_model_pads_and_crops_exactly(narrow_export, confident_keras):
    path = narrow_export(dynamic_size=True, head="softmax").path
    (img,) = _images(2, [(50, 70)])
    with Segmenter(path, providers="cpu") as seg:
        assert not seg.info.fixed_size
        probs = seg.predict_proba(img)
    padded = im.pad_to_multiple(img, 16)  # 64 x 80
    ref = confident_keras(
        im.to_model_input([padded], (0, 0, 0), (1, 1, 1), "nhwc"), training=False
    ).numpy()[0]
    assert probs.shape == (50, 70, 5)
    # ONNX Runtime against Keras, fp32: measured at most 1.13e-6; 3x that
    np.testing.assert_allclose(probs, ref[:50, :70], rtol=0, atol=3.4e-6)


def test_batch_equals_one_by_one_with_mixed_sizes(narrow_export):
    imgs = _images(3, [(40, 40), (64, 96), (17, 33), (64, 96)])
    for cfg in (dict(input_size=(32, 32)), dict(dynamic_size=True)):
        with Segmenter(narrow_export(**cfg).path, providers="cpu") as seg:
            batch = seg.predict(imgs)
            single = [seg.predict(x) for x in imgs]
            probs = seg.predict_proba(imgs)
        for b, s, p, x in zip(batch, single, probs, imgs, strict=True):
            assert b.shape == x.shape[:2] and p.shape == (*x.shape[:2], 5)
            np.testing.assert_array_equal(b, s)
            # float32 softmax: measured at most 2.4e-7 off 1; 3x that
            assert np.allclose(p.sum(-1), 1, rtol=0, atol=7e-7)


@pytest.mark.parametrize("cfg", [dict(input_size=(32, 32)), dict(dynamic_size=True, head="logits")])
def test_predict_with_proba_is_predict_and_predict_proba_in_one_run(narrow_export, cfg):
    imgs = _images(5, [(40, 40), (64, 96), (17, 33)])
    with Segmenter(narrow_export(**cfg).path, providers="cpu") as seg:
        runs = []
        session = seg.engine.session  # count the model's own runs
        session.run = (lambda run: lambda names, feed: runs.append(0) or run(names, feed))(
            session.run
        )
        pairs = seg.predict_with_proba(imgs)
        # one session call per network size, as predict
        assert len(runs) == (1 if "input_size" in cfg else 3)
        masks, probs = seg.predict(imgs), seg.predict_proba(imgs)
        single = seg.predict_with_proba(imgs[1])
    assert isinstance(single, tuple) and len(pairs) == 3
    np.testing.assert_array_equal(single[0], masks[1])
    np.testing.assert_array_equal(single[1], probs[1])
    for (m, p), mask, prob in zip(pairs, masks, probs, strict=True):
        np.testing.assert_array_equal(m, mask)
        np.testing.assert_array_equal(p, prob)


def test_warmup_runs_each_batch_shape_and_leaves_results_unchanged(narrow_export):
    from unet_runtime import ProviderConfig

    path = narrow_export(input_size=(32, 32), head="argmax").path
    imgs = _images(6, [(40, 50), (32, 32)])
    with Segmenter(path, providers="cpu") as plain:
        expected = plain.predict(imgs)
    # The CUDA path (IO binding, a graph id per shape) run with CPU buffers, as in the binding tests
    # below.
    seg = Segmenter(
        path, providers=["cpu"], config=ProviderConfig(cuda_graph=True, io_binding=True)
    )
    seen = []
    session = seg.engine.session  # each device run, by the shape it runs (the most recent binding)
    session.run_with_iobinding = (
        lambda run: (
            lambda binding, options: (
                seen.append(seg.engine.bound_shapes[-1]) or run(binding, options)
            )
        )
    )(session.run_with_iobinding)
    timings = seg.warmup(batch_sizes=(1, 2), runs=3)
    assert sorted(timings) == [1, 2] and all(len(t) == 3 and min(t) > 0 for t in timings.values())
    # the network's shapes, each run 3 times
    assert seen == [(1, 32, 32, 3)] * 3 + [(2, 32, 32, 3)] * 3
    # buffers and graph ids made by the warm-up
    assert seg.engine.bound_shapes == (
        (1, 32, 32, 3),
        (2, 32, 32, 3),
    )
    for got, want in zip(seg.predict(imgs), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    seg.close()


def test_warmup_arguments_are_checked(narrow_export):
    fixed = Segmenter(narrow_export(input_size=(32, 32)).path, providers="cpu")
    agnostic = Segmenter(narrow_export(dynamic_size=True).path, providers="cpu")
    assert sorted(agnostic.warmup((1,), size=(48, 64), runs=1)) == [1]
    assert list(fixed.warmup(runs=1)) == [1]
    for seg, kwargs, message in [
        (agnostic, {}, "size-agnostic.*pass size=\\(H, W\\)"),
        (fixed, {"size": (64, 64)}, "always runs at 32x32.*leave size=None"),
        (fixed, {"batch_sizes": (0,)}, "batch sizes must be integers >= 1"),
        (fixed, {"batch_sizes": ()}, "at least one"),
        (fixed, {"runs": 0}, "runs >= 1"),
    ]:
        with pytest.raises(InputImageError, match=message):
            seg.warmup(**kwargs)
    fixed.close()
    agnostic.close()


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_bound_buffers_per_shape_bounded_and_exact(narrow_export, cuda_graph):
    """The IO-binding path (CUDA/TensorRT), run with CPU buffers: one buffer pair per input shape, kept for a
    bounded number of shapes; with CUDA graphs each shape gets its own graph id (ORT replays a captured graph
    on the buffers it captured, so a shared id would return another shape's output)."""
    from unet_runtime import ProviderConfig
    from unet_runtime.segmenter import MAX_BOUND_SHAPES, MAX_GRAPH_SHAPES

    path = narrow_export(dynamic_size=True, head="argmax").path
    plain = Segmenter(path, providers=["cpu"])
    seg = Segmenter(
        path, providers=["cpu"], config=ProviderConfig(cuda_graph=cuda_graph, io_binding=True)
    )
    rng = np.random.default_rng(3)
    sizes = [16 * (i + 1) for i in range(max(MAX_BOUND_SHAPES, MAX_GRAPH_SHAPES) + 2)]
    for side in sizes + sizes[:2]:  # every shape, then two of the first ones again
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        assert np.array_equal(seg.predict(img), plain.predict(img)), side
    keys = [k[1] for k in seg.engine.bound_shapes]  # NHWC input: (1, H, W, 3)
    if not cuda_graph:
        # the most recent shapes, least recently used first: 16 and 32 came back last
        assert keys == sizes[-MAX_BOUND_SHAPES + 2 :] + sizes[:2]
    else:
        # the first shapes own graph ids 1..N and are never dropped; later ones ran uncaptured (id
        # -1)
        ids = {
            k[1]: seg.engine.bind(np.zeros(k, np.float32)).graph_id for k in seg.engine.bound_shapes
        }
        assert ids == {side: i for i, side in enumerate(sizes[:MAX_GRAPH_SHAPES], start=1)}
        late = seg.engine.bind(np.zeros((1, 512, 512, 3), np.float32))
        assert late.graph_id == -1 and len(seg.engine.bound_shapes) == MAX_GRAPH_SHAPES


def test_threads_give_serial_results(narrow_export):
    imgs = _images(4, [(32, 32)] * 8)
    with Segmenter(narrow_export(input_size=(32, 32)).path, providers="cpu") as seg:
        serial = [seg.predict(x) for x in imgs]
        results, errors = {}, []

        def worker(t):
            try:
                for k in range(50):
                    results[(t, k)] = seg.predict(imgs[(t + k) % 8])
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
    assert not errors and len(results) == 400
    for (t, k), mask in results.items():
        np.testing.assert_array_equal(mask, serial[(t + k) % 8])


def test_closed_segmenter_raises(narrow_export):
    seg = Segmenter(narrow_export(input_size=(32, 32)).path, providers="cpu")
    seg.close()
    with pytest.raises(SegmenterClosedError, match="closed"):
        seg.predict(_images(0, [(8, 8)])[0])


# ---------------------------------------------------------------- providers
def test_resolve_auto_and_explicit(monkeypatch):
    from unet_runtime import providers

    assert resolve_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(providers, "tensorrt_loadable", lambda: True)
    assert resolve_providers("auto", avail) == avail
    # onnxruntime-gpu lists TensorRT without TensorRT installed: 'auto' then leaves it out,
    # quietly...
    monkeypatch.setattr(providers, "tensorrt_loadable", lambda: False)
    assert resolve_providers("auto", avail) == avail[1:]
    # ...while a request by name keeps it, so that check_fallback reports it (or strict=True
    # raises).
    assert resolve_providers(["tensorrt", "cuda"], avail) == avail
    assert resolve_providers(["cuda"], ["CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers(["cpu", "cpu"], avail) == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="unknown provider 'tpu'"):
        resolve_providers(["tpu"], avail)
    with pytest.raises(ProviderError, match="empty"):
        resolve_providers([], avail)


def test_tensorrt_loadable_tries_the_provider_library(tmp_path):
    import _ctypes
    import shutil

    from unet_runtime.providers import tensorrt_loadable

    empty, broken, loadable = (tmp_path / n for n in ("empty", "broken", "loadable"))
    for folder in (empty, broken, loadable):
        folder.mkdir()
    (broken / "libonnxruntime_providers_tensorrt.so").write_bytes(b"\x7fELF but not really")
    # Any shared object the loader accepts stands for a provider library whose TensorRT libraries
    # resolve.
    shutil.copy(_ctypes.__file__, loadable / "libonnxruntime_providers_tensorrt.so")
    assert [tensorrt_loadable(str(f)) for f in (empty, broken, loadable)] == [False, False, True]
    # this CPU build of onnxruntime has no TensorRT provider library
    assert tensorrt_loadable() is False


def test_tensorrt_options_follow_ort_docs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model-bytes")
    names = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt, cuda, cpu = provider_options(
        names,
        ProviderConfig(trt_max_batch=4),
        model=str(model),
        input_name="input",
        input_shape=["N", 512, 512, 3],
        layout="nhwc",
    )
    assert trt["trt_fp16_enable"] == "1" and trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_timing_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path / "unet-onnx" / "tensorrt"))
    assert len(trt["trt_engine_cache_path"].rsplit("/", 1)[1]) == 16  # keyed by model hash
    assert (
        trt["trt_profile_min_shapes"],
        trt["trt_profile_opt_shapes"],
        trt["trt_profile_max_shapes"],
    ) == ("input:1x512x512x3", "input:1x512x512x3", "input:4x512x512x3")
    assert cuda["prefer_nhwc"] == "1" and cuda["fuse_conv_bias"] == "1" and cuda["use_tf32"] == "1"
    assert cpu == {}
    # size-agnostic NCHW model: a range of sizes; exact fp32: no TF32, no fp16, no fuse_conv_bias
    trt, cuda, _ = provider_options(
        names,
        ProviderConfig(exact=True),
        model=b"x",
        input_name="input",
        input_shape=["N", 3, "H", "W"],
        layout="nchw",
    )
    assert (
        trt["trt_profile_min_shapes"] == "input:1x3x64x64"
        and trt["trt_profile_max_shapes"] == "input:8x3x1024x1024"
    )
    assert (
        trt["trt_fp16_enable"] == "0" and cuda["use_tf32"] == "0" and cuda["fuse_conv_bias"] == "0"
    )
    # CUDA graphs: off unless asked for, then on for both GPU providers (a TensorRT session that
    # falls back to CUDA keeps it)
    assert trt["trt_cuda_graph_enable"] == cuda["enable_cuda_graph"] == "0"
    trt, cuda, _ = provider_options(
        names,
        ProviderConfig(cuda_graph=True),
        model=b"x",
        input_name="input",
        input_shape=["N", 3, 64, 64],
        layout="nchw",
    )
    assert trt["trt_cuda_graph_enable"] == cuda["enable_cuda_graph"] == "1"


def test_fallback_strict_raises_and_lenient_warns():
    req = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="requested cuda but ONNX Runtime runs on cpu"):
        check_fallback(req, ["CPUExecutionProvider"], strict=True)
    with pytest.warns(RuntimeWarning, match="requested cuda"):
        assert check_fallback(req, ["CPUExecutionProvider"], strict=False) == [
            "CUDAExecutionProvider"
        ]
    assert check_fallback(req, req, strict=True) == []


def test_real_fallback_is_noticed(narrow_export):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip(
            "CUDA is available here: this test needs a machine where the CUDA request cannot be met"
        )
    path = narrow_export(input_size=(32, 32)).path
    with pytest.warns(RuntimeWarning, match="requested cuda"):
        seg = Segmenter(path, providers=["cuda"])
    assert seg.providers == ["CPUExecutionProvider"] and seg.fallback == ["CUDAExecutionProvider"]
    with pytest.raises(ProviderError):
        Segmenter(path, providers=["cuda"], strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on a CPU-only machine is not a fallback
        assert Segmenter(path).providers == ["CPUExecutionProvider"]


def test_runtime_imports_and_runs_without_tensorflow(narrow_export, tmp_path):
    path = narrow_export(input_size=(32, 32)).path
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'onnx'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from unet_runtime import Segmenter
        with Segmenter({str(path)!r}, providers='cpu') as seg:
            m = seg.predict(np.zeros((20, 30, 3), np.uint8))
        assert m.shape == (20, 30)
        bad = [n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'keras', 'onnx')]
        assert not bad, bad
        print('ok')
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ---------------------------------------------------------------- bad input
def test_bad_model_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(ModelFileError, match="does not exist"):
        Segmenter(tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="is empty"):
        Segmenter(empty)
    with pytest.raises(ModelFileError, match="cannot be loaded|not a valid ONNX protobuf"):
        Segmenter(noise)


def test_truncated_model(narrow_export, tmp_path):
    data = narrow_export(input_size=(32, 32)).path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cannot be loaded|not a valid ONNX protobuf"):
        Segmenter(cut)


def test_model_of_another_network(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelFileError, match="is this a VGG19-UNet export"):
        Segmenter(path, num_classes=10)


def test_model_without_metadata_needs_and_takes_explicit_args(narrow_export, tmp_path):
    model = onnx.load(str(narrow_export(input_size=(32, 32), layout="nchw").path))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    with Segmenter(path, providers="cpu") as seg:  # layout and classes inferred from the graph
        assert (seg.info.layout, seg.info.num_classes, seg.info.height) == ("nchw", 5, 32)
        assert seg.predict(_images(0, [(32, 32)])[0]).shape == (32, 32)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8, 3), np.float32), "dtype float32; only uint8 RGB"),
        (np.zeros((8, 8), np.uint8), "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), "RGBA"),
        (np.zeros((3, 8, 9), np.uint8), "channels-first .* image.transpose\\(1, 2, 0\\)"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((2, 2, 2, 3, 1), np.uint8), "only \\(H, W, 3\\) RGB"),
        ("not an image", "pass an \\(H, W, 3\\) uint8 array"),
        ([], "the batch is empty"),
        (
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.int16)],
            "image 1 has dtype int16.*clip to 0..255",
        ),
        (
            np.zeros((8, 8, 3), np.uint16),
            "dtype uint16; only uint8 RGB is allowed \\(keep the top 8 bits: \\(image >> 8\\)",
        ),
        (np.zeros((8, 8, 3), bool), "dtype bool.*not an image"),
    ],
)
def test_bad_images(narrow_export, image, message):
    with Segmenter(narrow_export(input_size=(32, 32)).path, providers="cpu") as seg:
        with pytest.raises(InputImageError, match=message):
            seg.predict(image)


def test_pixel_limit_and_argmax_has_no_probabilities(narrow_export):
    with Segmenter(
        narrow_export(input_size=(32, 32), head="argmax").path, providers="cpu", max_pixels=100
    ) as seg:
        with pytest.raises(InputImageError, match="more than the limit of 100"):
            seg.predict(np.zeros((11, 10, 3), np.uint8))
        for method in (seg.predict_proba, seg.predict_with_proba):
            with pytest.raises(SegmenterError, match="--head argmax"):
                method(np.zeros((8, 8, 3), np.uint8))


# ------------------------------------------------------------------------- the surface
def test_the_segmenter_surface_is_small_and_public(narrow_export):
    """At most 12 public names; what goes below predict lives on .engine; no public method returns a private type."""
    import inspect

    from unet_runtime import Engine

    with Segmenter(narrow_export().path, providers="cpu") as seg:
        names = {n for n in dir(seg) if not n.startswith("_")}
    assert len(names) <= 12, sorted(names)
    assert {"predict", "predict_proba", "predict_with_proba", "iter_tiles", "engine"} <= names
    for cls in (Segmenter, Engine):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not callable(member):
                continue
            returns = str(inspect.signature(member).return_annotation)
            assert not any(t.startswith("_") for t in returns.replace("|", " ").split()), (
                f"{cls.__name__}.{name} returns {returns}"
            )


def test_moved_names_and_old_tiling_keywords_still_work_with_a_warning(narrow_export):
    from unet_runtime import Tiling

    img = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    with Segmenter(narrow_export().path, providers="cpu") as seg:
        with pytest.warns(
            DeprecationWarning, match=r"Segmenter.run is deprecated: use Segmenter.engine.run"
        ):
            raw = seg.run(seg.engine.prepare([np.zeros((32, 32, 3), np.uint8)]))
        np.testing.assert_array_equal(
            raw, seg.engine.run(seg.engine.prepare([np.zeros((32, 32, 3), np.uint8)]))
        )
        with pytest.warns(DeprecationWarning, match="pass tile=Tiling"):
            old = seg.predict(img, tile=(32, 32), overlap=0.5, blend="constant")
        new = seg.predict(img, tile=Tiling((32, 32), overlap=0.5, blend="constant"))
        np.testing.assert_array_equal(old, new)
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            seg.predict(img, tile=(32, 32), overlapp=0.5)
        with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
            _ = seg.nonsense
