"""Pure statistics of the benchmark: medians, spreads, within-round ratios."""

from __future__ import annotations

import statistics

WIDE_SPREAD = 0.30  # (max - min) / median above this is called wide


def summarize(values):
    """Median, min, max, count and relative spread of the non-None values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    spread = (hi - lo) / med if med > 0 else 0.0
    return {"median": med, "min": lo, "max": hi, "n": len(vals), "spread": spread,
            "wide": spread > WIDE_SPREAD}


def round_ratios(num, den):
    """Per-round ratios num[r] / den[r], for rounds where both were measured."""
    out = []
    for a, b in zip(num, den):
        if a is not None and b is not None and b > 0:
            out.append(a / b)
    return out


def parse_size(text: str) -> int:
    """'0', '8', '64K', '1M', '64MiB', '1G' -> bytes (binary multiples)."""
    t = text.strip().upper().replace(" ", "")
    for suffix in ("IB", "B"):
        if t.endswith(suffix) and len(t) > len(suffix):
            t = t[: -len(suffix)]
            break
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1 << {"K": 10, "M": 20, "G": 30}[t[-1]]
        t = t[:-1]
    try:
        n = float(t)
    except ValueError:
        raise ValueError(f"bad size {text!r}: use e.g. 0, 8, 64K, 1M, 64M") from None
    if n < 0:
        raise ValueError(f"bad size {text!r}: negative")
    return int(n * mult)


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({parse_size(p) for p in text.split(",") if p.strip()})
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def fmt_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"
