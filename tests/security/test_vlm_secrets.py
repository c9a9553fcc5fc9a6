"""VLM API keys (docs/security.md, "Secrets"): they come from the environment or a file, never from a
config value or an argument. They are sent only in the Authorization header, and they appear
nowhere else: not in logs at DEBUG, in error messages (even when a hostile server echoes the
header back), in cache files or names, or in stats. The server is a real local one speaking the
OpenAI protocol (tests/data/fake_vlm.py)."""
import base64
import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))      # the shared fake server
from fake_vlm import MODEL, FakeVLM, frames as _frames, video_meta as _meta  # noqa: E402

from vincie_mcore.config import ConfigError, build  # noqa: E402
from vincie_mcore.data.vlm import VLMAnnotator, VLMConfig, VLMError, read_api_key  # noqa: E402

KEY = "sk-test-SECRET-7f3a9c"


@pytest.fixture
def server():
    s = FakeVLM()
    yield s
    s.close()



def _annotator(server, tmp_path):
    cfg = dict(base_urls=[server.url], model=MODEL, timeout_s=1.0, max_retries=3, backoff_s=0.01,
               cache_dir=str(tmp_path / "cache"))
    return VLMAnnotator(build(VLMConfig, cfg, "annotator"), env={"VINCIE_VLM_API_KEY": KEY})



def test_the_key_comes_from_env_or_file_never_from_the_config(tmp_path):
    with pytest.raises(ConfigError, match=r"annotator.api_key: unknown key"):
        build(VLMConfig, {"base_urls": ["http://x/v1"], "model": "m", "api_key": KEY}, "annotator")
    cfg = VLMConfig(base_urls=("http://x/v1",), model="m")
    assert read_api_key(cfg, env={"VINCIE_VLM_API_KEY": KEY}) == KEY and read_api_key(cfg, env={}) is None
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    assert read_api_key(VLMConfig(base_urls=("http://x/v1",), model="m", api_key_file=str(f)), env={}) == KEY
    with pytest.raises(ConfigError, match=r"annotator.base_urls: expected http\(s\) URLs"):
        build(VLMConfig, {"base_urls": ["gpu1:8000"], "model": "m"}, "annotator")


# ----------------------------------------------------------------------------
# Against the server
# ----------------------------------------------------------------------------



def test_the_key_is_sent_and_appears_nowhere_else(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)                          # every logger, openai's and httpx's included
    ann = _annotator(server, tmp_path)
    ann.annotate(_frames(3), [0, 1, 2], _meta())
    ann.annotate(_frames(2, seed=3), [0, 1], _meta("flaky500", vid="f"))     # retries log warnings
    with pytest.raises(VLMError) as e:
        ann.annotate(_frames(2, seed=4), [0, 1], _meta("echo400", vid="e"))  # the server echoes the header
    assert server.requests[0]["auth"] == f"Bearer {KEY}"
    assert "***" in str(e.value) and KEY not in str(e.value)
    assert KEY not in caplog.text and KEY not in json.dumps(ann.stats())
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() or KEY in p.name for p in files)
    assert not any(KEY.encode() in base64.b64encode(p.read_bytes()) for p in files)


# ----------------------------------------------------------------------------
# In the session builder
# ----------------------------------------------------------------------------

