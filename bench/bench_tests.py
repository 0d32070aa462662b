"""Wall time of the fast test tier (`python -m pytest -m "not slow" tests`) on this machine.

Runs the fast tier --runs times, each in a fresh `python -m pytest` process (the TensorFlow
import and test collection are part of what a developer waits for), and prints each run's
wall time, the median, the load average before and after, and the machine line.

    python bench/bench_tests.py [--runs 3] [--workers N] [-- extra pytest arguments]

--workers N > 0 adds `-n N` (pytest-xdist). Run it on an idle machine for the figure: the
load average is printed so that a loaded run is recognisable.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import machine_info, print_table  # noqa: E402


def run_once(workers, extra):
    cmd = [sys.executable, '-m', 'pytest', '-m', 'not slow', 'tests', '-q',
           '-p', 'no:cacheprovider'] + (['-n', str(workers)] if workers else []) + extra
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               TF_CPP_MIN_LOG_LEVEL='2')
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    # The progress lines ('..s.F [ 42%]'; the project's addopts -q plus -q print no summary
    # line): one character per test.
    marks = ''.join(line.split(' [')[0] for line in proc.stdout.splitlines()
                    if re.fullmatch(r'[.sFExX]+ *\[ *\d+%\]', line.strip()))
    tail = (f'{marks.count(".")} passed, {marks.count("s")} skipped, '
            f'{marks.count("F") + marks.count("E")} failed')
    return seconds, proc.returncode, tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--workers', type=int, default=0, help='pytest-xdist -n (0: none)')
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != '--']
    rows, times = [], []
    for i in range(args.runs):
        load_before = os.getloadavg()[0]
        seconds, rc, tail = run_once(args.workers, extra)
        times.append(seconds)
        rows.append([i + 1, f'{seconds:.1f}', f'{load_before:.2f}',
                     f'{os.getloadavg()[0]:.2f}', rc, tail])
        print(f'run {i + 1}: {seconds:.1f} s, exit {rc}, load {load_before:.2f} -> '
              f'{os.getloadavg()[0]:.2f}: {tail}', file=sys.stderr, flush=True)
    print(f'fast tier: python -m pytest -m "not slow" tests'
          + (f' -n {args.workers}' if args.workers else ''))
    print_table(['run', 'wall s', 'load before', 'load after', 'exit', 'tests'], rows)
    print(f'median: {statistics.median(times):.1f} s over {args.runs} runs')
    print(f'machine: {machine_info()}')
    return 0 if all(r[4] == 0 for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
