"""Pruned checkpoints that load anywhere: save/load, model card, push to the Hub.

Example::

    sp.save_pretrained(model, "out/pruned", tokenizer=tok, card=sp.CardInfo(base_model="org/teacher"))
    model = sp.from_pretrained("out/pruned")                 # or AutoModel*.from_pretrained after import
    sp.push_to_hub(model, "me/pruned-model", tokenizer=tok)
"""

from . import registry
from .card import CardInfo, write_model_card
from .hub import push_to_hub
from .io import from_pretrained, save_pretrained
from .registry import adopt

registry.register_builtin()

__all__ = [
    "CardInfo",
    "adopt",
    "from_pretrained",
    "push_to_hub",
    "registry",
    "save_pretrained",
    "write_model_card",
]
