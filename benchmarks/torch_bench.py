"""PyTorch peer rows: the same network and weights, channels_last; fp16 on the GPU, fp32 on the CPU.

Optional: torch is present on the GPU machine and is never a dependency of
unet-onnx. The rows answer "what would a user get by writing this network in
PyTorch instead", measured in the same process as the ORT rows.
"""

from __future__ import annotations

import importlib.util
from typing import Iterator

from .runner import Row, agreement
from .timing import summarize, time_calls

__all__ = ["torch_rows", "torch_twin", "compile_max_autotune", "torch_missing"]


def torch_missing() -> str | None:
    """The error for a PyTorch request when torch is not installed; None when it is."""
    if importlib.util.find_spec("torch") is None:
        return "--torch needs PyTorch (pip install torch); it is an optional peer, never a dependency"
    return None


def torch_twin(model_path, images, device: str):
    """``(net, x, dtype)``: the PyTorch twin with the ONNX model's weights, and ``images`` as its NCHW input.

    fp16 on ``"cuda"``, fp32 on ``"cpu"`` (CPU convolutions in fp16 are not
    a peer anyone would run); channels_last, as a tuned deployment would.
    """
    import onnx
    import torch

    from unet_runtime import images as im

    from .peers import torch_from_onnx

    dtype = "fp16" if device == "cuda" else "fp32"
    net = torch_from_onnx(onnx.load(str(model_path)), dtype, channels_last=True, device=device)
    x = torch.from_numpy(im.to_model_input(images, (0, 0, 0), (1, 1, 1), "nchw")).to(device)
    x = (x.half() if dtype == "fp16" else x).contiguous(memory_format=torch.channels_last)
    return net, x, dtype


def compile_max_autotune(net):
    """``torch.compile`` as the peer is measured (ANCHORS' row): max-autotune, one static graph per input shape.

    dynamic=False: autotuned for each shape, as a deployment would; without
    it, a second shape in the process makes dynamo recompile with symbolic sizes.
    """
    import torch

    return torch.compile(net, mode="max-autotune", dynamic=False)


def torch_rows(*, ref_model_path, images, size: int, batch: int, flops: int, warmup: int, iters: int,
               ref_probs, compile_too: bool = False, device: str = "cuda") -> Iterator[Row]:
    """Rows for the PyTorch twin, eager (and compiled with ``compile_too``); numerics from image 0 of the batch.

    A generator: the eager row is handed out before the compile starts
    (minutes with max-autotune), so a caller that writes rows as they come
    keeps it if the compile runs past a time limit.
    """
    import time

    import torch

    net, x, dtype = torch_twin(ref_model_path, images, device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    variants = [(f"torch {dtype} channels_last", lambda: net)]
    if compile_too:
        variants.append((f"torch {dtype} compile max-autotune", lambda: compile_max_autotune(net)))
    for name, make in variants:
        fn = make()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn(x, "argmax")  # the first call compiles
            if sync:
                sync()
            setup = time.perf_counter() - t0
            # Image 0 of the timed batch shape (a second shape would recompile), copied out now:
            # max-autotune replays CUDA graphs, which reuse their output buffers on the next call.
            mask = out[0].cpu().numpy()
            raw = time_calls(lambda: fn(x, "argmax"), warmup=warmup, iters=iters, sync=sync)
        yield Row(name=name, engine="torch", provider=device, precision=dtype, head="argmax", size=size, batch=batch,
                  setup_s=setup, raw_device_s=raw, device=summarize(raw, batch, flops),
                  numerics=agreement(ref_probs, mask, "argmax"),
                  peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
                  note=f"torch {torch.__version__}, argmax mask out, "
                       + ("device-resident input" if device == "cuda" else "input tensor made before timing"))
