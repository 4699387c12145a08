"""Where Flagstone keeps what it computes once and reuses (embeddings, exported models)."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FLAGSTONE_CACHE``, else ``$XDG_CACHE_HOME/flagstone``, else ``~/.cache/flagstone``."""
    if os.environ.get("FLAGSTONE_CACHE"):
        return Path(os.environ["FLAGSTONE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "flagstone"
