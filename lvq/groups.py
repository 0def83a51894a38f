"""Column groups of a weight matrix, including a last partial group.

``in_features`` need not be a multiple of the group size (576 and 1536 on SmolLM2 with groups of
128): groups are ``[0, g), [g, 2g), ...`` and the last one holds the remainder.
"""
from __future__ import annotations


def group_bounds(in_features: int, group_size: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering range(in_features) in order."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return [(s, min(s + group_size, in_features)) for s in range(0, in_features, group_size)]


def num_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)
