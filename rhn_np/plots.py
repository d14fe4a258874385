"""Figures for the theory of :mod:`rhn_np.theory`: Geršgorin discs, spectra, norms vs lag.

Every helper draws into a Matplotlib ``Axes`` (a new figure when ``ax`` is None)
and returns it; nothing here calls ``plt.show()``, so it runs under the Agg
backend (tests, CI) as well as in a notebook. Sizes are chosen for a lecture
slide: call :func:`use_slide_style` once (or wrap code in :func:`slide_style`).

Inputs may be arrays of any backend; they are copied to the host with
:func:`rhn_np.backend.to_host`.
"""

from __future__ import annotations

import os

import numpy as np

from . import backend as _backend
from . import theory

__all__ = [
    "SLIDE_RC",
    "use_slide_style",
    "slide_style",
    "plot_discs",
    "set_common_limits",
    "plot_spectrum_sweep",
    "plot_eigenvalue_paths",
    "plot_norm_vs_lag",
    "plot_singular_values_vs_lag",
    "save_figure",
    "show",
]

# Also the style of the trainer's learning_curve.png (rhn_np.runs.plot_learning_curve).
SLIDE_RC = {
    "font.size": 15,
    "axes.titlesize": 17,
    "axes.labelsize": 16,
    "xtick.labelsize": 13,
    "ytick.labelsize": 13,
    "legend.fontsize": 12,
    "figure.titlesize": 19,
    "lines.linewidth": 2.2,
    "lines.markersize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
    "savefig.dpi": 130,
    "savefig.bbox": "tight",
    "figure.constrained_layout.use": True,
}


def use_slide_style():
    """Set large fonts, thick lines and a light grid for the rest of the session."""
    import matplotlib

    matplotlib.rcParams.update(SLIDE_RC)


def slide_style():
    """Context manager form of :func:`use_slide_style`."""
    import matplotlib

    return matplotlib.rc_context(SLIDE_RC)


def _axes(ax, figsize=(6.5, 6)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _host(a):
    return np.asarray(_backend.to_host(a))


def _unit_circle(ax):
    """Draw |λ| = 1 once per axes (the border between vanishing and exploding)."""
    if any(getattr(line, "_rhn_unit", False) for line in ax.lines):
        return
    th = np.linspace(0.0, 2 * np.pi, 400)
    (line,) = ax.plot(np.cos(th), np.sin(th), ls="--", color="0.1", lw=1.8, zorder=5, label="unit circle |λ| = 1")
    line._rhn_unit = True


def plot_discs(
    M,
    ax=None,
    *,
    axis="rows",
    color="C0",
    label=None,
    eigenvalues=True,
    unit_circle=True,
    title=None,
    radii=None,
    fill_alpha=None,
    eigenvalue_marker="x",
    eigenvalue_label=None,
):
    """Geršgorin discs of one square matrix, its eigenvalues and the unit circle.

    Parameters
    ----------
    M : (n, n) array (any backend)
    axis : "rows" or "columns" (which discs)
    color, label : colour of the discs and their legend text
        (default label: "row discs" / "column discs")
    eigenvalues : draw the eigenvalues as black crosses
    unit_circle : draw ``|λ| = 1`` (the border between vanishing and exploding)
    radii : optional (n,) radii to draw instead of the matrix's own (e.g. the
        printed Eq. 14 radii); the centres are always ``a_ii``
    fill_alpha : opacity of each disc's fill; by default it falls with n so that
        many overlapping discs stay see-through
    eigenvalue_marker : marker of the eigenvalues (black; ``"x"`` by default)
    eigenvalue_label : legend text of the eigenvalues; by default "eigenvalues", once
        per axes. Give one (e.g. "(1) eigenvalues") to keep two matrices' eigenvalues
        apart in the legend, next to their own discs.
    """
    import matplotlib.patches as mpatches

    Mh = theory.host_matrix(M)  # float64, or complex128 for a complex M
    if Mh.ndim != 2 or Mh.shape[0] < 1:
        raise ValueError(f"plot_discs draws one matrix (n, n), n >= 1; got shape {Mh.shape} (index a batch row first)")
    ax = _axes(ax)
    centres, r = theory.gersgorin_discs(Mh, axis=axis)
    if radii is not None:
        r = np.asarray(_host(radii), dtype=np.float64)
        if r.shape != centres.shape:
            raise ValueError(f"radii must be one per disc, shape {centres.shape}, got {r.shape} (for a batch of "
                             "radii, e.g. theory.eq14_printed_radii(...), pass one row: radii[b])")
        if not np.all(r >= 0):
            raise ValueError(f"radii must be >= 0 (and not NaN), got {r}")
    label = label or (f"{axis[:-1]} discs" if radii is None else "discs (given radii)")
    n = len(centres)
    fill_alpha = min(0.15, 2.0 / n) if fill_alpha is None else fill_alpha
    edge_alpha = min(0.85, 0.15 + 4.0 / n)
    for i, (c, rad) in enumerate(zip(centres, r)):
        xy = (float(np.real(c)), float(np.imag(c)))
        ax.add_patch(mpatches.Circle(xy, rad, facecolor=color, alpha=fill_alpha, edgecolor="none", zorder=2))
        ax.add_patch(
            mpatches.Circle(
                xy, rad, facecolor="none", edgecolor=color, lw=1.2, alpha=edge_alpha, zorder=3,
                label=label if i == 0 else None,
            )
        )
    ax.plot(np.real(centres), np.imag(centres), "o", color=color, ms=4, zorder=4)
    if eigenvalues:
        lam = theory.spectrum(Mh)
        if eigenvalue_label is None:
            has = any(ln.get_label() == "eigenvalues" for ln in ax.lines)
            eigenvalue_label = None if has else "eigenvalues"
        ms, mew = (8, 2) if n <= 16 else (6, 1.4)
        ax.plot(lam.real, lam.imag, eigenvalue_marker, color="k", ms=ms, mew=mew, zorder=6, label=eigenvalue_label)
    if unit_circle:
        _unit_circle(ax)
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    if title:
        ax.set_title(title)
    return ax


def set_common_limits(axes, margin=0.05):
    """Give every axes in ``axes`` the same (union) x and y limits, equal aspect."""
    axes = list(np.ravel(axes))
    if not axes:
        raise ValueError("set_common_limits needs at least one Axes")
    xs = [a.get_xlim() for a in axes]
    ys = [a.get_ylim() for a in axes]
    lo_x, hi_x = min(x[0] for x in xs), max(x[1] for x in xs)
    lo_y, hi_y = min(y[0] for y in ys), max(y[1] for y in ys)
    half = max(hi_x - lo_x, hi_y - lo_y) * (0.5 + margin)
    cx, cy = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
    for a in axes:
        a.set_aspect("equal", adjustable="box")
        a.set_xlim(cx - half, cx + half)
        a.set_ylim(cy - half, cy + half)
    return axes


def plot_spectrum_sweep(
    values,
    spectra,
    ax=None,
    *,
    xlabel="parameter",
    color="C0",
    label=None,
    title=None,
    logy=False,
    show_points=True,
):
    """``|λ|`` of every eigenvalue against a swept parameter, with the spectral radius.

    values : (K,) swept parameter (transform bias, init std, width, ...)
    spectra : K arrays of eigenvalues (any shape each; from :func:`rhn_np.theory.spectrum`)
    """
    ax = _axes(ax, figsize=(8, 5.5))
    values, spectra = _sweep(values, spectra)
    rho = []
    for v, lam in zip(values, spectra):
        mod = np.abs(np.ravel(_host(lam)))
        rho.append(mod.max())
        if show_points:
            jitter = np.zeros_like(mod) + v
            ax.plot(jitter, mod, ".", color=color, alpha=0.4, ms=6, zorder=2)
    ax.plot(values, rho, "-o", color=color, label=(label + ": " if label else "") + "spectral radius max|λ|", zorder=3)
    if show_points:
        ax.plot([], [], ".", color=color, alpha=0.6, label=(label + ": " if label else "") + "all |λ|")
    if not any(ln.get_label() == "|λ| = 1" for ln in ax.lines):
        ax.axhline(1.0, ls="--", color="0.25", lw=1.6, label="|λ| = 1")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("eigenvalue modulus |λ|")
    if title:
        ax.set_title(title)
    return ax


def _sweep(values, spectra):
    """Swept values as host floats (any backend) and the spectra as a list, one per value."""
    values = np.asarray(_host(values) if hasattr(values, "shape") else [float(_host(v)) for v in values], dtype=float)
    spectra = list(spectra)
    if values.ndim != 1 or len(values) != len(spectra) or len(spectra) == 0:
        raise ValueError(f"values and spectra must pair up, one spectrum per swept value: got {values.shape} values "
                         f"and {len(spectra)} spectra")
    return values, spectra


def plot_eigenvalue_paths(values, spectra, ax=None, *, cmap="viridis", colorbar_label="parameter", title=None, unit_circle=True):
    """Eigenvalues in the complex plane, coloured by the swept parameter (with a colour bar)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    ax = _axes(ax)
    values, spectra = _sweep(values, spectra)
    norm = Normalize(values.min(), values.max())
    cm = plt.get_cmap(cmap)
    for v, lam in zip(values, spectra):
        lam = np.ravel(_host(lam))
        ax.scatter(lam.real, lam.imag, s=26, color=cm(norm(v)), alpha=0.85, zorder=3, edgecolors="none")
    if unit_circle:
        _unit_circle(ax)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cm)  # each sweep gets the colour bar of its own range
    cb = ax.figure.colorbar(sm, ax=ax, shrink=0.85)
    cb.set_label(colorbar_label)
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    if title:
        ax.set_title(title)
    return ax


def plot_norm_vs_lag(curves, ax=None, *, title=None, ylabel=r"$\|\partial s_T / \partial s_{T-k}\|_2$", logy=True, colors=None):
    """Jacobian norm against the time lag k, one curve per model.

    curves : dict label -> norms, (K,) or (K, B) (from :func:`rhn_np.theory.lag_norms`);
        with a batch axis the median is drawn and the min-max range shaded.
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must be a non-empty dict label -> norms (theory.lag_norms output)")
    colors = list(colors) if colors else None  # None or empty: the default colour cycle
    if colors is not None and len(colors) < len(curves):
        raise ValueError(f"colors has {len(colors)} entries for {len(curves)} curves: give one colour per curve")
    ax = _axes(ax, figsize=(9, 5.5))
    for i, (label, norms) in enumerate(curves.items()):
        color = colors[i] if colors else f"C{i}"
        a = _host(norms)
        if a.ndim not in (1, 2) or 0 in a.shape:
            raise ValueError(f"curves[{label!r}] must be norms of shape (K,) or (K, B) with K, B >= 1 "
                             f"(theory.lag_norms output), got shape {a.shape}")
        a = a[:, None] if a.ndim == 1 else a
        k = np.arange(1, a.shape[0] + 1)
        ax.plot(k, np.median(a, axis=1), color=color, label=label)
        if a.shape[1] > 1:
            ax.fill_between(k, a.min(axis=1), a.max(axis=1), color=color, alpha=0.18, lw=0)
    ax.axhline(1.0, ls="--", color="0.25", lw=1.4)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("time lag k (steps)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    return ax


def plot_singular_values_vs_lag(sv, ax=None, *, color="C0", label=None, title=None, floor=1e-15):
    """All singular values of ``∂s_T/∂s_{T−k}`` against k (one sequence): thin lines,
    the largest and smallest bold. ``sv`` (K, n) from :func:`rhn_np.theory.singular_values`.

    Values below ``floor · σ_max`` (at the same k) are float64 round-off, not signal;
    they are not drawn (that level is then shown as a grey dash-dot line), so that the
    plot does not show noise as decay.
    """
    ax = _axes(ax, figsize=(8, 5.5))
    sv = _host(sv)
    if sv.ndim != 2 or 0 in sv.shape:
        hint = " (one sequence: pass sv[:, b] for sequence b of a batch)" if sv.ndim == 3 else ""
        raise ValueError(f"sv must be the singular values of one sequence, shape (K, n) with K, n >= 1, "
                         f"got shape {sv.shape}{hint}")
    level = floor * sv[:, 0]
    kept = (sv >= level[:, None]) & (sv > 0)
    k = np.arange(1, sv.shape[0] + 1)
    if not np.all(kept):  # round-off: left out, not drawn at a made-up value; the level shown instead
        sv = np.where(kept, sv, np.nan)
        ax.plot(k, np.where(level > 0, level, np.nan), color="0.55", lw=1.2, ls="-.", zorder=1,
                label=f"{floor:g}·σ_max: below is round-off")
    ax.plot(k, sv, color=color, lw=0.6, alpha=0.35)
    ax.plot(k, sv[:, 0], color=color, lw=2.4, label=(label + ": " if label else "") + "σ_max")
    ax.plot(k, sv[:, -1], color=color, lw=2.4, ls=":", label=(label + ": " if label else "") + "σ_min")
    ax.set_yscale("log")
    ax.axhline(1.0, ls="--", color="0.25", lw=1.4)
    ax.set_xlabel("time lag k (steps)")
    ax.set_ylabel("singular values")
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    return ax


def save_figure(fig, name, figdir=None):
    """Save ``fig`` as ``<figdir>/<name>.png`` when ``figdir`` (or env ``RHN_FIGDIR``) is set.

    Returns the path written, or None when no folder is configured.
    """
    if not hasattr(fig, "savefig"):
        hint = " (an Axes: pass ax.figure)" if hasattr(fig, "figure") else ""
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}{hint}")
    figdir = figdir or os.environ.get("RHN_FIGDIR")
    stem = name[:-4] if isinstance(name, str) and name.lower().endswith(".png") else name
    if not isinstance(stem, str) or not stem.strip(".") or any(c in stem for c in "/\\:"):
        raise ValueError(f"name must be a file name without folder or extension, e.g. '01_discs', got {name!r}")
    name = stem
    if not figdir:
        return None
    os.makedirs(figdir, exist_ok=True)
    path = os.path.join(figdir, f"{name}.png")
    fig.savefig(path, dpi=130, bbox_inches="tight", format="png")
    return path


_NON_INTERACTIVE = ("agg", "pdf", "ps", "svg", "pgf", "cairo", "template")  # QtAgg, nbAgg, ipympl do display


def show(fig, name, figdir=None):
    """Display ``fig`` in a notebook (close it when running as a plain script) and save it
    with :func:`save_figure` when a figure folder is configured. Returns the saved path."""
    import matplotlib
    import matplotlib.pyplot as plt

    path = save_figure(fig, name, figdir)
    if path:
        print("saved", path)
    backend = matplotlib.get_backend().lower().removeprefix("module://matplotlib.backends.backend_")
    if backend in _NON_INTERACTIVE:  # a plain script: nothing to display
        plt.close(fig)
    else:
        plt.show()
    return path
