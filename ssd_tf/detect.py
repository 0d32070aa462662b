"""Runs an exported or trained SSD on image files and writes annotated PNGs and a JSON.

Library code; the command line is the top-level script `detect.py` (also `ssd-detect`;
`python -m ssd_tf.detect` hands over to it):

  python detect.py --model=/tmp/serving/ssd/1 --images=photos/ --output_dir=/tmp/det
  python detect.py --model=/tmp/serving/ssd/1/tflite/model_int8.tflite --images=a.jpg
  python detect.py --model=runs/ssd_small_synthetic --images=a.jpg,b.png

model: a SavedModel directory (written by export_savedmodel.py), a `.tflite` file, or what
`ssd_tf.builder.load_model` takes (a training directory, a checkpoint prefix of ours or of the
original slim SSD with model_name/num_classes, a Keras `.h5` weights file), run through the
SavedModel's `DetectionModule` with the eval pre-processing. Class names:
`datasets.labelmap.resolve_label_map` (label_map, the names the run or export recorded, a
labels.txt beside the model, the names embedded in a .tflite).
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
The writing (`read_image`, `output_paths`, `DetectionWriter`, `summary`) and
`from_signature_output` are shared with `ssd_tf.serving_client`, which gets the detections
from a TF Serving server.
"""
import logging
import math
import os

import numpy as np
import tensorflow as tf

from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import atomic_files
from ssd_tf import builder
from ssd_tf import images
from ssd_tf import quiet
from ssd_tf import run_config
from ssd_tf import tflite_metadata
from ssd_tf import visualize
from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.export import saved_model as export_lib
from ssd_tf.export import tflite_runtime

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
DETECTIONS_FILENAME = 'detections.json'


def list_images(paths):
    """Image files of `paths` (files, or folders searched non-recursively), sorted per folder."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(os.path.join(p, f) for f in os.listdir(p)
                              if f.lower().endswith(IMAGE_EXTENSIONS)))
        elif os.path.exists(p):  # special files are listed, then skipped by read_image
            out.append(p)
        else:
            raise ValueError(f"--images: {p} is neither a file nor a directory")
    if not out:
        raise ValueError(f"--images={','.join(paths)}: no image files found "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
    return out


def check_output_dir(output_dir, flag='--output_dir'):
    """Creates `output_dir` if needed and checks that a file can be written in it, before any
    model is loaded; ValueError naming `flag` otherwise."""
    import tempfile
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix='.write_check_'):
            pass
    except OSError as e:
        raise ValueError(f"{flag}={output_dir} is not a writable directory: "
                         f"{e.strerror or e}") from None


def from_signature_output(out, index=0):
    """Image `index` of a serving signature's batch output
    (`export.saved_model.OUTPUT_KEYS`, arrays or tensors) -> numpy `boxes [N, 4]`,
    `classes [N]` int64, `scores [N]` (N = its num_detections)."""
    n = int(round(float(np.asarray(out['num_detections'])[index])))
    return {'boxes': np.asarray(out['detection_boxes'])[index, :n],
            'classes': np.asarray(out['detection_classes'])[index, :n].astype(np.int64),
            'scores': np.asarray(out['detection_scores'])[index, :n]}


def make_detector(model_path, model_name=None, num_classes=None, label_map=None, tiles=None,
                  test_time_flip=None):
    """`(detect, label_names)`: `detect(encoded bytes, image uint8 [H, W, 3])` -> dict of
    numpy `boxes [N, 4]` relative yxyx (original image), `classes [N]`, `scores [N]`.

    model_path: SavedModel directory, `.tflite` file, or what `builder.load_model` takes
    (model_name, num_classes: for a checkpoint without config.json). label_map: a label map
    file (default: see the module docstring). tiles: None or `tiling.Tiles`, tiled
    detection (`ssd_tf.tiling`) of a checkpoint; a SavedModel tiles as it was exported.
    test_time_flip: each image also detected mirrored and averaged in
    (`postprocess.detections_of`), for a checkpoint; None: the run's own choice
    (`builder.run_test_time_flip`). A SavedModel flips as it was exported, a TFLite model
    never: a value that asks otherwise is a ValueError.
    """
    kind, path = builder.resolve_source(model_path)
    if kind in ('tflite', 'saved_model') and test_time_flip is not None:
        exported = run_config.read_run_config(path) if kind == 'saved_model' else None
        builder.check_fixed_flip(test_time_flip, kind, path,
                                 fixed=builder.run_test_time_flip(None, exported))
    if tiles is not None and kind in ('tflite', 'saved_model'):
        raise ValueError(f"--tiles does not apply to {kind} {path}: a SavedModel tiles as it "
                         f"was exported (export_savedmodel.py --tiles), a TFLite model "
                         f"detects the whole image; pass the training directory")
    if kind == 'tflite':
        det = tflite_runtime.TFLiteDetector(path)
        with quiet.native_output_filtered():  # LiteRT's XNNPACK notice, at the first run
            det.run_resized(np.zeros(det.input_shape, np.uint8))

        def detect(data, image):
            del data
            out = det(image)
            return {'boxes': out['detection_boxes'], 'classes': out['detection_classes'],
                    'scores': out['detection_scores']}
        labels = labelmap_lib.resolve_label_map(
            label_map, beside=[os.path.dirname(os.path.abspath(path))],
            fallback=lambda: tflite_metadata.embedded_labels(path))
        return detect, _names(labels)
    if kind == 'saved_model':
        loaded = tf.saved_model.load(path)
        if export_lib.BYTES_SIGNATURE not in loaded.signatures:
            raise ValueError(f"--model={path}: SavedModel without a "
                             f"{export_lib.BYTES_SIGNATURE} signature")
        fn = loaded.signatures[export_lib.BYTES_SIGNATURE]

        def detect(data, image):
            del image
            return from_signature_output(fn(**{export_lib.BYTES_INPUT: tf.constant([data])}))
        recorded = run_config.read_run_config(path)
        labels = labelmap_lib.resolve_label_map(
            label_map, recorded_names=recorded.label_names, recorded_ids=recorded.label_ids,
            beside=[path])
        return detect, _names(labels)
    built = builder.load_model(model_path, model_name, num_classes, label_map=label_map)
    module = export_lib.DetectionModule(
        built.net, built.model, prep.image_preprocess_fn(tuple(built.net.params.img_shape)),
        tiles=tiles, test_time_flip=builder.run_test_time_flip(test_time_flip, built.config))

    def detect(data, image):
        del image
        return from_signature_output(module.detect_bytes(tf.constant([data])))
    return detect, built.label_names


def _names(label_map):
    return None if label_map is None else list(label_map.names)


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


def read_image(path, max_pixels):
    """`(encoded bytes, image uint8 [H, W, 3])` of an image file, decoded with
    `images.decode_image` within `max_pixels`; raises ValueError with the reason."""
    try:
        data = images.read_regular_file(path)
    except OSError as e:
        raise ValueError(f"cannot read the file: {e.strerror or e}") from None
    try:
        return data, images.decode_image(data, max_pixels, where=path).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise ValueError(_reason(e, path)) from None


def _detect_one(detect, path, max_pixels):
    """`(image uint8 [H, W, 3], detections dict)`; raises ValueError with the reason."""
    data, image = read_image(path, max_pixels)
    try:
        return image, detect(data, image)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise ValueError(_reason(e, path)) from None


def _write_json(results, path):
    atomic_files.write_json(path, results, indent=1)


class DetectionWriter:
    """Writes the outputs of a run over `image_paths`, in their order: one annotated PNG per
    image (`output_paths`) and detections.json (see the module docstring), which `close` (or
    leaving a `with` block, also on an exception) writes with the entries so far.

    `add(path, image uint8 [H, W, 3], out)` with out = numpy `boxes [N, 4]` relative yxyx,
    `classes [N]`, `scores [N]` keeps the boxes with score >= score_threshold; `skip(path,
    reason)` logs a warning and records an `"error"` entry. `run` and
    `ssd_tf.serving_client` both write through it.
    """

    def __init__(self, image_paths, output_dir, label_names=None, score_threshold=0.3):
        os.makedirs(output_dir, exist_ok=True)
        self.output_dir = output_dir
        self.names = ['none'] + list(label_names) if label_names else None
        self.score_threshold = score_threshold
        self._paths = list(image_paths)
        self._outputs = output_paths(self._paths, output_dir)
        self.results = DetectionResults()

    def _next(self, path):
        i = len(self.results)
        if i >= len(self._paths) or self._paths[i] != path:
            raise ValueError(f"DetectionWriter: {path} is not the next image "
                             f"({self._paths[i] if i < len(self._paths) else 'none left'})")
        return self._outputs[i]

    def add(self, path, image, out):
        """Records and draws the detections `out` of `image` (the file `path`)."""
        out_path = self._next(path)
        names = self.names
        if len(out['scores']):
            top = float(np.max(out['scores']))
            if self.results.best_score is None or top > self.results.best_score:
                self.results.best_score = top
        keep = out['scores'] >= self.score_threshold
        boxes, classes, scores = out['boxes'][keep], out['classes'][keep], out['scores'][keep]
        h, w = image.shape[:2]
        dets = [{'class_id': int(c),
                 'label': names[int(c)] if names and 0 <= int(c) < len(names) else str(int(c)),
                 'score': float(s), 'box': [float(v) for v in b],
                 'box_pixels': [float(v) for v in np.asarray(b, np.float64) * [h, w, h, w]]}
                for b, c, s in zip(boxes, classes, scores)]
        self.results.append({'image': path, 'height': int(h), 'width': int(w),
                             'detections': dets})
        visualize.save_png(out_path, visualize.draw_boxes(image, boxes, classes, scores=scores,
                                                          label_names=names))
        return self.results[-1]

    def skip(self, path, reason):
        """Records `path` as skipped for `reason` (no PNG)."""
        self._next(path)
        logging.warning("skipped %s: %s", path, reason)
        self.results.append({'image': path, 'error': str(reason), 'detections': []})
        return self.results[-1]

    def close(self):
        _write_json(self.results, os.path.join(self.output_dir, DETECTIONS_FILENAME))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def summary(results, output_dir, score_threshold=None):
    """The lines a command prints after a run: counts, then each skipped image and why. With
    no detection at all and `score_threshold` given, a hint: the highest score the model gave
    (`results.best_score` of `DetectionWriter`) and the flag that lowers the threshold."""
    n = sum(len(r['detections']) for r in results)
    skipped = [r for r in results if 'error' in r]
    lines = [f"{len(results) - len(skipped)} images, {n} detections, {len(skipped)} skipped "
             f"-> {output_dir}"] + [f"  skipped {r['image']}: {r['error']}" for r in skipped]
    if n == 0 and len(results) > len(skipped) and score_threshold is not None:
        best = getattr(results, 'best_score', None)
        if best is None:
            lines.append("  the model returned no box at all")
        else:
            lower = max(math.floor(best * 100) / 100, 0.01)
            lines.append(f"  no box scored >= {score_threshold:g}; the highest score was "
                         f"{best:.3f}: to see the best boxes, pass --score_threshold={lower:g}")
    return '\n'.join(lines)


class DetectionResults(list):
    """The JSON entries of a run (a list), and `best_score`: the highest score of any box the
    model returned, kept or not (None before the first)."""
    best_score = None


def run(detect, image_paths, output_dir, label_names=None, score_threshold=0.3,
        max_pixels=images.DEFAULT_MAX_PIXELS):
    """Runs `detect` on each image; writes PNGs and detections.json; returns the JSON list.

    Images that cannot be read or decoded, or are over `max_pixels` (None: no limit), are
    skipped with a warning and an `"error"` entry. detections.json is written even when an
    exception stops the run (with the images done so far).
    """
    with DetectionWriter(image_paths, output_dir, label_names, score_threshold) as writer:
        for path in image_paths:
            try:
                image, out = _detect_one(detect, path, max_pixels)
            except ValueError as e:
                writer.skip(path, e)
                continue
            writer.add(path, image, out)
    return writer.results



if __name__ == '__main__':
    # `python -m ssd_tf.detect`: the program is the top-level script detect.py; run it without
    # importing it (the library imports no program).
    import runpy
    runpy.run_module('detect', run_name='__main__', alter_sys=True)
