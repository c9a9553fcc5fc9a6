"""Hostile media gets one line and loses nothing (issue 16, part 3).

Images: ``vincie_mcore.data.media.load_image`` (the one loader for user images). Each hostile
input gets its one-line refusal or its documented conversion, checked against values written
out by hand; the bomb is refused with bounded memory (peak RSS measured in a subprocess).
Videos: ``build_sessions`` over a folder holding real hostile files (a 1 MB VP9 that decodes
20,000 frames; a 3 MB MJPEG whose frames are 8192 x 8192) next to good videos writes every good
session and records each hostile one with its reason, within the time and memory limits.
"""
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image, ImageFile

from vincie_mcore.data.build import build_sessions
from vincie_mcore.data.sampling import SamplingConfig
from vincie_mcore.data.media import MediaError, load_image
from vincie_mcore.data.store import SessionStore
from vincie_mcore.data.video import write_synthetic_corpus
from vincie_mcore.data.world import demo_config

MiB = 2**20


def _one_line_error(src, match, **kw) -> str:
    with pytest.raises(MediaError) as e:
        load_image(src, **kw)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def _run_py(code: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter (its own peak RSS); it prints one JSON line last."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- crafted files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(w: int, h: int) -> bytes:
    """A valid 1-bit gray PNG of w x h zeros, a few hundred kB: one deflate segment repeated
    (a full flush makes each segment independent), then the zlib trailer."""
    rows = 1000 if h % 1000 == 0 else 1
    chunk = b"\0" * ((1 + (w + 7) // 8) * rows)                 # filter byte + packed bits, per row
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(h // rows):
        adler = zlib.adler32(chunk, adler)
    z = b"\x78\xda" + seg * (h // rows) + b"\x03\x00" + struct.pack(">I", adler)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", z) + _png_chunk(b"IEND", b""))


def _mux(path, codec, packets, w, h, pix_fmt, all_key=False, fps=8):
    """Write encoded packets as they are (no re-encoding) into a container."""
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=fps)
        st.width, st.height, st.pix_fmt = w, h, pix_fmt
        st.time_base = Fraction(1, fps)
        for i, data in enumerate(packets):
            p = av.Packet(data)
            p.stream, p.pts, p.dts, p.time_base = st, i, i, Fraction(1, fps)
            p.is_keyframe = all_key or i == 0
            out.mux(p)


def frame_bomb(path, n=100_000, w=640, h=360):
    """VP9: a keyframe, then one 39-byte inter frame repeated: ~4.4 MB that decodes n frames.
    A frame takes 0.12 ms (Intel box, PyAV alone) to 1 ms (AMD box, through read_video): 100,000
    frames outlast a 3 s limit on both by 4x or more (20,000 did not on the Intel box)."""
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    cc = av.CodecContext.create("libvpx-vp9", "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = w, h, "yuv420p", Fraction(1, 8)
    cc.options = {"deadline": "realtime", "cpu-used": "8", "error-resilient": "1", "lag-in-frames": "0"}
    pk = []
    for i in range(2):
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = i
        pk += [bytes(p) for p in cc.encode(f)]
    pk += [bytes(p) for p in cc.encode(None)]
    assert len(pk) == 2 and len(pk[1]) < 100, [len(p) for p in pk]
    _mux(path, "libvpx-vp9", [pk[0]] + [pk[1]] * (n - 1), w, h, "yuv420p")


def huge_frames(path, side=8192, n=4):
    """MJPEG: n frames of side x side gray, ~0.8 MB each; read_video keeps 3 as RGB: 3 x 192 MiB."""
    b = io.BytesIO()
    Image.new("L", (side, side), 77).save(b, "JPEG", quality=90)
    _mux(path, "mjpeg", [b.getvalue()] * n, side, side, "yuvj420p", all_key=True)


# ----------------------------------------------------------------------------- images: bombs and sizes
def test_png_bomb_is_refused_before_decoding_with_bounded_memory(tmp_path):
    """50,000 x 50,000 (7.5 GB as RGB) in a 300 kB file: one line, and the decode's peak RSS
    grows by a few MB. With Pillow's global limit off (another library may do that) our own
    check refuses it alike. The subprocess caps its address space at +1 GiB, so a loader without
    the check fails there with MemoryError instead of eating the machine."""
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb(50000, 50000))
    out = _run_py(f"""
        import json, resource
        from PIL import Image
        from vincie_mcore.data.media import MediaError, load_image
        vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
        out = {{}}
        for limit in ("default", "off"):
            if limit == "off":
                Image.MAX_IMAGE_PIXELS = None
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                load_image({str(p)!r})
                msg = None
            except MediaError as e:
                msg = str(e)
            out[limit] = {{"msg": msg, "growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0}}
        print(json.dumps(out))
    """)
    for limit, r in out.items():
        msg = r["msg"]
        assert msg is not None and "\n" not in msg and "image bomb.png refused before decoding" in msg
        assert r["growth_kb"] * 1024 < 32 * MiB, out              # a full decode: 50000**2 * 3 B = 7.5 GB
    assert "50000x50000 = 2500000000 pixels exceeds max_pixels=67108864" in out["off"]["msg"]


def test_the_bomb_generator_makes_a_real_decodable_png():
    """The same generator at 2000 x 3000: Pillow decodes all of it (so the 50,000 one is a real
    bomb, not a broken file); load_image with a 1-Mpixel limit refuses it before decoding."""
    data = png_bomb(2000, 3000)
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.size == (2000, 3000) and im.mode == "1" and im.getextrema() == (0, 0)
    _one_line_error(data, "2000x3000 = 6000000 pixels exceeds max_pixels=1000000", max_pixels=10**6)
    assert load_image(data, max_pixels=6 * 10**6).shape == (3000, 2000, 3)            # at the limit: loads


def test_a_file_over_max_bytes_is_refused_unread(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(png_bomb(64, 64) + b"\0" * 5000)
    msg = _one_line_error(p, "image big.png refused", max_bytes=4096)
    assert f"{p.stat().st_size} bytes exceeds max_bytes=4096" in msg
    _one_line_error(p.read_bytes(), "image <bytes> refused", max_bytes=4096)


# ----------------------------------------------------------------------------- images: truncated
def _encoded(fmt, **kw) -> tuple[np.ndarray, bytes]:
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, fmt, **kw)
    return a, b.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_image_is_refused_never_padded(tmp_path, fmt, keep, monkeypatch):
    a, data = _encoded(fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[:int(len(data) * keep)])
    _one_line_error(p, f"image cut.{fmt.lower()}: truncated or corrupt {fmt}")
    # the same file is what Pillow pads silently once LOAD_TRUNCATED_IMAGES is on; then we refuse outright
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    padded = np.asarray(Image.open(p).convert("RGB"))
    assert padded.shape == a.shape
    _one_line_error(p, "LOAD_TRUNCATED_IMAGES is on")


def _png(a: np.ndarray, interlace: bool = False, drop_rows: int = 0) -> bytes:
    """An 8-bit RGB PNG of ``a`` written by hand (filter 0 rows, Adam7 passes when ``interlace``), its
    zlib stream complete; the last ``drop_rows`` rows of the last pass left out."""
    def chunk(kind, d):
        return struct.pack(">I", len(d)) + kind + d + struct.pack(">I", zlib.crc32(kind + d) & 0xFFFFFFFF)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)] \
        if interlace else [(0, 0, 1, 1)]
    rows = [b"\x00" + r.tobytes() for x0, y0, dx, dy in passes if a[y0::dy, x0::dx].size
            for r in a[y0::dy, x0::dx]]
    raw = b"".join(rows[:len(rows) - drop_rows])
    h, w = a.shape[:2]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, int(interlace)))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("interlace", [False, True])
def test_png_with_too_few_rows_is_refused_not_padded(interlace):
    """A PNG whose zlib stream ends cleanly but short of its header's rows: Pillow pads it with black
    without a word; we count the inflated bytes against the header's and refuse it."""
    a = np.random.default_rng(3).integers(1, 256, (13, 11, 3), dtype=np.uint8)
    assert np.array_equal(load_image(_png(a, interlace)), a)                  # the writer is right: exact
    short = _png(a, interlace, drop_rows=2)
    padded = Image.open(io.BytesIO(short))
    padded.load()                                                             # Pillow: no error ...
    assert (np.asarray(padded.convert("RGB")) == 0).any()                     # ... and black rows
    msg = _one_line_error(short, "image <bytes>: truncated PNG: its image data inflates to ")
    assert re.search(r"inflates to \d+ of the \d+ bytes its 11x13 header needs", msg)


def _jpeg_segments(data: bytes):
    """(start of the last scan's SOS, start of EOI) of a JPEG written by Pillow."""
    return data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")


def test_jpeg_scans_are_counted_and_a_scan_bomb_is_refused_before_decoding():
    """Scan counts against libjpeg's simple progression (10 scans in colour, 6 in gray; a baseline file
    has 1); a small progressive file whose last scan repeats 400 times (decode time grows with the
    scans) is refused from its markers, and passes to the decoder when the limit allows it."""
    from vincie_mcore.data.media import jpeg_scans

    a = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    counts = {}
    for mode in ("RGB", "L"):
        for prog in (False, True):
            b = io.BytesIO()
            Image.fromarray(a).convert(mode).save(b, "JPEG", progressive=prog)
            counts[mode, prog] = jpeg_scans(b.getvalue())
    assert counts == {("RGB", False): 1, ("RGB", True): 10, ("L", False): 1, ("L", True): 6}
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", progressive=True, quality=90)
    data = b.getvalue()
    sos, eoi = _jpeg_segments(data)
    bomb = data[:eoi] + data[sos:eoi] * 400 + data[eoi:]
    assert jpeg_scans(bomb) == 410
    assert _one_line_error(bomb, "refused") == ("image <bytes> refused before decoding: 410 JPEG scans exceed "
                                                "max_jpeg_scans=100 (a CPU bomb?)")
    try:                                           # a raised limit hands it to the decoder
        load_image(bomb, max_jpeg_scans=1000)
    except MediaError as e:
        assert "max_jpeg_scans" not in str(e)
    assert load_image(data).shape == a.shape       # an ordinary progressive file is read


# ----------------------------------------------------------------------------- images: modes
def _load(im: Image.Image, fmt: str, **kw) -> np.ndarray:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return load_image(b.getvalue())


def test_rgb_png_and_gray_are_exact():
    a, data = _encoded("PNG")
    assert np.array_equal(load_image(data), a)
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(_load(Image.fromarray(g), "PNG"), np.repeat(g[..., None], 3, -1))
    bits = np.array([[0, 1, 1, 0]] * 4, bool)
    assert np.array_equal(_load(Image.fromarray(bits), "PNG")[..., 1], bits * 255)


def test_cmyk_is_the_naive_formula():
    """Expectation written out: R = round((255 - C) (255 - K) / 255), likewise G (M), B (Y)."""
    c = np.random.default_rng(1).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    got = _load(Image.fromarray(c, "CMYK"), "TIFF")
    k = 255 - c[..., 3:].astype(float)
    assert np.array_equal(got, np.round((255 - c[..., :3].astype(float)) * k / 255).astype(np.uint8))
    assert got[0, 0].dtype == np.uint8 and got.shape == (16, 16, 3)


def test_16bit_gray_keeps_the_high_byte():
    v = np.array([[0, 255, 256, 4095, 4096, 32768, 65280, 65535]], np.uint16)
    got = _load(Image.fromarray(v), "PNG")                       # a 16-bit PNG (mode I;16)
    assert np.array_equal(got[..., 0], [[0, 0, 1, 15, 16, 128, 255, 255]]) and (got[..., 0] == got[..., 2]).all()
    i32 = Image.fromarray(np.array([[-5, 70000, 512, 65535]], np.int32))          # mode I: clipped to 0..65535
    assert np.array_equal(_load(i32, "TIFF")[..., 0], [[0, 255, 2, 255]])


def test_palette_and_alpha_composite_on_white():
    pal = [255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (3 * 253)
    p = Image.fromarray(np.array([[0, 1, 2, 2]], np.uint8), "P")
    p.putpalette(pal)
    assert np.array_equal(_load(p, "PNG"), [[[255, 0, 0], [0, 255, 0], [10, 20, 30], [10, 20, 30]]])
    assert np.array_equal(_load(p, "PNG", transparency=1), [[[255, 0, 0], [255, 255, 255], [10, 20, 30], [10, 20, 30]]])
    # (c, a) -> round((c a + 255 (255 - a)) / 255), by hand: (0, 0) -> 255, (0, 255) -> 0, (100, 128) -> 177,
    # (200, 1) -> 255 (254.78), (10, 254) -> 11 (10.96)
    la = Image.fromarray(np.array([[[0, 0], [0, 255], [100, 128], [200, 1], [10, 254]]], np.uint8), "LA")
    assert np.array_equal(_load(la, "PNG")[..., 0], [[255, 0, 177, 255, 11]])
    rgba = np.random.default_rng(2).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    want = np.round((rgba[..., :3] * (rgba[..., 3:] / 255.0) + 255 * (1 - rgba[..., 3:] / 255.0))).astype(np.uint8)
    assert np.array_equal(_load(Image.fromarray(rgba, "RGBA"), "PNG"), want)


def test_float_image_is_refused():
    f = Image.fromarray(np.array([[0.5, 2.0]], np.float32))
    b = io.BytesIO()
    f.save(b, "TIFF")
    _one_line_error(b.getvalue(), "unsupported pixel mode F")


@pytest.mark.parametrize("fmt,kw", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_animated_image_gives_its_first_frame_and_says_so(fmt, kw, caplog):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (8, 8), c) for c in colours]
    b = io.BytesIO()
    frames[0].save(b, fmt, save_all=True, append_images=frames[1:], duration=100, **kw)
    assert Image.open(io.BytesIO(b.getvalue())).n_frames == 3
    with caplog.at_level(logging.WARNING, logger="vincie_mcore.data.media"):
        got = load_image(b.getvalue(), name="anim")
    assert (got == colours[0]).all()
    assert [r.getMessage() for r in caplog.records] == [f"image anim is animated ({fmt}): using its first frame"]


# ----------------------------------------------------------------------------- images: not images
def test_not_an_image_is_one_line(tmp_path):
    for name, data in [("notes.png", b"just some text\n"), ("empty.jpg", b""),
                       ("doc.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),   # never Ghostscript
                       ("tiny.ppm", b"P6 2 2 255\n" + bytes(12))]:                                       # not on the list
        (tmp_path / name).write_bytes(data)
        _one_line_error(tmp_path / name, f"image {name}: not an image, or not one of PNG, JPEG")
    _one_line_error(tmp_path / "missing.png", "image missing.png: cannot read it: FileNotFoundError")
    _one_line_error(tmp_path, f"image {tmp_path.name}: not a regular file")


def test_edit_cli_refuses_a_bomb_in_one_line(tmp_path, capsys):
    from vincie_tools.edit import main
    p = tmp_path / "start.png"
    p.write_bytes(png_bomb(20000, 20000))
    assert main(["--run", str(tmp_path / "no_run"), "--image", str(p), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --image: image {p} refused before decoding"), err


def test_store_pil_reader_refuses_a_bomb():
    from vincie_mcore.data.dali_decode import decode_images_pil
    ok = png_bomb(16, 16)
    assert decode_images_pil([ok])[0].shape == (16, 16, 3)
    with pytest.raises(MediaError, match="image stored image 1 refused before decoding"):
        decode_images_pil([ok, png_bomb(20000, 20000)])


# ----------------------------------------------------------------------------- videos
@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    write_synthetic_corpus(d, 3, demo_config(), seed=4)
    frame_bomb(d / "spin.webm")
    huge_frames(d / "huge.avi")
    return d


FIXED3 = SamplingConfig(strategy="fixed", n_frames=(3, 3))
FIXED3_SRC = "SamplingConfig(strategy='fixed', n_frames=(3, 3))"             # the same, in the subprocess


def test_build_skips_hostile_videos_within_time_and_memory(hostile_folder, tmp_path):
    """Two workers, 3 s and 128 MiB per video. The frame bomb alone decodes for 12-100 s and the
    huge frames need >= 3 x 192 MiB as RGB: both become failure lines with their reason, the
    three good videos become sessions equal to an unlimited in-process build's, the build's
    wall time stays near the timeout, and no worker's peak RSS grew by more than the limit."""
    out = _run_py(f"""
        import json, multiprocessing.forkserver, resource, time
        from vincie_mcore.data.build import build_sessions
        from vincie_mcore.data.sampling import SamplingConfig
        t = time.perf_counter()
        s = build_sessions({str(hostile_folder)!r}, {str(tmp_path / "s")!r}, sampling={FIXED3_SRC}, workers=2,
                           decode_timeout_s=3, decode_max_mb=128, progress=False)
        seconds = time.perf_counter() - t
        # a worker is a fork of the fork server: it starts at the server's RSS
        server = multiprocessing.forkserver._forkserver._forkserver_pid
        server_kb = int(open(f"/proc/{{server}}/statm").read().split()[1]) * resource.getpagesize() // 1024
        # the workers are the server's children: once it is stopped and reaped, their peak RSS is
        # in this process's RUSAGE_CHILDREN (the server reaped them)
        multiprocessing.forkserver._forkserver._stop()
        print(json.dumps({{"summary": s, "seconds": seconds, "server_kb": server_kb,
                          "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}}))
    """)
    s = out["summary"]
    assert (s["written"], s["failed"], s["total"]) == (3, 2, 5), s
    st = SessionStore(tmp_path / "s")
    assert st.failures() == {"spin": "decode timed out after 3 s", "huge": "decode exceeded 128 MiB"}
    assert out["seconds"] < 15, out                               # the frame bomb alone: 12-100 s
    # growth over the server's RSS, where a worker starts. Not this process's peak: a process's
    # peak RSS carries over an exec from the process that forked it (here, pytest's whole size)
    assert out["workers_kb"] >= out["server_kb"], out               # the workers were counted
    assert (out["workers_kb"] - out["server_kb"]) * 1024 < 128 * MiB, out  # full decode: >= 3 * 192 MiB

    ref = tmp_path / "ref"
    (ref / "v").mkdir(parents=True)
    for f in hostile_folder.glob("vid_*"):
        os.link(f, ref / "v" / f.name)
    build_sessions(ref / "v", ref / "s", sampling=FIXED3, decode_timeout_s=None, decode_max_mb=None,
                   progress=False)                                # in this process, no limits
    r = SessionStore(ref / "s")
    assert st.video_ids() == r.video_ids() == ["vid_000000", "vid_000001", "vid_000002"]
    for i in range(3):
        assert st[i].frames == r[i].frames and st[i].texts == r[i].texts and st[i].roe_src == r[i].roe_src

    t = time.perf_counter()                                       # resume: nothing is retried
    s2 = build_sessions(hostile_folder, tmp_path / "s", sampling=FIXED3, workers=2, progress=False)
    assert (s2["written"], s2["failed"], s2["skipped"]) == (0, 0, 5) and time.perf_counter() - t < 3


def test_cli_flags_set_the_limits(hostile_folder, tmp_path, capsys):
    from vincie_tools.build_sessions import run_cli as main
    d = tmp_path / "v"
    d.mkdir()
    for f in list(hostile_folder.glob("vid_000000*")) + [hostile_folder / "huge.avi"]:
        os.link(f, d / f.name)
    s = main(["--videos", str(d), "--out", str(tmp_path / "s"), "--sampling", "fixed", "--n-frames", "3", "3",
              "--decode-timeout-s", "20", "--decode-max-mb", "96", "--quiet"])
    assert (s["written"], s["failed"]) == (1, 1)
    assert SessionStore(tmp_path / "s").failures() == {"huge": "decode exceeded 96 MiB"}
    with pytest.raises(ValueError, match="decode_timeout_s"):
        build_sessions(d, tmp_path / "s2", decode_timeout_s=-1, progress=False)
