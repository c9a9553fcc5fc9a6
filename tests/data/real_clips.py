"""Test clips for the real-video pipeline, written with PyAV: scenes of known content that
switch at known frames, in H.264 (MP4) or VP9 (WebM), and the deliberately bad files.

Scene kinds (each a function of the frame number within the scene, so motion is known):
``moving`` (a square crossing a textured background), ``gradient`` (a drifting colour
ramp), ``still`` (a fixed texture: a static shot), ``freeze`` (moving, then held still,
then moving again), ``black``, ``grey`` (one flat colour). Each scene has its own palette
so that the cuts between them are unambiguous.
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

CODECS = {"h264": ("libx264", ".mp4", {"g": "12", "preset": "ultrafast", "crf": "16", "bf": "2"}),
          "vp9": ("libvpx-vp9", ".webm", {"g": "12", "deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"})}


def _texture(h, w, seed):
    r = np.random.default_rng(seed)
    base = r.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]


def scene_frame(kind: str, k: int, h: int, w: int, palette: int) -> np.ndarray:
    """Frame ``k`` of a scene: uint8 [h, w, 3]."""
    colours = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (160, 40, 200), (40, 200, 200)]
    c = np.array(colours[palette % len(colours)], np.uint8)
    if kind == "black":
        return np.zeros((h, w, 3), np.uint8)
    if kind == "grey":
        return np.full((h, w, 3), 128, np.uint8)
    if kind == "gradient":
        x = (np.arange(w) * 3 + 4 * k) % 256                                       # [w], drifts with k
        y = np.arange(h) * 2                                                        # [h]
        return np.clip(0.5 * c + 0.4 * x[None, :, None] + 0.2 * y[:, None, None], 0, 255).astype(np.uint8)
    img = (_texture(h, w, palette) // 3 + c // 2).astype(np.uint8)
    if kind == "still":
        return img
    if kind == "freeze":                                  # moves for 12 frames, holds, moves again after 36
        k = k if k < 12 else 12 if k < 36 else k - 24
    elif kind != "moving":
        raise ValueError(kind)
    s = max(6, h // 4)
    x = (3 * k) % max(1, w - s)
    y = (h - s) // 2
    img = img.copy()
    img[y:y + s, x:x + s] = 255 - c
    return img


def make_frames(scenes, h: int = 72, w: int = 96) -> tuple[np.ndarray, list[int]]:
    """``scenes``: [(kind, n_frames)]. Returns (frames [T, h, w, 3], cut frames: each scene's first frame after 0)."""
    frames, cuts, t = [], [], 0
    for p, (kind, n) in enumerate(scenes):
        if t:
            cuts.append(t)
        frames += [scene_frame(kind, k, h, w, p) for k in range(n)]
        t += n
    return np.stack(frames), cuts


def write_clip(path, frames: np.ndarray, codec: str = "h264", fps: int = 24, pts_ms=None, rotation: int = 0,
               faststart: bool = False) -> None:
    """Frames -> a file. ``pts_ms``: each frame's time in milliseconds (a variable frame rate);
    ``rotation``: a display matrix turning the picture that many degrees counter-clockwise."""
    name, _, opts = CODECS[codec]
    T, H, W, _ = frames.shape
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        st = out.add_stream(name, rate=fps)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.options = dict(opts)
        tb = Fraction(1, 1000) if pts_ms is not None else Fraction(1, fps)
        st.time_base = tb
        st.codec_context.time_base = tb                   # else the encoder rounds pts to 1/fps
        if rotation:
            st.set_display_rotation(rotation)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = i if pts_ms is None else int(pts_ms[i])
            vf.time_base = tb
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def write_audio_only(path) -> None:
    with av.open(str(path), "w") as out:
        st = out.add_stream("aac", rate=16000)
        for i in range(20):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def corrupt_middle_packet(src, dst) -> None:
    """Copy ``src`` with the payload of a packet past the middle overwritten by random bytes."""
    with av.open(str(src)) as c:
        pk = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size and p.pos is not None and p.pos >= 0]
    pos, size = pk[len(pk) // 2 + 3]
    data = bytearray(open(src, "rb").read())
    data[pos + 4:pos + size - 4] = np.random.default_rng(1).integers(0, 256, size - 8, dtype=np.uint8).tobytes()
    open(dst, "wb").write(bytes(data))


def unsupported_codec(src, dst) -> None:
    """Copy an MP4 with its sample entry's codec tag renamed to one no decoder knows."""
    data = open(src, "rb").read()
    assert data.count(b"avc1") >= 1
    open(dst, "wb").write(data.replace(b"avc1", b"zzz1"))
