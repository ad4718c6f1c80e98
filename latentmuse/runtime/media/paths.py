"""Checking where a file will be written, before any work is done.

The check is :func:`latentmuse.files.check_output_path`, shared with the bench's ``--json``/``--plot``
(one set of rules for every file the tool writes); it is re-exported here, where the media layer and
the pipeline have always found it.
"""

from __future__ import annotations

from ...files import check_output_path

__all__ = ["check_output_path"]
