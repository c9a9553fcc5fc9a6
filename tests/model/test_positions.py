"""Where the model puts its tokens: RoPE as wired into attention, the (turn, h, w) axes, the abs table.

Every expectation here is computed by hand from the rules, not from the code's helpers:

* RoPE: channel pair j of an axis with d channels turns by ``pos * theta ** (-2j / d)``; image
  tokens use (turn, h, w) over ``rope_axes_dim`` = (8, 12, 12) of head_dim 32, text ("separate")
  one position over all 32 channels, counting the session's text tokens from 0.
* Token i of an h x w image sits at row ``i // w``, column ``i % w`` (row-major, like patchify).
* The learned table (``image_abs_pos_grid = n``) holds row ``h * n + w`` for grid cell (h, w).

Images are non-square (2 x 3 and 3 x 2 tokens) so that swapping h and w moves every token off the
diagonal *and* changes the grid itself.
"""
from dataclasses import replace

import pytest
import torch

from model_batches import make_batch, tiny_cfg
from vincie_mcore.model import build_model

THETA = 10000.0
# (turn, h, w): two sessions, every image non-square; the noisy twin shares its clean twin's place
SESSIONS = [[("clean", 2, 3, 0), ("text", 4, 0), ("clean", 3, 2, 3), ("noisy", 3, 2, 3)],
            [("clean", 3, 2, 0), ("text", 3, 0), ("noisy", 2, 3, 3)]]


def _hand_positions(blocks):
    """Text: [S_txt] per-session counters from 0; image: [S_img, 3] (turn, i // w, i % w), from the block list."""
    txt, img, seen = [], [], {}
    for b in blocks:
        if b["stream"] == "txt":
            start = seen.get(b["session"], 0)
            txt += list(range(start, start + b["n"]))
            seen[b["session"]] = start + b["n"]
        else:
            img += [(b["turn"], i // b["w"], i % b["w"]) for i in range(b["n"])]
    return torch.tensor(txt), torch.tensor(img)


def _hand_angles(pos, axes):
    """[S, n_axes] positions -> [S, sum(axes)/2] angles, axis by axis, pair j turning at theta^(-2j/d)."""
    cols = []
    for a, d in enumerate(axes):
        for j in range(d // 2):
            cols.append(pos[:, a].double() * THETA ** (-2.0 * j / d))
    return torch.stack(cols, 1)


@pytest.fixture(scope="module")
def model(megatron_cpu):
    torch.manual_seed(0)
    return build_model(tiny_cfg(), device="cpu")


def _capture_rope(model, x, batch):
    """The (cos, sin) every layer's attention receives during a forward."""
    seen = []
    hooks = [layer.attention.register_forward_pre_hook(lambda mod, args: seen.append(args[2]))
             for layer in model.layers]
    try:
        with torch.no_grad():
            model(x, batch)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(model.layers)
    return seen


def test_rope_tables_follow_turn_h_w_on_non_square_grids(model):
    """Every layer's attention gets cos/sin of the hand-computed (turn, h, w) / text positions."""
    batch, blocks = make_batch(SESSIONS, "block_causal", 64, 192, seed=1)
    txt_pos, img_pos = _hand_positions(blocks)
    assert torch.equal(batch.img_pos, img_pos) and torch.equal(batch.txt_pos, txt_pos)
    cfg = model.cfg
    ang = torch.cat([_hand_angles(txt_pos[:, None], (cfg.head_dim,)),
                     _hand_angles(img_pos, cfg.rope_axes_dim)])                 # (S_joint, head_dim/2)
    # the same tables with h and w swapped must be far off (so the check below can tell them apart)
    ang_swapped = torch.cat([ang[:batch.s_txt], _hand_angles(img_pos[:, [0, 2, 1]], cfg.rope_axes_dim)])
    assert (torch.cos(ang_swapped) - torch.cos(ang)).abs().max() > 0.1
    for cos, sin in _capture_rope(model, batch.img_x0, batch):
        torch.testing.assert_close(cos.double(), torch.cos(ang), rtol=0, atol=1e-6)
        torch.testing.assert_close(sin.double(), torch.sin(ang), rtol=0, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
@torch.no_grad()
def test_rope_reaches_queries_and_keys(model, axis):
    """RoPE scores depend on q - k positions only if both q and k are rotated: moving every token
    (text and image) by the same step along one axis leaves the model output unchanged, while moving
    the image tokens alone (a new text-to-image offset) changes it."""
    batch, _ = make_batch(SESSIONS, "block_causal", 64, 192, seed=2)
    t = batch.txt_pos
    txt3 = torch.stack([t % 5, t // 2, t], 1)             # 3D text positions ("interleaved" RoPE)
    step = torch.zeros(3, dtype=torch.long)
    step[axis] = 7
    base = replace(batch, txt_pos=txt3)
    both = replace(batch, txt_pos=txt3 + step, img_pos=batch.img_pos + step)
    image_only = replace(batch, txt_pos=txt3, img_pos=batch.img_pos + step)
    x = batch.img_x0
    out = model(x, base)
    torch.testing.assert_close(model(x, both), out, rtol=0, atol=1e-5)      # fp32 noise: ~2e-7
    assert (model(x, image_only) - out).abs().max() > 1e-4                  # measured: ~6e-4


def test_abs_pos_table_row_of_each_token(megatron_cpu):
    """image_abs_pos_grid: the image stream entering the first block is img_embedder(x) + table[h * n + w],
    with (h, w) from the hand grid; a hook on the first block reads it."""
    n = 4
    torch.manual_seed(0)
    m = build_model(tiny_cfg(image_abs_pos_grid=n), device="cpu")
    with torch.no_grad():                                 # distinct, large rows: any wrong row is visible
        m.img_pos_embedder.weight.copy_(torch.randn(n * n, m.cfg.hidden_size))
    batch, blocks = make_batch(SESSIONS, "block_causal", 64, 192, seed=3)
    _, img_pos = _hand_positions(blocks)
    seen = []
    hook = m.layers[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0][1][:, 0].clone()))
    try:
        with torch.no_grad():
            m(batch.img_x0, batch)
    finally:
        hook.remove()
    table = m.img_pos_embedder.weight.detach()
    with torch.no_grad():
        want = m.img_embedder(batch.img_x0) + torch.stack([table[h * n + w] for _, h, w in img_pos.tolist()])
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-6)
