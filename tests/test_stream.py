"""The run as one stream (issue 20): same frames as the pipeline before it, each input read once,
the first frame early, faces from the cache never detected again.

The reference frames are per-frame sha256 digests (tests/data/golden_sample_frames.json) of runs on
the 5 s demo clip made by the previous release's code path (commit 95fc06f: a whole-clip face pass,
then generation), with the same weights, seed and front-end detection settings (dlib at upsample 0,
frames shrunk to 640 px, as before the per-clip detection scale). They are the frames handed to the
encoder; what a lossy encoder makes of them is not reproducible bit for bit (x264's packets differ
from run to run on a loaded machine, in both releases), so it is not compared.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from skimage.data import astronaut

from latentmuse.runtime import faces as faces_module
from latentmuse.runtime import media
from latentmuse.runtime.lipsync import LipSync, run
from latentmuse.runtime.options import RunOptions
from latentmuse.samples import DEFAULT_TEXT, render_frame, speak

from .helpers import count_av, write_wav

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_sample_frames.json").read_text())
SMOKE = dict(weights="smoke", face_detector="dlib", backend="torch")


def digests(frames) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest()[:16] for f in frames]


def whole_digest(frames) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(f).tobytes() for f in frames)).hexdigest()[:16]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The inputs the digests were taken on: the demo clip's 125 frames encoded losslessly (libx264 at
    crf 0: its lossy packets differ from run to run on a loaded machine, in this release and the
    previous one, but a lossless stream decodes to the same frames), its speech as a wav, and a 7.3 s
    tone for a ping-pong run."""
    folder = tmp_path_factory.mktemp("demo")
    image = np.ascontiguousarray(astronaut()[:, :, ::-1])
    video = folder / "demo_silent.mp4"
    with media.VideoWriter(video, 320, 320, Fraction(25), None, crf=0, preset="fast") as writer:
        for index in range(125):
            writer.write(render_frame(index, 125, (320, 320), range(50, 75), image))
    speech = folder / "speech.wav"
    speak(DEFAULT_TEXT, speech)
    decoded = whole_digest(media.iter_frames(video)), hashlib.sha256(media.load_audio(speech).tobytes()).hexdigest()[:16]
    if decoded != (GOLDEN["video_frames"], GOLDEN["speech_16k"]):
        pytest.skip(f"this machine's libx264/espeak-ng make other inputs ({decoded}) than the digests were taken on")
    return video, speech, write_wav(folder / "long.wav", 7.3)


@pytest.fixture
def old_detection(monkeypatch):
    """dlib's detection settings as before the per-clip scale (the front end as constructed)."""
    monkeypatch.setattr(faces_module.DlibFrontEnd, "for_clip", lambda self, *args: self)


@pytest.mark.parametrize("case, options", [
    ("musetalk", dict(generator="musetalk")),
    ("latentsync_steps2", dict(generator="latentsync", steps=2)),
    ("musetalk_pingpong", dict(generator="musetalk", audio="long")),
])
def test_the_stream_makes_the_frames_of_the_previous_pipeline(demo, old_detection, case, options, tmp_path):
    video, speech, long_audio = demo
    options = dict(options)
    audio = long_audio if options.pop("audio", None) else speech
    sink = media.MemorySink()
    report = run(RunOptions.flat(video, tmp_path / "unused.mp4", audio=audio, **SMOKE, **options), sink=sink)
    assert report.status == "ok"
    got = digests(sink.frames)
    assert len(got) == len(GOLDEN[case])
    assert [i for i, (a, b) in enumerate(zip(got, GOLDEN[case])) if a != b] == []


def test_first_frame_seconds_is_reported_and_precedes_the_end(demo, tmp_path):
    video, speech, _ = demo
    output = tmp_path / "out.mp4"
    report = run(RunOptions.flat(video, output, audio=speech, generator="musetalk", **SMOKE))
    assert report.status == "ok" and report.frames_written == report.frames_out == 101
    assert report.first_frame_seconds is not None
    assert 0 < report.first_frame_seconds < sum(report.stages[s] for s in ("validate", "load_models", "generate_and_write"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # one file written, no side files


@pytest.mark.parametrize("audio, cycles", [("own", 1), ("separate", 1), ("pingpong", 2)])
def test_each_input_is_opened_and_read_once(clip, tmp_path, monkeypatch, audio, cycles):
    """A clip no longer than its audio: the video opened at most twice, demuxed without decoding once
    (probe), decoded once (each ping-pong cycle adds one read); the audio source decoded once."""
    separate = {"own": None, "separate": write_wav(tmp_path / "a.wav", 0.8),
                "pingpong": write_wav(tmp_path / "long.wav", 1.5)}[audio]
    with count_av(monkeypatch) as reads:
        report = run(RunOptions.flat(clip.video, tmp_path / "out.mp4", audio=separate, generator="musetalk", **SMOKE))
    assert report.status == "ok"
    n = clip.frame_count
    video = reads[Path(clip.video).resolve()]
    if separate is None:  # probe_clip: timestamps and the own track in one pass, then the frames
        assert video.opens == 2
    else:
        assert video.opens == 2 and reads[separate.resolve()].opens == 1
    # probe's one pass: each packet read once (with the own track, its audio packets too), plus at most
    # one end-of-stream marker per stream; counted here outside the wrapper
    with av.open(str(clip.video)) as container:
        streams = [container.streams.video[0]] + ([container.streams.audio[0]] if separate is None else [])
        packets = sum(1 for p in container.demux(*streams) if p.size)
    assert packets <= video.demuxed <= packets + len(streams)
    if separate is not None:
        assert packets == n and reads[separate.resolve()].packets > 0
    # the frames' pass: every packet decoded once per cycle (a backward cycle decodes chunks from keyframes)
    assert n <= video.decoded <= cycles * n + 2 * n * (cycles - 1)
    assert set(reads) <= {Path(clip.video).resolve()} | ({separate.resolve()} if separate else set())


class CountingFrontEnd:
    """A front end that counts the frames its detector sees, delegating to a real one."""

    def __init__(self, inner, counter: list[int]) -> None:
        self.inner, self.counter, self.name = inner, counter, inner.name

    def for_clip(self, *args):
        return CountingFrontEnd(self.inner.for_clip(*args), self.counter)

    @property
    def settings(self):
        return self.inner.settings

    def candidates(self, frames):
        self.counter[0] += len(frames)
        return self.inner.candidates(frames)

    def landmarks(self, frames, chosen):
        return self.inner.landmarks(frames, chosen)


def test_the_face_cache_detects_only_frames_it_lacks(clip, tmp_path):
    """A miss detects every frame the run uses; a hit none (counted); a longer audio track for the
    same video detects only the frames the entry lacks and extends it, with the same faces and report
    as a run without the cache."""
    cache = tmp_path / "cache"
    counter = [0]
    with LipSync.from_weights("smoke", face_detector="dlib", backend="torch", generator="musetalk") as lipsync:
        session = lipsync.session()
        session.front_end = CountingFrontEnd(session.front_end, counter)
        short = write_wav(tmp_path / "short.wav", 0.4)  # 10 of the clip's 20 frames
        first = lipsync(clip.video, tmp_path / "a.mp4", audio=short, cache=cache, sink=media.MemorySink())
        assert (first.face_cache, counter[0]) == ("miss", 10)
        again = lipsync(clip.video, tmp_path / "b.mp4", audio=short, cache=cache, sink=media.MemorySink())
        assert (again.face_cache, counter[0]) == ("hit", 10)  # no frame detected
        whole = media.MemorySink()
        longer = lipsync(clip.video, tmp_path / "c.mp4", cache=cache, sink=whole)
        assert (longer.face_cache, counter[0]) == ("partial", 20)  # only frames 10-19
        cached = media.MemorySink()
        hit = lipsync(clip.video, tmp_path / "d.mp4", cache=cache, sink=cached)
        assert hit.face_cache == "hit"
        assert counter[0] == 20
        plain = media.MemorySink()
        uncached = lipsync(clip.video, tmp_path / "e.mp4", sink=plain)
    assert uncached.face_cache == "off" and counter[0] == 40
    assert digests(whole.frames) == digests(plain.frames) == digests(cached.frames)
    for field in ("frames_processed", "frames_no_face", "face_passthrough", "dubbed_face", "faces_seen"):
        assert getattr(longer, field) == getattr(uncached, field) == getattr(hit, field), field
