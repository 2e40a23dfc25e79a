"""Vocabulary pruning (``sp.prune_vocab``): embeddings and tokenizer shrink together and stay loadable.

Tokenizers of the three kinds are built in-process: WordPiece (BERT, ELECTRA, DistilBERT, MPNet classes over a
hand-written vocabulary), byte-level BPE (``RobertaTokenizer`` over a BPE trained on a tiny corpus) and
Unigram (``XLMRobertaTokenizer`` over a Unigram model trained likewise). Text made only of kept tokens must
tokenize as before (renumbered) and give the unpruned model's outputs exactly.
"""

from __future__ import annotations

import copy
import json

import helpers
import pytest
import tiny
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertTokenizer,
    DistilBertTokenizer,
    ElectraTokenizer,
    MPNetTokenizer,
    PreTrainedTokenizerFast,
    RobertaTokenizer,
    XLMRobertaTokenizer,
)

import structprune as sp
from structprune.surgery import tokenizer as tk
from structprune.surgery import vocab_coverage

TRAIN = [
    "the movie was good",
    "the film is fun and the actors were great",
    "a boring plot, not fun!",
    "it is a good film",
    "the actors are playing",
    "was it fun? it was",
]
KEPT = [  # recombinations of TRAIN's words (each test checks that they are fully kept)
    "the film was good",
    "it is fun and the movie was great",
    "the plot was boring, not good!",
    "a movie is a film",
    "the actors were playing",
]
DROPPED = ["a very awful movie", "the films were boringly bad", "zebras quietly judge the plot"]
CORPUS = [" ".join(tiny.WORDS[i:] + tiny.WORDS[:i]) for i in range(len(tiny.WORDS))] + TRAIN + DROPPED

WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]
WP_PIECES = ["##s", "##ing", "##ly", "##ed", "play", "were", "are", "bor", "good", "!", ",", ".", "?", "z"]


def wordpiece(cls=BertTokenizer):
    specials = MPNET_SPECIALS if cls is MPNetTokenizer else WP_SPECIALS
    words = list(dict.fromkeys([*specials, *tiny.WORDS, *WP_PIECES]))
    return cls(vocab={w: i for i, w in enumerate(words)})


def _trained(model, pre_tokenizer, trainer):
    from tokenizers import Tokenizer

    t = Tokenizer(model)
    t.pre_tokenizer = pre_tokenizer
    t.train_from_iterator(CORPUS * 4, trainer)
    return json.loads(t.to_str())["model"]


def byte_bpe():
    from tokenizers import models, pre_tokenizers, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    m = _trained(models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=False), trainer)
    return RobertaTokenizer(vocab=m["vocab"], merges=[tuple(x) for x in m["merges"]])


def unigram():
    from tokenizers import models, pre_tokenizers, trainers

    trainer = trainers.UnigramTrainer(
        vocab_size=90,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    m = _trained(models.Unigram(), pre_tokenizers.Metaspace(), trainer)
    return XLMRobertaTokenizer(vocab=[tuple(v) for v in m["vocab"]] + [("<mask>", 0.0)])


TOKENIZERS = {
    "bert": wordpiece,
    "electra": lambda: wordpiece(ElectraTokenizer),
    "distilbert": lambda: wordpiece(DistilBertTokenizer),
    "mpnet": lambda: wordpiece(MPNetTokenizer),
    "roberta": byte_bpe,
    "xlm-roberta": unigram,
}
KINDS = {"wordpiece": "bert", "bpe": "roberta", "unigram": "xlm-roberta"}


def setup(family: str, task: str = "seq-cls"):
    """A tiny ``family`` model whose vocabulary is its in-process tokenizer's, and that tokenizer."""
    tok = TOKENIZERS[family]()
    return tiny.model(family, task, vocab_size=len(tok)), tok


def tokens(tok, texts):
    return [tok.convert_ids_to_tokens(ids) for ids in tok(texts)["input_ids"]]


def fully_kept(tok, new, texts):
    """The texts whose tokens (under ``tok``) all survive in ``new``."""
    vocab = new.get_vocab()
    return [t for t, toks in zip(texts, tokens(tok, texts), strict=True) if all(x in vocab for x in toks)]


def encode(tok, texts):
    return dict(tok(texts, padding=True, return_tensors="pt"))


def out(model, feed):
    with torch.no_grad():
        o = model.eval()(**feed)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def json_of(tok) -> str:
    return tok.backend_tokenizer.to_str()


# --- conformance: every family, with its tokenizer kind ------------------------------------------------
@pytest.mark.parametrize("family", list(TOKENIZERS))
def test_kept_text_gives_identical_logits_and_reloads(family, tmp_path):
    model, tok = setup(family)
    ref, before = copy.deepcopy(model), json_of(tok)
    pruned, new = sp.prune_vocab(model, tok, TRAIN)
    assert pruned is model  # in place, like prune_
    assert json_of(tok) == before  # the caller's tokenizer is untouched
    assert type(new) is type(tok)
    rows = model.get_input_embeddings().num_embeddings
    assert model.config.vocab_size == rows == len(new) < len(tok)

    kept = fully_kept(tok, new, KEPT)
    assert len(kept) >= 3, kept
    assert tokens(new, kept) == tokens(tok, kept)  # same tokens, renumbered
    assert [new.decode(new(t)["input_ids"]) for t in kept] == [tok.decode(tok(t)["input_ids"]) for t in kept]
    torch.testing.assert_close(out(model, encode(new, kept)), out(ref, encode(tok, kept)), rtol=0, atol=0)
    # special tokens: the same ones, each still naming itself
    assert new.all_special_tokens == tok.all_special_tokens
    assert new.convert_ids_to_tokens(new.all_special_ids) == tok.all_special_tokens
    assert {str(t) for t in new.added_tokens_decoder.values()} == {
        str(t) for t in tok.added_tokens_decoder.values()
    }
    assert new.pad_token_id == model.config.pad_token_id

    sp.save_pretrained(model, tmp_path, tokenizer=new, card=False)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(tok2) is type(tok) and tok2.get_vocab() == new.get_vocab()
    assert model2.config.vocab_size == rows
    torch.testing.assert_close(out(model2, encode(tok2, kept)), out(ref, encode(tok, kept)), rtol=0, atol=0)


SHARED_BIAS = {"bert": "cls.predictions.bias", "roberta": "lm_head.bias", "mpnet": "lm_head.bias"}


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "mpnet"])
def test_tied_decoder_stays_tied_with_its_bias_sliced(family, tmp_path):
    model, tok = setup(family, "mlm")
    with torch.no_grad():
        model.get_output_embeddings().bias.normal_()  # (zeros at init: slicing them would prove nothing)
    ref = copy.deepcopy(model)
    _, new = sp.prune_vocab(model, tok, TRAIN)
    emb, dec = model.get_input_embeddings(), model.get_output_embeddings()
    assert dec.weight is emb.weight  # still one tensor
    assert dec.out_features == emb.num_embeddings == model.config.vocab_size == len(new)
    if family in SHARED_BIAS:  # the head's own bias parameter is the decoder's
        assert model.get_parameter(SHARED_BIAS[family]) is dec.bias
    # the kept rows and bias entries, in order: the MLM logits are the unpruned ones at the kept columns
    kept_ids = tok.convert_tokens_to_ids(new.convert_ids_to_tokens(list(range(len(new)))))
    assert torch.equal(dec.bias, ref.get_output_embeddings().bias[kept_ids])
    text = fully_kept(tok, new, KEPT)
    want = out(ref, encode(tok, text))[..., kept_ids]
    torch.testing.assert_close(out(model, encode(new, text)), want, rtol=0, atol=0)
    sp.save_pretrained(model, tmp_path, tokenizer=new, card=False)
    again = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight
    torch.testing.assert_close(out(again, encode(new, text)), want, rtol=0, atol=0)


# --- how each tokenizer kind treats dropped tokens (documented in structprune/surgery/vocab.py) ---------
def test_wordpiece_falls_back_to_kept_pieces_then_unk():
    model, tok = setup("bert")
    _, new = sp.prune_vocab(model, tok, ["playing movies", "the plot"])
    assert "playing" not in new.get_vocab()
    assert new.tokenize("playing") == ["play", "##ing"] == tok.tokenize("playing")
    assert tok.tokenize("boring") == ["boring"] and new.tokenize("boring") == ["[UNK]"]  # no kept split
    assert new.tokenize("the films") == ["the", "[UNK]"]  # "film" dropped: the whole word is unknown


def test_byte_bpe_keeps_every_byte_and_never_emits_unknown():
    from tokenizers import pre_tokenizers

    model, tok = setup("roberta")
    _, new = sp.prune_vocab(model, tok, ["the movie"])
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(new.get_vocab())
    for text in [*DROPPED, "naïve café — 映画 🎬"]:
        ids = new(text)["input_ids"]
        assert new.unk_token_id not in ids
        assert new.decode(ids, skip_special_tokens=True) == text  # lossless, dropped merges or not
    assert len(new("the boring plot")["input_ids"]) > len(tok("the boring plot")["input_ids"])


def test_unigram_resegments_into_kept_pieces_then_unk():
    model, tok = setup("xlm-roberta")
    _, new = sp.prune_vocab(model, tok, TRAIN)
    # "awful" never occurs in TRAIN: its pieces are gone, it is split into smaller kept pieces...
    assert tok.tokenize("awful") != new.tokenize("awful")
    # ...and characters no kept piece covers become one <unk> (the original had pieces for them)
    assert tok.unk_token_id not in tok("zebras")["input_ids"]
    assert new.unk_token_id in new("zebras")["input_ids"]
    assert all(i < len(new) for text in DROPPED for i in new(text)["input_ids"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_coverage_and_min_count(kind):
    family = KINDS[kind]
    model, tok = setup(family)
    texts = TRAIN * 2 + ["the awful plot"]  # "awful" once, the rest at least twice
    sizes, covs = [], []
    for min_count in (1, 2, 3):
        _, new = sp.prune_vocab(copy.deepcopy(model), tok, texts, min_count=min_count)
        cov = vocab_coverage(tok, new, texts)
        sizes.append(len(new))
        covs.append(cov.token_coverage)
        assert cov.texts == len(texts) and cov.kept_texts <= cov.texts
    assert sizes[0] > sizes[1] >= sizes[2] and covs[0] == 1.0 and covs[0] >= covs[1] >= covs[2]
    cov = vocab_coverage(tok, sp.prune_vocab(copy.deepcopy(model), tok, TRAIN)[1], KEPT + DROPPED)
    assert 0 < cov.token_coverage < 1 and cov.kept_texts >= 3 and 0 <= cov.unknown_rate < 1


def test_pruning_twice_composes():
    model, tok = setup("roberta")
    ref = copy.deepcopy(model)
    _, once = sp.prune_vocab(model, tok, TRAIN)
    _, twice = sp.prune_vocab(model, once, TRAIN[:3])
    assert set(twice.get_vocab()) < set(once.get_vocab()) and model.config.vocab_size == len(twice)
    text = fully_kept(tok, twice, KEPT + TRAIN[:3])
    assert text and tokens(twice, text) == tokens(tok, text)
    torch.testing.assert_close(out(model, encode(twice, text)), out(ref, encode(tok, text)), rtol=0, atol=0)


def test_pruning_again_after_a_reload_counts_from_the_first_vocabulary(tmp_path):
    """The card names the vocabulary before the first pruning, also when the second pruning follows a reload."""
    from structprune.checkpoint.card import _NOTES

    model, tok = setup("bert")
    _, once = sp.prune_vocab(model, tok, TRAIN)
    first = getattr(model, _NOTES)["vocabulary"]
    assert first.startswith(f"{len(once):,} of {len(tok):,} tokens kept")
    sp.save_pretrained(model, tmp_path, tokenizer=once)
    reloaded = sp.from_pretrained(tmp_path)
    assert getattr(reloaded, _NOTES)["vocabulary"] == first
    _, twice = sp.prune_vocab(reloaded, once, TRAIN[:3])
    assert getattr(reloaded, _NOTES)["vocabulary"].startswith(f"{len(twice):,} of {len(tok):,} tokens kept")


def test_keep_adds_named_tokens():
    model, tok = setup("bert")
    _, new = sp.prune_vocab(model, tok, ["the movie"], keep=["awful", "##ly"])
    assert {"awful", "##ly", "the", "movie"} <= set(new.get_vocab())
    assert len(new) == len(WP_SPECIALS) + 4


# --- the tokenizer JSON rewriting, on its own -----------------------------------------------------------
def test_bpe_rewrite_drops_merges_and_remaps_processor_and_padding():
    spec = json.loads(byte_bpe().backend_tokenizer.to_str())
    spec["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 1, "pad_type_id": 0, "pad_token": "<pad>"}  # fmt: skip
    vocab = tk.model_vocab(spec)
    need = tk.required_ids(spec)
    kept = tk.merge_closure(spec, need | {vocab["Ġmovie"]})
    new = tk.rewrite(spec, kept)
    from tokenizers import Tokenizer

    t = Tokenizer.from_str(json.dumps(new))
    assert t.encode(" movie", add_special_tokens=False).tokens == ["Ġmovie"]  # its merge chain was kept
    assert len(new["model"]["merges"]) == len(kept) - len(need)  # one merge per token a merge makes
    assert new["post_processor"]["cls"] == ["<s>", new["model"]["vocab"]["<s>"]]
    assert new["padding"]["pad_id"] == new["model"]["vocab"]["<pad>"]
    with pytest.raises(ValueError, match="needs the id"):
        tk.rewrite(spec, kept - {vocab["<unk>"]})


def test_unsupported_tokenizer_model_is_a_clear_error():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    words = {w: i for i, w in enumerate([*WP_SPECIALS, *tiny.WORDS])}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(words, unk_token="[UNK]")), unk_token="[UNK]"
    )
    model = tiny.model("bert", vocab_size=len(tok))
    with pytest.raises(ValueError, match="WordPiece.*BPE.*Unigram.*'WordLevel'"):
        sp.prune_vocab(model, tok, TRAIN)


# --- bad input ----------------------------------------------------------------------------------------
class SlowTokenizer:
    is_fast = False


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"texts": "the movie was good"}, TypeError, "iterable of strings"),
        ({"texts": []}, ValueError, "texts is empty"),
        ({"texts": ["ok", 3]}, TypeError, r"texts\[1\] is a int"),
        ({"min_count": 0}, ValueError, "min_count must be an integer >= 1"),
        ({"keep": ["movie", "cinematography"]}, ValueError, "'cinematography'"),
        ({"tokenizer": SlowTokenizer()}, TypeError, "needs a fast tokenizer"),
        ({"model": "small"}, ValueError, "tokenizer does not belong"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(kwargs, error, match):
    model, tok = setup("bert")
    if kwargs.get("model") == "small":
        kwargs["model"] = tiny.model("bert", vocab_size=len(tok) - 2)
    args = {"model": model, "tokenizer": tok, "texts": TRAIN, **kwargs}
    target = args["model"]
    weight, before = target.get_input_embeddings().weight.clone(), json_of(tok)
    with pytest.raises(error, match=match):
        sp.prune_vocab(args.pop("model"), args.pop("tokenizer"), args.pop("texts"), **args)
    assert json_of(tok) == before
    assert torch.equal(target.get_input_embeddings().weight, weight)


def test_saving_with_the_unpruned_tokenizer_is_refused(tmp_path):
    model, tok = setup("bert")
    model.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "dense")
    sp.prune_vocab(model, tok, TRAIN)
    with pytest.raises(ValueError, match="vocabulary was pruned"):
        sp.save_pretrained(model, tmp_path / "out")  # tokenizer="auto" would find the dense one


# --- composition with structural pruning, checkpoints, ONNX ---------------------------------------------
@pytest.mark.parametrize("order", ["structure-then-vocab", "vocab-then-structure"])
def test_composes_with_prune_in_either_order(order, tmp_path):
    model, tok = setup("bert")
    mask = helpers.hidden_mask(model)  # non-uniform heads and FFN, a dropped layer, hidden dimensions
    structural = sp.prune_(copy.deepcopy(model), mask)
    if order == "structure-then-vocab":
        _, new = sp.prune_vocab(sp.prune_(model, mask), tok, TRAIN)
    else:
        _, new = sp.prune_vocab(model, tok, TRAIN)
        sp.prune_(model, mask)
    text = fully_kept(tok, new, KEPT)
    want = out(structural, encode(tok, text))
    torch.testing.assert_close(out(model, encode(new, text)), want, rtol=0, atol=0)
    assert model.get_input_embeddings().weight.shape == (len(new), len(mask.hidden) - 5)
    sp.save_pretrained(model, tmp_path, tokenizer=new, card=False)
    for loaded in (
        sp.from_pretrained(tmp_path),
        AutoModelForSequenceClassification.from_pretrained(tmp_path),
    ):
        torch.testing.assert_close(out(loaded, encode(new, text)), want, rtol=0, atol=0)


LOAD_SCRIPT = (
    helpers.ISOLATED_PRELUDE
    + r"""
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

results = {}
for case in json.loads(open(sys.argv[2]).read()):
    tok = AutoTokenizer.from_pretrained(case["dir"])
    model = AutoModelForSequenceClassification.from_pretrained(case["dir"], trust_remote_code=True).eval()
    feed = tok(case["texts"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**feed).logits
    results[case["dir"]] = {"ids": feed["input_ids"].tolist(), "logits": logits.tolist(),
                            "module": type(model).__module__}
json.dump(results, open(sys.argv[3], "w"))
"""
)


def test_loads_without_structprune(tmp_path):
    """Non-uniform structure + pruned vocabulary, one checkpoint per tokenizer kind, loaded by transformers
    alone (AutoTokenizer, and AutoModel* with trust_remote_code) in one interpreter without structprune."""
    cases, want = [], {}
    for family in KINDS.values():
        model, tok = setup(family)
        ref = copy.deepcopy(model)
        sp.prune_(model, helpers.nonuniform_mask(model))
        structural = copy.deepcopy(model)
        _, new = sp.prune_vocab(model, tok, TRAIN)
        text = fully_kept(tok, new, KEPT)
        folder = tmp_path / family
        sp.save_pretrained(model, folder, tokenizer=new, card=False)
        cases.append({"dir": str(folder), "texts": text})
        want[str(folder)] = (encode(new, text)["input_ids"].tolist(), out(structural, encode(tok, text)))
        assert not torch.equal(want[str(folder)][1], out(ref, encode(tok, text)))  # the structure changed
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    result = helpers.run_without_structprune(
        LOAD_SCRIPT, [str(tmp_path / "cases.json"), str(tmp_path / "out.json")], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    for folder, (ids, logits) in want.items():
        assert got[folder]["module"].startswith("transformers_modules")  # the checkpoint's modeling file
        assert got[folder]["ids"] == ids
        torch.testing.assert_close(torch.tensor(got[folder]["logits"]), logits, rtol=0, atol=1e-6)


def test_onnx_export_and_int8(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    model, tok = setup("bert")
    sp.prune_(model, helpers.nonuniform_mask(model))
    _, new = sp.prune_vocab(model, tok, TRAIN)
    path = sp.export_onnx(model, tmp_path / "model.onnx")  # checks onnxruntime against PyTorch
    int8 = sp.quantize_onnx(path, tmp_path / "model-int8.onnx")
    feed = encode(new, fully_kept(tok, new, KEPT))
    want = out(model, feed)
    for p, atol in ((path, 1e-4), (int8, None)):
        session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        logits = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feed.items() if k in names})[0])
        assert logits.shape == want.shape
        if atol is not None:
            torch.testing.assert_close(logits, want, rtol=0, atol=atol)


# --- a property: any text made of kept tokens tokenizes as before -----------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_property_kept_tokens_tokenize_as_before(kind):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    family = KINDS[kind]
    model, tok = setup(family)
    _, new = sp.prune_vocab(model, tok, TRAIN)
    words = sorted({w for t in TRAIN + DROPPED for w in t.replace(",", " ,").replace("!", " !").split()})

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(st.sampled_from(words), min_size=1, max_size=8))
    def check(ws):
        text = " ".join(ws)
        before, after = tok.tokenize(text), new.tokenize(text)
        if fully_kept(tok, new, [text]):
            assert after == before
        ids = new(text, add_special_tokens=False)["input_ids"]
        assert ids and max(ids) < len(new)
        if kind == "bpe":  # byte-level: lossless whatever was dropped
            assert new.decode(ids) == text

    check()


# --- the real MiniLM on SST-2 ------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_sst2_vocabulary(minilm_path, sst2_glue_dir):
    from structprune.data import load_split

    train = load_split("sst2", "train", sst2_glue_dir)["sentence"]
    val = load_split("sst2", "validation", sst2_glue_dir)["sentence"]
    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    ref = copy.deepcopy(model)
    _, new = sp.prune_vocab(model, tok, train)
    assert 11_000 < len(new) < 12_200  # about 11.6k of 30.5k
    cov = vocab_coverage(tok, new, val)
    assert 0.97 < cov.token_coverage < 0.99 and cov.unknown_rate < 0.005
    text = fully_kept(tok, new, val[:64])
    assert len(text) > 30
    torch.testing.assert_close(out(model, encode(new, text)), out(ref, encode(tok, text)), rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) < 0.7 * sum(p.numel() for p in ref.parameters())
