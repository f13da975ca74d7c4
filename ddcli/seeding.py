"""Named, disjoint seed streams.

Every network ddcli initialises (an evaluated model, an expert, a teacher, a member of CSDM's
extractor pool, otgen's influence surrogate) draws its initial weights from a seed derived from
the user's ``--seed``, the *stream* it belongs to and its index. The streams are disjoint: no
evaluated model can start from the weights an expert or a teacher started from, whatever seeds
the user gives (0.1.0 used ``seed * 1000 + i`` everywhere, so evaluation model i began at
expert i's epoch-0 weights and the synthetic set was tuned against its judges' starting
points).
"""

from __future__ import annotations

import hashlib

STREAMS = ("eval", "expert", "teacher", "pool", "surrogate", "golden")
#: part of every cache key of trained networks (teachers, experts): caches made with 0.1.0's
#: overlapping seeds are not reused
SEED_SCHEME = "derive_seed/1"


def derive_seed(stream: str, seed: int, index: int = 0) -> int:
    """A 63-bit seed for member ``index`` of ``stream`` under the user's ``seed``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}")
    digest = hashlib.sha256(f"ddcli/{stream}/{int(seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
