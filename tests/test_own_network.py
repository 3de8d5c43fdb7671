"""Your own network: other architectures through the same export, gates and runtime.

Three families built by unet_bench.networks with random weights (a UNet on a
MobileNetV2 encoder, a DeepLabV3-style ASPP model with 1/4-resolution
logits, a SegFormer-like attention model with a Softmax at 1/4), each
exported fp32 and INT8 and held to the export's own gates, then served by
``Segmenter`` and compared with a reference computed here with Keras alone
(the logits resized with ``tf.image.resize`` where the model's scores are at
a lower resolution). The refusals say what the model must be.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import run_cli
from unet_bench import networks
from unet_export import (
    ConfigError,
    ConversionError,
    ExportConfig,
    VerificationError,
    export_model,
)
from unet_runtime import Segmenter
from unet_runtime.metrics import mask_agreement

#: name -> (builder, the layer whose output is the model's logits, at its own resolution)
ARCHS = {
    "mobilenet_unet": (networks.mobilenet_unet, "classifier"),
    "deeplab_v3": (networks.deeplab_v3, "logits"),
    "segformer_like": (networks.segformer_like, "decode_classifier"),
}
PRECISIONS = {
    "fp32": dict(head="softmax"),
    "int8": dict(precision="int8", head="argmax", calibration_count=8),
}
#: fp32 probabilities against Keras' own: 3x the largest difference measured (5.1e-7, 9.0e-7 and
#: 9.0e-6: the SegFormer-like model's attention, LayerNorm and erf sum in another order).
FP32_PROBS_ATOL = {"mobilenet_unet": 1.5e-6, "deeplab_v3": 2.7e-6, "segformer_like": 2.7e-5}
#: What each network's INT8 export needs beyond that: the SegFormer-like model's residual additions
#: stay in float (quantized, its held-out masks agreed 97.7% with the fp32 graph: the gate refused it).
INT8_EXTRA = {"segformer_like": dict(int8_float_ops=("Add",))}


def int8_fields(arch: str) -> dict:
    return {**PRECISIONS["int8"], **INT8_EXTRA.get(arch, {})}


@pytest.fixture(scope="module")
def own_keras():
    """Factory: each architecture's Keras model, built once."""
    cache: dict = {}

    def make(arch: str):
        if arch not in cache:
            cache[arch] = ARCHS[arch][0]()
        return cache[arch]

    return make


@pytest.fixture(scope="module")
def own_export(own_keras, tmp_path_factory):
    """Factory: export an architecture once per configuration (``export_model(keras_model=...)``)."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("own")

    def make(arch: str, **fields):
        key = (arch, tuple(sorted(fields.items())))
        if key not in cache:
            path = root / f"{arch}-{len(cache)}.onnx"
            cache[key] = export_model(ExportConfig(**fields), path, keras_model=own_keras(arch))
        return cache[key]

    return make


def keras_probabilities(model, logits_layer: str, images: list[np.ndarray]) -> np.ndarray:
    """Softmax of the model's logits at the image size, from Keras and TensorFlow alone.

    The logits layer's output (linear, even where the model applies a
    softmax in that layer or after it) resized bilinear (``tf.image.resize``,
    as a Keras user would upsample) where it is at a lower resolution.
    """
    import keras
    import tensorflow as tf

    layer = model.get_layer(logits_layer)
    if layer.get_config().get("activation", "linear") != "linear":  # softmax built in: undo it
        config = {**layer.get_config(), "activation": "linear", "name": "test_linear_copy"}
        linear = layer.__class__.from_config(config)
        logits = linear(layer.input)
        linear.set_weights(layer.get_weights())
    else:
        logits = layer.output
    x = np.stack(images).astype(np.float32) / 255.0  # the default normalization: mean 0, std 1
    out = np.asarray(keras.Model(model.input, logits)(x, training=False))
    if out.shape[1:3] != x.shape[1:3]:
        out = tf.image.resize(out, x.shape[1:3], method="bilinear").numpy()
    return np.asarray(tf.nn.softmax(out.astype(np.float64), axis=-1))


def _images(model, n: int = 3, seed: int = 5, size=None) -> list[np.ndarray]:
    h, w = size or model.input_shape[1:3]
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


# ----------------------------------------------------------------------------- the gates
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_passes_the_gates(own_export, own_keras, arch, precision):
    """Verified by the same gates as the reference model: logits against Keras, INT8 on held-out images."""
    fields = int8_fields(arch) if precision == "int8" else PRECISIONS[precision]
    report = own_export(arch, **fields).report
    gates = report["verification"]["gates"]
    assert report["verification"]["passed"] and all(g["passed"] for g in gates)
    names = " | ".join(g["name"] for g in gates)
    assert "logits rel L2 vs Keras" in names
    if precision == "int8":
        assert "int8 held-out" in names and "fp32 graph before quantization" in names
        # the classifier is peaked (networks._peaked): the held-out mask gate must apply
        assert "mask vs fp32 graph on confident pixels" in names, report["verification"]
    else:
        assert "probabilities rel L2 vs Keras" in names and "mask vs Keras" in names
    assert report["params"] == own_keras(arch).count_params()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_segmenter_masks_equal_keras(own_export, own_keras, arch):
    """fp32: the runtime's masks are Keras' argmax on every pixel that is not a near-tie, and its
    probabilities Keras' within 1e-5."""
    model = own_keras(arch)
    images = _images(model)
    ref = keras_probabilities(model, ARCHS[arch][1], images)
    with Segmenter(own_export(arch, **PRECISIONS["fp32"]).path, providers="cpu") as seg:
        pairs = seg.predict_with_proba(images)
    masks = np.stack([m for m, _ in pairs])
    probs = np.stack([p for _, p in pairs])
    agree = mask_agreement(ref, masks, 1e-4)
    # measured: 99.86-100% of the pixels clear the margin (peaked classifiers); 3x the rest
    assert agree["confident_pixels"] > 0.995 * masks.size, agree
    assert agree["confident_agreement"] == 1.0, agree
    np.testing.assert_allclose(probs, ref, rtol=0, atol=FP32_PROBS_ATOL[arch])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_int8_masks_agree_with_keras(own_export, own_keras, arch):
    """INT8 (calibrated on synthetic shapes): the runtime's masks agree with Keras on confident pixels
    of other images of that kind (uniform noise lies outside the calibrated ranges: verify.py)."""
    from unet_export.calibration import synthetic_images

    model = own_keras(arch)
    images = synthetic_images(3, *model.input_shape[1:3], seed=4242)
    ref = keras_probabilities(model, ARCHS[arch][1], images)
    with Segmenter(own_export(arch, **int8_fields(arch)).path, providers="cpu") as seg:
        masks = np.stack(seg.predict(images))
    agree = mask_agreement(ref, masks, 0.05)
    # measured: 20% (MobileNet UNet), 99% (the other two) of the pixels are confident, and agree
    # 100%, 100% and 98.8%
    assert agree["confident_pixels"] > 0.1 * masks.size, agree
    # the export's own INT8 bound (verify.INT8_MASK_AGREEMENT_MIN), here against Keras itself
    assert agree["confident_agreement"] >= 0.98, agree


@pytest.mark.exports
def test_the_int8_gate_refuses_a_lossy_quantization_and_says_what_to_try(own_keras, tmp_path):
    """Residual additions of a transformer quantized: the held-out gate fails, and the error names the fix."""
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match=r"int8 held-out.*--int8-float-ops Add"):
        export_model(
            ExportConfig(**PRECISIONS["int8"]), out, keras_model=own_keras("segformer_like")
        )
    assert not out.exists()


@pytest.mark.exports
def test_a_size_agnostic_network(tmp_path):
    """--dynamic-size on a network built on keras.Input((None, None, 3)): right masks at two sizes."""
    model = networks.mobilenet_unet(size=None)
    out = tmp_path / "dyn.onnx"
    result = export_model(ExportConfig(dynamic_size=True), out, keras_model=model)
    cases = [(c["height"], c["width"]) for c in result.report["verification"]["cases"]]
    assert cases == [(96, 64), (64, 96)], cases
    with Segmenter(out, providers="cpu") as seg:
        assert seg.info.height is None and seg.info.size_multiple == 32
        for size in ((64, 96), (128, 64)):
            images = _images(model, 2, size=size)
            masks = np.stack(seg.predict(images))
            ref = keras_probabilities(model, "classifier", images)
            agree = mask_agreement(ref, masks, 1e-4)
            assert masks.shape[1:] == size and agree["confident_agreement"] == 1.0, agree


# ----------------------------------------------------------------------------- the options
@pytest.mark.parametrize(
    "arch, fields",
    [
        ("deeplab_v3", dict(precision="fp16", head="argmax")),
        ("deeplab_v3", dict(head="logits", layout="nchw")),
        ("deeplab_v3", dict(input_dtype="uint8", head="argmax")),
        ("segformer_like", dict(resize_in_graph=True, input_dtype="uint8", head="argmax")),
        ("mobilenet_unet", dict(precision="fp16", head="argmax", pad_channels=True)),
    ],
    ids=["fp16", "logits-nchw", "uint8", "resize-in-graph", "fp16-fold-pad"],
)
def test_every_option_works(own_export, arch, fields):
    """fp16, logits, NCHW, uint8 input, frames resized in the graph, the decoder fold and padding."""
    report = own_export(arch, **fields).report
    assert report["verification"]["passed"] and report["verification"]["gates"]
    if arch == "mobilenet_unet":  # its decoder is upsample + concat + 3x3 conv: the fold applies
        assert report["fold_upsample"]["stages"] == 4  # fp16: the convtranspose form
        assert len(report["pad_channels"]) == 2  # the RGB conv and the 5-class argmax head
    elif fields.get("precision") == "fp16":  # bilinear decoder: nothing to fold, said as much
        assert report["fold_upsample"]["stages"] == 0


@pytest.mark.exports
def test_the_model_file_through_the_cli(own_keras, tmp_path):
    """export-unet --model FILE.keras: classes and size from the model; flags that contradict it refused."""
    import onnx

    from unet_runtime.model_info import ModelInfo

    path = tmp_path / "deeplab.keras"
    own_keras("deeplab_v3").save(path)
    out = tmp_path / "m.onnx"
    cli = ("unet_export.cli", "--model", str(path), "--out", str(out))
    done = run_cli(*cli, "--head", "argmax", "-q")
    assert done.returncode == 0, done.stderr
    info = ModelInfo.from_metadata({p.key: p.value for p in onnx.load(out).metadata_props})
    assert (info.num_classes, info.height, info.width, info.head) == (4, 64, 64, "argmax")
    assert str(path) in info.extra["weights_source"] and "1/4" not in info.extra["network"]
    assert "16x16 scores for a 64x64 image resized bilinear" in info.extra["network"]
    out.unlink()
    for flags, words in (
        (
            ["--num-classes", "7"],
            "--num-classes 7 does not match model 'deeplabv3', which outputs 4",
        ),
        (["--input-size", "128", "128"], "model 'deeplabv3' takes 64x64"),
        (["--weights", str(path)], "drop --weights"),
        (["--dynamic-size"], "takes a fixed 64x64 input"),
    ):
        done = run_cli(*cli, *flags)
        assert done.returncode == 1 and words in done.stderr, (flags, done.stderr)
        assert not out.exists()


# ----------------------------------------------------------------------------- refusals
def _refusals():
    import keras

    image = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(3, 1)
    two = keras.Input((32, 32, 3))
    flat = keras.Input((12,))

    class Untraceable(keras.Model):
        def call(self, x):
            # a Python branch on a tensor's value cannot be traced symbolically
            if float(keras.ops.mean(x)) > 0:
                return x
            return -x

    return {
        "two inputs": (
            keras.Model([image, two], conv(keras.layers.Add()([image, two]))),
            "has 2 inputs",
        ),
        "not an image": (keras.Model(flat, keras.layers.Dense(3)(flat)), "not an image batch"),
        "two outputs": (keras.Model(image, [conv(image), conv(image)]), "has 2 outputs"),
        "a classifier": (
            keras.Model(image, keras.layers.Dense(3)(keras.layers.Flatten()(image))),
            "not per-pixel class scores",
        ),
        "sigmoid": (
            keras.Model(image, keras.layers.Conv2D(3, 1, activation="sigmoid")(image)),
            "ends in 'sigmoid'",
        ),
        "one class": (keras.Model(image, keras.layers.Conv2D(1, 1)(image)), "at least 2"),
        "larger output": (
            keras.Model(image, keras.layers.UpSampling2D(2)(conv(image))),
            "maps a 32x32 image to 64x64",
        ),
        "untraceable": (Untraceable(), "cannot be traced"),
        "not a model": (np.zeros((1, 32, 32, 3)), "not a keras.Model"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "two inputs",
        "not an image",
        "two outputs",
        "a classifier",
        "sigmoid",
        "one class",
        "larger output",
        "untraceable",
        "not a model",
    ],
)
def test_what_the_model_must_be(case, tmp_path):
    """Each shape of model the export cannot take is refused before any slow step, naming the problem."""
    model, words = _refusals()[case]
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match=words):
        export_model(ExportConfig(input_size=(32, 32)), out, keras_model=model)
    assert not out.exists()


_LAYER_MODULE = """
import keras

@keras.saving.register_keras_serializable(package="owntest")
class Gain(keras.layers.Layer):
    def __init__(self, gain=2.0, **kwargs):
        super().__init__(**kwargs)
        self.gain = gain

    def call(self, x):
        return x * self.gain

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}
"""


@pytest.mark.exports
def test_custom_layers_need_their_module(tmp_path, monkeypatch):
    """A file with a custom layer: refused without --custom-objects (naming the flag); exported with it."""
    module = "own_layers_gain"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(_LAYER_MODULE))
    path = tmp_path / "gain.keras"
    # Saved in another process, so the class is not registered in this one.
    save = f"""
import keras, {module}
image = keras.Input((32, 32, 3))
x = {module}.Gain(name="gain")(keras.layers.Conv2D(4, 3, padding="same")(image))
keras.Model(image, keras.layers.Conv2D(3, 1)(x)).save({str(path)!r})
"""
    done = subprocess.run(
        [sys.executable, "-c", save], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "m.onnx"
    with pytest.raises(
        ConfigError,
        match=r"uses 'Gain' \(saved from module 'own_layers_gain'\).*--custom-objects MODULE",
    ):
        export_model(ExportConfig(model=str(path)), out)
    assert not out.exists()
    monkeypatch.syspath_prepend(str(tmp_path))
    result = export_model(ExportConfig(model=str(path), custom_objects=module), out)
    assert out.exists() and result.report["verification"]["passed"]
    with pytest.raises(ConfigError, match="--custom-objects 'no_such_module' cannot be imported"):
        export_model(ExportConfig(model=str(path), custom_objects="no_such_module"), out)


def test_a_missing_or_wrong_file_is_named(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="does not exist"):
        export_model(ExportConfig(model=str(tmp_path / "none.keras")), out)
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not a .keras file"):
        export_model(ExportConfig(model=str(weights)), out)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="could not be loaded by Keras"):
        export_model(ExportConfig(model=str(broken)), out)
    assert not out.exists()


def test_an_op_tf2onnx_cannot_convert_is_named(tmp_path):
    """tf2onnx leaves an op it has no handler for in the graph: the export names it and writes nothing."""
    import keras
    import tensorflow as tf

    class Bessel(keras.layers.Layer):
        def call(self, x):
            return tf.math.bessel_i0e(x)

    image = keras.Input((32, 32, 3))
    logits = keras.layers.Conv2D(3, 1)(Bessel(name="bessel")(image))
    out = tmp_path / "m.onnx"
    with pytest.raises(ConversionError, match=r"cannot convert the TensorFlow op\(s\) BesselI0e"):
        export_model(ExportConfig(), out, keras_model=keras.Model(image, logits))
    assert not out.exists()


@pytest.mark.exports
def test_exact_gelu_converts(tmp_path):
    """Keras' exact GELU is erfc on TensorFlow, which ONNX lacks: it is rewritten as 1 - erf, and verified."""
    import keras
    import onnx

    image = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="gelu")(image)
    out = tmp_path / "m.onnx"
    result = export_model(
        ExportConfig(), out, keras_model=keras.Model(image, keras.layers.Conv2D(3, 1)(x))
    )
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert "Erf" in ops and "Erfc" not in ops
    assert result.report["verification"]["passed"]


@pytest.mark.exports
def test_bench_unet_times_a_model_against_its_keras_original(tmp_path):
    """bench-unet lab networks saves a network; bench-unet --model times it beside Keras, agreement per row."""
    import json

    done = run_cli(
        "unet_bench.cli",
        "lab",
        "networks",
        "--out",
        str(tmp_path),
        "--size",
        "64",
        "--only",
        "deeplab_v3",
    )
    assert done.returncode == 0, done.stderr
    model = tmp_path / "deeplab_v3.keras"
    out = tmp_path / "bench"
    flags = [
        "--model",
        str(model),
        "--size",
        "64",
        "--precision",
        "fp32",
        "int8",
        "--head",
        "argmax",
    ]
    done = run_cli(
        "unet_bench.cli", "--out", str(out), *flags, "--iters", "1", "--warmup", "0", "-q"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert {"keras.predict", "ort cpu fp32 argmax"} <= set(rows), list(rows)
    assert any(name.startswith("ort cpu int8 argmax") for name in rows), list(rows)
    for name, row in rows.items():
        # every row against Keras' own masks; fp32 equal, INT8 within its gate's bound
        assert row["numerics"]["confident_agreement"] >= 0.98, (name, row["numerics"])
    assert data["model"]["file"] == str(model)
    assert "Model: " in out.with_suffix(".md").read_text()
    done = run_cli("unet_bench.cli", "--out", str(out), "--model", str(model), "--torch")
    assert done.returncode == 1 and "drop --torch" in done.stderr
