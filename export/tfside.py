"""TensorFlow's part of the export (build, convert, Keras' reference outputs), in this process or a child.

TensorFlow keeps the memory its graphs and calls used until the process
exits, and ONNX Runtime's verification sessions then come on top: the
export's peak was the two together (2.71 GiB for the 512x512 model on a
2-core Xeon, against 1.76 GiB with TensorFlow in a child; the time it
adds is within that machine's noise: benchmarks/results/export-cost-one-process.md). :class:`ChildSide`
runs the TensorFlow work in a child process (``spawn``: a fresh
interpreter, no state shared) that exits before ONNX Runtime loads the model,
so the two runtimes never share a heap and the parent never imports
TensorFlow. The child is sent the export's settings and answers with plain
data: the build's figures and Keras' logits and probabilities for every
verification image; the ONNX model comes back through a file, read only
once the child has exited (a pickled copy through the pipe would add its
size twice). The child converts first and runs Keras after: the
conversion's memory is freed when it ends, while TensorFlow keeps what
Keras' calls used, so this order keeps one process near the larger of the
two rather than their sum. Only ``--resize-in-graph`` keeps the child until
verification, which needs Keras on the graph's own resized frames.

:class:`LocalSide` does the same work in this process: for a model handed
over in memory (``export_model(keras_model=...)``, whose Python objects
cannot cross to another interpreter) and where ``UNET_EXPORT_IN_PROCESS=1``
asks for it (the test suite, which would otherwise import TensorFlow once
per export).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from dataclasses import replace
from typing import Any

from .errors import ExportError
from .verify import Reference

__all__ = ["LocalSide", "ChildSide", "open_side", "quiet_converter_logs", "IN_PROCESS_ENV"]

#: Set to 1 to keep TensorFlow in the exporting process (see the module docstring).
IN_PROCESS_ENV = "UNET_EXPORT_IN_PROCESS"


class LocalSide:
    """TensorFlow's work on the export's own state, in this process."""

    isolated = False

    def __init__(self, state):
        self.state = state
        self._reference = None

    def prepare(self, config, keras_model):
        """The user's network (network.Network) from ``keras_model`` or ``config.model``, or None."""
        from .network import is_reference_model, load_model_file, prepare_network

        if config.model is not None:
            keras_model = load_model_file(config.model, config.custom_objects)
        if keras_model is None or is_reference_model(keras_model):
            return None, keras_model
        config.validate_own_network()
        return prepare_network(keras_model, config.input_size, config.dynamic_size), None

    def build(self) -> str:
        from .pipeline import build_keras

        return build_keras(self.state)

    def convert(self) -> str:
        from .pipeline import convert_keras_model

        return convert_keras_model(self.state)

    def reference(self, images: dict, now: bool = False):
        """The reference for ``images`` ({key: uint8 (H, W, 3)}): a verify.KerasReference.

        Computed later, by verify, unless ``now`` (what the child does).
        """
        from .verify import KerasReference

        if self._reference is None:
            c = self.state.config
            self._reference = KerasReference(self.state.keras_model, c.mean, c.std)
        if now:
            self._reference.compute(images)
        return self._reference

    def take_model(self, keep_running: bool = False):
        """The converted ONNX model (already in the state: nothing crossed a process)."""
        return self.state.proto

    def peak_mb(self) -> float:
        """This process's peak resident memory (MB): TensorFlow's is part of it."""
        from .resources import process_peak_mb

        return process_peak_mb()

    def close(self) -> None:
        """Nothing to stop: TensorFlow stays in this process."""


class _Reference(Reference):
    """Keras' outputs computed in TensorFlow's process, kept here as plain arrays."""

    def __init__(self, side: "ChildSide"):
        super().__init__()
        self._side = side

    def compute(self, images: dict) -> None:
        todo = {k: v for k, v in images.items() if k not in self._cache}
        if todo:
            outputs, seconds = self._side.call("reference", todo)
            self._cache.update(outputs)
            self.seconds += seconds


class ChildSide:
    """TensorFlow's work in a child process, which exits before ONNX Runtime runs (module docstring)."""

    isolated = True

    def __init__(self, state):
        import tempfile

        self.state = state
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child,), name="unet-export-tensorflow")
        self._process.start()
        child.close()
        self._reference = _Reference(self)
        self._peak: float | None = None
        self._tmp: tempfile.TemporaryDirectory | None = tempfile.TemporaryDirectory(
            prefix="unet-export-"
        )

    def call(self, command: str, *args) -> Any:
        """Send one command, wait for its answer; the child's ExportError is raised here as it was."""
        self._conn.send((command, args))
        try:
            status, value = self._conn.recv()
        except EOFError:
            code = self._process.exitcode
            self.close()
            raise ExportError(
                f"the TensorFlow process ended during {command!r} (exit code {code}); "
                f"rerun with {IN_PROCESS_ENV}=1 to see the error in this process"
            ) from None
        if status == "error":
            raise value
        if status == "crash":
            raise RuntimeError(f"the TensorFlow process failed during {command!r}:\n{value}")
        return value

    def prepare(self, config, keras_model):
        network = self.call("prepare", config)
        return network, None

    def build(self) -> str:
        line, fields = self.call("build", self.state.config)
        for name, value in fields.items():
            setattr(self.state, name, value)
        return line

    def _model_path(self):
        from pathlib import Path

        assert self._tmp is not None, "the converted model was already taken"
        return Path(self._tmp.name, "converted.onnx")

    def convert(self) -> str:
        """tf2onnx in the child; the model waits in a file until :meth:`take_model`."""
        return self.call("convert", str(self._model_path()))

    def take_model(self, keep_running: bool = False):
        """The converted ONNX model, read once the child has exited (unless ``keep_running``)."""
        import onnx

        path = self._model_path()
        if not keep_running:
            self._peak = float(self.call("peak"))  # its last figure, kept for peak_mb()
            self._stop()
        proto = onnx.load(str(path))
        self._discard()
        return proto

    def peak_mb(self) -> float:
        """The TensorFlow process's peak resident memory so far (MB); its last figure once it exited."""
        if self._process.is_alive():
            return float(self.call("peak"))
        assert self._peak is not None, "the TensorFlow process ended before its peak was read"
        return self._peak

    def reference(self, images: dict) -> _Reference:
        self._reference.compute(images)
        return self._reference

    def close(self) -> None:
        """Stop the child and remove the converted model's file if it was never taken."""
        self._stop()
        self._discard()

    def _stop(self) -> None:
        """The child exits at once when told; it is terminated if it does not."""
        if self._process.is_alive():
            try:
                self._conn.send(("exit", ()))
            except OSError:
                pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=10)
        self._conn.close()

    def _discard(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def quiet_converter_logs() -> None:
    """Only errors from tf2onnx, onnxslim and absl; none of tf2onnx's per-op lines.

    tf2onnx logs each op it has no handler for at ERROR and goes on; the export names those ops
    itself (convert._refuse_unconverted) or rewrites them (Erfc), so its lines would only mislead.
    """
    import logging

    for noisy in ("tf2onnx", "onnxslim", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("tf2onnx.tfonnx").setLevel(logging.CRITICAL)


def open_side(state, keras_model=None, isolate: bool | None = None):
    """:class:`ChildSide` unless a model was handed over in memory or ``UNET_EXPORT_IN_PROCESS=1``."""
    if isolate is None:
        isolate = keras_model is None and os.environ.get(IN_PROCESS_ENV, "") != "1"
    return ChildSide(state) if isolate else LocalSide(state)


# ----------------------------------------------------------------------------- the child
def _serve(conn) -> None:
    """The child's loop: one command at a time on the child's own export state, until "exit"."""
    # Ctrl-C is the parent's to handle: it stops this process in its cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow's own (Eigen) CPU kernels instead of oneDNN's: Keras' 512x512 reference call then
    # peaked 0.17-0.21 GB lower and took no longer (1.32-1.36 vs 1.53 GB, 2-core Xeon, TensorFlow 2.21).
    # The reference stays Keras' own forward pass; a user's setting is kept.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    quiet_converter_logs()
    from .pipeline import ExportState

    state: Any = None
    network = None
    local: LocalSide | None = None
    while True:
        try:
            command, args = conn.recv()
        except EOFError:
            return
        if command == "exit":
            # At once: the interpreter's and TensorFlow's teardown took ~1-2 s here and frees nothing
            # the operating system would not free anyway; the parent is waiting to load the model.
            conn.close()
            os._exit(0)
        try:
            if command == "prepare":
                (config,) = args
                network, _ = LocalSide(None).prepare(config, None)
                value: Any = None if network is None else replace(network, model=None)
            elif command == "build":
                (config,) = args
                state = ExportState(config=config, network=network)
                local = LocalSide(state)
                line = local.build()
                fields = {
                    k: getattr(state, k) for k in ("weights_info", "trained", "params", "factors")
                }
                value = (line, fields)
            elif command == "convert":
                assert local is not None
                (path,) = args
                line = local.convert()
                with open(path, "wb") as f:
                    f.write(state.proto.SerializeToString())
                state.proto = None  # the parent reads it from the file
                value = line
            elif command == "peak":
                from .resources import process_peak_mb

                value = process_peak_mb()
            elif command == "reference":
                assert local is not None
                (images,) = args
                before = local._reference.seconds if local._reference is not None else 0.0
                reference = local.reference(images, now=True)
                value = (
                    {k: (reference.logits([k])[0], reference.probs([k])[0]) for k in images},
                    reference.seconds - before,
                )
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", value))
        except ExportError as exc:
            conn.send(("error", exc))
        except Exception:
            conn.send(("crash", traceback.format_exc()))
