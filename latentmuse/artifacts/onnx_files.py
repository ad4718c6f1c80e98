"""An ONNX model on disk is the ``.onnx`` file plus the side files its initializers point to."""

from __future__ import annotations

from pathlib import Path

from ..files import sha256_files


def external_data_files(path: str | Path) -> list[Path]:
    """The existing side files (external data) an ONNX model's initializers name, read from its header."""
    path = Path(path)
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not parseable here: the file stands alone
        return []
    found: set[Path] = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and (path.parent / location).is_file():
                found.add(path.parent / location)
    return sorted(found)


def onnx_sha256(path: str | Path) -> str:
    """sha256 of an ONNX model: the .onnx file followed by its external data files."""
    return sha256_files(path, *external_data_files(path))


def onnx_stat(path: str | Path) -> list[list]:
    """``[[file name, bytes, mtime_ns], ...]`` of the model's files: recorded at export so that a reader
    can tell a file is untouched since (as make and rsync do) without hashing gigabytes again."""
    path = Path(path)
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in (path, *external_data_files(path))]


def onnx_bytes(path: str | Path) -> int:
    """Size on disk of an ONNX model including its external data."""
    return sum(p.stat().st_size for p in (Path(path), *external_data_files(path)))


def remove_onnx(path: str | Path) -> None:
    """Delete an ONNX file and the side file this package writes beside it (``NAME.onnx.data``)."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def save_onnx(model, path: str | Path, external: bool) -> None:
    """Save a ModelProto; ``external``: every initializer over 1 KiB in one side file ``NAME.onnx.data``."""
    import onnx

    path = Path(path)
    remove_onnx(path)
    if external:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
            location=path.name + ".data", size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def check_onnx(path: str | Path) -> None:
    """Infer shapes into the file (the memory estimate and TensorRT read them) and run the checker,
    both by path so that models over 2 GB work."""
    import onnx

    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))
