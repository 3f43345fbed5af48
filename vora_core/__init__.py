"""VoRA pipeline core: all logic, importable and testable without Prefect."""

import os

# img2dataset imports albumentations, which otherwise phones home for updates on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import vora_core.model.auto  # noqa: F401  registers model_type "vora" with transformers' Auto classes
from vora_core.errors import CatalogError, DataError, ModelError, StageError, VoraError

__all__ = ["CatalogError", "DataError", "ModelError", "StageError", "VoraError"]


def __getattr__(name: str):
    # `vora_core.generate(...)` without importing torch at `import vora_core` time.
    if name == "generate":
        from vora_core.eval.chat import generate

        return generate
    raise AttributeError(f"module 'vora_core' has no attribute {name!r}")
