"""Golden outputs of the official VINCIE DiT at tiny random sizes (docs/official.md).

    vincie-official-golden --official-repo PATH --out tests/fixtures/official/ [--commit HASH]

PATH is an extracted copy of github.com/ByteDance-Seed/VINCIE (never our library: its code is only
imported here, in this tool). Two tiny configs with the released structure are built on the CPU in fp32:

* ``3b``: ``models.dit.nadit.NaDiT`` as ``configs/generate.yaml`` sets it up (patch 1x2x2, linear text
  projection, ``mmrope3d``: text j at (j, j, j), image i at (L_text + i, h, w), 2 unrotated channels);
* ``7b``: as ``configs/generate_7b.yaml`` (patch 1, ``patch_type v2``, text MLP + RMSNorm, ``mmrope3d_v3``:
  image i at (i, h, w), unrotated tail), when the checkout's ``models/dit/rope.py`` has ``mmrope3d_v3``.

A 3-step CFG sampling run (the release's Euler sampler, schedule, shift and CFG scale, a negative prompt)
follows on the first session. One denoiser forward runs on two sessions packed the official way (per sample: every turn's text as
[<turn_id> embedding, tokens] concatenated; frames [x_t | clean latent | flag], last frame without
context; one t per sample). The full-size release's tensor names and shapes, built by the official code
from its yaml on the meta device, go to ``<out>/<name>_release_shapes.json``. Weights (official names), inputs and outputs go to
``<out>/<name>.safetensors``, provenance to ``<out>/meta.json``.

Stand-ins, only inside this tool and only for packages our lock lacks (each named in meta.json):
``flash_attn`` (exact per-sample attention in fp32), ``apex.normalization`` (diffusers' RMSNorm /
torch LayerNorm, the same formulas), ``einops`` (torch's ``functorch.einops.rearrange`` plus the one
``repeat`` pattern the rotary code uses), ``beartype`` (no type checks), ``tabulate`` (reports only). The official attention casts
q/k/v to bf16 for flash-attention; during the golden forward ``Tensor.bfloat16`` returns the tensor
unchanged so the reference stays fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

# tiny configs with the released structure (same keys as the official yaml)
TINY = {
    "3b": dict(latent_channels=4, txt_in=24, kwargs=dict(
        vid_dim=40, txt_dim=40, heads=2, head_dim=20, expand_ratio=4, norm="fusedrms", norm_eps=1e-5,
        ada="single", qk_bias=False, qk_norm="fusedrms", patch_size=[1, 2, 2], num_layers=3, mm_layers=1,
        mlp_type="swiglu", block_type="mmdit", msa_type="mm_full", rope_type="mmrope3d", rope_dim=20,
        vid_out_norm="fusedrms", txt_in_norm="fusedln"),
        latent_hw=(4, 4), module="models.dit.nadit"),
    "7b": dict(latent_channels=6, txt_in=24, kwargs=dict(
        vid_dim=32, txt_dim=32, heads=2, head_dim=24, expand_ratio=4, norm="fusedrms", norm_eps=1e-5,
        ada="single", qk_bias=False, qk_norm="fusedrms", patch_size=[1, 1, 1], num_layers=3, mm_layers=1,
        mlp_type="swiglu", block_type="mmdit", msa_type="mm_full", rope_type="mmrope3d_v3", rope_dim=18,
        vid_out_norm="fusedrms", txt_in_norm="fusedrms", txt_proj_type="mlp", patch_type="v2"),
        latent_hw=(3, 2), module="models.dit.nadit"),
}
MAX_TURNS = 64            # configs/generate*.yaml prompt_id_embedding.max_num_prompts
# two sessions: (number of frames, tokens per turn text, t on the official 0..1000 scale)
SESSIONS = [(3, [3, 2], 750.0), (2, [4], 250.0)]
# the release's sampler settings (configs/generate.yaml, generate_7b.yaml): shift, CFG scale; 3 steps here
SAMPLER = {"3b": (12.0, 7.5), "7b": (10.0, 10.0)}
SAMPLE_STEPS, NEG_TOKENS = 3, 5


# ----------------------------------------------------------------------------
# Stand-ins for packages the lock lacks (installed into sys.modules only when missing)
# ----------------------------------------------------------------------------

def _flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                       dropout_p=0.0, softmax_scale=None, causal=False, deterministic=False, **_):
    """flash_attn_varlen_func's contract: q [Lq, H, d], k/v [Lk, H, d], each segment attends to itself."""
    assert not causal and dropout_p == 0.0
    out = torch.empty_like(q)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qs, ks = q[cq[i]:cq[i + 1]].transpose(0, 1), k[ck[i]:ck[i + 1]].transpose(0, 1)
        vs = v[ck[i]:ck[i + 1]].transpose(0, 1)
        out[cq[i]:cq[i + 1]] = F.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale).transpose(0, 1)
    return out


def _einops_repeat(x, pattern, **sizes):
    if pattern.replace(" ", "") != "...n->...(nr)":
        raise NotImplementedError(f"einops stand-in: repeat pattern {pattern!r}")
    return x.repeat_interleave(sizes["r"], dim=-1)


def _install_standins() -> list[str]:
    used = []

    def missing(name):
        try:
            importlib.import_module(name)
            return False
        except ImportError:
            return True

    if missing("einops"):
        from functorch.einops import rearrange
        m = types.ModuleType("einops")
        m.rearrange, m.repeat = rearrange, _einops_repeat
        sys.modules["einops"] = m
        used.append("einops: functorch.einops.rearrange + repeat('... n -> ... (n r)')")
    if missing("beartype"):
        import typing
        m = types.ModuleType("beartype")
        m.beartype = lambda f: f
        sys.modules["beartype"], sys.modules["beartype.typing"] = m, typing
        used.append("beartype: identity decorator, typing for beartype.typing")
    if missing("apex"):
        from diffusers.models.normalization import RMSNorm

        class FusedRMSNorm(RMSNorm):
            def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True):
                super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine)

        def FusedLayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True):
            return torch.nn.LayerNorm(normalized_shape, eps=eps, elementwise_affine=elementwise_affine)

        apex, norm = types.ModuleType("apex"), types.ModuleType("apex.normalization")
        norm.FusedRMSNorm, norm.FusedLayerNorm = FusedRMSNorm, FusedLayerNorm
        apex.normalization = norm
        sys.modules["apex"], sys.modules["apex.normalization"] = apex, norm
        used.append("apex.normalization: diffusers RMSNorm / torch LayerNorm")
    if missing("tabulate"):     # imported by common/mlao (activation-memory reports), never called here
        m = types.ModuleType("tabulate")
        m.tabulate = lambda rows, *a, **k: "\n".join(map(str, rows))
        sys.modules["tabulate"] = m
        used.append("tabulate: plain rows (reports only)")
    return used


def _import_official() -> list[str]:
    """Import the official DiT modules; a missing flash_attn is replaced while they import only (a
    module left in sys.modules would make transformers believe flash-attention is installed)."""
    stub = importlib.util.find_spec("flash_attn") is None
    if stub:
        m = types.ModuleType("flash_attn")
        m.flash_attn_varlen_func = _flash_attn_varlen
        m.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)   # no distribution: transformers sees none
        sys.modules["flash_attn"] = m
    try:
        for name in ("models.dit.nadit", "models.embedding.prompt_emb", "models.dit.rope", "common.diffusion"):
            importlib.import_module(name)
    finally:
        if stub:
            del sys.modules["flash_attn"]
    return ["flash_attn: exact per-sample SDPA in fp32"] if stub else []


@contextlib.contextmanager
def _fp32_attention():
    """The official attention casts q/k/v to bf16 for flash-attention; keep fp32 for the golden."""
    orig = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = orig


# ----------------------------------------------------------------------------
# Build, run, save
# ----------------------------------------------------------------------------

def _session_inputs(name: str, spec: dict, txt_in: int, gen: torch.Generator) -> dict:
    """Random official-layout inputs for SESSIONS: per-turn token embeddings, latents, noise, t."""
    C, (H, W) = spec["latent_channels"], spec["latent_hw"]
    out = {}
    for s, (frames, turn_lens, t) in enumerate(SESSIONS):
        for j, n in enumerate(turn_lens):
            out[f"s{s}.text{j}"] = torch.randn(n, txt_in, generator=gen)           # text-encoder rows of turn j
        out[f"s{s}.latents"] = torch.randn(frames, H, W, C, generator=gen)         # last frame: the target
        out[f"s{s}.x_t"] = torch.randn(frames, H, W, C, generator=gen)
        out[f"s{s}.t"] = torch.tensor([t])
    return out


def _official_condition(latents: torch.Tensor) -> torch.Tensor:
    """generate.py get_condition: context frames carry [latent | 1], the last frame zeros."""
    T, H, W, C = latents.shape
    cond = torch.zeros(T, H, W, C + 1)
    cond[:-1, ..., :-1] = latents[:-1]
    cond[:-1, ..., -1] = 1.0
    return cond


def run_config(name: str, repo: Path, seed: int = 0) -> tuple[dict, dict, dict]:
    spec = TINY[name]
    NaDiT = importlib.import_module(spec["module"]).NaDiT
    PromptEmbedding = importlib.import_module("models.embedding.prompt_emb").PromptEmbedding
    C = spec["latent_channels"]
    kw = dict(spec["kwargs"])
    txt_in_dim = [spec["txt_in"]] if kw.get("txt_proj_type") == "mlp" else spec["txt_in"]
    torch.manual_seed(seed)
    dit = NaDiT(vid_in_channels=2 * C + 1, vid_out_channels=C, txt_in_dim=txt_in_dim,
                emb_dim=6 * kw["vid_dim"], **kw)
    dit.prompt_id_embedding = PromptEmbedding(max_num_prompts=MAX_TURNS, embedding_dim=spec["txt_in"])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # random, away from init: unit norm gains and zero biases would hide mapping errors
        for p in dit.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
            # on the bf16 grid: stored in bf16 (half the fixture), exact in the fp32 forward
            p.copy_(p.to(torch.bfloat16).float())
    dit.eval()

    inputs = _session_inputs(name, spec, spec["txt_in"], gen)
    vids, vid_shapes, txts, txt_shapes, ts = [], [], [], [], []
    with torch.no_grad():
        for s, (frames, turn_lens, t) in enumerate(SESSIONS):
            txts.append(_session_text(dit, [inputs[f"s{s}.text{j}"] for j in range(len(turn_lens))]))
            txt_shapes.append(sum(turn_lens) + len(turn_lens))
            cond = _official_condition(inputs[f"s{s}.latents"])
            vid = torch.cat([inputs[f"s{s}.x_t"], cond], dim=-1)                   # (T, H, W, 2C+1)
            vids.append(vid.reshape(-1, vid.shape[-1]))
            vid_shapes.append(list(vid.shape[:3]))
            ts.append(t)
        txt = torch.cat(txts)
        txt_shape = torch.tensor(txt_shapes)[:, None]
        with _fp32_attention():
            out = dit(vid=torch.cat(vids), txt=[txt] if isinstance(txt_in_dim, list) else txt,
                      vid_shape=torch.tensor(vid_shapes), txt_shape=[txt_shape] if isinstance(txt_in_dim, list)
                      else txt_shape, timestep=torch.tensor(ts)).vid_sample
    params = {n for n, _ in dit.named_parameters()}
    sd = {k: (v.to(torch.bfloat16) if k in params else v).detach().clone().contiguous()
          for k, v in dit.state_dict().items()}
    inputs.update(_sample(dit, name, inputs, txt_in_dim, gen))
    inputs["out"] = out.contiguous()                                                  # (sum T*H*W, C)
    cfg = {"latent_channels": C, "latent_hw": list(spec["latent_hw"]), "text_in_dim": spec["txt_in"],
           "max_turns": MAX_TURNS, "nadit": {**kw, "vid_in_channels": 2 * C + 1, "vid_out_channels": C,
                                             "txt_in_dim": txt_in_dim, "emb_dim": 6 * kw["vid_dim"]},
           "sessions": [{"frames": f, "turn_tokens": n, "t": t} for f, n, t in SESSIONS]}
    return sd, inputs, cfg


def _session_text(dit, turns: list[torch.Tensor]) -> torch.Tensor:
    """generate.py get_session_text_embedding + fuse_prompt_id_emb("seq_concat") for one sample."""
    ids = torch.arange(len(turns))[None]
    turn_emb = dit(is_forward_pie=True, prompt_id=ids)[0]                                # (n_turns, txt_in)
    return torch.cat([torch.cat([turn_emb[j:j + 1], t]) for j, t in enumerate(turns)])


def _sample(dit, name: str, inputs: dict, txt_in_dim, gen: torch.Generator) -> dict:
    """SAMPLE_STEPS Euler steps with CFG against a negative prompt, as generate.py's ``inference`` runs them,
    on session 0 (noise: its x_t, context: its latents)."""
    from omegaconf import OmegaConf

    from common.diffusion import (classifier_free_guidance_dispatcher, create_sampler_from_config,
                                  create_sampling_timesteps_from_config, create_schedule_from_config)
    shift, scale = SAMPLER[name]
    frames, turn_lens, _ = SESSIONS[0]
    neg_rows = torch.randn(NEG_TOKENS, inputs["s0.text0"].shape[1], generator=gen)
    schedule = create_schedule_from_config(OmegaConf.create({"type": "lerp", "T": 1000.0}), "cpu")
    timesteps = create_sampling_timesteps_from_config(
        OmegaConf.create({"type": "uniform_trailing", "steps": SAMPLE_STEPS, "shift": shift}), schedule, "cpu")
    sampler = create_sampler_from_config(OmegaConf.create({"type": "euler", "prediction_type": "v_lerp"}),
                                         schedule, timesteps)
    listed = isinstance(txt_in_dim, list)
    with torch.no_grad():
        pos = _session_text(dit, [inputs[f"s0.text{j}"] for j in range(len(turn_lens))])
        neg = _session_text(dit, [neg_rows])         # the negative prompt is one sentence with prompt id 0
        cond = _official_condition(inputs["s0.latents"])
        T, H, W, _ = cond.shape
        cond = cond.reshape(-1, cond.shape[-1])
        vid_shape = torch.tensor([[T, H, W]])

        def run(x_t, t, txt):
            shape = torch.tensor([[txt.shape[0]]])
            return dit(vid=torch.cat([x_t, cond], -1), txt=[txt] if listed else txt, vid_shape=vid_shape,
                       txt_shape=[shape] if listed else shape, timestep=t.repeat(1)).vid_sample

        with _fp32_attention():
            out = sampler.sample(x=inputs["s0.x_t"].reshape(-1, inputs["s0.x_t"].shape[-1]),
                                 f=lambda a: classifier_free_guidance_dispatcher(
                                     pos=lambda: run(a.x_t, a.t, pos), neg=lambda: run(a.x_t, a.t, neg), scale=scale))
    return {"sample.neg_text": neg_rows, "sample.out": out.contiguous(),
            "sample.settings": torch.tensor([SAMPLE_STEPS, shift, scale])}


RELEASE_YAML = {"3b": "configs/generate.yaml", "7b": "configs/generate_7b.yaml"}
# without turbox, c6ee69b resolves these to the classes the 30fcf36 registries name
NO_TURBOX = {"msa_type": {"fused_mm_full": "mm_full"}, "ada": {"fused_single": "single"}}


def release_shapes(name: str, repo: Path) -> dict | None:
    """Names and shapes of the full-size release DiT as the official code builds it from its yaml (meta
    device: no memory, no data), prompt-id table included. None when the checkout lacks the yaml."""
    from omegaconf import OmegaConf
    f = repo / RELEASE_YAML[name]
    if not f.is_file():
        return None
    if not OmegaConf.has_resolver("eval"):
        # the official yaml computes emb_dim as ${eval:'6 * ${.vid_dim}'}: integer arithmetic only here
        OmegaConf.register_new_resolver("eval", lambda e: int(eval(e, {"__builtins__": {}})))
    y = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
    kw = {k: v for k, v in y["dit"]["model"].items() if k != "__object__"}
    for key, sub in NO_TURBOX.items():
        kw[key] = sub.get(kw[key], kw[key])
    pe = {k: v for k, v in y["prompt_id_embedding"]["model"].items() if k != "__object__"}
    NaDiT = importlib.import_module("models.dit.nadit").NaDiT
    PromptEmbedding = importlib.import_module("models.embedding.prompt_emb").PromptEmbedding
    with torch.device("meta"):
        dit = NaDiT(**kw)
        dit.prompt_id_embedding = PromptEmbedding(**pe)
    return {"yaml": RELEASE_YAML[name], "substituted": NO_TURBOX,
            "negative_prompt": y.get("generation", {}).get("negative_prompt"),
            "shapes": {k: list(v.shape) for k, v in dit.state_dict().items()}}


def _git_head(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official-repo", required=True, type=Path, help="extracted ByteDance-Seed/VINCIE checkout")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--commit", default=None, help="the checkout's commit when it has no .git")
    ap.add_argument("--configs", default="3b,7b", help="comma-separated subset of " + ",".join(TINY))
    args = ap.parse_args(argv)
    repo = args.official_repo.resolve()
    if not (repo / "models" / "dit" / "nadit.py").is_file():
        raise SystemExit(f"--official-repo: {repo} has no models/dit/nadit.py")
    from safetensors.torch import save_file

    standins = _install_standins()
    sys.path.insert(0, str(repo))
    standins += _import_official()
    torch.set_default_dtype(torch.float32)
    rope = importlib.import_module("models.dit.rope")
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"configs": {}}
    for name in [c for c in args.configs.split(",") if c]:
        if name not in TINY:
            raise SystemExit(f"--configs: unknown config {name!r}; known: {sorted(TINY)}")
        try:
            rope.get_na_rope(TINY[name]["kwargs"]["rope_type"], 12)
        except NotImplementedError:
            print(f"skip {name}: this checkout's rope.py has no {TINY[name]['kwargs']['rope_type']}")
            continue
        sd, inputs, cfg = run_config(name, repo)
        save_file(sd, str(args.out / f"{name}_weights.safetensors"))
        save_file(inputs, str(args.out / f"{name}_io.safetensors"))
        # provenance: the commit, the stand-ins, and every official source file this run imported
        cfg["official_commit"] = args.commit or _git_head(repo)
        cfg["standins"] = standins
        cfg["attention"] = "Tensor.bfloat16 is the identity during the forward (fp32 reference)"
        cfg["sources_sha256"] = dict(sorted(
            (str(Path(m.__file__).resolve().relative_to(repo)), hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest())
            for m in list(sys.modules.values())
            if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(repo)))
        full = release_shapes(name, repo)
        if full is not None:
            (args.out / f"{name}_release_shapes.json").write_text(json.dumps(full, indent=0) + "\n")
        meta["configs"][name] = cfg
        print(f"{name}: {sum(v.numel() for v in sd.values())} weights, out {tuple(inputs['out'].shape)}")
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
