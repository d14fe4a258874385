"""Checkpoints: one ``.npz`` file, written atomically, read without pickle.

A checkpoint holds named arrays (parameters, optimiser state, ...) as host NumPy
arrays, so a model trained on a GPU loads on a CPU-only machine and back, and a JSON
metadata record stored inside the same file (as the UTF-8 bytes of the array
``__meta__``) with the format name and version and a SHA-256 checksum of every
array's name, dtype, shape and bytes.

* :func:`save` writes to a temporary file in the target folder, flushes it to disk,
  then renames it over the target (:func:`atomic_open`, which the data cache uses
  too): a crash leaves either the old or the new file.
* :func:`load` uses ``numpy.load(allow_pickle=False)`` and verifies format and
  checksum; a corrupted, truncated or foreign file gives a :class:`CheckpointError`
  that says which.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import zipfile
from collections.abc import Mapping

import numpy as np

from . import backend as _backend

FORMAT = "rhn_np-checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(ValueError):
    """The file is not a readable rhn_np checkpoint (corrupted, truncated or foreign)."""


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _create_temporary(folder):
    """A new file ``folder/.tmp-<random>.part``, opened for writing: ``(fd, path)``.

    Created with mode 0o666 so that the kernel applies the user's umask, as for any
    file the user writes (``tempfile.mkstemp`` would make it private, 0o600).
    """
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}.part")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {folder}")


@contextlib.contextmanager
def atomic_open(path):
    """Write a file atomically: ``with atomic_open(path) as fh: fh.write(...)``.

    The bytes go to a temporary file in the target's folder (created if needed), which
    is flushed to disk and renamed over ``path`` when the block ends without an error;
    on any error, Ctrl+C included, it is deleted and ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temporary(folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path, arrays: dict, metadata: dict | None = None) -> str:
    """Write ``arrays`` (any backend; copied to the host) and JSON-able ``metadata``.

    Returns the path written. ``arrays`` is a dict whose names are strings not starting
    with ``__``. ``metadata`` is a dict; its keys ``format``, ``version`` and
    ``checksum`` are the file's own and are replaced (so the metadata of a loaded
    checkpoint can be saved again as it is).
    """
    path = os.fspath(path)
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a dict {{name: array}}, got {type(arrays).__name__}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict (or None), got {type(metadata).__name__}")
    host = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or name.startswith("__"):
            raise ValueError(f"array names must be strings not starting with '__', got {name!r}")
        h = np.asarray(_backend.to_host(a))
        if h.dtype == object:
            raise TypeError(f"array {name!r} has dtype object; checkpoints hold numeric arrays only")
        host[name] = h
    meta = dict(metadata or {})
    meta.update(format=FORMAT, version=VERSION, checksum=_checksum(host))
    try:
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
    host[_META] = np.frombuffer(meta_bytes, dtype=np.uint8)
    # The layout of numpy.savez (one NAME.npy per array in an uncompressed zip), written
    # here because savez takes the names as keyword arguments: 'file' or 'allow_pickle'
    # would be taken for its own.
    with atomic_open(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in host.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)
    return path


def copy(src, dst) -> str:
    """Copy the checkpoint file ``src`` to ``dst`` atomically (no re-serialisation)."""
    with open(src, "rb") as fin, atomic_open(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return os.fspath(dst)


def load(path, backend="numpy"):
    """Read a checkpoint written by :func:`save`.

    Returns ``(arrays, metadata)`` with the arrays moved to ``backend``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle and suggest allow_pickle
        raise CheckpointError(f"{path} is not a readable rhn_np checkpoint: not an .npz (zip) file "
                              "(corrupted or truncated, or another format)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if _META not in names:
                raise CheckpointError(f"{path} is an .npz file but not an rhn_np checkpoint (no metadata record)")
            meta = json.loads(bytes(npz[_META]).decode())
            host = {name: npz[name] for name in names if name != _META}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # JSON and Unicode errors are ValueErrors
        if isinstance(exc, ValueError) and "pickle" in str(exc):
            raise CheckpointError(f"{path} holds pickled Python objects, which rhn_np never loads (unpickling can run "
                                  "arbitrary code); an rhn_np checkpoint holds numeric arrays only") from None
        raise CheckpointError(f"{path} is not a readable rhn_np checkpoint (corrupted or truncated?): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rhn_np checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')}, this rhn_np reads {VERSION}")
    if meta.get("checksum") != _checksum(host):
        raise CheckpointError(f"{path} is corrupted: its arrays do not match the checksum in its metadata")
    be = _backend.get(backend)
    return {name: be.to_device(a) for name, a in host.items()}, meta
