"""The docs hold together: links and #fragments resolve, every result file is cited, nothing speaks of how it was built."""

from __future__ import annotations

import subprocess

from tests.doclinks import ROOT, heading_ids, problems


def test_every_link_fragment_and_result_file_holds():
    assert problems() == []


def test_the_checker_finds_dead_links_missing_fragments_and_uncited_results(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "run-a.md").write_text("# run a\n")
    (tmp_path / "benchmarks" / "results" / "run-a.json").write_text("{}\n")
    (tmp_path / "benchmarks" / "results" / "run-b.md").write_text("# run b\n")
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Host-side costs\n")
    (tmp_path / "README.md").write_text(
        "See [the guide](docs/guide.md#host-side-costs), [gone](docs/gone.md),\n"
        "[a stale fragment](docs/guide.md#host-time), [run a](benchmarks/results/run-a.md),\n"
        "[the web](https://example.org/x) and `[code](not/a/link.md)`.\n"
        "```\n[in a block](nor/this.md)\n```\n"
    )
    found = problems(tmp_path)
    assert found == [
        "README.md: (docs/gone.md): docs/gone.md does not exist",
        "README.md: (docs/guide.md#host-time): guide.md has no heading #host-time",
        "benchmarks/results/run-b.md: no page of README.md, docs/*.md cites it (or its .md)",
    ], found


def test_heading_ids_follow_githubs_rule(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Host-side costs\n## GPU: fp16, argmax (CUDA)\n## Limits\n## Limits\n")
    assert heading_ids(page) == {"host-side-costs", "gpu-fp16-argmax-cuda", "limits", "limits-1"}


#: Words that speak of how the project was made rather than what it does (recorded commands inside
#: result files are records and may name the folders they ran in; CI's script may name where it
#: finds the Triton backend it provides).
BUILD_WORDS = (
    r"ANCHORS|\.\./shared|[Ss]essions? [0-9]|[Ii]ssue #?[0-9]+|gpumodels|ortparts|[Tt]he seed\b"
    r"|[Ss]eed graph|[Ss]eed's"
)


def test_nothing_speaks_of_how_it_was_made():
    files = subprocess.run(
        ["git", "ls-files", "--", ".", ":!benchmarks/results", ":!tests/test_docs.py", ":!.ci/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    proc = subprocess.run(
        ["grep", "-n", "-E", BUILD_WORDS, *files], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.stdout == "", proc.stdout[:3000]
