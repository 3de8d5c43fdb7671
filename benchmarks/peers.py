"""The peers ONNX Runtime is measured against: Keras (TensorFlow) and PyTorch.

Both are optional imports: Keras rows need the ``export`` extra; the
PyTorch peer needs torch (an optional peer, never a dependency).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["keras_model", "own_keras_model", "keras_rows", "TorchUNet", "torch_from_onnx"]


def keras_model(size: int, *, seed: int = 0, weights: str | None = None):
    """The Keras peer: the reference network at ``size`` x ``size`` x 3, seeded like every export, or ``weights``.

    Built at the timed size because that is how the reference model (and a user's) is built.
    """
    from unet_export import build_vgg19_unet

    model = build_vgg19_unet((size, size, 3), 21, seed=seed)
    if weights:
        from unet_export.weights import load_weights

        load_weights(model, weights)
    return model


def own_keras_model(path: str, size: int):
    """The Keras peer of ``bench-unet --model``: the user's model as the export converts it.

    That is the model with its logits' softmax (and, for lower-resolution
    scores, the bilinear resize to the input size) on top, as
    unet_export.network prepares it: the same function the ONNX rows compute.
    """
    from unet_export.network import load_model_file, prepare_network

    return prepare_network(load_model_file(path), (size, size), False).model


def keras_rows(model, x_nhwc: np.ndarray) -> dict[str, Callable[[], object]]:
    """Callables for the two Keras rows: ``model.predict`` and a ``tf.function``."""
    import tensorflow as tf

    fn = tf.function(lambda t: model(t, training=False), jit_compile=False)
    xt = tf.constant(x_nhwc)
    return {
        "keras.predict": lambda: model.predict(x_nhwc, verbose=0, batch_size=len(x_nhwc)),
        "keras tf.function": lambda: fn(xt).numpy(),
    }


def torch_from_onnx(
    model_proto,
    dtype: str = "fp16",
    channels_last: bool = True,
    device: str = "cuda",
    fold: bool = False,
):
    """A PyTorch VGG19-UNet holding the ONNX model's Conv weights (same network, same weights).

    ``fold``: the decoder's upsample + concat + first conv as a 3x3 conv on
    the skip plus a 4x4 stride-2 ConvTranspose on the coarse map, the exact
    rewrite ``export-unet --fold-upsample convtranspose`` applies
    (unet_export.fold), so that PyTorch gets the same graph-level saving.
    """
    import torch
    from onnx import numpy_helper

    inits = {i.name: i for i in model_proto.graph.initializer}
    convs = [n for n in model_proto.graph.node if n.op_type == "Conv"]
    net = TorchUNet.build(num_classes=int(inits[convs[-1].input[1]].dims[0]), fold=fold)
    # a folded or padded graph: its Conv weights do not map onto the twin
    if len(convs) != len(net.convs()):
        raise ValueError(
            f"the model has {len(convs)} Conv nodes, the reference network {len(net.convs())}; give the plain "
            "fp32/fp16 export (no --fold-upsample, no --pad-channels)"
        )
    with torch.no_grad():
        for layer, node in zip(net.convs(), convs, strict=True):
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            b = (
                numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                if len(node.input) > 2 and node.input[2]
                else np.zeros(w.shape[0], np.float32)
            )
            layer.load(w, b)
    net = net.eval().to(device)
    if dtype == "fp16":
        net = net.half()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


class TorchUNet:  # a namespace: the nn.Module is defined lazily so torch stays optional
    """Factory for the PyTorch twin of the reference network (NCHW)."""

    @staticmethod
    def build(num_classes: int = 21, fold: bool = False):
        """The network as an ``nn.Module`` (float32, random init); ``torch_from_onnx`` loads real weights.

        ``forward(x, head)`` takes NCHW input; head ``"argmax"`` (uint8 mask),
        ``"softmax"`` or ``"logits"``. ``convs()`` lists one loader per
        convolution of the reference network, in the order of the ONNX graph's Conv nodes
        (encoder, decoder, head); each ``load(w, b)`` takes the reference OIHW
        kernel and bias (a folded stage splits its first kernel, see
        ``unet_export.fold``).
        """
        import torch
        from torch import nn

        from unet_export.fold import transpose_kernel

        enc = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
        dec = (512, 256, 128, 64)

        class Plain(nn.Conv2d):
            def load(self, w, b):
                self.weight.copy_(torch.from_numpy(w))
                self.bias.copy_(torch.from_numpy(b))

        class Folded(nn.Module):
            """conv3x3(concat(skip, up2(x))) as conv3x3_skip(skip) + convtranspose4x4(x): the same function."""

            def __init__(self, c_skip: int, c_up: int, out: int):
                super().__init__()
                self.c_skip = c_skip
                self.skip = nn.Conv2d(c_skip, out, 3, padding=1)
                self.up = nn.ConvTranspose2d(c_up, out, 4, stride=2, padding=1, bias=False)

            def load(self, w, b):
                self.skip.weight.copy_(torch.from_numpy(np.ascontiguousarray(w[:, : self.c_skip])))
                self.skip.bias.copy_(torch.from_numpy(b))
                self.up.weight.copy_(torch.from_numpy(transpose_kernel(w[:, self.c_skip :])))

            def forward(self, skip, x):
                return self.skip(skip) + self.up(x)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = nn.ModuleList()
                cin = 3
                for filters, depth in enc:
                    block = nn.ModuleList()
                    for _ in range(depth):
                        block.append(Plain(cin, filters, 3, padding=1))
                        cin = filters
                    self.encoder.append(block)
                skips = [f for f, _ in enc][:-1][::-1]  # 512, 256, 128, 64
                self.decoder = nn.ModuleList()
                for skip, filters in zip(skips, dec, strict=True):
                    first = (
                        Folded(skip, cin, filters)
                        if fold
                        else Plain(skip + cin, filters, 3, padding=1)
                    )
                    self.decoder.append(
                        nn.ModuleList([first, Plain(filters, filters, 3, padding=1)])
                    )
                    cin = filters
                self.head = Plain(cin, num_classes, 1)

            def convs(self):
                return (
                    [c for b in self.encoder for c in b]
                    + [c for b in self.decoder for c in b]
                    + [self.head]
                )

            def forward(self, x, head: str = "argmax"):
                skips = []
                for i, block in enumerate(self.encoder):
                    if i:
                        x = torch.nn.functional.max_pool2d(x, 2)
                    for conv in block:
                        x = torch.relu(conv(x))
                    skips.append(x)
                x = skips.pop()
                for first, second in self.decoder:
                    skip = skips.pop()
                    if fold:
                        x = torch.relu(first(skip, x))
                    else:
                        up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
                        x = torch.relu(first(torch.cat([skip, up], 1)))
                    x = torch.relu(second(x))
                logits = self.head(x)
                if head == "argmax":
                    return logits.argmax(1).to(torch.uint8)
                return torch.softmax(logits, 1) if head == "softmax" else logits

        return Net()
