"""Live counting (defcon.live): counts equal count_tiff / predict_stack; the background thread."""

import dataclasses
import threading
import time

import numpy as np
import pytest
import tifffile

from defcon import predict
from defcon.errors import (
    CounterClosedError,
    DefconError,
    ModelKindError,
    ParameterError,
    ShapeMismatchError,
)
from defcon.live import Counter, LiveCount, LiveCounter
from defcon.networks import FCN
from defcon.predict import count_rows, count_tiff, predict_stack

RTOL, ATOL = 1e-5, 1e-6  # batch of 1 against batches of many: float32 rounding only
SUBMIT_BOUND_S = 0.05  # generous: submit only checks, copies and hands over a frame


def spots(n, height, width, seed, per_frame=6):
    """uint16 SMLM-like frames (n, height, width): background, Gaussian spots, Poisson noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    frames = np.full((n, height, width), 100.0)
    for frame in frames:
        for _ in range(per_frame):
            y, x = rng.uniform(2, height - 2), rng.uniform(2, width - 2)
            frame += rng.uniform(300, 3000) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.4)
    return rng.poisson(frames).astype(np.uint16)


@pytest.fixture(scope="module")
def model():
    return FCN.pretrained()


@pytest.fixture(scope="module")
def frames():
    return spots(6, 40, 56, seed=1)


def expected_rows(model, frames, box_size=7, **options):
    """``(count, max_local_count)`` per frame, shape (n, 2), as count_tiff computes them."""
    rows = count_rows(predict_stack(model, frames, **options), np.arange(len(frames)), box_size)
    return np.array([(c, m) for _, c, m in rows])


def as_array(results):
    return np.array([(r.count, r.max_local_count) for r in results])


# ------------------------------------------------------------------------- Counter
def test_push_equals_predict_stack_and_count_rows_on_non_square_frames(model, frames):
    counter = Counter(model)
    results = [counter.push(f) for f in frames]
    assert all(isinstance(r, LiveCount) for r in results)
    assert [r.index for r in results] == list(range(len(frames)))
    assert all(r.latency_s > 0 for r in results)
    assert counter.pushed == len(frames)
    np.testing.assert_allclose(as_array(results), expected_rows(model, frames), RTOL, ATOL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        results[0].count = 0.0


def test_push_equals_count_tiff_with_its_box_size(model, frames, tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, frames)
    stack = count_tiff(model, path, box_size=5, check_envelope=False)
    counter = Counter(model, box_size=5)
    got = as_array([counter.push(f) for f in frames])
    np.testing.assert_allclose(got[:, 0], stack.counts, RTOL, ATOL)
    np.testing.assert_allclose(got[:, 1], stack.max_local_counts, RTOL, ATOL)


def test_counter_loads_pretrained_by_name_and_model_files(frames, model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    want = Counter(model).push(frames[0])
    for source in ("pretrained", path):
        got = Counter(source).push(frames[0])
        np.testing.assert_allclose(got.count, want.count, RTOL, ATOL)


def test_frame_of_another_shape_than_the_warmed_up_one_is_counted_correctly(model):
    counter = Counter(model, frame_shape=(40, 56))
    other = spots(2, 33, 50, seed=2)  # sides not multiples of 4: padded and cropped back
    got = as_array([counter.push(f) for f in other])
    np.testing.assert_allclose(got, expected_rows(model, other), RTOL, ATOL)
    back = spots(1, 40, 56, seed=3)
    np.testing.assert_allclose(
        as_array([counter.push(back[0])]), expected_rows(model, back), RTOL, ATOL
    )


def test_tiled_frames_equal_predict_stack_tiled_the_same_way(model, monkeypatch):
    # Tiny tiles so a small frame takes the tiled path that frames over TILE_PIXELS take.
    monkeypatch.setattr(predict, "TILE_PIXELS", 1024)
    monkeypatch.setattr(predict, "TILE_SIZE", 32)
    frames = spots(2, 72, 100, seed=4, per_frame=12)
    got = as_array([Counter(model).push(f) for f in frames])
    np.testing.assert_allclose(got, expected_rows(model, frames), RTOL, ATOL)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_any_real_dtype_counts_as_predict_stack(model, frames, dtype):
    frame = (frames[0] // (256 if dtype == np.uint8 else 1)).astype(dtype)
    got = as_array([Counter(model).push(frame)])
    np.testing.assert_allclose(got, expected_rows(model, frame[None]), RTOL, ATOL)


@pytest.mark.parametrize(
    "frame, match",
    [
        (np.zeros((2, 40, 56)), r"shape \(2, 40, 56\); expected one frame of shape \(H, W\)"),
        (np.zeros(56), r"shape \(56,\); expected one frame"),
        (np.zeros((0, 0)), r"0 x 0 pixels; the frame must be at least the 7 x 7 box"),
        (np.zeros((0, 56)), r"0 x 56 pixels"),
        (np.zeros((6, 56)), r"6 x 56 pixels"),
        (np.array([["a", "b"]]), r"dtype <U1; expected real pixel values"),
        (np.zeros((40, 56), complex), r"dtype complex128; expected real"),
    ],
)
def test_bad_frames_raise_shape_mismatch_naming_the_problem(model, frame, match):
    counter = Counter(model)
    with pytest.raises(ShapeMismatchError, match=match):
        counter.push(frame)
    assert counter.pushed == 0


@pytest.mark.parametrize(
    "options, match",
    [
        ({"box_size": 0}, r"box_size must be >= 1, got 0"),
        ({"box_size": 2.5}, r"box_size must be an int, got 2.5"),
        ({"box_size": True}, r"box_size must be an int"),
        ({"precision": "float16"}, r"precision must be one of .*'float16'"),
        ({"frame_shape": (40, 56, 1)}, r"frame_shape must be \(height, width\)"),
        ({"frame_shape": (4, 56)}, r"at least the 7 x 7 box, got \(4, 56\)"),
    ],
)
def test_bad_parameters_raise_parameter_error(model, options, match):
    with pytest.raises(ParameterError, match=match):
        Counter(model, **options)


def test_segmentation_network_is_refused():
    with pytest.raises(ModelKindError, match="counting needs a density model"):
        Counter(FCN(output="seg", seed=0))


# --------------------------------------------------------------------- LiveCounter
def test_slow_consumer_drops_frames_and_accounts_for_every_one(model):
    stream = spots(30, 40, 56, seed=5)
    seen = []

    def slow(result):
        seen.append(result)
        time.sleep(0.05)

    counter = Counter(model, frame_shape=(40, 56))
    longest = 0.0
    with counter.start(on_result=slow) as live:
        assert isinstance(live, LiveCounter)
        for frame in stream:
            t = time.perf_counter()
            live.submit(frame)
            longest = max(longest, time.perf_counter() - t)
    assert live.submitted == len(stream)
    assert live.dropped > 0 and live.counted >= 1
    assert live.counted + live.dropped == live.submitted
    assert len(seen) == live.counted
    assert longest < SUBMIT_BOUND_S
    # The frame waiting at close is counted: the last result is the last frame's.
    last = live.latest()
    assert last is seen[-1] and last.index == len(stream) - 1
    want = expected_rows(model, stream[-1:])
    np.testing.assert_allclose(as_array([last]), want, RTOL, ATOL)
    indices = [r.index for r in seen]
    assert indices == sorted(set(indices))


def test_counts_in_the_thread_equal_pushed_counts(model, frames):
    with Counter(model).start() as live:
        assert live.latest() is None
        for frame in frames:
            live.submit(frame)
            while live.counted + live.dropped < live.submitted:  # one at a time: no drops
                time.sleep(0.001)
    assert (live.counted, live.dropped) == (len(frames), 0)
    np.testing.assert_allclose(as_array([live.latest()]), expected_rows(model, frames[-1:]))


def test_callback_error_is_raised_by_the_next_submit_then_the_counter_is_closed(model, frames):
    failed = threading.Event()

    def fail(result):
        failed.set()
        raise ValueError("callback failed")

    live = Counter(model).start(on_result=fail)
    live.submit(frames[0])
    assert failed.wait(10)
    deadline = time.monotonic() + 10
    with pytest.raises(ValueError, match="callback failed"):
        while time.monotonic() < deadline:  # until the worker has stored the error
            live.submit(frames[1])
            time.sleep(0.01)
    with pytest.raises(CounterClosedError, match="closed"):
        live.submit(frames[2])
    live.close()  # already raised: not again
    assert live.counted == 1  # the callback ran after the count
    assert live.counted + live.dropped == live.submitted


def test_counting_error_is_raised_by_close(model, frames, monkeypatch):
    counter = Counter(model)

    def broken(frame):
        raise RuntimeError("network failed")

    monkeypatch.setattr(counter, "_density", broken)
    live = counter.start()
    live.submit(frames[0])
    with pytest.raises(RuntimeError, match="network failed"):
        live.close()
    assert (live.submitted, live.counted, live.dropped) == (1, 0, 1)
    assert live.latest() is None


def test_bad_frame_is_refused_by_submit_itself(model):
    with Counter(model).start() as live:
        with pytest.raises(ShapeMismatchError, match="expected one frame"):
            live.submit(np.zeros((2, 40, 56)))
    assert live.submitted == 0


def test_submit_after_close_raises_and_errors_are_defcon_errors(model, frames):
    live = Counter(model).start()
    live.close()
    live.close()  # idempotent
    with pytest.raises(CounterClosedError) as info:
        live.submit(frames[0])
    assert isinstance(info.value, DefconError) and isinstance(info.value, RuntimeError)


def test_caller_error_inside_the_context_is_not_hidden(model, frames, monkeypatch):
    counter = Counter(model)
    monkeypatch.setattr(counter, "_density", lambda frame: 1 / 0)
    with pytest.raises(KeyError):
        with counter.start() as live:
            live.submit(frames[0])
            raise KeyError("caller")
    assert not live._thread.is_alive()
