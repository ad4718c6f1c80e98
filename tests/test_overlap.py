"""The decode and encode threads (runtime/overlap.py): order, bounds, errors, and a whole run."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from latentmuse.runtime import media, pipeline
from latentmuse.runtime.lipsync import run as lipsync_run
from latentmuse.runtime.overlap import BackgroundSink, Prefetch
from latentmuse.runtime.options import RunOptions

from .standins import standin_models, twenty_frame_sample, whisper_standin


def numbered(n: int, produced: list[int] | None = None, delay: float = 0.0):
    rng = random.Random(1)
    for i in range(n):
        if delay:
            time.sleep(rng.random() * delay)
        if produced is not None:
            produced.append(i)
        yield i, np.full((4, 4, 3), i % 256, np.uint8)


def test_frames_keep_their_order_and_identity_through_both_queues():
    sink = media.MemorySink()
    rng = random.Random(0)
    with sink, BackgroundSink(sink, depth=3) as encoder, Prefetch(numbered(500, delay=0.0005), depth=4) as decoded:
        for index, frame in decoded:
            if rng.random() < 0.1:
                time.sleep(0.002)  # a slow window
            frame[0, 0, 0] = index % 256  # frame identity: the index, written into the frame itself
            encoder.write(frame)
    assert encoder.frames_written == 500
    assert [int(f[0, 0, 0]) for f in sink.frames] == [i % 256 for i in range(500)]
    assert [int(f[1, 1, 1]) for f in sink.frames] == [i % 256 for i in range(500)]


def test_the_decoder_runs_at_most_depth_ahead():
    produced: list[int] = []
    with Prefetch(numbered(100, produced), depth=5) as decoded:
        iterator = iter(decoded)
        next(iterator)
        time.sleep(0.3)
        assert len(produced) <= 1 + 5 + 1  # the taken one, a full queue, one waiting to be put


def test_a_decoder_error_is_raised_where_the_next_frame_is_taken():
    def broken():
        yield from numbered(3)
        raise ValueError("corrupt packet")

    taken = []
    with pytest.raises(ValueError, match="corrupt packet"):
        with Prefetch(broken(), depth=2) as decoded:
            for index, _ in decoded:
                taken.append(index)
    assert taken == [0, 1, 2]


class FailingSink(media.MemorySink):
    def write(self, frame):
        if len(self.frames) == 5:
            raise OSError(28, "No space left on device")
        super().write(frame)


def test_an_encoder_error_reaches_the_loop_and_no_thread_is_left():
    sink = FailingSink()
    before = threading.active_count()
    with pytest.raises(OSError, match="No space"):
        with BackgroundSink(sink, depth=2) as encoder:
            for _, frame in numbered(100):
                encoder.write(frame)
    assert encoder.frames_written == 5 and len(sink.frames) == 5
    assert threading.active_count() == before


def test_an_exception_in_the_loop_stops_both_threads_without_writing_the_queue():
    sink = media.MemorySink()
    before = threading.active_count()
    with pytest.raises(KeyError):
        with BackgroundSink(sink, depth=50) as encoder, Prefetch(numbered(10_000), depth=4) as decoded:
            for index, frame in decoded:
                encoder.write(frame)
                if index == 20:
                    raise KeyError("window failed")
    assert threading.active_count() == before
    assert encoder.frames_written == len(sink.frames) <= 21


def test_a_whole_run_through_the_threads_is_frame_exact(tmp_path, monkeypatch):
    """Every output frame of a run, in order, equals the same run with the queues one frame deep
    (the stages then alternate, as one thread would run them)."""
    clip = twenty_frame_sample(tmp_path)
    models, _ = standin_models(steps=1, whisper_runner=whisper_standin())
    options = RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", generator="musetalk",
                         face_detector="dlib")
    deep = media.MemorySink()
    lipsync_run(options, sink=deep, models=models)
    import latentmuse.runtime.overlap as overlap

    monkeypatch.setattr(overlap, "DEFAULT_DEPTH", 1)
    monkeypatch.setattr(pipeline, "BackgroundSink", lambda sink: overlap.BackgroundSink(sink, depth=1))
    # every queue one item deep: the decoder's and the face stage's (whose look-ahead it replaces)
    monkeypatch.setattr(pipeline, "Prefetch", lambda items, depth=None, name="decode": overlap.Prefetch(items, depth=1, name=name))
    shallow = media.MemorySink()
    report = lipsync_run(options, sink=shallow, models=models)
    assert report.frames_written == 20 and len(deep.frames) == 20
    np.testing.assert_array_equal(np.stack(deep.frames), np.stack(shallow.frames))
    # passthrough frames are the decoded input frames, in their places
    with media.FrameSource(clip.video, media.probe(clip.video)) as source:
        source_frames = [f for _, f in source.frames(range(20))]
    for i in range(5, 10):
        np.testing.assert_array_equal(deep.frames[i], source_frames[i])


@pytest.mark.parametrize("generator", ["musetalk", "latentsync"])
def test_pasting_in_the_encoder_thread_gives_the_frames_pasting_inline_gives(tmp_path, monkeypatch, generator):
    from latentmuse.runtime.generators import latentsync, musetalk
    from latentmuse.runtime.generators.base import DeferredFrame

    clip = twenty_frame_sample(tmp_path)
    models, _ = standin_models(steps=1, whisper_runner=whisper_standin())
    options = RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", generator=generator,
                         face_detector="dlib", steps=1)
    deferred_seen = []
    original = DeferredFrame.resolve

    def counting(self):
        deferred_seen.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(DeferredFrame, "resolve", counting)
    deferred = media.MemorySink()
    report = lipsync_run(options, sink=deferred, models=models)
    assert report.frames_processed == 15 and len(deferred_seen) >= 15
    assert set(deferred_seen) == {"latentmuse-encode"}  # pasted in the encoder's thread
    for module in (musetalk, latentsync):
        monkeypatch.setattr(module, "paste_frames", lambda gen, fn, rows, stage: [fn(*row) for row in rows])
    inline = media.MemorySink()
    lipsync_run(options, sink=inline, models=models)
    np.testing.assert_array_equal(np.stack(deferred.frames), np.stack(inline.frames))
