"""Task data: the built-in task, a user's JSONL/CSV file, or a Hub dataset; tokenisation; collation.

Loading gives plain examples `{"source": str, "target": str}` per split (train / validation / test).
Encoding follows Li & Liang (2021, section 4): a causal LM sees `source + separator + target + eos`
and is trained only on the target (labels are -100 on the source and on padding); an
encoder-decoder reads the source and is trained on the target. Batches are padded to their own
longest example, not to max_length.

Every problem with the data is a `DataError` whose message names where (file and line, or Hub
split and row), what is wrong, and what to do.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefixlab.core.config import TaskType
from prefixlab.engine import limits
from prefixlab.engine.runs import json_error_at

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
BUILTIN_TASKS = {"e2e-synth": PRESETS_DIR / "data" / "e2e_synth"}
SPLITS = ("train", "validation", "test")
FILE_SUFFIXES = (".jsonl", ".json", ".csv")
# A user's data without a validation split: every HOLDOUT_EVERY-th training example (the 10th,
# 20th, ...) becomes validation. Deterministic, and spread over the file so a sorted file still
# gives a representative validation set.
HOLDOUT_EVERY = 10
IGNORE_INDEX = -100  # what torch's cross-entropy skips


class DataError(ValueError):
    """Bad or unreachable task data; the message names the file/line (or split/row) and the fix.
    `.field` is the spec key to fix: data.source (the file or dataset), or a column."""

    def __init__(self, message: str, field: str = "data.source"):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------------------------------
# Where the data comes from


def resolve_source(source: str) -> tuple[str, str]:
    """`"e2e-synth"` -> ("builtin", ...); an existing path or a .jsonl/.json/.csv name -> ("file",
    path); anything else -> ("hub", dataset id)."""
    if source in BUILTIN_TASKS:
        return "builtin", source
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in FILE_SUFFIXES or source.startswith(("/", "./", "../", "~")):
        return "file", str(path)
    return "hub", source


def load_task(
    source,
    *,
    source_column: str = "source",
    target_column: str = "target",
    hub_config: str | None = None,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    **_ignored,
) -> dict[str, list[dict]]:
    """Examples per split: `{"train": [...], "validation": [...], "test": [...]}`.

    `source` is a built-in task name, a file or folder path, or a Hub dataset id (see
    `resolve_source`); or a DataSpec-like object whose attributes of these names are used (so
    `load_task(spec.data)` works without this module importing experiment.py). Keyword
    arguments this function does not use (e.g. `separator`) are accepted and ignored so a
    DataSpec's fields can be passed as `**asdict(spec.data)`.
    A file or folder without a validation split gets one held out of train (see HOLDOUT_EVERY);
    validation and test may be empty. `max_eval_examples` caps validation and test alike.
    """
    if not isinstance(source, str):
        spec = source
        source = spec.source
        source_column = getattr(spec, "source_column", source_column)
        target_column = getattr(spec, "target_column", target_column)
        hub_config = getattr(spec, "hub_config", hub_config)
        max_train_examples = getattr(spec, "max_train_examples", max_train_examples)
        max_eval_examples = getattr(spec, "max_eval_examples", max_eval_examples)
    kind, where = resolve_source(source)
    if kind != "builtin":
        check_columns(where, source_column, target_column)
    if kind == "builtin":
        splits = _load_folder(BUILTIN_TASKS[where], "source", "target")
    elif kind == "file":
        path = Path(where)
        splits = _load_folder(path, source_column, target_column) if path.is_dir() else \
            _with_validation({"train": read_examples(path, source_column, target_column)}, str(path))
    else:
        limits = _limits(max_train_examples, max_eval_examples)
        splits = _load_hub(where, hub_config, source_column, target_column, limits)
    return _cap(splits, max_train_examples, max_eval_examples)


def check_columns(where: str, source_column: str, target_column: str) -> None:
    """A DataError when the source and target columns are one column: the model would learn to copy
    its input, which no task is (a file with a single column cannot be a task)."""
    if source_column == target_column:
        raise DataError(f"{where}: the source and target columns are both {source_column!r}; a task needs a "
                        "source column and a different target column: set one of them to another column "
                        "(a file with a single column cannot be a task)", field="data.target_column")


def _limits(max_train: int | None, max_eval: int | None) -> dict[str, int | None]:
    return {"train": max_train, "validation": max_eval, "test": max_eval}


def _cap(splits: dict[str, list[dict]], max_train: int | None, max_eval: int | None) -> dict[str, list[dict]]:
    """Keep the first N examples of each split (N = max_train for train, max_eval otherwise)."""
    limits = _limits(max_train, max_eval)
    return {split: examples[: limits[split]] if limits[split] else examples for split, examples in splits.items()}


def hold_out(examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split `examples` into (train, validation): every HOLDOUT_EVERY-th example is validation.

    Fewer than HOLDOUT_EVERY examples give an empty validation split.
    """
    is_held = [(i + 1) % HOLDOUT_EVERY == 0 for i in range(len(examples))]
    train = [ex for ex, held in zip(examples, is_held) if not held]
    return train, [ex for ex, held in zip(examples, is_held) if held]


def _with_validation(splits: dict[str, list[dict]], where: str) -> dict[str, list[dict]]:
    """Fill in missing splits: validation held out of train, test empty."""
    if not splits.get("validation"):
        splits["train"], splits["validation"] = hold_out(splits["train"])
    splits.setdefault("test", [])
    if not splits["train"]:
        raise DataError(f"{where}: the train split has no examples; add examples to it")
    return {split: splits[split] for split in SPLITS}


def _split_file(folder: Path, split: str) -> Path | None:
    found = [folder / f"{split}{suffix}" for suffix in FILE_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    return found[0] if found else None


def _load_folder(folder: Path, source_column: str, target_column: str) -> dict[str, list[dict]]:
    """A folder of `train.jsonl` (or .json/.csv) plus optional `validation.*` and `test.*`."""
    if _split_file(folder, "train") is None:
        names = ", ".join(f"train{suffix}" for suffix in FILE_SUFFIXES)
        raise DataError(f"{folder}: no training file in this folder; add one of {names}")
    splits = {}
    for split in SPLITS:
        path = _split_file(folder, split)
        if path is not None:
            splits[split] = read_examples(path, source_column, target_column)
            if not splits[split]:
                raise DataError(f"{path}: the {split} split has no examples; add examples or remove the file")
    return _with_validation(splits, str(folder))


# ---------------------------------------------------------------------------------------------
# Files


def _amount(size: int) -> str:
    return f"{size:,} bytes" if size < 2**20 else f"{size / 2**20:,.1f} MiB"


def _check_size(path: Path) -> None:
    """A DataError, before anything is read, for a file over limits.MAX_TASK_FILE_BYTES."""
    size = path.stat().st_size
    if size > limits.MAX_TASK_FILE_BYTES:
        raise DataError(f"{path}: the file is {_amount(size)}, over the limit of {_amount(limits.MAX_TASK_FILE_BYTES)} "
                        "for a task file (MAX_TASK_FILE_BYTES in prefixlab/engine/limits.py); use a smaller file "
                        "(fewer examples, or shorter ones)")


def _too_long(path: Path, where: str) -> DataError:
    return DataError(f"{path}, {where} is longer than {limits.MAX_LINE_CHARS:,} characters, the limit for one record "
                     "(MAX_LINE_CHARS in prefixlab/engine/limits.py); shorten its texts or remove it")


def _bounded_lines(path: Path, f) -> str:
    """The text of `f`, read a line at a time, never more than limits.MAX_LINE_CHARS (plus its line
    break) of one line: a longer line is a DataError naming it, before the rest is read."""
    limit, parts = limits.MAX_LINE_CHARS, []
    for number in itertools.count(1):
        line = f.readline(limit + 1)  # \r\n and \r are read as \n
        if not line:
            return "".join(parts)
        if len(line.rstrip("\n")) > limit:
            raise _too_long(path, f"line {number}")
        parts.append(line)


def _read_text(path: Path) -> str:
    """The file's text, checked against the limits as it is read (limits.py): its size first; then
    every line's length, except in a .json file holding one array (one line may hold it all: its
    items are checked once parsed, by _json_array)."""
    try:
        _check_size(path)
        with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a BOM from spreadsheet exports
            if path.suffix.lower() == ".json":
                head = ""
                while not head and (chunk := f.read(4096)):  # the first character that is not blank
                    head = chunk.lstrip()
                f.seek(0)
                if head.startswith("["):
                    return f.read()
            return _bounded_lines(path, f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a data file; give a .jsonl, .json or .csv file") from None
    except UnicodeDecodeError as err:
        offset = _bad_utf8_offset(path)
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {err.start if offset is None else offset}); "
                        "save the file as UTF-8") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror}); check its permissions") from None


def _bad_utf8_offset(path: Path) -> int | None:
    """The offset in the file of its first byte that is not UTF-8 (a text reader's error gives the
    offset within the chunk it decoded), read a chunk at a time."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                pending = len(decoder.getstate()[0])  # bytes of a character split between chunks
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    return offset - pending + err.start
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        return offset - len(err.object) + err.start
    except OSError:
        return None
    return None


def _lines(text: str) -> list[str]:
    """The lines of a text file: split at \n, \r\n or \r only. str.splitlines also splits at
    U+2028 and U+0085, which JSON strings may hold raw."""
    return re.split(r"\r\n|\r|\n", text)


def _json_lines(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON Lines text."""
    records = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: bad JSON ({json_error_at(err.msg, f'column {err.colno}')}); "
                            "each line must be one JSON object like {\"source\": ..., \"target\": ...}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {_json_type(record)}; "
                            "each line must be one JSON object like {\"source\": ..., \"target\": ...}")
        records.append((number, record))
    return records


def _json_type(value) -> str:
    """What a parsed JSON value is, in JSON's words: "an array", "a number", "null", ..."""
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null")


def _json_array(path: Path, text: str) -> list[tuple[int, dict]]:
    """A .json file holding one array of objects; records are numbered by item (1-based)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: bad JSON ({json_error_at(err.msg, f'column {err.colno}')}); "
                        "fix the file or save it as JSON Lines (.jsonl)") from None
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{path}, item {number}: expected a JSON object, got {_json_type(item)}; "
                            "the array must hold one JSON object per example, like "
                            "{\"source\": ..., \"target\": ...}")
        if sum(len(value) for value in item.values() if isinstance(value, str)) > limits.MAX_LINE_CHARS:
            raise _too_long(path, f"item {number}")
    return list(enumerate(items, start=1))


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) for every non-blank record of a CSV text; `line` is the line the record starts
    on (a quoted field may hold line breaks). Quoting is strict, and a quote never closed is named
    by the line it opens on instead of swallowing the rest of the file."""
    at_end = []  # set once the reader has asked for a line after the last one

    def lines():
        yield from io.StringIO(text)
        at_end.append(True)

    reader = csv.reader(lines(), strict=True)
    start = 1
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as err:
            raise DataError(_csv_error(path, text, start, reader.line_num, err, bool(at_end))) from None
        if fields is None:
            return
        if sum(len(field) for field in fields) > limits.MAX_LINE_CHARS:  # a record over several lines
            raise _too_long(path, f"line {start}: the record starting here")
        if any(field.strip() for field in fields):
            yield start, fields
        start = reader.line_num + 1


def _csv_error(path: Path, text: str, start: int, line: int, err: csv.Error, at_end: bool) -> str:
    """The message for a CSV error met on `line` in the record that starts on line `start`."""
    if at_end:  # the file ended inside a quoted field
        # Read leniently, that field holds everything after its opening quote: count the lines before it.
        fields = next(csv.reader(io.StringIO(text).readlines()[start - 1:]))
        opened = text.count("\n") - fields[-1].count("\n") + 1
        return (f"{path}, line {opened}: a quoted field opens here (\") and is never closed, so the rest of "
                "the file would be read into it; add the closing quote (a quote inside a quoted field is "
                "written twice: \"\")")
    where = "on that line" if line == start else f"from line {start}, where this record starts"
    return f"{path}, line {line}: bad CSV ({err}); check quoting {where}"


def _csv_table(path: Path, text: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """(column names, rows) of a CSV text whose first non-blank line is the header; rows are
    (line, {column: text}) pairs, checked lazily to have one field per header column. Unnamed
    columns (an empty header field) are left out."""
    records = _csv_records(path, text)
    header_line, header = next(records, (1, []))
    named = [name for name in header if name]
    for name in named:
        if named.count(name) > 1:
            raise DataError(f"{path}, line {header_line}: the column name {name!r} appears {named.count(name)} "
                            "times in the header; give each column a different name")

    def rows():
        for number, fields in records:
            if len(fields) > len(header):
                raise DataError(f"{path}, line {number}: {len(fields)} fields but the header has {len(header)}; "
                                "quote fields that contain commas (\"a, b\") or remove the extra fields")
            if len(fields) < len(header):
                raise DataError(f"{path}, line {number}: {len(fields)} field{'s' * (len(fields) != 1)} but the "
                                f"header has {len(header)}; give every line one field per header column "
                                "(an empty field is still written, between two commas: a,,c)")
            yield number, {name: value for name, value in zip(header, fields) if name}

    return named, rows()


def _parse(path: Path) -> tuple[str, list[str] | None, list[tuple[int, dict]]]:
    """(unit, header, records) of a task file: the unit records are numbered in ("line", or "item"
    for a JSON array), the CSV header (None for JSON), and every record."""
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .csv")
    text = _read_text(path)
    if path.suffix.lower() == ".csv":
        header, rows = _csv_table(path, text)
        return "line", header, list(rows)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return "item", None, _json_array(path, text)
    return "line", None, _json_lines(path, text)


def _records(path: Path) -> tuple[str, list[tuple[int, dict]]]:
    """("line" or "item", records): the unit records are numbered in, and `read_records(path)`."""
    unit, _, records = _parse(path)
    return unit, records


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(number, record) pairs of a .jsonl, .json (JSON Lines or one array) or .csv file: the number is
    the line a record starts on, or for a JSON array the item's position (1-based)."""
    return _records(Path(path))[1]


def _text(where: str, record: dict, column: str, role: str) -> str:
    """The text in `record[column]`, or a DataError naming the columns there are."""
    if column not in record:
        found = ", ".join(repr(c) for c in record) or "none"
        raise DataError(f"{where}: no {role} column {column!r} (columns found: {found}); "
                        f"set the {role} column to one of them", field=f"data.{role}_column")
    value = record[column]
    if isinstance(value, (list, dict)):
        raise DataError(f"{where}: the {role} column {column!r} holds a {type(value).__name__}, not text; "
                        "choose a column of plain text", field=f"data.{role}_column")
    return "" if value is None else str(value)


def to_example(where: str, record: dict, source_column: str, target_column: str) -> dict:
    """`{"source", "target"}` from one record; an empty target is an error."""
    example = {"source": _text(where, record, source_column, "source"),
               "target": _text(where, record, target_column, "target")}
    if not example["target"].strip():
        raise DataError(f"{where}: empty target in column {target_column!r}; fill it in or remove the line")
    return example


def read_examples(path: str | Path, source_column: str = "source", target_column: str = "target") -> list[dict]:
    """All examples of one file, validated line by line."""
    path = Path(path)
    unit, records = _records(path)
    if not records:
        raise DataError(f"{path}: the file has no examples; add lines with a {source_column!r} and "
                        f"a {target_column!r} column")
    return [to_example(f"{path}, {unit} {n}", rec, source_column, target_column) for n, rec in records]


def read_table(path: str | Path, lines: int = 20) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, read_records(path)) from one read of the file, for the page's upload: the columns
    are the CSV header, or the keys of the first `lines` JSON records (for the column pickers)."""
    path = Path(path)
    _, header, records = _parse(path)
    return _columns(path, header, records[:lines]), records


def _columns(path: Path, header: list[str] | None, records: list[tuple[int, dict]]) -> list[str]:
    columns = dict.fromkeys(header) if header is not None else {}  # an ordered set
    for _, record in records if header is None else ():
        columns.update(dict.fromkeys(record))
    if not columns:
        raise DataError(f"{path}: no columns found (the file is empty); add a header line or JSON records")
    return list(columns)


# ---------------------------------------------------------------------------------------------
# Hub datasets


# datasets 4 and later no longer run a dataset's loading script; the Hub's Parquet converter keeps
# a copy of most such datasets under this revision, which loads without running anything.
PARQUET_REVISION = "refs/convert/parquet"
SCRIPT_REFUSED = "Dataset scripts are no longer supported"


def _load_dataset_dict(name: str, hub_config: str | None):
    """`datasets.load_dataset(name, hub_config)`, or for a script dataset its Parquet copy."""
    import datasets

    try:
        return datasets.load_dataset(name, hub_config)
    except RuntimeError as err:
        if SCRIPT_REFUSED not in str(err):
            raise
        try:
            return datasets.load_dataset(name, hub_config, revision=PARQUET_REVISION)
        except Exception as retry:  # noqa: BLE001 - reported with the first error below
            raise RuntimeError(f"{str(err).strip()}; its Parquet copy (revision {PARQUET_REVISION}) did not load "
                               f"either ({type(retry).__name__}: {str(retry).strip().splitlines()[0]}); download "
                               "its data and use it as a local .jsonl/.csv file") from retry


def _hub_message(name: str, hub_config: str | None, err: Exception) -> str:
    from prefixlab.core.hub import hub_offline

    what = f"{name!r}" + (f" (config {hub_config!r})" if hub_config else "")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if SCRIPT_REFUSED in reason:
        return f"could not load the Hub dataset {what}: {reason}"
    offline = " HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set, so only cached datasets load;" \
        if hub_offline() else ""
    return (f"could not load the Hub dataset {what}: {type(err).__name__}: {reason}. Likely causes:{offline} "
            "no network; the id is misspelt (ids look like 'e2e_nlg' or 'GEM/web_nlg'); the dataset needs "
            "a config name (set the hub config); or it is gated/private (log in with `hf auth login`). "
            "If you meant a local file, it does not exist. Offline, use the built-in task 'e2e-synth' "
            "or a local .jsonl/.csv file.")


def _first_rows(dataset, limit: int | None) -> list[dict]:
    """The first `limit` rows (all if None) as dicts, without converting the rest (XSum has 200k)."""
    return dataset.select(range(min(limit, len(dataset)))).to_list() if limit else dataset.to_list()


def _load_hub(name: str, hub_config: str | None, source_column: str, target_column: str,
              limits: dict[str, int | None]) -> dict[str, list[dict]]:
    """Splits of a Hub dataset through `datasets.load_dataset`, mapped to source/target.

    `limits` caps each split early; train is read whole when validation must be held out of it.
    """
    from prefixlab.core.hub import hub_offline, hub_unreachable_reason

    # Without this check `datasets` retries a dead connection for half a minute or more.
    unreachable = None if hub_offline() else hub_unreachable_reason()
    try:
        if unreachable:
            raise ConnectionError(f"the Hub does not answer ({unreachable}); if the dataset is in your cache, "
                                  "set HF_HUB_OFFLINE=1 to use it")
        dataset_dict = _load_dataset_dict(name, hub_config)
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot fetch"; say why once
        raise DataError(_hub_message(name, hub_config, err)) from err
    splits = {}
    for split in SPLITS:
        if split in dataset_dict:
            rows = _first_rows(dataset_dict[split], limits[split] if "validation" in dataset_dict else None)
            splits[split] = [to_example(f"Hub dataset {name!r}, {split} split, row {i}", row,
                                        source_column, target_column) for i, row in enumerate(rows)]
    if "train" not in splits:
        found = ", ".join(dataset_dict) or "none"
        raise DataError(f"Hub dataset {name!r} has no 'train' split (splits found: {found}); "
                        "choose a dataset with a train split")
    return _with_validation(splits, f"Hub dataset {name!r}")


# ---------------------------------------------------------------------------------------------
# Tokenisation


def _is_causal(task_type) -> bool:
    return TaskType(task_type) == TaskType.CAUSAL_LM


def build_prompt(source: str, task_type, separator: str) -> str:
    """What the model is given at generation time: `source + separator` for causal LMs, else `source`."""
    return source + separator if _is_causal(task_type) else source


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """(lead, tail): the ids the tokenizer puts before and after one sequence.

    Found by encoding a probe with and without special tokens, so it works for every tokenizer:
    GPT-2 -> ([], []), Llama -> ([bos], []), T5/ByT5 -> ([], [eos]), BART -> ([bos], [eos]).
    """
    plain = _ids(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


@dataclass
class EncodedSplit:
    """Token ids of one split: `features[i] = {"input_ids": [...], "labels": [...]}`."""

    features: list[dict[str, list[int]]]
    num_truncated: int = 0

    def __len__(self) -> int:
        return len(self.features)

    @property
    def num_target_tokens(self) -> int:
        """Tokens the loss is computed on (labels other than -100)."""
        return sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in self.features)


def _truncate_prompt(prompt: list[int], keep_head: int, keep_tail: int, budget: int) -> list[int]:
    """Cut `prompt` to `budget` ids by dropping the end of the source.

    The first `keep_head` ids (special tokens) and last `keep_tail` ids (the separator, which cues
    the target) survive while the budget allows; after that the prompt's end is kept.
    """
    if len(prompt) <= budget:
        return prompt
    middle = budget - keep_head - keep_tail
    if middle >= 0:
        return prompt[: keep_head + middle] + prompt[len(prompt) - keep_tail:]
    return prompt[len(prompt) - budget:] if budget > 0 else []


@dataclass
class _Encoder:
    """Per-tokenizer constants for encoding one split."""

    tokenizer: object
    causal: bool
    max_length: int
    separator: str

    def __post_init__(self):
        self.lead, self.tail = special_tokens_around(self.tokenizer)
        self.eos = self.tokenizer.eos_token_id
        if self.causal and self.eos is None:
            raise DataError("the tokenizer has no eos token; a causal LM needs one to learn where the target ends")
        if not self.causal and self.eos is not None and self.eos not in self.tail:
            self.tail = self.tail + [self.eos]  # seq2seq targets must end in eos to learn to stop
        self.sep_len = len(_ids(self.tokenizer, self.separator)) if self.causal else 0

    def full_prompt(self, source: str) -> list[int]:
        """Untruncated prompt ids: causal `lead + ids(source + separator)`; seq2seq `lead + ids(source) + tail`."""
        if self.causal:
            return self.lead + _ids(self.tokenizer, build_prompt(source, TaskType.CAUSAL_LM, self.separator))
        return self.lead + _ids(self.tokenizer, source) + self.tail

    def cut(self, prompt: list[int], budget: int) -> list[int]:
        """`prompt` cut to `budget` ids, keeping its special tokens and (causal) its separator."""
        keep_tail = min(self.sep_len, len(prompt) - len(self.lead)) if self.causal else len(self.tail)
        return _truncate_prompt(prompt, len(self.lead), keep_tail, budget)

    def encode(self, example: dict, where: str) -> tuple[dict[str, list[int]], bool]:
        """One example -> ({"input_ids", "labels"}, was_truncated)."""
        target = _ids(self.tokenizer, example["target"])
        full = self.full_prompt(example["source"])
        if self.causal:
            # The source gives way first (keeping the separator), then the end of the target.
            answer = target + [self.eos]
            truncated = len(full) + len(answer) > self.max_length
            # The prompt keeps at least its special tokens and separator, even if the target must shrink.
            minimum = len(self.lead) + min(self.sep_len, len(full) - len(self.lead))
            prompt = self.cut(full, max(self.max_length - len(answer), minimum))
            kept = answer[: max(self.max_length - len(prompt), 0)]
            feature = {"input_ids": prompt + kept, "labels": [IGNORE_INDEX] * len(prompt) + kept}
        else:
            room = self.max_length - len(self.lead) - len(self.tail)
            truncated = len(full) > self.max_length or len(target) > room
            kept = target[: max(room, 0)]
            feature = {"input_ids": self.cut(full, self.max_length),
                       "labels": self.lead + kept + self.tail}
        if target and not [t for t in kept if t != self.eos]:
            raise DataError(f"{where}: the target is empty after truncation to max_length={self.max_length} "
                            "(the prompt and special tokens fill it); raise max_length or shorten the source")
        return feature, truncated


def encode_examples(examples: list[dict], tokenizer, task_type, max_length: int, separator: str,
                    split: str = "train") -> EncodedSplit:
    """Tokenise a split's examples; see the module docstring for the layout.

    Causal LM:  input_ids = lead + ids(source + separator) + ids(target) + [eos]
                labels    = [-100] * len(lead + prompt) + ids(target) + [eos]
    Seq2seq:    input_ids = lead + ids(source) + tail; labels = lead + ids(target) + tail (ends in eos)
    Longer than max_length: the source is cut first (a causal LM keeps its separator), then the
    target's end; such examples are counted in `num_truncated`. `split` only names the split in
    error messages ("train split, example 12" counts from 1, like a file's lines).
    """
    if max_length < 1:
        raise DataError(f"max_length must be a positive number of tokens, got {max_length}")
    encoder = _Encoder(tokenizer, _is_causal(task_type), max_length, separator)
    features, num_truncated = [], 0
    for number, example in enumerate(examples, start=1):
        feature, truncated = encoder.encode(example, f"{split} split, example {number}")
        features.append(feature)
        num_truncated += truncated
    return EncodedSplit(features, num_truncated)


def pad_sequences(sequences: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """(batch, longest) long tensor of `sequences` padded with `value` on the right (or left)."""
    import torch

    longest = max(len(s) for s in sequences)
    rows = [[value] * (longest - len(s)) + list(s) if left else list(s) + [value] * (longest - len(s))
            for s in sequences]
    return torch.tensor(rows, dtype=torch.long)  # (batch, longest)


@dataclass
class Collator:
    """Features -> a right-padded training batch, padded to the batch's longest example.

    Returns `input_ids` (batch, src_len), `attention_mask` (batch, src_len) and `labels`
    (batch, tgt_len; tgt_len == src_len for causal LMs), labels padded with -100.
    """

    pad_token_id: int
    task_type: object

    def __post_init__(self):
        if self.pad_token_id is None:
            raise DataError("pad_token_id is None: the tokenizer has no pad token; set tokenizer.pad_token = "
                            "tokenizer.eos_token (prefixlab.engine.zoo.load_base does this)")

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        inputs = [f["input_ids"] for f in features]
        return {
            "input_ids": pad_sequences(inputs, self.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(s) for s in inputs], 0),
            "labels": pad_sequences([f["labels"] for f in features], IGNORE_INDEX),
        }


def encode_prompts(sources: list[str], tokenizer, task_type, separator: str,
                   max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Generation inputs for `sources`: `input_ids`, `attention_mask`, each (batch, longest).

    Causal LMs are left-padded so every prompt ends where generation starts; encoder-decoders
    are right-padded. Prompts are built and truncated exactly as in training (`encode_examples`).
    """
    if tokenizer.pad_token_id is None:
        raise DataError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    causal = _is_causal(task_type)
    encoder = _Encoder(tokenizer, causal, max_length or 0, separator)
    prompts = [encoder.full_prompt(source) for source in sources]
    prompts = [encoder.cut(prompt, max_length) for prompt in prompts] if max_length else prompts
    return {
        "input_ids": pad_sequences(prompts, tokenizer.pad_token_id, left=causal),
        "attention_mask": pad_sequences([[1] * len(p) for p in prompts], 0, left=causal),
    }
