"""MLM pretraining of the small Chinese character BERT: ``python -m kexue.pretrain``.

The entry point of the run that produced the shipped encoder (the book's
model card). The run itself lives in :mod:`kexue.experiments.pretrain` and the
masked-language-model pieces in :mod:`kexue.mlm`; this module re-exports both
under their old names and runs the command line::

    python -m kexue.pretrain --steps 3500 --bf16 --seed 0      # the shipped recipe, into runs/pretrain
    python -m kexue.pretrain --steps 3500 --bf16 --seed 0 --refresh-shipped   # ... overwriting the shipped one
    python -m kexue.pretrain --tiny --steps 20                 # a quick check, into runs/pretrain_tiny
    python -m kexue.pretrain --resume                          # continue from OUT/checkpoint

Nothing is written into the package unless ``--refresh-shipped`` is given.
"""

from __future__ import annotations

from kexue.experiments.pretrain import (
    DEFAULT_OUT,
    SHIPPED_OUT,
    MLMData,
    PretrainConfig,
    heldout_split,
    lr_at,
    main,
    pretrain,
)
from kexue.mlm import evaluate_mlm, mask_tokens, mlm_logits_at, mlm_loss
from kexue.pretrained import save_pretrained

__all__ = [
    "DEFAULT_OUT",
    "SHIPPED_OUT",
    "PretrainConfig",
    "MLMData",
    "mask_tokens",
    "mlm_logits_at",
    "mlm_loss",
    "lr_at",
    "heldout_split",
    "evaluate_mlm",
    "pretrain",
    "save_pretrained",
    "main",
]

if __name__ == "__main__":
    main()
