"""Evaluation throughput of SSD300 over a VOC directory on this machine.

Times the whole evaluation loop of `ssd_tf.evaluation` (read + decode + warp resize + SSD300
forward + decode + combined NMS + matching to ground truth in original pixels), the time spent
inside the detector (forward + NMS; `EvalRun.detect_seconds`), and the VOC07/VOC12 AP
computation, over the test
split of a VOC directory (default: ../shared/data/raccoon, 40 images). Medians of --runs runs
after one warm-up run (tracing); images/s = images / median seconds.

Weights are random (no SSD300 checkpoint is needed to measure speed): a random network passes
many anchors through the 0.01 selection threshold, so the NMS works at its 400-candidate cap,
the worst case; a trained network is not slower.

    python bench/bench_eval.py [--runs 3] [--batch_sizes 8] [--dataset_dir DIR]
"""
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

from bench.machine import machine_info, print_table  # noqa: E402
from nets import ssd_vgg_300  # noqa: E402
from preprocessing import ssd_vgg_preprocessing as prep  # noqa: E402
from ssd_tf import data as data_lib  # noqa: E402
from ssd_tf import evaluation  # noqa: E402
from ssd_tf.datasets import factory  # noqa: E402

_DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'data', 'raccoon')

FLAGS = flags.FLAGS
flags.DEFINE_string('dataset_dir', _DEFAULT_DIR, 'VOC root to evaluate on')
flags.DEFINE_string('split', 'test', 'ImageSets/Main split')
flags.DEFINE_integer('runs', 3, 'timed runs (the median is reported)')
flags.DEFINE_string('batch_sizes', '8', 'comma-separated batch sizes')


def main(argv):
    del argv
    if not os.path.isdir(FLAGS.dataset_dir):
        raise SystemExit(f"--dataset_dir={FLAGS.dataset_dir} is not a directory")
    records, label_map, _ = factory.load_records('voc', FLAGS.dataset_dir, FLAGS.split)
    num_classes = label_map.num_classes
    keras.utils.set_random_seed(0)
    net = ssd_vgg_300.SSDNet(ssd_vgg_300.SSDNet.default_params._replace(
        num_classes=num_classes, no_annotation_label=num_classes))
    model = net.keras_model()
    out_shape = tuple(net.params.img_shape)

    def preprocess(image, labels, bboxes):
        out = prep.preprocess_for_eval(image, labels, bboxes, out_shape=out_shape,
                                       resize=prep.Resize.WARP_RESIZE)
        return tuple(out[:4])

    detector = evaluation.keras_detector(model, net)
    rows = []
    for batch_size in [int(b) for b in FLAGS.batch_sizes.split(',') if b]:
        dataset = data_lib.build_eval_dataset(records, preprocess, batch_size)
        evaluation.run_evaluation(detector, dataset, num_classes, label_map.names)  # warm-up
        loop, det_only, ap = [], [], []
        for r in range(FLAGS.runs):
            t0 = time.perf_counter()
            run = evaluation.run_evaluation(detector, dataset, num_classes, label_map.names)
            loop.append(time.perf_counter() - t0)
            det_only.append(run.detect_seconds)
            print(f"batch {batch_size} run {r + 1}/{FLAGS.runs}: {loop[-1]:.1f} s",
                  file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            run.evaluator.evaluate()
            ap.append(time.perf_counter() - t0)
        n = run.num_images
        rows.append([batch_size, n, f'{n / statistics.median(loop):.2f}',
                     f'{n / statistics.median(det_only):.2f}',
                     f'{1000 * statistics.median(ap):.1f}'])
    print(f"SSD300 (random weights, {num_classes} classes) evaluation on "
          f"{os.path.basename(os.path.normpath(FLAGS.dataset_dir))} {FLAGS.split} "
          f"({len(records)} images), median of {FLAGS.runs} runs")
    print(f"Machine: {machine_info()}")
    print()
    print_table(['batch', 'images', 'eval loop images/s', 'inside detector images/s',
                 'AP computation ms'], rows)


if __name__ == '__main__':
    app.run(main)
