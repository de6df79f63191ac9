"""The ``monai-emma`` command line: one module and one :class:`Command` class per command
(``fuse``, ``view``, ``fuse-folder``, ``evaluate``, ``train``, ``register``, ``phantom``, ``demo``),
shared option groups in :mod:`~monai_emma.cli.options`, and :func:`main`.

Run it as ``monai-emma``, ``python -m monai_emma`` or ``python -m monai_emma.cli``.
"""

from monai_emma.cli.app import COMMANDS, build_parser, main
from monai_emma.cli.base import CLIError, Command

__all__ = ["main", "build_parser", "COMMANDS", "CLIError", "Command"]
