"""Bad input to ``latentmuse run``: one-line error naming the problem and the fix, exit 1, no output."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from latentmuse.models.random_weights import write_random_weights

from .conftest import run_cli
from .test_pipeline import write_level_video, write_wav


@pytest.fixture(scope="module")
def media_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    speech = write_wav(root / "speech.wav", 0.4)
    return {
        "root": root,
        "speech": speech,
        "with_audio": write_level_video(root / "with_audio.mp4", 10, Fraction(25), speech),
        "silent": write_level_video(root / "silent.mp4", 10, Fraction(25), None),
        "empty_wav": write_wav(root / "empty.wav", 0.0),
        "text": _write(root / "notes.mp4", "not a video"),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def expect_error(capsys, output: Path, *argv: str) -> str:
    code, out, err = run_cli(capsys, "run", *argv, "-o", str(output), "--weights", "smoke", "--face-detector", "dlib")
    assert code == 1, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    assert "Fix:" in lines[0]
    assert not output.exists()
    assert not [p for p in output.parent.glob(f"*{output.stem}*partial*")]
    return lines[0]


def test_missing_video(capsys, tmp_path):
    line = expect_error(capsys, tmp_path / "o.mp4", str(tmp_path / "absent.mp4"))
    assert "absent.mp4" in line and "does not exist" in line


def test_unreadable_video(capsys, media_files, tmp_path):
    line = expect_error(capsys, tmp_path / "o.mp4", str(media_files["text"]))
    assert "notes.mp4" in line


def test_audio_file_given_as_video_has_no_video_stream(capsys, media_files, tmp_path):
    line = expect_error(capsys, tmp_path / "o.mp4", str(media_files["speech"]))
    assert "no video stream" in line


def test_silent_video_without_audio_option(capsys, media_files, tmp_path):
    line = expect_error(capsys, tmp_path / "o.mp4", str(media_files["silent"]))
    assert "no audio track" in line and "--audio" in line


def test_zero_length_audio(capsys, media_files, tmp_path):
    line = expect_error(capsys, tmp_path / "o.mp4", str(media_files["with_audio"]), "--audio", str(media_files["empty_wav"]))
    assert "empty.wav" in line


def test_output_folder_missing(capsys, media_files, tmp_path):
    line = expect_error(capsys, tmp_path / "no" / "such" / "o.mp4", str(media_files["with_audio"]))
    assert "does not exist" in line and "mkdir" in line


def test_output_folder_read_only(capsys, media_files):
    target = Path("/sys/latentmuse-test.mp4")
    if not Path("/sys").is_dir():
        pytest.skip("no read-only /sys here")
    line = expect_error(capsys, target, str(media_files["with_audio"]))
    assert "not writable" in line


def test_output_equal_to_input(capsys, media_files, tmp_path):
    copy = tmp_path / "in.mp4"
    shutil.copy(media_files["with_audio"], copy)
    code, _, err = run_cli(capsys, "run", str(copy), "-o", str(copy), "--weights", "smoke", "--face-detector", "dlib")
    assert code == 1 and "also an input" in err and "Traceback" not in err
    assert copy.read_bytes() == media_files["with_audio"].read_bytes()  # the input survived


def test_weights_folder_missing_a_file_names_it(capsys, media_files, tmp_path):
    weights = tmp_path / "weights"
    write_random_weights(weights, models=["musetalk_unet", "vae", "whisper"])  # no BiSeNet
    output = tmp_path / "o.mp4"
    code, _, err = run_cli(capsys, "run", str(media_files["with_audio"]), "-o", str(output),
                           "--weights", str(weights), "--face-detector", "dlib")
    assert code == 1 and "face-parse-bisent/79999_iter.pth" in err and "Traceback" not in err
    assert not output.exists()


def test_unknown_generator_and_unavailable_backend(capsys, media_files, tmp_path):
    line = expect_error(capsys, tmp_path / "o.mp4", str(media_files["with_audio"]), "--generator", "wav2lip")
    assert "--generator wav2lip" in line
    line = expect_error(capsys, tmp_path / "o.mp4", str(media_files["with_audio"]), "--backend", "trt")
    assert "--backend trt" in line


@pytest.mark.parametrize("argv, words", [
    (["run", "--no-such-option"], "No such option: --no-such-option"),
    (["run", "video.mp4"], "Missing option '--output'"),
    (["bench", "--repeats", "many"], "Invalid value for '--repeats'"),
])
def test_usage_mistakes_are_a_usage_message_and_exit_2(capsys, argv, words):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and words in out + err and "Traceback" not in out + err
