"""A real local server speaking the OpenAI chat-completions protocol, with scripted misbehaviour.

Each request picks its behaviour from "MODE:<name>" in the video caption (which the paper's prompt
carries), or from ``server.mode`` for whole builds: valid, fenced, curly, trailing, broken, lacks,
flaky500 (two 500s, then valid), ratelimit (one 429), slow (the first reply after 1.5 s), echo400
(a 400 whose body echoes the Authorization header). Used by the annotator tests and the store
build tests.
"""
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vincie_mcore.data.vlm import PROMPT

MODEL = "tiny-vlm"

REPLY = {
    "frame1_caption": {"scene": "a kitchen", "char1": "a man in a red coat", "obj1": "a blue cup",
                       "obj2": "a wooden chair"},
    "frame2_caption": {"scene": "a kitchen", "char1": "a man in a red coat", "obj1": "a blue cup",
                       "obj2": "a wooden chair", "obj3": "a white cat"},
    "character_change": {"char1": "raises his right hand"},
    "object_change": {"obj1": "none", "obj2": "moves to the left", "obj3": "appears on the table"},
    "global_change": "none", "camera_change": "the camera pans left slightly", "other_change": "none",
    "summary_change": "make the man raise his right hand, move the chair left and add a white cat on the table",
}


class Flight:
    """How many requests are being answered now, and the most at once."""

    def __init__(self):
        self.now = self.max = 0
        self.lock = threading.Lock()

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


class FakeVLM:
    """An OpenAI-compatible chat server on 127.0.0.1 with scripted misbehaviour."""

    def __init__(self, delay: float = 0.05, flight=None, responder=None):
        # responder(text, image_urls, attempt) -> (HTTP code, reply content): another protocol's
        # server (the benchmark judge) on the same transport
        self.delay, self.mode, self.responder = delay, None, responder
        self.requests: list[dict] = []
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()
        # requests in flight; servers given one Flight count them together
        self.flight = flight or Flight()
        self._hold, self._first, self._released = set(), None, threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.endswith("/models"):
                    return self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.flight:
                    code, obj = fake.answer(body, self.headers.get("Authorization", ""))
                    try:
                        self._send(code, obj)
                    except (BrokenPipeError, ConnectionResetError):
                        pass                # the client is gone (a held request of a killed task)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body, auth):
        content = body["messages"][0]["content"]
        text = content[0]["text"]
        if self.responder is not None:
            images = [c["image_url"]["url"] for c in content[1:]]
            key = (text, images[-1][-40:])
            with self.lock:
                self.attempts[key] += 1
                n = self.attempts[key]
                self.requests.append({"auth": auth, "model": body["model"], "text": text, "n_images": len(images)})
            time.sleep(self.delay)
            code, out = self.responder(text, images, n)
            if code != 200:
                return code, {"error": {"message": out}}
            return 200, {"id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": out},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 500, "completion_tokens": 60, "total_tokens": 560}}
        caption = re.search(r"The caption of the raw video clip is: (.*?) Your task", text).group(1)
        m = re.search(r"MODE:(\w+)", caption)
        mode = self.mode or (m.group(1) if m else "valid")
        images = [c["image_url"]["url"] for c in content[1:]]
        pair = (caption, images[0][-40:], images[1][-40:])
        with self.lock:
            self.attempts[pair] += 1
            n = self.attempts[pair]
            self.requests.append({"mode": mode, "auth": auth, "caption": caption, "model": body["model"], "n_images": len(images),
                                  "prompt_ok": text == PROMPT.format(caption=caption),
                                  "jpeg": all(u.startswith("data:image/jpeg;base64,") for u in images)})
        if caption in self._hold:
            with self.lock:
                self._first = self._first or caption
                held = caption != self._first
            if held:
                self._released.wait(120)
        time.sleep(self.delay)
        js = json.dumps(REPLY)
        reply = {"valid": js, "fenced": f"Sure! Here is the annotation:\n```json\n{js}\n```\nLet me know.",
                 "curly": js.replace('"', "\u201c", 1).replace('": ', "\u201d: ", 1),
                 "trailing": js + "\nNote: the cat is partly occluded.",
                 "broken": "I am sorry, I cannot describe these images.",
                 "lacks": json.dumps({k: v for k, v in REPLY.items() if k != "summary_change"})}
        if mode == "flaky500" and n <= 2:
            return 500, {"error": {"message": "internal error"}}
        if mode == "ratelimit" and n == 1:
            return 429, {"error": {"message": "rate limited"}}
        if mode == "slow" and n == 1:
            time.sleep(1.5)
        if mode == "echo400":
            return 400, {"error": {"message": f"bad request; you sent Authorization: {auth}"}}
        content_out = reply.get(mode, js)
        return 200, {"id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content_out},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 300, "completion_tokens": 80, "total_tokens": 380}}

    def hold_all_but_first(self, captions) -> None:
        """Of the videos whose caption is in ``captions``, answer the first one asked about; hold
        every request about the others until ``release()``: a task killed between two videos, by
        construction rather than by timing."""
        self._hold = set(captions)

    def release(self) -> None:
        self._released.set()

    def close(self):
        self._released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def frames(k: int = 3, seed: int = 0):
    """K random frames (uint8 [K, 32, 48, 3]) for an annotator to describe."""
    import numpy as np
    return np.random.default_rng(seed).integers(0, 256, (k, 32, 48, 3), dtype=np.uint8)


def video_meta(mode: str = "valid", vid: str = "v1") -> dict:
    """An annotator's video_meta whose caption picks the server's behaviour (MODE:<name>)."""
    return {"video_id": vid, "path": f"/videos/{vid}.mp4", "fps": 10.0, "num_frames": 100,
            "caption": f"a man in a kitchen MODE:{mode}"}
