"""Rewrite a fast tokenizer's ``tokenizer.json`` to keep a subset of its ids: pure functions on the JSON.

A Hugging Face fast tokenizer is a ``tokenizers.Tokenizer`` whose whole state serializes to one JSON
document (``tokenizer.backend_tokenizer.to_str()``). Vocabulary pruning keeps some of its ids and numbers
them ``0..n-1`` in their old order; this module rewrites every place the document names an id:

- the model's vocabulary: WordPiece and BPE ``{token: id}``; Unigram ``[[piece, score], ...]`` (id = position)
  and its ``unk_id``; BPE merges whose parts or result are dropped are removed (the library refuses a merge
  naming a token it does not have);
- ``added_tokens`` (special tokens and user-added ones, all kept);
- the post-processor's special-token ids (``TemplateProcessing``, ``BertProcessing``, ``RobertaProcessing``,
  inside ``Sequence``) and the padding ``pad_id``.

Normalizer, pre-tokenizer and decoder hold no ids and stay as they are. :func:`required_ids` names the ids
that must survive whatever the text (special and added tokens, the unknown token, a BPE's base alphabet such
as the 256 bytes of byte-level BPE, byte-fallback pieces); :func:`merge_closure` adds what a BPE needs to
still build each kept token.
"""

from __future__ import annotations

import copy

SUPPORTED_MODELS = ("WordPiece", "BPE", "Unigram")
_ID_FREE_PROCESSORS = ("ByteLevel",)


class UnsupportedTokenizer(ValueError):
    """The tokenizer's model or post-processor is of a kind structprune cannot rewrite."""


def model_type(spec: dict) -> str:
    """The tokenizer model's type (``"WordPiece"``, ``"BPE"``, ``"Unigram"``), or raise
    :class:`UnsupportedTokenizer`."""
    kind = spec.get("model", {}).get("type")
    if kind not in SUPPORTED_MODELS:
        raise UnsupportedTokenizer(
            f"structprune can prune the vocabulary of WordPiece (BERT, ELECTRA, DistilBERT, MPNet), BPE (RoBERTa) "
            f"and Unigram/SentencePiece (XLM-RoBERTa, CamemBERT) tokenizers; this tokenizer's model is "
            f"{kind!r}, which it cannot rewrite."
        )
    return kind


def model_vocab(spec: dict) -> dict[str, int]:
    """``{token: id}`` of the tokenizer model's own vocabulary (added tokens not included)."""
    vocab = spec["model"]["vocab"]
    if model_type(spec) == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(vocab)}
    return dict(vocab)


def id_tokens(spec: dict) -> dict[int, str]:
    """``{id: token}`` of every id the tokenizer can emit: its model's vocabulary and its added tokens."""
    out = {i: t for t, i in model_vocab(spec).items()}
    for added in spec.get("added_tokens") or []:
        known = out.setdefault(added["id"], added["content"])
        if known != added["content"]:
            raise UnsupportedTokenizer(
                f"Id {added['id']} is {known!r} in the tokenizer's vocabulary but the added token "
                f"{added['content']!r}; the tokenizer is inconsistent."
            )
    return out


def _processor_tokens(pp: dict | None) -> list[str]:
    """The special tokens a post-processor inserts (by content)."""
    if not pp:
        return []
    kind = pp.get("type")
    if kind == "Sequence":
        return [t for sub in pp["processors"] for t in _processor_tokens(sub)]
    if kind == "TemplateProcessing":
        return [t for entry in pp["special_tokens"].values() for t in entry["tokens"]]
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [pp["sep"][0], pp["cls"][0]]
    if kind in _ID_FREE_PROCESSORS:
        return []
    raise UnsupportedTokenizer(
        f"The tokenizer's post-processor is {kind!r}; structprune can rewrite TemplateProcessing, "
        "BertProcessing, RobertaProcessing, ByteLevel and Sequences of them."
    )


def _merges(spec: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]


def _merged(spec: dict, a: str, b: str) -> str:
    """The token BPE makes of ``a`` and ``b`` (a continuing-subword prefix on ``b`` is dropped)."""
    prefix = spec["model"].get("continuing_subword_prefix") or ""
    return a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)


def required_ids(spec: dict) -> set[int]:
    """Ids a pruned tokenizer keeps whatever the text: every added token (the special tokens among them),
    the tokens the post-processor and the padding insert, the unknown token, byte-fallback pieces
    (``<0x00>``..``<0xFF>``) and, for BPE, every token no merge produces (its base alphabet: the 256
    byte symbols of byte-level BPE), so that any text stays encodable."""
    kind = model_type(spec)
    vocab = model_vocab(spec)
    tokens = id_tokens(spec)
    ids = {a["id"] for a in spec.get("added_tokens") or []}
    by_token = {t: i for i, t in tokens.items()}
    named = _processor_tokens(spec.get("post_processor"))
    if spec.get("padding"):
        named.append(spec["padding"]["pad_token"])
    model = spec["model"]
    if kind == "Unigram":
        if model.get("unk_id") is not None:
            ids.add(model["unk_id"])
    elif model.get("unk_token") is not None:
        named.append(model["unk_token"])
    missing = [t for t in named if t not in by_token]
    if missing:
        raise UnsupportedTokenizer(
            f"The tokenizer uses the token {missing[0]!r} (post-processor, padding or unknown token) but has "
            "no id for it; the tokenizer is inconsistent."
        )
    ids.update(by_token[t] for t in named)
    if model.get("byte_fallback"):
        ids.update(i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x") and t.endswith(">"))
    if kind == "BPE":
        produced = {_merged(spec, a, b) for a, b in _merges(spec)}
        ids.update(i for t, i in vocab.items() if t not in produced)
    return ids


def merge_closure(spec: dict, ids: set[int]) -> set[int]:
    """``ids`` plus, for a BPE, the parts of every merge that produces a kept token, recursively: a word
    whose tokens are all kept then goes through the same merges and tokenizes exactly as before (WordPiece
    and Unigram need nothing: a subset that contains the best segmentation still finds it)."""
    if model_type(spec) != "BPE":
        return set(ids)
    vocab = model_vocab(spec)
    token_of = {i: t for t, i in vocab.items()}
    parts: dict[str, list[tuple[str, str]]] = {}
    for a, b in _merges(spec):
        parts.setdefault(_merged(spec, a, b), []).append((a, b))
    out = set(ids)
    todo = [token_of[i] for i in ids if i in token_of]
    while todo:
        for pair in parts.get(todo.pop(), ()):
            for t in pair:
                if t in vocab and vocab[t] not in out:
                    out.add(vocab[t])
                    todo.append(t)
    return out


def _remap_processor(pp: dict | None, new_id: dict[str, int]) -> dict | None:
    if not pp:
        return pp
    kind = pp.get("type")
    if kind == "Sequence":
        pp["processors"] = [_remap_processor(sub, new_id) for sub in pp["processors"]]
    elif kind == "TemplateProcessing":
        for entry in pp["special_tokens"].values():
            entry["ids"] = [new_id[t] for t in entry["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        pp["sep"] = [pp["sep"][0], new_id[pp["sep"][0]]]
        pp["cls"] = [pp["cls"][0], new_id[pp["cls"][0]]]
    else:
        _processor_tokens(pp)  # raises for kinds that may hold ids
    return pp


def rewrite(spec: dict, kept: list[int] | set[int]) -> dict:
    """A copy of the tokenizer JSON ``spec`` that keeps the ids ``kept`` (which must include
    :func:`required_ids`), renumbered ``0..len(kept)-1`` in their old order.

    Example::

        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        kept = merge_closure(spec, required_ids(spec) | ids_seen_in_text)
        tokenizers.Tokenizer.from_str(json.dumps(rewrite(spec, kept)))
    """
    kind = model_type(spec)
    tokens = id_tokens(spec)
    order = sorted(kept)
    unknown = [i for i in order if i not in tokens]
    if unknown:
        raise ValueError(f"Cannot keep id {unknown[0]}: the tokenizer has no such id.")
    absent = sorted(required_ids(spec) - set(order))
    if absent:
        raise ValueError(f"The tokenizer needs the id {absent[0]} ({tokens[absent[0]]!r}); keep it.")
    new_of_old = {old: new for new, old in enumerate(order)}
    new_id = {tokens[old]: new for old, new in new_of_old.items()}
    out = copy.deepcopy(spec)
    model = out["model"]
    if kind == "Unigram":
        model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in new_of_old]
        # Unigram ids are positions: the kept pieces come first in the new numbering (added tokens outside
        # the model's vocabulary have ids past it, in both numberings).
        if any(new_of_old[i] != n for n, i in enumerate(i for i in order if i < len(spec["model"]["vocab"]))):
            raise UnsupportedTokenizer("The Unigram vocabulary and the added tokens' ids interleave.")
        if model.get("unk_id") is not None:
            model["unk_id"] = new_of_old[model["unk_id"]]
    else:
        model["vocab"] = {t: new_of_old[i] for t, i in model["vocab"].items() if i in new_of_old}
        if kind == "BPE":
            vocab = model["vocab"]
            model["merges"] = [
                m
                for m, (a, b) in zip(model["merges"], _merges(spec), strict=True)
                if a in vocab and b in vocab and _merged(spec, a, b) in vocab
            ]
    for added in out.get("added_tokens") or []:
        added["id"] = new_of_old[added["id"]]
    out["post_processor"] = _remap_processor(out.get("post_processor"), new_id)
    if out.get("padding"):
        out["padding"]["pad_id"] = new_id[out["padding"]["pad_token"]]
    return out
