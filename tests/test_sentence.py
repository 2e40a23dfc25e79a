"""Pruned sentence-transformers models (``structprune.sentence``): compress, distill, save, reload, evaluate.

A tiny SentenceTransformer is built in-process (a random 3-layer BERT saved to ``tmp_path`` with the tiny
WordPiece tokenizer, then Transformer -> Pooling(mean) -> Normalize); nothing touches the network. The
real all-MiniLM-L6-v2 is used by the slow test at the end.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys

import helpers
import pytest
import tiny
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

import structprune as sp
from structprune.scoring.embedding import embedding_distance, fisher_sample_loss
from structprune.sentence import SentenceEncoder, sentence_batches

st_modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
from sentence_transformers import SentenceTransformer  # noqa: E402

# a few dozen random sentences: the warnings about so little calibration data are right
pytestmark = pytest.mark.filterwarnings("ignore:Only .* calibration examples", "ignore:Reconstruction:")


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(tiny.WORDS, k=rng.randint(3, 12))) for _ in range(n)]


def tiny_st(folder, family: str = "bert", seed: int = 0, init: float = 0.02) -> SentenceTransformer:
    """A SentenceTransformer over a random tiny ``family`` encoder saved in ``folder`` (mean pooling, normalised).
    ``init``: the weights' standard deviation (larger: the layers change the embeddings more)."""
    torch.manual_seed(seed)
    if family == "bert":
        BertModel(BertConfig(**tiny.COMMON, initializer_range=init)).save_pretrained(folder)
    else:
        MPNetModel(MPNetConfig(**tiny.COMMON, initializer_range=init)).save_pretrained(folder)
    tiny.tokenizer().save_pretrained(folder)
    transformer = st_modules.Transformer(str(folder))
    pooling = st_modules.Pooling(transformer.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[transformer, pooling, st_modules.Normalize()], device="cpu")


def encode(st, texts) -> torch.Tensor:
    return st.encode(texts, convert_to_tensor=True, show_progress_bar=False)


def flops_kept(st) -> float:
    model = st[0].auto_model
    return sp.cost(model).encoder_flops / sp.dense_cost(model).encoder_flops


def state(st) -> dict:
    return {k: v.clone() for k, v in st.state_dict().items()}


TRAIN, HELD = sentences(96, seed=1), sentences(24, seed=2)


@pytest.fixture
def st(tmp_path):
    return tiny_st(tmp_path / "base")


# --- the encoder view of a SentenceTransformer ----------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_encoder_gives_what_encode_gives(family, tmp_path):
    model = tiny_st(tmp_path / family, family)
    enc = SentenceEncoder(model)
    (batch,) = sentence_batches(model, HELD[:8], batch_size=8)
    with torch.no_grad():
        out = enc(**batch)
    # the same embeddings up to float rounding (sentence-transformers 6.3's encode differs in the last bits, ~6e-8)
    torch.testing.assert_close(out.sentence_embedding, encode(model, HELD[:8]), rtol=0, atol=1e-6)
    assert enc.base_model is model[0].auto_model and enc.config is model[0].auto_model.config
    assert sp.cost(enc).encoder_flops == sp.dense_cost(model[0].auto_model).encoder_flops


def test_fisher_sample_estimates_the_gauss_newton_diagonal(st):
    """Squared gate gradients of ``z . normalize(e)`` (random signs z) estimate ``||d normalize(e) / d gate||^2``
    without bias: averaged over many draws they give the exact value, computed one output dimension at a time.
    Each draw and each dimension is a copy of the batch with its own per-example gates (one backward each)."""
    from structprune.gates import Gates

    enc = SentenceEncoder(st).eval()
    (batch,) = sentence_batches(st, HELD[:6], batch_size=6)
    s = sp.arch.view(enc).structure
    dims, draws = 32, 400

    def squared_gate_grads(copies: int, loss_of) -> torch.Tensor:
        """``[copies, L, H]``: per copy, the squared head-gate gradients summed over the 6 sentences."""
        big = {k: v.repeat(copies, 1) for k, v in batch.items()}
        head = torch.ones(6 * copies, s.num_layers, s.num_heads, requires_grad=True)
        with Gates(head, torch.ones(6 * copies, s.num_layers, s.intermediate_size)).attach(enc):
            emb = enc(**big).sentence_embedding  # [copies * 6, D]
        (grad,) = torch.autograd.grad(loss_of(emb.view(copies, 6, -1)), head)
        return grad.pow(2).view(copies, 6, s.num_layers, s.num_heads).sum(1)

    # exact: copy k differentiates output dimension k of the normalised embedding
    exact = squared_gate_grads(dims, lambda e: F.normalize(e, dim=-1).diagonal(dim1=0, dim2=2).sum()).sum(0)
    estimate = squared_gate_grads(draws, lambda e: fisher_sample_loss(e.reshape(-1, e.shape[-1]))).mean(0)
    assert exact.min() > 0
    torch.testing.assert_close(estimate, exact, rtol=0.25, atol=0)
    # the scorers back-propagate that loss for an embedding model (no labels): Fisher scores are one draw of it
    scores = sp.score(enc, [batch], method="fisher", label_free=True, progress=False)
    one = squared_gate_grads(1, lambda e: fisher_sample_loss(e.reshape(-1, e.shape[-1])))[0]
    torch.testing.assert_close(scores.head, one)


# --- compress -------------------------------------------------------------------------------------------


def test_compress_returns_a_smaller_sentence_transformer(st):
    dense = copy.deepcopy(st)
    want = encode(dense, HELD)
    pruned, report = sp.compress(st, TRAIN, flops=0.5, progress=False)
    assert pruned is st and isinstance(pruned, SentenceTransformer)  # in place, like sp.compress of a model
    assert report.label_free and report.examples == len(TRAIN)
    assert report.flops_kept <= 0.5 + 1e-6 and flops_kept(pruned) == pytest.approx(report.flops_kept)
    assert report.params_after < report.params_before
    assert sp.arch.view(pruned[0].auto_model).structure.is_pruned
    got = encode(pruned, HELD)
    assert got.shape == want.shape
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(HELD)))  # Normalize kept
    assert 0 < float(embedding_distance(got, want).mean()) < 0.5
    # candidates were weighed by the held-out cosine distance from the unpruned embeddings: the closest is kept
    # (select_margin=0, the default; with a margin the configured path stays unless another is clearly closer)
    assert len(report.candidates) >= 2 and all(0 <= v < 1 for v in report.candidates.values())
    assert report.choice == "search+rearrange, reconstructed" or report.candidates[report.choice] == min(
        report.candidates.values()
    )


def test_compress_beats_random_pruning_on_the_embedding_objective(tmp_path):
    dense = tiny_st(tmp_path / "a")
    want = encode(dense, HELD)
    dist = {}
    for method in ("fisher", "random"):
        model = copy.deepcopy(dense)
        sp.compress(model, TRAIN, flops=0.5, method=method, select=False, reconstruct=False, progress=False)
        dist[method] = float(embedding_distance(encode(model, HELD), want).mean())
    assert dist["fisher"] < dist["random"]


def test_all_kept_compress_gives_identical_embeddings(st):
    want = encode(st, HELD)
    _, report = sp.compress(st, TRAIN, flops=1.0, progress=False)
    assert report.flops_kept == 1.0
    assert torch.equal(encode(st, HELD), want)


def test_compress_to_fewer_layers_uses_the_embedding_damage(st):
    scores = sp.score_layers(SentenceEncoder(st), sentence_batches(st, TRAIN[:32]), progress=False)
    assert scores.shape == (3,) and bool((scores > 0).all())
    _, report = sp.compress(st, TRAIN, flops=0.4, layers=2, progress=False)
    assert len(st[0].auto_model.encoder.layer) == 2 and report.flops_kept <= 0.4 + 1e-6
    assert encode(st, HELD).shape == (len(HELD), 32)


# --- distill --------------------------------------------------------------------------------------------


def test_distill_lowers_the_embedding_loss(tmp_path):
    st = tiny_st(tmp_path / "strong", init=0.2)  # pruning moves these embeddings well away from the teacher's
    teacher = copy.deepcopy(st)
    teacher_state = state(teacher)
    sp.compress(st, TRAIN, flops=0.4, reconstruct=False, select=False, progress=False)
    want = encode(teacher, HELD)
    before = float(embedding_distance(encode(st, HELD), want, "mse").mean())
    cfg = sp.sentence.default_distill_config(num_epochs=4, learning_rate=1e-3, log_every=1, progress=False)
    student, history = sp.distill(st, teacher, TRAIN, config=cfg)
    after = float(embedding_distance(encode(st, HELD), want, "mse").mean())
    assert student is st and after < 0.5 * before
    assert {"embedding", "loss"} <= set(history[0]) and "task" not in history[0]
    assert history[-1]["embedding"] < history[0]["embedding"]
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    # cosine, hidden states, the 4th positional argument as the config
    cfg = sp.DistillConfig(task_weight=0, embedding_loss="cosine", hidden_weight=1.0, attention_weight=1.0,
                           num_epochs=1, progress=False)  # fmt: skip
    _, history = sp.distill(st, teacher, TRAIN, cfg)
    assert {"embedding", "hidden", "attention"} <= set(history[-1])
    assert st[0].auto_model.config._attn_implementation != "eager"  # switched for attention KD, then back


def test_distill_refuses_what_it_cannot_do(st, tmp_path):
    teacher = copy.deepcopy(st)
    with pytest.raises(ValueError, match="task_weight=0"):
        sp.distill(st, teacher, TRAIN, config=sp.DistillConfig(progress=False))
    with pytest.raises(TypeError, match="teacher must be a sentence_transformers"):
        sp.distill(st, teacher[0].auto_model, TRAIN)
    with pytest.raises(ValueError, match="Gradual pruning"):
        sp.distill(st, teacher, TRAIN, config=sp.sentence.default_distill_config(prune={"to": 0.5}))
    with pytest.raises(ValueError, match="embedding_loss"):
        sp.DistillConfig(embedding_loss="l1")


# --- save and load --------------------------------------------------------------------------------------


def test_saved_folder_loads_with_sentence_transformers(st, tmp_path):
    teacher = copy.deepcopy(st)
    sp.compress(st, TRAIN, flops=0.5, select=False, progress=False)
    sp.distill(st, teacher, TRAIN, config=sp.sentence.default_distill_config(max_steps=2, progress=False))
    want = encode(st, HELD)
    folder = sp.save_pretrained(st, tmp_path / "out")
    names = {p.name for p in folder.iterdir()}
    assert {"modules.json", "config.json", "model.safetensors", "modeling_structprune.py", "README.md",
            "structure.png", "tokenizer.json", "1_Pooling", "2_Normalize"} <= names  # fmt: skip
    assert not [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    modules = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
    assert [m.rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    loaded = SentenceTransformer(str(folder), device="cpu")
    assert [type(m).__name__ for m in loaded] == ["Transformer", "Pooling", "Normalize"]
    assert loaded[1].pooling_mode == "mean"
    assert torch.equal(encode(loaded, HELD), want)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "structprune-bert"

    card = (folder / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "pipeline_tag: sentence-similarity" in card
    assert (
        "fisher scores of the change of the normalised sentence embedding (no labels) on 96 sentences" in card
    )
    assert "embedding distillation (mse of the sentence embeddings) on 96 sentences" in card  # distill
    assert "Teacher | a local model (base)" in card
    assert 'SentenceTransformer("<this folder or repo>", trust_remote_code=True)' in card
    assert "Pooling (mean) -> Normalize" in card

    # the loaded model saves again; a card passed in overrides the noted fields; saving over a folder replaces it
    again = tmp_path / "again"
    for _ in range(2):
        sp.save_pretrained(loaded, again, card=sp.CardInfo(budget="half", metrics_after={"spearman": 0.5}))
    assert "| Budget | half |" in (again / "README.md").read_text()
    assert torch.equal(encode(SentenceTransformer(str(again), device="cpu"), HELD), want)
    with pytest.raises(ValueError, match="loaded from"):
        sp.save_pretrained(loaded, folder)  # over the folder it was read from: refused, as for any model


def test_uniformly_pruned_model_saves_as_a_stock_checkpoint(st, tmp_path):
    mask = sp.Mask.full(st[0].auto_model)
    mask.ffn[:, :8] = False  # the same width everywhere: a stock config describes it
    sp.prune_(st[0].auto_model, mask)
    folder = sp.save_pretrained(st, tmp_path / "stock")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    assert not (folder / "modeling_structprune.py").exists()
    assert "trust_remote_code" not in (folder / "README.md").read_text()
    assert torch.equal(encode(SentenceTransformer(str(folder), device="cpu"), HELD), encode(st, HELD))


NO_STRUCTPRUNE = (
    helpers.ISOLATED_PRELUDE
    + r"""
import torch
from sentence_transformers import SentenceTransformer

folder, texts, out = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
result = {}
try:
    SentenceTransformer(folder, device="cpu")
    result["plain"] = "loaded"
except (ValueError, OSError) as err:
    result["plain"] = str(err)
model = SentenceTransformer(folder, device="cpu", trust_remote_code=True)
result["module"] = type(model[0].auto_model).__module__
result["embeddings"] = model.encode(texts, convert_to_tensor=True, show_progress_bar=False).tolist()
json.dump(result, open(out, "w"))
"""
)


def test_loads_with_trust_remote_code_without_structprune(st, tmp_path):
    sp.compress(st, TRAIN, flops=0.5, select=False, reconstruct=False, progress=False)
    want = encode(st, HELD)
    folder = sp.save_pretrained(st, tmp_path / "out", card=False)
    done = helpers.run_without_structprune(
        NO_STRUCTPRUNE, [str(folder), json.dumps(HELD), str(tmp_path / "result.json")], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["plain"] != "loaded" and "trust_remote_code" in result["plain"]
    assert result["module"].startswith("transformers_modules")  # the checkpoint's modeling file
    torch.testing.assert_close(torch.tensor(result["embeddings"]), want, rtol=0, atol=1e-6)


# --- bad input: a clear error, and the model as it was -----------------------------------------------


@pytest.mark.parametrize(
    "data, error, match",
    [
        ([], ValueError, "empty"),
        ("one string", TypeError, "not one string"),
        (["fine", 3], TypeError, r"sentences\[1\] is a int"),
        ([{"input_ids": torch.ones(2, 3)}], TypeError, "give the sentences themselves"),
    ],
)
def test_bad_sentences_are_refused_and_nothing_changes(st, data, error, match):
    before, config = state(st), st[0].auto_model.config.to_dict()
    for call in (
        lambda: sp.compress(st, data, flops=0.5),
        lambda: sp.distill(st, copy.deepcopy(st), data),
    ):
        with pytest.raises(error, match=match):
            call()
        assert all(torch.equal(v, before[k]) for k, v in st.state_dict().items())
        assert st[0].auto_model.config.to_dict() == config


def test_a_sentence_transformer_without_a_transformer_first_is_refused(st):
    odd = SentenceTransformer(modules=[st_modules.Normalize()], device="cpu")
    with pytest.raises(TypeError, match="first module is Normalize, not a sentence_transformers Transformer"):
        sp.compress(odd, TRAIN, flops=0.5)
    with pytest.raises(TypeError, match="first module"):
        sp.save_pretrained(odd, "nowhere")
    before = state(st)
    with pytest.raises(ValueError, match="budget|flops"):
        sp.compress(st, TRAIN, flops=1.5)
    with pytest.raises(ValueError, match="label_free"):
        sp.compress(st, TRAIN, label_free=False)
    with pytest.raises(ValueError, match="embeddings' dimension"):
        sp.compress(st, TRAIN, flops=0.4, hidden=16)
    with pytest.raises(ValueError, match="its own tokenizer"):
        sp.save_pretrained(st, "nowhere", tokenizer=None)
    assert all(torch.equal(v, before[k]) for k, v in st.state_dict().items())


def test_importing_structprune_sentence_does_not_import_sentence_transformers():
    code = (
        "import sys, structprune as sp, structprune.sentence as s\n"
        "assert 'sentence_transformers' not in sys.modules, 'imported'\n"
        "assert set(s.__all__) == set(s._WHERE)\n"
        "assert not s.is_sentence_transformer(object())\n"
        "assert sp.sentence.save.__name__ == 'save'\n"
        "assert 'sentence_transformers' not in sys.modules, 'imported later'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# --- evaluation helpers ------------------------------------------------------------------------------


def test_stsb_spearman_and_throughput(st, tmp_path, monkeypatch):
    glue = tmp_path / "glue" / "STS-B"
    glue.mkdir(parents=True)
    rng = random.Random(3)
    rows = []
    for i in range(40):
        a = sentences(1, seed=100 + i)[0]
        b = a if i % 2 else sentences(1, seed=200 + i)[0]  # identical pairs get the top score
        rows.append({"sentence1": a, "sentence2": b, "label": 5.0 if i % 2 else rng.uniform(0, 2)})
    (glue / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("STRUCTPRUNE_GLUE_DIR", str(tmp_path / "glue"))
    result = sp.sentence.evaluate_stsb(st, batch_size=16)
    assert result["pairs"] == 40 and 0.5 < result["spearman"] <= 1.0  # identical pairs: cosine 1, score 5
    assert sp.sentence.evaluate_stsb(st, limit=10)["pairs"] == 10
    speed = sp.sentence.throughput({"a": st, "b": copy.deepcopy(st)}, TRAIN[:16], batch_size=8, repeat=1)
    assert set(speed) == {"a", "b"} and all(v > 0 for v in speed.values())


# --- the real all-MiniLM-L6-v2 -----------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_compress_keeps_sts_quality(minilm_path, glue_dir):
    """all-MiniLM-L6-v2 at 50% FLOPs on 128 STS-B train sentences (the single configured path: Fisher scores of
    the embedding objective, search, reconstruction): STS-B validation Spearman stays close to the dense one."""
    from structprune.data import load_split

    dense = SentenceTransformer(str(minilm_path), device="cpu")
    train = load_split("stsb", "train", glue_dir)
    texts = list(train["sentence1"][:64]) + list(train["sentence2"][:64])
    pruned, report = sp.compress(copy.deepcopy(dense), texts, flops=0.5, select=False, progress=False)
    assert report.flops_kept <= 0.5 + 1e-6 and report.reconstruction is not None
    before = sp.sentence.evaluate_stsb(dense, data_dir=glue_dir, limit=200)["spearman"]
    after = sp.sentence.evaluate_stsb(pruned, data_dir=glue_dir, limit=200)["spearman"]
    assert before > 0.8 and after > before - 0.1, (before, after)
