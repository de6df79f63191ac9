"""``python -m monai_emma.cli``."""

import sys

from monai_emma.cli.app import main

sys.exit(main())
