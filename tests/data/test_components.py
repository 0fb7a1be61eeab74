"""Connected components without scipy, checked against a plain BFS."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
import pytest

from distillery.data.components import component_labels, connected_components


def _bfs_components(mask: np.ndarray, ignore: int = 255) -> Counter:
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    found: Counter = Counter()
    for y in range(h):
        for x in range(w):
            if seen[y, x]:
                continue
            seen[y, x] = True
            c, size, q = mask[y, x], 0, deque([(y, x)])
            while q:
                cy, cx = q.popleft()
                size += 1
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and mask[ny, nx] == c:
                        seen[ny, nx] = True
                        q.append((ny, nx))
            if c != ignore:
                found[(int(c), size)] += 1
    return found


@pytest.mark.parametrize("seed", range(8))
def test_matches_bfs_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = [2, 3, 5][seed % 3]
    mask = rng.integers(0, k, (int(rng.integers(1, 30)), int(rng.integers(1, 40)))).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.1] = 255
    classes, sizes = connected_components(mask)
    assert Counter(zip(classes.tolist(), sizes.tolist(), strict=True)) == _bfs_components(mask)


def test_spirals_and_u_shapes_merge() -> None:
    """A U shape whose arms only meet at the bottom is one component; diagonals do not join."""
    mask = np.array([[1, 0, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=np.uint8)
    classes, sizes = connected_components(mask)
    got = sorted(zip(classes.tolist(), sizes.tolist(), strict=True))
    assert got == [(0, 2), (0, 3), (0, 3), (1, 1), (1, 7)]
    lab = component_labels(mask)
    assert lab[0, 0] == lab[0, 2] and lab[3, 3] != lab[2, 2]


def test_empty_and_all_ignore() -> None:
    assert connected_components(np.zeros((0, 0), np.uint8))[0].size == 0
    assert connected_components(np.full((3, 3), 255, np.uint8))[0].size == 0
