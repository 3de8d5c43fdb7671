"""Numerical parity of the ONNX model against the Keras original, as a list of gates.

Every export passes at least one gate with a figure; each gate names what it
measured, the value, the bound, and whether it passed. The gates:

* **logits** on every head: the ONNX graph's scores before its Softmax or
  ArgMax (the same graph with that tensor as an extra output: a twin sharing
  every weight, so an argmax model is checked value by value, not only
  through its mask) against Keras' logits, relative L2.
* **probabilities** (softmax head) against the untouched Keras model's output.
* **masks**: fp32 must agree with Keras on every pixel whose top-2 margin
  leaves no room for rounding; fp16 on >= 99% of the confident pixels.
* **INT8** (see :func:`_held_out`): the fp32 graph that was quantized
  against Keras, then the INT8 model against it on held-out images: logits
  and class masks.

The reference is always the user's untouched Keras model: one forward pass
returns its probabilities and the features entering the 1x1 head, and the
logits are the head applied to those features in float64 here. So the
verification also proves the conversion twin (resize upsampling, split
head) exact.

Tolerances are named constants; each says why it is what it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from unet_runtime.images import channels_last, softmax, to_model_input
from unet_runtime.metrics import (
    compare,
    confusion_matrix,
    mask_agreement,
    mean_iou,
    pixel_accuracy,
    relative_l2,
    squared_error,
    top2_margin,
)

from .errors import VerificationError
from .network import output_layer

__all__ = [
    "Gate",
    "Case",
    "KerasReference",
    "Reference",
    "verify_export",
    "gate_lines",
    "Runner",
    "verification_cases",
    "make_pixels",
    "verification_images",
    "logits_output",
    "FP32_REL_L2",
    "FP16_REL_L2",
    "INT8_REL_L2",
    "INT8_NOISE_REL_L2",
    "MASK_AGREEMENT_MIN",
    "INT8_MASK_AGREEMENT_MIN",
    "CONFIDENT_MARGIN",
    "FP32_TIE_MARGIN",
    "MIN_CONFIDENT_PIXELS",
]

log = logging.getLogger(__name__)

#: fp32 vs fp32: only summation order differs (measured ~9e-8 on this
#: network's logits and probabilities), so 1e-5 leaves 100x headroom and
#: still catches a wrong op or layout, and a single weight 1% off: the head's
#: largest weight scaled by 1.01 moves the logits of the tests' narrow model
#: by 3.3e-3 (tests/test_gates.py).
FP32_REL_L2 = 1e-5
#: fp16 keeps ~3 decimal digits: 4e-4..2e-3 measured on the logits of the
#: full model. 2e-2 is 10x that; a wrong op or layout is off by O(1).
FP16_REL_L2 = 2e-2
#: INT8 (8-bit activations, per-channel 8-bit weights) against the fp32
#: graph, logits on held-out images from the calibration source. Measured:
#: 0.023 (full network, untrained), 0.016-0.024 (full network trained on the
#: shapes fixture), 0.034 (the suite's narrow fixture); 0.1 is 3x the worst,
#: where a wrong scale or tensor gives ~1 (benchmarks/results/int8-calibration-*.md).
INT8_REL_L2 = 0.1
#: INT8 on the verification cases' uniform-noise images, which lie outside
#: the calibrated ranges: a sanity bound against Keras, not an accuracy claim
#: (the held-out gates are that). Measured 0.024 (untrained), 0.052 (trained),
#: 0.061 (narrow fixture); 0.25 is 4x the worst.
INT8_NOISE_REL_L2 = 0.25


#: Class-mask agreement required of fp16 on confident pixels.
MASK_AGREEMENT_MIN = 0.99
#: A pixel is confident when its fp32 top-1/top-2 probability margin is at
#: least this; below it, fp16 rounding may legitimately flip the argmax.
CONFIDENT_MARGIN = 0.05
#: For fp32 masks every pixel whose margin exceeds fp32's error by far
#: (1e-4 >> 1e-6) must agree exactly: only true near-ties may differ.
FP32_TIE_MARGIN = 1e-4
#: INT8 class-mask agreement with the fp32 model on confident held-out pixels.
INT8_MASK_AGREEMENT_MIN = 0.98
#: Fewer confident pixels than this cannot support a 99% claim (1 miss = 1%):
#: the mask gate is then reported as not applicable (the logits gate still runs).
MIN_CONFIDENT_PIXELS = 100
#: The in-graph bilinear resize may differ from the host's by one grey level: where the exact value is k + 0.5
#: (frequent with ratios such as 640 -> 64), float rounding in either implementation decides the rounding.
#: Measured on FRAME_SIZES: at most 1, on 1-5% of the values; the masks then differ only near ties.
FRAME_RESIZE_MAX_DIFF = 1
#: The rel L2 bound on logits against Keras, per precision (INT8: the uniform-noise bound; its
#: accuracy is gated against the fp32 graph on held-out images).
LOGITS_REL_L2 = {"fp32": FP32_REL_L2, "fp16": FP16_REL_L2, "int8": INT8_NOISE_REL_L2}
#: The mask agreement bound on confident pixels, per precision (fp32: exact above FP32_TIE_MARGIN).
MASK_MIN = {"fp32": 1.0, "fp16": MASK_AGREEMENT_MIN, "int8": INT8_MASK_AGREEMENT_MIN}
#: Images per Keras call: batch 2 takes no less time per image than two calls of one (2-core CPU), and
#: 0.5 GB more at 512x512 (TensorFlow keeps what a call used for the next one).
KERAS_BATCH = 1


@dataclass(frozen=True)
class Gate:
    """One numeric check: ``value`` must be <= ``bound`` (or >= with ``at_least``)."""

    name: str
    value: float
    bound: float
    at_least: bool = False

    @property
    def passed(self) -> bool:
        """Whether the value is within the bound (NaN never is)."""
        return bool(self.value >= self.bound if self.at_least else self.value <= self.bound)

    def as_dict(self) -> dict:
        """``{name, value, bound, passed}`` for the report."""
        return {
            "name": self.name,
            "value": self.value,
            "bound": self.bound,
            "passed": self.passed,
            "rule": ">=" if self.at_least else "<=",
        }

    def line(self) -> str:
        """``name value <= bound ok`` for the step log."""
        fmt = ".4f" if self.at_least else ".2g"
        return (
            f"{self.name}: {self.value:{fmt}} {'>=' if self.at_least else '<='} {self.bound:g} "
            f"{'ok' if self.passed else 'FAILED'}"
        )

    def failure(self) -> str:
        """The message for a failed gate, with the tolerance that would have been needed."""
        return (
            f"{self.name} is {self.value:.4g}, {'below' if self.at_least else 'above'} the bound {self.bound:g} "
            f"(a bound of {self.value:.3g} would have been needed)"
        )


@dataclass(frozen=True)
class Case:
    """One verification input: ``batch`` seeded images of ``height`` x ``width`` (their seeds in ``seeds``)."""

    batch: int
    height: int
    width: int
    seeds: tuple[int, ...]

    @property
    def label(self) -> str:
        """``b2 512x512``: how gates and the log name the case."""
        return f"b{self.batch} {self.height}x{self.width}"


def make_pixels(height: int, width: int, seed: int) -> np.ndarray:
    """A seeded random RGB image: uint8 ``(height, width, 3)``."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def verification_images(cases: Sequence["Case"]) -> dict[tuple, np.ndarray]:
    """Every distinct image of ``cases``: ``{(seed, height, width): uint8 (H, W, 3)}``."""
    return {
        (s, c.height, c.width): make_pixels(c.height, c.width, s) for c in cases for s in c.seeds
    }


def verification_cases(
    input_size: tuple[int, int] | None, seed: int, max_batch: int | None = None
) -> list[Case]:
    """Batch 1 and batch 2 (and ``max_batch``) at the export size; two shapes for a size-agnostic model.

    A fixed-size model's batch 2 repeats batch 1's image at index 0 and adds
    one, so Keras computes two images, not three. A size-agnostic model gets
    a non-square size per batch, which catches H/W swaps and a graph that
    secretly fixed one size.
    """
    if input_size is None:
        cases = [Case(1, 96, 64, (seed,)), Case(2, 64, 96, (seed + 1, seed + 2))]
    else:
        h, w = input_size
        cases = [Case(1, h, w, (seed,)), Case(2, h, w, (seed, seed + 1))]
    if max_batch and max_batch > 2:
        first = cases[0]
        cases.append(
            Case(max_batch, first.height, first.width, tuple(seed + i for i in range(max_batch)))
        )
    return cases


class Reference:
    """Keras' logits and probabilities per image key, once :meth:`compute` has seen the image.

    :class:`KerasReference` computes them here; tfside.py's asks TensorFlow's own process.
    """

    def __init__(self):
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.seconds = 0.0

    def compute(self, images: dict[tuple, np.ndarray]) -> None:
        """Keras on every image of ``{key: uint8 (H, W, 3)}`` not yet computed."""
        raise NotImplementedError

    def logits(self, keys: Sequence[tuple]) -> np.ndarray:
        """Stacked logits ``(N, H, W, C)`` float32 of computed images."""
        return np.stack([self._cache[k][0] for k in keys])

    def probs(self, keys: Sequence[tuple]) -> np.ndarray:
        """Stacked probabilities ``(N, H, W, C)`` float32 of computed images."""
        return np.stack([self._cache[k][1] for k in keys])


class KerasReference(Reference):
    """Keras' probabilities and logits per image, ``KERAS_BATCH`` images per call of one ``tf.function``.

    The logits are the head's 1x1 convolution applied in float64 to the
    features that enter it (the untouched model's own tensor), so the
    probabilities and the logits come from the same pass of the model the
    user trained. A ``tf.function`` (one trace, any batch and size) runs in
    graph mode: on a 2-core CPU it took 1.7 s and 0.7 GB per 512x512 image,
    where the eager call took 2.2 s and 1.2 GB.
    """

    def __init__(self, keras_model, mean, std):
        import keras
        import tensorflow as tf

        head = output_layer(keras_model)
        features = keras.Model(keras_model.input, [head.input, keras_model.output])
        spec = tf.TensorSpec([None, *keras_model.input_shape[1:]], tf.float32)
        self._call = tf.function(lambda x: features(x, training=False), input_signature=[spec])
        # The reference model's head is a 1x1 conv, applied here in float64; another network's
        # head (network.py) is a bare softmax, whose input is Keras' own logits.
        self._kernel = self._bias = None
        if head.weights:
            kernel, bias = (np.asarray(w, np.float64) for w in head.get_weights())
            self._kernel, self._bias = kernel.reshape(kernel.shape[-2:]), bias
        self._mean, self._std = mean, std
        super().__init__()

    def compute(self, images: dict[tuple, np.ndarray]) -> None:
        todo = [k for k in images if k not in self._cache]
        by_size: dict[tuple, list] = {}
        for k in todo:
            by_size.setdefault(images[k].shape, []).append(k)
        t0 = time.perf_counter()
        for keys in by_size.values():
            for i in range(0, len(keys), KERAS_BATCH):
                chunk = keys[i : i + KERAS_BATCH]
                x = to_model_input([images[k] for k in chunk], self._mean, self._std, "nhwc")
                features, probs = (np.asarray(t) for t in self._call(x))
                for j, k in enumerate(chunk):
                    logits = features[j].astype(np.float32)
                    if self._kernel is not None:
                        logits = (
                            features[j].astype(np.float64) @ self._kernel + self._bias
                        ).astype(np.float32)
                    self._cache[k] = (logits, probs[j].astype(np.float32))
        self.seconds += time.perf_counter() - t0


def logits_output(model, layout: str) -> tuple[str, int]:
    """The tensor holding the scores before the graph's Softmax/ArgMax head, and its class axis.

    Walks back from the output through the nodes that only move or resize
    it (Cast, Transpose; the mask resize of --resize-in-graph) to the Softmax
    or ArgMax and takes its input (the class axis is that node's ``axis``);
    for a logits head that is the output itself, in ``layout``.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    name = model.graph.output[0].name
    node = producer.get(name)
    while node is not None and node.op_type in (
        "Cast",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Resize",
    ):
        name = node.input[0]
        node = producer.get(name)
    if node is not None and node.op_type in ("Softmax", "ArgMax"):
        from .graph import node_attr

        axis = int(node_attr(node, "axis", -1 if node.op_type == "Softmax" else 0))
        return node.input[0], axis % 4
    return model.graph.output[0].name, 1 if layout == "nchw" else 3


def _session(model, extra_outputs: Iterable[str] = ()):
    """A one-shot CPU session on ``model`` with ``extra_outputs`` added as graph outputs.

    Arena and memory patterns off: each run allocates what it needs and
    frees it, so a verification at batch 2 and 512x512 does not keep a
    pool sized for it (measured: 1.1 GiB less peak for the same runs).
    """
    import onnxruntime as ort
    from onnx import helper

    extra = [o for o in extra_outputs if o not in {v.name for v in model.graph.output}]
    model.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in extra)
    try:
        data = model.SerializeToString()
    finally:
        for _ in extra:
            model.graph.output.pop()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


class Runner:
    """An ONNX model as verification runs it: model-ready input in, NHWC logits and mask (and probabilities) out."""

    def __init__(
        self,
        model,
        *,
        head: str,
        layout: str,
        input_dtype: str,
        mean,
        std,
        num_classes: int,
        extra_outputs: Sequence[str] = (),
    ):
        self.head, self.layout, self.mean, self.std = head, layout, mean, std
        self.dtype = np.uint8 if input_dtype == "uint8" else np.float32
        self.num_classes = num_classes
        self.logits_name, self.logits_axis = logits_output(model, layout)
        self.output_name = model.graph.output[0].name
        self.extra = list(extra_outputs)
        self.session = _session(model, [self.logits_name, *self.extra])
        self.input_name = self.session.get_inputs()[0].name
        self.seconds = 0.0

    def run(self, pixels: Sequence[np.ndarray]) -> dict:
        x = to_model_input(list(pixels), self.mean, self.std, self.layout, dtype=self.dtype)
        names = list(dict.fromkeys([self.output_name, self.logits_name, *self.extra]))
        t0 = time.perf_counter()
        outs = dict(zip(names, self.session.run(names, {self.input_name: x}), strict=True))
        self.seconds += time.perf_counter() - t0
        # The class axis last; a padded head (pad.py) has extra classes after the real ones.
        logits = np.moveaxis(outs[self.logits_name], self.logits_axis, -1)[..., : self.num_classes]
        logits = logits.astype(np.float32, copy=False)
        result = {"logits": logits, **{name: outs[name] for name in self.extra}}
        if self.head == "argmax":
            result["mask"] = outs[self.output_name]
        else:
            out = channels_last(outs[self.output_name], self.layout).astype(np.float32, copy=False)
            if self.head == "softmax":
                result["probs"] = out
            result["mask"] = out.argmax(-1)
        return result


def _mask_gate(
    label: str, ref_probs: np.ndarray, mask: np.ndarray, precision: str
) -> tuple[Gate | None, dict, dict | None]:
    """fp32: exact where the margin >= FP32_TIE_MARGIN; fp16: >= 99% on confident pixels (when there are enough).

    Returns the gate (None when it does not apply), the figures for the
    case's row, and the not-applicable entry (None when the gate applies).
    """
    margin = FP32_TIE_MARGIN if precision == "fp32" else CONFIDENT_MARGIN
    agree = mask_agreement(ref_probs, mask, margin)
    figures = {
        "agreement": agree["agreement"],
        "confident_pixels": agree["confident_pixels"],
        "confident_agreement": agree["confident_agreement"],
        "confident_margin": margin,
    }
    n = agree["confident_pixels"]
    enough = n > 0 if precision == "fp32" else n >= MIN_CONFIDENT_PIXELS
    if not enough:
        reason = (
            f"no pixel has a top-2 margin >= {margin:g}"
            if precision == "fp32"
            else f"{n} confident pixels (< {MIN_CONFIDENT_PIXELS}; untrained weights give a flat softmax)"
        )
        where = "" if precision == "fp32" else " on confident pixels"
        return None, figures, {"name": f"{label} mask vs Keras{where}", "reason": reason}
    name = (
        f"{label} mask vs Keras where margin >= {margin:g} ({n} px)"
        if precision == "fp32"
        else f"{label} mask vs Keras on confident pixels ({n} px)"
    )
    return (
        Gate(name, agree["confident_agreement"], MASK_MIN[precision], at_least=True),
        figures,
        None,
    )


@dataclass
class Family:
    """What one family of gates found: its gates, the gates that did not apply, rows for the report."""

    gates: list[Gate] = field(default_factory=list)
    not_applicable: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    #: failures with no figure to gate (an output of the wrong shape)
    failures: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    #: what to try, added to the error when one of this family's gates failed
    advice: str = ""


def _case_gates(cases, outputs, reference: "KerasReference", precision: str) -> Family:
    """Each verification case against Keras: logits (and probabilities), and the mask (not for INT8)."""
    fam = Family()
    bound = LOGITS_REL_L2[precision]
    for case, out in zip(cases, outputs, strict=True):
        keys = [(s, case.height, case.width) for s in case.seeds]
        ref_logits, ref_probs = reference.logits(keys), reference.probs(keys)
        row: dict = {"batch": case.batch, "height": case.height, "width": case.width}
        fam.rows.append(row)
        if out["mask"].shape != ref_probs.shape[:-1] or out["logits"].shape != ref_logits.shape:
            fam.failures.append(
                f"{case.label}: the ONNX model gives masks {out['mask'].shape} and logits "
                f"{out['logits'].shape}, Keras {ref_probs.shape[:-1]} and {ref_logits.shape}"
            )
            continue
        err = compare(ref_logits, out["logits"])
        row.update(logits_rel_l2=err["rel_l2"], logits_max_abs=err["max_abs"])
        fam.gates.append(Gate(f"{case.label} logits rel L2 vs Keras", err["rel_l2"], bound))
        if "probs" in out:
            err = compare(ref_probs, out["probs"])
            row.update(rel_l2=err["rel_l2"], max_abs=err["max_abs"])
            fam.gates.append(
                Gate(f"{case.label} probabilities rel L2 vs Keras", err["rel_l2"], bound)
            )
        # noise lies outside INT8's calibrated ranges: its masks are gated on held-out images
        if precision != "int8":
            gate, figures, skipped = _mask_gate(case.label, ref_probs, out["mask"], precision)
            row.update(figures)
            fam.gates += [gate] if gate else []
            fam.not_applicable += [skipped] if skipped else []
        log.info("verify: %s", row)
    return fam


def _reference(reference, config, images: dict, frame_runs: list[dict]):
    """Keras on every verification image (a no-op for those computed before), and on each frame's two
    resized inputs (graph's, host's). ``reference``: a KerasReference (or alike), or the Keras model."""
    if not hasattr(reference, "compute"):
        reference = KerasReference(reference, config.mean, config.std)
    reference.compute(images)
    reference.compute(
        {
            k: v
            for f in frame_runs
            for k, v in ((f["graph_key"], f["graph_input"]), (f["host_key"], f["host_input"]))
        }
    )
    return reference


def _int8_gates(held: dict, reference: "KerasReference", first: "Case") -> Family:
    """INT8: the fp32 graph that was quantized against Keras, then the held-out gates against it."""
    key = (first.seeds[0], first.height, first.width)
    err = compare(reference.logits([key]), held["check_logits"])
    name = (
        f"fp32 graph before quantization, b1 {first.height}x{first.width}: logits rel L2 vs Keras"
    )
    figures = {
        k: v for k, v in held.items() if k not in ("gates", "not_applicable", "check_logits")
    }
    lossy = any(not g.passed for g in held["gates"])
    return Family(
        gates=[Gate(name, err["rel_l2"], FP32_REL_L2), *held["gates"]],
        not_applicable=list(held["not_applicable"]),
        report={"held_out": figures},
        advice=INT8_ADVICE if lossy else "",
    )


def verify_export(
    reference,
    model,
    config,
    *,
    cases: Sequence[Case],
    fp32_model=None,
    held_out: Sequence[np.ndarray] = (),
    frames: Sequence[tuple[int, int]] = (),
) -> dict:
    """Run the ONNX model (CPU) and Keras on the same images and apply every gate.

    The export computes Keras' outputs before (tfside.py: in TensorFlow's
    own process, gone by now). Given the Keras model instead, ONNX Runtime
    runs first and its session is dropped before Keras runs (TensorFlow
    keeps the memory its calls used; ONNX Runtime without its arena gives
    it back): the peak is the larger of the two, not their sum.

    Args:
        reference: Keras' outputs (:class:`KerasReference`, or what tfside.py
            computed in TensorFlow's process), or the original Keras model
            itself (softmax head, NHWC), with the user's weights.
        model: the ONNX ModelProto as it will be written (any precision);
            not modified (the logits output is added to a serialized copy).
        config: the :class:`~unet_export.config.ExportConfig` the model was
            exported with (head, layout, precision, input type, normalization:
            uint8 models get the raw pixels; Keras always gets them normalized).
        cases: from :func:`verification_cases`.
        fp32_model, held_out: INT8 only: the fp32 graph that was quantized,
            and held-out images at the model's size (see :func:`_held_out`).
        frames: ``(H, W)`` sizes for a ``--resize-in-graph`` model: each
            frame through the model whole and the host pipeline (:func:`_frame_gates`).

    Returns:
        ``gates`` (never empty), ``not_applicable``, per-case figures, ``held_out`` (INT8), timings.

    Raises:
        VerificationError: a gate failed; ``.report`` holds every figure.
    """
    images = verification_images(cases)
    io = dict(
        head=config.head,
        layout=config.layout,
        input_dtype=config.input_dtype,
        mean=config.mean,
        std=config.std,
        num_classes=int(config.num_classes),
    )
    # ONNX Runtime first, every session dropped before Keras runs (when Keras runs here).
    runner = Runner(model, **io)
    outputs = [runner.run([images[(s, c.height, c.width)] for s in c.seeds]) for c in cases]
    onnx_s = runner.seconds
    del runner
    first = cases[0]
    held = (
        _held_out(
            fp32_model,
            model,
            held_out,
            check=images[(first.seeds[0], first.height, first.width)],
            **io,
        )
        if fp32_model is not None
        else None
    )
    frame_runs = _run_frames(model, frames, first, **io) if frames else []
    reference = _reference(reference, config, images, frame_runs)
    families = [_case_gates(cases, outputs, reference, config.precision)]
    if frame_runs:
        families.append(_frame_gates(frame_runs, reference, config.precision, config.head))
    if held is not None:
        families.append(_int8_gates(held, reference, first))
    return _finish(families, keras_s=round(reference.seconds, 3), onnx_s=round(onnx_s, 3))


def _held_out(
    fp32_model,
    int8_model,
    images: Sequence[np.ndarray],
    *,
    check: np.ndarray,
    **io,
) -> dict:
    """The INT8 gates on held-out images: logits and masks against the fp32 graph that was quantized.

    ``check`` (the first verification image) also goes through the fp32
    graph: :func:`verify_export` holds its logits against Keras, so what
    was quantized is shown to be the model. Images run one at a time, so the
    peak memory is one image's whatever their number.

    Returns:
        gates (logits rel L2 over all held-out images; mask agreement on
        confident pixels when there are enough), ``not_applicable``, mIoU
        and agreement against the fp32 graph, ``check_logits``, timings.
        ``io``: what the model is, as :class:`Runner` takes it.
    """
    num_classes = io["num_classes"]
    fp32, int8 = Runner(fp32_model, **io), Runner(int8_model, **io)
    check_logits = fp32.run([check])["logits"]
    sq_diff = sq_ref = 0.0
    confusion = np.zeros((num_classes, num_classes), np.int64)
    same = same_conf = n_conf = pixels_total = 0
    for image in images:
        a, b = fp32.run([image]), int8.run([image])
        ref_sq, diff_sq, _ = squared_error(a["logits"], b["logits"])
        sq_ref, sq_diff = sq_ref + ref_sq, sq_diff + diff_sq
        probs = a["probs"] if "probs" in a else softmax(a["logits"].astype(np.float32))
        confident = top2_margin(probs) >= CONFIDENT_MARGIN
        eq = a["mask"] == b["mask"]
        same += int(eq.sum())
        same_conf += int(eq[confident].sum())
        n_conf += int(confident.sum())
        pixels_total += eq.size
        confusion += confusion_matrix(a["mask"], b["mask"], num_classes, ignore=None)
    n = len(images)
    rel = relative_l2(sq_ref, sq_diff)
    gates = [Gate(f"int8 held-out ({n} images): logits rel L2 vs fp32 graph", rel, INT8_REL_L2)]
    skipped = []
    conf_agree = same_conf / n_conf if n_conf else None
    if n_conf >= MIN_CONFIDENT_PIXELS:
        gates.append(
            Gate(
                f"int8 held-out ({n} images): mask vs fp32 graph on confident pixels ({n_conf} px)",
                float(same_conf / n_conf),
                INT8_MASK_AGREEMENT_MIN,
                at_least=True,
            )
        )
    else:
        skipped.append(
            {
                "name": "int8 held-out mask vs fp32 graph on confident pixels",
                "reason": f"{n_conf} confident pixels in {n} held-out images (< {MIN_CONFIDENT_PIXELS}; "
                "untrained weights give a flat softmax); the logits gate applies",
            }
        )
    return {
        "gates": gates,
        "not_applicable": skipped,
        "check_logits": check_logits,
        "images": n,
        "pixels": pixels_total,
        "confident_pixels": n_conf,
        "vs_fp32": {
            "logits_rel_l2": rel,
            "agreement": same / max(pixels_total, 1),
            "confident_agreement": conf_agree,
            "pixel_accuracy": pixel_accuracy(confusion),
            "mean_iou": mean_iou(confusion),
        },
        "fp32_s": round(fp32.seconds, 3),
        "int8_s": round(int8.seconds, 3),
    }


#: What a failed held-out INT8 gate suggests. A transformer's residual additions carry outliers that
#: 8 bits cannot hold beside their typical values (docs/export.md, "Your own network").
INT8_ADVICE = (
    "INT8 lost too much against the fp32 graph: calibrate on your own images "
    "(--calibration-images DIR), or keep the op types that suffer in float "
    "(--int8-float-ops Add keeps a transformer's residual additions in float)"
)


#: Frame sizes a --resize-in-graph export is verified at: landscape HD, VGA, odd, and a 12 MP photo.
FRAME_SIZES = ((1080, 1920), (480, 640), (333, 517), (3000, 4000))


def _run_frames(model, frames: Sequence[tuple[int, int]], case: Case, **kwargs) -> list[dict]:
    """Each frame through the in-graph model, its resized network input taken as an extra output."""
    from unet_runtime.images import resize_bilinear

    from .frames import NETWORK_INPUT

    runner = Runner(model, **kwargs, extra_outputs=[NETWORK_INPUT])
    runs = []
    for i, (h, w) in enumerate(frames):
        pixels = make_pixels(h, w, 7000 + i)
        out = runner.run([pixels])
        # What the runtime's host path feeds a fixed-size model (images.resize_image), pinned to
        # its numpy resize whatever the backend: OpenCV's fixed point may differ by a grey level.
        host = np.clip(np.rint(resize_bilinear(pixels, case.height, case.width)), 0, 255).astype(
            np.uint8
        )
        graph = out[NETWORK_INPUT][0]
        runs.append(
            {
                "size": (h, w),
                "out": out,
                "host_input": host,
                "graph_input": graph,
                "graph_key": ("frame graph", h, w),
                "host_key": ("frame host", h, w),
            }
        )
    return runs


def _frame_gates(runs: list[dict], reference: KerasReference, precision: str, head: str) -> Family:
    """--resize-in-graph: the graph's resize within a grey level of the host's; its network is Keras on the
    graph's own resized frame; its mask (argmax head) the host pipeline's on confident pixels."""
    from unet_runtime.images import resize_nearest

    gates, rows = [], []
    for run in runs:
        (h, w), out = run["size"], run["out"]
        label = f"frame {h}x{w}"
        differ = np.abs(run["graph_input"].astype(np.int16) - run["host_input"])
        row = {
            "frame": f"{h}x{w}",
            "resize_max_diff": int(differ.max()),
            "resize_differ": float((differ > 0).mean()),
        }
        gates.append(
            Gate(
                f"{label}: in-graph resize vs the host's, largest difference in grey levels",
                float(differ.max()),
                FRAME_RESIZE_MAX_DIFF,
            )
        )
        bound = LOGITS_REL_L2[precision]
        err = compare(reference.logits([run["graph_key"]]), out["logits"])
        row["logits_rel_l2"] = err["rel_l2"]
        gates.append(
            Gate(
                f"{label}: logits rel L2 vs Keras on the graph's resized frame",
                err["rel_l2"],
                bound,
            )
        )
        # the whole in-graph pipeline against the host's: resize, Keras, nearest resize back
        if head == "argmax":
            probs = reference.probs([run["host_key"]])[0]
            host_mask = resize_nearest(probs.argmax(-1).astype(np.uint8), h, w)
            confident = resize_nearest(top2_margin(probs), h, w) >= CONFIDENT_MARGIN
            same = (
                out["mask"][0] == host_mask
                if out["mask"].shape[1:] == (h, w)
                else np.zeros((h, w), bool)
            )
            row.update(
                mask_shape=list(out["mask"].shape[1:]),
                mask_agreement=float(same.mean()),
                confident_pixels=int(confident.sum()),
            )
            if confident.sum() >= MIN_CONFIDENT_PIXELS:
                bound = MASK_MIN["int8" if precision == "int8" else "fp16"]
                gates.append(
                    Gate(
                        f"{label}: mask vs the host pipeline's on confident pixels ({int(confident.sum())} px)",
                        float(same[confident].mean()),
                        bound,
                        at_least=True,
                    )
                )
        rows.append(row)
    return Family(gates=gates, rows=rows)


def _finish(families: Sequence[Family], **timings: float) -> dict:
    """The report of every family's gates, ``passed`` set; raise VerificationError naming every failed
    gate (and each family's ``failures``), then what the failed families suggest (``advice``)."""
    report: dict = {"gates": [], "not_applicable": [], "cases": []}
    failed: list[str] = []
    advice: list[str] = []
    for fam in families:
        report["gates"] += fam.gates
        report["not_applicable"] += fam.not_applicable
        report["cases"] += fam.rows
        report.update(fam.report)
        failed += fam.failures
        advice += [fam.advice] if fam.advice else []
    gates: list[Gate] = report["gates"]
    failed += [g.failure() for g in gates if not g.passed]
    report.update(timings, passed=not failed, failures=failed, gates=[g.as_dict() for g in gates])
    if failed:
        message = "verification failed: " + "; ".join(failed)
        raise VerificationError(". ".join([message, *advice]), report)
    if not gates:  # cannot happen for a model of this network; a guard against a vacuous pass
        raise VerificationError(
            "verification applied no numeric gate; nothing was compared", report
        )
    return report


def gate_lines(report: dict) -> list[str]:
    """One log line per gate and per gate that did not apply, as export-unet prints them."""
    lines = [
        Gate(g["name"], g["value"], g["bound"], g["rule"] == ">=").line()
        for g in report.get("gates", [])
    ]
    lines += [
        f"{s['name']}: not applicable ({s['reason']})" for s in report.get("not_applicable", [])
    ]
    return lines
