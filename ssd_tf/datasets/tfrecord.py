"""TFRecords in the slim SSD's key layout or the TF Object Detection API's: writer
(tf.train.Example) and graph-mode parser.

Keys (as the original `pascalvoc_to_tfrecords.py` wrote them): `image/encoded`,
`image/format`, `image/height`, `image/width`, `image/channels`, `image/shape`,
`image/object/bbox/{xmin,ymin,xmax,ymax}` (relative floats), `image/object/bbox/label`,
`image/object/bbox/label_text`, `image/object/bbox/difficult`, `image/object/bbox/truncated`.
This writer adds `image/filename` (the image id) and `image/object/bbox/is_crowd`; the parser
treats both, and `difficult`/`truncated`, as optional, so records of the original converter
read unchanged. Boxes are relative `[ymin, xmin, ymax, xmax]` once parsed.

The TF Object Detection API layout (`OD_API`, what its `create_*_tf_record.py` scripts write)
has the same `image/*` and box keys, plus `image/source_id`, and names the per-object lists
`image/object/class/label` (1-based, 0 the background, as here), `image/object/class/text`,
`image/object/difficult`, `image/object/truncated`, `image/object/is_crowd`. `detect_layout`
finds the layout of a set of shards from their first records (and refuses a mix); parsing
renames the OD API keys to the slim ones, so both layouts go through the same checks. The
image id is `image/source_id` when present, else `image/filename`.

`check_example` is the graph-mode validation of one record (the TFRecord counterpart of the
VOC/COCO readers' checks): whole-record problems and boxes to drop, each with a reason.
With `label_ids` (a label map whose ids skip numbers, `LabelMap.label_ids`) it also maps the
records' dataset ids to training labels 1..C-1; an id not in the map is a dropped box.
`write_tfrecords` writes each shard under a temporary name and renames it when complete.
`read_tfrecord_records` is an eager reader for small tools only; every graph path parses
with `parse_example` / `check_example`.
"""
import hashlib
import os
import re
import uuid

import numpy as np
import tensorflow as tf
from google.protobuf import message

from ssd_tf import images as images_lib
from ssd_tf import tfdata_options
from ssd_tf.datasets import records as records_lib

_BOX_KEYS = ('ymin', 'xmin', 'ymax', 'xmax')

# Key layouts (--layout of the converter; `detect_layout` for reading).
SLIM = 'slim'
OD_API = 'od_api'
LAYOUTS = (SLIM, OD_API)
# The OD API's key of each slim per-object key whose name differs (box keys are shared).
_OD_API_KEYS = {
    'image/object/bbox/label': 'image/object/class/label',
    'image/object/bbox/label_text': 'image/object/class/text',
    'image/object/bbox/difficult': 'image/object/difficult',
    'image/object/bbox/truncated': 'image/object/truncated',
    'image/object/bbox/is_crowd': 'image/object/is_crowd',
}
_SOURCE_ID = 'image/source_id'
# Keys that only one layout writes: the evidence `detect_layout` looks for.
_LAYOUT_KEYS = {SLIM: ('image/object/bbox/label', 'image/object/bbox/label_text'),
                OD_API: ('image/object/class/label', 'image/object/class/text', _SOURCE_ID)}
# Records read per shard to find its layout (a record without any object or id key tells
# nothing; such shards are read this far, then taken as compatible with either layout).
_DETECT_RECORDS = 8
# The label key of the other layout, parsed too: a record that has labels only there is
# reported (OTHER_LAYOUT) instead of being read as an image without objects.
_OTHER_LABELS = '_other_layout_labels'

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
OTHER_LAYOUT = 'record of the other key layout'
LABEL_TEXT_DISAGREES = 'label text disagrees with the other records'
INVERTED_BOX = 'inverted or empty box'
LABEL_OUT_OF_RANGE = 'label out of range'
LABEL_NOT_IN_MAP = 'class id not in the label map'
# Coordinates this close outside [0, 1] are float rounding of a box at the image border:
# clipped, not reported (a converter computing x / width may give 1.0000001).
_BOX_TOLERANCE = 1e-3
RECORD_KINDS = (UNEQUAL_BOX_LISTS, MISSING_IMAGE, BAD_IMAGE, BOX_OUTSIDE, UNREADABLE,
                OTHER_LAYOUT, LABEL_TEXT_DISAGREES)
BOX_KINDS = (INVERTED_BOX, LABEL_OUT_OF_RANGE, LABEL_NOT_IN_MAP)


# ---------------------------------------------------------------------------- writing
def split_pattern(pattern, train_split, split):
    """The file pattern of the shards of `split` beside the training shards `pattern`, or
    None when there are none (or `split` is the training split).

    A directory gives `<dir>/*<split>*.tfrecord*`; a pattern gives the same pattern with the
    training split's name, where it stands between `_`, `-` or `.` in the file name, replaced
    by `split` (`voc_2007_train_*.tfrecord` -> `voc_2007_test_*.tfrecord`, the names of the
    slim converter and of `write_tfrecords`). The result must match at least one file."""
    if not pattern or not split or split == train_split:
        return None
    pattern = os.fspath(pattern)
    if tf.io.gfile.isdir(pattern):
        candidate = os.path.join(pattern, f'*{split}*.tfrecord*')
    else:
        directory, base = os.path.split(pattern)
        tokens = re.split(r'([_.-])', base)
        if not train_split or train_split not in tokens:
            return None
        candidate = os.path.join(directory, ''.join(split if t == train_split else t
                                                    for t in tokens))
    return candidate if tf.io.gfile.glob(candidate) else None


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


def record_to_example(record, layout=SLIM):
    """A `tf.train.Example` with the original's keys (+ image/filename, is_crowd), or with
    `layout=OD_API` the TF Object Detection API's keys (`image/source_id`,
    `image/key/sha256`, `image/object/class/label` and `/text`, `image/object/difficult`,
    `/truncated`, `/is_crowd`; `image/format` in lower case, as its scripts write it)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    data, fmt = encoded_image(record)
    b = np.asarray(record.boxes, np.float32).reshape(-1, 4)
    if layout == OD_API:
        return _od_api_example(record, data, fmt, b)
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


def _od_api_example(record, data, fmt, b):
    """The OD API layout of `record_to_example` (`data`, `fmt`: its encoded image, `b`: its
    boxes `[N, 4]` relative yxyx)."""
    image_id = record.image_id.encode('utf-8')
    feature = {
        'image/height': _int64([record.height]),
        'image/width': _int64([record.width]),
        'image/filename': _bytes([image_id]),
        _SOURCE_ID: _bytes([image_id]),
        'image/key/sha256': _bytes([hashlib.sha256(data).hexdigest().encode()]),
        'image/encoded': _bytes([data]),
        'image/format': _bytes([fmt.lower().encode()]),
        _OD_API_KEYS['image/object/bbox/label']: _int64(record.labels),
        _OD_API_KEYS['image/object/bbox/label_text']: _bytes(
            t.encode('utf-8') for t in record.label_text),
        _OD_API_KEYS['image/object/bbox/difficult']: _int64(record.difficult),
        _OD_API_KEYS['image/object/bbox/truncated']: _int64(record.truncated),
        _OD_API_KEYS['image/object/bbox/is_crowd']: _int64(record.is_crowd),
    }
    for j, k in enumerate(_BOX_KEYS):
        feature[f'image/object/bbox/{k}'] = _float(b[:, j])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_path(output_dir, name, split, shard, num_shards):
    """`<output_dir>/<name>_<split>_<shard:05d>-of-<num_shards:05d>.tfrecord`."""
    return os.path.join(output_dir, f'{name}_{split}_{shard:05d}-of-{num_shards:05d}.tfrecord')


def write_tfrecords(records, output_dir, name, split, num_shards=1, layout=SLIM):
    """Writes records round-robin into `num_shards` files (keys of `layout`: SLIM or
    OD_API, see `record_to_example`); returns the list of paths.

    Record i goes to shard `i % num_shards`, so shards have equal sizes (+-1) and a
    shuffled read of several shards mixes the whole set.

    Each shard is written to `<final name>.incomplete-<random>` in the same directory and
    renamed to its final name only once every record is written, so a conversion that fails
    or is killed never leaves a truncated shard under a final name (a failure removes its
    temporary files; a kill may leave them, under a name no `*.tfrecord` pattern matches).
    """
    num_shards = int(num_shards)
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {LAYOUTS}, got {layout!r}")
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
            writers[i % num_shards].write(record_to_example(r, layout).SerializeToString())
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


# ---------------------------------------------------------------------------- layouts
def example_layouts(example):
    """The layouts whose own keys a `tf.train.Example` carries (a set: empty for a record
    with neither layout's object or id keys, both for a record that mixes them)."""
    keys = example.features.feature
    return {layout for layout, own in _LAYOUT_KEYS.items() if any(k in keys for k in own)}


def detect_layout(source):
    """The key layout (SLIM or OD_API) of the TFRecord files of `source` (see
    `match_files`), from the first records of each shard (up to `_DETECT_RECORDS` per shard,
    until one carries a layout's own keys); SLIM when no record tells.

    Raises ValueError naming the shard and record of a record with both layouts' keys, and
    one shard of each layout when the shards mix layouts. Records that do not parse are left
    to the pipeline's checks.
    """
    found = {}  # layout -> first 'shard record i' that has it
    for path in match_files(source):
        try:
            ds = tfdata_options.configure(tf.data.TFRecordDataset(path).take(_DETECT_RECORDS))
            for i, raw in enumerate(ds):
                try:
                    layouts = example_layouts(tf.train.Example.FromString(raw.numpy()))
                except message.DecodeError:
                    continue
                where = f"{path} record {i}"
                if len(layouts) > 1:
                    raise ValueError(f"{where} has the keys of both layouts (slim "
                                     f"{_LAYOUT_KEYS[SLIM]} and TF Object Detection API "
                                     f"{_LAYOUT_KEYS[OD_API]}); re-convert it")
                if layouts:
                    found.setdefault(layouts.pop(), where)
                    break
        except tf.errors.OpError:  # a truncated or corrupt shard: the pipeline reports it
            pass
        if len(found) > 1:
            raise ValueError(f"the shards mix key layouts: {found[SLIM]} has the slim keys "
                             f"(image/object/bbox/label) but {found[OD_API]} the TF Object "
                             f"Detection API's (image/object/class/label); read them apart "
                             f"or re-convert one set")
    return next(iter(found), SLIM)


def layout_description(layout):
    """One line for the log: which key layout was found."""
    return {SLIM: "slim SSD TFRecord keys (image/object/bbox/label, ...)",
            OD_API: "TF Object Detection API TFRecord keys (image/object/class/label, "
                    "image/source_id, ...)"}[layout]


def label_keys(layout):
    """`(label key, label text key)` of the per-object lists in `layout`."""
    keys = ('image/object/bbox/label', 'image/object/bbox/label_text')
    return tuple(_OD_API_KEYS[k] for k in keys) if layout == OD_API else keys


def _parse(serialized, features, layout):
    """`tf.io.parse_single_example` with the keys of `layout`, returned under the slim keys
    of `features` (OD API: `image/filename` is `image/source_id` when that is non-empty),
    plus `_OTHER_LABELS`, the other layout's label list."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    names = {k: _OD_API_KEYS.get(k, k) if layout == OD_API else k for k in features}
    spec = {names[k]: v for k, v in features.items()}
    other = 'image/object/bbox/label' if layout == OD_API else \
        _OD_API_KEYS['image/object/bbox/label']
    spec[other] = tf.io.VarLenFeature(tf.int64)
    if layout == OD_API:
        spec[_SOURCE_ID] = tf.io.FixedLenFeature([], tf.string, default_value=b'')
    raw = tf.io.parse_single_example(serialized, spec)
    f = {k: raw[names[k]] for k in features}
    f[_OTHER_LABELS] = raw[other]
    if layout == OD_API and 'image/filename' in f:
        f['image/filename'] = tf.where(tf.strings.length(raw[_SOURCE_ID]) > 0,
                                       raw[_SOURCE_ID], f['image/filename'])
    return f


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


def parse_example(serialized, layout=SLIM):
    """Parses one serialized Example (graph-mode, for `tf.data` map) of key `layout`.

    Returns a dict: `encoded` (string), `image_id` (string, '' if absent), `height`, `width`
    (int32 from the record), `labels` `[N]` int64, `bboxes` `[N, 4]` float32 relative yxyx,
    `difficult`, `truncated`, `is_crowd` `[N]` int64, `label_text` `[N]` string.
    Fails (InvalidArgumentError) on a record with box lists of unequal length or without
    `image/encoded`; `check_example` reports those instead.
    """
    return _fields(_parse(serialized, FEATURES, layout))


def _record_problem(f, max_pixels):
    """`(kind, detail)` scalar strings of the first whole-record problem, ('', '') if none."""
    counts = [tf.size(f['image/object/bbox/label'].values)] + [
        tf.size(f[f'image/object/bbox/{k}'].values) for k in _BOX_KEYS]
    unequal = tf.reduce_any(tf.not_equal(tf.stack(counts), counts[0]))
    encoded = f['image/encoded']
    other = f.get(_OTHER_LABELS)
    other_layout = tf.constant(False) if other is None else tf.logical_and(
        tf.equal(counts[0], 0), tf.size(other.values) > 0)

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

    def layout_problem():
        return tf.constant(OTHER_LAYOUT), tf.constant(
            "its labels are under the other key layout's name (slim image/object/bbox/label "
            "vs TF Object Detection API image/object/class/label) than the first records of "
            "the shards: a shard that mixes layouts")

    return tf.cond(other_layout, layout_problem,
                   lambda: tf.cond(unequal, length_problem, encoded_problem))


def check_example(serialized, num_classes=None, max_pixels=None, layout=SLIM, label_ids=None,
                  label_texts=None):
    """Parses (keys of `layout`) and checks one serialized Example in the graph (the
    TFRecord counterpart of the VOC/COCO readers' checks); see `check_features`.
    A serialized string that is not an Example still fails (InvalidArgumentError)."""
    return check_features(_parse(serialized, _CHECK_FEATURES, layout), num_classes,
                          max_pixels, label_ids, label_texts)


@tf.autograph.experimental.do_not_convert  # graph code as written
def _text_problem(f, label_texts):
    """`(kind, detail)` of a record whose label texts disagree with `label_texts` (the name
    of each record label, '' for any), ('', '') otherwise or without texts."""
    labels = f['image/object/bbox/label'].values
    texts = f['image/object/bbox/label_text'].values
    same_size = tf.equal(tf.size(labels), tf.size(texts))
    n = tf.where(same_size, tf.size(labels), 0)
    labels, texts = labels[:n], texts[:n]
    table = tf.constant(list(label_texts), tf.string)
    inside = tf.logical_and(labels >= 0, labels < len(label_texts))
    expected = tf.gather(table, tf.clip_by_value(labels, 0, len(label_texts) - 1))
    bad = tf.logical_and(tf.logical_and(inside, tf.strings.length(texts) > 0),
                         tf.logical_and(tf.strings.length(expected) > 0,
                                        tf.not_equal(texts, expected)))
    first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int32)
    detail = tf.cond(tf.reduce_any(bad), lambda: tf.strings.format(
        'box {}: label {} is named {} here but {} in the other records', (
            first, labels[first], texts[first], expected[first])), lambda: tf.constant(''))
    return tf.where(tf.reduce_any(bad), LABEL_TEXT_DISAGREES, ''), detail


def object_features(values):
    """A `check_features` input from dense values of one image (e.g. a tfds example):
    `values` maps the slim keys (`image/encoded`, `image/filename`, `image/object/bbox/label`,
    `.../label_text`, `.../difficult`, `.../truncated`, `.../is_crowd`, `.../ymin` ..) to
    tensors, scalars for `image/*` and `[N]` for `image/object/*`; missing keys get their
    parse defaults (empty lists)."""
    f = {}
    for key, spec in _CHECK_FEATURES.items():
        if isinstance(spec, tf.io.FixedLenFeature):
            f[key] = tf.convert_to_tensor(values.get(key, spec.default_value), spec.dtype)
            continue
        v = tf.reshape(tf.cast(values[key], spec.dtype), [-1]) if key in values else \
            tf.zeros([0], spec.dtype)
        n = tf.size(v, out_type=tf.int64)
        f[key] = tf.SparseTensor(tf.reshape(tf.range(n), [-1, 1]), v, tf.reshape(n, [1]))
    return f


def training_labels(dataset_ids, label_ids):
    """`(labels, known)`: the training label (1-based position in `label_ids`, the sorted
    dataset ids of a label map) of each of `dataset_ids` `[N]` int64, and whether it is in
    the map (unknown ids get -1). Graph ops (a binary search in a constant)."""
    table = tf.constant(label_ids, tf.int64)
    pos = tf.searchsorted(table, dataset_ids, side='left', out_type=tf.int64)
    known = tf.equal(tf.gather(table, tf.minimum(pos, len(label_ids) - 1)), dataset_ids)
    return tf.where(known, pos + 1, tf.constant(-1, tf.int64)), known


def check_features(f, num_classes=None, max_pixels=None, label_ids=None, label_texts=None):
    """Checks one parsed record in the graph (`_parse`'s dict, or `object_features`).

    Returns `(example, kind, detail, box_kinds, box_details)`:
      example: the `parse_example` dict with the dropped boxes removed (meaningful only when
        `kind` is ''; a bad record gives empty box lists so that the graph still runs);
      kind, detail: scalar strings, '' for a good record, else one of `RECORD_KINDS` and a
        human reason (unequal box lists, missing image/encoded, bytes that are not a whole
        image, boxes outside [0, 1] (by more than `_BOX_TOLERANCE`; closer ones are clipped)
        or not finite) -- the record is to be skipped;
      box_kinds: `[N]` string, '' for a kept box, else one of `BOX_KINDS` (inverted or empty
        box, label outside [1, num_classes), or < 1 when `num_classes` is None, an id not in
        `label_ids`);
      box_details: `[N]` string, each box's index, label and coordinates (for the report).
    label_ids: None (record labels are training labels), or the increasing dataset ids of a
      label map with gaps (`LabelMap.label_ids`): record labels are those ids and become
      their position 1..C-1 (`training_labels`); the box details show the record's id.
    label_texts: None, or the name of each record label (index = label, '' for any name;
      `LabelMap.record_texts` of a map spelled by the records' texts): a record naming a
      label otherwise is skipped as LABEL_TEXT_DISAGREES.
    """
    f = dict(f)
    kind, detail = _record_problem(f, max_pixels)
    if label_texts is not None:
        text_kind, text_detail = _text_problem(f, label_texts)
        use = tf.logical_and(tf.equal(kind, ''), tf.not_equal(text_kind, ''))
        kind, detail = tf.where(use, text_kind, kind), tf.where(use, text_detail, detail)
    ok = tf.equal(kind, '')
    # A bad record's box lists are emptied, so that the stacking below cannot fail on them.
    for key in ('label', 'label_text', 'difficult', 'truncated', 'is_crowd') + _BOX_KEYS:
        sp = f[f'image/object/bbox/{key}']
        f[f'image/object/bbox/{key}'] = tf.sparse.slice(
            sp, [0], tf.where(ok, sp.dense_shape, tf.zeros_like(sp.dense_shape)))
    ex = _fields(f)
    ex['bboxes'] = tf.clip_by_value(ex['bboxes'], 0., 1.)  # within _BOX_TOLERANCE of [0, 1]
    b = ex['bboxes']
    labels = ex['labels']  # as in the record, for the box details
    unknown = tf.zeros_like(labels, tf.bool)
    if label_ids is not None:
        ex['labels'], known = training_labels(labels, label_ids)
        unknown = tf.logical_not(known)
    inverted = tf.logical_or(b[:, 0] >= b[:, 2], b[:, 1] >= b[:, 3])
    high = tf.zeros_like(labels, tf.bool) if num_classes is None else ex['labels'] >= num_classes
    out_of_range = tf.logical_or(ex['labels'] < 1, high)
    box_kinds = tf.where(inverted, INVERTED_BOX, tf.where(
        unknown, LABEL_NOT_IN_MAP, tf.where(out_of_range, LABEL_OUT_OF_RANGE, '')))
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


def read_tfrecord_records(file_pattern, layout=None):
    """Reads TFRecords back into `Record`s (image bytes in `Record.encoded`), eagerly and all
    into memory: for small tools only (tests, inspection, re-conversion). Training and
    evaluation stream TFRecords with `data.build_dataset`/`build_eval_dataset`, and
    `python -m ssd_tf.datasets.check` validates them; this reader checks nothing and fails
    on the first record `parse_example` cannot parse. `layout`: None to `detect_layout`."""
    files = match_files(file_pattern)
    layout = layout or detect_layout(files)
    out = []
    for i, serialized in enumerate(tfdata_options.configure(tf.data.TFRecordDataset(files))):
        p = {k: v.numpy() for k, v in parse_example(serialized, layout).items()}
        out.append(records_lib.make_record(
            p['image_id'].decode() or f'{i:06d}', p['height'], p['width'], p['bboxes'],
            p['labels'], [t.decode() for t in p['label_text']], difficult=p['difficult'],
            truncated=p['truncated'], is_crowd=p['is_crowd'], encoded=p['encoded']))
    return out
