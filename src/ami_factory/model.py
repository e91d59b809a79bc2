"""The base of every pydantic model in the package."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """A model whose validation schema is built at its first use, not at import: a handler uses two or
    three of the package's dozens of models, and building them all was a tenth of a cold start."""

    model_config = ConfigDict(defer_build=True)
