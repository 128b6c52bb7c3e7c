"""What `kiln serve` was asked for."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> float | None:
    """Seconds from "300", "5m", "1h30m", "90s" ("+" allowed; negative means forever); None if not one."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text.lstrip("+"):
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass
class ServerConfig:
    models: list[str] = field(default_factory=list)   # MODEL arguments (paths or store names)
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    cors: list[str] = field(default_factory=list)     # origins allowed besides the defaults
    keep_alive: float = 300.0                          # seconds a model stays loaded when idle
    max_loaded: int = 1
    queue: int = 16                                    # waiting requests per model, then 503
    n_ctx: int | None = None
    device: str = "auto"
    gpu_layers: int | None = None
    threads: int | None = None
    max_body: int = 8 << 20                            # request body limit in bytes
    store_home: Path | None = None                     # None: KILN_HOME / the default
    web_dir: Path = WEB_DIR
    verbose: bool = False
