"""PyTorch peer rows (GPU): the same network and weights, fp16 channels_last.

Optional: torch is present on the GPU machine and is never a dependency of
unet-onnx. The rows answer "what would a user get by writing this network in
PyTorch instead", measured in the same process as the ORT rows.
"""

from __future__ import annotations

from typing import Iterator

from .runner import Row, agreement
from .timing import summarize, time_calls

__all__ = ["torch_rows"]


def torch_rows(*, ref_model_path, images, size: int, batch: int, flops: int, warmup: int, iters: int,
               ref_probs, compile_too: bool = False, device: str = "cuda") -> Iterator[Row]:
    """Rows for the PyTorch twin, channels_last, eager (and torch.compile max-autotune with ``compile_too``).

    fp16 on ``device="cuda"``, fp32 on ``"cpu"``; numerics from image 0 of the timed batch.

    A generator: the eager row is handed out before the compile starts
    (minutes with max-autotune), so a caller that writes rows as they come
    keeps it if the compile runs past a time limit.
    """
    import time

    import onnx
    import torch

    from unet_runtime import images as im

    from .peers import torch_from_onnx

    model = onnx.load(str(ref_model_path))
    dtype = "fp16" if device == "cuda" else "fp32"  # CPU convolutions in fp16 are not a peer anyone would run
    net = torch_from_onnx(model, dtype, channels_last=True, device=device)
    x = torch.from_numpy(im.to_model_input(images, (0, 0, 0), (1, 1, 1), "nchw")).to(device)
    x = (x.half() if dtype == "fp16" else x).contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else None
    variants = [(f"torch {dtype} channels_last", lambda: net)]
    if compile_too:
        # dynamic=False: one static graph per batch size, autotuned for that shape (as a deployment would);
        # without it, a second shape in the process makes dynamo recompile with symbolic sizes.
        variants.append((f"torch {dtype} compile max-autotune",
                         lambda: torch.compile(net, mode="max-autotune", dynamic=False)))
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
