"""The export pipeline: build -> weights -> convert -> clean -> precision ->
metadata -> check -> verify -> write, each step named, timed and logged.

Nothing is written until every step has passed; the model file and the
report are written atomically.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from unet_runtime._atomic import atomic_write_bytes, check_writable_target, new_folders, remove_empty
from unet_runtime.model_info import HEADS, LAYOUTS

from .errors import ConfigError, ExportError
from .model import SIZE_MULTIPLE, validate_spatial_size

__all__ = ["ExportConfig", "ExportResult", "export_model"]

log = logging.getLogger(__name__)

INPUT_DTYPES = ("float32", "uint8")


@dataclass
class ExportConfig:
    """Everything ``export-unet`` can be asked for (CLI flags map 1:1)."""

    input_size: tuple[int, int] = (512, 512)
    dynamic_size: bool = False
    #: None: the head width stored in ``weights`` (see :meth:`resolved`), else 21 (Pascal VOC).
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    layout: str = "nhwc"
    head: str = "softmax"
    precision: str = "fp32"
    opset: int | None = None
    weights: str | None = None
    encoder_weights: str | None = None
    seed: int = 0
    verify: bool = True
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: INT8 calibration: a folder of images (None: synthetic shapes, see calibration.py).
    calibration_images: str | None = None
    #: images used when calibrating on synthetic shapes; held-out ones are extra.
    calibration_count: int = 32
    calibration_method: str = "minmax"
    #: ``float32`` (normalized input) or ``uint8`` (raw RGB, normalized in the graph).
    input_dtype: str = "float32"
    #: filter multiplier (1.0 = the seed); < 1 only for tests and experiments.
    width_multiplier: float = 1.0
    #: decoder upsampling folded into the next conv: one of fold.FOLD_CHOICES (``auto``: see fold_form).
    fold_upsample: str = "auto"
    #: pad conv1-1's 3 input channels and an argmax head's classes to multiples of 8 (pad.py; for GPUs).
    pad_channels: bool = False

    def fold_form(self) -> str:
        """The fold this export applies: ``fold_upsample``, with ``auto`` resolved by precision (fold.auto_fold_form)."""
        from .fold import auto_fold_form

        return auto_fold_form(self.precision) if self.fold_upsample == "auto" else self.fold_upsample

    def resolved(self, keras_model=None) -> "ExportConfig":
        """This config with ``num_classes`` settled (raises ConfigError).

        Left as None, it is the class count of the head in the weights'
        source: ``keras_model`` (an in-memory model, see :func:`export_model`)
        or the ``weights`` file (read with h5py, before any model is built);
        21 when there is neither or the count cannot be told. Given
        explicitly, it must match the source's, so a wrong value fails here,
        not after the model was built.
        """
        from .weights import stored_num_classes

        if keras_model is not None:
            if self.weights or self.encoder_weights:
                raise ConfigError("keras_model= and a weights file were both given; pass one source of weights "
                                  "(drop config.weights / config.encoder_weights, or keras_model)")
            shape = getattr(keras_model, "output_shape", None)  # not a Keras model: copy_weights says so later
            stored = shape[-1] if isinstance(shape, tuple) and shape and isinstance(shape[-1], int) else None
            source, flag, fix = "keras_model", "num_classes", "num_classes={n}, or leave it None to use the model's"
        else:
            stored = stored_num_classes(self.weights) if self.weights and Path(self.weights).is_file() else None
            source, flag, fix = repr(self.weights), "--num-classes", "--num-classes {n}, or leave it out to use the file's"
        if self.num_classes is None:
            return replace(self, num_classes=stored or 21)
        if stored is not None and stored != self.num_classes:
            raise ConfigError(f"{flag} {self.num_classes} does not match {source}, whose head has {stored} classes; "
                              f"pass {fix.format(n=stored)}")
        return self

    def validate(self) -> None:
        """Check every value before any slow work starts (raises ConfigError)."""
        from .convert import MAX_OPSET, MIN_OPSET
        from .precision import PRECISIONS

        if not self.dynamic_size:
            validate_spatial_size(*self.input_size)
        from .fold import FOLD_CHOICES

        for name, value, allowed in (("--layout", self.layout, LAYOUTS), ("--head", self.head, HEADS),
                                     ("--precision", self.precision, PRECISIONS),
                                     ("--fold-upsample", self.fold_upsample, FOLD_CHOICES),
                                     ("--input-dtype", self.input_dtype, INPUT_DTYPES)):
            if value not in allowed:
                raise ConfigError(f"{name} {value!r} is not supported; choose one of {', '.join(allowed)}")
        # None is settled by resolved() (export_model calls it); every other value must be a count.
        classes = self.num_classes
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
            raise ConfigError(f"--num-classes {classes!r} must be an integer >= 1 (21 for Pascal VOC)")
        if self.head == "argmax" and (classes or 0) > 256:
            raise ConfigError(f"--head argmax writes a uint8 mask, which holds at most 256 classes, not {self.num_classes}; use --head logits")
        from .precision import CALIBRATION_METHODS

        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"--calibration-method {self.calibration_method!r} is not supported; choose one of {', '.join(CALIBRATION_METHODS)}")
        if self.pad_channels and self.precision == "int8":
            raise ConfigError("--pad-channels aligns channels for GPU tensor cores; an int8 model runs on the CPU, "
                              "where it only adds work: drop --pad-channels or use --precision fp16")
        if self.precision != "int8" and self.calibration_images:
            raise ConfigError("--calibration-images is only used with --precision int8; add --precision int8 or drop it")
        from .calibration import MIN_CALIBRATION_IMAGES

        if self.precision == "int8" and self.calibration_count < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"--calibration-count {self.calibration_count} is too small; INT8 calibration needs at least {MIN_CALIBRATION_IMAGES}")
        if self.opset is not None and not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"--opset {self.opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET} (default {self._default_opset()})")
        if self.class_names is not None and classes is not None and len(self.class_names) != classes:
            raise ConfigError(
                f"{len(self.class_names)} class names for --num-classes {self.num_classes}; give one name per line, one per class"
            )
        if any(s == 0 for s in self.std) or len(self.std) != 3 or len(self.mean) != 3:
            raise ConfigError(f"--mean {self.mean} / --std {self.std}: three values each, std non-zero")

    @staticmethod
    def _default_opset() -> int:
        from .convert import DEFAULT_OPSET

        return DEFAULT_OPSET


@dataclass
class ExportResult:
    """What :func:`export_model` produced: the path (None for a Triton-only export) and the full report."""

    path: Path | None
    report: dict = field(default_factory=dict)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("unet-onnx", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


#: Triton's max_batch_size is verified against Keras at that batch; larger
#: batches would make verification (on a CPU) take minutes.
MAX_TRITON_BATCH = 32


def export_model(
    config: ExportConfig,
    out: str | Path | None,
    *,
    report_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    triton=None,
    keras_model=None,
) -> ExportResult:
    """Export the seed's VGG19-UNet to a verified ONNX file at ``out``.

    Args:
        config: what to export (see :class:`ExportConfig`).
        out: the ``.onnx`` path; written only if every step passes.
        keras_model: a trained ``keras.Model`` of the seed's architecture, in
            memory (e.g. at the end of a training script), instead of
            ``config.weights``: its weights are copied layer by layer into
            the model built for ``config`` (any input size it was trained
            at), and its head width is the class count unless
            ``config.num_classes`` says otherwise (then they must agree).
        report_path: optional JSON report (errors, op histograms, sizes,
            times, versions), written atomically too.
        progress: called with one line per step (the CLI prints them).
        triton: a :class:`~unet_export.triton.TritonOptions`: also write a
            Triton model repository (the model is then also verified at
            ``max_batch_size``). ``out`` may then be ``None``.

    Raises:
        ExportError: a subclass naming what failed; nothing is written.
    """
    say = progress or (lambda line: log.info(line))
    config = config.resolved(keras_model)
    config.validate()
    if out is None and triton is None:
        raise ConfigError("nothing to write: give --out FILE and/or --triton-repo DIR")
    if triton is not None:
        if not config.verify:
            raise ConfigError("--triton-repo needs verification (it checks every batch size Triton may send); drop --no-verify")
        triton.validate(MAX_TRITON_BATCH)
    # Checked (and made Path) before any slow work.
    out_path = check_writable_target(out, "--out", ConfigError) if out is not None else None
    report_file = check_writable_target(report_path, "--report", ConfigError) if report_path is not None else None

    from .convert import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES

    opset = config.opset or DEFAULT_OPSET
    report: dict = {"config": dict(vars(config)), "opset": opset, "steps": {}, "versions": _versions()}
    report["config"]["opset"] = opset
    steps = ["build", "convert", "clean", "precision", "check", "verify", "write"]
    clock = {"t": time.perf_counter()}

    def step(name: str, detail: str = "") -> None:
        now = time.perf_counter()
        report["steps"][name] = round(now - clock["t"], 3)
        clock["t"] = now
        say(f"[{steps.index(name) + 1}/{len(steps)}] {name:<9} {report['steps'][name]:6.1f} s  {detail}".rstrip())

    # 1. build (and load weights)
    from .model import build_vgg19_unet
    from .weights import copy_weights, load_encoder_weights, load_weights

    h, w = (None, None) if config.dynamic_size else config.input_size
    assert config.num_classes is not None  # settled by resolved() above
    model = build_vgg19_unet((h, w, 3), config.num_classes, seed=config.seed, width_multiplier=config.width_multiplier)
    described: dict[str, str] = {}  # what the model records about itself beyond ModelInfo (segment-unet --info)
    if config.encoder_weights:
        described["encoder_weights_sha256"] = load_encoder_weights(model, config.encoder_weights)
    if config.weights:
        described["weights_sha256"] = load_weights(model, config.weights)
    if keras_model is not None:
        described["weights_sha256"] = copy_weights(model, keras_model)
        described["weights_source"] = f"in-memory Keras model {keras_model.name!r}"
    trained = bool(config.weights or config.encoder_weights or keras_model is not None)
    report["params"] = int(model.count_params())
    report["trained"] = trained
    origin = [config.weights, config.encoder_weights, described.get("weights_source")]
    step("build", f"{report['params']:,} parameters, " + (
        "weights from " + ", ".join(filter(None, origin)) if trained
        else f"UNTRAINED (random init, seed {config.seed})"))

    # 2. convert
    from .convert import convert_keras

    proto = convert_keras(model, head=config.head, layout=config.layout, opset=opset, dynamic_size=config.dynamic_size,
                          input_dtype=config.input_dtype, mean=config.mean, std=config.std)
    step("convert", f"tf2onnx, opset {opset}, {len(proto.graph.node)} nodes")

    # 3. clean
    import keras

    from .graph import check, clean, op_histogram

    factors = [tuple(l.size) for l in model.layers if isinstance(l, keras.layers.UpSampling2D)]
    proto, graph_steps = clean(proto, factors=factors, input_name=INPUT_NAME, output_name=OUTPUT_NAMES[config.head])
    form = config.fold_form()
    report["fold_upsample"] = {"form": form, "stages": 0}
    if form != "off":
        from .fold import fold_upsample_convs

        proto, report["fold_upsample"]["stages"] = fold_upsample_convs(proto, form)
        if not report["fold_upsample"]["stages"]:
            # Only a different tf2onnx graph could do this; the export is still correct, just not folded.
            say(f"WARNING: --fold-upsample {form}: no decoder stage matched the pattern; graph left unfolded")
        graph_steps.append({"step": f"fold_upsample ({form})", "ops": op_histogram(proto)})
        check(proto)
    if config.pad_channels:
        from .pad import pad_channels

        proto, report["pad_channels"] = pad_channels(proto)
        graph_steps.append({"step": "pad_channels", "ops": op_histogram(proto)})
        check(proto)
    report["graph"] = graph_steps
    step("clean", _fmt_hist(graph_steps[-1]["ops"]))

    # 4. precision
    fp32_data = None
    if config.precision == "fp16":
        from .precision import to_fp16

        proto = to_fp16(proto)
    elif config.precision == "int8":
        fp32_data = proto.SerializeToString()
        proto, report["calibration"], held_out = _quantize(proto, config)
    report["ops"] = op_histogram(proto)
    step("precision", config.precision + (f" ({report['calibration']['source']}, {report['calibration']['method']})"
                                            if config.precision == "int8" else ""))

    # 5. metadata + check
    if "calibration" in report:  # what an int8 model was calibrated on travels with it (segment-unet --info)
        c = report["calibration"]
        described["calibration"] = f"{c['source']}, {c['method']}, {c['format']} per-channel"
    described["graph"] = _graph_form(report)  # the fold and padding change the nodes: say which graph this is
    _write_metadata(proto, config, described, trained, report["versions"])
    check(proto)
    data = proto.SerializeToString()
    report["size_bytes"] = len(data)
    step("check", f"onnx.checker full_check passed, {len(data) / 1e6:.1f} MB")

    # 6. verify
    if config.verify:
        report["verification"] = _verify(model, data, config, triton.max_batch_size if triton else None)
        detail = _fmt_verification(report["verification"])
        if fp32_data is not None:
            report["int8_accuracy"] = _int8_accuracy(model, fp32_data, data, held_out, config)
            a = report["int8_accuracy"]
            conf = a["vs_fp32"]["confident_agreement"]
            detail = (f"int8 on {a['images']} held-out images: mask vs fp32 {a['vs_fp32']['agreement']:.4f} "
                      f"(confident {conf:.4f} of {a['confident_pixels']} px), mIoU {a['vs_fp32']['mean_iou']:.3f}"
                      if conf is not None else f"int8: no confident pixels in {a['images']} held-out images: "
                      "accuracy gate NOT applicable (untrained model?)")
        step("verify", detail)
    else:
        report["verification"] = {"skipped": True}
        say("WARNING: --no-verify: the ONNX model was NOT compared with Keras")
        step("verify", "SKIPPED")

    # 7. write
    report["output"] = str(out_path) if out_path else None
    written = []
    if out_path is not None:
        _write(out_path, data, "--out")
        written.append(str(out_path))
    if triton is not None:
        report["triton"] = str(_write_triton(proto, triton, config))
        written.append(report["triton"])
    step("write", ", ".join(written))
    if report_file is not None:
        _write(report_file, (json.dumps(report, indent=2, default=str) + "\n").encode(), "--report")
    return ExportResult(path=out_path, report=report)


def _write(path: Path, data: bytes, what: str) -> None:
    """Atomic write, creating missing folders only now (after verification); a disk-full or permission error
    becomes one clear ExportError, and the folders this write made are removed again."""
    created = new_folders(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except BaseException as exc:
        remove_empty(created)
        if not isinstance(exc, OSError):
            raise
        raise ExportError(
            f"{what} {str(path)!r} could not be written ({exc.strerror or exc}); nothing was left there. "
            "Free disk space or choose another folder"
        ) from exc


def _graph_form(report: dict) -> str:
    """One line naming the graph's form (decoder fold, padding), as segment-unet --info prints it."""
    fold = report["fold_upsample"]
    line = (f"decoder fold {fold['form']} ({fold['stages']} stages)" if fold["stages"]
            else "seed graph (Resize + Concat decoder)")
    padded = report.get("pad_channels") or []
    return line + (f", {len(padded)} conv{'s' if len(padded) > 1 else ''} padded to channel multiples of 8"
                   if padded else "")


def _write_metadata(proto, config: ExportConfig, described: dict, trained: bool, versions: dict) -> None:
    import onnx

    from unet_runtime.model_info import VOC_CLASSES, ModelInfo

    assert config.num_classes is not None  # export_model resolved the config
    names = config.class_names or (VOC_CLASSES if config.num_classes == len(VOC_CLASSES) else tuple(f"class_{i}" for i in range(config.num_classes)))
    h, w = (None, None) if config.dynamic_size else config.input_size
    extra = {
        "weights": "trained" if trained else f"untrained (random init, seed {config.seed})",
        "versions": json.dumps(versions),
        **described,
    }
    info = ModelInfo(
        num_classes=config.num_classes, layout=config.layout, height=h, width=w, head=config.head,
        precision=config.precision, input_dtype=config.input_dtype, mean=tuple(config.mean), std=tuple(config.std),
        class_names=tuple(names), size_multiple=SIZE_MULTIPLE, extra=extra,
    )
    onnx.helper.set_model_props(proto, info.to_metadata())
    proto.producer_name = "unet-onnx export-unet"
    proto.doc_string = "VGG19-UNet semantic segmentation, exported and verified against Keras by unet-onnx"


def _write_triton(proto, triton, config: ExportConfig) -> Path:
    import numpy as np

    from unet_runtime.images import to_model_input

    from .triton import write_triton_repo
    from .verify import Case, make_pixels

    h, w = (64, 96) if config.dynamic_size else config.input_size
    pixels = make_pixels(Case(1, h, w), config.seed)
    dtype = np.uint8 if config.input_dtype == "uint8" else np.float32
    test_input = to_model_input(list(pixels), config.mean, config.std, config.layout, dtype=dtype)
    try:
        return write_triton_repo(proto, triton, test_input)
    except OSError as exc:
        raise ExportError(f"--triton-repo {str(triton.repo)!r} could not be written ({exc.strerror or exc}); nothing was left there") from exc


def _verify(model, data: bytes, config: ExportConfig, triton_batch: int | None = None) -> dict:
    import onnxruntime as ort

    from .verify import Case, verify

    if config.dynamic_size:
        # Non-square, different sizes per batch: catches H/W swaps and a
        # graph that secretly fixed one size.
        cases = [Case(1, 96, 64), Case(2, 64, 96)]
    else:
        cases = [Case(1, *config.input_size), Case(2, *config.input_size)]
    if triton_batch and triton_batch > max(c.batch for c in cases):
        cases.append(Case(triton_batch, cases[0].height, cases[0].width))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return verify(model, session, head=config.head, layout=config.layout, precision=config.precision,
                  cases=cases, mean=config.mean, std=config.std, seed=config.seed, input_dtype=config.input_dtype)


def _int8_images(config: ExportConfig):
    """(calibration images, held-out images), uint8 at the model's size."""
    from .calibration import load_images, synthetic_images

    # A size-agnostic model is calibrated at 256x256: ranges barely depend on size.
    h, w = (256, 256) if config.dynamic_size else config.input_size
    if config.calibration_images:
        images = load_images(config.calibration_images, h, w)
        # Every 4th image is held out of calibration for the accuracy gate.
        held = images[3::4]
        calib = [im for i, im in enumerate(images) if i % 4 != 3]
        return calib, held, f"{len(calib)} images from {config.calibration_images}"
    calib = synthetic_images(config.calibration_count, h, w, seed=config.seed + 1000)
    held = synthetic_images(max(2, config.calibration_count // 4), h, w, seed=config.seed + 2000)
    return calib, held, f"{len(calib)} synthetic shape images"


def _quantize(proto, config: ExportConfig):
    import numpy as np

    from unet_runtime.images import to_model_input

    from .precision import to_int8

    calib, held, source = _int8_images(config)
    dtype = np.uint8 if config.input_dtype == "uint8" else np.float32
    batches = [to_model_input([im], config.mean, config.std, config.layout, dtype=dtype) for im in calib]
    quantized = to_int8(proto, batches, method=config.calibration_method)
    return quantized, {"source": source, "method": config.calibration_method, "images": len(calib),
                       "held_out": len(held), "per_channel": True, "format": "QDQ U8S8"}, held


def _int8_accuracy(model, fp32_data: bytes, int8_data: bytes, held, config: ExportConfig) -> dict:
    import onnxruntime as ort

    from .verify import int8_gate

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    fp32 = ort.InferenceSession(fp32_data, opts, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(int8_data, opts, providers=["CPUExecutionProvider"])
    return int8_gate(model, fp32, int8, held, head=config.head, layout=config.layout, mean=config.mean,
                     std=config.std, input_dtype=config.input_dtype)


def _fmt_hist(hist: dict) -> str:
    return " ".join(f"{op}:{n}" for op, n in hist.items())


def _fmt_verification(rep: dict) -> str:
    parts = []
    for c in rep["cases"]:
        s = f"b{c['batch']} {c['height']}x{c['width']}:"
        if "rel_l2" in c:
            s += f" relL2 {c['rel_l2']:.2g} maxabs {c['max_abs']:.2g}"
        conf = c["confident_agreement"]
        s += f" mask {c['agreement']:.4f}"
        s += f" (confident {conf:.4f} of {c['confident_pixels']} px)" if conf is not None else " (no confident px)"
        parts.append(s)
    return "; ".join(parts)
