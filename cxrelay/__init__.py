"""cxrelay: relay H.264 from RTSP cameras to web browsers with as little delay as possible.

``from cxrelay import Relay, Config`` runs a relay inside an asyncio
application (docs/api.md). The names load on first use, so importing a pure
module such as ``cxrelay.config`` does not pull in the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["CameraConfig", "Config", "ConfigError", "Relay", "ServerConfig", "__version__",
           "load_config", "parse_config"]

if TYPE_CHECKING:
    from cxrelay.app import Relay
    from cxrelay.config import (
        CameraConfig,
        Config,
        ConfigError,
        ServerConfig,
        load_config,
        parse_config,
    )

_LAZY = {"Relay": "cxrelay.app", "CameraConfig": "cxrelay.config", "Config": "cxrelay.config",
         "ConfigError": "cxrelay.config", "ServerConfig": "cxrelay.config",
         "load_config": "cxrelay.config", "parse_config": "cxrelay.config"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cxrelay' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
