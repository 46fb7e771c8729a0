"""The package's layering, read from the source: imports only point down.

Layers, lowest first: core (device, seeds, profile, checks, plot style, data,
tokenizer, metrics, spans, shared losses), method modules (one per article,
plus ``nn`` and what it is built from), the experiments layer
(``kexue.experiments``), and entry points (``kexue.pretrain``). A module may
import from its own layer or a lower one; inside a layer the imports form no
cycle; and every import of a kexue module sits at module level, so no cycle
can hide inside a function.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kexue"

CORE = {"kexue", "kexue.utils", "kexue.checks", "kexue.plot", "kexue.data", "kexue.tokenizer",
        "kexue.metrics", "kexue.spans", "kexue.losses", "kexue.testing"}
METHODS = {"kexue.rope", "kexue.attention", "kexue.mixers", "kexue.nn", "kexue.globalpointer", "kexue.vmf",
           "kexue.growth", "kexue.accumulation", "kexue.simcse", "kexue.mlm", "kexue.pretrained"}
ENTRY = {"kexue.pretrain"}
LAYER_NAMES = ("core", "method", "experiments", "entry")
#: what a method module must not import: plotting, data loading, the layers above
METHOD_FORBIDDEN = ("matplotlib", "kexue.plot", "kexue.data", "kexue.experiments", "tqdm")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(name: str) -> int:
    if name in CORE:
        return 0
    if name in METHODS:
        return 1
    if name == "kexue.experiments" or name.startswith("kexue.experiments."):
        return 2
    if name in ENTRY:
        return 3
    raise AssertionError(f"{name} is in no layer: add it to tests/test_architecture.py")


def resolve(name: str) -> str:
    """The kexue module that an imported name lives in (``kexue.nn.X`` -> ``kexue.nn``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(name: str) -> list[tuple[str, int, bool]]:
    """``(imported kexue module, line, at module level)`` for every import in ``name``'s source."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # imports under a module-level `if TYPE_CHECKING:` count as top level
        if isinstance(node, ast.If):
            top.update(id(n) for n in node.body)
    out = []
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] if base.startswith("kexue") else [base]
        for t in targets:
            if t == "kexue" or t.startswith("kexue."):
                out.append((resolve(t), node.lineno, id(node) in top))
    return [(t, line, top_level) for t, line, top_level in out if t != name]


def third_party(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_and_sit_at_module_level(name):
    for target, line, top_level in imports(name):
        assert top_level, f"{name}:{line} imports {target} inside a function or class: import it at module level"
        assert layer(target) <= layer(name), (
            f"{name}:{line} ({LAYER_NAMES[layer(name)]}) imports {target} ({LAYER_NAMES[layer(target)]}), "
            "an upward arrow"
        )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    graph = {name: {t for t, _, _ in imports(name) if t != "kexue"} for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_catches_a_cycle():
    """The check above can fail: a two-module loop and a three-module loop are both found."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_layer_check_catches_an_upward_or_lazy_import(tmp_path, monkeypatch):
    """A method module that imports the experiments layer, or imports lazily, is reported."""
    fake = tmp_path / "kexue"
    fake.mkdir()
    (fake / "rope.py").write_text("from kexue.experiments import loop\n\ndef f():\n    from kexue import nn\n")
    (fake / "nn.py").write_text("")
    (fake / "experiments").mkdir()
    (fake / "experiments" / "__init__.py").write_text("")
    (fake / "experiments" / "loop.py").write_text("")
    monkeypatch.setitem(globals(), "ROOT", fake)
    modules = {module_name(p): p for p in sorted(fake.rglob("*.py"))}
    monkeypatch.setitem(globals(), "MODULES", modules)
    found = imports("kexue.rope")
    assert ("kexue.experiments.loop", 1, True) in found
    assert ("kexue.nn", 4, False) in found
    assert layer("kexue.experiments.loop") > layer("kexue.rope")


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n in METHODS))
def test_method_modules_hold_methods_only(name):
    """No plotting, dataset loading, progress bars or experiment code in a method module."""
    found = third_party(name) | {t for t, _, _ in imports(name)}
    bad = sorted(f for f in found if any(f == x or f.startswith(x + ".") for x in METHOD_FORBIDDEN))
    assert not bad, f"{name} imports {bad}: that belongs in kexue.experiments"
    source = MODULES[name].read_text(encoding="utf-8")
    steps = re.findall(r"\b\w*(?:opt|optim|optimizer)\w*\.step\(", source)
    assert not steps, f"{name} steps an optimiser ({steps}): training loops belong in kexue.experiments"


#: names readers import today; each must keep importing from where it is
PUBLIC = {
    "kexue.rope": ["rope_frequencies", "apply_rope", "apply_rope_2d", "rope_angles_2d", "rope_matrix",
                   "rope_2d_matrix", "apply_rope_2d_reference", "layout_permutation", "grid_positions",
                   "flat_positions", "LAYOUTS"],
    "kexue.mixers": ["TokenMixer", "SelfAttention", "SynthesizerRandom", "SynthesizerDense", "MixerTokenMLP",
                     "ResMLPTokenMixing", "SpatialGatingUnit", "FNetMixing", "ExternalAttention", "AFTSimple",
                     "MIXERS", "dft_matrix"],
    "kexue.globalpointer": ["GlobalPointer", "EfficientGlobalPointer", "mask_span_logits",
                            "multilabel_categorical_crossentropy", "sparse_multilabel_categorical_crossentropy",
                            "mcce_reference", "global_pointer_loss", "decode_spans", "decode_spans_reference",
                            "global_pointer_reference", "efficient_global_pointer_reference", "span_targets",
                            "LinearChainCRF", "crf_brute_force", "gp_param_count", "egp_param_count"],
    "kexue.vmf": ["VonMisesFisher", "HypersphericalUniform", "log_bessel_iv", "bessel_ratio",
                  "mean_resultant_length", "log_sphere_area", "log_vmf_normalizer", "vmf_kl_uniform",
                  "vmf_entropy", "sample_w_wood", "sample_w_grid", "w_log_density", "implicit_dw_dkappa"],
    "kexue.growth": ["Expansion", "widen", "deepen", "widen_hf_bert", "expand_hidden", "contract_hidden",
                     "perturb", "symmetry_gap"],
    "kexue.accumulation": ["info_nce", "symmetric_info_nce", "simcse_loss", "info_nce_reference",
                           "simcse_loss_reference", "contrastive_backward", "full_batch_backward",
                           "naive_accumulation_backward", "openclip_style_backward", "all_gather_with_grad",
                           "distributed_contrastive_backward", "check_no_batchnorm", "LogitScale"],
    "kexue.simcse": ["POOLINGS", "pool", "encode", "fit_whitening", "apply_whitening", "cosine_scores"],
    "kexue.nn": ["TransformerConfig", "MultiHeadSelfAttention", "FeedForward", "TransformerBlock",
                 "TransformerEncoder", "MaskedLM", "count_parameters"],
    "kexue.utils": ["get_device", "seed_everything", "profile", "Profile", "git_commit"],
    "kexue.pretrained": ["load_zh_char_bert", "training_record", "load_minilm", "ZH_CHAR_BERT"],
    "kexue.data": ["load_digits", "load_msra", "load_sts_b", "load_peoples_daily", "load_reviews",
                   "load_pretraining_corpus", "load_silver_nested", "load_fashion_mnist", "decode_bmes",
                   "entity_lexicon", "heldout_sentences", "ENTITY_TYPES", "INSTALL_COMMAND"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_still_import(module):
    mod = importlib.import_module(module)
    missing = [n for n in PUBLIC[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"


def test_vmf_exports_the_whole_function_range():
    """``vmf.__all__`` from ``log_bessel_iv`` through ``implicit_dw_dkappa`` all import."""
    vmf = importlib.import_module("kexue.vmf")
    names = list(vmf.__all__)
    span = names[names.index("log_bessel_iv"): names.index("implicit_dw_dkappa") + 1]
    assert span and all(hasattr(vmf, n) for n in span)


_OUTSIDE = re.compile(r"\bissue\s*#?\s*\d+|shared/[A-Z]+\.md|\.\./shared\b", re.IGNORECASE)


@pytest.mark.parametrize("folder", ["kexue", "tests", "tools", "benchmarks"])
def test_sources_name_no_issue_numbers_or_outside_files(folder):
    """Docstrings and comments point neither to issue numbers nor to files outside the repository."""
    root = ROOT.parent / folder
    hits = []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _OUTSIDE.search(line) and "_OUTSIDE" not in line:
                hits.append(f"{path.relative_to(ROOT.parent)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_outside_reference_pattern_catches_examples():
    assert _OUTSIDE.search("cf. bojone/GlobalPointer issue #2")
    assert _OUTSIDE.search("see shared/DATA.md")
    assert _OUTSIDE.search("(issue 3)")
    assert not _OUTSIDE.search("the issue with padding is")
