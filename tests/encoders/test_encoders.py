"""Frozen encoders: the real `transformers` / `diffusers` loading paths on tiny random configs."""
import numpy as np
import pytest
import torch

from vincie_mcore.encoders import ImageEncoderConfig, TextEncoder, TextEncoderConfig, build_image_encoder


def test_tiny_text_encoder_is_deterministic_and_per_text():
    a = TextEncoder(TextEncoderConfig(seed=3))
    b = TextEncoder(TextEncoderConfig(seed=3))
    x, y = a.encode(["add a red square", "remove it"])
    assert x.shape == (len("add a red square") + 1, 64) and y.shape == (len("remove it") + 1, 64)   # bytes + </s>
    torch.testing.assert_close(b.encode(["remove it"])[0], y)
    # each text is encoded alone: its embedding does not depend on what it was batched with
    torch.testing.assert_close(a.encode(["remove it", "something much longer than before"])[0], y,
                               rtol=1e-5, atol=1e-5)


def test_text_pooling_is_a_windowed_mean_of_the_unpooled_output():
    raw = TextEncoder(TextEncoderConfig(seed=2)).encode(["move the red circle"])[0]        # 19 bytes + </s> = 20
    pooled = TextEncoder(TextEncoderConfig(seed=2, pool=3)).encode(["move the red circle"])[0]
    assert pooled.shape == (7, 64)                                                       # ceil(20 / 3)
    ref = torch.stack([raw[i:i + 3].mean(0) for i in range(0, raw.shape[0], 3)])         # last window: 2 rows
    torch.testing.assert_close(pooled, ref)
    with pytest.raises(ValueError, match="text_encoder.pool"):
        TextEncoderConfig(pool=0)


def test_pretrained_text_encoder_loads_from_local_folder(tmp_path):
    tiny = TextEncoder(TextEncoderConfig(seed=1))
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = TextEncoder(TextEncoderConfig(kind="pretrained", path=str(tmp_path)))
    torch.testing.assert_close(loaded.encode(["make the blue circle bigger"])[0],
                               tiny.encode(["make the blue circle bigger"])[0])


def test_text_encoder_config_errors_name_the_key():
    with pytest.raises(ValueError, match="text_encoder.path"):
        TextEncoderConfig(kind="pretrained")
    with pytest.raises(ValueError, match="text_encoder.kind"):
        TextEncoderConfig(kind="clip")


def test_pixel_encoder_roundtrip_is_exact():
    enc = build_image_encoder(ImageEncoderConfig())
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    z = enc.encode(img)
    assert z.shape == (2, 3, 8, 8) and z.min() >= -1 and z.max() <= 1
    assert torch.equal(enc.decode(z), img)


def test_vae_encoder_loads_from_local_folder(tmp_path):
    tiny = build_image_encoder(ImageEncoderConfig(kind="vae", tiny_random=True))
    tiny.vae.save_pretrained(tmp_path)
    loaded = build_image_encoder(ImageEncoderConfig(kind="vae", path=str(tmp_path)))
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))
    z = loaded.encode(img)
    assert z.shape == (1, 16, 8, 8) and loaded.downsample == 2 and loaded.channels == 16
    torch.testing.assert_close(z, tiny.encode(img))
    out = loaded.decode(z)
    assert out.shape == (1, 16, 16, 3) and out.dtype == torch.uint8
