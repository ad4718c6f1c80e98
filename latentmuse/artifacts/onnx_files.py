"""An ONNX model on disk is the ``.onnx`` file plus the side files its initializers point to.

Every function here either accounts for all of a model's files or raises a :class:`LatentmuseError`
naming the one it could not read: a hash or a stat that silently skipped a missing external-data file
would vouch for a model that cannot load (the builder and the runtime trust these records).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LatentmuseError
from ..files import sha256_files

_FIX = "re-export the graph (`latentmuse export --graphs NAME`)."


def _unreadable(path: Path, exc: BaseException, what: str = "ONNX file") -> LatentmuseError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LatentmuseError(f"{what} {path} cannot be read ({text}).", _FIX)


def external_data_files(path: str | Path) -> list[Path]:
    """The side files (external data) an ONNX model's initializers name, read from its header.

    Raises a LatentmuseError naming the file when the header cannot be parsed, or when a side file it
    names is missing, not a regular file, or outside the model's folder (an absolute or ``..``
    location: ONNX Runtime would read whatever it points to).
    """
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - OSError, DecodeError, ...: any failure means unreadable
        raise _unreadable(path, exc) from None
    found: set[Path] = set()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        relative = Path(location)
        if not location or relative.is_absolute() or ".." in relative.parts:
            raise LatentmuseError(
                f"ONNX file {path}: initializer {tensor.name!r} has external data at {location!r}, "
                "not a file beside the model.", _FIX)
        side = path.parent / relative
        if not side.is_file():
            raise LatentmuseError(
                f"external-data file {side} of {path} (initializer {tensor.name!r}) is missing.", _FIX)
        found.add(side)
    return sorted(found)


def model_files(path: str | Path) -> list[Path]:
    """The ``.onnx`` file and its side files, the header first (see :func:`external_data_files`)."""
    path = Path(path)
    return [path, *external_data_files(path)]


def onnx_sha256(path: str | Path) -> str:
    """sha256 of an ONNX model: the .onnx file followed by its external data files."""
    files = model_files(path)
    try:
        return sha256_files(*files)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else Path(path)
        raise _unreadable(where, exc, "ONNX file" if where == Path(path) else "external-data file") from None


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise _unreadable(path, exc, "model file") from None
    return st.st_size, st.st_mtime_ns


def onnx_stat(path: str | Path) -> list[list]:
    """``[[file name, bytes, mtime_ns], ...]`` of the model's files: recorded at export so that a reader
    can tell a file is untouched since (as make and rsync do) without hashing gigabytes again."""
    return [[p.name, *_stat(p)] for p in model_files(path)]


def unchanged_since(path: str | Path, recorded: object) -> bool:
    """Whether the model at ``path`` is the one whose :func:`onnx_stat` was ``recorded``, judged from the
    recorded files' names, sizes and mtimes alone.

    The header is the first recorded file: while it is untouched, the side files it names are the
    recorded ones, so nothing is parsed (parsing needs the ``onnx`` package, whose import alone costs
    a run ~0.6 s on a CPU before its first frame). Anything unexpected (a malformed record, a name
    that is not a plain file name beside the model, a file gone) is False: the caller hashes instead.
    """
    path = Path(path)
    if not isinstance(recorded, list) or not recorded:
        return False
    try:
        for index, (name, size, mtime) in enumerate(recorded):
            plain = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
            if not plain or (index == 0 and name != path.name) or _stat(path.parent / name) != (size, mtime):
                return False
        return True
    except (LatentmuseError, TypeError, ValueError):
        return False


def onnx_bytes(path: str | Path) -> int:
    """Size on disk of an ONNX model including its external data."""
    return sum(_stat(p)[0] for p in model_files(path))


def save_onnx(model, path: str | Path, external: bool) -> None:
    """Save a ModelProto to a new file; ``external``: every initializer over 1 KiB in one side file
    ``NAME.onnx.data``.

    Refuses to write over an existing model (onnx appends to an existing side file, and the exporter
    writes into a private staging folder, so an existing file here is a bug, never a file to delete).
    """
    import onnx

    path = Path(path)
    side = path.with_name(path.name + ".data")
    existing = [p for p in (path, side) if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {existing[0]}")
    if external:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
            location=side.name, size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def check_onnx(path: str | Path) -> None:
    """Infer shapes into the file (the memory estimate and TensorRT read them) and run the checker,
    both by path so that models over 2 GB work."""
    import onnx

    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))
