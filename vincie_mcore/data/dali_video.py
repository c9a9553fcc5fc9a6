"""Decode a real video's sampled frames with DALI: NVDEC on a GPU (``device="gpu"``), or DALI's
CPU decoder (``device="cpu"``). This is ``build.decode.backend: dali``, the counterpart of the
PyAV seek path (``video.read_at_times``).

DALI takes frame indices (``fn.experimental.decoders.video(frames=...)``). The shot scan supplies
every frame's presentation time, so a wanted time maps to the frame on screen then
(``video.frame_at``), exactly as in the PyAV path. The decoded frames are then turned upright by
the stream's rotation, which DALI does not apply.

On a GPU the decoder runs on this process's own device: ``LOCAL_RANK`` (set by torchrun and by our
Slurm scripts), not device 0. DALI's CPU decoder in this build reads VP9 but not H.264. Tests compare
it with PyAV on VP9. The two differ only by YUV-to-RGB rounding and chroma upsampling (mean |diff|
about 2.5 levels).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .video import VideoError, frame_at, upright


def device_id() -> int:
    """This process's GPU: ``LOCAL_RANK``, else 0."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def read_indices_dali(path, indices, rotation: int = 0, device: str = "gpu") -> np.ndarray:
    """Frames ``indices`` (decode order) of ``path`` -> upright uint8 [K, H, W, 3]."""
    from nvidia.dali import fn, pipeline_def, types

    if device not in ("gpu", "cpu"):
        raise ValueError(f"build.decode.dali_device: must be 'gpu' or 'cpu', got {device!r}")
    data = np.frombuffer(Path(path).read_bytes(), np.uint8)
    idx = [int(i) for i in indices]

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id() if device == "gpu" else None,
                  prefetch_queue_depth=1)
    def pipe():
        enc = fn.external_source(source=lambda: [data], batch=True, dtype=types.UINT8, no_copy=True)
        return fn.experimental.decoders.video(enc, device="mixed" if device == "gpu" else "cpu", frames=idx)

    try:
        p = pipe()
        p.build()
        (out,) = p.run()
    except RuntimeError as e:
        first = " ".join(str(e).split())[:200]
        raise VideoError(f"{Path(path).name}: DALI ({device}) could not decode it: {first}") from None
    batch = out.as_cpu() if device == "gpu" else out
    frames = np.asarray(batch.as_tensor())[0]                      # [K, H, W, 3]
    if len(frames) != len(idx):
        raise VideoError(f"{Path(path).name}: DALI gave {len(frames)} frames for {len(idx)} indices")
    return np.stack([upright(f, rotation) for f in frames])


def read_at_times_dali(path, times, frame_times, rotation: int = 0, device: str = "gpu"):
    """As ``video.read_at_times``: (frames, the times they were shown), from the scan's frame times."""
    ft = np.asarray(frame_times)
    idx = [frame_at(ft, float(t)) for t in times]
    frames = read_indices_dali(path, idx, rotation, device)
    return list(frames), [float(ft[i]) for i in idx]
