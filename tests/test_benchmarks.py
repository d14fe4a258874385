"""The benchmark script runs and reports what it measured (a smoke test, not a timing).

Speed targets are judged by running ``benchmarks/bench_layer.py`` itself, never here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_layer  # noqa: E402


def test_cpu_run_writes_rows_tables_and_lm_step(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_layer.main(["--sizes", "small", "--repeats", "1", "--lm", "demo", "--lm-repeats", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["size"] == "small" and row["device"] == "cpu"
    assert row["numpy_reference_ms"] > 0 and row["numpy_fast_ms"] > 0 and row["numpy_gemm_only_ms"] > 0
    assert row["ratio_reference_vs_gemm_only"] == pytest.approx(row["numpy_reference_ms"] / row["numpy_gemm_only_ms"])
    assert row["cache_mb"] == pytest.approx(row["cache_min_mb"])  # the cache is the minimum the backward needs
    assert row["numpy_traced_peak_mb"] >= row["cache_mb"]  # the window holds at least its cache
    if row.get("numpy_reference_peak_mb") is not None:
        assert row["numpy_reference_peak_mb"] > 0
    if "torch_eager_ms" in row:
        assert row["ratio_reference_vs_torch"] == pytest.approx(row["numpy_reference_ms"] / row["torch_eager_ms"])
    (lm,) = result["lm"]
    assert lm["preset"] == "demo" and lm["backend"] == "numpy" and lm["tokens_per_s"] > 0
    assert lm["tokens_per_s"] == pytest.approx(lm["batch"] * lm["bptt"] / (lm["step_ms"] / 1e3))
    assert result["meta"]["cpu_threads"] >= 1
    printed = capsys.readouterr().out
    assert "| small | " in printed and "Full language-model training step" in printed


def test_report_shows_gpu_columns_missing_values_and_errors():
    gpu = {"size": "ptb_paper", "device": "gpu", "cupy_graph_ms": 10.7, "cupy_fast_raw_ms": 20.7,
           "torch_eager_ms": 200.0, "ratio_cupy_graph_vs_torch_eager": 0.0541,
           "torch_graph_error": "RuntimeError: capture failed"}
    text = bench_layer.report({"date": "today"}, [gpu], [{"preset": "ptb_sota", "backend": "cupy", "error": "X: y"}])
    assert "Forward + BPTT of one window, GPU" in text and "CPU (median)" not in text
    header, _, line = text.split("GPU (median):\n\n")[1].splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip() for c in line.split("|")[1:-1]]))
    assert cells["CuPy captured"] == "10.7 ms" and cells["captured / eager"] == "0.054"
    assert cells["PyTorch CUDA graph"] == "–"  # not measured: shown as missing, never as 0
    assert "ptb_paper: torch_graph_error = RuntimeError: capture failed" in text
    assert "ptb_sota: error = X: y" in text


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench_layer.main(["--sizes", "huge"])
    with pytest.raises(SystemExit):
        bench_layer.main(["--device", "tpu"])
    with pytest.raises(SystemExit):
        bench_layer.main(["--lm", "imagenet"])
