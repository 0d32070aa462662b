"""Serving limits benchmark: time and peak memory of the worst requests of serving_default.

  python bench/bench_serving_limits.py [--runs 3]

Exports an ssd_small (random weights, default limits: 200 MP per image, 64 images per
request, 2 images decoded at a time), then runs each request in a fresh process: load the
SavedModel, answer one small warm-up request, then time the request and read the growth of
the process's peak resident memory (VmHWM in /proc/self/status) over the warm-up peak.
Requests:
- a real flat-colour 16000 x 16000 PNG (256 MP, built row by row with zlib, ~0.8 MB on the
  wire): refused from its header;
- 64 JPEGs of 4000 x 3000 (12 MP camera photos, the largest batch allowed).
Each request runs `--runs` times (a fresh process each); the table gives the medians.
Prints the machine line and the load average (the machine is shared). The JPEGs are smooth
(upscaled), so they decode faster than real photographs; the memory is that of any 12 MP
image (the decoded pixels), which is what the limits bound.
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import machine_info, print_table  # noqa: E402

CASES = ('png_16000x16000', 'jpeg_64x4000x3000')


def flat_png(width, height, rgb=(200, 120, 40)):
    """A valid flat-colour 8-bit RGB PNG, compressed row by row (never the whole image)."""
    def chunk(kind, body):
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body)))
    row = b'\0' + bytes(rgb) * width  # filter 0, then the pixels
    comp = zlib.compressobj(9)
    idat = b''.join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b'\x89PNG\r\n\x1a\n'
            + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def photo_jpeg(width, height, seed=0):
    import cv2
    import numpy as np
    small = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def peak_rss_mb():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.


def export_model(path):
    import keras
    from nets import nets_factory
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model as export
    keras.utils.set_random_seed(0)
    net = nets_factory.get_network('ssd_small')()
    shape = tuple(net.params.img_shape)

    def preprocess(image):
        out = prep.preprocess_for_eval(image, None, None, out_shape=shape)
        return out[0], out[3]
    return export.export_saved_model(net, net.keras_model(), preprocess, path, 1)


def child(case, model_path):
    """Runs one request in this (fresh) process; prints a JSON line."""
    import tensorflow as tf
    fn = tf.saved_model.load(model_path).signatures['serving_default']
    if case == 'png_16000x16000':
        request = [flat_png(16000, 16000)]
    else:
        request = [photo_jpeg(4000, 3000)] * 64
    fn(image_bytes=tf.constant([photo_jpeg(400, 300)]))  # warm-up
    base = peak_rss_mb()
    t0 = time.perf_counter()
    try:
        fn(image_bytes=tf.constant(request))
        outcome = 'answered'
    except tf.errors.InvalidArgumentError as e:
        lines = [x for x in e.message.splitlines() if 'assertion failed' in x] or [e.message]
        outcome = 'refused: ' + lines[0].strip()[:100]
    seconds = time.perf_counter() - t0
    print(json.dumps(dict(case=case, seconds=seconds, growth_mb=peak_rss_mb() - base,
                          wire_mb=sum(len(r) for r in request) / 2 ** 20, outcome=outcome)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--child', choices=CASES)
    parser.add_argument('--model')
    parser.add_argument('--runs', type=int, default=3, help='fresh processes per request')
    parser.add_argument('--baseline_model', default=None,
                        help='also run the requests against this SavedModel version dir (e.g. '
                             'one exported by an older release), in the same run')
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model)
        return
    print(machine_info(), '| load average', ' '.join(f'{x:.2f}' for x in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        model = subprocess.run(
            [sys.executable, '-c', 'import sys; sys.path.insert(0, sys.argv[1]); '
             'from bench.bench_serving_limits import export_model; '
             'print(export_model(sys.argv[2]))',
             os.path.dirname(os.path.dirname(os.path.abspath(__file__))), tmp],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        models = [('this export', model)]
        if args.baseline_model:
            models.append(('baseline', args.baseline_model))
        rows = []
        for case in CASES:
            for label, path in models:
                runs = []
                for _ in range(args.runs):
                    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child',
                                          case, '--model', path], check=True,
                                         capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1]
                    runs.append(json.loads(out))
                med = {k: statistics.median(r[k] for r in runs)
                       for k in ('seconds', 'growth_mb', 'wire_mb')}
                rows.append([case, label, f"{med['wire_mb']:.1f}", f"{med['seconds']:.2f}",
                             f"{med['growth_mb']:.0f}", runs[0]['outcome'][:60]])
    print_table(['request', 'model', 'MB on the wire', 'seconds (median)', 'peak RSS growth MB (median)',
                 'outcome'],
                rows)


if __name__ == '__main__':
    main()
