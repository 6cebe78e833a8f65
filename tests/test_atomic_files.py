"""Files written whole or not at all leave no temporary file behind: not when writing fails, and not those a killed
writer left (QA: `.report.md.tmp-PID` files of SIGKILLed runs survived every later clean rerun)."""

import errno
import os
import subprocess
import sys
import time

import pytest

from diffusion_classifiers import atomic_files
from diffusion_classifiers.atomic_files import write_atomically, write_json_atomically


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_write_removes_a_killed_writers_temporary_file_and_keeps_a_live_ones(tmp_path):
    killed = tmp_path / f".report.md.tmp-{dead_pid()}"
    killed.write_text("half a rep")
    old = time.time() - 2 * atomic_files.STALE_TEMPORARY_SECONDS
    os.utime(killed, (old, old))
    live = tmp_path / f".report.md.tmp-{os.getppid()}"  # a process that is running: its write may be under way
    live.write_text("being written")
    os.utime(live, (old, old))
    recent = tmp_path / f".report.md.tmp-{dead_pid()}"  # young: perhaps another host's writer, on a shared drive
    recent.write_text("just started")
    other = tmp_path / ".other.md.tmp-1"  # another file's: not this write's to judge
    other.write_text("x")
    write_atomically(tmp_path / "report.md", lambda handle: handle.write("whole"))
    assert (tmp_path / "report.md").read_text() == "whole"
    assert not killed.exists() and live.exists() and recent.exists() and other.exists()


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    write_json_atomically(tmp_path / "metrics.json", {"accuracy": 0.9})

    def fail(handle):
        handle.write("{")
        raise OSError("No space left on device")

    try:
        write_atomically(tmp_path / "metrics.json", fail)
    except OSError:
        pass
    assert (tmp_path / "metrics.json").read_text() == '{"accuracy": 0.9}'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_a_full_disk_names_the_file_being_written(tmp_path):
    """A write's storage error carries no file name ("[Errno 28] No space left on device"): the user is told which
    file could not be written (session 56's operations persona)."""

    def fill_the_disk(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left on device") as raised:
        write_atomically(tmp_path / "metrics.json", fill_the_disk)
    assert raised.value.errno == errno.ENOSPC and str(tmp_path / "metrics.json") in str(raised.value)


def test_an_error_of_a_message_alone_keeps_its_message():
    """Second read (session 58): setting the file name of an OSError without errno printed "[Errno None] None"."""

    def refuse(handle):
        raise OSError("cannot write mode CMYK as PNG")

    with pytest.raises(OSError, match="cannot write mode CMYK as PNG") as raised:
        write_atomically("figure.png", refuse, mode="wb")
    assert raised.value.__notes__ == ["while writing figure.png"]
