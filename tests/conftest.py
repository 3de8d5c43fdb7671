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

NARROW = 0.125
NUM_CLASSES = 5


def _has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_device_present()


def _cuda_device_present() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs onnxruntime-gpu and a CUDA device: neither is present")
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
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            cfg = dict(
                input_size=(32, 32),
                num_classes=NUM_CLASSES,
                width_multiplier=NARROW,
                weights=str(confident_weights),
            )
            cfg.update(overrides)
            out = root / f"m{len(cache)}.onnx"
            cache[key] = export_model(ExportConfig(**cfg), out)
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
    """A narrow model trained on the shapes generator (seeded, ~12 s), and labelled images of it (96x96)."""
    from unet_bench.fixture import small_fixture

    return small_fixture(tmp_path_factory.mktemp("labelled"), images=16, image_size=96)


def run_cli(*args, env=None, timeout=900):
    """Run a console script in a subprocess; returns CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )
