"""Augmentation for distillation: teacher-labelled variants, deterministic per seed, sharded across
processes, cached, and a user's unlabelled text through the same path."""

import datasets
import pytest
import tiny
import torch

from structprune.recovery.distill.augment import (
    AugmentConfig,
    augment_dataset,
    embedding_neighbours,
    generate,
    load_unlabelled,
    shard,
    teacher_labels,
    whole_word_tokens,
)


def _data(n=6):
    sentences = ["the movie was good", "a very boring plot", "it is not fun", "great actors and film",
                 "the film was awful", "a bad movie"]  # fmt: skip
    return datasets.Dataset.from_list([{"sentence": s, "label": i % 2} for i, s in enumerate(sentences[:n])])


@pytest.fixture(scope="module")
def teacher_tok():
    torch.manual_seed(0)
    return tiny.model("bert", num_labels=2), tiny.tokenizer()


def test_whole_words_and_their_embedding_neighbours(teacher_tok):
    teacher, tok = teacher_tok
    words = whole_word_tokens(tok)
    assert "movie" in words and "[CLS]" not in words and all(w.isalpha() for w in words)
    nb = embedding_neighbours(teacher, tok, {"movie", "unknownword"}, k=3)
    assert set(nb) == {"movie"} and len(nb["movie"]) == 3 and "movie" not in nb["movie"]
    table = torch.nn.functional.normalize(teacher.get_input_embeddings().weight.detach(), dim=-1)
    sims = {w: float(table[words["movie"]] @ table[i]) for w, i in words.items() if w != "movie"}
    assert nb["movie"] == sorted(sims, key=sims.get, reverse=True)[:3]  # the nearest, in order


def test_generation_is_deterministic_and_independent_of_the_split(teacher_tok):
    teacher, tok = teacher_tok
    texts = [(r["sentence"],) for r in _data()]
    nb = embedding_neighbours(teacher, tok, {w for (t,) in texts for w in t.split()}, 5)
    cfg = AugmentConfig(multiplier=4, seed=3)
    whole = generate(texts, cfg, neighbours=nb)
    assert whole == generate(texts, cfg, neighbours=nb)  # same seed, same variants
    assert whole != generate(texts, AugmentConfig(multiplier=4, seed=4), neighbours=nb)
    halves = [generate(texts, cfg, neighbours=nb, indices=shard(len(texts), 2, r)) for r in (0, 1)]
    assert {i for i, _ in halves[0]}.isdisjoint({i for i, _ in halves[1]})  # two processes: disjoint halves
    assert sorted(halves[0] + halves[1]) == sorted(whole)  # ... and together the whole set
    assert all(len(v) == 1 and v != texts[i] for i, v in whole)
    capped = generate(texts, AugmentConfig(multiplier=20, max_examples=12), neighbours=nb)
    assert len(capped) <= 12


def test_augmented_dataset_is_labelled_by_the_teacher_and_cached(teacher_tok, tmp_path):
    teacher, tok = teacher_tok
    cfg = AugmentConfig(multiplier=3, seed=0, batch_size=4)
    out = augment_dataset(_data(), "sst2", tok, teacher, cfg, cache_dir=tmp_path)
    originals = [r for r in out if not r["augmented"]]
    variants = [r for r in out if r["augmented"]]
    assert [r["label"] for r in originals] == [r["label"] for r in _data()]  # gold labels kept
    assert len(variants) > len(originals)
    expected = teacher_labels(teacher, tok, [(r["sentence"],) for r in variants], "sst2", cfg)
    assert [r["label"] for r in variants] == expected  # labelled by the teacher's predictions
    (cached,) = list(tmp_path.glob("augment-*.jsonl"))
    again = augment_dataset(_data(), "sst2", tok, teacher, cfg, cache_dir=tmp_path)
    assert again.to_list() == out.to_list() and list(tmp_path.glob("augment-*.jsonl")) == [cached]


def test_teacher_labels_come_back_in_the_order_of_the_texts(teacher_tok):
    teacher, tok = teacher_tok  # labelled longest first in batches, returned in the caller's order
    texts = [(r["sentence"],) for r in _data()] + [
        ("good",),
        ("a film with very good actors and a bad plot",),
    ]
    one_by_one = [teacher_labels(teacher, tok, [t], "sst2", AugmentConfig())[0] for t in texts]
    assert teacher_labels(teacher, tok, texts, "sst2", AugmentConfig(batch_size=3)) == one_by_one
    torch.manual_seed(1)
    regressor = tiny.model("bert", num_labels=1).eval()
    values = teacher_labels(regressor, tok, texts, "stsb", AugmentConfig(batch_size=3))
    alone = [teacher_labels(regressor, tok, [t], "stsb", AugmentConfig())[0] for t in texts]
    assert values == pytest.approx(alone, abs=1e-5)


def test_mlm_replacements(teacher_tok):
    from transformers import BertConfig, BertForMaskedLM

    teacher, tok = teacher_tok
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=tiny.VOCAB, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=37)).eval()  # fmt: skip
    out = augment_dataset(
        _data(3), "sst2", tok, teacher, AugmentConfig(multiplier=2, method="mlm"), mlm_model=mlm
    )
    words = set(whole_word_tokens(tok)) | {w for r in _data(3) for w in r["sentence"].split()}
    assert any(r["augmented"] for r in out)
    assert all(set(r["sentence"].split()) <= words for r in out if r["augmented"])  # replacements are words
    with pytest.raises(ValueError, match="needs mlm_model"):
        augment_dataset(_data(3), "sst2", tok, teacher, AugmentConfig(method="mlm"))


def test_unlabelled_text_is_labelled_by_the_teacher(teacher_tok, tmp_path):
    teacher, tok = teacher_tok
    (tmp_path / "pairs.txt").write_text("the movie\ta film\n\nvery good\tnot bad\n")
    pairs = load_unlabelled(tmp_path / "pairs.txt", "mrpc")
    assert pairs.column_names == ["sentence1", "sentence2"] and len(pairs) == 2
    (tmp_path / "bad.txt").write_text("only one field\n")
    with pytest.raises(ValueError, match="bad.txt:1 has 1 tab-separated fields"):
        load_unlabelled(tmp_path / "bad.txt", "mrpc")
    (tmp_path / "s.txt").write_text("the movie was good\nit is boring\n")
    out = augment_dataset(load_unlabelled(tmp_path / "s.txt", "sst2"), "sst2", tok, teacher,
                          AugmentConfig(multiplier=2), labelled=False)  # fmt: skip
    originals = [r for r in out if not r["augmented"]]
    assert [r["label"] for r in originals] == teacher_labels(teacher, tok, [("the movie was good",), ("it is boring",)],
                                                             "sst2", AugmentConfig())  # fmt: skip


@pytest.mark.parametrize("bad, match", [({"multiplier": 0}, "multiplier"), ({"method": "glove"}, "method"),
                                        ({"replace_prob": 0}, "replace_prob"), ({"mult": 2}, "Unknown augment")])  # fmt: skip
def test_augment_options_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig.from_dict(bad)


@pytest.mark.slow
def test_a_recipe_distils_on_augmented_data(tiny_teacher, glue_dir, tmp_path):
    import json
    from pathlib import Path

    from structprune import cli

    out = tmp_path / "run"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "glue" / "mrpc.yaml"
    if not recipe.is_file():
        recipe = Path(__file__).resolve().parents[1] / "structprune" / "recipes" / "glue" / "mrpc.yaml"
    overrides = [
        f"teacher.model={tiny_teacher}", f"teacher.cache_dir={tmp_path / 'teachers'}", "teacher.train.num_epochs=1",
        f"data.data_dir={glue_dir}", "data.max_length=32", "data.train_examples=24", "data.eval_examples=16",
        "data.calibration_examples=16", "prune.num_examples=16", "distill.num_epochs=1", "output.latency=false",
        "augment={multiplier: 3, batch_size: 8}", f"output.dir={out}",
    ]  # fmt: skip
    assert cli.main(["run", str(recipe), *overrides]) == 0
    (cache,) = list((out / "augment").glob("augment-*.jsonl"))
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sum(not r["augmented"] for r in rows) == 24 and sum(r["augmented"] for r in rows) > 24
    steps = [json.loads(x)["step"] for x in (out / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) > 24 // 32 + 1  # more batches than the 24 originals give


@pytest.mark.slow
def test_two_real_processes_augment_disjoint_halves_and_merge_to_the_one_process_result(tmp_path):
    # torchrun with two CPU processes (gloo): each process generates and labels its share of the examples,
    # the shares are disjoint and cover the set, and the merged result equals one process's
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).resolve().parent / "augment_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(worker.parent.parent)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = {
        "one": [sys.executable, str(worker), str(tmp_path / "one")],
        "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(port), str(worker), str(tmp_path / "two")],
    }  # fmt: skip
    for cmd in runs.values():
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    halves = [set(json.loads((tmp_path / "two" / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert halves[0] and halves[1] and halves[0].isdisjoint(halves[1])
    assert (
        halves[0] | halves[1]
        == set(json.loads((tmp_path / "one" / "rank0.json").read_text()))
        == set(range(9))
    )
    one = json.loads((tmp_path / "one" / "rows.json").read_text())
    two = json.loads((tmp_path / "two" / "rows.json").read_text())
    assert two == one and sum(r["augmented"] for r in one) > 0
    assert len(list((tmp_path / "two" / "cache").glob("augment-*.jsonl"))) == 1  # written once
