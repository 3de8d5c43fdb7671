"""unet_runtime: an embeddable VGG19-UNet segmentation engine on ONNX Runtime.

Needs only numpy and onnxruntime (or onnxruntime-gpu); never TensorFlow.

    from unet_runtime import Segmenter
    with Segmenter("model.onnx") as seg:
        mask = seg.predict(image)  # (H, W, 3) uint8 RGB in, (H, W) uint8 classes out
"""

from .errors import InputImageError, ModelFileError, ProviderError, SegmenterClosedError, SegmenterError
from .model_info import VOC_CLASSES, ModelInfo
from .providers import ProviderConfig
from .segmenter import Segmenter

__all__ = [
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
