"""PyTorch peer rows: the same network and weights, channels_last; fp16 on the GPU, fp32 on the CPU.

Optional: torch is never a dependency of
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
        return (
            "--torch needs PyTorch (pip install torch); it is an optional peer, never a dependency"
        )
    return None


def torch_twin(model_path, images, device: str, fold: bool = False):
    """``(net, x, dtype)``: the PyTorch twin with the ONNX model's weights, and ``images`` as its NCHW input.

    fp16 on ``"cuda"``, fp32 on ``"cpu"`` (CPU convolutions in fp16 are not
    a peer anyone would run); channels_last, as a tuned deployment would;
    ``fold``: the decoder fold (see ``peers.torch_from_onnx``).
    """
    import onnx

    from .peers import torch_from_onnx

    dtype = "fp16" if device == "cuda" else "fp32"
    net = torch_from_onnx(
        onnx.load(str(model_path)), dtype, channels_last=True, device=device, fold=fold
    )
    return net, _as_input(images, device, dtype), dtype


def compile_max_autotune(net):
    """``torch.compile`` as a deployment would use it for speed: max-autotune, one static graph per input shape.

    dynamic=False: autotuned for each shape, as a deployment would; without
    it, a second shape in the process makes dynamo recompile with symbolic sizes.
    """
    import torch

    return torch.compile(net, mode="max-autotune", dynamic=False)


def torch_rows(
    *,
    ref_model_path,
    images,
    size: int,
    batch: int,
    flops: int,
    warmup: int,
    iters: int,
    ref_probs,
    labels=None,
    compile_too: bool = False,
    fold: bool = False,
    device: str = "cuda",
) -> Iterator[Row]:
    """Rows for the PyTorch twin: eager, compiled with ``compile_too``, and the folded twin with ``fold``.

    Every row runs with ``torch.backends.cudnn.benchmark`` on (cuDNN times
    its algorithms per shape, as ONNX Runtime's exhaustive search does);
    numerics over every benchmark image. A generator: each row is handed out
    as soon as it is measured, so a caller that writes rows as they come
    keeps the eager row if a max-autotune compile runs past a time limit.
    """
    import time

    import torch

    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if device == "cuda" else None
    plans = [("", False, False)] + ([(" compile max-autotune", False, True)] if compile_too else [])
    plans += [(" fold=convtranspose", True, False)] if fold else []
    for suffix, folded, compiled in plans:
        net, x, dtype = torch_twin(ref_model_path, images[:batch], device, fold=folded)
        fn = compile_max_autotune(net) if compiled else net
        name = f"torch {dtype} channels_last{suffix}" if not compiled else f"torch {dtype}{suffix}"
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn(x, "argmax")  # the first call compiles (and cuDNN picks its algorithms)
            if sync:
                sync()
            setup = time.perf_counter() - t0
            raw = time_calls(
                lambda fn=fn, x=x: fn(x, "argmax"), warmup=warmup, iters=iters, sync=sync
            )
            # Every image, in batches of the timed shape (another shape would recompile); each
            # output copied out
            # at once: max-autotune replays CUDA graphs, which reuse their output buffers on the
            # next call.
            masks = []
            for first in range(0, len(ref_probs), batch):
                chunk = list(images[first : min(first + batch, len(ref_probs))])
                chunk += [chunk[-1]] * (batch - len(chunk))
                out = fn(_as_input(chunk, device, dtype), "argmax").cpu().numpy()
                masks += list(out[: min(batch, len(ref_probs) - first)])
        yield Row(
            name=name,
            engine="torch",
            provider=device,
            precision=dtype,
            head="argmax",
            size=size,
            batch=batch,
            setup_s=setup,
            raw_device_s=raw,
            device=summarize(raw, batch, flops),
            numerics=agreement(ref_probs, masks, labels),
            peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            note=f"torch {torch.__version__}, cudnn.benchmark on, argmax mask out, "
            + ("device-resident input" if device == "cuda" else "input tensor made before timing"),
        )


def _as_input(images, device: str, dtype: str):
    """Images as the twin's NCHW input tensor on ``device`` (fp16 on a GPU), channels_last."""
    import torch

    from unet_runtime import images as im

    x = torch.from_numpy(im.to_model_input(list(images), (0, 0, 0), (1, 1, 1), "nchw")).to(device)
    return (x.half() if dtype == "fp16" else x).contiguous(memory_format=torch.channels_last)
