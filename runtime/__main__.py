"""``python -m unet_runtime``: the same as ``segment-unet`` (for environments without the console script on PATH)."""

import sys

from .cli import main

sys.exit(main())
