"""Derive independent, reproducible seeds from tuples of integers."""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (any Python ints, negative ones included).

    Uses numpy's SeedSequence hashing, so (1, 2) and (2, 1) give unrelated seeds.
    """
    entropy = [int(p) & _MASK64 for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
