"""Segmenter: an ONNX Runtime session that turns RGB images into class masks.

Thread safety: ``InferenceSession.run`` is safe to call concurrently; the
IO-binding path (CUDA/TensorRT) reuses device buffers, so it runs under a
lock (the GPU serializes the work anyway). ``close()`` drops the session; a
call racing with it either finishes on the session it already holds or
raises :class:`SegmenterClosedError`, never touches freed memory.

Applications and tools that go below ``predict`` use :attr:`Segmenter.engine`
(an :class:`Engine`): the session, its input and output, ``prepare`` (images
to a model-ready batch), ``run`` (a prepared batch through the model, IO
binding included), ``bind`` (a batch uploaded once, for timing the device
alone) and the pre/post-processing ``pipeline``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputImageError, SegmenterClosedError
from .images import DEFAULT_MAX_PIXELS, to_model_input
from .loader import MAX_MODEL_SIDE, TensorSpec, open_model, session_options
from .pipeline import Pipeline
from .providers import ProviderConfig
from .tiling import Band, Tiling, check_spec, tile_bands

__all__ = [
    "Segmenter",
    "Engine",
    "Tiling",
    "BoundCall",
    "CpuCall",
    "Band",
    "session_options",
    "MAX_MODEL_SIDE",
]

log = logging.getLogger(__name__)

#: Input shapes whose device buffers are kept (least recently used dropped first): a size-agnostic model fed
#: photos of many sizes must not keep a buffer pair per size forever.
MAX_BOUND_SHAPES = 8
#: With ``cuda_graph``, input shapes that get a captured graph each. A captured graph replays on the buffers
#: it was captured with, so those are never dropped; shapes beyond these run uncaptured.
MAX_GRAPH_SHAPES = 8
#: Windows per session call when tiling, unless tile_batch says: a GPU runs a batch faster per window; two
#: CPU cores gain nothing from batching and each window of a batch costs memory.
TILE_BATCH = {"gpu": 8, "cpu": 1}
#: Runs of a shape until its CUDA graph exists: ONNX Runtime's CUDA EP makes two regular runs first
#: (``min_num_runs_before_cuda_graph_capture_``, for its memory arena) and captures on the third.
CUDA_GRAPH_CAPTURE_RUNS = 3


@dataclass
class BoundCall:
    """A batch shape's fixed input/output buffers on the session's device, and the IO binding that joins them.

    ``run()`` runs the model on whatever the input buffer holds (no host
    copy: what a benchmark times as device latency); ``fetch()`` copies the
    output to the host; ``graph_id`` is the CUDA graph this shape replays
    (``-1``: none, shapes past ``MAX_GRAPH_SHAPES``; ``None``: no graphs).
    """

    # onnxruntime objects (InferenceSession, IOBinding, OrtValue, RunOptions), typed Any: imported
    # lazily.
    session: Any
    binding: Any
    x_dev: Any
    y_dev: Any
    run_options: Any = None
    graph_id: int | None = None

    def upload(self, batch: np.ndarray) -> None:
        """Copy a prepared batch into the input buffer."""
        self.x_dev.update_inplace(batch)

    def run(self) -> None:
        """Run the session on these buffers (replays the shape's CUDA graph once captured)."""
        self.session.run_with_iobinding(self.binding, self.run_options)

    def fetch(self) -> np.ndarray:
        """The output buffer, copied to the host."""
        return self.y_dev.numpy()


class CpuCall:
    """:meth:`Engine.bind` without IO binding (the CPU): the prepared feed, run with ``session.run``.

    Same methods as :class:`BoundCall`: ``upload``, ``run``, ``fetch``.
    """

    graph_id = None

    def __init__(self, session, input_name: str, output_name: str, batch: np.ndarray):
        self._session, self._names, self._feed = session, [output_name], {input_name: batch}
        self._out: np.ndarray | None = None

    def upload(self, batch: np.ndarray) -> None:
        """Use ``batch`` for the next runs."""
        self._feed = {next(iter(self._feed)): batch}

    def run(self) -> None:
        """Run the session on the feed."""
        self._out = self._session.run(self._names, self._feed)[0]

    def fetch(self) -> np.ndarray:
        """The last run's output."""
        assert self._out is not None, "run() first"
        return self._out


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
        self._lock = threading.Lock()
        self._bindings: OrderedDict = OrderedDict()
        self._graphs_full_warned = False
        self.model_path = Path(model_path)
        self._config = replace(config or ProviderConfig(), device_id=device_id)
        opened = open_model(
            self.model_path,
            providers,
            self._config,
            strict=strict,
            overrides=dict(layout=layout, head=head, num_classes=num_classes, mean=mean, std=std),
        )
        self.info = opened.info
        self._requested_providers = opened.requested_providers
        self.providers: list[str] = opened.providers
        self.fallback = opened.fallback
        self._session = opened.session
        self._input, self._output = opened.input, opened.output
        on_device = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self._use_binding = (
            on_device if self._config.io_binding is None else self._config.io_binding
        )
        self._device = "cuda" if on_device else "cpu"
        self._pipeline = Pipeline(self.info, self._input.dtype, max_pixels)

    # ------------------------------------------------------------ below predict
    @property
    def engine(self) -> "Engine":
        """The model below :meth:`predict`: session, tensors, ``prepare``, ``run``, ``bind`` (see :class:`Engine`)."""
        return Engine(self)

    def _prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return to_model_input(
            list(images), self.info.mean, self.info.std, self.info.layout, dtype=self._input.dtype
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        session = self._session
        if session is None:
            raise SegmenterClosedError("this Segmenter is closed; create a new one")
        if not self._use_binding:
            return session.run([self._output.name], {self._input.name: batch})[0]
        with self._lock:
            if self._session is None:
                raise SegmenterClosedError("this Segmenter is closed; create a new one")
            bound = self._binding_for(batch)
            bound.upload(batch)
            bound.run()
            return bound.fetch()

    def _bind(self, batch: np.ndarray) -> BoundCall | CpuCall:
        if self._session is None:
            raise SegmenterClosedError("this Segmenter is closed; create a new one")
        if not self._use_binding:
            return CpuCall(self._session, self._input.name, self._output.name, batch)
        with self._lock:
            bound = self._binding_for(batch)
            bound.upload(batch)
            return bound

    #: Names that moved to :attr:`engine`; the old spelling still works, with a DeprecationWarning.
    _MOVED = frozenset(
        {
            "session",
            "input_spec",
            "output_spec",
            "pipeline",
            "bound_shapes",
            "prepare",
            "run",
            "bind",
            "config",
            "requested_providers",
        }
    )

    def __getattr__(self, name: str):
        # Only called for names the instance does not have: the moved ones are forwarded.
        if name in Segmenter._MOVED:
            warnings.warn(
                f"Segmenter.{name} is deprecated: use Segmenter.engine.{name}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(self.engine, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @staticmethod
    def _tiling(tile, legacy: dict) -> Tiling | None:
        """``tile`` (None, a window or a :class:`Tiling`) as a Tiling; the old separate keywords folded in."""
        if not legacy:
            return Tiling.of(tile)
        unknown = sorted(set(legacy) - {"overlap", "blend", "tile_batch"})
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
        warnings.warn(
            "overlap=, blend= and tile_batch= are deprecated: pass "
            "tile=Tiling(window, overlap=..., blend=..., batch=...)",
            DeprecationWarning,
            stacklevel=3,
        )
        base = Tiling.of(tile)
        if base is None:  # as before: without a window the image is not tiled
            return None
        return replace(
            base,
            overlap=legacy.get("overlap", base.overlap),
            blend=legacy.get("blend", base.blend),
            batch=legacy.get("tile_batch", base.batch),
        )

    # ---------------------------------------------------------------- images
    def predict(self, images, *, tile=None, **legacy):
        """Class masks for one image or a list of images.

        Args:
            images: an RGB ``uint8`` ``(H, W, 3)`` array, or a list of them
                (sizes may differ).
            tile: ``None`` (default): the whole image at once (resized to a
                fixed-size model, padded for a size-agnostic one). ``"model"``,
                ``(h, w)`` or a :class:`~unet_runtime.tiling.Tiling` (window,
                overlap, blend, windows per call): sliding windows at native
                resolution, stitched (see :mod:`unet_runtime.tiling`). Tiling
                changes the scale the model sees: use it when the model was
                trained on crops at native resolution.

        Returns:
            ``uint8`` ``(H, W)`` mask(s) at each image's own size; a single
            array for a single image, a list for a list.
        """
        tiling = self._tiling(tile, legacy)
        if tiling is not None:
            return self._tiled(images, "mask", tiling)
        return self._pipeline.predict(images, self._run)

    def predict_proba(self, images, *, tile=None, **legacy):
        """Class probabilities ``float32`` ``(H, W, num_classes)`` per image (``tile`` as in :meth:`predict`).

        Raises:
            SegmenterError: for a model exported with ``--head argmax``,
                which carries no probabilities.
        """
        tiling = self._tiling(tile, legacy)
        if tiling is not None:
            return self._tiled(images, "probs", tiling)
        return self._pipeline.predict_proba(images, self._run)

    def predict_with_proba(self, images, *, tile=None, **legacy):
        """``(mask, probabilities)`` per image from one model run (``tile`` as in :meth:`predict`).

        What :meth:`predict` and :meth:`predict_proba` give, with one model
        run instead of two (a pair for one image, a list of pairs for a list).

        Raises:
            SegmenterError: for a model exported with ``--head argmax``.
        """
        tiling = self._tiling(tile, legacy)
        if tiling is not None:
            return self._tiled(images, "both", tiling)
        return self._pipeline.predict_with_proba(images, self._run)

    def iter_tiles(
        self,
        image: np.ndarray,
        *,
        tile="model",
        probabilities: bool = False,
        progress=None,
        stats: dict | None = None,
        **legacy,
    ):
        """Tiled inference on one image, yielding finished :class:`~unet_runtime.tiling.Band` objects top to bottom.

        The stitcher holds one band of windows, so a caller that writes each
        band out (``segment-unet --tile`` streams its PNG) segments images of
        any height in bounded memory. ``tile`` as in :meth:`predict` (a
        window or a :class:`~unet_runtime.tiling.Tiling`);
        ``progress(done, total)`` counts windows; ``stats`` receives the
        window count and the stitcher's largest allocation
        (``accumulator_bytes``).
        """
        from .images import validate_image

        tiling = self._tiling(tile, legacy) or Tiling()
        image = validate_image(image, None, self._pipeline.max_pixels)
        if probabilities:
            self._pipeline.require_probabilities()
        device = "gpu" if self._device == "cuda" else "cpu"
        batch = TILE_BATCH[device] if tiling.batch is None else tiling.batch
        spec = check_spec(
            tiling.window,
            tiling.overlap,
            tiling.blend,
            batch,
            self.info.size,
            self.info.size_multiple,
        )
        return tile_bands(
            image,
            spec,
            self._run_windows,
            num_classes=self.info.num_classes,
            scores=self.info.head != "argmax",
            want_probs=probabilities,
            progress=progress,
            stats=stats,
        )

    def _run_windows(self, windows: list) -> list:
        """Windows (same size) -> per window the probabilities ``(h, w, C)`` or, for an argmax model, the mask."""
        from .images import channels_last, softmax

        h, w = windows[0].shape[:2]
        size = self.info.size
        # a tile smaller than a fixed-size model: padded to it
        if size is not None and (h, w) != size:
            windows = [np.pad(x, ((0, size[0] - h), (0, size[1] - w), (0, 0))) for x in windows]
        out = self._run(self._prepare(windows))
        if self.info.head == "argmax":
            return list(out[:, :h, :w])
        out = channels_last(out, self.info.layout)[:, :h, :w].astype(np.float32, copy=False)
        return list(softmax(np.array(out)) if self.info.head == "logits" else out)

    def _tiled(self, images, want: str, tiling: Tiling):
        """predict/predict_proba/predict_with_proba with tiling: one image or a list, each tiled on its own."""
        if want != "mask":  # before any image, even for an empty list
            self._pipeline.require_probabilities()
        single = isinstance(images, np.ndarray) and images.ndim != 4
        results = []
        for image in [images] if single else list(images):
            mask: np.ndarray | None = None
            probs = None
            for band in self.iter_tiles(image, tile=tiling, probabilities=want != "mask"):
                rows = slice(band.top, band.top + len(band.mask))
                if mask is None:  # iter_tiles validated the image: its size is known from here
                    mask = np.empty(image.shape[:2], np.uint8)
                mask[rows] = band.mask
                if band.probs is not None:
                    if probs is None:
                        probs = np.empty((*image.shape[:2], band.probs.shape[-1]), np.float32)
                    probs[rows] = band.probs
            results.append({"mask": mask, "probs": probs, "both": (mask, probs)}[want])
        return results[0] if single else results

    def warmup(
        self,
        batch_sizes: Sequence[int] = (1,),
        size: tuple[int, int] | None = None,
        runs: int = CUDA_GRAPH_CAPTURE_RUNS,
    ) -> dict[int, list[float]]:
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
        if (
            runs < 1
            or not batch_sizes
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes)
        ):
            raise InputImageError(
                f"warmup(batch_sizes={tuple(batch_sizes)!r}, runs={runs!r}): batch sizes must be "
                "integers >= 1 (at least one) and runs >= 1"
            )
        if self.info.size is not None:  # a fixed-size model
            h, w = self.info.size
            if size is not None and tuple(size) != (h, w):
                raise InputImageError(
                    f"warmup(size={tuple(size)!r}): this model always runs at {h}x{w} (images are "
                    "resized to it); leave size=None"
                )
        elif size is None or len(size) != 2 or min(size) < 1:
            raise InputImageError(
                f"warmup(size={size!r}): this model is size-agnostic, so each image size is a "
                "shape of its own; pass size=(H, W) of the images you will send"
            )
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

    # -------------------------------------------------------------- lifetime
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

    # -------------------------------------------------------------- internals
    def _output_shape(self, x_shape: tuple) -> tuple:
        """Output shape for an input shape (from the model info, no run needed)."""
        n = x_shape[0]
        h, w = x_shape[1:3] if self.info.layout == "nhwc" else x_shape[2:4]
        if self.info.head == "argmax":
            return (n, h, w)
        c = self.info.num_classes
        return (n, h, w, c) if self.info.layout == "nhwc" else (n, c, h, w)

    def _binding_for(self, x: np.ndarray) -> BoundCall:
        """Device input and output buffers for ``x.shape`` with their IO binding, made once and reused (under the lock).

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
        dev = (self._device, self._config.device_id)
        x_dev = ort.OrtValue.ortvalue_from_shape_and_type(x.shape, x.dtype, *dev)
        y_dev = ort.OrtValue.ortvalue_from_shape_and_type(
            self._output_shape(x.shape), self._output.dtype, *dev
        )
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input.name, x_dev)
        binding.bind_ortvalue_output(self._output.name, y_dev)
        entry = BoundCall(self._session, binding, x_dev, y_dev)
        if not self._config.cuda_graph:
            self._bindings[x.shape] = entry
            while len(self._bindings) > MAX_BOUND_SHAPES:
                self._bindings.popitem(last=False)
            return entry
        entry.run_options = ort.RunOptions()
        # Graph entries are never dropped, so the cache holds exactly the shapes that own a graph
        # id.
        graph_id = len(self._bindings) + 1
        if graph_id > MAX_GRAPH_SHAPES:
            entry.graph_id = -1
            entry.run_options.add_run_config_entry("gpu_graph_id", "-1")
            if not self._graphs_full_warned:
                self._graphs_full_warned = True
                log.warning(
                    "input shape %s: %d shapes already have a CUDA graph; this one and later new shapes "
                    "run without",
                    x.shape,
                    MAX_GRAPH_SHAPES,
                )
            return entry
        entry.graph_id = graph_id
        entry.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self._bindings[x.shape] = entry
        return entry

    def __repr__(self) -> str:
        state = "closed" if self.closed else ", ".join(self.providers)
        return (
            f"Segmenter({str(self.model_path)!r}, {self.info.head}, {self.info.precision}, {state})"
        )


class Engine:
    """The model below :meth:`Segmenter.predict`: what ``Segmenter.engine`` returns.

    For timing and custom loops: the ONNX Runtime ``session`` (read-only),
    ``input_spec`` / ``output_spec``, ``pipeline`` (the pre/post-processing
    ``predict`` wraps around the model), ``prepare(images)`` (a model-ready
    batch), ``run(batch)`` (the model alone, IO binding included), ``bind(batch)``
    (a batch uploaded once: ``run()`` then times the device alone),
    ``bound_shapes``, and the provider settings (``config``,
    ``requested_providers``). A view of its Segmenter: closing that closes it.
    """

    def __init__(self, segmenter: Segmenter):
        self._seg = segmenter

    @property
    def session(self):
        """The ``onnxruntime.InferenceSession`` (``None`` once closed)."""
        return self._seg._session

    @property
    def input_spec(self) -> TensorSpec:
        """The model's input: name, dtype (float32, float16 or uint8) and shape."""
        return self._seg._input

    @property
    def output_spec(self) -> TensorSpec:
        """The model's output: name, dtype and shape."""
        return self._seg._output

    @property
    def pipeline(self) -> Pipeline:
        """The pre- and post-processing ``predict`` wraps around :meth:`run` (resize/pad, normalize, masks)."""
        return self._seg._pipeline

    @property
    def config(self) -> ProviderConfig:
        """The provider settings the session was made with."""
        return self._seg._config

    @property
    def requested_providers(self) -> list[str]:
        """The providers asked for, before any fallback (``Segmenter.providers`` is what runs)."""
        return self._seg._requested_providers

    @property
    def bound_shapes(self) -> tuple[tuple, ...]:
        """Input shapes holding device buffers (IO binding), least recently used first."""
        return tuple(self._seg._bindings)

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Same-size RGB uint8 images at the network's size -> the model's input batch (dtype, layout, normalization)."""
        return self._seg._prepare(images)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output for a prepared batch (see :meth:`prepare`), through IO binding on a GPU."""
        return self._seg._run(batch)

    def bind(self, batch: np.ndarray) -> BoundCall | CpuCall:
        """``batch`` uploaded once to the buffers its shape runs on: ``run()`` then times the model alone.

        With IO binding (CUDA/TensorRT) these are the very buffers (and CUDA
        graph) :meth:`run` and ``predict`` use for that shape; on the CPU
        without it, ``run()`` is ``session.run`` on the prepared feed.
        Call it from one thread at a time.
        """
        return self._seg._bind(batch)
