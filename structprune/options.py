"""Config dataclasses built from plain mappings (recipes, JSON): one place for the unknown-key error."""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar


class FromDict:
    """Mixin for the config dataclasses: ``Cls.from_dict(mapping)``; an unknown key is a ValueError naming
    the valid ones.

    Example::

        PruneSchedule.from_dict({"to": 0.25, "steps": 4})
    """

    options_name: ClassVar[str] = "option"

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.options_name} options must be a mapping, got {type(data).__name__}.")
        names = sorted(f.name for f in fields(cls))
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"Unknown {cls.options_name} option(s) {unknown}; valid options: {names}.")
        return cls(**data)
