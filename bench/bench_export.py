"""Deployment benchmark: exported SavedModel and TFLite latency/throughput, model sizes.

  python bench/bench_export.py [--runs 5] [--models ssd_300_vgg,ssdlite_mobilenet_v2,ssd_small]

SavedModel rows: `serving_default` end to end from encoded JPEG bytes (decode, warp resize,
mean subtraction, network, box decoding, combined NMS) at batch 1 and 8, 21 classes (VOC)
for SSD300/SSDLite, 5 for ssd_small; random weights, select threshold 0.01, so NMS works on
full candidate lists (the worst case); SSD300 also with the network in bfloat16
(`export_savedmodel.py --mixed_precision=mixed_bfloat16`). TFLite rows: batch 1, the uint8 network-size input,
per-class builtin NMS inside, `tf.lite.Interpreter` with 2 threads. Median of --runs timed
calls after one warm-up. Prints the machine and its load average (the machine is shared).
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import machine_info, median_time, print_table  # noqa: E402

PHOTO_SHAPE = (375, 500)  # a typical VOC photo (height, width)
TFLITE_VARIANTS = {'ssd_300_vgg': ('float32',), 'ssdlite_mobilenet_v2': ('float32', 'int8'),
                   'ssd_small': ('float32', 'int8')}
BFLOAT16_MODELS = ('ssd_300_vgg',)  # also timed with --mixed_precision=mixed_bfloat16
NUM_CLASSES = {'ssd_300_vgg': 21, 'ssdlite_mobilenet_v2': 21, 'ssd_small': 5}


def _dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _jpeg(seed):
    import cv2
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)  # smooth, photo-like content
    image = cv2.resize(small, PHOTO_SHAPE[::-1], interpolation=cv2.INTER_CUBIC)
    return cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def accuracy(checkpoint_path, num_images):
    """VOC mAP of a trained synthetic-data run (train_ssd.py's train_dir) exported as a
    SavedModel and as each TFLite variant, on the synthetic test split (int8 calibrated on
    100 synthetic training images)."""
    import tensorflow as tf
    from nets import nets_factory
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import evaluation
    from ssd_tf import export
    from ssd_tf import metrics
    from ssd_tf.datasets import synthetic

    net, model, names, _ = export.load_from_checkpoint(checkpoint_path,
                                                       nets_factory.get_network)
    shape = tuple(net.params.img_shape)

    def preprocess(image):
        out = prep.preprocess_for_eval(image, None, None, out_shape=shape)
        return out[0], out[3]

    tmp = tempfile.mkdtemp(prefix='bench_export_acc_')
    sm = export.export_saved_model(net, model, preprocess, tmp, label_names=names)
    calib = export.representative_images(
        (r.image for r in synthetic.make_synthetic_split('train', 100)), shape)
    paths = export.export_tflite(net, model, lambda im: preprocess(im)[0],
                                 os.path.join(tmp, 'tflite'), export.TFLITE_QUANTIZATIONS, calib)
    records = synthetic.make_synthetic_split('test', num_images)
    fn = tf.saved_model.load(sm).signatures['serving_default']

    def saved_model_detect(rec):
        out = fn(image_bytes=tf.constant([evaluation._record_bytes(rec)]))
        n = int(out['num_detections'][0])
        return (out['detection_boxes'][0, :n].numpy(), out['detection_scores'][0, :n].numpy(),
                out['detection_classes'][0, :n].numpy().astype(int))

    detectors = {'SavedModel': saved_model_detect}
    for q, p in paths.items():
        det = export.TFLiteDetector(p)
        detectors[f'TFLite {q}'] = lambda rec, det=det: (
            lambda o: (o['detection_boxes'], o['detection_scores'],
                       o['detection_classes']))(det(rec.image))
    rows = []
    for name, detect in detectors.items():
        ev = metrics.VOCEvaluator(net.params.num_classes, names)
        for rec in records:
            boxes, scores, classes = detect(rec)
            ev.add_image(rec.image_id, rec.boxes, rec.labels, det_boxes=boxes,
                         det_scores=scores, det_classes=classes,
                         image_shape=(rec.height, rec.width))
        res = ev.evaluate()
        rows.append([name, f"{res['map07']:.4f}", f"{res['map12']:.4f}"])
        print(rows[-1], flush=True)
    print(f"\nAccuracy of {checkpoint_path} on {num_images} synthetic test images:")
    print_table(['model', 'VOC07 mAP', 'VOC12 mAP'], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--models', default='ssd_300_vgg,ssdlite_mobilenet_v2,ssd_small')
    ap.add_argument('--no_tflite', action='store_true')
    ap.add_argument('--accuracy_checkpoint', default=None,
                    help='A train_ssd.py train_dir (synthetic data): report the mAP of the '
                    'SavedModel and each TFLite variant instead of timings.')
    ap.add_argument('--accuracy_images', type=int, default=200)
    args = ap.parse_args()
    if args.accuracy_checkpoint:
        print(machine_info())
        return accuracy(args.accuracy_checkpoint, args.accuracy_images)

    import keras
    import tensorflow as tf
    from nets import nets_factory
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import export
    from ssd_tf.datasets import synthetic

    print(machine_info())
    print(f"load average at start: {os.getloadavg()}")
    jpegs = [_jpeg(i) for i in range(8)]
    rows, size_rows = [], []
    tmp = tempfile.mkdtemp(prefix='bench_export_')
    for name in args.models.split(','):
        keras.utils.set_random_seed(0)
        cls = nets_factory.get_network(name)
        c = NUM_CLASSES[name]
        net = cls(cls.default_params._replace(num_classes=c, no_annotation_label=c))
        model = net.keras_model()
        shape = tuple(net.params.img_shape)

        def preprocess(image, shape=shape):
            out = prep.preprocess_for_eval(image, None, None, out_shape=shape)
            return out[0], out[3]

        path = export.export_saved_model(net, model, preprocess, os.path.join(tmp, name))
        size_rows.append([name, 'SavedModel', f'{_dir_size(path) / 1e6:.1f}'])
        fn = tf.saved_model.load(path).signatures['serving_default']
        for batch in (1, 8):
            data = tf.constant(jpegs[:batch])
            t = median_time(lambda: fn(image_bytes=data)['num_detections'].numpy(),
                            runs=args.runs)
            rows.append([name, 'SavedModel (JPEG bytes, NMS)', batch, f'{1e3 * t:.1f}',
                         f'{batch / t:.2f}'])
            print(rows[-1], flush=True)
        if name in BFLOAT16_MODELS:
            # The same weights, network in bfloat16 (export_savedmodel.py --mixed_precision).
            keras.mixed_precision.set_dtype_policy('mixed_bfloat16')
            try:
                bf_model = net.keras_model()
            finally:
                keras.mixed_precision.set_dtype_policy('float32')
            bf_model.set_weights(model.get_weights())
            bf_path = export.export_saved_model(net, bf_model, preprocess,
                                                os.path.join(tmp, name + '_bf16'))
            bf_fn = tf.saved_model.load(bf_path).signatures['serving_default']
            for batch in (1, 8):
                data = tf.constant(jpegs[:batch])
                t = median_time(lambda: bf_fn(image_bytes=data)['num_detections'].numpy(),
                                runs=args.runs)
                rows.append([name, 'SavedModel bfloat16 (JPEG bytes, NMS)', batch,
                             f'{1e3 * t:.1f}', f'{batch / t:.2f}'])
                print(rows[-1], flush=True)
        if args.no_tflite:
            continue
        variants = TFLITE_VARIANTS[name]
        calib = None
        if 'int8' in variants:
            images = [synthetic.synthetic_image(0, i, 160)[0] for i in range(20)]
            calib = export.representative_images(images, shape)
        paths = export.export_tflite(net, model, lambda im: preprocess(im)[0],
                                     os.path.join(tmp, name + '_tflite'), variants, calib)
        frame = export.representative_images([tf.io.decode_jpeg(jpegs[0]).numpy()], shape)[0]
        for q, p in paths.items():
            size_rows.append([name, f'TFLite {q}', f'{os.path.getsize(p) / 1e6:.1f}'])
            det = export.TFLiteDetector(p, num_threads=2)
            t = median_time(lambda: det.run_resized(frame), runs=args.runs)
            rows.append([name, f'TFLite {q} (uint8 input, NMS)', 1, f'{1e3 * t:.1f}',
                         f'{1 / t:.2f}'])
            print(rows[-1], flush=True)
    print()
    print_table(['model', 'runtime', 'batch', 'median ms / batch', 'images/s'], rows)
    print()
    print_table(['model', 'format', 'size (MB)'], size_rows)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == '__main__':
    main()
