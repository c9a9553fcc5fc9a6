"""A streaming loader over a latent store (``data/latents.py``): packed batches from disk.

Order, in three layers (docs/latent_store.md, "Order"):

1. **Subset.** One fixed permutation of the store's rows (``subset_seed``, not the run's seed);
   ``max_sessions=N`` keeps its first N. A smaller run's sessions lie inside a larger run's.
2. **Epoch order.** The subset's units shuffled by (seed, epoch): a sequence of *global
   positions*. A unit is a session, or under ``recipe.pairwise`` (paper Table 5) one of its
   transitions as a 2-frame session. The recipe's random choices of position p are drawn from
   (seed, epoch, p), so a unit's sample does not depend on how positions are grouped.
   With ``mix`` (weights of a union's sources, ``mix_quotas``) an epoch draws each source's share of
   its length from that source's own endless sequence of shuffled passes, then shuffles the draws.
3. **Packs.** Positions are packed greedily, in order, to ``pack.token_budget`` (a session that would
   overflow starts the next pack; a pack never crosses an epoch). Pack k is the k-th of this global
   sequence whatever the DP size. A step takes ``dp_size * micro_batches`` packs: rank r's a-th
   micro-batch of the step that starts at pack h is pack h + a*dp_size + r.

Token counts come from a small per-row index (frames, latent size, text lengths) held by the main
process; every rank walks the whole pack sequence through that index but reads latents only for
its own packs, in DataLoader workers that build each session's sample with ``data/recipe.py`` and
pack it with ``data/packing.py pack`` (or, for the released models' variant, ``OfficialLayout``: one
target per session in the release's layout, ``data/official_pack.py``). The state
``{epoch, pos, pack, consumed, step_packs}`` names
the first pack of the current step, how many of its packs are done and how many it has: equal on
every rank, so a resume with another DP size continues the same global order (a step that ended
may be followed by steps of any size; one stopped between micro-batches needs the same layout).
"""
from __future__ import annotations

import functools
import json
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from .latents import LatentMismatch, LatentStore, check_layout
from .packing import PackConfig, pack
from .recipe import T2V, RecipeConfig, build_sample, draw_plan, pairwise_sessions
from ..config import ConfigError
from ..signals import become_helper, helper_context


def subset_rows(n_rows: int, max_sessions: int | None, subset_seed: int = 0) -> np.ndarray:
    """The first ``max_sessions`` rows of one fixed permutation of ``range(n_rows)`` (all when None)."""
    if max_sessions is not None and max_sessions < 1:
        raise ValueError(f"max_sessions: must be >= 1 or None, got {max_sessions}")
    perm = np.random.default_rng([subset_seed, 0x5E55]).permutation(n_rows)
    dt = np.uint32 if n_rows < 2 ** 32 else np.int64              # 4 bytes a row at 10M: 40 MB
    return perm[:max_sessions].astype(dt)


MIX_TAG = 0x6D6978        # seeds a source's passes apart from the epoch shuffles


def check_mix(mix: dict, sources: list, counts: dict, where: str = "data.corpus.mix") -> dict[str, float]:
    """A mix's names and weights against the corpus's sources ((name, first row, end row)) and their unit
    counts -> the weight of each source drawn (weight > 0), in source order; one line naming the key
    otherwise. A key may also name a union that became part of this one (its sources are ``KEY.<name>``):
    its weight is shared among them by their counts, as if they were one source. Both the epoch order
    (``mix_quotas``) and the official variant's random draws (``build.official_weights``) check here."""
    names = [n for n, _, _ in sources]
    if not names:
        raise ConfigError(f"{where}: the corpus is one store, not a union; there are no sources to weigh "
                          f"(vincie-build-sessions union, vincie-precompute union)")
    leaf: dict[str, float] = {}
    for k, w in mix.items():
        group = [k] if k in names else [n for n in names if n.startswith(f"{k}.")]
        if not group:
            raise ConfigError(f"{where}: no source {k!r} in the corpus (its sources: {', '.join(names)})")
        if not (isinstance(w, (int, float)) and w >= 0):
            raise ConfigError(f"{where}.{k}: a weight must be a number >= 0, got {w!r}")
        both = [n for n in group if n in leaf] + [o for o in mix if o != k and o in group]
        if both:
            raise ConfigError(f"{where}: {k!r} and {both[0]!r} weigh the same sessions; give one of them")
        size = sum(counts[n] for n in group)
        for n in group:
            leaf[n] = float(w) * (counts[n] / size if size else 1.0 / len(group))
    used = {n: leaf[n] for n in names if leaf.get(n, 0) > 0}
    if not used:
        raise ConfigError(f"{where}: every weight is 0")
    empty = [n for n in used if counts[n] == 0]
    if empty:
        raise ConfigError(f"{where}.{empty[0]}: the source has no sessions in this run (max_sessions?)")
    return used


def mix_quotas(mix: dict, sources: list, counts: dict, where: str = "data.corpus.mix") -> dict:
    """Draws per epoch for each weighted source: the epoch is as long as the weighted sources' units
    together, shared in proportion to the weights (largest remainders, so they sum exactly).
    ``sources``: the store's (name, first row, end row); ``counts``: units per source name.
    A source left out of ``mix`` (or weighted 0) is not drawn."""
    return quotas(check_mix(mix, sources, counts, where), [n for n, _, _ in sources], counts, where)


def quotas(used: dict, names: list, counts: dict, where: str = "data.corpus.mix") -> dict:
    """``mix_quotas`` from ``check_mix``'s weights (``names``: every source, in order)."""
    total, wsum = sum(counts[n] for n in used), sum(used.values())
    exact = {n: used[n] / wsum * total for n in used}
    q = {n: int(np.floor(exact[n])) for n in used}
    for n in sorted(used, key=lambda n: (q[n] - exact[n], names.index(n)))[:total - sum(q.values())]:
        q[n] += 1
    zero = [n for n in used if q[n] == 0]
    if zero:
        raise ConfigError(f"{where}.{zero[0]}: its weight gives it 0 of an epoch's {total} draws; raise it")
    return q


@dataclass(frozen=True)
class OfficialLayout:
    """Samples in the released models' layout (``model.variant: official``, docs/official.md): each
    session keeps k+1 frames, k drawn uniformly from its transitions (capped by ``recipe.max_frames``),
    the last the one target; its text is dropped with probability ``text_drop`` to ``uncond``'s texts.
    The same draws as ``official_pack.OfficialStream``, here per global position. The store must hold
    the official text layout (``vincie-precompute`` with the official config)."""
    model_cfg: object                # MMDiTConfig: text_dim, the RoPE origin (official_session_batch)
    text_drop: float = 0.1
    uncond: str = "negative"


@dataclass(frozen=True)
class OfficialPlan:
    """One official sample: frames 0..k kept (target k), and whether its text was dropped."""
    k: int
    dropped: bool


PAIR_STRIDE = 1 << 10
"""A pairwise unit's key: ``row * PAIR_STRIDE + i`` for the pair (I_i, T_i, I_{i+1}) of session ``row``."""


def unit_of(key: int, pairwise: bool) -> tuple[int, int | None]:
    """(session row, pair index or None) of a planner unit key."""
    return divmod(int(key), PAIR_STRIDE) if pairwise else (int(key), None)


class PackPlanner:
    """The global pack sequence, from the per-row index only (no latent is read here).

    The order walks *units*: a unit is a session (its key is the row), or under
    ``recipe.pairwise`` (paper Table 5's pairwise arm) one of a session's K-1 pairs
    (I_i, T_i, I_{i+1}) as a 2-frame session (key ``row * PAIR_STRIDE + i``). The subset is of
    sessions in both cases, so the two arms see the same sessions, every transition once an epoch."""

    def __init__(self, index: dict, prompt_lens: dict, recipe: RecipeConfig, pack_cfg: PackConfig, seed: int = 0,
                 max_sessions: int | None = None, subset_seed: int = 0, official: OfficialLayout | None = None,
                 mix: dict | None = None, sources: list | None = None):
        self.idx, self.prompt_lens, self.recipe, self.cfg, self.seed = index, prompt_lens, recipe, pack_cfg, seed
        self.official = official
        self.rows = subset_rows(len(index["n_frames"]), max_sessions, subset_seed)
        self.pairwise = bool(recipe.pairwise)
        if self.pairwise and official is not None:
            raise ValueError("data.recipe.pairwise: the official variant trains whole sessions, one target each")
        self.units = self.rows
        # text-to-image / -video (recipe.t2i_prob, t2v_prob): which rows are captioned (cap_len of frame 0 > 0)
        self.captioned = None
        if recipe.captioned and official is None:
            key = "data.recipe." + ("t2i_prob" if recipe.t2i_prob > 0 else "t2v_prob")
            if "cap_len" not in index:
                raise ConfigError(f"{key}: the latent store holds no frame captions; precompute it "
                                  "with the run's config (t2i_prob or t2v_prob > 0 encodes them)")
            self.captioned = index["cap_len"][index["cap_first"][:-1]] > 0
            if not self.captioned[self.rows].any():
                raise ConfigError(f"{key}: no session of this run has frame captions (the session "
                                  "store's annotator gave none: the synthetic world's and a VLM's do)")
        if self.pairwise:
            pairs = index["n_frames"][self.rows].astype(np.int64) - 1
            if pairs.size and pairs.max() >= PAIR_STRIDE:
                raise ValueError(f"data.recipe.pairwise: a session has {int(pairs.max()) + 1} frames; "
                                 f"the pairwise stream takes at most {PAIR_STRIDE}")
            # 8 bytes a transition: fine for an ablation's corpus (10M sessions of 5 frames: 320 MB)
            first = np.repeat(np.cumsum(pairs) - pairs, pairs)
            self.units = np.repeat(self.rows.astype(np.int64) * PAIR_STRIDE, pairs) + np.arange(len(first)) - first
        self._order = (None, None)
        self.mix = None                          # [(name, its units, draws an epoch, weight)]
        if mix:
            sources = sources or []
            row = self.units // PAIR_STRIDE if self.pairwise else self.units
            of = {n: (row >= a) & (row < b) for n, a, b in sources}
            counts = {n: int(m.sum()) for n, m in of.items()}
            w = check_mix(mix, sources, counts)
            q = quotas(w, [n for n, _, _ in sources], counts)
            self.mix = [(n, self.units[of[n]], q[n], w[n]) for n, _, _ in sources if n in q]
            self.units = np.concatenate([u for _, u, _, _ in self.mix])   # what an epoch is as long as

    def order(self, epoch: int) -> np.ndarray:
        """Unit keys by global position in ``epoch`` (one epoch's permutation kept)."""
        if self._order[0] != epoch:
            units = self.units if self.mix is None else self._mixed_draws(epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(units))
            self._order = (epoch, units[perm])
        return self._order[1]

    def _mixed_draws(self, epoch: int) -> np.ndarray:
        """Each source's quota for ``epoch``: positions [e*q, (e+1)*q) of its endless sequence of passes,
        pass c a permutation drawn from (seed, source, c). A source drawn less than its size sees every
        unit once before any repeats; one drawn more repeats each unit a whole number of times, +-1."""
        out = []
        for g, (_, units, q, _) in enumerate(self.mix):
            n = len(units)
            p0, p1 = epoch * q, (epoch + 1) * q
            c0, c1 = p0 // n, (p1 - 1) // n
            seq = np.concatenate([units[np.random.default_rng([self.seed, MIX_TAG, g, c]).permutation(n)]
                                  for c in range(c0, c1 + 1)])
            out.append(seq[p0 - c0 * n:p1 - c0 * n])
        return np.concatenate(out)

    def mix_summary(self) -> list[dict]:
        """Per weighted source: units, weight, draws an epoch and passes over it an epoch (for the log)."""
        wsum = sum(w for *_, w in self.mix or [])
        return [{"source": n, "units": len(u), "weight": round(w / wsum, 4), "draws_per_epoch": q,
                 "passes_per_epoch": round(q / len(u), 3)} for n, u, q, w in self.mix or []]

    def plan(self, epoch: int, pos: int, key: int):
        rng = np.random.default_rng([self.seed, epoch, pos])
        row, pair = unit_of(key, self.pairwise)
        if self.official is not None:
            from .official_pack import uncond_texts

            n = min(int(self.idx["n_frames"][row]), self.recipe.max_frames) - 1
            if n < 1:
                raise ValueError(f"latent store row {row} has {n + 1} frame(s) to train on; a session needs 2")
            k = int(rng.integers(n)) + 1                        # OfficialStream.draw's order: k, then the drop
            dropped = bool(rng.random() < self.official.text_drop)
            uncond_texts(k, self.official.uncond)               # a bad flow.uncond_text fails here, not in a worker
            return OfficialPlan(k, dropped)
        return draw_plan(2 if pair is not None else int(self.idx["n_frames"][row]), self.recipe, rng, has_roe=True,
                         has_captions=self.captioned is not None and bool(self.captioned[row]))

    def _official_tokens(self, row: int, plan: OfficialPlan) -> int:
        """The release's layout: each kept turn's text (or the unconditional texts) + its <TURN> token,
        then frames 0..k."""
        from .official_pack import uncond_texts

        h, w = (int(x) for x in self.idx["hw"][row])
        p = self.cfg.patch_size
        if plan.dropped:
            txt = sum(self.prompt_lens[t] + 1 for t in uncond_texts(plan.k, self.official.uncond))
        else:
            first = int(self.idx["txt_first"][row])
            txt = int(self.idx["txt_len"][first:first + plan.k].sum()) + plan.k
        return txt + (plan.k + 1) * (h // p) * (w // p)

    def tokens(self, key: int, plan) -> int:
        """Joint tokens of unit ``key``'s sample under ``plan``: the recipe's blocks (laid out with
        placeholder texts), each text its stored length + the <TURN> token, each image h/p * w/p."""
        if self.official is not None:
            return self._official_tokens(int(key), plan)
        n = plan.num_turns + (plan.target_turn if plan.task == T2V else 0)    # a T2V window reads texts from its start
        sample = build_sample([""] * n, [None] * n, plan, self.recipe, captions=[""] * (plan.target_turn + 1))
        p = self.cfg.patch_size
        row, pair = unit_of(key, self.pairwise)
        h, w = (int(x) for x in self.idx["hw"][row])
        first = int(self.idx["txt_first"][row]) + (pair or 0)
        tok = 0
        for b in sample.blocks:
            if b.modality != "text":
                tok += (h // p) * (w // p)
            elif b.role == "caption":               # frame j's caption (a pair's frames are j = pair, pair + 1)
                tok += int(self.idx["cap_len"][int(self.idx["cap_first"][row]) + (pair or 0) + plan.target_turn]) + 1
            elif b.role == "text":                  # a T2V window's text j is transition start + j
                tok += int(self.idx["txt_len"][first + b.turn + (plan.target_turn if plan.task == T2V else 0)]) + 1
            else:
                tok += self.prompt_lens[b.text] + 1
        return tok

    def packs(self, epoch: int, pos: int, k: int):
        """Endless (k, epoch, start position, [(position, unit key, plan), ...]) from pack k at (epoch, pos)."""
        budget = self.cfg.token_budget
        while True:
            order = self.order(epoch)
            start, items, used = pos, [], 0
            while pos < len(order):
                key = int(order[pos])
                plan = self.plan(epoch, pos, key)
                n = self.tokens(key, plan)
                if items and used + n > budget:
                    break
                items.append((pos, key, plan))
                used += n
                pos += 1
            yield k, epoch, start, items
            k += 1
            if pos >= len(order):
                epoch, pos = epoch + 1, 0

    def rank_packs(self, state: dict, rank: int, dp_size: int, micro_batches: int = 1):
        """This rank's pack descriptors from ``state`` on, each with the stream state after it."""
        h, c = int(state["pack"]), int(state["consumed"])
        per_step = dp_size * micro_batches
        saved_step = int(state.get("step_packs", c))
        if c < saved_step and saved_step != per_step:
            raise ValueError(f"data stream state: saved between micro-batches of a {saved_step}-pack step; "
                             f"resume it with the same layout (now {per_step} packs a step)")
        walk = self.packs(int(state["epoch"]), int(state["pos"]), h)
        # a saved step that ended (any layout) starts the next step at pack h + c;
        # one stopped between micro-batches (same layout) finishes its step first
        k0 = h + c if c == saved_step else h
        head = None
        for k, epoch, start, items in walk:
            j = (k - k0) % per_step
            if j == 0:
                head = {"epoch": epoch, "pos": start, "pack": k}
            if k < h + c:                                        # done before the save
                continue
            if j % dp_size == rank:
                yield {"pack": k, "items": items,
                       "state": head | {"consumed": (j // dp_size + 1) * dp_size, "step_packs": per_step}}


class _Descriptors:
    """The DataLoader's sampler: this rank's packs, produced in the main process."""

    def __init__(self, planner, state, rank, dp_size, micro_batches):
        self.args = (planner, state, rank, dp_size, micro_batches)

    def __iter__(self):
        planner, state, rank, dp_size, micro = self.args
        return planner.rank_packs(state, rank, dp_size, micro)


class _PackDataset(torch.utils.data.Dataset):
    """In a worker: read a pack's rows, lay each out with the recipe under its drawn plan, pack."""

    def __init__(self, store: LatentStore, recipe: RecipeConfig, pack_cfg: PackConfig,
                 official: OfficialLayout | None = None):
        self.store, self.recipe, self.cfg, self.official = store, recipe, pack_cfg, official

    def _official(self, desc):
        from .latents import emitted_texts
        from .official_pack import official_pack, uncond_texts

        items, embs = [], dict(self.store.prompts())
        cam = self.store.identity["texts"]["camera_prompts"]
        for _pos, row, plan in desc["items"]:
            sess, e = self.store.session(int(row))
            embs |= e
            texts = uncond_texts(plan.k, self.official.uncond) if plan.dropped else \
                emitted_texts(sess.texts[:plan.k], sess.cameras[:plan.k], cam, "official")
            items.append((sess.frames[:plan.k + 1], texts))
        batch = official_pack(items, lambda texts: [embs[t] for t in texts], self.official.model_cfg, self.cfg)
        return batch, desc["state"], desc["pack"], [int(k) for _, k, _ in desc["items"]]

    def __getitem__(self, desc):
        if self.official is not None:
            return self._official(desc)
        items, embs = [], dict(self.store.prompts())
        for _pos, key, plan in desc["items"]:
            row, pair = unit_of(key, self.recipe.pairwise)
            sess, e = self.store.session(row)
            if pair is not None:                       # the pair as a 2-frame session (views, not copies)
                sess = pairwise_sessions([sess])[pair]
            embs |= e
            items.append((build_sample(sess.texts, sess.cameras, plan, self.recipe, sess.captions), sess))
        batch = pack(items, lambda texts: [embs[t] for t in texts], self.cfg, self.recipe.mask_type)
        return batch, desc["state"], desc["pack"], [int(k) for _, k, _ in desc["items"]]


def _as_is(x):
    return x


def _worker_init(_worker_id, owner):
    become_helper(owner)


# What a worker needs, imported once by the fork server rather than by every worker.
_WORKER_PRELOAD = ["torch", "zarr", "vincie_mcore.data.stream"]


class LatentStream:
    """Endless stream of this DP rank's PackedBatches from a latent store, with
    ``state_dict()/load_state_dict()`` (a resume continues at the exact next pack) and DataLoader
    workers (``num_workers``; 0 packs in the calling process). ``expect``: an
    ``latents.encoder_identity`` the store must match. ``micro_batches``: packs a rank takes per
    optimizer step (gradient accumulation: ``train.micro_batches``). ``official``: batches in the
    released models' layout (``OfficialLayout``) from a store of the official text layout."""

    def __init__(self, root, recipe: RecipeConfig, pack_cfg: PackConfig, *, seed: int = 0, dp_rank: int = 0,
                 dp_size: int = 1, micro_batches: int = 1, max_sessions: int | None = None, subset_seed: int = 0,
                 num_workers: int = 2, prefetch_factor: int = 2, expect: dict | None = None,
                 official: OfficialLayout | None = None, mix: dict | None = None):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank: need 0 <= dp_rank < dp_size, got {dp_rank} of {dp_size}")
        if micro_batches < 1 or num_workers < 0:
            raise ValueError(f"micro_batches must be >= 1 and num_workers >= 0, got {micro_batches}, {num_workers}")
        self.store = LatentStore(root, expect)
        texts = self.store.identity["texts"]
        want = {"camera_prompts": bool(recipe.camera_prompts), "mask_prompt_src": recipe.mask_prompt_src,
                "mask_prompt_tgt": recipe.mask_prompt_tgt}
        bad = [k for k in want if texts[k] != want[k]]
        if bad:
            raise LatentMismatch(f"latent store {root} holds texts made with recipe {bad[0]}={texts[bad[0]]!r}, "
                                 f"the config has {want[bad[0]]!r}: precompute again or change data.recipe")
        check_layout(root, self.store.layout, "official" if official is not None else "paper")
        self.official = official
        self.recipe, self.cfg, self.seed = recipe, pack_cfg, seed
        self.rank, self.dp_size, self.micro = dp_rank, dp_size, micro_batches
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        prompt_lens = {s: int(e.shape[0]) for s, e in self.store.prompts().items()}
        self.planner = PackPlanner(self.store.index(), prompt_lens, recipe, pack_cfg, seed, max_sessions, subset_seed,
                                   official, mix, self.store.sources() if mix else None)
        self.subset_seed = subset_seed
        self.mix = json.dumps(mix, sort_keys=True) if mix else ""      # what a resume must keep
        self._sources = self.store.sources()                          # counted as drawn (``drawn``)
        self._starts = np.array([a for _, a, _ in self._sources], np.int64)
        self._drawn: Counter = Counter()
        self._state = {"epoch": 0, "pos": 0, "pack": 0, "consumed": 0, "step_packs": 0}
        self.last_pack = None
        self._it = None

    @property
    def num_sessions(self) -> int:
        return len(self.planner.rows)

    @property
    def num_units(self) -> int:
        """What an epoch walks: the sessions, or under ``recipe.pairwise`` their transitions."""
        return len(self.planner.units)

    def _start(self):
        loader = torch.utils.data.DataLoader(
            _PackDataset(self.store, self.recipe, self.cfg, self.official),
            sampler=_Descriptors(self.planner, dict(self._state), self.rank, self.dp_size, self.micro),
            batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            # workers are fork-server children that Slurm's stop signals leave running (signals.py)
            multiprocessing_context=helper_context(_WORKER_PRELOAD) if self.num_workers else None,
            worker_init_fn=functools.partial(_worker_init, owner=os.getpid()) if self.num_workers else None)
        return iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._start()
        batch, self._state, self.last_pack, keys = next(self._it)
        if self._sources:
            rows = np.asarray(keys, np.int64) // (PAIR_STRIDE if self.planner.pairwise else 1)
            for j in np.searchsorted(self._starts, rows, side="right") - 1:
                self._drawn[self._sources[j][0]] += 1
        return batch

    def drawn(self) -> dict[str, int]:
        """Sessions (or pairs) this rank took from each source of a union since the last call, for the
        training log (``Trainer``: the share of each source actually drawn); {} for a store of one source."""
        out = {name: self._drawn[name] for name, _, _ in self._sources}
        self._drawn.clear()
        return out if self._sources else {}

    def state_dict(self) -> dict:
        return dict(self._state) | {"seed": self.seed, "sessions": self.num_sessions, "subset_seed": self.subset_seed,
                                    "mix": self.mix}

    def load_state_dict(self, state: dict):
        for k, mine in (("seed", self.seed), ("sessions", self.num_sessions), ("subset_seed", self.subset_seed)):
            if k in state and int(state[k]) != mine:
                raise ValueError(f"data stream state: {k}={state[k]} in the checkpoint, {mine} now "
                                 f"(a resume must keep data seed, max_sessions, subset and mix)")
        if state.get("mix", "") != self.mix:
            raise ValueError(f"data stream state: mix {state.get('mix') or 'none'} in the checkpoint, "
                             f"{self.mix or 'none'} now (a resume must keep data.corpus.mix; start a new run_dir "
                             f"with train.init_from to change it)")
        self.close()
        self._state = {k: int(state[k]) for k in ("epoch", "pos", "pack", "consumed", "step_packs")}

    def close(self):
        """Stop the workers (the next ``next()`` starts them again from the current state)."""
        self._it = None


def stream_from_config(dc: dict, seed: int, dims, micro_batches: int = 1,
                       official: OfficialLayout | None = None) -> LatentStream:
    """``build_training``'s stream when ``data.corpus.latents`` is set: one seed for every DP rank
    (the order is global), the store checked against the config's encoders, image size, recipe
    texts, text layout and ``data.corpus.latents_dtype``."""
    from .latents import encoder_identity

    c = dc["corpus"]
    dtype = c.latents_dtype or LatentStore(c.latents).dtype
    layout = "official" if official is not None else "paper"
    expect = encoder_identity(dc["image"], dc["text"], dc["recipe"], c.image_size, dtype, layout)
    stream = LatentStream(c.latents, dc["recipe"], dc["pack"], seed=seed, dp_rank=dims.dp_rank, dp_size=dims.dp,
                          micro_batches=micro_batches, max_sessions=c.max_sessions, num_workers=c.workers,
                          expect=expect, official=official, mix=c.mix)
    if c.mix and dims.rank == 0:
        for d in stream.planner.mix_summary():
            print(f"   mix: {d['source']}: weight {d['weight']:.3f}, {d['draws_per_epoch']} draws an epoch from "
                  f"{d['units']} units ({d['passes_per_epoch']:.2f} passes)", flush=True)
    return stream
