"""A JSONL line read as one row: a JSON object, or one line naming where it is not (the edits datasets,
MagicBrush's sessions.jsonl, vincie-edit's jobs)."""
from __future__ import annotations

import json


def json_row(line: str, where: str) -> dict:
    """``line`` (one JSONL line) -> its JSON object; ValueError naming ``where`` otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row
