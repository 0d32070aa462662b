"""TFRecords in the slim SSD's key layout: writer (tf.train.Example) and graph-mode parser.

Keys (as the original `pascalvoc_to_tfrecords.py` wrote them): `image/encoded`,
`image/format`, `image/height`, `image/width`, `image/channels`, `image/shape`,
`image/object/bbox/{xmin,ymin,xmax,ymax}` (relative floats), `image/object/bbox/label`,
`image/object/bbox/label_text`, `image/object/bbox/difficult`, `image/object/bbox/truncated`.
This writer adds `image/filename` (the image id) and `image/object/bbox/is_crowd`; the parser
treats both, and `difficult`/`truncated`, as optional, so records of the original converter
read unchanged. Boxes are relative `[ymin, xmin, ymax, xmax]` once parsed.

`check_example` is the graph-mode validation of one record (the TFRecord counterpart of the
VOC/COCO readers' checks): whole-record problems and boxes to drop, each with a reason.
`write_tfrecords` writes each shard under a temporary name and renames it when complete.
`read_tfrecord_records` is an eager reader for small tools only; every graph path parses
with `parse_example` / `check_example`.
"""
import os
import uuid

import numpy as np
import tensorflow as tf

from ssd_tf import images as images_lib
from ssd_tf.datasets import records as records_lib

_BOX_KEYS = ('ymin', 'xmin', 'ymax', 'xmax')

FEATURES = {
    'image/encoded': tf.io.FixedLenFeature([], tf.string),
    'image/format': tf.io.FixedLenFeature([], tf.string, default_value=b'JPEG'),
    'image/filename': tf.io.FixedLenFeature([], tf.string, default_value=b''),
    'image/height': tf.io.FixedLenFeature([], tf.int64, default_value=0),
    'image/width': tf.io.FixedLenFeature([], tf.int64, default_value=0),
    'image/object/bbox/label': tf.io.VarLenFeature(tf.int64),
    'image/object/bbox/label_text': tf.io.VarLenFeature(tf.string),
    'image/object/bbox/difficult': tf.io.VarLenFeature(tf.int64),
    'image/object/bbox/truncated': tf.io.VarLenFeature(tf.int64),
    'image/object/bbox/is_crowd': tf.io.VarLenFeature(tf.int64),
    **{f'image/object/bbox/{k}': tf.io.VarLenFeature(tf.float32) for k in _BOX_KEYS},
}
# check_example reads a missing image/encoded as '' (reported) instead of failing the parse.
_CHECK_FEATURES = {**FEATURES, 'image/encoded': tf.io.FixedLenFeature([], tf.string,
                                                                      default_value=b'')}

# Kinds of problem (the keys of the counts in `check.DataProblems`). A record-level problem
# skips the whole record; a box-level one drops that box and keeps the record.
UNEQUAL_BOX_LISTS = 'box lists of unequal length'
MISSING_IMAGE = 'missing or empty image/encoded'
BAD_IMAGE = 'not a whole image'
BOX_OUTSIDE = 'boxes outside [0, 1]'
UNREADABLE = 'unparseable or undecodable record'
INVERTED_BOX = 'inverted or empty box'
LABEL_OUT_OF_RANGE = 'label out of range'
# Coordinates this close outside [0, 1] are float rounding of a box at the image border:
# clipped, not reported (a converter computing x / width may give 1.0000001).
_BOX_TOLERANCE = 1e-3
RECORD_KINDS = (UNEQUAL_BOX_LISTS, MISSING_IMAGE, BAD_IMAGE, BOX_OUTSIDE, UNREADABLE)
BOX_KINDS = (INVERTED_BOX, LABEL_OUT_OF_RANGE)


# ---------------------------------------------------------------------------- writing
def match_files(source):
    """The sorted TFRecord files matching `source` (a file pattern, or a list of patterns);
    FileNotFoundError naming the patterns when none matches. Every reader of TFRecord files
    (the pipeline, the label-map scan, the record count, `read_tfrecord_records`) uses it."""
    patterns = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(os.fspath(p))})
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


def count_records(source):
    """Number of records in the TFRecord files matching `source` (see `match_files`), read
    from the record headers without reading or decoding the payloads.

    A TFRecord is `uint64 length, uint32 crc(length), data[length], uint32 crc(data)`; the
    count seeks from header to header. A file that ends inside a record is a ValueError
    naming it and the record index.
    """
    total = 0
    for path in match_files(source):
        size = tf.io.gfile.stat(path).length
        with tf.io.gfile.GFile(path, 'rb') as f:
            offset = 0
            while offset < size:
                header = f.read(8)
                if len(header) < 8:
                    raise ValueError(f"{path}: truncated after record {total}")
                length = int.from_bytes(header, 'little')
                offset += 8 + 4 + length + 4
                if offset > size:
                    raise ValueError(f"{path}: record {total} is truncated (the file ends "
                                     f"inside it)")
                f.seek(offset)
                total += 1
    return total


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _float(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def encoded_image(record):
    """`(bytes, format)` of a record's image: the file's own bytes when it has a path or
    bytes (no re-encoding), PNG of an in-memory array (`ssd_tf.images.read_image_bytes`)."""
    data = images_lib.read_image_bytes(record)
    return data, images_lib.sniff_format(data) or 'JPEG'


def record_to_example(record):
    """A `tf.train.Example` with the original's keys (+ image/filename, is_crowd)."""
    data, fmt = encoded_image(record)
    b = np.asarray(record.boxes, np.float32).reshape(-1, 4)
    feature = {
        'image/height': _int64([record.height]),
        'image/width': _int64([record.width]),
        'image/channels': _int64([3]),
        'image/shape': _int64([record.height, record.width, 3]),
        'image/object/bbox/label': _int64(record.labels),
        'image/object/bbox/label_text': _bytes(t.encode('utf-8') for t in record.label_text),
        'image/object/bbox/difficult': _int64(record.difficult),
        'image/object/bbox/truncated': _int64(record.truncated),
        'image/object/bbox/is_crowd': _int64(record.is_crowd),
        'image/format': _bytes([fmt.encode()]),
        'image/encoded': _bytes([data]),
        'image/filename': _bytes([record.image_id.encode('utf-8')]),
    }
    for j, k in enumerate(_BOX_KEYS):
        feature[f'image/object/bbox/{k}'] = _float(b[:, j])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_path(output_dir, name, split, shard, num_shards):
    """`<output_dir>/<name>_<split>_<shard:05d>-of-<num_shards:05d>.tfrecord`."""
    return os.path.join(output_dir, f'{name}_{split}_{shard:05d}-of-{num_shards:05d}.tfrecord')


def write_tfrecords(records, output_dir, name, split, num_shards=1):
    """Writes records round-robin into `num_shards` files; returns the list of paths.

    Record i goes to shard `i % num_shards`, so shards have equal sizes (+-1) and a
    shuffled read of several shards mixes the whole set.

    Each shard is written to `<final name>.incomplete-<random>` in the same directory and
    renamed to its final name only once every record is written, so a conversion that fails
    or is killed never leaves a truncated shard under a final name (a failure removes its
    temporary files; a kill may leave them, under a name no `*.tfrecord` pattern matches).
    """
    num_shards = int(num_shards)
    if num_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {num_shards}")
    os.makedirs(output_dir, exist_ok=True)
    paths = [shard_path(output_dir, name, split, s, num_shards) for s in range(num_shards)]
    tag = uuid.uuid4().hex[:8]
    temps = [f'{p}.incomplete-{tag}' for p in paths]
    writers = [tf.io.TFRecordWriter(t) for t in temps]
    complete = False
    try:
        for i, r in enumerate(records):
            writers[i % num_shards].write(record_to_example(r).SerializeToString())
        complete = True
    finally:
        for w in writers:
            w.close()
        if not complete:
            for t in temps:
                if tf.io.gfile.exists(t):
                    tf.io.gfile.remove(t)
    for t, p in zip(temps, paths):
        tf.io.gfile.rename(t, p, overwrite=True)
    return paths


# ---------------------------------------------------------------------------- reading
def _dense(sparse, default):
    return tf.sparse.to_dense(sparse, default_value=default)


def _one_per_box(values, n, default):
    """An optional per-object feature: the values when there is one per box, else `default`
    for every box (the original converter always wrote them; other writers may not)."""
    return tf.cond(tf.equal(tf.size(values), n), lambda: values,
                   lambda: tf.fill([n], tf.constant(default, values.dtype)))


def _fields(f):
    """The parsed feature dict -> the `parse_example` dict (labels and boxes of equal length)."""
    labels = _dense(f['image/object/bbox/label'], 0)
    n = tf.size(labels)
    bboxes = tf.stack([_dense(f[f'image/object/bbox/{k}'], 0.) for k in _BOX_KEYS], axis=1)
    text = _dense(f['image/object/bbox/label_text'], '')
    return {
        'encoded': f['image/encoded'],
        'image_id': f['image/filename'],
        'height': tf.cast(f['image/height'], tf.int32),
        'width': tf.cast(f['image/width'], tf.int32),
        'labels': labels,
        'bboxes': tf.reshape(bboxes, [-1, 4]),
        'difficult': _one_per_box(_dense(f['image/object/bbox/difficult'], 0), n, 0),
        'truncated': _one_per_box(_dense(f['image/object/bbox/truncated'], 0), n, 0),
        'is_crowd': _one_per_box(_dense(f['image/object/bbox/is_crowd'], 0), n, 0),
        'label_text': _one_per_box(text, n, ''),
    }


def parse_example(serialized):
    """Parses one serialized Example (graph-mode, for `tf.data` map).

    Returns a dict: `encoded` (string), `image_id` (string, '' if absent), `height`, `width`
    (int32 from the record), `labels` `[N]` int64, `bboxes` `[N, 4]` float32 relative yxyx,
    `difficult`, `truncated`, `is_crowd` `[N]` int64, `label_text` `[N]` string.
    Fails (InvalidArgumentError) on a record with box lists of unequal length or without
    `image/encoded`; `check_example` reports those instead.
    """
    return _fields(tf.io.parse_single_example(serialized, FEATURES))


def _record_problem(f, max_pixels):
    """`(kind, detail)` scalar strings of the first whole-record problem, ('', '') if none."""
    counts = [tf.size(f['image/object/bbox/label'].values)] + [
        tf.size(f[f'image/object/bbox/{k}'].values) for k in _BOX_KEYS]
    unequal = tf.reduce_any(tf.not_equal(tf.stack(counts), counts[0]))
    encoded = f['image/encoded']

    def box_problem():
        coords = tf.concat([f[f'image/object/bbox/{k}'].values for k in _BOX_KEYS], 0)
        finite = tf.reduce_all(tf.math.is_finite(coords))
        lo = tf.reduce_min(tf.concat([coords, [0.]], 0))
        hi = tf.reduce_max(tf.concat([coords, [1.]], 0))
        pixels = tf.where(hi > 1., ' (pixel coordinates? TFRecord boxes must be relative: '
                                   're-convert the shard)', '')
        detail = tf.strings.join([tf.strings.format(
            'box coordinates from {} to {} are outside [0, 1]', (lo, hi)), pixels])
        bad = tf.logical_or(tf.logical_not(finite), tf.logical_or(lo < -_BOX_TOLERANCE,
                                                                  hi > 1. + _BOX_TOLERANCE))
        detail = tf.where(finite, detail, 'a box coordinate is not a finite number')
        return tf.where(bad, BOX_OUTSIDE, ''), tf.where(bad, detail, '')

    def image_problem():
        reason = images_lib.encoded_image_problem(encoded, max_pixels)
        return tf.cond(tf.equal(reason, ''), box_problem,
                       lambda: (tf.constant(BAD_IMAGE), reason))

    def length_problem():
        return tf.constant(UNEQUAL_BOX_LISTS), tf.strings.format(
            '{} labels but {} ymin, {} xmin, {} ymax, {} xmax', tuple(counts))

    def encoded_problem():
        return tf.cond(tf.equal(tf.strings.length(encoded), 0),
                       lambda: (tf.constant(MISSING_IMAGE),
                                tf.constant('image/encoded is missing or empty')),
                       image_problem)

    return tf.cond(unequal, length_problem, encoded_problem)


def check_example(serialized, num_classes=None, max_pixels=None):
    """Parses and checks one serialized Example in the graph (the TFRecord counterpart of the
    VOC/COCO readers' checks).

    Returns `(example, kind, detail, box_kinds, box_details)`:
      example: the `parse_example` dict with the dropped boxes removed (meaningful only when
        `kind` is ''; a bad record gives empty box lists so that the graph still runs);
      kind, detail: scalar strings, '' for a good record, else one of `RECORD_KINDS` and a
        human reason (unequal box lists, missing image/encoded, bytes that are not a whole
        image, boxes outside [0, 1] (by more than `_BOX_TOLERANCE`; closer ones are clipped)
        or not finite) -- the record is to be skipped;
      box_kinds: `[N]` string, '' for a kept box, else one of `BOX_KINDS` (inverted or empty
        box, label outside [1, num_classes), or < 1 when `num_classes` is None);
      box_details: `[N]` string, each box's index, label and coordinates (for the report).
    A serialized string that is not an Example still fails (InvalidArgumentError).
    """
    f = tf.io.parse_single_example(serialized, _CHECK_FEATURES)
    kind, detail = _record_problem(f, max_pixels)
    ok = tf.equal(kind, '')
    # A bad record's box lists are emptied, so that the stacking below cannot fail on them.
    for key in ('label', 'label_text', 'difficult', 'truncated', 'is_crowd') + _BOX_KEYS:
        sp = f[f'image/object/bbox/{key}']
        f[f'image/object/bbox/{key}'] = tf.sparse.slice(
            sp, [0], tf.where(ok, sp.dense_shape, tf.zeros_like(sp.dense_shape)))
    ex = _fields(f)
    ex['bboxes'] = tf.clip_by_value(ex['bboxes'], 0., 1.)  # within _BOX_TOLERANCE of [0, 1]
    b = ex['bboxes']
    labels = ex['labels']
    inverted = tf.logical_or(b[:, 0] >= b[:, 2], b[:, 1] >= b[:, 3])
    high = tf.zeros_like(labels, tf.bool) if num_classes is None else labels >= num_classes
    out_of_range = tf.logical_or(labels < 1, high)
    box_kinds = tf.where(inverted, INVERTED_BOX, tf.where(out_of_range, LABEL_OUT_OF_RANGE, ''))
    coords = [tf.strings.as_string(b[:, j], precision=4) for j in range(4)]
    box_details = tf.strings.join(
        [tf.strings.as_string(tf.range(tf.size(labels))), ' (label ', tf.strings.as_string(labels),
         ', ymin ', coords[0], ', xmin ', coords[1], ', ymax ', coords[2], ', xmax ', coords[3],
         ')'], separator='')
    box_details = tf.strings.join(['box ', box_details])
    keep = tf.equal(box_kinds, '')
    for key in ('labels', 'bboxes', 'difficult', 'truncated', 'is_crowd', 'label_text'):
        ex[key] = tf.boolean_mask(ex[key], keep)
    ex['bboxes'] = tf.reshape(ex['bboxes'], [-1, 4])
    return ex, kind, detail, box_kinds, box_details


def read_tfrecord_records(file_pattern):
    """Reads TFRecords back into `Record`s (image bytes in `Record.encoded`), eagerly and all
    into memory: for small tools only (tests, inspection, re-conversion). Training and
    evaluation stream TFRecords with `data.build_dataset`/`build_eval_dataset`, and
    `python -m ssd_tf.datasets.check` validates them; this reader checks nothing and fails
    on the first record `parse_example` cannot parse."""
    files = match_files(file_pattern)
    out = []
    for i, serialized in enumerate(tf.data.TFRecordDataset(files)):
        p = {k: v.numpy() for k, v in parse_example(serialized).items()}
        out.append(records_lib.make_record(
            p['image_id'].decode() or f'{i:06d}', p['height'], p['width'], p['bboxes'],
            p['labels'], [t.decode() for t in p['label_text']], difficult=p['difficult'],
            truncated=p['truncated'], is_crowd=p['is_crowd'], encoded=p['encoded']))
    return out
