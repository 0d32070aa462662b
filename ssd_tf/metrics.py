"""Detection metrics: PASCAL VOC average precision and COCO metrics (through pycocotools).

Pure numpy/python; nothing here knows about networks. Inside, boxes are `[ymin, xmin, ymax,
xmax]` in PIXELS (VOC coordinates: 1-based inclusive pixel indices, as written in the VOC
XML files), because the VOC rules below measure areas with the "+1" pixel convention. VOC
results files and COCO JSON use their own orders (`xmin ymin xmax ymax`, `[x, y, w, h]`);
conversion happens only where those files are read or written.

VOC rules (those of the widely used py-faster-rcnn `voc_eval`, from which published SSD
numbers come), shared by the file-based `voc_eval` and the in-memory `VOCEvaluator` through one
core (`_match_detections`), so the two cannot disagree:
- detections of a class are sorted by descending score (stable: ties keep input order);
- each is compared with the ground truth of its image and class; IoU uses the +1 convention
  (a box xmin..xmax covers `xmax - xmin + 1` pixels);
- the best-overlapping GT box is matched when IoU > ovthresh (strictly greater);
  if that box is `difficult` the detection is neither TP nor FP; if it was already matched the
  detection is a FP (no fall-back to the second best box); otherwise TP;
- a detection whose best IoU is <= ovthresh, or on an image without GT of its class, is FP;
- npos counts the non-difficult GT boxes.
- COCO crowd boxes (`iscrowd`) are treated exactly like difficult ones: VOC-style AP on COCO
  data then ignores crowd regions, as pycocotools does for the COCO metrics.
- A class with npos == 0 has an undefined AP (nan) and is left out of the mAP.
"""
import contextlib
import io
import json
import os
import numpy as np

from ssd_tf import atomic_files
from ssd_tf.datasets import voc as voc_lib

# The 11 recall thresholds of the VOC2007 metric exactly as py-faster-rcnn computes them
# (np.arange, so 0.30000000000000004, 0.6000000000000001, 0.7000000000000001): kept bit for
# bit so that published VOC07 numbers are reproduced; a recall of exactly 3/10 does not reach
# the third threshold.
VOC07_RECALL_THRESHOLDS = np.arange(0., 1.1, 0.1)

# Keys of the dict returned by `coco_metrics`, in the order of pycocotools' `stats`.
COCO_METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
                     'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


# ---------------------------------------------------------------------------- AP from PR
def average_precision_voc07(precision, recall):
    """VOC2007 11-point AP: mean over t in {0, 0.1, .., 1} of max precision at recall >= t.

    precision, recall: `[D]` arrays (cumulative, one entry per ranked detection). A threshold
    no recall reaches contributes 0. Empty inputs give 0.
    """
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    if precision.shape != recall.shape:
        raise ValueError(f"precision and recall must have the same length, got "
                         f"{precision.shape} and {recall.shape}")
    ap = 0.
    for t in VOC07_RECALL_THRESHOLDS:
        reached = recall >= t
        ap += (np.max(precision[reached]) if np.any(reached) else 0.) / 11.
    return float(ap)


def average_precision_voc12(precision, recall):
    """VOC2010+ AP: area under the monotone (non-increasing) precision envelope.

    Sentinels: recall 0 and 1 are added at both ends with precision 0; the envelope at each
    recall is the max precision at any higher-or-equal recall; the area sums rectangles where
    the recall changes. precision, recall: `[D]` arrays. Empty inputs give 0.
    """
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    if precision.shape != recall.shape:
        raise ValueError(f"precision and recall must have the same length, got "
                         f"{precision.shape} and {recall.shape}")
    mrec = np.concatenate([[0.], recall, [1.]])
    mpre = np.concatenate([[0.], precision, [0.]])
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]  # max precision to the right
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


def average_precision(precision, recall, use_07_metric=False):
    """`average_precision_voc07` if use_07_metric else `average_precision_voc12`."""
    if use_07_metric:
        return average_precision_voc07(precision, recall)
    return average_precision_voc12(precision, recall)


# ---------------------------------------------------------------------------- the VOC core
def iou_voc_pixels(box, boxes):
    """IoU of one pixel box `[4]` with pixel boxes `[N, 4]` (yxyx) -> `[N]`, +1 convention.

    Coordinates are inclusive pixel indices: a box covers `(ymax-ymin+1) * (xmax-xmin+1)`
    pixels, so two identical 1-pixel boxes (ymin == ymax) have IoU 1.
    """
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ih = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1., 0.)
    iw = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1., 0.)
    inter = ih * iw
    union = ((box[2] - box[0] + 1.) * (box[3] - box[1] + 1.)
             + (boxes[:, 2] - boxes[:, 0] + 1.) * (boxes[:, 3] - boxes[:, 1] + 1.) - inter)
    return inter / union


def _match_detections(gt_by_image, det_image_ids, det_scores, det_boxes, ovthresh=0.5):
    """The VOC matching of one class (rules in the module docstring).

    gt_by_image: dict image_id -> (boxes `[N, 4]` yxyx pixels, difficult `[N]` bool) for every
      image of the evaluated set (N may be 0).
    det_image_ids: `[D]` image ids; det_scores `[D]`; det_boxes `[D, 4]` yxyx pixels.
    Returns `(tp [D], fp [D], scores [D], npos)`, tp/fp as 0/1 floats in descending-score order.
    """
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    if len(det_image_ids) != det_scores.shape[0] or det_boxes.shape[0] != det_scores.shape[0]:
        raise ValueError(f"{len(det_image_ids)} image ids, {det_scores.shape[0]} scores and "
                         f"{det_boxes.shape[0]} boxes: detections must be aligned")
    npos = 0
    matched = {}
    for image_id, (boxes, difficult) in gt_by_image.items():
        npos += int(np.sum(~np.asarray(difficult, dtype=bool)))
        matched[image_id] = np.zeros(len(difficult), dtype=bool)
    order = np.argsort(-det_scores, kind='stable')
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, d in enumerate(order):
        image_id = det_image_ids[d]
        if image_id not in gt_by_image:
            raise ValueError(f"detection on image {image_id!r}, which is not in the evaluated "
                             f"image set; evaluate only images of the set")
        gt_boxes, difficult = gt_by_image[image_id]
        if len(difficult) == 0:
            fp[rank] = 1.
            continue
        overlaps = iou_voc_pixels(det_boxes[d], gt_boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] > ovthresh:
            if difficult[best]:
                continue  # neither TP nor FP
            if matched[image_id][best]:
                fp[rank] = 1.
            else:
                tp[rank] = 1.
                matched[image_id][best] = True
        else:
            fp[rank] = 1.
    return tp, fp, det_scores[order], npos


def _precision_recall(tp, fp, npos):
    """Cumulative recall and precision `[D]` from ranked tp/fp flags; recall 0 if npos == 0."""
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    recall = tp / npos if npos > 0 else np.zeros_like(tp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def _class_result(gt_by_image, det_image_ids, det_scores, det_boxes, ovthresh):
    """Runs the core for one class; returns dict recall, precision, ap07, ap12, npos, ndet."""
    tp, fp, _, npos = _match_detections(gt_by_image, det_image_ids, det_scores, det_boxes,
                                        ovthresh)
    recall, precision = _precision_recall(tp, fp, npos)
    if npos == 0:
        ap07 = ap12 = float('nan')
    else:
        ap07 = average_precision_voc07(precision, recall)
        ap12 = average_precision_voc12(precision, recall)
    return dict(recall=recall, precision=precision, ap07=ap07, ap12=ap12, npos=npos,
                num_detections=int(len(tp)), tp=int(tp.sum()), fp=int(fp.sum()))


# ---------------------------------------------------------------------------- VOC files
def parse_voc_xml(path):
    """Reads a VOC annotation file through the one VOC parser, `datasets.voc.read_annotation`.

    Returns a dict: `filename`, `height`, `width` (None when `<size>` is absent) and `objects`,
    a list of dicts `name`, `bbox` (`[ymin, xmin, ymax, xmax]` pixels, float), `difficult`,
    `truncated` (bool, read from the element text; absent -> False) and `pose` (absent ->
    'Unspecified'). A bad file is a ValueError naming it.
    """
    try:
        ann = voc_lib.read_annotation(path)
    except voc_lib.AnnotationError as e:
        raise ValueError(f"cannot read VOC annotation {path}: {e}") from e
    height, width = ann['size'] or (None, None)
    objects = [dict(name=o['name'], bbox=o['bbox'], difficult=bool(o['difficult']),
                    truncated=bool(o['truncated']), pose=o['pose']) for o in ann['objects']]
    return dict(filename=ann['filename'], height=height, width=width, objects=objects)


def read_image_set(imagesetfile):
    """Image ids of a VOC ImageSets file, one per line (blank lines skipped)."""
    try:
        return voc_lib.read_id_list(imagesetfile)
    except OSError as e:
        raise ValueError(f"cannot read image set file {imagesetfile}: {e}") from e


def read_voc_results(path):
    """Reads a VOC results file (`image_id score xmin ymin xmax ymax` per line, pixels).

    Returns `(image_ids list[D], scores [D], boxes [D, 4] yxyx pixels)`. A missing file is an
    error naming it.
    """
    image_ids, scores, boxes = [], [], []
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        raise ValueError(f"cannot read VOC results file {path}: {e}") from e
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise ValueError(f"{path}:{n}: expected 'image_id score xmin ymin xmax ymax', "
                             f"got {line.strip()!r}")
        image_ids.append(parts[0])
        scores.append(float(parts[1]))
        xmin, ymin, xmax, ymax = (float(v) for v in parts[2:])
        boxes.append([ymin, xmin, ymax, xmax])
    return (image_ids, np.asarray(scores, dtype=np.float64),
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def voc_eval(detpath, annopath, imagesetfile, classname, ovthresh=0.5, use_07_metric=False):
    """VOC evaluation of one class from files, with the py-faster-rcnn rules (no cache).

    detpath: results file pattern, `detpath.format(classname)`, lines
      `image_id score xmin ymin xmax ymax` in pixels.
    annopath: annotation pattern, `annopath.format(image_id)`, VOC XML.
    imagesetfile: text file with one image id per line.
    Returns `(recall [D], precision [D], ap)`; ap is nan when the class has no non-difficult
    ground truth in the set.
    """
    gt_by_image = {}
    for image_id in read_image_set(imagesetfile):
        objects = [o for o in parse_voc_xml(annopath.format(image_id))['objects']
                   if o['name'] == classname]
        gt_by_image[image_id] = (
            np.asarray([o['bbox'] for o in objects], dtype=np.float64).reshape(-1, 4),
            np.asarray([o['difficult'] for o in objects], dtype=bool))
    image_ids, scores, boxes = read_voc_results(detpath.format(classname))
    res = _class_result(gt_by_image, image_ids, scores, boxes, ovthresh)
    return res['recall'], res['precision'], res['ap07'] if use_07_metric else res['ap12']


# ---------------------------------------------------------------------------- in memory
def _as_array(x, dtype, shape_tail=()):
    a = np.asarray(x if x is not None else [], dtype=dtype)
    return a.reshape((-1,) + shape_tail)


def _check_class_names(num_classes, class_names):
    """The names of labels 1..num_classes-1 (default 'class_<id>'); ValueError if they do not
    fit num_classes."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + objects), got "
                         f"{num_classes}")
    if class_names is None:
        class_names = [f'class_{i}' for i in range(1, num_classes)]
    class_names = list(class_names)
    if len(class_names) != num_classes - 1:
        raise ValueError(f"class_names must name labels 1..{num_classes - 1} "
                         f"({num_classes - 1} names), got {len(class_names)}")
    return class_names


def _image_entry(image_id, num_classes, gt, det, image_shape, relative):
    """Checked numpy arrays of one image for `VOCEvaluator.add_image`.

    gt: (boxes, labels, difficult, is_crowd); det: (boxes, scores, classes), as add_image
    takes them. Returns `(gt (boxes [N,4] pixels, labels [N], ignored [N] bool), det (boxes
    [K,4] pixels, scores [K], classes [K]), shape (h, w) or None)`; `ignored` is difficult OR
    crowd: the VOC rule ignores both (neither TP nor FP, not in npos).
    """
    gt_boxes, gt_labels = _as_array(gt[0], np.float64, (4,)), _as_array(gt[1], np.int64)
    flags = [np.zeros(len(gt_labels), bool) if f is None else _as_array(f, bool)
             for f in gt[2:]]
    det_boxes, det_scores, det_classes = (_as_array(det[0], np.float64, (4,)),
                                          _as_array(det[1], np.float64),
                                          _as_array(det[2], np.int64))
    if not (len(gt_boxes) == len(gt_labels) == len(flags[0]) == len(flags[1])):
        raise ValueError(f"image {image_id!r}: {len(gt_boxes)} gt boxes, {len(gt_labels)} "
                         f"labels, {len(flags[0])} difficult and {len(flags[1])} crowd flags")
    if not (len(det_boxes) == len(det_scores) == len(det_classes)):
        raise ValueError(f"image {image_id!r}: {len(det_boxes)} detected boxes, "
                         f"{len(det_scores)} scores, {len(det_classes)} classes")
    for what, labels in (('ground-truth label', gt_labels), ('detection class', det_classes)):
        bad = labels[(labels < 1) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(f"image {image_id!r}: {what} {int(bad[0])} outside "
                             f"1..{num_classes - 1} (num_classes={num_classes})")
    if relative is None:
        relative = image_shape is not None
    if relative and image_shape is None:
        raise ValueError(f"image {image_id!r}: relative boxes need image_shape")
    shape = None
    if image_shape is not None:
        h, w = (float(v) for v in image_shape[:2])
        shape = (int(h), int(w))
        if relative:
            scale = np.array([h, w, h, w])
            gt_boxes, det_boxes = gt_boxes * scale, det_boxes * scale
    return ((gt_boxes, gt_labels, flags[0] | flags[1]), (det_boxes, det_scores, det_classes),
            shape)


def _gather_class(image_ids, gt, det, label):
    """The matching core's inputs for one label: `(gt_by_image, ids [D], scores [D], boxes
    [D, 4])`, detections in image order. gt, det: image_id -> the `_image_entry` tuples."""
    gt_by_image, ids, scores, boxes = {}, [], [], []
    for image_id in image_ids:
        g_boxes, g_labels, g_ignored = gt[image_id]
        gt_by_image[image_id] = (g_boxes[g_labels == label], g_ignored[g_labels == label])
        d_boxes, d_scores, d_classes = det[image_id]
        sel = d_classes == label
        ids.extend([image_id] * int(sel.sum()))
        scores.append(d_scores[sel])
        boxes.append(d_boxes[sel])
    scores = np.concatenate(scores) if scores else np.zeros(0)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    return gt_by_image, ids, scores, boxes


def relative_sides(boxes, image_shape):
    """Size of pixel boxes `[N, 4]` yxyx relative to their image `(height, width)`:
    sqrt(h * w / (height * width)) (h, w without VOC's +1), the measure of the coverage
    report's size buckets."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return np.sqrt(area / (float(image_shape[0]) * float(image_shape[1])))


def size_bucket_results(image_ids, gt, det, image_shapes, num_labels, edges, names,
                        ovthresh=0.5, min_positives=1):
    """AP and recall per object-size bucket, with COCO's rule for area ranges applied to the
    VOC matching.

    A box's size is `relative_sides` (sqrt of its area over the image's); bucket i holds the
    sizes in `[edges[i-1], edges[i])` (`names[i]`; the first bucket has no lower edge, the last
    no upper one). For bucket b and each class:
    - ground truth outside b is ignored, as difficult ground truth is (not in npos; a
      detection whose best-overlapping box, IoU > ovthresh, is such a box is neither TP nor FP);
    - a detection matched to ground truth of b is a TP whatever its own size;
    - a detection left unmatched (FP: no overlap above ovthresh, or a duplicate) counts as FP
      only when its own size is in b; otherwise it is ignored.
    So the bucket of a matched detection is its ground truth's size, that of an unmatched one
    its own size. Then VOC07/VOC12 AP per class on those flags; the mean over the classes with
    at least `min_positives` ground-truth boxes in b (nan if none: the AP of a class with one
    box there is 0 or 1, and would swing the mean by a whole class's share); and the recall:
    matched ground truth of b over all of it (nan without any), every class counted.

    image_ids, gt, det: as `VOCEvaluator` keeps them (pixel boxes); image_shapes: image_id ->
    (height, width). Returns {bucket name: dict(npos, num_detections (TP + FP), tp, map07,
    map12, recall, ap07, ap12 ({label: AP} of the classes with npos > 0, those left out of the
    mean too), class_npos ({label: npos > 0}), left_out (labels with 0 < npos <
    min_positives))}.
    """
    edges = np.asarray(edges, np.float64)
    gt_bucket = {i: np.searchsorted(edges, relative_sides(gt[i][0], image_shapes[i]),
                                    side='right') for i in image_ids}
    det_bucket = {i: np.searchsorted(edges, relative_sides(det[i][0], image_shapes[i]),
                                     side='right') for i in image_ids}
    out = {}
    for b, name in enumerate(names):
        total = dict(npos=0, tp=0, fp=0)
        ap07, ap12, class_npos = {}, {}, {}
        for label in range(1, num_labels + 1):
            gt_by_image, ids, scores, boxes = _gather_class(image_ids, gt, det, label)
            restricted, det_in = {}, []
            for i in image_ids:
                g_boxes, g_ignored = gt_by_image[i]
                g_in = gt_bucket[i][gt[i][1] == label] == b
                restricted[i] = (g_boxes, g_ignored | ~g_in)
                det_in.append(det_bucket[i][det[i][2] == label] == b)
            det_in = np.concatenate(det_in) if det_in else np.zeros(0, bool)
            tp, fp, _, npos = _match_detections(restricted, ids, scores, boxes, ovthresh)
            fp = fp * det_in[np.argsort(-np.asarray(scores, np.float64), kind='stable')]
            total['npos'] += npos
            total['tp'] += int(tp.sum())
            total['fp'] += int(fp.sum())
            if npos:
                recall, precision = _precision_recall(tp, fp, npos)
                ap07[label] = average_precision_voc07(precision, recall)
                ap12[label] = average_precision_voc12(precision, recall)
                class_npos[label] = int(npos)
        counted = [label for label, n in class_npos.items() if n >= min_positives]

        def mean(aps):
            return float(np.mean([aps[label] for label in counted])) if counted else float('nan')
        out[name] = dict(
            npos=total['npos'], tp=total['tp'], num_detections=total['tp'] + total['fp'],
            map07=mean(ap07), map12=mean(ap12),
            recall=total['tp'] / total['npos'] if total['npos'] else float('nan'),
            ap07=ap07, ap12=ap12, class_npos=class_npos,
            left_out=[label for label in class_npos if label not in counted])
    return out


def _mean_ap(aps):
    """Mean of the defined (non-nan) APs; nan if none is defined."""
    vals = [v for v in aps.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float('nan')


class VOCEvaluator:
    """Accumulates ground truth and detections per image; computes VOC07/VOC12 AP per class.

    `VOCEvaluator(num_classes, class_names=None, ovthresh=0.5, use_07_metric=False)`.
    Labels are 0 = background, 1..num_classes-1 objects; `class_names` lists names for labels
    1..num_classes-1 (default 'class_<id>'). Boxes given to `add_image` are yxyx in pixels
    (VOC coordinates), or relative to the image when `image_shape=(height, width)` is passed
    (then multiplied by height/width, the inverse of the VOC readers' `pixel / size`).
    Difficult and crowd ground truth are ignored alike (VOC rule; COCO `iscrowd` on export).
    `use_07_metric` chooses which AP is reported as the primary 'ap' / 'map'.
    `category_ids`: the data set's id of each label 1..C-1 (a label map with gaps, e.g.
    COCO's 1..90), used as COCO `category_id`s; default the labels themselves.
    """

    def __init__(self, num_classes, class_names=None, ovthresh=0.5, use_07_metric=False,
                 category_ids=None):
        self.class_names = _check_class_names(num_classes, class_names)
        if category_ids is not None and len(category_ids) != num_classes - 1:
            raise ValueError(f"category_ids must give the ids of labels 1..{num_classes - 1}, "
                             f"got {len(category_ids)}")
        self.category_ids = None if category_ids is None else [int(i) for i in category_ids]
        self.num_classes = int(num_classes)
        self.ovthresh = float(ovthresh)
        self.use_07_metric = bool(use_07_metric)
        self.image_ids = []
        self.image_shapes = {}  # image_id -> (height, width) or None
        self._gt = {}    # image_id -> (boxes [N,4] pixels, labels [N], ignored [N])
        self._det = {}   # image_id -> (boxes [K,4] pixels, scores [K], classes [K])

    def add_image(self, image_id, gt_boxes, gt_labels, gt_difficult=None, det_boxes=None,
                  det_scores=None, det_classes=None, image_shape=None, relative=None,
                  gt_is_crowd=None):
        """Adds one image.

        gt_boxes `[N, 4]` yxyx, gt_labels `[N]` in 1..C-1, gt_difficult and gt_is_crowd `[N]`
        bool (default all False); det_boxes `[K, 4]` yxyx, det_scores `[K]`, det_classes `[K]`
        in 1..C-1 (pass only real detections, no zero padding). image_shape: (height, width)
        of the image; boxes are relative (and scaled by it) unless `relative=False` (pixel
        boxes, the shape only recorded for the COCO export). An image may be added only once.
        """
        if image_id in self._gt:
            raise ValueError(f"image {image_id!r} was added twice")
        gt, det, shape = _image_entry(
            image_id, self.num_classes, (gt_boxes, gt_labels, gt_difficult, gt_is_crowd),
            (det_boxes, det_scores, det_classes), image_shape, relative)
        self.image_ids.append(image_id)
        self.image_shapes[image_id] = shape
        self._gt[image_id], self._det[image_id] = gt, det

    def _class_inputs(self, label):
        """The core's inputs for one label (see `_gather_class`)."""
        return _gather_class(self.image_ids, self._gt, self._det, label)

    def evaluate(self):
        """Returns a dict:
        `ap07`, `ap12`: {class_name: AP} (nan for a class without non-difficult GT);
        `map07`, `map12`: mean over classes with GT (nan if none);
        `ap`, `map`: the primary metric (VOC07 if use_07_metric else VOC12);
        `per_class`: {class_name: dict(recall [D], precision [D], npos, num_detections, tp, fp)}.
        """
        per_class, ap07, ap12 = {}, {}, {}
        for label, name in enumerate(self.class_names, 1):
            res = _class_result(*self._class_inputs(label), ovthresh=self.ovthresh)
            ap07[name], ap12[name] = res.pop('ap07'), res.pop('ap12')
            per_class[name] = res
        out = dict(ap07=ap07, ap12=ap12, map07=_mean_ap(ap07), map12=_mean_ap(ap12),
                   per_class=per_class)
        out['ap'] = ap07 if self.use_07_metric else ap12
        out['map'] = out['map07'] if self.use_07_metric else out['map12']
        return out

    def evaluate_by_size(self, edges, names, min_positives=1):
        """VOC07/VOC12 mAP and recall per object-size bucket (see `size_bucket_results`);
        `edges`, `names`: the buckets (`ssd_tf.boxes.SIZE_EDGES` / `SIZE_NAMES`);
        `min_positives`: the boxes a class needs in a bucket to enter its mean.
        None when an image was added without its `image_shape` (sizes are relative to it)."""
        if any(self.image_shapes[i] is None for i in self.image_ids):
            return None
        out = size_bucket_results(self.image_ids, self._gt, self._det, self.image_shapes,
                                  self.num_classes - 1, edges, names, self.ovthresh,
                                  min_positives)
        for v in out.values():  # per-class results by class name
            for key in ('ap07', 'ap12', 'class_npos'):
                v[key] = {self.class_names[label - 1]: x for label, x in v[key].items()}
            v['left_out'] = [self.class_names[label - 1] for label in v['left_out']]
        return out

    def write_voc_results(self, out_dir, split='test', prefix='comp4_det_'):
        """One VOC results file per class; see `write_voc_results`. Returns {name: path}."""
        return write_voc_results(out_dir, self.class_names, self._class_inputs, split, prefix)

    def coco_ground_truth(self):
        """The accumulated ground truth as a COCO dict (see `voc_to_coco_dict`; ignored
        (difficult or crowd) boxes become `iscrowd`)."""
        return voc_to_coco_dict([dict(image_id=i, boxes=self._gt[i][0], labels=self._gt[i][1],
                                      difficult=self._gt[i][2],
                                      height=(self.image_shapes[i] or (None, None))[0],
                                      width=(self.image_shapes[i] or (None, None))[1])
                                 for i in self.image_ids], self.class_names,
                                self.category_ids)

    def coco_detections(self):
        """The accumulated detections as a COCO results list (image ids as in
        `coco_ground_truth`: position in the order of `add_image`)."""
        return [d for index, image_id in enumerate(self.image_ids)
                for d in detections_to_coco(index, *self._det[image_id],
                                            category_ids=self.category_ids)]

    def write_coco_results(self, path):
        """Writes the COCO results JSON (list of image_id/category_id/bbox/score)."""
        return write_coco_results(path, self.coco_detections())


# Characters that cannot be part of a file name on some system, or that would move it to
# another directory; replaced by '_' in results file names.
_UNSAFE_FILE_CHARS = frozenset('/\\:*?"<>|') | frozenset(chr(c) for c in range(32))


def safe_file_part(name):
    """`name` made usable as (part of) ONE file name: path separators, NUL, control and
    reserved characters become '_', and a leading '.' (hidden file, '..') gets a '_' before it.
    Names made of letters, digits, spaces, '_', '-' (every VOC and COCO class) are unchanged."""
    out = ''.join('_' if c in _UNSAFE_FILE_CHARS else c for c in str(name))
    return '_' + out if out.startswith('.') or not out else out


def write_voc_results(out_dir, class_names, class_inputs, split='test', prefix='comp4_det_'):
    """Writes one VOC results file per class, `<prefix><split>_<class>.txt`, into out_dir.

    class_inputs: `label -> (gt_by_image, ids, scores, boxes)` (`VOCEvaluator._class_inputs`).
    Lines `image_id score xmin ymin xmax ymax` (pixels, 6 decimals), in the order the
    detections were added (so `voc_eval` on these files ranks ties like `evaluate`). The class
    part of the name goes through `safe_file_part`; two classes that would share a file get
    `_<label>` appended, so every file is distinct and inside out_dir. Returns {name: path}.
    """
    os.makedirs(out_dir, exist_ok=True)
    used = {str(n) for n in class_names if safe_file_part(n) == str(n)}
    paths = {}
    for label, name in enumerate(class_names, 1):
        part = safe_file_part(name)
        if part != str(name):  # altered: must not take another class's file
            part = part if part not in used else f'{part}_{label}'
            used.add(part)
        _, ids, scores, boxes = class_inputs(label)
        path = os.path.join(out_dir, f'{prefix}{split}_{part}.txt')
        with atomic_files.replacing(path) as f:
            for image_id, s, b in zip(ids, scores, boxes):
                f.write(f'{image_id} {s:.6f} {b[1]:.6f} {b[0]:.6f} {b[3]:.6f} {b[2]:.6f}\n')
        paths[name] = path
    return paths


def evaluate_detections(groundtruths, detections, num_classes, class_names=None,
                        ovthresh=0.5, use_07_metric=False, image_shapes=None):
    """VOC07 and VOC12 AP per class and mAP of in-memory detections.

    groundtruths: dict image_id -> dict(boxes `[N, 4]` yxyx, labels `[N]`, difficult `[N]`
      and is_crowd `[N]` optional). detections: dict image_id -> dict(boxes `[K, 4]` yxyx,
      scores `[K]`, classes `[K]`); a missing image has no detections; a detection on an
      image absent from groundtruths is an error. Boxes are pixels, or relative when
      image_shapes maps image_id -> (height, width). Returns `VOCEvaluator.evaluate()`'s
      dict.
    """
    unknown = set(detections) - set(groundtruths)
    if unknown:
        raise ValueError(f"detections on images without ground truth entries: "
                         f"{sorted(unknown)[:5]}")
    ev = VOCEvaluator(num_classes, class_names, ovthresh=ovthresh, use_07_metric=use_07_metric)
    for image_id, gt in groundtruths.items():
        det = detections.get(image_id, {})
        ev.add_image(image_id, gt.get('boxes'), gt.get('labels'), gt.get('difficult'),
                     det.get('boxes'), det.get('scores'), det.get('classes'),
                     image_shape=None if image_shapes is None else image_shapes[image_id],
                     gt_is_crowd=gt.get('is_crowd'))
    return ev.evaluate()


# ---------------------------------------------------------------------------- COCO
# Box convention VOC -> COCO: VOC coordinates are 1-based inclusive pixel indices; pixel i
# covers the continuous interval [i - 1, i). So [xmin, ymin, xmax, ymax] becomes
# x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1, h = ymax - ymin + 1: COCO areas equal the VOC
# "+1" areas, and ground truth and detections go through the same conversion (IoUs are the VOC
# ones). Difficult objects become `iscrowd = 1`: pycocotools then neither counts them as
# positives nor counts detections matched to them as false positives (the VOC rule); it is the
# only such mechanism in pycocotools (its `ignore` field is overwritten by `iscrowd`). Caveat:
# pycocotools measures overlap with a crowd box as intersection / detection area, which is
# >= the IoU, so slightly more detections are ignored than under the VOC rule.
def yxyx_pixels_to_coco_xywh(boxes):
    """VOC pixel boxes `[N, 4]` yxyx -> COCO `[N, 4]` `[x, y, w, h]` (convention above)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1] - 1., boxes[:, 0] - 1., boxes[:, 3] - boxes[:, 1] + 1.,
                     boxes[:, 2] - boxes[:, 0] + 1.], axis=-1)


def _category_id(label, category_ids):
    """COCO category id of training label `label` (`category_ids[label - 1]`, or itself)."""
    return int(label) if category_ids is None else int(category_ids[int(label) - 1])


def voc_to_coco_dict(images, class_names, category_ids=None):
    """VOC ground truth -> a COCO dataset dict (images, annotations, categories).

    images: list of dicts `image_id` (any string), `boxes` `[N, 4]` yxyx pixels, `labels` `[N]`
      in 1..len(class_names), `difficult` `[N]` (optional), `height`, `width` (optional).
    COCO image ids are the positions in `images` (ints); `file_name` keeps the VOC id;
    category ids are the labels, or `category_ids[label - 1]` (the data set's ids of a label
    map with gaps). See the convention comment above for boxes and difficult.
    """
    coco_images, annotations = [], []
    for index, im in enumerate(images):
        entry = dict(id=index, file_name=str(im['image_id']))
        if im.get('height') is not None:
            entry.update(height=int(im['height']), width=int(im['width']))
        coco_images.append(entry)
        labels = _as_array(im.get('labels'), np.int64)
        difficult = im.get('difficult')
        difficult = (np.zeros(len(labels), bool) if difficult is None
                     else _as_array(difficult, bool))
        for box, label, diff in zip(yxyx_pixels_to_coco_xywh(im.get('boxes', [])), labels,
                                    difficult):
            annotations.append(dict(
                id=len(annotations) + 1, image_id=index,
                category_id=_category_id(label, category_ids),
                bbox=[float(v) for v in box], area=float(box[2] * box[3]),
                iscrowd=int(diff), ignore=int(diff)))
    categories = [dict(id=_category_id(i, category_ids), name=n, supercategory='none')
                  for i, n in enumerate(class_names, 1)]
    return dict(images=coco_images, annotations=annotations, categories=categories)


def detections_to_coco(coco_image_id, boxes, scores, classes, category_ids=None):
    """Detections of one image (boxes `[K, 4]` yxyx VOC pixels, classes training labels)
    -> COCO result dicts (category ids as in `voc_to_coco_dict`)."""
    xywh = yxyx_pixels_to_coco_xywh(boxes)
    return [dict(image_id=coco_image_id, category_id=_category_id(c, category_ids),
                 bbox=[float(v) for v in b],
                 score=float(s))
            for b, s, c in zip(xywh, np.asarray(scores).reshape(-1),
                               np.asarray(classes).reshape(-1))]


def write_coco_results(path, results):
    """Writes a COCO results list to JSON; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_files.write_json(path, results)


def _json_or_path(value, what):
    """`value` itself, or the JSON read from it when it is a path (ValueError naming it)."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    try:
        with open(value) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {what} {value}: {e}") from e


def coco_metrics(gt_coco, detections, verbose=False):
    """COCO box metrics through pycocotools.

    gt_coco: a COCO dataset dict or the path of its JSON. detections: a list of COCO result
    dicts (image_id, category_id, bbox [x, y, w, h], score) or the path of such a JSON.
    Returns {name: value} for COCO_METRIC_NAMES (AP@[.5:.95], AP50, AP75, APs, APm, APl, AR1,
    AR10, AR100, ARs, ARm, ARl); pycocotools reports -1 where a value is undefined (e.g. no GT
    in a size range). No detections at all gives 0 for every metric that has GT.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("COCO metrics need pycocotools: pip install pycocotools "
                          "(or the 'coco' extra of ssd-tf)") from e
    gt_coco = _json_or_path(gt_coco, 'COCO ground truth')
    detections = _json_or_path(detections, 'COCO detections')
    gt_coco = dict(gt_coco)
    gt_coco.setdefault('info', {})
    gt_coco.setdefault('licenses', [])
    # pycocotools mutates annotations (adds fields); work on copies.
    gt_coco['annotations'] = [dict(a) for a in gt_coco.get('annotations', [])]
    detections = [dict(d) for d in detections]
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        coco_gt = COCO()
        coco_gt.dataset = gt_coco
        coco_gt.createIndex()
        if not detections:
            has_gt = any(not a.get('iscrowd', 0) for a in gt_coco['annotations'])
            return {k: (0. if has_gt else -1.) for k in COCO_METRIC_NAMES}
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType='bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(sink.getvalue())
    return {k: float(v) for k, v in zip(COCO_METRIC_NAMES, ev.stats)}
