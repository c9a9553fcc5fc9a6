"""One client for every OpenAI-compatible chat server we talk to: the VLM transition annotator
(``data/vlm.py``) and the benchmark judge (``eval/vlm_judge.py``).

It does what real servers need:
- retries with exponential backoff on HTTP 5xx, 429, timeouts and dropped connections, each retry
  going to the next server of ``base_urls``;
- another request when a reply does not parse (``bad_reply_retries``);
- a disk cache keyed by the caller's parts plus the model and the prompt's hash, so a rerun sends
  nothing;
- at most ``max_concurrency`` requests in flight per process;
- counts of requests, retries, cache hits, tokens and latency.

Secrets: the API key comes from ``$api_key_env`` or ``api_key_file``, never from a config value. It
is sent only in the Authorization header. Every message made here goes through ``redact``, because a
server may echo the header back. The key is never part of a cache key or a cache file.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
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
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_READY = threading.Lock()          # one set of clients and threads per process, made once
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_READY", threading.Lock()))


class ChatError(RuntimeError):
    """A request or reply that failed for good; one line, never holding the API key."""


@dataclass
class ChatConfig:
    """The server side of a chat client. Subclasses name their config group in ``GROUP``."""
    GROUP = "chat"
    base_urls: tuple = ()             # OpenAI-compatible servers, e.g. ("http://gpu1:8000/v1",); requests rotate
    model: str = ""                   # the served model's name
    api_key_env: str = "VINCIE_VLM_API_KEY"   # environment variable holding the key (unset: no key)
    api_key_file: str | None = None   # or a file holding it (first line); never the key itself in a config
    max_concurrency: int = 8          # requests in flight per process
    timeout_s: float = 120.0
    max_retries: int = 4              # after the first try, on 5xx / 429 / timeout / connection errors
    backoff_s: float = 1.0            # first wait; doubles each retry, with +-25 % jitter
    bad_reply_retries: int = 1        # ask again when a reply does not parse
    max_tokens: int = 1024
    temperature: float = 0.0
    cache_dir: str | None = None      # replies on disk; None: no cache

    def __post_init__(self):
        g = type(self).GROUP
        if isinstance(self.base_urls, str):
            self.base_urls = (self.base_urls,)
        self.base_urls = tuple(self.base_urls)
        if not self.base_urls or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                         for u in self.base_urls):
            raise ValueError(f"{g}.base_urls: expected http(s) URLs, got {list(self.base_urls)}")
        if not self.model:
            raise ValueError(f"{g}.model: the served model's name is required")
        for name in ("max_concurrency", "max_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{g}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_retries", "bad_reply_retries"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{g}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError(f"{g}.timeout_s / backoff_s: must be > 0 / >= 0")


def read_api_key(cfg: ChatConfig, env=os.environ) -> str | None:
    """The key from ``api_key_file`` (first line) or ``$api_key_env``; None when neither is set."""
    g = type(cfg).GROUP
    if cfg.api_key_file:
        try:
            lines = Path(cfg.api_key_file).read_text().splitlines()
        except OSError as e:
            raise ChatError(f"{g}.api_key_file {cfg.api_key_file}: cannot read it: {type(e).__name__}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ChatError(f"{g}.api_key_file {cfg.api_key_file}: empty")
        return key
    return env.get(cfg.api_key_env) or None


@dataclass
class _Stats:
    requests: int = 0              # HTTP requests sent (retries included)
    replies: int = 0               # questions answered by a server
    cache_hits: int = 0
    retries: int = 0
    bad_replies: int = 0
    failures: dict = field(default_factory=dict)   # reason -> count
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list = field(default_factory=list)  # seconds per successful request


class ChatClient:
    """See the module docstring. ``prompt`` is the fixed instruction the caller sends (its hash is
    part of every cache key); ``who`` names the caller in messages ("annotator", "judge")."""

    def __init__(self, cfg: ChatConfig, prompt: str, who: str, env=os.environ):
        self.cfg, self.who = cfg, who
        self._key = read_api_key(cfg, env)
        self._pid = None
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._prompt_hash = hashlib.sha256(prompt.encode()).hexdigest()[:16]

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
            self._pool = cf.ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix=self.who)
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
        """Fail at once, in one line, when a server is down or does not serve the model."""
        import openai

        self._ready()
        for url, client in zip(self.cfg.base_urls, self._clients):
            try:
                served = [m.id for m in client.models.list()]
            except openai.APIError as e:
                raise ChatError(self.redact(f"{self.who} server {url}: unreachable: {_one_line(e)}")) from None
            if served and self.cfg.model not in served:
                raise ChatError(f"{self.who} server {url}: does not serve model {self.cfg.model!r} (serves {served[:5]})")

    def submit(self, fn: Callable[..., T], *args) -> "cf.Future[T]":
        """Run ``fn(*args)`` on the bounded pool (each call makes at most one request at a time)."""
        self._ready()
        return self._pool.submit(fn, *args)

    def ask(self, messages: list, what: str, cache_parts: list[str], parse: Callable[[str], T]) -> T:
        """One question -> ``parse(reply)``, from the cache when there, else from a server (with retries
        on the transport and ``bad_reply_retries`` on replies ``parse`` rejects with ValueError)."""
        self._ready()
        path = self._cache_path(cache_parts)
        if path is not None and path.is_file():
            try:
                out = parse(json.loads(path.read_text())["content"])
                with self._lock:
                    self._stats.cache_hits += 1
                return out
            except (ValueError, KeyError, OSError):
                pass                                             # a damaged entry: ask again
        for attempt in range(self.cfg.bad_reply_retries + 1):
            content = self._request(messages, what)
            try:
                out = parse(content)
                break
            except ValueError as e:
                with self._lock:
                    self._stats.bad_replies += 1
                if attempt == self.cfg.bad_reply_retries:
                    self._fail("bad reply")
                    raise ChatError(self.redact(f"{self.who}: {what}: {e}")) from None
        with self._lock:
            self._stats.replies += 1
        if path is not None:                                    # atomic: a killed run leaves no half entry
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(json.dumps({"content": content, "model": self.cfg.model, "what": what}))
            tmp.replace(path)
        return out

    def stats(self) -> dict:
        s = self._stats
        lat = sorted(s.latencies)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 4)) if lat else (lambda q: None)
        return {"requests": s.requests, "replies": s.replies, "cache_hits": s.cache_hits, "retries": s.retries,
                "bad_replies": s.bad_replies, "failures": dict(s.failures), "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "latency_s_mean": round(sum(lat) / len(lat), 4) if lat else None,
                "latency_s_p50": pct(0.5), "latency_s_p95": pct(0.95), "model": self.cfg.model}

    def close(self) -> None:
        if self._pid == os.getpid():
            self._pool.shutdown(wait=True)
            self._pid = None

    def redact(self, msg: str) -> str:
        return msg.replace(self._key, "***") if self._key else msg

    # -- internals -------------------------------------------------------------------------------
    def _cache_path(self, parts: list[str]) -> Path | None:
        if not self.cfg.cache_dir:
            return None
        h = hashlib.sha256()
        for part in [*parts, self.cfg.model, self._prompt_hash]:
            h.update(str(part).encode() + b"\0")
        k = h.hexdigest()
        return Path(self.cfg.cache_dir) / k[:2] / f"{k}.json"

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
                    raise ChatError(self.redact(f"{self.who}: {what}: {last}")) from None
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
                log.warning("%s", self.redact(f"{self.who}: {what}: {last}; retry {attempt + 1} in {wait:.1f} s"))
                time.sleep(wait)
        self._fail("server failed")
        raise ChatError(self.redact(f"{self.who}: {what}: gave up after {self.cfg.max_retries + 1} tries: {last}"))

    def _fail(self, reason: str) -> None:
        with self._lock:
            self._stats.failures[reason] = self._stats.failures.get(reason, 0) + 1


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u2018": "'", "\u2019": "'"})


def parse_model(text: str, model):
    """A server's message content -> ``model`` (a pydantic class); ValueError (one line) otherwise.

    Real servers wrap JSON in code fences, use curly quotes and add text before or after the
    object: the first JSON object found is the answer."""
    from pydantic import ValidationError

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
        return model.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "reply"
        raise ValueError(f"reply lacks or misstates {where}: {err['msg']}") from None


def _snippet(text: str, n: int = 80) -> str:
    t = " ".join(str(text).split())
    return repr(t[:n] + ("..." if len(t) > n else ""))


def _one_line(e) -> str:
    return " ".join(str(e).split())[:200]


def data_url(jpeg: bytes) -> dict:
    """An image content part of a chat message."""
    import base64

    return {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}}


def encode_jpeg(frame, max_side: int, quality: int = 90) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes, downscaled so the longer side is at most ``max_side``."""
    import io

    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
