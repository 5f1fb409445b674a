"""Each worker process's temporary files live in one folder, emptied after every job.

``tempfile.tempdir`` of a pool process is set to ``<system temp>/hokusai-worker-<pid>``, so the
artifact copies and MLflow's own staging copies of a job land there. After each task the folder
is emptied; at start-up, folders of processes that no longer run (a SIGKILLed worker's debris)
are removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "hokusai-worker-"
_SYSTEM_TEMP = Path(tempfile.gettempdir())


def process_dir(pid: int | None = None) -> Path:
    """The scratch folder of process ``pid`` (default: this one)."""
    return _SYSTEM_TEMP / f"{PREFIX}{pid or os.getpid()}"


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_dead(prefix: str = PREFIX) -> list[Path]:
    """Remove the ``<system temp>/<prefix><pid>`` folders of processes that no longer run; return them.

    Scratch folders by default; the worker's private metrics folders use the same rule.
    """
    removed = []
    for folder in _SYSTEM_TEMP.glob(f"{prefix}*"):
        suffix = folder.name.removeprefix(prefix)
        if suffix.isdigit() and int(suffix) != os.getpid() and not pid_alive(int(suffix)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        logger.info("removed %d %s* folder(s) of dead worker processes", len(removed), prefix)
    return removed


def own_folder(prefix: str) -> Path:
    """``<system temp>/<prefix><this pid>``, new, empty and private to this user (a same-pid leftover is replaced)."""
    folder = _SYSTEM_TEMP / f"{prefix}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    return folder


def use_process_dir() -> Path:
    """Make this process's scratch folder the default temp folder; return it."""
    folder = process_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(folder)
    return folder


def clear_process_dir() -> None:
    """Empty this process's scratch folder (after a job), keeping the folder itself."""
    folder = process_dir()
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
