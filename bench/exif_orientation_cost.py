"""Per-image cost of the EXIF orientation in the decoder: tf.data map over N copies of a
VOC-size JPEG (raccoon-1.jpg) and of a phone-like 4032x3024 JPEG; decode as before (checks +
tf.io.decode_image) vs decode_image (checks + decode + EXIF parse + orientation), and the
EXIF parse alone."""
import sys, time
import numpy as np, cv2
import tensorflow as tf
sys.path.insert(0, sys.argv[1])  # the repository root; argv[2]: a VOC-size JPEG
from ssd_tf import images

def old_decode(data):
    problem, body = images._inspect(data, None)
    check = tf.raw_ops.Assert(condition=tf.equal(problem, ''), data=[problem], summarize=1)
    with tf.control_dependencies([check]):
        im = tf.io.decode_image(body, channels=3, expand_animations=False)
    return tf.shape(im)

def new_decode(data):
    return tf.shape(images.decode_image(data))

def parse_only(data):
    return images.exif_orientation(data)

def run(fn, data, n):
    ds = tf.data.Dataset.from_tensors(tf.constant(data)).repeat(n).map(fn, num_parallel_calls=1)
    for _ in ds.take(5): pass
    t = time.perf_counter()
    for _ in ds: pass
    return (time.perf_counter() - t) / n * 1e6

voc = open(sys.argv[2], 'rb').read()
phone = cv2.imencode('.jpg', np.random.default_rng(0).integers(0, 255, [3024, 4032, 3], np.uint8) // 4 * 4)[1].tobytes()
for name, data, n in (('VOC 500x375 JPEG', voc, 400), ('phone 4032x3024 JPEG', phone, 20)):
    a = min(run(old_decode, data, n) for _ in range(3))
    b = min(run(new_decode, data, n) for _ in range(3))
    c = min(run(parse_only, data, n * 5) for _ in range(3))
    print(f"{name}: decode without EXIF {a:.0f} us, with EXIF orientation {b:.0f} us, EXIF parse alone {c:.0f} us per image")
