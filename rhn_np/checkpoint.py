"""Checkpoints: one ``.npz`` file, written atomically, read without pickle.

A checkpoint holds named arrays (parameters, optimiser state, ...) as host NumPy
arrays, so a model trained on a GPU loads on a CPU-only machine and back, and a JSON
metadata record stored inside the same file (as the UTF-8 bytes of the array
``__meta__``) with the format name and version and a SHA-256 checksum of every
array's name, dtype, shape and bytes.

* :func:`save` writes to a temporary file in the target folder, flushes it to disk,
  then renames it over the target (:func:`atomic_open`, which the data cache uses
  too): a crash leaves either the old or the new file, and perhaps a temporary
  ``.tmp-<random>.part``, which :func:`remove_stale_temporaries` deletes later.
* :func:`load` reads the ``.npy`` members itself, never with pickle: each must be
  stored uncompressed and hold exactly the bytes its ``.npy`` header announces
  (checked from the zip directory and the header before any array is read, so a small
  file cannot inflate to gigabytes); then format, version and checksums are verified.
  A corrupted, truncated, edited or foreign file gives a :class:`CheckpointError` that
  says which.

Format versions: 1 (the first) has ``checksum``, over the arrays only; 2 adds
``meta_checksum``, a SHA-256 of the metadata itself (step, optimiser numbers, RNG state,
configuration, vocabulary, ... and the arrays' checksum), so an edited step or a lost
Adam moment is refused. :func:`load` reads both and verifies what each has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import time
import zipfile
from collections.abc import Mapping

try:  # advisory locks tell a live writer's temporary file from an abandoned one
    import fcntl as _fcntl
except ImportError:  # (Windows) the age of a temporary file alone tells
    _fcntl = None

import numpy as np

from . import backend as _backend

FORMAT = "rhn_np-checkpoint"
VERSION = 2
#: The format versions :func:`load` reads (1: no checksum of the metadata).
READABLE_VERSIONS = (1, 2)
_META = "__meta__"


class CheckpointError(ValueError):
    """The file is not a readable rhn_np checkpoint (corrupted, truncated or foreign)."""


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of every array's name, dtype, shape and bytes (the metadata's ``checksum``)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        if a.size and a.dtype.itemsize:
            h.update(a.reshape(-1).view(np.uint8))  # the bytes of a.tobytes(), without a copy
    return h.hexdigest()


def _meta_checksum(meta: Mapping) -> str:
    """SHA-256 of the metadata as sorted-key JSON, all of it but ``meta_checksum`` itself
    (version 2's ``meta_checksum``; it covers the arrays' ``checksum`` too)."""
    body = {k: v for k, v in meta.items() if k != "meta_checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _create_temporary(folder):
    """A new file ``folder/.tmp-<random>.part``, opened for writing: ``(fd, path)``.

    Created with mode 0o666 so that the kernel applies the user's umask, as for any
    file the user writes (``tempfile.mkstemp`` would make it private, 0o600).
    """
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}.part")  # the pattern of _TEMPORARY
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {folder}")


def _lock(fd) -> bool:
    """Take an exclusive advisory lock on the open file ``fd``; False where the file
    system (or the platform) has none."""
    if _fcntl is None:
        return False
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def atomic_open(path):
    """Write a file atomically: ``with atomic_open(path) as fh: fh.write(...)``.

    The bytes go to a temporary file in the target's folder (created if needed), which
    is flushed to disk and renamed over ``path`` when the block ends without an error;
    on any error, Ctrl+C included, it is deleted and ``path`` is left as it was. A kill
    leaves the temporary behind; it holds an advisory lock on it until the rename, by
    which :func:`remove_stale_temporaries` tells it from an abandoned one.
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temporary(folder)
    try:
        locked = _lock(fd)  # before the first byte: an unlocked temporary with bytes in it is abandoned
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            if locked:  # renamed while still locked, so never taken for an abandoned one
                os.replace(tmp, path)
        if not locked:  # (Windows cannot rename an open file)
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: The name of a temporary file of :func:`atomic_open` (:func:`_create_temporary`).
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{16}\.part\Z")
#: An unlocked temporary file that is still empty may be a write that has not taken its
#: lock yet; it counts as abandoned this many seconds after it was made.
EMPTY_TEMPORARY_GRACE_S = 60.0
#: Where files cannot be locked, a temporary file counts as abandoned this many seconds
#: after its last write (a live write writes continuously).
UNLOCKED_TEMPORARY_AGE_S = 3600.0


def _abandoned(fd, st) -> bool:
    """Whether the temporary file open as ``fd`` (``os.fstat`` ``st``) was left by a
    write that will not finish: no live writer holds its lock (where files can be
    locked), else it has not been written for :data:`UNLOCKED_TEMPORARY_AGE_S`."""
    age = time.time() - st.st_mtime
    if _fcntl is not None:
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        except OSError:
            pass  # no locks on this file system: the age tells
        else:
            return st.st_size > 0 or age > EMPTY_TEMPORARY_GRACE_S
    return age > UNLOCKED_TEMPORARY_AGE_S


def remove_stale_temporaries(folder) -> list[str]:
    """Delete the temporary files that killed writes of :func:`atomic_open` left in
    ``folder``; returns their paths.

    Only this module's own temporaries (``.tmp-<16 hex digits>.part``) and only abandoned
    ones: a write in progress (by this or another process) holds an advisory lock on its
    temporary file until it renames it, and such a file is kept; where the file system
    has no locks, a temporary counts as abandoned an hour after its last write
    (:data:`UNLOCKED_TEMPORARY_AGE_S`). Files that vanish or cannot be opened meanwhile
    are skipped.
    """
    folder = os.fspath(folder)
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        if not _TEMPORARY.match(name):
            continue
        path = os.path.join(folder, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            continue  # gone (its write ended) or not ours to read
        try:
            st = os.fstat(fd)
            stale = _abandoned(fd, st) and os.path.samestat(st, os.stat(path))
        except OSError:
            stale = False
        finally:
            os.close(fd)
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def save(path, arrays: dict, metadata: dict | None = None) -> str:
    """Write ``arrays`` (any backend; copied to the host) and JSON-able ``metadata``.

    Returns the path written. ``arrays`` is a dict whose names are strings not starting
    with ``__``. ``metadata`` is a dict; its keys ``format``, ``version``, ``checksum``
    and ``meta_checksum`` are the file's own and are replaced (so the metadata of a
    loaded checkpoint can be saved again as it is).
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
    meta.pop("meta_checksum", None)
    try:
        meta = json.loads(json.dumps(meta))  # as load will read it back (tuples are lists, keys strings)
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
    meta["meta_checksum"] = _meta_checksum(meta)
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
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


def _method(compress_type) -> str:
    return {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}.get(
        compress_type, f"zip method {compress_type}")


def _members(path, zf) -> dict:
    """The array members of the open checkpoint ``zf`` by name (``.npy`` stripped), after
    the checks that need only the zip directory: every member an uncompressed,
    unencrypted ``.npy`` file, no name twice, and together no more bytes than the file has."""
    members, claimed = {}, 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise CheckpointError(f"{path} holds the member {name!r}, which is not an array (.npy); an rhn_np "
                                  "checkpoint holds arrays only")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: the array {name[:-4]!r} is stored compressed ({_method(info.compress_type)}); rhn_np writes "
                "checkpoints uncompressed and refuses compressed members unread (they could inflate to any size)")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: the array {name[:-4]!r} is encrypted; rhn_np checkpoints never are")
        if info.compress_size != info.file_size:
            raise CheckpointError(f"{path}: the array {name[:-4]!r} is stored uncompressed but its zip directory "
                                  f"gives it two sizes ({info.compress_size:,} and {info.file_size:,} bytes): "
                                  "corrupted or forged")
        if name[:-4] in members:
            raise CheckpointError(f"{path} holds the array {name[:-4]!r} twice: corrupted or forged")
        members[name[:-4]] = info
        claimed += info.file_size
    size = os.path.getsize(path)
    if claimed > size:
        raise CheckpointError(f"{path}: its members claim {claimed:,} bytes, more than the file's {size:,}: "
                              "corrupted or forged (refused unread)")
    return members


_READ_CHUNK = 1 << 24


def _read_member(path, zf, info) -> np.ndarray:
    """One ``.npy`` member, read only if its header's shape and dtype account for exactly
    the member's size (so no more memory than the file's own size is ever taken)."""
    name = info.filename[:-4]
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise CheckpointError(f"{path}: the array {name!r} has .npy format version {version}, which rhn_np "
                                  "does not write")
        if dtype.hasobject:
            raise CheckpointError(f"{path} holds pickled Python objects, which rhn_np never loads (unpickling can "
                                  "run arbitrary code); an rhn_np checkpoint holds numeric arrays only")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        held = info.file_size - fh.tell()
        if nbytes != held:
            raise CheckpointError(f"{path}: the array {name!r} should hold {nbytes:,} bytes by its .npy header "
                                  f"(shape {shape}, {dtype}) but its member holds {held:,}: corrupted or forged "
                                  "(refused unread)")
        flat = np.empty(count, dtype)
        if nbytes:
            view, got = memoryview(flat.view(np.uint8)), 0
            while got < nbytes:
                n = fh.readinto(view[got:got + _READ_CHUNK])  # in chunks: a zip member's readinto copies
                if not n:
                    raise EOFError(f"the array {name!r} ends after {got:,} of its {nbytes:,} bytes")
                got += n
        fh.read()  # at the end: the zip's CRC-32 is checked
    return flat.reshape(shape, order="F" if fortran else "C")


def _read(path, only=None) -> tuple[dict, dict]:
    """The arrays (those named in ``only``, else all) and the metadata of the file
    ``path``, each member checked before it is read; format and checksums unchecked."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:  # unreadable (permissions, a folder, the disk) is not damaged: said as what it is
        with open(path, "rb"):
            pass
    except OSError as exc:
        hint = ("give yourself read access (chmod u+r) or run as its owner" if isinstance(exc, PermissionError)
                else "check the path and the disk")
        raise type(exc)(f"cannot read the checkpoint {path}: {exc.strerror or exc} (the file was not examined, so "
                        f"nothing is known to be wrong with its content); {hint}") from exc
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle and suggest allow_pickle
        raise CheckpointError(f"{path} is not a readable rhn_np checkpoint: not an .npz (zip) file "
                              "(corrupted or truncated, or another format)")
    try:
        with zipfile.ZipFile(path) as zf:
            members = _members(path, zf)
            if _META not in members:
                raise CheckpointError(f"{path} is an .npz file but not an rhn_np checkpoint (no metadata record)")
            host = {name: _read_member(path, zf, info) for name, info in members.items()
                    if only is None or name in only or name == _META}
        raw = host.pop(_META)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise CheckpointError(f"{path}: its metadata record is not a byte string ({raw.dtype} {raw.shape})")
        meta = json.loads(raw.tobytes().decode())
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # JSON and Unicode errors are ValueErrors
        raise CheckpointError(f"{path} is not a readable rhn_np checkpoint (corrupted or truncated?): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rhn_np checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, this rhn_np reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    if version >= 2 and meta.get("meta_checksum") != _meta_checksum(meta):
        raise CheckpointError(
            f"{path} was altered: its metadata (step, optimiser state, random-generator state, configuration, "
            "vocabulary, ...) does not match the checksum stored with it; it was edited or damaged, and would not "
            "continue the run it claims to be")
    return host, meta


def read_metadata(path) -> dict:
    """The metadata of the checkpoint ``path``, without reading its arrays.

    Format and version are verified and, for version 2, the metadata's own checksum (not
    the arrays', which needs them: :func:`load`).
    """
    return _read(os.fspath(path), only=())[1]


def load(path, backend="numpy"):
    """Read a checkpoint written by :func:`save` (format version 1 or 2).

    Returns ``(arrays, metadata)`` with the arrays moved to ``backend``. Every member is
    checked against the zip directory and its ``.npy`` header before it is read (see the
    module's docstring); then the checksums: of the metadata (version 2) and of the arrays.
    """
    path = os.fspath(path)
    host, meta = _read(path)
    if meta.get("checksum") != _checksum(host):
        raise CheckpointError(f"{path} is corrupted: its arrays do not match the checksum in its metadata")
    be = _backend.get(backend)
    if be.name == "numpy":  # the arrays were just read into memory of their own: no second copy
        return host, meta
    return {name: be.to_device(a) for name, a in host.items()}, meta
