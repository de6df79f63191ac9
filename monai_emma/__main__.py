"""``python -m monai_emma``: the ``monai-emma`` command."""

import sys

from monai_emma.cli.app import main

sys.exit(main())
