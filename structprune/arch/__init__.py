"""Architecture adapters: Hugging Face module names live here and nowhere else."""

from . import families  # noqa: F401  (registers the built-in families)
from .spec import ArchSpec, get_spec, register_architecture, resolve, supported_families
from .view import HiddenSites, LayerView, ModelView, Structure, view

__all__ = [
    "ArchSpec",
    "HiddenSites",
    "LayerView",
    "ModelView",
    "Structure",
    "get_spec",
    "register_architecture",
    "resolve",
    "supported_families",
    "view",
]
