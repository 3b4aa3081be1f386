"""The shared-memory arena: first-fit runs of slots, no double use, the engine's view of the same bytes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from model.alexnet import ARCHS
from service.arena import SLOT_BYTES, Arena, ArenaFull, ArenaView, arena_slot_count


def test_a_slot_holds_the_largest_input_crop_of_every_layout_and_four_hold_a_float32_tensor():
    assert max(spec.input_size**2 * 3 for spec in ARCHS.values()) == SLOT_BYTES
    assert max(spec.input_size**2 * 3 * 4 for spec in ARCHS.values()) <= 4 * SLOT_BYTES


def test_first_fit_reuses_the_lowest_slots_and_frees_make_room_again():
    arena = Arena(8, 100)
    a, b, c = arena.allocate(100), arena.allocate(250), arena.allocate(1)
    assert (a.first, a.slots, b.first, b.slots, c.first, c.slots) == (0, 1, 1, 3, 4, 1)
    assert arena.used_slots == 5
    arena.free(b)
    d = arena.allocate(150)  # two slots: the lowest free run is where b was
    assert (d.first, d.slots) == (1, 2)
    with pytest.raises(ArenaFull, match="no 4 free slots in a row"):
        arena.allocate(400)  # 3 free slots in all, but not 4 in a row
    arena.free(a)
    arena.free(c)
    arena.free(d)
    assert arena.used_slots == 0 and arena.allocate(800).first == 0
    arena.close()


def test_freeing_twice_is_refused():
    arena = Arena(2, 10)
    span = arena.allocate(5)
    arena.free(span)
    with pytest.raises(RuntimeError, match="double free"):
        arena.free(span)
    arena.close()


def test_more_than_the_arena_is_refused_at_once():
    arena = Arena(2, 10)
    with pytest.raises(ArenaFull, match="the arena has 2"):
        arena.allocate(21)
    arena.close()


def test_the_engine_reads_what_the_front_end_wrote_through_the_passed_descriptor():
    arena = Arena(4, 48)
    crop = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    span = arena.allocate(crop.nbytes)
    arena.array(span, crop.shape, np.uint8)[...] = crop
    other = arena.allocate(5)
    arena.write(other, b"hello")
    view = ArenaView(os.dup(arena.fd))  # what the engine gets over SCM_RIGHTS
    np.testing.assert_array_equal(view.array(span.offset, crop.shape, np.uint8), crop)
    assert bytes(view.bytes(other.offset, 5)) == b"hello"
    with pytest.raises(ValueError, match="outside the arena"):
        view.array(3 * 48, (2, 48), np.uint8)
    view.close()
    arena.close()


def test_a_view_keeps_its_memory_mapped_through_close_on_both_sides():
    """A batch may still be reading a view when its front end's arena is closed: close must not unmap
    under it (it did, with views made by np.ndarray(buffer=...): a segfault on the next read)."""
    arena = Arena(4, 48)
    crop = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    span = arena.allocate(crop.nbytes)
    written = arena.array(span, crop.shape, np.uint8)
    written[...] = crop
    view = ArenaView(os.dup(arena.fd))
    read = view.array(span.offset, crop.shape, np.uint8)[1:]  # a view of the view holds it too
    view.close()
    arena.close()
    np.testing.assert_array_equal(read, crop[1:])  # still mapped
    written[0, 0, 0] = 200  # the front end's view, still writable
    del written, read
    view.close()  # nothing reads it now: this one unmaps
    with pytest.raises(ValueError, match="closed"):
        view.array(span.offset, crop.shape, np.uint8)


def test_slot_count_covers_a_share_of_the_queue_and_the_largest_float32_request():
    assert arena_slot_count(256, 1, 32, 32) == 256 + 32
    assert arena_slot_count(256, 16, 32, 32) == 4 * 32 + 8  # a full FP32 request still fits
