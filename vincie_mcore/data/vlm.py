"""The VLM transition annotator: any OpenAI-compatible chat server describes each frame pair.

Paper §3.1 and App. C.2: a vision-language model sees frames i and i+1 (and the video's caption),
reasons in the paper's chain-of-thought format and answers one JSON row. From it:
- ``summary_change`` becomes the transition text;
- ``camera_change`` becomes the camera prompt (``camera_of``);
- the characters and objects named in ``character_change`` / ``object_change`` become the regions
  the segmenter grounds (``Transition.entities``, their descriptions from the frame captions).

vLLM, SGLang and TGI all serve the chat-completions protocol; images go as base64 data URLs. What
real servers do is expected:
- replies in code fences, with curly quotes, or with text after the JSON are parsed (``parse_reply``);
- HTTP 5xx, 429, timeouts and dropped connections are retried with exponential backoff, moving to
  the next server of ``base_urls``;
- a reply that is still not the schema after ``bad_reply_retries`` fails that video in one line.

Replies are cached on disk, keyed by video, frame times, model, prompt hash and the images' bytes, so
a rerun sends nothing. Requests in flight are bounded by ``max_concurrency`` across all videos and
servers. Tokens and latency are counted (``stats()``).

Secrets: the API key comes from the environment (``api_key_env``) or a file (``api_key_file``), never a
config value or an argument. It is sent only in the Authorization header. Every message we make is
passed through ``_redact``, because a hostile server may echo the header back in an error body. The key
is never in a cache key, a cache file, a log line or the stats.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .annotate import Annotator, Transition

log = logging.getLogger(__name__)

# Paper App. C.2, verbatim but for the quotes (straight) and the caption slot.
PROMPT = (
    "Imagine that you are an image editing assistant who wants to edit the first image to the second image. "
    "I will provide you two frames from a video clip as the source and target images. The caption of the raw "
    "video clip is: {caption} Your task is to summarize how you intend to achieve this image editing task by "
    "providing detailed but brief text instructions, from the following guidelines: 1. Understand the two images "
    "first, and describe the two frames in detail and coherently. Please include the details of the environment, "
    "main subjects, their appearances, and main features. 2. Describe the main characters and objects and their "
    "appearances. Do not mention the real name entities. Follow the format such as: {{\"char1\": \"a woman with "
    "blonde hair wearing a red jacket\", \"char2\": \"a girl wearing a floral dress\", \"obj1\": \"a green "
    "apple\", ...}} 3. Highlight the semantic and visual differences between the two images in detail. 4. Provide "
    "only factual descriptive differences based on observable content. Avoid words or phrases that suggest "
    "speculation or assumptions, such as \"likely\", \"possibly\", or \"appear to\". 5. Avoid elliptical "
    "referential pronouns, such as \"the same, frame 1, frame 2, the first image, the second image, ... \". An "
    "editing instruction should include: 1. main character change, including appearance, disappearance, "
    "position, action, expression, pose, orientation, ... (e.g., \"make the person smile\") 2. object change, "
    "including appearance, disappearance, position, count, relationship, layout, ... (e.g., \"add a dog beside "
    "the person\") 3. attribute change, including color, texture, material, shape, size, depth, dynamics, ... "
    "(e.g., \"make the person's hair red\") 4. interaction change, including the interaction between characters, "
    "objects, and the environment. (e.g., \"make the person hold the dog\") 5. global change, including "
    "background, atmosphere, environment, style, weather, season, lighting, ... (e.g., \"make the weather "
    "dark\") 6. camera change, including orbiting, dolly-in, dolly-out, pan-left, pan-right, tilt-up, tilt-down. "
    "7. others Output Format: You should output a json file to include the following information: Frame1 "
    "Caption: <describe the first image/frame, characters and objects in detail> Frame2 Caption: <describe the "
    "second image/frame, characters and objects in detail> Character Change: <the detailed character and "
    "attribute change> Object Change: <the detailed object and attribute change> Global Change: <the detailed "
    "global change> Camera Change: <the detailed camera change> Other Change: <the detailed other change> "
    "Summary Change: <a comprehensive but brief user editing instruction to achieve the editing> Your output "
    "should be a JSON file in one row (without any format), which looks like: {{\"frame1_caption\": {{\"scene\": "
    "str, \"char1\": str, \"char2\": str, ..., \"obj1\": str, \"obj2\": str, ...}}, \"frame2_caption\": "
    "{{\"scene\": str, \"char1\": str, \"char2\": str, ..., \"obj1\": str, \"obj2\": str, ...}}, "
    "\"character_change\": {{\"char1\": str, \"char2\": str, ...}}, \"object_change\": {{\"obj1\": str, "
    "\"obj2\": str, ...}}, \"global_change\": str, \"camera_change\": str, \"other_change\": str, "
    "\"summary_change\": str}}"
)
NO_CAPTION = "(none given)"


_READY = threading.Lock()          # one set of clients and threads per process, made once
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_READY", threading.Lock()))


class VLMError(RuntimeError):
    """A request or reply that failed for good; one line, never holding the API key."""


# ----------------------------------------------------------------------------- config

@dataclass
class VLMConfig:
    base_urls: tuple = ()             # OpenAI-compatible servers, e.g. ("http://gpu1:8000/v1",); requests rotate
    model: str = ""                   # the served model's name
    api_key_env: str = "VINCIE_VLM_API_KEY"   # environment variable holding the key (unset: no key)
    api_key_file: str | None = None   # or a file holding it (first line); never the key itself in a config
    max_concurrency: int = 8          # requests in flight, all videos and servers together
    timeout_s: float = 120.0
    max_retries: int = 4              # after the first try, on 5xx / 429 / timeout / connection errors
    backoff_s: float = 1.0            # first wait; doubles each retry, with +-25 % jitter
    bad_reply_retries: int = 1        # ask again when a reply is not the schema
    max_tokens: int = 1024
    temperature: float = 0.0
    image_max_side: int = 768         # frames are downscaled to this before encoding
    jpeg_quality: int = 90
    cache_dir: str | None = None      # replies on disk; None: no cache

    def __post_init__(self):
        if isinstance(self.base_urls, str):
            self.base_urls = (self.base_urls,)
        self.base_urls = tuple(self.base_urls)
        if not self.base_urls or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                         for u in self.base_urls):
            raise ValueError(f"annotator.base_urls: expected http(s) URLs, got {list(self.base_urls)}")
        if not self.model:
            raise ValueError("annotator.model: the served model's name is required")
        for name in ("max_concurrency", "max_tokens", "image_max_side"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"annotator.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_retries", "bad_reply_retries"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"annotator.{name}: must be >= 0, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("annotator.timeout_s / backoff_s: must be > 0 / >= 0")


def read_api_key(cfg: VLMConfig, env=os.environ) -> str | None:
    """The key from ``api_key_file`` (first line) or ``$api_key_env``; None when neither is set."""
    if cfg.api_key_file:
        try:
            lines = Path(cfg.api_key_file).read_text().splitlines()
        except OSError as e:
            raise VLMError(f"annotator.api_key_file {cfg.api_key_file}: cannot read it: {type(e).__name__}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise VLMError(f"annotator.api_key_file {cfg.api_key_file}: empty")
        return key
    return env.get(cfg.api_key_env) or None


# ----------------------------------------------------------------------------- reply

_ENTITY = re.compile(r"^(char|obj)\d+$")


class Reply(BaseModel):
    """The paper's one-row JSON (App. C.2). Captions map "scene" / "charN" / "objN" to descriptions."""
    model_config = ConfigDict(extra="ignore")
    frame1_caption: dict[str, str]
    frame2_caption: dict[str, str]
    character_change: dict[str, str] | str = {}
    object_change: dict[str, str] | str = {}
    global_change: str = ""
    camera_change: str = ""
    other_change: str = ""
    summary_change: str

    @field_validator("summary_change")
    @classmethod
    def _summary(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("summary_change is empty")
        return v

    @field_validator("frame1_caption", "frame2_caption", mode="before")
    @classmethod
    def _caption(cls, v):
        if isinstance(v, str):                         # some models write the caption as one string
            return {"scene": v}
        if isinstance(v, dict):                        # non-string values (null, numbers) as text
            return {str(k): "" if x is None else str(x) for k, x in v.items()}
        return v


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u2018": "'", "\u2019": "'"})


def parse_reply(text: str) -> Reply:
    """A server's message content -> ``Reply``; ValueError (one line) when it is not the schema.

    Tolerates code fences, curly quotes and text before or after the JSON object."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("reply is empty")
    m = _FENCE.search(text)
    body = (m.group(1) if m else text).translate(_QUOTES)
    start = body.find("{")
    if start < 0:
        raise ValueError(f"reply is not JSON: {_snippet(text)}")
    try:
        obj, _ = json.JSONDecoder().raw_decode(body[start:])      # stops at the object's end
    except json.JSONDecodeError as e:
        raise ValueError(f"reply is not JSON ({e.msg} at char {e.pos}): {_snippet(text)}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"reply is not a JSON object: {_snippet(text)}")
    try:
        return Reply.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "reply"
        raise ValueError(f"reply lacks or misstates {where}: {err['msg']}") from None


def _snippet(text: str, n: int = 80) -> str:
    t = " ".join(str(text).split())
    return repr(t[:n] + ("..." if len(t) > n else ""))


_CAMERA = (("orbit", ("orbit",)), ("dolly in", ("dolly-in", "dolly in", "zoom in", "push in")),
           ("dolly out", ("dolly-out", "dolly out", "zoom out", "pull out", "pull back")),
           ("pan left", ("pan-left", "pan left", "pans left")), ("pan right", ("pan-right", "pan right", "pans right")),
           ("tilt up", ("tilt-up", "tilt up", "tilts up")), ("tilt down", ("tilt-down", "tilt down", "tilts down")))


def camera_of(text: str) -> str:
    """The paper's camera vocabulary from a free-text camera change: 'pan left', 'dolly in and tilt up',
    ... or 'None' (no change, static, or nothing recognised)."""
    t = " ".join(str(text).lower().replace("_", " ").split())
    found = [name for name, words in _CAMERA if any(w in t for w in words)]
    return " and ".join(found) if found else "None"


def _no_change(v: str) -> bool:
    t = v.strip().lower().rstrip(".")
    return not t or t in {"none", "no change", "n/a", "na", "unchanged", "no changes", "nothing"}


def entities_of(reply: Reply) -> tuple[str, ...]:
    """Descriptions of the characters and objects named as changed (the regions to segment), in order,
    from the frame captions (frame 1's, else frame 2's: an entity may appear only in one)."""
    out = []
    for changes in (reply.character_change, reply.object_change):
        if not isinstance(changes, dict):
            continue
        for key, what in changes.items():
            if not _ENTITY.match(key) or _no_change(what):
                continue
            desc = reply.frame1_caption.get(key) or reply.frame2_caption.get(key)
            if desc and not _no_change(desc) and desc not in out:
                out.append(desc)
    return tuple(out)


# ----------------------------------------------------------------------------- the annotator

@dataclass
class _Stats:
    requests: int = 0              # HTTP requests sent (retries included)
    replies: int = 0               # pairs answered by a server
    cache_hits: int = 0
    retries: int = 0
    bad_replies: int = 0
    failures: dict = field(default_factory=dict)   # reason -> count
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list = field(default_factory=list)  # seconds per successful request


class VLMAnnotator(Annotator):
    """``Annotator`` over OpenAI-compatible chat servers (see the module docstring)."""
    name = "vlm"

    def __init__(self, cfg: VLMConfig, env=os.environ):
        import openai

        self.cfg = cfg
        self._key = read_api_key(cfg, env)
        self._pid = None                     # clients and threads are made per process (builders fork workers)
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._prompt_hash = hashlib.sha256(PROMPT.encode()).hexdigest()[:16]
        self.name = f"vlm:{cfg.model}"

    def _ready(self) -> None:
        import openai

        if self._pid == os.getpid():
            return
        with _READY:
            if self._pid == os.getpid():
                return
            # retries are ours (counted, rotated across servers), not the client's
            self._clients = [openai.OpenAI(base_url=u, api_key=self._key or "EMPTY", timeout=self.cfg.timeout_s,
                                           max_retries=0) for u in self.cfg.base_urls]
            self._next = itertools.cycle(range(len(self._clients)))
            self._lock = threading.Lock()
            self._pool = cf.ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="vlm")
            self._pid = os.getpid()

    def __getstate__(self):                  # to a spawned worker: settings and key, no clients or threads
        d = dict(self.__dict__)
        for k in ("_clients", "_next", "_lock", "_pool"):
            d.pop(k, None)
        d["_pid"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail at once, in one line, when a server is down or does not serve ``model``."""
        import openai

        self._ready()
        for url, client in zip(self.cfg.base_urls, self._clients):
            try:
                served = [m.id for m in client.models.list()]
            except openai.APIError as e:
                raise VLMError(self._redact(f"annotator server {url}: unreachable: {_one_line(e)}")) from None
            if served and self.cfg.model not in served:
                raise VLMError(f"annotator server {url}: does not serve model {self.cfg.model!r} "
                               f"(serves {served[:5]})")

    def annotate(self, frames, frame_indices, video_meta: dict) -> list[Transition]:
        self._ready()
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] < 2:
            raise ValueError(f"annotate: expected [K>=2, H, W, 3] frames, got {list(frames.shape)}")
        times = video_meta.get("frame_times") or [i / float(video_meta.get("fps") or 1.0) for i in frame_indices]
        images = [self._encode(f) for f in frames]
        caption = str(video_meta.get("caption") or "").strip() or NO_CAPTION
        jobs = [self._pool.submit(self._pair, str(video_meta.get("video_id", video_meta.get("path"))),
                                  (round(float(times[i]), 4), round(float(times[i + 1]), 4)),
                                  images[i], images[i + 1], caption)
                for i in range(len(images) - 1)]
        out = []
        for j in jobs:
            r = j.result()                                   # the first failed pair fails the video
            out.append(Transition(r.summary_change, camera_of(r.camera_change), entities_of(r)))
        return out

    def stats(self) -> dict:
        s = self._stats
        lat = sorted(s.latencies)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 4)) if lat else (lambda q: None)
        return {"requests": s.requests, "replies": s.replies, "cache_hits": s.cache_hits, "retries": s.retries,
                "bad_replies": s.bad_replies, "failures": dict(s.failures), "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens, "latency_s_mean": round(sum(lat) / len(lat), 4) if lat else None,
                "latency_s_p50": pct(0.5), "latency_s_p95": pct(0.95), "model": self.cfg.model}

    def close(self) -> None:
        if self._pid == os.getpid():
            self._pool.shutdown(wait=True)
            self._pid = None

    # -- one pair --------------------------------------------------------------------------------
    def _encode(self, frame: np.ndarray) -> bytes:
        from PIL import Image

        im = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        if max(im.size) > self.cfg.image_max_side:
            s = self.cfg.image_max_side / max(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=self.cfg.jpeg_quality)
        return buf.getvalue()

    def _cache_path(self, video: str, times, a: bytes, b: bytes) -> Path | None:
        if not self.cfg.cache_dir:
            return None
        h = hashlib.sha256()
        for part in (video, json.dumps(times), self.cfg.model, self._prompt_hash,
                     hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()):
            h.update(part.encode() + b"\0")
        k = h.hexdigest()
        return Path(self.cfg.cache_dir) / k[:2] / f"{k}.json"

    def _pair(self, video: str, times, a: bytes, b: bytes, caption: str) -> Reply:
        path = self._cache_path(video, times, a, b)
        if path is not None and path.is_file():
            try:
                reply = parse_reply(json.loads(path.read_text())["content"])
                with self._lock:
                    self._stats.cache_hits += 1
                return reply
            except (ValueError, KeyError, OSError):
                pass                                             # a damaged entry: ask again
        messages = [{"role": "user", "content": [
            {"type": "text", "text": PROMPT.format(caption=caption)},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(a).decode()}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(b).decode()}},
        ]}]
        for attempt in range(self.cfg.bad_reply_retries + 1):
            content = self._request(messages, f"{video} {times[0]}-{times[1]} s")
            try:
                reply = parse_reply(content)
                break
            except ValueError as e:
                with self._lock:
                    self._stats.bad_replies += 1
                if attempt == self.cfg.bad_reply_retries:
                    self._fail("bad reply")
                    raise VLMError(self._redact(f"annotator: {video} {times[0]}-{times[1]} s: {e}")) from None
        with self._lock:
            self._stats.replies += 1
        if path is not None:                                    # atomic: a killed run leaves no half entry
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(json.dumps({"content": content, "model": self.cfg.model, "video": video,
                                       "times": list(times)}))
            tmp.replace(path)
        return reply

    def _request(self, messages, what: str) -> str:
        """One chat completion, retried on 5xx / 429 / timeouts / connection errors -> content."""
        import openai

        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            with self._lock:
                i = next(self._next)
                self._stats.requests += 1
            t0 = time.perf_counter()
            try:
                r = self._clients[i].chat.completions.create(
                    model=self.cfg.model, messages=messages, max_tokens=self.cfg.max_tokens,
                    temperature=self.cfg.temperature)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                last = f"{self.cfg.base_urls[i]}: {type(e).__name__}"
            except openai.APIStatusError as e:
                last = f"{self.cfg.base_urls[i]}: HTTP {e.status_code}: {_one_line(e.message)}"
                if e.status_code != 429 and e.status_code < 500:   # our request is wrong: retrying won't help
                    self._fail(f"HTTP {e.status_code}")
                    raise VLMError(self._redact(f"annotator: {what}: {last}")) from None
            else:
                dt = time.perf_counter() - t0
                content = r.choices[0].message.content if r.choices else None
                with self._lock:
                    self._stats.latencies.append(dt)
                    if r.usage is not None:
                        self._stats.prompt_tokens += int(r.usage.prompt_tokens or 0)
                        self._stats.completion_tokens += int(r.usage.completion_tokens or 0)
                return content or ""
            if attempt < self.cfg.max_retries:
                with self._lock:
                    self._stats.retries += 1
                wait = self.cfg.backoff_s * 2 ** attempt * random.uniform(0.75, 1.25)
                log.warning("%s", self._redact(f"annotator: {what}: {last}; retry {attempt + 1} in {wait:.1f} s"))
                time.sleep(wait)
        self._fail("server failed")
        raise VLMError(self._redact(f"annotator: {what}: gave up after {self.cfg.max_retries + 1} tries: {last}"))

    def _fail(self, reason: str) -> None:
        with self._lock:
            self._stats.failures[reason] = self._stats.failures.get(reason, 0) + 1

    def _redact(self, msg: str) -> str:
        return msg.replace(self._key, "***") if self._key else msg


def _one_line(e) -> str:
    return " ".join(str(e).split())[:200]
