"""COCO instances JSON reader: records with relative yxyx boxes and contiguous labels.

Category ids (COCO's run 1..90 with gaps) map to labels 1..C-1 in sorted category-id order;
the LabelMap carries the category names and ids (`dataset_ids`, reported in COCO results).
`bbox` `[x, y, w, h]` in pixels becomes
`[y / H, x / W, (y + h) / H, (x + w) / W]`. Crowd annotations (`iscrowd: 1`) are kept and
flagged in `Record.is_crowd` (the data builder drops them from training targets).
"""
import collections
import json
import logging
import os

import numpy as np

from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.datasets import records as records_lib

logger = logging.getLogger(__name__)


def category_label_map(categories):
    """`(LabelMap, {category_id: label})` from COCO `categories`, in sorted id order; the
    LabelMap keeps the category ids (`dataset_ids`: COCO results report them)."""
    cats = sorted(categories, key=lambda c: int(c['id']))
    names = [str(c['name']) for c in cats]
    return (labelmap_lib.LabelMap(names, [int(c['id']) for c in cats]),
            {int(c['id']): i + 1 for i, c in enumerate(cats)})


def read_coco(annotation_file, image_dir, strict=False, check_images=True, skip_empty=False,
              report=None):
    """Reads a COCO `instances_*.json`.

    Args:
      annotation_file: path of the instances JSON.
      image_dir: folder holding the `file_name`s of the JSON's images.
      strict: raise `DataError` on the first bad record instead of skipping it.
      check_images: decode every image once (False: header and end-marker checks only).
      skip_empty: leave out images without annotations (kept by default).
      report: a DataReport to fill (a new one by default).

    Returns:
      `(records, label_map, report)`; records in the JSON's image order, image in
      `image_path`, boxes `[N, 4]` relative yxyx, `is_crowd` `[N]`.
    """
    if report is None:
        report = records_lib.DataReport(strict=strict,
                                        name=f"COCO {os.path.basename(annotation_file)}")
    with open(annotation_file, encoding='utf-8') as f:
        data = json.load(f)
    for key in ('images', 'annotations', 'categories'):
        if key not in data:
            raise ValueError(f"{annotation_file}: not a COCO instances file (no '{key}' key)")
    try:
        label_map, cat_to_label = category_label_map(data['categories'])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{annotation_file}: bad 'categories': {e}") from e
    anns = collections.defaultdict(list)
    for a in data['annotations']:
        anns[a.get('image_id')].append(a)

    pending = []
    for im in data['images']:
        path = os.path.join(image_dir, str(im.get('file_name', '')))
        if not os.path.isfile(path):
            report.skip(path, f"image file of COCO image id {im.get('id')} does not exist")
            continue
        if skip_empty and not anns.get(im['id']):
            continue
        pending.append((im, path))

    checks = records_lib.check_image_files([p for _, p in pending], decode=check_images)
    records = []
    for (im, path), check in zip(pending, checks):
        if isinstance(check, str):
            report.skip(path, check)
            continue
        height, width, _ = check
        if height is None:
            height, width = int(im.get('height', 0)), int(im.get('width', 0))
            if height <= 0 or width <= 0:
                report.skip(path, "no valid height/width in the JSON and check_images=False")
                continue
        elif (im.get('height'), im.get('width')) != (height, width):
            report.fix(path, f"JSON says {im.get('width')}x{im.get('height')} but the image is "
                             f"{width}x{height}; using the image's size")
        objects, bad = _image_objects(anns.get(im['id'], []), cat_to_label)
        if bad is not None:
            report.skip(path, bad)
            continue
        pixel = np.array([o[1] for o in objects], np.float64).reshape(-1, 4)
        boxes, keep = records_lib.pixel_boxes_to_relative(pixel, height, width, path, report)
        kept = [o for o, k in zip(objects, keep) if k]
        records.append(records_lib.make_record(
            im['id'], height, width, boxes, [o[0] for o in kept],
            [label_map.name(o[0]) for o in kept], is_crowd=[o[2] for o in kept],
            image_path=path))
    report.num_records = len(records)
    if report.skipped or report.dropped_boxes:
        logger.warning("%s", report.summary())
    return records, label_map, report


def _image_objects(annotations, cat_to_label):
    """`(objects, problem)` of one image's annotations: objects `[(label, [y, x, y + h,
    x + w] pixels, is_crowd 0/1)]`, or `(..., reason)` at the first annotation with an unknown
    category_id or without a valid bbox `[x, y, w, h]` (the image is then skipped)."""
    objects = []
    for a in annotations:
        cid = a.get('category_id')
        if cid not in cat_to_label:
            return objects, f"annotation {a.get('id')} has unknown category_id {cid}"
        bbox = a.get('bbox')
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            return objects, f"annotation {a.get('id')} has no valid bbox [x, y, w, h]: {bbox!r}"
        x, y, w, h = (float(v) for v in bbox)
        objects.append((cat_to_label[cid], [y, x, y + h, x + w], int(bool(a.get('iscrowd')))))
    return objects, None
