"""Deleting a training pipeline's iterator, with and without tf.data's autotuning thread.

    python bench/bench_iterator_delete.py [--dataset_dir ../shared/data/raccoon] [--trials 6]
        [--seconds 30] [--model_name ssd_300_vgg]

    python bench/bench_iterator_delete.py --memory_cycles 8

Builds the training pipeline of `ssd_tf.data.build_dataset` (the paper augmentation and the
network's target encoding, batch 32) two ways: as the library builds it (`tfdata_options`:
autotuning off) and with `tf.data.Options().autotune.enabled = True` put back (tf.data's
default, what the library ran before). Each trial iterates each pipeline for `--seconds`,
then times `del iterator`; the two run alternately in the same process. Prints, per
configuration, the median images/s and CPU ms per image while iterating, and the median and
largest delete times with the number of deletes over one second.

`--memory_cycles N` measures instead how the prefetch buffer grows when the consumer pauses
(as training does for validation, summaries and checkpoints): N cycles of 20 batches then a
6 s pause, each configuration in a fresh process (so neither inherits the other's freed
memory); prints the resident memory after each cycle and how fast the 20 batches came (a
buffer that holds them all hands them over at once).
"""
import subprocess
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
LIBRARY = (f'library default (autotuning off, prefetch '
           f'{data_lib.PipelineOptions().prefetch} batches)')
AUTOTUNE_OFF = 'autotuning off, prefetch AUTOTUNE (its own tuner)'
TF_DEFAULT = 'tf.data default (autotuning on, prefetch AUTOTUNE)'
# name -> (tf.data's autotuning model on, prefetch override or None for the library's)
CONFIGS = {LIBRARY: (False, None), AUTOTUNE_OFF: (False, tf.data.AUTOTUNE),
           TF_DEFAULT: (True, tf.data.AUTOTUNE)}


def pipeline(records, net, config, batch_size):
    """The training pipeline of `build_dataset` in configuration `config` (a CONFIGS key)."""
    autotune, prefetch = CONFIGS[config]
    anchors = net.anchors()
    extra = {} if prefetch is None else {'prefetch': prefetch}
    ds = data_lib.build_dataset(records, train_fn(False, tuple(net.params.img_shape)),
                                encode_fn=lambda l, b: net.bboxes_encode(l, b, anchors),
                                batch_size=batch_size, is_training=True, seed=0, **extra)
    if autotune:
        opts = tf.data.Options()
        opts.autotune.enabled = True
        ds = ds.with_options(opts)
    return ds


def one_trial(records, net, config, seconds, batch_size):
    """Iterates a fresh pipeline for `seconds`; returns (images/s, CPU ms/image, delete s)."""
    it = iter(pipeline(records, net, config, batch_size))
    next(it)  # tracing and the first batch are not timed
    w0, c0, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - w0 < seconds:
        next(it)
        n += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    d0 = time.perf_counter()
    del it
    return batch_size * n / wall, 1e3 * cpu / (batch_size * n), time.perf_counter() - d0


def rss_mb():
    """This process's resident memory in MB (Linux /proc)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS'):
                return int(line.split()[1]) // 1024
    return -1


def memory_cycles(records, net, config, cycles, batch_size, batches=20, pause=6.):
    """[(seconds for `batches` batches, RSS MB after them)] over `cycles` pause cycles."""
    it, out = iter(pipeline(records, net, config, batch_size)), []
    for _ in range(cycles):
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        out.append((time.perf_counter() - t0, rss_mb()))
        time.sleep(pause)
    return out


def memory_table(args):
    """Runs `memory_cycles` for each configuration in a fresh process and prints the table."""
    rows = {}
    for i, config in enumerate(CONFIGS):
        cmd = [sys.executable, os.path.abspath(__file__), '--dataset_dir', args.dataset_dir,
               '--split', args.split, '--model_name', args.model_name, '--batch_size',
               str(args.batch_size), '--memory_cycles', str(args.memory_cycles),
               '--_child', str(i)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[config] = [tuple(float(v) for v in line.split()[1:]) for line in out.splitlines()
                        if line.startswith('CYCLE ')]
    print(f'Machine: {machine_info()}')
    print(f'{args.model_name}, batch {args.batch_size}, {args.dataset_dir}: {args.memory_cycles} '
          f'cycles of 20 batches then a 6 s pause, each configuration in its own process. '
          f'Per cycle: seconds for the 20 batches / resident MB after them.\n')
    print_table(['pipeline'] + [f'cycle {i}' for i in range(args.memory_cycles)],
                [[name] + [f'{t:.2f} s / {m:.0f}' for t, m in r] for name, r in rows.items()])


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
    ap.add_argument('--memory_cycles', type=int, default=0,
                    help='instead: the memory of the prefetch buffer over this many cycles of '
                         '20 batches and a 6 s pause (0: the delete benchmark)')
    ap.add_argument('--_child', type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not os.path.isdir(args.dataset_dir):
        sys.exit(f"--dataset_dir {args.dataset_dir} does not exist; pass a Pascal VOC root")
    if args.memory_cycles and args._child is None:
        memory_table(args)
        return
    records, _ = voc.read_voc(args.dataset_dir, split=args.split, check_images=False)
    net = nets_factory.get_network(args.model_name)()
    if args._child is not None:
        for t, m in memory_cycles(records, net, list(CONFIGS)[args._child],
                                  args.memory_cycles, args.batch_size):
            print(f'CYCLE {t:.3f} {m}', flush=True)
        return
    results = {config: [] for config in CONFIGS}
    for trial in range(args.trials):
        order = list(CONFIGS) if trial % 2 == 0 else list(CONFIGS)[::-1]
        for config in order:
            r = one_trial(records, net, config, args.seconds, args.batch_size)
            results[config].append(r)
            print(f"trial {trial} {config}: {r[0]:.0f} img/s, {r[1]:.2f} CPU ms/img, delete "
                  f"{r[2]:.2f} s", flush=True)
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
