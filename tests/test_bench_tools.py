"""unet_bench.profile (ORT profiler summary) and unet_bench.ab (interleaved A/B): small real runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from unet_bench.profile import profile_model, summarize, to_markdown


def test_summarize_averages_node_events_over_runs():
    trace = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {
            "cat": "Node",
            "name": "conv_a_kernel_time",
            "ts": 1,
            "dur": 60,
            "args": {"op_name": "Conv"},
        },
        {
            "cat": "Node",
            "name": "conv_a_fence_before",
            "ts": 1,
            "dur": 0,
            "args": {"op_name": "Conv"},
        },
        {
            "cat": "Node",
            "name": "q_kernel_time",
            "ts": 62,
            "dur": 30,
            "args": {"op_name": "QuantizeLinear"},
        },
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 120},
        {
            "cat": "Node",
            "name": "conv_a_kernel_time",
            "ts": 201,
            "dur": 80,
            "args": {"op_name": "Conv"},
        },
        {
            "cat": "Node",
            "name": "q_kernel_time",
            "ts": 282,
            "dur": 30,
            "args": {"op_name": "QuantizeLinear"},
        },
    ]
    p = summarize(trace, runs=2)
    assert p.run_us == 110 and p.by_op == {"Conv": 70, "QuantizeLinear": 30} and p.node_us == 100
    assert p.op_nodes == {"Conv": 1, "QuantizeLinear": 1}
    assert p.by_node[0] == ("conv_a", "Conv", 70)
    md = to_markdown(p, "t")
    assert "| Conv | 1 | 0.07 | 70.0% |" in md and "executor overhead 0.0 ms" in md


def test_profile_of_a_real_model(narrow_export):
    p = profile_model(str(narrow_export().path), runs=2, warmup=1)
    assert p.runs == 2 and 0 < p.node_us <= p.run_us * 1.05
    assert p.op_nodes["Conv"] + p.op_nodes.get("FusedConv", 0) >= 20 and sum(
        p.op_nodes.values()
    ) == len(p.by_node)


def test_profile_out_records_machine_command_and_every_figure(narrow_export, tmp_path, capsys):
    from unet_bench.profile import main

    path = str(narrow_export().path)
    assert main([path, "--runs", "1", "--warmup", "0", "--out", str(tmp_path / "p.md")]) == 0
    md = (tmp_path / "p.md").read_text()
    data = json.loads((tmp_path / "p.json").read_text())
    assert md.startswith("# bench-unet lab profile: ") and "Command: `bench-unet lab profile " in md
    assert "| op type | nodes | ms/run | share |" in md and "Commit: " in md
    prof = data["profiles"][Path(path).name]
    assert prof["runs"] == 1 and prof["by_op"] and data["machine"]["versions"]


def test_ab_interleaves_and_writes_both_files(narrow_export, tmp_path):
    a, b = narrow_export().path, narrow_export(fold_upsample="phase").path
    # no warm-up asked: the mask still comes from one untimed run
    proc = run_cli(
        "unet_bench.cli",
        "lab",
        "ab",
        "--out",
        str(tmp_path / "ab"),
        "--rounds",
        "3",
        "--warmup",
        "0",
        "--size",
        "32",
        str(a),
        str(b),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "ab.json").read_text())
    assert data["first"] == str(a) and [len(r["raw_s"]) for r in data["rows"]] == [3, 3]
    assert data["rows"][0]["speedup_vs_first_median"] == 1.0
    # the fold is the same function
    assert data["rows"][1]["mask_agreement_vs_first"] == pytest.approx(1.0, abs=0.01)
    assert "| speed-up vs first |" in (tmp_path / "ab.md").read_text()


def test_ab_and_profile_refuse_missing_models(tmp_path):
    for tool in ("ab", "profile"):
        args = ("--out", str(tmp_path / "x")) if tool == "ab" else ()
        proc = run_cli("unet_bench.cli", tool, *args, str(tmp_path / "nope.onnx"))
        assert proc.returncode == 1 and "does not exist" in proc.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    "tool, flags, message",
    [
        ("profile", ["--runs", "0"], "--runs 0 is not allowed: it must be >= 1"),
        ("profile", ["--warmup", "-1"], "--warmup -1 is not allowed: it must be >= 0"),
        ("profile", ["--top", "0"], "--top 0 is not allowed"),
        ("profile", ["--threads", "0"], "--threads 0 is not allowed"),
        ("ab", ["--rounds", "0"], "--rounds 0 is not allowed: it must be >= 1"),
        ("ab", ["--warmup", "-2"], "--warmup -2 is not allowed: it must be >= 0"),
        (
            "ab",
            ["--size", "40"],
            "--size 40 is not allowed: sizes must be multiples of 16 (e.g. 32)",
        ),
        ("ab", ["--image", "no.png"], "--image 'no.png' does not exist"),
        (
            "ab",
            ["--out", "m.onnx/x"],
            "--out folder 'm.onnx' cannot be created: 'm.onnx' is a file",
        ),
        ("profile", ["--out", "."], "--out '.' is a folder; name a file inside it"),
    ],
)
def test_ab_and_profile_refuse_bad_flags_before_any_work(
    tool, flags, message, tmp_path, capsys, monkeypatch
):
    import importlib

    module = importlib.import_module(f"unet_bench.{tool}")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the flags are checked first")
    monkeypatch.chdir(tmp_path)
    args = ["--out", str(tmp_path / "x")] if tool == "ab" else []
    assert module.main([*args, *flags, str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bench-unet lab {tool}: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_ab_keras_candidate_on_an_image_file(tmp_path):
    from PIL import Image

    from unet_bench import ab
    from unet_bench.peers import keras_model
    from unet_runtime.images import resize_image

    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    image = ab._load_image(str(tmp_path / "in.png"), 32)
    # Resized as the runtime resizes (not Pillow's own filter), so A/B inputs match bench-unet's.
    assert image.dtype == np.uint8 and np.array_equal(image, resize_image(rgb, 32, 32))
    keras_model(32, seed=3).save_weights(str(tmp_path / "w.weights.h5"))
    result = ab.run(
        [],
        rounds=2,
        warmup=1,
        size=32,
        threads=None,
        keras_weights=str(tmp_path / "w.weights.h5"),
        image=image,
    )
    (row,) = result["rows"]
    assert (
        result["first"] == row["name"] == "keras.predict"
        and len(row["raw_s"]) == 2
        and row["median_ms"] > 0
    )


def test_ab_times_openvino_on_the_same_files(narrow_export, tmp_path):
    """OpenVINO reads the fp32 graph (f32, and bf16 where the CPU has it) and the QDQ graph (INT8)."""
    from unet_bench import ab
    from unet_bench.report import cpu_flags

    fp32 = str(narrow_export(head="argmax").path)
    int8 = str(narrow_export(head="argmax", precision="int8", calibration_count=8).path)
    res = ab.run(
        [fp32, int8], rounds=2, warmup=1, size=32, threads=None, keras_weights=None, openvino=True
    )
    rows = {r["name"]: r for r in res["rows"]}
    names = [n.split(" ")[1] for n in rows if n.startswith("openvino")]
    assert names == ["f32"] + (
        ["bf16"] if {"avx512_bf16", "amx_bf16"} & set(cpu_flags()) else []
    ) + ["int8"]
    for name, row in rows.items():
        assert len(row["raw_s"]) == 2
        if name.startswith("openvino f32"):  # the same fp32 function: the same masks
            # measured on every pixel; one near-tie in a thousand may round the other way
            assert row["mask_agreement_vs_first"] >= 0.999


def test_results_index_lists_every_run_and_record(tmp_path):
    from unet_bench.index import build_index, main

    meta = {
        "command": "bench-unet micro --out x|y",
        "date": "2026-12-02T09:00:00+00:00",
        "machine": {
            "cpu": "Some CPU",
            "cpu_count": 2,
            "cpu_flags": ["avx2"],
            "git_commit": "abcdef123",
        },
    }
    (tmp_path / "run.json").write_text(json.dumps(meta))
    (tmp_path / "run.md").write_text("# bench-unet micro: Some CPU\n")
    old = {**meta, "date": "2026-11-25", "machine": {"cpu": "Old CPU", "cpu_count": 2}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "probe.txt").write_text("\x1b[0;93m2026 warning\nhead logits: rel L2 3e-6\n")
    (tmp_path / "notes.json").write_text("[1, 2]")  # not a result: left out
    text = build_index(tmp_path)
    rows = [line for line in text.splitlines() if ".json)" in line]
    assert [r.split()[1] for r in rows] == ["run", "old"]  # newest first
    assert "Some CPU (2 cores; avx2)" in rows[0] and "abcdef1" in rows[0] and "x\\|y" in rows[0]
    assert "CPU flags not recorded" in rows[1] and "[md](run.md)" in rows[0]
    assert (
        "| [probe.txt](probe.txt) | - | head logits: rel L2 3e-6 |" in text and "notes" not in text
    )
    assert main(["--dir", str(tmp_path), "--check"]) == 1
    assert main(["--dir", str(tmp_path)]) == 0
    assert main(["--dir", str(tmp_path), "--check"]) == 0


def test_committed_results_index_is_up_to_date():
    from unet_bench.index import INDEX, build_index

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    assert (folder / INDEX).read_text() == build_index(folder), "run: bench-unet lab index"


def test_help_lists_what_users_run_and_lab_the_rest(tmp_path):
    """bench-unet --help: the matrix, serve, frames, tiles, export, gpu-suite; the project's own tools under lab."""
    from unet_bench.cli import LAB, SUBCOMMANDS

    proc = run_cli("unet_bench.cli", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse wraps the epilog anywhere
    for name in SUBCOMMANDS:
        assert f"bench-unet {name} --help" in text, name
    for name in LAB:
        assert f"bench-unet {name} --help" not in text, name
    assert "bench-unet lab --help" in text
    lab = run_cli("unet_bench.cli", "lab", "--help")
    assert lab.returncode == 0 and all(name in lab.stdout for name in LAB)
    # The spelling of earlier releases still runs, and says where the tool went.
    old = run_cli("unet_bench.cli", "index", "--dir", str(tmp_path / "none"))
    assert "is now 'bench-unet lab index'" in old.stderr and "is not a folder" in old.stderr


def test_export_bench_median_run_keeps_every_run():
    from unet_bench.export_cost import median_run

    runs = [{"wall_s": w, "peak_tree_rss_mb": 100 * w} for w in (3.0, 1.0, 2.0, 4.0)]
    median = median_run(runs)
    # even count: the lower middle; every run kept in the order it ran
    assert median["wall_s"] == 2.0 and median["peak_tree_rss_mb"] == 200.0
    assert median["runs_wall_s"] == [3.0, 1.0, 2.0, 4.0]
    assert median["runs_peak_tree_rss_mb"] == [300.0, 100.0, 200.0, 400.0]
    failed = {"wall_s": 0.5, "peak_tree_rss_mb": 1.0, "error": "boom"}
    assert median_run([failed, *runs[:3]])["wall_s"] == 2.0  # a failed run is no median
    assert median_run([failed]) is failed


@pytest.mark.slow
def test_export_bench_repeats_rows_in_turns(tmp_path):
    """Two real exports of a two-layer network (32x32; TensorFlow in export-unet's process): the row
    is the median run."""
    import keras

    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    scores = keras.layers.Conv2D(3, 1, activation="softmax")(hidden)
    keras.Model(inputs, scores).save(tmp_path / "tiny.keras")
    proc = run_cli(
        "unet_bench.export_cost",
        "--out",
        str(tmp_path / "e"),
        "--rows",
        "fp32-tf-in-process",
        "--repeat",
        "2",
        "--",
        "--model",
        str(tmp_path / "tiny.keras"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fp32-tf-in-process (run 2/2)" in proc.stderr
    row = json.loads((tmp_path / "e.json").read_text())["rows"]["fp32-tf-in-process"]
    assert len(row["runs_wall_s"]) == 2 and row["wall_s"] == min(row["runs_wall_s"])
    assert row["gates"] and all(g["passed"] for g in row["gates"])
    table = (tmp_path / "e.md").read_text()
    assert "Each row ran 2 times" in table
    assert ", ".join(f"{w:.1f}" for w in row["runs_wall_s"]) + " |" in table
    assert (
        run_cli("unet_bench.export_cost", "--out", str(tmp_path / "f"), "--repeat", "0").returncode
        == 2
    )
