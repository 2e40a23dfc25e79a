"""Tiny random models of every supported family, built in-process (no network)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

VOCAB = 99
WORDS = ["the", "a", "movie", "was", "good", "bad", "great", "awful", "not", "very", "fun", "boring", "plot",
         "actors", "film", "and", "it", "is"]  # fmt: skip


def tokenizer():
    """A WordPiece tokenizer over WORDS built in-process (ids < VOCAB)."""
    from transformers import BertTokenizer

    return BertTokenizer(
        vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    )


COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48
)


# ModernBERT: a sliding window of 4 tokens (2 each side) so that the 9-token batches below tell global and
# local layers apart (layers 0 and 3 global, 1 and 2 local); SDPA attention, what from_pretrained picks on a
# CPU (eager gives the same outputs on real tokens but others on padding; it is tested separately).
MODERNBERT = dict(
    pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3, local_attention=4,
    max_position_embeddings=64, attn_implementation="sdpa", initializer_range=0.2,
)  # fmt: skip
# Both: initializer_range=0.2, so that attention is sharp enough for the window, the rotary and relative
# positions and every head to change the outputs well beyond the tests' tolerances (at 0.02 the position
# terms move DeBERTa's outputs by 1e-6).
# DeBERTa-v3's layout (relative attention with log buckets, both position terms, the table's LayerNorm, no
# absolute positions) with its own position projections (share_att_key=False, as DeBERTa-v2-base).
DEBERTA = dict(
    relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=-1,
    norm_rel_ebd="layer_norm", share_att_key=False, position_biased_input=False, max_position_embeddings=64,
    type_vocab_size=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
)  # fmt: skip


def config(family: str, **overrides):
    if family == "modernbert":  # its per-layer attention types are derived from the layer count at init
        return ModernBertConfig(**{**COMMON, **MODERNBERT, **overrides})
    if family == "deberta-v2":
        cfg = DebertaV2Config(**{**COMMON, **DEBERTA})
    elif family == "bert":
        cfg = BertConfig(**COMMON)
    elif family == "roberta":
        cfg = RobertaConfig(**COMMON, pad_token_id=1)
    elif family == "xlm-roberta":
        cfg = XLMRobertaConfig(**COMMON, pad_token_id=1)
    elif family == "electra":
        cfg = ElectraConfig(**COMMON, embedding_size=16)
    elif family == "mpnet":
        cfg = MPNetConfig(**COMMON)
    elif family == "distilbert":
        cfg = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=3, n_heads=4, hidden_dim=48)
    else:
        raise KeyError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet", "modernbert", "deberta-v2"]
TASKS = {
    "base": AutoModel,
    "seq-cls": AutoModelForSequenceClassification,
    "token-cls": AutoModelForTokenClassification,
    "qa": AutoModelForQuestionAnswering,
    "mlm": AutoModelForMaskedLM,
}


def model(family: str = "bert", task: str = "seq-cls", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = config(family, **overrides)
    if task in ("seq-cls", "token-cls"):
        cfg.num_labels = overrides.get("num_labels", 3)
    m = TASKS[task].from_config(cfg)
    m.eval()
    return m


def batch(
    seed: int = 0, batch_size: int = 4, seq_len: int = 9, labels: str | None = "seq-cls", num_labels: int = 3
):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, seq_len), generator=g)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    mask[0, seq_len - 3 :] = 0  # some padding
    out = {"input_ids": ids, "attention_mask": mask}
    if labels == "seq-cls":
        out["labels"] = torch.randint(0, num_labels, (batch_size,), generator=g)
    elif labels == "token-cls":
        out["labels"] = torch.randint(0, num_labels, (batch_size, seq_len), generator=g)
    elif labels == "qa":
        out["start_positions"] = torch.randint(0, seq_len, (batch_size,), generator=g)
        out["end_positions"] = torch.randint(0, seq_len, (batch_size,), generator=g)
    return out


def batches(n: int = 3, **kw):
    return [batch(seed=i, **kw) for i in range(n)]


def outputs(m, b):
    b = {k: v for k, v in b.items() if k not in ("labels", "start_positions", "end_positions")}
    with torch.no_grad():
        out = m(**b)
    return torch.cat([t.flatten() for t in out.values() if isinstance(t, torch.Tensor)])
