"""unet_runtime: an embeddable VGG19-UNet segmentation engine on ONNX Runtime.

Needs only numpy and onnxruntime (or onnxruntime-gpu); never TensorFlow.

    from unet_runtime import Segmenter
    with Segmenter("model.onnx") as seg:
        mask = seg.predict(image)  # (H, W, 3) uint8 RGB in, (H, W) uint8 classes out
"""

import importlib.metadata as _md

from .errors import InputImageError, ModelFileError, ProviderError, SegmenterClosedError, SegmenterError
from .model_info import VOC_CLASSES, ModelInfo
from .providers import ProviderConfig
from .segmenter import Segmenter

try:
    #: The installed unet-onnx distribution's version (one number for all three packages).
    __version__ = _md.version("unet-onnx")
except _md.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "Segmenter",
    "ProviderConfig",
    "ModelInfo",
    "VOC_CLASSES",
    "SegmenterError",
    "ModelFileError",
    "InputImageError",
    "ProviderError",
    "SegmenterClosedError",
]
