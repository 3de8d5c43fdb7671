"""``python -m unet_bench``: the same as ``bench-unet`` (for environments without the console script on PATH)."""

import sys

from .cli import main

sys.exit(main())
