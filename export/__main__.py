"""``python -m unet_export``: the same as ``export-unet`` (for environments without the console script on PATH)."""

import sys

from .cli import main

sys.exit(main())
