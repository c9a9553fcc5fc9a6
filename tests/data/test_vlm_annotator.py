"""The VLM transition annotator against a real local server speaking the OpenAI chat protocol.

The server (``http.server``, started here) answers as real ones do: valid, fenced, curly-quoted and
trailing-text replies, broken and incomplete ones, 500s, 429s, slow replies, and a 400 whose body
echoes the Authorization header. Each request picks its behaviour from "MODE:<name>" in the video
caption, which the paper's prompt carries; ``server.mode`` overrides it for whole builds.
Checked: parsing, the schema, retries and backoff across servers, the disk cache (a rerun makes no
request), the concurrency bound, token and latency counts, failures in the store's manifest with
the good sessions kept, and that the API key appears nowhere but the Authorization header.
"""
import json
import re
import threading

import pytest
from fake_vlm import MODEL, REPLY, FakeVLM, Flight, frames as _frames, video_meta as _meta

from vincie_mcore.config import build
from vincie_mcore.data.vlm import (VLMAnnotator, VLMConfig, VLMError, camera_of, entities_of, parse_reply)

KEY = "sk-test-SECRET-7f3a9c"


@pytest.fixture
def server():
    s = FakeVLM()
    yield s
    s.close()



def _annotator(server, tmp_path, env=None, **over):
    cfg = dict(base_urls=[server.url] if isinstance(server, FakeVLM) else server, model=MODEL, timeout_s=1.0,
               max_retries=3, backoff_s=0.01, cache_dir=str(tmp_path / "cache"))
    cfg.update(over)
    return VLMAnnotator(build(VLMConfig, cfg, "annotator"), env={"VINCIE_VLM_API_KEY": KEY} if env is None else env)



# ----------------------------------------------------------------------------
# The reply, without a server
# ----------------------------------------------------------------------------

def test_reply_parsing_tolerates_real_servers_and_names_what_is_wrong():
    js = json.dumps(REPLY)
    for text in (js, f"```json\n{js}\n```", f"```\n{js}\n``` thanks", js + " trailing words {not json}",
                 "Answer: " + js.replace('"', "\u201c", 2)):
        assert parse_reply(text).summary_change == REPLY["summary_change"]
    for text, msg in (("", "reply is empty"), ("no json here", "reply is not JSON"),
                      ('{"frame1_caption": {', "reply is not JSON"), ("[1, 2]", "reply is not JSON"),
                      (json.dumps({**REPLY, "summary_change": "  "}), "summary_change"),
                      (json.dumps({k: v for k, v in REPLY.items() if k != "frame2_caption"}), "frame2_caption")):
        with pytest.raises(ValueError, match=msg) as e:
            parse_reply(text)
        assert "\n" not in str(e.value)


def test_camera_and_entities_from_the_reply():
    assert camera_of("The camera pans left slightly") == "pan left"
    assert camera_of("dolly-in while tilting: tilt-up") == "dolly in and tilt up"
    for still in ("none", "No camera change.", "static camera", ""):
        assert camera_of(still) == "None"
    r = parse_reply(json.dumps(REPLY))
    # changed: char1, obj2, obj3 (obj1 "none"); obj3 exists only in frame 2's caption
    assert entities_of(r) == ("a man in a red coat", "a wooden chair", "a white cat")


def test_transitions_from_valid_fenced_curly_and_trailing_replies(server, tmp_path):
    ann = _annotator(server, tmp_path)
    for mode in ("valid", "fenced", "curly", "trailing"):
        out = ann.annotate(_frames(), [0, 10, 20], _meta(mode, vid=mode))
        assert [t.text for t in out] == [REPLY["summary_change"]] * 2
        assert {t.camera for t in out} == {"pan left"}
        assert out[0].entities == ("a man in a red coat", "a wooden chair", "a white cat")
    assert len(server.requests) == 8
    r = server.requests[0]
    assert r["model"] == MODEL and r["n_images"] == 2 and r["prompt_ok"] and r["jpeg"]
    s = ann.stats()
    assert s["replies"] == 8 and s["prompt_tokens"] == 8 * 300 and s["completion_tokens"] == 8 * 80
    assert s["latency_s_p50"] >= server.delay


def test_retries_on_500_429_and_timeouts_then_gives_up_in_one_line(server, tmp_path):
    ann = _annotator(server, tmp_path)
    for mode, extra in (("flaky500", 2), ("ratelimit", 1), ("slow", 1)):
        before = len(server.requests)
        out = ann.annotate(_frames(2), [0, 10], _meta(mode, vid=mode))
        assert out[0].text == REPLY["summary_change"]
        assert len(server.requests) - before == 1 + extra, mode          # the retries reached the server
    assert ann.stats()["retries"] == 4
    ann2 = _annotator(server, tmp_path / "b", max_retries=1)
    with pytest.raises(VLMError, match=r"gave up after 2 tries: .*HTTP 500") as e:
        ann2.annotate(_frames(2, seed=5), [0, 10], _meta("flaky500", vid="gives-up"))
    assert "\n" not in str(e.value)


def test_bad_replies_fail_the_video_with_the_reason(server, tmp_path):
    ann = _annotator(server, tmp_path)
    with pytest.raises(VLMError, match=r"v1 0.0-1.0 s: reply is not JSON: 'I am sorry"):
        ann.annotate(_frames(2), [0, 10], _meta("broken"))
    with pytest.raises(VLMError, match=r"reply lacks or misstates summary_change: Field required"):
        ann.annotate(_frames(2), [0, 10], _meta("lacks"))
    s = ann.stats()
    assert s["bad_replies"] == 4 and s["failures"] == {"bad reply": 2}      # asked twice each (bad_reply_retries 1)


def test_a_rerun_is_served_from_the_cache(server, tmp_path):
    first = _annotator(server, tmp_path).annotate(_frames(4), [0, 5, 10, 15], _meta())
    n = len(server.requests)
    again = _annotator(server, tmp_path)                     # a new process would see the same files
    assert again.annotate(_frames(4), [0, 5, 10, 15], _meta()) == first
    assert len(server.requests) == n and again.stats()["cache_hits"] == 3 and again.stats()["requests"] == 0
    # other frame times, another model or other pixels are other keys
    _annotator(server, tmp_path).annotate(_frames(4), [0, 5, 10, 16], _meta())
    assert len(server.requests) == n + 1
    _annotator(server, tmp_path, model="other").annotate(_frames(2, seed=1), [0, 5], _meta())
    assert len(server.requests) == n + 2


def test_concurrency_is_bounded_and_servers_take_turns(tmp_path):
    flight = Flight()
    a, b = FakeVLM(delay=0.3, flight=flight), FakeVLM(delay=0.3, flight=flight)
    try:
        ann = _annotator([a.url, b.url], tmp_path, max_concurrency=3)
        threads = [threading.Thread(target=ann.annotate, args=(_frames(4, seed=i), [0, 1, 2, 3], _meta(vid=f"c{i}")))
                   for i in range(3)]                        # 9 pairs from 3 videos at once
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(a.requests) + len(b.requests) == 9 and min(len(a.requests), len(b.requests)) >= 4
        assert ann.stats()["replies"] == 9
        assert flight.max == 3                               # over both servers: the bound, and reached
    finally:
        a.close()
        b.close()


def test_a_server_that_is_down_moves_requests_to_the_next_and_check_fails_fast(server, tmp_path):
    import socket
    with socket.socket() as s:                               # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    ann = _annotator([dead, server.url], tmp_path)
    out = ann.annotate(_frames(3), [0, 1, 2], _meta())
    assert len(out) == 2 and ann.stats()["retries"] >= 1 and len(server.requests) == 2
    with pytest.raises(VLMError, match=rf"^annotator server {re.escape(dead)}: unreachable: "):
        _annotator([dead], tmp_path).check()
    _annotator(server, tmp_path).check()
    with pytest.raises(VLMError, match=r"does not serve model 'nope'"):
        _annotator(server, tmp_path, model="nope").check()


def test_build_keeps_good_sessions_and_records_failures(server, tmp_path):
    from vincie_mcore.data.build import build_sessions
    from vincie_mcore.data.store import SessionStore, read_failures
    from vincie_mcore.data.video import write_synthetic_corpus
    from vincie_mcore.data.world import demo_config

    videos = tmp_path / "videos"
    write_synthetic_corpus(videos, 3, demo_config(), seed=0)
    store = tmp_path / "store"
    ann = _annotator(server, tmp_path)
    s = build_sessions(videos, store, annotator=ann, progress=False)       # worker processes (decode limits)
    assert s["written"] == 3 and s["failed"] == 0
    st = SessionStore(store)
    assert all(st[i].texts == [REPLY["summary_change"]] * (st[i].num_frames - 1) for i in range(len(st)))
    assert all(set(st[i].cameras) == {"pan left"} for i in range(len(st)))
    kept = parse_reply(json.dumps(REPLY)).model_dump()                # the reply itself, beside its text
    assert kept["frame2_caption"]["obj3"] == "a white cat"
    assert all(st[i].notes == [kept] * (st[i].num_frames - 1) for i in range(len(st)))
    # each frame's caption is the VLM's description of it (text-to-image samples: docs/text_to_image.md)
    first = "a kitchen. a man in a red coat. a blue cup. a wooden chair."
    assert all(st[i].captions == [first] * (st[i].num_frames - 1) + [first[:-1] + ". a white cat."]
               for i in range(len(st)))

    more = tmp_path / "more"                                  # a second batch while the server is broken
    write_synthetic_corpus(more, 2, demo_config(), seed=1)
    for p in more.iterdir():
        p.rename(videos / ("b_" + p.name))
    server.mode = "broken"
    s2 = build_sessions(videos, store, annotator=ann, progress=False)
    assert s2["written"] == 0 and s2["failed"] == 2 and s2["skipped"] == 3
    fails = read_failures(store)
    assert len(fails) == 2 and all("reply is not JSON" in r for r in fails.values())
    assert len(SessionStore(store)) == 3                      # nothing already written is lost
