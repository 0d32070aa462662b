"""The training speed cost of --mosaic_prob: the small-object command with and without it, in
one run, alternating.

    python bench/bench_mosaic.py --dataset_dir /tmp/small_devset [--mosaic_prob 0.5] \
        [--steps 150] [--runs 2]

Each run trains, in a fresh process and a new --train_dir, without evaluation,

    python train_ssd.py --train_dir <tmp> --model_name=ssd_small_320 --anchors=auto \
        --class_balance=0.5 --dataset_name=voc --dataset_dir=DIR --seed 0 \
        --max_number_of_steps=STEPS --eval_split_name= [--mosaic_prob=P]

and reads the training images/s of its progress lines (every 25 steps; the first, which
holds the tracing, is left out): their median is what the steps run at with the input
pipeline beside them on the same cores, which is where the mosaics cost. The two variants
alternate (their order swaps each run), so that both see about the same machine; the table
gives the medians and their ratio. The pipeline alone: bench/bench_pipeline.py's mosaic row.
"""
import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import machine_info, print_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_EVERY = 25


def run_once(dataset_dir, steps, mosaic_prob):
    """`(median training images/s after the first progress line, wall seconds)`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(ROOT, 'train_ssd.py'), '--train_dir',
               os.path.join(tmp, 'run'), '--model_name=ssd_small_320', '--anchors=auto',
               '--class_balance=0.5', '--dataset_name=voc', f'--dataset_dir={dataset_dir}',
               '--seed=0', f'--max_number_of_steps={steps}', '--eval_split_name=',
               f'--log_every_n_steps={LOG_EVERY}', f'--mosaic_prob={mosaic_prob:g}']
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    rates = [float(x) for x in re.findall(r'\| ([0-9.]+) img/s \|', r.stderr)][1:]
    if not rates:
        sys.exit(f"no progress line after the first in the output of {shlex.join(cmd)}; "
                 f"raise --steps above {2 * LOG_EVERY}")
    return statistics.median(rates), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dataset_dir', required=True,
                    help='a Pascal VOC root, e.g. the small-object dev set '
                         '(python bench/make_small_devset.py --out /tmp/small_devset)')
    ap.add_argument('--mosaic_prob', type=float, default=0.5)
    ap.add_argument('--steps', type=int, default=150, help='training steps per run')
    ap.add_argument('--runs', type=int, default=2, help='runs per variant')
    args = ap.parse_args()
    if not os.path.isdir(args.dataset_dir):
        sys.exit(f"--dataset_dir {args.dataset_dir} does not exist")
    variants = [0., args.mosaic_prob]
    ips = {v: [] for v in variants}
    walls = {v: [] for v in variants}
    for r in range(args.runs):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            rate, wall = run_once(args.dataset_dir, args.steps, v)
            ips[v].append(rate)
            walls[v].append(wall)
            print(f'# run {r} --mosaic_prob={v:g}: {rate:.1f} img/s, {wall:.0f} s', flush=True)
    base = statistics.median(ips[0.])
    rows = [[f'--mosaic_prob={v:g}', f'{statistics.median(ips[v]):.1f}',
             f'{statistics.median(ips[v]) / base:.3f}', f'{statistics.median(walls[v]):.0f}']
            for v in variants]
    print(f'\nMachine: {machine_info()}\nssd_small_320, batch 32, {args.steps} steps, '
          f'median of {args.runs} runs per variant, alternating\n')
    print_table(['variant', 'training images/s', 'ratio to no mosaics', 'wall s (start-up '
                 'included)'], rows)


if __name__ == '__main__':
    main()
