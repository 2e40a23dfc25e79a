"""Config dataclasses built from plain mappings (recipes, JSON): one place for the unknown-key error, and for
other spellings of an option (``num_train_epochs`` for ``num_epochs``)."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import ClassVar


class FromDict:
    """Mixin for the config dataclasses: ``Cls.from_dict(mapping)``; an unknown key is a ValueError naming
    the valid ones.

    A class may also take other spellings of its options: ``aliases`` maps each one to the field it sets,
    and the class declares it as a ``dataclasses.InitVar`` with default None (taken as a keyword, never
    stored: ``asdict`` and the command line see only the field); its ``__post_init__(self, *spellings)``
    calls ``self.take_aliases(spellings)``. An alias and its field given together must agree.
    ``not_taken`` maps names users may try that the class deliberately lacks to a one-line reason, shown
    when they are passed.

    Example::

        PruneSchedule.from_dict({"to": 0.25, "steps": 4})
        DistillConfig.from_dict({"num_train_epochs": 2})   # an alias: the config records num_epochs=2
    """

    options_name: ClassVar[str] = "option"
    aliases: ClassVar[dict[str, str]] = {}
    not_taken: ClassVar[dict[str, str]] = {}

    def __new__(cls, *args, **kwargs):
        # Runs before the dataclass __init__ with the same arguments: the only place that knows which
        # options were passed (not just their values), to catch an alias that contradicts its field.
        if cls.aliases or cls.not_taken:
            cls._check_spellings(args, kwargs)
        return super().__new__(cls)

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.options_name} options must be a mapping, got {type(data).__name__}.")
        names = sorted(f.name for f in fields(cls))
        unknown = sorted(set(data) - set(names) - set(cls.aliases))
        if unknown:
            why = "".join(f" {k}: {cls.not_taken[k]}" for k in unknown if k in cls.not_taken)
            raise ValueError(f"Unknown {cls.options_name} option(s) {unknown}; valid options: {names}.{why}")
        return cls(**data)

    @classmethod
    def alias_value(cls, alias: str, value):
        """The value ``alias=value`` gives its field, or None when it sets nothing (a subclass converts)."""
        return value

    @classmethod
    def _check_spellings(cls, args: tuple, kwargs: dict) -> None:
        for name in kwargs:
            if name in cls.not_taken:
                raise TypeError(f"{cls.__name__} takes no {name!r}: {cls.not_taken[name]}")
        params = [f.name for f in cls.__dataclass_fields__.values()
                  if f.init and f._field_type is not dataclasses._FIELD_CLASSVAR]  # fmt: skip
        given = {**dict(zip(params, args, strict=False)), **kwargs}
        setters: dict[str, list[tuple[str, object, object]]] = {}  # field -> [(name, as passed, value)]
        for name, value in given.items():
            if name in cls.aliases and value is not None:
                converted = cls.alias_value(name, value)
                if converted is not None:
                    setters.setdefault(cls.aliases[name], []).append((name, value, converted))
        for target, found in setters.items():
            if target in given:
                found.insert(0, (target, given[target], given[target]))
            if any(v != found[0][2] for _, _, v in found):
                said = " and ".join(f"{n}={v!r}" for n, v, _ in found)
                raise ValueError(
                    f"{said} disagree: pass only one ({target} is the name {cls.__name__} keeps)."
                )

    def take_aliases(self, spellings: tuple) -> None:
        """Set the field of each alias given (the InitVar values ``__post_init__`` received, in order)."""
        names = [
            f.name for f in self.__dataclass_fields__.values() if f._field_type is dataclasses._FIELD_INITVAR
        ]
        for name, value in zip(names, spellings, strict=True):
            converted = None if value is None else self.alias_value(name, value)
            if converted is not None:
                setattr(self, self.aliases[name], converted)
