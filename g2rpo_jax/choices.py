"""Config fields that take one of a fixed set of names (rules, signals, aggregations)."""

import enum
from typing import TypeVar

_E = TypeVar("_E", bound=enum.Enum)


def as_enum(cls: type[_E], value: object, field: str) -> _E:
    """`cls(value)`, or a ValueError that names the field and lists the choices."""
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"{field} must be one of {choices}; got {value!r}") from None
