"""Arguments of config files, big_vision style: `configs/x.py:tiny` or `x.py:method=knn,seed=1`.

`parse(arg, **defaults)` reads a comma-separated list of `key=value` and bare words. A bare word is
True for a boolean key (`tiny,stage2`), else the value of the first key (`tiny` = `variant=tiny`).
Values take the type of their default; an unknown key or a bad value is an error naming it.
"""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _convert(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"config argument {key}={text!r}: expected true or false")
        return text.lower() in _TRUE
    try:
        return type(default)(text)
    except ValueError as e:
        raise ValueError(
            f"config argument {key}={text!r}: expected {type(default).__name__}"
        ) from e


def parse(arg: str, **defaults: Any) -> ml_collections.ConfigDict:
    """The arguments in `arg` over `defaults` (which name every allowed key, first = positional)."""
    out = dict(defaults)
    positional = next(iter(defaults), None)
    seen_positional = False
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        key, sep, text = token.partition("=")
        if not sep:
            if isinstance(defaults.get(token), bool):
                out[token] = True
                continue
            if positional is None or seen_positional:
                raise ValueError(
                    f"config argument {token!r}: expected key=value among {list(defaults)}"
                )
            key, text, seen_positional = positional, token, True
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; expected one of {list(defaults)}")
        out[key] = _convert(key, text, defaults[key])
    return ml_collections.ConfigDict(out)
