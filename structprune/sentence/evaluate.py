"""How good and how fast a (pruned) SentenceTransformer is: STS-B correlation and sentences per second.

- :func:`evaluate_stsb`: Spearman (and Pearson) correlation between the cosine similarity of the two
  sentences' embeddings and the gold STS-B score, on a split of STS-B read through :mod:`structprune.data`
  (``$STRUCTPRUNE_GLUE_DIR`` or a ``data_dir``, else the Hub). No training on STS-B: the embeddings are
  used as they are, the way sentence-transformers' ``EmbeddingSimilarityEvaluator`` does.
- :func:`throughput`: sentences per second of ``st.encode`` for several models on the same sentences,
  measured alternately (model A, B, A, B, ...) so machine noise hits them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .encoder import check_batch_size, check_sentence_transformer, check_sentences


def _encode(st, texts: list[str], batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return st.encode(
            texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
        ).float()


def evaluate_stsb(st, *, split: str = "validation", data_dir=None, batch_size: int = 64,
                  limit: int | None = None) -> dict[str, float]:  # fmt: skip
    """``{"spearman", "pearson", "pairs"}`` of the cosine similarities of ``st``'s embeddings against the STS-B
    gold scores of ``split`` (correlations as fractions, 1.0 = perfect).

    Example::

        evaluate_stsb(st)["spearman"]      # all-MiniLM-L6-v2 on the validation split: about 0.87
    """
    from ..data import compute_metrics, load_split

    check_sentence_transformer(st)
    check_batch_size(batch_size)
    data = load_split("stsb", split, data_dir)
    if limit is not None:
        data = data.select(range(min(int(limit), len(data))))
    first, second = (check_sentences(data[key], key) for key in ("sentence1", "sentence2"))
    a, b = _encode(st, first, batch_size), _encode(st, second, batch_size)
    similarity = F.cosine_similarity(a, b, dim=-1).cpu().numpy()  # [N]
    metrics = compute_metrics("stsb", similarity, data["label"])
    return {"spearman": metrics["spearmanr"], "pearson": metrics["pearson"], "pairs": len(first)}


def throughput(models: Mapping[str, object], sentences: Sequence[str], *, batch_size: int = 32,
               warmup: int = 1, repeat: int = 3) -> dict[str, float]:  # fmt: skip
    """Sentences per second of ``st.encode(sentences, batch_size=batch_size)`` for each SentenceTransformer of
    ``models``: the median of ``repeat`` timed passes over all the sentences after ``warmup`` untimed ones,
    the models taking turns. Uses the current torch threads.

    Example::

        throughput({"dense": dense, "pruned": pruned}, sentences, batch_size=32)   # {'dense': 410.2, ...}
    """
    texts = check_sentences(sentences)
    check_batch_size(batch_size)
    for st in models.values():
        check_sentence_transformer(st)
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + repeat):
        for name, st in models.items():
            start = time.perf_counter()
            _encode(st, texts, batch_size)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: len(texts) / statistics.median(t) for name, t in times.items()}
