"""Training throughput: SSD300 at batch 8 with and without XLA, and the small configuration.

    python bench/bench_train.py [--runs 3] [--skip_ssd300]

Times the full training step (forward, loss with hard-negative mining, backward, Adam update,
through `ssd_tf.training.Trainer`) on a fixed batch of encoded synthetic targets, so the input
pipeline is excluded (see bench/bench_pipeline.py for it). Prints a markdown table with the
median over `--runs` timed steps after warm-up (tracing / XLA compilation not counted).
"""
import argparse
import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import machine_info, median_time, print_table  # noqa: E402
from nets import nets_factory  # noqa: E402
from ssd_tf import training  # noqa: E402


def fixed_batch(net, batch, rng):
    anchors = net.anchors()
    h, w = net.params.img_shape
    images = tf.constant(rng.normal(0, 60, size=(batch, h, w, 3)).astype(np.float32))
    targets = {'gclasses': [], 'glocalisations': [], 'gscores': []}
    per_image = []
    for _ in range(batch):
        n = 5
        c = rng.uniform(.2, .8, size=(n, 2))
        s = rng.uniform(.1, .5, size=(n, 2))
        boxes = np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)
        labels = rng.integers(1, net.params.num_classes, size=n)
        per_image.append(net.bboxes_encode(labels, boxes, anchors))
    for k, key in enumerate(('gclasses', 'glocalisations', 'gscores')):
        targets[key] = tuple(tf.stack([p[k][i] for p in per_image])
                             for i in range(len(anchors)))
    return images, targets


def step_throughput(model_name, batch, jit, runs, policy=None):
    import keras
    keras.mixed_precision.set_dtype_policy(policy or 'float32')
    net = nets_factory.get_network(model_name)()
    model = net.keras_model(weight_decay=0.0005)
    opt = training.build_optimizer('adam', 1e-4, mixed_precision=policy)
    with tempfile.TemporaryDirectory() as d:
        trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(), d, batch,
                                   jit_compile=jit)
        data = fixed_batch(net, batch, np.random.default_rng(0))
        t = median_time(lambda: float(trainer.train_step(data)['total']), runs=runs, warmup=2)
    keras.mixed_precision.set_dtype_policy('float32')
    return batch / t, t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--skip_ssd300', action='store_true')
    args = ap.parse_args()
    print(f'Machine: {machine_info()}\n')
    rows = []
    cases = [('ssd_small', 32, False, None), ('ssd_small', 32, True, None)]
    if not args.skip_ssd300:
        cases = [('ssd_300_vgg', 8, False, None), ('ssd_300_vgg', 8, True, None),
                 ('ssd_300_vgg', 8, False, 'mixed_bfloat16')] + cases
    results = {}
    for name, batch, jit, policy in cases:
        ips, t = step_throughput(name, batch, jit, args.runs, policy)
        results[(name, jit, policy)] = ips
        rows.append([name, batch, 'XLA' if jit else 'graph', policy or 'float32', f'{t:.2f}',
                     f'{ips:.2f}'])
    print_table(['model', 'batch', 'mode', 'precision', 's/step', 'images/s'], rows)
    for name in ('ssd_300_vgg', 'ssd_small'):
        if (name, True, None) in results:
            ratio = results[(name, True, None)] / results[(name, False, None)]
            print(f'\n{name}: XLA / graph = {ratio:.2f}')
    if ('ssd_300_vgg', False, 'mixed_bfloat16') in results:
        ratio = results[('ssd_300_vgg', False, 'mixed_bfloat16')] / \
            results[('ssd_300_vgg', False, None)]
        print(f'ssd_300_vgg: mixed_bfloat16 / float32 = {ratio:.2f}')


if __name__ == '__main__':
    main()
