"""The benchmark script runs and reports what it measured (a smoke test, not a timing).

Speed targets are judged by running ``benchmarks/bench_layer.py`` itself, never here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_layer  # noqa: E402


def test_cpu_run_writes_rows_tables_and_lm_step(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_layer.main(["--sizes", "small", "--repeats", "1", "--lm", "demo", "--lm-repeats", "1", "--peers", "eager",
                      "--json", str(out)])
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


TINY = (6, 8, 2, 3, 5)  # n_in, n, L, B, T


def test_cpu_row_times_compiled_path_and_jax_peer_at_a_tiny_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(bench_layer.SIZES, "tiny", TINY)
    monkeypatch.setenv("XLA_FLAGS", "")  # main() may set it for JAX's threads
    out = tmp_path / "bench.json"
    bench_layer.main(["--sizes", "tiny", "--repeats", "1", "--lm", "none", "--peers", "eager,jax", "--json", str(out)])
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["numpy_fast_ms"] > 0 and row["numpy_gemm_only_ms"] > 0
    if "numpy_compiled_skipped" not in row:  # numba installed: the compiled loops, against the floor
        assert row["ratio_compiled_vs_gemm_only"] == pytest.approx(row["numpy_compiled_ms"] / row["numpy_gemm_only_ms"])
        assert result["meta"]["compiled"]["numba"]
    assert "torch_compile_ms" not in row and "torch_compile_skipped" not in row  # not asked for
    if "jax_jit_skipped" in row:
        assert "pip install jax" in row["jax_jit_skipped"]
    else:
        assert "jax_jit_error" not in row, row.get("jax_jit_error")
        assert row["jax_jit_ms"] > 0 and row["jax_first_call_s"] > 0
        assert row["jax_jit_err_ys"] < 1e-4 and row["jax_jit_err_grads"] < 1e-4
        assert "jax_jit_numerics_warning" not in row
    threads = result["meta"]["threads"]
    assert threads["blas"] == result["meta"]["cpu_threads"] >= 1
    printed = capsys.readouterr().out
    assert "| tiny | " in printed and "compiled / JAX" in printed


def test_compiled_peers_compute_the_reference_window(monkeypatch):
    """The torch.compile step (traced by Dynamo and AOTAutograd; no Inductor build here, the
    benchmark checks that one itself) and the JAX scan give rhn_np's ys and gradients."""
    import peers
    from rhn_np import rhn

    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[bench]')")
    monkeypatch.setitem(bench_layer.SIZES, "tiny", TINY)
    params, xs, s0, dys = bench_layer.make_inputs("tiny")
    ys, cache = rhn.forward(params, xs, s0, impl="reference")
    grads, _, _ = rhn.backward(params, cache, dys)
    reference = (ys, *rhn.fuse_params(grads))
    torch._dynamo.reset()
    W, R, b = bench_layer.torch_layer(torch, params, "cpu")
    X, S0, D = (torch.tensor(a) for a in (xs, s0, dys))
    _, run = peers.torch_compile_step(torch, W, R, b, X, S0, D, backend="aot_eager")
    assert max(peers.max_errors(run(), reference)) < 1e-5
    jax, why = peers.import_jax()
    if jax is None:
        pytest.skip(f"JAX peer not checked: {why}")
    _, run = peers.jax_step(jax, *rhn.fuse_params(params), xs, s0, dys)
    assert max(peers.max_errors(run(), reference)) < 1e-5
    wrong = (ys + 0.1 * np.abs(ys).max(), *reference[1:])  # a peer computing something else is caught
    assert peers.max_errors(wrong, reference)[0] > peers.RTOL


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


def test_report_shows_cpu_peers_skips_and_warnings():
    cpu = {"size": "jsb", "device": "cpu", "numpy_compiled_ms": 40.0, "torch_compile_ms": 200.0,
           "ratio_compiled_vs_torch_compile": 0.2, "torch_compile_first_call_s": 55.0,
           "jax_jit_skipped": "jax not installed (pip install jax)",
           "torch_compile_numerics_warning": "torch_compile disagrees with rhn_np's reference"}
    text = bench_layer.report({"date": "today"}, [cpu], [])
    header, _, line = text.split("CPU (median):\n\n")[1].splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip() for c in line.split("|")[1:-1]]))
    assert cells["NumPy compiled"] == "40 ms" and cells["compiled / torch.compile"] == "0.20"
    assert cells["JAX jit"] == "–" and "| jsb | " in text.split("first calls")[1]
    assert "Skipped:\njsb: jax_jit_skipped = jax not installed (pip install jax)" in text
    assert "Warnings:\njsb: torch_compile_numerics_warning = torch_compile disagrees" in text


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench_layer.main(["--sizes", "huge"])
    with pytest.raises(SystemExit):
        bench_layer.main(["--device", "tpu"])
    with pytest.raises(SystemExit):
        bench_layer.main(["--lm", "imagenet"])
    with pytest.raises(SystemExit):
        bench_layer.main(["--peers", "mxnet"])
