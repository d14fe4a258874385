"""CuPy on a GPU: parity with NumPy, fused kernels against the reference, checkpoints.

Every test here is skipped, and reported as skipped, on machines without CuPy and a
CUDA GPU. They are real tests: run them on a GPU before claiming GPU support
(``python -m pytest tests/test_gpu.py -v`` there).
"""

import numpy as np
import pytest

from conftest import run_window, window_case
from rhn_np import backend, checkpoint, fast, graphs, rhn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not backend.cupy_available(), reason=f"no CuPy GPU: {backend.cupy_unavailable_reason()}"),
]

TOL = {"float64": 1e-10, "float32": 1e-4}
CONFIGS = [  # T, B, n_in, n, depth, coupled, masks, ds_last
    (5, 3, 4, 6, 3, True, False, False),
    (4, 2, 3, 5, 2, False, True, True),
    (7, 4, 8, 16, 4, True, True, True),
    (1, 1, 1, 1, 1, True, False, True),
    (3, 20, 33, 70, 5, False, False, False),
]


def rel(a, b):
    a, b = backend.to_host(a), backend.to_host(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _to_gpu(tree):
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: backend.to_device(v, "cupy") for k, v in tree.items()}
    return backend.to_device(tree, "cupy")


@pytest.fixture(params=["raw", "elementwise"])
def cuda_variant(request):
    previous = fast.set_cuda_kernels(request.param)
    yield request.param
    fast.set_cuda_kernels(previous)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_cupy_matches_numpy(cfg, impl, dtype, cuda_variant):
    case = window_case(cfg, dtype)
    want = run_window(*case, impl="reference")
    got = run_window(*(_to_gpu(a) for a in case), impl=impl)
    for k in want:
        assert backend.name_of(got[k]) == "cupy", k
        assert got[k].dtype == want[k].dtype, k
        assert rel(got[k], want[k]) < TOL[dtype], (k, rel(got[k], want[k]))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_fused_matches_reference_on_gpu(cfg, cuda_variant):
    case = [_to_gpu(a) for a in window_case(cfg, "float64", seed=3)]
    ref = run_window(*case, impl="reference")
    fast = run_window(*case, impl="fast")
    for k in ref:
        assert rel(fast[k], ref[k]) < 1e-12, k
    ys, cache_f = rhn.forward(case[0], case[1], case[2], case[3], impl="fast")
    ys, cache_r = rhn.forward(case[0], case[1], case[2], case[3], impl="reference")
    for key in ("s_in", "h", "t"):
        assert rel(cache_f[key], cache_r[key]) < 1e-12
    assert rhn.cache_nbytes(cache_f) == rhn.cache_nbytes(cache_r)


@pytest.mark.parametrize("shape", [(1, 1, 1), (20, 830, 1660), (3, 7, 5), (700, 64, 128)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_raw_cublas_gemm_layouts(shape, dtype):
    import cupy as cp

    M, K, N = shape
    prev = fast.set_cuda_kernels("raw")
    try:
        k = fast.gate_kernels(cp.empty(1), True)
        rng = np.random.default_rng(0)
        A = cp.asarray(rng.standard_normal((M, K)).astype(dtype))
        B = cp.asarray(rng.standard_normal((K, N)).astype(dtype))
        want = backend.to_host(A) @ backend.to_host(B)
        for a in (A, cp.asfortranarray(A)):
            for b in (B, cp.asfortranarray(B)):
                out = cp.full((M, N), cp.nan, dtype=dtype)  # poisoned: every element must be written
                k.matmul(a, b, out=out)
                assert rel(out, want) < TOL[dtype]
    finally:
        fast.set_cuda_kernels(prev)


def test_mixing_cupy_and_numpy_is_a_clear_error():
    p, xs, s0, *_ = window_case(CONFIGS[0], "float32")
    with pytest.raises(TypeError, match="different backends"):
        rhn.forward(_to_gpu(p), xs, backend.to_device(s0, "cupy"))


def test_same_seed_same_weights_on_gpu():
    a = rhn.init_params(5, 7, 3, seed=11, backend="numpy")
    b = rhn.init_params(5, 7, 3, seed=11, backend="cupy")
    for k in a:
        np.testing.assert_array_equal(backend.to_host(b[k]), a[k])


def test_checkpoint_round_trip_gpu_cpu_gpu(tmp_path):
    gp = rhn.init_params(6, 8, 2, seed=5, backend="cupy")
    path = checkpoint.save(tmp_path / "gpu.npz", gp, {"trained_on": "gpu"})
    cpu, meta = checkpoint.load(path, backend="numpy")
    assert all(isinstance(v, np.ndarray) for v in cpu.values())
    path2 = checkpoint.save(tmp_path / "cpu.npz", cpu, meta)
    back, _ = checkpoint.load(path2, backend="cupy")
    for k in gp:
        assert backend.name_of(back[k]) == "cupy"
        np.testing.assert_array_equal(backend.to_host(back[k]), backend.to_host(gp[k]))


def _train_curve(backend_name, dtype, steps=50, seed=0):
    """50 SGD steps of a small tied word model with all four dropout masks, the
    authors' L2 term and clipping; state carried across windows of a token stream."""
    from rhn_np import lm, optim

    be = backend.get(backend_name)
    V, n, depth, B, T = 40, 24, 3, 4, 8
    params = lm.init_lm_params(V, n, n, depth, tied=True, init_scale=0.1, seed=seed, dtype=dtype, backend=be)
    # A learnable stream: each row counts up modulo 7 from its own offset, with 10% noise.
    noise = np.random.default_rng(seed)
    stream = (np.arange(steps * T + 1)[None, :] + np.arange(B)[:, None]) % 7
    stream = np.where(noise.random(stream.shape) < 0.1, noise.integers(0, V, stream.shape), stream)
    rng = np.random.default_rng(seed + 1)  # masks drawn on the host: identical on both backends
    opt = optim.SGD(lr=0.2)
    s = be.zeros((B, n), dtype=dtype)
    losses = []
    for i in range(steps):
        ids = be.to_device(stream[:, i * T : (i + 1) * T].T.copy())
        targets = be.to_device(stream[:, i * T + 1 : (i + 1) * T + 1].T.copy())
        masks = lm.draw_masks(rng, ids, vocab=V, n_emb=n, n=n, keep_x=0.9, keep_i=0.8, keep_h=0.9, keep_o=0.8,
                              dtype=dtype, backend=be)
        loss, grads, s, _ = lm.lm_loss_and_grads(params, ids, targets, s, masks)
        grads = optim.add_l2_gradient(grads, params, 1e-4)
        grads, _ = optim.clip_global_norm(grads, 5.0)
        opt.step(params, grads)
        losses.append(float(backend.to_host(loss)))
    return np.array(losses), {k: backend.to_host(v) for k, v in params.items()}


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 2e-3)])
def test_fifty_training_steps_same_loss_curve(dtype, tol):
    cpu_losses, cpu_params = _train_curve("numpy", dtype)
    gpu_losses, gpu_params = _train_curve("cupy", dtype)
    assert cpu_losses[-1] < cpu_losses[0]  # it does learn
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=tol)
    for k in cpu_params:
        assert rel(gpu_params[k], cpu_params[k]) < tol, k


def test_theory_on_gpu_arrays():
    from rhn_np import theory

    p, xs, s0, masks, *_ = window_case(CONFIGS[1], "float64", seed=2)
    J_cpu = theory.step_jacobian(p, xs[0], s0, masks)
    J_gpu = theory.step_jacobian(_to_gpu(p), _to_gpu(xs[0]), _to_gpu(s0), _to_gpu(masks))
    assert backend.name_of(J_gpu) == "cupy"
    assert rel(J_gpu, J_cpu) < 1e-10
    centres, radii = theory.gersgorin_discs(J_gpu)
    c_cpu, r_cpu = theory.gersgorin_discs(J_cpu)
    assert rel(centres, c_cpu) < 1e-10 and rel(radii, r_cpu) < 1e-10
    assert np.all(theory.eigenvalues_in_union(J_gpu))


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[2], CONFIGS[4]])
def test_captured_window_replays_the_fast_path(cfg, dtype, tol):

    T, B = cfg[0], cfg[1]
    use_masks, use_last = cfg[6], cfg[7]
    p = _to_gpu(window_case(cfg, dtype, seed=0)[0])
    window = graphs.CapturedWindow(p, T, B, masks=use_masks, ds_last=use_last)
    for call in range(3):  # new inputs each call, and an in-place parameter update between calls
        _, xs, s0, masks, dys, last = (_to_gpu(a) for a in window_case(cfg, dtype, seed=10 + call))
        ys, grads, dxs, ds0 = window(xs, s0, dys, masks, last)
        want = run_window(p, xs, s0, masks, dys, last, impl="fast")
        got = {"ys": ys, "dxs": dxs, "ds0": ds0, **{f"d{k}": v for k, v in grads.items()}}
        for k in want:
            assert rel(got[k], want[k]) < tol, (call, k, rel(got[k], want[k]))
        for k in p:
            p[k] -= 0.01 * grads[k]


def test_captured_window_refuses_replaced_params_and_wrong_shapes():

    cfg = CONFIGS[0]
    p, xs, s0, _, dys, _ = (_to_gpu(a) for a in window_case(cfg, "float32"))
    window = graphs.CapturedWindow(p, cfg[0], cfg[1])
    window(xs, s0, dys)
    with pytest.raises(ValueError, match="captured"):
        window(xs[:2], s0, dys)
    p["R_H"] = p["R_H"] * 1.0
    with pytest.raises(ValueError, match="replaced"):
        window(xs, s0, dys)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[2], CONFIGS[4]])
def test_captured_layer_replays_forward_and_backward_separately(cfg, dtype, tol):
    """Two graphs with work between them that reads ys (as a softmax head does), new
    inputs each call, a partial mask dict, and in-place parameter updates."""

    T, B = cfg[0], cfg[1]
    use_masks, use_last = cfg[6], cfg[7]
    p = _to_gpu(window_case(cfg, dtype, seed=0)[0])
    layer = graphs.CapturedLayer(p, T, B, masks=use_masks, ds_last=use_last)
    for call in range(3):
        _, xs, s0, masks, dys, last = (_to_gpu(a) for a in window_case(cfg, dtype, seed=20 + call))
        if masks is not None and call == 1:
            masks = {"s": masks["s"]}  # a missing mask keeps every unit
        ys, cache = layer.forward(p, xs, s0, masks)
        want_ys, want_cache = rhn.forward(p, xs, s0, masks, impl="fast")
        assert rel(ys, want_ys) < tol, call
        head = dys * ys  # made from ys between the two replays
        grads, dxs, ds0 = layer.backward(p, cache, head, last)
        want_grads, want_dxs, want_ds0 = rhn.backward(p, want_cache, head, last)
        assert rel(dxs, want_dxs) < tol and rel(ds0, want_ds0) < tol, call
        for k in want_grads:
            assert rel(grads[k], want_grads[k]) < tol, (call, k)
        for k in p:
            p[k] -= 0.01 * grads[k]
    _, xs, s0, masks, dys, last = (_to_gpu(a) for a in window_case(cfg, dtype, seed=9))
    _, old = layer.forward(p, xs, s0, masks)
    layer.forward(p, xs, s0, masks)
    with pytest.raises(ValueError, match="latest forward"):  # its buffers were overwritten
        layer.backward(p, old, dys, last)
    with pytest.raises(ValueError, match=r"\['R_H'\] are not the arrays captured"):
        layer.forward({**p, "R_H": p["R_H"].copy()}, xs, s0, masks)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 2e-3)])
def test_trainer_with_cuda_graphs_matches_kernel_by_kernel(tmp_path, dtype, tol):
    """50 training windows (every dropout mask, L2, clipping, Adam) with the layer
    replayed from CUDA graphs give the loss curve and parameters of the eager fast path."""
    from rhn_np import train as T

    from rhn_np import data

    s = np.tile(np.arange(9, dtype=np.int32), 334)[:3000]  # a text that can be learnt in 50 steps
    ds = data.Dataset(name="tiny", kind="tokens", train=s[:2400], valid=s[2400:2700], test=s[2700:],
                      vocab=list("abcdefgh\n"), level="char")
    base = dict(dataset="tiny", depth=3, hidden=32, emb=16, batch_size=8, bptt=12, optimizer="adam", lr=0.01,
                lr_schedule="epoch", max_steps=50, drop_x=0.1, drop_i=0.3, drop_h=0.2, drop_o=0.3,
                weight_decay=1e-4, clip=1.0, dtype=dtype, seed=3, backend="cupy")
    runs = {}
    for use_graphs in (True, False):
        cfg = T.Config(**base, cuda_graphs=use_graphs).check()
        tr = T.Trainer(cfg, tmp_path / str(use_graphs), ds=ds, progress=False, out=lambda *a: None)
        losses = [float(tr.train_step()) for _ in range(50)]
        assert (tr._captured is not None) is use_graphs  # the graphs ran where asked, and only there
        runs[use_graphs] = np.array(losses), {k: backend.to_host(v) for k, v in tr.params.items()}
    assert runs[True][0][-10:].mean() < 0.5 * runs[True][0][:10].mean()  # it does learn (NumPy: 26.4 -> 6.2)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=tol)
    for k in runs[False][1]:
        assert rel(runs[True][1][k], runs[False][1][k]) < tol, k


# ----------------------------------------------------------------------------
# The trainer and the command line on the GPU
# ----------------------------------------------------------------------------
def _tiny_text():
    from rhn_np import data

    rng = np.random.default_rng(0)
    s = rng.integers(0, 9, 3000).astype(np.int32)
    return data.Dataset(name="tiny", kind="tokens", train=s[:2400], valid=s[2400:2700], test=s[2700:],
                        vocab=list("abcdefgh\n"), level="char")


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 2e-3)])
def test_trainer_on_cupy_matches_numpy_and_resumes_on_the_cpu(tmp_path, dtype, tol):
    """20 windows with every mask, L2 and clipping on CuPy equal NumPy's; the GPU run's
    checkpoint resumes on the CPU (host arrays), and its samples decode the same."""
    from rhn_np import train as T

    ds = _tiny_text()
    cfg = T.Config(dataset="tiny", depth=2, hidden=16, emb=8, batch_size=4, bptt=9, optimizer="adam", lr=0.01,
                   max_steps=20, eval_every=10, drop_x=0.2, drop_i=0.3, drop_h=0.2, drop_o=0.3,
                   weight_decay=1e-4, clip=1.0, dtype=dtype, seed=2).check()
    quiet = dict(ds=ds, progress=False, out=lambda *a: None)
    cpu = T.Trainer(cfg, tmp_path / "cpu", **quiet)
    cpu.run()
    gpu = T.Trainer(T.Config(**{**cfg.to_dict(), "backend": "cupy", "max_steps": 10}), tmp_path / "gpu", **quiet)
    assert gpu.be.name == "cupy"
    gpu.run()
    resumed = T.Trainer.resume(tmp_path / "gpu", overrides={"backend": "numpy", "max_steps": 20}, **quiet)
    assert resumed.be.name == "numpy"
    resumed.run()
    for k in cpu.params:
        assert rel(resumed.params[k], cpu.params[k]) < tol, k
    vc = [r["nll"] for r in T.read_metrics(tmp_path / "cpu") if r["split"] == "valid"]
    vg = [r["nll"] for r in T.read_metrics(tmp_path / "gpu") if r["split"] == "valid"]  # step 10 on GPU, 20 on CPU
    assert len(vc) == len(vg) == 2
    for a, b in zip(vc, vg):
        assert abs(a - b) / a < tol
    params_gpu, _, meta = T.load_run(tmp_path / "gpu", backend="cupy")  # the best of the two, back on the GPU
    assert backend.name_of(params_gpu["R_H"]) == "cupy"
    ev = T.evaluate(params_gpu, ds.valid, batch_size=cfg.eval_batch_size, bptt=cfg.bptt, level="char")
    assert abs(ev["nll"] - min(vg)) / min(vg) < tol


def test_cli_train_evaluate_sample_with_cupy(tmp_path, monkeypatch, capsys):
    from rhn_np import cli

    monkeypatch.setenv("RHN_NP_DATA_HOME", str(tmp_path / "cache"))
    work = str(tmp_path / "run")
    assert cli.main(["train", "--backend", "cupy", "--max-steps", "40", "--eval-every", "20", "--quiet",
                     "--sample-length", "50", "--work-dir", work]) == 0
    out = capsys.readouterr().out
    assert "backend cupy" in out and "bits per character" in out
    assert cli.main(["evaluate", "--work-dir", work, "--backend", "cupy", "--quiet"]) == 0
    gpu_line = capsys.readouterr().out
    assert cli.main(["evaluate", "--work-dir", work, "--backend", "numpy", "--quiet"]) == 0
    cpu_line = capsys.readouterr().out
    assert "bits per character" in gpu_line and "bits per character" in cpu_line
    from rhn_np import train as T

    gpu_rec, cpu_rec = T.read_metrics(work)[-2:]  # the two evaluations, at full precision
    assert gpu_rec["split"] == cpu_rec["split"] == "valid"
    assert abs(gpu_rec["nll"] - cpu_rec["nll"]) <= 1e-4 * abs(cpu_rec["nll"]), (gpu_line, cpu_line)
    assert cli.main(["sample", "--work-dir", work, "--backend", "cupy", "--length", "60", "--prime", "The "]) == 0
    assert capsys.readouterr().out.startswith("The ")


def test_user_made_cupy_arrays_work_in_a_fresh_process():
    """Arrays a user makes with CuPy directly, before rhn_np has looked for CuPy itself:
    moving data next to them, the embedding gradient's scatter-add, Adam moments handed
    over on the GPU, and a token stream on the GPU."""
    import subprocess
    import sys

    code = """
import cupy as cp, numpy as np
from rhn_np import backend, optim, train
x = cp.zeros((3, 2), dtype=cp.float32)
y = backend.to_device(np.ones((3, 2)), backend.of(x), dtype=x.dtype)
assert backend.name_of(y) == "cupy" and y.dtype == cp.float32 and y.device == x.device
backend.scatter_add_rows(x, cp.asarray([0, 0, 2]), cp.ones((3, 2), dtype=cp.float32))
np.testing.assert_array_equal(backend.to_host(x), [[2, 2], [0, 0], [1, 1]])
ref = optim.Adam(lr=0.1)
ref.step({"w": np.ones(4)}, {"w": np.ones(4)})
state = ref.state_dict()
state["m"], state["v"] = ({"w": cp.asarray(d["w"])} for d in (state["m"], state["v"]))
adam, p = optim.Adam(lr=0.1), {"w": cp.ones(4)}
adam.load_state_dict(state)
adam.step(p, {"w": cp.ones(4)})
assert backend.name_of(adam.m["w"]) == "cupy"
rows = train.TokenBatches(cp.arange(103, dtype=cp.int32), 4, 5).rows
np.testing.assert_array_equal(rows, train.TokenBatches(np.arange(103, dtype=np.int32), 4, 5).rows)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_to_device_uses_the_backends_gpu_not_the_current_one():
    cp = backend.cupy_module()
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cp.cuda.Device(1):
        x = cp.zeros(3)
    with cp.cuda.Device(0):  # the current device is GPU 0; x lives on GPU 1
        y = backend.to_device(np.ones(3), backend.of(x))
    assert y.device.id == 1

