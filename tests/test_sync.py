"""The lip-sync measure (runtime/sync.py) against the reference's formulas, worked by hand or rewritten
whole-sequence here: MFCC against python_speech_features, the crop rule, the box filter against scipy,
calc_pdist and the offset / confidence arithmetic, and the streaming scorer against the reference's
all-at-once evaluation."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import python_speech_features as psf  # the reference MFCC (a test dependency, pyproject.toml)
from scipy.signal import medfilt

from latentmuse.runtime import sync


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """espeak-ng speech at 16 kHz, float in [-1, 1] (as the run's waveform)."""
    from latentmuse.runtime.media import load_audio
    from latentmuse.samples import speak

    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    speak("The quick brown fox jumps over the lazy dog.", wav)
    return load_audio(wav, 16_000, what="audio file")


def test_mfcc_equals_python_speech_features_on_speech_and_silence(speech):
    scaled = sync.int16_scale(speech)
    assert np.abs(scaled).max() > 1000  # on the 16-bit scale
    for signal in (scaled, np.zeros(16_000), scaled[:1234], scaled[:300]):
        ours = sync.mfcc(signal)
        reference = psf.mfcc(signal, 16_000).T
        assert ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, atol=1e-5 * max(1.0, np.abs(reference).max()), rtol=0)
    # coefficient 0 is the log energy: the scale moves it by 2 log(32768), the others hardly
    small = sync.mfcc(speech.astype(np.float64))
    assert np.median(sync.mfcc(scaled)[0] - small[0]) == pytest.approx(2 * np.log(32768), abs=0.05)


def test_int16_scale_is_ffmpegs_conversion():
    x = np.array([-1.5, -1.0, -0.5, 0.0, 1 / 65536, 0.5, 1.0, 1.5], np.float32)
    np.testing.assert_array_equal(sync.int16_scale(x), [-32768, -32768, -16384, 0, 0, 16384, 32767, 32767])


def test_mfcc_columns_equal_the_whole(speech):
    scaled = sync.int16_scale(speech)
    whole = sync.mfcc(scaled)
    for first, stop in ((0, 1), (0, 37), (1, 2), (37, 120), (whole.shape[1] - 5, whole.shape[1])):
        np.testing.assert_array_equal(sync.mfcc_columns(scaled, first, stop), whole[:, first:stop])


def _reference_crop(frame: np.ndarray, s: float, x: float, y: float) -> np.ndarray:
    """run_pipeline.crop_video's lines, as written there: pad the whole frame, slice, resize."""
    import cv2

    cs = 0.4
    bsi = int(s * (1 + 2 * cs))
    padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
    my, mx = y + bsi, x + bsi
    face = padded[int(my - s):int(my + s * (1 + 2 * cs)), int(mx - s * (1 + cs)):int(mx + s * (1 + cs))]
    return cv2.resize(face, (224, 224))


def _reference_crops(frames, boxes) -> np.ndarray:
    """crop_video over a run: every box's parameters median-filtered (13), then each frame cropped."""
    params = np.array([sync.box_parameters(b) for b in boxes])
    filtered = np.stack([medfilt(params[:, k], 13) for k in range(3)], axis=1)
    return np.stack([_reference_crop(f, *p) for f, p in zip(frames, filtered)])


def test_crop_rule_on_a_hand_worked_box():
    # box (40, 30)-(100, 110): w 60, h 80 -> s 40, centre (70, 70); pad int(72) = 72; rows
    # int(142 - 40) = 102 .. int(142 + 72) = 214, columns int(142 - 56) = 86 .. int(142 + 56) = 198
    # of the padded frame: frame rows 30 .. 142 (the frame ends at 120: 22 rows of grey), columns 14 .. 126.
    assert sync.box_parameters((40, 30, 100, 110)) == (40.0, 70.0, 70.0)
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[..., 0] = np.arange(160, dtype=np.uint8)[None, :]  # blue = column
    frame[..., 1] = np.arange(120, dtype=np.uint8)[:, None]  # green = row
    crop = sync.crop_face(frame, 40.0, 70.0, 70.0)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    # 112 rows x 112 columns scaled by 2: the first output pixels show frame row 30, column 14
    assert abs(int(crop[0, 0, 1]) - 30) <= 1 and abs(int(crop[0, 0, 0]) - 14) <= 1
    assert abs(int(crop[0, -1, 0]) - 125) <= 1
    # rows past the frame's bottom (frame rows 120..141: output rows 180..223) are the grey 110
    assert (crop[185:, :, :] == 110).all()
    np.testing.assert_array_equal(crop, _reference_crop(frame, 40.0, 70.0, 70.0))


@pytest.mark.parametrize("seed", range(6))
def test_crop_equals_padding_the_whole_frame(seed):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (90 + seed * 17, 130 + seed * 11, 3), dtype=np.uint8)
    h, w = frame.shape[:2]
    s = float(rng.uniform(5, 60))
    x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    np.testing.assert_array_equal(sync.crop_face(frame, s, x, y), _reference_crop(frame, s, x, y))


def test_box_filter_is_scipys_medfilt():
    rng = np.random.default_rng(1)
    boxes = [tuple(rng.uniform(10, 200, 3)) for _ in range(40)]
    expected = np.stack([medfilt(np.array([b[k] for b in boxes]), 13) for k in range(3)], axis=1)
    ours = np.array([sync.filtered_box(boxes, i) for i in range(len(boxes))])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_calc_pdist_finds_a_known_offset():
    """Audio embeddings equal to the video's 3 frames later: offset 3, distance ~0 there (except the
    first 3 windows, whose audio is the zero padding)."""
    rng = np.random.default_rng(2)
    length, dim = 60, 16
    video = rng.standard_normal((length + 3, dim)).astype(np.float32)
    audio = video[3:]  # audio[j] = video[j + 3]
    lip = video[:length]
    distances = sync.calc_pdist(lip, audio)
    assert distances.shape == (length, 31)
    score = sync.SyncScore.from_distances(distances, length + 5)
    assert score.offset_frames == 3
    best = 15 - 3
    eps_norm = 1e-6 * np.sqrt(dim)
    np.testing.assert_allclose(distances[3:, best], eps_norm, rtol=1e-3)
    # the first 3 windows meet the zero padding at that offset: their distance is their own norm
    np.testing.assert_allclose(distances[:3, best], np.linalg.norm(lip[:3].astype(np.float64) + 1e-6, axis=1), rtol=1e-6)
    mean = distances.mean(axis=0)
    assert score.distance == pytest.approx(mean[best]) == pytest.approx((distances[:3, best].sum() + (length - 3) * eps_norm) / length)
    assert score.confidence == pytest.approx(np.sort(mean)[15] - mean[best])
    # per window: median minus the window's distance at the best offset, median-filtered over 9
    np.testing.assert_allclose(score.per_frame, medfilt(np.median(mean) - distances[:, best], 9))


def test_window_distances_by_hand():
    lip = np.array([3.0, 4.0])
    block = np.zeros((31, 2))
    block[15] = [3.0, 4.0]
    block[16] = [0.0, 4.0]
    d = sync.window_distances(lip, block)
    assert d[15] == pytest.approx(np.sqrt(2) * 1e-6)
    assert d[16] == pytest.approx(3.000001)
    assert d[0] == pytest.approx(np.hypot(3.000001, 4.000001))


class LinearEmbedder:
    """A deterministic stand-in for SyncNet: fixed random projections of the inputs (the measure's
    plumbing is what is tested; the network is tested in test_syncnet_model.py)."""

    def __init__(self, dim: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.audio_matrix = rng.standard_normal((13 * 20, dim)) / 100
        self.lip_matrix = rng.standard_normal((3 * 5 * 4 * 4, dim)) / 1000
        self.calls = {"audio": 0, "lips": 0}

    def audio(self, blocks: np.ndarray) -> np.ndarray:
        assert blocks.shape[1:] == (1, 13, 20)
        self.calls["audio"] += len(blocks)
        return (blocks.reshape(len(blocks), -1) @ self.audio_matrix).astype(np.float32)

    def lips(self, windows: np.ndarray) -> np.ndarray:
        assert windows.shape[1:] == (3, 5, 224, 224) and windows.dtype == np.float32
        self.calls["lips"] += len(windows)
        pooled = windows.reshape(len(windows), 3, 5, 4, 56, 4, 56).mean(axis=(4, 6))
        return (pooled.reshape(len(windows), -1) @ self.lip_matrix).astype(np.float32)


def reference_evaluate(frames, boxes, waveform, embedder):
    """SyncNetInstance.evaluate after crop_video, all at once: filter every box, crop every frame,
    MFCC of the whole run, embed every window, calc_pdist, the statistics."""
    crops = _reference_crops(frames, boxes)
    cc = sync.mfcc(sync.int16_scale(waveform))
    min_length = min(len(crops), len(waveform) // 640)
    last = min_length - 5
    images = crops.transpose(3, 0, 1, 2).astype(np.float32)[None]  # (1, 3, T, 224, 224)
    lip = embedder.lips(np.concatenate([images[:, :, i:i + 5] for i in range(last)]))
    audio = embedder.audio(np.stack([cc[None, :, 4 * i:4 * i + 20] for i in range(last)]))
    return sync.SyncScore.from_distances(sync.calc_pdist(lip, audio), len(frames))


def _moving_face(n: int, rng) -> tuple[list[np.ndarray], list[tuple[float, float, float, float]]]:
    frames, boxes = [], []
    for i in range(n):
        frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        x1, y1 = 30 + 10 * np.sin(i / 5), 20 + 5 * np.cos(i / 7) + (40 if i == n // 2 else 0)  # one outlier box
        boxes.append((x1, y1, x1 + 60 + i % 3, y1 + 70))
        frames.append(frame)
    return frames, boxes


@pytest.mark.parametrize("frames_n, audio_frames", [(87, 87), (87, 60), (40, 90), (14, 14), (21, 21)])
def test_streaming_run_equals_the_reference_all_at_once(frames_n, audio_frames):
    rng = np.random.default_rng(frames_n + audio_frames)
    frames, boxes = _moving_face(frames_n, rng)
    waveform = (rng.standard_normal(audio_frames * 640 + 17) * 0.2).astype(np.float32)
    embedder = LinearEmbedder()
    run = sync.RunScorer(sync.int16_scale(waveform), embedder)
    for frame, box in zip(frames, boxes):
        run.add(frame, box)
        assert len(run._waiting) <= 7 and len(run._crops) <= sync.EMBED_BATCH + 4 + 7  # bounded look-ahead
        assert len(run._lip) <= sync.EMBED_BATCH + sync.VSHIFT
        assert len(run._boxes) <= sync.BOX_FILTER  # only the boxes a filter window still reaches
    ours = run.finish()
    expected = reference_evaluate(frames, boxes, waveform, LinearEmbedder())
    windows = min(frames_n, audio_frames) - 5
    assert len(ours.per_frame) == windows == embedder.calls["lips"] == embedder.calls["audio"]
    assert ours.offset_frames == expected.offset_frames
    np.testing.assert_allclose(ours.mean_distances, expected.mean_distances, rtol=1e-6)
    np.testing.assert_allclose(ours.per_frame, expected.per_frame, rtol=1e-5, atol=1e-9)
    assert ours.confidence == pytest.approx(expected.confidence, rel=1e-6, abs=1e-9)
    assert ours.distance == pytest.approx(expected.distance, rel=1e-6)


def test_a_run_of_five_frames_has_no_window_and_six_have_one():
    frames, boxes = _moving_face(6, np.random.default_rng(0))
    run = sync.RunScorer(np.zeros(640 * 5), LinearEmbedder())
    for frame, box in zip(frames[:5], boxes[:5]):
        run.add(frame, box)
    assert run.finish() is None
    # six frames: one window; the 13-frame filter's zero padding makes every box 0 (the reference
    # crops nothing there and fails; here the crop is all padding grey)
    run = sync.RunScorer(np.zeros(640 * 6), LinearEmbedder())
    for frame, box in zip(frames, boxes):
        run.add(frame, box)
    assert len(run.finish().per_frame) == 1
    assert (sync.crop_face(frames[0], 0.0, 0.0, 0.0) == 110).all()


def test_measure_on_crops_equals_the_reference():
    rng = np.random.default_rng(5)
    frames, boxes = _moving_face(50, rng)
    waveform = (rng.standard_normal(50 * 640) * 0.2).astype(np.float32)
    crops = _reference_crops(frames, boxes)
    ours = sync.measure(crops, waveform, LinearEmbedder())
    expected = reference_evaluate(frames, boxes, waveform, LinearEmbedder())
    np.testing.assert_allclose(ours.mean_distances, expected.mean_distances, rtol=1e-6)
    assert len(ours.per_frame) == 45


def test_measure_takes_a_syncnet_module():
    """``measure(crops, waveform, model)`` with the network itself equals the reference evaluation
    fed by the module's own ``forward_lip`` / ``forward_aud``."""
    import torch

    from latentmuse.models.smoke import smoke_model

    module = smoke_model("syncnet")

    class Direct:
        def audio(self, blocks):
            with torch.no_grad():
                return module.forward_aud(torch.from_numpy(blocks.astype(np.float32))).numpy()

        def lips(self, windows):
            with torch.no_grad():
                return module.forward_lip(torch.from_numpy(windows)).numpy()

    rng = np.random.default_rng(6)
    frames, boxes = _moving_face(30, rng)
    waveform = (rng.standard_normal(30 * 640) * 0.2).astype(np.float32)
    crops = _reference_crops(frames, boxes)
    ours = sync.measure(crops, waveform, module)
    expected = reference_evaluate(frames, boxes, waveform, Direct())
    assert ours.offset_frames == expected.offset_frames and len(ours.per_frame) == 25
    np.testing.assert_allclose(ours.mean_distances, expected.mean_distances, rtol=1e-5)
    assert ours.confidence == pytest.approx(expected.confidence, rel=1e-4, abs=1e-6)


def test_clip_scorer_cuts_runs_and_weights_them_by_frames():
    rng = np.random.default_rng(3)
    frames, boxes = _moving_face(150, rng)
    waveform = (rng.standard_normal(150 * 640) * 0.2).astype(np.float32)
    # frames 0-69 a run (70), 70-74 no face, 75-104 a run of 30 (too short), 105 none, 106-149 a run of 44 -> short
    faces = [b if not (70 <= i < 75 or i == 105) else None for i, b in enumerate(boxes)]
    scorer = sync.ClipScorer(waveform, Fraction(25), LinearEmbedder(), min_run=40)
    for frame, box in zip(frames, faces):
        scorer.add(frame, box)
    result = scorer.finish()
    assert [(r.first_frame, r.last_frame) for r in result.runs] == [(0, 69), (106, 149)]
    assert result.runs_too_short == 1 and result.frames_too_short == 30
    assert result.frames_scored == 70 + 44
    first = reference_evaluate(frames[:70], boxes[:70], waveform[:70 * 640], LinearEmbedder())
    second = reference_evaluate(frames[106:], boxes[106:], waveform[106 * 640:], LinearEmbedder())
    assert result.runs[0].score.confidence == pytest.approx(first.confidence, rel=1e-6)
    assert result.runs[1].score.confidence == pytest.approx(second.confidence, rel=1e-6)
    assert result.confidence == pytest.approx((70 * first.confidence + 44 * second.confidence) / 114, rel=1e-6)
    assert result.distance == pytest.approx((70 * first.distance + 44 * second.distance) / 114, rel=1e-6)
    assert result.offset_frames == first.offset_frames  # the offset of the most frames
    weakest = result.weakest()
    assert 0 <= weakest["first_frame"] <= weakest["last_frame"] <= 149
    tracks = [(first.per_frame, 0), (second.per_frame, 106)]
    means = [(np.convolve(t, np.ones(25) / 25, "valid"), start) for t, start in tracks]
    low = min((m.min(), start + int(m.argmin())) for m, start in means)
    assert weakest["confidence"] == pytest.approx(low[0], abs=1e-4) and weakest["first_frame"] == low[1]
    data = result.to_dict()
    assert data["status"] == "scored" and len(data["runs"]) == 2 and data["resampled"] is None
    # the per-second track: 25-window means, run after run (65 windows: 25, 25, 15; 39 windows: 25, 14)
    expected = [[start + i, start + min(i + 25, len(t)) - 1 + 4, round(float(t[i:i + 25].mean()), 4)]
                for t, start in tracks for i in range(0, len(t), 25)]
    assert data["per_second"] == expected and len(expected) == 5


def test_clip_scorer_samples_other_rates_at_40_ms():
    """At 30 fps, the 25 fps instant k (k / 25 s) takes frame round(k * 30 / 25): 0, 1, 2, 4, 5, 6, 7, 8, 10 ..."""
    rng = np.random.default_rng(4)
    n = 72  # 2.4 s at 30 fps: 60 instants
    frames, boxes = _moving_face(n, rng)
    waveform = (rng.standard_normal(int(2.4 * 16000)) * 0.2).astype(np.float32)
    scorer = sync.ClipScorer(waveform, Fraction(30), LinearEmbedder(), min_run=10)
    for frame, box in zip(frames, boxes):
        scorer.add(frame, box)
    result = scorer.finish()
    nearest = [int(np.floor(k * 30 / 25 + 0.5)) for k in range(60)]
    assert nearest[:9] == [0, 1, 2, 4, 5, 6, 7, 8, 10]
    picked = [min(m, n - 1) for m in nearest]
    expected = reference_evaluate([frames[m] for m in picked], [boxes[m] for m in picked], waveform, LinearEmbedder())
    (run,) = result.runs
    assert run.score.frames == 60 and run.frames == 72
    np.testing.assert_allclose(run.score.mean_distances, expected.mean_distances, rtol=1e-6)
    assert run.instant_frames == picked
    assert "30 fps" in result.to_dict()["resampled"]


def test_no_face_is_no_scorable_run():
    scorer = sync.ClipScorer(np.zeros(16000, np.float32), 25, LinearEmbedder())
    for _ in range(25):
        scorer.add(np.zeros((10, 10, 3), np.uint8), None)
    data = scorer.finish().to_dict()
    assert data["status"] == "no_scorable_run" and data["confidence"] is None and data["frames_scored"] == 0
    assert data["weakest"] is None and data["offset_frames"] is None
