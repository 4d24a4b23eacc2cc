"""Metadata filters, shared by every store: ``{"field": value}`` or ``{"field": {"$in": [...]}}``,
several fields meaning AND; values are strings, numbers, booleans or null."""
from __future__ import annotations

import math
from numbers import Real

__all__ = ["parse_filter", "check_scalar"]


def check_scalar(where: str, value) -> None:
    """Refuse a filter or metadata value that is not a finite JSON scalar (``where`` names it)."""
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, Real):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite; got {value!r}")
        return
    raise ValueError(f"{where} must be a string, number, boolean or null; got "
                     f"{type(value).__name__} {value!r}")


def parse_filter(filter) -> list[tuple[str, list]] | None:
    """``filter`` checked and normalised: ``[(field, values), ...]`` (several fields = AND, a
    field matches any of its values), ``None`` for no filter (``None`` or ``{}``). A malformed
    filter or an unknown operator raises ``ValueError`` naming it."""
    if filter is None:
        return None
    if not isinstance(filter, dict):
        raise ValueError("filter must be a dict such as {'field': value} or "
                         f"{{'field': {{'$in': [...]}}}}; got {type(filter).__name__}")
    if not filter:
        return None
    out = []
    for field, cond in filter.items():
        if not isinstance(field, str) or not field:
            raise ValueError(f"filter field names must be non-empty strings; got {field!r}")
        if field.startswith("$"):
            raise ValueError(f"filter operator {field!r} is not supported at the top level: "
                             "filters are {'field': value} or {'field': {'$in': [...]}}, "
                             "several fields meaning AND")
        if '"' in field:
            raise ValueError(f"filter field {field!r} must not contain a double quote")
        if isinstance(cond, dict):
            ops = list(cond)
            if ops != ["$in"]:
                unknown = [o for o in ops if o != "$in"] or ops
                raise ValueError(f"filter[{field!r}] uses unknown operator(s) {unknown!r}: the "
                                 "only operator is '$in' ({'field': {'$in': [...]}}), alone")
            values = cond["$in"]
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"filter[{field!r}]['$in'] must be a list of values; got "
                                 f"{type(values).__name__}")
            values = list(values)
            for j, v in enumerate(values):
                check_scalar(f"filter[{field!r}]['$in'][{j}]", v)
        elif isinstance(cond, (list, tuple)):
            raise ValueError(f"filter[{field!r}] is a list: to match any of several values "
                             f"write {{{field!r}: {{'$in': [...]}}}}")
        else:
            check_scalar(f"filter[{field!r}]", cond)
            values = [cond]
        out.append((field, values))
    return out
