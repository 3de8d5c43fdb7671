"""What a model file says about itself: the metadata contract.

``export-unet`` writes these keys into ONNX ``metadata_props``; the runtime
reads them to know the input size, layout, normalization and head. The schema
lives here, in the package without TensorFlow, so both sides share one
definition and data flows one way: export -> file -> runtime.

Normalization is ``x = (pixel / 255 - mean) / std`` per RGB channel; the
exporter's default (mean 0, std 1) feeds the network values in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Mapping

__all__ = [
    "ModelInfo",
    "VOC_CLASSES",
    "HEADS",
    "LAYOUTS",
    "PRECISIONS",
    "INPUT_DTYPES",
    "METADATA_PREFIX",
    "INPUT_NAME",
    "OUTPUT_NAMES",
]

METADATA_PREFIX = "unet."
#: The values a model's head, layout, precision and input type can take: the one home of each list
#: (export-unet's flags, the runtime's checks and bench-unet's matrix all read them here).
HEADS = ("softmax", "logits", "argmax")
LAYOUTS = ("nhwc", "nchw")
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_DTYPES = ("float32", "uint8")
#: Tensor names export-unet gives the graph (the output is named by the head).
INPUT_NAME = "input"
OUTPUT_NAMES = {"softmax": "probabilities", "logits": "logits", "argmax": "mask"}

#: Pascal VOC 2012's 21 classes, the reference model's default class set.
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class ModelInfo:
    """How to feed a model and read its output.

    Attributes:
        num_classes: channels of the probability/logit output.
        layout: ``"nhwc"`` or ``"nchw"``; the input layout, and the output
            layout of the softmax/logits heads (an argmax mask is ``(N, H, W)``).
        height, width: fixed input size, or ``None`` for a size-agnostic model.
        head: ``"softmax"`` (probabilities), ``"logits"`` or ``"argmax"``
            (uint8 class mask computed in the graph).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``: the arithmetic inside.
        input_dtype: element type of the input tensor.
        mean, std: per-channel normalization after scaling pixels to [0, 1].
        class_names: one name per class.
        size_multiple: H and W of a size-agnostic model must be multiples of it.
        resize_in_graph: the model takes uint8 frames of any size and
            resizes them to ``(height, width)`` itself (an argmax head returns
            masks at the frame's size); the runtime sends images as they are.
        extra: every other ``unet.*`` key, kept verbatim (versions, hashes...).
    """

    num_classes: int = 21
    layout: str = "nhwc"
    height: int | None = None
    width: int | None = None
    head: str = "softmax"
    precision: str = "fp32"
    input_dtype: str = "float32"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    class_names: tuple[str, ...] = VOC_CLASSES
    size_multiple: int = 16
    resize_in_graph: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {LAYOUTS}")
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is not one of {HEADS}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes {self.num_classes!r} must be >= 1")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes; give one name per class"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError(
                f"mean {self.mean!r} and std {self.std!r} need 3 values each, std non-zero"
            )

    @property
    def fixed_size(self) -> bool:
        """True when the model accepts exactly ``(height, width)`` images."""
        return self.size is not None

    @property
    def size(self) -> tuple[int, int] | None:
        """``(height, width)`` of a fixed-size model; None for a size-agnostic one."""
        return None if self.height is None or self.width is None else (self.height, self.width)

    @classmethod
    def infer(
        cls,
        input_shape,
        output_shape,
        mask_output: bool,
        *,
        layout: str | None = None,
        head: str | None = None,
        num_classes: int | None = None,
        mean=None,
        std=None,
    ) -> "ModelInfo":
        """What a model without export-unet metadata shows in its graph, the rest from the caller.

        Layout: NCHW when the input's dimension 1 is 3, else NHWC; head:
        argmax for a uint8 output, else softmax; classes: the output's
        static channel dimension; size: the input's static H and W.

        Raises:
            ValueError: what cannot be told from the graph and was not given.
        """
        if layout is None:
            layout = "nchw" if len(input_shape) == 4 and input_shape[1] == 3 else "nhwc"
        if head is None:
            head = "argmax" if mask_output else "softmax"
        if num_classes is None:
            c = output_shape[1 if layout == "nchw" else -1] if len(output_shape) == 4 else None
            if not isinstance(c, int):
                raise ValueError("its class count is not static; pass num_classes=")
            num_classes = c
        if layout not in LAYOUTS or head not in HEADS:
            raise ValueError(
                f"layout {layout!r} / head {head!r} are not allowed: {LAYOUTS} / {HEADS}"
            )
        hw = input_shape[1:3] if layout == "nhwc" else input_shape[2:4]
        h, w = (hw[0], hw[1]) if all(isinstance(d, int) for d in hw) else (None, None)
        return cls(
            num_classes=num_classes,
            layout=layout,
            height=h,
            width=w,
            head=head,
            mean=tuple(mean or (0.0, 0.0, 0.0)),
            std=tuple(std or (1.0, 1.0, 1.0)),
            class_names=tuple(f"class_{i}" for i in range(num_classes)),
        )

    def to_metadata(self) -> dict[str, str]:
        """Serialize to ONNX ``metadata_props`` (string keys and values)."""
        data = asdict(self)
        extra = data.pop("extra")
        out = {METADATA_PREFIX + k: json.dumps(v) for k, v in data.items()}
        out.update({METADATA_PREFIX + k: str(v) for k, v in extra.items()})
        return out

    @classmethod
    def from_metadata(cls, props: Mapping[str, str]) -> "ModelInfo | None":
        """Parse ``metadata_props``; ``None`` when the model carries no ``unet.*`` keys.

        Raises:
            ValueError: the keys are present but malformed.
        """
        ours = {
            k[len(METADATA_PREFIX) :]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)
        }
        if not ours:
            return None
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs: dict = {}
        for key in known & ours.keys():
            try:
                value = json.loads(ours[key])
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"metadata {METADATA_PREFIX}{key}={ours[key]!r} is not valid JSON"
                ) from exc
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        kwargs["extra"] = {k: v for k, v in ours.items() if k not in known}
        return cls(**kwargs)
