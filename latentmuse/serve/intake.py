"""A request made into a job, or refused with the HTTP status that says why.

Everything a request can get wrong is found here, before the job is recorded or queued, and every
refusal is one line naming the problem and its fix (:class:`Refused`, the API's error body):

- an upload is streamed to disk part by part (:class:`UploadReceiver`), counting bytes against
  ``--max-upload-mb`` (413 the moment it is passed, the partial files removed);
- a path in a JSON request must resolve, links followed, inside ``--input-root`` (403 otherwise:
  no ``..``, no symlink out of it);
- the per-clip options are read exactly as a batch job's keys are (batch/jobs.py: 422 naming the
  option) and checked as ``run`` checks them;
- the inputs are probed with ``run``'s own checks (runtime/checks.py: a truncated file, a text file
  named .mp4, a video with no audio track and no audio given: 422 with the run's error and fix), and
  the job's folder is removed, so nothing of a refused request stays on disk.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..batch.jobs import Job, job_from_dict
from ..errors import LatentmuseError
from ..runtime.checks import ClipInputs, validate
from ..runtime.options import ClipOptions, LoadOptions, RunOptions
from ..runtime.pipeline import check_gate
from ..runtime.session import sync_wanted

#: the file fields of an upload; every other field is a per-clip option
FILE_FIELDS = ("video", "audio")
#: the result's name in the job's folder (GET /v1/jobs/ID/video)
RESULT_NAME = "result.mp4"
#: option fields (not files) of one request, in all: a form is not a place for megabytes of text
MAX_FIELD_BYTES = 64 * 1024


class Refused(LatentmuseError):
    """A request the service turns down: the HTTP ``status``, the one-line error and its fix."""

    def __init__(self, status: int, message: str, fix: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, fix)
        self.status = status
        self.headers = headers or {}


@dataclass
class Upload:
    """What an upload left in the job's folder: its files by field and its text fields."""

    files: dict[str, Path] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


class UploadReceiver:
    """Parses a ``multipart/form-data`` body chunk by chunk into ``folder``: file fields to files (named
    by the field, keeping the client's extension, which the decoders look at), other fields to text,
    never more than ``limit`` bytes in all (:meth:`feed` raises 413 past it)."""

    def __init__(self, content_type: str, folder: Path, limit: int) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise Refused(415, f"the request body is {kind.decode() or 'untyped'}, not multipart/form-data or JSON.",
                          "upload with -F video=@clip.mp4 (multipart), or send JSON naming files under --input-root.")
        self.folder, self.limit, self.received = folder, limit, 0
        self.upload = Upload()
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._sink = None  # the open file of the current file part
        self._text: bytearray | None = None
        self._name = ""
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end})

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise too_large(self.limit)
        try:
            self._parser.write(chunk)
        except Refused:
            raise
        except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors
            raise Refused(400, f"the upload is not valid multipart/form-data ({exc}).",
                          "send it with a client that writes multipart bodies (curl -F, httpx files=).") from None

    def finish(self) -> Upload:
        self._parser.finalize()
        self.close()
        return self.upload

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    # ------------------------------------------------------------------------- parser callbacks

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if self._name in FILE_FIELDS:
            if filename is None:
                raise Refused(422, f"the field {self._name} is text, not a file.", f"upload the file: -F {self._name}=@FILE.")
            if self._name in self.upload.files:
                raise Refused(422, f"the upload has two {self._name} files.", f"send one {self._name}.")
            path = self.folder / (self._name + extension(filename.decode("utf-8", "replace")))
            self._sink = path.open("wb")
            self.upload.files[self._name] = path
        elif filename is not None:
            raise Refused(422, f"the upload has a file in the field {self._name!r}.",
                          "send the files as video and audio; every other field is an option (e.g. steps=20).")
        else:
            self._text = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])
        elif self._text is not None:
            self._text += data[start:end]
            if sum(len(v) for v in self.upload.fields.values()) + len(self._text) > MAX_FIELD_BYTES:
                raise Refused(413, f"the upload's option fields exceed {MAX_FIELD_BYTES // 1024} KiB.", "send only the options.")

    def _part_end(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        elif self._text is not None:
            self.upload.fields[self._name] = self._text.decode("utf-8", "replace")
            self._text = None


def too_large(limit: int) -> Refused:
    return Refused(413, f"the upload is larger than this service's limit of {limit / 2**20:.0f} MiB.",
                   "send a shorter or more compressed clip, or start the service with a higher --max-upload-mb.")


def extension(filename: str) -> str:
    """The client's extension if it looks like one (the decoders read it); never a path."""
    suffix = Path(filename.replace("\\", "/")).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


def resolve_input(root: Path | None, value: object, name: str) -> Path:
    """A JSON request's ``video`` / ``audio``: a file inside ``root`` (relative to it, or absolute), links
    followed; 403 for anything that ends up outside it, or when the service takes no paths."""
    if root is None:
        raise Refused(403, "this service takes uploads only: it was started without --input-root.",
                      "upload the files (multipart), or start it with --input-root DIR.")
    if not isinstance(value, str) or not value:
        raise Refused(422, f"{name} is not a path string.", f'send "{name}": "path/under/the/input/root".')
    base = root.resolve()
    candidate = Path(value)
    path = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not path.is_relative_to(base):
        raise Refused(403, f"{name} {value} is outside the service's input root.",
                      "name a file under --input-root (no '..', no link out of it).")
    if not path.is_file():
        raise Refused(422, f"{name} {value} is not a file under the input root.", "check the path (relative to --input-root).")
    return path


def make_job(options: dict, video: Path, audio: Path | None, folder: Path, from_text: bool) -> Job:
    """The batch job of a request: its inputs, its output in ``folder``, its per-clip options read as a
    batch job's (422 naming the option)."""
    for key in ("output", "report"):
        if key in options:
            raise Refused(422, f"{key} is chosen by the service.", "drop it: GET /v1/jobs/ID/video returns the result.")
    for key in options:
        if key in LoadOptions.__dataclass_fields__:
            raise Refused(422, f"{key} is fixed for the whole service (its workers loaded the networks with it).",
                          f"drop it, or start a service with --{key.replace('_', '-')}.")
    data = {**options, "video": str(video), "audio": None if audio is None else str(audio),
            "output": str(folder / RESULT_NAME)}
    try:
        return job_from_dict(data, folder, "the request", from_text)
    except LatentmuseError as exc:
        raise Refused(422, exc.message, exc.fix) from None


def probe(job: Job, load: LoadOptions, base: ClipOptions, max_seconds: float | None) -> ClipInputs:
    """``run``'s checks of the job's options and inputs, and the per-job length limit (422 each)."""
    options = RunOptions(job.video, job.output, job.audio, None, load, job.clip_options(base))
    try:
        inputs = validate(options)
        check_gate(options, sync_wanted(load))  # a gate the workers cannot judge would pass every clip
    except LatentmuseError as exc:
        raise Refused(422, exc.message, exc.fix) from None
    seconds = inputs.n_out / inputs.info.fps
    if max_seconds is not None and seconds > max_seconds:
        raise Refused(422, f"the clip is {seconds:.1f} s long, above this service's limit of {max_seconds:g} s a job.",
                      "cut it into shorter clips, or start the service with a higher --max-seconds.")
    return inputs


def remove_folder(folder: Path) -> None:
    """A job's folder (the service made it, and everything in it is the job's)."""
    shutil.rmtree(folder, ignore_errors=True)
