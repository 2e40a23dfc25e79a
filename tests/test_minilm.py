"""The core engine on the real MiniLM (all-MiniLM-L6-v2) and the fine-tuned SST-2 teacher."""

import copy
import json

import pytest
import torch

import structprune as sp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(minilm_path).eval(), AutoTokenizer.from_pretrained(minilm_path)


def _sst2(glue_dir, tok, n=32, split="validation"):
    rows = [json.loads(line) for line in (glue_dir / "SST-2" / f"{split}.jsonl").open()][:n]
    enc = tok(
        [r["sentence"] for r in rows], padding=True, truncation=True, max_length=48, return_tensors="pt"
    )
    return dict(enc), torch.tensor([r["label"] for r in rows])


def test_minilm_prune_half_flops_masked_equals_pruned(minilm, sst2_glue_dir):
    model, tok = minilm
    model = copy.deepcopy(model)
    batch, _ = _sst2(sst2_glue_dir, tok)
    scores = sp.score(model, [batch], method="activation", progress=False)
    mask = sp.allocate(scores, model, flops=0.5, multiple_of=8)
    with torch.no_grad(), sp.gates.Gates.from_mask(mask).attach(model):
        ref = model(**batch).last_hidden_state
    predicted = sp.cost(model, mask=mask)
    sp.prune_(model, mask)
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=5e-4)
    c = sp.cost(model)
    assert c.total_params == sum(p.numel() for p in model.parameters()) == predicted.total_params
    assert c.encoder_flops <= 0.5 * sp.dense_cost(model).encoder_flops
    assert all(lc.ffn % 8 == 0 for lc in c.layers)


def test_sst2_teacher_taylor_beats_random_at_half_flops(sst2_teacher, sst2_glue_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = sst2_teacher
    teacher = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    calib, calib_labels = _sst2(sst2_glue_dir, tok, n=64, split="train")
    calib["labels"] = calib_labels
    evalb, labels = _sst2(sst2_glue_dir, tok, n=200)

    def accuracy(m):
        with torch.no_grad():
            return (m(**evalb).logits.argmax(-1) == labels).float().mean().item()

    results = {}
    for method in ("taylor", "random"):
        m = copy.deepcopy(teacher)
        s = sp.score(m, [calib], method=method, progress=False)
        sp.prune_(m, sp.allocate(s, m, flops=0.5))
        results[method] = accuracy(m)
    dense = accuracy(teacher)
    assert dense > 0.8
    assert results["taylor"] > results["random"] + 0.03, results
    assert results["taylor"] > 0.7, results


def test_demo_prints_the_before_after_table(minilm_path, sst2_glue_dir, capsys):
    from structprune.run import demo

    assert demo.main(["--examples", "32", "--repeats", "1", "--glue-dir", str(sst2_glue_dir)]) == 0
    out = capsys.readouterr().out
    assert "| parameters (total)" in out and "| encoder GFLOPs (seq 128)" in out and "CPU latency" in out
    assert out.count("/12 ") == 6 and "/1536" in out  # six layers of heads and neurons kept
    ratio = float(next(line for line in out.splitlines() if "encoder GFLOPs" in line).split("|")[-2])
    assert 0.45 < ratio <= 0.5
