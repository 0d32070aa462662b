"""Per-image cost of the EXIF orientation in the decoder.

    python bench/exif_orientation_cost.py [--image ../shared/data/raccoon/JPEGImages/raccoon-1.jpg]
        [--runs 3]

A tf.data map over N copies of one JPEG (a VOC-size photo from --image, and a phone-size
4032x3024 JPEG made here) times three things per image: the decode without the orientation
(the header checks and tf.io.decode_image: what `images.decode_image` did before it read the
EXIF), `images.decode_image` (checks, decode, EXIF parse, rotation) and the EXIF parse alone
(`images.exif_orientation`). Prints the median over --runs of each, in microseconds per image,
and the machine line.
"""
import argparse
import os
import statistics
import sys
import time

import cv2
import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import machine_info, print_table  # noqa: E402
from ssd_tf import images  # noqa: E402

DEFAULT_IMAGE = os.path.join(ROOT, '..', 'shared', 'data', 'raccoon', 'JPEGImages',
                             'raccoon-1.jpg')


def decode_without_orientation(data):
    """The decoder's checks and decode, no EXIF: the shape of the decoded image."""
    problem, body = images._inspect(data, None)
    check = tf.raw_ops.Assert(condition=tf.equal(problem, ''), data=[problem], summarize=1)
    with tf.control_dependencies([check]):
        im = tf.io.decode_image(body, channels=3, expand_animations=False)
    return tf.shape(im)


def decode_with_orientation(data):
    return tf.shape(images.decode_image(data))


def parse_only(data):
    return images.exif_orientation(data)


def us_per_image(fn, data, n):
    """Microseconds per image of a tf.data map of `fn` over `n` copies of `data` (after 5)."""
    ds = tf.data.Dataset.from_tensors(tf.constant(data)).repeat(n).map(fn, num_parallel_calls=1)
    for _ in ds.take(5):
        pass
    t0 = time.perf_counter()
    for _ in ds:
        pass
    return (time.perf_counter() - t0) / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--image', default=DEFAULT_IMAGE, help='a VOC-size JPEG')
    ap.add_argument('--runs', type=int, default=3, help='runs per figure (median)')
    args = ap.parse_args()
    if not os.path.isfile(args.image):
        sys.exit(f'--image={args.image} not found (the default needs ../shared/data/raccoon)')
    with open(args.image, 'rb') as f:
        voc = f.read()
    noise = np.random.default_rng(0).integers(0, 255, [3024, 4032, 3], np.uint8) // 4 * 4
    phone = cv2.imencode('.jpg', noise)[1].tobytes()
    h, w = cv2.imdecode(np.frombuffer(voc, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    rows = []
    for name, data, n in ((f'{os.path.basename(args.image)} ({w}x{h})', voc, 400),
                          ('phone-size JPEG (4032x3024)', phone, 20)):
        a, b, c = ([us_per_image(fn, data, k) for _ in range(args.runs)]
                   for fn, k in ((decode_without_orientation, n),
                                 (decode_with_orientation, n), (parse_only, n * 5)))
        rows.append([name, f'{statistics.median(a):.0f}', f'{statistics.median(b):.0f}',
                     f'{statistics.median(c):.0f}'])
    print(f'\nMachine: {machine_info()}; medians of {args.runs} runs\n')
    print_table(['image', 'decode without EXIF, us', 'decode_image (with orientation), us',
                 'EXIF parse alone, us'], rows)


if __name__ == '__main__':
    main()
