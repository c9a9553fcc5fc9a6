"""Session pixels: DALI decodes (and optionally resizes) the stored PNG bytes.

Pipeline: ``fn.external_source`` (encoded bytes) -> ``fn.decoders.image``
(device "cpu", or "mixed" = nvJPEG/GPU) -> ``fn.resize`` (linear, antialiased)
when a size is given. ``decode_images_pil`` is the CPU reference the DALI path
is tested against: PIL decodes, and ``resize_reference`` (numpy) resamples with
the filter DALI documents for linear + antialias: a triangle of radius
max(1, in/out) around each output pixel centre, edges clamped. (PIL's own
BILINEAR renormalises at the borders instead of clamping, which differs by
up to ~15 levels when downscaling.) Exact without resize, within 1 with it.

Masks travel in the same batch as frames: they are grayscale PNGs decoded to
RGB (three equal channels) and channel 0 is kept; after a resize they are
soft (0..255) at the object borders.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .media import load_image
from .store import RawSession, SessionStore

_PIPES: dict = {}


def _bucket(n: int) -> int:
    """Pipelines are built for a max batch size rounded up to a power of two (>= 8); smaller batches reuse them."""
    return max(8, 1 << (n - 1).bit_length())


def _size_hw(size):
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def _pipeline(max_batch: int, size, device: str):
    key = (max_batch, size, device)
    if key in _PIPES:
        return _PIPES[key]
    from nvidia.dali import fn, pipeline_def, types

    # on a GPU, this process's own device (torchrun's LOCAL_RANK), not every rank on device 0
    gpu = int(os.environ.get("LOCAL_RANK", 0))

    @pipeline_def(batch_size=max_batch, num_threads=2, device_id=gpu if device != "cpu" else None,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def pipe():
        enc = fn.external_source(name="enc", device="cpu", dtype=types.UINT8, ndim=1)
        img = fn.decoders.image(enc, device=device, output_type=types.RGB)
        if size is not None:
            img = fn.resize(img, resize_y=size[0], resize_x=size[1], interp_type=types.INTERP_LINEAR, antialias=True)
        return img

    p = pipe()
    p.build()
    _PIPES[key] = p
    return p


def devices_used() -> list[dict]:
    """The DALI pipelines this process built so far: their decoder device ("cpu" | "mixed") and GPU id
    (None on CPU). What the latent store records, so a check can tell where decoding really ran."""
    used = {(d, p.device_id if d != "cpu" else None) for (_, _, d), p in _PIPES.items()}   # one per batch size
    return [{"device": d, "device_id": i} for d, i in sorted(used, key=lambda x: (x[0], x[1] or 0))]


def decode_images(encoded: list, size=None, device: str = "cpu") -> list[np.ndarray]:
    """Decode (and resize to ``size`` = int or (h, w)) encoded images with DALI -> uint8 [H, W, 3] each."""
    if device not in ("cpu", "mixed"):
        raise ValueError(f"device must be 'cpu' or 'mixed', got {device!r}")
    if not encoded:
        return []
    size = _size_hw(size)
    p = _pipeline(_bucket(len(encoded)), size, device)
    p.feed_input("enc", [np.frombuffer(b, np.uint8) for b in encoded])
    (out,) = p.run()
    if device != "cpu":
        out = out.as_cpu()
    return [np.array(out.at(i)) for i in range(len(encoded))]


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """float [n_out, n_in]: linear (antialiased when shrinking) resampling with clamped edges."""
    scale = n_in / n_out
    r = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale                       # output pixel centres, input coordinates
    span = int(np.ceil(r)) + 1
    taps = np.floor(centre)[:, None] + np.arange(-span, span + 1)[None]   # [n_out, taps] input pixel indices
    w = np.clip(1 - np.abs(taps + 0.5 - centre[:, None]) / r, 0, None)
    w /= w.sum(1, keepdims=True)
    W = np.zeros((n_out, n_in))
    np.add.at(W, (np.repeat(np.arange(n_out), taps.shape[1]), np.clip(taps, 0, n_in - 1).astype(int).ravel()), w.ravel())
    return W


def resize_reference(img: np.ndarray, size) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [h, w, C], DALI's linear antialiased resize written in numpy."""
    h, w = _size_hw(size)
    x = np.einsum("oi,ijc->ojc", _triangle_weights(img.shape[0], h), img.astype(np.float64))   # [h, W, C]
    x = np.einsum("oj,ijc->ioc", _triangle_weights(img.shape[1], w), x)                      # [h, w, C]
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def decode_images_pil(encoded: list, size=None) -> list[np.ndarray]:
    """The reference: PIL decode (+ ``resize_reference``) -> uint8 [H, W, 3] each.

    Through ``media.load_image`` (a store may come from elsewhere: a bomb or a
    truncated PNG is refused in one line); for the 8-bit RGB and gray PNGs a
    store holds that is exactly ``convert("RGB")``.
    """
    out = []
    for i, b in enumerate(encoded):
        im = load_image(b, name=f"stored image {i}")
        out.append(im if size is None else resize_reference(im, size))
    return out


@dataclass
class DecodedSession:
    frames: np.ndarray     # uint8 [K, H, W, 3]
    roe_src: np.ndarray    # uint8 [K-1, H, W] (0 / 255; soft at borders after a resize)
    roe_tgt: np.ndarray    # uint8 [K-1, H, W]
    texts: list
    cameras: list
    states: list | None
    meta: dict
    video_id: str = ""
    captions: list | None = None   # K frame captions, or None


def _assemble(s: RawSession, imgs: list) -> DecodedSession:
    k = s.num_frames
    frames = np.stack(imgs[:k])                                      # [K, H, W, 3]
    masks = np.stack([m[..., 0] for m in imgs[k:]])                  # [2(K-1), H, W]
    return DecodedSession(frames, masks[:k - 1], masks[k - 1:], list(s.texts), list(s.cameras), s.states,
                          dict(s.meta), s.video_id, None if s.captions is None else list(s.captions))


def decode_session(s: RawSession, size=None, device: str = "cpu") -> DecodedSession:
    """All 3K - 2 images of one session in one DALI batch."""
    return _assemble(s, decode_images(s.images(), size, device))


def decode_store(store: SessionStore, indices=None, size=None, batch_sessions: int = 64, device: str = "cpu",
                 progress: bool = True) -> list[DecodedSession]:
    """Decode many sessions (all by default), ``batch_sessions`` per DALI batch."""
    from tqdm import tqdm
    indices = list(range(len(store))) if indices is None else list(indices)
    out = []
    with tqdm(total=len(indices), desc="decode", unit="sess", disable=not progress) as bar:
        for a in range(0, len(indices), batch_sessions):
            raws = [store[i] for i in indices[a:a + batch_sessions]]
            imgs = decode_images([b for s in raws for b in s.images()], size, device)
            j = 0
            for s in raws:
                n = 3 * s.num_frames - 2
                out.append(_assemble(s, imgs[j:j + n]))
                j += n
            bar.update(len(raws))
    return out
