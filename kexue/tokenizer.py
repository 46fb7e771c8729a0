"""A character tokenizer for Chinese, with its vocabulary built from the corpus.

Chinese BERT tokenises Chinese one character per token; this tokenizer does
the same for *every* character, so a text of ``n`` characters always encodes
to ``n`` ids. That keeps NER spans aligned: character ``i`` of the text is
token ``i + 1`` after ``[CLS]``.

Normalisation is the corpus's (``kexue.data.normalize_char``): NFKC plus
lowercase, character by character, keeping a character whose normal form
would be longer than one character. Input is lowercased, so the vocabulary
holds lowercase Latin letters only. Any whitespace character encodes as the
space token (written ``[SPACE]`` in ``vocab.txt``); characters outside the
vocabulary encode as ``[UNK]``.

The vocabulary: ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``, then the
space, ASCII digits, lowercase Latin letters, ASCII punctuation and common CJK
punctuation (always present), then every other corpus character seen at least
``min_count`` times, most frequent first.

See: the model card of the pretrained Chinese encoder.
"""

from __future__ import annotations

import operator
import string
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

from kexue.data import load_pretraining_corpus, normalize_char

__all__ = [
    "SPECIAL_TOKENS",
    "SPACE_TOKEN",
    "BASE_CHARACTERS",
    "VOCAB_FILE",
    "CharTokenizer",
]

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPACE_TOKEN = "[SPACE]"  # how the space character is written in vocab.txt
VOCAB_FILE = "vocab.txt"

_CJK_PUNCTUATION = "。、，．：；！？「」『』【】〔〕《》〈〉“”‘’—…·～（）"


def _base_characters() -> tuple[str, ...]:
    chars = [" "]
    chars += list(string.digits + string.ascii_lowercase + string.punctuation)
    chars += [normalize_char(c) for c in _CJK_PUNCTUATION]
    return tuple(dict.fromkeys(chars))


BASE_CHARACTERS: tuple[str, ...] = _base_characters()
"""Characters every vocabulary holds, whatever the corpus."""


class CharTokenizer:
    """Character-level tokenizer: ``encode``/``decode``, batched ``__call__``, ``save``/``load``.

    ``tokens`` lists the vocabulary in id order and must start with
    :data:`SPECIAL_TOKENS`. Build one from texts with :meth:`build`.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"tokens must start with {SPECIAL_TOKENS}, got {tokens[:5]!r}")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, n in Counter(tokens).items() if n > 1][:5]
            raise ValueError(f"tokens must be unique, duplicated: {dup!r}")
        for t in tokens[len(SPECIAL_TOKENS) :]:
            if not isinstance(t, str) or len(t) != 1:
                raise ValueError(f"every non-special token must be one character, got {t!r}")
        self.id_to_token: list[str] = tokens
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(5)
        self._space_id = self.token_to_id.get(" ", self.unk_id)
        self._cache: dict[str, int] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 3) -> "CharTokenizer":
        """Vocabulary from ``texts``: base characters plus characters seen ``>= min_count`` times.

        Counting uses the same per-character normalisation as :meth:`encode`;
        ties in frequency are broken by code point, so the result is
        deterministic.
        """
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be a positive int, got {min_count!r}")
        counts: Counter[str] = Counter()
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must hold str, got {type(text).__name__}")
            counts.update(text)
        normalised: Counter[str] = Counter()
        for ch, n in counts.items():
            normalised[" " if ch.isspace() else normalize_char(ch)] += n
        base = set(BASE_CHARACTERS)
        extra = sorted(
            (ch for ch, n in normalised.items() if n >= min_count and ch not in base),
            key=lambda ch: (-normalised[ch], ord(ch)),
        )
        return cls(list(SPECIAL_TOKENS) + list(BASE_CHARACTERS) + extra)

    @classmethod
    def from_corpus(cls, min_count: int = 3) -> "CharTokenizer":
        """Build from :func:`kexue.data.load_pretraining_corpus`."""
        return cls.build(load_pretraining_corpus(), min_count=min_count)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def __len__(self) -> int:
        return len(self.id_to_token)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.id_to_token == other.id_to_token

    # ------------------------------------------------------------------ encoding
    def _char_id(self, ch: str) -> int:
        idx = self._cache.get(ch)
        if idx is None:
            if ch.isspace():
                idx = self._space_id
            else:
                idx = self.token_to_id.get(normalize_char(ch), self.unk_id)
            self._cache[ch] = idx
        return idx

    def encode(self, text: str) -> list[int]:
        """One id per character of ``text`` (no special tokens added)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        cache = self._cache
        return [cache[ch] if ch in cache else self._char_id(ch) for ch in text]

    def __call__(
        self, texts: Sequence[str], max_len: int, pad_to_max: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-encode ``texts`` as ``[CLS] chars [SEP]``, truncated and padded.

        Returns ``(input_ids, mask)``: int64 and bool tensors of shape
        ``(len(texts), L)``. Each text keeps at most ``max_len - 2`` characters;
        ``L`` is the longest encoded row, or ``max_len`` with ``pad_to_max``.
        ``mask`` is True on real tokens (including [CLS] and [SEP]); padding is
        ``[PAD]`` (id 0). An empty ``texts`` gives tensors with no rows
        (``(0, 2)``, or ``(0, max_len)`` with ``pad_to_max``).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(
                f"texts must be a sequence of str (wrap a single text in a list), got {type(texts).__name__}"
            )
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2:
            raise ValueError(f"max_len must be an int >= 2 (room for [CLS] and [SEP]), got {max_len!r}")
        if not isinstance(pad_to_max, bool):
            raise TypeError(f"pad_to_max must be a bool, got {type(pad_to_max).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        rows = [[self.cls_id, *self.encode(t)[: max_len - 2], self.sep_id] for t in texts]
        width = max_len if pad_to_max else max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        if rows:
            ids[torch.arange(width) < lengths[:, None]] = torch.tensor(
                [i for r in rows for i in r], dtype=torch.long
            )
        mask = torch.arange(width) < lengths[:, None]
        return ids, mask

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of ``ids`` (integers, e.g. a 1D integer tensor); special tokens are
        dropped unless ``skip_special=False``. Floating or bool ids raise ``TypeError``
        (``int(2.7)`` would silently decode another token)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be one-dimensional, got shape {tuple(ids.shape)}")
            if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
                raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)):
            raise TypeError(f"ids must be integers, got {type(ids).__name__} {ids!r}")
        out = []
        n_special = len(SPECIAL_TOKENS)
        for i in ids:
            if isinstance(i, bool):
                raise TypeError(f"ids must be integers, got the bool {i!r}")
            try:
                i = operator.index(i)
            except TypeError:
                raise TypeError(f"ids must be integers, got {type(i).__name__} {i!r}") from None
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {i}")
            if i < n_special and skip_special:
                continue
            out.append(self.id_to_token[i])
        return "".join(out)

    # ------------------------------------------------------------------ files
    @staticmethod
    def _vocab_path(path: str | Path) -> Path:
        path = Path(path)
        return path if path.suffix == ".txt" else path / VOCAB_FILE

    def save(self, path: str | Path) -> Path:
        """Write ``vocab.txt`` (one token per line, id order) into directory
        ``path``, or to ``path`` itself if it ends in ``.txt``. Returns the file."""
        file = self._vocab_path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        lines = [SPACE_TOKEN if t == " " else t for t in self.id_to_token]
        file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return file

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        """Read a tokenizer written by :meth:`save` (a directory or a ``.txt`` file)."""
        file = cls._vocab_path(path)
        if not file.is_file():
            raise FileNotFoundError(f"no vocabulary at {file}")
        lines = file.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls([" " if t == SPACE_TOKEN else t for t in lines])
