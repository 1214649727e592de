"""Small text formatters shared by the panes (durations, percentages, counts)."""

from __future__ import annotations

import math


def duration(seconds: float | None) -> str:
    """`3725` -> "1:02:05"; days are spelled out because runs last days; None/NaN -> "--"."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    text = f"{hours}:{minutes:02d}:{s:02d}" if hours or days else f"{minutes}:{s:02d}"
    return f"{days}d {text}" if days else text


def loss(value: float | None) -> str:
    if value is None:
        return "--"
    return f"{value:.4f}" if math.isfinite(value) else str(value)
