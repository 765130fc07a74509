"""The message format between the evaluator and a model's process, and the shared answer segment.

Everything a model's process sends is untrusted: a malformed message is a ``WireError``, never a
crash or a read outside the message; arrays read from the shared segment are copied out at once.
"""

from __future__ import annotations

import json
import mmap
import socket
import threading
import time

import numpy as np
import pytest

from harness._wire import SHARED_MIN, Channel, Scratch, WireError, decode, encode, frame
from harness.interactions import Interactions
from harness.sandbox import AnswerPacer, LocalModel, ModelProcess

ARRAYS = {
    "f64": np.linspace(0, 1, 12).reshape(3, 4), "f32": np.arange(5, dtype=np.float32),
    "i64": np.arange(-3, 3), "i32": np.arange(4, dtype=np.int32).reshape(2, 2),
    "i8": np.array([1, -1], np.int8), "b": np.array([True, False, True]),
    "empty": np.zeros((0, 7), np.float32),
}


@pytest.mark.parametrize("own", [True, False])
def test_arrays_of_every_dtype_come_back_equal_and_read_only(own):
    header, arrays = decode(encode({"op": "x", "n": 3}, ARRAYS), own=own)
    assert header == {"op": "x", "n": 3}
    assert list(arrays) == list(ARRAYS)
    for key, value in ARRAYS.items():
        assert arrays[key].dtype == value.dtype and np.array_equal(arrays[key], value)
        assert not arrays[key].flags.writeable
        assert arrays[key].flags.owndata == own


def _message(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "little") + head + payload


@pytest.mark.parametrize("message, reason", [
    (b"\x01\x00", "shorter than its header"),
    (_message({"a": 1})[:-1], "shorter than its header"),
    ((5).to_bytes(4, "little") + b"{nope", "not JSON"),
    (_message([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
    (_message({"arrays": [["x", "object", [1]]]}, b"\0" * 8), "is not allowed"),
    (_message({"arrays": [["x", "float64", [-1]]]}), "is not allowed"),
    (_message({"arrays": [["x", "float64", [4]]]}, b"\0" * 8), "frame ends before"),
    (_message({"arrays": [["x", "int8", [1]]]}, b"\0\0"), "after its last array"),
    (_message({"arrays": [["x"]]}), "malformed array entry"),
    (_message({"arrays": [["x", "int8", [1], 0]]}), "not in a shared segment"),
])
def test_malformed_messages_are_wire_errors(message, reason):
    with pytest.raises(WireError, match=reason):
        decode(message)


def _segment(nbytes: int) -> tuple[np.ndarray, mmap.mmap]:
    """The two sides of a segment in one process: the writer's bytes and the reader's mapping."""
    memory = mmap.mmap(-1, nbytes)
    return np.frombuffer(memory, np.uint8), memory


def test_large_arrays_go_through_the_segment_and_are_copied_out():
    writer, reader = _segment(4 * SHARED_MIN)
    big = np.random.default_rng(0).normal(size=(3, SHARED_MIN // 8 + 5))  # just over SHARED_MIN
    small = np.arange(10.0)
    message = frame({"ok": True}, {"scores": big, "gap": small}, writer)
    assert len(message) < 1000  # only the small array and the header crossed the socket
    header, arrays = decode(bytes(memoryview(message)[8:]), segment=reader)
    assert np.array_equal(arrays["scores"], big) and np.array_equal(arrays["gap"], small)
    writer[:] = 0  # the sender writes its next answer: what was read is unchanged
    assert np.array_equal(arrays["scores"], big)
    assert not arrays["scores"].flags.writeable


def test_arrays_that_do_not_fit_the_segment_go_over_the_socket():
    writer, reader = _segment(SHARED_MIN)
    big = np.ones((2, SHARED_MIN // 8))  # twice the segment
    message = frame({}, {"scores": big}, writer)
    assert len(message) > big.nbytes
    assert np.array_equal(decode(bytes(memoryview(message)[8:]), segment=reader)[1]["scores"], big)


def test_scratch_memory_is_reused_from_one_message_to_the_next():
    writer, reader = _segment(2 * SHARED_MIN)
    scratch = Scratch()
    first = np.full(SHARED_MIN // 8, 1.0)
    got1 = decode(bytes(memoryview(frame({}, {"s": first}, writer))[8:]), segment=reader,
                  into=scratch)[1]["s"]
    got2 = decode(bytes(memoryview(frame({}, {"s": first * 2}, writer))[8:]), segment=reader,
                  into=scratch)[1]["s"]
    assert np.shares_memory(got1, got2) and np.array_equal(got2, first * 2)
    assert np.array_equal(got1, first * 2)  # the documented price: valid until the next use


def test_an_array_said_to_lie_outside_the_segment_is_a_wire_error():
    _, reader = _segment(SHARED_MIN)
    for at in (-8, SHARED_MIN - 4):
        with pytest.raises(WireError, match="not in a shared segment"):
            decode(_message({"arrays": [["x", "float64", [1], at]]}), segment=reader)


def _wide_block(n_items: int) -> Interactions:
    return Interactions.from_arrays([0, 1, 2, 3], [5, 6, 7, 8], [1.0, 2.0, 3.0, 4.0], n_users=4,
                                    n_items=n_items)


def test_a_model_process_answers_through_the_segment_and_its_forks_do_not():
    from toy_models import Counts

    n_items = SHARED_MIN // 8 + 1000  # a row of float64 scores is just over SHARED_MIN
    train = Interactions.from_arrays([0, 1, 2], [1, 2, 2], [0.0, 0.5, 0.7], n_users=4, n_items=n_items)
    block = _wide_block(n_items)
    local = LocalModel(Counts(prior=1.0))
    local.model.fit(train)
    expected = local.score(block)
    with ModelProcess.start(Counts(prior=1.0)) as proc:
        proc.fit(train)
        probe = proc.fork()
        probe.share_answers(len(block) * n_items * 8)
        copy = probe.fork()  # made after the segment was shared: it must answer over the socket
        probe.step(block, score=True, answer_later=True)
        got = probe.answer(reuse=True)
        assert np.array_equal(got.scores, expected)
        assert np.shares_memory(got.scores, probe._scratch.buffer)  # it came through the segment
        # the same state as the probe before the block; had the copy written its answer into
        # the probe's segment, its header would name an offset that this side cannot read
        copied = copy.step(block, score=True)
        assert np.array_equal(copied.scores, expected)
        probe.close()
        copy.close()


def test_poll_says_whether_a_frame_was_there_at_once_came_while_polling_or_not_in_time():
    ours, theirs = socket.socketpair()
    chan = Channel(ours)
    assert chan.poll(0.002) is None
    theirs.sendall(b"x")
    assert chan.poll(0.002) == 0.0  # there at once
    ours.recv(1)
    sent = []
    later = threading.Timer(0.02, lambda: (sent.append(time.perf_counter()), theirs.sendall(b"y")))
    later.start()
    seen = chan.poll(5.0)
    later.join()
    assert seen is not None and seen >= sent[0]
    ours.close()
    theirs.close()


KIND = (5, True, False)


def test_the_pacer_naps_until_shortly_before_an_answer_of_the_same_kind_is_due():
    pacer = AnswerPacer(poll=0.0002)
    pacer.sent(KIND, 10.0)
    assert pacer.nap(10.0) == 0.0  # nothing known yet: poll at once
    pacer.came(10.001, 10.00102)  # the answer took 1 ms
    pacer.sent(KIND, 20.0)
    assert pacer.nap(20.00005) == pytest.approx(0.001 - AnswerPacer.NAP_MARGIN - 0.00005)
    assert pacer.nap(20.0007) == 0.0  # less than NAP_MIN left: poll
    assert pacer.spin() == pytest.approx(0.0002 + 0.001 / 4)
    pacer.came(20.00105, 20.0011)
    pacer.sent((1, True, False), 30.0)
    assert pacer.nap(30.0) == 0.0  # another kind of block has an estimate of its own


def test_an_answer_there_when_the_nap_ends_shortens_the_next_nap_at_once():
    pacer = AnswerPacer(poll=0.0002)
    pacer.due[KIND] = 0.001
    pacer.sent(KIND, 0.0)
    pacer.came(0.0, 0.002)  # there at once when the reader looked
    assert pacer.due[KIND] == pytest.approx(0.001 * (1 - 5 * AnswerPacer.STEP))
    pacer.sent(KIND, 1.0)
    pacer.came(1.0015, 1.0016)  # late: raised a little
    assert pacer.due[KIND] == pytest.approx(0.0009 * (1 + AnswerPacer.STEP * AnswerPacer.QUANTILE))


def test_the_pacer_tracks_a_low_quantile_of_the_answer_times():
    rng = np.random.default_rng(0)
    pacer = AnswerPacer(poll=0.0002)
    for took in rng.normal(1e-3, 5e-5, 5000):
        pacer.sent(KIND, 0.0)
        pacer.came(took, took + 1e-5)
    early = np.mean(rng.normal(1e-3, 5e-5, 20000) < pacer.due[KIND])
    assert 0.03 < early < 0.25  # QUANTILE is 0.1; the estimate moves by 2% of itself a step
