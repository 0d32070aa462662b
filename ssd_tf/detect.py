"""Runs an exported or trained SSD on image files and writes annotated PNGs and a JSON.

Library code; the command line is the top-level script `detect.py` (`python -m ssd_tf.detect`
delegates to it):

  python detect.py --model=/tmp/serving/ssd/1 --images=photos/ --output_dir=/tmp/det
  python detect.py --model=/tmp/serving/ssd/1/tflite/model_int8.tflite --images=a.jpg
  python detect.py --model=runs/ssd_small_synthetic --images=a.jpg,b.png

model: a SavedModel directory (written by export_savedmodel.py), a `.tflite` file (labels
from labels.txt beside it), or a training directory / checkpoint prefix; for the last, the
network factory and the pre-processing are arguments (this module imports neither `nets/`
nor `preprocessing/`; the script wires them).
Outputs in output_dir, which may be an input folder: `<image file name>.png` per image
(`a.jpg` -> `a.jpg.png`, so `a.jpg` and `a.png` do not collide; a name already taken by an
input or another output gets `-2`, `-3`, ... before `.png`, so no input is ever overwritten),
boxes with score >= score_threshold drawn with ssd_tf.visualize, and `detections.json`,
written even when the run stops early: a list, one entry per input in order,
`{"image": path, "height", "width", "detections": [{"class_id", "label", "score",
"box": [ymin, xmin, ymax, xmax] relative, "box_pixels": [ymin, xmin, ymax, xmax] pixels}]}`;
an image that cannot be read, is not a valid JPEG/PNG/GIF/BMP or is over the pixel budget
(`ssd_tf.images`) is skipped: its entry is `{"image": path, "error": reason,
"detections": []}`.
"""
import json
import logging
import os

import numpy as np
import tensorflow as tf

from ssd_tf import export
from ssd_tf import images
from ssd_tf import visualize

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
DETECTIONS_FILENAME = 'detections.json'


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
        from ssd_tf import tflite_metadata
        return detect, (labels or _labels_near(os.path.dirname(os.path.abspath(model_path)))
                        or tflite_metadata.embedded_labels(model_path))
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


def output_paths(image_paths, output_dir):
    """The PNG path for each image: `output_dir/<file name>.png`, with `-2`, `-3`, ... before
    `.png` when that path is an input, detections.json or an earlier output."""
    taken = {os.path.realpath(p) for p in image_paths}
    taken.add(os.path.realpath(os.path.join(output_dir, DETECTIONS_FILENAME)))
    out = []
    for path in image_paths:
        name = os.path.basename(path)
        candidate, n = os.path.join(output_dir, name + '.png'), 1
        while os.path.realpath(candidate) in taken:
            n += 1
            candidate = os.path.join(output_dir, f'{name}-{n}.png')
        taken.add(os.path.realpath(candidate))
        out.append(candidate)
    return out


def _reason(err, where):
    """The reason in a TensorFlow error: the Assert message of `images.decode_image` without
    its wrapping and the `<where>: ` prefix, else the error's first line."""
    lines = (getattr(err, 'message', None) or str(err)).strip().splitlines()
    marker = 'assertion failed: ['
    for line in lines:
        start, end = line.find(marker), line.rfind(']')
        if start >= 0 and end > start:
            text = line[start + len(marker):end]
            return text[len(where) + 2:] if text.startswith(f'{where}: ') else text
    return lines[0] if lines else type(err).__name__


def _detect_one(detect, path, max_pixels):
    """`(image uint8 [H, W, 3], detections dict)`; raises ValueError with the reason."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the file: {e.strerror or e}") from None
    try:
        image = images.decode_image(data, max_pixels, where=path).numpy()
        return image, detect(data, image)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise ValueError(_reason(e, path)) from None


def _write_json(results, path):
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def run(detect, image_paths, output_dir, label_names=None, score_threshold=0.3,
        max_pixels=images.DEFAULT_MAX_PIXELS):
    """Runs `detect` on each image; writes PNGs and detections.json; returns the JSON list.

    Images that cannot be read or decoded, or are over `max_pixels` (None: no limit), are
    skipped with a warning and an `"error"` entry. detections.json is written even when an
    exception stops the run (with the images done so far).
    """
    os.makedirs(output_dir, exist_ok=True)
    names = ['none'] + list(label_names) if label_names else None
    outputs = output_paths(image_paths, output_dir)
    results = []
    try:
        for path, out_path in zip(image_paths, outputs):
            try:
                image, out = _detect_one(detect, path, max_pixels)
            except ValueError as e:
                logging.warning("skipped %s: %s", path, e)
                results.append({'image': path, 'error': str(e), 'detections': []})
                continue
            keep = out['scores'] >= score_threshold
            boxes, classes, scores = out['boxes'][keep], out['classes'][keep], out['scores'][keep]
            h, w = image.shape[:2]
            dets = [{'class_id': int(c),
                     'label': names[int(c)] if names and 0 <= int(c) < len(names) else str(int(c)),
                     'score': float(s), 'box': [float(v) for v in b],
                     'box_pixels': [float(v) for v in np.asarray(b, np.float64) * [h, w, h, w]]}
                    for b, c, s in zip(boxes, classes, scores)]
            results.append({'image': path, 'height': int(h), 'width': int(w), 'detections': dets})
            visualize.save_png(out_path, visualize.draw_boxes(image, boxes, classes, scores=scores,
                                                              label_names=names))
    finally:
        _write_json(results, os.path.join(output_dir, DETECTIONS_FILENAME))
    return results


if __name__ == '__main__':
    import detect as detect_script  # the top-level script (repository root or installed)
    detect_script.run_main()
