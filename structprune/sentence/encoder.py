"""A sentence-transformers model seen as one structprune model: transformer, pooling and normalisation in
one forward that returns the sentence embedding.

:class:`SentenceEncoder` wraps a ``SentenceTransformer`` whose first module is a ``Transformer`` over an
encoder family structprune knows (BERT, MPNet, ...). It holds the SentenceTransformer's own modules, so
pruning or training it changes the SentenceTransformer in place; it exposes the transformers model as
``base_model`` and its ``config``, so views, gates, scoring, ``prune_``, costs, reconstruction and
distillation maps see the encoder; and its output carries ``sentence_embedding``, which every label-free
step compares (:mod:`structprune.scoring.embedding`).

Nothing here imports sentence-transformers: an object can only be a ``SentenceTransformer`` once that
package has been imported, so :func:`is_sentence_transformer` looks it up in ``sys.modules``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..arch import view
from ..scoring.embedding import embedding_distance

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
"""Inputs of the transformers model; any other tensor of a batch goes to the pooling modules (e.g. ``prompt_length``)."""


def is_sentence_transformer(obj) -> bool:
    """Whether ``obj`` is a ``sentence_transformers.SentenceTransformer`` (without importing the package)."""
    module = sys.modules.get("sentence_transformers")
    cls = getattr(module, "SentenceTransformer", None) if module is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def _is_transformer_module(module) -> bool:
    return any(c.__name__ == "Transformer" and c.__module__.startswith("sentence_transformers")
               for c in type(module).__mro__)  # fmt: skip


def check_sentence_transformer(st, what: str = "model") -> PreTrainedModel:
    """The transformers model inside ``st``, or a ``TypeError`` saying why structprune cannot prune ``st``.

    ``st`` must be a ``SentenceTransformer`` (PyTorch backend) whose first module is a ``Transformer`` that
    runs the forward of a transformers encoder structprune knows and yields token embeddings.
    """
    if not is_sentence_transformer(st):
        raise TypeError(
            f"The {what} must be a sentence_transformers.SentenceTransformer, got {type(st).__name__}."
        )
    modules = list(st)
    first = modules[0] if modules else None
    if first is None or not _is_transformer_module(first):
        raise TypeError(
            f"The {what}'s first module is {type(first).__name__}, not a sentence_transformers Transformer: structprune "
            "prunes the transformers encoder of a SentenceTransformer built as Transformer -> Pooling (-> Normalize)."
        )
    if getattr(first, "backend", "torch") != "torch":
        raise TypeError(
            f"The {what} runs on the {first.backend!r} backend; load it with backend='torch' to prune it."
        )
    output = getattr(first, "module_output_name", "token_embeddings")
    method = (getattr(first, "modality_config", None) or {}).get("text", {}).get("method", "forward")
    if output != "token_embeddings" or method != "forward":
        raise TypeError(
            f"The {what}'s Transformer module yields {output!r} from its model's {method!r} method; structprune prunes "
            "encoders whose forward gives token embeddings (then pooled)."
        )
    model = getattr(first, "auto_model", None)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"The {what}'s Transformer module holds no transformers model ({type(model).__name__})."
        )
    view(model)  # an architecture structprune does not know: TypeError naming the supported families
    return model


@dataclass
class SentenceEncoderOutput(ModelOutput):
    """What :class:`SentenceEncoder` returns: the sentence embeddings ``[B, D]`` (pooled, and normalised when
    the SentenceTransformer normalises), the token embeddings ``[B, T, H]``, and, when asked for, hidden states
    and attentions; ``loss`` (the mean cosine distance from ``labels``, target embeddings) when given labels."""

    loss: torch.Tensor | None = None
    sentence_embedding: torch.Tensor | None = None
    token_embeddings: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class SentenceEncoder(nn.Module):
    """A ``SentenceTransformer`` as one model: ``encoder(**batch).sentence_embedding`` is what ``st.encode``
    gives for the same sentences (the modules are the SentenceTransformer's own, shared, not copied).

    Example::

        enc = SentenceEncoder(st)
        batch = sentence_batches(st, ["a sentence", "another one"])[0]
        enc(**batch).sentence_embedding        # [2, D], equal to st.encode(..., convert_to_tensor=True)
        sp.cost(enc)                           # the encoder's FLOPs and parameters
    """

    def __init__(self, st):
        super().__init__()
        self.encoder = check_sentence_transformer(st)
        self.head = nn.ModuleList(list(st)[1:])  # Pooling, Dense, Normalize, ...: they read the features dict
        self._declared = set(inspect.signature(self.encoder.forward).parameters)

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers encoder (what :func:`structprune.arch.view` resolves and ``prune_`` cuts)."""
        return self.encoder

    @property
    def config(self):
        return self.encoder.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_attn_implementation(self, implementation: str) -> None:
        self.encoder.set_attn_implementation(implementation)

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None,
                output_attentions=None, **features) -> SentenceEncoderOutput:  # fmt: skip
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs.update({k: features.pop(k) for k in ENCODER_INPUTS if k in features})
        # what the encoder's forward declares (MPNet takes no token_type_ids), as sentence-transformers passes
        inputs = {k: v for k, v in inputs.items() if v is not None and k in self._declared}
        out = self.encoder(
            **inputs,
            output_hidden_states=bool(output_hidden_states),
            output_attentions=bool(output_attentions),
            return_dict=True,
        )
        features = {**features, **inputs, "token_embeddings": out.last_hidden_state}  # [B, T, H]
        for module in self.head:
            features = module(features)
        embedding = features["sentence_embedding"]  # [B, D]
        loss = embedding_distance(embedding, labels).mean() if labels is not None else None
        return SentenceEncoderOutput(
            loss=loss,
            sentence_embedding=embedding,
            token_embeddings=out.last_hidden_state,
            hidden_states=out.hidden_states if output_hidden_states else None,
            attentions=out.attentions if output_attentions else None,
        )


def check_sentences(sentences, what: str = "sentences") -> list[str]:
    """``sentences`` as a list of strings; a ``TypeError``/``ValueError`` saying what is wrong otherwise."""
    if isinstance(sentences, str | bytes):
        raise TypeError(f"{what} must be a list of strings (one sentence each), not one string.")
    if isinstance(sentences, Mapping):
        raise TypeError(f"{what} must be a list of strings, got a {type(sentences).__name__}.")
    if not isinstance(sentences, Iterable):
        raise TypeError(f"{what} must be a list of strings, got {type(sentences).__name__}.")
    texts = list(sentences)
    if not texts:
        raise ValueError(f"{what} is empty: pass the (unlabelled) sentences to prune and recover on.")
    for i, text in enumerate(texts):
        if isinstance(text, Mapping):
            raise TypeError(
                f"{what}[{i}] is a {type(text).__name__}: give the sentences themselves (strings); structprune "
                "tokenizes them with the SentenceTransformer's own tokenizer."
            )
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] is a {type(text).__name__}, not a string.")
    return texts


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return batch_size


def tokenize(st, sentences: list[str]) -> dict[str, torch.Tensor]:
    """The SentenceTransformer's own tokenization of ``sentences`` (its max_seq_length, padding), tensors only."""
    features = st.preprocess(sentences) if hasattr(st, "preprocess") else st.tokenize(sentences)
    return {k: v for k, v in features.items() if isinstance(v, torch.Tensor)}


def sentence_batches(st, sentences, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """``sentences`` tokenized by ``st``, in order, ``batch_size`` at a time: batches :class:`SentenceEncoder`
    (and so ``compress``, ``reconstruct``, scoring) takes.

    Example::

        batches = sentence_batches(st, train_sentences[:1000])
    """
    texts = check_sentences(sentences)
    check_batch_size(batch_size)
    return [tokenize(st, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
