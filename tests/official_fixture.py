"""The golden fixtures of the official VINCIE code (tests/fixtures/official/, written by
vincie-official-golden): our model group for each fixture's official NaDiT arguments."""
import json
from pathlib import Path

FIX = Path(__file__).resolve().parent / "fixtures" / "official"
META = json.loads((FIX / "meta.json").read_text())


def model_dict(name: str) -> dict:
    """Our model group ("3b" | "7b") for the fixture's official NaDiT arguments."""
    m = META["configs"][name]
    n, C = m["nadit"], m["latent_channels"]
    p, D = n["patch_size"][1], n["vid_dim"]
    return dict(variant="official", hidden_size=D, num_layers=n["num_layers"], mm_layers=n["mm_layers"],
                num_heads=n["heads"], head_dim=n["head_dim"],
                ffn_hidden_size=-(-int(2 * D * n["expand_ratio"] / 3) // 256) * 256,   # the release's SwiGLU rule
                text_dim=m["text_in_dim"], patch_dim=C * p * p, image_in_dim=(2 * C + 1) * p * p,
                max_turns=m["max_turns"], rope_axes_dim=[n["rope_dim"] // 3] * 3,
                text_proj="mlp_norm" if n.get("txt_proj_type") == "mlp" else "linear",
                rope_image_origin="zero" if n["rope_type"] == "mmrope3d_v3" else "after_text",
                norm_eps=n["norm_eps"], qk_norm_eps=n["norm_eps"], attention_backend="torch", adaln_zero_init=False)
