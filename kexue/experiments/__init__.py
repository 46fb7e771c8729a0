"""The experiments layer: each chapter's task models, configs, run function and plots.

One module per chapter, each with the same surface:

* ``CONFIGS``: a :class:`~kexue.experiments.config.Profiles` table of one
  frozen config dataclass (``smoke``, ``book``, ``full``);
* ``run(cfg, seed=0)``: the chapter's experiment, returning a
  :class:`~kexue.experiments.records.RunResult`; the notebook calls it, and so
  does ``python -m kexue.experiments <chapter> --profile book --seeds 0 1 2``,
  which writes the record.

Training goes through :func:`kexue.experiments.loop.fit`. The method modules
(``kexue.rope``, ``kexue.vmf``, ...) never import from here.
"""

from __future__ import annotations

#: chapter key -> module under ``kexue.experiments``
CHAPTERS: dict[str, str] = {
    "01": "ch01_simcse",
    "02": "ch02_globalpointer",
    "03": "ch03_rope",
    "04": "ch04_vmf",
    "05": "ch05_mixers",
    "06": "ch06_growth",
    "07": "ch07_accumulation",
}

#: runnable experiment modules that are not a chapter's main run -> their chapter
EXTRA_EXPERIMENTS: dict[str, str] = {"ch01_budget": "01"}

__all__ = ["CHAPTERS", "EXTRA_EXPERIMENTS"]
