"""``python -m bertc ...``: the ``bertc`` command (where its script is not on PATH)."""
import sys

from bertc.cli import main

sys.exit(main())
