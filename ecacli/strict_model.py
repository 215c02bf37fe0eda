"""The pydantic base of every spec section: strict types, frozen, unknown keys refused with the closest known one."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from ecacli.errors import cut


def suggest(word: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class StrictModel(BaseModel):
    """Base for spec sections: unknown keys are errors that name the closest known key."""

    model_config = ConfigDict(strict=True, frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key '{key}'.{hint} Allowed keys: {allowed}.",
                        {"key": cut(str(key)), "hint": suggest(str(key), known), "allowed": ", ".join(known)},
                    )
        return data
