"""``latentmuse serve``'s refusals before anything starts: each one line, exit 1, no Ray started."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("ray.serve", reason="the serve extra is not installed (pip install 'latentmuse[serve]')")

from latentmuse.cli.serve import absolute_paths, hold_state, is_loopback, read_token  # noqa: E402
from latentmuse.errors import LatentmuseError  # noqa: E402
from latentmuse.runtime.options import LoadOptions  # noqa: E402

from .conftest import run_cli  # noqa: E402


def refused(capsys, *argv: str) -> str:
    code, out, err = run_cli(capsys, "serve", *argv)
    assert code == 1, (out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_public_address_without_a_token_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTMUSE_TOKEN", raising=False)
    err = refused(capsys, "--host", "0.0.0.0", "--state", str(tmp_path / "s"))
    assert "--host 0.0.0.0 is reachable from other machines" in err and "--token-file" in err
    assert not (tmp_path / "s").exists()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in refused(capsys, "--host", "0.0.0.0", "--token-file", str(empty))
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert "too easy to guess" in refused(capsys, "--token-file", str(short))
    assert "cannot read --token-file" in refused(capsys, "--token-file", str(tmp_path / "missing"))


def test_the_token_comes_from_its_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTMUSE_TOKEN", "  from-the-environment-123  ")
    assert read_token(None) == "from-the-environment-123"
    path = tmp_path / "token"
    path.write_text("from-the-file-0123456789\n")
    assert read_token(path) == "from-the-file-0123456789"
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2", "0.0.0.0", "10.0.0.1", "example.org")] == \
        [True, True, True, True, False, False, False]


def test_a_busy_port_and_a_missing_input_root_are_one_line(capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = refused(capsys, "--port", str(port), "--state", str(tmp_path / "s"), "--weights", "smoke")
        assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert "--input-root" in refused(capsys, "--input-root", str(tmp_path / "nowhere"), "--weights", "smoke")
    assert "--guidance 0.5 is below 1" in refused(capsys, "--guidance", "0.5")
    assert "weights folder" in refused(capsys, "--weights", str(tmp_path / "no-weights"))


def test_one_state_folder_serves_one_service(tmp_path):
    held = hold_state(tmp_path)
    with pytest.raises(LatentmuseError, match="another latentmuse serve uses --state"):
        hold_state(tmp_path)
    held.close()
    hold_state(tmp_path).close()


def test_the_workers_get_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load = absolute_paths(LoadOptions(weights="weights", engines="engines"))
    assert load.weights == str(tmp_path / "weights") and load.engines == tmp_path / "engines"
    assert absolute_paths(LoadOptions(weights="smoke")).weights == "smoke"
