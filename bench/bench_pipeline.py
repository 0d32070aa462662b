"""Input pipeline throughput: decode + augmentation (+ target encoding) + batching.

    python bench/bench_pipeline.py [--dataset_dir ../shared/data/raccoon] [--runs 5]
    python bench/bench_pipeline.py --model_name ssd_small_320 --dataset_dir /tmp/small_devset

`--model_name` picks the network whose input size and anchors are used (default SSD300). The
default matcher runs XLA-compiled (`encoding.bboxes_encode(jit_compile=True)`), its boxes
padded to `padded_box_count(N)`; for the comparison in the same run, one row pads them to at
least 16 (`MIN_PADDED_BOXES` as it was) and one runs the matcher op by op (as before XLA).

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
from nets import nets_factory  # noqa: E402
from preprocessing import ssd_vgg_preprocessing as prep  # noqa: E402
from ssd_tf import anchors as anchors_lib  # noqa: E402
from ssd_tf import data as data_lib  # noqa: E402
from ssd_tf import encoding  # noqa: E402
from ssd_tf.datasets import voc  # noqa: E402

_DEFAULT_DIR = os.path.join(os.path.dirname(_ROOT), 'shared', 'data', 'raccoon')


def train_fn(reference_compat, out_shape=(300, 300), expand_max_ratio=None):
    def preprocess_fn(image, labels, bboxes, seed):
        return prep.preprocess_for_train(image, labels, bboxes, out_shape, seed=seed,
                                         reference_compat=reference_compat,
                                         expand_max_ratio=expand_max_ratio)
    return preprocess_fn


def eval_fn(out_shape=(300, 300)):
    def fn(image, labels, bboxes):
        return prep.preprocess_for_eval(image, labels, bboxes, out_shape)
    return fn


def throughput(records, preprocess_fn, encode_fn, batch_size, batches, runs, mosaic_prob=0.):
    """(median images/s wall clock, median process CPU ms per image) over `runs` runs."""
    ds = data_lib.build_dataset(records, preprocess_fn, encode_fn=encode_fn,
                                batch_size=batch_size, is_training=True, seed=0,
                                mosaic_prob=mosaic_prob)
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
    ap.add_argument('--rounds', type=int, default=1,
                    help='repeat every configuration this many times, alternating the order; '
                         'the table gives the medians over rounds')
    ap.add_argument('--mosaic_prob', type=float, default=0.5,
                    help='mosaic probability of the mosaic row (build_dataset mosaic_prob)')
    ap.add_argument('--model_name', default='ssd_300_vgg',
                    help='network whose input size and anchors to use')
    args = ap.parse_args()
    if not os.path.isdir(args.dataset_dir):
        sys.exit(f"--dataset_dir {args.dataset_dir} does not exist; pass a Pascal VOC root")

    cores = os.cpu_count()
    records, _ = voc.read_voc(args.dataset_dir, split=args.split, check_images=False)
    net = nets_factory.get_network(args.model_name)()
    ref_net = nets_factory.get_network(args.model_name)(reference_compat=True)
    anchors = net.anchors()
    size = tuple(net.params.img_shape)
    num_anchors = len(anchors_lib.anchors_flat(anchors)[0])
    tag = f'{args.model_name} ({num_anchors} anchors)'

    def encoder(the_net, jit_compile=True, min_padded=None):
        def encode_fn(labels, bboxes):
            p = the_net.params
            # Read when the map function is traced, so the override holds for this pipeline.
            saved = encoding.MIN_PADDED_BOXES
            encoding.MIN_PADDED_BOXES = min_padded or saved
            try:
                return encoding.bboxes_encode(labels, bboxes, anchors, p.num_classes,
                                              prior_scaling=p.prior_scaling,
                                              reference_compat=the_net.reference_compat,
                                              jit_compile=jit_compile)
            finally:
                encoding.MIN_PADDED_BOXES = saved
        return encode_fn

    configs = [
        (f'paper augmentation + {tag} encoding', train_fn(False, size), encoder(net)),
        (f'paper augmentation, mosaic_prob {args.mosaic_prob:g}, + {tag} encoding',
         train_fn(False, size), encoder(net), args.mosaic_prob),
        (f'paper augmentation + {tag} encoding, boxes padded to >= 16 (before)',
         train_fn(False, size), encoder(net, min_padded=16)),
        (f'paper augmentation + {tag} encoding op by op (before XLA)', train_fn(False, size),
         encoder(net, jit_compile=False)),
        ('paper augmentation, no encoding', train_fn(False, size), None),
        (f'slim augmentation (reference_compat) + {tag} slim encoding', train_fn(True, size),
         encoder(ref_net)),
        (f'eval warp resize, no augmentation, + {tag} encoding', eval_fn(size), encoder(net)),
        ('eval warp resize, no augmentation, no encoding', eval_fn(size), None),
    ]
    load_before = os.getloadavg()
    ips_of, cpu_of = {}, {}
    for r in range(args.rounds):
        for name, fn, enc, *mosaic in (configs if r % 2 == 0 else configs[::-1]):
            ips, cpu_ms = throughput(records, fn, enc, args.batch_size, args.batches, args.runs,
                                     *mosaic)
            ips_of.setdefault(name, []).append(ips)
            cpu_of.setdefault(name, []).append(cpu_ms)
    rows = []
    for name, *_ in configs:
        ips, cpu_ms = statistics.median(ips_of[name]), statistics.median(cpu_of[name])
        rows.append([name, f'{ips:.0f}', f'{cpu_ms:.2f}', f'{1e3 * cores / cpu_ms:.0f}'])
    load_after = os.getloadavg()
    print(f'Machine: {machine_info()}')
    print(f'Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} '
          f'(other processes share the cores when it exceeds the core count)\n')
    print(f'{len(records)} images of {args.dataset_dir} ({args.split}), batch {args.batch_size}, '
          f'median of {args.runs} runs of {args.batches} batches (after {args.batches} batches '
          f'of warm-up), median over {args.rounds} rounds in alternating order. CPU ms/image = '
          f'CPU time of this process (all threads) per image; "{cores} idle cores" = {cores} x 1000 / '
          f'CPU ms, what the pipeline would reach with the cores to itself.\n')
    print_table(['pipeline (read + decode JPEG + ... + batch)', 'images/s (wall)',
                 'CPU ms/image', f'images/s on {cores} idle cores'], rows)


if __name__ == '__main__':
    main()
