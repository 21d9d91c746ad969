"""``python -m bertc ...``: the ``bertc`` command (where its script is not on PATH). The interpreter's own exit
follows the command's (a host such as ``python -m cProfile -m bertc`` writes its results then)."""
from bertc.cli import entry

entry(skip_teardown=False)
