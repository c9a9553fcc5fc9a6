"""Tiny randomly initialised GroundingDINO and SAM2, saved with save_pretrained into a folder.

The real transformers classes at toy sizes (a few hundred thousand parameters), so the segmenter's
real code runs on CPU in seconds with no hub access. Random weights: the boxes and masks are
meaningless, but their shapes, types and the plumbing are real.
"""
from __future__ import annotations

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "an", "the", "red", "blue", "green", "white",
         "wooden", "square", "circle", "man", "woman", "cat", "dog", "cup", "chair", "in", "coat", "with", "hat"]


def save_tiny_grounding_dino(folder) -> str:
    from vincie_mcore.perf.bench_quality import save_grounding_dino

    return save_grounding_dino(folder, tiny=True, words=WORDS)


def save_tiny_sam2(folder, size: int = 128) -> str:
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2Model,
                              Sam2PromptEncoderConfig, Sam2VisionConfig)

    s = size
    hiera = Sam2HieraDetConfig(hidden_size=16, num_attention_heads=1, image_size=[s, s], blocks_per_stage=[1, 1, 2, 1],
                               embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
                               window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],   # not a pooling block
                               window_positional_embedding_background_size=[4, 4])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16],
                              backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
                              fpn_hidden_size=32)
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=s, patch_size=16, mask_input_channels=4)
    decoder = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2,
                                    iou_head_hidden_dim=32)
    Sam2Model(Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
              ).save_pretrained(folder)
    return str(folder)
