"""Shared fixtures: small exported models, made once per test session.

Conversion cost scales with the number of weights, not the image size, so
the conversion logic is tested on narrow models (``width_multiplier``
0.125: 470k parameters, ~3 s per export) and only a few tests pay for the
full 30M-parameter network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Exports keep TensorFlow in the process here (it is imported once for the whole run); the tests
# of TensorFlow's own process (test_export_cli.py, test_hardening.py) set this back to 0.
os.environ.setdefault("UNET_EXPORT_IN_PROCESS", "1")

NARROW = 0.125


def _has_vnni() -> bool:
    from unet_bench.report import cpu_flags

    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_flags()))


#: INT8 figures in the tests were measured on CPUs with VNNI. Without it ONNX Runtime's u8s8 kernels
#: use VPMADDUBSW, whose 16-bit sums of product pairs can saturate (ONNX Runtime's quantization docs,
#: docs/performance/model-optimizations/quantization.md, "When and why do I need to try U8U8?"):
#: there the tests hold INT8 to the export's own gate bounds instead.
VNNI = _has_vnni()
NUM_CLASSES = 5


def _cuda_missing() -> str | None:
    """What the GPU tests lack here, exactly (None: onnxruntime's CUDA provider and a device are both there)."""
    try:
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        provider = False
    device = _cuda_device_present()
    missing = [
        *([] if provider else ["onnxruntime-gpu (its CUDA provider)"]),
        *([] if device else ["a CUDA device (nvidia-smi -L finds none)"]),
    ]
    return " and ".join(missing) or None


def _cuda_device_present() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


#: Fixtures that take several seconds or more to make (a trained model, a full-width benchmark run,
#: the full-size export, frame exports verified at four sizes, a server in a child process): tests using one are `slow`,
#: and those using a server are `server` too. make test-fast leaves both out; CI runs everything.
SLOW_FIXTURES = frozenset(
    {
        "labelled",
        "full_width_run",
        "default_export",
        "server",
        "frame_exports",
        "triton",
        "ours",
        "prepared",
        "installed",
    }
)


#: Fixtures through which a test exports a model (a second or more each, converted by tf2onnx): such
#: tests are marked `exports`; make test-fast keeps only those also marked `core`.
EXPORT_FIXTURES = frozenset({"narrow_export", "confident_weights", "confident_keras", "own_export"})


#: The export tests make test-fast keeps: one per path a change can break (fp32, fp16 and INT8
#: against Keras, the runtime's masks, the graph clean-up, the gates, the Triton repository, the
#: segment-unet CLI, an interrupted write). Node ids relative to tests/.
CORE_EXPORT_TESTS = frozenset(
    {
        "test_export_parity.py::test_onnx_matches_keras[32x32-nhwc-softmax-fp32-opdefault]",
        "test_export_parity.py::test_onnx_matches_keras[32x32-nhwc-softmax-fp16-opdefault]",
        "test_int8.py::test_int8_end_to_end",
        "test_runtime.py::test_masks_equal_keras_argmax[nhwc-argmax]",
        "test_graph.py::test_clean_op_histogram[nhwc-softmax-False-2]",
        "test_gates.py::test_a_perturbed_weight_fails_a_gate[softmax-fp32]",
        "test_triton.py::test_repository_matches_the_model_and_the_backends_rules",
        "test_segment_cli.py::test_probabilities_are_written_beside_the_masks",
        "test_hardening.py::test_export_interrupted_at_each_step_leaves_nothing[os.replace]",
        "test_own_network.py::test_export_passes_the_gates[deeplab_v3-fp32]",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.removeprefix("tests/") in CORE_EXPORT_TESTS:
            item.add_marker(pytest.mark.core)
        names = set(getattr(item, "fixturenames", ()))
        if names & {"server", "ours", "triton"}:
            item.add_marker(pytest.mark.server)
        if names & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if names & EXPORT_FIXTURES:
            item.add_marker(pytest.mark.exports)
    missing = _cuda_missing()
    if missing is None:
        return
    skip = pytest.mark.skip(
        reason=f"needs onnxruntime-gpu and a CUDA device; missing here: {missing}"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def confident_weights(tmp_path_factory) -> Path:
    """A narrow 5-class model whose softmax is peaked, saved as ``.weights.h5``.

    Random init gives a flat softmax (no pixel has a top-1/top-2 margin of
    0.05), which makes fp16 mask gates vacuous; scaling the head's kernel
    gives most pixels a clear winner, like a trained model.
    """
    from unet_export import build_vgg19_unet

    model = build_vgg19_unet((None, None, 3), NUM_CLASSES, seed=7, width_multiplier=NARROW)
    head = model.get_layer("conv2d_8")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 40.0, bias + np.linspace(-1, 1, NUM_CLASSES, dtype=np.float32)])
    path = tmp_path_factory.mktemp("weights") / "confident.weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture(scope="session")
def narrow_export(tmp_path_factory, confident_weights):
    """Factory: export a narrow model once per distinct configuration."""
    from unet_export import ExportConfig, export_model

    cache: dict = {}
    root = tmp_path_factory.mktemp("exports")

    def make(**overrides):
        cfg = dict(
            input_size=(32, 32),
            num_classes=NUM_CLASSES,
            width_multiplier=NARROW,
            weights=str(confident_weights),
        )
        cfg.update(overrides)
        config = ExportConfig(**cfg)
        # Keyed by the whole configuration, so tests that spell the same export differently share it.
        key = repr(config)
        if key not in cache:
            cache[key] = export_model(config, root / f"m{len(cache)}.onnx")
        return cache[key]

    return make


@pytest.fixture(scope="session")
def confident_keras(confident_weights):
    """The Keras model behind ``narrow_export`` (size-agnostic, same weights)."""
    from unet_export import build_vgg19_unet

    model = build_vgg19_unet((None, None, 3), NUM_CLASSES, width_multiplier=NARROW)
    model.load_weights(confident_weights)
    return model


@pytest.fixture(scope="session")
def labelled(tmp_path_factory):
    """A narrow model trained on the shapes generator (seeded), and labelled images of it (96x96).

    Trained once per test run (23 s on 2 cores): pytest-xdist's workers share it through the run's
    base folder, the first to come trains it under a lock (pytest-xdist's docs, "Making
    session-scoped fixtures execute only once").
    """
    import fcntl
    import pickle

    from unet_bench.fixture import small_fixture

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    done = shared / "labelled" / "fixture.pickle"
    with open(shared / "labelled.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            fixture = small_fixture(done.parent, images=16, image_size=96)
            partial = done.with_suffix(".partial")
            partial.write_bytes(pickle.dumps(fixture))
            partial.rename(done)
        return pickle.loads(done.read_bytes())


def bench_argv(
    out, models, *extra, size: int, batch=(), iters: int = 1, warmup: int = 0
) -> list[str]:
    """bench-unet's arguments for a quick, quiet run over a folder of models, then ``extra``.

    One home for the flags the bench tests share; ``iters=1, warmup=0`` because
    they check rows and files, never timings.
    """
    argv = ["--out", out, "--size", size, "--iters", iters, "--warmup", warmup]
    argv += ["--models-from", models]
    if batch:
        argv += ["--batch", *batch]
    return [str(a) for a in (*argv, *extra, "-q")]


def run_cli(*args, env=None, timeout=900, subprocess_run=False):
    """Run a console script's ``main(argv)`` (``args[0]`` is its module); returns a CompletedProcess.

    In this process by default: an import of TensorFlow per call would cost
    seconds, and ``main(argv)`` is what the entry points call. Its stdout and
    stderr are captured, its log records at WARNING and above land in stderr
    (as the CLIs configure it), and an exit through ``SystemExit`` (argparse)
    gives its code. ``subprocess_run=True`` (or an ``env``) runs ``python -m``
    in a child instead: for the entry points themselves, signals, and
    environment variables read at import.
    """
    if subprocess_run or env or "." not in args[0]:  # a package's __main__: the entry point itself
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run(
            [sys.executable, "-m", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    import contextlib
    import importlib
    import io
    import logging

    module, argv = args[0], [str(a) for a in args[1:]]
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
    finally:
        root.removeHandler(handler)
    return subprocess.CompletedProcess(
        [sys.executable, "-m", *args], code or 0, out.getvalue(), err.getvalue()
    )
