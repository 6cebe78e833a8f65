"""One run at a time on the files a run writes: a lock file, JSON with the owner's pid, host and start time, created
atomically. A second run fails at once, naming the owner; a lock left by a process of this host that is gone is taken
over: its pid is free, or is this process's (a container restarted in its pod: same hostname, same pids) while this
process holds no such lock, or (on Linux) is a process started at another time than the owner.
Training locks its `--output_dir` (`training.output_dir.OutputDirLock`), `predict` its `--output`, the commands
writing a report theirs (`output_dir_lock`).

Only the standard library is imported (the `predict` command's parser stays fast).
"""

import json
import logging
import os
import socket
from datetime import datetime, timezone
from typing import Any, Callable, Optional

__all__ = ["COMMAND_LOCK_NAME", "RunInUseError", "RunLock", "claim_on_main_process", "output_dir_lock", "pid_alive"]

# The lock file of a command writing its report into an --output_dir (evaluate, probe, fit-head, demo).
COMMAND_LOCK_NAME = ".run.lock"
# An empty lock file this old was left by a run killed between creating and writing it
EMPTY_LOCK_SECONDS = 10

logger = logging.getLogger(__name__)

# The lock files this process holds (real paths): one with this process's pid that is not here is an earlier process's
_held_here: set[str] = set()


class RunInUseError(RuntimeError):
    """Another run holds the lock."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _process_start(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (Linux's /proc); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces
    except (OSError, ValueError, IndexError):
        return None


class RunLock:
    r"""
    The lock of one run: `acquire()` before anything is written, `release()` at the end, also on errors; or `with
    RunLock(...):`. The lock file's folder is created if missing, and removed at the release if the lock made it and
    it is left empty.

    Args:
        path (`str`): the lock file.
        locked (`str`): what the lock protects, as the errors name it (`"--output_dir out"`).
        flag (`str`): the option a user changes to write elsewhere (`"--output_dir"`).
        kind (`str`): the kind of run (`"training run"`).
        error (`type`, *optional*, defaults to `RunInUseError`): the error raised when another run holds the lock.
    """

    def __init__(self, path: str, locked: str, flag: str, kind: str, error: type = RunInUseError):
        self.path = path
        self.locked, self.flag, self.kind, self.error = locked, flag, kind, error
        self.owner = None
        self._created_dir = False

    def acquire(self) -> None:
        folder = os.path.dirname(self.path) or "."
        self._created_dir = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat()}
        owner["pid_start"] = _process_start(os.getpid())  # tells a reused pid from the owner's; null off Linux
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._remove_if_stale()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise self.error(
                    f"{self.locked}: another {self.kind} took its stale lock {self.path} over at the same time; wait "
                    f"for it or choose another {self.flag}"
                ) from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
        except BaseException:  # QA: a full disk left an empty lock that refused every later run as "unreadable"
            os.remove(self.path)
            self._remove_created_dir()
            raise
        self.owner = owner
        _held_here.add(os.path.realpath(self.path))

    def _remove_if_stale(self) -> None:
        """Remove the lock of a process of this host that is gone (`_owner_gone`), or an empty one older than
        `EMPTY_LOCK_SECONDS` (its run was killed between creating and writing it); refuse any other."""
        if self._empty_and_abandoned():
            logger.warning(f"Taking over the empty lock of {self.locked}: its run was killed as it took it")
            os.remove(self.path)
            return
        holder = self._holder()
        if not self._held_by_a_live_run(holder):
            owner = f"pid {holder['pid']} on {holder['host']}"
            logger.warning(f"Taking over the lock of {self.locked}: its owner ({owner}) is gone")
            self._remove_stale(holder)
            return
        raise self._in_use(holder)

    def refuse_if_held(self) -> None:
        """Refuse, as `acquire` would, the lock of a live run, without taking or changing any lock: for the checks
        made before a run's own, so that a folder a live run writes is named as in use, not as the earlier run's."""
        if not os.path.exists(self.path):
            return
        try:
            holder = self._holder()
        except self.error as error:
            if isinstance(error.__cause__, FileNotFoundError):  # released since
                return
            raise
        if self._held_by_a_live_run(holder):
            raise self._in_use(holder)

    def _empty_and_abandoned(self) -> bool:
        """QA (SIGKILL between creating the lock and writing it): an empty lock refused every later run as
        unreadable. A live run writes its lock at once after creating it, far within `EMPTY_LOCK_SECONDS`."""
        try:
            status = os.stat(self.path)
        except OSError:
            return False
        return status.st_size == 0 and datetime.now().timestamp() - status.st_mtime > EMPTY_LOCK_SECONDS

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            int(holder["pid"]), str(holder["host"])  # what the checks read, as they read it
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise self.error(
                f"{self.locked} has an unreadable lock {self.path} ({error}); delete it if no {self.kind} uses it"
            ) from error
        return holder

    def _held_by_a_live_run(self, holder: dict) -> bool:
        here = str(holder["host"]) == socket.gethostname()
        return not here or not self._owner_gone(int(holder["pid"]), holder.get("pid_start"))

    def _in_use(self, holder: dict) -> Exception:
        return self.error(
            f"{self.locked} is in use by another {self.kind} (pid {holder['pid']} on host {holder['host']}, started "
            f"{holder.get('started', '?')}); wait for it, choose another {self.flag}, or delete {self.path} if that "
            f"{self.kind} is gone"
        )

    def _owner_gone(self, pid: int, pid_start: Optional[int]) -> bool:
        """Whether the process of this host that wrote the lock has ended (see the module's docstring)."""
        if pid == os.getpid():
            return os.path.realpath(self.path) not in _held_here
        if not pid_alive(pid):
            return True
        return pid_start is not None and _process_start(pid) not in (None, pid_start)

    def _remove_stale(self, holder: dict) -> None:
        """Remove the lock file, if it still is `holder`'s: it is moved aside in one step and read there, so a run
        that took the stale lock over meanwhile keeps its own (put back, then refused as in use by `acquire`)."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another run removed it first
            return
        try:
            with open(aside) as f:
                moved = json.load(f)
        except (OSError, ValueError):
            moved = None
        if moved != holder:  # a live run's lock: back where it was, unless yet another run took the place
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.remove(aside)

    def release(self) -> None:
        """Remove the lock if it is still this run's, and its folder if the lock made it and it is empty."""
        if self.owner is None:
            return
        try:
            with open(self.path) as f:
                mine = json.load(f) == self.owner
        except (OSError, ValueError):
            mine = False
        if mine:
            os.remove(self.path)
        self.owner = None
        _held_here.discard(os.path.realpath(self.path))
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        folder = os.path.dirname(self.path) or "."
        if self._created_dir and not os.listdir(folder):
            os.rmdir(folder)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def claim_on_main_process(lock: Optional[RunLock], accelerator: Any, check: Callable[[], None] = lambda: None) -> None:
    """Acquire `lock` and run `check()` on the main process (`lock` is None on the others); a refusal of either (the
    lock then released) is raised on every process of `accelerator` (None: this process alone), so none waits for
    the others."""
    refusal = [None]
    if lock is not None:
        try:
            lock.acquire()
            check()
        except Exception as error:  # noqa: BLE001 - raised below, on every process
            lock.release()
            refusal = [error]
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise refusal[0]


def output_dir_lock(output_dir: str, command: str) -> RunLock:
    """The lock of a `command` run (evaluate, probe, ...) on the `--output_dir` it writes its report into: two runs
    into one folder would leave one report, plots of both or a pipeline of the other."""
    return RunLock(
        os.path.join(output_dir, COMMAND_LOCK_NAME), f"--output_dir {output_dir}", "--output_dir", f"{command} run"
    )
