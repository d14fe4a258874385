"""The RHN layer of this checkout against another checkout of rhn_np, paired in one process.

Runs ``rhn.forward`` + ``rhn.backward`` (reference implementation, float32, coupled) of the
other checkout ("old") and of this one ("new"), and PyTorch eager as in
``bench_layer.py``, one after the other in every round (old and new taking turns to go
first), so that a busy or drifting machine slows all three alike. Prints the median times, the median of the per-round
ratios new / old, and each ratio to PyTorch.

Usage::

    git worktree add /tmp/old <commit>
    OPENBLAS_NUM_THREADS=1 python benchmarks/compare_versions.py /tmp/old --sizes small,ptb_paper
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pathlib
import statistics
import sys
import time


HERE = pathlib.Path(__file__).resolve().parent


def _load(name, checkout):
    """Import ``checkout/rhn_np`` as the package ``name`` (two versions side by side)."""
    pkg = pathlib.Path(checkout) / "rhn_np"
    spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.rhn")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", help="the other checkout (a folder holding rhn_np/)")
    ap.add_argument("--sizes", default="small,ptb_paper")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per size (default: 40 small, 10 otherwise)")
    args = ap.parse_args(argv)
    old = _load("rhn_np_old", args.old)
    new = _load("rhn_np", HERE.parent)
    sys.path.insert(0, str(HERE))
    import bench_layer as bl
    import torch

    torch.set_num_threads(bl.blas_threads())
    out = {"threads": bl.blas_threads(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    for size in args.sizes.split(","):
        params, xs, s0, dys = bl.make_inputs(size)
        n_in, n, L, B, T = bl.SIZES[size]
        p_old = old.init_params(n_in, n, L, seed=0)

        def window(m, p):
            def run():
                ys, cache = m.forward(p, xs, s0, impl="reference")
                m.backward(p, cache, dys)
            return run

        torch_step, _ = bl.torch_eager_step(torch, params, xs, s0, dys, "cpu")
        fns = {"old": window(old, p_old), "new": window(new, params), "torch": torch_step}
        for f in fns.values():
            f()  # warm up
        times = {k: [] for k in fns}
        for r in range(args.rounds or (40 if size == "small" else 10)):
            # The one that runs right after PyTorch is slowed by it (about 20 % at ptb_paper
            # on a 2-core machine): old and new take turns at that place.
            for k in (("old", "new", "torch") if r % 2 == 0 else ("new", "old", "torch")):
                f = fns[k]
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        row = {"ms": ms, "new_over_old_paired": statistics.median(a / b for a, b in zip(times["new"], times["old"])),
               "old_vs_torch": ms["old"] / ms["torch"], "new_vs_torch": ms["new"] / ms["torch"]}
        out[size] = row
        print(size, json.dumps(row), flush=True)
    return out


if __name__ == "__main__":
    main()
