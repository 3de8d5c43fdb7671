"""--resize-in-graph: frames of any size in, masks at their size out, equal to the host pipeline's."""

import numpy as np
import onnx
import pytest

from tests.conftest import NARROW, NUM_CLASSES
from unet_export import ConfigError, ExportConfig, VerificationError, export_model
from unet_export.pipeline import STEPS, ExportState
from unet_runtime import InputImageError, Segmenter
from unet_runtime import images as im

FRAMES = [(1080, 1920), (333, 517), (40, 70)]


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in FRAMES]


@pytest.fixture(scope="module")
def frame_exports(confident_weights, tmp_path_factory):
    """argmax and softmax heads with the resize in the graph, and the plain argmax export of the same weights."""
    root = tmp_path_factory.mktemp("frames")
    base = dict(
        input_size=(64, 64),
        num_classes=NUM_CLASSES,
        width_multiplier=NARROW,
        weights=str(confident_weights),
        input_dtype="uint8",
    )
    return {
        "graph-argmax": export_model(
            ExportConfig(**base, head="argmax", resize_in_graph=True), root / "ga.onnx"
        ),
        "graph-softmax": export_model(ExportConfig(**base, resize_in_graph=True), root / "gs.onnx"),
        "host-argmax": export_model(ExportConfig(**base, head="argmax"), root / "ha.onnx"),
    }


def test_the_export_verifies_frames_of_several_sizes(frame_exports):
    report = frame_exports["graph-argmax"].report
    names = [g["name"] for g in report["verification"]["gates"]]
    for h, w in ((1080, 1920), (480, 640), (333, 517), (3000, 4000)):
        assert any(n.startswith(f"frame {h}x{w}: in-graph resize") for n in names), names
        assert any(n.startswith(f"frame {h}x{w}: mask vs the host pipeline") for n in names), names
    assert report["steps"]["frames"]["seconds"] >= 0 and report["verification"]["passed"]
    model = onnx.load(str(frame_exports["graph-argmax"].path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert (
        dims[1:] == ["height", "width", 3]
        and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    )


@pytest.mark.parametrize("backend", ["numpy", "opencv"])
def test_masks_at_the_frames_size_equal_the_host_pipeline(frame_exports, backend):
    im.set_resize_backend(backend)
    try:
        with (
            Segmenter(frame_exports["graph-argmax"].path, providers="cpu") as graph,
            Segmenter(frame_exports["host-argmax"].path, providers="cpu") as host,
        ):
            assert graph.info.resize_in_graph and not host.info.resize_in_graph
            frames = _frames()
            ours, theirs = graph.predict(frames), host.predict(frames)
    finally:
        im.set_resize_backend("auto")
    for frame, a, b in zip(frames, ours, theirs, strict=True):
        assert a.shape == b.shape == frame.shape[:2]
        # The two resizes may round a value differently by one grey level; masks differ only near
        # ties.
        assert (a == b).mean() >= 0.99, (frame.shape, (a == b).mean())


def test_softmax_scores_come_back_at_the_network_size_and_the_runtime_resizes_them(frame_exports):
    with Segmenter(frame_exports["graph-softmax"].path, providers="cpu") as seg:
        frame = _frames()[1]
        mask, probs = seg.predict_with_proba(frame)
        raw = seg.engine.run(
            seg.engine.prepare([frame])
        )  # the model's own output: scores at the network's 64x64
    assert raw.shape == (1, 64, 64, NUM_CLASSES)
    assert mask.shape == frame.shape[:2] and probs.shape == (*frame.shape[:2], NUM_CLASSES)
    # float32 softmax over 21 classes: measured at most 2.4e-7 off 1; 3x that
    assert np.allclose(probs.sum(-1), 1, rtol=0, atol=7e-7)


def test_bad_frames_are_refused_before_the_session(frame_exports):
    with Segmenter(
        frame_exports["graph-argmax"].path, providers="cpu", max_pixels=5_000_000
    ) as seg:
        for bad, message in [
            (np.zeros((40, 40, 3), np.float32), "dtype float32"),
            (np.zeros((40, 40, 4), np.uint8), "shape"),
            (np.zeros((0, 40, 3), np.uint8), "empty"),
            (np.zeros((3000, 4000, 3), np.uint8), "more than the limit"),
        ]:
            with pytest.raises(InputImageError, match=message):
                seg.predict(bad)


def test_refusals(confident_weights):
    base = dict(
        input_size=(64, 64), num_classes=NUM_CLASSES, width_multiplier=NARROW, resize_in_graph=True
    )
    for extra, message in [
        (dict(input_dtype="float32"), "--resize-in-graph takes raw uint8 RGB frames"),
        (dict(input_dtype="uint8", layout="nchw"), "--layout nhwc, not uint8 nchw"),
        (dict(input_dtype="uint8", dynamic_size=True), "give --input-size H W"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ExportConfig(**base, **extra).validate()


def test_a_broken_resize_fails_its_gate(confident_weights):
    """The in-graph resize is checked value by value: a nearest-neighbour resize in its place is refused."""
    config = ExportConfig(
        input_size=(64, 64),
        num_classes=NUM_CLASSES,
        width_multiplier=NARROW,
        head="argmax",
        weights=str(confident_weights),
        input_dtype="uint8",
        resize_in_graph=True,
    ).resolved()
    state = ExportState(config=config)
    for name, step in STEPS:
        if name == "verify":
            break
        step(state)
    (resize,) = [n for n in state.proto.graph.node if n.name == "resize_in_graph/bilinear"]
    for attr in resize.attribute:
        if attr.name == "mode":
            attr.s = b"nearest"
    with pytest.raises(
        VerificationError, match="in-graph resize vs the host's, largest difference"
    ):
        dict(STEPS)["verify"](state)
