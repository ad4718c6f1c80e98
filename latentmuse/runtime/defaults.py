"""Run defaults the CLI shows in its help without importing the pipeline (and torch)."""

#: LatentSync's inference defaults: 20 DDIM steps, classifier-free guidance 1.5.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 1.5
#: ``--min-face-size``: a face whose detector box is shorter than this many pixels passes through. At 64
#: px the generators' 256 px crop is already a 4x upscale (mostly interpolation), and landmarks of
#: smaller faces are unreliable (docs/FACES.md).
DEFAULT_MIN_FACE_SIZE = 64
#: ``--sync-min-run``: runs of the dubbed face shorter than this many frames are not scored (LatentSync's
#: evaluation setting; the reference's own pipeline uses 100). SyncNet's window needs 6 at the least.
DEFAULT_SYNC_MIN_RUN = 50
MIN_SYNC_RUN = 6
