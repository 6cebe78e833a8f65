"""Files written whole or not at all: through a temporary file beside the target, renamed over it once complete, so a
process stopped mid-write (a full disk, a scheduler's SIGKILL) leaves the earlier file or the new one, never half of
one that no later command can read. The standard library only."""

import json
import os
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Union

from .run_lock import pid_alive

__all__ = ["write_atomically", "write_json_atomically", "write_texts_atomically"]

# A temporary file of a process of this host that is gone, and older than this, is a killed writer's: removed by the
# next write of the same file (a file on a shared drive being written from another host is younger).
STALE_TEMPORARY_SECONDS = 60


def write_atomically(path: Union[str, os.PathLike], write: Callable[[IO], Any], mode: str = "w") -> None:
    """`write(handle)` into a hidden temporary file beside `path` (UTF-8 text, or bytes with `mode="wb"`), flushed to
    the disk, then renamed over `path`; the temporary file is removed when writing fails, and those a killed process
    left for the same file once this one is written."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
    try:
        with open(temporary, mode, **text) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path) -> None:
    """The temporary files of `path` left by writers that were killed (SIGKILL, a crash): their process is gone."""
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        pid = leftover.name.rpartition("-")[2]
        try:
            stale = not pid_alive(int(pid)) and time.time() - leftover.stat().st_mtime > STALE_TEMPORARY_SECONDS
            if stale:
                leftover.unlink()
        except (ValueError, OSError):  # not one of ours, or removed meanwhile
            continue



def write_json_atomically(path: Union[str, os.PathLike], value: Any, **dump_options: Any) -> None:
    """`value` as JSON (`json.dump`'s `dump_options`), written whole or not at all."""
    write_atomically(path, lambda handle: json.dump(value, handle, **dump_options))


def write_texts_atomically(folder: Union[str, os.PathLike], texts: Dict[str, str]) -> None:
    """Each `{file name: text}` of `texts` into `folder`, each written whole or not at all; render every text before
    calling, so a failure to render leaves every earlier file as it was."""
    for name, text in texts.items():
        write_atomically(Path(folder) / name, lambda handle, text=text: handle.write(text))
