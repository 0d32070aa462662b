"""Core benchmark: target encoding throughput and the loss's cost relative to a forward pass.

    python bench/bench_core.py [--runs 5]

Prints (markdown): per-image encoding throughput for SSD300 anchors with 10 ground-truth
boxes in tf.data-style graph mode (default and reference matchers), and the time of the loss
(default and reference, plain graph and XLA) as a fraction of an SSD300 forward pass at batch 8.
"""
import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import machine_info, median_time, print_table  # noqa: E402
from nets import ssd_vgg_300  # noqa: E402


def encoding_throughput(reference_compat, n_images, runs):
    net = ssd_vgg_300.SSDNet(reference_compat=reference_compat)
    anchors = net.anchors()
    rng = np.random.default_rng(0)
    c = rng.uniform(.2, .8, size=(64, 10, 2))
    s = rng.uniform(.05, .4, size=(64, 10, 2))
    boxes = np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)  # [64, 10, 4]
    labels = rng.integers(1, 21, size=(64, 10))
    ds = tf.data.Dataset.from_tensor_slices((labels, boxes)).repeat().take(n_images)
    ds = ds.map(lambda l, b: tuple(tuple(x) for x in net.bboxes_encode(l, b, anchors)),
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def run():
        for _ in ds:
            pass
    return n_images / median_time(run, runs=runs)


def loss_vs_forward(runs):
    net = ssd_vgg_300.SSDNet()
    model = net.keras_model()
    anchors = net.anchors()
    images = tf.random.normal([8, 300, 300, 3])
    forward = tf.function(lambda x: model(x, training=False))
    out = forward(images)
    rng = np.random.default_rng(1)
    targets = [net.bboxes_encode(rng.integers(1, 21, 10),
                                 np.sort(rng.uniform(0, 1, (10, 4)), axis=-1)[:, [0, 1, 2, 3]]
                                 .astype(np.float32), anchors) for _ in range(8)]
    gcl = [tf.stack([t[0][i] for t in targets]) for i in range(len(anchors))]
    glo = [tf.stack([t[1][i] for t in targets]) for i in range(len(anchors))]
    gsc = [tf.stack([t[2][i] for t in targets]) for i in range(len(anchors))]
    logits, locs = out['logits'], out['localisations']
    t_fwd = median_time(lambda: forward(images)['logits'][0].numpy(), runs=runs)
    rows = []
    for rc in (False, True):
        for xla in (False, True):
            fn = tf.function(lambda *a, rc=rc: ssd_vgg_300.SSDNet(reference_compat=rc).losses(*a)
                             ['total'], jit_compile=xla)
            t = median_time(lambda: fn(logits, locs, gcl, glo, gsc).numpy(), runs=runs)
            rows.append(['reference' if rc else 'default', 'XLA' if xla else 'graph',
                         f'{t * 1e3:.1f}', f'{t_fwd * 1e3:.0f}', f'{t / t_fwd:.3f}'])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--images', type=int, default=512)
    args = ap.parse_args()
    print(f'Machine: {machine_info()}\n')
    print('Per-image target encoding, SSD300 anchors (8732), 10 GT boxes, tf.data map '
          f'(AUTOTUNE), median of {args.runs} runs over {args.images} images\n')
    print_table(['matcher', 'images/s'],
                [[name, f'{encoding_throughput(rc, args.images, args.runs):.0f}']
                 for name, rc in (('default (bipartite + threshold)', False),
                                  ('reference_compat', True))])
    print('\nLoss (value) vs SSD300 forward pass, batch 8, median of runs\n')
    print_table(['loss', 'mode', 'loss ms', 'forward ms', 'loss / forward'],
                loss_vs_forward(args.runs))


if __name__ == '__main__':
    main()
