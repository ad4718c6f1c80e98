"""`latentmuse export` never loses data: foreign files stay, a failed re-export keeps the validated one,
side files that cannot be read are errors, concurrent exports into one folder do not mix, and the
report says what happened on every outcome (interrupts included).

The graph is ``whisper_post_ln`` (Whisper's final LayerNorm) through the TorchScript exporter: the
whole export-validate-install cycle in well under a second.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from latentmuse.artifacts.export_report import REPORT_NAME, ExportResult, read_report, read_report_data, validated_entry
from latentmuse.artifacts.onnx_files import onnx_sha256, onnx_stat
from latentmuse.errors import LatentmuseError
from latentmuse.export import onnx_export as oe
from latentmuse.export import publish as pub
from latentmuse.graphs.registry import GRAPHS
from latentmuse.outcomes import Interrupted

from .conftest import run_cli

NAME = "whisper_post_ln"
SPEC = GRAPHS[NAME]


def _model(shift: float = 0.0) -> torch.nn.Module:
    """The smoke Whisper, its weights shifted by ``shift`` (a different export, a different sha256)."""
    model = oe.smoke_model(SPEC.model_key)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift)
    return model


def _export(out: Path, shift: float = 0.0, spec=SPEC, **kwargs) -> ExportResult:
    kwargs = {"fp16": False, "dynamo": False, **kwargs}
    return oe.export_graph(spec, _model(shift), out, **kwargs)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (hidden ones too) with its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _foreign(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Files a user keeps in the export folder; none is the exporter's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in {"notes.txt": b"mine", "clip.mp4": b"\x00\x00\x00\x18ftypmp42", "weights.bin": b"\x01" * 64,
                       "other.onnx": b"not even onnx", "other.onnx.data": b"\x02" * 8, ".hidden": b"h",
                       "sub/inner.json": b"{}"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return _snapshot(folder)


def _no_staging(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if ".export-" in p.name], list(folder.iterdir())


def test_torchscript_export_with_external_data_keeps_foreign_files(tmp_path):
    out = tmp_path / "onnx"
    foreign = _foreign(out)
    r = _export(out, external_data_threshold_bytes=0, fp16=True)
    assert r.exporter == "torchscript" and r.external_data and r.status == "pass", r.to_dict()

    after = _snapshot(out)
    assert {k: after[k] for k in foreign} == foreign  # every foreign file, byte for byte, mtime too
    assert sorted(set(after) - set(foreign)) == sorted([
        REPORT_NAME, f"{NAME}.onnx", f"{NAME}.onnx.data", f"{NAME}.fp16.onnx", f"{NAME}.fp16.onnx.data"])
    _no_staging(out)
    # the report describes exactly the installed files, so the runtime and the builder trust them
    entry = read_report(out / REPORT_NAME)[NAME]
    fp32, fp16 = out / f"{NAME}.onnx", out / f"{NAME}.fp16.onnx"
    assert entry["file"] == str(fp32) and entry["fp16_file"] == str(fp16)
    assert entry["sha256"] == onnx_sha256(fp32) and entry["stat"] == onnx_stat(fp32)
    assert entry["fp16_sha256"] == onnx_sha256(fp16) and entry["fp16_stat"] == onnx_stat(fp16)
    assert validated_entry(read_report(out / REPORT_NAME), NAME, "fp32", onnx_sha256(fp32))[1] == "validated"
    loaded = onnx.load(str(fp32))  # the side file is the one named in the header, beside it
    assert sum(t.data_type == TensorProto.FLOAT for t in loaded.graph.initializer) > 0


def test_failed_reexport_keeps_the_previous_validated_graph(tmp_path):
    out = tmp_path / "onnx"
    first = _export(out, external_data_threshold_bytes=0)
    assert first.status == "pass"
    files, before = _snapshot(out), read_report(out / REPORT_NAME)[NAME]

    strict = dataclasses.replace(SPEC, atol=0.0, rtol=0.0)  # other weights, a check nothing passes
    second = _export(out, shift=0.01, spec=strict)
    assert second.status == "FAIL" and second.fp32_max_abs > 0 and second.kept_previous
    assert second.sha256 != first.sha256  # it was a different file, and it was not installed
    assert _snapshot(out) == {**files, REPORT_NAME: _snapshot(out)[REPORT_NAME]}
    _no_staging(out)
    after = read_report(out / REPORT_NAME)[NAME]
    last = after.pop("last_export")
    assert after == before  # the validated entry stands, word for word
    assert last["status"] == "FAIL" and last["fp32_max_abs"] == second.fp32_max_abs
    digest = onnx_sha256(out / f"{NAME}.onnx")
    assert digest == first.sha256 and validated_entry(read_report(out / REPORT_NAME), NAME, "fp32", digest)[0]

    # a re-export that raises half-way also leaves the folder as it was
    def broken(path):
        raise RuntimeError("disk on fire")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(oe, "check_onnx", broken)
        with pytest.raises(RuntimeError, match="disk on fire"):
            _export(out, shift=0.02)
    assert {k: v for k, v in _snapshot(out).items() if k != REPORT_NAME} == {
        k: v for k, v in files.items() if k != REPORT_NAME}
    _no_staging(out)


def test_first_export_that_fails_validation_is_installed_and_recorded(tmp_path):
    """With nothing validated to protect, the failing files are kept for inspection, marked FAIL."""
    out = tmp_path / "onnx"
    r = _export(out, spec=dataclasses.replace(SPEC, atol=0.0, rtol=0.0))
    assert r.status == "FAIL" and not r.kept_previous
    entry = read_report(out / REPORT_NAME)[NAME]
    assert entry["status"] == "FAIL" and entry["sha256"] == onnx_sha256(out / f"{NAME}.onnx")
    assert validated_entry(read_report(out / REPORT_NAME), NAME, "fp32", entry["sha256"])[0] is None
    fixed = _export(out)  # then a passing one replaces it
    assert fixed.status == "pass" and read_report(out / REPORT_NAME)[NAME]["status"] == "pass"


def test_passing_reexport_removes_only_superseded_files_it_wrote(tmp_path):
    out = tmp_path / "onnx"
    foreign = _foreign(out)
    _export(out, external_data_threshold_bytes=0, fp16=True)
    edited = out / f"{NAME}.fp16.onnx"
    stamp = edited.stat().st_mtime_ns + 10**9  # the user touched the fp16 header since: no longer provably ours
    os.utime(edited, ns=(stamp, stamp))
    r = _export(out, shift=0.01)  # small now (no side file), no fp16 asked for
    assert r.status == "pass" and not r.external_data and r.fp16_file is None
    names = set(_snapshot(out))
    assert f"{NAME}.onnx.data" not in names  # the previous export's side file, recorded: removed
    assert f"{NAME}.fp16.onnx.data" not in names  # likewise
    assert edited.is_file()  # changed after the export recorded it: left alone
    assert {k: _snapshot(out)[k] for k in foreign} == foreign
    entry = read_report(out / REPORT_NAME)[NAME]
    assert entry["sha256"] == onnx_sha256(out / f"{NAME}.onnx") == r.sha256 and entry["fp16_file"] is None


def test_interrupted_export_records_the_run_and_keeps_the_graph(tmp_path, monkeypatch):
    out = tmp_path / "onnx"
    oe.export_many([NAME], oe.SMOKE, out, fp16=False)
    files = {k: v for k, v in _snapshot(out).items() if k != REPORT_NAME}
    data = read_report_data(out / REPORT_NAME)
    assert data["last_run"]["status"] == "complete"
    assert data["last_run"]["graphs"] == {NAME: {"status": "pass", "files": "replaced"}}

    def stop(*args, **kwargs):
        raise Interrupted(15)  # SIGTERM arriving during the validation

    monkeypatch.setattr(oe, "_validate_fp32", stop)
    with pytest.raises(Interrupted):
        oe.export_many([NAME, "s3fd"], oe.SMOKE, out, fp16=False)
    assert {k: v for k, v in _snapshot(out).items() if k != REPORT_NAME} == files
    _no_staging(out)
    data = read_report_data(out / REPORT_NAME)
    assert data["last_run"]["status"] == "interrupted" and data["last_run"]["finished_at"]
    assert data["last_run"]["graphs"] == {
        NAME: {"status": "interrupted", "files": "kept previous", "error": "interrupted"},
        "s3fd": {"status": "not reached", "files": "none"}}
    entry = data["graphs"][NAME]
    assert entry["status"] == "pass" and entry["last_export"]["error"] == "interrupted"
    assert data["passed"] is True  # what is on disk is still the validated export


def _tiny_onnx(folder: Path, name: str, value: float) -> Path:
    """y = x + b with ``b`` in an external-data side file: two files that must never be mixed."""
    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])
    bias = numpy_helper.from_array(np.full((1, 512), value, np.float32), "b")
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], name, [x], [y], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / f"{name}.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.onnx.data", size_threshold=0)
    return path


def test_concurrent_exports_into_one_folder_never_mix_files_or_lose_entries(tmp_path):
    out = tmp_path / "onnx"
    out.mkdir()
    with pub.staging(out, NAME) as a, pub.staging(out, NAME) as b:
        assert a != b and a.parent == b.parent == out  # temporary names are unique per export
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(15):
                for name in ("shared", f"own{index}"):
                    with pub.staging(out, name) as stage:
                        path = _tiny_onnx(stage, name, index * 100 + round_)
                        result = ExportResult(name=name, file=str(path), sha256=onnx_sha256(path),
                                              stat=onnx_stat(path), fp32_pass=True)
                        pub.publish(result, pub.Staged(path), out, meta={"worker": index})
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    report = read_report(out / REPORT_NAME)
    assert set(report) == {"shared", "own0", "own1", "own2", "own3"}  # no merge lost an entry
    for name, entry in report.items():
        assert pub.intact(entry, out), name  # header, side file and entry all from the same export
        loaded = onnx.load(str(out / f"{name}.onnx"))
        value = float(numpy_helper.to_array(loaded.graph.initializer[0]).flat[0])
        assert value == 100 * entry["worker"] + 14  # each worker's last round, from the worker the entry names
    _no_staging(out)


def _external_model(tmp_path: Path) -> Path:
    return _tiny_onnx(tmp_path, "m", 1.0)


def test_side_file_that_cannot_be_read_is_an_error_naming_it(tmp_path, monkeypatch):
    path = _external_model(tmp_path)
    side = tmp_path / "m.onnx.data"
    digest = onnx_sha256(path)
    assert digest != onnx_sha256(_tiny_onnx(tmp_path / "other", "m", 2.0))  # the side file is hashed

    def failing(*paths, **kwargs):
        raise PermissionError(13, "Permission denied", str(side))

    with monkeypatch.context() as mp:
        mp.setattr("latentmuse.artifacts.onnx_files.sha256_files", failing)
        with pytest.raises(LatentmuseError, match=r"external-data file .*m\.onnx\.data cannot be read \(.*Permission"):
            onnx_sha256(path)
    side.unlink()
    for read in (onnx_sha256, onnx_stat):
        with pytest.raises(LatentmuseError, match=r"external-data file .*m\.onnx\.data of .*m\.onnx .* is missing"):
            read(path)
    side.mkdir()  # a folder where the file should be
    with pytest.raises(LatentmuseError, match="is missing"):
        onnx_sha256(path)
    side.rmdir()

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../elsewhere.data"
    onnx.save(model, str(tmp_path / "escape.onnx"))
    with pytest.raises(LatentmuseError, match="not a file beside the model"):
        onnx_sha256(tmp_path / "escape.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(LatentmuseError, match=r"ONNX file .*garbage\.onnx cannot be read"):
        onnx_sha256(tmp_path / "garbage.onnx")


def test_runtime_skips_an_onnx_whose_side_file_is_gone(tmp_path):
    from latentmuse.runners.select import EngineStore

    out = tmp_path / "engines" / "onnx"
    r = _export(out, external_data_threshold_bytes=0)
    assert r.status == "pass"
    (out / f"{NAME}.onnx.data").unlink()
    path, why = EngineStore(tmp_path / "engines", "smoke").onnx(NAME, "fp32")
    assert path is None and f"{NAME}.onnx.data" in why and "missing" in why


def test_runtime_trusts_an_untouched_export_by_its_recorded_stat_without_parsing_it(tmp_path, monkeypatch):
    """A run reads the export record instead of the ONNX header (parsing it means importing onnx, ~0.6 s
    before the first frame); any file touched since, or a record naming a file elsewhere, means a hash."""
    import os

    from latentmuse.artifacts import onnx_files
    from latentmuse.runners.select import EngineStore

    out = tmp_path / "engines" / "onnx"
    r = _export(out, external_data_threshold_bytes=0)
    fp32, side = out / f"{NAME}.onnx", out / f"{NAME}.onnx.data"
    recorded = read_report(out / REPORT_NAME)[NAME]["stat"]
    assert [name for name, *_ in recorded] == [fp32.name, side.name]
    assert onnx_files.unchanged_since(fp32, recorded)

    def no_parsing(path):
        raise AssertionError(f"parsed {path}")

    monkeypatch.setattr(onnx_files, "external_data_files", no_parsing)
    path, why = EngineStore(tmp_path / "engines", "smoke").onnx(NAME, "fp32")
    assert path == fp32 and "validated" in why
    monkeypatch.undo()

    stat = side.stat()
    os.utime(side, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: same bytes, new mtime
    assert not onnx_files.unchanged_since(fp32, recorded)
    path, why = EngineStore(tmp_path / "engines", "smoke").onnx(NAME, "fp32")
    assert path == fp32, why  # hashed again: the bytes are the recorded ones
    data = side.read_bytes()
    side.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # changed: the hash no longer matches
    path, why = EngineStore(tmp_path / "engines", "smoke").onnx(NAME, "fp32")
    assert path is None, why
    for bad in ([], "x", [[fp32.name, 1]], [["../" + fp32.name, *recorded[0][1:]]], [[side.name, *recorded[1][1:]]],
                [recorded[0], ["../outside.data", 1, 1]]):
        assert not onnx_files.unchanged_since(fp32, bad), bad


def test_cli_failed_reexport_says_it_kept_the_previous_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    code, stdout, err = run_cli(capsys, "export", "--weights", "smoke", "--graphs", NAME, "--out", str(out),
                                "--no-fp16")
    assert code == 0, stdout + err
    files = {k: v for k, v in _snapshot(out).items() if k != REPORT_NAME}
    monkeypatch.setitem(GRAPHS, NAME, dataclasses.replace(SPEC, atol=0.0, rtol=0.0))
    code, stdout, err = run_cli(capsys, "export", "--weights", "smoke", "--graphs", NAME, "--out", str(out),
                                "--no-fp16")
    assert code == 1 and "Traceback" not in stdout + err
    line = next(x for x in stdout.splitlines() if x.startswith("FAIL [1/1]"))
    assert line.endswith("kept the previous validated export")
    assert {k: v for k, v in _snapshot(out).items() if k != REPORT_NAME} == files
    code, stdout, err = run_cli(capsys, "export", "--weights", "smoke", "--graphs", "vae,nope", "--out", str(out))
    assert code == 2 and "unknown graph 'vae'" in err and "Traceback" not in stdout + err


def test_signal_during_the_swap_waits_until_the_graph_is_in_place(tmp_path, monkeypatch):
    """SIGTERM arriving while the files are being renamed: the swap and its report entry complete, then
    the export stops (Interrupted), and the report says the graph is done and the run interrupted."""
    import signal

    from latentmuse.outcomes import signals_as_interrupts

    out = tmp_path / "onnx"
    real, renames = os.replace, []

    def replace_then_signal(src, dst):
        if Path(dst).suffix in (".onnx", ".data"):  # the graph's files, not the report's atomic writes
            renames.append(Path(dst).name)
            if len(renames) == 1:
                signal.raise_signal(signal.SIGTERM)  # delivered now; held until the swap is over
        real(src, dst)

    monkeypatch.setattr(pub.os, "replace", replace_then_signal)
    with signals_as_interrupts(), pytest.raises(Interrupted) as info:
        oe.export_many([NAME, "s3fd"], oe.SMOKE, out, fp16=False)
    assert info.value.signum == signal.SIGTERM
    assert renames == [f"{NAME}.onnx"]  # every file of the graph was renamed (one here), then it stopped
    data = read_report_data(out / REPORT_NAME)
    entry = data["graphs"][NAME]
    assert entry["status"] == "pass" and entry["sha256"] == onnx_sha256(out / f"{NAME}.onnx")
    assert "last_export" not in entry
    assert data["last_run"]["status"] == "interrupted"
    assert data["last_run"]["graphs"] == {NAME: {"status": "pass", "files": "replaced"},
                                          "s3fd": {"status": "not reached", "files": "none"}}
    _no_staging(out)
