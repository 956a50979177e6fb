"""The base of every configuration model: strict, frozen, no unknown keys, a description on every field.

Prefect turns the flow's parameter model into the run form, so a field's description is what a user
reads in the UI; `extra="forbid"` and `strict=True` make a typo or a wrong type a clear error that
names the field instead of a silently ignored setting.
"""

import hashlib
import json

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    def config_hash(self) -> str:
        """A short digest of the settings, for registry tags and caching keys."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
