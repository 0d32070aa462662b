"""Training's two hot paths at high anchor counts: hard-negative mining and target encoding.

    python bench/bench_hot_paths.py [--runs 5] [--rounds 3] [--devset /tmp/small_devset]

The default loss keeps, per image, the n hardest negatives (ties by anchor index). It used to
rank every anchor with two stable argsorts (the order, then its inverse); it now takes the
n-th largest value from one partial `top_k` (or a value sort when n is large) and resolves the
ties at that cut with a cumulative sum: the same anchors, exactly (tests/test_losses.py).

Target encoding (the matcher, in the input pipeline) used to run op by op; it now runs
XLA-compiled (`encoding.bboxes_encode(jit_compile=True)`), the boxes padded to a few sizes.

Times, in the same process and alternating the old and new versions `--rounds` times:
- the mask alone on `[B, K]` mining scores with many ties (as bfloat16 logits give);
- the full `ssd_small_320` training step at batch 32 in the run's precision (forward, loss,
  backward, Adam; `ssd_tf.training.Trainer` on a fixed batch, no input pipeline), the figure
  that decides how many steps a time budget buys, with the old and new mining;
- training on the real small-object dev set (`--devset`, made by bench/make_small_devset.py
  when missing): the input pipeline (decode, the paper's augmentation without zoom-out,
  encoding) feeding the `ssd_small_320` step at batch 32 on the same cores, as train_ssd.py
  runs it: old (op-by-op encoding, two-argsort mining) against new.
Prints the medians and the ratio old / new of each.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_pipeline import train_fn  # noqa: E402
from bench.bench_train import fixed_batch  # noqa: E402
from bench.machine import machine_info, median_time, print_table  # noqa: E402
from nets import nets_factory  # noqa: E402
from ssd_tf import data as data_lib  # noqa: E402
from ssd_tf import encoding, losses, training  # noqa: E402
from ssd_tf.datasets import voc  # noqa: E402

NEW = losses._top_n_mask


def two_argsorts(values, n, partial=None):
    """The mask as it was computed before: rank by a stable descending argsort, then its
    inverse permutation, keep ranks < n. Kept here only as the benchmark's baseline."""
    order = tf.argsort(values, axis=-1, direction='DESCENDING', stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)
    return rank < n[:, None]


def mask_time(fn, b, k, runs):
    rng = np.random.default_rng(0)
    values = tf.constant(np.round(rng.random((b, k)) * 256).astype(np.float32) / 256)
    n = tf.constant(rng.integers(0, 1500, b).astype(np.int32))
    f = tf.function(lambda v, m: fn(v, m))
    return median_time(lambda: f(values, n).numpy(), runs=runs, warmup=2)


def step_time(fn, policy, runs):
    import keras
    losses._top_n_mask = fn
    try:
        keras.mixed_precision.set_dtype_policy(policy)
        net = nets_factory.get_network('ssd_small_320')()
        model = net.keras_model(weight_decay=0.0005)
        opt = training.build_optimizer('adam', 1e-4, mixed_precision=policy)
        with tempfile.TemporaryDirectory() as d:
            trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(), d, 32)
            data = fixed_batch(net, 32, np.random.default_rng(0))
            return median_time(lambda: float(trainer.train_step(data)['total']), runs=runs,
                               warmup=2)
    finally:
        losses._top_n_mask = NEW
        keras.mixed_precision.set_dtype_policy('float32')


def pipeline_step_time(devset, old, policy, warmup=8, steps=16):
    """Seconds per step of `ssd_small_320` training fed by the dev set's input pipeline."""
    import keras
    losses._top_n_mask = two_argsorts if old else NEW
    try:
        keras.mixed_precision.set_dtype_policy(policy)
        net = nets_factory.get_network('ssd_small_320')()
        anchors = net.anchors()
        p = net.params
        records, _ = voc.read_voc(devset, split='train', check_images=False)

        def encode(labels, bboxes):
            return encoding.bboxes_encode(labels, bboxes, anchors, p.num_classes,
                                          prior_scaling=p.prior_scaling, jit_compile=not old)

        preprocess = train_fn(False, tuple(p.img_shape), expand_max_ratio=1.)
        ds = data_lib.build_dataset(records, preprocess, encode, batch_size=32,
                                    is_training=True, seed=0)
        model = net.keras_model(weight_decay=0.0005)
        opt = training.build_optimizer('adam', 1e-4, mixed_precision=policy)
        with tempfile.TemporaryDirectory() as d:
            trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(), d, 32)
            it = iter(ds)
            for _ in range(warmup):
                float(trainer.train_step(next(it))['total'])
            t0 = time.perf_counter()
            for _ in range(steps):
                float(trainer.train_step(next(it))['total'])
            return (time.perf_counter() - t0) / steps
    finally:
        losses._top_n_mask = NEW
        keras.mixed_precision.set_dtype_policy('float32')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=5, help='timed calls per measurement')
    ap.add_argument('--rounds', type=int, default=3, help='alternations of old and new')
    ap.add_argument('--precision', default=None,
                    help='step precision (default: mixed_bfloat16 where the CPU has it)')
    ap.add_argument('--devset', default='/tmp/small_devset',
                    help='the real small-object dev set (made here when missing)')
    args = ap.parse_args()
    if not os.path.isdir(args.devset):
        from bench import make_small_devset
        make_small_devset.main(['--out', args.devset])
    from ssd_tf import hardware
    policy = args.precision or ('mixed_bfloat16' if hardware.cpu_bfloat16().status == 'yes'
                                else 'float32')
    print(f'Machine: {machine_info()}\n')
    cases = [('mask, [32, 34136] (ssd_small_320)', lambda f: mask_time(f, 32, 34136, args.runs)),
             ('mask, [8, 8732] (ssd_300_vgg)', lambda f: mask_time(f, 8, 8732, args.runs)),
             (f'ssd_small_320 step, batch 32, {policy}', lambda f: step_time(f, policy, args.runs)),
             (f'ssd_small_320 training on the dev set (pipeline + step), {policy}',
              lambda f: pipeline_step_time(args.devset, f is two_argsorts, policy))]
    rows = []
    for name, measure in cases:
        old, new = [], []
        for _ in range(args.rounds):
            old.append(measure(two_argsorts))
            new.append(measure(NEW))
        o, n = statistics.median(old), statistics.median(new)
        rows.append([name, f'{1000 * o:.1f}', f'{1000 * n:.1f}', f'{o / n:.2f}'])
    print_table(['what', 'old ms', 'new ms', 'old / new'], rows)


if __name__ == '__main__':
    main()
