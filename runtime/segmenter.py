"""Segmenter: an ONNX Runtime session that turns RGB images into class masks.

Thread safety: ``InferenceSession.run`` is safe to call concurrently; the
CUDA IO-binding path reuses device buffers, so it runs under a lock (the GPU
serializes the work anyway). ``close()`` drops the session; a call racing
with it either finishes on the session it already holds or raises
:class:`SegmenterClosedError`, never touches freed memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._pipeline import Pipeline
from .images import DEFAULT_MAX_PIXELS
from .errors import InputImageError, ModelFileError, SegmenterClosedError, SegmenterError
from .model_file import check_model_file
from .model_info import HEADS, LAYOUTS, ModelInfo
from .providers import (
    ProviderConfig,
    check_fallback,
    prepare_trt_cache,
    provider_options,
    resolve_providers,
)

__all__ = ["Segmenter"]

log = logging.getLogger(__name__)

#: A declared input side larger than this is not a real model (a 32768^2
#: float32 image alone is 12 GiB); refuse it before allocating anything.
MAX_MODEL_SIDE = 32768

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}

#: Input shapes whose device buffers are kept (least recently used dropped first): a size-agnostic model fed
#: photos of many sizes must not keep a buffer pair per size forever.
MAX_BOUND_SHAPES = 8
#: With ``cuda_graph``, input shapes that get a captured graph each. A captured graph replays on the buffers
#: it was captured with, so those are never dropped; shapes beyond these run uncaptured.
MAX_GRAPH_SHAPES = 8
#: Runs of a shape until its CUDA graph exists: ONNX Runtime's CUDA EP makes two regular runs first
#: (``min_num_runs_before_cuda_graph_capture_``, for its memory arena) and captures on the third.
CUDA_GRAPH_CAPTURE_RUNS = 3


@dataclass
class _Bound:
    """Device input/output buffers of one input shape, their IO binding, and the run options that pick its graph."""

    # onnxruntime objects (IOBinding, OrtValue, RunOptions), typed Any: onnxruntime is imported lazily.
    binding: Any
    x_dev: Any
    y_dev: Any
    run_options: Any = None  # onnxruntime.RunOptions naming the shape's CUDA graph (gpu_graph_id), or None

    def run(self, session) -> None:
        """Run the session on these buffers (replays the shape's CUDA graph once captured)."""
        session.run_with_iobinding(self.binding, self.run_options)


def _physical_cores() -> int:
    """Physical cores (psutil when installed; else the logical count, an upper bound)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def session_options(cpu_threads: int | None = None):
    """ONNX Runtime session options as every Segmenter uses them (benchmarks reuse them).

    All graph optimizations; one intra-op thread per physical core unless
    `cpu_threads` (hyper-threads share FMA units, so more threads only
    contend); warnings and up only.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = cpu_threads or _physical_cores()
    opts.log_severity_level = 3
    return opts


class Segmenter:
    """Semantic segmentation with an ONNX model written by ``export-unet``.

    Args:
        model_path: the ``.onnx`` file.
        providers: ``"auto"`` (TensorRT, CUDA, CPU as available) or a list
            such as ``["cuda", "cpu"]``.
        device_id: CUDA device.
        strict: raise :class:`ProviderError` instead of warning when a
            requested provider does not run.
        config: provider tuning (:class:`ProviderConfig`).
        max_pixels: images with more pixels are refused.
        layout, head, num_classes, mean, std: only for models without
            ``export-unet`` metadata (they override nothing otherwise).

    Example::

        with Segmenter("model.onnx") as seg:
            mask = seg.predict(rgb_uint8_image)   # (H, W) uint8 class ids
    """

    #: Where IO-bound buffers live (the binding tests put them on the CPU to run the same code path).
    _device = "cuda"

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: str | Sequence[str] = "auto",
        device_id: int = 0,
        *,
        strict: bool = False,
        config: ProviderConfig | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        layout: str | None = None,
        head: str | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        import onnxruntime as ort

        self._lock = threading.Lock()
        self._bindings: OrderedDict = OrderedDict()
        self._graphs_full_warned = False
        path = Path(model_path)
        # Before ONNX Runtime touches it: size, protobuf shape, external-data paths.
        check_model_file(path)
        self.model_path = path
        self.config = replace(config or ProviderConfig(), device_id=device_id)

        requested = resolve_providers(providers, ort.get_available_providers())
        opts = session_options(self.config.cpu_threads)
        # Probe the model's input on CPU first: TensorRT needs its shape to
        # build a profile, and a broken file should fail before a GPU init.
        # For a GPU session the probe is thrown away, so it skips graph
        # optimization; CPU-only, the probe is the session.
        cpu_only = requested == ["CPUExecutionProvider"]
        probe_opts = opts
        if not cpu_only:
            probe_opts = session_options(self.config.cpu_threads)
            probe_opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            probe = ort.InferenceSession(str(path), probe_opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise ModelFileError(f"model file {str(path)!r} cannot be loaded by ONNX Runtime: {str(exc).splitlines()[0][:300]}") from exc
        self._check_io(probe, None)
        self.info = self._model_info(probe, layout, head, num_classes, mean, std)
        self._check_io(probe, self.info.layout)
        inp = probe.get_inputs()[0]
        self._input_name, self._input_dtype = inp.name, _ORT_DTYPES[inp.type]
        self._output_name = probe.get_outputs()[0].name
        self._output_dtype = _ORT_DTYPES.get(probe.get_outputs()[0].type, np.float32)

        if cpu_only:
            session = probe
        else:
            del probe
            popts = provider_options(requested, self.config, model=str(path), input_name=self._input_name,
                                     input_shape=inp.shape, layout=self.info.layout)
            for name, o in zip(requested, popts):
                if name == "TensorrtExecutionProvider":
                    prepare_trt_cache(o)
            try:
                session = ort.InferenceSession(str(path), opts, providers=requested, provider_options=popts)
            except Exception as exc:
                raise SegmenterError(f"ONNX Runtime could not create a session with {requested}: {str(exc).splitlines()[0][:300]}") from exc
        self.requested_providers = requested
        self.providers: list[str] = session.get_providers()
        self.fallback = check_fallback(requested, self.providers, strict=strict)
        self._session = session
        self._use_binding = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self._pipeline = Pipeline(self.info, self._input_dtype, max_pixels)

    # ----------------------------------------------------------------- setup
    @staticmethod
    def _model_info(session, layout, head, num_classes, mean, std) -> ModelInfo:
        props = session.get_modelmeta().custom_metadata_map
        try:
            info = ModelInfo.from_metadata(props)
        except ValueError as exc:
            raise ModelFileError(f"model metadata is malformed: {exc}; re-export the model") from exc
        if info is not None:
            return info
        # No export-unet metadata: infer what the graph shows, take the rest from the caller.
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        shape = inp.shape
        if layout is None:
            layout = "nchw" if len(shape) == 4 and shape[1] == 3 else "nhwc"
        if head is None:
            head = "argmax" if out.type == "tensor(uint8)" else "softmax"
        if num_classes is None:
            c = out.shape[1 if layout == "nchw" else -1] if len(out.shape) == 4 else None
            if not isinstance(c, int):
                raise ModelFileError("the model has no export-unet metadata and its class count is not static; pass num_classes=")
            num_classes = c
        if layout not in LAYOUTS or head not in HEADS:
            raise ModelFileError(f"layout {layout!r} / head {head!r}: allowed {LAYOUTS} / {HEADS}")
        hw = shape[1:3] if layout == "nhwc" else shape[2:4]
        h, w = (hw[0], hw[1]) if all(isinstance(d, int) for d in hw) else (None, None)
        return ModelInfo(num_classes=num_classes, layout=layout, height=h, width=w, head=head,
                         mean=tuple(mean or (0.0, 0.0, 0.0)), std=tuple(std or (1.0, 1.0, 1.0)),
                         class_names=tuple(f"class_{i}" for i in range(num_classes)))

    @staticmethod
    def _check_io(session, layout: str | None) -> None:
        """One input, one output, a 4-D float/uint8 input; with ``layout``, 3 channels where it says."""
        ins, outs = session.get_inputs(), session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelFileError(f"the model has {len(ins)} inputs and {len(outs)} outputs; a VGG19-UNet export has one of each")
        shape = ins[0].shape
        channels_ok = layout is None or (len(shape) == 4 and shape[3 if layout == "nhwc" else 1] == 3)
        if len(shape) != 4 or not channels_ok or ins[0].type not in _ORT_DTYPES:
            raise ModelFileError(
                f"the model's input {ins[0].name!r} is {ins[0].type} {shape}; this runtime needs a 4-D float/uint8 "
                f"RGB input (NHWC or NCHW with 3 channels): is this a VGG19-UNet export?"
            )
        for d in shape:
            if isinstance(d, int) and not 0 <= d <= MAX_MODEL_SIDE:
                raise ModelFileError(
                    f"the model's input {ins[0].name!r} declares shape {shape}: dimension {d} is outside 0..{MAX_MODEL_SIDE}; "
                    "the file is corrupt or not a VGG19-UNet export"
                )

    # --------------------------------------------------------------- running
    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the session and any device buffers; later calls raise SegmenterClosedError."""
        with self._lock:
            self._session = None
            self._bindings.clear()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._session is None

    def predict(self, images):
        """Class masks for one image or a list of images.

        Args:
            images: an RGB ``uint8`` ``(H, W, 3)`` array, or a list of them
                (sizes may differ).

        Returns:
            ``uint8`` ``(H, W)`` mask(s) at each image's own size; a single
            array for a single image, a list for a list.
        """
        return self._pipeline.predict(images, self._infer)

    def predict_proba(self, images):
        """Class probabilities ``float32`` ``(H, W, num_classes)`` per image.

        Raises:
            SegmenterError: for a model exported with ``--head argmax``,
                which carries no probabilities.
        """
        return self._pipeline.predict_proba(images, self._infer)

    def predict_with_proba(self, images):
        """``(mask, probabilities)`` per image from one model run.

        What :meth:`predict` and :meth:`predict_proba` give, with one model
        run instead of two (a pair for one image, a list of pairs for a list).

        Raises:
            SegmenterError: for a model exported with ``--head argmax``.
        """
        return self._pipeline.predict_with_proba(images, self._infer)

    def warmup(self, batch_sizes: Sequence[int] = (1,), size: tuple[int, int] | None = None,
               runs: int = CUDA_GRAPH_CAPTURE_RUNS) -> dict[int, list[float]]:
        """Make the slow first calls now, before requests arrive; returns the seconds of each run per batch size.

        The first run of a new input shape pays for cuDNN's algorithm search
        (exhaustive by default: seconds), a TensorRT engine build (minutes,
        unless cached), and the device buffers of that shape. With
        ``ProviderConfig(cuda_graph=True)``, ONNX Runtime's CUDA EP captures a
        shape's graph on its third run (after two regular ones), hence
        ``runs=3`` (``CUDA_GRAPH_CAPTURE_RUNS``). The search, engine and
        buffers serve every thread; a CUDA graph belongs to the thread that
        captured it (ONNX Runtime keeps it in a per-thread context), so call
        this from the thread that will serve, or expect a new thread's first
        calls of a shape to be slower.

        Args:
            batch_sizes: the batch sizes that will be sent (each is a shape of its own).
            size: ``(H, W)`` of the images a size-agnostic model will get
                (required there: each size is a shape of its own); a
                fixed-size model always runs at its own size, so leave it None.
            runs: calls per batch size.

        Raises:
            InputImageError: a bad batch size, run count or size, naming it.
        """
        if runs < 1 or not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                               for b in batch_sizes):
            raise InputImageError(f"warmup(batch_sizes={tuple(batch_sizes)!r}, runs={runs!r}): batch sizes must be "
                                  "integers >= 1 (at least one) and runs >= 1")
        if self.info.height is not None and self.info.width is not None:  # a fixed-size model
            h, w = self.info.height, self.info.width
            if size is not None and tuple(size) != (h, w):
                raise InputImageError(f"warmup(size={tuple(size)!r}): this model always runs at {h}x{w} (images are "
                                      "resized to it); leave size=None")
        elif size is None or len(size) != 2 or min(size) < 1:
            raise InputImageError(f"warmup(size={size!r}): this model is size-agnostic, so each image size is a "
                                  "shape of its own; pass size=(H, W) of the images you will send")
        else:
            h, w = size
        image = np.zeros((h, w, 3), np.uint8)
        timings: dict[int, list[float]] = {}
        for batch in batch_sizes:
            timings[batch] = []
            for _ in range(runs):
                t0 = time.perf_counter()
                self.predict([image] * batch)
                timings[batch].append(time.perf_counter() - t0)
        return timings

    def _infer(self, x: np.ndarray) -> np.ndarray:
        session = self._session
        if session is None:
            raise SegmenterClosedError("this Segmenter is closed; create a new one")
        if not self._use_binding:
            return session.run([self._output_name], {self._input_name: x})[0]
        with self._lock:
            if self._session is None:
                raise SegmenterClosedError("this Segmenter is closed; create a new one")
            return self._infer_bound(session, x)

    def _output_spec(self, x_shape: tuple) -> tuple[tuple, type]:
        """Output shape and dtype for an input shape (from the model info, no run needed)."""
        n = x_shape[0]
        h, w = x_shape[1:3] if self.info.layout == "nhwc" else x_shape[2:4]
        if self.info.head == "argmax":
            return (n, h, w), np.uint8
        c = self.info.num_classes
        return ((n, h, w, c) if self.info.layout == "nhwc" else (n, c, h, w)), self._output_dtype

    def _binding_for(self, session, x: np.ndarray) -> _Bound:
        """Device input and output buffers for ``x.shape`` with their IO binding, made once and reused.

        Fixed buffers save two allocations a call and are what CUDA graphs
        need. ONNX Runtime keeps one captured graph per ``gpu_graph_id`` run
        option and replays it on the buffers it was captured with, whatever
        is bound later; so with ``cuda_graph`` every input shape gets its own
        graph id (1, 2, ...: ORT reserves 0), and a shape past
        ``MAX_GRAPH_SHAPES`` runs uncaptured (id -1) on buffers of its own.
        Without graphs the buffers of the ``MAX_BOUND_SHAPES`` most recent
        shapes are kept.
        """
        import onnxruntime as ort

        entry = self._bindings.get(x.shape)
        if entry is not None:
            self._bindings.move_to_end(x.shape)
            return entry
        dev = (self._device, self.config.device_id)
        x_dev = ort.OrtValue.ortvalue_from_shape_and_type(x.shape, x.dtype, *dev)
        y_shape, y_dtype = self._output_spec(x.shape)
        y_dev = ort.OrtValue.ortvalue_from_shape_and_type(y_shape, y_dtype, *dev)
        binding = session.io_binding()
        binding.bind_ortvalue_input(self._input_name, x_dev)
        binding.bind_ortvalue_output(self._output_name, y_dev)
        entry = _Bound(binding, x_dev, y_dev)
        if not self.config.cuda_graph:
            self._bindings[x.shape] = entry
            while len(self._bindings) > MAX_BOUND_SHAPES:
                self._bindings.popitem(last=False)
            return entry
        entry.run_options = ort.RunOptions()
        # Graph entries are never dropped, so the cache holds exactly the shapes that own a graph id.
        graph_id = len(self._bindings) + 1
        if graph_id > MAX_GRAPH_SHAPES:
            entry.run_options.add_run_config_entry("gpu_graph_id", "-1")
            if not self._graphs_full_warned:
                self._graphs_full_warned = True
                log.warning("input shape %s: %d shapes already have a CUDA graph; this one and later new shapes "
                            "run without", x.shape, MAX_GRAPH_SHAPES)
            return entry
        entry.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self._bindings[x.shape] = entry
        return entry

    def _infer_bound(self, session, x: np.ndarray) -> np.ndarray:
        """CUDA/TensorRT: copy in, run on the shape's device buffers, copy out."""
        bound = self._binding_for(session, x)
        bound.x_dev.update_inplace(x)
        bound.run(session)
        return bound.y_dev.numpy()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ", ".join(self.providers)
        return f"Segmenter({str(self.model_path)!r}, {self.info.head}, {self.info.precision}, {state})"
