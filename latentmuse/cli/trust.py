"""``--trust-torchscript FILE``: the one option that lets a TorchScript archive other than the pinned FAN
release be opened (``run``, ``export``, ``weights convert``; docs/SECURITY.md).

One definition, so the three commands cannot describe or check it differently. The file must exist
(click's usage error otherwise, exit 2); trusting it means opening it with ``torch.jit.load``, once per
process, and only that file: the loader compares the archive it is about to open with this path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

TrustTorchscriptOption = Annotated[Optional[Path], typer.Option(
    "--trust-torchscript", metavar="FILE", exists=True, dir_okay=False,
    help="Load this FAN TorchScript archive even though it is not the pinned 2DFAN4 release (a TorchScript "
         "archive carries code: only for a file you trust; `latentmuse weights convert` makes it safetensors).",
)]
