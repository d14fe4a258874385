"""Checkpoints: atomic writes, no pickle, clear errors for corrupted or foreign files."""

import os

import numpy as np
import pytest

from rhn_np import backend, checkpoint, rhn


def _params():
    return rhn.init_params(3, 4, 2, seed=1, dtype="float64")


def test_round_trip_keeps_arrays_and_metadata(tmp_path):
    params = _params()
    arrays = {**params, "step": np.array(7, np.int64), "ids": np.arange(5, dtype=np.int32)}
    path = checkpoint.save(tmp_path / "ck.npz", arrays, {"config": {"depth": 2}, "step": 7})
    loaded, meta = checkpoint.load(path)
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v)
    assert meta["config"] == {"depth": 2} and meta["step"] == 7
    assert meta["format"] == checkpoint.FORMAT and meta["version"] == checkpoint.VERSION
    assert os.listdir(tmp_path) == ["ck.npz"]  # no temporary file left behind


def test_load_onto_fake_device(tmp_path):
    path = checkpoint.save(tmp_path / "ck.npz", _params())
    loaded, _ = checkpoint.load(path, backend="array_api_strict")
    assert backend.name_of(loaded["R_H"]) == "array_api_strict"
    np.testing.assert_array_equal(backend.to_host(loaded["R_H"]), _params()["R_H"])


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, {"a": np.ones(3)}, {"n": 1})
    before = path.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"a": np.zeros(3)}, {"n": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_flipped_byte_is_reported_as_corrupted(tmp_path):
    path = checkpoint.save(tmp_path / "ck.npz", {"w": np.arange(1000, dtype=np.float64)})
    raw = bytearray(path_bytes := open(path, "rb").read())
    pos = path_bytes.find(np.arange(1000, dtype=np.float64)[500:501].tobytes())
    assert pos > 0
    raw[pos] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        checkpoint.load(path)


def test_truncated_file(tmp_path):
    path = checkpoint.save(tmp_path / "ck.npz", {"w": np.ones(100)})
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable"):
        checkpoint.load(path)


def test_foreign_npz_and_pickled_objects_are_refused(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, w=np.ones(3))
    with pytest.raises(checkpoint.CheckpointError, match="not an rhn_np checkpoint"):
        checkpoint.load(foreign)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, w=np.array([{"evil": 1}], dtype=object), __meta__=np.frombuffer(b"{}", np.uint8))
    with pytest.raises(checkpoint.CheckpointError, match="pickled Python objects, which rhn_np never loads") as err:
        checkpoint.load(pickled)
    assert "allow_pickle" not in str(err.value)  # never advise loading it unsafely
    for junk in (b"not a zip", b"\x80\x04K\x01."):  # the second is a pickle, which np.load would offer to unpickle
        with pytest.raises(checkpoint.CheckpointError, match=r"not an \.npz \(zip\) file") as err:
            checkpoint.load(_write(tmp_path / "x.npz", junk))
        assert "allow_pickle" not in str(err.value)


def _write(path, data):
    path.write_bytes(data)
    return path


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="names"):
        checkpoint.save(tmp_path / "a.npz", {"__meta__": np.ones(1)})
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(tmp_path / "a.npz", {"w": np.ones(1)}, {"bad": object()})


def test_atomic_open_and_copy(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.atomic_open(target) as fh:
            fh.write(b"partial")
            raise KeyboardInterrupt
    assert list((tmp_path / "sub").iterdir()) == []  # neither the target nor a temporary file
    checkpoint.save(tmp_path / "a.npz", {"w": np.arange(4.0)}, {"step": 3})
    checkpoint.copy(tmp_path / "a.npz", tmp_path / "b.npz")
    arrays, meta = checkpoint.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(arrays["w"], np.arange(4.0))
    assert meta["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "sub"]
