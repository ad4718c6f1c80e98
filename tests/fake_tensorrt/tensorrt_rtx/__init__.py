"""The TensorRT for RTX test double: the standard double's source run again under the name
``tensorrt_rtx``, so its classes, plans and version are its own (see ``tests/fake_tensorrt/tensorrt``)."""

from pathlib import Path

_SOURCE = Path(__file__).parent.parent / "tensorrt" / "__init__.py"
exec(compile(_SOURCE.read_text(), str(_SOURCE), "exec"))  # noqa: S102 - our own test double's source
