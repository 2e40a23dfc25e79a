"""Save and load pruned checkpoints: config.json + safetensors + modeling file + tokenizer + model card."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import transformers
from torch import nn

from ..arch import Structure, view
from ..arch.spec import spec_for
from ..progress import hf_bars
from . import registry
from . import remote_modeling as rm
from .card import CARD_FILE, CardInfo, card_record, recorded_card, restore_card, write_model_card
from .files import CONFIG_FILE, PICKLE_SUFFIXES, atomic_directory, check_weights, read_config, recover

logger = logging.getLogger(__name__)

_PENDING_CONFIG = ".config.json.pending"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "vocab.json",
)


def _find_tokenizer(model: nn.Module):
    """The tokenizer of the folder the model was loaded from, when that folder is local and has one."""
    source = getattr(model.config, "_name_or_path", "") or ""
    if not source or not os.path.isdir(source):
        return None
    if not any(os.path.isfile(os.path.join(source, name)) for name in _TOKENIZER_FILES):
        return None
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:  # e.g. after structprune.prune_vocab
        raise ValueError(
            f"The tokenizer in {source} has {len(tokenizer)} tokens but the model embeds {rows}: its vocabulary "
            "was pruned. Pass the tokenizer prune_vocab returned: save_pretrained(model, path, tokenizer=...)."
        )
    return tokenizer


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tokenizer="auto",
    card=None,
    **kwargs,
) -> Path:
    """Save a (pruned) model so it loads everywhere, atomically; return the folder.

    Writes config.json (per-layer sizes in ``structprune``), ``model.safetensors``, the self-contained
    ``modeling_structprune.py`` (non-uniform structures only), the tokenizer and a README.md model card with a
    ``structure.png`` heatmap. The folder appears complete or not at all. ``tokenizer="auto"`` saves the
    tokenizer of the local folder the model was loaded from; pass one explicitly, or ``None`` to skip.
    The card says what structprune's steps noted on the model (:func:`structprune.compress`: method and
    budget; :func:`structprune.distill`: teacher, data, metrics); ``card``, a :class:`structprune.CardInfo`,
    adds to or overrides that (``False``: no card). Extra keyword arguments go to transformers'
    ``save_pretrained``. A sentence-transformers ``SentenceTransformer`` is saved as a folder
    ``SentenceTransformer(path)`` loads (:func:`structprune.sentence.save`).

    Example::

        sp.prune_(model, mask)
        sp.save_pretrained(model, "out/pruned", tokenizer=tok, card=sp.CardInfo(base_model="org/teacher"))
        sp.from_pretrained("out/pruned")
    """
    from ..sentence.encoder import is_sentence_transformer

    if is_sentence_transformer(model):  # a folder SentenceTransformer(path) loads (structprune.sentence)
        from ..sentence.saving import save

        return save(model, path, tokenizer=tokenizer, card=card, **kwargs)
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(
            f"save_pretrained expects a transformers PreTrainedModel (or a SentenceTransformer), got "
            f"{type(model).__name__}."
        )
    if card is not None and card is not False and not isinstance(card, CardInfo):
        raise TypeError(f"card must be a structprune.CardInfo, None or False, not {type(card).__name__}.")
    if isinstance(tokenizer, str) and tokenizer == "auto":
        tokenizer = _find_tokenizer(model)
        if tokenizer is None:
            logger.warning(
                "No tokenizer saved: the model was not loaded from a local folder with one. Pass tokenizer=... "
                "to save it beside the model."
            )
    write_folder(
        model,
        path,
        lambda tmp: model.save_pretrained(tmp, **kwargs),
        None if card is False else lambda: recorded_card(model, card or None),
        then=None if tokenizer is None else tokenizer.save_pretrained,
    )
    logger.info("saved %s to %s", type(model).__name__, path)
    return Path(path)


def write_folder(model: nn.Module, path: str | os.PathLike, write, card, then=None) -> None:
    """The one atomic save of a model folder (:func:`save_pretrained`, and a SentenceTransformer's).

    ``write(tmp)`` writes the files into a temporary folder while ``model``'s config is saved compact (the
    record's kept indices as strings of ranges); config.json is then set aside under another name, so a save
    killed from here on leaves no loadable folder; ``then(tmp)`` adds files (the tokenizer), ``card()`` gives
    the model card's CardInfo (None: no card); pickle files are refused, the weights checked, and the folder
    moves into place complete or not at all."""
    registry.adopt(model)  # the classes its structure saves and loads with
    source = getattr(model.config, "_name_or_path", None) or None
    with atomic_directory(path, source=source) as tmp:
        with hf_bars():
            rm.save_compact(model.config, lambda: write(tmp))
        # Until the folder is complete, its config.json has another name: a save killed part-way leaves a
        # temporary folder that no loader accepts as a model.
        os.replace(tmp / CONFIG_FILE, tmp / _PENDING_CONFIG)
        if then is not None:
            then(tmp)
        if card is not None:
            info = card()
            write_model_card(model, tmp, info)
            # the card's information as data too: a reloaded model keeps it (from_pretrained restores it)
            (tmp / CARD_FILE).write_text(json.dumps(card_record(info), indent=1, sort_keys=True) + "\n")
        pickles = [p.name for p in tmp.rglob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise RuntimeError(f"Refusing to write pickle files {pickles}; checkpoints are safetensors only.")
        check_weights(tmp)
        os.replace(tmp / _PENDING_CONFIG, tmp / CONFIG_FILE)


def _model_class(config, auto_class):
    if auto_class is not None:
        name = auto_class if isinstance(auto_class, str) else getattr(auto_class, "__name__", "")
        if not name.startswith("Auto") or not hasattr(transformers, name):
            raise ValueError(
                f"auto_class must be a transformers Auto class such as 'AutoModel', got {auto_class!r}."
            )
        return getattr(transformers, name)
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        return transformers.AutoModel
    name = architectures[0]
    base = registry.base_model_type(config)
    if name.startswith("StructPrune") and base in registry.model_types():
        classes = registry.model_classes(base)
        if name in classes:
            return classes[name]
    elif hasattr(transformers, name) and isinstance(getattr(transformers, name), type):
        return getattr(transformers, name)
    raise ValueError(
        f"config.json names the class {name!r}, which neither transformers nor structprune provides. Pass "
        "auto_class='AutoModelForSequenceClassification' (or another Auto class) to choose one."
    )


def _check_adopted(config: dict, path) -> None:
    """A non-uniform structure saved under a stock model type cannot be built by any loader: say why."""
    record = config.get(rm.CONFIG_KEY)
    if not record or str(config.get("model_type", "")).startswith(rm.MODEL_TYPE_PREFIX):
        return
    spec = spec_for(config.get("model_type"))
    if not registry.is_stock(Structure.from_dict(record, f"{path}/{CONFIG_FILE}"), spec):
        raise ValueError(
            f"{path} holds a pruned model with per-layer sizes under the stock model type "
            f"{config.get('model_type')!r} (it was saved with a plain model.save_pretrained before "
            "structprune.checkpoint.adopt(model)). Load the model you saved it from and save it again with "
            "structprune.save_pretrained(model, path)."
        )


def from_pretrained(path: str | os.PathLike, *, auto_class=None, **kwargs) -> transformers.PreTrainedModel:
    """Load a checkpoint saved by :func:`save_pretrained` (or any transformers checkpoint), strictly.

    Never runs code from the checkpoint (structprune's own classes build the pruned shapes); checks the
    files first, so a corrupt or truncated file is named in the error; any missing, unexpected or
    mis-shaped weight is an error rather than a warning. The class is the one recorded in config.json
    unless ``auto_class`` (e.g. ``"AutoModelForSequenceClassification"``) says otherwise.

    Example::

        model = sp.from_pretrained("out/pruned")
        model.config.structprune["heads"]   # original head ids kept per layer
    """
    if kwargs.pop("trust_remote_code", False):
        raise ValueError(
            "structprune.from_pretrained never runs code from a checkpoint; drop trust_remote_code (structprune "
            "builds pruned models itself)."
        )
    recover(path)  # a save of this folder killed half-way is finished first
    if os.path.isdir(path):
        _check_adopted(read_config(path), path)
        check_weights(path)
    elif os.path.exists(path) or os.path.isabs(path) or str(path).startswith("."):
        raise FileNotFoundError(
            f"{path} is not a folder; give a folder holding config.json and model.safetensors, or a Hub repo id."
        )
    config = kwargs.pop("config", None) or transformers.AutoConfig.from_pretrained(
        path, trust_remote_code=False
    )
    cls = _model_class(config, auto_class)
    try:
        with hf_bars():
            model, info = cls.from_pretrained(
                path, config=config, trust_remote_code=False, output_loading_info=True, **kwargs
            )
    except RuntimeError as err:
        if "mismatch" not in str(err):
            raise
        raise ValueError(
            f"The weights in {path} do not match the model built from its config.json (shapes differ; see the "
            "load report above): the config and the weights are out of step. Save the model again."
        ) from None
    problems = {key: sorted(value) for key, value in info.items() if value}
    if problems:
        raise ValueError(
            f"The weights in {path} do not match the model built from its config.json: {problems}"
        )
    v = view(model)  # checks the recorded structure against the loaded shapes
    if getattr(model.config, rm.CONFIG_KEY, None):  # in memory the kept indices are lists (stock classes too)
        setattr(model.config, rm.CONFIG_KEY, v.structure.to_dict())
    if os.path.isdir(path):
        restore_card(model, path)  # what the card said stays with the model: a later save or push keeps it
    model.eval()
    return model
