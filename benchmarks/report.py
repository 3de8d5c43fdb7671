"""Benchmark results as JSON (every raw timing), a Markdown table, and a plot."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from unet_runtime.atomic import atomic_write_bytes, folder_problem, new_folders, remove_empty

__all__ = [
    "Results",
    "machine_info",
    "machine_line",
    "cpu_flags",
    "git_commit",
    "write_json",
    "write_text_atomic",
    "run_meta",
    "results_parser",
    "begin_run",
    "model_problem",
    "frame_size",
    "header_lines",
    "save_results",
    "markdown",
    "plot",
]


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` with the runtime's write-then-rename (unet_runtime.atomic): no half-written file.

    A missing results folder is created here, at the first write, not when
    the command starts: a run that fails before it has measured anything
    leaves no empty folder behind.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def out_prefix_problem(prefix: Path, flag: str = "--out") -> str | None:
    """Why results cannot be written at `prefix` (PREFIX.json, PREFIX.md ...), with the fix; None if they can.

    Checked before any work, so that an hour of measurements never ends in
    'cannot write'. A missing folder is fine if it can be created: the
    nearest existing folder above it must be writable.
    """
    prefix = Path(prefix)
    if prefix.is_dir():
        return f"{flag} {str(prefix)!r} is a folder; name a file inside it, such as {str(prefix / 'run')!r}"
    return folder_problem(prefix.parent, flag)


#: CPU features that decide CPU speed here: fp32 FMA width (AVX2, AVX-512), INT8 dot products (VNNI), bf16, AMX.
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU has (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FLAGS if f in have]
    except OSError:
        pass
    return []


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (``-dirty`` with local changes), or None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _gpu_info() -> dict:
    """Name, driver, memory and clocks of each GPU (nvidia-smi), CUDA and cuDNN versions; empty without a GPU."""
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
    try:
        gpu = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if gpu.returncode != 0:
        return {}
    out: dict = {"gpu": gpu.stdout.strip().splitlines()[0], "gpu_query": query}
    try:  # the CUDA/cuDNN that ONNX Runtime was built against, and the pip packages it loads
        import onnxruntime as ort

        build = (
            ort.capi._pybind_state.get_build_info()
            if hasattr(ort.capi._pybind_state, "get_build_info")
            else None
        )
        if build:
            out["onnxruntime_build"] = build
    except ImportError:
        pass
    import importlib.metadata as md

    for dist in (
        "nvidia-cuda-runtime-cu12",
        "nvidia-cuda-runtime",
        "nvidia-cudnn-cu12",
        "nvidia-cudnn-cu13",
        "nvidia-cudnn",
    ):
        try:
            out.setdefault("cuda_packages", {})[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        import torch

        out["torch_cuda"], out["torch_cudnn"] = torch.version.cuda, torch.backends.cudnn.version()
    except ImportError:
        pass
    return out


def machine_info() -> dict:
    """CPU (model, flags), GPU (name, clocks, CUDA/cuDNN), OS, package versions and the git commit."""
    import importlib.metadata as md

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "git_commit": git_commit(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info.update(_gpu_info())
    versions = {}
    for dist in (
        "unet-onnx",
        "numpy",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorflow",
        "keras",
        "tf2onnx",
        "torch",
        "openvino",
        "opencv-python-headless",
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort

        versions["onnxruntime (imported)"] = ort.__version__
    except ImportError:
        pass
    info["versions"] = versions
    return info


def machine_line(machine: dict) -> str:
    """One line naming the machine: the GPU, or the CPU with its flags and core count."""
    if machine.get("gpu"):
        return machine["gpu"]
    if "cpu_flags" not in machine:  # a result file older than flag recording
        flags = "CPU flags not recorded"
    else:
        flags = ", ".join(machine["cpu_flags"]) or "no AVX2"
    return f"{machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores; {flags})"


def run_meta(prog: str, argv=None, **extra) -> dict:
    """What every results file records first: the exact command, the UTC date, the machine (:func:`machine_info`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": f"{prog} " + " ".join(shlex.quote(a) for a in argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **extra,
    }


def results_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of a ``bench-unet`` subcommand that writes results: its ``--out`` is declared here.

    ``doc`` is the subcommand module's docstring; its first paragraph is the
    description ``--help`` shows.
    """
    from unet_runtime.helpformat import DefaultsHelpFormatter

    p = argparse.ArgumentParser(
        prog=prog,
        formatter_class=DefaultsHelpFormatter,
        description=(doc or "").split("\n\n")[0],
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output prefix: writes PREFIX.json and PREFIX.md"
    )
    return p


def begin_run(prog: str, argv, out: Path, problem: str | None = None, **extra) -> dict | None:
    """The run's :func:`run_meta`, or None after printing why it cannot start (the caller exits 1).

    Checked before any measurement: ``out`` must be writable
    (:func:`out_prefix_problem`), and ``problem`` is the caller's own check
    of its arguments (None when they are fine).
    """
    problem = out_prefix_problem(out) or problem
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return None
    return run_meta(prog, argv, **extra)


def model_problem(model: Path, flag: str = "--model") -> str | None:
    """Why ``model`` cannot be measured (not a file), with the flag named; None if it is a file."""
    return None if Path(model).is_file() else f"{flag} {str(model)!r} is not a file"


def frame_size(text: str) -> tuple[int, int]:
    """``1920x1080`` (width x height, as frames are named) -> (height, width); an argparse ``type``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1920x1080") from exc
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be >= 1")
    return h, w


def header_lines(title: str, meta: dict, *, partial: str | None = None) -> list[str]:
    """The Markdown header of a results file: title and machine, command, date, versions, commit, a blank line."""
    machine = meta["machine"]
    return [
        f"# {title}: {machine_line(machine)}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        *(
            [f"Model: {meta['model']['file']} (sha256 {meta['model']['sha256'][:16]}...)  "]
            if meta.get("model")
            else []
        ),
        *([partial] if partial else []),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items()) + "  ",
        f"Commit: {machine.get('git_commit') or 'not a git checkout'}",
        "",
    ]


def save_results(prefix: Path, data: dict, table: str) -> None:
    """PREFIX.json (``data``, every raw figure) and PREFIX.md (``table``), each atomically; prints the table."""
    write_text_atomic(
        Path(prefix).with_suffix(".json"), json.dumps(data, indent=1, default=str) + "\n"
    )
    write_text_atomic(Path(prefix).with_suffix(".md"), table)
    print(table)


def write_json(path: Path, rows, meta: dict) -> None:
    """All rows with their raw timings, plus machine and command (write-then-rename)."""
    data = {**meta, "rows": [asdict(r) for r in rows]}
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


class Results:
    """PREFIX.json and PREFIX.md rewritten after every row; PREFIX.png when the run ends.

    A run that is cut short (a job's time limit kills it, Ctrl-C) keeps
    every row it finished, in files that say so: ``"complete": false`` in the
    JSON and a "Partial run" line in the table, until :meth:`finish`. Each
    write is atomic, so a file is always whole. :meth:`discard` removes all
    three (for errors: a run that failed leaves nothing).
    """

    SUFFIXES = (".json", ".md", ".png")

    def __init__(self, prefix: Path, meta: dict):
        self.prefix, self.meta, self.rows = prefix, meta, []
        # Folders the first write will create (nearest first): discard() removes them again if they
        # stay empty.
        self._new_folders = new_folders(prefix)

    def add(self, row) -> None:
        """Record one finished row and rewrite the files (OSError if they cannot be written)."""
        # a plot left by an earlier run with this prefix would pass for this run's
        if not self.rows:
            self.prefix.with_suffix(".png").unlink(missing_ok=True)
        self.rows.append(row)
        self._write(complete=False)

    def finish(self, with_plot: bool) -> str:
        """Mark the run complete, write the plot if asked; returns the Markdown table."""
        table = self._write(complete=True)
        if with_plot:
            plot(self.prefix.with_suffix(".png"), self.rows)
        return table

    def discard(self) -> None:
        """Remove whatever this run wrote."""
        for suffix in self.SUFFIXES:
            self.prefix.with_suffix(suffix).unlink(missing_ok=True)
        remove_empty(self._new_folders)

    def _write(self, complete: bool) -> str:
        meta = {**self.meta, "complete": complete}
        baseline = "keras.predict" if any(r.name == "keras.predict" for r in self.rows) else None
        table = markdown(self.rows, meta, baseline)
        write_json(self.prefix.with_suffix(".json"), self.rows, meta)
        write_text_atomic(self.prefix.with_suffix(".md"), table)
        return table


def _fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def markdown(rows, meta: dict, baseline: str | None) -> str:
    """A table: one line per row, speed-up over the baseline row (Keras when present)."""
    base = {}
    for r in rows:
        if baseline and r.name == baseline:
            base[(r.size, r.batch)] = r.device["median_ms"]
    lines = [
        *header_lines(
            "bench-unet",
            meta,
            partial=None
            if meta.get("complete", True)
            else (
                f"**Partial run: {len(rows)} rows so far.** The process has not finished (still running, or cut short); "
                "the rows below are complete measurements.  "
            ),
        ),
        "device = the session (or model call) alone on a prepared input (IO binding, device buffers on GPU); "
        "host = uint8 images in, masks out (pre/post-processing and copies included); pre/post = the runtime's "
        "own processing alone, share = of the device time. Medians of n timed runs "
        "after warm-up; agreement = class-mask agreement with the fp32 reference on confident pixels (margin >= 0.05), "
        "over every distinct benchmark image (count in brackets); accuracy / mIoU = against --labels.",
        *([meta["images_note"]] if meta.get("images_note") else []),
        "",
        "| row | size | batch | device median ms | p90 | ms/img | img/s | TFLOP/s | host median ms | pre/post ms (share) | "
        f"vs {baseline or 'baseline'} | setup s | agreement (px, images) | rel L2 | accuracy / mIoU | peak RSS MB | GPU MB | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, h = r.device, r.host
        over = (
            f"{r.overhead['pre_post_ms']:.2f} ({r.overhead['share_of_session']:.1%})"
            if r.overhead
            else ""
        )
        b = base.get((r.size, r.batch))
        speed = f"{b / d['median_ms']:.2f}x" if b else ""
        num = r.numerics or {}
        agree = ""
        images = f", {num['agreement_images']} img" if num.get("agreement_images") else ""
        if num.get("confident_agreement") is not None:
            agree = (
                f"{num['confident_agreement'] * 100:.2f}% ({num['confident_pixels']:,} px{images})"
            )
        # no confident pixel: say so, with the all-pixel figure
        elif num.get("mask_agreement") is not None:
            agree = f"{num['mask_agreement'] * 100:.2f}% of all (0 confident{images})"
        labels = f"{num['pixel_accuracy']:.4f} / {num['mean_iou']:.4f}" if "mean_iou" in num else ""
        lines.append(
            f"| {r.name} | {r.size} | {r.batch} | {d['median_ms']:.2f} | {d['p90_ms']:.2f} | {d['ms_per_image']:.2f} | "
            f"{d['images_per_s']:.1f} | {_fmt(d.get('tflops'), '.1f')} | {_fmt(h and h['median_ms'])} | {over} | {speed} | "
            f"{_fmt(r.setup_s, '.1f')} | {agree} | {_fmt(num.get('rel_l2'), '.1e')} | {labels} | {_fmt(r.peak_rss_mb, '.0f')} | "
            f"{_fmt(r.peak_gpu_mb, '.0f')} | {d['n']} |"
        )
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    if any((r.numerics or {}).get("confident_pixels") == 0 for r in rows):
        notes.append(
            "- '0 confident': the reference has no pixel with a top-1/top-2 margin >= 0.05 (untrained "
            "weights give a flat softmax), so agreement is over all pixels, where near-ties flip freely; "
            "pass --weights with a trained model (bench-unet lab fixture) for a meaningful figure"
        )
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def plot(path: Path, rows) -> None:
    """Box plot of the device-resident latency distribution of every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    data = [[t * 1e3 / r.batch for t in r.raw_device_s] for r in rows]
    ax.boxplot(
        data,
        orientation="horizontal",
        tick_labels=[f"{r.name} b{r.batch} {r.size}px" for r in rows],
    )
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (device-resident), log scale")
    ax.set_title("bench-unet latency distributions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
