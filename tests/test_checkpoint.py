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


def test_any_string_name_round_trips(tmp_path):
    """numpy.savez would take the names 'file' and 'allow_pickle' for its own keywords
    (one silently dropped, the other a TypeError); save writes the .npz itself."""
    arrays = {"file": np.arange(3.0), "allow_pickle": np.ones(2, np.float32), "a/b": np.int64(4), "x.npy": np.zeros(1)}
    loaded, _ = checkpoint.load(checkpoint.save(tmp_path / "ck.npz", arrays))
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == np.asarray(v).dtype and np.array_equal(loaded[k], v)


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = checkpoint.save(tmp_path / "ck.npz", {"a": np.ones(2)})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640  # not mkstemp's private 0o600


def test_any_mapping_saves(tmp_path):
    import types

    path = checkpoint.save(tmp_path / "ck.npz", types.MappingProxyType({"a": np.ones(2)}),
                           types.MappingProxyType({"n": 1}))
    loaded, meta = checkpoint.load(path)
    assert np.array_equal(loaded["a"], np.ones(2)) and meta["n"] == 1


def test_saving_what_is_not_a_dict_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match=r"arrays must be a dict \{name: array\}, got list"):
        checkpoint.save(tmp_path / "ck.npz", [np.ones(2)])
    with pytest.raises(TypeError, match="metadata must be a dict"):
        checkpoint.save(tmp_path / "ck.npz", {"a": np.ones(2)}, [("step", 1)])
    assert os.listdir(tmp_path) == []


def test_load_onto_fake_device(tmp_path):
    path = checkpoint.save(tmp_path / "ck.npz", _params())
    loaded, _ = checkpoint.load(path, backend="array_api_strict")
    assert backend.name_of(loaded["R_H"]) == "array_api_strict"
    np.testing.assert_array_equal(backend.to_host(loaded["R_H"]), _params()["R_H"])


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, {"a": np.ones(3)}, {"n": 1})
    before = path.read_bytes()

    def broken_write_array(fh, array, **kwargs):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken_write_array)
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
