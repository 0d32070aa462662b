"""From-scratch training under a fixed time budget on ../shared/data/raccoon, then VOC07 mAP.

    python bench/bench_raccoon.py [--budget_secs 1200] [--model_name ssd_small_192]

Runs exactly:

    python train_ssd.py --train_dir <tmp> --model_name ssd_small_192 --dataset_name voc \
        --dataset_dir ../shared/data/raccoon --dataset_split_name train \
        --eval_split_name test --max_train_secs 1200 --max_number_of_steps 2500

(training stops at 2500 steps or when the budget is spent, whichever comes first) and prints
the steps done, the wall time and the test-split VOC07/VOC12 mAP as a table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import machine_info, print_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--budget_secs', type=int, default=1200)
    ap.add_argument('--max_steps', type=int, default=2500)
    ap.add_argument('--model_name', default='ssd_small_192')
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'raccoon'))
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f'{args.data} not found: this benchmark needs ../shared/data/raccoon')
    with tempfile.TemporaryDirectory() as train_dir:
        cmd = [sys.executable, os.path.join(ROOT, 'train_ssd.py'), '--train_dir', train_dir,
               '--model_name', args.model_name, '--dataset_name', 'voc', '--dataset_dir',
               args.data, '--dataset_split_name', 'train', '--eval_split_name', 'test',
               '--max_train_secs', str(args.budget_secs),
               '--max_number_of_steps', str(args.max_steps), '--log_every_n_steps', '100']
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        with open(os.path.join(train_dir, 'final_metrics.json')) as f:
            m = json.load(f)
    print(f'\nMachine: {machine_info()}\n')
    print_table(['model', 'budget s', 'steps', 'wall s (incl. eval)', 'VOC07 mAP', 'VOC12 mAP'],
                [[args.model_name, args.budget_secs, m['step'], f'{wall:.0f}',
                  f"{m['voc07_map']:.4f}", f"{m['voc12_map']:.4f}"]])


if __name__ == '__main__':
    main()
