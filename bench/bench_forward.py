"""Forward throughput of the SSD networks (and one ssd_small training step) on this machine.

Prints a markdown table: images/s (median of --runs timed runs after 2 warm-ups), the model's
multiply-adds (counted analytically from the conv/dense layer shapes), achieved GFLOP/s
(2 * MACs * images/s) beside the machine's float32 matmul GFLOP/s measured just before that
row (so both see the same load), and the machine (CPU model, cores, TF version). Numbers are
noisy on a shared machine: compare runs, not single figures.

    python bench/bench_forward.py [--runs 5] [--only ssd_small,ssd_300_vgg]
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from bench.machine import machine_info, median_time  # noqa: E402
from nets import nets_factory  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer('runs', 5, 'timed runs per configuration (the median is reported)')
flags.DEFINE_string('only', '', 'comma-separated model names to run (default: all)')
flags.DEFINE_integer('matmul_size', 2048, 'side of the square float32 matmul for the peak')

# (model name, batch size, what): forward passes, plus the ssd_small training step the
# from-scratch recipe depends on (forward + loss + backward + Adam update).
CONFIGS = [('ssd_300_vgg', 1, 'forward'), ('ssd_300_vgg', 8, 'forward'),
           ('ssd_300_vgg', 8, 'forward bfloat16'),
           ('ssd_512_vgg', 1, 'forward'), ('ssd_512_vgg', 8, 'forward'),
           ('ssdlite_mobilenet_v2', 1, 'forward'), ('ssd_small', 32, 'forward'),
           ('ssd_small', 32, 'train step')]


def count_macs(model):
    """Multiply-adds of one image through the model's Conv2D, DepthwiseConv2D and Dense layers.

    Conv2D: H_out * W_out * kh * kw * C_in * C_out; DepthwiseConv2D: H_out * W_out * kh * kw *
    C_in * depth_multiplier; Dense: n_in * n_out. Pools, BN, activations, pads are ignored.
    """
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, _ = layer.output.shape
            kh, kw, cin, mult = layer.kernel.shape
            macs += h * w * kh * kw * cin * mult
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            macs += h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            macs += n_in * n_out
    return macs


def matmul_gflops(n, runs):
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda: tf.matmul(a, b))
    seconds = median_time(lambda: mm().numpy(), runs=runs, warmup=2)
    return 2. * n ** 3 / seconds / 1e9


def _train_step_fn(net, model, batch):
    """One ssd_small training step on random images with real encoded targets."""
    anchors = net.anchors()
    labels = tf.constant([1, 2, 3], tf.int64)
    bboxes = tf.constant([[0.1, 0.1, 0.3, 0.3], [0.4, 0.3, 0.9, 0.8], [0.5, 0.05, 0.7, 0.3]])
    targets = net.bboxes_encode(labels, bboxes, anchors)
    gcls, gloc, gscores = [[tf.repeat(t[None], batch, axis=0) for t in ts] for ts in targets]
    images = tf.random.uniform((batch,) + tuple(net.params.img_shape) + (3,), -120., 130.)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            loss = net.losses(out['logits'], out['localisations'], gcls, gloc, gscores)['total']
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return lambda: step().numpy()


def main(argv):
    del argv
    only = set(filter(None, FLAGS.only.split(',')))
    rows = []
    models = {}
    for name, batch, what in CONFIGS:
        if only and name not in only:
            continue
        if name not in models:
            net = nets_factory.get_network(name)()
            models[name] = (net, net.keras_model())
        net, model = models[name]
        macs = count_macs(model)
        if what == 'forward bfloat16':
            # The same network under the mixed_bfloat16 policy (AVX512-BF16 / AMX CPUs, TPUs).
            keras.mixed_precision.set_dtype_policy('mixed_bfloat16')
            model = net.keras_model()
            keras.mixed_precision.set_dtype_policy('float32')
        if what.startswith('forward'):
            images = tf.random.uniform((batch,) + tuple(net.params.img_shape) + (3,),
                                       -120., 130.)
            forward = tf.function(lambda x, m=model: m(x, training=False))
            fn = lambda f=forward, x=images: f(x)['predictions'][0].numpy()  # noqa: E731
            flops_per_image = 2. * macs
        else:
            fn = _train_step_fn(net, model, batch)
            flops_per_image = 3 * 2. * macs  # backward ~ 2x forward
        peak = matmul_gflops(FLAGS.matmul_size, FLAGS.runs)
        seconds = median_time(fn, runs=FLAGS.runs, warmup=2)
        ips = batch / seconds
        gflops = flops_per_image * ips / 1e9
        rows.append((name, what, batch, model.count_params(), macs / 1e9, ips, gflops, peak))
        print(f'{name} {what} batch {batch}: {ips:.2f} images/s', file=sys.stderr, flush=True)

    print(f'Machine: {machine_info()}, Keras {keras.__version__}')
    print(f'Medians of {FLAGS.runs} runs; matmul = float32 {FLAGS.matmul_size}x'
          f'{FLAGS.matmul_size} tf.matmul measured just before each row; shared machine, '
          f'expect noise.\n')
    print('| model | pass | batch | params | GMAC/image | images/s | GFLOP/s | matmul GFLOP/s |')
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    for name, what, batch, params, gmac, ips, gflops, peak in rows:
        print(f'| {name} | {what} | {batch} | {params:,} | {gmac:.2f} | {ips:.2f} | '
              f'{gflops:.1f} | {peak:.1f} |')
    if any(what == 'train step' for _, what, *_ in rows):
        print('\nTrain step GFLOP/s counts backward as 2x forward (3x forward MACs in all).')


if __name__ == '__main__':
    app.run(main)
