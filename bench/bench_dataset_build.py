"""Start-up cost of the input pipeline: building (tracing) the training dataset with the
library's preprocessing and target encoding run as written (marked `do_not_convert`, as
`build_dataset` runs them) against the same functions converted by AutoGraph (as before).

    python bench/bench_dataset_build.py [--runs 5] [--model_name ssd_small] [--data eval]

Each measurement is a fresh Python process (AutoGraph caches its conversions per process,
and a run of `train_ssd.py` or `eval_ssd.py` builds its datasets once), the two variants
alternating, so that a busy machine weighs on both alike. AutoGraph itself is warmed up in
each process before the clock starts (a run's train step uses it anyway): the figure is the
conversion of the pipeline's own functions. Prints the median build time of each variant, the
time to the first batch, and the ratio.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import machine_info, print_table  # noqa: E402

VARIANTS = ('as written', 'converted')


def child(variant, model_name, data):
    """One build in this process; prints `build_seconds first_batch_seconds`."""
    import tensorflow as tf
    from nets import nets_factory
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import data as data_lib
    from ssd_tf import encoding
    from ssd_tf.datasets import synthetic

    @tf.function
    def warm(x):  # AutoGraph's own start-up, paid by any run, outside the clock
        if x > 0:
            x = x + 1
        return x
    warm(tf.constant(1))
    cls = nets_factory.get_network(model_name)
    net = cls(cls.default_params._replace(num_classes=5))
    anchors = net.anchors()
    shape = tuple(net.params.img_shape)
    converted = variant == 'converted'
    train_fn = prep.preprocess_for_train.__wrapped__ if converted else prep.preprocess_for_train
    eval_fn = prep.preprocess_for_eval.__wrapped__ if converted else prep.preprocess_for_eval
    encode_fn = encoding.bboxes_encode.__wrapped__ if converted else encoding.bboxes_encode

    def preprocess(image, labels, bboxes, seed=None):
        if data == 'eval':
            return eval_fn(image, labels, bboxes, out_shape=shape)
        return train_fn(image, labels, bboxes, out_shape=shape, seed=seed)

    def encode(labels, bboxes):
        return encode_fn(labels, bboxes, anchors, num_classes=5)
    records = synthetic.make_synthetic_split('train', 16, 0)
    t0 = time.perf_counter()
    ds = data_lib.build_dataset(records, preprocess, encode, batch_size=4,
                                is_training=data == 'train', seed=0, with_gt=True)
    t1 = time.perf_counter()
    next(iter(ds))
    print(f'{t1 - t0:.4f} {time.perf_counter() - t1:.4f}')


def measure(variant, args):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', variant,
                          '--model_name', args.model_name, '--data', args.data],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    build, first = out.stdout.split()[-2:]
    return float(build), float(first)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', type=int, default=5, help='processes per variant (median)')
    ap.add_argument('--model_name', default='ssd_small')
    ap.add_argument('--data', choices=('train', 'eval'), default='train',
                    help="train: preprocess_for_train; eval: preprocess_for_eval")
    ap.add_argument('--child', choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model_name, args.data)
        return
    print(f'Machine: {machine_info()}')
    times = {v: [] for v in VARIANTS}
    for _ in range(args.runs):
        for v in VARIANTS:
            times[v].append(measure(v, args))
    med = {v: (statistics.median(t[0] for t in times[v]),
               statistics.median(t[1] for t in times[v])) for v in VARIANTS}
    print(f'{args.data} dataset of {args.model_name}, 16 synthetic records, batch 4; '
          f'median of {args.runs} processes per variant, alternating')
    print_table(['pipeline functions', 'build s', 'first batch s', 'build / as written'],
                [[v, f'{med[v][0]:.2f}', f'{med[v][1]:.2f}',
                  f'{med[v][0] / med[VARIANTS[0]][0]:.2f}'] for v in VARIANTS])


if __name__ == '__main__':
    main()
