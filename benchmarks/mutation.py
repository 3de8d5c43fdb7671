"""``bench-unet lab mutation``: how strong a module's unit tests are, by mutation testing.

Runs mutmut 2.5.1 (``pip install mutmut==2.5.1``; not a dependency) over one
module with one test file as the runner, then writes the record: mutants,
killed, survived, the score, and every surviving line. mutmut 2 mutates the
file in place (so the editable install runs the mutant) and restores it
after each mutant: do not edit or commit while it runs. Outside CI: a run
takes minutes (each mutant runs the tests).
"""

from __future__ import annotations

import argparse
import shlex
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .report import header_lines, run_meta, save_results

__all__ = ["main", "MUTMUT_VERSION"]

#: The version whose in-place mutation works with an editable install (mutmut 3 tests a copy the
#: installed package never imports).
MUTMUT_VERSION = "2.5.1"
CACHE = Path(".mutmut-cache")


def _mutmut_version() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("mutmut")
    except md.PackageNotFoundError:
        return None


def _counts(cache: Path) -> tuple[dict, list]:
    """mutmut's cache: {status: count} and (line number, source, status) per mutant."""
    with sqlite3.connect(cache) as c:
        status = dict(c.execute("select status, count(*) from Mutant group by status").fetchall())
        rows = c.execute(
            "select Line.line_number, Line.line, Mutant.status from Mutant join Line "
            "on Mutant.line = Line.id order by Line.line_number"
        ).fetchall()
    return status, rows


def main(argv: list[str] | None = None, prog: str = "bench-unet lab mutation") -> int:
    """Mutation-test ``--module`` with ``--tests``; write ``--out``.json/.md."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--module", required=True, help="the source file to mutate, e.g. runtime/metrics.py"
    )
    p.add_argument("--tests", nargs="+", required=True, help="test files run against each mutant")
    p.add_argument(
        "--out", type=Path, required=True, help="output prefix: PREFIX.json and PREFIX.md"
    )
    args = p.parse_args(argv)
    version = _mutmut_version()
    if version != MUTMUT_VERSION:
        print(
            f"{prog}: error: needs mutmut {MUTMUT_VERSION} (found {version or 'none'}): "
            f"pip install mutmut=={MUTMUT_VERSION}",
            file=sys.stderr,
        )
        return 1
    if subprocess.run(["git", "diff", "--quiet", "--", args.module]).returncode != 0:
        print(
            f"{prog}: error: {args.module} has uncommitted changes; commit them first",
            file=sys.stderr,
        )
        return 1
    CACHE.unlink(missing_ok=True)
    runner = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {' '.join(args.tests)}"
    command = [
        "mutmut",
        "run",
        "--paths-to-mutate",
        args.module,
        "--runner",
        runner,
        "--no-progress",
    ]
    started = time.strftime("%H:%M", time.gmtime())
    subprocess.run([sys.executable, "-m", *command], capture_output=True)
    ended = time.strftime("%H:%M", time.gmtime())
    if subprocess.run(["git", "diff", "--quiet", "--", args.module]).returncode != 0:
        print(
            f"{prog}: error: {args.module} was left mutated; git checkout -- {args.module}",
            file=sys.stderr,
        )
        return 1
    status, rows = _counts(CACHE)
    killed = status.get("ok_killed", 0) + status.get("ok_suspicious", 0)
    survived = status.get("bad_survived", 0) + status.get("bad_timeout", 0)
    total = sum(status.values())
    score = killed / max(killed + survived, 1)
    by_line: Counter = Counter()
    text: dict[int, str] = {}
    for n, line, st in rows:
        if st == "bad_survived":
            by_line[n] += 1
            text[n] = line.strip()
    meta = run_meta("bench-unet lab mutation", sys.argv[1:] if argv is None else argv)
    meta["command"] = f"{prog} " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    data = {
        **meta,
        "module": args.module,
        "tests": args.tests,
        "mutmut": version,
        "mutmut_command": " ".join(shlex.quote(c) for c in command),
        "status": status,
        "score": score,
        "survivors": [
            {"line": n, "mutants": k, "source": text[n]} for n, k in sorted(by_line.items())
        ],
    }
    lines = [
        *header_lines("mutation testing", meta),
        f"Every mutant mutmut {version} makes of `{args.module}` (operators, constants, strings, "
        f"conditions), each run against {', '.join(f'`{t}`' for t in args.tests)} alone. Killed = a "
        f"test failed. The mutants ran from {started} to {ended} UTC.",
        "",
        "| mutants | killed | survived | other | score (killed / (killed + survived)) |",
        "|---|---|---|---|---|",
        f"| {total} | {killed} | {survived} | {total - killed - survived} | {score:.1%} |",
        "",
        "Survivors by source line (line: mutants):" if by_line else "No mutant survived.",
        "",
    ]
    lines += [f"- {n}: {k} x `{text[n][:110]}`" for n, k in sorted(by_line.items())]
    save_results(args.out, data, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
