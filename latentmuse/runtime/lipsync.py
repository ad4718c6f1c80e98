"""The Python API: load the networks once, lip-sync many clips.

    from latentmuse import LipSync

    with LipSync.from_weights("weights", backend="auto", device="cuda") as lipsync:
        for language in ("en", "de", "fr"):
            report = lipsync("presenter.mp4", f"presenter.{language}.mp4", audio=f"speech.{language}.wav")
            print(report.status, report.frames_out)

A :class:`LipSync` holds a :class:`~latentmuse.runtime.session.Session` (the runners, the face front
end, the device), like a diffusers pipeline holds its components: loading is paid once, each call runs
one clip through :func:`~latentmuse.runtime.pipeline.run_clip`. :func:`run` is one clip on a
``LipSync`` of its own. Load-time options
(:class:`~latentmuse.runtime.options.LoadOptions`) are fixed at construction; per-clip options
(:class:`~latentmuse.runtime.options.ClipOptions`) are given to each call. ``latentmuse run`` and
``latentmuse batch`` are thin wrappers over this class.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..errors import LatentmuseError
from ..files import Digests
from ..progress import Progress, SilentProgress
from . import media
from .checks import check_inputs, check_load_options
from .options import ClipOptions, LoadOptions, RunOptions, clip_option_names
from .pipeline import check_gate, describe_inputs, reporting, run_clip
from .report import RunReport
from .runner_set import ModelSet
from .session import Session, sync_wanted


class LipSync:
    """Loaded networks for many clips; call it once per clip, ``close()`` (or ``with``) to free them.

    ``lazy``: load on the first clip instead of now (``latentmuse run`` checks the clip's inputs before
    paying for a load). ``models``: already loaded runners (tests, the bench); they are not closed here.
    """

    def __init__(self, load: LoadOptions | None = None, *, lazy: bool = False, models: ModelSet | None = None,
                 progress: Progress | None = None, digests: Digests | None = None) -> None:
        self.load_options = load or LoadOptions()
        #: content hashes of the clips' files (the face cache's and a batch's keys), each file read once
        self.digests = digests or Digests()
        check_load_options(self.load_options)
        self._models = models
        self._session: Session | None = None
        self._closed = False
        #: How many times the networks were loaded (1 after the first clip, however many clips follow).
        self.loads = 0
        if not lazy:
            self.session((progress or SilentProgress()).note)

    @classmethod
    def from_weights(cls, weights: str | Path = "smoke", *, backend: str = "auto", engines: str | Path | None = None,
                     device: str = "auto", generator: str = "auto", lazy: bool = False,
                     progress: Progress | None = None, **load: object) -> LipSync:
        """Load ``weights`` (a folder, or ``"smoke"``) on ``device`` with ``backend``; other
        :class:`LoadOptions` fields (``precision``, ``face_detector``, ``guidance``, ``resolution``,
        ``deepcache``, ``trust_torchscript``) as keywords."""
        unknown = sorted(set(load) - set(LoadOptions.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown load option(s) {', '.join(unknown)}; per-clip options go to each call")
        options = LoadOptions(weights=weights, backend=backend, engines=None if engines is None else Path(engines),
                              device=device, generator=generator, **load)  # type: ignore[arg-type]
        return cls(options, lazy=lazy, progress=progress)

    # ----------------------------------------------------------------------------- the loaded state

    def session(self, note=lambda message: None) -> Session:
        """The loaded session, loading it on first use."""
        if self._closed:
            raise LatentmuseError("this LipSync is closed.", "create a new one (LipSync.from_weights) to run more clips.")
        if self._session is None:
            self._session = Session.open(self.load_options, note, self._models, self.digests)
            self.loads += 1
        return self._session

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def close(self) -> None:
        """Free the runners (engines, sessions, weights) this object loaded; idempotent."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self._closed = True

    def __enter__(self) -> LipSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- one clip

    def __call__(self, video: str | Path, output: str | Path, audio: str | Path | None = None,
                 report: str | Path | None = None, options: ClipOptions | None = None, *,
                 progress: Progress | None = None, sink: media.FrameSink | None = None, job: dict | None = None,
                 **clip: object) -> RunReport:
        """Lip-sync ``video`` to ``audio`` (default: its own track) into ``output``; the run report
        (also written to ``report`` when given, whatever the outcome). ``options`` and keywords
        (:class:`ClipOptions` fields, e.g. ``steps=20, face="center"``) set this clip's processing.

        Raises :class:`~latentmuse.errors.LatentmuseError` for a clip that cannot be done (nothing is
        written at ``output``); the models stay loaded for the next clip.
        """
        return self.run(self.options_for(video, output, audio, report, options, **clip), progress=progress, sink=sink, job=job)

    def run(self, options: RunOptions, *, progress: Progress | None = None, sink: media.FrameSink | None = None,
            job: dict | None = None) -> RunReport:
        """One clip given as :class:`RunOptions` (whose load-time options must be this object's): its
        inputs checked, the networks loaded if they are not yet, the video made (runtime/pipeline.py).
        ``sink`` replaces the video writer (tests pass a lossless in-memory sink); ``job``: a batch's
        key for this clip, kept in the report (batch/resume.py)."""
        progress = progress or SilentProgress()
        started = time.perf_counter()
        with reporting(options, progress, job) as report:
            inputs = check_inputs(options)
            describe_inputs(report, inputs)
            if not self.loaded and self._models is None:  # before paying for the load
                check_gate(options, sync_wanted(options.load))
            report.stages["validate"] = time.perf_counter() - started
            tic = time.perf_counter()
            session = self.session(progress.note)
            report.stages["load_models"] = time.perf_counter() - tic  # ~0 for the second clip of a load
            run_clip(options, inputs, session, report, started, progress, sink)
        return report

    def options_for(self, video: str | Path, output: str | Path, audio: str | Path | None = None,
                    report: str | Path | None = None, options: ClipOptions | None = None, **clip: object) -> RunOptions:
        """The :class:`RunOptions` of one clip of this load."""
        unknown = sorted(set(clip) - set(clip_option_names()))
        if unknown:
            load_time = [name for name in unknown if name in LoadOptions.__dataclass_fields__]
            if load_time:
                raise TypeError(f"{', '.join(load_time)} is a load-time option: pass it to LipSync.from_weights")
            raise TypeError(f"unknown clip option(s) {', '.join(unknown)}")
        clip_options = replace(options or ClipOptions(), **clip)  # type: ignore[arg-type]
        return RunOptions(Path(video), Path(output), None if audio is None else Path(audio),
                          None if report is None else Path(report), self.load_options, clip_options)


def run(options: RunOptions, progress: Progress | None = None, sink: media.FrameSink | None = None,
        models: ModelSet | None = None) -> RunReport:
    """One clip, loading its models after the inputs check out and closing them after: a
    :class:`LipSync` used once. ``models``: already loaded models (tests, the bench), not closed here."""
    with LipSync(options.load, lazy=True, models=models) as lipsync:
        return lipsync.run(options, progress=progress, sink=sink)
