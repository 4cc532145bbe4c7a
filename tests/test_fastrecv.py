"""The over-reading frame buffer must hand websocket-client exactly the bytes
it asks for, whatever the socket's read boundaries."""

import random
import socket
import threading

import pytest
import websocket
from hypothesis import given, settings, strategies as st

from feedsup.workers.fastrecv import DEFAULT_MAX_FRAME, FrameTooLarge, OverReader, install


def chunked_source(data: bytes, cuts: list[int]):
    """A recv() that returns data in pieces ending at the given cut points."""
    pieces = []
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        pieces.append(data[last:cut])
        last = cut
    it = iter(pieces)

    def recv(_n: int) -> bytes:
        return next(it, b"")
    return recv


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=30), st.data())
def test_any_read_boundaries_yield_the_exact_requested_slices(sizes, data):
    blob = random.Random(len(sizes)).randbytes(sum(sizes))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(blob)), max_size=40))
    reader = OverReader(chunked_source(blob, cuts), chunk=4096)
    pos = 0
    for size in sizes:
        assert reader.recv_strict(size) == blob[pos:pos + size]
        pos += size
    assert reader.buffered() == 0


def test_closed_socket_raises_connection_closed():
    reader = OverReader(chunked_source(b"abc", []))
    assert reader.recv_strict(2) == b"ab"
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        reader.recv_strict(5)


def test_real_websocket_frames_across_boundaries():
    """A hand-framed server writes many small and large frames in odd-sized
    TCP writes; websocket-client with the over-reader decodes them all."""
    messages = [bytes([65 + i % 26]) * size for i, size in
                enumerate([1, 125, 126, 127, 65535, 65536, 70000, 3] * 5)]
    wire = b"".join(_server_frame(m) for m in messages) + _server_close(1000)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = [line.split(b": ")[1] for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key")][0]
            conn.sendall(_handshake(key))
            rng = random.Random(7)
            pos = 0
            while pos < len(wire):
                step = rng.randint(1, 9000)
                conn.sendall(wire[pos:pos + step])
                pos += step
            try:
                conn.recv(1024)   # the client's close reply
            except OSError:
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
        install(ws, chunk=4096)
        got = []
        while True:
            opcode, payload = ws.recv_data(True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            got.append(payload)
        assert got == messages
        ws.close()
    finally:
        listener.close()
        server.join(timeout=5)


def _server_frame(payload: bytes, opcode: int = 2) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


def _server_close(code: int) -> bytes:
    return _server_frame(code.to_bytes(2, "big"), opcode=8)


def _handshake(key: bytes) -> bytes:
    import base64
    import hashlib
    accept = base64.b64encode(hashlib.sha1(key.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def test_before_block_runs_only_when_the_socket_must_be_read():
    calls = []
    reader = OverReader(chunked_source(b"abcdefgh", [4]), chunk=4, before_block=lambda: calls.append(1))
    assert reader.recv_strict(2) == b"ab"      # needs a socket read
    assert len(calls) == 1
    assert reader.recv_strict(2) == b"cd"      # served from the buffer
    assert len(calls) == 1
    assert reader.recv_strict(4) == b"efgh"    # buffer empty: read again
    assert len(calls) == 2


# -- hostile frame sizes (the cap is checked before anything is allocated) ----

def _serve_wire(wire: bytes):
    """A one-shot WebSocket server writing ``wire`` after the handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = [line.split(b": ")[1] for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key")][0]
            conn.sendall(_handshake(key) + wire)
            try:
                conn.recv(1024)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _recv_all(wire: bytes, max_frame: int) -> tuple[list[bytes], Exception | None]:
    listener, thread = _serve_wire(wire)
    got: list[bytes] = []
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{listener.getsockname()[1]}/", timeout=5)
        install(ws, chunk=4096, max_frame=max_frame)
        try:
            while True:
                opcode, payload = ws.recv_data(True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return got, None
                got.append(payload)
        except websocket.WebSocketException as exc:
            return got, exc
        finally:
            ws.shutdown()
    finally:
        listener.close()
        thread.join(timeout=5)


def test_a_header_claiming_2_62_bytes_ends_the_connection_without_allocating():
    wire = _server_frame(b"ok") + bytes([0x82, 127]) + (1 << 62).to_bytes(8, "big") + b"x" * 100
    got, exc = _recv_all(wire, max_frame=1 << 20)
    assert got == [b"ok"]
    assert isinstance(exc, FrameTooLarge)
    assert "4611686018427387904" in str(exc) and "1048576" in str(exc)


def test_a_frame_over_the_cap_is_refused_and_one_at_the_cap_passes():
    cap = 70_000
    got, exc = _recv_all(_server_frame(b"a" * cap) + _server_frame(b"b" * (cap + 1)), max_frame=cap)
    assert got == [b"a" * cap]
    assert isinstance(exc, FrameTooLarge)


def test_fragments_adding_up_past_the_cap_are_refused():
    cap = 10_000
    part = b"c" * 4000
    # text frame without FIN, then continuation frames: 12,000 bytes in all
    wire = bytes([0x01, 126]) + len(part).to_bytes(2, "big") + part
    wire += bytes([0x00, 126]) + len(part).to_bytes(2, "big") + part
    wire += bytes([0x80, 126]) + len(part).to_bytes(2, "big") + part
    wire += _server_close(1000)
    got, exc = _recv_all(wire, max_frame=cap)
    assert got == []
    assert isinstance(exc, FrameTooLarge)
    ok, exc = _recv_all(wire, max_frame=12_000)
    assert ok == [part * 3] and exc is None


def test_default_cap_is_a_few_megabytes():
    assert 1 << 20 <= DEFAULT_MAX_FRAME <= 16 << 20


# -- the reading loop's fast path (next_message) ---------------------------------

def _fragmented(payload: bytes) -> bytes:
    half = len(payload) // 2
    return bytes([0x01, half]) + payload[:half] + bytes([0x80, len(payload) - half]) + payload[half:]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["text", "binary", "pong", "fragmented"]),
                          st.sampled_from([0, 1, 125, 126, 127, 300, 65535, 65536, 70000])),
                min_size=1, max_size=25), st.data())
def test_next_message_with_websocket_client_behind_it_yields_every_message_in_order(frames_, data):
    """The worker's loop: take whole data frames from the buffer, anything
    else through websocket-client's recv_data on the same buffer. Whatever
    the frames and the read boundaries, the messages come out as sent."""
    expected, wire = [], b""
    for i, (kind, size) in enumerate(frames_):
        payload = bytes([65 + i % 26]) * (min(size, 120) if kind in ("pong", "fragmented") else size)
        if kind == "fragmented":
            wire += _fragmented(payload)
        else:
            wire += _server_frame(payload, {"text": 1, "binary": 2, "pong": 10}[kind])
        expected.append((kind == "pong", payload))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(wire)), max_size=30))
    reader = OverReader(chunked_source(wire, cuts), chunk=data.draw(st.sampled_from([64, 4096, 65536])))
    ws = websocket.WebSocket(skip_utf8_validation=True)
    ws.frame_buffer = websocket._abnf.frame_buffer(reader.recv_strict, True)
    got = []
    for _ in expected:
        payload = reader.next_message()
        if payload is None:
            opcode, payload = ws.recv_data(True)
            got.append((opcode == websocket.ABNF.OPCODE_PONG, bytes(payload)))
        else:
            got.append((False, payload))
    assert got == expected
    assert reader.buffered() == 0


def test_next_message_leaves_masked_oversized_and_cut_frames_to_websocket_client():
    masked = bytes([0x81, 0x80 | 3]) + b"\x01\x02\x03\x04" + b"abc"
    for wire in (masked, _server_frame(b"x" * 70000), _server_frame(b"x" * 300)[:3],
                 _server_frame(b"x" * 300)[:200], bytes([0xC1, 1]) + b"x"):   # RSV1 set
        reader = OverReader(chunked_source(wire, []))
        reader._buf, reader._pos = wire, 0
        assert reader.next_message() is None
        assert reader.buffered() == len(wire)      # nothing consumed
    reader = OverReader(chunked_source(b"", []), max_frame=100)
    reader._buf = _server_frame(b"x" * 200)
    assert reader.next_message() is None            # over the cap: websocket-client's path refuses it
