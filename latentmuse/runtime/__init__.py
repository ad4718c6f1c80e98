"""The staged lip-sync pipeline: media in, faces, audio features, data generation, generators, media out.

Stages exchange the small dataclasses in :mod:`latentmuse.runtime.contracts`; :mod:`.pipeline` wires
them and owns the progress display and the run report.
"""
