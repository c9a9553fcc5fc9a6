"""The latent store: a session store passed once through the frozen encoders (``vincie-precompute``).

Training used to DALI-decode and encode the whole corpus into RAM on every rank before step 1
(``data/corpus.py``); at 10M sessions that cannot work. Here the encoders run once, in parts
(a Slurm array or DP ranks), and training streams rows from disk (``data/stream.py``).
Layout and the reasons behind it: docs/latent_store.md. In short, under ``root/`` (zarr v3)::

    zarr.json           attrs: format, n_rows, block_rows, identity (encoders, dtype, image size,
                        recipe text settings), source store, complete (set by ``finalize``)
    blocks/b_NNNNNNN/   rows [N*block_rows, (N+1)*block_rows): one group per block, written whole
      lat       [E]     every image latent of the block, flattened; per session K frames,
                        K-1 source RoE maps, K-1 target RoE maps (zarr sharding codec: one file)
      lat_off   [I+1]   image i is lat[lat_off[i]:lat_off[i+1]], shape lat_shape[i] (C, h, w)
      img_first [S+1]   session s owns images img_first[s]:img_first[s+1]
      txt       [T, D]  text-encoder outputs of every transition text, as the layout emits it
      txt_off   [K'+1]  text j is txt[txt_off[j]:txt_off[j+1]]; session s owns texts
      txt_first [S+1]   txt_first[s]:txt_first[s+1] (K-1 each)
      prompt_*          the fixed texts: mask prompts (source, target) and "" (text dropout); in the
                        official layout the release's negative prompt and ""
      cap, cap_off      only in a store made for text-to-image or -video (``data.recipe.t2i_prob`` or
                        ``t2v_prob`` > 0): every
                        frame's caption encoded, K per session (a session without captions: K empty ones)
      n_frames, hw      per session: K and the latent (h, w)
      record    str[S]  JSON: video_id, texts, cameras (raw), so the recipe can lay a session out
    done/b_NNNNNNN.json a block counts as written only once this file exists (atomic rename)
    index/              after ``finalize``: n_frames, hw, txt_len, txt_first for every row, what
                        the loader's pack planner needs without reading any latent (and cap_len, one
                        per frame, 0 where a session has no captions, in a captioned store)

Precision: ``dtype`` float32 | float16 | bfloat16 (zarr has no bfloat16: stored as its uint16
bits). Reads give float32 tensors, as the encoders do.

Text layout (``TEXT_LAYOUTS``): ``paper`` stores each transition text as our recipe emits it;
``official`` (``model.variant: official``) stores the release's template of each turn
(``data/official_pack.py`` ``official_texts``), whose text encoder reads the whole sentence.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import zarr

from ..paths import link_tree
from .recipe import RecipeConfig, camera_prompt

LATENT_FORMAT = "vincie-latents/1"
DTYPES = ("float32", "float16", "bfloat16")
TEXT_LAYOUTS = ("paper", "official")


def emitted_texts(texts: list[str], cameras: list, camera_prompts: bool, layout: str = "paper") -> list[str]:
    """The strings a session's transition texts are encoded as: the recipe's (the camera tag first with
    ``camera_prompts``), or the release's template of each turn (``official``; turn j's text does not depend
    on how many turns a sample keeps)."""
    if layout == "official":
        from .official_pack import official_texts
        return official_texts(list(texts), list(cameras), camera_prompts)
    return [camera_prompt(t, c) if camera_prompts else t for t, c in zip(texts, cameras)]


def prompt_names(texts_identity: dict) -> list[str]:
    """The fixed texts a store holds (``prompt_*``), from its identity's ``texts``."""
    if texts_identity.get("layout", "paper") == "official":
        return [texts_identity["negative_prompt"], ""]
    return [texts_identity["mask_prompt_src"], texts_identity["mask_prompt_tgt"], ""]


class LatentMismatch(ValueError):
    """A latent store opened or resumed with encoders/precision other than those it was made with."""


# ----------------------------------------------------------------------------- identity

def _config_file_hash(path) -> str | None:
    """sha256 of a local model folder's config.json (what the architecture is), or None."""
    if not path:
        return None
    p = Path(path) / "config.json"
    if not p.is_file():
        p = Path(path) / "vae" / "config.json"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def _digest(d) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def encoder_identity(image_cfg, text_cfg, recipe: RecipeConfig, image_size: int | None, dtype: str,
                     layout: str = "paper") -> dict:
    """What decides the stored numbers: each encoder's name/path and a hash of its config (the
    dataclass without the path, plus the model folder's config.json), the precision, the image
    size, and the text settings (the stored texts are the strings the recipe, or under the
    ``official`` layout the release's template, emits)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    if layout not in TEXT_LAYOUTS:
        raise ValueError(f"layout: expected one of {TEXT_LAYOUTS}, got {layout!r}")

    def enc(cfg):
        d = asdict(cfg)
        path = d.pop("path", None)
        return {"kind": d["kind"], "path": str(path) if path else None,
                "hash": _digest({"config": d, "model_config": _config_file_hash(path)})}

    texts = {"camera_prompts": bool(recipe.camera_prompts), "mask_prompt_src": recipe.mask_prompt_src,
             "mask_prompt_tgt": recipe.mask_prompt_tgt}
    if recipe.captioned:            # frame captions encoded too (a store without serves no T2I/T2V run; _compare)
        texts["captions"] = True
    if layout == "official":        # (a paper-layout identity stays as stores made before layouts existed)
        from ..packed.official import OFFICIAL_NEGATIVE_PROMPT
        texts |= {"layout": "official", "negative_prompt": OFFICIAL_NEGATIVE_PROMPT}
    return {"image_encoder": enc(image_cfg), "text_encoder": enc(text_cfg), "dtype": dtype,
            "image_size": image_size, "texts": texts}


def check_layout(root, have: str, want: str) -> None:
    if have != want:
        raise LatentMismatch(f"latent store {root} holds texts in the {have} layout, this run needs the {want} "
                             f"layout (model.variant): precompute with the run's config")


def _compare(root, have: dict, want: dict) -> None:
    """One line naming what differs (the path of a model folder is informative only); a store of the
    other text layout says so alone (its texts differ wholesale)."""
    check_layout(root, have.get("texts", {}).get("layout", "paper"), want.get("texts", {}).get("layout", "paper"))
    def flat(d, pre=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out |= flat(v, f"{pre}{k}.")
            elif k != "path":
                out[f"{pre}{k}"] = v
        return out
    a, b = flat(have), flat(want)
    if a.get("texts.captions") and not b.get("texts.captions"):
        del a["texts.captions"]                 # a store with captions serves a run without T2I/T2V as well
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise LatentMismatch(f"latent store {root} was made with other encoders/precision ("
                             + "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in diff)
                             + "): run vincie-precompute again into another folder, or train with its settings")


# ----------------------------------------------------------------------------- helpers

def _block_name(b: int) -> str:
    return f"b_{b:07d}"


def _np_store(t: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.uint16).numpy()
    return t.to(getattr(torch, dtype)).numpy()


def _np_load(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.float()


def _zarr_dtype(dtype: str):
    return np.uint16 if dtype == "bfloat16" else np.dtype(dtype)


def source_fingerprint(store) -> str:
    """A hash of what a session store holds: its build settings (root attrs) and the list of its complete
    shards and their videos (``index.jsonl``). A store rebuilt with other settings, or grown, gets another
    one, so a latent store made from its old content is not taken for current."""
    root = Path(store)
    meta = json.loads((root / "zarr.json").read_text()).get("attributes", {})
    index = root / "index.jsonl"
    return _digest({"attrs": meta, "index": index.read_text() if index.is_file() else ""})


def reuse_check(out, identity: dict, store) -> str | None:
    """Why the latent store at ``out`` cannot be resumed or reused as the encoding of session store
    ``store`` under ``identity`` (one line), or None when it can (complete or not: ``precompute`` skips
    the blocks that are done)."""
    try:
        attrs = zarr.open_group(str(out), mode="r").attrs
        if attrs.get("format") != LATENT_FORMAT:
            return f"{out} is not a latent store"
        _compare(out, attrs["identity"], identity)
    except LatentMismatch as e:
        return str(e)
    except Exception as e:                       # not a zarr group, or one without our attrs
        return f"{out} is not a readable latent store ({type(e).__name__})"
    if attrs.get("source", {}).get("fingerprint") != source_fingerprint(store):
        return f"latent store {out} was made from another session store or an older state of {store}"
    return None


def parse_shard(s: str) -> tuple[int, int]:
    """'i/N' -> (i, N); 'auto': torchrun's RANK/WORLD_SIZE (0/1 without them)."""
    if s == "auto":
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected i/N (e.g. 3/64) or 'auto', got {s!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard: need 0 <= i < N, got {s!r}")
    return i, n


# ----------------------------------------------------------------------------- writing

def _open_or_create(out: Path, attrs: dict):
    """The root group; created atomically (built beside, then renamed), so array tasks that start
    together agree on one root, and a second writer with other settings is refused in one line."""
    if not (out / "zarr.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        g = zarr.open_group(str(tmp), mode="w")
        g.attrs.update(attrs)
        g.create_group("blocks")
        (tmp / "done").mkdir()
        try:
            os.rename(tmp, out)
        except OSError:                          # another task won the race (or out/ exists, not a store)
            shutil.rmtree(tmp, ignore_errors=True)
    if not (out / "zarr.json").exists():
        raise FileExistsError(f"{out} exists and is not a latent store: pick another folder")
    g = zarr.open_group(str(out), mode="r+")
    if g.attrs.get("format") != LATENT_FORMAT:
        raise ValueError(f"{out} is not a latent store (format {g.attrs.get('format')!r})")
    _compare(out, g.attrs["identity"], attrs["identity"])
    for k in ("n_rows", "block_rows", "source"):
        if g.attrs.get(k) != attrs[k]:
            raise LatentMismatch(f"latent store {out}: {k} is {g.attrs.get(k)!r} there, {attrs[k]!r} now; "
                                 f"use another folder")
    return g


def _write_text(g, prefix: str, embs: list, dtype: str):
    lens = [int(e.shape[0]) for e in embs]
    dim = int(embs[0].shape[1])
    data = _np_store(torch.cat(embs), dtype)
    rows = max(1, min(len(data), 256))
    g.create_array(prefix, data=data, chunks=(rows, dim), shards=(rows * max(1, -(-len(data) // rows)), dim),
                   compressors=None)
    g.create_array(f"{prefix}_off", data=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))


def _encode_block(sstore, rows, image_encoder, text_encoder, recipe, image_size, dali_device, dtype,
                  texts_identity: dict) -> dict:
    from .corpus import encode_corpus
    from .dali_decode import decode_store

    decoded = decode_store(sstore, rows, size=(image_size, image_size) if image_size else None,
                           device=dali_device, progress=False)
    # a few sessions per encoder call: a VAE at 512 px holds ~100 MB of activations per image
    enc = encode_corpus(decoded, image_encoder, batch=8)
    imgs, shapes, img_first, texts, n_frames, hw, records, captions = [], [], [0], [], [], [], [], []
    for d, e in zip(decoded, enc):
        k = e.frames.shape[0]
        for t in (e.frames, e.roe_src, e.roe_tgt):
            imgs += [x.reshape(-1) for x in t]
            shapes += [tuple(x.shape) for x in t]
        img_first.append(img_first[-1] + 3 * k - 2)
        texts += emitted_texts(d.texts, d.cameras, recipe.camera_prompts, texts_identity.get("layout", "paper"))
        n_frames.append(k)
        hw.append(tuple(e.frames.shape[2:]))
        rec = {"video_id": d.video_id, "texts": list(d.texts), "cameras": list(d.cameras)}
        if texts_identity.get("captions"):
            captions += d.captions or [""] * k          # uncaptioned: K empty entries, never drawn as T2I
            if d.captions:
                rec["captions"] = list(d.captions)
        records.append(json.dumps(rec))
    embs = text_encoder.encode(texts)
    prompts = text_encoder.encode(prompt_names(texts_identity))
    caps = None
    if texts_identity.get("captions"):
        said = iter(text_encoder.encode([c for c in captions if c]) if any(captions) else [])
        empty = prompts[0][:0]                           # [0, D]: no tokens
        caps = [next(said) if c else empty for c in captions]
    text_encoder._cache.clear()               # its per-string cache would grow with the corpus
    return dict(imgs=imgs, shapes=shapes, img_first=img_first, embs=embs, prompts=prompts, n_frames=n_frames,
                hw=hw, records=records, caps=caps)


def _write_block(root: Path, g, b: int, rows: range, data: dict, dtype: str, task: str = "0/1"):
    name = _block_name(b)
    path = root / "blocks" / name
    if path.exists():                          # left by a task that died mid-block: never counted as done
        shutil.rmtree(path)
    bg = g["blocks"].create_group(name)
    bg.attrs["made"] = data["made"]
    lat = _np_store(torch.cat(data["imgs"]), dtype)
    sizes = [int(x.numel()) for x in data["imgs"]]
    chunk = sizes[0] if len(set(sizes)) == 1 else 1 << 16      # one image per chunk when sizes agree
    # sharding codec: the block's latents are one file on disk, read one chunk (image) at a time
    bg.create_array("lat", data=lat, chunks=(chunk,), shards=(chunk * -(-len(lat) // chunk),), compressors=None)
    bg.create_array("lat_off", data=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    bg.create_array("lat_shape", data=np.array(data["shapes"], np.int32).reshape(-1, 3))
    bg.create_array("img_first", data=np.array(data["img_first"], np.int64))
    _write_text(bg, "txt", data["embs"], dtype)
    bg.create_array("txt_first", data=np.concatenate([[0], np.cumsum(np.array(data["n_frames"]) - 1)]).astype(np.int64))
    _write_text(bg, "prompt", data["prompts"], dtype)
    if data.get("caps") is not None:
        _write_text(bg, "cap", data["caps"], dtype)
    bg.create_array("n_frames", data=np.array(data["n_frames"], np.int32))
    bg.create_array("hw", data=np.array(data["hw"], np.int32).reshape(-1, 2))
    rec = bg.create_array("record", shape=(len(data["records"]),), dtype=str)
    rec[:] = np.array(data["records"], dtype=object)
    marker = root / "done" / f"{name}.json"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": [rows.start, rows.stop], "task": task}))   # task: who wrote it (debugging)
    os.replace(tmp, marker)                    # the block counts as done only now


def done_blocks(root) -> set[int]:
    return {int(p.stem[2:]) for p in (Path(root) / "done").glob("b_*.json")}


def precompute(store, out, image_cfg, text_cfg, recipe: RecipeConfig | None = None, *, image_size: int | None = None,
               dtype: str = "float32", shard: tuple[int, int] = (0, 1), block_rows: int = 256,
               limit: int | None = None, device: str | None = None, progress: bool = False,
               finalize_when_done: bool = True, layout: str = "paper") -> dict:
    """Encode this task's blocks of ``store`` into the latent store ``out`` (resumable: blocks
    already done are skipped). Blocks are dealt round-robin: task i of N takes blocks b = i mod N.
    ``layout``: the texts' layout (``TEXT_LAYOUTS``; ``official`` for the released models' variant).
    ``device``: encoders' device (default: cuda:LOCAL_RANK when there is a GPU, else cpu; DALI
    decodes on the same GPU). With ``finalize_when_done`` the task that finds every block done
    writes the index (``finalize``). Returns a summary dict."""
    from ..encoders import TextEncoder, build_image_encoder
    from .dali_decode import devices_used
    from .store import SessionStore

    recipe = recipe or RecipeConfig()
    i, n_tasks = shard
    if not 0 <= i < n_tasks:
        raise ValueError(f"shard: need 0 <= i < N, got {i}/{n_tasks}")
    if block_rows < 1:
        raise ValueError(f"block_rows: must be >= 1, got {block_rows}")
    out = Path(out)
    sstore = SessionStore(store)
    n_rows = len(sstore) if limit is None else min(limit, len(sstore))
    if n_rows == 0:
        raise ValueError(f"{store}: the session store holds no sessions")
    attrs = {"format": LATENT_FORMAT, "n_rows": n_rows, "block_rows": block_rows,
             "identity": encoder_identity(image_cfg, text_cfg, recipe, image_size, dtype, layout),
             "source": {"store": str(Path(store).resolve()), "sessions": len(sstore),
                        "fingerprint": source_fingerprint(store),
                        # a union's sources, by row: what data.corpus.mix weighs (rows past --limit cut)
                        "sources": [[name, min(a, n_rows), min(b, n_rows)] for name, a, b in sstore.sources()]},
             "complete": False}
    g = _open_or_create(out, attrs)
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    dali_device = "cpu" if device == "cpu" else "mixed"      # DALI's GPU: LOCAL_RANK (data/dali_decode.py)
    n_blocks = -(-n_rows // block_rows)
    mine = [b for b in range(i, n_blocks, n_tasks)]
    todo = [b for b in mine if b not in done_blocks(out)]
    t0, written, made = time.perf_counter(), 0, None
    if todo:
        image_encoder = build_image_encoder(image_cfg, device=device)
        text_encoder = TextEncoder(text_cfg, device=device)
        for b in todo:
            rows = range(b * block_rows, min((b + 1) * block_rows, n_rows))
            data = _encode_block(sstore, rows, image_encoder, text_encoder, recipe, image_size, dali_device, dtype,
                                 attrs["identity"]["texts"])
            # where decoding and encoding really ran: a block's attrs, read by gpu_check's train smoke
            made = data["made"] = {"decoder": "dali", "dali": devices_used(), "encoder_device": str(device)}
            _write_block(out, g, b, rows, data, dtype, f"{i}/{n_tasks}")
            written += len(rows)
            if progress:
                print(f"block {b}: rows {rows.start}-{rows.stop - 1} ({written} rows, "
                      f"{time.perf_counter() - t0:.1f} s)", flush=True)
    summary = {"store": str(out), "shard": f"{i}/{n_tasks}", "blocks": len(mine), "skipped": len(mine) - len(todo),
               "rows_written": written, "seconds": round(time.perf_counter() - t0, 2), "made": made}
    if finalize_when_done and len(done_blocks(out)) == n_blocks:
        summary["finalized"] = finalize(out)
    return summary


def finalize(out) -> dict:
    """Check that every block is done and gather the per-row index the loader plans packs from.
    Idempotent; run once after all tasks (slurm/precompute.sh's check job)."""
    out = Path(out)
    g = zarr.open_group(str(out), mode="r+")
    if g.attrs.get("format") != LATENT_FORMAT:
        raise ValueError(f"{out} is not a latent store (format {g.attrs.get('format')!r})")
    if g.attrs.get("union_of"):
        raise ValueError(f"latent store {out} is a union of latent stores: complete as made, nothing to finalize")
    n_rows, block_rows = int(g.attrs["n_rows"]), int(g.attrs["block_rows"])
    n_blocks = -(-n_rows // block_rows)
    missing = sorted(set(range(n_blocks)) - done_blocks(out))
    if missing:
        raise RuntimeError(f"latent store {out}: {len(missing)} of {n_blocks} blocks not written "
                           f"(first: {missing[:5]}); rerun their vincie-precompute tasks")
    captioned = bool(g.attrs["identity"]["texts"].get("captions"))
    n_frames, hw, txt_len, cap_len = [], [], [], []
    for b in range(n_blocks):
        bg = g["blocks"][_block_name(b)]
        n_frames.append(bg["n_frames"][:])
        hw.append(bg["hw"][:])
        txt_len.append(np.diff(bg["txt_off"][:]))
        if captioned:
            cap_len.append(np.diff(bg["cap_off"][:]))
    n_frames, hw, txt_len = np.concatenate(n_frames), np.concatenate(hw), np.concatenate(txt_len)
    if len(n_frames) != n_rows:
        raise RuntimeError(f"latent store {out}: blocks hold {len(n_frames)} rows, expected {n_rows}")
    ig = g.require_group("index")
    for name, arr in (("n_frames", n_frames.astype(np.uint16)), ("hw", hw.astype(np.uint16)),
                      ("txt_len", txt_len.astype(np.uint16)),
                      ("txt_first", np.concatenate([[0], np.cumsum(n_frames.astype(np.int64) - 1)]))):
        ig.create_array(name, data=arr, overwrite=True)
    p = g["blocks"][_block_name(0)]
    summary = {"rows": n_rows, "images": int((3 * n_frames.astype(np.int64) - 2).sum()), "texts": int(len(txt_len)),
               "prompt_lens": np.diff(p["prompt_off"][:]).tolist()}
    if captioned:
        cap_len = np.concatenate(cap_len).astype(np.uint16)
        ig.create_array("cap_len", data=cap_len, overwrite=True)
        summary["captioned_rows"] = int((cap_len[np.cumsum(n_frames.astype(np.int64)) - n_frames] > 0).sum())
    g.attrs.update({"complete": True, "summary": summary})
    return summary


def union(out, sources) -> dict:
    """One latent store reading every row of ``sources`` (complete latent stores of one identity: the same
    encoders, precision, image size, recipe texts and layout), so sessions encoded apart (a video corpus,
    fine-tuning datasets) train together without encoding anything again: each source block is hard-linked
    in (copied only across filesystems), the row index is concatenated, and ``index/block_first`` records
    where each block starts (blocks of different sizes, and the sources' short last blocks, follow one
    another). A source is a path or ``NAME=PATH`` (``sharded.source_names``); ``sources()`` gives each
    name's rows, which ``data.corpus.mix`` weighs (a source that is itself a union joins as its own
    sources, ``NAME.<source>``: mix weighs them, or ``NAME`` for all of them). -> summary counts."""
    from .sharded import source_names

    out = Path(out)
    if out.exists():
        raise ValueError(f"union: {out} exists already; give a new folder")
    names, paths = source_names(sources)
    if len(paths) < 2:
        raise ValueError(f"union: needs two or more latent stores, got {len(paths)}")
    stores = [LatentStore(p) for p in paths]                  # each checked: a complete latent store
    for p, st in zip(paths[1:], stores[1:]):
        _compare(p, st.identity, stores[0].identity)         # one line naming the first key that differs
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp), mode="w")
    g.create_group("blocks")
    starts, rows, named, linked, copied, j = [0], 0, [], 0, 0, 0
    captioned = bool(stores[0].identity["texts"].get("captions"))
    index = {k: [] for k in ("n_frames", "hw", "txt_len") + (("cap_len",) if captioned else ())}
    for name, p, st in zip(names, paths, stores):
        for b in range(st.n_blocks):
            n_linked, n_copied = link_tree(p / "blocks" / _block_name(b), tmp / "blocks" / _block_name(j))
            linked, copied = linked + n_linked, copied + n_copied
            starts.append(starts[-1] + (st.block_start(b + 1) - st.block_start(b)))
            j += 1
        idx = st.index()
        for k in index:
            index[k].append(idx[k])
        subs = st.sources()           # a union joins as its sources, NAME.<source>, as session unions do
        named += [[f"{name}.{sub}", rows + a, rows + b] for sub, a, b in subs] or [[name, rows, rows + len(st)]]
        rows += len(st)
    flat = [n for n, _, _ in named]
    if len(set(flat)) != len(flat):
        shutil.rmtree(tmp, ignore_errors=True)
        twice = next(n for n in flat if flat.count(n) > 1)
        raise ValueError(f"union: two sources are named {twice!r} once unions in it are opened up as NAME.<source>; "
                         f"name them apart with NAME=PATH")
    n_frames = np.concatenate(index["n_frames"])
    ig = g.create_group("index")
    for k, arr in (("n_frames", n_frames), ("hw", np.concatenate(index["hw"])),
                   ("txt_len", np.concatenate(index["txt_len"])),
                   ("txt_first", np.concatenate([[0], np.cumsum(n_frames.astype(np.int64) - 1)])),
                   ("block_first", np.array(starts, np.int64))) + \
            ((("cap_len", np.concatenate(index["cap_len"])),) if captioned else ()):
        ig.create_array(k, data=arr)
    summary = {"rows": rows, "images": int((3 * n_frames.astype(np.int64) - 2).sum()),
               "texts": int(sum(len(x) for x in index["txt_len"])),
               "prompt_lens": stores[0].attrs["summary"]["prompt_lens"]}
    g.attrs.update({"format": LATENT_FORMAT, "n_rows": rows, "block_rows": 0, "identity": stores[0].identity,
                    "union_of": [str(p.resolve()) for p in paths],
                    "source": {"union_of": [{"name": n, "latents": str(p.resolve()), "source": st.attrs.get("source")}
                                            for n, p, st in zip(names, paths, stores)], "sources": named},
                    "complete": True, "summary": summary})
    os.rename(tmp, out)
    return {"sources": len(paths), "rows": rows, "blocks": j, "files_linked": linked, "files_copied": copied,
            "named": [tuple(x) for x in named], "out": str(out)}


# ----------------------------------------------------------------------------- reading

RESIDENT_MB = 512
"""A store whose latents and texts take at most this many MB (and at most ``RESIDENT_BLOCKS`` blocks)
is read whole, a block at a time, and kept: a row is then a numpy slice instead of two zarr reads
(~1-4 ms each, most of it the hand-off to zarr's I/O thread; on 2 cores the demo's workers spent a
fifth of the machine on them). Larger stores are read a row at a time."""
RESIDENT_BLOCKS = 64


class LatentStore:
    """Read-only view of a finalized latent store.

    ``expect`` (an ``encoder_identity``): refuse, in one line, a store made with other encoders or
    precision. ``index()`` is the per-row table the pack planner needs (loaded on first use);
    ``session(row)`` reads one row (a small store is held in RAM: ``RESIDENT_MB``). A handle opened
    before a fork is reopened in the child; a pickled store (a worker started by a fork server)
    carries no handle and no cached block."""

    def __init__(self, root, expect: dict | None = None):
        self.root = Path(root)
        if not (self.root / "zarr.json").exists():
            raise FileNotFoundError(f"no latent store at {self.root}")
        g = zarr.open_group(str(self.root), mode="r")
        if g.attrs.get("format") != LATENT_FORMAT:
            raise ValueError(f"{self.root} is not a latent store (format {g.attrs.get('format')!r})")
        if not g.attrs.get("complete"):
            raise ValueError(f"latent store {self.root} is incomplete: run every vincie-precompute task, "
                             f"then vincie-precompute finalize --out {self.root}")
        self.attrs = dict(g.attrs)
        self.identity = self.attrs["identity"]
        if expect is not None:
            _compare(self.root, self.identity, expect)
        self.dtype = self.identity["dtype"]
        self.n_rows, self.block_rows = int(self.attrs["n_rows"]), int(self.attrs["block_rows"])
        self._pid, self._g, self._index, self._prompts, self._whole = None, None, None, None, None
        self._blocks: OrderedDict = OrderedDict()
        # a union's blocks differ in size: where each starts (n_blocks + 1 ints, 8 bytes a block)
        self._starts = None
        if self.attrs.get("union_of"):
            try:
                self._starts = np.asarray(g["index"]["block_first"][:], np.int64)
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"latent store {self.root}: a union without its block table "
                                 f"(index/block_first)") from None
            if not (self._starts.ndim == 1 and len(self._starts) >= 2 and self._starts[0] == 0
                    and self._starts[-1] == self.n_rows and np.all(np.diff(self._starts) > 0)):
                raise ValueError(f"latent store {self.root}: its block table does not tile its {self.n_rows} rows")

    @property
    def n_blocks(self) -> int:
        return len(self._starts) - 1 if self._starts is not None else -(-self.n_rows // self.block_rows)

    def block_start(self, b: int) -> int:
        """The first row of block b (``n_rows`` for b = ``n_blocks``)."""
        return int(self._starts[b]) if self._starts is not None else min(b * self.block_rows, self.n_rows)

    def _locate(self, row: int) -> tuple[int, int]:
        """(block, position in it) of a row."""
        if self._starts is None:
            return row // self.block_rows, row % self.block_rows
        b = int(np.searchsorted(self._starts, row, side="right")) - 1
        return b, row - int(self._starts[b])

    def __len__(self) -> int:
        return self.n_rows

    def __getstate__(self):
        # sent to a DataLoader worker: no open zarr handles (the worker opens its own), no cached
        # block, and not the planner's index (~30 B a session, the main process's alone)
        return self.__dict__ | {"_pid": None, "_g": None, "_blocks": OrderedDict(), "_index": None}

    def _group(self):
        if self._pid != os.getpid():             # fresh handles per process (DataLoader workers)
            self._g, self._pid, self._blocks = zarr.open_group(str(self.root), mode="r"), os.getpid(), OrderedDict()
        return self._g

    @property
    def captioned(self) -> bool:
        """Whether the store holds frame captions (made for text-to-image or -video, ``data.recipe.t2i_prob``,
        ``t2v_prob``)."""
        return bool(self.identity["texts"].get("captions"))

    def index(self) -> dict:
        """numpy arrays: n_frames [n], hw [n, 2], txt_len [sum(K-1)], txt_first [n+1]; ~13 bytes a row
        plus 2 a transition (docs/latent_store.md, memory). A captioned store adds cap_len [sum(K)] (0: the
        session has no captions) and cap_first [n+1], 2 bytes a frame more."""
        if self._index is None:
            ig = self._group()["index"]
            self._index = {k: ig[k][:] for k in ("n_frames", "hw", "txt_len", "txt_first")}
            if self.captioned:
                self._index["cap_len"] = ig["cap_len"][:]
                self._index["cap_first"] = np.concatenate([[0], np.cumsum(self._index["n_frames"].astype(np.int64))])
        return self._index

    def sources(self) -> list[tuple[str, int, int]]:
        """The session store's union sources as (name, first row, end row) (``SessionStore.sources``),
        [] when it was one store; checked to tile the rows, since the store may come from elsewhere."""
        src = self.attrs.get("source", {}).get("sources") or []
        out, at = [], 0
        for d in src:
            ok = isinstance(d, list) and len(d) == 3 and isinstance(d[0], str) and all(isinstance(x, int) for x in d[1:])
            if not ok or d[1] != at or d[2] < d[1]:
                raise ValueError(f"latent store {self.root}: source {d!r} does not continue at row {at}")
            out.append(tuple(d))
            at = d[2]
        if out and (at != self.n_rows or len({n for n, _, _ in out}) != len(out)):
            raise ValueError(f"latent store {self.root}: its sources cover {at} of {self.n_rows} rows or repeat a name")
        return out

    @property
    def resident(self) -> bool:
        """Whether rows are served from whole blocks kept in RAM (decided once, from array metadata)."""
        if self._whole is None:
            n_blocks = self.n_blocks
            self._whole = False
            if n_blocks <= RESIDENT_BLOCKS:
                blocks = self._group()["blocks"]
                nbytes = sum(blocks[_block_name(b)][k].nbytes for b in range(n_blocks)
                             for k in ("lat", "txt") + (("cap",) if self.captioned else ()))
                self._whole = nbytes <= RESIDENT_MB * 2**20
        return self._whole

    @property
    def layout(self) -> str:
        return self.identity["texts"].get("layout", "paper")

    def prompts(self) -> dict[str, torch.Tensor]:
        """{fixed text: embedding}: the mask prompts (source, target) and "" (text dropout); in the
        official layout the release's negative prompt and ""."""
        if self._prompts is None:
            bg = self._group()["blocks"][_block_name(0)]
            t, off = bg["prompt"][:], bg["prompt_off"][:]
            names = prompt_names(self.identity["texts"])
            self._prompts = {s: _np_load(t[off[j]:off[j + 1]], self.dtype) for j, s in enumerate(names)}
        return self._prompts

    def _block(self, b: int) -> dict:
        """A block's arrays and its small tables (a few blocks kept, least recently used out)."""
        if b in self._blocks:
            self._blocks.move_to_end(b)
            return self._blocks[b]
        bg = self._group()["blocks"][_block_name(b)]
        whole = self.resident
        cap = self.captioned
        blk = {k: bg[k][:] if whole else bg[k] for k in ("lat", "txt") + (("cap",) if cap else ())}
        blk |= {k: bg[k][:] for k in ("lat_off", "lat_shape", "img_first", "txt_off", "txt_first", "record")
                + (("cap_off",) if cap else ())}
        if cap:                                   # session s owns captions cap_first[s]:cap_first[s+1] (K each)
            blk["cap_first"] = np.concatenate([[0], np.cumsum(bg["n_frames"][:].astype(np.int64))])
        self._blocks[b] = blk
        if len(self._blocks) > 8 and not whole:
            self._blocks.popitem(last=False)
        return blk

    def session(self, row: int):
        """(EncodedSession, {emitted text: embedding [L, D]}) of one row: frames [K, C, h, w], RoE maps
        [K-1, C, h, w], raw texts and cameras (and, in a captioned store, the frame captions); the dict maps
        each transition text as the store's layout emits it (``emitted_texts``), and each caption."""
        from .packing import EncodedSession

        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} out of range for a latent store of {self.n_rows}")
        b, s = self._locate(row)
        blk = self._block(b)
        i0, i1 = int(blk["img_first"][s]), int(blk["img_first"][s + 1])
        off = blk["lat_off"]
        # a resident block's slice is a view: copied, since callers may write into what they get
        own = np.copy if self.resident else np.asarray
        flat = _np_load(own(blk["lat"][int(off[i0]):int(off[i1])]), self.dtype)
        imgs = [flat[off[i] - off[i0]:off[i + 1] - off[i0]].reshape(*blk["lat_shape"][i]) for i in range(i0, i1)]
        k = (i1 - i0 + 2) // 3
        t0, t1 = int(blk["txt_first"][s]), int(blk["txt_first"][s + 1])
        toff = blk["txt_off"]
        tflat = _np_load(own(blk["txt"][int(toff[t0]):int(toff[t1])]), self.dtype)
        embs = [tflat[toff[j] - toff[t0]:toff[j + 1] - toff[t0]] for j in range(t0, t1)]
        rec = json.loads(str(blk["record"][s]))
        emitted = emitted_texts(rec["texts"], rec["cameras"], self.identity["texts"]["camera_prompts"], self.layout)
        captions = rec.get("captions") if self.captioned else None
        sess = EncodedSession(frames=torch.stack(imgs[:k]), texts=rec["texts"], cameras=rec["cameras"],
                              roe_src=torch.stack(imgs[k:2 * k - 1]), roe_tgt=torch.stack(imgs[2 * k - 1:]),
                              meta={"video_id": rec["video_id"], "row": row}, captions=captions)
        texts = dict(zip(emitted, embs))
        if captions:                                 # frame j's caption: entry c0 + j
            c0 = int(blk["cap_first"][s])
            coff = blk["cap_off"]
            cflat = _np_load(own(blk["cap"][int(coff[c0]):int(coff[c0 + k])]), self.dtype)
            texts |= {c: cflat[coff[c0 + j] - coff[c0]:coff[c0 + j + 1] - coff[c0]] for j, c in enumerate(captions)}
        return sess, texts
