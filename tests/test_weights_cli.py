"""``latentmuse weights`` and ``doctor`` as a user runs them: tables, exit codes, one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentmuse.models.folder import load_model
from latentmuse.models.layouts import layouts
from latentmuse.models.random_weights import write_random_weights

from .conftest import run_cli
from .hub_standin import HubStandIn

SMALL = ["musetalk_unet", "vae", "whisper"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_random_weights(root, size="tiny", seed=0, models=SMALL)
    return root


def test_check_prints_table_with_counts(tiny_folder, capsys):
    code, out, _ = run_cli(capsys, "weights", "check", str(tiny_folder), "--model", "musetalk_unet", "--model", "vae")
    assert code == 0
    assert "musetalk_unet" in out and "musetalkV15/unet.pth" in out
    expected = sum(p.numel() for p in load_model(tiny_folder, "musetalk_unet").parameters())
    assert f"{expected:,}" in out
    assert "test size (released: 849,947,844)" in out


def test_check_fails_for_missing_required_model(tmp_path, capsys):
    write_random_weights(tmp_path, models=["vae"])
    code, out, _ = run_cli(capsys, "weights", "check", str(tmp_path))
    assert code == 1
    assert "missing" in out and "musetalkV15/unet.pth (MuseTalk generator, fallback)" in out


def test_check_reports_a_broken_file_without_traceback(tmp_path, capsys):
    write_random_weights(tmp_path, models=["musetalk_unet"])
    (tmp_path / "musetalkV15" / "unet.pth").write_bytes(b"truncated")
    code, out, err = run_cli(capsys, "weights", "check", str(tmp_path), "--model", "musetalk_unet")
    assert code == 1
    assert "cannot read checkpoint" in out.replace("\n", " ") or "cannot read" in out
    assert "Traceback" not in out + err


def test_convert_writes_safetensors_that_loaders_prefer(tmp_path, capsys):
    write_random_weights(tmp_path, models=SMALL, seed=5)
    before = {key: load_model(tmp_path, key).state_dict() for key in SMALL}
    code, out, _ = run_cli(capsys, "weights", "convert", str(tmp_path))
    assert code == 0 and "3 file(s) written" in out
    assert (tmp_path / "musetalkV15" / "unet.safetensors").is_file()
    assert (tmp_path / "sd-vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "whisper" / "model.safetensors").is_file()
    # The pickles are gone from the loaders' path: the safetensors copies load, with equal tensors.
    for pickle_file in ("musetalkV15/unet.pth", "sd-vae/diffusion_pytorch_model.bin", "whisper/pytorch_model.bin"):
        (tmp_path / pickle_file).unlink()
    for key in SMALL:
        after = load_model(tmp_path, key).state_dict()
        assert after.keys() == before[key].keys()
        assert all(after[k].equal(v) for k, v in before[key].items())


def _hub_tree(source: Path, hub_root: Path, keys: list[str]) -> None:
    """Lay out official files as the hub repositories hold them."""
    for entry in layouts():
        if entry.key not in keys:
            continue
        for hub_file in entry.files:
            src = source / hub_file.local
            if not src.exists():  # e.g. safetensors named in the table, .bin written by the generator
                alt = next(a for a in hub_file.alternatives if (src.parent / Path(a).name).exists())
                src, name = src.parent / Path(alt).name, str(Path(hub_file.filename).with_name(Path(alt).name))
            else:
                name = hub_file.filename
            dest = hub_root / hub_file.repo_id / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)


def test_download_from_local_hub_standin(tiny_folder, tmp_path, capsys):
    hub_root = tmp_path / "hub"
    _hub_tree(tiny_folder, hub_root, SMALL)
    dest = tmp_path / "weights"
    dest.mkdir()
    shutil.copy(tiny_folder / "latentmuse.json", dest)  # the test-size configs, so verification can load them
    with HubStandIn(hub_root) as hub:
        code, out, _ = run_cli(
            capsys, "weights", "download", "--dir", str(dest), "--endpoint", hub.endpoint,
            *[arg for key in SMALL for arg in ("--model", key)],
        )
        assert code == 0, out
        # The VAE repo here has only the .bin: the safetensors name was tried first, then the fallback.
        assert hub.requests[("HEAD", "/stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.safetensors")] == 1
        assert (dest / "sd-vae" / "diffusion_pytorch_model.bin").is_file()
        assert (dest / "musetalkV15" / "unet.pth").read_bytes() == (tiny_folder / "musetalkV15" / "unet.pth").read_bytes()
        assert "downloaded" in out and not (dest / ".downloads").exists()
        gets = sum(n for (method, _), n in hub.requests.items() if method == "GET")
        # A second run finds every file present and fetches nothing.
        code, out, _ = run_cli(capsys, "weights", "download", "--dir", str(dest), "--endpoint", hub.endpoint,
                               *[arg for key in SMALL for arg in ("--model", key)])
        assert code == 0 and "present" in out
        assert sum(n for (method, _), n in hub.requests.items() if method == "GET") == gets


def test_download_checks_pinned_hashes(tmp_path, capsys):
    hub_root = tmp_path / "hub"
    fake = hub_root / "vinthony" / "SadTalker" / "hub" / "checkpoints" / "s3fd-619a316812.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the released detector")
    with HubStandIn(hub_root) as hub:
        code, _, err = run_cli(capsys, "weights", "download", "--dir", str(tmp_path / "w"), "--endpoint", hub.endpoint,
                               "--model", "s3fd", "--no-verify")
    assert code == 1
    assert "expected 619a31681264" in err and "download again" in err


def test_download_unreachable_hub_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # skip retry back-off
    code, _, err = run_cli(capsys, "weights", "download", "--dir", str(tmp_path), "--endpoint", "http://127.0.0.1:9",
                           "--model", "bisenet")
    assert code == 1
    assert "could not fetch vivym/face-parsing-bisenet/79999_iter.pth" in err
    assert "run the command again" in err and "Traceback" not in err


def test_unknown_model_and_version_are_usage_errors(tmp_path, capsys):
    code, out, err = run_cli(capsys, "weights", "check", str(tmp_path), "--model", "wav2lip")
    assert code == 2 and "'wav2lip' is not one of 'musetalk_unet'" in out + err
    code, out, err = run_cli(capsys, "weights", "download", "--dir", str(tmp_path), "--latentsync", "2.0")
    assert code == 2 and "'2.0' is not one of '1.5', '1.6'" in out + err


def test_console_script_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "latentmuse", "weights", "check", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: weights folder")


def test_doctor_reports_runtime_and_weights(tiny_folder, capsys):
    code, out, _ = run_cli(capsys, "doctor", "--weights", str(tiny_folder), "--engines", str(tiny_folder / "none"))
    assert code == 0
    assert "ort:CPUExecutionProvider" in out and "runs" in out
    assert "tensorrt" in out
    assert "weights: vae" in out and "found" in out
    assert "weights: unet3d" in out and "absent" in out


ALL = ["musetalk_unet", "vae", "whisper", "unet3d", "s3fd", "fan68", "bisenet", "syncnet"]


def test_random_then_check_covers_every_network_in_official_formats(tmp_path, capsys):
    """The issue's acceptance check: a folder of tiny official-format files gives a correct table."""
    code, out, _ = run_cli(capsys, "weights", "random", str(tmp_path / "w"), "--seed", "3")
    assert code == 0 and "meaningless" in out
    root = tmp_path / "w"
    # Official containers: LatentSync's {"state_dict": ...} wrapper, transformers' "model." prefix, ...
    import torch

    assert set(torch.load(root / "latentsync/latentsync_unet.pt", weights_only=True)) == {"state_dict", "global_step"}
    assert next(iter(torch.load(root / "whisper/pytorch_model.bin", weights_only=True))).startswith("model.encoder.")
    code, out, _ = run_cli(capsys, "weights", "check", str(root))
    assert code == 0, out
    from latentmuse.models.layouts import layout

    for key in ALL:
        entry = layout(key)
        module = entry.load_module()
        torch.manual_seed(0)
        tiny = sum(p.numel() for p in module.build(module.tiny_config()).parameters())
        row = next(line for line in out.splitlines() if line.startswith(f"│ {key} "))
        assert f"{tiny:,}" in row, (key, row)
        assert "yes" in row
