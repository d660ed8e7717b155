"""The numpy steps of preprocessing, against plain reference implementations."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from gateway import imaging


def flood_fill_components(occupied: np.ndarray) -> set[frozenset[tuple[int, int]]]:
    """8-connected components by breadth-first search: the obvious, slow reference."""
    h, w = occupied.shape
    seen = np.zeros_like(occupied, dtype=bool)
    components = set()
    for y, x in zip(*np.nonzero(occupied), strict=True):
        if seen[y, x]:
            continue
        seen[y, x] = True
        cells, queue = [], deque([(int(y), int(x))])
        while queue:
            cy, cx = queue.popleft()
            cells.append((cy, cx))
            for ny in range(max(0, cy - 1), min(h, cy + 2)):
                for nx in range(max(0, cx - 1), min(w, cx + 2)):
                    if occupied[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        components.add(frozenset(cells))
    return components


def labelled_components(labels: np.ndarray) -> set[frozenset[tuple[int, int]]]:
    return {
        frozenset((int(y), int(x)) for y, x in zip(*np.nonzero(labels == label), strict=True))
        for label in np.unique(labels)
        if label != 0
    }


def spiral(size: int) -> np.ndarray:
    """One long winding stroke: the worst case for label propagation."""
    grid = np.zeros((size, size), dtype=bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        grid[top, left : right + 1] = True
        grid[top : bottom + 1, right] = True
        grid[bottom, left : right + 1] = True
        grid[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom:
            grid[top - 1, left] = True  # the link into the next, inner turn
    return grid


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.7])
def test_components_are_the_8_connected_ones(density):
    rng = np.random.default_rng(int(density * 100))
    for _ in range(40):
        shape = tuple(rng.integers(1, 48, size=2))
        occupied = rng.random(shape) < density
        labels = imaging._label_grid(occupied)
        assert labels.shape == occupied.shape
        assert ((labels > 0) == occupied).all()
        assert labelled_components(labels) == flood_fill_components(occupied)


@pytest.mark.parametrize(
    "occupied",
    [
        np.zeros((5, 7), dtype=bool),
        np.ones((48, 48), dtype=bool),
        np.eye(30, dtype=bool),  # joined only through corners
        np.eye(30, dtype=bool)[::-1],
        spiral(47),
        np.tile([[True, False], [False, False]], (12, 12)),  # specks two cells apart: never joined
        np.array([[True, False, True], [False, True, False]]),  # a V joined by its point
    ],
    ids=["empty", "full", "diagonal", "anti-diagonal", "spiral", "specks", "v"],
)
def test_shapes_that_stress_the_joining(occupied):
    labels = imaging._label_grid(occupied)
    assert labelled_components(labels) == flood_fill_components(occupied)
