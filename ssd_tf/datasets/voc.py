"""Pascal VOC directory reader: `Annotations/*.xml`, `JPEGImages/*`, `ImageSets/Main/<split>.txt`.

Boxes leave this module as relative `[ymin, xmin, ymax, xmax]`: relative = pixel / size, as the
slim converter (`pascalvoc_to_tfrecords.py`) did, without subtracting 1 for VOC's 1-based pixel
indices (so a VOC box `xmin=1` becomes 1/width). `difficult` and `truncated` are read from the
element text (the original tested the XML element itself, which is always falsy for a leaf,
so every object was "not difficult"); missing `pose`, `truncated`, `difficult` default to 0.
The image size is the decoded image's; a different `<size>` in the XML is reported and ignored.
`read_annotation` and `read_id_list` are the project's one VOC XML parser and image-set reader
(`ssd_tf.metrics.voc_eval` reads through them too).
"""
import logging
import os
import defusedxml
import defusedxml.ElementTree as ET

import numpy as np

from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.datasets import records as records_lib

logger = logging.getLogger(__name__)

_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.JPG', '.JPEG', '.PNG', '.bmp', '.gif')


def read_id_list(path):
    """Image ids of an image-set file (`ImageSets/Main/<split>.txt`): the first column of each
    non-blank line. OSError when the file cannot be read (callers name it)."""
    with open(path, encoding='utf-8') as f:
        return [line.split()[0] for line in f if line.strip()]


def read_split_ids(dataset_dir, split):
    """Image ids listed in `<dataset_dir>/ImageSets/Main/<split>.txt` (first column)."""
    path = os.path.join(dataset_dir, 'ImageSets', 'Main', f'{split}.txt')
    if not os.path.isfile(path):
        main = os.path.join(dataset_dir, 'ImageSets', 'Main')
        have = sorted(f[:-4] for f in os.listdir(main) if f.endswith('.txt')) \
            if os.path.isdir(main) else []
        raise FileNotFoundError(f"split file not found: {path}; available splits: {have}")
    return read_id_list(path)


def infer_label_map(dataset_dirs):
    """LabelMap of every class name found in the `Annotations` of `dataset_dirs`, sorted.

    Scans all annotation files (not one split) so that train and test agree on the ids.
    """
    if isinstance(dataset_dirs, (str, os.PathLike)):
        dataset_dirs = [dataset_dirs]
    names = set()
    for d in dataset_dirs:
        ann = os.path.join(d, 'Annotations')
        for fname in sorted(os.listdir(ann)):
            if not fname.endswith('.xml'):
                continue
            try:
                root = ET.parse(os.path.join(ann, fname)).getroot()
            except (ET.ParseError, defusedxml.DefusedXmlException):
                continue  # reported when the record is read
            for obj in root.iter('object'):
                name = (obj.findtext('name') or '').strip()
                if not name:
                    continue
                problem = labelmap_lib.class_name_problem(name)
                if problem:
                    raise ValueError(f"{os.path.join(ann, fname)}: class name {name!r} cannot "
                                     f"be used: {problem}")
                names.add(name)
    if not names:
        raise ValueError(f"no object class names found in the Annotations of {dataset_dirs}")
    return labelmap_lib.LabelMap(sorted(names))


def default_label_map(dataset_dirs):
    """The label map of VOC roots: the first root's `labels.txt` if there is one, else every
    class name in the Annotations, sorted (`infer_label_map`)."""
    if isinstance(dataset_dirs, (str, os.PathLike)):
        dataset_dirs = [dataset_dirs]
    for d in dataset_dirs:
        if os.path.isfile(os.path.join(d, labelmap_lib.LABELS_FILENAME)):
            return labelmap_lib.LabelMap.read(d)
    return infer_label_map(dataset_dirs)


class AnnotationError(ValueError):
    """A VOC annotation file that cannot be used; the message names the file."""


def _flag(obj, tag, fixes):
    """0/1 from the text of `<tag>` (missing or empty -> 0; not a number -> 0, noted)."""
    text = obj.findtext(tag)
    if text is None or not text.strip():
        return 0
    try:
        return int(float(text.strip()) != 0)
    except ValueError:
        fixes.append(f"<{tag}> is {text.strip()!r}, not a number; read as 0")
        return 0


def _bndbox(obj):
    """`[ymin, xmin, ymax, xmax]` floats of an object's `<bndbox>`, or None if incomplete."""
    bb = obj.find('bndbox')
    try:
        return [float(bb.findtext(tag)) for tag in ('ymin', 'xmin', 'ymax', 'xmax')]
    except (AttributeError, TypeError, ValueError):
        return None


def read_annotation(xml_path):
    """THE VOC XML parser (the data readers and `metrics.voc_eval` both use it).

    Returns a dict: `filename` (None if absent), `size` `(height, width)` or None (absent or
    not numeric), `objects`: list of dicts `name`, `bbox` (`[ymin, xmin, ymax, xmax]` pixels,
    float), `difficult`, `truncated` (0/1 read from the element TEXT, missing -> 0), `pose`
    (missing -> 'Unspecified'); and `fixes`: notes on values read leniently. An unreadable
    file, an object without `<name>` or with an incomplete `<bndbox>` is an AnnotationError
    naming the file and the object.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except defusedxml.DefusedXmlException as e:  # entity declarations: no expansion
        raise AnnotationError(f"refused: the annotation XML declares entities (entity "
                              f"expansion, e.g. 'billion laughs', is not allowed; VOC files "
                              f"never need it): {e!r}") from e
    except (ET.ParseError, OSError) as e:
        raise AnnotationError(f"cannot parse the annotation XML: {e}") from e
    size = None
    size_el = root.find('size')
    if size_el is not None:
        try:
            size = (int(float(size_el.findtext('height'))), int(float(size_el.findtext('width'))))
        except (TypeError, ValueError):
            size = None
    objects, fixes = [], []
    for k, obj in enumerate(root.findall('object')):
        name = (obj.findtext('name') or '').strip()
        if not name:
            raise AnnotationError(f"object {k} has no <name>")
        bbox = _bndbox(obj)
        if bbox is None:
            what = ("no <bndbox>" if obj.find('bndbox') is None
                    else "a missing or non-numeric <bndbox> coordinate")
            raise AnnotationError(f"object {k} ({name}) has {what}")
        pose = (obj.findtext('pose') or '').strip() or 'Unspecified'
        objects.append(dict(name=name, bbox=bbox, difficult=_flag(obj, 'difficult', fixes),
                            truncated=_flag(obj, 'truncated', fixes), pose=pose))
    return dict(filename=(root.findtext('filename') or '').strip() or None, size=size,
                objects=objects, fixes=fixes)


def parse_annotation(xml_path, label_map, report):
    """Parses one VOC XML. Returns `(filename or None, (height, width) or None, objects)` with
    objects a list of `(name, label, [ymin, xmin, ymax, xmax] pixels, difficult, truncated)`,
    or None when the record must be skipped (already reported)."""
    try:
        ann = read_annotation(xml_path)
    except AnnotationError as e:
        report.skip(xml_path, str(e))
        return None
    for note in ann['fixes']:
        report.fix(xml_path, note)
    objects = []
    for k, o in enumerate(ann['objects']):
        if o['name'] not in label_map:
            report.skip(xml_path, f"object {k} has unknown class name {o['name']!r}; known "
                                  f"classes: {list(label_map.names)} (pass a label map that "
                                  f"has it)")
            return None
        objects.append((o['name'], label_map.id(o['name']), o['bbox'], o['difficult'],
                        o['truncated']))
    return ann['filename'], ann['size'], objects


def _find_image(dataset_dir, image_id, filename):
    jpeg_dir = os.path.join(dataset_dir, 'JPEGImages')
    candidates = ([filename] if filename else []) + [image_id + e for e in _IMAGE_EXTENSIONS]
    for c in candidates:
        path = os.path.join(jpeg_dir, c)
        if os.path.isfile(path):
            return path
    return None


def read_voc(dataset_dirs, split='trainval', label_map=None, strict=False, check_images=True,
             report=None):
    """Reads one split of one or several VOC roots (e.g. `[VOC2007, VOC2012]`).

    Args:
      dataset_dirs: a VOC root or a list of roots (each with Annotations, JPEGImages,
        ImageSets/Main); ids from several roots are kept apart (`image_id` is prefixed with the
        root's folder name when more than one root is given).
      split: name of the `ImageSets/Main/<split>.txt` list.
      label_map: a LabelMap, a path to a label map file, or None for `default_label_map`
        (a root's `labels.txt`, else every class name in the Annotations, sorted). For Pascal
        VOC pass `labelmap.VOC_LABEL_MAP` (the original's ids).
      strict: raise `DataError` on the first bad record instead of skipping it.
      check_images: decode every image once (catches corrupt/truncated files); False only
        checks the header and end marker.
      report: a DataReport to fill (a new one by default).

    Returns:
      `(records, report)`: a list of `Record`s (image in `image_path`) in split-list order
      and the DataReport of what was skipped, dropped or fixed.
    """
    if isinstance(dataset_dirs, (str, os.PathLike)):
        dataset_dirs = [dataset_dirs]
    dataset_dirs = [os.fspath(d) for d in dataset_dirs]
    if report is None:
        report = records_lib.DataReport(strict=strict, name=f"VOC {split}")
    if label_map is None:
        label_map = default_label_map(dataset_dirs)
    elif not isinstance(label_map, labelmap_lib.LabelMap):
        label_map = labelmap_lib.LabelMap.read(label_map)

    pending = []  # (image_id, xml_path, image_path, size, objects)
    for d in dataset_dirs:
        prefix = os.path.basename(os.path.normpath(d)) + '/' if len(dataset_dirs) > 1 else ''
        for image_id in read_split_ids(d, split):
            xml_path = os.path.join(d, 'Annotations', image_id + '.xml')
            if not os.path.isfile(xml_path):
                report.skip(xml_path, "annotation file listed in the split does not exist")
                continue
            parsed = parse_annotation(xml_path, label_map, report)
            if parsed is None:
                continue
            filename, size, objects = parsed
            image_path = _find_image(d, image_id, filename)
            if image_path is None:
                report.skip(xml_path, f"no image file for id {image_id!r} in "
                                      f"{os.path.join(d, 'JPEGImages')}")
                continue
            pending.append((prefix + image_id, xml_path, image_path, size, objects))

    checks = records_lib.check_image_files([p[2] for p in pending], decode=check_images)
    records = []
    for (image_id, xml_path, image_path, size, objects), check in zip(pending, checks):
        if isinstance(check, str):
            report.skip(image_path, check)
            continue
        height, width, _ = check
        if height is None:  # not decoded: trust the XML size
            if size is None or min(size) <= 0:
                report.skip(xml_path, "no valid <size> and check_images=False; cannot make "
                                      "boxes relative")
                continue
            height, width = size
        elif size is not None and size != (height, width):
            report.fix(xml_path, f"<size> says {size[1]}x{size[0]} but the image is "
                                 f"{width}x{height}; using the image's size")
        pixel = np.array([o[2] for o in objects], np.float64).reshape(-1, 4)
        boxes, keep = records_lib.pixel_boxes_to_relative(pixel, height, width, xml_path, report)
        kept = [o for o, k in zip(objects, keep) if k]
        records.append(records_lib.make_record(
            image_id, height, width, boxes, [o[1] for o in kept], [o[0] for o in kept],
            difficult=[o[3] for o in kept], truncated=[o[4] for o in kept],
            image_path=image_path))
    report.num_records = len(records)
    if report.skipped or report.dropped_boxes:
        logger.warning("%s", report.summary())
    return records, report
