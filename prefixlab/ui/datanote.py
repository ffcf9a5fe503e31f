"""What the task's data will do at the chosen max_length, before anything trains: how many examples
the worker will encode (train + validation, after data.max_*_examples), how many it will truncate
(the source cut, the target cut), and the max_length at which all fit.

The lengths come from the engine's own encoding (engine.data.encode_examples with no length limit,
so each example's prompt and answer are measured exactly as the worker builds them); which examples
a given max_length truncates is then arithmetic on those lengths, following encode_examples'
rules (a causal LM's source gives way first, keeping its separator, then the target's end; a seq2seq
model cuts the source and the target each to max_length). tests/test_ui_datanote.py checks the
counts against encode_examples(..., max_length).num_truncated.

The lengths are cached per (tokenizer, task file version, columns, caps, separator), so the page,
which asks on every edit, tokenizes a task once; a new max_length is a sum over cached lengths.
The offline presets' tokenizer is built in code (engine.tiny.tiny_tokenizer); another model's is
read from the local Hugging Face cache only (the page downloads nothing to count): where it is not
there, or the task is a Hub dataset, the note says the worker's log will tell. Never raises.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from prefixlab.engine.spec import ExperimentSpec
from prefixlab.ui.values import md_text

# A suggested max_length is rounded up to a multiple of this (friendlier to kernels, and to people).
ROUND_TO = 8


@dataclass(frozen=True)
class Lengths:
    """Each example's untruncated lengths, as the worker would encode it (token counts)."""

    causal: bool
    prompts: tuple[int, ...]  # causal: lead + source + separator; seq2seq: lead + source + tail
    answers: tuple[int, ...]  # causal: target + eos; seq2seq: the target alone
    minimums: tuple[int, ...]  # causal: what the prompt keeps however short max_length is (lead + separator)
    specials: int  # seq2seq: the lead and tail ids around a target (they take label positions too)
    splits: tuple[tuple[str, int], ...]  # (split, examples) in the order encoded


@dataclass(frozen=True)
class Truncation:
    """What max_length does to the examples."""

    examples: int
    splits: tuple[tuple[str, int], ...]
    max_length: int
    truncated: int
    source_cut: int
    target_cut: int
    target_lost: int  # examples left without a target token: the worker refuses to train on them
    longest: int  # the max_length at which none is truncated


@dataclass(frozen=True)
class DataNote:
    """The note beside max_length: its Markdown, and the suggested max_length (None: nothing to suggest)."""

    markdown: str
    suggestion: int | None = None


def measure(examples: list[dict], tokenizer, task_type, separator: str) -> Lengths:
    """Lengths of `examples` (one list: the splits in order) encoded as the worker does."""
    from prefixlab.engine.data import IGNORE_INDEX, encode_examples, special_tokens_around

    lead, tail = special_tokens_around(tokenizer)
    encoded = encode_examples(examples, tokenizer, task_type, max_length=1 << 30, separator=separator)
    causal = str(getattr(task_type, "value", task_type)) == "CAUSAL_LM"
    prompts, answers, minimums = [], [], []
    if causal:
        separator_ids = len(tokenizer(separator, add_special_tokens=False)["input_ids"])
        for feature in encoded.features:
            prompt = sum(1 for t in feature["labels"] if t == IGNORE_INDEX)
            prompts.append(prompt)
            answers.append(len(feature["labels"]) - prompt)
            minimums.append(len(lead) + min(separator_ids, prompt - len(lead)))
        specials = 0
    else:
        eos = tokenizer.eos_token_id
        tail_ids = tail + ([eos] if eos is not None and eos not in tail else [])
        specials = len(lead) + len(tail_ids)
        for feature in encoded.features:
            prompts.append(len(feature["input_ids"]))
            answers.append(len(feature["labels"]) - specials)
            minimums.append(0)
    return Lengths(causal, tuple(prompts), tuple(answers), tuple(minimums), specials, ())


def truncation(lengths: Lengths, max_length: int) -> Truncation:
    """Which examples `max_length` truncates, by engine.data's rules (see the module docstring)."""
    truncated = source_cut = target_cut = lost = 0
    longest = 0
    for prompt, answer, minimum in zip(lengths.prompts, lengths.answers, lengths.minimums):
        if lengths.causal:
            longest = max(longest, prompt + answer)
            if prompt + answer <= max_length:
                continue
            truncated += 1
            kept_prompt = min(prompt, max(max_length - answer, minimum))
            source_cut += kept_prompt < prompt
            kept_answer = max(max_length - kept_prompt, 0)
            target_cut += kept_answer < answer
            lost += kept_answer == 0
        else:
            room = max_length - lengths.specials
            longest = max(longest, prompt, answer + lengths.specials)
            cut_source, cut_target = prompt > max_length, answer > room
            truncated += cut_source or cut_target
            source_cut += cut_source
            target_cut += cut_target
            lost += answer > 0 and room <= 0
    return Truncation(len(lengths.prompts), lengths.splits, max_length, truncated, source_cut, target_cut, lost, longest)


def suggested(longest: int, limit: int | None) -> int:
    """The max_length to suggest: the longest example, rounded up to ROUND_TO, within `limit`."""
    value = -(-longest // ROUND_TO) * ROUND_TO
    return min(value, limit) if limit else value


# ---------------------------------------------------------------------------------------------
# Reading the task and the tokenizer (cached)


def _stamp(source: str) -> tuple:
    """What changes when a task file or folder is rewritten (its entries' sizes and times)."""
    path = Path(source).expanduser()
    try:
        entries = [path] + (sorted(path.iterdir()) if path.is_dir() else [])
        return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entries)
    except OSError:
        return ()


_lock = threading.Lock()  # one tokenizer load or task measurement at a time (the cache fills once)


@functools.lru_cache(maxsize=8)
def tokenizer_for(model_name: str):
    """(tokenizer, task type) of `model_name`: the offline presets' built-in one, else only what the
    local Hugging Face cache holds. Raises LookupError with the page's message when there is none."""
    from prefixlab.engine.zoo import MODEL_PRESETS, OFFLINE_PRESETS, model_facts, preset_tokenizer

    if model_name in OFFLINE_PRESETS:
        return preset_tokenizer(model_name), MODEL_PRESETS[model_name].task_type
    try:
        task_type = model_facts(model_name).task_type
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_name, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - not cached, no tokenizer files, an offline Hub id: all one message
        raise LookupError(f"{model_name}'s tokenizer is not on this machine ({type(err).__name__}), and the page "
                          "downloads nothing to count; the worker's log will say how many examples it truncates") from None
    return tokenizer, task_type


def _tokenizer_key(model_name: str) -> str:
    from prefixlab.engine.zoo import OFFLINE_PRESETS, own_tokenizer

    if model_name in OFFLINE_PRESETS and not own_tokenizer(model_name):
        return "offline-presets"  # they share ByT5's tokenizer
    return model_name


@functools.lru_cache(maxsize=16)
def _lengths(tokenizer_key: str, model_name: str, data_key: tuple, stamp: tuple) -> Lengths:
    del tokenizer_key, stamp  # part of the cache key only
    from prefixlab.engine.data import load_task

    source, source_column, target_column, hub_config, separator, max_train, max_eval = data_key
    splits = load_task(source, source_column=source_column, target_column=target_column, hub_config=hub_config,
                       max_train_examples=max_train, max_eval_examples=max_eval)
    tokenizer, task_type = tokenizer_for(model_name)
    encoded = [("train", splits["train"]), ("validation", splits["validation"])]  # what the worker encodes
    examples = [e for _, split in encoded for e in split]
    measured = measure(examples, tokenizer, task_type, separator)
    return Lengths(measured.causal, measured.prompts, measured.answers, measured.minimums, measured.specials,
                   tuple((name, len(split)) for name, split in encoded))


def task_lengths(spec: ExperimentSpec) -> Lengths:
    """The cached lengths of the spec's task under its model's tokenizer (LookupError: no tokenizer
    here; DataError: the task cannot be read, which the form's checks name)."""
    data = spec.data
    key = (data.source, data.source_column, data.target_column, data.hub_config, data.separator,
           data.max_train_examples, data.max_eval_examples)
    with _lock:
        return _lengths(_tokenizer_key(spec.model.name), spec.model.name, key, _stamp(data.source))


# ---------------------------------------------------------------------------------------------
# The note


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def note_markdown(t: Truncation, limit: int | None) -> DataNote:
    """The note for a truncation count, and the max_length to suggest (None when all fit)."""
    splits = " + ".join(f"{n:,} {name}" for name, n in t.splits if n)
    head = f"**{_count(t.examples, 'example')}** ({splits}) at max_length {t.max_length}: "
    if not t.truncated:
        return DataNote(head + f"none truncated (the longest takes {t.longest:,} tokens).")
    parts = [f"source cut in {t.source_cut:,}", f"target cut in {t.target_cut:,}"]
    text = head + f"**{t.truncated:,} truncated** ({', '.join(parts)})."
    if t.target_lost:
        text += (f" ⚠️ {_count(t.target_lost, 'example')} would keep no target token, which the worker refuses: "
                 "raise max_length.")
    best = suggested(t.longest, limit)
    if best <= t.max_length:  # the model allows no more: say what remains
        return DataNote(text + f" The model's positions allow at most {limit:,}.")
    fits = "all fit" if best >= t.longest else f"the model's positions allow at most {best:,}"
    return DataNote(text + f" At **{best:,}** {fits}.", best)


def data_note(spec: ExperimentSpec, limit: int | None) -> DataNote:
    """The note beside max_length for `spec` (whose task and model the page may read); `limit`: the
    largest max_length the model's positions allow after the prefix (None: no limit)."""
    from prefixlab.engine.data import resolve_source

    try:
        kind, _ = resolve_source(spec.data.source)
    except (OSError, ValueError):
        return DataNote("")
    if kind == "hub":
        return DataNote("A Hub dataset is counted when the worker downloads it: its log says how many examples "
                        "max_length truncates.")
    try:
        lengths = task_lengths(spec)
    except LookupError as err:
        return DataNote(f"Truncation not counted: {md_text(err)}.")
    except (ValueError, OSError):  # a bad task file or column: the field's own message says what to fix
        return DataNote("")
    return note_markdown(truncation(lengths, spec.training.max_length), limit)
