"""Every Hydra usage example the repo shows composes with the real loader.

A usage example is a command line that passes ``key=value`` overrides: ``vincie-train``,
``vincie-demo``, ``vincie-evaluate`` (and ``vincie-edit --set k=v``), ``sbatch slurm/<script>``,
``slurm/train.sbatch`` and ``torchrun ... -m vincie_tools.train``. They are collected from
README.md, docs/*.md, slurm/* (comments and code), the comments of configs/**/*.yaml, and the
docstrings and comments of tools/vincie_tools/ and vincie_mcore/ (the CLIs' usage text lives there).

Each example is composed as its CLI composes it (``vincie_mcore.config.load_config``: Hydra's
struct mode rejects a key that does not exist, such as ``data.store`` for ``data.corpus.store``),
then validated the way the CLIs validate before doing any work: the data groups through
``data_configs`` (``build`` of each dataclass), and ``model``, ``flow``, ``sampler`` and ``train``
through ``build`` of theirs. Required ``???`` values (paths of the real-data group) that an
example does not set are filled with a placeholder: the example is about its keys, not a cluster.
"""
from __future__ import annotations

import ast
import functools
import io
import re
import shlex
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The command words that take Hydra overrides, first match on a line wins.
_COMMAND = re.compile(r"(?<![\w.-])(vincie-train|vincie-demo|vincie-evaluate|vincie-edit|sbatch|torchrun"
                      r"|slurm/train\.sbatch|-m vincie_tools\.train)(?![\w-])")
_OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][\w.@/-]*(=|$)")
# What a CLI adds in front of the user's overrides (tools/vincie_tools/demo.py: experiment=demo first).
_IMPLIED = {"vincie-demo": ["experiment=demo"]}


@dataclass
class Example:
    where: str                      # "README.md:97"
    text: str                       # the command line as written (from the command word on)
    command: str                    # vincie-train | vincie-demo | vincie-evaluate | vincie-edit | sbatch | ...
    overrides: list[str]            # the example's own key=value tokens
    implied: list[str] = field(default_factory=list)   # added by the CLI or the slurm script

    def all_overrides(self) -> list[str]:
        return [*self.implied, *self.overrides]


# ----------------------------------------------------------------------------- where the text is

def _python_text(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the docstrings and comments of a Python file (not its string literals:
    a usage *print* holds placeholders like ``[key=value ...]``)."""
    src = path.read_text()
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out += [(first.lineno + i, line) for i, line in enumerate(first.value.value.splitlines())]
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string[1:]))
    return out


def _yaml_comments(path: Path) -> list[tuple[int, str]]:
    return [(i, line.split("#", 1)[1]) for i, line in enumerate(path.read_text().splitlines(), 1) if "#" in line]


def _lines(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text().splitlines(), 1))


def _sources() -> list[tuple[str, list[tuple[int, str]]]]:
    out = []
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if p.is_file():
            out.append((p, _lines(p)))
    out += [(p, _lines(p)) for p in sorted((ROOT / "slurm").iterdir()) if p.is_file()]
    out += [(p, _yaml_comments(p)) for p in sorted((ROOT / "configs").rglob("*.yaml"))]
    for pkg in (ROOT / "tools" / "vincie_tools", ROOT / "vincie_mcore"):
        out += [(p, _python_text(p)) for p in sorted(pkg.rglob("*.py")) if "__pycache__" not in p.parts]
    return [(str(p.relative_to(ROOT)), lines) for p, lines in out]


# ----------------------------------------------------------------------------- what the example says

def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Shell continuation lines (trailing backslash) as one line, numbered by its first."""
    out, buf, start = [], "", None
    for n, text in lines:
        if start is None:
            start = n
        if text.rstrip().endswith("\\"):
            buf += text.rstrip()[:-1] + " "
            continue
        out.append((start, buf + text))
        buf, start = "", None
    if start is not None:
        out.append((start, buf))
    return out


def _tokens(text: str) -> list[str]:
    try:
        toks = shlex.split(text, posix=True)
    except ValueError:                        # an unbalanced quote: e.g. "${DIR}/slurm/train.sbatch" cut mid-word
        toks = [t.strip("\"'") for t in text.split()]
    return [t.strip("[](),;") for t in toks]


def parse_line(text: str) -> tuple[str, str, list[str]] | None:
    """(command word, command text, override tokens) of the first usage example in ``text``, or None."""
    m = _COMMAND.search(text)
    if not m:
        return None
    rest = text[m.start():]
    rest = re.split(r"`|\s#", rest, maxsplit=1)[0]           # inline code ends; a shell comment starts
    command = m.group(1)
    toks = _tokens(rest)[len(command.split()):]
    if command in ("sbatch", "torchrun"):
        # everything up to the script / module is the launcher's own arguments
        at = next((i for i, t in enumerate(toks) if t.startswith("slurm/") or t == "vincie_tools.train"), None)
        if at is None:
            return None
        if toks[at].startswith("slurm/"):
            command = toks[at]
        toks = toks[at + 1:]
    overrides = []
    for t in toks:
        if t.startswith("-") or "=" not in t or t.startswith("$"):
            continue                                          # flags (--nodes=8, --run), their values, "$@"
        if not _OVERRIDE.match(t) or t.split("=", 1)[0].lower() == "key":
            continue                                          # prose, or a KEY=VALUE placeholder
        overrides.append(t)
    return command, rest.strip(), overrides


def _script_overrides(script: str) -> list[str]:
    """The overrides a slurm script passes to train.sbatch (train_7b.sh: experiment=7b)."""
    path = ROOT / script
    if not path.is_file():
        raise AssertionError(f"{script}: no such script")
    if path.name == "train.sbatch":
        return []
    for _, line in _join_continuations(_lines(path)):
        if line.lstrip().startswith("#"):
            continue
        parsed = parse_line(line)
        if parsed and parsed[0].endswith("train.sbatch"):
            return parsed[2]
    return []


def _run_experiment(text: str) -> list[str]:
    """``--run runs/<name>``: a run of ``experiment=<name>`` when such an experiment exists."""
    m = re.search(r"--run[ =](?:\S*/)?([\w.-]+)", text)
    if m and (ROOT / "configs" / "experiment" / f"{m.group(1)}.yaml").is_file():
        return [f"experiment={m.group(1)}"]
    return []


def examples_in(where: str, lines: list[tuple[int, str]]) -> list[Example]:
    out = []
    for n, line in _join_continuations(lines):
        parsed = parse_line(line)
        if parsed is None:
            continue
        command, text, overrides = parsed
        if not overrides:
            continue                                          # nothing of ours to check on this line
        if command.startswith("slurm/"):
            implied = _script_overrides(command)
        elif command in ("vincie-evaluate", "vincie-edit"):
            implied = _run_experiment(text)                   # they load <run>/config.yaml, then the overrides
        else:
            implied = list(_IMPLIED.get(command, []))
        out.append(Example(f"{where}:{n}", text, command, overrides, implied))
    return out


def collect() -> list[Example]:
    return [e for where, lines in _sources() for e in examples_in(where, lines)]


# ----------------------------------------------------------------------------- compose and validate

def compose_and_validate(overrides: list[str]):
    """Compose like the CLIs and build every dataclass they build. Raises ConfigError (a ValueError)."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from vincie_mcore.build import data_configs
    from vincie_mcore.config import build, load_config
    from vincie_mcore.diffusion.flow import FlowConfig
    from vincie_mcore.infer.editor import SamplerConfig
    from vincie_mcore.model.config import MMDiTConfig
    from vincie_mcore.train.trainer import TrainConfig

    cfg = load_config(overrides)
    _fill_missing(cfg, OmegaConf, open_dict)
    data_configs(cfg)
    build(MMDiTConfig, cfg.model, "model")
    build(FlowConfig, cfg.flow, "flow")
    build(SamplerConfig, cfg.sampler, "sampler")
    train = OmegaConf.to_container(cfg.train, resolve=True)
    if train.get("dtype") == "bf16" and not torch.cuda.is_available():
        train["dtype"] = "auto"            # the GPU presets: "bf16 needs a GPU" is about this machine, not the example
    build(TrainConfig, train, "train")
    return cfg


def _fill_missing(node, OmegaConf, open_dict, path=""):
    """Set every still-missing ``???`` leaf to a placeholder path."""
    for key in list(node.keys()):
        sub = f"{path}.{key}" if path else str(key)
        if OmegaConf.is_missing(node, key):
            with open_dict(node):
                node[key] = f"/placeholder/{sub}"
        elif OmegaConf.is_config(node[key]) and not OmegaConf.is_list(node[key]):
            _fill_missing(node[key], OmegaConf, open_dict, sub)


EXAMPLES = collect()


def test_examples_are_found_where_users_read_them():
    """The collector itself: a broken regex must not pass by finding nothing."""
    wheres = {e.where.split(":")[0] for e in EXAMPLES}
    assert len(EXAMPLES) >= 8, [e.where for e in EXAMPLES]
    assert "README.md" in wheres, wheres
    assert any(w.startswith("slurm/") for w in wheres), wheres
    assert any(w.startswith("configs/") for w in wheres), wheres
    assert any(w.endswith(".py") for w in wheres), wheres
    assert {e.command for e in EXAMPLES} >= {"vincie-train", "vincie-demo", "vincie-evaluate"}, \
        {e.command for e in EXAMPLES}


@functools.lru_cache(maxsize=None)
def _verdict(overrides: tuple[str, ...]) -> str | None:
    """None, or the one-line error (examples repeated across files are composed once)."""
    from vincie_mcore.config import ConfigError

    try:
        compose_and_validate(list(overrides))
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_usage_example_composes(example: Example):
    error = _verdict(tuple(example.all_overrides()))
    if error is not None:
        pytest.fail(f"{example.where}: `{example.text}` does not compose "
                    f"(overrides {example.all_overrides()}): {error}", pytrace=False)


# ----------------------------------------------------------------------------- the docs' paths and links

_ROOTS = ("vincie_mcore/", "kernels/", "tools/", "configs/", "slurm/", "tests/", "benchmarks/", "docs/")


def _expand(path: str) -> list[str]:
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py`` (one brace group at a time)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in _expand(path[:m.start()] + alt + path[m.end():])]


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", md.read_text(), flags=re.M)}


def cited_paths(md: Path) -> list[tuple[str, str]]:
    """(as written, problem) for every repo path in backticks and every relative link that does not resolve."""
    bad = []
    text = md.read_text()
    for code in re.findall(r"`([^`\n]+)`", text):
        for tok in code.split():
            tok = tok.rstrip(",.;:)")
            if not tok.startswith(_ROOTS) or "=" in tok:
                continue
            for p in _expand(tok):
                if not (any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists()):
                    bad.append((tok, f"no {p}"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (md.parent / file).resolve() if file else md
        if not dest.exists():
            bad.append((target, "no such file"))
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append((target, f"no heading #{anchor}"))
    return bad


@pytest.mark.parametrize("md", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_docs_cite_paths_that_exist(md):
    """The README's "Where things are" and docs/ point at code; a move must not leave them pointing at nothing."""
    assert cited_paths(ROOT / md) == []


# ----------------------------------------------------------------------------- the check can fail

def test_parse_line_reads_launchers_and_skips_flags():
    assert parse_line("sbatch --nodes=8 slurm/train.sbatch experiment=7b data.corpus.store=/s  # note") == \
        ("slurm/train.sbatch", "sbatch --nodes=8 slurm/train.sbatch experiment=7b data.corpus.store=/s",
         ["experiment=7b", "data.corpus.store=/s"])
    assert parse_line("    torchrun --nproc-per-node 8 -m vincie_tools.train experiment=3b seed=1 ...")[2] == \
        ["experiment=3b", "seed=1"]
    assert parse_line("run `vincie-evaluate --run runs/demo sampler.guidance=4` to re-judge")[2] == \
        ["sampler.guidance=4"]
    assert parse_line("vincie-demo [hydra overrides, e.g. train.steps=400 seed=1]")[2] == ["train.steps=400", "seed=1"]
    assert _script_overrides("slurm/train_7b.sh") == ["experiment=7b"]
    assert _run_experiment("vincie-evaluate --run runs/demo x=1") == ["experiment=demo"]


@pytest.mark.parametrize("line", [
    "sbatch slurm/train_7b.sh data.store=/lustre/store",          # the old slurm usage line: no such key
    "vincie-train experiment=demo train.steps=abc",               # a value its dataclass rejects
    "vincie-demo train.steps=10",                                 # warmup 20 >= steps 10 (TrainConfig)
    "vincie-train data.recipe.mask_type=causal",                  # a value the recipe rejects
    "vincie-train experiment=8b",                                 # no such experiment
])
def test_a_bad_example_fails(line):
    from vincie_mcore.config import ConfigError

    (ex,) = examples_in("inline", [(1, line)])
    with pytest.raises(ConfigError):
        compose_and_validate(ex.all_overrides())
