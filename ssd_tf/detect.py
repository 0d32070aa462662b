"""Runs an exported or trained SSD on image files and writes annotated PNGs and a JSON.

  python -m ssd_tf.detect --model=/tmp/serving/ssd/1 --images=photos/ --output_dir=/tmp/det
  python -m ssd_tf.detect --model=/tmp/serving/ssd/1/tflite/model_int8.tflite --images=a.jpg
  python -m ssd_tf.detect --model=runs/ssd_small_synthetic --images=a.jpg,b.png

--model: a SavedModel directory (written by export_savedmodel.py), a `.tflite` file (labels
from labels.txt beside it), or a training directory / checkpoint prefix (built with
nets.nets_factory and the eval pre-processing; this command-line entry point is the only
place where this core module reaches up to nets/ and preprocessing/, passed on as arguments).
Outputs in --output_dir: `<image name>.png` per image (boxes with score >= --score_threshold,
drawn with ssd_tf.visualize) and `detections.json`: a list of
`{"image": path, "height", "width", "detections": [{"class_id", "label", "score",
"box": [ymin, xmin, ymax, xmax] relative, "box_pixels": [ymin, xmin, ymax, xmax] pixels}]}`.
"""
import json
import os

import numpy as np
import tensorflow as tf

from ssd_tf import export
from ssd_tf import visualize

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def list_images(paths):
    """Image files of `paths` (files, or folders searched non-recursively), sorted per folder."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(os.path.join(p, f) for f in os.listdir(p)
                              if f.lower().endswith(IMAGE_EXTENSIONS)))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ValueError(f"--images: {p} is neither a file nor a directory")
    if not out:
        raise ValueError(f"--images={','.join(paths)}: no image files found "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
    return out


def _labels_near(directory):
    from ssd_tf.datasets import labelmap as labelmap_lib
    for d in (directory, os.path.join(directory, 'assets')):
        if os.path.isfile(os.path.join(d, export.LABELS_FILENAME)):
            return list(labelmap_lib.LabelMap.read(d).names)
    return None


def _from_signature_output(out):
    n = int(round(float(np.asarray(out['num_detections'])[0])))
    return {'boxes': np.asarray(out['detection_boxes'])[0, :n],
            'classes': np.asarray(out['detection_classes'])[0, :n].astype(np.int64),
            'scores': np.asarray(out['detection_scores'])[0, :n]}


def make_detector(model_path, get_network=None, preprocess_factory=None, model_name=None,
                  num_classes=None, label_map=None):
    """`(detect, label_names)`: `detect(encoded bytes, image uint8 [H, W, 3])` -> dict of
    numpy `boxes [N, 4]` relative yxyx (original image), `classes [N]`, `scores [N]`.

    model_path: SavedModel directory, `.tflite` file, or training directory / checkpoint.
    get_network, preprocess_factory: needed for checkpoints (`nets_factory.get_network`;
    `img_shape -> preprocess_fn` as `export.DetectionModule` takes).
    """
    from ssd_tf.datasets import labelmap as labelmap_lib
    model_path = os.fspath(model_path)
    labels = list(labelmap_lib.LabelMap.read(label_map).names) if label_map else None
    if model_path.endswith('.tflite'):
        det = export.TFLiteDetector(model_path)

        def detect(data, image):
            del data
            out = det(image)
            return {'boxes': out['detection_boxes'], 'classes': out['detection_classes'],
                    'scores': out['detection_scores']}
        return detect, labels or _labels_near(os.path.dirname(os.path.abspath(model_path)))
    if os.path.isfile(os.path.join(model_path, 'saved_model.pb')):
        loaded = tf.saved_model.load(model_path)
        if export.BYTES_SIGNATURE not in loaded.signatures:
            raise ValueError(f"--model={model_path}: SavedModel without a "
                             f"{export.BYTES_SIGNATURE} signature")
        fn = loaded.signatures[export.BYTES_SIGNATURE]

        def detect(data, image):
            del image
            return _from_signature_output(fn(**{export.BYTES_INPUT: tf.constant([data])}))
        return detect, labels or _labels_near(model_path)
    if get_network is None or preprocess_factory is None:
        raise ValueError(f"--model={model_path} is a checkpoint: the network factory and the "
                         f"pre-processing are needed to build it")
    net, model, names, _ = export.load_from_checkpoint(model_path, get_network, model_name,
                                                       num_classes, label_map)
    module = export.DetectionModule(net, model,
                                    preprocess_factory(tuple(net.params.img_shape)))

    def detect(data, image):
        del image
        return _from_signature_output(module.detect_bytes(tf.constant([data])))
    return detect, labels or names


def run(detect, image_paths, output_dir, label_names=None, score_threshold=0.3):
    """Runs `detect` on each image; writes PNGs and detections.json; returns the JSON list."""
    os.makedirs(output_dir, exist_ok=True)
    names = ['none'] + list(label_names) if label_names else None
    results = []
    for path in image_paths:
        with open(path, 'rb') as f:
            data = f.read()
        try:
            image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(f"--images: {path} could not be decoded as JPEG/PNG/GIF/BMP: "
                             f"{e.message.splitlines()[0]}") from e
        out = detect(data, image)
        keep = out['scores'] >= score_threshold
        boxes, classes, scores = out['boxes'][keep], out['classes'][keep], out['scores'][keep]
        h, w = image.shape[:2]
        dets = [{'class_id': int(c),
                 'label': names[int(c)] if names and 0 <= int(c) < len(names) else str(int(c)),
                 'score': float(s), 'box': [float(v) for v in b],
                 'box_pixels': [float(v) for v in np.asarray(b, np.float64) * [h, w, h, w]]}
                for b, c, s in zip(boxes, classes, scores)]
        results.append({'image': path, 'height': int(h), 'width': int(w), 'detections': dets})
        stem = os.path.splitext(os.path.basename(path))[0]
        visualize.save_png(os.path.join(output_dir, stem + '.png'),
                           visualize.draw_boxes(image, boxes, classes, scores=scores,
                                                label_names=names))
    with open(os.path.join(output_dir, 'detections.json'), 'w') as f:
        json.dump(results, f, indent=1)
    return results


def main(argv=None):
    from absl import app
    from absl import flags
    flags.DEFINE_string('model', None, 'SavedModel dir, .tflite file, or training dir / '
                        'checkpoint prefix.')
    flags.DEFINE_list('images', None, 'Image files and/or folders.')
    flags.DEFINE_string('output_dir', 'detections', 'Where PNGs and detections.json go.')
    flags.DEFINE_float('score_threshold', 0.3, 'Minimum score of a reported detection.')
    flags.DEFINE_string('label_map', None, 'Label map file; default: the one beside the model.')
    flags.DEFINE_string('model_name', None, 'Network of a checkpoint without config.json.')
    flags.DEFINE_integer('num_classes', None, 'Classes of a checkpoint without config.json.')
    flags.mark_flags_as_required(['model', 'images'])
    FLAGS = flags.FLAGS

    def _main(argv):
        del argv
        try:
            get_network = preprocess_factory = None
            path = FLAGS.model
            if not path.endswith('.tflite') and \
                    not os.path.isfile(os.path.join(path, 'saved_model.pb')):
                # The command-line edge wires up the network and pre-processing.
                from nets import nets_factory
                from preprocessing import ssd_vgg_preprocessing as prep
                get_network = nets_factory.get_network

                def preprocess_factory(shape):
                    def preprocess(image):
                        out = prep.preprocess_for_eval(image, None, None, out_shape=shape)
                        return out.image, out.bbox_img
                    return preprocess
            detect, labels = make_detector(path, get_network, preprocess_factory,
                                           FLAGS.model_name, FLAGS.num_classes, FLAGS.label_map)
            results = run(detect, list_images(FLAGS.images), FLAGS.output_dir, labels,
                          FLAGS.score_threshold)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"ssd_tf.detect: error: {err}")
        n = sum(len(r['detections']) for r in results)
        print(f"{len(results)} images, {n} detections -> {FLAGS.output_dir}")
    app.run(_main, argv)


if __name__ == '__main__':
    main()
