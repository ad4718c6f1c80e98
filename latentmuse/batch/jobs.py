"""A batch's job list: JSONL, CSV, or a folder and its pairing rule (docs/SCALE.md).

Every job is a video, an optional audio (default: the video's own track), an output, an optional
report path (default: the output's name plus ``.json``, beside it) and optional per-job options: any
:class:`~latentmuse.runtime.options.ClipOptions` field by name (``steps``, ``face``, ``seed``, ...).
Relative paths are relative to the job file's folder. Load-time options (``weights``, ``backend``,
``guidance`` ...) hold for the whole batch and are refused in a job, as are unknown keys, values of the
wrong type and two jobs writing one file: the whole list is checked before anything loads, and each
mistake is one line naming the job (its line or row) and the fix.

The folder rule, for ``latentmuse batch FOLDER``: every video in FOLDER is a job on its own track,
unless audio files name it: ``NAME.wav`` dubs ``NAME.mp4`` into ``OUT/NAME.mp4``, and
``NAME.LABEL.wav`` (e.g. ``talk.de.wav``, ``talk.fr.m4a``) into ``OUT/NAME.LABEL.mp4``, so one presenter
video and its languages need no job file. OUT is ``--out`` (default ``FOLDER/lipsynced``).
"""

from __future__ import annotations

import csv
import io
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import LatentmuseError
from ..runtime.options import ClipOptions, LoadOptions

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus")
PATH_KEYS = ("video", "audio", "output", "report")
CLIP_FIELDS = {f.name: f for f in fields(ClipOptions)}
CLIP_TYPES = typing.get_type_hints(ClipOptions)
#: per-job keys that make no sense per job (the cache is the batch's)
NOT_PER_JOB = ("cache",)


@dataclass
class Job:
    """One clip of a batch. ``where`` names it in messages (``jobs.csv row 3``)."""

    video: Path
    output: Path
    audio: Path | None = None
    report: Path | None = None
    options: dict = field(default_factory=dict)  # ClipOptions overrides
    where: str = ""

    @property
    def report_path(self) -> Path:
        return self.report if self.report is not None else self.output.with_name(self.output.name + ".json")

    @property
    def name(self) -> str:
        return self.output.name

    def clip_options(self, base: ClipOptions) -> ClipOptions:
        from dataclasses import replace

        return replace(base, **self.options)

    def to_dict(self) -> dict:
        return {"video": str(self.video), "audio": None if self.audio is None else str(self.audio),
                "output": str(self.output), "report": str(self.report_path), "options": dict(self.options),
                "where": self.where}

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        return cls(Path(data["video"]), Path(data["output"]), None if data.get("audio") is None else Path(data["audio"]),
                   Path(data["report"]) if data.get("report") else None, dict(data.get("options") or {}),
                   data.get("where", ""))


def read_jobs(source: Path, out: Path | None = None) -> list[Job]:
    """The jobs of a ``.jsonl`` / ``.csv`` file or a folder (see the module docstring), checked."""
    if not source.exists():
        raise LatentmuseError(f"job list {source} does not exist.", "pass a .jsonl or .csv file, or a folder of videos.")
    if source.is_dir():
        jobs = folder_jobs(source, out or source / "lipsynced")
    else:
        if out is not None:
            raise LatentmuseError("--out is for a folder of videos; a job file names each output.",
                                  "drop --out, or give the folder instead of the job file.")
        suffix = source.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            jobs = _jsonl_jobs(source)
        elif suffix == ".csv":
            jobs = _csv_jobs(source)
        else:
            raise LatentmuseError(f"{source} is neither .jsonl nor .csv.",
                                  "write the jobs as JSON Lines (one object per line) or CSV with a header row.")
    if not jobs:
        raise LatentmuseError(f"{source} holds no jobs.", "add a line per clip: video, audio, output.")
    _check_distinct(jobs)
    return jobs


def folder_jobs(folder: Path, out: Path) -> list[Job]:
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    audios = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    jobs = []
    for video in videos:
        named = [a for a in audios if a.stem == video.stem or a.stem.startswith(video.stem + ".")]
        if not named:
            jobs.append(Job(video, out / f"{video.stem}.mp4", where=video.name))
        for audio in named:
            jobs.append(Job(video, out / f"{audio.stem}.mp4", audio, where=f"{video.name} + {audio.name}"))
    unclaimed = [a.name for a in audios if not any(a.stem == v.stem or a.stem.startswith(v.stem + ".") for v in videos)]
    if unclaimed:
        raise LatentmuseError(f"audio in {folder} names no video: {', '.join(unclaimed[:5])}.",
                              "name each audio NAME.wav or NAME.LABEL.wav after its video NAME.mp4.")
    if not videos:
        raise LatentmuseError(f"{folder} holds no video ({', '.join(VIDEO_EXTENSIONS)}).", "put the clips in it, or pass a job file.")
    return jobs


def _jsonl_jobs(path: Path) -> list[Job]:
    jobs = []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path.name} line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LatentmuseError(f"{where} is not JSON ({exc.msg} at column {exc.colno}).",
                                  'write one object per line, e.g. {"video": "a.mp4", "audio": "a.wav", "output": "out/a.mp4"}.') from None
        if not isinstance(data, dict):
            raise LatentmuseError(f"{where} is not a JSON object.", 'write {"video": ..., "output": ...}.')
        jobs.append(job_from_dict(data, path.parent, where, from_text=False))
    return jobs


def _csv_jobs(path: Path) -> list[Job]:
    rows = list(csv.DictReader(io.StringIO(_text(path), newline="")))
    jobs = []
    for number, row in enumerate(rows, 2):  # row 1 is the header
        if None in row:
            raise LatentmuseError(f"{path.name} row {number} has more cells than the header.", "quote cells that hold commas.")
        values = {k.strip(): v for k, v in row.items() if k is not None and v is not None and v.strip() != ""}
        if not values:
            continue
        jobs.append(job_from_dict(values, path.parent, f"{path.name} row {number}", from_text=True))
    return jobs


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LatentmuseError(f"{path} is not UTF-8 text.", "save the job list as UTF-8.") from None
    except OSError as exc:
        raise LatentmuseError(f"cannot read {path} ({exc.strerror or exc}).", "check the path and its permissions.") from None


def job_from_dict(data: dict, base: Path, where: str, from_text: bool) -> Job:
    """One job from its keys (a JSONL object, a CSV row, a service request), checked; ``where`` names it in
    errors; ``from_text``: values are strings to coerce (CSV cells, form fields)."""
    for key in ("video", "output"):
        if not data.get(key):
            raise LatentmuseError(f"{where} has no {key}.", f"give every job a {key} (a path).")
    options = {}
    for key, value in data.items():
        if key in PATH_KEYS:
            continue
        if key in LoadOptions.__dataclass_fields__:
            raise LatentmuseError(f"{where}: {key} is a batch-wide option.", f"pass --{key.replace('_', '-')} to `latentmuse batch` instead.")
        if key in NOT_PER_JOB or key not in CLIP_FIELDS:
            known = ", ".join(k for k in (*PATH_KEYS, *CLIP_FIELDS) if k not in NOT_PER_JOB)
            raise LatentmuseError(f"{where}: unknown key {key!r}.", f"use {known}.")
        options[key] = _coerce(CLIP_FIELDS[key], value, where, from_text)
    paths = {}
    for key in PATH_KEYS:
        value = data.get(key)
        if value is None or value == "":
            paths[key] = None
            continue
        if not isinstance(value, str):
            raise LatentmuseError(f"{where}: {key} is not a path string.", f'write "{key}": "path/to/file".')
        path = Path(value).expanduser()
        paths[key] = path if path.is_absolute() else base / path
    return Job(paths["video"], paths["output"], paths["audio"], paths["report"], options, where)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(spec, value, where: str, from_text: bool):
    """``value`` as the ClipOptions field's type (CSV cells are strings)."""
    kind = _base_type(CLIP_TYPES[spec.name])
    name = spec.name
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if from_text and str(value).strip().lower() in _TRUE + _FALSE:
                return str(value).strip().lower() in _TRUE
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if from_text:
                return int(str(value).strip())
            raise ValueError
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)):
                return float(value)
            if from_text:
                return float(str(value).strip())
            raise ValueError
        if kind is Path:
            return Path(str(value))
        if not isinstance(value, str):
            raise ValueError
        return value
    except ValueError:
        raise LatentmuseError(f"{where}: {name} {value!r} is not {'a number' if kind in (int, float) else kind.__name__}.",
                              f"e.g. {name}={getattr(ClipOptions(), name)!r}.") from None


def _base_type(annotation):
    """The class behind a field's type: ``int`` -> int, ``Path | None`` -> Path."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in annotation.__args__ if a is not type(None))
    return annotation


def _check_distinct(jobs: list[Job]) -> None:
    """Two jobs writing one output (or one report) is a mistake in the list, found before any work."""
    seen: dict[Path, str] = {}
    for job in jobs:
        for path in (job.output, job.report_path):
            key = path.resolve()
            if key in seen:
                raise LatentmuseError(f"{job.where} writes {path}, as {seen[key]} does.", "give every job its own output and report.")
            seen[key] = job.where
