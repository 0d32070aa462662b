"""Hard-negative mining: the default loss's per-image cut, before and after one value sort.

    python bench/bench_mining.py [--runs 5] [--rounds 3]

The default loss keeps, per image, the n hardest negatives (ties by anchor index). It used to
rank every anchor with two stable argsorts (the order, then its inverse); it now takes the
n-th largest value from one partial `top_k` (or a value sort when n is large) and resolves the
ties at that cut with a cumulative sum: the same anchors, exactly (tests/test_losses.py).

Times, in the same process and alternating the two versions `--rounds` times:
- the mask alone on `[B, K]` mining scores with many ties (as bfloat16 logits give);
- the full `ssd_small_320` training step at batch 32 in the run's precision (forward, loss,
  backward, Adam; `ssd_tf.training.Trainer` on a fixed batch, no input pipeline), the figure
  that decides how many steps a time budget buys.
Prints the medians and the ratio old / new of each.
"""
import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_train import fixed_batch  # noqa: E402
from bench.machine import machine_info, median_time, print_table  # noqa: E402
from nets import nets_factory  # noqa: E402
from ssd_tf import losses, training  # noqa: E402

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=5, help='timed calls per measurement')
    ap.add_argument('--rounds', type=int, default=3, help='alternations of old and new')
    ap.add_argument('--precision', default=None,
                    help='step precision (default: mixed_bfloat16 where the CPU has it)')
    args = ap.parse_args()
    from ssd_tf import hardware
    policy = args.precision or ('mixed_bfloat16' if hardware.cpu_bfloat16().status == 'yes'
                                else 'float32')
    print(f'Machine: {machine_info()}\n')
    cases = [('mask, [32, 34136] (ssd_small_320)', lambda f: mask_time(f, 32, 34136, args.runs)),
             ('mask, [8, 8732] (ssd_300_vgg)', lambda f: mask_time(f, 8, 8732, args.runs)),
             (f'ssd_small_320 step, batch 32, {policy}', lambda f: step_time(f, policy, args.runs))]
    rows = []
    for name, measure in cases:
        old, new = [], []
        for _ in range(args.rounds):
            old.append(measure(two_argsorts))
            new.append(measure(NEW))
        o, n = statistics.median(old), statistics.median(new)
        rows.append([name, f'{1000 * o:.1f}', f'{1000 * n:.1f}', f'{o / n:.2f}'])
    print_table(['what', 'two argsorts ms', 'cut + ties ms', 'old / new'], rows)


if __name__ == '__main__':
    main()
