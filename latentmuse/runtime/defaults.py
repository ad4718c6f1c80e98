"""Run defaults the CLI shows in its help without importing the pipeline (and torch)."""

#: LatentSync's inference defaults: 20 DDIM steps, classifier-free guidance 1.5.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 1.5
