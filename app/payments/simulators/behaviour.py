"""The simulators' `POST /_sim/behaviour` body, checked the same way by each (apart from the package, which imports
the simulators)."""
from __future__ import annotations


def behaviour_update(payload: dict, defaults: dict, choices: dict) -> tuple[dict, str | None]:
    """A simulator's `/_sim/behaviour` body checked against its known keys: (the update, None) or ({}, the error).
    Keys with `choices` take one of them; the others are non-negative integers."""
    update = {}
    for key, value in payload.items():
        if key not in defaults:
            return {}, f"unknown behaviour {key!r}"
        if key in choices and value not in choices[key]:
            return {}, f"{key} must be one of {choices[key]}"
        if key not in choices and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return {}, f"{key} must be a non-negative integer"
        update[key] = value
    return update, None
