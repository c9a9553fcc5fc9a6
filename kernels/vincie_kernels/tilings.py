"""Naming the masked-attention kernels' tilings in text: command lines, configs, the tuner's JSON.

    default                                  today's ``default_configs``
    legacy | fa2                             the presets of ``masked_attention.py``
    fwd=128x64x8x3,dkdv=32x128x8x2,dq=128x64x8x2   block_m x block_n x num_warps x num_stages per kernel
    fwd=128x64x8x3+tma,...                   "+tma": that kernel streams its tiles through TMA (sm_90+)
    fwd=...,dkdv=32x128x8x2,dq=atomic        no dQ kernel: dK/dV adds dQ up with fp32 atomics (not bitwise
                                             deterministic run to run)
    tuned=<vincie-tune-attention JSON>       that run's ``overall_best``

Imports neither torch nor triton, so a config or a command line is checked before either loads.
"""
from __future__ import annotations

import json

PRESETS = ("default", "legacy", "fa2")
KERNELS = ("fwd", "dkdv", "dq")


def parse_tilings(text: str):
    """-> a preset name, or {kernel: [block_m, block_n, num_warps, num_stages(, 1 for +tma)]} for every
    kernel, where dq may be "atomic" instead. Raises ValueError naming the bad part."""
    text = str(text).strip()
    if text in PRESETS:
        return text
    if text.startswith("tuned="):
        path = text[len("tuned="):]
        try:
            with open(path) as fh:
                best = json.load(fh).get("overall_best") or {}
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"tuned={path}: cannot read the tune JSON ({type(e).__name__}: {e})") from None
        if not isinstance(best, dict) or "config" not in best:
            why = best.get("none", "the tune run did not finish") if isinstance(best, dict) else repr(best)[:80]
            raise ValueError(f"tuned={path}: no overall_best config in it ({why})")
        try:
            text = tilings_text({k: best["config"][k] for k in KERNELS})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"tuned={path}: overall_best config is malformed ({type(e).__name__}: {e})") from None
        return parse_tilings(text)
    out = {}
    for part in filter(None, text.split(",")):
        kern, _, shape = part.partition("=")
        if kern == "dq" and shape == "atomic":
            out[kern] = "atomic"
            continue
        shape, plus, flag = shape.partition("+")
        nums = shape.split("x")
        ok = len(nums) == 4 and all(n.isdigit() and int(n) > 0 for n in nums) and flag == ("tma" if plus else "")
        # tiles and warps are powers of two (tl.arange, the launch); tiles at least 16 (tl.dot)
        ok = ok and all(int(n) & (int(n) - 1) == 0 for n in nums[:3]) and min(int(n) for n in nums[:2]) >= 16
        if kern not in KERNELS or not ok:
            raise ValueError(f"bad part {part!r}; want a preset {PRESETS}, tuned=<json>, or "
                             "fwd=BMxBNxWARPSxSTAGES[+tma],dkdv=...,dq=... (or dq=atomic)")
        out[kern] = [int(n) for n in nums] + ([1] if plus else [])
    missing = [k for k in KERNELS if k not in out]
    if missing:
        raise ValueError(f"{text!r}: no tiling for {', '.join(missing)}")
    return out


def tilings_text(parsed) -> str:
    """``parse_tilings``'s answer back to text (``tuned=`` resolved: the text stands without the file)."""
    if isinstance(parsed, str):
        return parsed
    def one(t):
        if t == "atomic":
            return t
        tma = len(t) > 4 and bool(t[4])
        return "x".join(str(int(n)) for n in t[:4]) + ("+tma" if tma else "")
    return ",".join(f"{k}={one(parsed[k])}" for k in KERNELS)


def configs_lists(cfgs) -> dict:
    """An AttentionConfigs -> ``parse_tilings``'s dict form (what JSON records hold)."""
    return {k: "atomic" if c is None else [c.block_m, c.block_n, c.num_warps, c.num_stages] + ([1] if c.tma else [])
            for k, c in zip(KERNELS, (cfgs.fwd, cfgs.dkdv, cfgs.dq))}


def attention_configs(parsed):
    """``parse_tilings``'s answer -> AttentionConfigs, or None for today's defaults (imports the kernels)."""
    from vincie_kernels.masked_attention import (FA2_CONFIGS_BF16_D128, LEGACY_CONFIGS_BF16_D128,
                                                 AttentionConfigs, KernelConfig)
    if isinstance(parsed, dict):
        return AttentionConfigs(*(None if parsed[k] == "atomic" else
                                  KernelConfig(*parsed[k][:4], tma=len(parsed[k]) > 4 and bool(parsed[k][4]))
                                  for k in KERNELS))
    return {"default": None, "legacy": LEGACY_CONFIGS_BF16_D128, "fa2": FA2_CONFIGS_BF16_D128}[parsed]
