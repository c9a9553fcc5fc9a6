"""The export folder on disk: config.json, safetensors (one file or shards + index), README.md.

Layout and tensor names: docs/export.md. Weights are read with ``safetensors`` only: nothing
from an export folder is ever unpickled (a folder holding only ``.bin``/``.pt``/``.pth``
weights is refused). Every refusal is one line naming the bad thing (``ExportError``).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import torch

from ..paths import inside

FORMAT = "vincie-mmdit"
FORMAT_VERSION = 1
CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


class ExportError(ValueError):
    """A bad export folder or file; the message is one line naming it."""


def library_version() -> str:
    try:
        from importlib.metadata import version
        return version("vincie_mcore")
    except Exception:                                  # running from a bare checkout
        return "unknown"


def parse_size(size: int | str) -> int:
    """"5GB" / "200MB" / "64KB" / "1GiB" / 1000 -> bytes (KB, MB, GB are powers of 1000, as in Hugging Face)."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
        if not m:
            raise ExportError(f"max shard size: {size!r} is not a size like 5GB, 200MB or 1000")
        unit = (m.group(2) or "B").upper()
        mult = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9,
                "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}[unit]
        n = int(float(m.group(1)) * mult)
    if n < 1:
        raise ExportError(f"max shard size: {size!r} must be at least 1 byte")
    return n


# ----------------------------------------------------------------------------
# Memory: peak resident set growth
# ----------------------------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak RSS growth over a stretch of code, in MB: the kernel's high-water mark is reset at the
    start (/proc/self/clear_refs, Linux) so transient peaks inside a library call count too;
    where that is not possible, the largest RSS seen at ``sample()`` calls."""

    def __init__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                           # 5: reset VmHWM to the current RSS
            self.hwm = True
        except OSError:
            self.hwm = False
        self.start = _status_kb("VmRSS") or 0
        self.seen = self.start

    def sample(self) -> None:
        self.seen = max(self.seen, _status_kb("VmRSS") or 0)

    def growth_mb(self) -> float:
        self.sample()
        peak = max(_status_kb("VmHWM") or 0, self.seen) if self.hwm else self.seen
        return round((peak - self.start) / 1024, 1)


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------

def plan_shards(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], max_bytes: int) -> list[list[str]]:
    """Names in order, grouped greedily into shards of at most max_bytes (a bigger tensor gets its own)."""
    shards, cur, size = [], [], 0
    for name, (shape, dtype) in specs.items():
        n = _nbytes(shape, dtype)
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        shards.append(cur)
    return shards


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def _out_dtype(dtype: torch.dtype, target: torch.dtype) -> torch.dtype:
    return target if dtype.is_floating_point else dtype


MODEL_CARD = """---
library_name: vincie_mcore
tags: [image-editing, in-context, mm-dit, vincie]
---
# VINCIE MM-DiT ({params:,} parameters, {dtype})

An in-context image-editing MM-DiT (VINCIE, arXiv 2506.10941) exported from a `vincie_mcore` training
checkpoint{source}. Load it without Megatron-Core or process groups:

```python
from vincie_mcore.hf import VincieMMDiT, VincieEditPipeline
model = VincieMMDiT.from_pretrained("{folder}")
pipe = VincieEditPipeline.from_pretrained("{folder}")   # needs the "pipeline" section of config.json
images = pipe(image, ["add a red square at the top left", "make it blue"], steps=20, guidance=3.0, seed=0)
composed = pipe.compose([image_a, image_b], "the two together", seed=0).image   # and pipe.chain, pipe.drag
```

From the command line: `vincie-edit --export {folder} --image start.png --prompt "..."`, and
`vincie-edit chain|drag|compose|story --export {folder} ...` (docs/applications.md of vincie_mcore).

Architecture (config.json, "model"): hidden {hidden_size}, {num_layers} blocks ({mm_layers} dual-stream),
{num_heads} heads x {head_dim}, adaLN "{adaln}". Tensor names and file layout: docs/export.md of vincie_mcore
(format "{format}" version {version}). Weights load with safetensors only; no pickle.
"""


def write_export(folder, model_config: dict, specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 load_group: Callable[[list[str]], dict[str, torch.Tensor]], dtype: str = "fp32",
                 max_shard_size: int | str = "5GB", extra: dict | None = None) -> dict:
    """Write an export folder, one shard at a time.

    specs: name -> (shape, dtype) of every tensor, in file order. load_group(names) returns those
    tensors (full, unsharded); it is called once per shard, so at most one shard's tensors are held.
    extra: more top-level config.json entries ("pipeline", "source"). Returns the stats dict
    {"tensors", "bytes", "shards", "peak_rss_mb", "seconds"}.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ExportError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    target = DTYPES[dtype]
    max_bytes = parse_size(max_shard_size)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():                       # an earlier export's weights would mix with these
        if p.name in (SINGLE, INDEX) or _SHARD_RE.match(p.name):
            p.unlink()
    t0, mem = time.perf_counter(), PeakRSS()
    out_specs = {k: (shape, _out_dtype(dt, target)) for k, (shape, dt) in specs.items()}
    shards = plan_shards(out_specs, max_bytes)
    names = [SINGLE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for fname, group in zip(names, shards):
        tensors = load_group(group)
        mem.sample()
        for k in group:
            t = tensors[k]
            if tuple(t.shape) != tuple(specs[k][0]):
                raise ExportError(f"tensor {k}: expected shape {list(specs[k][0])}, got {list(t.shape)}")
            tensors[k] = t.to(out_specs[k][1]).contiguous()
            total += tensors[k].numel() * tensors[k].element_size()
            weight_map[k] = fname
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        mem.sample()
        del tensors
    if len(shards) > 1:
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "library": "vincie_mcore",
              "library_version": library_version(), "dtype": dtype, "model": model_config, **(extra or {})}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    src = (extra or {}).get("source", {})
    (out / "README.md").write_text(MODEL_CARD.format(
        params=sum(int(torch.Size(s).numel()) for s, _ in specs.values()), dtype=dtype,
        source=f" (`{src['checkpoint']}`)" if src.get("checkpoint") else "", folder=out.name,
        format=FORMAT, version=FORMAT_VERSION, **{k: model_config[k] for k in
                                                  ("hidden_size", "num_layers", "mm_layers", "num_heads",
                                                   "head_dim", "adaln")}))
    return {"tensors": len(weight_map), "bytes": total, "shards": len(shards),
            "peak_rss_mb": mem.growth_mb(), "seconds": round(time.perf_counter() - t0, 3)}


# ----------------------------------------------------------------------------
# Reading (safetensors only)
# ----------------------------------------------------------------------------

def _check_folder(folder) -> Path:
    d = Path(folder)
    if not d.is_dir():
        raise ExportError(f"export folder: {d} is not a folder")
    if not any(p.suffix == ".safetensors" for p in d.iterdir()):
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ExportError(f"export folder: {d} holds only pickle weights ({', '.join(pickles[:3])}); "
                              f"vincie_mcore loads safetensors only and never unpickles an export")
    if not (d / CONFIG).is_file():
        raise ExportError(f"export folder: no {CONFIG} in {d}")
    return d


def read_config(folder) -> dict:
    """config.json of an export folder, checked (format, version, a "model" mapping)."""
    d = _check_folder(folder)
    try:
        cfg = json.loads((d / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"export folder: {d / CONFIG} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ExportError(f"export folder: {d / CONFIG} is not a {FORMAT} config (format="
                          f"{cfg.get('format') if isinstance(cfg, dict) else None!r})")
    v = cfg.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise ExportError(f"export folder: {d / CONFIG} has format_version {v!r}; this vincie_mcore reads "
                          f"up to {FORMAT_VERSION}")
    if not isinstance(cfg.get("model"), dict):
        raise ExportError(f"export folder: {d / CONFIG} has no \"model\" mapping")
    return cfg


def weight_files(folder) -> dict[str, str]:
    """name -> file of every tensor, from the index or the single file; a missing shard is refused."""
    from safetensors import safe_open

    d = _check_folder(folder)
    if (d / INDEX).is_file():
        try:
            index = json.loads((d / INDEX).read_text())
            wmap = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ExportError(f"export folder: {d / INDEX} is not a safetensors index "
                              f"({{\"metadata\": ..., \"weight_map\": ...}})") from None
        for f in sorted(set(wmap.values())):
            try:                                 # a shard named '../x' or '/x' would read outside the folder
                inside(d, f, what=f"export folder: {INDEX} shard")
            except ValueError as e:
                raise ExportError(str(e)) from None
            if not (d / f).is_file():
                raise ExportError(f"export folder: {INDEX} points at a missing shard {f}")
        return {k: str(d / f) for k, f in wmap.items()}
    if not (d / SINGLE).is_file():
        raise ExportError(f"export folder: neither {SINGLE} nor {INDEX} in {d}")
    with safe_open(str(d / SINGLE), framework="pt") as f:
        return {k: str(d / SINGLE) for k in f.keys()}


def read_tensors(folder, expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 dtype: torch.dtype | None = None, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors ``names`` (default: all of ``expected``), shapes checked against ``expected``,
    floats cast to ``dtype`` (default: the expected dtype). Missing, extra or misshapen tensors
    are refused in one line naming the tensor."""
    from safetensors import safe_open

    files = weight_files(folder)
    for k in expected:
        if k not in files:
            raise ExportError(f"export folder: missing tensor {k}")
    extra = sorted(set(files) - set(expected))
    if extra:
        raise ExportError(f"export folder: unexpected tensor {extra[0]} (not in this config's model)")
    want = list(expected) if names is None else names
    by_file: dict[str, list[str]] = {}
    for k in want:
        by_file.setdefault(files[k], []).append(k)
    out = {}
    for path, keys in by_file.items():
        with safe_open(path, framework="pt") as f:
            for k in keys:
                shape = tuple(f.get_slice(k).get_shape())
                if shape != tuple(expected[k][0]):
                    raise ExportError(f"export folder: tensor {k} has shape {list(shape)}, expected "
                                      f"{list(expected[k][0])}")
                t = f.get_tensor(k)
                out[k] = t.to(dtype or expected[k][1]) if t.is_floating_point() else t
    return out


def is_export(folder) -> bool:
    return os.path.isfile(os.path.join(folder, CONFIG))
