"""Runs an SSD detector over an evaluation set and reports VOC / COCO metrics and files.

It is not the job of this module to build networks or pre-process images: the network object
(`SSDNet`: `anchors()`, `bboxes_decode`), the Keras model (or a SavedModel) and a
`preprocess_fn` are arguments. Boxes are `[ymin, xmin, ymax, xmax]` relative to the network
input inside the detector; they are mapped back to the ORIGINAL image (through the
pre-processing's `bbox_img`, the original image's extent in network-input coordinates), then
to VOC pixels (`relative * size`, the inverse of the VOC readers' `pixel / size`) for the
metrics (`ssd_tf.metrics`).

Pieces:
- The input is `ssd_tf.data.build_eval_dataset` (the one evaluation pipeline; it streams
  TFRecords), with `with_encoded=True` for end-to-end SavedModels and the detection grid.
- `keras_detector(model, net, ...)`, `saved_model_detector(path, net, ...)`,
  `encoded_detector(detect_bytes)` (image bytes in; the tiled detector): images ->
  detections dict (scores [B, K], bboxes [B, K, 4], classes [B, K], num_detections [B]).
- `run_evaluation(detector, dataset, class_names, ...)`: detections in original pixels,
  accumulated in a `metrics.VOCEvaluator` (difficult and crowd boxes ignored); returns an
  `EvalRun`.
- `write_report(run, eval_dir, ...)`: table, JSON, VOC and COCO results files, PR curves and a
  grid of detections (PNG, drawn with cv2).
- `watch_checkpoints(...)`: evaluates each new checkpoint of a training run.
"""
import collections
import os
import sys
import time

import cv2
import numpy as np
import tensorflow as tf

from ssd_tf import atomic_files
from ssd_tf import boxes as boxes_lib
from ssd_tf import images
from ssd_tf import metrics as metrics_lib
from ssd_tf import postprocess
from ssd_tf import run_config
from ssd_tf import visualize


# Detection defaults of the slim eval script (eval_ssd_network.py), defined in postprocess.
SELECT_THRESHOLD = postprocess.SELECT_THRESHOLD
SELECT_TOP_K = postprocess.SELECT_TOP_K
KEEP_TOP_K = postprocess.KEEP_TOP_K
NMS_THRESHOLD = postprocess.NMS_THRESHOLD
MATCHING_THRESHOLD = postprocess.MATCHING_THRESHOLD
# VOC GT boxes are integers; relative float32 boxes carry ~1e-5 pixel of rounding, removed by
# rounding the recovered pixel coordinates to this many decimals.
_GT_PIXEL_DECIMALS = 4


# ---------------------------------------------------------------------------- data


# ---------------------------------------------------------------------------- detectors
def keras_detector(model, net, select_threshold=SELECT_THRESHOLD, nms_threshold=NMS_THRESHOLD,
                   top_k=SELECT_TOP_K, keep_top_k=KEEP_TOP_K, test_time_flip=False):
    """A compiled function `images [B, h, w, 3] -> detections` for a Keras SSD model.

    The model's `localisations` are decoded on `net.anchors()` with `net.bboxes_decode`, then
    `postprocess.detected_bboxes_combined` (boxes clipped to the network input).
    Returns dict scores `[B, K]`, bboxes `[B, K, 4]` yxyx relative to the network input,
    classes `[B, K]` int32 1..C-1, num_detections `[B]` int32.
    The images must be float32 of the network's `img_shape` `(h, w)`; the batch size may
    change from call to call (the summary images' 3, the eval batches, a last partial batch):
    the function is traced once, for any batch size. test_time_flip: each image is also
    detected mirrored left-right, averaged in anchor by anchor (`postprocess.detections_of`).
    """
    anchors = net.anchors()
    h, w = (int(s) for s in net.params.img_shape)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
    def detect(images):
        return postprocess.detections_of(model, images, net, anchors, select_threshold,
                                         nms_threshold, top_k, keep_top_k, test_time_flip)
    return detect


_DETECTION_KEYS = {
    'scores': ('scores', 'detection_scores'),
    'bboxes': ('bboxes', 'boxes', 'detection_boxes'),
    'classes': ('classes', 'detection_classes'),
    'num_detections': ('num_detections',),
}


def _group_layers(outputs, name):
    """Flattened signature outputs `name`, `name_1`, .. (or `name_0`, ..) -> ordered list."""
    items = []
    for key, value in outputs.items():
        if key == name:
            items.append((0, value))
        elif key.startswith(name + '_') and key[len(name) + 1:].isdigit():
            items.append((int(key[len(name) + 1:]), value))
    return [v for _, v in sorted(items, key=lambda kv: kv[0])]


def saved_model_detector(path, net=None, select_threshold=SELECT_THRESHOLD,
                         nms_threshold=NMS_THRESHOLD, top_k=SELECT_TOP_K,
                         keep_top_k=KEEP_TOP_K, signature='serving_default'):
    """A detector from an exported SavedModel directory (with saved_model.pb).

    Uses the `signature` (default serving_default) when present, else calls the loaded object.
    - A signature taking a string tensor (`ssd_tf.export.saved_model`'s `image_bytes`) is end
      to end: it gets the encoded image files and returns boxes relative to the ORIGINAL image; the
      detector then has `input_kind = 'encoded'` (see `run_evaluation`). Such a model applies
      the thresholds it was exported with (the arguments here do not apply).
    - Otherwise it gets the pre-processed images (`input_kind = 'preprocessed'`); its outputs
      are either final detections (keys scores/detection_scores, bboxes/boxes/detection_boxes,
      classes/detection_classes, num_detections; boxes relative to the network input, classes
      1..C-1) or the raw per-layer `predictions` and `localisations` (a nested dict, or
      flattened signature keys `predictions_0`, `predictions_1`, ... as `nets.serving`
      writes), then decoded with `net` (required) and the thresholds given here.
    """
    if not os.path.isfile(os.path.join(path, 'saved_model.pb')):
        raise ValueError(f"--checkpoint_path={path} is not a SavedModel directory (no "
                         f"saved_model.pb)")
    loaded = tf.saved_model.load(path)
    sigs = getattr(loaded, 'signatures', {})
    input_kind = 'preprocessed'
    if signature in sigs:
        fn = sigs[signature]
        _, kw = fn.structured_input_signature
        if len(kw) != 1:
            raise ValueError(f"SavedModel {path}: signature {signature!r} takes inputs "
                             f"{sorted(kw)}; expected exactly one image input")
        input_name, spec = next(iter(kw.items()))
        if spec.dtype == tf.string:
            input_kind = 'encoded'

        def call(images):
            return fn(**{input_name: images})
    elif callable(loaded):
        def call(images):
            return loaded(images)
    else:
        raise ValueError(f"SavedModel {path} has no {signature!r} signature (has "
                         f"{sorted(sigs)}) and is not callable")
    anchors = net.anchors() if net is not None else None

    def detect(images):
        if input_kind == 'encoded':
            images = tf.convert_to_tensor(images, tf.string)
        else:
            images = tf.convert_to_tensor(images, tf.float32)
        out = call(images)
        if isinstance(out, dict) and any(k in out for k in _DETECTION_KEYS['num_detections']):
            return _final_detections(out, f"SavedModel {path}")
        if input_kind == 'encoded':
            raise ValueError(f"SavedModel {path}: signature {signature!r} takes image bytes "
                             f"but returns no detections ({sorted(out)})")
        if isinstance(out, dict) and isinstance(out.get('predictions'), (list, tuple)):
            preds, locs = list(out['predictions']), list(out['localisations'])
        else:
            preds, locs = _group_layers(out, 'predictions'), _group_layers(out, 'localisations')
        if not preds or len(preds) != len(locs):
            raise ValueError(f"SavedModel {path}: cannot find detections or per-layer "
                             f"predictions/localisations in its outputs {sorted(out)}")
        if net is None:
            raise ValueError(f"SavedModel {path} returns raw per-layer outputs; the network "
                             f"(--model_name) is needed to decode them")
        return postprocess.detections_from_raw(preds, locs, net, anchors, select_threshold,
                                               nms_threshold, top_k, keep_top_k)
    detect.input_kind = input_kind
    return detect


def _final_detections(out, what):
    """Final detections under any of `_DETECTION_KEYS`' names -> the detections dict."""
    res = {}
    for key, names in _DETECTION_KEYS.items():
        name = next((n for n in names if n in out), None)
        if name is None:
            raise ValueError(f"{what}: outputs {sorted(out)} lack {key}")
        res[key] = out[name]
    res['classes'] = tf.cast(tf.round(res['classes']), tf.int32)
    res['num_detections'] = tf.cast(tf.round(res['num_detections']), tf.int32)
    return res


def encoded_detector(detect_bytes, what='the detector'):
    """An end-to-end detector (`input_kind = 'encoded'`, see `run_evaluation`) from a function
    `image bytes string [B] -> final detections` (the serving signature's outputs, e.g.
    `ssd_tf.export.saved_model.DetectionModule(...).detect_bytes`, with tiles or without):
    boxes relative to the ORIGINAL image."""
    def detect(images):
        return _final_detections(detect_bytes(tf.convert_to_tensor(images, tf.string)), what)
    detect.input_kind = 'encoded'
    return detect


# ---------------------------------------------------------------------------- evaluation
EvalRun = collections.namedtuple('EvalRun', [
    'evaluator',        # metrics.VOCEvaluator with GT and detections in original pixels
    'num_images',       # images evaluated
    'seconds',          # wall time of the detection loop (data + model + NMS)
    'detect_seconds',   # time inside the detector only
    'detections',       # dict image index -> (boxes [K,4] relative to original, scores, classes)
    'samples',          # dict image index -> (encoded bytes, GT boxes [N,4] relative, labels
                        # [N]) of the first images, for the detection grid (may be empty)
], defaults=(None,))


def to_original_relative(boxes, bbox_img):
    """Boxes `[K, 4]` relative to the network input -> relative to the original image.

    bbox_img `[4]`: the original image's extent in network-input coordinates. The result is
    clipped to [0, 1] (padding added by the pre-processing is not image).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    bbox_img = np.asarray(bbox_img, np.float64)
    return boxes_lib.clip_boxes(boxes_lib.reframe(boxes, bbox_img)).numpy()


def _batch_numpy(batch):
    """A batch of `ssd_tf.data.build_eval_dataset` `(images, targets)` -> a dict of numpy
    arrays (the images stay a tensor): image, bbox_img, image_id, height, width, boxes,
    labels, difficult, is_crowd and, when carried, encoded."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], dict)):
        raise ValueError("run_evaluation takes batches of ssd_tf.data.build_eval_dataset "
                         "((images, targets) pairs)")
    images, t = batch
    missing = sorted({'bboxes', 'bbox_img', 'image_id', 'height', 'width', 'labels',
                      'difficult', 'is_crowd'} - set(t))
    if missing:
        raise ValueError(f"evaluation batches lack {missing}: build them with "
                         f"ssd_tf.data.build_eval_dataset")
    out = {k: v.numpy() for k, v in t.items()}
    out.update(image=images, boxes=out.pop('bboxes'))
    return out


def _detect(detector, batch, end_to_end):
    """Runs the detector on a batch; returns numpy detections (boxes relative to the network
    input, or to the original image for an end-to-end model, then bbox_img is set to
    [0, 0, 1, 1] in `batch`)."""
    if not end_to_end:
        return {k: np.asarray(v) for k, v in detector(batch['image']).items()}
    if 'encoded' not in batch:
        raise ValueError("an end-to-end SavedModel (image bytes in) needs batches with the "
                         "encoded images: build_eval_dataset(..., with_encoded=True)")
    det = detector(batch['encoded'])
    batch['bbox_img'] = np.tile([[0., 0., 1., 1.]], (len(batch['encoded']), 1))
    return {k: np.asarray(v) for k, v in det.items()}


def _add_batch(ev, batch, det, remove_difficult):
    """Adds every image of a batch to the VOCEvaluator in original pixels; yields
    `(position in the batch, (boxes relative to the original, scores, classes))`."""
    for i in range(len(batch['image_id'])):
        h, w = int(batch['height'][i]), int(batch['width'][i])
        scale = np.array([h, w, h, w], np.float64)
        real = batch['labels'][i] > 0
        gt_boxes = np.round(batch['boxes'][i][real].astype(np.float64) * scale,
                            _GT_PIXEL_DECIMALS)
        difficult = batch['difficult'][i][real].astype(bool)
        if not remove_difficult:
            difficult = np.zeros_like(difficult)
        n = int(det['num_detections'][i])
        boxes = to_original_relative(det['bboxes'][i][:n], batch['bbox_img'][i])
        scores = det['scores'][i][:n].astype(np.float64)
        classes = det['classes'][i][:n].astype(np.int64)
        image_id = batch['image_id'][i]
        image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
        ev.add_image(image_id, gt_boxes, batch['labels'][i][real], difficult,
                     boxes * scale, scores, classes, image_shape=(h, w), relative=False,
                     gt_is_crowd=batch['is_crowd'][i][real].astype(bool))
        yield i, (boxes, scores, classes)


def run_evaluation(detector, dataset, num_classes, class_names=None, max_num_batches=None,
                   remove_difficult=True, matching_threshold=MATCHING_THRESHOLD,
                   use_07_metric=False, num_sample_images=0, category_ids=None):
    """Runs `detector` over `dataset` and accumulates VOC metrics in original pixels.

    dataset: batches of `ssd_tf.data.build_eval_dataset` (its `bbox_img` maps detections back
      to the original image, so every resize mode of the eval pre-processing works).
    detector: images -> detections dict; one with `input_kind == 'encoded'` (an end-to-end
      SavedModel) gets the batch's encoded image files (`with_encoded=True`) and returns boxes
      relative to the original image.
    remove_difficult: True applies the VOC rule (difficult objects are neither TP nor FP and
      not counted); False treats difficult objects as ordinary ground truth. Crowd boxes
      (`is_crowd`) are always ignored that way.
    num_sample_images: keep the encoded file and ground truth of the first images (batches
      carrying `encoded`) in `EvalRun.samples`, for `draw_detection_grid`.
    category_ids: the data set's id of each label 1..C-1 when its label map has gaps
      (`LabelMap.label_ids`): the COCO json files report those ids.
    A ground-truth label >= num_classes is an error naming --num_classes. Returns an
    `EvalRun`; its `detections` are keyed by the image's position in the data set.
    """
    ev = metrics_lib.VOCEvaluator(num_classes, class_names, ovthresh=matching_threshold,
                                  use_07_metric=use_07_metric, category_ids=category_ids)
    kept, samples = {}, {}
    detect_seconds = 0.
    end_to_end = getattr(detector, 'input_kind', 'preprocessed') == 'encoded'
    start = time.perf_counter()
    for step, batch in enumerate(dataset):
        if max_num_batches is not None and step >= max_num_batches:
            break
        batch = _batch_numpy(batch)
        t0 = time.perf_counter()
        det = _detect(detector, batch, end_to_end)
        detect_seconds += time.perf_counter() - t0
        max_label = int(np.max(batch['labels'], initial=0))
        if max_label >= num_classes:
            raise ValueError(f"the data set has label {max_label} but --num_classes="
                             f"{num_classes}; set --num_classes to the data set's number of "
                             f"classes + 1 (background)")
        for i, found in _add_batch(ev, batch, det, remove_difficult):
            if len(kept) < num_sample_images and 'encoded' in batch:
                real = batch['labels'][i] > 0
                samples[len(kept)] = (bytes(batch['encoded'][i]), batch['boxes'][i][real],
                                      batch['labels'][i][real])
            kept[len(kept)] = found
    if not kept:
        raise ValueError("no image was evaluated (empty data set or --max_num_batches=0)")
    return EvalRun(ev, len(kept), time.perf_counter() - start, detect_seconds, kept, samples)


# ---------------------------------------------------------------------------- reporting
def compute_metrics(run, coco=False):
    """Metrics of an EvalRun: dict with voc07/voc12 (`map`, `ap` per class), per-class
    `npos`, `num_detections`, optional `coco` (see `metrics.coco_metrics`), timing."""
    res = run.evaluator.evaluate()
    out = dict(
        num_images=run.num_images,
        voc07=dict(map=res['map07'], ap=res['ap07']),
        voc12=dict(map=res['map12'], ap=res['ap12']),
        npos={k: v['npos'] for k, v in res['per_class'].items()},
        num_detections={k: v['num_detections'] for k, v in res['per_class'].items()},
        images_per_second=run.num_images / max(run.seconds, 1e-9),
    )
    by_size = size_metrics(run.evaluator)
    if by_size is not None:
        out['by_size'] = by_size
    if coco:
        out['coco'] = metrics_lib.coco_metrics(run.evaluator.coco_ground_truth(),
                                               run.evaluator.coco_detections())
    out['_per_class'] = res['per_class']
    return out


# The ground-truth boxes a class needs in a size bucket to enter the bucket's mean AP: the AP
# of a class with one box there is 0 or 1 (on the small-object dev set, the test split's one
# raccoon under 2 % of the side moved that bucket's mean between 0.23 and 0.57 from seed to
# seed). Its per-class AP and count stay in the report.
MIN_BUCKET_POSITIVES = 10


def size_metrics(evaluator, min_positives=MIN_BUCKET_POSITIVES):
    """AP (VOC07, VOC12) and recall per object-size bucket of the coverage report
    (`boxes_lib.SIZE_NAMES`: sqrt of the box area over the image's), buckets without
    ground truth left out; rules in `metrics.size_bucket_results` (a matched detection counts
    in its ground truth's bucket, an unmatched one in its own; the mean AP is over the classes
    with at least `min_positives` boxes in the bucket, nan if none; the recall counts every
    box). Per bucket: npos, num_detections, recall, map07, map12, ap07/ap12 and class_npos
    per class, left_out (the classes under `min_positives`). None without image sizes."""
    res = evaluator.evaluate_by_size(boxes_lib.SIZE_EDGES, boxes_lib.SIZE_NAMES, min_positives)
    if res is None:
        return None
    keys = ('npos', 'num_detections', 'recall', 'map07', 'map12', 'ap07', 'ap12',
            'class_npos', 'left_out')
    return {name: {k: v[k] for k in keys} for name, v in res.items() if v['npos']}


def format_size_table(by_size, min_positives=MIN_BUCKET_POSITIVES):
    """The per-size table: bucket, npos, detections counted in it, mAP VOC07 and VOC12 over
    the classes with at least `min_positives` boxes there, and recall; then a line naming
    the classes left out of a bucket's mean, with their boxes (none when no class is)."""
    lines = [f"{'box side':<9}  {'npos':>5}  {'dets':>6}  {'AP07':>6}  {'AP12':>6}  "
             f"{'recall':>6}", '-' * 46]
    for name, v in by_size.items():
        lines.append(f"{name:<9}  {v['npos']:>5d}  {v['num_detections']:>6d}  "
                     f"{_fmt(v['map07'])}  {_fmt(v['map12'])}  {_fmt(v['recall'])}")
    left = [f"{name} " + ', '.join(f"{c} ({v['class_npos'][c]})" for c in v['left_out'])
            for name, v in by_size.items() if v.get('left_out')]
    if left:
        lines.append(f'AP over the classes with >= {min_positives} boxes in the bucket '
                     f'(nan: none has); left out: ' + '; '.join(left))
    return '\n'.join(lines)


def _fmt(v):
    return '   nan' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{v:6.4f}'


def format_table(m):
    """A per-class text table (npos, detections, AP VOC07, AP VOC12), mAP and COCO lines."""
    names = list(m['voc12']['ap'])
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  {'npos':>5}  {'dets':>6}  {'AP07':>6}  {'AP12':>6}",
             '-' * (width + 33)]
    for n in names:
        lines.append(f"{n:<{width}}  {m['npos'][n]:>5d}  {m['num_detections'][n]:>6d}  "
                     f"{_fmt(m['voc07']['ap'][n])}  {_fmt(m['voc12']['ap'][n])}")
    lines.append('-' * (width + 33))
    lines.append(f"{'mAP':<{width}}  {sum(m['npos'].values()):>5d}  "
                 f"{sum(m['num_detections'].values()):>6d}  {_fmt(m['voc07']['map'])}  "
                 f"{_fmt(m['voc12']['map'])}")
    if m.get('by_size'):
        lines.append('')
        lines.append('by object size (box side sqrt(h*w) as % of the image side; a matched '
                     'detection counts in its ground truth\'s bucket, an unmatched one in '
                     'its own):')
        lines.append(format_size_table(m['by_size']))
    if 'coco' in m:
        c = m['coco']
        lines.append('COCO: ' + '  '.join(f'{k}={c[k]:.4f}' for k in metrics_lib.COCO_METRIC_NAMES))
    lines.append(f"{m['num_images']} images, {m['images_per_second']:.2f} images/s")
    return '\n'.join(lines)


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items() if not str(k).startswith('_')}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def draw_pr_curves(m, path, panel=240, columns=4):
    """Precision-recall curve per class as a grid of panels (cv2), written to `path` (PNG)."""
    per_class = m['_per_class']
    names = list(per_class)
    rows = max(1, int(np.ceil(len(names) / columns)))
    cols = min(columns, max(1, len(names)))
    canvas = np.full((rows * panel, cols * panel, 3), 255, np.uint8)
    margin = 30
    for k, name in enumerate(names):
        oy, ox = (k // cols) * panel, (k % cols) * panel
        x0, y0 = ox + margin, oy + panel - margin
        size = panel - 2 * margin + 10
        cv2.rectangle(canvas, (x0, y0 - size), (x0 + size, y0), (0, 0, 0), 1)
        # grid lines at precision 0.5 and recall 0.5
        cv2.line(canvas, (x0, int(y0 - 0.5 * size)), (x0 + size, int(y0 - 0.5 * size)),
                 (220, 220, 220), 1)
        cv2.line(canvas, (int(x0 + 0.5 * size), y0), (int(x0 + 0.5 * size), y0 - size),
                 (220, 220, 220), 1)
        rec = per_class[name]['recall']
        prec = per_class[name]['precision']
        if len(rec):
            # the curve as a step plot of the precision envelope's input, point by point
            pts = np.stack([x0 + np.concatenate([[0.], rec]) * size,
                            y0 - np.concatenate([[prec[0]], prec]) * size], -1)
            cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False,
                          visualize.class_color(k + 1), 2, cv2.LINE_AA)
        ap = m['voc12']['ap'][name]
        cv2.putText(canvas, f"{name[:14]} AP(VOC12)={_fmt(ap).strip()}", (ox + 5, oy + 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, 'recall', (x0 + size // 2 - 20, y0 + 22), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (80, 80, 80), 1, cv2.LINE_AA)
        cv2.putText(canvas, 'P', (ox + 8, y0 - size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (80, 80, 80), 1, cv2.LINE_AA)
    _write_png(path, canvas)
    return path


def _write_png(path, rgb):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    visualize.save_png(path, rgb)


def _grid_samples(run, records, num_images):
    """`(index, image uint8 [H, W, 3], GT boxes [N, 4] relative, GT labels [N])` of the first
    `num_images` evaluated images: from `run.samples` (kept from the stream), else re-read by
    index from `records` (a Record list); images found in neither are left out."""
    out = []
    for idx in sorted(run.detections)[:num_images]:
        if run.samples and idx in run.samples:
            encoded, boxes, labels = run.samples[idx]
            image = images.decode_image(encoded, where=f'evaluated image {idx}').numpy()
        elif records is not None:
            boxes, labels = records[idx].boxes, records[idx].labels
            image = images.decode_record_image(records[idx])
        else:
            continue
        out.append((idx, image, np.asarray(boxes).reshape(-1, 4),
                    np.asarray(labels).reshape(-1)))
    return out


def draw_detection_grid(run, records, class_names, path, num_images=8, score_threshold=0.3,
                        max_boxes=20, tile=300, columns=2):
    """PNG grid of the first `num_images` evaluated images, each as a pair: ground truth
    (left) and the best `max_boxes` detections with score >= score_threshold (right), drawn
    with `ssd_tf.visualize`. Images come from `run.samples`, else from `records` (the
    evaluated Record list, or None). Returns the path, or None when there is no image."""
    samples = _grid_samples(run, records, num_images)
    if not samples:
        return None
    names = ['none'] + list(class_names)
    pairs = []
    for idx, image, gt_boxes, gt_labels in samples:
        scale = tile / max(image.shape[:2])
        image = cv2.resize(image, (max(1, int(round(image.shape[1] * scale))),
                                   max(1, int(round(image.shape[0] * scale)))),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        boxes, scores, classes = run.detections[idx]
        keep = np.nonzero(scores >= score_threshold)[0][:max_boxes]  # scores are sorted
        gt = visualize.draw_boxes(image, gt_boxes, gt_labels, label_names=names)
        det = visualize.draw_boxes(image, boxes[keep], classes[keep], scores=scores[keep],
                                   label_names=names)
        pairs.append(np.concatenate([gt, np.full((gt.shape[0], 4, 3), 255, np.uint8), det],
                                    axis=1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    visualize.save_png(path, visualize.make_grid(pairs, columns, pad=6))
    return path


def write_report(run, eval_dir, split='test', coco=False, step=None, records=None,
                 num_sample_images=8, extra=None):
    """Writes the evaluation outputs to `eval_dir` and returns `(metrics dict, paths dict)`.

    Files: `metrics.json` (numbers; null for undefined APs), `metrics.txt` (the table),
    `results/comp4_det_<split>_<class>.txt` (VOC results), `coco_detections.json` (COCO
    results; image ids are positions in `coco_groundtruth.json`, also written),
    `pr_curves.png`, and `detections.png` (`num_sample_images` images from `run.samples`,
    else re-read from `records`, the evaluated Record list, when given).
    The files are written as one set (`atomic_files.staged`): an evaluation that fails or is
    killed while writing them leaves the previous report whole, never half of each.
    """
    m = compute_metrics(run, coco=coco)
    if step is not None:
        m['step'] = int(step)
    if extra:
        m.update(extra)
    table = format_table(m)
    paths = {}
    # One report: every file is written to a staging directory, then all are moved into
    # eval_dir, metrics.json last (atomic_files.staged); a failure part-way keeps the last
    # report whole instead of mixing two evaluations.
    with atomic_files.staged(eval_dir, last=['metrics.json']) as tmp:
        paths['voc_results'] = run.evaluator.write_voc_results(os.path.join(tmp, 'results'),
                                                               split=split)
        paths['coco_results'] = run.evaluator.write_coco_results(
            os.path.join(tmp, 'coco_detections.json'))
        paths['coco_groundtruth'] = atomic_files.write_json(
            os.path.join(tmp, 'coco_groundtruth.json'), run.evaluator.coco_ground_truth())
        paths['pr_curves'] = draw_pr_curves(m, os.path.join(tmp, 'pr_curves.png'))
        if num_sample_images > 0 and (run.samples or records is not None):
            paths['detections'] = draw_detection_grid(
                run, records, run.evaluator.class_names, os.path.join(tmp, 'detections.png'),
                num_images=num_sample_images)
        paths['table'] = atomic_files.write_text(os.path.join(tmp, 'metrics.txt'), table + '\n')
        paths['json'] = atomic_files.write_json(os.path.join(tmp, 'metrics.json'), _json_safe(m),
                                                indent=2, sort_keys=True)

    def moved(path):  # where a staged file now is
        return None if path is None else os.path.join(eval_dir, os.path.relpath(path, tmp))
    paths = {k: {c: moved(f) for c, f in v.items()} if isinstance(v, dict) else moved(v)
             for k, v in paths.items()}
    m['table'] = table
    return m, paths


def _scalar_metadata():
    """Summary metadata of a TensorBoard scalar, built without the tensorboard package (which
    `tf.summary.scalar` needs and which is not a dependency)."""
    from tensorflow.core.framework import summary_pb2
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = 'scalars'
    return meta


def write_summaries(summary_dir, m, step):
    """TensorBoard scalars of one evaluation: mAP VOC07/VOC12, AP per class (VOC07), COCO.

    Undefined values (nan: a class without ground truth) are written as 0.
    """
    values = {'eval/mAP_VOC07': m['voc07']['map'], 'eval/mAP_VOC12': m['voc12']['map']}
    values.update({f'eval/AP_VOC07/{n}': ap for n, ap in m['voc07']['ap'].items()})
    values.update({f'eval/COCO/{k}': v for k, v in m.get('coco', {}).items()})
    writer = tf.summary.create_file_writer(summary_dir)
    meta = _scalar_metadata()
    with writer.as_default():
        for tag, value in values.items():
            tf.summary.write(tag, tf.constant(float(np.nan_to_num(value)), tf.float32),
                             step=int(step), metadata=meta)
    writer.flush()
    writer.close()


def watch_checkpoints(checkpoint_dir, evaluate_fn, timeout=None, min_interval_secs=0,
                      max_evaluations=None):
    """Calls `evaluate_fn(checkpoint_path)` for each new checkpoint in `checkpoint_dir`.

    A new checkpoint that is damaged (`run_config.find_intact_checkpoint`: a missing or cut
    file, a tensor that fails its checksum) is not evaluated: a WARNING on stderr names it and
    the reason, the newest intact checkpoint is evaluated instead when it has not been yet (as
    a single evaluation of the directory would), and the watch goes on; nothing is deleted.
    Stops after `timeout` seconds without a new checkpoint (None waits forever) or after
    `max_evaluations`. Returns the list of evaluate_fn results.
    """
    results, evaluated = [], set()
    for path in tf.train.checkpoints_iterator(checkpoint_dir, min_interval_secs=min_interval_secs,
                                              timeout=timeout):
        # the newest intact checkpoint (each read once while its files stay the same); newer
        # damaged ones are named on stderr by run_config and skipped
        path, _ = run_config.find_intact_checkpoint(checkpoint_dir)
        if path is None or path in evaluated:
            continue
        evaluated.add(path)
        results.append(evaluate_fn(path))
        if max_evaluations is not None and len(results) >= max_evaluations:
            break
    return results


# ---------------------------------------------------------------------------- which data
def tfrecord_eval_source(config, split):
    """The `--dataset_dir` that evaluates `split` of a TFRecord run (`config`, its RunConfig):
    the shards of `split` beside the training shards (`tfrecord.split_pattern`), else the
    training pattern itself (`warn_if_training_split` then says so)."""
    from ssd_tf.datasets import tfrecord as tfrecord_lib
    return tfrecord_lib.split_pattern(config.dataset_dir, config.dataset_split_name, split) \
        or config.dataset_dir


def warn_if_training_split(config, dataset_name, dataset_dir, split, stream=None):
    """Writes a WARNING (stderr) when the data about to be evaluated is the run's training
    data: the run's TFRecord shards (whatever the split flag says: the shards are the data),
    or the run's data set and training split. Returns whether it warned."""
    if not config or dataset_name != config.dataset_name or \
            os.fspath(dataset_dir or '') != os.fspath(config.dataset_dir or ''):
        return False
    if dataset_name != 'tfrecord' and split != config.dataset_split_name:
        return False
    what = (f"the run's training shards --dataset_dir={dataset_dir} (no shards of split "
            f"{split!r} were found beside them)" if dataset_name == 'tfrecord' else
            f"the run's training split {split!r} of {dataset_name} {dataset_dir or ''}")
    print(f"WARNING: evaluating {what}: the mAP measures the fit to the training data, not "
          f"how the model generalises; pass --dataset_dir (and --dataset_split_name) of "
          f"held-out data", file=stream or sys.stderr)
    return True

