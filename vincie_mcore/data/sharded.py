"""A store built as N independent parts (a Slurm array), then merged without copying frames.

    plan   inputs (a folder or a manifest) -> STORE/plan/: the settings (config.yaml) and one list
           of videos per part (part_NNNNN.jsonl), inputs refused while listing kept in plan.json
    run    part i of N -> STORE/parts/NNNNN/, itself a complete session store; resumable, because
           SessionWriter skips what a killed task already finished
    merge  STORE/index.jsonl lists every part's shards as parts/NNNNN/shard_NNNNN, so
           ``SessionStore(STORE)`` reads them all in place. failures.jsonl and filter_counts.jsonl
           are concatenated (small text). The root is marked merged, and writing into it directly
           is refused.

Every part runs with the plan's config, so one store cannot mix recipes. Merge checks that every
part recorded the same build settings.

``union`` is the other way to one store from many: stores built apart (several fine-tuning datasets),
each shard hard-linked in as a part; it records every source's settings.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import zarr

from ..paths import link_tree
from .inputs import InputList, VideoInput
from .store import STORE_FORMAT, SessionStore, _read_index, read_failures

PLAN = "plan"


def part_name(i: int) -> str:
    return f"{i:05d}"


def parse_shard(spec: str) -> tuple[int, int]:
    """'3/8' -> (3, 8); one line naming the bad value otherwise."""
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected i/N such as 0/8, got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard: {spec!r} needs 0 <= i < N and N >= 1")
    return i, n


def plan(inputs: InputList, store_root, n_parts: int, config: dict) -> dict:
    """Split ``inputs`` into ``n_parts`` lists (video k goes to part k mod N, in input order)."""
    rows = [[{"id": v.video_id, "path": str(Path(v.path).resolve()), "caption": v.caption}
             for v in inputs.videos[i::n_parts]] for i in range(max(n_parts, 0))]
    info = {"videos": len(inputs.videos),
            "skipped": [{"video_id": f"inputs:{label}", "reason": f"inputs: {why}"} for label, why in inputs.skipped]}
    return write_plan(store_root, n_parts, config, info, rows)


def write_plan(store_root, n_parts: int, config: dict, info: dict, part_rows: list | None = None) -> dict:
    """``STORE/plan/``: the config every part runs with, ``plan.json`` (``{"parts": n_parts, **info}``;
    ``info["skipped"]``: failure lines for the merge) and, for videos, each part's input list."""
    if n_parts < 1:
        raise ValueError(f"--shards: must be >= 1, got {n_parts}")
    root = Path(store_root)
    d = root / PLAN
    if (d / "plan.json").exists():
        old = json.loads((d / "plan.json").read_text())
        if old["parts"] != n_parts:
            raise ValueError(f"{d}: planned for {old['parts']} parts already; use another store folder")
    d.mkdir(parents=True, exist_ok=True)
    import yaml

    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    for i, rows in enumerate(part_rows or []):
        tmp = d / f"part_{part_name(i)}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(d / f"part_{part_name(i)}.jsonl")
    info = {"parts": n_parts, **info}
    (d / "plan.json").write_text(json.dumps(info, indent=1))
    return info


def read_plan(store_root) -> tuple[dict, dict]:
    """(plan.json, the plan's config) of a planned store; one line when there is none."""
    d = Path(store_root) / PLAN
    if not (d / "plan.json").is_file():
        raise FileNotFoundError(f"{store_root}: no plan (run `vincie-build-sessions plan` first)")
    import yaml

    return json.loads((d / "plan.json").read_text()), yaml.safe_load((d / "config.yaml").read_text()) or {}


def part_inputs(store_root, i: int, n: int) -> InputList:
    info, _ = read_plan(store_root)
    if info["parts"] != n:
        raise ValueError(f"--shard {i}/{n}: the plan of {store_root} has {info['parts']} parts")
    rows = [json.loads(line) for line in (Path(store_root) / PLAN / f"part_{part_name(i)}.jsonl").read_text().splitlines()
            if line.strip()]
    return InputList(videos=[VideoInput(r["id"], Path(r["path"]), r.get("caption")) for r in rows])


def part_root(store_root, i: int) -> Path:
    return Path(store_root) / "parts" / part_name(i)


def merge(store_root) -> dict:
    """List every part's shards in the root index (no frame is copied) -> summary counts."""
    root = Path(store_root)
    info, _ = read_plan(root)
    n = info["parts"]
    index, fails, counts, build, shard_size = [], [], [], None, None
    for i in range(n):
        pr = part_root(root, i)
        if not (pr / "zarr.json").is_file():
            raise FileNotFoundError(f"merge: part {part_name(i)} has no store at {pr} (did its task run?)")
        g = zarr.open_group(str(pr), mode="r")
        b = g.attrs.get("build")
        if build is None:
            build, shard_size = b, g.attrs.get("shard_size")
        elif b != build:
            raise ValueError(f"merge: part {part_name(i)} was built with other settings than part 00000")
        index += [{"shard": f"parts/{part_name(i)}/{d['shard']}", "video_ids": d["video_ids"]} for d in _read_index(pr)]
        fails += [{"video_id": v, "reason": r} for v, r in read_failures(pr).items()]
        fc = pr / "filter_counts.jsonl"
        if fc.is_file():
            counts.append(fc.read_text())
    zarr.open_group(str(root / "parts"), mode="a")            # the level between root and parts: a group
    g = zarr.open_group(str(root), mode="a")
    g.attrs.update({"format": STORE_FORMAT, "shard_size": shard_size, "build": build, "merged_parts": n})
    for name, text in (("index.jsonl", "".join(json.dumps(d) + "\n" for d in index)),
                       ("failures.jsonl", "".join(json.dumps(d) + "\n" for d in info["skipped"] + fails)),
                       ("filter_counts.jsonl", "".join(counts))):
        tmp = root / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(root / name)                              # a reader sees the old index or the new one
    return {"parts": n, "shards": len(index), "sessions": len(SessionStore(root)),
            "failed": len(info["skipped"]) + len(fails), "store": str(root)}


_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def source_names(sources) -> tuple[list[str], list[Path]]:
    """``union``'s sources -> (names, paths). A source is a path (named by its folder) or ``NAME=PATH``;
    the names are what ``data.corpus.mix`` weighs, so they must be unique words."""
    names, paths = [], []
    for s in sources:
        s = str(s)
        head = s.split("=", 1)[0]
        name, path = (head, s[len(head) + 1:]) if "=" in s and "/" not in head else (Path(s).name, s)
        if not _SOURCE_NAME.match(name):
            raise ValueError(f"union: source name {name!r} ({s}) must be letters, digits, _ . - (give NAME=PATH)")
        if name in names:
            raise ValueError(f"union: two sources are named {name!r}; name them apart with NAME=PATH")
        names.append(name)
        paths.append(Path(path))
    return names, paths


def union(store_root, sources) -> dict:
    """One store that reads every session of ``sources`` (stores of any build: videos, editing datasets,
    merged ones), e.g. several fine-tuning datasets for one run. Each source shard becomes a part,
    ``STORE/parts/NNNNN/shard_NNNNN``, its files hard-linked (copied only across filesystems), so no
    frame is re-encoded; the root index lists them all. Session ids must not repeat across sources.
    A source is a path or ``NAME=PATH`` (``source_names``); the union records each source's name,
    build settings and rows (``SessionStore.sources``: what ``data.corpus.mix`` weighs); a source that is
    itself a union joins as its own sources, named ``NAME.<source>``. Nothing can be written into it."""
    root = Path(store_root)
    if (root / "zarr.json").exists():
        raise ValueError(f"union: {root} exists already; give a new folder")
    names, srcs = source_names(sources)
    if len(srcs) < 2:
        raise ValueError(f"union: needs two or more stores, got {len(srcs)}")
    stores = [SessionStore(s) for s in srcs]                 # each checked: a store, its index sane
    seen: dict = {}
    for s, st in zip(srcs, stores):
        for v in st.video_ids():
            if v in seen:
                raise ValueError(f"union: session {v!r} is in both {seen[v]} and {s}; build one of them with "
                                 f"another --name")
            seen[v] = s
    builds, row = [], 0
    for name, s, st in zip(names, srcs, stores):
        g = zarr.open_group(str(s), mode="r")
        subs = st.sources()
        if subs:         # a union joins as its sources, NAME.<source> (data.corpus.mix weighs them, or NAME whole)
            inner = {d["name"]: d for d in g.attrs["build"]["union"]}
            builds += [{"name": f"{name}.{sub}", "store": inner[sub]["store"], "build": inner[sub]["build"],
                        "rows": [row + a, row + b]} for sub, a, b in subs]
        else:
            builds.append({"name": name, "store": str(s.resolve()), "build": g.attrs.get("build"),
                           "rows": [row, row + len(st)]})
        row += len(st)
    flat = [b["name"] for b in builds]
    if len(set(flat)) != len(flat):
        twice = next(n for n in flat if flat.count(n) > 1)
        raise ValueError(f"union: two sources are named {twice!r} once unions in it are opened up as NAME.<source>; "
                         f"name them apart with NAME=PATH")
    index, fails, counts, linked, copied, j = [], [], [], 0, 0, 0
    zarr.open_group(str(root), mode="w")
    zarr.open_group(str(root / "parts"), mode="a")
    for s in srcs:
        for d in _read_index(s):
            part = root / "parts" / part_name(j)
            zarr.open_group(str(part), mode="a")
            name = d["shard"].rsplit("/", 1)[-1]
            n_linked, n_copied = link_tree(s / d["shard"], part / name)
            linked, copied = linked + n_linked, copied + n_copied
            index.append({"shard": f"parts/{part_name(j)}/{name}", "video_ids": d["video_ids"]})
            j += 1
        fails += [{"video_id": v, "reason": r} for v, r in read_failures(s).items()]
        if (s / "filter_counts.jsonl").is_file():
            counts.append((s / "filter_counts.jsonl").read_text())
    g = zarr.open_group(str(root), mode="a")
    g.attrs.update({"format": STORE_FORMAT, "shard_size": max(zarr.open_group(str(s), mode="r").attrs.get("shard_size")
                                                               or 0 for s in srcs),
                    "build": {"union": builds}, "merged_parts": j, "union_of": [str(s.resolve()) for s in srcs]})
    for name, text in (("failures.jsonl", "".join(json.dumps(d) + "\n" for d in fails)),
                       ("filter_counts.jsonl", "".join(counts)),
                       ("index.jsonl", "".join(json.dumps(d) + "\n" for d in index))):   # the index last
        tmp = root / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(root / name)
    made = SessionStore(root)
    return {"sources": len(srcs), "shards": j, "sessions": len(made), "failed": len(fails),
            "files_linked": linked, "files_copied": copied, "store": str(root), "named": made.sources()}
