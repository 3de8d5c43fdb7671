"""Loading a user's weights into the reference model, and fingerprinting them.

Keras 3 ``.weights.h5`` files and ``Model.set_weights`` match layers by
*order*, not by name (keras/src/saving/saving_lib.py), so a file from another architecture may
"load" into the wrong layers or fail deep inside h5py. Every path here checks
shapes layer by layer first and names the first layer that does not fit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import WeightsError

__all__ = [
    "load_weights",
    "load_encoder_weights",
    "copy_weights",
    "weights_digest",
    "stored_num_classes",
    "sha256_file",
    "WEIGHT_SUFFIXES",
]

WEIGHT_SUFFIXES = (".keras", ".weights.h5", ".h5", ".hdf5")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise WeightsError(
            f"{what} {str(path)!r} does not exist or is not a file; pass the path of a {'/'.join(WEIGHT_SUFFIXES)} file"
        )
    if not str(path).endswith(WEIGHT_SUFFIXES):
        raise WeightsError(
            f"{what} {str(path)!r} has an unsupported suffix; allowed: {', '.join(WEIGHT_SUFFIXES)}"
        )


def _layers_with_weights(model):
    return [layer for layer in model.layers if layer.weights]


def _assign(target, source_layers, what: str) -> None:
    """Copy weights layer by layer (by order), checking every shape first."""
    ours = _layers_with_weights(target)
    theirs = [layer for layer in source_layers if layer.weights]
    if len(ours) != len(theirs):
        raise WeightsError(
            f"{what} has {len(theirs)} layers with weights, the VGG19-UNet has {len(ours)}: "
            "it is not this architecture"
        )
    for mine, other in zip(ours, theirs, strict=True):
        got = [tuple(w.shape) for w in other.weights]
        want = [tuple(w.shape) for w in mine.weights]
        if got != want:
            raise WeightsError(
                f"{what}: layer {other.name!r} has weight shapes {got} but layer {mine.name!r} needs {want}; "
                "check --num-classes and that the file is this architecture"
            )
    for mine, other in zip(ours, theirs, strict=True):
        mine.set_weights(other.get_weights())


def load_weights(model, path: str | os.PathLike) -> str:
    """Load a trained model or weights file into ``model``; return its sha256.

    Accepts a Keras 3 ``.keras`` archive, a ``.weights.h5`` file, or a legacy
    ``.h5`` (full model or weights only).

    Raises:
        WeightsError: missing, corrupt, or another architecture/class count.
    """
    import keras

    path = Path(path)
    _check_file(path, "weights file")
    name = str(path)
    try:
        if name.endswith(".keras") or (name.endswith((".h5", ".hdf5")) and _is_full_h5_model(path)):
            source = keras.models.load_model(path, compile=False, safe_mode=True)
            _assign(model, source.layers, f"weights file {name!r}")
        else:
            # A scratch copy takes the load, so a file that fails half-way
            # leaves the caller's model untouched.
            scratch = keras.models.clone_model(model)
            scratch.load_weights(path)
            _assign(model, scratch.layers, f"weights file {name!r}")
    except WeightsError:
        raise
    except Exception as exc:  # h5py/zipfile/keras raise many types for a bad file
        raise WeightsError(
            f"cannot load weights file {name!r}: {type(exc).__name__}: {_first_line(exc)}; "
            "it is corrupt, truncated, or not a VGG19-UNet with these --num-classes"
        ) from exc
    return sha256_file(path)


def copy_weights(model, source) -> str:
    """Copy an in-memory Keras model's weights into ``model``; return a sha256 of them.

    ``source`` is the user's trained model (built at any input size: the
    weights do not depend on it). It is checked layer by layer like a
    weights file, and ``model`` is untouched if any layer does not fit. The
    digest covers every weight's shape, dtype and bytes in layer order, so
    two exports of the same weights carry the same fingerprint.

    Raises:
        WeightsError: ``source`` is not a Keras model of this architecture
            and class count.
    """
    if not hasattr(source, "layers") or not hasattr(source, "get_weights"):
        raise WeightsError(
            f"keras_model is a {type(source).__name__}, not a Keras model; pass the trained "
            "keras.Model (or save it and pass the file as weights)"
        )
    _assign(model, source.layers, "keras_model")
    return weights_digest(source)


def weights_digest(model) -> str:
    """sha256 over every weight's dtype, shape and bytes, in the model's order (the metadata's fingerprint)."""
    import numpy as np

    digest = hashlib.sha256()
    for array in model.get_weights():
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def stored_num_classes(path: str | os.PathLike) -> int | None:
    """The class count of the head stored in a weights file, or None if it cannot be told.

    Read with h5py alone (no Keras model is built, so it is cheap enough to
    run before any slow step). The head is the reference model's only 1x1 convolution:
    every 4-D weight of shape ``(1, 1, C_in, N)`` in the file (the kernel, and
    any optimizer slots a ``.keras`` archive saved for it) names the same N.
    Other layouts, several candidate widths, or an unreadable file give None,
    and the layer-by-layer check of :func:`load_weights` has the last word.
    """
    import io
    import zipfile

    import h5py

    path = Path(path)
    widths: set[int] = set()
    source: io.BytesIO | Path

    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and len(obj.shape) == 4 and obj.shape[:2] == (1, 1):
            widths.add(int(obj.shape[3]))

    try:
        if str(path).endswith(".keras"):
            # A .keras file is a zip archive holding model.weights.h5.
            with zipfile.ZipFile(path) as archive:
                source = io.BytesIO(archive.read("model.weights.h5"))
        else:
            source = path
        with h5py.File(source, "r") as fh:
            fh.visititems(visit)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return widths.pop() if len(widths) == 1 else None


def _is_full_h5_model(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as fh:
        return "model_config" in fh.attrs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def load_encoder_weights(model, path: str | os.PathLike) -> str:
    """Load Keras Applications VGG19 "notop" weights into the encoder.

    ``blockI_convJ`` maps to ``convI-J``; the decoder keeps its init.
    Returns the file's sha256.
    """
    import keras

    path = Path(path)
    _check_file(path, "encoder weights file")
    try:
        vgg = keras.applications.VGG19(weights=None, include_top=False, input_shape=(None, None, 3))
        vgg.load_weights(path)
    except Exception as exc:
        raise WeightsError(
            f"cannot load encoder weights {str(path)!r} into keras.applications.VGG19(include_top=False): "
            f"{type(exc).__name__}: {_first_line(exc)}; pass VGG19's 'notop' weights file"
        ) from exc
    for layer in vgg.layers:
        if not layer.name.startswith("block") or "_conv" not in layer.name:
            continue
        block, conv = layer.name[len("block") :].split("_conv")
        target = model.get_layer(f"conv{block}-{conv}")
        want = [tuple(w.shape) for w in target.weights]
        got = [tuple(w.shape) for w in layer.weights]
        if want != got:
            raise WeightsError(
                f"encoder weights {str(path)!r}: {layer.name!r} has shapes {got}, {target.name!r} needs {want}"
            )
        target.set_weights(layer.get_weights())
    return sha256_file(path)
