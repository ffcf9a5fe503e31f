"""Bounds on what users hand the lab, so one input cannot hold a worker, the page or the disk.

Each is named in the README and enforced with a message that names the limit and what to do: the
spec's checks (num_beams, new tokens x beams), the task file reader (file size, line length), the
page's upload (file size) and Generate box (prompt length), and what a run writes for the page to
show (samples.jsonl's texts).
"""

from __future__ import annotations

MAX_UPLOAD_MB = 100  # a task file uploaded through the page
MAX_TASK_FILE_BYTES = 1024**3  # a task file read by a worker (the CLI may name any local file)
MAX_LINE_CHARS = 100_000  # one record of a task file: XSum's longest articles are about 35,000
MAX_PROMPT_CHARS = 20_000  # a prompt typed on the page or given to `generate`
MAX_BEAMS = 32
MAX_GENERATION_TOKENS = 32_768  # generation.max_new_tokens x num_beams, per prompt
MAX_SAMPLE_CHARS = 2_000  # each prompt, reference and output stored in samples.jsonl


def clip(text: str, limit: int = MAX_SAMPLE_CHARS) -> str:
    """`text`, or its first `limit` characters and a note of how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"
