"""unet_export: the reference VGG19-UNet from Keras to a verified ONNX model.

TensorFlow is imported lazily, on first use, so ``import unet_export`` is cheap.
"""

from .config import ExportConfig
from .errors import ConfigError, ConversionError, ExportError, VerificationError, WeightsError
from .model import SEED_PARAMS, build_vgg19_unet
from .pipeline import ExportResult, export_model

__all__ = [
    "build_vgg19_unet",
    "export_model",
    "ExportConfig",
    "ExportResult",
    "SEED_PARAMS",
    "ExportError",
    "ConfigError",
    "WeightsError",
    "ConversionError",
    "VerificationError",
]
