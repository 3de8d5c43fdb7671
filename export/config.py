"""What an export is asked for: :class:`ExportConfig`, its defaults and its checks.

Every allowed value lives with the code that gives it meaning and is
imported from there (heads, layouts, precisions and input types from the
runtime's metadata contract; fold forms from fold.py; calibration methods
from precision.py), so the CLI, this check and the benchmarks cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from unet_runtime.model_info import HEADS, INPUT_DTYPES, LAYOUTS, PRECISIONS

from .calibration import MIN_CALIBRATION_IMAGES
from .convert import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .errors import ConfigError
from .fold import FOLD_CHOICES, auto_fold_form
from .model import validate_spatial_size
from .precision import CALIBRATION_METHODS, INT8_OPS

__all__ = ["ExportConfig", "DEFAULT_INPUT_SIZE"]

#: The reference model's size (the specification's 512x512).
DEFAULT_INPUT_SIZE = (512, 512)


@dataclass
class ExportConfig:
    """Everything ``export-unet`` can be asked for (CLI flags map 1:1; the CLI's defaults are these)."""

    #: None: the model's own size (``model`` / ``keras_model`` of another network), else 512x512;
    #: settled by :meth:`resolved`.
    input_size: tuple[int, int] | None = None
    dynamic_size: bool = False
    #: None: the head width stored in ``weights`` (see :meth:`resolved`), else 21 (Pascal VOC).
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    layout: str = "nhwc"
    head: str = "softmax"
    precision: str = "fp32"
    #: None: DEFAULT_OPSET (settled by :meth:`resolved`).
    opset: int | None = DEFAULT_OPSET
    weights: str | None = None
    encoder_weights: str | None = None
    seed: int = 0
    verify: bool = True
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: INT8 calibration: a folder of images (None: synthetic shapes, see calibration.py).
    calibration_images: str | None = None
    #: images used when calibrating on synthetic shapes; held-out ones are extra (calibration.held_out_count).
    #: 16 and 32 gave the same INT8 accuracy (mIoU 0.8386 vs 0.8387 on labelled images, trained weights;
    #: benchmarks/results/int8-calibration-*.md), and each image costs an fp32 run.
    calibration_count: int = 16
    calibration_method: str = "minmax"
    #: op types left in float by INT8 quantization (of precision.INT8_OPS), e.g. ("Add",).
    int8_float_ops: tuple[str, ...] = ()
    #: ``float32`` (normalized input) or ``uint8`` (raw RGB, normalized in the graph).
    input_dtype: str = "float32"
    #: filter multiplier (1.0 = the reference network); < 1 only for tests and experiments.
    width_multiplier: float = 1.0
    #: decoder upsampling folded into the next conv: one of fold.FOLD_CHOICES (``auto``: see fold_form).
    fold_upsample: str = "auto"
    #: pad conv1-1's 3 input channels and an argmax head's classes to multiples of 8 (pad.py; for GPUs).
    pad_channels: bool = False
    #: uint8 frames of any size in, resized to input_size inside the graph (and an argmax mask resized back): frames.py.
    resize_in_graph: bool = False
    #: a saved Keras model of any architecture (``.keras``) to export instead of the reference
    #: VGG19-UNet (network.py says what it must be).
    model: str | None = None
    #: a module to import before loading ``model`` (it registers the model's custom layers).
    custom_objects: str | None = None

    def fold_form(self) -> str:
        """The fold this export applies: ``fold_upsample``, with ``auto`` resolved by precision (fold.auto_fold_form)."""
        return (
            auto_fold_form(self.precision) if self.fold_upsample == "auto" else self.fold_upsample
        )

    @property
    def size(self) -> tuple[int, int] | None:
        """The fixed ``(H, W)``, or None for a size-agnostic export."""
        if self.dynamic_size:
            return None
        return tuple(self.input_size or DEFAULT_INPUT_SIZE)  # type: ignore[return-value]

    def resolved(self, keras_model=None, network=None) -> "ExportConfig":
        """This config with ``num_classes`` settled (raises ConfigError).

        Left as None, it is the class count of the head in the weights'
        source: ``keras_model`` (an in-memory model, see
        :func:`~unet_export.export_model`) or the ``weights`` file (read with
        h5py, before any model is built); 21 when there is neither or the
        count cannot be told. Given explicitly, it must match the source's,
        so a wrong value fails here, not after the model was built.
        """
        from .weights import stored_num_classes

        if self.opset is None:
            return replace(self, opset=DEFAULT_OPSET).resolved(keras_model, network)
        if network is not None:
            return self._resolved_for(network)
        if self.input_size is None:
            return replace(self, input_size=DEFAULT_INPUT_SIZE).resolved(keras_model)
        if keras_model is not None:
            if self.weights or self.encoder_weights:
                raise ConfigError(
                    "keras_model= and a weights file were both given; pass one source of weights "
                    "(drop config.weights / config.encoder_weights, or keras_model)"
                )
            # not a Keras model: copy_weights says so later
            shape = getattr(keras_model, "output_shape", None)
            stored = (
                shape[-1]
                if isinstance(shape, tuple) and shape and isinstance(shape[-1], int)
                else None
            )
            source, flag, fix = (
                "keras_model",
                "num_classes",
                "num_classes={n}, or leave it None to use the model's",
            )
        else:
            stored = (
                stored_num_classes(self.weights)
                if self.weights and Path(self.weights).is_file()
                else None
            )
            source, flag, fix = (
                repr(self.weights),
                "--num-classes",
                "--num-classes {n}, or leave it out to use the file's",
            )
        if self.num_classes is None:
            return replace(self, num_classes=stored or 21)
        if stored is not None and stored != self.num_classes:
            raise ConfigError(
                f"{flag} {self.num_classes} does not match {source}, whose head has {stored} classes; "
                f"pass {fix.format(n=stored)}"
            )
        return self

    def _resolved_for(self, network) -> "ExportConfig":
        """Classes and size from a user's network (network.Network); explicit values must agree."""
        if self.num_classes is not None and self.num_classes != network.num_classes:
            raise ConfigError(
                f"--num-classes {self.num_classes} does not match model {network.name!r}, which outputs "
                f"{network.num_classes} class scores; drop --num-classes (the model's count is used)"
            )
        size = network.input_size or self.input_size or DEFAULT_INPUT_SIZE
        return replace(self, num_classes=network.num_classes, input_size=tuple(size))

    def validate(self, network=None, *, size: bool = True) -> None:
        """Check every value before any slow work starts (raises ConfigError).

        ``network``: the user's network (network.Network) when exporting one,
        whose own input size replaces the reference model's multiple-of-16
        rule (as does a ``model`` file); ``size=False`` leaves the size to a
        later call, when it is not yet known which model it is for.
        """
        reference = network is None and self.model is None
        if size and reference and not self.dynamic_size and self.input_size is not None:
            validate_spatial_size(*self.input_size)
        if self.model is not None or network is not None:
            self.validate_own_network()
        for name, value, allowed in (
            ("--layout", self.layout, LAYOUTS),
            ("--head", self.head, HEADS),
            ("--precision", self.precision, PRECISIONS),
            ("--fold-upsample", self.fold_upsample, FOLD_CHOICES),
            ("--input-dtype", self.input_dtype, INPUT_DTYPES),
            ("--calibration-method", self.calibration_method, CALIBRATION_METHODS),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"{name} {value!r} is not supported; choose one of {', '.join(allowed)}"
                )
        # None is settled by resolved() (export_model calls it); every other value must be a count.
        classes = self.num_classes
        if classes is not None and (
            isinstance(classes, bool) or not isinstance(classes, int) or classes < 1
        ):
            raise ConfigError(
                f"--num-classes {classes!r} must be an integer >= 1 (21 for Pascal VOC)"
            )
        if self.head == "argmax" and (classes or 0) > 256:
            raise ConfigError(
                f"--head argmax writes a uint8 mask, which holds at most 256 classes, not {self.num_classes}; use --head logits"
            )
        self._validate_int8()
        if self.opset is not None and not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(
                f"--opset {self.opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})"
            )
        if (
            self.class_names is not None
            and classes is not None
            and len(self.class_names) != classes
        ):
            raise ConfigError(
                f"{len(self.class_names)} class names for --num-classes {self.num_classes}; give one name per line, one per class"
            )
        if self.resize_in_graph:
            self._validate_frames()
        if any(s == 0 for s in self.std) or len(self.std) != 3 or len(self.mean) != 3:
            raise ConfigError(
                f"--mean {self.mean} / --std {self.std}: three values each, std non-zero"
            )

    def _validate_int8(self) -> None:
        """The options that only INT8 uses, or that an INT8 model cannot use."""
        if self.pad_channels and self.precision == "int8":
            raise ConfigError(
                "--pad-channels aligns channels for GPU tensor cores; an int8 model runs on the CPU, "
                "where it only adds work: drop --pad-channels or use --precision fp16"
            )
        if self.precision != "int8" and self.calibration_images:
            raise ConfigError(
                "--calibration-images is only used with --precision int8; add --precision int8 or drop it"
            )
        unknown = sorted(set(self.int8_float_ops) - set(INT8_OPS))
        if unknown:
            raise ConfigError(
                f"--int8-float-ops {' '.join(unknown)}: not an op type INT8 quantizes; choose from "
                f"{', '.join(INT8_OPS)}"
            )
        if self.int8_float_ops and self.precision != "int8":
            raise ConfigError(
                "--int8-float-ops is only used with --precision int8; add it or drop the flag"
            )
        if self.precision == "int8" and self.calibration_count < MIN_CALIBRATION_IMAGES:
            raise ConfigError(
                f"--calibration-count {self.calibration_count} is too small; INT8 calibration needs at least {MIN_CALIBRATION_IMAGES}"
            )

    def _validate_frames(self) -> None:
        """``--resize-in-graph`` needs a fixed size and raw uint8 NHWC frames."""
        if self.dynamic_size:
            raise ConfigError(
                "--resize-in-graph resizes frames to the network's size: give --input-size H W "
                "instead of --dynamic-size"
            )
        if self.input_dtype != "uint8" or self.layout != "nhwc":
            raise ConfigError(
                f"--resize-in-graph takes raw uint8 RGB frames (N, H, W, 3): use --input-dtype uint8 "
                f"--layout nhwc, not {self.input_dtype} {self.layout}"
            )

    def validate_own_network(self) -> None:
        """What cannot go with a user's own network (it brings its own architecture and weights)."""
        for flag, value in (
            ("--weights", self.weights),
            ("--encoder-weights", self.encoder_weights),
            ("--width-multiplier", self.width_multiplier != 1.0),
        ):
            if value:
                raise ConfigError(
                    f"{flag} applies to the reference VGG19-UNet; a model given with --model "
                    f"(or keras_model=) brings its own layers and weights: drop {flag}"
                )
