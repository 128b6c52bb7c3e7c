"""kiln runtime: chat with GGUF models through llama.cpp.

For desktop apps::

    from runtime import ChatModel
    model = ChatModel("model.gguf")            # load once
    for piece in model.chat(messages, stream=True):
        ...                                    # model.cancel() from any thread stops it
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

# A library prints nothing: log records reach whatever handlers the application sets up.
logging.getLogger(__name__).addHandler(logging.NullHandler())
logging.getLogger("llama.cpp").addHandler(logging.NullHandler())

__all__ = ["ChatModel", "Settings", "Stats"]

if TYPE_CHECKING:
    from .engine import ChatModel, Settings, Stats


def __getattr__(name: str):
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
