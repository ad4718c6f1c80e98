"""The input catalogue (docs/RELIABILITY.md): every class of real-world input a user can bring becomes a
complete video or one line naming the problem and the fix, with no output file and the inputs untouched.

Every medium is generated here with PyAV (tests/catalogue.py), nothing is committed. A complete video
is checked by decoding it with PyAV alone: frame count, displayed size, no rotation left, each
quadrant of the upright scene where it belongs (orientation), the audio stream (codec, channels, rate,
length within a frame of the video's). Most cases run the media path of a run (``validate``, then
every output frame read through ``FrameSource`` in the run's ping-pong order into ``VideoWriter``):
the pipeline adds nothing to media handling between the two. Error cases run the real command line
(``latentmuse run``: exit code 1, one line, no traceback). Where the pipeline itself is at stake (faces
on rotated video, a whole run on odd paths) it runs end to end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest

from latentmuse.runtime import media
from latentmuse.runtime.datagen import ping_pong_schedule
from latentmuse.runtime.checks import validate
from latentmuse.runtime.options import RunOptions

from .catalogue import (
    QUADRANTS,
    Tone,
    copy_as,
    decode,
    have_encoder,
    quadrant_levels,
    scene,
    snapshot,
    tmpfs,
    truncate_copy,
    write_audio,
    write_video,
)
from .conftest import run_cli

FPS = 25
TONE = Tone(0.41, 44100, 2)  # 0.41 s x 25 fps = 10 output frames (floor), well clear of a boundary
LEVEL_TOLERANCE = 9  # lossy codecs on flat quadrants, 8-bit round trips included


# ------------------------------------------------------------------------------------------ the two runs


def media_run(video: Path, audio: Path | None, output: Path, codec: str = "auto") -> None:
    """What ``latentmuse run`` does with media: ``validate`` (every check before models load), then the
    run's frame schedule read through ``FrameSource`` and written by ``VideoWriter`` (the generator
    passes frames without a face through unchanged, and these scenes have none)."""
    options = RunOptions.flat(video=video, output=output, audio=audio, codec=codec)
    inputs = validate(options)
    info = inputs.info
    n_out = len(inputs.waveform) * info.fps.numerator // (16000 * info.fps.denominator)
    assert inputs.n_out == n_out and inputs.schedule == ping_pong_schedule(info.frame_count, n_out)
    with media.VideoWriter(output, info.width, info.height, info.fps, inputs.audio, codec=codec,
                           sample_aspect_ratio=info.sample_aspect_ratio) as writer, \
            media.FrameSource(video, info) as source:
        for _, frame in source.frames(inputs.schedule):
            writer.write(frame)


def cli_error(capsys, video: Path, audio: Path | None, output: Path, *extra: str) -> str:
    """``latentmuse run`` on a bad input: exit 1 and one line ``error: ... Fix: ...``, no traceback."""
    argv = ["run", str(video), "-o", str(output), "--weights", "smoke", "--face-detector", "dlib",
            "--generator", "musetalk", *extra]
    if audio is not None:
        argv += ["--audio", str(audio)]
    code, out, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, out + err
    assert len(lines) == 1 and lines[0].startswith("error: ") and " Fix: " in lines[0], err
    assert "Traceback" not in out + err
    return lines[0]


def leftovers(folder: Path, before: set[str]) -> list[str]:
    return sorted(set(os.listdir(folder)) - before) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------ expectations


@dataclass(frozen=True)
class Video:
    """A complete output video."""

    frames: int | None  # None: floor(the audio source's decoded length x fps), decoded here
    size: tuple[int, int]  # displayed (width, height)
    codec: str = "h264"  # PyAV decoder name
    audio: str = "aac"
    channels: int = 2
    rate: int = 44100
    pix_fmt: str | None = None  # when the case is about it
    fps: Fraction = Fraction(FPS)
    sample_aspect_ratio: Fraction | None = None  # None: square pixels (or unstated)
    tag: str | None = None  # the FourCC, when the case is about it


@dataclass(frozen=True)
class Error:
    """A one-line error: words it must contain."""

    words: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], tuple[Path, Path | None]]  # writes the inputs into a folder: (video, --audio)
    expect: Video | Error
    output: str = "out.mp4"
    codec: str = "auto"


def check_video(output: Path, want: Video, audio_source: Path) -> None:
    got = decode(output)
    frames = want.frames
    if frames is None:  # e.g. MP3 in AVI: no gapless info, the decoder's delay and padding are part of the track
        frames = int(decode(audio_source).audio_seconds * want.fps)
    assert len(got.frames) == frames
    assert got.size == want.size
    assert got.rotations == {0}  # written upright: no display matrix left for players to apply
    assert got.codec == want.codec
    if want.pix_fmt is not None:
        assert got.pix_fmt == want.pix_fmt
    if want.tag is not None:
        assert got.codec_tag == want.tag
    for frame in got.frames:  # the upright scene, quadrant by quadrant (a turned or mirrored frame fails)
        levels = quadrant_levels(frame)
        assert all(abs(a - b) <= LEVEL_TOLERANCE for a, b in zip(levels, QUADRANTS)), levels
    assert (got.audio_codec, got.channels, got.rate) == (want.audio, want.channels, want.rate)
    assert got.fps == want.fps
    assert (got.sample_aspect_ratio or Fraction(1)) == (want.sample_aspect_ratio or Fraction(1))
    assert abs(got.audio_seconds - frames / want.fps) <= 1 / want.fps


def run_case(case: Case, folder: Path, capsys) -> None:
    video, audio = case.build(folder)
    inputs = [p for p in (video, audio) if p is not None]
    before = snapshot(*inputs)
    out_dir = folder / "out"
    out_dir.mkdir()
    output = out_dir / case.output
    if isinstance(case.expect, Video):
        media_run(video, audio, output, case.codec)
        check_video(output, case.expect, audio or video)
        assert os.listdir(out_dir) == [case.output]  # no temporary file left
    else:
        extra = ("--codec", case.codec) if case.codec != "auto" else ()
        line = cli_error(capsys, video, audio, output, *extra)
        assert all(word in line for word in case.expect.words), line
        assert os.listdir(out_dir) == []  # no output, no temporary file
    assert snapshot(*inputs) == before  # the inputs' bytes and mtimes are untouched


# ------------------------------------------------------------------------------------------ builders


def video(name: str, **kw) -> Callable[[Path], tuple[Path, Path | None]]:
    """A video with its own audio track (TONE unless ``audio=``), no --audio."""
    kw.setdefault("audio", TONE)

    def build(folder: Path) -> tuple[Path, Path | None]:
        return write_video(folder / name, **kw), None

    return build


def with_audio(name: str, audio_name: str, tone: Tone = TONE, **kw) -> Callable[[Path], tuple[Path, Path | None]]:
    """A video without a track of its own (``write_video`` keywords) and a separate --audio file."""
    kw.setdefault("frames", 10)
    kw["audio"] = None

    def build(folder: Path) -> tuple[Path, Path | None]:
        return write_video(folder / name, **kw), write_audio(folder / audio_name, tone)

    return build


def needs(*encoders: str):
    missing = [e for e in encoders if not have_encoder(e)]
    return pytest.mark.skipif(bool(missing), reason=f"this PyAV build has no {', '.join(missing)} encoder")


def case(id: str, build, expect, *, encoders: tuple[str, ...] = (), **kw):
    return pytest.param(Case(id, build, expect, **kw), id=id, marks=needs(*encoders) if encoders else ())


SIZE = (64, 48)
STEREO = Video(10, SIZE)
MP3_STEREO = Video(None, SIZE)  # MP3 (AVI's usual audio) decodes a little longer than it was written

# Input containers and codecs: each with its own audio track in the container's usual codec.
CONTAINERS = [
    case("in-mp4-h264", video("in.mp4", codec="h264"), STEREO, encoders=("libx264",)),
    case("in-mov-h264", video("in.mov", codec="h264"), STEREO, encoders=("libx264",)),
    case("in-mkv-h264", video("in.mkv", codec="h264"), STEREO, encoders=("libx264",)),
    case("in-webm-vp9", video("in.webm", codec="vp9"), Video(10, SIZE, rate=48000), encoders=("libvpx-vp9", "libopus")),
    case("in-avi-mpeg4", video("in.avi", codec="mpeg4"), MP3_STEREO, encoders=("mpeg4", "libmp3lame")),
    case("in-mp4-hevc", video("in.mp4", codec="hevc"), STEREO, encoders=("libx265",)),
    case("in-mkv-vp9", video("in.mkv", codec="vp9"), STEREO, encoders=("libvpx-vp9",)),
    case("in-mp4-mpeg4", video("in.mp4", codec="mpeg4"), STEREO, encoders=("mpeg4",)),
    case("in-mov-prores", video("in.mov", codec="prores"), STEREO, encoders=("prores_ks",)),
    case("in-mov-mjpeg", video("in.mov", codec="mjpeg"), STEREO, encoders=("mjpeg",)),
    case("in-avi-mjpeg", video("in.avi", codec="mjpeg"), MP3_STEREO, encoders=("mjpeg", "libmp3lame")),
]

# Pixel formats of the input (the output is 8-bit 4:2:0 H.264).
PIXEL_FORMATS = [
    case("pix-gray-hevc", video("in.mkv", codec="hevc", pix_fmt="gray"), STEREO, encoders=("libx265",)),
    case("pix-yuv444p-h264", video("in.mkv", codec="h264", pix_fmt="yuv444p"), STEREO, encoders=("libx264",)),
    case("pix-yuv420p10le-hevc", video("in.mkv", codec="hevc", pix_fmt="yuv420p10le"), STEREO, encoders=("libx265",)),
    case("pix-yuv422p10le-prores", video("in.mov", codec="prores", pix_fmt="yuv422p10le"), STEREO, encoders=("prores_ks",)),
    case("pix-yuvj420p-mjpeg", video("in.mov", codec="mjpeg", pix_fmt="yuvj420p"), STEREO, encoders=("mjpeg",)),
]

# Display rotation: stored turned, shown upright; the output is upright pixels of the displayed size.
PORTRAIT = (48, 64)
ROTATIONS = [
    case("rot-90-mp4", video("in.mp4", size=PORTRAIT, rotation=90), Video(10, PORTRAIT)),
    case("rot-180-mp4", video("in.mp4", size=SIZE, rotation=180), Video(10, SIZE)),
    case("rot-270-mp4", video("in.mp4", size=PORTRAIT, rotation=270), Video(10, PORTRAIT)),
    case("rot-minus90-mov", video("in.mov", size=PORTRAIT, rotation=-90), Video(10, PORTRAIT)),
    case("rot-90-mkv", video("in.mkv", size=PORTRAIT, rotation=90), Video(10, PORTRAIT)),
    case("rot-mirror-mp4", video("in.mp4", size=SIZE, rotation=0, hflip=True), Video(10, SIZE)),
    case("rot-90-mirror-mov", video("in.mov", size=PORTRAIT, rotation=90, hflip=True), Video(10, PORTRAIT)),
    case("rot-45-refused", video("in.mp4", size=SIZE, rotation=45), Error(("rotate it by 315 degrees", "multiples of 90"))),
]

# Sizes: kept exactly, odd ones included (H.264 then 4:4:4; VP9, MPEG-4 Part 2 code odd 4:2:0).
SHORT = Tone(0.09, 44100, 2)  # 2 frames
SIZES = [
    case("size-2x2", video("in.mkv", size=(2, 2), frames=2, audio=SHORT), Video(2, (2, 2))),
    case("size-16x16", video("in.mkv", size=(16, 16), frames=2, audio=SHORT), Video(2, (16, 16))),
    case("size-odd-33x17-mp4", video("in.webm", codec="vp9", size=(33, 17), frames=2, audio=SHORT),
         Video(2, (33, 17), rate=48000, pix_fmt="yuv444p"), encoders=("libvpx-vp9",)),
    case("size-odd-33x17-webm", video("in.mkv", codec="vp9", size=(33, 17), frames=2, audio=SHORT),
         Video(2, (33, 17), codec="vp9", audio="opus", rate=48000, pix_fmt="yuv420p"), output="out.webm",
         encoders=("libvpx-vp9",)),
    case("size-odd-17x33-avi", video("in.avi", codec="mjpeg", size=(17, 33), frames=2, audio=SHORT),
         Video(None, (17, 33), codec="mpeg4", audio="pcm_s16le", pix_fmt="yuv420p"), output="out.avi",
         encoders=("mjpeg", "libmp3lame")),
    case("size-uhd-3840x2160", video("in.mp4", size=(3840, 2160), frames=2, audio=SHORT), Video(2, (3840, 2160))),
    # anamorphic (e.g. DV 720x480 shown 4:3): the pixels' aspect ratio is carried to the output
    case("size-anamorphic-sar-8-9", video("in.mov", sample_aspect_ratio=Fraction(8, 9)),
         Video(10, SIZE, sample_aspect_ratio=Fraction(8, 9))),
    case("size-anamorphic-into-mkv", video("in.mp4", sample_aspect_ratio=Fraction(4, 3)),
         Video(10, SIZE, sample_aspect_ratio=Fraction(4, 3)), output="out.mkv"),
]

# Frame counts and timing.
TIMING = [
    case("one-frame", video("in.mp4", frames=1), STEREO),  # one frame held for the audio's length
    case("two-frames-very-short", video("in.mp4", frames=2, audio=Tone(0.05, 44100, 2)), Video(1, SIZE)),
    # 10 frames over 15 ticks of 1/25 s: constant at the average 50/3 fps, 0.41 s x 50/3 = 6.8 -> 6 frames
    case("vfr", video("in.mp4", frames=10, pts=[0, 1, 2, 4, 5, 7, 8, 11, 12, 14]), Video(6, SIZE, fps=Fraction(50, 3))),
    # Matroska without DefaultDuration: FFmpeg guesses 50 (or 1000) fps; the timestamps say 25
    case("mkv-no-stated-rate", video("in.mkv", frames=3, state_rate=False), STEREO),
]

# Audio: channels x rates, as the video's own track (AAC in mp4) and as a separate wav.
RATES = (8000, 16000, 22050, 44100, 48000, 96000)
AUDIO = [
    case(f"audio-own-{ch}ch-{rate}", video("in.mp4", audio=Tone(0.41, rate, ch)), Video(10, SIZE, channels=ch, rate=rate))
    for ch in (1, 2, 6) for rate in RATES
] + [
    case(f"audio-wav-{ch}ch-{rate}", with_audio("in.mp4", "speech.wav", Tone(0.41, rate, ch)),
         Video(10, SIZE, channels=ch, rate=rate))
    for ch in (1, 2, 6) for rate in RATES
] + [
    case("audio-flac", with_audio("in.mp4", "speech.flac"), STEREO),
    case("audio-m4a", with_audio("in.mp4", "speech.m4a"), STEREO),
    case("audio-mp3", with_audio("in.mp4", "speech.mp3"), STEREO, encoders=("libmp3lame",)),
    case("audio-opus", with_audio("in.mp4", "speech.opus"), Video(10, SIZE, rate=48000), encoders=("libopus",)),
    case("audio-silent", with_audio("in.mp4", "silence.wav", Tone(0.41, 16000, 1, silent=True)),
         Video(10, SIZE, channels=1, rate=16000)),
    case("audio-longer-than-video", with_audio("in.mp4", "long.wav", Tone(2.01, 16000, 1)),
         Video(50, SIZE, channels=1, rate=16000)),  # the video ping-pongs to the audio's length
    case("audio-shorter-than-video", with_audio("in.mp4", "short.wav", Tone(0.13, 16000, 1)),
         Video(3, SIZE, channels=1, rate=16000)),
    case("audio-5.1-96k-into-webm", with_audio("in.mp4", "speech.wav", Tone(0.41, 96000, 6)),
         Video(10, SIZE, codec="vp9", audio="opus", channels=6, rate=48000), output="out.webm",
         encoders=("libvpx-vp9", "libopus")),
    case("audio-5.1-96k-into-avi", with_audio("in.mp4", "speech.wav", Tone(0.41, 96000, 6)),
         Video(10, SIZE, codec="mpeg4", audio="pcm_s16le", channels=6, rate=96000), output="out.avi"),
    case("audio-none-anywhere", video("in.mp4", audio=None), Error(("in.mp4 has no audio track", "--audio FILE"))),
    case("audio-zero-length", with_audio("in.mp4", "empty.wav", Tone(0.0, 16000, 1)),
         Error(("empty.wav", "empty (0 samples)"))),
    case("audio-a-video-without-sound", lambda f: (write_video(f / "in.mp4", audio=None),
                                                   write_video(f / "mute.mp4", audio=None)),
         Error(("mute.mp4 has no audio track", "a video that has sound"))),
]

AUDIO.append(case("audio-from-a-video", lambda f: (write_video(f / "in.mp4", audio=None),
                                                   write_video(f / "speech.mkv", frames=3, audio=TONE)), STEREO))


def _not_what_it_says(kind: str):
    def build(folder: Path) -> tuple[Path, Path | None]:
        speech = write_audio(folder / "speech.wav", TONE)
        if kind == "wav":
            return copy_as(speech, folder / "sound.mp4"), None
        if kind == "png":
            import cv2

            cv2.imwrite(str(folder / "still.png"), scene(*SIZE))
            return copy_as(folder / "still.png", folder / "photo.mp4"), speech
        if kind == "text":
            (folder / "notes.mp4").write_text("these are not frames\n" * 40)
            return folder / "notes.mp4", speech
        if kind == "empty":
            (folder / "empty.mp4").write_bytes(b"")
            return folder / "empty.mp4", speech
        raise ValueError(kind)

    return build


def _truncated(name: str, fraction: float, faststart: bool = False):
    def build(folder: Path) -> tuple[Path, Path | None]:
        whole = folder / f"whole{Path(name).suffix}"
        if faststart:  # moov first: the header survives the cut and lists every frame
            with media.VideoWriter(whole, *SIZE, Fraction(FPS), write_audio(folder / "a.wav", Tone(1.2, 16000, 1))) as w:
                for _ in range(30):
                    w.write(scene(*SIZE))
        else:
            write_video(whole, frames=30, audio=Tone(1.2, 16000, 1))
        cut = truncate_copy(whole, folder / name, fraction)
        whole.unlink()
        return cut, None

    return build


FILES = [
    case("file-empty", _not_what_it_says("empty"), Error(("empty.mp4 is empty (0 bytes)",))),
    case("file-truncated-mp4-moov-at-end", _truncated("cut.mp4", 0.5),
         Error(("cut.mp4", "damaged or truncated"))),
    case("file-truncated-mp4-faststart", _truncated("cut.mp4", 0.5, faststart=True),
         Error(("cut.mp4 is truncated", "header lists 30 video frames"))),
    case("file-truncated-mkv", _truncated("cut.mkv", 0.6), Error(("cut.mkv is truncated", "should last 1.20 s"))),
    case("file-wav-named-mp4", _not_what_it_says("wav"), Error(("sound.mp4 has no video stream", "--audio"))),
    case("file-wav-named-mp4-as-audio", lambda f: (write_video(f / "in.mp4", audio=None),
                                                   copy_as(write_audio(f / "s.wav", TONE), f / "speech.mp4")), STEREO),
    case("file-png-named-mp4", _not_what_it_says("png"), Error(("photo.mp4 is a still image (png)", "ffmpeg -loop 1"))),
    case("file-text-named-mp4", _not_what_it_says("text"), Error(("notes.mp4 is not a media file",))),
    case("file-text-as-audio", lambda f: (write_video(f / "in.mp4", audio=None), _write(f / "speech.wav", "not sound\n" * 40)),
         Error(("speech.wav is not a media file",))),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# The output: container by extension, --codec where the container takes it.
TAGS = {("mp4", "hevc"): "hvc1", ("mov", "hevc"): "hvc1", ("avi", "mpeg4"): "XVID"}  # what players look for
OUTPUTS = [
    case(f"out-{ext}-{codec}", with_audio("in.mp4", "speech.wav"),
         Video(10, SIZE, codec=decoder, audio=audio, rate=48000 if audio == "opus" else 44100,
               tag=TAGS.get((ext, decoder))),
         output=f"out.{ext}", codec=codec, encoders=(encoder,))
    for ext, codec, decoder, audio, encoder in [
        ("mp4", "auto", "h264", "aac", "libx264"), ("mp4", "hevc", "hevc", "aac", "libx265"),
        ("mp4", "mpeg4", "mpeg4", "aac", "mpeg4"), ("m4v", "auto", "h264", "aac", "libx264"),
        ("mov", "auto", "h264", "aac", "libx264"), ("mov", "hevc", "hevc", "aac", "libx265"),
        ("mov", "prores", "prores", "pcm_s16le", "prores_ks"), ("mov", "mpeg4", "mpeg4", "aac", "mpeg4"),
        ("mov", "mjpeg", "mjpeg", "aac", "mjpeg"), ("mkv", "auto", "h264", "aac", "libx264"),
        ("mkv", "hevc", "hevc", "aac", "libx265"), ("mkv", "vp9", "vp9", "aac", "libvpx-vp9"),
        ("mkv", "mpeg4", "mpeg4", "aac", "mpeg4"), ("mkv", "mjpeg", "mjpeg", "aac", "mjpeg"),
        ("mkv", "prores", "prores", "pcm_s16le", "prores_ks"), ("webm", "auto", "vp9", "opus", "libvpx-vp9"),
        ("avi", "auto", "mpeg4", "pcm_s16le", "mpeg4"), ("avi", "mjpeg", "mjpeg", "pcm_s16le", "mjpeg"),
    ]
] + [
    case("out-mp4-vp9-refused", with_audio("in.mp4", "speech.wav"), Error(("VP9 (--codec vp9) cannot go into MP4",)),
         codec="vp9"),
    case("out-webm-h264-refused", with_audio("in.mp4", "speech.wav"), Error(("H.264 (--codec h264) cannot go into WebM",)),
         output="out.webm", codec="h264"),
    case("out-avi-prores-refused", with_audio("in.mp4", "speech.wav"), Error(("cannot go into AVI", "use --codec mpeg4 or mjpeg for .avi")),
         output="out.avi", codec="prores"),
    case("out-hevc-odd-size-refused", with_audio("in.mkv", "speech.wav", codec="vp9", size=(33, 17)),
         Error(("HEVC cannot encode 33x17 frames", "--codec h264")), codec="hevc"),
    case("out-hevc-tiny-refused", with_audio("in.mkv", "speech.wav", size=(8, 8)),
         Error(("HEVC cannot encode 8x8 frames",)), output="out.mkv", codec="hevc"),
    case("out-extension-png", with_audio("in.mp4", "speech.wav"), Error(("unsupported extension '.png'",)),
         output="out.png"),
]

CATALOGUE = CONTAINERS + PIXEL_FORMATS + ROTATIONS + SIZES + TIMING + AUDIO + FILES + OUTPUTS


@pytest.mark.parametrize("item", CATALOGUE)
def test_catalogue(item: Case, tmp_path: Path, capsys) -> None:
    run_case(item, tmp_path, capsys)


# ------------------------------------------------------------------------------------------ where the output goes


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A video without sound and a speech file, in their own folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    return write_video(folder / "in.mp4", audio=None), write_audio(folder / "speech.wav", TONE)


def test_output_folder_missing(capsys, inputs, tmp_path):
    video, speech = inputs
    before = snapshot(video, speech)
    line = cli_error(capsys, video, speech, tmp_path / "no" / "such" / "out.mp4")
    assert "the output folder" in line and "does not exist" in line and "mkdir -p" in line
    assert not (tmp_path / "no").exists() and snapshot(video, speech) == before


def test_output_folder_read_only(capsys, inputs, tmp_path):
    """A read-only filesystem for real (root ignores permission bits, not a read-only mount)."""
    video, speech = inputs
    with tmpfs(tmp_path / "ro", read_only=True) as folder:
        line = cli_error(capsys, video, speech, folder / "out.mp4")
        assert "is not writable" in line and "choose another output path" in line
        assert os.listdir(folder) == []


def test_output_folder_without_write_permission(capsys, inputs, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits (the read-only mount case covers root)")
    video, speech = inputs
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = cli_error(capsys, video, speech, locked / "out.mp4")
    assert "is not writable" in line


@pytest.mark.parametrize("how", ["same-path", "symlink", "hard-link", "the-audio"])
def test_output_equal_to_an_input(capsys, inputs, tmp_path, how):
    """Writing would destroy an input: refused, however the same file is named."""
    video, speech = inputs
    before = snapshot(video, speech)
    output = {"same-path": video, "the-audio": speech.with_suffix(".mp4")}.get(how, tmp_path / "alias.mp4")
    if how == "symlink":
        output.symlink_to(video)
    elif how == "hard-link":
        os.link(video, output)
    elif how == "the-audio":  # a video given as --audio, and the same file as the output
        speech = copy_as(write_video(tmp_path / "in" / "talk.mp4", audio=TONE), output)
        before = snapshot(video, speech)
    line = cli_error(capsys, video, speech, output)
    assert "is also an input" in line and "writing it would destroy the input" in line
    assert snapshot(video, speech) == before
    assert sorted(p.name for p in (tmp_path / "in").iterdir() if "partial" in p.name) == []


# ------------------------------------------------------------------------------------------ end to end


def standin_model_set():
    """Stand-in runners (tests/standins.py) with the stand-in Whisper: a run's models in milliseconds."""
    from .standins import standin_models, whisper_standin

    return standin_models(1, whisper_runner=whisper_standin())[0]


def test_run_on_paths_with_spaces_and_non_ascii(capsys, tmp_path, monkeypatch):
    """The whole command on names a user's editor produces: spaces, accents, an apostrophe, a symbol
    (the models are stand-ins: the names, not the networks, are at stake)."""
    from latentmuse.runtime import session

    monkeypatch.setattr(session, "load_run_models", lambda *args, **kwargs: standin_model_set())
    folder = tmp_path / "dossier à trier"
    folder.mkdir()
    video = write_video(folder / "vidéo d'été 01.mov", audio=TONE)
    before = snapshot(video)
    output, report = folder / "sortie ✓ finale.mkv", folder / "rapport — 1.json"
    code, out, err = run_cli(capsys, "run", str(video), "-o", str(output), "--weights", "smoke",
                             "--face-detector", "dlib", "--generator", "musetalk", "--report", str(report))
    assert code == 0, out + err
    check_video(output, STEREO, video)
    assert json.loads(report.read_text())["frames_out"] == 10
    assert snapshot(video) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted([video.name, output.name, report.name])


def test_error_naming_a_path_with_brackets_is_one_line(capsys, tmp_path):
    """Editors name files "take [final].mp4"; the line naming one must show it as it is."""
    folder = tmp_path / "[draft]"
    folder.mkdir()
    line = cli_error(capsys, folder / "take [/b].mp4", None, folder / "out [v2].mp4")
    assert "take [/b].mp4 does not exist" in line


FACE_SIZE = (256, 320)  # portrait, as a phone shows it; stored 320 x 256 with a 90 degree display matrix


def _face_picture(total: int):
    from skimage.data import astronaut

    from latentmuse.samples import render_frame

    image = np.ascontiguousarray(astronaut()[:, :, ::-1])
    return lambda i: render_frame(i, total, FACE_SIZE, range(0), image)


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotated_phone_video_faces_found_upright_and_written_upright(tmp_path, rotation):
    """A phone's portrait clip (landscape pixels + display matrix): every face is found (the detector
    sees it upright), and the output shows exactly what the input shows, with no matrix left."""
    from latentmuse.runtime.faces import DlibFrontEnd
    from latentmuse.runtime.generators.musetalk import crop_box
    from latentmuse.runtime.lipsync import run

    frames = 4
    picture = _face_picture(frames)
    video = write_video(tmp_path / "phone.mov", size=FACE_SIZE, frames=frames, rotation=rotation,
                        picture=picture, audio=Tone(frames / FPS + 0.01, 48000, 2))
    with av.open(str(video)) as container:  # what is stored is sideways: a detector finds no face in it
        stored = next(container.decode(video=0)).to_ndarray(format="bgr24")
    assert stored.shape[:2] == (FACE_SIZE[0], FACE_SIZE[1]) and DlibFrontEnd().detect([stored]) == [None]

    output = tmp_path / "out.mp4"
    report = run(RunOptions.flat(video=video, output=output, weights="smoke", face_detector="dlib",
                            generator="musetalk"), models=standin_model_set())
    assert report.frames_out == frames and report.frames_no_face == 0 and report.frames_processed == frames

    got, shown = decode(output), decode(video)  # what a player shows of each (PyAV's rotation, numpy)
    assert got.size == shown.size == FACE_SIZE and got.rotations == {0} and {r % 360 for r in shown.rotations} == {rotation}
    assert len(got.frames) == frames
    front = DlibFrontEnd()
    for frame, upright in zip(got.frames, shown.frames, strict=True):
        face = front.detect([upright])[0]
        assert face is not None
        x1, y1, x2, y2 = crop_box(face, upright.shape[:2])
        outside = np.ones(upright.shape[:2], bool)
        outside[max(0, y1 - 8):y2 + 8, max(0, x1 - 8):x2 + 8] = False  # the generated region, plus blending
        diff = np.abs(frame.astype(int) - upright.astype(int)).mean(axis=2)
        assert diff[outside].mean() < 3.0  # the same picture, the same way up, outside the mouth crop
        assert diff[~outside].mean() > diff[outside].mean()  # and the stand-in generator did change the face


def test_codec_choices_are_the_writer_codecs():
    """``--codec`` lists exactly the writer's codecs, in order (the command line reads them without av)."""
    from latentmuse import choices

    assert tuple(member.value for member in choices.Codec) == choices.CODECS == media.CODECS
    assert media.CODECS == ("auto", *media.VIDEO_CODECS)
    for fmt in media.OUTPUT_FORMATS.values():
        assert set(fmt.codecs) <= set(media.VIDEO_CODECS)
