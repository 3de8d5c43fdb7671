"""``bench-unet export``: what ``export-unet`` costs, in wall time and memory, per configuration.

Each configuration runs ``export-unet`` in a child process, as a user would,
while this process samples the resident memory of the child's whole process
tree (psutil, every 20 ms: children count too). The export's own report
gives each step's time and peak memory; the table puts them side by side.

    bench-unet export --out benchmarks/results/export-cost [--rows fp32 fp16-argmax int8-argmax] [--repeat N] [-- EXPORT ARGS]

Wall times of one export on a shared 2-core machine vary by several seconds
from run to run; ``--repeat N`` runs every configuration N times, in turns
(each round runs each row once, so a slow spell hits all rows alike), and the
table shows each row's median run with every run's wall time beside it.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .exporting import export_command
from .report import begin_run, header_lines, results_parser, save_results

__all__ = ["ROWS", "measure", "median_run", "main"]

#: name -> export-unet flags; the three configurations whose cost the docs quote, by default.
ROWS = {
    "fp32": [],
    "fp16-argmax": ["--precision", "fp16", "--head", "argmax"],
    "int8-argmax": ["--precision", "int8", "--head", "argmax"],
}
#: Rows that keep TensorFlow in the exporting process (the export's behaviour before it moved
#: TensorFlow to a child process, unet_export/tfside.py), for a before/after in one run.
ROWS.update({f"{name}-tf-in-process": flags for name, flags in list(ROWS.items())})
#: Seconds between memory samples of the process tree.
SAMPLE_S = 0.02


def _tree_rss(proc) -> int:
    """Resident bytes of ``proc`` and all its descendants now (processes that vanish meanwhile count 0)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(args: list[str], workdir: Path, *, in_process: bool = False) -> dict:
    """Run ``export-unet ARGS --out M --report R`` in a child; return wall time, peak tree RSS, the report's figures.

    ``in_process``: TensorFlow in export-unet's own process (``UNET_EXPORT_IN_PROCESS=1``), not in
    the child export-unet starts for it.
    """
    import os

    import psutil

    model, report = workdir / "model.onnx", workdir / "report.json"
    cmd = export_command(model, "--report", report, *args)
    peak = 0
    t0 = time.perf_counter()
    env = dict(os.environ, UNET_EXPORT_IN_PROCESS="1" if in_process else "0")
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    stop = threading.Event()

    def sample():
        nonlocal peak
        proc = psutil.Process(child.pid)
        while not stop.is_set():
            try:
                peak = max(peak, _tree_rss(proc))
            except psutil.Error:
                return
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = child.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    row: dict = {
        "args": args,
        "returncode": child.returncode,
        "wall_s": round(wall, 2),
        "peak_tree_rss_mb": round(peak / 2**20, 1),
        "tensorflow": "this process" if in_process else "child process",
    }
    if child.returncode != 0:
        row["error"] = (
            stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {child.returncode}"
        )
        return row
    rep = json.loads(report.read_text())
    # Reports of versions that timed steps without measuring their memory hold bare seconds.
    steps = {
        k: v if isinstance(v, dict) else {"seconds": v, "peak_rss_mb": None}
        for k, v in rep["steps"].items()
    }
    row.update(
        steps=steps,
        size_bytes=rep["size_bytes"],
        gates=rep["verification"].get("gates", []),
        not_applicable=rep["verification"].get("not_applicable", []),
    )
    model.unlink(missing_ok=True)
    return row


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower middle of an even count), with every run's wall time
    (``runs_wall_s``) and peak (``runs_peak_tree_rss_mb``), in the order they ran."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    middle = sorted(ok, key=lambda r: r["wall_s"])[(len(ok) - 1) // 2]
    return {
        **middle,
        "runs_wall_s": [r["wall_s"] for r in runs],
        "runs_peak_tree_rss_mb": [r["peak_tree_rss_mb"] for r in runs],
    }


def to_markdown(rows: dict, meta: dict) -> str:
    """The cost table: one line per configuration, each step's seconds and peak GiB."""

    steps = next((list(r["steps"]) for r in rows.values() if "steps" in r), [])
    lines = [
        *header_lines("bench-unet export", meta),
        "wall = the whole `export-unet` process, start to exit; peak = resident memory of its process tree "
        f"(TensorFlow's child process included), sampled every {SAMPLE_S * 1000:.0f} ms from outside; each step: "
        "seconds / peak GiB of export-unet's own process (sampled inside the export; with TensorFlow in its "
        "child, build/convert/reference run there: their figures are the parent's wait).",
        *(
            [
                f"Each row ran {repeats} times, the rows in turns; the row shows the run of median wall "
                "time, and `runs` every run's wall time in the order they ran.",
            ]
            if (repeats := max(len(r.get("runs_wall_s", [])) for r in rows.values())) > 1
            else []
        ),
        "",
        "| export | wall s | peak GiB | " + " | ".join(steps) + " | model MB | gates | runs |",
        "|---|---|---|" + "---|" * len(steps) + "---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(
                f"| {name} | {r['wall_s']:.1f} | {r['peak_tree_rss_mb'] / 1024:.2f} | failed: {r['error']} |"
            )
            continue
        cells = [
            f"{r['steps'][s]['seconds']:.1f} / {(r['steps'][s]['peak_rss_mb'] or 0) / 1024:.2f}"
            for s in steps
        ]
        gates = f"{sum(g['passed'] for g in r['gates'])}/{len(r['gates'])} passed"
        flags = f" `{' '.join(r['args'])}`" if r["args"] else " (defaults)"
        lines.append(
            f"| {name}{flags} | {r['wall_s']:.1f} | {r['peak_tree_rss_mb'] / 1024:.2f} | "
            + " | ".join(cells)
            + f" | {r['size_bytes'] / 1e6:.1f} | {gates} | "
            + ", ".join(f"{w:.1f}" for w in r.get("runs_wall_s", [r["wall_s"]]))
            + " |"
        )
    lines += ["", "Gates (value vs bound) per export:"]
    for name, r in rows.items():
        for g in r.get("gates", []):
            lines.append(f"- {name}: {g['name']}: {g['value']:.3g} {g['rule']} {g['bound']:g}")
        for s in r.get("not_applicable", []):
            lines.append(f"- {name}: {s['name']}: not applicable ({s['reason']})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "bench-unet export") -> int:
    """Command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = f"{prog} " + " ".join(shlex.quote(a) for a in argv)
    extra: list[str] = []
    if "--" in argv:  # everything after -- goes to every export-unet call
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = results_parser(prog, __doc__)
    p.epilog = "Arguments after -- are passed to every export, e.g. -- --weights my.keras"
    p.add_argument(
        "--rows",
        nargs="+",
        default=[r for r in ROWS if not r.endswith("-tf-in-process")],
        choices=list(ROWS),
        help="configurations to export (NAME-tf-in-process: with TensorFlow in export-unet's own process)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of every row, in turns; the table shows each row's median run (default: 1)",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat {args.repeat}: give 1 or more runs")
    no_psutil = importlib.util.find_spec("psutil") is None  # checked before minutes of work
    psutil_problem = "measuring the process tree needs psutil: install the 'bench' extra (pip install '.[bench]' in a clone)"
    meta = begin_run(prog, argv, args.out, psutil_problem if no_psutil else None)
    if meta is None:
        return 1
    meta["command"] = command
    runs: dict[str, list[dict]] = {name: [] for name in args.rows}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for round_ in range(1, args.repeat + 1):
            for name in args.rows:
                label = f"{name} (run {round_}/{args.repeat})" if args.repeat > 1 else name
                print(f"{prog}: {label} ...", file=sys.stderr, flush=True)
                r = measure(
                    ROWS[name] + extra, Path(tmp), in_process=name.endswith("-tf-in-process")
                )
                runs[name].append(r)
                print(
                    f"{prog}: {label}: {r['wall_s']:.1f} s, {r['peak_tree_rss_mb'] / 1024:.2f} GiB"
                    + (f", FAILED: {r['error']}" if "error" in r else ""),
                    file=sys.stderr,
                    flush=True,
                )
    rows = {name: median_run(r) for name, r in runs.items()}
    save_results(args.out, {**meta, "rows": rows}, to_markdown(rows, meta))
    return 0 if all("error" not in r for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
