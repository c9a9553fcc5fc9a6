"""Frozen encoders: text (T5 encoder) and image (VAE, or pixel space for the synthetic world).

Both are frozen during VINCIE training (paper §C.4), so their outputs are
computed once per unique text / image and cached by the data side.
"""
from .image import ImageEncoderConfig, build_image_encoder
from .text import TextEncoder, TextEncoderConfig

__all__ = ["TextEncoder", "TextEncoderConfig", "ImageEncoderConfig", "build_image_encoder"]
