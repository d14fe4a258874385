"""Reused host buffers for the fast path's window-sized arrays (NumPy only).

A window's cache is (3 or 4)·L·T·B·n numbers; allocating it afresh every window means
fresh pages from the operating system, and their page faults land inside the time loop:
at the ``small`` size 11 ms of a 48 ms forward. :func:`empty` hands out an array that
nobody references any more (the previous window's cache, once the caller dropped it)
instead of a new one. Whether anybody still references a buffer is read from CPython's
reference count, compared with the count measured for a free buffer at import
(:data:`FREE_COUNT`): a view of the buffer (``cache["t"][0]``) or the buffer held in a
dict or a variable counts, so a buffer still in use is never handed out twice. Where
reference counts do not say that (not CPython, or CPython without the GIL),
:func:`empty` is ``numpy.empty``.

At most :data:`MAX_PER_SHAPE` buffers are kept per shape and dtype, for the
:data:`MAX_SHAPES` shapes used last; :func:`release` drops them all.
"""

from __future__ import annotations

import collections
import platform
import sys
import threading

import numpy as np

__all__ = ["empty", "release", "held_bytes", "ENABLED", "FREE_COUNT", "MAX_PER_SHAPE", "MAX_SHAPES"]

MAX_PER_SHAPE = 4
MAX_SHAPES = 16
_POOL: collections.OrderedDict = collections.OrderedDict()  # (shape, dtype) -> [arrays]
_LOCK = threading.Lock()


def _count(slot):
    """The reference count of ``slot[0]`` as :func:`empty` sees a pooled buffer."""
    for arr in slot:
        return sys.getrefcount(arr)


def _calibrate():
    slot = [np.empty(1)]  # held by a pool list only, looked at exactly as empty() looks
    return _count(slot[0:1])


ENABLED = platform.python_implementation() == "CPython" and getattr(sys, "_is_gil_enabled", lambda: True)()
FREE_COUNT = _calibrate() if ENABLED else 0


def empty(shape, dtype):
    """An uninitialised C-contiguous array like ``numpy.empty(shape, dtype)``, reused
    when a buffer of that shape and dtype is no longer referenced anywhere."""
    if not ENABLED:
        return np.empty(shape, dtype)
    key = (tuple(int(d) for d in shape), np.dtype(dtype).str)
    with _LOCK:
        slot = _POOL.get(key)
        if slot is None:
            slot = _POOL[key] = []
            while len(_POOL) > MAX_SHAPES:
                _POOL.popitem(last=False)
        else:
            _POOL.move_to_end(key)
        for i in range(len(slot)):
            if _count(slot[i : i + 1]) == FREE_COUNT:  # only the pool holds it
                return slot[i]
        arr = np.empty(key[0], key[1])
        if len(slot) < MAX_PER_SHAPE:
            slot.append(arr)
        return arr


def release() -> None:
    """Drop every pooled buffer (arrays still in use stay valid: they are only forgotten)."""
    with _LOCK:
        _POOL.clear()


def held_bytes() -> int:
    """Bytes of the buffers the pool holds (in use or free)."""
    with _LOCK:
        return sum(a.nbytes for slot in _POOL.values() for a in slot)
