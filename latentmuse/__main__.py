"""``python -m latentmuse`` is the ``latentmuse`` command."""

from .cli import main

main()
