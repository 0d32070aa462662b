"""One training run per `--train_dir`: an exclusive OS lock held for the whole run.

`acquire(train_dir)` takes an exclusive `fcntl.flock` on `<train_dir>/.train_lock` and writes
the holder (pid, host, start time) into it. The lock belongs to the open file: the OS releases
it when the process ends in any way (exit, exception, `kill -9`), so a killed run never leaves
a directory that refuses to resume; the file itself may stay, its contents are only a
description of the last holder. A second run on a live directory gets `RunDirBusy` naming
the directory and the holder.

Where `fcntl` does not exist (Windows) runs are not locked (`acquire` returns a lock that
holds nothing and says so in `note`).
"""
import datetime
import json
import os
import socket

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILENAME = '.train_lock'


class RunDirBusy(ValueError):
    """Another live process holds the lock of the run directory."""


class RunLock:
    """The held lock of one directory (`release()` or the end of the process frees it)."""

    def __init__(self, path, handle, note='', created_dir=None):
        self.path = path
        self._handle = handle
        self.note = note
        self._created_dir = created_dir  # made by `acquire`: removed again if left empty

    def release(self):
        if self._handle is not None:
            if fcntl is not None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        self._remove_unused_dir()

    def _remove_unused_dir(self):
        """A run refused before it wrote anything (bad flags, bad data) leaves no directory
        behind: the one `acquire` created goes again when it holds only the lock file."""
        if self._created_dir is None:
            return
        try:
            if os.listdir(self._created_dir) == [LOCK_FILENAME]:
                os.remove(self.path)
                os.rmdir(self._created_dir)
        except OSError:
            pass  # another process wrote into it meanwhile: keep it
        self._created_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def describe_holder(text):
    """A one-line description of the holder written into a lock file (or of an unreadable
    one)."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that wrote no description"


def acquire(train_dir, program='train_ssd.py'):
    """Takes the lock of `train_dir` (created if needed); returns a `RunLock`.

    Raises `RunDirBusy` (a ValueError) naming the directory and the holder when another
    process holds it. The holder's description is written only once the lock is held, so a
    refused run never changes the file.
    """
    created = None if os.path.isdir(train_dir) else train_dir
    os.makedirs(train_dir, exist_ok=True)
    path = os.path.join(train_dir, LOCK_FILENAME)
    if fcntl is None:
        return RunLock(path, None, note=f"no file locking on this system: nothing stops a "
                                        f"second run in {train_dir}", created_dir=created)
    handle = open(path, 'a+', encoding='utf-8')  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = describe_holder(handle.read())
        handle.close()
        raise RunDirBusy(
            f"--train_dir={train_dir} is in use by another run ({holder}; lock file {path}). "
            f"Wait for it to finish or stop it, or use another --train_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({
        'pid': os.getpid(), 'host': socket.gethostname(), 'program': program,
        'started': datetime.datetime.now(datetime.timezone.utc).strftime(
            '%Y-%m-%d %H:%M:%S UTC')}))
    handle.flush()
    return RunLock(path, handle, created_dir=created)
