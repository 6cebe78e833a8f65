"""Files written whole or not at all: through a temporary file beside the target, renamed over it once complete, so a
process stopped mid-write (a full disk, a scheduler's SIGKILL) leaves the earlier file or the new one, never half of
one that no later command can read. The standard library only."""

import glob
import json
import os
import shutil
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Union

from .run_lock import pid_alive

__all__ = [
    "remove_entry", "remove_leftovers_of_killed_writers", "write_atomically", "write_json_atomically",
    "write_texts_atomically",
]

# A temporary file or folder of a process of this host that is gone, and older than this, is a killed writer's:
# removed by the next writer (`remove_leftovers_of_killed_writers`).
STALE_TEMPORARY_SECONDS = 60


def write_atomically(path: Union[str, os.PathLike], write: Callable[[IO], Any], mode: str = "w") -> None:
    """`write(handle)` into a hidden temporary file beside `path` (UTF-8 text, or bytes with `mode="wb"`), flushed to
    the disk, then renamed over `path`; the temporary file is removed when writing fails, and those a killed process
    left for the same file once this one is written. A storage error (a full disk, a quota) names `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
    try:
        with open(temporary, mode, **text) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno is not None and error.filename is None:  # a write's or fsync's: "[Errno 28] No space left..."
            error.filename = str(path)
        elif error.filename is None:  # a message alone (PIL's, pyarrow's), which a filename would replace
            error.add_note(f"while writing {path}")
        raise
    finally:
        temporary.unlink(missing_ok=True)
    remove_leftovers_of_killed_writers(path.parent, f".{path.name}.tmp-")


def remove_entry(path: Union[str, os.PathLike]) -> None:
    """Remove a file, a folder, or only the link where `path` is a symbolic link (QA: `shutil.rmtree` refused a linked
    checkpoint after training, and the final model was never saved); nothing where there is nothing."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def remove_leftovers_of_killed_writers(folder: Union[str, os.PathLike], prefix: str) -> None:
    """The entries of `folder` named `<prefix><pid>` (a temporary file, a folder written aside) whose writer, a
    process of this host, is gone, and older than `STALE_TEMPORARY_SECONDS` (one being written from another host, on
    a shared drive, is younger): left by writers that were killed (SIGKILL, a crash)."""
    for leftover in Path(folder).glob(f"{glob.escape(prefix)}*"):
        pid = leftover.name[len(prefix) :]
        try:
            if not pid.isdigit() or pid_alive(int(pid)):
                continue
            if time.time() - leftover.lstat().st_mtime > STALE_TEMPORARY_SECONDS:
                remove_entry(leftover)
        except OSError:  # removed meanwhile
            continue


def write_json_atomically(path: Union[str, os.PathLike], value: Any, **dump_options: Any) -> None:
    """`value` as JSON (`json.dump`'s `dump_options`), written whole or not at all."""
    write_atomically(path, lambda handle: json.dump(value, handle, **dump_options))


def write_texts_atomically(folder: Union[str, os.PathLike], texts: Dict[str, str]) -> None:
    """Each `{file name: text}` of `texts` into `folder`, in the dict's order, each written whole or not at all;
    render every text before calling, so a failure to render leaves every earlier file as it was."""
    for name, text in texts.items():
        write_atomically(Path(folder) / name, lambda handle, text=text: handle.write(text))
