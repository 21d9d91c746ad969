"""Process memory habits for large builds (glibc only; a no-op elsewhere).

glibc's malloc raises its mmap threshold each time a large block is freed, so after the first
stage the big temporary buffers of later stages (weight copies, serialized models, gradients)
come from the heap and stay in the process when freed: stage peaks add up. Pinning the threshold
keeps large blocks in their own mappings, which go back to the system when freed, and
``malloc_trim`` returns the heap's free top after each stage. The resident peak of a build then
follows the largest stage instead of the sum of the stages.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 20  # blocks of 1 MB and more get their own mapping

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt  # noqa: B018 - glibc has it, musl / macOS do not
            libc.malloc_trim  # noqa: B018
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune_allocator() -> bool:
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD)
    return True


def release() -> None:
    libc = _glibc()
    if libc is not None:
        gc.collect()
        libc.malloc_trim(0)


@contextlib.contextmanager
def imports_set_aside():
    """The objects alive when a build (or a parity run) starts are left out of the garbage collector's scans until
    it ends: with TensorFlow, Keras and ONNX imported they are some 360,000 objects (modules, functions, types), and
    a full collection reads every one of them each time a stage releases its memory, a fifth of a second each, which
    is most of the time a small model's build spends. What the build itself makes, its models above all, is
    scanned and collected as before. A process that has set objects aside itself (``gc.freeze``, say before it
    forks workers) is left as it is; so is a build that starts while another one runs in the process."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
