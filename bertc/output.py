"""Atomic output directories: build into a hidden sibling, then swap it in.

An interrupted or failed build never leaves a half-written ``OUT/``; an existing
``OUT/`` is replaced only when asked (``force``) and only once the new one is complete. Those rules are checked
again at the swap, under the lock: what appeared at ``OUT`` while the build ran (without ``force``), or what is no
longer a build's there, is left alone, and the complete new build is kept where a failed one would be.
A build that ran but failed a check keeps its report in ``OUT.failed/`` for inspection, which
replaces only an earlier build's folder (or an empty one): when ``OUT.failed`` holds anything else
(the user's notes, a file, a link) it is left alone and the report goes to the first of
``OUT.failed-2``, ``OUT.failed-3``, ... that is free or a build's (:func:`failed_slot`).

``OUT`` is the directory it names, links followed: a link to a build stays a link, and its target
is what a forced build replaces. One build at a time writes a given ``OUT``: a lock file beside it (``.OUT.lock``,
``flock``) is held for the whole build, so a second build fails at once, and the lock
vanishes with its process however that process dies (SIGKILL included). Holding the
lock proves that no other build of ``OUT`` is alive, so staging directories
(``.OUT.tmp-*``) and swap leftovers (``.OUT.old-*``) found then belong to dead builds
and are removed; but first, when ``OUT`` is missing because a build was killed between the two renames of its
swap, a build is put back there (:func:`_recover`): the only copy of a build is never removed. Once the new build is
in place, the old one is renamed ``.OUT.trash-PID`` before it is removed, so that what cannot be removed (a read-only
build) is never taken for an interrupted swap's and put back at ``OUT``: the build warns, naming it.

These sibling names are ``OUT``'s own name with a prefix and a suffix; for a name too long to take them within
NAME_MAX (255 bytes), bertc's names use a shortened form of it with a hash of the whole (:func:`sibling_stem`).
"""
from __future__ import annotations

import errno
import fcntl
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from bertc.errors import OutputError, filesystem_error, said
from bertc.report import signals_ignored


NAME_MAX = 255   # bytes of one file name (Linux, macOS; most file systems)
# the most bytes bertc adds to OUT's name beside it: "." + ".failed-NNN.old-PID" (the longest: 24 with a 7-digit
# PID), ".tmp-XXXXXXXX" (14), ".old-PID" (13), ".lock" (6)
_SIBLING_ROOM = 24


def sibling_stem(name: str) -> str:
    """The part of bertc's own names beside ``OUT`` (``.OUT.lock``, ``.OUT.tmp-*``, ``.OUT.old-PID``,
    ``OUT.failed``) that stands for ``OUT``'s name ``name``: the name itself, or, when it is too long for them to fit
    in :data:`NAME_MAX` (a name of 232 to 255 bytes), its beginning and ``~`` and 12 hex digits of its sha256: one
    name for one ``OUT``, a different one for another."""
    raw = os.fsencode(name)
    if len(raw) + _SIBLING_ROOM <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    keep = NAME_MAX - _SIBLING_ROOM - len(digest) - 1
    cut = name
    while len(os.fsencode(cut)) > keep:
        cut = cut[:-1]
    return f"{cut}~{digest}"


def _sibling(out: Path, prefix: str, suffix: str) -> Path:
    """``prefix`` + :func:`sibling_stem` of ``out``'s name + ``suffix``, beside ``out``."""
    return out.with_name(f"{prefix}{sibling_stem(out.name)}{suffix}")


_TMP, _OLD, _TRASH = r"\.tmp-[A-Za-z0-9_]+", r"\.old-[0-9]+", r"\.trash-[0-9]+(-[0-9]+)?"
_FAILED_OLD = r"\.failed(-[0-9]+)?\.old-[0-9]+"   # an earlier failed report swapped out (never put back at OUT)


def _siblings(out: Path, pattern: str) -> list:
    """The entries beside ``out`` named "." + its :func:`sibling_stem` + what the regular expression ``pattern``
    matches whole: OUT's own name is matched as it is, whatever it holds (``[``, ``*``), and not another OUT's
    names (``.OUT.old-5.tmp-*`` is ``OUT.old-5``'s)."""
    head = f".{sibling_stem(out.name)}"
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    return [out.parent / n for n in sorted(names) if n.startswith(head) and re.fullmatch(pattern, n[len(head):])]


class BuildLock:
    """An exclusive, non-blocking ``flock`` on ``.OUT.lock`` next to ``OUT``."""

    def __init__(self, out: Path):
        self.out = out
        self.path = _sibling(out, ".", ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputError(f"{self.out} is being written by another bertc build ({self.holder()}); wait for "
                                  f"it to finish or choose another -o") from None
            except BaseException:
                os.close(fd)
                raise
            # The previous holder may have unlinked the file between our open and our flock: then
            # we locked an orphan inode that nobody else can see. Lock the file that is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        self.fd = fd   # held from here on, whatever follows: release() unlocks it
        # The pid only names the holder in others' messages (holder()): a disk too full to take it (ENOSPC, a quota)
        # leaves the lock held all the same, and the file empty ("a running process"). Were the locked descriptor
        # dropped here instead, this process's own next acquire() would find the lock held, by itself.
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass

    def holder(self) -> str:
        try:
            pid = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "a running process"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the lock, so no one else holds this inode
        except OSError:   # gone, or a directory that turned read-only: the lock still ends with the descriptor
            pass
        finally:
            os.close(self.fd)
            self.fd = None


_HOLD = ".bertc-replaced-"   # inside OUT: the old build's files while a build replaces them in place
_PART = ".bertc-part-"       # inside OUT: a file being copied in from another filesystem


def _complete(path: Path) -> bool:
    """Whether the staging directory ``path`` holds a complete build that passed, as a build killed while putting it
    in place leaves it: its report.json says passed, its summary.txt is written, every file of its manifest is there
    at its size."""
    try:
        report = json.loads((path / "report.json").read_text(encoding="utf-8"))
        files = report["manifest"]["files"]
        return report.get("status") == "passed" and (path / "summary.txt").is_file() and all(
            (path / name).is_file() and (path / name).stat().st_size == entry["bytes"] for name, entry in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _newest_first(paths) -> list[Path]:
    def when(path: Path) -> float:
        try:
            return (path / "report.json").stat().st_mtime
        except OSError:
            return 0.0
    return sorted((p for p in paths if p.is_dir() and not p.is_symlink()), key=when, reverse=True)


def _recover(out: Path) -> "str | None":
    """Put a build back at ``out`` when a dead build of it was killed between the two renames of its swap (call only
    while holding its lock): ``OUT`` is missing, the earlier build in ``.OUT.old-PID``, the new one in
    ``.OUT.tmp-*``. The complete new build is put at ``OUT``, as the killed build was doing (it passed every stage);
    without one, the earlier build is put back. Returns what was put at ``OUT`` (None: nothing was)."""
    if os.path.lexists(out):
        return None
    new = next((p for p in _newest_first(_siblings(out, _TMP)) if _complete(p)), None)
    # .OUT.old-PID only: the old build of a swap that went through is renamed .OUT.trash-PID before its removal, so
    # what could not be removed (a read-only build) is never put back here as if that swap had been cut short
    old = next((p for p in _newest_first(_siblings(out, _OLD)) if (p / "report.json").is_file()), None)
    chosen = new or old
    if chosen is None:
        return None
    try:
        os.replace(chosen, out)
    except OSError:
        return None
    return (f"{out.name} is the complete build that a build killed while putting it in place left in {chosen.name}"
            if chosen is new else f"{out.name} is the earlier build again, which a build killed while replacing it "
                                  f"left in {chosen.name}")


def remove_tree(path: Path) -> "str | None":
    """Remove the directory ``path`` and all in it; None when it is gone, else why not (the first error's reason:
    "Permission denied" in a read-only build), with what could be removed removed."""
    errors = []

    def failed(function, name, exc_info):
        errors.append(exc_info[1] if isinstance(exc_info, tuple) else exc_info)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=failed)
    else:
        shutil.rmtree(path, onerror=failed)
    if not os.path.lexists(path):
        return None
    first = next((e for e in errors if isinstance(e, OSError)), None)
    return (first.strerror or str(first)) if first is not None else "it is still there"


def _left_behind(path: Path, what: str, why: str) -> str:
    """The warning for a directory bertc could not remove."""
    return (f"cannot remove {path} ({what}): {why}; it stays there, taking its space, until you remove it "
            f"(chmod -R u+w {path} && rm -rf {path})")


def _remove_leftovers(out: Path) -> "tuple[list[str], list[str]]":
    """Staging and swap directories of dead builds of ``out`` (call only while holding its lock, after
    :func:`_recover`), and what a dead build that was replacing ``out``'s contents in place left inside it: the names
    removed, and a warning for each that could not be (a read-only one, kept)."""
    removed, kept = [], []
    for path in [*_siblings(out, _TMP), *_siblings(out, _OLD), *_siblings(out, _TRASH), *_siblings(out, _FAILED_OLD)]:
        if path.is_dir() and not path.is_symlink():
            why = remove_tree(path)
            if why is None:
                removed.append(path.name)
            else:
                kept.append(_left_behind(path, f"what an earlier build of {out.name} left", why))
    if out.is_dir() and is_build(out):
        for path in [*out.glob(f"{_HOLD}*"), *out.glob(f"{_PART}*")]:
            if path.is_dir() and not path.is_symlink():
                why = remove_tree(path)
            else:
                try:
                    path.unlink(missing_ok=True)
                    why = None
                except OSError as exc:
                    why = exc.strerror or str(exc)
            if why is None:
                removed.append(f"{out.name}/{path.name}")
            else:
                kept.append(_left_behind(path, f"what an earlier build of {out.name} left inside it", why))
    return removed, kept


def _holds_cwd(out: Path) -> bool:
    """Whether the working directory is ``out`` or inside it (renaming ``out`` away would leave it deleted)."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == out or out in cwd.parents


def _move(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)``, or across filesystems a copy under a hidden name, renamed to ``dst``."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    part = dst.with_name(f"{_PART}{dst.name}")
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, part, symlinks=True)
        os.replace(part, dst)
        shutil.rmtree(src)
    else:
        shutil.copy2(src, part, follow_symlinks=False)
        os.replace(part, dst)
        src.unlink()


# what bertc writes into a build's directory besides the files of its manifest: the report and summary (not in the
# manifest), ``bertc bench``'s figures and chart
BUILD_EXTRAS = ("report.json", "summary.txt", "bench.json", "bench.png")


def not_a_build(out: Path) -> Optional[str]:
    """Why the directory ``out`` may not be replaced by a build, as "OUT exists and ..." goes on (None: it may): it
    must be empty, or hold what a build wrote and nothing else: bertc's report.json (with its file manifest), the
    files that manifest lists, :data:`BUILD_EXTRAS`, bertc's own temporary names and a file manager's notes
    (.DS_Store). A folder that merely holds a file named report.json (a project, a git repository, results) is the
    user's: refused, however forced; so is a build beside which the user keeps a file of theirs, named."""
    try:
        entries = [e.name for e in out.iterdir()]
    except OSError as exc:
        return f"cannot be listed: {exc.strerror or exc}"
    if not entries:
        return None
    if "report.json" not in entries:
        return "is not a bertc build (no report.json)"
    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        files = report["manifest"]["files"]
        if not isinstance(files, dict):
            raise TypeError
    except OSError as exc:   # not "not a build": one whose report this user may not read (Permission denied)
        return f"has a report.json that cannot be read ({exc.strerror or exc}), so it is not known to be a build"
    except (ValueError, KeyError, TypeError):
        return "is not a bertc build (its report.json is not a bertc build's report with a file manifest)"
    ours = build_entries(files)
    other = sorted(e for e in entries if e not in ours and not e.startswith((_HOLD, _PART)) and not _temporary(e)
                   and e not in _FILE_MANAGERS)
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        return f"is a bertc build that also holds what no build wrote ({shown}: yours to move or remove)"
    return None


def build_entries(files: dict) -> set:
    """The names a build's folder holds at its top, from its manifest's ``files``: theirs (a folder's first part,
    ``saved_model/...``) and :data:`BUILD_EXTRAS`."""
    return {str(name).split("/")[0] for name in files} | set(BUILD_EXTRAS)


def _temporary(name: str) -> bool:
    """Whether ``name`` is one of bertc's temporary files in a build's folder (a killed write's): ``*.partial``
    (``report.json.PID.N.partial``), a killed ``bertc bench``'s chart (``.bench.PID.png``, drawn as
    ``.bench.PID.png.partial.png``; an earlier bertc's ``bench.png.partial.png``); a user's ``scores.partial_eval.csv``
    is not."""
    return name.endswith(".partial") or name == "bench.png.partial.png" or \
        re.fullmatch(r"\.bench\.\d+\.png(\.partial\.png)?", name) is not None


_FILE_MANAGERS = (".DS_Store", "Thumbs.db", "desktop.ini")   # what file managers leave in a folder they showed


def is_build(out: Path) -> bool:
    """Whether the directory ``out`` may be replaced by a build (:func:`not_a_build`)."""
    return not_a_build(out) is None


def _passed(path: Path) -> bool:
    """Whether the directory ``path`` holds a build that passed (its report.json says so)."""
    try:
        return json.loads((path / "report.json").read_text(encoding="utf-8")).get("status") == "passed"
    except (OSError, ValueError, AttributeError):
        return False


def _replaceable(path: Path) -> bool:
    """Whether a failed build may put its report at ``path``: nothing there, or a real directory that
    :func:`is_build` and did not pass (a complete build kept there because OUT was not its to replace stays)."""
    if not os.path.lexists(path):
        return True
    return path.is_dir() and not path.is_symlink() and is_build(path) and not _passed(path)


def failed_slot(out: Path) -> Path:
    """Where a failed build of ``out`` keeps its report: ``OUT.failed``, or, when that holds something else than a
    failed build (the user's files, a file, a link, a complete build that could not be put at OUT), the first of
    ``OUT.failed-2``, ``OUT.failed-3``, ... that is free or a failed build's. A successful build of ``out`` removes
    the stale report there."""
    for n in itertools.count(1):
        path = _sibling(out, "", ".failed" + (f"-{n}" if n > 1 else ""))
        if _replaceable(path):
            return path
    raise AssertionError("unreachable")


class _NotReplaceable(Exception):
    """What is at OUT when the new build is to be put there is not this build's to replace (its message says why)."""


class StagedOutput:
    def __init__(self, out: Path | str, force: bool = False, warn: Optional[Callable[[str], None]] = None,
                 on_placed: Optional[Callable[[], None]] = None):
        self.given = Path(out)   # as named, for messages
        # told, while signals are still ignored, that the new build is in place at OUT: a Ctrl-C after that moment
        # interrupts a build that is written, and must not say that nothing was
        self.on_placed = on_placed or (lambda: None)
        # told what the build could not clean up (an old build it could not remove): the build goes on
        self.warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
        # The real directory: a link to OUT is followed (the build replaces the target's build, the link stays), and
        # "." or ".." have a name; staging, OUT.failed and the lock are beside it, so that OUT named through a link
        # and by its own path is one OUT, written by one build at a time.
        try:
            self.out = self.given.resolve()
        except (OSError, RuntimeError) as exc:   # a loop of links
            raise OutputError(f"{self.given}: cannot follow the output path: {exc}") from None
        if not self.out.name:
            raise OutputError(f"{self.given} is the filesystem root; choose another -o")
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.given} exists and is not a directory; -o names the build's output directory")
        if self.out.exists() and not force:
            raise OutputError(f"{self.given} already exists; pass {said('--force', 'force=True')} to replace it")
        why = not_a_build(self.out) if self.out.exists() else None
        if why is not None:   # a checkpoint, a data folder: never ours to remove
            raise OutputError(f"{self.given} exists and {why}: {said('--force', 'force=True')} replaces only a "
                              f"build's output; choose "
                              f"another {said('-o', 'out')}, or remove it yourself")
        self.force = force
        self.existed = os.path.lexists(self.out)   # what the swap may replace was there at the start
        self.failed_dir = _sibling(self.out, "", ".failed")
        self.kept_in: Path | None = None   # where a failed build's report went (also set as the error's kept_in)
        self.tmp: Path | None = None
        self.lock = BuildLock(self.out)
        self.removed_leftovers: list[str] = []
        self.recovered: str | None = None   # what a dead build's swap left, put back at OUT (:func:`_recover`)

    def __enter__(self) -> Path:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the parent directory of {self.given}: {exc}") from None
        try:
            self.lock.acquire()
        except OSError as exc:
            raise OutputError(f"cannot lock {self.lock.path} for the build: {exc}") from None
        try:
            self.recovered = _recover(self.out)
            self.removed_leftovers, kept = _remove_leftovers(self.out)
            for text in kept:
                self.warn(text)
            if self.recovered is not None:
                self.existed = True
                if not self.force:   # OUT is there again: a build without --force replaces nothing
                    raise OutputError(f"{self.given} already exists ({self.recovered}); pass "
                                      f"{said('--force', 'force=True')} to replace it")
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{sibling_stem(self.out.name)}.tmp-", dir=self.out.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the staging phase only
        except OutputError:
            self.lock.release()
            raise
        except OSError as exc:
            self.lock.release()
            raise OutputError(f"cannot create the output directory next to {self.given}: {exc}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                with signals_ignored():
                    try:
                        self._swap_in()
                        self.on_placed()
                    except _NotReplaceable as why:   # what is at OUT now is left alone; the new build is kept beside it
                        self._keep_failed(None)
                        where = (f"{self._beside_given(self.kept_in)}/" if self.kept_in != self.tmp else
                                 f"its staging directory {self.tmp} (removed by the next build of {self.given}: "
                                 f"move it)")
                        raise OutputError(f"{why}: left alone; the new build (complete, it passed) is kept in {where} "
                                          f"instead") from None
            elif self.tmp is not None and (self.tmp / "report.json").exists() and issubclass(exc_type, Exception) \
                    and not isinstance(exc, OutputError) and filesystem_error(exc) is None:
                # a failed build (not Ctrl-C, nor SIGTERM's unwinding: those keep nothing; nor a build that could not
                # write its files, a full disk: what it wrote is incomplete)
                with signals_ignored():
                    self._keep_failed(exc)
            elif self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self.lock.release()
        return False

    def _not_replaceable(self, appeared: bool) -> "str | None":
        """Why what is at OUT now may not be replaced by this build (None: it may), checked again at the swap under
        the lock: OUT may have appeared, or changed, while the build ran (``appeared``: it was not there at the
        start). The rules of the start: without ``force`` nothing is replaced; with it, only a build's directory
        (a report.json) or an empty one."""
        if not os.path.lexists(self.out):
            return None
        if not self.force:
            return (f"{self.given} appeared while the build ran (it did not exist when the build started); "
                    f"without {said('--force', 'force=True')} a build replaces nothing")
        meanwhile = "appeared while the build ran" if appeared else "changed while the build ran"
        if self.out.is_symlink() or not self.out.is_dir():
            return (f"{self.given} {meanwhile} and is not a directory; {said('--force', 'force=True')} replaces only "
                    f"a build's output")
        why = not_a_build(self.out)
        if why is not None:
            return f"{self.given} {meanwhile} and {why}; {said('--force', 'force=True')} replaces only a build's output"
        return None

    def _beside_given(self, path: Path) -> Path:
        """``path`` (beside OUT) named as ``-o`` named OUT, when that is beside it too (``toc/OUT.failed``)."""
        try:
            if self.given.parent.resolve() == path.parent:
                return self.given.parent / path.name
        except (OSError, RuntimeError):
            pass
        return path

    def _swap_in(self) -> None:
        why = self._not_replaceable(appeared=not self.existed)
        if why is not None:
            raise _NotReplaceable(why)
        try:
            if self.out.exists() and _holds_cwd(self.out):   # `-o .`: the shell in OUT keeps seeing OUT
                self._replace_contents()
            else:
                try:
                    self._rename_in()
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.EXDEV) or not self.out.is_dir():
                        raise
                    self._replace_contents()   # a mount point cannot be renamed: its build is replaced file by file
        except OSError as exc:
            raise OutputError(f"cannot put the new build in place at {self.given}: {exc}; what of it was not moved "
                              f"is in {self.tmp} (removed by the next build of {self.given})") from None
        stale = failed_slot(self.out)   # an earlier failure's report: a build's folder, never the user's
        if os.path.lexists(stale):
            why = remove_tree(stale)
            if why is not None:
                self.warn(_left_behind(stale, "an earlier failed build's report", why))

    def _rename_in(self) -> None:
        """Swap the staging directory in by renames: OUT is either the old build or the new one, never a mix."""
        old = None
        if os.path.lexists(self.out):
            old = _sibling(self.out, ".", f".old-{os.getpid()}")
            os.replace(self.out, old)   # a mount point refuses this (EBUSY): nothing has changed yet
            # checked again once renamed away, where nothing writes to it by OUT's path any more: still a build's
            if old.is_symlink() or not old.is_dir() or not is_build(old):
                os.replace(old, self.out)
                raise _NotReplaceable(self._not_replaceable(appeared=not self.existed) or
                                      f"{self.given} changed while the build ran")
        try:
            os.replace(self.tmp, self.out)
        except OSError as exc:
            if old is not None:
                os.replace(old, self.out)
            elif exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR) \
                    and os.path.lexists(self.out):   # appeared since the check, a moment ago
                raise _NotReplaceable(self._not_replaceable(appeared=True)
                                      or f"{self.given} appeared while the build ran") from None
            raise
        if old is not None:
            self._dispose(old)

    def _dispose(self, old: Path) -> None:
        """Remove the old build ``old`` (``.OUT.old-PID``) that the new one replaced. It is renamed
        ``.OUT.trash-PID`` first, so that what cannot be removed (a read-only build, a busy mount) is no longer
        named as a swap cut short (:func:`_recover` would put it back at OUT once OUT is gone); that, and why, is
        said (:attr:`warn`)."""
        for n in range(1, 100):
            trash = _sibling(self.out, ".", f".trash-{os.getpid()}" + (f"-{n}" if n > 1 else ""))
            if os.path.lexists(trash):
                continue
            try:
                os.replace(old, trash)
                old = trash
            except OSError:
                pass
            break
        why = remove_tree(old)
        if why is not None:
            self.warn(_left_behind(old, f"the build that {self.given} held before this one", why))

    def _replace_contents(self) -> None:
        """Replace the build in ``OUT`` by the staged one without renaming ``OUT`` itself (a mount point, the working
        directory): the old build's files go into a hidden folder inside ``OUT``, the new ones are moved in (copied
        across filesystems), and report.json last, over the old one, so that ``OUT`` is a build's (``is_build``)
        at every moment; then the old files are removed. Not atomic, as a rename is: a build killed meanwhile
        leaves a mix, which the next ``--force`` build replaces."""
        hold = Path(tempfile.mkdtemp(prefix=_HOLD, dir=self.out))
        for entry in list(self.out.iterdir()):
            if entry.name != "report.json" and entry != hold:
                os.replace(entry, hold / entry.name)
        for entry in sorted(self.tmp.iterdir(), key=lambda e: e.name == "report.json"):
            _move(entry, self.out / entry.name)
        shutil.rmtree(hold, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _keep_failed(self, exc: BaseException | None) -> None:
        """Move the staged report of a failed build to :func:`failed_slot`; tell ``exc`` where (``exc.kept_in``, and
        ``exc.kept_instead_of``: ``OUT.failed`` when that was not ours to replace)."""
        slot = failed_slot(self.out)
        try:
            if os.path.lexists(slot):   # an earlier failed build's folder (or an empty one): swapped out, then removed
                old = slot.with_name(f".{slot.name}.old-{os.getpid()}")   # not .OUT.old-*: never put back at OUT
                os.replace(slot, old)
                os.replace(self.tmp, slot)
                why = remove_tree(old)
                if why is not None:
                    self.warn(_left_behind(old, f"the earlier failed build's report that {slot.name} held", why))
            else:
                os.replace(self.tmp, slot)
            self.kept_in = slot
        except OSError:
            self.kept_in = self.tmp   # left in its staging directory rather than lost (the next build removes it)
        if exc is not None:
            try:
                exc.kept_in = self.kept_in
                exc.kept_instead_of = self.failed_dir if self.kept_in != self.failed_dir else None
            except AttributeError:
                pass


@contextlib.contextmanager
def parents_made(path: Path, option: str):
    """The missing folders above the output file ``path`` made (``mkdir -p``, as ``bertc build -o`` and ``bertc
    import -o`` do), and removed again (those made here, while they are empty) when the block ends by an exception
    (an error, Ctrl-C, SIGTERM, an exit): a command that fails leaves no new empty folder behind. A folder behind a
    dangling link, or under a file, is not made: the command's own check names it."""
    missing, parent = [], Path(path).parent
    while not (parent.exists() or parent.is_symlink()) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    made: list = []

    def remove_made():
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()

    if missing and parent.is_dir():
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:   # made meanwhile by another process: its, not ours to remove
                continue
            except OSError as exc:
                remove_made()
                raise OutputError(f"{option} {path}: cannot make the folder {folder}: {exc.strerror or exc}") from None
            made.append(folder)
    try:
        yield
    except BaseException:
        remove_made()
        raise
