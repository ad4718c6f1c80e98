"""Bad input to ``latentmuse run``: one-line error naming the problem and the fix, exit 1, no output."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from latentmuse.models.random_weights import write_random_weights

from .conftest import run_cli
from .helpers import write_level_video, write_wav


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


def test_unavailable_backend_is_a_one_line_error(capsys, media_files, tmp_path):
    line = expect_error(capsys, tmp_path / "o.mp4", str(media_files["with_audio"]), "--backend", "trt")
    assert "--backend trt" in line


def test_validate_still_refuses_unknown_values_from_programmatic_callers(media_files, tmp_path):
    """The CLI's enums reject these at parse time; a caller of the library gets the same one-line error."""
    from latentmuse.errors import LatentmuseError
    from latentmuse.runtime.checks import validate
    from latentmuse.runtime.options import RunOptions

    for field, value in (("generator", "wav2lip"), ("backend", "cuda"), ("precision", "int8"),
                         ("face_detector", "mtcnn"), ("resolution", "384")):
        options = RunOptions.flat(video=media_files["with_audio"], output=tmp_path / "o.mp4", **{field: value})
        with pytest.raises(LatentmuseError, match=f"--{field.replace('_', '-')} {value} is not known"):
            validate(options)


def test_choices_are_the_runtime_definitions():
    """One definition: the CLI's enums list exactly the tuples the runtime validates against."""
    from typing import get_args

    from latentmuse import choices
    from latentmuse.cli import bench, run, weights
    from latentmuse.models.layouts import LATENTSYNC_REPOS, layouts
    from latentmuse.models.random_weights import Size
    from latentmuse.runners import select, torch_runner
    from latentmuse.runtime import checks

    def values(enum):
        return tuple(member.value for member in enum)

    assert values(choices.Generator) == checks.GENERATORS == ("auto", "musetalk", "latentsync")
    assert values(choices.Backend) == select.BACKENDS == ("auto", "trt", "ort", "torch")
    assert values(choices.Precision) == torch_runner.PRECISIONS == ("auto", "fp32", "fp16")
    assert values(choices.FaceDetector) == checks.FACE_DETECTORS and values(choices.Resolution) == checks.RESOLUTIONS
    assert values(choices.RandomSize) == get_args(Size)
    assert values(weights.LatentSyncVersion) == tuple(LATENTSYNC_REPOS)
    assert values(weights.Model) == tuple(entry.key for entry in layouts("1.6"))
    assert f"{choices.Resolution('256')}" == "256" and choices.Generator("auto") == "auto"
    assert run.run and bench.bench  # the commands import their enums from choices


COMMAND_PATHS = [["run"], ["batch"], ["bench"], ["sample"], ["export"], ["build"], ["doctor"],
                 ["weights", "download"], ["weights", "check"], ["weights", "convert"], ["weights", "random"],
                 ["cache", "ls"], ["cache", "clear"]]


@pytest.mark.parametrize("argv, words", [
    *[(path + ["--no-such-option"], "No such option: --no-such-option") for path in COMMAND_PATHS],
    (["nosuch"], "No such command 'nosuch'"),
    (["weights", "nosuch"], "No such command 'nosuch'"),
    (["run"], "Missing argument 'video'"),
    (["run", "video.mp4"], "Missing option '--output'"),
    (["run", "video.mp4", "-o"], "Option '-o' requires an argument"),
    (["sample"], "Missing argument 'out_dir'"),
    (["batch"], "Missing argument 'jobs'"),
    (["batch", "jobs.jsonl", "--generator", "wav2lip"], "'wav2lip' is not one of 'auto', 'musetalk', 'latentsync'"),
    (["batch", "jobs.jsonl", "--workers", "0"], "Invalid value for '--workers'"),
    (["cache", "nosuch"], "No such command 'nosuch'"),
    (["weights", "random"], "Missing argument 'dir'"),
    (["run", "v.mp4", "-o", "o.mp4", "--generator", "wav2lip"], "'wav2lip' is not one of 'auto', 'musetalk', 'latentsync'"),
    (["run", "v.mp4", "-o", "o.mp4", "--backend", "cuda"], "'cuda' is not one of 'auto', 'trt', 'ort', 'torch'"),
    (["run", "v.mp4", "-o", "o.mp4", "--precision", "int8"], "'int8' is not one of 'auto', 'fp32', 'fp16'"),
    (["run", "v.mp4", "-o", "o.mp4", "--face-detector", "mtcnn"], "'mtcnn' is not one of 'auto', 's3fd', 'dlib'"),
    (["run", "v.mp4", "-o", "o.mp4", "--resolution", "384"], "'384' is not one of 'auto', '256', '512'"),
    (["run", "v.mp4", "-o", "o.mp4", "--batch-size", "many"], "Invalid value for '--batch-size'"),
    (["bench", "--repeats", "many"], "Invalid value for '--repeats'"),
    (["bench", "--generator", "wav2lip"], "'wav2lip' is not one of 'auto', 'musetalk', 'latentsync'"),
    (["bench", "--backends", "torch,cuda"], "'cuda' is not a backend; use some of torch,ort,trt"),
    (["bench", "--backends", " , "], "no backend given"),
    (["export", "--seed", "x"], "Invalid value for '--seed'"),
    (["weights", "download", "--latentsync", "2.0"], "'2.0' is not one of '1.5', '1.6'"),
    (["weights", "check", "--model", "wav2lip"], "'wav2lip' is not one of 'musetalk_unet'"),
    (["weights", "random", "dir", "--size", "huge"], "'huge' is not one of 'tiny', 'full'"),
])
def test_usage_mistakes_are_a_usage_message_and_exit_2(capsys, argv, words):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and words in out + err and "Traceback" not in out + err, out + err
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert lines[-1].startswith("Error:") and sum(line.startswith("Error:") for line in lines) == 1  # one message line


@pytest.mark.parametrize("argv, values", [
    (["run"], ["auto|musetalk|latentsync", "auto|trt|ort|torch", "auto|fp32|fp16", "auto|s3fd|dlib", "auto|256|512"]),
    (["batch"], ["auto|musetalk|latentsync", "auto|trt|ort|torch", "auto|fp32|fp16", "auto|s3fd|dlib", "auto|256|512"]),
    (["bench"], ["auto|musetalk|latentsync", "torch, ort, trt"]),
    (["weights", "download"], ["1.5|1.6", "musetalk_unet|vae|whisper|unet3d|s3fd|fan68|bisenet|syncnet"]),
    (["weights", "random"], ["tiny|full"]),
])
def test_help_lists_the_choices(capsys, argv, values):
    code, out, err = run_cli(capsys, *argv, "--help")
    assert code == 0
    flat = " ".join(out.split())
    for value in values:
        assert value in flat, (value, out)
