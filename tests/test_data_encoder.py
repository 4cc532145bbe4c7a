"""The worker's record encoder (``frames.DataEncoder``) is a fast path of
``encode_data(encode_body(...))``: it must give the same bytes."""

from hypothesis import given, settings, strategies as st

from feedsup.ipc import frames

values = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=20),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(max_size=20), st.integers(0, (1 << 63) - 1),
       st.integers(0, (1 << 63) - 1), st.booleans(), st.integers(0, (1 << 64) - 1), values)
def test_the_encoder_gives_what_encode_data_of_encode_body_gives(topic, stream, major, minor, final, recv_ns, data):
    encoder = frames.DataEncoder(stream)
    want = frames.encode_data(topic.encode(), major, minor, final, frames.encode_body(topic, stream, recv_ns, data))
    assert encoder.encode(topic, major, minor, final, recv_ns, data) == want
    assert encoder.encode(topic, major, minor, final, recv_ns, data) == want     # cached topic
    (kind, tb, *_rest, body), = frames.iter_records(want)
    assert kind == frames.DATA and tb == topic.encode()
