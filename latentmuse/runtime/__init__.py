"""The lip-sync runtime: one clip as one stream (media in, faces, audio features, windows, generators,
media out), and the ``LipSync`` API that holds the loaded networks for many clips.

Stages exchange the small dataclasses in :mod:`latentmuse.runtime.contracts`; docs/ARCHITECTURE.md
("A run is one stream", "Runtime modules") says which module does what.
"""
