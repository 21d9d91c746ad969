"""``python -m bertc ...``: the ``bertc`` command (where its script is not on PATH)."""
from bertc.cli import entry

entry()
