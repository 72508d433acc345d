"""``python -m suite.cli``: the ``leitai`` command."""
import sys

from .app import main

sys.exit(main())
