"""Fixtures the built-ins share in their ``contract_fixtures`` (see docs/writing_plugins.md)."""

from __future__ import annotations

from typing import Any

#: a small untrained ``unet`` (attention, GroupNorm, skip connections) on the stand-in's
#: 16x16 images, for the plugins whose target the stand-in model lacks (attention heads,
#: channels that do not feed a protected embedding, attention maps)
TINY_UNET: tuple[str, dict[str, Any]] = (
    "unet",
    {"base_channels": 8, "channel_mults": [1, 2], "num_heads": 2, "norm_groups": 4},
)
