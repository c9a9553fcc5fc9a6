"""The released models' encoders: text encoders against transformers run by hand the released way,
the 3B's causal video VAE against golden outputs of the official code (tests/fixtures/official_vae/)."""
import json
from pathlib import Path

import pytest
import torch

from vincie_mcore.encoders import TextEncoder, TextEncoderConfig

LONG = "make the sky a deep orange and " * 8            # 240 bytes: cut at max_length


def _byt5(tmp_path):
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    tok.save_pretrained(tmp_path)
    return tok


# ---------------------------------------------------------------------------------------------- text

def test_t5_official_is_the_masked_encoder_last_state_at_150(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    _byt5(tmp_path)
    T5EncoderModel(T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                            feed_forward_proj="gated-gelu", dropout_rate=0.0)).save_pretrained(tmp_path)
    enc = TextEncoder(TextEncoderConfig(kind="official", path=str(tmp_path)))
    assert enc.cfg.max_tokens == 150 and enc.dim == 32
    texts = ["remove the hat", LONG]
    got = enc.encode(texts)

    # by hand, the released code's way: padded to 150, mask to the encoder, last state at mask
    tok = AutoTokenizer.from_pretrained(tmp_path, model_max_length=150)
    model = T5EncoderModel.from_pretrained(tmp_path).eval()
    t = tok(texts, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state
    m = t.attention_mask.bool()
    assert got[0].shape == (len("remove the hat") + 1, 32) and got[1].shape == (150, 32)
    for i in range(2):
        torch.testing.assert_close(got[i], h[i][m[i]], rtol=0, atol=1e-6)


def _qwen2_tokenizer(tmp_path):
    """A byte-level BPE without merges (one token per byte) plus <|endoftext|>, as Qwen2's files."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.save_pretrained(tmp_path)
    return tok


def test_decoder_llm_official_appends_one_end_token_and_keeps_the_last_state(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tok = _qwen2_tokenizer(tmp_path)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=False)).save_pretrained(tmp_path)
    enc = TextEncoder(TextEncoderConfig(kind="official", path=str(tmp_path)))
    texts = ["remove the hat", LONG, "a"]
    got = enc.encode(texts)

    # by hand and independently of padding: each prompt alone, its tokens then <|endoftext|>
    # (over the 150th token when cut), through the causal LM's stack without its head
    lm = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    eot = tok.convert_tokens_to_ids("<|endoftext|>")       # the released code's pad token
    for text, g in zip(texts, got):
        ids = tok(text).input_ids
        ids = (ids + [eot]) if len(ids) < 150 else (ids[:149] + [eot])
        with torch.no_grad():
            ref = lm.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        assert g.shape == (len(ids), 32)
        torch.testing.assert_close(g, ref, rtol=0, atol=1e-5)


def test_official_text_errors_name_the_folder_and_key(tmp_path):
    with pytest.raises(ValueError, match="text_encoder.path: .* has no config.json"):
        TextEncoder(TextEncoderConfig(kind="official", path=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen", "auto_map": {}}))
    with pytest.raises(ValueError, match="text_encoder.trust_remote_code: .*'qwen'"):
        TextEncoder(TextEncoderConfig(kind="official", path=str(tmp_path)))
    # a folder whose tokenizer files do not fit its model_type's tokenizer class (transformers 5 then
    # builds an empty vocabulary silently)
    from transformers import Qwen2Config

    (tmp_path / "config.json").unlink()
    Qwen2Config(vocab_size=512).save_pretrained(tmp_path)
    _byt5(tmp_path)
    with pytest.raises(ValueError, match="text_encoder.path: .*turns text into no tokens"):
        TextEncoder(TextEncoderConfig(kind="official", path=str(tmp_path)))
    with pytest.raises(ValueError, match="text_encoder.path: required"):
        TextEncoderConfig(kind="official")


# ----------------------------------------------------------------------------------------------- VAE

FIX = Path(__file__).parents[1] / "fixtures" / "official_vae"
ARCH_KEYS = {"3b": ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups"),
             "7b": ("enc_block_out_channels", "dec_block_out_channels", "enc_layers_per_block",
                    "dec_layers_per_block", "latent_channels")}
COMMITS = {"3b": "30fcf36", "7b": "c6ee69b"}


def _golden(variant="3b"):
    from safetensors.torch import load_file

    meta = json.loads((FIX / "meta.json").read_text())[variant]
    assert meta["official_commit"].startswith(COMMITS[variant])
    arch = {k: meta["config"][k] for k in ARCH_KEYS[variant]}
    return (load_file(str(FIX / f"{variant}_weights.safetensors")), load_file(str(FIX / f"{variant}_io.safetensors")),
            arch)



@pytest.mark.parametrize("variant", ["3b", "7b"])
def test_vae_matches_the_official_causal_video_vae_on_one_frame(variant):
    from vincie_mcore.encoders.official_vae import load_official_vae

    sd, io, arch = _golden(variant)
    vae = load_official_vae(None, variant, arch, sd=sd).eval()
    with torch.no_grad():
        post = vae.encode(io["image"]).latent_dist
        recon = vae.decode(io["mean"]).sample
    torch.testing.assert_close(post.mean, io["mean"], rtol=0, atol=1e-5)
    torch.testing.assert_close(post.logvar, io["logvar"], rtol=0, atol=1e-5)
    torch.testing.assert_close(recon, io["recon"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant,down,scale,shift", [("3b", 8, 0.9152, 0.0), ("7b", 2, 0.9045, -0.0025)])
def test_official_vae_encoder_from_a_pth_applies_the_released_scaling(tmp_path, variant, down, scale, shift):
    from vincie_mcore.encoders import ImageEncoderConfig, build_image_encoder

    sd, io, arch = _golden(variant)
    torch.save(sd, tmp_path / "vae.pth")
    enc = build_image_encoder(ImageEncoderConfig(kind="official_vae", path=str(tmp_path / "vae.pth"),
                                                 variant=variant, arch=arch))
    assert enc.downsample == down and enc.channels == 4 and (enc.scale, enc.shift) == (scale, shift)
    z = enc.encode(io["pixels"])                                    # generate.py: (mean - shift) * scale
    torch.testing.assert_close(z, (io["mean"] - shift) * scale, rtol=0, atol=1e-5)
    out = enc.decode(z).int()                                       # decode(latent / scale + shift)
    ref = ((io["recon"].clamp(-1, 1) + 1) * 127.5).round().int().permute(0, 2, 3, 1)
    assert out.shape == (1, 32, 24, 3) and (out - ref).abs().max() <= 1     # rounding ties only


def test_official_vae_errors_name_the_file_and_tensors(tmp_path):
    from vincie_mcore.encoders import ImageEncoderConfig, build_image_encoder

    sd, _, arch = _golden()
    cfg = lambda p, **k: ImageEncoderConfig(kind="official_vae", path=str(p), arch=arch, **k)   # noqa: E731
    with pytest.raises(ValueError, match="image_encoder.path: .*nope.pth.* is not a file"):
        build_image_encoder(cfg(tmp_path / "nope.pth"))
    broken = dict(sd)
    broken.pop("decoder.conv_out.bias")
    broken["discriminator.w"] = torch.zeros(1)
    torch.save(broken, tmp_path / "a.pth")
    with pytest.raises(ValueError, match=r"1 unknown tensors: discriminator\.w$"):
        build_image_encoder(cfg(tmp_path / "a.pth"))
    broken.pop("discriminator.w")
    torch.save(broken, tmp_path / "b.pth")
    with pytest.raises(ValueError, match=r"1 missing tensors: decoder\.conv_out\.bias$"):
        build_image_encoder(cfg(tmp_path / "b.pth"))
    torch.save(sd, tmp_path / "vae.pth")
    with pytest.raises(ValueError, match=r"tensors of the wrong shape .*encoder\.conv_out\.weight \(8, 16"):
        build_image_encoder(ImageEncoderConfig(kind="official_vae", path=str(tmp_path / "vae.pth"),
                                               arch={**arch, "latent_channels": 8}))
    with pytest.raises(ValueError, match="image_encoder.variant: .*'9b'"):
        build_image_encoder(cfg(tmp_path / "vae.pth", variant="9b"))
    with pytest.raises(ValueError, match="image_encoder.arch: unknown keys for variant '7b': block_out_channels"):
        build_image_encoder(cfg(tmp_path / "vae.pth", variant="7b"))


@pytest.mark.parametrize("variant,patch,remote", [("3b", 2, True), ("7b", 1, False)])
def test_official_data_presets_build_the_official_encoder_configs(variant, patch, remote):
    from vincie_mcore.build import data_configs
    from vincie_mcore.config import load_config

    cfg = load_config([f"data=official_{variant}", "data.corpus.store=x", "data.text_encoder.path=t",
                       "data.image_encoder.path=vae.pth"])
    dc = data_configs(cfg)
    t, i = dc["text"], dc["image"]
    assert (t.kind, t.max_tokens, t.pool, t.dtype, t.trust_remote_code) == ("official", 150, 1, "bfloat16", remote)
    assert (i.kind, i.variant, i.path) == ("official_vae", variant, "vae.pth") and dc["pack"].patch_size == patch
