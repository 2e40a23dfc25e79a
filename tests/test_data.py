"""structprune.data: the GLUE task table, metrics, loading (local folder, Hub, own files), batching."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from transformers import BertTokenizer

from structprune.data import (
    GLUE_TASKS,
    BucketBatchSampler,
    DataNotFoundError,
    TaskInfo,
    compute_metrics,
    default_data_dir,
    get_task,
    glue_task_names,
    load_files,
    load_split,
    make_dataloader,
    subset,
    tokenize,
)

WORDS = tiny.WORDS


def tiny_tokenizer() -> BertTokenizer:
    return tiny.tokenizer()


def rows(n: int, seed: int = 0, pair: bool = False, regression: bool = False) -> list[dict]:
    r = random.Random(seed)

    def text() -> str:
        return " ".join(r.choice(WORDS) for _ in range(r.randint(1, 14)))

    out = []
    for i in range(n):
        row = {"sentence1": text(), "sentence2": text()} if pair else {"sentence": text()}
        row["label"] = round(r.uniform(0, 5), 2) if regression else r.randint(0, 1)
        row["idx"] = i
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------- task table

# (hub config, local folder, text columns, num_labels, metrics, main metric, validation splits): written out
# independently of structprune/data/tasks.py, from the GLUE paper and the nyu-mll/glue dataset card.
EXPECTED = {
    "cola": ("CoLA", ("sentence",), 2, {"matthews_correlation"}, "matthews_correlation", ("validation",)),
    "sst2": ("SST-2", ("sentence",), 2, {"accuracy"}, "accuracy", ("validation",)),
    "mrpc": ("MRPC", ("sentence1", "sentence2"), 2, {"f1", "accuracy"}, "f1", ("validation",)),
    "stsb": ("STS-B", ("sentence1", "sentence2"), 1, {"pearson", "spearmanr"}, "pearson", ("validation",)),
    "qqp": ("QQP", ("question1", "question2"), 2, {"f1", "accuracy"}, "f1", ("validation",)),
    "mnli": (
        "MNLI",
        ("premise", "hypothesis"),
        3,
        {"accuracy"},
        "accuracy",
        ("validation_matched", "validation_mismatched"),
    ),
    "qnli": ("QNLI", ("question", "sentence"), 2, {"accuracy"}, "accuracy", ("validation",)),
    "rte": ("RTE", ("sentence1", "sentence2"), 2, {"accuracy"}, "accuracy", ("validation",)),
    "wnli": ("WNLI", ("sentence1", "sentence2"), 2, {"accuracy"}, "accuracy", ("validation",)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_glue_task_in_table(name):
    folder, keys, num_labels, metrics, main, splits = EXPECTED[name]
    task = get_task(folder)  # the folder spelling resolves too
    assert task.name == task.hub_config == name
    assert task.dir_name == folder
    assert task.text_keys == keys
    assert task.num_labels == num_labels
    assert task.is_regression == (name == "stsb")
    assert task.is_pair == (len(keys) == 2)
    assert set(task.metrics) == metrics
    assert task.main_metric == main
    assert task.validation_splits == splits
    assert task.label_column == "label"
    assert (task.label_names is None) == task.is_regression
    assert glue_task_names() == list(GLUE_TASKS) and len(GLUE_TASKS) == 9


@pytest.mark.parametrize("name", ["sst2", "SST-2", "sst-2", "Sst_2", " SST 2"])
def test_get_task_case_and_dash_insensitive(name):
    assert get_task(name) is GLUE_TASKS["sst2"]


def test_get_task_passes_taskinfo_through_and_rejects_unknown():
    custom = TaskInfo.custom("reviews", text_keys="review")
    assert get_task(custom) is custom
    with pytest.raises(ValueError, match=r"Unknown task 'sst3'.*cola, sst2, mrpc.*TaskInfo.custom"):
        get_task("sst3")
    with pytest.raises(TypeError, match="task name"):
        get_task(2)


def test_taskinfo_custom_defaults():
    assert TaskInfo.custom(text_keys="t", num_labels=2).metrics == ("accuracy", "f1")
    assert TaskInfo.custom(text_keys="t", num_labels=4).metrics == ("accuracy",)
    reg = TaskInfo.custom("score", text_keys=("a", "b"), num_labels=1, label_column="y")
    assert reg.is_regression and reg.is_pair and reg.main_metric == "pearson" and reg.label_column == "y"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text_keys=("a", "b", "c")), "one or two column names"),
        (dict(text_keys=()), "one or two column names"),
        (dict(num_labels=0), "num_labels must be an int >= 1"),
        (dict(num_labels=2, metrics=("pearson",)), "cannot report"),
        (dict(num_labels=1, metrics=("accuracy",)), "can only report pearson"),
        (dict(num_labels=3, metrics=("f1",)), "needs num_labels=2"),
        (dict(metrics=("accuracy",), main_metric="f1"), "must be one of its metrics"),
        (dict(metrics=("bleu",)), "subset of"),
        (dict(num_labels=2, label_names=("a", "b", "c")), "3 names but num_labels=2"),
    ],
)
def test_taskinfo_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskInfo.custom(**{"text_keys": "text", **kwargs})


def test_main_score():
    assert get_task("mrpc").main_score({"f1": 0.88, "accuracy": 0.84}) == 0.88
    mnli = {
        "validation_matched/accuracy": 0.8,
        "validation_mismatched/accuracy": 0.7,
        "validation_matched/loss": 1,
    }
    assert get_task("mnli").main_score(mnli) == 0.8
    assert get_task("cola").main_score({"dev/matthews_correlation": 0.3}) == 0.3
    with pytest.raises(KeyError, match="matthews_correlation"):
        get_task("cola").main_score({"accuracy": 0.5})


# --------------------------------------------------------------------------------------------------- metrics


def test_accuracy_from_logits_and_ids():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [2.0, 1.0]])  # argmax 1, 0, 1, 0
    assert compute_metrics("sst2", logits, [1, 0, 0, 0]) == {"accuracy": 0.75}
    assert compute_metrics("sst2", torch.tensor([1, 0, 1, 0]), torch.tensor([1, 0, 0, 0])) == {
        "accuracy": 0.75
    }


def test_f1_by_hand():
    # preds 1,0,1,1 vs refs 1,0,0,1: tp=2 fp=1 fn=0 -> P=2/3 R=1 F1=0.8; accuracy 3/4
    assert compute_metrics("mrpc", [1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx({"f1": 0.8, "accuracy": 0.75})
    # tp=1 fp=1 fn=1 -> F1 = 2*1/(2*1+1+1) = 0.5
    assert compute_metrics("qqp", [1, 1, 0, 0], [1, 0, 1, 0])["f1"] == pytest.approx(0.5)
    assert compute_metrics("qqp", [0, 0], [0, 0])["f1"] == 0.0  # no positives at all: F1 defined as 0


def test_matthews_by_hand():
    # preds 1,1,0,0,1 vs refs 1,0,0,0,1: tp=2 tn=2 fp=1 fn=0 -> (4-0)/sqrt(3*2*3*2) = 2/3
    out = compute_metrics("cola", [1, 1, 0, 0, 1], [1, 0, 0, 0, 1])
    assert out == pytest.approx({"matthews_correlation": 2 / 3})
    assert compute_metrics("cola", [1, 1, 1], [1, 0, 1])["matthews_correlation"] == 0.0  # constant preds


def test_pearson_spearman_by_hand():
    # x = 1,2,3 (dev -1,0,1), y = 1,2,4 (dev -4/3,-1/3,5/3): cov 3, |x|^2 2, |y|^2 42/9 -> r = 9/sqrt(84)
    out = compute_metrics("stsb", [[1.0], [2.0], [3.0]], [1.0, 2.0, 4.0])
    assert out == pytest.approx({"pearson": 9 / math.sqrt(84), "spearmanr": 1.0})
    # reversed ranks -> spearman -1
    assert compute_metrics("stsb", [3.0, 2.0, 1.0], [1.0, 2.0, 4.0])["spearmanr"] == pytest.approx(-1.0)
    assert math.isnan(compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 4.0])["pearson"])


def test_combined_score_and_multiclass():
    task = TaskInfo.custom(text_keys="t", num_labels=2, metrics=("f1", "accuracy", "combined_score"))
    out = compute_metrics(task, [1, 0, 1, 1], [1, 0, 0, 1])
    assert out["combined_score"] == pytest.approx((0.8 + 0.75) / 2)
    logits = np.eye(3)[[0, 1, 2, 2]]  # argmax 0,1,2,2
    assert compute_metrics("mnli", logits, [0, 1, 2, 0]) == {"accuracy": 0.75}


@pytest.mark.parametrize(
    "task, preds, refs, error, match",
    [
        ("sst2", [1, 0], [1, 0, 1], ValueError, "2 predictions"),
        ("sst2", [], [], ValueError, "no examples"),
        ("sst2", [1, 0], [1, 2], ValueError, r"labels \[2\] outside 0..1"),
        ("sst2", [1, 0], [1, -1], ValueError, "unlabelled"),
        ("sst2", np.zeros((2, 3)), [1, 0], ValueError, "2 labels but the logits have 3 columns"),
        ("sst2", [0.5, 1.0], [1, 0], ValueError, "non-integer"),
        ("stsb", np.zeros((2, 2)), [1.0, 0.0], ValueError, r"shape \[N\] or \[N, 1\]"),
        ("sst2", ["a", "b"], [1, 0], TypeError, "numeric"),
    ],
)
def test_compute_metrics_bad_input(task, preds, refs, error, match):
    with pytest.raises(error, match=match):
        compute_metrics(task, preds, refs)


# ------------------------------------------------------------------------------------------- local loading

SIZES = {  # (train, validation) rows, from the official GLUE sizes (PROVENANCE.md)
    "cola": (8551, 1043),
    "sst2": (67349, 872),
    "mrpc": (3668, 408),
    "stsb": (5749, 1500),
    "rte": (2490, 277),
    "wnli": (635, 71),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GLUE_TASKS))
def test_load_every_local_glue_task(name, glue_dir):
    root = glue_dir
    task = get_task(name)
    if not (root / task.dir_name).is_dir():
        pytest.skip(f"{task.dir_name} is not in {root} (PROVENANCE.md: not obtained)")
    for i, split in enumerate(("train", *task.validation_splits)):
        ds = load_split(name, split, root)
        if name in SIZES:
            assert len(ds) == SIZES[name][i]
        assert set(task.text_keys) | {"label"} <= set(ds.column_names)
        head = ds.select(range(5))
        assert all(isinstance(t, str) and t for k in task.text_keys for t in head[k])
        labels = np.asarray(head["label"])
        if task.is_regression:
            assert ds.features["label"].dtype == "float32" and ((labels >= 0) & (labels <= 5)).all()
        else:
            assert ds.features["label"].dtype == "int64" and set(labels) <= set(range(task.num_labels))


@pytest.mark.slow
def test_sst2_train_tsv_matches_jsonl(glue_dir):
    root = glue_dir
    tsv = load_files("sst2", root / "SST-2" / "train.tsv")
    assert len(tsv) == 67349
    with open(root / "SST-2" / "train.jsonl") as f:
        jsonl_head = [json.loads(next(f)) for _ in range(50)]
    assert tsv.select(range(50))["sentence"] == [r["sentence"] for r in jsonl_head]
    assert tsv.select(range(50))["label"] == [r["label"] for r in jsonl_head]


def test_tsv_is_read_verbatim(tmp_path):
    folder = tmp_path / "sst-2"  # lower case + dash: still found
    folder.mkdir()
    (folder / "train.tsv").write_text('sentence\tlabel\nhe said " hi \t1\nNA\t0\n"quoted" text\t1\n')
    ds = load_split("SST2", "train", tmp_path)
    assert ds["sentence"] == ['he said " hi ', "NA", '"quoted" text']  # no quote parsing, no NaN
    assert ds["label"] == [1, 0, 1]


def test_local_folder_name_and_extension_priority(tmp_path):
    (tmp_path / "Rte").mkdir()
    row = {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}
    (tmp_path / "Rte" / "validation.jsonl").write_text(json.dumps(row) + "\n")
    assert load_split("rte", "validation", tmp_path)["label"] == [1]
    import pandas as pd

    pd.DataFrame([{**row, "label": 0}]).to_parquet(tmp_path / "Rte" / "validation.parquet")
    assert load_split("rte", "validation", tmp_path)["label"] == [0]  # parquet first


def test_missing_files_name_paths_tried(tmp_path):
    (tmp_path / "QNLI").mkdir()
    with pytest.raises(DataNotFoundError) as e:
        load_split("qnli", "validation", tmp_path)
    msg = str(e.value)
    for ext in ("parquet", "jsonl", "tsv"):
        assert str(tmp_path / "QNLI" / f"validation.{ext}") in msg
    assert "data_dir" in msg
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_split("qnli", "validation", tmp_path / "nope")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_split("qnli", str(tmp_path / "nope.csv"))


def test_default_dir_env_then_hub_offline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("STRUCTPRUNE_GLUE_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying the network
    with pytest.raises(DataNotFoundError) as e:
        load_split("mnli", "validation_matched")  # not in tmp_path -> Hub -> offline
    msg = str(e.value)
    assert "nyu-mll/glue" in msg and str(tmp_path / "MNLI" / "validation_matched.parquet") in msg
    assert "STRUCTPRUNE_GLUE_DIR" in msg
    monkeypatch.setenv("STRUCTPRUNE_GLUE_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError, match="not a folder"):
        default_data_dir()


@pytest.mark.slow
def test_local_data_only_through_the_setting(monkeypatch):
    local = os.environ.get("STRUCTPRUNE_GLUE_DIR")  # conftest.py sets it when ../shared/data/glue exists
    GLUE_DIR = Path(local).expanduser() if local else None
    monkeypatch.delenv("STRUCTPRUNE_GLUE_DIR", raising=False)
    assert default_data_dir() is None  # no folder of one machine is guessed: the Hub
    if GLUE_DIR is not None and GLUE_DIR.is_dir():
        monkeypatch.setenv("STRUCTPRUNE_GLUE_DIR", str(GLUE_DIR))
        assert default_data_dir() == GLUE_DIR
        assert len(load_split("wnli", "validation")) == 71  # data_dir=None -> the local folder


# --------------------------------------------------------------------------------------- a user's own data


def test_custom_csv_with_named_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('id,review,stars\n1,"great, fun film",2\n2,boring,0\n3,null,1\n')
    task = TaskInfo.custom("reviews", text_keys="review", num_labels=3, label_column="stars")
    ds = load_split(task, str(path))
    assert ds["review"] == ["great, fun film", "boring", "null"]
    assert ds["label"] == [2, 0, 1] and "stars" not in ds.column_names
    # the same file through a data_dir + split name
    (tmp_path / "train.csv").write_text(path.read_text())
    assert load_split(task, "train", tmp_path)["label"] == [2, 0, 1]


def test_custom_json_formats_and_string_labels(tmp_path):
    records = [{"q": "is it good", "a": "yes", "y": "pos"}, {"q": "bad?", "a": "no", "y": "neg"}]
    task = TaskInfo.custom(
        "qa", text_keys=("q", "a"), num_labels=2, label_column="y", label_names=("neg", "pos")
    )
    (tmp_path / "list.json").write_text(json.dumps(records))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": records}))
    (tmp_path / "columns.json").write_text(json.dumps({k: [r[k] for r in records] for k in records[0]}))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for name in ("list.json", "wrapped.json", "columns.json", "lines.jsonl"):
        ds = load_files(task, tmp_path / name)
        assert ds["q"] == ["is it good", "bad?"] and ds["label"] == [1, 0], name


def test_custom_regression_labels_are_float(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,score\nx,y,1.5\nz,w,4\n")
    task = TaskInfo.custom("sim", text_keys=("a", "b"), num_labels=1, label_column="score")
    ds = load_files(task, tmp_path / "s.csv")
    assert ds.features["label"].dtype == "float32" and ds["label"] == [1.5, 4.0]


@pytest.mark.parametrize(
    "content, kwargs, match",
    [
        ("text,target\nhi,1\n", {}, r"no column\(s\) \['label'\].*columns present are \['text', 'target'\]"),
        ("body,label\nhi,1\n", {}, r"no column\(s\) \['text'\].*\['body', 'label'\]"),
        ("text,label\nhi,pos\n", {}, "are strings.*label_names"),
        ("text,label\nhi,pos\n", {"label_names": ("neg", "good")}, r"\['pos'\] are not in label_names"),
        ("text,label\nhi,3\n", {}, r"labels \[3\] are outside 0..1"),
        ("text,label\nhi,0.5\n", {}, "not integers"),
    ],
)
def test_custom_file_errors(tmp_path, content, kwargs, match):
    (tmp_path / "f.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_files(TaskInfo.custom(text_keys="text", **kwargs), tmp_path / "f.csv")


def test_unlabelled_file_allowed_when_asked(tmp_path):
    (tmp_path / "test.csv").write_text("text\nhello\n")
    ds = load_files(TaskInfo.custom(text_keys="text"), tmp_path / "test.csv", require_labels=False)
    assert ds.column_names == ["text"]
    with pytest.raises(ValueError, match="Unsupported data file"):
        (tmp_path / "x.txt").write_text("hi")
        load_files(TaskInfo.custom(text_keys="text"), tmp_path / "x.txt")


# ------------------------------------------------------------------------------------------------- batching


def test_subset_first_and_random():
    data = rows(50)
    assert [r["idx"] for r in subset(data, 5)] == [0, 1, 2, 3, 4]
    a = [r["idx"] for r in subset(data, 10, "random", seed=1)]
    assert a == [r["idx"] for r in subset(data, 10, "random", seed=1)]  # deterministic
    assert a != [r["idx"] for r in subset(data, 10, "random", seed=2)]
    assert len(set(a)) == 10 and a != list(range(10))
    assert subset(data, 500) is data and subset(data, None) is data
    with pytest.raises(ValueError, match="positive int"):
        subset(data, 0)
    with pytest.raises(ValueError, match="'first' or 'random'"):
        subset(data, 3, "last")


def _spread(batches, lengths):
    return sum(max(lengths[b]) - min(lengths[b]) for b in batches)


@pytest.mark.parametrize("shuffle", [False, True])
def test_bucket_sampler_properties(shuffle):
    lengths = np.random.default_rng(0).integers(1, 128, size=1003)
    sampler = BucketBatchSampler(lengths, batch_size=16, shuffle=shuffle, seed=3, bucket_size=8)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1003))  # every example exactly once
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 1003 % 16  # short batch last
    naive = [list(range(i, min(i + 16, 1003))) for i in range(0, 1003, 16)]
    assert _spread(batches, lengths) < 0.25 * _spread(naive, lengths)  # much less padding
    if not shuffle:
        flat = [i for b in batches for i in b]
        assert list(lengths[flat]) == sorted(lengths, reverse=True)
        assert batches == list(sampler)


def test_bucket_sampler_seeded_epochs():
    lengths = np.arange(200) % 37
    a = BucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=0)
    b = BucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=0)
    epoch0, epoch1 = list(a), list(a)
    assert epoch0 == list(b) and epoch1 == list(b)  # same seed -> same sequence of epochs
    assert epoch0 != epoch1  # epochs differ
    a.set_epoch(1)
    assert list(a) == epoch1  # set_epoch reproduces an epoch
    assert list(BucketBatchSampler(lengths, 8, shuffle=True, seed=1)) != epoch0
    dropped = BucketBatchSampler(lengths, batch_size=16, shuffle=True, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 12 and all(len(x) == 16 for x in dropped)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(lengths, batch_size=0)


def test_make_dataloader_pairs_tiny_tokenizer():
    tok = tiny_tokenizer()
    data = rows(23, pair=True)
    loader = make_dataloader(data, tok, "rte", batch_size=4, max_length=16)
    batches = list(loader)
    assert sum(len(b["labels"]) for b in batches) == 23
    seen = set()
    for b in batches:
        assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        assert b["labels"].dtype == torch.int64
        assert b["input_ids"].shape == b["attention_mask"].shape == b["token_type_ids"].shape
        assert (
            b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max()) <= 16
        )  # padded to batch max only
        assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
        assert (b["token_type_ids"] == 1).any()  # second segment marked
        seen.update(
            tok.decode(ids[m.bool()], skip_special_tokens=False)
            for ids, m in zip(b["input_ids"], b["attention_mask"], strict=True)
        )
    # truncation keeps [CLS] ... [SEP] ... [SEP]
    assert all(s.startswith("[CLS]") and s.endswith("[SEP]") for s in seen)
    expected = {f"[CLS] {r['sentence1']} [SEP] {r['sentence2']} [SEP]" for r in data}
    assert len(seen & expected) >= 10  # the short ones are untruncated and intact


def test_make_dataloader_regression_limit_and_shuffle():
    tok = tiny_tokenizer()
    data = rows(40, regression=True)
    loader = make_dataloader(
        data, tok, TaskInfo.custom(text_keys="sentence", num_labels=1), batch_size=8, limit=10
    )
    labels = torch.cat([b["labels"] for b in loader])
    assert labels.dtype == torch.float32
    assert sorted(labels.tolist()) == pytest.approx(sorted(r["label"] for r in data[:10]))
    train = make_dataloader(rows(64), tok, "sst2", batch_size=8, shuffle=True, seed=0)
    again = make_dataloader(rows(64), tok, "sst2", batch_size=8, shuffle=True, seed=0)
    first = [b["input_ids"].tolist() for b in train]
    assert first == [b["input_ids"].tolist() for b in again]
    assert first != [b["input_ids"].tolist() for b in train]  # next epoch, new order
    no_bucket = make_dataloader(rows(64), tok, "sst2", batch_size=8, bucket=False)
    assert len(list(no_bucket)) == 8


def test_make_dataloader_bad_input():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"no text column\(s\) \['sentence1', 'sentence2'\]"):
        make_dataloader(rows(4), tok, "mrpc")
    with pytest.raises(ValueError, match="max_length"):
        make_dataloader(rows(4), tok, "sst2", max_length=0)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataloader(rows(4), tok, "sst2", batch_size=0)
    tokenized = tokenize(rows(4), tok, "sst2")
    with pytest.raises(ValueError, match="limit applies to raw datasets"):
        make_dataloader(tokenized, tok, "sst2", limit=2)
    assert len(list(make_dataloader(tokenized, tok, "sst2", batch_size=3))) == 2


@pytest.mark.slow
def test_make_dataloader_real_minilm_tokenizer(minilm_path, sst2_glue_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    ds = load_split("sst2", "validation", sst2_glue_dir)
    loader = make_dataloader(
        ds, tok, "sst2", batch_size=16, max_length=32, limit=64, limit_mode="random", seed=0
    )
    batches = list(loader)
    assert [len(b["labels"]) for b in batches] == [16, 16, 16, 16]
    for b in batches:
        assert b["input_ids"].shape[1] <= 32 and (b["input_ids"][:, 0] == tok.cls_token_id).all()
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    plain = make_dataloader(
        ds, tok, "sst2", batch_size=16, max_length=32, limit=64, limit_mode="random", bucket=False
    )
    assert padding < 0.5 * sum(int((b["attention_mask"] == 0).sum()) for b in plain)  # bucketing pads less
    # every untruncated example decodes back to its sentence as the tokenizer normalizes it
    texts = subset(ds, 64, "random", seed=0)["sentence"]
    want = {tok.decode(tok(t)["input_ids"], skip_special_tokens=True) for t in texts}
    got = {
        tok.decode(i[m.bool()], skip_special_tokens=True)
        for b in batches
        for i, m in zip(b["input_ids"], b["attention_mask"], strict=True)
        if m.sum() < 32
    }
    assert len(got) > 40 and got <= want


def test_get_task_from_dict():
    task = get_task({"name": "reviews", "text_keys": ["review"], "num_labels": 3, "label_column": "stars"})
    assert task.text_keys == ("review",) and task.num_labels == 3 and task.label_column == "stars"
    with pytest.raises(ValueError, match=r"Unknown task field\(s\) \['text_key'\]; valid fields"):
        get_task({"text_key": "review"})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_task_loads_from_its_folder_layout(tmp_path, name):
    """All nine tasks (also those absent from the shared copy) load from <dir>/<TASK>/<split>.jsonl."""
    folder, keys, num_labels, _, _, splits = EXPECTED[name]
    (tmp_path / folder).mkdir()
    for split in splits:
        label = 3.25 if num_labels == 1 else num_labels - 1
        row = {**{k: f"{k} text" for k in keys}, "label": label, "idx": 0}
        (tmp_path / folder / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
        ds = load_split(name, split, tmp_path)
        assert ds[0]["label"] == label and all(ds[0][k] == f"{k} text" for k in keys)


def test_task_label_names_reach_the_model_config_only_over_placeholders():
    from transformers import BertConfig

    from structprune.data import TaskInfo, get_task

    sst2 = get_task("sst2")
    assert sst2.label_maps() == {
        "id2label": {0: "negative", 1: "positive"},
        "label2id": {"negative": 0, "positive": 1},
    }
    assert get_task("stsb").label_maps() == {}  # regression: no names
    config = BertConfig(num_labels=2)  # transformers' LABEL_0 / LABEL_1
    assert sst2.name_labels(config) and config.id2label == {0: "negative", 1: "positive"}
    assert config.label2id == {"negative": 0, "positive": 1}
    chosen = BertConfig(id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1})
    assert not sst2.name_labels(chosen) and chosen.id2label == {0: "bad", 1: "good"}  # the user's own
    three = BertConfig(num_labels=3)
    assert not sst2.name_labels(three) and three.id2label[2] == "LABEL_2"  # another head: left alone
    unnamed = TaskInfo.custom("reviews", text_keys="review", num_labels=2)
    assert not unnamed.name_labels(BertConfig(num_labels=2))
