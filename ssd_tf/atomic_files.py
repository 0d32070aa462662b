"""Files written whole or not at all: the one home for writing a file the user keeps.

A plain `open(path, 'w')` empties the old file first, so a full disk, a quota, a kill or a
crash part-way leaves an empty or cut file where a good one was (a run's `labels.txt` or
`config.json`, the evaluation report, `detections.json`). Here the text goes to a temporary
file beside `path`, is flushed to disk, and replaces `path` in one `os.replace`: a reader sees
the old file or the new one, never a part. On failure the temporary file is removed and the
error propagates; the old file is untouched. (A process killed outright, `kill -9`, can leave
its hidden temporary file `.NAME.XXXXXXXX.tmp` beside the target; the target is still whole.)

A set of files that belong together (the evaluation report: its table, JSON, results files
and pictures) is written with `staged(directory)`: every file goes to a hidden staging
directory first, and only when all of them are written are they moved over their namesakes,
one `os.replace` each, the `last` ones last. A failure or a kill while they are written
(the slow part: drawing, encoding) leaves the old set whole and unmixed; only a kill within
the moves themselves (microseconds) could mix two sets, and then `last` (the report's
`metrics.json`) is still the old one.
"""
import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def replacing(path, mode='w', encoding='utf-8'):
    """`with replacing(path) as f:` writes `f` to a temporary file in `path`'s directory that
    replaces `path` when the block ends (on an exception the temporary file is removed instead
    and `path` is left as it was). `mode`: 'w' (text, `encoding`) or 'wb'. A symbolic link
    `path` is written through to its target."""
    if mode not in ('w', 'wb'):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    # A symbolic link is written through, as open(path, 'w') would: its target is replaced
    # and the link stays.
    path = os.path.realpath(path) if os.path.islink(path) else os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
                               dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=None if 'b' in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _keep_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def staged(directory, last=()):
    """`with staged(directory) as tmp:` files written under the directory `tmp` (any depth)
    replace their namesakes under `directory` when the block ends, the relative paths in
    `last` after all others; on an exception nothing under `directory` changes. The staging
    directory (`directory/.staged-XXXXXXXX`) is removed in both cases. A file under
    `directory` that the block does not write is left as it is. New files get the usual
    permissions, replaced ones keep theirs; a symbolic link is written through."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.staged-', dir=directory)
    try:
        yield tmp
        written = sorted(os.path.relpath(os.path.join(d, n), tmp)
                         for d, _, names in os.walk(tmp) for n in names)
        last = [os.path.normpath(p) for p in last]
        written.sort(key=lambda p: last.index(p) if p in last else -1)
        for rel in written:
            dest = os.path.join(directory, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            dest = os.path.realpath(dest) if os.path.islink(dest) else dest
            _keep_mode(dest, os.path.join(tmp, rel))
            os.replace(os.path.join(tmp, rel), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keep_mode(path, tmp):
    """The new file gets the old one's permission bits, or the usual ones for a new file
    (mkstemp makes it 0600, readable by its owner only)."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)


def _umask():
    """The process's umask, read without changing it where Linux tells it (`os.umask` can only
    set it, and setting it for a moment would touch files other threads create meanwhile)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_text(path, text, encoding='utf-8'):
    """Writes `text` to `path` whole or not at all; returns `path`."""
    with replacing(path, 'w', encoding) as f:
        f.write(text)
    return path


def write_json(path, obj, **dump_kwargs):
    """`json.dump(obj, ...)` to `path` whole or not at all (the object is encoded before
    anything is written, so an object JSON cannot encode leaves `path` as it was); returns
    `path`."""
    return write_text(path, json.dumps(obj, **dump_kwargs))
