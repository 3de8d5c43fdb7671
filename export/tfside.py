"""TensorFlow's part of the export (build, convert, Keras' reference outputs), in this process or a child.

TensorFlow keeps the memory its graphs and calls used until the process
exits, and ONNX Runtime's verification sessions then come on top: the
export's peak was the two together (2.61 GiB for the 512x512 model on a
2-core Xeon, against 1.90 GiB in separate processes:
benchmarks/results/export-cost-isolation.md). :class:`ChildSide`
runs the TensorFlow work in a child process (``spawn``: a fresh
interpreter, no state shared) that exits before ONNX Runtime loads the model
for verification, so the two runtimes never share a heap and the parent
never imports TensorFlow. The child is sent the export's settings and
answers with plain data: the build's figures, Keras' logits and
probabilities for every verification image, and the ONNX model (through a
file). Keras runs in one such process and the conversion in a fresh one
(TensorFlow keeps what Keras' calls used, and the conversion's memory
would come on top); the last is gone before INT8 calibration runs ONNX
Runtime too (only ``--resize-in-graph`` keeps it until verification, which
needs Keras on the graph's own resized frames).

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

    def peak_mb(self) -> float:
        """This process's peak resident memory (MB): TensorFlow's is part of it."""
        from ._resources import process_peak_mb

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
    """TensorFlow's work in a child process, which exits before verification (module docstring)."""

    isolated = True

    def __init__(self, state):
        self.state = state
        self._start()
        self._reference = _Reference(self)
        self._peaks: list[float] = []

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child,), name="unet-export-tensorflow")
        self._process.start()
        child.close()

    def _restart(self) -> None:
        """A fresh TensorFlow process with the model built again, for conversion.

        TensorFlow keeps what Keras' calls used (~0.8 GiB at 512x512) and
        tf2onnx's conversion needs ~0.6 GiB more: in one process they add up
        (2.2 GiB); in two, each stays near 1.6 GiB, for a second import and build.
        """
        self._peaks.append(self.peak_mb())
        self.close()
        self._start()
        self.call("prepare", self.state.config)
        self.call("build", self.state.config)

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

    def convert(self) -> str:
        import tempfile
        from pathlib import Path

        import onnx

        if self.state.reference is not None:  # Keras ran in this process: convert in a fresh one
            self._restart()
        # Through a file, not the pipe: a pickled copy of the model's bytes on each side would
        # add its size twice to the peak.
        with tempfile.TemporaryDirectory(prefix="unet-export-") as tmp:
            path = Path(tmp, "converted.onnx")
            line = self.call("convert", str(path))
            self.state.proto = onnx.load(str(path))
        return line

    def peak_mb(self) -> float:
        """The largest peak resident memory of this export's TensorFlow processes so far (MB)."""
        return max([*self._peaks, float(self.call("peak"))])

    def reference(self, images: dict) -> _Reference:
        self._reference.compute(images)
        return self._reference

    def close(self) -> None:
        """Stop the child (it exits on its own when told; terminated if it does not)."""
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
            return
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
                from ._resources import process_peak_mb

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
