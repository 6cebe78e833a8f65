"""An earlier run's report replaced by a new one, kept until the new one is complete: set aside in a hidden folder of
the output folder, named by the replacing process, before the first new file is written; deleted once the new marker
(`metrics.json`) is written; moved back when the new run fails, and by the next run when the new one was killed (QA,
session 60: an `evaluate --overwrite_output_dir` that hit a full disk left its folder empty)."""

import fnmatch
import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Union

from .atomic_files import remove_entry
from .run_lock import pid_alive

__all__ = ["replacing_earlier_report", "settle_replaced_report"]

# What a replacing run set aside, inside its folder: the names it replaces, those the earlier run had, its host
_RECORD = ".replacing.json"


def _aside_prefix(marker: str) -> str:
    return f".replaced-{marker}-"


@contextmanager
def replacing_earlier_report(
    path: Union[str, os.PathLike],
    folders: Sequence[str] = (),
    marker: str = "metrics.json",
    moved_in: Optional[Dict[str, str]] = None,
    files: Sequence[str] = (),
    patterns: Sequence[str] = (),
) -> Iterator[None]:
    """A block that writes a new report into the folder `path`, its marker last: the earlier run's marker
    (`metrics.json`, or the file named `marker`), `files` (`report.md`, the figures), those matching `patterns`
    (`cluster_examples_*.png`: as many as a run writes) and `folders` (`pipeline/`) are set aside first, marker first
    (a folder holding the marker holds one run's files), then `moved_in` (`{name in path: a folder this run wrote
    aside}`, fit-head's new `pipeline/`) moved in. When the block ends, what was set aside is deleted; when it raises,
    the new entries of those names are removed and the earlier ones moved back (a run that fails keeps the earlier
    complete result); when the process is killed, the next run moves them back (`settle_replaced_report`). Enter it
    when the run is about to write its first file, after its work."""
    if Path(marker).name != marker:
        raise ValueError(f"marker: expected a file name, got {marker!r}")
    settle_replaced_report(path, marker)
    matched = [entry.name for pattern in patterns for entry in Path(path).glob(pattern)]
    names = list(dict.fromkeys([marker, *files, *matched, *folders, *(moved_in or {})]))
    present = [name for name in names if os.path.lexists(Path(path, name))]
    aside = Path(path, f"{_aside_prefix(marker)}{os.getpid()}")
    aside.mkdir(parents=True)
    record = {"names": names, "patterns": list(patterns), "present": present, "host": socket.gethostname()}
    (aside / _RECORD).write_text(json.dumps(record))  # a kill while writing it: unreadable, and nothing set aside yet
    for name in present:
        os.replace(Path(path, name), aside / name)
    try:
        for name, staged in (moved_in or {}).items():
            os.replace(staged, Path(path, name))
        yield
    except BaseException:
        _move_back(path, aside, marker)
        raise
    shutil.rmtree(aside)


def settle_replaced_report(path: Union[str, os.PathLike], marker: str = "metrics.json") -> None:
    """Finish what a killed replacing run of this host left (`replacing_earlier_report`; a live one's, or another
    host's, is left alone): its set-aside report is deleted when its own marker was written, else moved back in place
    of the files it had written."""
    for aside in Path(path).glob(f"{_aside_prefix(marker)}*"):
        pid = aside.name[len(_aside_prefix(marker)) :]
        record = _record_of(aside)
        if not pid.isdigit() or pid_alive(int(pid)) or record.get("host", socket.gethostname()) != socket.gethostname():
            continue
        if Path(path, marker).exists():
            shutil.rmtree(aside)
        else:
            _move_back(path, aside, marker)


def _record_of(aside: Path) -> dict:
    try:
        return json.loads((aside / _RECORD).read_text())
    except (OSError, ValueError):  # killed before it was written: nothing was set aside yet
        return {}


def _move_back(path: Union[str, os.PathLike], aside: Path, marker: str) -> None:
    """Remove the replacing run's entries of the names it replaces (an earlier entry not set aside yet, when it was
    killed while setting them aside, stays), then move the earlier ones back, the marker last."""
    record = _record_of(aside)
    kept = {name for name in record.get("present", []) if not os.path.lexists(aside / name)}
    written = [name for name in record.get("names", []) if name not in kept]
    written += [
        entry.name for entry in Path(path).iterdir()
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in record.get("patterns", []))
        and entry.name not in kept
    ]  # fmt: skip
    for name in written:
        remove_entry(Path(path, name))
    entries = [entry for entry in aside.iterdir() if entry.name != _RECORD]
    for entry in sorted(entries, key=lambda entry: entry.name == marker):
        os.replace(entry, Path(path, entry.name))
    shutil.rmtree(aside)
