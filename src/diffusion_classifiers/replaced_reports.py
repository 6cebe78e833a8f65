"""An earlier run's report replaced by a new one, kept until the new one is complete: set aside in a hidden folder of
the output folder before the first new file is written, deleted once the new marker (`metrics.json`) is written,
moved back when the new run fails, and moved back by the next run when the new one was killed (QA, session 60: an
`evaluate --overwrite_output_dir` that hit a full disk left its folder empty)."""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Union

__all__ = ["replacing_earlier_report", "settle_replaced_report"]

# What a replacing run set aside, inside its folder: the names it replaces
_NAMES_FILE = "replaced_names.json"


def _aside(path: Union[str, os.PathLike], marker: str) -> Path:
    return Path(path, f".replaced-{marker}")


def _remove(entry: Path) -> None:
    """A file, a link (not what it points to) or a folder."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    elif entry.exists() or entry.is_symlink():
        entry.unlink()


@contextmanager
def replacing_earlier_report(
    path: Union[str, os.PathLike],
    folders: Sequence[str] = (),
    marker: str = "metrics.json",
    moved_in: Optional[Dict[str, str]] = None,
    files: Sequence[str] = (),
) -> Iterator[None]:
    """A block that writes a new report into the folder `path`, its marker last: the earlier run's marker
    (`metrics.json`, or the file named `marker`), `files` (`report.md`, the figures) and `folders` (`pipeline/`) are
    set aside first, marker first (a folder holding the marker holds one run's files), then `moved_in` (`{name in
    path: a folder this run wrote aside}`, fit-head's new `pipeline/`) moved in. When the block ends, what was set
    aside is deleted; when it raises, the new files of those names are removed and the earlier ones moved back (a run
    that fails keeps the earlier complete result); when the process is killed, the next run moves them back
    (`settle_replaced_report`). Enter it when the run is about to write its first file, after its work."""
    settle_replaced_report(path, marker)
    names = list(dict.fromkeys([marker, *files, *folders, *(moved_in or {})]))
    aside = _aside(path, marker)
    aside.mkdir(parents=True)
    (aside / _NAMES_FILE).write_text(json.dumps(names))
    for name in names:
        if Path(path, name).exists() or Path(path, name).is_symlink():
            os.replace(Path(path, name), aside / name)
    try:
        for name, staged in (moved_in or {}).items():
            os.replace(staged, Path(path, name))
        yield
    except BaseException:
        _move_back(path, aside)
        raise
    shutil.rmtree(aside)


def settle_replaced_report(path: Union[str, os.PathLike], marker: str = "metrics.json") -> None:
    """Finish what a killed replacing run left (`replacing_earlier_report`): its set-aside report is deleted when its
    own marker was written, else moved back in place of the files it had written."""
    aside = _aside(path, marker)
    if not aside.is_dir():
        return
    if Path(path, marker).exists():
        shutil.rmtree(aside)
    else:
        _move_back(path, aside)


def _move_back(path: Union[str, os.PathLike], aside: Path) -> None:
    """Remove the replacing run's files of the names it replaces, then move the earlier ones back, the marker last; a
    process killed meanwhile leaves what the next `settle_replaced_report` finishes (the names emptied once removed)."""
    names_file = aside / _NAMES_FILE
    names = json.loads(names_file.read_text()) if names_file.exists() else []
    for name in names:
        _remove(Path(path, name))  # the failed run's, of a name the earlier run may not have had
    if names:
        staged = aside / f".{_NAMES_FILE}.tmp"
        staged.write_text("[]")
        os.replace(staged, names_file)
    entries = [entry for entry in aside.iterdir() if _NAMES_FILE not in entry.name]
    marker = aside.name[len(".replaced-") :]
    for entry in sorted(entries, key=lambda entry: entry.name == marker):
        os.replace(entry, Path(path, entry.name))
    shutil.rmtree(aside)
