"""Shared memory between one HTTP front end and the engine: an anonymous memfd cut into slots.

Each front-end process owns one arena. It writes an image into free slots (a uint8 crop fills one
slot; a JPEG's bytes or a float32 tensor take as many contiguous slots as they need), sends the
engine only the offsets in a small message, and frees the slots when the engine's final answer for
that request arrives — never earlier, because until then the engine may still read them.

The memory has no name: ``os.memfd_create`` returns a file descriptor, which goes to the engine over
the Unix socket (SCM_RIGHTS). The kernel frees it when the last descriptor and mapping are gone, so
nothing is left behind after any exit or crash, and Docker's small default /dev/shm does not apply.
Pages are only allocated when first written, and first-fit allocation reuses the lowest slots, so a
front end's memory follows its peak number of images in flight, not the arena's size.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass

import numpy as np

# One slot holds the largest uint8 input crop of any layout (model.alexnet.ARCHS: 227 x 227 x 3 for
# alexnet2012; a unit test keeps the two in step). Front ends do not import the model (or torch).
SLOT_BYTES = 227 * 227 * 3


def _view(mapping: mmap.mmap, offset: int, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A NumPy view of ``mapping`` that holds it mapped: ``np.frombuffer`` keeps the buffer exported as
    long as the array (or any view of it) lives, so ``mapping.close()`` raises BufferError instead of
    unmapping memory a thread is still reading. ``np.ndarray(buffer=...)`` does not: the mapping
    closed under it, and the reader crashed (SIGSEGV)."""
    count = math.prod(shape)
    return np.frombuffer(mapping, dtype=dtype, count=count, offset=offset).reshape(shape)


class ArenaFull(Exception):
    """No run of free slots is long enough; the request is refused (503) rather than queued."""


@dataclass(frozen=True)
class Span:
    """Bytes [offset, offset + nbytes) of an arena, in ``slots`` whole slots starting at ``first``."""

    first: int
    slots: int
    offset: int
    nbytes: int


def arena_slot_count(queue_capacity: int, frontends: int, max_batch_size: int, max_images_per_request: int) -> int:
    """Slots per front end: its share of the engine queue plus a running batch, and room for the
    largest request of float32 tensors (4 slots per image)."""
    return max(math.ceil(queue_capacity / frontends) + max_batch_size, 4 * max_images_per_request + 8)


class Arena:
    """A memfd of ``slots`` x ``slot_bytes``, mapped here. ``fd`` is what the engine maps."""

    def __init__(self, slots: int, slot_bytes: int, name: str = "alexnet-arena") -> None:
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f"an arena needs at least one slot of at least one byte, got {slots} x {slot_bytes}")
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.size = slots * slot_bytes
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self._map = mmap.mmap(self.fd, self.size)
        self._free = bytearray(b"\x01") * slots  # 1 = free
        self._in_use = 0

    @property
    def used_slots(self) -> int:
        return self._in_use

    def allocate(self, nbytes: int) -> Span:
        """The first run of free slots that holds ``nbytes``; raises ArenaFull when there is none."""
        need = max(1, math.ceil(nbytes / self.slot_bytes))
        if need > self.slots:
            raise ArenaFull(f"{nbytes} bytes need {need} slots; the arena has {self.slots}")
        run = b"\x01" * need
        first = self._free.find(run)
        if first < 0:
            raise ArenaFull(f"no {need} free slots in a row ({self._in_use}/{self.slots} in use)")
        self._free[first : first + need] = b"\x00" * need
        self._in_use += need
        return Span(first, need, first * self.slot_bytes, nbytes)

    def free(self, span: Span) -> None:
        if self._free[span.first : span.first + span.slots] != b"\x00" * span.slots:
            raise RuntimeError(f"double free of slots {span.first}..{span.first + span.slots - 1}")
        self._free[span.first : span.first + span.slots] = b"\x01" * span.slots
        self._in_use -= span.slots

    def write(self, span: Span, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if view.nbytes != span.nbytes:
            raise ValueError(f"{view.nbytes} bytes for a span of {span.nbytes}")
        self._map[span.offset : span.offset + span.nbytes] = view

    def array(self, span: Span, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """A writable NumPy view of the span, to decode straight into it."""
        return _view(self._map, span.offset, shape, dtype)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still alive; the mapping goes with the process
            pass
        os.close(self.fd)


class ArenaView:
    """The engine's read side of one front end's arena, mapped from the descriptor it was sent."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)  # the mapping keeps the memory alive

    def array(self, offset: int, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if offset < 0 or offset + count > self.size:
            raise ValueError(f"span {offset}+{count} is outside the arena of {self.size} bytes")
        return _view(self._map, offset, shape, dtype)

    def bytes(self, offset: int, nbytes: int) -> memoryview:
        if offset < 0 or offset + nbytes > self.size:
            raise ValueError(f"span {offset}+{nbytes} is outside the arena of {self.size} bytes")
        return memoryview(self._map)[offset : offset + nbytes]

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a batch still holds a view; it goes when the batch does
            pass
