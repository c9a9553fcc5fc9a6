"""The MSE-Bench judge: a VLM scores the last turn of a multi-turn edit (paper App. C.6).

The judge sees the instruction (C.6, verbatim up to straight quotes) with every prompt so far, then
the source image and each turn's result. It answers ``{reason, prompt_following, consistency}``,
scores 0-10, parsed with a schema through the same tolerant reader, retries, cache and concurrency
bound as the VLM annotator (``data/chat_client.py``). Its key comes from ``$VINCIE_JUDGE_API_KEY``
(or ``judge.api_key_file``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ..data.chat_client import ChatClient, ChatConfig, data_url, encode_jpeg, parse_model

JUDGE_PROMPT = (
    "Assume you are an expert in evaluating multi-turn image editing. In this task, a user interacts with an "
    "image editing system across multiple turns. At the first turn, the user provides a source image and an "
    "editing prompt. The system returns the edited image. In each subsequent turn, the user supplies a new "
    "prompt, and the system generates a new image based on the output from the previous turn. Your goal is to "
    "evaluate how successfully the editing instruction of the LAST turn has been executed. You will be given "
    "user editing prompts and images: the first image is the original source image, and the next are the edited "
    "results from each turn for each prompt. You should focus more on the last prompt and the last edited image, "
    "but you may also consider the previous prompts and images as context. The user editing prompts are: "
    "{prompts} Please follow these evaluation rules: 1. Last-turn Evaluation: For the last turn, you should "
    "first assess the result based on two criteria by giving a reason: 1) prompt_following, does the last edited "
    "image fulfill the last user's editing prompt? 2) consistency: Are the untouched parts of the last result "
    "image consistent with the input reference (the source image at the first turn, or the result image at the "
    "previous turn)? 2. Scoring: Based on the reason, you assign scores for \"prompt_following\" and "
    "\"consistency\". From scale 0 to 10: A \"prompt_following\" score from 0 to 10 will be given based on the "
    "editing success of prompt following. (0 indicates that the scene in the last edited image does not follow "
    "the last editing instruction at all. 10 indicates that the scene in the last edited image follow the last "
    "editing instruction perfectly.) A \"consistency\" score from 0 to 10 will rate the degree of overediting in "
    "the last edited image. (0 indicates that the scene in the last edited image is completely different from "
    "the original. 10 indicates that the last edited image can be recognized as a minimally edited yet "
    "effective version of the original.) 3. Return your results in a JSON structure, following this format: "
    "{{\"reason\": \"...\", \"prompt_following\": int, \"consistency\": int}}"
)


@dataclass
class JudgeConfig(ChatConfig):
    """The judge's server (retries, cache, concurrency, key: ``data/chat_client.py``) and its images."""
    GROUP = "judge"
    api_key_env: str = "VINCIE_JUDGE_API_KEY"
    image_max_side: int = 512
    jpeg_quality: int = 90


class Verdict(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str = ""
    prompt_following: float = Field(ge=0, le=10)
    consistency: float = Field(ge=0, le=10)


def parse_verdict(text: str) -> Verdict:
    return parse_model(text, Verdict)


def format_prompts(prompts: list[str]) -> str:
    """The prompts as the judge reads them: numbered by turn."""
    return " ".join(f"Turn {i}: {p!r}." for i, p in enumerate(prompts, 1))


class VLMJudge:
    """``judge(session_id, source, results, prompts)`` -> Verdict on the last of ``results``."""

    def __init__(self, cfg: JudgeConfig, env=os.environ):
        self.cfg = cfg
        self.chat = ChatClient(cfg, JUDGE_PROMPT, "judge", env)

    def judge(self, session_id: str, source, results: list, prompts: list[str]) -> Verdict:
        if len(results) != len(prompts) or not results:
            raise ValueError(f"judge: {len(results)} results for {len(prompts)} prompts")
        images = [encode_jpeg(im, self.cfg.image_max_side, self.cfg.jpeg_quality) for im in [source, *results]]
        messages = [{"role": "user", "content": [
            {"type": "text", "text": JUDGE_PROMPT.format(prompts=format_prompts(prompts))},
            *(data_url(b) for b in images)]}]
        parts = [str(session_id), json.dumps(prompts), *(hashlib.sha256(b).hexdigest() for b in images)]
        return self.chat.ask(messages, f"session {session_id} turn {len(results)}", parts, parse_verdict)
