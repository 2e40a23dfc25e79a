"""Vocabulary pruning: keep the tokens a task's text uses, slice the embeddings, rewrite the tokenizer.

In a small encoder the word embeddings are much of the model (all-MiniLM-L6-v2: 11.7M of 22.7M
parameters) and head/FFN pruning leaves them whole. :func:`prune_vocab` keeps the special and added tokens,
the tokens that occur in some text (a task's training set) at least ``min_count`` times and any tokens named
in ``keep``; it slices the input embeddings (and a tied MLM decoder with its bias, which stay tied), updates
``config.vocab_size`` and the config's token ids, and returns a new fast tokenizer, of the same class, that
emits the new ids. The tokenizer rewriting is :mod:`structprune.surgery.tokenizer` (pure JSON functions).

Text made only of kept tokens tokenizes exactly as before (same tokens, renumbered), so the pruned model
gives the unpruned model's outputs on it. Text with dropped tokens degrades by tokenizer type: WordPiece
splits a word into the longest kept pieces it can, and a word it cannot split becomes ``[UNK]``; byte-level
BPE falls back to shorter kept merges and at worst to single bytes (never unknown); Unigram (SentencePiece)
picks the best segmentation into kept pieces, and a run of characters no kept piece covers becomes one
``<unk>``. :func:`vocab_coverage` measures how much of some text is covered. A re-split word can mislead the
model more than an unknown one ("theft" -> "the", "##ft"): on SST-2 validation, about 2% of the tokens are
dropped by a vocabulary from SST-2 train, and some sentences that contain them change their prediction.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import tokenizer as tk

logger = logging.getLogger(__name__)

_CHUNK = 1024  # texts encoded per batch
_PROBES = 64  # texts re-encoded with the new tokenizer to check it


def _check_tokenizer(tokenizer) -> dict:
    """The JSON of ``tokenizer``'s backend, or a TypeError saying to use a fast tokenizer."""
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise TypeError(
            f"prune_vocab needs a fast tokenizer (backed by the tokenizers library, saved as tokenizer.json); "
            f"got {type(tokenizer).__name__}. Load it with transformers.AutoTokenizer.from_pretrained(path), "
            "which returns the fast one when the folder has a tokenizer.json or a convertible vocabulary."
        )
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tk.model_type(spec)
    return spec


def _check_texts(texts) -> Iterable[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            "texts must be an iterable of strings (e.g. a task's training sentences), not one string."
        )
    try:
        return iter(texts)
    except TypeError:
        raise TypeError(f"texts must be an iterable of strings, got {type(texts).__name__}.") from None


def _encoder(tokenizer):
    """A copy of ``tokenizer``'s backend that neither truncates nor pads (counting sees every token)."""
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    encoder.no_truncation()
    encoder.no_padding()
    return encoder


def _encode(encoder, texts: Iterable[str]) -> Iterable[tuple[list[str], list[list[int]]]]:
    """``(texts, ids)`` per chunk of ``texts``, encoded without special tokens; a non-string is a TypeError."""
    it, seen = _check_texts(texts), 0
    while chunk := list(itertools.islice(it, _CHUNK)):
        for j, text in enumerate(chunk):
            if not isinstance(text, str):
                raise TypeError(f"texts[{seen + j}] is a {type(text).__name__}, not a string.")
        seen += len(chunk)
        yield chunk, [e.ids for e in encoder.encode_batch(chunk, add_special_tokens=False)]


def _count(tokenizer, texts, size: int) -> tuple[torch.Tensor, list[str], int]:
    """How often each id occurs in ``texts`` (``[size]``), the first texts (to check the result on), and how
    many texts there were."""
    counts = torch.zeros(size, dtype=torch.long)
    probes: list[str] = []
    n = 0
    for chunk, ids in _encode(_encoder(tokenizer), texts):
        flat = [i for row in ids for i in row]
        if flat:
            counts += torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=size)
        probes.extend(chunk[: _PROBES - len(probes)])
        n += len(chunk)
    if n == 0:
        raise ValueError("texts is empty: pass the text whose tokens the pruned vocabulary should keep.")
    return counts, probes, n


def _keep_ids(keep, by_token: dict[str, int]) -> set[int]:
    if isinstance(keep, str):
        keep = [keep]
    keep = list(keep)
    bad = [t for t in keep if not isinstance(t, str)]
    if bad:
        raise TypeError(f"keep must name tokens as strings, got {bad[0]!r}.")
    unknown = [t for t in keep if t not in by_token]
    if unknown:
        raise ValueError(
            f"keep names {len(unknown)} token(s) the tokenizer does not have: "
            f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}. Name vocabulary tokens "
            "(tokenizer.convert_ids_to_tokens shows them); to keep the pieces of a word, add it to texts."
        )
    return {by_token[t] for t in keep}


def _config_token_ids(config) -> dict[str, int]:
    """The config's ``*_token_id`` entries that hold an id (``pad_token_id``, ``bos_token_id``, ...)."""
    return {
        k: v
        for k, v in config.to_dict().items()
        if k.endswith("_token_id") and isinstance(v, int) and not isinstance(v, bool)
    }


@torch.no_grad()
def slice_vocab_(model: nn.Module, ids) -> nn.Module:
    """Keep rows ``ids`` (sorted original token ids) of ``model``'s vocabulary, in place; token ``ids[j]``
    becomes token ``j``.

    Slices the input embeddings and, when the model has an output projection over the vocabulary (an MLM
    decoder), its weight and bias; tied parameters are sliced once and stay shared. ``config.vocab_size``
    and the config's token ids (``pad_token_id``, ...) follow; a token id whose row is dropped becomes None.
    :func:`prune_vocab` calls it and rewrites the tokenizer to match.
    """
    emb = model.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise TypeError(
            f"{type(model).__name__}.get_input_embeddings() is not an nn.Embedding; cannot prune its vocabulary."
        )
    rows = emb.num_embeddings
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if len(ids) == 0 or bool((ids[1:] <= ids[:-1]).any()) or int(ids[0]) < 0 or int(ids[-1]) >= rows:
        raise ValueError(f"ids must be strictly increasing token ids in [0, {rows}), at least one.")
    new_of_old = {int(old): new for new, old in enumerate(ids.tolist())}
    out = model.get_output_embeddings()
    out = out if isinstance(out, nn.Linear) and out.out_features == rows else None
    old = [emb.weight] + ([out.weight, out.bias] if out is not None else []) + _vocab_params(model, rows)
    sliced = {
        id(p): nn.Parameter(p.index_select(0, ids.to(p.device)).clone(), requires_grad=p.requires_grad)
        for p in old
        if p is not None
    }
    # Every module holding one of those parameters (a decoder tied to the embeddings, a head's bias
    # shared with the decoder) gets the same sliced one: ties survive. `old` keeps the ids unique.
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in sliced:
                module._parameters[name] = sliced[id(p)]
    emb.num_embeddings = len(ids)
    if emb.padding_idx is not None:
        emb.padding_idx = new_of_old.get(emb.padding_idx)
    if out is not None:
        out.out_features = len(ids)
    config = model.config
    for key, value in _config_token_ids(config).items():
        if value < rows:
            if value not in new_of_old:
                logger.warning("config.%s (%d) is not kept; it becomes None", key, value)
            setattr(config, key, new_of_old.get(value))
    config.vocab_size = len(ids)
    return model


def _vocab_params(model: nn.Module, rows: int) -> list[nn.Parameter]:
    """The family's other parameters over the vocabulary (``ArchSpec.vocab_params``) that ``model`` has."""
    from ..arch.spec import spec_for

    config = model.config
    spec = spec_for(
        getattr(config, "structprune_base_model_type", None) or getattr(config, "model_type", None)
    )
    found = []
    for path in spec.vocab_params if spec is not None else ():
        try:
            p = model.get_parameter(path)
        except AttributeError:
            continue
        if p.shape[0] == rows:
            found.append(p)
    return found


def _rebuild(tokenizer, spec: dict, new_of_old: dict[int, int]):
    """A tokenizer of ``tokenizer``'s class whose backend is the JSON ``spec``, loaded the way
    ``AutoTokenizer`` will load it from a saved folder (so what is returned is what reloads)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in set(getattr(tokenizer, "vocab_files_names", {}).values()) - {"tokenizer.json"}:
            Path(tmp, name).unlink(missing_ok=True)  # vocab.txt, sentencepiece.bpe.model, ...: old ids
        Path(tmp, "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        config_file = Path(tmp, "tokenizer_config.json")
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            if isinstance(config.get("added_tokens_decoder"), dict):
                config["added_tokens_decoder"] = {
                    str(new_of_old[int(i)]): v
                    for i, v in config["added_tokens_decoder"].items()
                    if int(i) in new_of_old
                }
            config_file.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        new = type(tokenizer).from_pretrained(tmp)
    new.name_or_path = tokenizer.name_or_path
    new.init_kwargs["name_or_path"] = tokenizer.name_or_path
    if hasattr(new, "vocab_file"):
        new.vocab_file = None  # it named a file of the temporary folder
    return new


def _verify(old_tok, new_tok, spec: dict, new_of_old: dict[int, int], probes: list[str]) -> None:
    """The rebuilt tokenizer has the intended vocabulary and special tokens and encodes fully kept text as
    the original does, renumbered; a RuntimeError otherwise (a transformers class rebuilt it differently)."""
    want = {t: i for i, t in tk.id_tokens(spec).items()}
    got = new_tok.get_vocab()
    problem = None
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()), key=str)[:3]
        problem = f"its vocabulary differs from the intended one ({diff})"
    for token in old_tok.all_special_tokens:
        if problem is None and new_tok.convert_tokens_to_ids(token) != want.get(token):
            problem = f"the special token {token!r} has id {new_tok.convert_tokens_to_ids(token)}"
    for text in probes:
        if problem is not None:
            break
        before = old_tok(text, truncation=True)["input_ids"]
        if all(i in new_of_old for i in before):
            after = new_tok(text, truncation=True)["input_ids"]
            if after != [new_of_old[i] for i in before]:
                problem = f"it encodes {text[:60]!r} differently"
    if problem:
        raise RuntimeError(
            f"The pruned {type(new_tok).__name__} does not match the pruned vocabulary: {problem}. This "
            "tokenizer class rebuilds its backend in a way structprune does not handle; please report it."
        )


def prune_vocab(
    model: nn.Module,
    tokenizer,
    texts: Iterable[str],
    *,
    min_count: int = 1,
    keep: Iterable[str] = (),
    source: str | None = None,
):
    """Keep only the tokens ``texts`` use; return ``(model, tokenizer)``: the model pruned in place (like
    :func:`structprune.prune_`) and a new tokenizer of the same class (the one passed in is left as it was).

    Kept: the special and added tokens, the tokens that occur at least ``min_count`` times in ``texts`` (any
    iterable of strings, e.g. a task's training sentences, each side of a pair separately), the tokens named
    in ``keep``, the ids the config names (``pad_token_id``, ...) and those below the padding id (RoBERTa
    counts positions from it), and whatever the tokenizer needs to stay able to encode any text (a BPE's base
    alphabet: all 256 byte symbols for byte-level BPE; the merges that build each kept token). Kept tokens are
    renumbered in their old order. Supports WordPiece (BERT family, MPNet), BPE (RoBERTa) and Unigram
    (XLM-RoBERTa, CamemBERT) fast tokenizers. Text made only of kept tokens gives exactly the unpruned
    outputs; see this module's docstring for text with dropped tokens, :func:`vocab_coverage` to measure it.
    The folder ``save_pretrained`` writes (pass the returned tokenizer) loads with ``AutoTokenizer`` and
    ``AutoModel*``; vocabulary pruning composes with :func:`structprune.prune_` in either order. The model card
    :func:`structprune.save_pretrained` writes says how many of the original tokens were kept, ``min_count``
    and how many texts they came from (``source`` names them, e.g. ``"SST-2 train"``).

    Example::

        model, tokenizer = sp.prune_vocab(model, tokenizer, train_sentences, min_count=1)
        sp.save_pretrained(model, "out", tokenizer=tokenizer)
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1 (occurrences in texts), got {min_count!r}.")
    if source is not None and not isinstance(source, str):
        raise TypeError(f"source names where texts came from (a string, for the model card), got {source!r}.")
    spec = _check_tokenizer(tokenizer)
    tokens = tk.id_tokens(spec)
    size = max(tokens) + 1
    emb = model.get_input_embeddings()
    rows = getattr(emb, "num_embeddings", None)
    vocab_size = getattr(model.config, "vocab_size", None)
    if rows is None or vocab_size != rows:
        raise ValueError(
            f"The model's input embeddings ({rows} rows) and config.vocab_size ({vocab_size}) disagree; "
            "the model is inconsistent."
        )
    if size > rows:
        raise ValueError(
            f"The tokenizer emits ids up to {size - 1} but the model embeds only {rows} tokens: the tokenizer "
            "does not belong to this model (or the model's vocabulary was pruned already: pass the tokenizer "
            "prune_vocab returned)."
        )
    by_token = {t: i for i, t in tokens.items()}
    wanted = _keep_ids(keep, by_token)
    counts, probes, n_texts = _count(tokenizer, texts, size)
    kept = set(torch.nonzero(counts >= min_count).flatten().tolist())
    kept |= wanted | tk.required_ids(spec)
    config_ids = _config_token_ids(model.config)
    kept |= {i for i in config_ids.values() if i in tokens}
    pad = config_ids.get("pad_token_id")
    if pad is not None and pad < size:
        kept |= {i for i in range(pad + 1) if i in tokens}
    kept = tk.merge_closure(spec, kept)
    order = sorted(kept)
    new_of_old = {old: new for new, old in enumerate(order)}
    new_spec = tk.rewrite(spec, order)
    new_tokenizer = _rebuild(tokenizer, new_spec, new_of_old)
    _verify(tokenizer, new_tokenizer, new_spec, new_of_old, probes)
    slice_vocab_(model, order)  # the model changes only once the tokenizer is built and checked
    _note_vocabulary(model, len(order), rows, emb.embedding_dim, min_count, n_texts, source)
    logger.info(
        "kept %d of %d tokens (%d seen at least %d times in the text)",
        len(order),
        size,
        int((counts >= min_count).sum()),
        min_count,
    )
    return model, new_tokenizer


_ORIGINAL = "_structprune_vocab_original"  # on the model: the vocabulary size before its first pruning


def _note_vocabulary(model, kept: int, rows: int, dim: int, min_count: int, n_texts: int, source) -> None:
    """What the card says about the vocabulary (:func:`structprune.checkpoint.card.note_card`): the tokens
    kept of the original vocabulary (the one before the first pruning), min_count and the texts."""
    from ..checkpoint.card import note_card

    original = model.__dict__.setdefault(_ORIGINAL, _noted_original(model) or rows)  # survives copy.deepcopy
    times = "once" if min_count == 1 else f"{min_count} times"
    texts = f"{n_texts:,} text{'' if n_texts == 1 else 's'}" + (f" ({source})" if source else "")
    note_card(
        model,
        vocabulary=f"{kept:,} of {original:,} tokens kept: those occurring at least {times} (min_count "
        f"{min_count}) in {texts}, plus the special and required ones; word embeddings {(original - kept) * dim:,} "
        "parameters smaller",
    )


def _noted_original(model) -> int | None:
    """The original vocabulary size a reloaded model's card record names (``from_pretrained`` puts the record
    back; the plain attribute does not survive a save), so that pruning again after a reload still counts
    from the vocabulary before the first pruning."""
    from ..checkpoint.card import _NOTES

    text = (getattr(model, _NOTES, None) or {}).get("vocabulary") or ""
    found = re.match(r"[\d,]+ of ([\d,]+) tokens kept", text)
    return int(found.group(1).replace(",", "")) if found else None


@dataclass(frozen=True)
class VocabCoverage:
    """How much of some text a pruned vocabulary covers (:func:`vocab_coverage`)."""

    tokens: int
    """Tokens of the text under the original tokenizer (special tokens not counted)."""
    kept_tokens: int
    """Of those, the ones the pruned vocabulary keeps."""
    texts: int
    kept_texts: int
    """Texts made only of kept tokens: tokenized as before, so the pruned model's outputs are unchanged."""
    pruned_tokens: int
    """Tokens of the text under the pruned tokenizer (dropped tokens fall back to smaller pieces or unknown)."""
    unknown: int
    """Unknown tokens the pruned tokenizer emits (the original's unknown tokens included)."""

    @property
    def token_coverage(self) -> float:
        return self.kept_tokens / max(self.tokens, 1)

    @property
    def text_coverage(self) -> float:
        return self.kept_texts / max(self.texts, 1)

    @property
    def unknown_rate(self) -> float:
        return self.unknown / max(self.pruned_tokens, 1)


def vocab_coverage(tokenizer, pruned_tokenizer, texts: Iterable[str]) -> VocabCoverage:
    """Measure how ``pruned_tokenizer`` (from :func:`prune_vocab`) covers ``texts`` (e.g. a validation set),
    against the ``tokenizer`` it was pruned from.

    Example::

        cov = vocab_coverage(tokenizer, pruned, validation_sentences)
        cov.token_coverage, cov.text_coverage, cov.unknown_rate
    """
    spec = _check_tokenizer(tokenizer)
    _check_tokenizer(pruned_tokenizer)
    tokens = tk.id_tokens(spec)
    kept_vocab = pruned_tokenizer.get_vocab()
    kept = torch.zeros(max(tokens) + 1, dtype=torch.bool)
    kept[[i for i, t in tokens.items() if t in kept_vocab]] = True
    unk = pruned_tokenizer.unk_token_id
    pruned_encoder = _encoder(pruned_tokenizer)
    n = [0] * 6  # tokens, kept_tokens, texts, kept_texts, pruned_tokens, unknown
    for chunk, ids in _encode(_encoder(tokenizer), texts):
        for row in ids:
            hit = int(kept[row].sum()) if row else 0
            n[0], n[1], n[2], n[3] = n[0] + len(row), n[1] + hit, n[2] + 1, n[3] + (hit == len(row))
        for e in pruned_encoder.encode_batch(chunk, add_special_tokens=False):
            n[4] += len(e.ids)
            n[5] += sum(i == unk for i in e.ids) if unk is not None else 0
    return VocabCoverage(*n)


__all__ = ["VocabCoverage", "prune_vocab", "slice_vocab_", "vocab_coverage"]
