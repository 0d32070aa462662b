"""A time budget cut off against one fitted to the schedule: the small-object command with
`--max_train_secs B` alone (training stops when B seconds are spent, the cosine decay planned
for --max_number_of_steps not finished) and with `--fit_schedule_to_budget` too (the last
step fitted to B from the measured step rate, the decay ended there), seed by seed.

    python bench/bench_time_budget.py --dataset_dir /tmp/small_devset \
        [--budget_secs 600] [--seeds 0,1] [--max_number_of_steps 1600] [--extra="..."]

Each row trains

    python train_ssd.py --train_dir <tmp> --model_name=ssd_small_320 --anchors=auto \
        --class_balance=0.5 --max_number_of_steps=1600 --dataset_name=voc \
        --dataset_dir=DIR --seed S --max_train_secs B [--fit_schedule_to_budget]

and reads back its checkpoint (steps done, the fitted last step), its config.json (the
learning rate and its end value, to give the rate the last step trained at) and the report of
its final evaluation (VOC07/VOC12 on the test split, AP07 of the small size buckets). A budget
below what --max_number_of_steps needs on this machine stands for a slower machine (or a
shared one): at 600 s this machine is about half as fast as the README's 20-minute command
needs. The two variants of a seed run one after the other (the order alternates with the
seed), so that they see about the same machine.
"""
import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import machine_info, print_table  # noqa: E402

COMMAND = ['--model_name=ssd_small_320', '--anchors=auto', '--class_balance=0.5',
           '--dataset_name=voc']
SMALL_BUCKETS = ('<2%', '2-4%', '4-8%')


def cosine_rate(step, lr, end, last, warmup):
    """train_ssd.py's warm-up + cosine learning rate at `step` of a decay ending at `last`
    (written out here, not imported: the figure checks the run, not the code)."""
    frac = min(step, last) / max(last, 1)
    rate = end + (lr - end) * 0.5 * (1. + math.cos(math.pi * frac))
    return rate * min(1., (step + 1.) / warmup) if warmup > 0 else rate


def train_row(args, seed, fitted):
    """One training run; returns its row's values as a dict."""
    import tensorflow as tf
    with tempfile.TemporaryDirectory(prefix='bench_budget_') as train_dir:
        cmd = [sys.executable, os.path.join(ROOT, 'train_ssd.py'), f'--train_dir={train_dir}',
               *COMMAND, f'--max_number_of_steps={args.max_number_of_steps}',
               f'--dataset_dir={args.dataset_dir}', f'--seed={seed}',
               f'--max_train_secs={args.budget_secs}', '--log_every_n_steps=100']
        cmd += ['--fit_schedule_to_budget'] if fitted else []
        cmd += shlex.split(args.extra)
        print(' '.join(cmd), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=sys.stderr)  # the table alone on stdout
        wall = time.perf_counter() - t0
        ckpt = tf.train.load_checkpoint(train_dir)
        value = lambda name: ckpt.get_tensor(f'{name}/.ATTRIBUTES/VARIABLE_VALUE')  # noqa: E731
        step = int(value('global_step'))
        last = int(value('fitted_last_step')) if fitted else args.max_number_of_steps
        spent = float(value('train_seconds')) if fitted else float('nan')
        with open(os.path.join(train_dir, 'config.json')) as f:
            cfg = json.load(f)
        with open(os.path.join(train_dir, 'eval', 'metrics.json')) as f:
            m = json.load(f)
    lr = cosine_rate(step - 1, cfg['learning_rate'], cfg['end_learning_rate'], last,
                     cfg['warmup_steps'])
    return dict(seed=seed, fitted=fitted, steps=step, last=last, spent=spent, wall=wall,
                lr=lr, lr0=cfg['learning_rate'], voc07=m['voc07']['map'],
                voc12=m['voc12']['map'],
                buckets=[(m.get('by_size') or {}).get(b, {}).get('map07') for b in SMALL_BUCKETS])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dataset_dir', required=True,
                    help='A VOC root with train and test splits (bench/make_small_devset.py).')
    ap.add_argument('--budget_secs', type=float, default=600.,
                    help='The --max_train_secs of every row.')
    ap.add_argument('--seeds', default='0,1', help='Comma-separated --seed values.')
    ap.add_argument('--max_number_of_steps', type=int, default=1600)
    ap.add_argument('--extra', default='', help='More train_ssd.py flags for every row, one '
                    'string (e.g. --extra="--batch_size=16").')
    args = ap.parse_args()
    results = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(',') if s.strip()):
        for fitted in ((False, True) if i % 2 == 0 else (True, False)):
            results.append(train_row(args, seed, fitted))
    print(f"\n{machine_info()}\nsmall-object command, --max_train_secs={args.budget_secs:g}, "
          f"--max_number_of_steps={args.max_number_of_steps}, {args.dataset_dir}\n")
    fmt = lambda v: '-' if v is None or v != v else f'{v:.4f}'  # noqa: E731
    rows = [[r['seed'], 'fitted' if r['fitted'] else 'cut off', r['steps'], r['last'],
             '-' if r['spent'] != r['spent'] else f"{r['spent']:.0f}", f"{r['wall']:.0f}",
             f"{r['lr'] / r['lr0']:.3f}", fmt(r['voc07']), fmt(r['voc12']),
             *[fmt(b) for b in r['buckets']]] for r in results]
    for fitted in (False, True):
        mine = [r for r in results if r['fitted'] == fitted]
        if len(mine) > 1:
            med = lambda k: statistics.median(r[k] for r in mine)  # noqa: E731
            rows.append(['median', 'fitted' if fitted else 'cut off', med('steps'), '', '',
                         f"{med('wall'):.0f}", '', fmt(med('voc07')), fmt(med('voc12')),
                         *[fmt(statistics.median(r['buckets'][j] for r in mine))
                           if all(r['buckets'][j] is not None for r in mine) else '-'
                           for j in range(len(SMALL_BUCKETS))]])
    print_table(['seed', 'budget', 'steps', 'decay ends', 'budget s', 'wall s',
                 'last lr / lr', 'VOC07', 'VOC12', *[f'AP07 {b}' for b in SMALL_BUCKETS]], rows)


if __name__ == '__main__':
    main()
