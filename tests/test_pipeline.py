"""The pipeline end to end on real media: a real face with a cutaway, synthetic speech, smoke weights.

Frame accounting is checked before encoding through a lossless in-memory sink; the encoded output is
checked through PyAV (fps, frame count, audio duration).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from latentmuse.runtime import media
from latentmuse.runtime.blending import crop_geometry
from latentmuse.runtime.defaults import DEFAULT_MIN_FACE_SIZE
from latentmuse.runtime.faces import DlibFrontEnd
from latentmuse.runtime.generators.musetalk import crop_box
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions
from latentmuse.samples import build_sample

from .helpers import decode_index, write_level_video, write_wav


def run_front_end(frame):
    """The dlib front end as a run sets it up for this clip (its detection scale from --min-face-size)."""
    return DlibFrontEnd().for_clip(DEFAULT_MIN_FACE_SIZE, frame.shape[1], frame.shape[0])


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """1.6 s at 25 fps (40 frames), frames 15-24 a faceless cutaway, espeak-ng speech as its track."""
    return build_sample(tmp_path_factory.mktemp("sample"), seconds=1.6, cutaway=(0.6, 1.0))


@pytest.fixture(scope="module")
def memory_run(sample, tmp_path_factory):
    sink = media.MemorySink()
    out = tmp_path_factory.mktemp("out")
    options = RunOptions.flat(video=sample.video, output=out / "unused.mp4", weights="smoke", face_detector="dlib",
                         generator="musetalk", report=out / "report.json")
    report = run(options, sink=sink)
    return report, sink.frames, list(media.iter_frames(sample.video)), out


@pytest.fixture(scope="module")
def latentsync_run(sample):
    """The default generator on smoke weights (LatentSync, MuseTalk behind it), two DDIM steps."""
    sink = media.MemorySink()
    report = run(RunOptions.flat(video=sample.video, output=Path("unused.mp4"), weights="smoke", face_detector="dlib",
                            steps=2), sink=sink)
    return report, sink.frames, list(media.iter_frames(sample.video))


def test_every_frame_is_accounted_for(sample, memory_run):
    report, frames, inputs, _ = memory_run
    assert sample.frame_count == 40 and list(sample.cutaway_frames) == list(range(15, 25))
    assert report.frames_in == 40
    assert report.frames_out == len(frames) == 40  # 1.6 s of audio x 25 fps
    assert report.frames_processed + report.frames_passthrough == report.frames_out
    assert report.frames_passthrough == 10 and report.frames_processed == 30
    assert report.fps == "25/1" and report.fallbacks == []
    assert report.frames_by_generator == {"musetalk": 30} and report.frames_no_face == 10


@pytest.mark.parametrize("which", ["memory_run", "latentsync_run"])
def test_passthrough_frames_are_unchanged(sample, which, request):
    frames, inputs = request.getfixturevalue(which)[1:3]
    for i in sample.cutaway_frames:
        assert np.array_equal(frames[i], inputs[i]), i


def test_latentsync_is_the_default_and_accounts_for_every_frame(sample, latentsync_run):
    report, frames, _ = latentsync_run
    assert report.generator == "latentsync" and report.frames_by_generator == {"latentsync": 30}
    assert report.frames_out == len(frames) == 40 and report.frames_passthrough == report.frames_no_face == 10
    assert report.windows == 2 and report.fallbacks == [] and report.frames_failed == 0
    assert (report.steps, report.guidance, report.resolution, report.seed) == (2, 1.5, 256, 0)
    assert report.stages["generate.latentsync.sampling"] > 0


def test_latentsync_changes_pixels_only_inside_the_aligned_crop(sample, latentsync_run):
    from latentmuse.runtime import alignment as al

    _, frames, inputs = latentsync_run
    front_end = run_front_end(inputs[0])
    points = [al.alignment_points(front_end.detect([inputs[i]])[0].landmarks) for i in range(15)]
    transforms = al.smoothed_transforms(points, al.face_template(256))  # the first run, smoothed in order
    for i in (0, 7, 14):
        changed = np.argwhere((frames[i] != inputs[i]).any(axis=2))
        assert len(changed) > 100, "the generator left the frame untouched"
        crop_xy = changed[:, ::-1] @ transforms[i][:, :2].T + transforms[i][:, 2]  # frame -> crop coordinates
        # inside the 210 x 280 crop, give or take two frame pixels (about four crop pixels here)
        assert crop_xy[:, 0].min() > -5 and crop_xy[:, 0].max() < 214 and crop_xy[:, 1].min() > -5 and crop_xy[:, 1].max() < 284
        # the mouth region of the crop (rows 95..242 of the 256 mask = 104..265 of the 280-row crop) changed most
        moved = np.abs(frames[i].astype(int) - inputs[i]).sum(axis=2)[changed[:, 0], changed[:, 1]]
        mouth = (crop_xy[:, 1] > 110) & (crop_xy[:, 1] < 260) & (crop_xy[:, 0] > 20) & (crop_xy[:, 0] < 190)
        assert moved[mouth].mean() > 5 * moved[~mouth].mean()


def test_processed_frames_change_only_inside_the_face_box(sample, memory_run):
    _, frames, inputs, _ = memory_run
    front_end = run_front_end(inputs[0])
    for i in (0, 30, 39):
        face = front_end.detect([inputs[i]])[0]
        x1, y1, x2, y2 = crop_box(face, inputs[i].shape)
        changed = np.argwhere((frames[i] != inputs[i]).any(axis=2))
        assert len(changed) > 0, "the generator left the frame untouched"
        assert changed[:, 0].min() >= y1 and changed[:, 0].max() < y2
        assert changed[:, 1].min() >= x1 and changed[:, 1].max() < x2
        # The jaw-mode blend keeps the upper half of the face box as it was.
        assert changed[:, 0].min() >= (y1 + y2) // 2 - crop_geometry((x1, y1, x2, y2), inputs[i].shape).side // 40 - 2


def test_report_json_has_the_contract_fields(memory_run):
    import json

    _, _, _, out = memory_run
    data = json.loads((out / "report.json").read_text())
    for key in ("frames_in", "frames_out", "frames_processed", "frames_passthrough", "fps", "generator", "fallbacks", "stages"):
        assert key in data
    assert data["generator"] == "musetalk" and data["fps"] == "25/1" and data["frames_by_generator"] == {"musetalk": 30}
    assert {"audio_features", "faces", "generate_and_write"} <= set(data["stages"])
    # the first frame reached the encoder once the run was under way, before its generation ended
    assert 0 < data["first_frame_seconds"] < sum(data["stages"][s] for s in ("validate", "load_models", "generate_and_write"))
    assert any("SMOKE" in w for w in data["warnings"])


def test_encoded_output_keeps_fps_count_and_audio(sample, tmp_path):
    output = tmp_path / "out.mp4"
    report = run(RunOptions.flat(video=sample.video, output=output, weights="smoke", face_detector="dlib", steps=1))
    info = media.probe(output)
    assert info.fps == Fraction(25) and info.frame_count == report.frames_out == 40
    with av.open(str(output)) as container:
        stream = container.streams.audio[0]
        audio_seconds = float(stream.duration * stream.time_base) if stream.duration else float(container.duration / av.time_base)
    assert abs(audio_seconds - info.duration_s) <= 1 / 25
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary files left


def test_video_without_a_face_comes_back_unchanged(tmp_path):
    audio = write_wav(tmp_path / "a.wav", 0.4)
    video = write_level_video(tmp_path / "noface.mp4", 10, Fraction(25), audio)
    sink = media.MemorySink()
    report = run(RunOptions.flat(video=video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib"), sink=sink)
    assert report.frames_processed == 0 and report.frames_out == 10
    assert all(np.array_equal(a, b) for a, b in zip(sink.frames, media.iter_frames(video)))


def test_longer_audio_cycles_the_video_ping_pong(tmp_path):
    video = write_level_video(tmp_path / "six.mp4", 6, Fraction(25), None)
    audio = write_wav(tmp_path / "long.wav", 0.6)  # 15 output frames from 6 input frames
    sink = media.MemorySink()
    report = run(RunOptions.flat(video=video, audio=audio, output=tmp_path / "o.mp4", weights="smoke",
                            face_detector="dlib"), sink=sink)
    assert report.frames_out == 15 and report.frames_in == 6
    assert [decode_index(f) for f in sink.frames] == [0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0, 0, 1, 2]


def test_shorter_audio_cuts_the_video(tmp_path):
    video = write_level_video(tmp_path / "ten.mp4", 10, Fraction(25), None)
    sink = media.MemorySink()
    report = run(RunOptions.flat(video=video, audio=write_wav(tmp_path / "s.wav", 0.2), output=tmp_path / "o.mp4",
                            weights="smoke", face_detector="dlib"), sink=sink)
    assert report.frames_out == 5 and [decode_index(f) for f in sink.frames] == [0, 1, 2, 3, 4]


def test_ntsc_frame_rate_is_preserved(tmp_path):
    fps = Fraction(30000, 1001)
    audio = write_wav(tmp_path / "a.wav", 0.5)
    video = write_level_video(tmp_path / "ntsc.mp4", 15, fps, audio)
    output = tmp_path / "out.mp4"
    report = run(RunOptions.flat(video=video, output=output, weights="smoke", face_detector="dlib"))
    info = media.probe(output)
    assert report.fps == "30000/1001" and info.fps == fps
    assert info.frame_count == report.frames_out == math.floor(Fraction(1, 2) * fps) == 14


def test_crop_box_equals_the_formula_on_dlib_landmarks():
    from skimage.data import astronaut

    frame = np.ascontiguousarray(astronaut()[..., ::-1])
    face = DlibFrontEnd().detect([frame])[0]
    lm = face.landmarks.astype(np.int32)
    # docs/PIPELINE.md 6a, written out independently: p = L[29], d = max(L.y) - p.y
    p_y, bottom = lm[29, 1], lm[:, 1].max()
    expected = (lm[:, 0].min(), max(0, p_y - (bottom - p_y)), lm[:, 0].max(), min(bottom + 10, frame.shape[0]))
    assert crop_box(face, frame.shape) == tuple(int(v) for v in expected)
    x1, y1, x2, y2 = expected
    assert 150 < x1 < x2 < 300 and 50 < y1 < y2 < 250  # the astronaut's face, not somewhere else
