"""openjanus: Janus-Pro in plain PyTorch.

Importing the package is cheap; heavy modules load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["JanusPipeline", "Engine", "EngineConfig", "ImageRequest", "ChatRequest", "Message", "SamplingParams",
           "ImageResult", "ChatResult", "JanusConfig", "Janus", "load_model", "save_model", "JanusProcessor"]
__version__ = "0.1.0"

_WHERE = {
    "JanusPipeline": "openjanus.inference.pipeline",
    "Engine": "openjanus.inference.engine",
    "EngineConfig": "openjanus.inference.engine",
    "ImageRequest": "openjanus.requests",
    "ChatRequest": "openjanus.requests",
    "Message": "openjanus.requests",
    "SamplingParams": "openjanus.requests",
    "ImageResult": "openjanus.requests",
    "ChatResult": "openjanus.requests",
    "JanusConfig": "openjanus.config",
    "Janus": "openjanus.model.janus",
    "load_model": "openjanus.checkpoints",
    "save_model": "openjanus.checkpoints",
    "JanusProcessor": "openjanus.processing",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'openjanus' has no attribute {name!r}")
