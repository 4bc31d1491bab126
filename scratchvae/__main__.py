"""``python -m scratchvae``: the same as the ``scratchvae`` command."""
import sys

from .run.cli import main

sys.exit(main())
