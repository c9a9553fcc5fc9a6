"""The one loader for images we did not write ourselves: ``load_image``.

Every user-supplied image (``vincie-edit --image``, a session store's PNGs read
through the PIL path) goes through it. Rules, each tested in
tests/security/test_hostile_media.py:

- Formats: PNG (and APNG), JPEG (and MPO), GIF, WebP, TIFF, BMP only. Pillow's
  other plugins are never tried (EPS, for one, would start Ghostscript).
- Size: at most ``max_bytes`` bytes of file and ``max_pixels`` declared pixels.
  The pixel count is read from the header (``Image.open`` decodes no pixels)
  and a larger image is refused before any pixel is decoded, so a PNG that
  declares 50,000 x 50,000 costs a few kB, not 7.5 GB. Pillow's own global
  ``Image.MAX_IMAGE_PIXELS`` is left as the process set it: it still refuses
  what exceeds twice its value (then with Pillow's own wording), and its
  warning is silenced here because ``max_pixels`` is the check that decides.
- Truncated or corrupt data: refused in one line naming the file. Refused too
  while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is on (someone in the process
  turned it on): Pillow would then pad a truncated file with grey, silently.
  A PNG whose compressed data ends cleanly but holds fewer rows than its header
  declares (Pillow pads those with black, without a word) is caught by
  counting the inflated IDAT bytes against the header's (``_check_png_rows``).
- CPU bombs: a progressive JPEG's decode time grows with its number of scans,
  which a hostile file can make huge while staying small; more than
  ``max_jpeg_scans`` scans (default 100; encoders write about 10) are refused
  from the markers, before any pixel is decoded (``jpeg_scans``).
- Modes, all to uint8 RGB:
  ``RGB``, ``L``, ``1``, ``P`` (no transparency), ``CMYK``, ``YCbCr``: Pillow's
  ``convert("RGB")`` (CMYK naively, R = (255 - C)(255 - K) / 255 rounded; no ICC
  colour management for any mode);
  16-bit gray (``I;16*``) and 32-bit ``I`` (read as 16-bit, clipped to 0..65535):
  the high byte, v >> 8 (Pillow does the same for 16-bit RGB PNGs; its own
  ``convert`` clips 16-bit gray at 255 instead, turning most of it white);
  anything with alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, or a
  ``transparency`` entry): composited on white, round((c a + 255 (255 - a)) / 255);
  ``F`` (float, no defined range) and other modes: refused.
- Animated GIF/APNG/WebP (and multi-page TIFF): the first frame, and a one-line
  warning on the ``vincie_mcore.data.media`` logger saying so. Later frames
  are never decoded.
- EXIF orientation is not applied: the pixels come out as stored.
"""
from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

log = logging.getLogger(__name__)

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")     # JPEG covers MPO (phone photos)
MAX_PIXELS = 64 * 2**20          # 8192 x 8192: 192 MiB as RGB
MAX_BYTES = 256 * 2**20
MAX_JPEG_SCANS = 100             # libjpeg's simple progression writes 10 (colour) or 6 (gray)


class MediaError(ValueError):
    """An image that cannot be used; the message is one line naming it."""


def _one_line(e) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def load_image(src, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, name: str | None = None,
               max_jpeg_scans: int = MAX_JPEG_SCANS) -> np.ndarray:
    """A path or encoded bytes -> uint8 [H, W, 3] RGB, by the rules above; MediaError (one line) otherwise.

    ``name`` labels the image in errors (default: the file name, or "<bytes>").
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        data = bytes(src)
        if len(data) > max_bytes:
            raise MediaError(f"image {name} refused: {len(data)} bytes exceeds max_bytes={max_bytes}")
        return _decode(io.BytesIO(data), name, max_pixels, max_jpeg_scans)
    p = Path(src)
    name = name or p.name
    try:
        size = os.stat(p).st_size
        if not p.is_file():
            raise MediaError(f"image {name}: not a regular file")
        if size > max_bytes:
            raise MediaError(f"image {name} refused: {size} bytes exceeds max_bytes={max_bytes}")
        with open(p, "rb") as f:
            return _decode(f, name, max_pixels, max_jpeg_scans)
    except OSError as e:                                   # missing, unreadable: the open, not the decode
        raise MediaError(f"image {name}: cannot read it: {type(e).__name__}: {_one_line(e.strerror or e)}") from None


def _decode(fp, name: str, max_pixels: int, max_jpeg_scans: int = MAX_JPEG_SCANS) -> np.ndarray:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise MediaError(f"image {name} refused: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on in this process "
                         "(it pads truncated files with grey); turn it off")
    Image.init()                                           # register the plugins FORMATS names (WEBP, TIFF)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # max_pixels decides, below
            im = Image.open(fp, formats=FORMATS)                               # header only
    except Image.DecompressionBombError as e:
        raise MediaError(f"image {name} refused before decoding: {_one_line(e)}") from None
    except UnidentifiedImageError:
        raise MediaError(f"image {name}: not an image, or not one of {', '.join(FORMATS)}") from None
    except Exception as e:  # noqa: BLE001 - a malformed header raises many types
        raise MediaError(f"image {name}: corrupt header: {type(e).__name__}: {_one_line(e)}") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise MediaError(f"image {name} refused before decoding: {w}x{h} = {w * h} pixels "
                             f"exceeds max_pixels={max_pixels} (a decompression bomb?)")
        if w < 1 or h < 1:
            raise MediaError(f"image {name}: empty ({w}x{h})")
        if im.format in ("JPEG", "MPO"):
            fp.seek(0)
            scans = jpeg_scans(fp.read())
            if scans > max_jpeg_scans:
                raise MediaError(f"image {name} refused before decoding: {scans} JPEG scans exceed "
                                 f"max_jpeg_scans={max_jpeg_scans} (a CPU bomb?)")
        if getattr(im, "is_animated", False):             # only asks whether a second frame exists
            log.warning("image %s is animated (%s): using its first frame", name, im.format)
        try:
            im.load()                                      # frame 0 only
            if im.format == "PNG":
                fp.seek(0)
                _check_png_rows(fp.read(), name)
            return _to_rgb(im, name)
        except MediaError:
            raise
        except MemoryError:
            raise MediaError(f"image {name}: out of memory decoding {w}x{h} {im.format}") from None
        except Exception as e:  # noqa: BLE001 - truncated data surfaces as OSError, SyntaxError, EOFError, ...
            raise MediaError(f"image {name}: truncated or corrupt {im.format}: {type(e).__name__}: {_one_line(e)}") from None


# a marker after entropy-coded data: 0xFF (fill bytes too) then a code that is not a stuffed 0x00 or a restart
_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS markers) of the first image of a JPEG (an MPO's frame 0), from its
    markers: segment lengths through the headers, a search for the next marker through each scan's
    entropy-coded data (where 0xFF is stuffed as FF 00). Reads no pixel."""
    i, scans, n = 2, 0, len(data)
    while i + 3 < n:
        if data[i] != 0xFF:
            return scans                                   # not at a marker: corrupt; the decoder says how
        m = data[i + 1]
        if m == 0xFF:                                      # fill byte
            i += 1
            continue
        if m == 0xD9:                                      # EOI: the end of frame 0
            break
        if 0xD0 <= m <= 0xD7 or m == 0x01:                 # markers without a length
            i += 2
            continue
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if m == 0xDA:
            scans += 1
            nxt = _JPEG_MARKER.search(data, i)
            if nxt is None:
                break
            i = nxt.end() - 2
    return scans


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png_rows(data: bytes, name: str) -> None:
    """Refuse a PNG whose inflated image data (IDAT) is shorter than its header's rows need: Pillow
    pads the missing rows with black when the zlib stream ends cleanly. Inflated in 1 MiB steps,
    counted, never held."""
    i, ihdr, idat = 8, None, []
    while i + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data[i + 8:i + 21])
        elif kind == b"IDAT":
            idat.append(data[i + 8:i + 8 + length])
        elif kind == b"IEND":
            break
        i += 12 + length
    if ihdr is None:
        return
    w, h, depth, color, _, _, interlace = ihdr
    bits = depth * _PNG_CHANNELS.get(color, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    want = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx) if w > x0 else 0, -(-(h - y0) // dy) if h > y0 else 0
        if pw and ph:
            want += ph * (1 + -(-pw * bits // 8))       # a filter byte, then the row's bytes
    inflate, got = zlib.decompressobj(), 0
    for chunk in idat:
        buf = chunk
        while buf and got < want:
            got += len(inflate.decompress(buf, 1 << 20))
            buf = inflate.unconsumed_tail
    if got < want:
        raise MediaError(f"image {name}: truncated PNG: its image data inflates to {got} of the {want} bytes "
                         f"its {w}x{h} header needs (the missing rows would be padded)")


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.clip(np.asarray(im).astype(np.int32), 0, 65535) >> 8                  # [H, W] high byte
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.int32)                       # [H, W, 4]
        c, a = rgba[..., :3], rgba[..., 3:]
        return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)               # over white, rounded
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB"))
    raise MediaError(f"image {name}: unsupported pixel mode {mode}")


def image_cell(cell, where: str, folder=None) -> np.ndarray:
    """An image as a dataset row holds it: Hugging Face's ``{bytes, path}``, raw bytes, or a file name
    under ``folder`` (checked to stay inside it) -> uint8 [H, W, 3]; one line naming ``where`` otherwise."""
    try:
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return load_image(cell["bytes"], name=where)
            cell = cell.get("path")
        if isinstance(cell, (bytes, bytearray)):
            return load_image(cell, name=where)
        if isinstance(cell, str) and folder is not None:
            from ..paths import inside
            return load_image(inside(folder, cell, "image"), name=where)
    except MediaError as e:                  # it names the image already (name=where)
        raise ValueError(str(e)) from None
    except ValueError as e:                  # a file name that leaves the folder
        raise ValueError(f"{where}: {e}") from None
    raise ValueError(f"{where}: no image (expected {{bytes, path}}, bytes or a file name)")
