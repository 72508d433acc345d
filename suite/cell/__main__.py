"""``python -m suite.cell SPEC.json``: run one cell (:func:`suite.cell.run.main`)."""
import sys

from .run import main

sys.exit(main())
