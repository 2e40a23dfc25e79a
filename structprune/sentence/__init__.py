"""Pruned sentence-transformers embedding models (the ``sentence`` extra: ``pip install 'structprune[sentence]'``).

A ``SentenceTransformer`` goes through the same functions as a transformers model; they come here when
given one:

- ``sp.compress(st, sentences, flops=0.5)`` prunes its transformer on unlabelled sentences, keeping the
  sentence embeddings close to the unpruned model's (:mod:`structprune.scoring.embedding`), and returns
  ``(st, report)`` (:func:`.run.compress`);
- ``sp.distill(student, teacher, sentences, config=...)`` trains the pruned model to give the teacher's
  sentence embeddings (MSE or cosine: sentence-transformers' distillation recipe) in the library's one
  Accelerate loop (:func:`.run.distill`);
- ``sp.save_pretrained(st, path)`` / ``sp.push_to_hub(st, repo)`` write a folder ``SentenceTransformer(path)``
  loads, with structprune imported or, via ``trust_remote_code=True``, without it (:func:`.saving.save`);
- :func:`evaluate_stsb` (STS-B Spearman of cosine similarities) and :func:`throughput` (sentences/s);
- :func:`unlabelled_sentences` (GLUE train text and the user's files, pooled) and the recipe pipeline
  (:mod:`.pipeline`, ``structprune run all-minilm-l6-v2``).

:class:`SentenceEncoder` is the SentenceTransformer seen as one model (transformer + pooling +
normalisation, output ``sentence_embedding``), which is all the rest of structprune needs. Importing this
package does not import sentence-transformers.

Example::

    import copy
    import structprune as sp
    from sentence_transformers import SentenceTransformer

    dense = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    pruned, report = sp.compress(copy.deepcopy(dense), sentences, flops=0.5)
    pruned, history = sp.distill(pruned, dense, sentences)
    sp.save_pretrained(pruned, "minilm-50")
    sp.sentence.evaluate_stsb(pruned)["spearman"]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Imported on first use, as the top-level package does: the dispatch check of sp.compress / sp.distill /
# sp.save_pretrained (is_sentence_transformer) stays cheap.
_WHERE = {
    "SentenceEncoder": "encoder",
    "SentenceEncoderOutput": "encoder",
    "is_sentence_transformer": "encoder",
    "sentence_batches": "encoder",
    "evaluate_stsb": "evaluate",
    "throughput": "evaluate",
    "unlabelled_sentences": "data",
    "DEFAULT_DISTILL": "run",
    "compress": "run",
    "default_distill_config": "run",
    "distill": "run",
    "sentence_loader": "run",
    "save": "saving",
}

__all__ = [
    "DEFAULT_DISTILL",
    "SentenceEncoder",
    "SentenceEncoderOutput",
    "compress",
    "default_distill_config",
    "distill",
    "evaluate_stsb",
    "is_sentence_transformer",
    "save",
    "sentence_batches",
    "sentence_loader",
    "throughput",
    "unlabelled_sentences",
]  # the names of _WHERE (tests/test_sentence.py keeps them equal)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:
    from .data import unlabelled_sentences
    from .encoder import SentenceEncoder, SentenceEncoderOutput, is_sentence_transformer, sentence_batches
    from .evaluate import evaluate_stsb, throughput
    from .run import DEFAULT_DISTILL, compress, default_distill_config, distill, sentence_loader
    from .saving import save
