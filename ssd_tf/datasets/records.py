"""Per-image records shared by every reader, and the read-time checks of bad data.

Readers (voc, coco, synthetic, tfrecord) return `Record`s whose boxes are already relative
`[ymin, xmin, ymax, xmax]` in [0, 1]; pixel coordinates exist only inside the readers.
Everything that can go wrong with a file is found here, once, in Python, so that the tf.data
path only sees good records: a bad record is skipped with a message naming the file and
counted in a `DataReport`, or raises `DataError` when the reader is called with `strict=True`.
"""
import concurrent.futures
import dataclasses
import logging
import os
from typing import List, Optional

import numpy as np

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data found while reading a data set in strict mode."""


@dataclasses.dataclass
class Record:
    """One annotated image.

    boxes: `[N, 4]` float32 relative yxyx; labels, difficult, truncated, is_crowd: `[N]` int64;
    label_text: N class names. The image is in exactly one of `image_path` (a file),
    `encoded` (file bytes in memory) or `image` (decoded uint8 `[H, W, 3]` RGB in memory).
    `height`, `width` are the true pixel size of the image.
    """
    image_id: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray
    is_crowd: np.ndarray
    label_text: List[str]
    image_path: Optional[str] = None
    encoded: Optional[bytes] = None
    image: Optional[np.ndarray] = None

    @property
    def num_boxes(self):
        return int(self.labels.shape[0])

    @property
    def source(self):
        """What to name in messages: the image file, or the id of an in-memory image."""
        return self.image_path or self.image_id


def make_record(image_id, height, width, boxes, labels, label_text, difficult=None,
                truncated=None, is_crowd=None, **image):
    """Builds a Record with the dtypes and shapes of the contract (missing flags are 0)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = boxes.shape[0]

    def flags(x):
        return np.zeros([n], np.int64) if x is None else np.asarray(x, np.int64).reshape(n)

    return Record(image_id=str(image_id), height=int(height), width=int(width), boxes=boxes,
                  labels=np.asarray(labels, np.int64).reshape(n), difficult=flags(difficult),
                  truncated=flags(truncated), is_crowd=flags(is_crowd),
                  label_text=[str(t) for t in label_text], **image)


class DataReport:
    """Counts what a reader skipped, dropped or fixed, with the file and reason of each.

    `skip` (a whole record) and `drop_box` raise `DataError` in strict mode; `fix` (e.g. a box
    clipped to the image) only warns. `summary()` gives a human-readable table.
    """

    def __init__(self, strict=False, name='data'):
        self.strict = bool(strict)
        self.name = name
        self.num_records = 0
        self.skipped = []        # (file, reason)
        self.dropped_boxes = []  # (file, reason)
        self.fixed = []          # (file, message)

    def _fail(self, kind, where, reason):
        msg = f"{where}: {reason}"
        if self.strict:
            raise DataError(f"{msg} (strict mode; call without strict=True to skip bad "
                            f"records and get a summary instead)")
        logger.warning("%s %s", kind, msg)

    def skip(self, where, reason):
        """Records that the record from `where` (a file) was skipped because of `reason`."""
        self._fail('skipped record', where, reason)
        self.skipped.append((os.fspath(where), reason))

    def drop_box(self, where, reason):
        """Records that one box of `where` was dropped because of `reason`."""
        self._fail('dropped box', where, reason)
        self.dropped_boxes.append((os.fspath(where), reason))

    def fix(self, where, message):
        """Records a repair (e.g. a clipped box); never raises."""
        logger.warning("fixed %s: %s", where, message)
        self.fixed.append((os.fspath(where), message))

    @property
    def num_skipped(self):
        return len(self.skipped)

    def summary(self):
        lines = [f"{self.name}: {self.num_records} records read, {len(self.skipped)} skipped, "
                 f"{len(self.dropped_boxes)} boxes dropped, {len(self.fixed)} fixed"]
        for title, items in (('skipped', self.skipped), ('dropped box', self.dropped_boxes),
                             ('fixed', self.fixed)):
            for where, reason in items:
                lines.append(f"  {title}: {where}: {reason}")
        return '\n'.join(lines)

    def __repr__(self):
        return self.summary().splitlines()[0]


# ---------------------------------------------------------------------------- images
def sniff_format(data):
    """`ssd_tf.images.sniff_format` (its old home; imported on use, as ssd_tf.images loads
    TensorFlow and the readers import without it)."""
    from ssd_tf import images
    return images.sniff_format(data)


def check_image_bytes(data, where, decode=True):
    """Checks encoded image bytes; returns `(height, width, format)` or raises ValueError.

    Cheap checks first (empty, unknown format), then the header checks of
    `ssd_tf.images.encoded_image_problem` (a JPEG without its end-of-image marker, a PNG
    without IEND, a GIF cut short, a JPEG without a frame header), then a full
    decode with the decoder the pipeline uses (`ssd_tf.images.decode_image`), which reads
    PNG, GIF or BMP files named `.jpg`, greyscale and CMYK JPEGs (TF 2.21 converts those to
    RGB itself, so no conversion is needed) and fails on corrupt bodies ("Premature end of
    JPEG data"). With `decode=False` only the header checks run and the size is None.
    """
    if not data:
        raise ValueError("empty image file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ValueError(f"not an image (unknown format, first bytes {data[:8]!r})")
    ext = os.path.splitext(os.fspath(where))[1].lower()
    if ext in ('.jpg', '.jpeg') and fmt != 'JPEG':
        logger.info("%s: %s data in a %s file; decoded by content", where, fmt, ext)
    import tensorflow as tf  # here so that readers import fast
    from ssd_tf import images
    problem = images.encoded_image_problem(data).numpy().decode()
    if not decode:
        if problem:
            raise ValueError(problem)
        return None, None, fmt
    try:
        if problem:
            raise ValueError(problem)
        shape = images.decode_image(data).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError) as e:
        reason = str(e).split('}}')[-1].split('[Op:')[0].strip() or type(e).__name__
        raise ValueError(f"corrupt {fmt} image, TensorFlow cannot decode it: {reason}") from None
    return int(shape[0]), int(shape[1]), fmt


def check_image_files(paths, decode=True, num_workers=None):
    """Checks many image files in parallel; returns a list of `(height, width, format)` or
    the error message string for each path."""
    def one(path):
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError as e:
            return f"cannot read image file: {e.strerror or e}"
        try:
            return check_image_bytes(data, path, decode=decode)
        except ValueError as e:
            return str(e)

    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        return list(pool.map(one, paths))


# ---------------------------------------------------------------------------- boxes
def pixel_boxes_to_relative(boxes, height, width, where, report):
    """Pixel `[N, 4]` yxyx -> relative yxyx `[N, 4]` float32 and the kept-box mask `[N]`.

    relative = pixel / size, as the slim VOC converter did (no -1 for VOC's 1-based pixel
    indices). Boxes partly outside `[0, height] x [0, width]` are clipped (reported as fixed);
    boxes that are not finite, inverted or zero-area (xmin >= xmax or ymin >= ymax), or
    entirely outside the image are dropped (reported; DataError in strict mode).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    keep = np.ones([boxes.shape[0]], bool)
    out = boxes.copy()
    for i, (ymin, xmin, ymax, xmax) in enumerate(boxes):
        desc = f"box {i} (xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g})"
        if not np.all(np.isfinite(boxes[i])):
            reason = f"{desc} has a non-numeric coordinate"
        elif xmin >= xmax or ymin >= ymax:
            reason = f"{desc} is degenerate (xmin >= xmax or ymin >= ymax)"
        elif xmax <= 0 or ymax <= 0 or xmin >= width or ymin >= height:
            reason = f"{desc} lies entirely outside the {width}x{height} image"
        else:
            reason = None
        if reason is not None:
            keep[i] = False
            report.drop_box(where, reason)
            continue
        clipped = np.clip(boxes[i], 0., [height, width, height, width])
        if np.any(clipped != boxes[i]):
            report.fix(where, f"{desc} extends outside the {width}x{height} image; clipped")
            out[i] = clipped
    rel = out / np.array([height, width, height, width], np.float64)
    return rel[keep].astype(np.float32), keep
