"""Deleting a training pipeline's iterator, with and without tf.data's autotuning thread.

    python bench/bench_iterator_delete.py [--dataset_dir ../shared/data/raccoon] [--trials 6]
        [--seconds 30] [--model_name ssd_300_vgg]

Builds the training pipeline of `ssd_tf.data.build_dataset` (the paper augmentation and the
network's target encoding, batch 32) two ways: as the library builds it (`tfdata_options`:
autotuning off) and with `tf.data.Options().autotune.enabled = True` put back (tf.data's
default, what the library ran before). Each trial iterates each pipeline for `--seconds`,
then times `del iterator`; the two run alternately in the same process. Prints, per
configuration, the median images/s and CPU ms per image while iterating, and the median and
largest delete times with the number of deletes over one second.
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

from bench.bench_pipeline import train_fn  # noqa: E402
from bench.machine import machine_info, print_table  # noqa: E402
from nets import nets_factory  # noqa: E402
from ssd_tf import data as data_lib  # noqa: E402
from ssd_tf.datasets import voc  # noqa: E402

_DEFAULT_DIR = os.path.join(os.path.dirname(_ROOT), 'shared', 'data', 'raccoon')
LIBRARY = 'library options (autotuning off)'
TF_DEFAULT = 'tf.data default (autotuning on; before)'


def one_trial(records, net, autotune, seconds, batch_size):
    """Iterates a fresh pipeline for `seconds`; returns (images/s, CPU ms/image, delete s)."""
    anchors = net.anchors()
    ds = data_lib.build_dataset(records, train_fn(False, tuple(net.params.img_shape)),
                                encode_fn=lambda l, b: net.bboxes_encode(l, b, anchors),
                                batch_size=batch_size, is_training=True, seed=0)
    if autotune:
        opts = tf.data.Options()
        opts.autotune.enabled = True
        ds = ds.with_options(opts)
    it = iter(ds)
    next(it)  # tracing and the first batch are not timed
    w0, c0, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - w0 < seconds:
        next(it)
        n += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    d0 = time.perf_counter()
    del it
    return batch_size * n / wall, 1e3 * cpu / (batch_size * n), time.perf_counter() - d0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dataset_dir', default=_DEFAULT_DIR, help='Pascal VOC root to read')
    ap.add_argument('--split', default='train')
    ap.add_argument('--model_name', default='ssd_300_vgg',
                    help='network whose input size and anchors to use')
    ap.add_argument('--batch_size', type=int, default=32)
    ap.add_argument('--seconds', type=float, default=30.,
                    help='how long each trial iterates before deleting the iterator')
    ap.add_argument('--trials', type=int, default=6, help='trials per configuration')
    args = ap.parse_args()
    if not os.path.isdir(args.dataset_dir):
        sys.exit(f"--dataset_dir {args.dataset_dir} does not exist; pass a Pascal VOC root")
    records, _ = voc.read_voc(args.dataset_dir, split=args.split, check_images=False)
    net = nets_factory.get_network(args.model_name)()
    results = {LIBRARY: [], TF_DEFAULT: []}
    for trial in range(args.trials):
        order = [False, True] if trial % 2 == 0 else [True, False]
        for autotune in order:
            r = one_trial(records, net, autotune, args.seconds, args.batch_size)
            results[TF_DEFAULT if autotune else LIBRARY].append(r)
            print(f"trial {trial} {'autotune on ' if autotune else 'autotune off'}: "
                  f"{r[0]:.0f} img/s, {r[1]:.2f} CPU ms/img, delete {r[2]:.2f} s", flush=True)
    rows = []
    for name, rs in results.items():
        ips, cpu, dels = zip(*rs)
        rows.append([name, f'{statistics.median(ips):.0f}', f'{statistics.median(cpu):.2f}',
                     f'{statistics.median(dels):.2f}', f'{max(dels):.2f}',
                     f'{sum(d > 1 for d in dels)} of {len(dels)}'])
    lib, tfd = (statistics.median(x[0] for x in results[k]) for k in (LIBRARY, TF_DEFAULT))
    print(f'\nMachine: {machine_info()}')
    print(f'{len(records)} images of {args.dataset_dir} ({args.split}), {args.model_name} '
          f'encoding, batch {args.batch_size}; {args.trials} trials per configuration, each '
          f'{args.seconds:.0f} s of iterating then `del iterator`, alternating.\n')
    print_table(['pipeline', 'images/s', 'CPU ms/image', 'delete s (median)', 'delete s (max)',
                 'deletes over 1 s'], rows)
    print(f'\nimages/s ratio, library / tf.data default (same run): {lib / tfd:.3f}')


if __name__ == '__main__':
    main()
