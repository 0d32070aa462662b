"""The main job (and the raccoon and bccd runs) in float32 and in bfloat16, over seeds: time and mAP.

    python bench/bench_main_job.py [--job main|raccoon|bccd] [--seeds 0,1,2]
        [--precisions float32,mixed_bfloat16] [--extra="--max_number_of_steps=1500"]

Each run is exactly the README's command in a fresh process and a new --train_dir:

    main:    python train_ssd.py --train_dir <tmp> --seed S --mixed_precision P
    raccoon: python train_ssd.py --train_dir <tmp> --seed S --mixed_precision P \
                 --model_name ssd_small_192 --dataset_name voc \
                 --dataset_dir ../shared/data/raccoon --eval_split_name test
    bccd:    the same on ../shared/data/bccd (72 test images with 945 boxes: a far
             steadier mAP than raccoon's 40 images with 44 boxes)

so the wall time includes the TensorFlow start, the data (the synthetic set is generated
by the run), the anchor fit, training and the final evaluation. The precisions of one seed
run back to back, so each seed's bf16 - fp32 difference and time ratio come from one
stretch of the machine. Prints one row per run, then per precision the median wall time
and VOC07 mAP, and the per-seed differences: the mAP parity that `--mixed_precision=auto`
rests on (bfloat16 within 0.01 VOC07 of float32).
"""
import argparse
import json
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
DATA = os.path.join(ROOT, '..', 'shared', 'data')
REAL = {name: os.path.join(DATA, name) for name in ('raccoon', 'bccd')}
JOBS = {'main': []}
JOBS.update({name: ['--model_name', 'ssd_small_192', '--dataset_name', 'voc', '--dataset_dir',
                    path, '--eval_split_name', 'test'] for name, path in REAL.items()})


def run_once(job, seed, precision, extra):
    """`(wall seconds, final_metrics dict, precision line)` of one run of `job`."""
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = os.path.join(tmp, 'run')
        cmd = ([sys.executable, os.path.join(ROOT, 'train_ssd.py'), '--train_dir', train_dir,
                '--seed', str(seed), '--mixed_precision', precision, '--log_every_n_steps',
                '100'] + JOBS[job] + extra)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        with open(os.path.join(train_dir, 'final_metrics.json')) as f:
            metrics = json.load(f)
        first = next((ln for ln in r.stderr.splitlines() if ln.startswith('precision:')), '')
        warned = 'WARNING: only' in r.stderr
        # the training images/s of the last progress line (an average over its last steps):
        # what the steps alone run at, beside the wall time that includes start-up and eval
        rates = re.findall(r'\| ([0-9.]+) img/s \|', r.stderr)
        return wall, metrics, first, warned, (float(rates[-1]) if rates else float('nan'))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--job', choices=sorted(JOBS), default='main')
    ap.add_argument('--seeds', default='0,1,2')
    ap.add_argument('--precisions', default='float32,mixed_bfloat16')
    ap.add_argument('--extra', default='', help='more train_ssd.py flags, one string; write '
                    '--extra="--flag=value ..." (with =: the string starts with --)')
    args = ap.parse_args()
    if args.job in REAL and not os.path.isdir(REAL[args.job]):
        sys.exit(f'{REAL[args.job]} not found: --job {args.job} needs ../shared/data/{args.job}')
    seeds = [int(s) for s in args.seeds.split(',')]
    precisions = args.precisions.split(',')
    extra = shlex.split(args.extra)
    machine = machine_info()
    rows, results = [], {}
    for seed in seeds:
        for p in precisions:
            wall, m, line, warned, ips = run_once(args.job, seed, p, extra)
            results[seed, p] = (wall, m['voc07_map'])
            rows.append([args.job, seed, p, m['step'], f'{wall:.0f}', f'{ips:.1f}',
                         f"{m['voc07_map']:.4f}", f"{m['voc12_map']:.4f}",
                         'yes' if warned else 'no'])
            print(f'# seed {seed} {p}: {wall:.0f} s, VOC07 {m["voc07_map"]:.4f} ({line})',
                  flush=True)
    print(f'\nMachine: {machine}\nJob: {args.job} {shlex.join(extra)}\n')
    print_table(['job', 'seed', 'precision', 'steps', 'wall s', 'train img/s', 'VOC07',
                 'VOC12', 'coverage warning'], rows)
    summary = []
    for p in precisions:
        walls = [results[s, p][0] for s in seeds]
        maps = [results[s, p][1] for s in seeds]
        summary.append([p, f'{statistics.median(walls):.0f}', f'{statistics.median(maps):.4f}',
                        f'{min(maps):.4f}-{max(maps):.4f}'])
    print()
    print_table(['precision', 'median wall s', 'median VOC07', 'VOC07 range'], summary)
    if len(precisions) == 2:
        a, b = precisions
        print()
        print_table(['seed', f'VOC07 {b} - {a}', f'wall {a} / {b}'],
                    [[s, f'{results[s, b][1] - results[s, a][1]:+.4f}',
                      f'{results[s, a][0] / results[s, b][0]:.2f}x'] for s in seeds])


if __name__ == '__main__':
    main()
