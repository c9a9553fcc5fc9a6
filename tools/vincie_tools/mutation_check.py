"""Mutation check: inject critical one-line faults, one at a time, into a copy of the repo and see
whether the fast tests catch each (docs/testing.md).

    vincie-mutation-check                               # every mutant, the tests of the working tree
    vincie-mutation-check --tests-from-git-ref HEAD     # the same code, the tests as committed at HEAD
    vincie-mutation-check --only guidance_wrong shift_ignored
    vincie-mutation-check --list

The repo is copied once into a temporary folder (no .venv, .git, runs, caches); each fault is
written into the copy's file, the mutant's fast test files run there with ``pytest -x -q`` and
PYTHONPATH set to the copy's roots (".", "kernels", "tools"), and the file is restored. The
checkout itself is never written. A test file that fails before any fault is injected
("baseline") makes the mutants that rely on it "baseline_fails", not "caught"; a listed test file that
does not exist in the tested tree (e.g. at an older ref) is left out ("absent") and the mutant
runs the others. A fault whose
original text is no longer in its file (the code moved on) is "not_applicable": update its entry; one that
leaves a Python file invalid (a line cut out of a block) is "not_compilable", since any test would catch it.
The console scripts that end-to-end tests start inherit that PYTHONPATH, so they run the mutated
copy too, but they take minutes: keep each mutant's list to fast test files.

The last stdout line is JSON: per mutant its status (caught / missed / ...), and the share caught
of the applicable mutants.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FLOW = "vincie_mcore/diffusion/flow.py"
MMDIT = "vincie_mcore/model/mmdit.py"
BUILDER = "vincie_mcore/packed/builder.py"
REFERENCE = "kernels/vincie_kernels/reference.py"

T_FLOW = ("tests/diffusion/test_flow.py",)
T_MODEL = ("tests/model/test_embeddings.py", "tests/model/test_positions.py", "tests/model/test_attention.py",
           "tests/model/test_mmdit.py")
T_MASK = ("tests/packed/test_builder.py", "tests/model/test_positions.py", "tests/model/test_attention.py",
          "tests/model/test_mmdit.py")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str          # relative to the repo root
    original: str      # exact text; must occur exactly once in the file
    faulty: str        # what replaces it
    tests: tuple       # fast test files that should catch it
    why: str           # what the fault would do to training or sampling


MUTANTS = [
    # ---- the seven faults of issue 19 that left the core tests green ----
    Mutant("rope_q_only", "vincie_mcore/model/attention.py",
           "q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)", "q, k = apply_rope(q, cos, sin), k",
           T_MODEL, "keys unrotated: attention scores stop depending on relative position"),
    Mutant("hw_swap_rope", MMDIT,
           "ci, si = rope_cos_sin(batch.img_pos, cfg.rope_axes_dim, cfg.rope_theta)",
           "ci, si = rope_cos_sin(batch.img_pos[:, [0, 2, 1]], cfg.rope_axes_dim, cfg.rope_theta)",
           T_MODEL, "RoPE's h channels turn with w and its w channels with h"),
    Mutant("hw_swap_grid", BUILDER,
           "torch.stack([hh.reshape(-1), ww.reshape(-1)], 1)", "torch.stack([ww.reshape(-1), hh.reshape(-1)], 1)",
           T_MASK, "image tokens get (w, h) positions: RoPE and the table see the picture transposed"),
    Mutant("guidance_wrong", FLOW,
           "v = v_u + guidance * (v - v_u)", "v = v + guidance * (v - v_u)",
           T_FLOW, "classifier-free guidance extrapolates from the wrong branch"),
    Mutant("shift_ignored", FLOW,
           "ts = shift_time(torch.linspace(1.0, 0.0, steps + 1), shift)", "ts = torch.linspace(1.0, 0.0, steps + 1)",
           T_FLOW, "sampler.shift has no effect"),
    Mutant("loss_over_all_tokens", FLOW,
           "m = batch.img_loss_mask[rows]", "m = torch.ones_like(batch.img_loss_mask[rows])",
           T_FLOW, "the loss also trains the model to copy clean context tokens"),
    Mutant("text_drop_inverted", FLOW,
           "torch.rand(batch.num_sessions, generator=gen) < cfg.text_drop",
           "torch.rand(batch.num_sessions, generator=gen) > cfg.text_drop",
           T_FLOW, "text dropped 90% of the time instead of 10%"),
    Mutant("abs_pos_index", MMDIT,
           "self.img_pos_embedder(hw[:, 0] * n + hw[:, 1])", "self.img_pos_embedder(hw[:, 0] + hw[:, 1])",
           T_MODEL, "different (h, w) places share a row of the learned position table"),
    # ---- flow matching and the sampler ----
    Mutant("shift_direction", FLOW,
           "return shift * t / (1 + (shift - 1) * t)", "return t / (shift - (shift - 1) * t)",
           T_FLOW, "the shift pushes sampling time towards the clean end instead of the noisy end"),
    Mutant("noise_path_flipped", FLOW,
           "x_t = torch.where(m, (1 - t) * x0 + t * eps, x0)", "x_t = torch.where(m, t * x0 + (1 - t) * eps, x0)",
           T_FLOW, "training noises with t = 0 as noise, the sampler integrates the other way"),
    Mutant("v_target_sign", FLOW,
           "target = (eps - x0) if", "target = (x0 - eps) if",
           T_FLOW, "velocity target has the wrong sign"),
    Mutant("x0_velocity_sign", FLOW,
           "return (x_t - pred) / t.clamp(min=cfg.t_min)", "return (pred - x_t) / t.clamp(min=cfg.t_min)",
           T_FLOW, "x0 predictions turn into velocities pointing away from the data"),
    Mutant("euler_step_sign", FLOW,
           "x = torch.where(m, x + (t_next - t) * v, x0)", "x = torch.where(m, x + (t - t_next) * v, x0)",
           T_FLOW, "Euler steps towards more noise"),
    Mutant("uncond_keeps_text", FLOW,
           "uncond = drop_text(batch, torch.ones(batch.num_sessions, dtype=torch.bool))",
           "uncond = drop_text(batch, torch.zeros(batch.num_sessions, dtype=torch.bool))",
           T_FLOW, "the unconditional branch still sees the text: guidance does nothing"),
    Mutant("drop_text_keeps_chosen", FLOW,
           "txt_emb=batch.txt_emb * (~drop)", "txt_emb=batch.txt_emb * drop",
           T_FLOW, "drop_text zeroes the sessions it should keep"),
    # ---- the model ----
    Mutant("timestep_ignored", MMDIT,
           "c = self.t_embedder(batch.block_t)", "c = self.t_embedder(torch.zeros_like(batch.block_t))",
           T_MODEL, "the model cannot tell how noisy a block is"),
    Mutant("patchify_feature_order", "vincie_mcore/packed/patches.py",
           "x = x.permute(1, 3, 0, 2, 4)                          # (h, w, C, py, px)",
           "x = x.permute(1, 3, 0, 4, 2)                          # (h, w, C, py, px)",
           T_MODEL, "patch features transposed: unpatchify no longer inverts patchify"),
    # ---- the mask (rule, spec) ----
    Mutant("noisy_sees_its_twin", REFERENCE,
           "causal = torch.where(q_noisy, ro_k < ro_q, ro_k <= ro_q)",
           "causal = torch.where(q_noisy, ro_k <= ro_q, ro_k <= ro_q)",
           T_MASK, "a noisy target attends to its own clean twin: the answer leaks"),
    Mutant("mask_crosses_sessions", REFERENCE,
           "return same_session & (same_block | (~k_noisy & causal))", "return same_block | (~k_noisy & causal)",
           T_MASK, "packed sessions attend to each other under block_causal"),
    Mutant("clean_sees_noisy", REFERENCE,
           "return same_session & (same_block | (~k_noisy & causal))", "return same_session & (same_block | causal)",
           T_MASK, "context tokens attend to noisy targets"),
    Mutant("loss_mask_all_images", BUILDER,
           "img_loss.append(torch.full((h * w,), x.kind == KIND_NOISY))",
           "img_loss.append(torch.full((h * w,), x.kind != KIND_TEXT))",
           T_MASK + T_FLOW, "clean context images are marked as loss targets (and get noised)"),
    Mutant("rope_turn_dropped", BUILDER,
           "torch.full((h * w, 1), after[x.session] + x.rope_turn)", "torch.full((h * w, 1), after[x.session])",
           T_MASK, "every image sits at turn 0: the model cannot tell the turns apart"),
    # ---- faults found or guarded after issue 18 (2026-12-05) ----
    Mutant("worklist_run_end_slot", "kernels/vincie_kernels/worklist.py",
           "tl.store(END + n_ends + tl.cumsum(en.to(tl.int32), 0) - 1, c + 1, mask=en)",
           "tl.store(END + n_starts + tl.cumsum(en.to(tl.int32), 0) - 1, c + 1, mask=en)",
           ("tests/kernels/test_worklist.py",),
           "the fused work-list build's bug on rows longer than a chunk: the kernels skip whole runs of key tiles"),
    Mutant("tma_row_offset", "kernels/vincie_kernels/masked_attention.py",
           "x = P.load([row0, h * D])", "x = P.load([row0 + 1, h * D])",
           ("tests/kernels/test_masked_attention.py",),
           "a +tma tiling streams every K/V (Q/dO) tile one row late: attention off with TMA on, right without"),
    Mutant("tma_ignores_head_stride", "kernels/vincie_kernels/masked_attention.py",
           "t.shape[0] > 0 and t.stride(1) == t.shape[2] and", "t.shape[0] > 0 and",
           ("tests/kernels/test_masked_attention.py",),
           "TMA on q/k/v split from a fused projection: the descriptor reads other heads' (or k's) values"),
    # ---- atomic dQ (dq=atomic, 2026-12-06) ----
    Mutant("atomic_dq_unscaled", "kernels/vincie_kernels/masked_attention.py",
           "tl.dot(tl.trans(ds_t), k, input_precision=DOT_PREC) * sm_scale", "tl.dot(tl.trans(ds_t), k, input_precision=DOT_PREC)",
           ("tests/kernels/test_masked_attention.py",),
           "dq=atomic leaves the softmax scale out of dQ: gradients of q off by 1/sqrt(d)"),
    Mutant("atomic_dq_full_tiles_dropped", "kernels/vincie_kernels/masked_attention.py",
           "D, BLOCK_M, False, DOT_PREC, TMA, DQ_ATOMIC)", "D, BLOCK_M, False, DOT_PREC, TMA, False)",
           ("tests/kernels/test_masked_attention.py",),
           "dq=atomic adds dQ only from partial tiles: every full tile's share of dQ is lost"),
    Mutant("tuner_pairs_atomic_with_dq_kernel", "kernels/vincie_kernels/tune.py",
           "split = [n for n in times if n not in atomic]", "split = list(times)",
           ("tests/kernels/test_attention_tools.py",),
           "the tuner pairs an atomic-dQ dK/dV kernel with another config's dQ kernel: dQ computed twice"),
    Mutant("fp8_not_applied", "vincie_mcore/model/fp8.py",
           "m.set_fp8(Float8Linear.from_float(src, config=ao_cfg))", "Float8Linear.from_float(src, config=ao_cfg)",
           ("tests/model/test_fp8_torchao.py",), "train.fp8 with torchao reports FP8 but every GEMM runs in bf16"),
    # ---- resumable benchmarks, the official latent stream, safe loads (2026-12-06, session 2) ----
    Mutant("edit_seed_ignored", "vincie_mcore/eval/edit_runs.py",
           "gen.manual_seed(edit_seed(", "(edit_seed(",
           ("tests/eval/test_magicbrush.py",),
           "benchmark edits draw noise from one running generator: a resumed run gives other images"),
    Mutant("official_stream_paper_texts", "vincie_mcore/data/stream.py",
           'emitted_texts(sess.texts[:plan.k], sess.cameras[:plan.k], cam, "official")',
           'emitted_texts(sess.texts[:plan.k], sess.cameras[:plan.k], cam, "paper")',
           ("tests/data/test_official_stream.py",),
           "the official latent stream looks up the raw prompts, not the release's template"),
    Mutant("png_short_rows_allowed", "vincie_mcore/data/media.py",
           "    if got < want:\n", "    if got < 0:\n",
           ("tests/security/test_hostile_media.py",),
           "a PNG short of its header's rows is padded with black, silently"),
    Mutant("dcp_bytes_unpickled", "vincie_mcore/train/checkpoint.py",
           'obj = _load_weights_only(f"checkpoint byte item {fqn}", value.read())',
           "obj = torch.load(value, weights_only=False)",
           ("tests/security/test_dist_checkpoint.py",),
           "a byte item swapped into a checkpoint after the check runs code during the load"),
    # ---- editing datasets (the fine-tuning data), MagicBrush from parquet and during training (session 3) ----
    Mutant("edit_chain_never_cut", "vincie_mcore/data/edits.py",
           "return chained(a, b, tol) if a.shape", "return True or chained(a, b, tol) if a.shape",
           ("tests/data/test_edits.py",),
           "a MagicBrush chain whose turn edits another picture is stored as one session"),
    Mutant("edit_part_drops_spilled_rows", "vincie_mcore/data/edits.py",
           "            if not _owns(own, i, n):\n                spilled", "            if False:\n                spilled",
           ("tests/data/test_edits.py",),
           "a part never reads its sessions' rows from other parts' files: those sessions are lost"),
    Mutant("edit_binary_mask_inverted", "vincie_mcore/data/edits.py",
           'return gray >= 384, "binary"', 'return gray < 384, "binary"',
           ("tests/data/test_edits.py",), "black-and-white edit masks read with the region inverted"),
    Mutant("magicbrush_parquet_turn_order", "vincie_mcore/eval/magicbrush.py",
           'rows = sorted(rows, key=lambda r: r["turn"])', "rows = list(rows)",
           ("tests/eval/test_magicbrush.py",), "MagicBrush's parquet turns scored in file order, not turn order"),
    Mutant("magicbrush_hook_setting_ignored", "vincie_mcore/build.py",
           "metrics=metrics, progress=False, setting=ec.setting,", "metrics=metrics, progress=False, setting='independent',",
           ("tests/train/test_hooks.py",), "the training-time MagicBrush evaluation runs another setting than asked"),
    # ---- weighted sources of a union (data.corpus.mix; session 4) ----
    Mutant("mix_quota_floor_only", "vincie_mcore/data/stream.py",
           "[:total - sum(q.values())]:", "[:0]:",
           ("tests/data/test_stream.py",), "an epoch's draws lose the remainders: shorter than asked, weights off"),
    Mutant("mix_one_pass_for_all", "vincie_mcore/data/stream.py",
           "np.random.default_rng([self.seed, MIX_TAG, g, c])", "np.random.default_rng([self.seed, MIX_TAG, g, 0])",
           ("tests/data/test_stream.py",), "every pass over a source is the same permutation (an epoch's draws repeat)"),
    Mutant("mix_resume_unchecked", "vincie_mcore/data/stream.py",
           'if state.get("mix", "") != self.mix:', "if False:",
           ("tests/data/test_stream.py",), "a resume with another mix continues at a position of another order"),
    Mutant("store_blob_held_whole", "vincie_mcore/data/store.py",
           "full = len(self._pending) // BLOB_CHUNK * BLOB_CHUNK", "full = 0",
           ("tests/data/test_store.py",), "a writer holds its whole shard's image bytes until the shard ends"),
    Mutant("store_blob_chunk_twice", "vincie_mcore/data/store.py",
           "        del self._pending[:n]\n", "",
           ("tests/data/test_store.py",), "a spilled chunk's bytes stay pending and are written again"),
    Mutant("anyedit_visual_rows_kept", "vincie_mcore/data/edits.py",
           'if r.get("visual") not in (None, {"bytes": None, "path": None}):', "if False:",
           ("tests/data/test_edits.py",), "AnyEdit's visual-reference edits stored without the image they need"),
    Mutant("edit_parts_whole_files", "vincie_mcore/data/edits.py",
           "for f, a, b in units(files)[part[0]::part[1]]:", "for f, a, b in units(files)[part[0]::part[1]][:1]:",
           ("tests/data/test_edits.py",), "a part builds only its first row group: the rest of its share is lost"),
    Mutant("keep_one_row_enough", "vincie_mcore/data/edits.py",
           'if sid in done or not all(r["_keep"] for r in rows):', 'if sid in done or not any(r["_keep"] for r in rows):',
           ("tests/data/test_edits.py",), "--keep keeps a chain when any turn meets it: turns the filter meant out stay"),
    Mutant("latent_union_block_edge", "vincie_mcore/data/latents.py",
           'b = int(np.searchsorted(self._starts, row, side="right")) - 1',
           'b = int(np.searchsorted(self._starts, row, side="left")) - 1',
           ("tests/data/test_stream.py",), "a union's row at a block's start is read from the block before"),
    Mutant("official_mix_per_source_not_session", "vincie_mcore/build.py",
           "weights[a:b] = used[name] / total / (b - a)", "weights[a:b] = used[name] / total",
           ("tests/data/test_edits.py",), "the in-memory mix weighs each session by its source's weight: sources by size again"),
    Mutant("mix_unknown_name_ignored", "vincie_mcore/data/stream.py",
           "        if not group:\n            raise", "        if False:\n            raise",
           ("tests/data/test_stream.py",), "a misspelt source in data.corpus.mix is silently weighed 0"),
    Mutant("drawn_counts_never_reset", "vincie_mcore/data/stream.py",
           "        self._drawn.clear()\n", "",
           ("tests/data/test_stream.py",), "each log line's source shares are since the start, not since the last line"),
    Mutant("batch_noise_from_row_zero", "vincie_mcore/infer/editor.py",
           "noise[a:b] = torch.randn(", "noise[0:b - a] = torch.randn(",
           ("tests/infer/test_edit_batch.py",), "a batch's later sessions start from the first one's noise rows"),
    Mutant("kv_split_rows_not_rebased", "vincie_mcore/model/attention.py",
           "c.txt_rows, c.img_rows = self.txt_rows[ti] - txt_starts[i], self.img_rows[ii] - img_starts[i]",
           "c.txt_rows, c.img_rows = self.txt_rows[ti], self.img_rows[ii] - img_starts[i]",
           ("tests/infer/test_edit_batch.py",), "a session's text cache keeps the batch's rows: its next turn fails"),
    Mutant("kv_join_keeps_session_zero", "vincie_mcore/model/attention.py",
           "            sig[:, SIG_SESSION] = i\n", "",
           ("tests/infer/test_edit_batch.py",), "joined caches all claim session 0: a batched cached turn is refused"),
    Mutant("chains_resume_skips_made_turn", "vincie_mcore/eval/edit_runs.py",
           "            if t >= len(c.instructions) or p is None or not Path(p).is_file():\n                break",
           "            if t >= len(c.instructions) or p is None or not Path(p).is_file():\n                continue",
           ("tests/infer/test_edit_batch.py",), "a resumed chain reads back turns after a missing one, mixing two runs"),
    Mutant("jsonl_one_unit", "vincie_mcore/data/edits.py",
           "out += [(i, a, min(a + JSONL_UNIT_ROWS, n)) for a in range(0, n, JSONL_UNIT_ROWS)]",
           "out += [(i, 0, n)] if n else []",
           ("tests/data/test_edits.py",), "a big JSONL file builds in one part again"),
    Mutant("source_counts_not_summed", "vincie_mcore/train/trainer.py",
           "    dist.all_reduce(t, group=group)\n    return {k: int(round(v))",
           "    return {k: int(round(v))",
           ("tests/train/test_trainer.py",), "the log's source shares are one rank's sessions"),
    Mutant("mix_group_weight_not_shared", "vincie_mcore/data/stream.py",
           "leaf[n] = float(w) * (counts[n] / size if size else 1.0 / len(group))", "leaf[n] = float(w)",
           ("tests/data/test_stream.py",), "a joined union weighed by name gives each of its sources the whole weight"),
    Mutant("wide_turns_from_the_source", "vincie_mcore/data/edits.py",
           "        source = raw.get(ct)\n", "",
           ("tests/data/test_edits.py",), "every turn of a turns-as-columns row edits the source: chains cut apart"),
    Mutant("shot_windows_first_only", "vincie_mcore/data/sampling.py",
           "for a in range(0, len(every), cfg.max_frames):", "for a in range(0, min(len(every), cfg.max_frames), cfg.max_frames):",
           ("tests/data/test_real_videos.py",), "sampling.windows gives a long shot its first window only"),
    Mutant("black_border_not_cropped", "vincie_mcore/data/real.py",
           "fit_frame(native[k][top:native[k].shape[0] - bottom, left:native[k].shape[1] - right],",
           "fit_frame(native[k],",
           ("tests/data/test_real_videos.py",), "letterbox bars found but kept in the frames"),
    Mutant("aesthetic_unnormalised", "vincie_mcore/data/quality.py",
           "        return x / x.norm(dim=-1, keepdim=True)\n", "        return x\n",
           ("tests/data/test_quality.py",), "the aesthetic head fed raw CLIP features, not unit ones"),
    Mutant("logo_any_frame", "vincie_mcore/data/quality.py",
           "        if hits.all():", "        if hits.any():",
           ("tests/data/test_quality.py",), "a logo in one frame drops the session (a logo in the scene, not an overlay)"),
    Mutant("logo_corner_one_axis", "vincie_mcore/data/quality.py",
           "    return near_x & near_y", "    return near_x | near_y",
           ("tests/data/test_quality.py",), "a box on any edge counts as a corner logo"),
    Mutant("scene_joins_any_neighbour", "vincie_mcore/data/shots.py",
           "                shot_similarity(scan, k - 1, k) >= cfg.scene_min_similarity:",
           "                shot_similarity(scan, k - 1, k) >= 0.0:",
           ("tests/data/test_real_videos.py",), "a cut to another place joins the scene before it"),
    Mutant("scene_clip_sees_bgr", "vincie_mcore/data/shots.py",
           "                    batch.append(np.ascontiguousarray(img[..., ::-1]))     # BGR -> RGB",
           "                    batch.append(np.ascontiguousarray(img))     # BGR -> RGB",
           ("tests/data/test_real_videos.py",), "the scene pass shows CLIP the decoder's BGR frames (red and blue "
                                                "swapped: not the picture the model learned)"),
    Mutant("in_process_build_without_time_limit", "vincie_mcore/data/build.py",
           '            with time_limit(timeout_s, "decode"):', '            with time_limit(None, "decode"):',
           ("tests/data/test_build.py",), "a video made in the build process (its job does not pickle) may spin "
                                          "for ever: the per-video time limit is gone"),
    Mutant("build_forks_an_unpicklable_job", "vincie_mcore/data/build.py",
           "    if why is not None:\n", "    if why is None and False:\n",
           ("tests/data/test_build.py",), "a job that does not pickle goes to the worker pool anyway"),
    Mutant("t2i_image_at_its_frame_slot", "vincie_mcore/data/packing.py",
           '    return 0 if kind == "t2i" else 3 * j + SLOTS[kind]', '    return 3 * j + SLOTS.get(kind, 0)',
           ("tests/data/test_t2i.py",), "a text-to-image frame takes its video frame's RoPE slot, not a first "
                                        "image's: the same caption draws at another position by frame"),
    Mutant("t2i_planner_counts_frame_zero_caption", "vincie_mcore/data/stream.py",
           "+ (pair or 0) + plan.target_turn]) + 1", "+ (pair or 0)]) + 1",
           ("tests/data/test_t2i.py",), "the pack planner counts frame 0's caption for every T2I sample: packs "
                                        "overflow or underfill the token budget"),
    Mutant("t2i_caption_of_the_block_start", "vincie_mcore/data/latents.py",
           '            c0 = int(blk["cap_first"][s])', "            c0 = 0",
           ("tests/data/test_t2i.py",), "a stored session's caption embeddings are read from its block's first "
                                        "session: every T2I sample is conditioned on another frame's caption"),
    Mutant("t2i_loss_counted_as_nip", "vincie_mcore/diffusion/flow.py",
           '"roe_tgt": 2, "t2i": 3,', '"roe_tgt": 2, "t2i": 0,',
           ("tests/data/test_t2i.py",), "text-to-image targets are logged as next-image prediction (loss/task_nip)"),
    Mutant("t2v_frames_not_one_block", "vincie_mcore/data/packing.py",
           "joins=in_clip,", "joins=False,",
           ("tests/data/test_t2v.py",), "a text-to-video clip's frames are separate noisy blocks: under "
                                        "block_causal no frame sees another, each is drawn alone"),
    Mutant("t2v_frames_at_slot_zero", "vincie_mcore/data/packing.py",
           '    return 0 if kind == "t2i" else', '    return 0 if kind in ("t2i", "t2v") else',
           ("tests/data/test_t2v.py",), "every frame of a text-to-video clip takes RoPE slot 0: the clip has no "
                                        "time axis, and not the positions edits use"),
    Mutant("t2v_clip_conditioned_on_last_transition", "vincie_mcore/data/packing.py",
           "text_block=caption if clip else last_text,", "text_block=last_text,",
           ("tests/data/test_t2v.py",), "a text-to-video clip's text AdaLN reads its last transition text, "
                                        "not its caption"),
    Mutant("t2v_draws_before_t2i", "vincie_mcore/data/recipe.py",
           "        if u < cfg.t2i_prob:\n", "        if cfg.t2v_prob <= u < cfg.t2i_prob + cfg.t2v_prob:\n",
           ("tests/data/test_t2v.py",), "T2I is drawn above the T2V share: adding t2v_prob changes which "
                                        "samples are text-to-image"),
    Mutant("t2v_window_texts_from_zero", "vincie_mcore/data/recipe.py",
           "[emitted(texts[a + j], cameras[a + j], cfg)", "[emitted(texts[j], cameras[j], cfg)",
           ("tests/data/test_t2v.py",), "a text-to-video window starting at frame a reads the session's first "
                                        "transitions, not its own"),
    Mutant("t2v_window_planner_counts_from_zero", "vincie_mcore/data/stream.py",
           "[first + b.turn + (plan.target_turn if plan.task == T2V else 0)]", "[first + b.turn]",
           ("tests/data/test_t2i.py",), "the pack planner counts a T2V window's texts from the session's first "
                                        "transition: packs overflow or underfill the token budget"),
    Mutant("t2v_loss_counted_as_t2i", "vincie_mcore/diffusion/flow.py",
           '"t2i": 3, "t2v": 4}', '"t2i": 3, "t2v": 3}',
           ("tests/train/test_trainer_health.py",), "text-to-video targets are logged as text-to-image"),
    Mutant("captioned_store_refused_without_t2i", "vincie_mcore/data/latents.py",
           '    if a.get("texts.captions") and not b.get("texts.captions"):', "    if False:",
           ("tests/data/test_t2i.py",), "a store with captions is refused by a run without text-to-image"),
    Mutant("scene_dino_takes_a_patch_token", "vincie_mcore/data/quality.py",
           "x = self.model(pixel_values=px.to(self.device)).last_hidden_state[:, 0].float()",
           "x = self.model(pixel_values=px.to(self.device)).last_hidden_state[:, 1].float()",
           ("tests/data/test_real_videos.py",), "the DINO scene feature is the first patch's token, not the CLS "
                                                "token: one corner of the frame decides the scene"),
    Mutant("coe_no_context_keeps_the_chain", "vincie_mcore/eval/synthetic.py",
           "            if chains is None or context == \"none\":",
           "            if chains is None:",
           ("tests/sweep/test_ablate.py",), "the chain-of-editing eval without context still shows each turn the "
                                            "earlier frames, texts and maps"),
    Mutant("magicbrush_coe_maps_not_resumed", "vincie_mcore/eval/edit_runs.py",
           "            chain.add_turn(instructions[k], out, masks)\n",
           "            chain.add_turn(instructions[k], out, {k: v * 0 > 0 for k, v in masks.items()})\n",
           ("tests/eval/test_magicbrush.py",), "a resumed chain-of-editing benchmark gives its earlier turns empty "
                                              "maps (not the ones they predicted)"),
    Mutant("segment_time_limit_off", "vincie_mcore/data/build.py",
           "                    with time_limit(timeout_s):", "                    with time_limit(None):",
           ("tests/data/test_build.py",), "a segmenter stuck in the main process stalls the whole build"),
    Mutant("deferred_editor_loaded_eagerly", "vincie_mcore/eval/edit_runs.py",
           "    if isinstance(editor, Deferred) and not editor.loaded and (out_dir / \"editor.json\").is_file():",
           "    if False:",
           ("tests/eval/test_mse_bench.py",), "a scoring job whose edits all exist loads the model anyway"),
    Mutant("deferred_claim_unchecked_at_load", "vincie_mcore/eval/edit_runs.py",
           "        editor.on_load(lambda ed: _check(out_dir, fingerprint(ed, **extra)))\n", "",
           ("tests/eval/test_mse_bench.py",), "a deferred editor with another sampler edits into the folder"),
    Mutant("official_compose_templated", "vincie_mcore/infer/official_editor.py",
           "        ed = self.with_template(False)\n", "        ed = self.with_template(True)\n",
           ("tests/infer/test_official_editor.py",), "composition writes the references' captions into the "
                                                      "editing template, which the release leaves verbatim"),
    Mutant("official_compose_refs_unresized", "vincie_mcore/infer/official_editor.py",
           "        same = [r if r.shape[:2] == (h, w) else", "        same = [r if True else",
           ("tests/infer/test_official_editor.py",), "references of other sizes are fitted on their own, not "
                                                      "resized to the first's as the release loads them"),
    Mutant("store_read_sample_from_shard_start", "vincie_mcore/data/store.py",
           "        off = sh[\"offsets\"][a:b + 1]\n", "        off = sh[\"offsets\"][0:b - a + 1]\n",
           ("tests/data/test_report.py",), "a session read alone (stats' coverage sample, previews) gets the "
                                          "first session's images of its shard"),
    Mutant("export_chain_default_recipe", "vincie_mcore/hf/pipeline.py",
           "        return apps.chain_of_editing(self.editor(**sampler), image, prompts, recipe, maps=tuple(maps))",
           "        return apps.chain_of_editing(self.editor(**sampler), image, prompts, None, maps=tuple(maps))",
           ("tests/infer/test_applications.py",), "chain-of-editing on an export asks for the maps with the "
                                                  "default mask prompts, not the ones its run trained on"),
    Mutant("app_export_variant_dropped", "vincie_mcore/app/session.py",
           "                   f\"export {folder}\", device, area=p.area, variant=str(p.model.cfg.variant), "
           "recipe=p.recipe)",
           "                   f\"export {folder}\", device, recipe=p.recipe)",
           ("tests/infer/test_official_editor.py",), "the web editor edits a released model's export with the "
                                                      "paper's editor (its packing and sampler)"),
    Mutant("web_compose_later_turn_templated", "vincie_mcore/app/session.py",
           "            editor = editor.with_template(self.session.editor.template)\n", "            pass\n",
           ("tests/infer/test_official_editor.py",), "a turn after a release's composition in the web editor "
                                                      "rewrites the session's texts in the editing template"),
    Mutant("drag_rotation_clockwise", "vincie_mcore/infer/applications.py",
           "    sy = cy + (sin * u + cos * v) / scale\n", "    sy = cy + (-sin * u + cos * v) / scale\n",
           ("tests/infer/test_applications.py",), "a drag's turn is drawn in the RoE map mirrored (the map no "
                                                  "longer shows what the instruction says)"),
    Mutant("generate_kv_one_cache_both_branches", "vincie_mcore/infer/editor.py",
           "        return {\"cond\": inner.new_kv_cache(), \"uncond\": inner.new_kv_cache()}",
           "        return dict.fromkeys((\"cond\", \"uncond\"), inner.new_kv_cache())",
           ("tests/infer/test_applications.py",), "an application's layout caches both CFG branches' context in "
                                                  "one KV cache (the unconditional branch reads the prompt's K/V)"),
    Mutant("chain_kv_survives_a_cut_turn", "vincie_mcore/infer/applications.py",
           "                x.truncate(n[b])\n", "                pass\n",
           ("tests/infer/test_applications.py",), "a chain turn cut short keeps its caches, which hold the unkept "
                                                  "turn's prompt, so the chain's next turn is refused or wrong"),
    Mutant("cut_turn_keeps_its_prompt_cached", "vincie_mcore/infer/editor.py",
           "        with kept_on_failure(joined if len(kvs) == 1 else {}):",
           "        with kept_on_failure({}):",
           ("tests/infer/test_kv_cache.py",), "an edit cut short leaves its prompt's K/V in the session's cache, so "
                                              "every later turn refuses the cache"),
    Mutant("generate_ignores_the_callers_kv", "vincie_mcore/infer/editor.py",
           "kvs = [kv if kv is not None else self.new_kv() for kv in kvs]", "kvs = [self.new_kv() for kv in kvs]",
           ("tests/infer/test_applications.py",), "chain-of-editing computes its whole history again at every call "
                                                  "(the chain's caches are never used)"),
    Mutant("chain_turns_reseeds_each_call", "vincie_mcore/infer/applications.py",
           "    gens = None if seeds is None else [s if isinstance(s, torch.Generator)",
           "    gens = None if seeds is None else [s if isinstance(s, int)",
           ("tests/infer/test_applications.py",), "batched chain-of-editing restarts each chain's seed at every "
                                                  "call, so its maps and frame differ from the chain edited alone"),
    Mutant("generate_many_keeps_joined_caches", "vincie_mcore/infer/editor.py",
           "                kv.update({b: parts[b][i] for b in parts})", "                pass",
           ("tests/infer/test_applications.py",), "batched chains never get their caches back, so every call "
                                                  "computes the whole history again"),
    Mutant("release_io_no_round_trip", "vincie_mcore/infer/official_editor.py",
           "            if j > 0 and (a.shape[1], a.shape[0]) != ori:",
           "            if j < 0 and (a.shape[1], a.shape[0]) != ori:",
           ("tests/infer/test_official_editor.py",), "release_io leaves the generated images at their size, where "
                                                     "generate.py resizes them to the start image's original size"),
    Mutant("release_io_rounds_its_output", "vincie_mcore/infer/official_editor.py",
           "to_uint8(self.image.decode_float(lat[None]), truncate=True)",
           "to_uint8(self.image.decode_float(lat[None]), truncate=False)",
           ("tests/infer/test_official_editor.py",), "release_io rounds each output to uint8, where the release "
                                                     "truncates it when it saves the PNG the next turn reads"),
    Mutant("coe_folder_read_back_as_plain", "vincie_mcore/eval/edit_runs.py",
           "{**(run_info or {}), \"coe\": None if coe == \"none\" else coe}",
           "({**(run_info or {}), \"coe\": coe} if coe != \"none\" else run_info)",
           ("tests/infer/test_applications.py",), "a plain rerun into a chain-of-editing folder whose edits all exist "
                                                  "reads them back as plain edits"),
    Mutant("undo_keeps_the_undone_turn_cached", "vincie_mcore/infer/editor.py",
           "            for b, c in self.kv.items():\n                c.truncate(sizes[b])\n", "",
           ("tests/app/test_web_editor.py",), "undo leaves the undone turn's prompt in the KV cache, so the next "
                                              "turn (another prompt) refuses it"),
    Mutant("web_undo_keeps_the_chain", "vincie_mcore/app/session.py",
           "            self.chain.pop_turn()                  # its caches back to the turn's start\n",
           "            pass\n",
           ("tests/app/test_web_editor.py",), "after undo the web editor's next chain-of-editing turn still sees "
                                              "the undone turns as context"),
    Mutant("human_tie_counts_as_success", "vincie_mcore/eval/human.py",
           "    return None if not votes else sum(votes) * 2 > len(votes)\n",
           "    return None if not votes else sum(votes) * 2 >= len(votes)\n",
           ("tests/eval/test_human_eval.py",), "an item its raters split on counts as a success: the human "
                                                "success rates come out too high"),
    Mutant("human_first_answer_counts", "vincie_mcore/eval/human.py",
           "        self._by_item.setdefault(item, {})[rater] = answers\n",
           "        self._by_item.setdefault(item, {}).setdefault(rater, answers)\n",
           ("tests/eval/test_human_eval.py",), "a rater who changes their mind is counted with their first answer"),
    Mutant("human_clip_i_against_the_source", "vincie_mcore/eval/human.py",
           "    inputs = [v[\"results\"][-2] if len(v[\"results\"]) > 1 else v[\"source\"] for v in views]\n",
           "    inputs = [v[\"source\"] for v in views]\n",
           ("tests/eval/test_human_eval.py",), "CLIP-I and DINO of a later turn compare it with the source, not "
                                                "with the image the turn edited"),
    Mutant("judge_protocol_skips_unanswered_turns", "vincie_mcore/eval/human.py",
           "    return [it for it in left if all(ratings.get(rater, Item(it.method, it.index, k)) is True\n",
           "    return [it for it in left if all(ratings.get(rater, Item(it.method, it.index, k)) is not False\n",
           ("tests/eval/test_human_eval.py",), "under --protocol judge a rater is asked a later turn before the "
                                                "earlier ones, which the judge never sees in that order"),
    Mutant("annotation_view_one_frame_late", "vincie_mcore/eval/human.py",
           "        frames = [load_image(s.frames[k], name=f\"session {item.index} frame {k}\") for k in (j, j + 1)]\n",
           "        frames = [load_image(s.frames[k], name=f\"session {item.index} frame {k}\") for k in (j, min(j + 2, len(s.frames) - 1))]\n",
           ("tests/eval/test_human_eval.py",), "a rated transition shows the wrong second frame beside its text"),
    Mutant("text_then_image_at_separate_positions", "vincie_mcore/packed/builder.py",
           "        if self.rope_mode == \"text_then_image\":\n            for x in texts:\n",
           "        if False:\n            for x in texts:\n",
           ("tests/packed/test_builder.py", "tests/data/test_packing.py"),
           "text-then-image RoPE leaves images at their separate positions, on top of the session's text"),
    Mutant("sweep_plan_skips_config_check", "vincie_mcore/sweep/plan.py", "    check_configs(d, runs, pre)\n", "",
           ("tests/sweep/test_sweep_slurm.py",),
           "a sweep whose runs' configs do not build is planned, and each array element fails on Slurm"),
    Mutant("human_page_shows_each_methods_size", "vincie_mcore/eval/human.py",
           "                \"results\": [fit_frame(im, size, \"pad\") for im in v[\"results\"]]}\n",
           "                \"results\": v[\"results\"]}\n",
           ("tests/eval/test_human_eval.py",), "the rating page shows each method's results at the size it made "
                                                "them, so a rater can tell the methods apart by size"),
    Mutant("vlm_reply_not_kept", "vincie_mcore/data/vlm.py",
           "entities_of(r), r.model_dump()))", "entities_of(r)))",
           ("tests/data/test_vlm_annotator.py",), "the VLM's reply is dropped once its text is taken, so no one "
                                                   "can see why an annotation says what it says"),
    Mutant("annotation_notes_of_the_next_transition", "vincie_mcore/eval/human.py",
           "\"notes\": s.notes[j] if s.notes else None", "\"notes\": s.notes[-1] if s.notes else None",
           ("tests/eval/test_human_eval.py",), "a rated transition shows another transition's VLM notes"),
    Mutant("annotation_regions_never_asked", "vincie_mcore/eval/human.py",
           "        return self.questions if seg not in (None, \"none\") else self.questions[:2]\n",
           "        return self.questions[:2]\n",
           ("tests/eval/test_human_eval.py",), "the annotation study never shows or rates the RoE maps"),
    Mutant("sweep_runs_ignore_their_base", "vincie_mcore/sweep/plan.py",
           "            ov.append(f\"train.init_from={base_of[seed].run_dir}/checkpoints\")\n", "            pass\n",
           ("tests/sweep/test_sweep_slurm.py",), "a sweep's runs train from scratch beside the base model they were "
                                                 "planned to start from"),
    Mutant("sweep_train_does_not_wait_for_its_base", "vincie_mcore/sweep/launch.py",
           "        after.append(pretrain_job)\n", "",
           ("tests/sweep/test_ablate.py",), "the training array starts before its base model is trained, so its "
                                             "runs start from no weights or a base's first checkpoint"),
    Mutant("sweep_heldout_from_the_training_world", "vincie_mcore/sweep/plan.py",
           "        world = worlds[part]\n", "        world = worlds[\"train\"]\n",
           ("tests/sweep/test_ablate.py",), "the held-out videos come from the training world, so the camera "
                                             "ablation is judged on panning views"),
    Mutant("run_overrides_add_unknown_keys", "vincie_mcore/build.py",
           "            if OmegaConf.select(defaults, key, default=missing) is missing and not _schema_field(key):\n",
           "            if False:\n",
           ("tests/test_config_types.py",), "a mistyped override of a finished run (eval.trns=2) is merged "
                                             "silently and changes nothing"),
    Mutant("chain_pop_turn_keeps_the_cache", "vincie_mcore/infer/applications.py",
           "        for b, x in (self.kv or {}).items():\n            x.truncate(sizes[b])\n", "",
           ("tests/infer/test_applications.py",), "a chain's undone turn stays in its KV cache, so the next turn "
                                                  "refuses the cache"),
    Mutant("chain_pop_turn_forgets_the_cache", "vincie_mcore/infer/applications.py",
           "        if sizes is None:\n            self.kv = None\n", "        self.kv = None\n",
           ("tests/infer/test_applications.py",), "undo in a chain throws its whole KV cache away, so the next turn "
                                                  "computes the whole history again"),
    Mutant("web_drag_default_recipe", "vincie_mcore/app/session.py",
           "            res = drag(editor, latest, region, int(dx), int(dy), self.backend.recipe,\n",
           "            res = drag(editor, latest, region, int(dx), int(dy), None,\n",
           ("tests/app/test_web_editor.py",), "a drag in the web editor gives the region maps with the default "
                                              "mask prompts, not the ones its run trained on"),
    Mutant("web_chain_forgets_earlier_maps", "vincie_mcore/app/session.py",
           "            chain.add_turn(s.texts[j - 1], s.images[j].numpy(), self.maps.get(j))\n",
           "            chain.add_turn(s.texts[j - 1], s.images[j].numpy(), None)\n",
           ("tests/app/test_web_editor.py",), "a chain-of-editing turn in the web editor does not see the region "
                                              "maps of a drag made since the chain's last turn"),
    Mutant("web_drag_mask_any_channel", "vincie_mcore/app/ui.py",
           "        mask = a[..., 3] > 0 if mask is None else mask | (a[..., 3] > 0)\n",
           "        mask = a[..., :3].any(-1) if mask is None else mask | a[..., :3].any(-1)\n",
           ("tests/app/test_web_editor.py",), "the drag canvas's region is read from the stroke's colour, "
                                              "not its coverage (an unpainted layer's pixels count)"),
]

IGNORE = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
                                "benchmarks", ".gpu_pydeps", "build")


def copy_repo(repo: Path, dest: Path, tests_ref: str | None) -> None:
    """The repo's tree into ``dest``; with ``tests_ref`` the tests/ folder comes from that git ref."""
    shutil.copytree(repo, dest, ignore=IGNORE, symlinks=True)
    if tests_ref is not None:
        tar = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", tests_ref, "tests"],
                             capture_output=True, check=True).stdout            # read-only: no checkout
        shutil.rmtree(dest / "tests")
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            tf.extractall(dest, filter="data")


def env_for(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(root / p) for p in (".", "kernels", "tools"))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_resolve_to(root: Path) -> None:
    """The copy, not the installed checkout, must be what the tests import."""
    code = "import vincie_mcore, vincie_kernels, vincie_tools; print(vincie_mcore.__file__, vincie_kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env_for(root), capture_output=True, text=True)
    files = out.stdout.split()
    if out.returncode or not files or not all(Path(f).resolve().is_relative_to(root.resolve()) for f in files):
        raise SystemExit(f"error: the copy's packages do not shadow the installed ones: {out.stdout}{out.stderr[-500:]}")


def run_tests(root: Path, tests, timeout: float) -> tuple[str, float, str]:
    """('pass' | 'fail' | 'timeout' | 'no_tests', seconds, last lines of output)."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        r = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-3:])
    status = {0: "pass", 5: "no_tests"}.get(r.returncode, "fail")
    return status, time.monotonic() - t0, tail


def first_failure(tail: str) -> str:
    for line in tail.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line[:300]
    return tail.splitlines()[-1][:300] if tail else ""


def _compiles(source: str, name: str) -> bool:
    try:
        compile(source, name, "exec")
    except SyntaxError:             # IndentationError included: a line cut out of a block leaves it empty
        return False
    return True


def check(repo: Path, mutants, tests_ref: str | None, timeout: float, log=print) -> dict:
    recipe = repo.resolve().parent / "shared" / "recipes" / "slurm-ci.sh"
    if recipe.is_file():        # the copy, in a temp folder, has no recipe beside it: its Slurm tests would skip
        os.environ.setdefault("VINCIE_SLURM_CI", str(recipe))
    with tempfile.TemporaryDirectory(prefix="vincie-mutants-") as tmp:
        root = Path(tmp) / "repo"
        copy_repo(repo, root, tests_ref)
        check_imports_resolve_to(root)
        baseline = {}
        for f in sorted({f for m in mutants for f in m.tests}):
            status, secs, tail = ("absent", 0.0, "") if not (root / f).is_file() else run_tests(root, [f], timeout)
            baseline[f] = status
            log(f"baseline {f}: {status} ({secs:.0f} s)")
        results = []
        for m in mutants:
            path = root / m.file
            assert path.resolve().is_relative_to(root.resolve())               # only ever the copy
            text = path.read_text()
            tests = [f for f in m.tests if baseline[f] != "absent"]
            entry = {"id": m.id, "file": m.file, "why": m.why, "tests": tests}
            if len(tests) < len(m.tests):
                entry["absent"] = [f for f in m.tests if f not in tests]
            faulty = text.replace(m.original, m.faulty)
            if text.count(m.original) != 1:
                entry.update(status="not_applicable", detail=f"original text found {text.count(m.original)} times")
            elif m.file.endswith(".py") and not _compiles(faulty, m.file):
                entry.update(status="not_compilable", detail="the faulty file is not valid Python: any test "
                                                             "would catch it, so it proves nothing")
            elif not tests or any(baseline[f] != "pass" for f in tests):
                entry.update(status="baseline_fails", detail={f: baseline[f] for f in m.tests})
            else:
                path.write_text(faulty)
                try:
                    status, secs, tail = run_tests(root, tests, timeout)
                finally:
                    path.write_text(text)
                caught = status in ("fail", "timeout")
                entry.update(status="caught" if caught else "missed", seconds=round(secs, 1))
                if caught:
                    entry["by"] = first_failure(tail) if status == "fail" else "timeout"
            log(f"{m.id}: {entry['status']}")
            results.append(entry)
    applicable = [r for r in results if r["status"] in ("caught", "missed")]
    n_caught = sum(r["status"] == "caught" for r in applicable)
    return {"tool": "mutation_check", "tests_from": f"git:{tests_ref}" if tests_ref else "working tree",
            "baseline": baseline, "mutants": results, "caught": n_caught, "applicable": len(applicable),
            "share_caught": round(n_caught / len(applicable), 3) if applicable else None,
            "missed": [r["id"] for r in applicable if r["status"] == "missed"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]), help="repo root (default: this checkout)")
    ap.add_argument("--tests-from-git-ref", default=None, metavar="REF",
                    help="take tests/ from this git ref (e.g. HEAD) instead of the working tree")
    ap.add_argument("--only", nargs="+", default=None, metavar="ID", help="run only these mutants")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per pytest run (a hang counts as caught)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)

    mutants = MUTANTS
    if a.only:
        unknown = sorted(set(a.only) - {m.id for m in MUTANTS})
        if unknown:
            print(f"error: --only: unknown mutant(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in MUTANTS if m.id in a.only]
    if a.list:
        for m in mutants:
            print(f"{m.id:24s} {m.file}: {m.why}")
        return 0
    repo = Path(a.repo).resolve()
    if not (repo / "pyproject.toml").is_file():
        print(f"error: --repo: no pyproject.toml in {repo}", file=sys.stderr)
        return 2
    out = check(repo, mutants, a.tests_from_git_ref, a.timeout, log=lambda s: print(s, file=sys.stderr, flush=True))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
