"""Deployment benchmark: exported SavedModel and TFLite latency/throughput, model sizes.

  python bench/bench_export.py [--runs 5] [--models ssd_300_vgg,ssdlite_mobilenet_v2,ssd_small]

SavedModel rows: `serving_default` end to end from encoded JPEG bytes (decode, warp resize,
mean subtraction, network, box decoding, combined NMS) at batch 1 and 8, 21 classes (VOC)
for SSD300/SSDLite, 5 for ssd_small; random weights, select threshold 0.01, so NMS works on
full candidate lists (the worst case); SSD300 also with the network in bfloat16
(`export_savedmodel.py --mixed_precision=mixed_bfloat16`). TFLite rows: batch 1, the uint8 network-size input,
per-class builtin NMS inside, LiteRT's interpreter with 2 threads. Median of --runs timed
calls after one warm-up. Prints the machine and its load average (the machine is shared).

  python bench/bench_export.py --postprocess [--runs 20] [--postprocess_models ...]

compares the TFLite post-processing variants (`--tflite_postprocess`): builtin_nms (per-class
NMS unrolled over the classes) and detection_postprocess (TFLite_Detection_PostProcess) at 21
and 80 classes: latency (median of --runs, batch 1, 2 threads; the whole model and, by
difference with a model without post-processing, the post-processing alone), and agreement
with the SavedModel (combined NMS) on NUM_AGREEMENT synthetic images: detections scoring
>= AGREEMENT_SCORE found with the same class and a box within 1e-3 (both directions).
Random weights with sharpened class heads (as tests/test_export.py) so that scores depend on
the image.
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
POSTPROCESS_CLASSES = (21, 80)  # VOC and COCO (incl. background)
NUM_AGREEMENT = 20
AGREEMENT_SCORE = 0.3
HEAD_SCALE, BACKGROUND_BIAS = 5., 4.


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
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import builder
    from ssd_tf import images
    from ssd_tf.export import saved_model as export
    from ssd_tf.export import tflite as export_tflite
    from ssd_tf.export import tflite_runtime
    from ssd_tf import metrics
    from ssd_tf.datasets import synthetic

    built = builder.load_model(checkpoint_path)
    net, model, names = built.net, built.model, built.label_names
    shape = tuple(net.params.img_shape)

    def preprocess(image):
        out = prep.preprocess_for_eval(image, None, None, out_shape=shape)
        return out[0], out[3]

    tmp = tempfile.mkdtemp(prefix='bench_export_acc_')
    sm = export.export_saved_model(net, model, preprocess, tmp, label_names=names)
    calib = export_tflite.representative_images(
        (r.image for r in synthetic.make_synthetic_split('train', 100)), shape)
    paths = export_tflite.export_tflite(net, model, lambda im: preprocess(im)[0],
                                        os.path.join(tmp, 'tflite'),
                                        export_tflite.TFLITE_QUANTIZATIONS, calib)
    records = synthetic.make_synthetic_split('test', num_images)
    fn = tf.saved_model.load(sm).signatures['serving_default']

    def saved_model_detect(rec):
        out = fn(image_bytes=tf.constant([images.read_image_bytes(rec)]))
        n = int(out['num_detections'][0])
        return (out['detection_boxes'][0, :n].numpy(), out['detection_scores'][0, :n].numpy(),
                out['detection_classes'][0, :n].numpy().astype(int))

    detectors = {'SavedModel': saved_model_detect}
    for q, p in paths.items():
        det = tflite_runtime.TFLiteDetector(p)
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


def _sharpen_heads(net, model):
    """Class heads scaled and background biases raised (tests/test_export.py's weights); a
    head initialised to zeros (SSDLite's) first gets seeded N(0, 0.1) kernels."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name.endswith('_conv_cls'):
            kernel, bias = layer.get_weights()
            if np.abs(kernel).max() < 1e-6:
                kernel = rng.normal(0., 0.1, kernel.shape).astype(kernel.dtype)
            bias = bias.reshape(-1, net.params.num_classes)
            bias[:, 0] += BACKGROUND_BIAS
            layer.set_weights([kernel * HEAD_SCALE, bias.reshape(-1)])


def _matched(a, b, tol=1e-3):
    """Detections of `a` (boxes, classes, scores >= AGREEMENT_SCORE) that `b` has with the same
    class and a box within tol; and how many `a` has."""
    keep = a[2] >= AGREEMENT_SCORE
    found = 0
    for box, cls in zip(a[0][keep], a[1][keep]):
        found += bool(((np.abs(b[0] - box).max(-1) <= tol) & (b[1] == cls)).any())
    return found, int(keep.sum())


def postprocess_comparison(models, runs):
    """The TFLite post-processing table (see the module docstring)."""
    import keras
    import tensorflow as tf
    from nets import nets_factory
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model as export
    from ssd_tf.export import tflite as export_tflite
    from ssd_tf.export import tflite_runtime
    from ssd_tf import postprocess
    from ssd_tf.datasets import synthetic

    tmp = tempfile.mkdtemp(prefix='bench_postprocess_')
    rows = []
    for name in models:
        for c in POSTPROCESS_CLASSES:
            keras.utils.set_random_seed(0)
            cls = nets_factory.get_network(name)
            net = cls(cls.default_params._replace(num_classes=c, no_annotation_label=c))
            model = net.keras_model()
            _sharpen_heads(net, model)
            shape = tuple(net.params.img_shape)

            def whiten(image, shape=shape):
                return prep.preprocess_for_eval(image, None, None, out_shape=shape)[0]

            def preprocess(image, shape=shape):
                out = prep.preprocess_for_eval(image, None, None, out_shape=shape)
                return out[0], out[3]

            frames = export_tflite.representative_images(
                (synthetic.synthetic_image(0, synthetic.TEST_FIRST_INDEX + i, 300)[0]
                 for i in range(NUM_AGREEMENT)), shape)
            sm = export.export_saved_model(net, model, preprocess, os.path.join(tmp, f'{name}_{c}'))
            fn = tf.saved_model.load(sm).signatures[export.IMAGES_SIGNATURE]
            refs = []
            for f in frames:
                out = fn(images=tf.constant(f))
                n = int(out['num_detections'][0])
                refs.append((out['detection_boxes'][0, :n].numpy(),
                             out['detection_classes'][0, :n].numpy().astype(int),
                             out['detection_scores'][0, :n].numpy()))
            # The network alone (no decoding, no NMS): the post-processing's share by difference.
            raw = _raw_network_tflite(net, model, whiten)
            raw_det = tflite_runtime.tflite_interpreter(model_content=raw, num_threads=2)
            raw_det.allocate_tensors()
            raw_in = raw_det.get_input_details()[0]['index']

            def run_raw():
                raw_det.set_tensor(raw_in, frames[0])
                raw_det.invoke()
            dets, sizes, found = {'network only': run_raw}, {}, {}
            for op in postprocess.TFLITE_POSTPROCESS_OPTIONS:
                path = export_tflite.export_tflite(net, model, whiten,
                                                   os.path.join(tmp, f'{name}_{c}_{op}'),
                                                   ['float32'], postprocess_op=op,
                                                   metadata='off')['float32']
                det = tflite_runtime.TFLiteDetector(path, num_threads=2)
                dets[op] = lambda det=det: det.run_resized(frames[0])
                sizes[op] = os.path.getsize(path) / 1e6
                counts = np.zeros(4, int)
                for f, ref in zip(frames, refs):
                    o = det.run_resized(f)
                    n = int(o['num_detections'][0])
                    got = (o['detection_boxes'][0, :n],
                           np.round(o['detection_classes'][0, :n]).astype(int) + 1,
                           o['detection_scores'][0, :n])
                    counts += np.array(_matched(ref, got) + _matched(got, ref))
                found[op] = counts
            # Interleaved runs (one of each in turn), so that a change of the shared machine's
            # load hits all variants alike.
            times = _interleaved_medians(dets, runs)
            for op in postprocess.TFLITE_POSTPROCESS_OPTIONS:
                f = found[op]
                rows.append([name, c, op, f'{1e3 * times[op]:.1f}',
                             f'{1e3 * (times[op] - times["network only"]):.1f}',
                             f'{sizes[op]:.1f}', f'{f[0]}/{f[1]}', f'{f[2]}/{f[3]}'])
                print(rows[-1], flush=True)
    print()
    print_table(['model', 'classes', '--tflite_postprocess', 'median ms (whole model)',
                 'post-processing ms (difference)', 'size (MB)',
                 f'SavedModel detections >= {AGREEMENT_SCORE} found',
                 'TFLite detections found in SavedModel'], rows)


def _interleaved_medians(fns, runs):
    """{name: median seconds} of `fns` (name -> callable), timed in turn `runs` times after one
    warm-up call each."""
    import time
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _raw_network_tflite(net, model, whiten):
    """float32 TFLite of the network alone (image -> raw scores and offsets)."""
    import tensorflow as tf
    from ssd_tf.export import saved_model as export
    from ssd_tf.export import tflite as export_tflite
    from ssd_tf.export import tflite_runtime
    h, w = net.params.img_shape

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.uint8, name='images')])
    def raw(images):
        out = model(tf.cast(whiten(images[0]), tf.float32)[None], training=False)
        return {'scores': tf.concat([tf.reshape(p, [-1, net.params.num_classes])
                                     for p in out['predictions']], 0),
                'offsets': tf.concat([tf.reshape(o, [-1, 4]) for o in out['localisations']], 0)}

    from tensorflow.python.framework import convert_to_constants
    frozen = convert_to_constants.convert_variables_to_constants_v2(raw.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    del export
    return converter.convert()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--models', default='ssd_300_vgg,ssdlite_mobilenet_v2,ssd_small')
    ap.add_argument('--no_tflite', action='store_true')
    ap.add_argument('--accuracy_checkpoint', default=None,
                    help='A train_ssd.py train_dir (synthetic data): report the mAP of the '
                    'SavedModel and each TFLite variant instead of timings.')
    ap.add_argument('--accuracy_images', type=int, default=200)
    ap.add_argument('--postprocess', action='store_true',
                    help='Compare the TFLite post-processing variants at 21 and 80 classes '
                    'instead of the default tables.')
    ap.add_argument('--postprocess_models', default='ssd_small,ssd_300_vgg',
                    help='Networks to compare (SSDLite\'s zero-initialised class heads give no '
                    'detection to compare without training).')
    args = ap.parse_args()
    if args.postprocess:
        print(machine_info())
        print(f"load average at start: {os.getloadavg()}")
        postprocess_comparison(args.postprocess_models.split(','), args.runs)
        print(f"\nload average at end: {os.getloadavg()}")
        return None
    if args.accuracy_checkpoint:
        print(machine_info())
        return accuracy(args.accuracy_checkpoint, args.accuracy_images)

    import keras
    import tensorflow as tf
    from nets import nets_factory
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model as export
    from ssd_tf.export import tflite as export_tflite
    from ssd_tf.export import tflite_runtime
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
            calib = export_tflite.representative_images(images, shape)
        paths = export_tflite.export_tflite(net, model, lambda im: preprocess(im)[0],
                                            os.path.join(tmp, name + '_tflite'), variants, calib)
        frame = export_tflite.representative_images([tf.io.decode_jpeg(jpegs[0]).numpy()],
                                                    shape)[0]
        for q, p in paths.items():
            size_rows.append([name, f'TFLite {q}', f'{os.path.getsize(p) / 1e6:.1f}'])
            det = tflite_runtime.TFLiteDetector(p, num_threads=2)
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
