"""Atomic output directories: build into a hidden sibling, then swap it in.

An interrupted or failed build never leaves a half-written ``OUT/``; an existing
``OUT/`` is replaced only when asked (``force``) and only once the new one is complete.
A build that ran but failed a check keeps its report in ``OUT.failed/`` for inspection.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bertc.errors import OutputError


class StagedOutput:
    def __init__(self, out: Path | str, force: bool = False):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out} exists and is not a directory")
        if self.out.exists() and not force:
            raise OutputError(f"{self.out} already exists; pass --force to replace it")
        self.failed_dir = self.out.with_name(self.out.name + ".failed")
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the staging phase only
        except OSError as exc:
            raise OutputError(f"cannot create the output directory next to {self.out}: {exc}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._swap_in()
        elif self.tmp is not None and (self.tmp / "report.json").exists() and not issubclass(exc_type, KeyboardInterrupt):
            shutil.rmtree(self.failed_dir, ignore_errors=True)
            os.replace(self.tmp, self.failed_dir)
        elif self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def _swap_in(self) -> None:
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.failed_dir, ignore_errors=True)
