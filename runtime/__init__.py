"""unet_runtime: an embeddable VGG19-UNet segmentation engine on ONNX Runtime.

Needs only numpy and onnxruntime (or onnxruntime-gpu); never TensorFlow.

    from unet_runtime import Segmenter
    with Segmenter("model.onnx") as seg:
        mask = seg.predict(image)  # (H, W, 3) uint8 RGB in, (H, W) uint8 classes out
"""

from .errors import (
    InputImageError,
    ModelFileError,
    ProviderError,
    SegmenterClosedError,
    SegmenterError,
)
from .model_info import VOC_CLASSES, ModelInfo
from .providers import ProviderConfig
from .segmenter import Engine, Segmenter
from .tiling import Tiling


def __getattr__(name: str):
    """``__version__``: the installed unet-onnx distribution's (one number for all three packages).

    Looked up on first use, not at import: importlib.metadata costs ~20 ms
    of import time that an embedding application should not pay.
    """
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib.metadata as md

    try:
        version = md.version("unet-onnx")
    except md.PackageNotFoundError:  # run from a source tree that was never installed
        version = "0+unknown"
    globals()["__version__"] = version  # later lookups skip this function
    return version


__all__ = [
    "__version__",
    "Segmenter",
    "Engine",
    "Tiling",
    "ProviderConfig",
    "ModelInfo",
    "VOC_CLASSES",
    "SegmenterError",
    "ModelFileError",
    "InputImageError",
    "ProviderError",
    "SegmenterClosedError",
]
