"""Runs and inputs that survive real hands (issue 20): the run-directory lock, damaged
checkpoints, EXIF orientation, special files, TFRecord label texts, defused XML, and a run
killed with `kill -9` that resumes onto the same batches and weights.

Program behaviour is tested through subprocesses as a user runs them (slow); the library
functions behind it have fast unit tests."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
           PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
TINY = ['--synthetic_num_train=64', '--synthetic_num_test=16', '--batch_size=8',
        '--log_every_n_steps=1', '--warmup_steps=2', '--eval_split_name=']


def program(name, args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / name)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def start_program(name, args):
    return subprocess.Popen([sys.executable, str(ROOT / name)] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, cwd=ROOT)


def read_until(proc, prefix, timeout=300):
    """Lines of `proc` up to (and with) the first starting with `prefix`."""
    lines = []
    t0 = time.time()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return ''.join(lines)
        assert time.time() - t0 < timeout, ''.join(lines)
    raise AssertionError(f"no line starting with {prefix!r}:\n{''.join(lines)}")


# ------------------------------------------------------------------ 1. the run-directory lock
_HOLDER = """
import sys, time
from ssd_tf import run_lock
lock = run_lock.acquire(sys.argv[1])
print('held', flush=True)
time.sleep(600)
"""


def _hold_lock(directory):
    p = subprocess.Popen([sys.executable, '-c', _HOLDER, str(directory)], env=ENV,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == 'held'
    return p


def test_lock_refuses_a_second_holder_naming_dir_and_pid_and_kill9_frees_it(tmp_path):
    from ssd_tf import run_lock
    holder = _hold_lock(tmp_path / 'run')
    try:
        with pytest.raises(run_lock.RunDirBusy) as e:
            run_lock.acquire(str(tmp_path / 'run'))
        msg = str(e.value)
        assert f'--train_dir={tmp_path / "run"}' in msg
        assert f'pid {holder.pid} on host' in msg and 'started 20' in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the OS released the lock with the process: the directory is usable again
    with run_lock.acquire(str(tmp_path / 'run')) as lock:
        assert json.loads(pathlib.Path(lock.path).read_text())['pid'] == os.getpid()
    # released: taken again in the same process
    run_lock.acquire(str(tmp_path / 'run')).release()


def test_lock_holder_description_of_a_garbled_file():
    from ssd_tf import run_lock
    assert run_lock.describe_holder('not json') == 'a process that wrote no description'
    assert run_lock.describe_holder('{"pid": 7, "host": "h", "started": "s"}') == \
        'pid 7 on host h, started s'


@pytest.mark.slow
def test_second_train_on_a_live_dir_is_refused_and_kill9_leaves_it_resumable(tmp_path):
    train_dir = tmp_path / 'run'
    args = ['--train_dir', train_dir, '--max_number_of_steps=100000',
            '--save_every_n_steps=2', '--save_interval_secs=100000'] + TINY
    a = start_program('train_ssd.py', args)
    try:
        read_until(a, 'step 3/')
        b = program('train_ssd.py', args[:2] + ['--max_number_of_steps=5',
                                                '--learning_rate=0.01'] + TINY, timeout=300)
        assert b.returncode == 2, b.stderr
        assert f'--train_dir={train_dir} is in use by another run (pid {a.pid} on host' \
            in b.stderr
        assert 'Traceback' not in b.stderr
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
    # the refused run changed nothing: config.json is run A's (learning rate 0.002)
    assert json.loads((train_dir / 'config.json').read_text())['learning_rate'] == 0.002
    r = program('train_ssd.py', args[:2] + ['--max_number_of_steps=6', '--save_every_n_steps=2',
                                            '--save_interval_secs=100000'] + TINY)
    assert r.returncode == 0, r.stderr
    assert 'resuming from' in r.stderr
