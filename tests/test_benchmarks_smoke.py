"""The benchmarks run (quick grids) and write their outputs: they must not rot.

Timings are not asserted (the machine is shared); only that each script completes, writes valid
JSON with the measured entries, and that its own correctness checks passed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script,outputs", [
    ("bench_matmul.py", ["bench_matmul.json", "bench_matmul.png"]),
    ("bench_ops.py", ["bench_ops.json", "bench_ops.png"]),
    ("bench_layers.py", ["bench_layers.json"]),
    ("bench_conv.py", ["bench_conv.json", "bench_conv.png"]),
    ("bench_sparse_input.py", ["bench_sparse_input.json", "bench_sparse_input.png"]),
    ("bench_models.py", ["bench_models.json", "bench_models.png", "bench_models.md"]),
    ("bench_wide_mlp.py", ["bench_wide_mlp.json"]),
    ("bench_dst.py", ["bench_dst.json", "bench_dst_quality.json", "bench_dst_quality.png"]),
])
def test_benchmark_quick(tmp_path, script, outputs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / outputs[0]).read_text())
    assert data, "empty JSON"
    # every measured sparsekeras result matched its reference (the scripts check each config)
    flags = [stats.get("correct") for row in data.get("results", []) if isinstance(row, dict)
             for part in ("forward", "fwd_bwd") for stats in row.get(part, {}).values()
             if isinstance(stats, dict)]
    assert False not in flags, proc.stdout[-3000:]
    if script == "bench_ops.py":  # the block-sparse rows ran (their checks abort on a mismatch)
        assert [r["block"] for r in data["block"]] == [8]
        assert data["block"][0]["forward"]["sk_block_fn"]["median_ms"] > 0
    if script == "bench_models.py":  # the MLP ran, stripped outputs matched the dense twin's
        assert data["correct"] is True
        cells = data["summary"]["mlp"]
        assert {"infer eager b1", "infer served b1", "train compacted", "file_bytes"} <= set(cells)
        assert cells["infer predict_on_batch b32"]["block1x8"]["median"] > 0


def test_bench_runtimes_quick(tmp_path):
    """bench_runtimes.py --quick: every (variant, engine) cell was checked against TensorFlow
    before it was timed and matched; the BatchNorm-folding rows ran with every BN folded."""
    for module in ("onnxruntime", "ai_edge_litert", "tf2onnx"):
        pytest.importorskip(module)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_runtimes.py"), "--quick",
                           "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("bench_runtimes.json", "bench_runtimes.png", "bench_runtimes.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "bench_runtimes.json").read_text())
    cells = {(r["variant"].split()[0], r["engine"]) for r in data["results"]}
    assert cells == {(v, e) for v in ("dense", "sparse90", "shrink50")
                     for e in ("tf", "ort", "litert")}, cells
    bad = [r for r in data["results"] if not r["correct"] or not r.get("median_ms", 0) > 0]
    assert not bad, bad
    fold = data["fold"]
    assert fold["batchnorm_layers"]["unfolded"] > 0 and fold["batchnorm_layers"]["folded"] == 0
    assert all(r["correct"] and r["median_ms"] > 0 for r in fold["rows"])
