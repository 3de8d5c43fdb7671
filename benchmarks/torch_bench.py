"""PyTorch peer rows (GPU): the same network and weights, fp16 channels_last.

Optional: torch is present on the GPU machine and is never a dependency of
unet-onnx. The rows answer "what would a user get by writing this network in
PyTorch instead", measured in the same process as the ORT rows.
"""

from __future__ import annotations


from .runner import Row, agreement
from .timing import summarize, time_calls

__all__ = ["torch_rows"]


def torch_rows(*, ref_model_path, images, size: int, batch: int, flops: int, warmup: int, iters: int,
               ref_probs, compile_too: bool = False) -> list[Row]:
    """Rows for PyTorch fp16 channels_last eager (and torch.compile max-autotune with ``compile_too``)."""
    import time

    import onnx
    import torch

    from unet_runtime import images as im

    from .peers import torch_from_onnx

    model = onnx.load(str(ref_model_path))
    net = torch_from_onnx(model, "fp16", channels_last=True)
    x = torch.from_numpy(im.to_model_input(images, (0, 0, 0), (1, 1, 1), "nchw")).cuda().half()
    x = x.contiguous(memory_format=torch.channels_last)
    variants = [("torch fp16 channels_last", net)]
    if compile_too:
        variants.append(("torch fp16 compile max-autotune", torch.compile(net, mode="max-autotune")))
    rows = []
    for name, fn in variants:
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn(x, "argmax")
            torch.cuda.synchronize()
            setup = time.perf_counter() - t0
            raw = time_calls(lambda: fn(x, "argmax"), warmup=warmup, iters=iters, sync=torch.cuda.synchronize)
            mask = fn(x[:1], "argmax")[0].cpu().numpy()
        row = Row(name=name, engine="torch", provider="cuda", precision="fp16", head="argmax", size=size, batch=batch,
                  setup_s=setup, raw_device_s=raw, device=summarize(raw, batch, flops),
                  numerics=agreement(ref_probs, mask, "argmax"),
                  peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20,
                  note=f"torch {torch.__version__}, argmax mask out, device-resident input")
        rows.append(row)
    return rows
