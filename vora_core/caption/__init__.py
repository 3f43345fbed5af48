"""Recaption: engines (hf, openai-compatible servers, vLLM), prompts, quality flags, the stage.

Importing this package registers the manifest view `captions`; the engines (torch, transformers,
vLLM) are imported only when used.
"""

from vora_core.caption import views  # noqa: F401 - registers the `captions` manifest view
