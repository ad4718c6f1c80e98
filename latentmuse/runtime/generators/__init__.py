"""Generators: the seam between the shared pipeline and a lip-sync model (docs/PIPELINE.md 0).

A generator owns its crop geometry, mask, audio layout, latent composition, sampling and paste-back.
"""

from .base import GenerationBatch, Generator, GeneratorFailure

__all__ = ["GenerationBatch", "Generator", "GeneratorFailure"]
