"""The export pipeline: a list of named steps over one :class:`ExportState`.

    build -> convert -> reference -> clean -> fold -> pad -> precision -> frames -> metadata
          -> check -> verify -> write

Each step is a plain function of the state: it reads what it needs
(``state.config`` holds every setting) and adds what it produces, and
returns its log line (and, for ``verify``, one line per gate). The runner
times each step, measures its peak memory and prints its lines; nothing else
is special about any step. Every graph rewrite is its own step, and the ONNX
checker runs once, on the final model. The report is written from the state
at the end. Nothing is written until every step has passed; the model file
and the report are written atomically.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from unet_runtime.atomic import (
    atomic_write_bytes,
    check_writable_target,
    new_folders,
    remove_empty,
)
from unet_runtime.model_info import INPUT_NAME, OUTPUT_NAMES

from .config import ExportConfig
from .errors import ConfigError, ConversionError, ExportError
from .resources import StepMeter, process_peak_mb

__all__ = ["ExportConfig", "ExportResult", "ExportState", "export_model", "STEPS"]

log = logging.getLogger(__name__)

#: Triton's max_batch_size is verified against Keras at that batch; larger
#: batches would make verification (on a CPU) take minutes.
MAX_TRITON_BATCH = 32


@dataclass
class ExportResult:
    """What :func:`export_model` produced: the path (None for a Triton-only export) and the full report."""

    path: Path | None
    report: dict = field(default_factory=dict)


@dataclass
class ExportState:
    """Everything the steps share. Each field names the step that sets it."""

    config: ExportConfig
    out: Path | None = None
    triton: Any = None  # TritonOptions or None
    source_model: Any = None  # a user's in-memory Keras model (export_model(keras_model=...))
    network: Any = None  # a user's own network (network.Network), or None for the reference model
    # where TensorFlow's work runs (tfside.LocalSide or ChildSide; made on first use)
    tensorflow: Any = None
    # build (keras_model only where TensorFlow runs in this process)
    keras_model: Any = None
    params: int = 0
    #: (fh, fw) of each nearest UpSampling2D, in layer order: each is one Resize after conversion
    factors: list = field(default_factory=list)
    # reference: Keras' outputs for every verification image (verify.KerasReference or alike)
    reference: Any = None
    tensorflow_peak_mb: float | None = None  # TensorFlow's child process, when it has one
    # what the model says of its weights (metadata)
    weights_info: dict[str, str] = field(default_factory=dict)
    trained: bool = False
    # convert, clean, precision, check: the ONNX ModelProto as it evolves
    proto: Any = None
    graph_steps: list = field(default_factory=list)
    fold_stages: int = 0
    padded: list = field(default_factory=list)
    # precision (int8)
    fp32_proto: Any = None
    calibration: dict | None = None
    held_out: list | None = None
    # check
    size_bytes: int = 0
    # verify
    verification: dict | None = None
    # write
    written: list[str] = field(default_factory=list)
    # the runner: each step's time and peak memory, and warnings to print after its line
    usage: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def graph_form(self) -> str:
        """One line naming the graph's form (decoder fold, padding), as segment-unet --info prints it."""
        form = self.config.fold_form()
        unfolded = (
            "converted graph (no decoder fold)"
            if self.network is not None
            else "reference graph (Resize + Concat decoder)"
        )
        line = f"decoder fold {form} ({self.fold_stages} stages)" if self.fold_stages else unfolded
        n = len(self.padded)
        return line + (
            f", {n} conv{'s' if n > 1 else ''} padded to channel multiples of 8" if n else ""
        )


# ------------------------------------------------------------------ the steps
def _side(state: ExportState):
    """Where TensorFlow's work runs: the export's choice, else this process (steps driven one by one)."""
    if state.tensorflow is None:
        from .tfside import LocalSide

        state.tensorflow = LocalSide(state)
    return state.tensorflow


def build(state: ExportState) -> str:
    """The reference Keras model at the export size, with the user's weights (or a seeded random init);
    or the user's own network, as network.py prepared it."""
    return _side(state).build()


def build_keras(state: ExportState) -> str:
    """:func:`build`'s work, where TensorFlow runs (tfside)."""
    line = _build_model(state)
    import keras

    state.params = int(state.keras_model.count_params())
    state.factors = [
        tuple(layer.size)
        for layer in state.keras_model.layers
        if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest"
    ]
    return line


def _build_model(state: ExportState) -> str:
    if state.network is not None:
        return _own_network(state)
    from .model import build_vgg19_unet
    from .weights import copy_weights, load_encoder_weights, load_weights

    c = state.config
    assert c.num_classes is not None  # settled by ExportConfig.resolved()
    h, w = c.size or (None, None)
    model = build_vgg19_unet(
        (h, w, 3), c.num_classes, seed=c.seed, width_multiplier=c.width_multiplier
    )
    if c.encoder_weights:
        state.weights_info["encoder_weights_sha256"] = load_encoder_weights(
            model, c.encoder_weights
        )
    if c.weights:
        state.weights_info["weights_sha256"] = load_weights(model, c.weights)
    if state.source_model is not None:
        state.weights_info["weights_sha256"] = copy_weights(model, state.source_model)
        state.weights_info["weights_source"] = f"in-memory Keras model {state.source_model.name!r}"
    state.keras_model = model
    state.trained = bool(c.weights or c.encoder_weights or state.source_model is not None)
    origin = ", ".join(
        filter(None, [c.weights, c.encoder_weights, state.weights_info.get("weights_source")])
    )
    return f"{model.count_params():,} parameters, " + (
        f"weights from {origin}" if state.trained else f"UNTRAINED (random init, seed {c.seed})"
    )


def _own_network(state: ExportState) -> str:
    from .weights import weights_digest

    net = state.network
    state.keras_model = net.model
    state.trained = True  # the user's weights, whatever they are
    state.weights_info["weights_sha256"] = weights_digest(net.model)
    state.weights_info["weights_source"] = (
        state.config.model or f"in-memory Keras model {net.name!r}"
    )
    state.weights_info["network"] = net.describe()
    return f"{net.model.count_params():,} parameters, {net.describe()}"


def convert(state: ExportState) -> str:
    """tf2onnx, weights attached (convert.py), where TensorFlow runs; the model is handed over by
    :func:`reference`, once TensorFlow's work is done."""
    return _side(state).convert()


def convert_keras_model(state: ExportState) -> str:
    """:func:`convert`'s work, where TensorFlow runs (tfside)."""
    import tf2onnx

    from .convert import convert_keras

    c = state.config
    assert c.opset is not None  # settled by ExportConfig.resolved()
    state.proto = convert_keras(state.keras_model, c)
    return f"tf2onnx {tf2onnx.__version__}, opset {c.opset}, {len(state.proto.graph.node)} nodes"


def reference(state: ExportState) -> str:
    """Keras' logits and probabilities for every verification image; then TensorFlow's work is done:
    its process exits (tfside.py) and the converted model comes back.

    After conversion, not before: tf2onnx's memory is freed when it ends, while TensorFlow keeps what
    Keras' calls used, so one process peaks near the larger of the two, not their sum.
    """
    from .verify import verification_images

    c = state.config
    side = _side(state)
    line = "skipped (--no-verify)"
    if c.verify:
        images = verification_images(_cases(state))
        state.reference = side.reference(images)
        line = (
            f"Keras on {len(images)} images, {state.reference.seconds:.1f} s"
            if side.isolated
            # In this process Keras runs during verify, after ONNX Runtime has run and freed its
            # memory: TensorFlow keeps what its calls used, so running it first would add to verify's peak.
            else f"{len(images)} images, computed during verify (TensorFlow in this process)"
        )
    # --resize-in-graph: Keras still has to see the graph's own resized frames (verify).
    keep = c.resize_in_graph and c.verify
    state.proto = side.take_model(keep_running=keep)
    if side.isolated and not keep:
        state.tensorflow_peak_mb = side.peak_mb()
        line += f"; TensorFlow's process peaked at {state.tensorflow_peak_mb / 1024:.1f} GiB and has exited"
    return line


def _cases(state: ExportState):
    """The verification cases (verify.verification_cases): what Keras computes and verify checks."""
    from .verify import verification_cases

    c = state.config
    return verification_cases(c.size, c.seed, state.triton.max_batch_size if state.triton else None)


def clean(state: ExportState) -> str:
    """The clean-up passes (graph.py): constant Resize scales, I/O names, onnxslim."""
    from .graph import clean as clean_graph

    state.proto, state.graph_steps = clean_graph(
        state.proto,
        factors=state.factors,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAMES[state.config.head],
        # the reference graph must come out free of shape arithmetic; another network (attention's
        # reshapes, a size-agnostic graph's shape chains) may keep what it needs
        strict=state.network is None,
    )
    return _ops(state)


def fold(state: ExportState) -> str:
    """--fold-upsample: each decoder upsampling folded into the conv after it (fold.py)."""
    form = state.config.fold_form()
    if form == "off":
        return "off" if state.network is not None else "off (the reference graph)"
    from .fold import fold_upsample_convs

    state.proto, state.fold_stages = fold_upsample_convs(state.proto, form)
    _record(state, f"fold_upsample ({form})", {"form": form, "stages": state.fold_stages})
    if not state.fold_stages:
        if state.network is not None:  # another architecture: the pattern may simply not be there
            return f"{form}: no match (no nearest Resize -> Concat -> 3x3 Conv stage)"
        # Only a different tf2onnx graph could do this; the export is still correct, just not
        # folded.
        state.warnings.append(
            f"--fold-upsample {form}: no decoder stage matched the pattern; graph left unfolded"
        )
        return f"{form}: no decoder stage matched"
    return f"{form}, {state.fold_stages} stages"


def pad(state: ExportState) -> str:
    """--pad-channels: conv1-1's input and an argmax head's classes padded to multiples of 8 (pad.py)."""
    if not state.config.pad_channels:
        return "off"
    from .pad import pad_channels

    try:
        state.proto, state.padded = pad_channels(state.proto)
    except ConversionError as exc:
        if state.network is None:
            raise
        return f"no match ({exc})"
    _record(state, "pad_channels", state.padded)
    return f"{len(state.padded)} convs padded" if state.padded else "nothing to pad"


def _record(state: ExportState, name: str, note) -> None:
    """A graph rewrite's entry in the report: its name, the op histogram after it, its note."""
    from .graph import op_histogram

    state.graph_steps.append({"step": name, "ops": op_histogram(state.proto), "note": note})


def _ops(state: ExportState) -> str:
    return " ".join(f"{op}:{n}" for op, n in state.graph_steps[-1]["ops"].items())


def precision(state: ExportState) -> str:
    """fp16 (ONNX Runtime's converter) or INT8 (calibrated on images, some held out for verification)."""
    c = state.config
    if c.precision == "fp16":
        from .precision import to_fp16

        state.proto = to_fp16(state.proto)
    elif c.precision == "int8":
        from .precision import to_int8

        calib, state.held_out, source = _int8_images(c)
        state.fp32_proto = state.proto
        state.proto = to_int8(
            state.proto,
            _model_inputs(calib, c),
            method=c.calibration_method,
            float_ops=c.int8_float_ops,
        )
        state.calibration = {
            "source": source,
            "method": c.calibration_method,
            "images": len(calib),
            "held_out": len(state.held_out),
            "per_channel": True,
            "format": "QDQ U8S8",
        }
        kept = f", {'/'.join(c.int8_float_ops)} kept in float" if c.int8_float_ops else ""
        return f"int8 ({source}, {c.calibration_method}{kept})"
    return c.precision


def frames(state: ExportState) -> str:
    """--resize-in-graph: frames of any size in, resized to the network inside the graph (frames.py)."""
    c = state.config
    if not c.resize_in_graph:
        return "off (the runtime resizes frames on the host)"
    from .frames import resize_in_graph

    assert c.size is not None  # validate(): --resize-in-graph needs a fixed size
    h, w = c.size
    state.proto = resize_in_graph(state.proto, h, w, head=c.head)
    back = "mask resized back to the frame" if c.head == "argmax" else f"{c.head} at {h}x{w}"
    return f"uint8 frames of any size -> {h}x{w} bilinear -> network -> {back}"


def metadata(state: ExportState) -> str:
    """What the runtime reads (size, layout, normalization, head, classes) and where the model came from."""
    _write_metadata(state)
    return f"{len(state.proto.metadata_props)} keys ({state.graph_form()})"


def check(state: ExportState) -> str:
    """``onnx.checker`` (full check, with strict shape inference), once, on the final model."""
    from .graph import check as check_graph

    check_graph(state.proto)
    state.size_bytes = state.proto.ByteSize()
    return f"onnx.checker full_check passed, {state.size_bytes / 1e6:.1f} MB"


def verify(state: ExportState) -> list[str]:
    """Every numeric gate against Keras (and, for INT8, against the fp32 graph on held-out images)."""
    from .verify import FRAME_SIZES, gate_lines, verify_export

    c = state.config
    if not c.verify:
        state.verification = {"skipped": True}
        state.warnings.append("--no-verify: the ONNX model was NOT compared with Keras")
        return ["SKIPPED: the model was NOT compared with Keras"]
    try:
        state.verification = verify_export(
            state.reference,
            state.proto,
            c,
            cases=_cases(state),
            fp32_model=state.fp32_proto,
            held_out=state.held_out or (),
            frames=FRAME_SIZES if c.resize_in_graph else (),
        )
    finally:
        _side(state).close()  # --resize-in-graph kept it for the frames
    state.fp32_proto = state.held_out = None  # their memory is not needed any more
    return [f"{len(state.verification['gates'])} gates passed", *gate_lines(state.verification)]


def write(state: ExportState) -> str:
    """The model file (and Triton repository), atomically, folders created only now."""
    if state.out is not None:
        _write(state.out, state.proto.SerializeToString(), "--out")
        state.written.append(str(state.out))
    if state.triton is not None:
        state.written.append(str(_write_triton(state)))
    return ", ".join(state.written)


#: The pipeline, in order: (name, step). Each step returns its log line's detail (or a list: the
#: detail, then lines printed under it).
STEPS: tuple[tuple[str, Callable[[ExportState], str | list[str]]], ...] = (
    ("build", build),
    ("convert", convert),
    ("reference", reference),
    ("clean", clean),
    ("fold", fold),
    ("pad", pad),
    ("precision", precision),
    ("frames", frames),
    ("metadata", metadata),
    ("check", check),
    ("verify", verify),
    ("write", write),
)


# ------------------------------------------------------------------ the runner
def export_model(
    config: ExportConfig,
    out: str | Path | None,
    *,
    report_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    triton=None,
    keras_model=None,
    isolate: bool | None = None,
) -> ExportResult:
    """Export the reference VGG19-UNet to a verified ONNX file at ``out``.

    Args:
        config: what to export (see :class:`ExportConfig`).
        out: the ``.onnx`` path; written only if every step passes.
        keras_model: a trained ``keras.Model`` of the reference model's architecture, in
            memory (e.g. at the end of a training script), instead of
            ``config.weights``: its weights are copied layer by layer into
            the model built for ``config`` (any input size it was trained
            at), and its head width is the class count unless
            ``config.num_classes`` says otherwise (then they must agree).
        report_path: optional JSON report (errors, gates, op histograms,
            sizes, each step's time and peak memory, versions), written
            atomically too.
        progress: called with one line per step (the CLI prints them).
        triton: a :class:`~unet_export.triton.TritonOptions`: also write a
            Triton model repository (the model is then also verified at
            ``max_batch_size``). ``out`` may then be ``None``.
        isolate: run TensorFlow's part (build, convert, Keras' reference
            outputs) in a child process that exits before verification
            (tfside.py). Default: yes, unless ``keras_model`` is given or
            ``UNET_EXPORT_IN_PROCESS=1``.

    Raises:
        ExportError: a subclass naming what failed; nothing is written.
    """
    say = progress or (lambda line: log.info(line))
    if config.model is not None and keras_model is not None:
        raise ConfigError("config.model and keras_model= were both given; pass one model")
    config.validate(size=keras_model is None)  # an in-memory model may be another network
    if out is None and triton is None:
        raise ConfigError("nothing to write: give --out FILE and/or --triton-repo DIR")
    if triton is not None:
        if not config.verify:
            raise ConfigError(
                "--triton-repo needs verification (it checks every batch size Triton may send); drop --no-verify"
            )
        triton.validate(MAX_TRITON_BATCH, config.precision)
    # Checked (and made Path) before any slow work.
    out_path = check_writable_target(out, "--out", ConfigError) if out is not None else None
    report_file = (
        check_writable_target(report_path, "--report", ConfigError)
        if report_path is not None
        else None
    )

    from .tfside import open_side

    state = ExportState(config=config, out=out_path, triton=triton)
    state.tensorflow = open_side(state, keras_model, isolate)
    try:
        _source(state, keras_model)
        _run_steps(state, say)
    finally:
        state.tensorflow.close()
    report = _report(state)
    if report_file is not None:
        _write(report_file, (json.dumps(report, indent=2, default=str) + "\n").encode(), "--report")
    return ExportResult(path=out_path, report=report)


def _run_steps(state: ExportState, say: Callable[[str], None]) -> None:
    """Each step in order, timed and measured, its lines handed to ``say``."""
    meter = StepMeter()
    for i, (name, step) in enumerate(STEPS, start=1):
        meter.start()
        lines = step(state)
        detail, *more = [lines] if isinstance(lines, str) else lines
        usage = meter.stop()
        state.usage[name] = usage.as_dict()
        mem = (
            f"{usage.peak_rss_mb / 1024:4.1f} GiB" if usage.peak_rss_mb is not None else "    -   "
        )
        say(f"[{i}/{len(STEPS)}] {name:<9} {usage.seconds:6.1f} s {mem}  {detail}".rstrip())
        for line in more:
            say(f"      {line}")
        while state.warnings:
            say(f"WARNING: {state.warnings.pop(0)}")


def _source(state: ExportState, keras_model) -> None:
    """Settle the config and what the model comes from, before any slow step.

    A ``--model`` file or a ``keras_model=`` of another architecture is the
    user's own network (checked and prepared by network.py, where TensorFlow
    runs); a ``keras_model=`` of the reference architecture gives its weights.
    """
    config = state.config
    if config.model is not None or keras_model is not None:
        state.network, keras_model = state.tensorflow.prepare(config, keras_model)
    state.source_model = keras_model
    state.config = config.resolved(keras_model, state.network)
    state.config.validate(state.network)


def _report(state: ExportState) -> dict:
    """The JSON report, from the final state."""
    c = state.config
    report: dict = {
        "config": dict(vars(c)),
        "opset": c.opset,
        "steps": state.usage,
        "peak_rss_mb": round(process_peak_mb(), 1),  # the whole run's (the kernel's own counter)
        "versions": _versions(),
        "params": state.params,
        "tensorflow": "child process"
        if state.tensorflow and state.tensorflow.isolated
        else "this process",
        "tensorflow_peak_rss_mb": state.tensorflow_peak_mb,
        "trained": state.trained,
        "graph": state.graph_steps,
        "fold_upsample": {"form": c.fold_form(), "stages": state.fold_stages},
        "ops": _histogram(state.proto),
        "size_bytes": state.size_bytes,
        "verification": state.verification,
        "output": str(state.out) if state.out else None,
    }
    if state.padded:
        report["pad_channels"] = state.padded
    if state.calibration:
        report["calibration"] = state.calibration
    if state.triton is not None:
        report["triton"] = state.written[-1]
    return report


def _histogram(model) -> dict:
    from .graph import op_histogram

    return op_histogram(model)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in (
        "unet-onnx",
        "tensorflow",
        "keras",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxslim",
        "numpy",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


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


def _write_metadata(state: ExportState) -> None:
    import onnx

    from unet_runtime.model_info import VOC_CLASSES, ModelInfo

    from .model import SIZE_MULTIPLE
    from .network import SIZE_MULTIPLE as NETWORK_SIZE_MULTIPLE

    c = state.config
    assert c.num_classes is not None  # export_model resolved the config
    names = c.class_names or (
        VOC_CLASSES
        if c.num_classes == len(VOC_CLASSES)
        else tuple(f"class_{i}" for i in range(c.num_classes))
    )
    h, w = c.size or (None, None)
    extra = {
        "weights": "trained" if state.trained else f"untrained (random init, seed {c.seed})",
        "versions": json.dumps(_versions()),
        **state.weights_info,
        "graph": state.graph_form(),  # the fold and padding change the nodes: say which graph this is
    }
    # what an int8 model was calibrated on travels with it (segment-unet --info)
    if state.calibration:
        cal = state.calibration
        extra["calibration"] = f"{cal['source']}, {cal['method']}, {cal['format']} per-channel"
    info = ModelInfo(
        num_classes=c.num_classes,
        layout=c.layout,
        height=h,
        width=w,
        head=c.head,
        precision=c.precision,
        input_dtype=c.input_dtype,
        mean=tuple(c.mean),
        std=tuple(c.std),
        class_names=tuple(names),
        size_multiple=SIZE_MULTIPLE if state.network is None else NETWORK_SIZE_MULTIPLE,
        resize_in_graph=c.resize_in_graph,
        extra=extra,
    )
    onnx.helper.set_model_props(state.proto, info.to_metadata())
    state.proto.producer_name = "unet-onnx export-unet"
    what = "VGG19-UNet" if state.network is None else f"Keras model {state.network.name!r}"
    state.proto.doc_string = (
        f"{what} semantic segmentation, exported and verified against Keras by unet-onnx"
    )


def _write_triton(state: ExportState) -> Path:
    import numpy as np

    from .triton import write_triton_repo

    c = state.config
    h, w = c.size or (64, 96)
    # The repository's self-check input (test_data_set_0): any image will do; seeded, so a
    # re-export writes the same files.
    image = np.random.default_rng(c.seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    try:
        return write_triton_repo(
            state.proto, state.triton, next(_model_inputs([image], c)), c.precision
        )
    except OSError as exc:
        raise ExportError(
            f"--triton-repo {str(state.triton.repo)!r} could not be written ({exc.strerror or exc}); "
            "nothing was left there"
        ) from exc


def _model_inputs(images, config: ExportConfig):
    """One model-ready batch per image (the runtime's own pre-processing), as a generator."""
    import numpy as np

    from unet_runtime.images import to_model_input

    dtype = np.uint8 if config.input_dtype == "uint8" else np.float32
    return (
        to_model_input([im], config.mean, config.std, config.layout, dtype=dtype) for im in images
    )


def _int8_images(config: ExportConfig):
    """(calibration images, held-out images, a description), uint8 at the model's size."""
    from .calibration import held_out_count, load_images, synthetic_images

    # A size-agnostic model is calibrated at 256x256: ranges barely depend on size.
    h, w = config.size or (256, 256)
    if config.calibration_images:
        images = load_images(config.calibration_images, h, w)
        # Every 4th image is held out of calibration for the accuracy gate.
        held = images[3::4]
        calib = [im for i, im in enumerate(images) if i % 4 != 3]
        return calib, held, f"{len(calib)} images from {config.calibration_images}"
    calib = synthetic_images(config.calibration_count, h, w, seed=config.seed + 1000)
    held = synthetic_images(held_out_count(config.calibration_count), h, w, seed=config.seed + 2000)
    return calib, held, f"{len(calib)} synthetic shape images"
