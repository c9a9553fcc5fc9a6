"""Imports go one way: down the layer order below. Read from the source (ast), nothing imported.

Every module of vincie_mcore is walked; each intra-package import (absolute ``vincie_mcore.x``
or relative ``..x``, at module level or inside a function) must point at the same unit, a unit
of a lower rank, or a same-rank sibling declared in ``SIBLINGS``. A module outside every
listed unit is top-level wiring (``experiment``-like modules, whatever their names) and ranks
above everything, so nothing listed may import it.

The order, as the code has it (data flows one way: video -> data -> packed batch -> model
-> loss):

0. ``packed`` (the contract: mask spec, PackedBatch, patches, CP shard math, the batch
   builder), ``config``, ``runinfo``, ``paths`` (the name sanitiser and path checks), ``signals``
   (the job's stop signals kept out of helper processes): leaves
   every layer may name.
1. Services the stages sit on. ``parallel``'s communication layer (process groups,
   autograd comm verbs, Megatron-Core on CPU, the layout object and ``parallelize``, the CP
   attention wrapper and loss mean):
   Megatron-style, the model wraps its core attention for CP and the loss averages over
   dp x cp, so this sits under both, as Megatron's ``parallel_state``/``tensor_parallel``
   sit under its models. Other modules in ``parallel/`` (parity, plan: they drive whole
   models and trainers) are not listed, hence top-level wiring. ``encoders``: frozen image
   and text encoders, used by the data pipeline and by inference.
2. The stages: ``data`` (videos -> sessions -> packed batches), ``model`` (reads a batch),
   ``diffusion`` (noises a batch, scores a model given as a callable). Siblings: none
   imports another.
3. ``train``, ``infer``: run models on batches.
4. ``eval``: judges built on inference; ``hf``: the model without Megatron and its
   edit pipeline, built on inference.
5. Everything else: top-level wiring (``convert`` among it: it drives checkpoints, trainers
   and process layouts).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "vincie_mcore"

# rank -> {unit: module prefixes (relative to vincie_mcore) that belong to it}
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"packed": ("packed",), "config": ("config",), "runinfo": ("runinfo",), "paths": ("paths",),
     "signals": ("signals",)},
    {"parallel": ("parallel.cpu_compat", "parallel.groups", "parallel.mappings", "parallel.context_parallel",
                  "parallel.dims"),
     "encoders": ("encoders",)},
    {"data": ("data",), "model": ("model",), "diffusion": ("diffusion",)},
    {"train": ("train",), "infer": ("infer",)},
    {"eval": ("eval",), "hf": ("hf",)},
]
TOP = "top-level wiring"
SIBLINGS: set[tuple[str, str]] = set()           # (importer unit, imported unit) allowed at one rank
# what the contract package may import besides itself
PACKED_MAY_IMPORT = ("torch", "numpy", "vincie_kernels.reference")


# ----------------------------------------------------------------------------- the checker

def modules(pkg_dir: Path) -> dict[str, Path]:
    """{dotted name relative to the package ("" for its __init__): file}."""
    out = {}
    for f in sorted(pkg_dir.rglob("*.py")):
        parts = list(f.relative_to(pkg_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(path: Path, name: str, is_pkg: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, anywhere in it; relative ones resolved.

    ``from a import b`` counts as importing ``a.b`` when ``b`` is a module of vincie_mcore
    (``known``: relative dotted names), else as importing ``a``.
    """
    out = []
    here = [PKG] + (name.split(".") if name else [])
    package = here if is_pkg else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 >= len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import above {PKG}")
                base = ".".join(package[:len(package) - (node.level - 1)] + (node.module or "").split(".")).strip(".")
            else:
                base = node.module
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub.startswith(PKG + ".") and sub[len(PKG) + 1:] in known else base))
    return out


def unit_of(name: str) -> tuple[str, int]:
    """(unit, rank) of a module (relative dotted name): the longest listed prefix, else top-level wiring."""
    best = (TOP, len(LAYERS), -1)
    for rank, units in enumerate(LAYERS):
        for unit, prefixes in units.items():
            for p in prefixes:
                if (name == p or name.startswith(p + ".")) and len(p) > best[2]:
                    best = (unit, rank, len(p))
    return best[0], best[1]


def violations(root: Path) -> list[str]:
    """Every import that points upward, sideways undeclared, into vincie_tools, or at no module."""
    mods = modules(root / PKG)
    bad = []
    for name, path in mods.items():
        u_from, r_from = unit_of(name)
        where = path.relative_to(root)
        for line, mod in imports(path, name, path.name == "__init__.py", set(mods)):
            if mod.split(".")[0] == "vincie_tools":
                bad.append(f"{where}:{line}: imports {mod} (the tools sit above the library)")
            if mod != PKG and not mod.startswith(PKG + "."):
                continue
            tgt = mod[len(PKG) + 1:]
            if tgt not in mods:
                bad.append(f"{where}:{line}: imports {mod}, which does not exist")
                continue
            u_to, r_to = unit_of(tgt)
            if u_to == u_from or r_to < r_from or (r_to == r_from and (u_from, u_to) in SIBLINGS):
                continue
            how = "upward" if r_to > r_from else "between siblings"
            bad.append(f"{where}:{line}: {how}: {u_from} (rank {r_from}) imports {mod} ({u_to}, rank {r_to})")
    return bad


def foreign_imports(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """Imports of any ``forbidden`` root in ``files``."""
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{f.relative_to(ROOT)}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in forbidden]
    return bad


# ----------------------------------------------------------------------------- the rules

def test_vincie_mcore_imports_only_downward():
    bad = violations(ROOT)
    assert not bad, "imports against the layer order (tests/test_layers.py):\n" + "\n".join(bad)


def test_every_listed_unit_exists():
    mods = modules(ROOT / PKG)
    for units in LAYERS:
        for unit, prefixes in units.items():
            for p in prefixes:
                assert any(m == p or m.startswith(p + ".") for m in mods) or unit == "convert", (unit, p)


def test_vincie_kernels_never_imports_vincie_mcore():
    files = sorted((ROOT / "kernels" / "vincie_kernels").rglob("*.py"))
    assert files
    bad = foreign_imports(files, ("vincie_mcore", "vincie_tools"))
    assert not bad, "\n".join(bad)


def test_packed_imports_only_torch_numpy_and_the_mask_rule():
    bad = []
    for name, path in modules(ROOT / PKG).items():
        if unit_of(name)[0] != "packed":
            continue
        for line, mod in imports(path, name, path.name == "__init__.py", set()):
            root = mod.split(".")[0]
            ok = root in sys.stdlib_module_names or mod.startswith(PKG + ".packed") or mod == PKG + ".packed" \
                or any(mod == m or mod.startswith(m + ".") for m in PACKED_MAY_IMPORT) or root == "__future__"
            if not ok:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {mod}")
    assert not bad, "\n".join(bad)


def reads_parallel_state(files: list[Path]) -> list[str]:
    """Imports of Megatron's global ``parallel_state`` (as a module or a name from megatron.core)."""
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
            else:
                continue
            if any(n == "megatron.core.parallel_state" or n.startswith("megatron.core.parallel_state.") for n in names):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: reads megatron.core.parallel_state")
    return bad


def test_the_model_and_the_loss_take_the_layout_they_are_given():
    # docs/design.md, "layout": the model, the FP8 amax group and the loss read ParallelDims, not the
    # process-global groups (a model never parallelized must compute the whole sequence)
    files = sorted(f for d in ("model", "diffusion") for f in (ROOT / PKG / d).rglob("*.py"))
    assert files
    bad = reads_parallel_state(files)
    assert not bad, "\n".join(bad)
    fake = ROOT / "tests" / "__parallel_state_probe__.py"
    try:                                    # the check can fail
        fake.write_text("def f():\n    from megatron.core import parallel_state\n")
        assert reads_parallel_state([fake]) == [f"tests/{fake.name}:2: reads megatron.core.parallel_state"]
    finally:
        fake.unlink()


# ----------------------------------------------------------------------------- the checker can fail

FAKE = {
    "__init__.py": "",
    "packed/__init__.py": "",
    "packed/batch.py": "from ..model import mmdit\n",                                       # rank 0 -> 2
    "model/__init__.py": "",
    "model/mmdit.py": "def f():\n    from vincie_mcore.data.packing import pack\n",         # sibling, in a function
    "data/__init__.py": "",
    "data/packing.py": "from . import recipe\nfrom .recipe import x\nfrom ..packed.batch import B\n",  # fine
    "data/recipe.py": "import vincie_mcore.experiment\n",                                    # rank 2 -> top
    "experiment.py": "from .train import trainer\nfrom .data.gone import x\n",               # top: fine; missing module
    "train/__init__.py": "",
    "train/trainer.py": "from vincie_tools import demo\n",                                    # into the tools
    "parallel/__init__.py": "",
    "parallel/groups.py": "from .parity import run\n",                                        # comm layer -> wiring
    "parallel/parity.py": "from ..train import trainer\nfrom . import groups\n",             # wiring: fine
}


def test_the_checker_finds_upward_sideways_and_missing_imports(tmp_path):
    for rel, text in FAKE.items():
        f = tmp_path / PKG / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    bad = violations(tmp_path)
    want = {"packed/batch.py:1: upward", "model/mmdit.py:2: between siblings", "data/recipe.py:1: upward",
            "experiment.py:2: imports vincie_mcore.data.gone", "train/trainer.py:1: imports vincie_tools",
            "parallel/groups.py:1: upward"}
    found = {w for w in want if any(b.startswith(f"{PKG}/{w}") for b in bad)}
    assert found == want and len(bad) == len(want), "\n".join(bad)


@pytest.mark.parametrize("name,unit,rank", [("packed.builder", "packed", 0), ("parallel.groups", "parallel", 1),
                                             ("parallel.parity", TOP, 5), ("data.packing", "data", 2),
                                             ("experiment", TOP, 5), ("", TOP, 5)])
def test_units(name, unit, rank):
    assert unit_of(name) == (unit, rank)
