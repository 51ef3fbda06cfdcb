"""Facts from the environment that several plugins read."""

from __future__ import annotations

import os

#: environment variables that forbid downloads (weights, pipelines) when set to 1/true/yes
OFFLINE_VARS = ("DIFFBENCH_OFFLINE", "HF_HUB_OFFLINE")


def offline() -> bool:
    """True when downloads are off (``DIFFBENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` is 1/true/yes)."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in OFFLINE_VARS)
