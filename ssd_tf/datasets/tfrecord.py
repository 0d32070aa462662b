"""TFRecords in the slim SSD's key layout: writer (tf.train.Example) and graph-mode parser.

Keys (as the original `pascalvoc_to_tfrecords.py` wrote them): `image/encoded`,
`image/format`, `image/height`, `image/width`, `image/channels`, `image/shape`,
`image/object/bbox/{xmin,ymin,xmax,ymax}` (relative floats), `image/object/bbox/label`,
`image/object/bbox/label_text`, `image/object/bbox/difficult`, `image/object/bbox/truncated`.
This writer adds `image/filename` (the image id) and `image/object/bbox/is_crowd`; the parser
treats both, and `difficult`/`truncated`, as optional, so records of the original converter
read unchanged. Boxes are relative `[ymin, xmin, ymax, xmax]` once parsed.
"""
import os

import numpy as np
import tensorflow as tf

from ssd_tf import images
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


# ---------------------------------------------------------------------------- writing
def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _float(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def encoded_image(record):
    """`(bytes, format)` of a record's image: the file's own bytes when it has a path or
    bytes (no re-encoding), PNG of an in-memory array (`ssd_tf.images.read_image_bytes`)."""
    data = images.read_image_bytes(record)
    return data, images.sniff_format(data) or 'JPEG'


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
    """
    num_shards = int(num_shards)
    if num_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {num_shards}")
    os.makedirs(output_dir, exist_ok=True)
    paths = [shard_path(output_dir, name, split, s, num_shards) for s in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for i, r in enumerate(records):
            writers[i % num_shards].write(record_to_example(r).SerializeToString())
    finally:
        for w in writers:
            w.close()
    return paths


# ---------------------------------------------------------------------------- reading
def _dense(sparse, default):
    return tf.sparse.to_dense(sparse, default_value=default)


def _one_per_box(values, n, default):
    """An optional per-object feature: the values when there is one per box, else `default`
    for every box (the original converter always wrote them; other writers may not)."""
    return tf.cond(tf.equal(tf.size(values), n), lambda: values,
                   lambda: tf.fill([n], tf.constant(default, values.dtype)))


def parse_example(serialized):
    """Parses one serialized Example (graph-mode, for `tf.data` map).

    Returns a dict: `encoded` (string), `image_id` (string, '' if absent), `height`, `width`
    (int32 from the record), `labels` `[N]` int64, `bboxes` `[N, 4]` float32 relative yxyx,
    `difficult`, `truncated`, `is_crowd` `[N]` int64, `label_text` `[N]` string.
    """
    f = tf.io.parse_single_example(serialized, FEATURES)
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


def read_tfrecord_records(file_pattern):
    """Reads TFRecords back into `Record`s (image bytes in `Record.encoded`), eagerly; for
    tests, inspection and re-conversion, not for training (use `data.build_dataset`)."""
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    out = []
    for i, serialized in enumerate(tf.data.TFRecordDataset(files)):
        p = {k: v.numpy() for k, v in parse_example(serialized).items()}
        out.append(records_lib.make_record(
            p['image_id'].decode() or f'{i:06d}', p['height'], p['width'], p['bboxes'],
            p['labels'], [t.decode() for t in p['label_text']], difficult=p['difficult'],
            truncated=p['truncated'], is_crowd=p['is_crowd'], encoded=p['encoded']))
    return out
