"""Tiny randomly initialised GroundingDINO and SAM2, saved with save_pretrained into a folder.

The real transformers classes at toy sizes (a few hundred thousand parameters), so the segmenter's
real code runs on CPU in seconds with no hub access. Random weights: the boxes and masks are
meaningless, but their shapes, types and the plumbing are real.
"""
from __future__ import annotations

from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "an", "the", "red", "blue", "green", "white",
         "wooden", "square", "circle", "man", "woman", "cat", "dog", "cup", "chair", "in", "coat", "with", "hat"]


def save_tiny_grounding_dino(folder) -> str:
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, SwinConfig)
    from transformers.models.grounding_dino import GroundingDinoImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS))
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                      out_features=["stage2", "stage3", "stage4"])
    bert = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, num_queries=20, max_text_len=32, num_feature_levels=4,
                              encoder_n_points=2, decoder_n_points=2, use_timm_backbone=False)
    GroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(
        size={"shortest_edge": 128, "longest_edge": 192}), tokenizer=tok)
    proc.save_pretrained(folder)
    return str(folder)


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
