"""Input pipeline throughput: decode + augmentation (+ SSD300 target encoding) + batching.

    python bench/bench_pipeline.py [--dataset_dir ../shared/data/raccoon] [--runs 5]

Reads the VOC train split with `ssd_tf.datasets.voc.read_voc`, builds the training pipeline
with `ssd_tf.data.build_dataset` (batch 32, AUTOTUNE parallel map) and times `--batches`
batches per run from one warm iterator; prints the median images/s per configuration as a
markdown table with the machine and its load average. The machine may be shared, so the
table also gives the process's CPU time per image, which other processes barely change.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import tensorflow as tf  # noqa: E402

from bench.machine import machine_info, print_table  # noqa: E402
from nets import ssd_vgg_300  # noqa: E402
from preprocessing import ssd_vgg_preprocessing as prep  # noqa: E402
from ssd_tf import data as data_lib  # noqa: E402
from ssd_tf.datasets import voc  # noqa: E402

_DEFAULT_DIR = os.path.join(os.path.dirname(_ROOT), 'shared', 'data', 'raccoon')


def train_fn(reference_compat, out_shape=(300, 300)):
    def preprocess_fn(image, labels, bboxes, seed):
        return prep.preprocess_for_train(image, labels, bboxes, out_shape, seed=seed,
                                         reference_compat=reference_compat)
    return preprocess_fn


def eval_fn(image, labels, bboxes):
    return prep.preprocess_for_eval(image, labels, bboxes, (300, 300))


def throughput(records, preprocess_fn, encode_fn, batch_size, batches, runs):
    """(median images/s wall clock, median process CPU ms per image) over `runs` runs."""
    ds = data_lib.build_dataset(records, preprocess_fn, encode_fn=encode_fn,
                                batch_size=batch_size, is_training=True, seed=0)
    it = iter(ds)
    for _ in range(batches):  # warm-up: tracing, autotuning, file cache
        next(it)
    walls, cpus = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(it)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    n = batch_size * batches
    return n / statistics.median(walls), 1e3 * statistics.median(cpus) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dataset_dir', default=_DEFAULT_DIR, help='Pascal VOC root to read')
    ap.add_argument('--split', default='train')
    ap.add_argument('--batch_size', type=int, default=32)
    ap.add_argument('--batches', type=int, default=20, help='batches timed per run')
    ap.add_argument('--runs', type=int, default=5)
    args = ap.parse_args()
    if not os.path.isdir(args.dataset_dir):
        sys.exit(f"--dataset_dir {args.dataset_dir} does not exist; pass a Pascal VOC root")

    cores = os.cpu_count()
    records, _ = voc.read_voc(args.dataset_dir, split=args.split, check_images=False)
    net = ssd_vgg_300.SSDNet()
    anchors = net.anchors()

    def encode_fn(labels, bboxes):
        return net.bboxes_encode(labels, bboxes, anchors)

    configs = [
        ('paper augmentation + SSD300 encoding', train_fn(False), encode_fn),
        ('paper augmentation, no encoding', train_fn(False), None),
        ('slim augmentation (reference_compat) + SSD300 encoding', train_fn(True), encode_fn),
        ('eval warp resize, no augmentation, + SSD300 encoding', eval_fn, encode_fn),
        ('eval warp resize, no augmentation, no encoding', eval_fn, None),
    ]
    load_before = os.getloadavg()
    rows = []
    for name, fn, enc in configs:
        ips, cpu_ms = throughput(records, fn, enc, args.batch_size, args.batches, args.runs)
        rows.append([name, f'{ips:.0f}', f'{cpu_ms:.2f}', f'{1e3 * cores / cpu_ms:.0f}'])
    load_after = os.getloadavg()
    print(f'Machine: {machine_info()}')
    print(f'Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} '
          f'(other processes share the cores when it exceeds the core count)\n')
    print(f'{len(records)} images of {args.dataset_dir} ({args.split}), batch {args.batch_size}, '
          f'median of {args.runs} runs of {args.batches} batches. CPU ms/image = CPU time of '
          f'this process (all threads) per image; "{cores} idle cores" = {cores} x 1000 / '
          f'CPU ms, what the pipeline would reach with the cores to itself.\n')
    print_table(['pipeline (read + decode JPEG + ... + batch)', 'images/s (wall)',
                 'CPU ms/image', f'images/s on {cores} idle cores'], rows)


if __name__ == '__main__':
    main()
