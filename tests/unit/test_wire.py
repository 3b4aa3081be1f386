"""Frames between front ends and the engine: round trips, the hello with its descriptor, limits."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket

import numpy as np
import pytest

from service import wire
from service.errors import DeadlineExceeded, QueueFull, ServiceError, error_from_kind


def test_messages_round_trip_through_frames():
    async def main():
        reader = asyncio.StreamReader()
        result = wire.Result(
            7, [wire.ImageResult(np.array([3, 1]), np.array([0.5, 0.25], np.float32), None, 1.0, 2.0, 4, "cpu")]
        )
        for message in (wire.Submit(7, 12.5, [wire.ImageRef("crop", 0, 150528)], 5), result, wire.Cancel(7)):
            reader.feed_data(wire.encode(message))
        reader.feed_eof()
        submit = await wire.read_message(reader)
        assert submit.images[0].kind == "crop" and submit.top_k == 5 and submit.deadline == 12.5
        got = await wire.read_message(reader)
        assert got.images[0].indices.tolist() == [3, 1] and got.images[0].decode == "cpu"
        assert isinstance(await wire.read_message(reader), wire.Cancel)
        with pytest.raises(asyncio.IncompleteReadError):
            await wire.read_message(reader)

    asyncio.run(main())


def test_per_request_messages_travel_as_extension_codes_with_every_field():
    logits = np.arange(4, dtype=np.float32)
    messages = [
        wire.Submit(9, 3.25, [wire.ImageRef("jpeg", 64, 1000, 6), wire.ImageRef("crop", 0, 150528)], 0, True),
        wire.Result(9, [wire.ImageResult(None, None, logits, 0.5, 1.5, 2, "gpu")]),
        wire.Result(10, None, "queue_full", "too many"),
    ]
    for message in messages:
        data = wire.encode(message)[wire.HEADER.size :]
        assert b"service.wire" not in data and type(message).__name__.encode() not in data
        back = pickle.loads(data)
        assert type(back) is type(message) and repr(back) == repr(message)
    assert pickle.loads(wire.encode(messages[1])[wire.HEADER.size :]).images[0].logits.tolist() == [0, 1, 2, 3]


def test_an_oversized_frame_is_refused_before_it_is_read():
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(wire.HEADER.pack(wire.MAX_FRAME + 1))
        with pytest.raises(ValueError, match="over the limit"):
            await wire.read_message(reader)

    asyncio.run(main())


def test_the_hello_carries_the_arena_descriptor_and_the_peer_is_this_user():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = os.memfd_create("t")
    os.write(fd, b"arena")
    wire.send_hello(left, 3, 1234, fd)
    frontend, pid, received = wire.receive_hello(right)
    assert (frontend, pid) == (3, 1234)
    assert os.pread(received, 5, 0) == b"arena"
    assert wire.peer_uid(right) == os.getuid()
    for f in (fd, received):
        os.close(f)
    left.close()
    right.close()


def test_a_hello_without_a_descriptor_or_with_another_protocol_is_refused():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left.sendall(wire.hello_bytes(0, 1))
    with pytest.raises(ValueError, match="0 descriptors"):
        wire.receive_hello(right)
    fd = os.memfd_create("t")
    socket.send_fds(left, [wire.HELLO.pack(wire.MAGIC, wire.PROTOCOL + 1, 0, 1)], [fd])
    with pytest.raises(ValueError, match="protocol"):
        wire.receive_hello(right)
    os.close(fd)
    left.close()
    right.close()


def test_errors_cross_processes_by_kind():
    assert isinstance(error_from_kind("queue_full", "m"), QueueFull)
    assert isinstance(error_from_kind("deadline_exceeded", "m"), DeadlineExceeded)
    error = error_from_kind("no_such_kind", "m")
    assert type(error) is ServiceError and error.status == 500 and error.message == "m"
