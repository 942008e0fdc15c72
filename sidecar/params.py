"""The one rule for parameters given as text (`--param KEY=VALUE`, `/probe?param.KEY=VALUE`)."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import msgspec

from .schema import Invalid, short

__all__ = ["parse_value"]


def _not_a_number(token: str) -> NoReturn:
    raise Invalid(f'{token} is not a JSON number ("{token}" in quotes is text)')


def parse_value(raw: str) -> Any:
    """VALUE decoded as a run body's JSON is (msgspec), when it is JSON; else the string itself.

    So a value means the same as a param given in a body, and what a body refuses is refused here
    (`Invalid`, the caller's error) rather than reaching the plugin as something else: a number
    beyond a float's range (`1e999`, which Python's json reads as `inf`), `NaN` and `Infinity`
    (not JSON, though Python's json reads them as numbers; `"NaN"` in quotes is the text), and
    nesting too deep to decode. Other text that is not JSON is passed as the string it is.
    """
    try:
        return msgspec.json.decode(raw)
    except msgspec.ValidationError as exc:  # valid JSON, but a number out of range
        raise Invalid(f"{short(raw)} is invalid: {str(exc)[:1].lower()}{str(exc)[1:]}") from None
    except RecursionError:
        raise Invalid(f"{short(raw)} is invalid: nested too deeply") from None
    except msgspec.DecodeError:
        pass
    try:  # only to tell a non-finite number (refused) from text (kept)
        json.loads(raw, parse_constant=_not_a_number)
    except Invalid as exc:
        raise Invalid(f"{short(raw)} is invalid: {exc}") from None
    except (ValueError, RecursionError):
        pass
    return raw
