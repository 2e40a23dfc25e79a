"""The config class of pruned models: the family's stock transformers config class under its own model type.

Built by :mod:`structprune._autoconfig` (which registers it with ``AutoConfig``) and copied into every
checkpoint's self-contained modeling file (the code below the marker, by
:mod:`structprune.checkpoint.remote_modeling`), so structprune and a checkpoint loaded without it build
the same class. Standard library only at import (transformers is imported when a class is built), and
nothing from structprune.
"""

from __future__ import annotations

# --- code ---
MODEL_TYPE_PREFIX = "structprune-"


def pruned_config_class(base_model_type: str, module: str, **attrs) -> type:
    """The config class of pruned ``base_model_type`` models (``StructPruneBertConfig`` for ``"bert"``): the
    stock config class under the model type ``structprune-<base_model_type>``, defined in ``module``, with
    the class attributes ``attrs`` added."""
    from transformers.models.auto import configuration_auto

    if base_model_type not in configuration_auto.CONFIG_MAPPING:
        raise ValueError(
            f"transformers has no model type {base_model_type!r}; pruned checkpoints can only be built for "
            "families transformers itself provides."
        )
    base_config = configuration_auto.CONFIG_MAPPING[base_model_type]
    return type(
        "StructPrune" + base_config.__name__,
        (base_config,),
        {
            "model_type": MODEL_TYPE_PREFIX + base_model_type,
            "structprune_base_model_type": base_model_type,
            "__module__": module,
            "__doc__": f"{base_config.__name__} of a pruned model (per-layer sizes in `structprune`).",
            **attrs,
        },
    )
