"""Task data: loading (built-in, files, Hub), error messages, tokenisation, masking, collation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from prefixlab.engine import data
from prefixlab.core.config import TaskType
from prefixlab.engine.data import DataError, read_records
from prefixlab.tools.make_task import generate_splits
from prefixlab.engine.tiny import EOS_ID, PAD_ID, tiny_model, tiny_tokenizer

CAUSAL, SEQ2SEQ = TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM
SEP = " => "


def byte_ids(text: str) -> list[int]:
    """ByT5's ids from first principles: UTF-8 bytes shifted past its 3 special ids."""
    return [b + 3 for b in text.encode("utf-8")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def word_tokenizer(single: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose special-token template is `single` (e.g. "<s> $A </s>")."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in "a b c d e f g h => x y z".split():
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


# ---------------------------------------------------------------------------------------------
# Loading


def test_builtin_task_is_the_generators_output():
    splits = data.load_task("e2e-synth")
    assert splits == generate_splits()


def test_caps_apply_to_train_and_to_eval_splits():
    splits = data.load_task("e2e-synth", max_train_examples=7, max_eval_examples=3)
    assert [len(splits[s]) for s in data.SPLITS] == [7, 3, 3]
    assert splits["train"] == generate_splits()["train"][:7]


def test_accepts_a_dataspec_like_object_and_ignores_other_fields(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": f"s{i}", "a": f"t{i}"} for i in range(12)])
    spec = SimpleNamespace(source=str(path), source_column="q", target_column="a", hub_config=None,
                           separator=SEP, max_train_examples=4, max_eval_examples=None)
    by_object = data.load_task(spec)
    assert by_object == data.load_task(**vars(spec))
    assert by_object["train"] == [{"source": f"s{i}", "target": f"t{i}"} for i in range(4)]


@pytest.mark.parametrize("source, kind", [
    ("e2e-synth", "builtin"), ("my/data.jsonl", "file"), ("./folder", "file"), ("/abs/x", "file"),
    ("e2e_nlg", "hub"), ("GEM/web_nlg", "hub"),
])
def test_resolve_source(source, kind):
    assert data.resolve_source(source)[0] == kind


def test_user_jsonl_with_own_columns_holds_out_every_tenth_example(tmp_path):
    rows = [{"table": f"row {i}", "text": f"sentence {i}", "extra": i} for i in range(25)]
    splits = data.load_task(str(write_jsonl(tmp_path / "mine.jsonl", rows)), source_column="table",
                            target_column="text")
    assert [ex["source"] for ex in splits["validation"]] == ["row 9", "row 19"]
    assert len(splits["train"]) == 23 and "row 9" not in {ex["source"] for ex in splits["train"]}
    assert splits["test"] == []


def test_csv_with_quotes_and_a_folder_with_its_own_validation(tmp_path):
    (tmp_path / "train.csv").write_text('in,out\n"a, b","x ""quoted"""\nc,d\n', encoding="utf-8")
    write_jsonl(tmp_path / "validation.jsonl", [{"in": "v", "out": "w"}])
    splits = data.load_task(str(tmp_path), source_column="in", target_column="out")
    assert splits["train"] == [{"source": "a, b", "target": 'x "quoted"'}, {"source": "c", "target": "d"}]
    assert splits["validation"] == [{"source": "v", "target": "w"}] and splits["test"] == []


def test_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"source": "s", "target": "t"}] * 3), encoding="utf-8")
    assert data.read_examples(path) == [{"source": "s", "target": "t"}] * 3


def test_read_table_columns(tmp_path):
    (tmp_path / "d.csv").write_text("meaning,reference\nx,y\n", encoding="utf-8")
    write_jsonl(tmp_path / "d.jsonl", [{"mr": 1, "ref": 2}, {"mr": 1, "ref": 2, "note": 3}])
    assert data.read_table(tmp_path / "d.csv") == (["meaning", "reference"], [(2, {"meaning": "x", "reference": "y"})])
    assert data.read_table(tmp_path / "d.jsonl")[0] == ["mr", "ref", "note"]
    (tmp_path / "long.jsonl").write_text('{"a": 1}\n' * 30 + '{"a": 1, "b": 2}\n', encoding="utf-8")
    columns, records = data.read_table(tmp_path / "long.jsonl")
    assert columns == ["a"] and len(records) == 31  # columns from the first records, every record read
    (tmp_path / "long.jsonl").write_text('{"a": 1}\n' * 30 + "not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"long\.jsonl, line 31: bad JSON"):
        data.read_table(tmp_path / "long.jsonl")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv: no columns found \(the file is empty\)"):
        data.read_table(tmp_path / "empty.csv")


# ---------------------------------------------------------------------------------------------
# Bad data: every message names the file, the line and the problem


def _error(tmp_path, name: str, text: str | bytes, **kwargs) -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(DataError) as info:
        data.load_task(str(path), **kwargs)
    return str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file; check the path"):
        data.load_task(str(tmp_path / "nope.jsonl"))


def test_unreadable_file(tmp_path):
    msg = _error(tmp_path, "latin.jsonl", b'{"source": "caf\xe9", "target": "x"}\n')
    assert "latin.jsonl: not UTF-8 text (bad byte at offset 15); save the file as UTF-8" in msg


def test_bad_json_names_the_line(tmp_path):
    msg = _error(tmp_path, "d.jsonl", '{"source": "a", "target": "b"}\n\n{"source": "a", target}\n')
    assert "d.jsonl, line 3: bad JSON" in msg and "one JSON object" in msg


def test_line_that_is_not_an_object(tmp_path):
    msg = _error(tmp_path, "d.jsonl", '{"source": "a", "target": "b"}\n["a", "b"]\n')
    assert "d.jsonl, line 2: expected a JSON object, got an array" in msg


def test_missing_column_lists_the_columns_found(tmp_path):
    msg = _error(tmp_path, "d.jsonl", '{"mr": "a", "ref": "b"}\n')
    assert "d.jsonl, line 1: no source column 'source' (columns found: 'mr', 'ref')" in msg
    msg = _error(tmp_path, "d.csv", "mr,ref\na,b\n", source_column="mr", target_column="text")
    assert "d.csv, line 2: no target column 'text' (columns found: 'mr', 'ref')" in msg


def test_the_same_column_as_source_and_target_is_refused(tmp_path):
    """A one-column file would train text -> text; the file (and the CLI) says so before any training."""
    msg = _error(tmp_path, "d.csv", "text\nhello\n", source_column="text", target_column="text")
    assert "d.csv: the source and target columns are both 'text'" in msg
    assert "a different target column" in msg
    with pytest.raises(DataError, match="both 'text'"):
        data.load_task("someone/dataset", source_column="text", target_column="text")  # before any download


def test_empty_target_names_the_line(tmp_path):
    msg = _error(tmp_path, "d.jsonl", '{"source": "a", "target": "b"}\n{"source": "a", "target": "  "}\n')
    assert "d.jsonl, line 2: empty target in column 'target'; fill it in or remove the line" in msg
    msg = _error(tmp_path, "d.csv", "source,target\na,b\nc,\n")
    assert "d.csv, line 3: empty target" in msg


def test_non_text_column(tmp_path):
    msg = _error(tmp_path, "d.jsonl", '{"source": "a", "target": ["b", "c"]}\n')
    assert "line 1: the target column 'target' holds a list, not text" in msg


def test_csv_row_with_more_or_fewer_fields_than_the_header(tmp_path):
    """An unquoted comma used to cut the target short silently (csv.DictReader files the rest under None)."""
    row = "name[The Eagle] | food[French],The Eagle, a pub, serves French food."
    msg = _error(tmp_path, "x.csv", f"source,target\n{row}\n")
    assert msg == (f"{tmp_path / 'x.csv'}, line 2: 4 fields but the header has 2; quote fields that contain "
                   "commas (\"a, b\") or remove the extra fields")
    # A missing field is an error even in a column no one reads: the fields after it may be shifted.
    msg = _error(tmp_path, "few.csv", "source,target,note\na,b,c\nd,e\n")
    assert msg == (f"{tmp_path / 'few.csv'}, line 3: 2 fields but the header has 3; give every line one field "
                   "per header column (an empty field is still written, between two commas: a,,c)")
    assert "few.csv, line 2: 1 field but the header has 2;" in _error(tmp_path, "few.csv", "source,target\na\n")
    # Blank lines, empty fields and an unnamed column are fine.
    (tmp_path / "ok.csv").write_text("\nsource,target,\na,b,\n\n,,\nc,,\n", encoding="utf-8")
    assert data.read_records(tmp_path / "ok.csv") == [(3, {"source": "a", "target": "b"}),
                                                      (6, {"source": "c", "target": ""})]
    assert data.read_table(tmp_path / "ok.csv")[0] == ["source", "target"]


def test_csv_header_that_names_a_column_twice(tmp_path):
    msg = _error(tmp_path, "d.csv", "source,target,source\na,b,c\n")
    assert msg == (f"{tmp_path / 'd.csv'}, line 1: the column name 'source' appears 2 times in the header; "
                   "give each column a different name")


def test_csv_quote_never_closed_is_named_by_the_line_it_opens_on(tmp_path):
    msg = _error(tmp_path, "d.csv", 'source,target\n"a,b\nc,d\ne,f\n')
    assert msg == (f"{tmp_path / 'd.csv'}, line 2: a quoted field opens here (\") and is never closed, so the "
                   "rest of the file would be read into it; add the closing quote (a quote inside a quoted "
                   'field is written twice: "")')
    # It used to load silently when the open field was the target: the rest of the file became its text.
    assert "d.csv, line 2: a quoted field opens here" in _error(tmp_path, "d.csv", 'source,target\na,"b\nc,d\ne,f\n')
    # After a record that spans lines, and in the second line of a record.
    assert "d.csv, line 4: a quoted field opens here" in _error(tmp_path, "d.csv", 'source,target\n"a\nb",c\nd,"e\nf')
    assert "d.csv, line 3: a quoted field opens here" in _error(tmp_path, "d.csv", 'source,target\n"a\nb","c\nd\n')
    # Text after a closing quote is reported too (it used to be glued to the field).
    msg = _error(tmp_path, "d.csv", 'source,target\n"a\nb"c,d\n')
    assert msg == (f"{tmp_path / 'd.csv'}, line 3: bad CSV (',' expected after '\"'); check quoting from line 2, "
                   "where this record starts")


def test_csv_errors_name_the_line_a_record_starts_on(tmp_path):
    msg = _error(tmp_path, "d.csv", 'source,target\n"a\nb",c\n"d\ne",\n')
    assert "d.csv, line 4: empty target in column 'target'" in msg
    (tmp_path / "ok.csv").write_text('source,target\n"a\nb",c\nd,e\n', encoding="utf-8")
    assert [n for n, _ in data.read_records(tmp_path / "ok.csv")] == [2, 4]


def test_json_array_items_that_are_not_objects(tmp_path):
    msg = _error(tmp_path, "d.json", '[{"source": "a", "target": "b"}, 5, "x"]')
    assert msg == (f"{tmp_path / 'd.json'}, item 2: expected a JSON object, got a number; the array must hold "
                   'one JSON object per example, like {"source": ..., "target": ...}')
    assert "d.json, item 1: expected a JSON object, got null" in _error(tmp_path, "d.json", "[null]")


def test_json_array_errors_name_the_item_not_a_line(tmp_path):
    text = json.dumps([{"source": "a", "target": "b"}, {"source": "a"}], indent=2)  # item 2 is on line 6
    msg = _error(tmp_path, "d.json", text)
    assert msg.startswith(f"{tmp_path / 'd.json'}, item 2: no target column 'target' (columns found: 'source')")
    msg = _error(tmp_path, "d.json", '[{"source": "a", "target": "b"}, {"source": "c", "target": ""}]')
    assert "d.json, item 2: empty target" in msg


@pytest.mark.parametrize("name, text", [
    ("more.csv", "source,target\na,b,c\n"), ("fewer.csv", "source,target,note\na,b\n"),
    ("twice.csv", "source,target,source\na,b,c\n"), ("open.csv", 'source,target\n"a,b\nc,d\n'),
    ("items.json", '[{"source": "a", "target": "b"}, 5]'),
])
def test_a_bad_file_gets_one_message_from_every_reader(tmp_path, name, text):
    """The page fills its column pickers and checks the upload with read_table, then
    the chosen columns with preflight.task_data_errors (load_task); all of them name the same problem."""
    from prefixlab.engine.spec import DataSpec
    from prefixlab.engine.checks import task_data_errors

    msg = _error(tmp_path, name, text)
    for reader in (data.read_table, data.read_records):
        with pytest.raises(DataError) as info:
            reader(tmp_path / name)
        assert str(info.value) == msg
    assert task_data_errors(SimpleNamespace(data=DataSpec(source=str(tmp_path / name)))) == {"data.source": msg}


def test_split_with_no_examples(tmp_path):
    assert "empty.jsonl: the file has no examples" in _error(tmp_path, "empty.jsonl", "\n\n")
    folder = tmp_path / "f"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"source": "a", "target": "b"}])
    (folder / "test.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.jsonl: the file has no examples"):
        data.load_task(str(folder))
    # Fewer than ten examples: nothing is held out, validation is empty.
    assert data.load_task(str(folder / "train.jsonl"))["validation"] == []


def test_folder_without_train_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match=r"no training file in this folder; add one of train\.jsonl"):
        data.load_task(str(tmp_path))
    assert "unsupported file type '.txt'" in _error(tmp_path, "d.txt", "a")


def test_hub_dataset_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        data.load_task("e2e_nlg")
    msg = str(info.value)
    assert msg.startswith("could not load the Hub dataset 'e2e_nlg'")
    assert "HF_HUB_OFFLINE" in msg and "misspelt" in msg and "built-in task 'e2e-synth'" in msg


def test_hub_dataset_columns_are_mapped_and_validation_held_out(monkeypatch):
    """load_dataset itself needs the network; give it an in-memory DatasetDict instead."""
    import datasets

    rows = {"meaning_representation": [f"name[N{i}]" for i in range(20)],
            "human_reference": [f"N{i} is nice." for i in range(20)]}
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config: calls.append((name, config)) or fake)
    monkeypatch.setattr("prefixlab.core.hub.hub_offline", lambda: True)  # skip the reachability probe
    splits = data.load_task("e2e_nlg", source_column="meaning_representation",
                            target_column="human_reference", hub_config="cfg")
    assert calls == [("e2e_nlg", "cfg")]
    assert splits["validation"] == [{"source": "name[N9]", "target": "N9 is nice."},
                                    {"source": "name[N19]", "target": "N19 is nice."}]
    assert len(splits["train"]) == 18 and splits["test"] == []
    # With its own validation split, capped splits are cut before conversion: same result.
    fake["validation"] = datasets.Dataset.from_dict({k: v[:5] for k, v in rows.items()})
    capped = data.load_task("e2e_nlg", source_column="meaning_representation", target_column="human_reference",
                            max_train_examples=3, max_eval_examples=2)
    assert [len(capped[s]) for s in data.SPLITS] == [3, 2, 0]
    assert capped["validation"][1] == {"source": "name[N1]", "target": "N1 is nice."}
    with pytest.raises(DataError, match=r"Hub dataset 'e2e_nlg', train split, row 0: no source column 'mr' "
                                        r"\(columns found: 'meaning_representation', 'human_reference'\)"):
        data.load_task("e2e_nlg", source_column="mr", target_column="human_reference")


def test_a_script_dataset_loads_from_its_parquet_copy_or_says_what_to_do(monkeypatch):
    """datasets 4+ refuses loading scripts; the Hub's automatic Parquet copy is tried instead."""
    import datasets

    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"a": ["x", "y"], "b": ["X", "Y"]})})
    calls = []

    def load_dataset(name, config, revision=None):
        calls.append(revision)
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found web_nlg.py")
        if parquet_copy:
            return fake
        raise FileNotFoundError(f"Revision '{revision}' doesn't exist for dataset 'GEM/web_nlg'")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("prefixlab.core.hub.hub_offline", lambda: True)  # skip the reachability probe
    parquet_copy = True
    splits = data.load_task("GEM/web_nlg", source_column="a", target_column="b")
    assert calls == [None, "refs/convert/parquet"]
    examples = splits["train"] + splits["validation"]
    assert examples == [{"source": "x", "target": "X"}, {"source": "y", "target": "Y"}]
    parquet_copy = False
    with pytest.raises(DataError) as info:
        data.load_task("GEM/web_nlg", source_column="a", target_column="b")
    assert str(info.value) == (
        "could not load the Hub dataset 'GEM/web_nlg': Dataset scripts are no longer supported, but "
        "found web_nlg.py; its Parquet copy (revision refs/convert/parquet) did not load either "
        "(FileNotFoundError: Revision 'refs/convert/parquet' doesn't exist for dataset 'GEM/web_nlg'); download "
        "its data and use it as a local .jsonl/.csv file")


# ---------------------------------------------------------------------------------------------
# Tokenisation


def test_causal_layout_and_label_mask_from_first_principles():
    tok = tiny_tokenizer()
    ex = {"source": "name[Aromi]", "target": "Aromi is é."}
    feature = data.encode_examples([ex], tok, CAUSAL, 512, SEP).features[0]
    prompt = byte_ids("name[Aromi]" + SEP)
    answer = byte_ids("Aromi is é.") + [EOS_ID]
    assert feature["input_ids"] == prompt + answer
    assert feature["labels"] == [-100] * len(prompt) + answer


def test_seq2seq_layout_from_first_principles():
    tok = tiny_tokenizer()
    feature = data.encode_examples([{"source": "ab", "target": "cd"}], tok, SEQ2SEQ, 512, SEP).features[0]
    assert feature == {"input_ids": byte_ids("ab") + [EOS_ID], "labels": byte_ids("cd") + [EOS_ID]}


@pytest.mark.parametrize("template, lead, tail", [("$A", [], []), ("<s> $A", [1], []), ("<s> $A </s>", [1], [2])])
def test_special_tokens_of_each_tokenizer_layout(template, lead, tail):
    tok = word_tokenizer(template)
    assert data.special_tokens_around(tok) == (lead, tail)
    ex = {"source": "a b", "target": "x y"}
    causal = data.encode_examples([ex], tok, CAUSAL, 64, " =>").features[0]
    words = {w: i for i, w in enumerate("a b c d e f g h => x y z".split(), start=4)}
    # Causal: the tokenizer's lead (e.g. Llama's bos) starts the prompt, never its tail; eos ends.
    assert causal["input_ids"] == lead + [words["a"], words["b"], words["=>"], words["x"], words["y"], 2]
    assert causal["labels"] == [-100] * (len(lead) + 3) + [words["x"], words["y"], 2]
    seq = data.encode_examples([ex], tok, SEQ2SEQ, 64, " =>").features[0]
    ends = tail if 2 in tail else tail + [2]  # seq2seq targets always end in eos
    assert seq == {"input_ids": lead + [words["a"], words["b"]] + ends, "labels": lead + [words["x"], words["y"]] + ends}


def test_causal_truncation_cuts_the_source_first_and_keeps_the_separator():
    tok = tiny_tokenizer()
    short = {"source": "abc", "target": "xy"}
    long = {"source": "abcdefghij", "target": "xy"}
    encoded = data.encode_examples([short, long], tok, CAUSAL, 12, SEP)
    assert encoded.num_truncated == 1
    assert encoded.features[0]["input_ids"] == byte_ids("abc" + SEP + "xy") + [EOS_ID]
    # 12 = 5 source bytes + 4 separator bytes + 2 target bytes + eos
    assert encoded.features[1]["input_ids"] == byte_ids("abcde" + SEP + "xy") + [EOS_ID]
    assert encoded.features[1]["labels"][-3:] == byte_ids("xy") + [EOS_ID]


def test_causal_truncation_of_a_long_target_keeps_its_start():
    tok = tiny_tokenizer()
    encoded = data.encode_examples([{"source": "ab", "target": "0123456789"}], tok, CAUSAL, 10, SEP)
    assert encoded.num_truncated == 1
    assert encoded.features[0]["input_ids"] == byte_ids(SEP + "012345")  # source gone, separator kept


def test_seq2seq_truncation_counts_source_or_target_overflow():
    tok = tiny_tokenizer()
    examples = [{"source": "abc", "target": "x"}, {"source": "abcdef", "target": "x"},
                {"source": "a", "target": "xyzuvw"}]
    encoded = data.encode_examples(examples, tok, SEQ2SEQ, 4, SEP)
    assert encoded.num_truncated == 2
    assert encoded.features[1]["input_ids"] == byte_ids("abc") + [EOS_ID]
    assert encoded.features[2]["labels"] == byte_ids("xyz") + [EOS_ID]


def test_example_empty_after_truncation_is_an_error_naming_split_and_example():
    tok = tiny_tokenizer()
    examples = [{"source": "a", "target": "bb"}, {"source": "a", "target": "b"}]
    with pytest.raises(DataError, match=r"validation split, example 1: the target is empty after truncation to "
                                        r"max_length=4 .*raise max_length"):
        data.encode_examples(examples, tok, CAUSAL, 4, SEP, split="validation")
    with pytest.raises(DataError, match=r"train split, example 1: the target is empty after truncation to max_length=1"):
        data.encode_examples(examples, tok, SEQ2SEQ, 1, SEP)


def test_builtin_task_truncation_is_counted():
    tok = tiny_tokenizer()
    validation = data.load_task("e2e-synth")["validation"]
    whole = data.encode_examples(validation, tok, CAUSAL, 512, SEP, "validation")
    assert len(whole) == 200 and whole.num_truncated == 0
    assert whole.num_target_tokens == sum(len(byte_ids(ex["target"])) + 1 for ex in validation)
    cut = data.encode_examples(validation, tok, CAUSAL, 256, SEP, "validation")
    too_long = sum(len(byte_ids(ex["source"] + SEP + ex["target"])) + 1 > 256 for ex in validation)
    assert cut.num_truncated == too_long > 0
    assert max(len(f["input_ids"]) for f in cut.features) == 256


# ---------------------------------------------------------------------------------------------
# Collation and generation inputs


def test_collator_pads_to_the_batch_longest_not_max_length():
    tok = tiny_tokenizer()
    examples = [{"source": "a", "target": "b"}, {"source": "abcd", "target": "bcd"}]
    encoded = data.encode_examples(examples, tok, CAUSAL, 512, SEP)
    batch = data.Collator(PAD_ID, CAUSAL)(encoded.features)
    n0, n1 = (len(f["input_ids"]) for f in encoded.features)
    assert batch["input_ids"].shape == (2, n1) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == encoded.features[0]["input_ids"] + [PAD_ID] * (n1 - n0)
    assert batch["attention_mask"].tolist() == [[1] * n0 + [0] * (n1 - n0), [1] * n1]
    assert batch["labels"][0].tolist() == encoded.features[0]["labels"] + [-100] * (n1 - n0)


def test_collator_seq2seq_labels_have_their_own_length():
    tok = tiny_tokenizer()
    encoded = data.encode_examples([{"source": "abcdef", "target": "x"}, {"source": "a", "target": "xyz"}],
                                   tok, SEQ2SEQ, 64, SEP)
    batch = data.Collator(PAD_ID, SEQ2SEQ)(encoded.features)
    assert batch["input_ids"].shape == (2, 7) and batch["labels"].shape == (2, 4)
    assert batch["labels"][0].tolist() == byte_ids("x") + [EOS_ID, -100, -100]


def test_collator_without_pad_token_says_what_to_do():
    with pytest.raises(DataError, match="tokenizer.pad_token = tokenizer.eos_token"):
        data.Collator(None, CAUSAL)


def test_model_loss_on_a_batch_is_the_mean_over_target_tokens_only(seed):
    """The masked labels reach the model as intended: loss == cross-entropy over target tokens."""
    tok, model = tiny_tokenizer(), tiny_model("gpt2")
    examples = data.load_task("e2e-synth", max_train_examples=3)["train"]
    batch = data.Collator(PAD_ID, CAUSAL)(data.encode_examples(examples, tok, CAUSAL, 384, SEP).features)
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]  # position t predicts token t+1
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert keep.sum() == sum(len(byte_ids(ex["target"])) + 1 for ex in examples)
    torch.testing.assert_close(out.loss, expected)


def test_prompts_are_left_padded_and_match_training_prompts():
    tok = tiny_tokenizer()
    sources = ["ab", "abcd"]
    prompts = data.encode_prompts(sources, tok, CAUSAL, SEP)
    assert prompts["input_ids"].tolist() == [[PAD_ID, PAD_ID] + byte_ids("ab" + SEP), byte_ids("abcd" + SEP)]
    assert prompts["attention_mask"].tolist() == [[0, 0] + [1] * 6, [1] * 8]
    feature = data.encode_examples([{"source": "abcd", "target": "z"}], tok, CAUSAL, 64, SEP).features[0]
    n_prompt = feature["labels"].count(-100)
    assert prompts["input_ids"][1].tolist() == feature["input_ids"][:n_prompt]
    assert data.build_prompt("ab", CAUSAL, SEP) == "ab" + SEP and data.build_prompt("ab", SEQ2SEQ, SEP) == "ab"
    seq = data.encode_prompts(sources, tok, SEQ2SEQ, SEP)
    assert seq["input_ids"].tolist() == [byte_ids("ab") + [EOS_ID, PAD_ID, PAD_ID], byte_ids("abcd") + [EOS_ID]]
    cut = data.encode_prompts(["abcdefgh"], tok, CAUSAL, SEP, max_length=6)
    assert cut["input_ids"].tolist() == [byte_ids("ab" + SEP)]


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    tok, model = tiny_tokenizer(), tiny_model("gpt2")
    sources = ["name[Aromi]", "name[The Eagle] | food[French]"]
    batch = data.encode_prompts(sources, tok, CAUSAL, SEP)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD_ID)
    together = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1]:]
    for row, source in enumerate(sources):
        alone = data.encode_prompts([source], tok, CAUSAL, SEP)
        expected = model.generate(**alone, **settings)[0, alone["input_ids"].shape[1]:]
        assert together[row].tolist() == expected.tolist()


def test_a_jsonl_line_may_hold_raw_line_separator_characters(tmp_path):
    """U+2028 and U+0085 are valid raw inside JSON strings; only \\n, \\r\\n and \\r end a line."""
    path = tmp_path / "odd.jsonl"
    path.write_text('{"source": "a\u2028b", "target": "c\u0085d"}\r\n{"source": "f", "target": "g"}\n',
                    encoding="utf-8")
    assert [(r["source"], r["target"]) for _, r in read_records(path)] == [("a\u2028b", "c\u0085d"), ("f", "g")]
