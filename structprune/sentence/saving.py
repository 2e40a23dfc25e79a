"""Save a pruned SentenceTransformer as a folder ``SentenceTransformer(path)`` loads.

The folder is what ``st.save`` writes (``modules.json``, ``config_sentence_transformers.json``, the pooling
and normalisation modules' folders, the transformer and its tokenizer at the root) with the transformer
saved the way :func:`structprune.save_pretrained` saves it: per-layer sizes in ``config.json``, safetensors
only, and, for a non-uniform structure, the self-contained ``modeling_structprune.py`` that
``trust_remote_code=True`` runs where structprune is not installed. The model card (``README.md`` +
``structure.png``) says what was done (:func:`structprune.checkpoint.card.note_card`). Atomic, like
:func:`structprune.save_pretrained`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from ..arch import view
from ..checkpoint.card import CardInfo, recorded_card
from ..checkpoint.io import write_folder
from ..checkpoint.registry import base_model_type, is_stock
from .encoder import check_sentence_transformer

logger = logging.getLogger(__name__)

SENTENCE_TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction"]


def _pipeline(st) -> str:
    """The modules of ``st`` in words, e.g. ``Transformer (bert encoder, at most 256 tokens) -> Pooling (mean) ->
    Normalize``."""
    parts = []
    for i, module in enumerate(st):
        name = type(module).__name__
        if i == 0:
            name += (
                f" ({base_model_type(module.auto_model.config)} encoder, at most {st.max_seq_length} tokens)"
            )
        elif isinstance(mode := getattr(module, "pooling_mode", None), str | tuple | list):
            name += f" ({mode if isinstance(mode, str) else ', '.join(mode)})"
        parts.append(name)
    return " -> ".join(parts)


def usage_text(st, stock: bool) -> str:
    """The card's "How to load" section for a SentenceTransformer folder."""
    dim = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else None
    lines = [
        f"A sentence-transformers model: {_pipeline(st)}"
        + (f"; {dim}-dimensional sentence embeddings." if dim else "."),
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
    ]
    if stock:
        lines += [
            'model = SentenceTransformer("<this folder or repo>")  # a stock transformers encoder inside'
        ]
    else:
        lines += [
            "import structprune  # structprune's classes build the per-layer sizes (no code from the checkpoint runs)",
            'model = SentenceTransformer("<this folder or repo>")',
            "",
            "# without structprune: transformers runs the bundled modeling_structprune.py (torch + transformers only)",
            'model = SentenceTransformer("<this folder or repo>", trust_remote_code=True)',
        ]
    lines += ['embeddings = model.encode(["A sentence.", "Another one."])', "```", ""]
    return "\n".join(lines)


def sentence_card(st, info: CardInfo) -> CardInfo:
    """``info`` with the sentence-transformers defaults: library, pipeline tag, tags and how to load."""
    v = view(st[0].auto_model)
    return dataclasses.replace(
        info,
        library_name="sentence-transformers" if info.library_name == "transformers" else info.library_name,
        task=info.task or "sentence-similarity",
        tags=list(dict.fromkeys([*SENTENCE_TAGS, *info.tags])),
        usage=info.usage or usage_text(st, is_stock(v.structure, v.spec)),
    )


def save(st, path: str | os.PathLike, *, tokenizer="auto", card=None) -> Path:
    """Save the SentenceTransformer ``st`` (pruned by structprune or not) into ``path``, atomically; return it.

    ``SentenceTransformer(path)`` loads the folder after ``import structprune``, and anywhere with
    ``trust_remote_code=True`` (a uniform structure is a stock checkpoint that needs neither). The tokenizer is
    the model's own (``st.tokenizer``). ``card``: a :class:`structprune.CardInfo` adding to or overriding what
    the steps noted (``False``: no card). Called by :func:`structprune.save_pretrained` for a
    SentenceTransformer.

    Example::

        sp.save_pretrained(st, "minilm-pruned")          # this function
        SentenceTransformer("minilm-pruned").encode(["a sentence"])
    """
    model = check_sentence_transformer(st)
    if not (isinstance(tokenizer, str) and tokenizer == "auto"):
        raise ValueError(
            "A SentenceTransformer saves its own tokenizer; to save another one, set st.tokenizer = tokenizer "
            "first and leave tokenizer='auto'."
        )
    if card is not None and card is not False and not isinstance(card, CardInfo):
        raise TypeError(f"card must be a structprune.CardInfo, None or False, not {type(card).__name__}.")
    info = None if card is False else lambda: sentence_card(st, recorded_card(model, card or None))
    write_folder(model, path, lambda tmp: st.save(str(tmp), create_model_card=False), info)
    logger.info("saved SentenceTransformer (%s) to %s", type(model).__name__, path)
    return Path(path)
