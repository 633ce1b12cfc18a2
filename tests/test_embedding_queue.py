"""Which slice the widget embeds next (:mod:`napari_segany.embedding_queue`)."""

from __future__ import annotations

import numpy as np

from napari_segany.embedding_queue import EmbeddingQueue, prefetch_order


def test_the_slice_on_screen_comes_first_then_neighbours_then_everything() -> None:
    assert prefetch_order(5, 10, radius=2) == [5, 6, 4, 7, 3]
    assert prefetch_order(0, 3, radius=2) == [0, 1, 2]
    queue = EmbeddingQueue(10, radius=1)
    queue.look_at(7)
    done = np.zeros(10, dtype=bool)
    assert queue.wanted() == [7, 8, 6]
    done[7] = True
    assert queue.next(done) == 8
    queue.want_all()
    assert queue.wanted()[:3] == [7, 8, 6] and sorted(queue.wanted()) == list(range(10))
    done[:] = True
    assert queue.next(done) is None
