"""The tf.data input pipeline: records or TFRecords -> decode -> preprocess -> encode -> batch.

The augmentation and the anchor encoding are arguments (`preprocess_fn`, `encode_fn`), so this
module imports neither `preprocessing/` nor `nets/`. Boxes are relative
`[ymin, xmin, ymax, xmax]` everywhere. Every image is decoded exactly once, inside one
parallel map that also runs the preprocessing and the encoding.

Element structure: `(images, targets)`:
  images: `[B, h, w, 3]` float32, as returned by `preprocess_fn`.
  targets: a dict with
    when `encode_fn` is given:
      'gclasses'        tuple per layer of `[B, H, W, A]` int64
      'glocalisations'  tuple per layer of `[B, H, W, A, 4]` float32
      'gscores'         tuple per layer of `[B, H, W, A]` float32
    when `with_gt` (default: eval datasets), ground truth padded to the largest count in the
    batch (or to `max_boxes`), padding rows being label 0 and box zeros:
      'labels' `[B, M]` int64, 'bboxes' `[B, M, 4]` float32, 'num_boxes' `[B]` int32,
      and for eval datasets also 'difficult', 'is_crowd' `[B, M]` int64,
      'image_id' `[B]` string (TFRecords without `image/filename`, as the original
      converter wrote them: the position in the file order, '0', '1', ...),
      'height', 'width' `[B]` int32 (original image size).
    Training datasets carry the boxes after `preprocess_fn` (what the network sees, e.g. for
    drawing the augmentation); eval datasets carry the original annotation, in relative
    coordinates of the original image, so evaluation is against the unmodified ground truth
    (the eval preprocessing must keep relative coordinates, as the default warp resize does).

Training drops crowd boxes (`is_crowd`, COCO) before preprocessing. Images may have no boxes.
"""
import inspect
import os

import numpy as np
import tensorflow as tf

from ssd_tf.datasets import tfrecord as tfrecord_lib
from ssd_tf.datasets.records import Record
from ssd_tf.images import decode_image  # noqa: F401  the one decoder; data.decode_image kept

AUTOTUNE = tf.data.AUTOTUNE
# Interleaved TFRecord files read at once; more only adds memory on a few cores.
_MAX_INTERLEAVE = 8


# ---------------------------------------------------------------------------- sources
def _ragged(rows, dtype, inner=()):
    lengths = [int(np.shape(r)[0]) for r in rows]
    flat = np.concatenate([np.asarray(r, dtype).reshape((-1,) + inner) for r in rows]) \
        if rows else np.zeros((0,) + inner, dtype)
    return tf.RaggedTensor.from_row_lengths(flat, np.array(lengths, np.int64))


def _records_dataset(records):
    """Dataset of small per-record dicts plus, for in-memory arrays, a stacked image tensor
    read by index in the map (so shuffling moves indices, not pixels)."""
    if not records:
        raise ValueError("build_dataset got an empty list of records (did every record fail "
                         "validation? see the reader's DataReport)")
    for r in records:
        if not isinstance(r, Record):
            raise TypeError(f"expected ssd_tf.datasets.records.Record, got {type(r).__name__}")
    in_memory = all(r.image is not None for r in records)
    images = None
    if in_memory and len({np.shape(r.image) for r in records}) == 1:
        images = tf.constant(np.stack([np.asarray(r.image, np.uint8) for r in records]))
        paths = [''] * len(records)
        encoded = [b''] * len(records)
    else:
        paths, encoded = [], []
        for r in records:
            if r.image_path is not None and r.encoded is None and r.image is None:
                paths.append(os.fspath(r.image_path))
                encoded.append(b'')
            else:
                paths.append('')
                encoded.append(tfrecord_lib.encoded_image(r)[0])
    meta = {
        'index': np.arange(len(records), dtype=np.int64),
        'image_id': [r.image_id for r in records],
        'path': paths,
        'encoded': encoded,
        'labels': _ragged([r.labels for r in records], np.int64),
        'bboxes': _ragged([r.boxes for r in records], np.float32, (4,)),
        'difficult': _ragged([r.difficult for r in records], np.int64),
        'is_crowd': _ragged([r.is_crowd for r in records], np.int64),
    }
    return tf.data.Dataset.from_tensor_slices(meta), images


def _tfrecord_files(source):
    patterns = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(os.fspath(p))})
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


# ---------------------------------------------------------------------------- builder
def build_dataset(source, preprocess_fn, encode_fn=None, batch_size=32, is_training=True,
                  shuffle_buffer=2048, seed=None, num_parallel_calls=AUTOTUNE,
                  drop_remainder=None, repeat=None, with_gt=None, max_boxes=None,
                  prefetch=AUTOTUNE, start=0):
    """Builds the batched input dataset (element structure in the module docstring).

    Args:
      source: a list of `Record`s (from voc/coco/synthetic readers; images from files, bytes
        or in-memory arrays), or a TFRecord file pattern / list of patterns (slim key layout).
      preprocess_fn: `(image uint8 [H, W, 3], labels [N] int64, bboxes [N, 4] relative yxyx)
        -> (image float32 [h, w, 3], labels [N'], bboxes [N', 4], ...)` (outputs after the
        third, e.g. `preprocess_for_eval`'s bbox_img, are ignored); if it takes a `seed`
        keyword it gets a per-element stateless seed `[2]` int64 `(seed, position in the
        stream)` (see `seed`).
      encode_fn: `(labels, bboxes) -> (gclasses, glocalisations, gscores)` lists per layer,
        e.g. `lambda l, b: net.bboxes_encode(l, b, anchors)`; None to skip targets.
      batch_size: images per batch.
      is_training: shuffle, repeat, drop crowd boxes, drop the last partial batch.
      shuffle_buffer: shuffle buffer for TFRecord sources (record lists are shuffled whole).
      seed: makes the element order and the per-element preprocessing seeds reproducible
        (stateful random ops inside `preprocess_fn` are not reproducible under a parallel
        map; use the `seed` keyword and stateless ops).
      num_parallel_calls: parallelism of the decode/preprocess/encode map.
      drop_remainder, repeat: default to `is_training`.
      with_gt: add padded ground truth to the targets; defaults to `not is_training`.
      max_boxes: pad ground truth to this fixed count (an image with more fails loudly);
        None pads to the largest count in each batch.
      prefetch: batches to prefetch (0 for none).
      start: skip the first `start` elements of the (shuffled, repeated) stream before any
        image is decoded, keeping each element's position-derived seed: a resumed run passes
        `step * batch_size` and continues with exactly the batches it would have seen.
    """
    if drop_remainder is None:
        drop_remainder = is_training
    if repeat is None:
        repeat = is_training
    if with_gt is None:
        with_gt = not is_training
    pass_seed = 'seed' in inspect.signature(preprocess_fn).parameters
    options = tf.data.Options()
    options.deterministic = True

    images = None
    if isinstance(source, (str, os.PathLike)) or (
            isinstance(source, (list, tuple)) and source and
            all(isinstance(s, (str, os.PathLike)) for s in source)):
        files = _tfrecord_files(source)
        ds = tf.data.Dataset.from_tensor_slices(files)
        if is_training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), _MAX_INTERLEAVE),
                           num_parallel_calls=min(len(files), _MAX_INTERLEAVE),
                           deterministic=True)
        if is_training:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(tfrecord_lib.parse_example, num_parallel_calls=num_parallel_calls)
    else:
        ds, images = _records_dataset(list(source))
        if is_training:
            ds = ds.shuffle(int(ds.cardinality()), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if start:
        ds = ds.skip(int(start))
    # the element's position in the stream -> its preprocessing seed
    ds = ds.enumerate(start=int(start))
    base_seed = 0 if seed is None else int(seed)

    def load(position, ex):
        if images is not None:
            image = tf.gather(images, ex['index'])
        else:
            data = ex['encoded']
            if 'path' in ex:
                data = tf.cond(tf.strings.length(data) > 0, lambda: data,
                               lambda: tf.io.read_file(ex['path']))
            image = decode_image(data)
        labels = tf.reshape(tf.cast(ex['labels'], tf.int64), [-1])
        bboxes = tf.reshape(tf.cast(ex['bboxes'], tf.float32), [-1, 4])
        difficult = tf.reshape(tf.cast(ex['difficult'], tf.int64), [-1])
        is_crowd = tf.reshape(tf.cast(ex['is_crowd'], tf.int64), [-1])
        shape = tf.shape(image)
        if max_boxes is not None:
            tf.debugging.assert_less_equal(
                tf.size(labels), max_boxes,
                message=f"an image has more boxes than max_boxes={max_boxes}; raise max_boxes")
        p_labels, p_bboxes = labels, bboxes
        if is_training:
            keep = tf.equal(is_crowd, 0)
            p_labels, p_bboxes = tf.boolean_mask(labels, keep), tf.boolean_mask(bboxes, keep)
        kwargs = {}
        if pass_seed:
            kwargs['seed'] = tf.stack([tf.constant(base_seed, tf.int64), position])
        out_image, p_labels, p_bboxes = preprocess_fn(image, p_labels, p_bboxes, **kwargs)[:3]
        p_labels = tf.cast(p_labels, tf.int64)
        p_bboxes = tf.reshape(tf.cast(p_bboxes, tf.float32), [-1, 4])
        targets = {}
        if encode_fn is not None:
            gclasses, glocs, gscores = encode_fn(p_labels, p_bboxes)
            targets['gclasses'] = tuple(tf.cast(g, tf.int64) for g in gclasses)
            targets['glocalisations'] = tuple(tf.cast(g, tf.float32) for g in glocs)
            targets['gscores'] = tuple(tf.cast(g, tf.float32) for g in gscores)
        if with_gt:
            if is_training:
                targets.update(labels=p_labels, bboxes=p_bboxes)
            else:
                # Records of the original converter carry no id: use the stream position.
                image_id = tf.where(tf.strings.length(ex['image_id']) > 0, ex['image_id'],
                                    tf.strings.as_string(position))
                targets.update(labels=labels, bboxes=bboxes, difficult=difficult,
                               is_crowd=is_crowd, image_id=image_id,
                               height=shape[0], width=shape[1])
            targets['num_boxes'] = tf.size(targets['labels'], out_type=tf.int32)
        return tf.cast(out_image, tf.float32), targets

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    if with_gt:
        padded_shapes = _padded_shapes(ds.element_spec, max_boxes)
        ds = ds.padded_batch(batch_size, padded_shapes=padded_shapes,
                             drop_remainder=drop_remainder)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                      num_parallel_calls=num_parallel_calls, deterministic=True)
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds.with_options(options)


_GT_KEYS = ('labels', 'bboxes', 'difficult', 'is_crowd')


def _padded_shapes(spec, max_boxes):
    image_spec, target_spec = spec

    def shape_of(key, s):
        shape = s.shape.as_list()
        if key in _GT_KEYS and max_boxes is not None:
            shape[0] = max_boxes
        return tf.TensorShape(shape)

    targets = {k: (tuple(tf.TensorShape(x.shape) for x in v) if isinstance(v, tuple)
                   else shape_of(k, v)) for k, v in target_spec.items()}
    return tf.TensorShape(image_spec.shape), targets


def build_eval_dataset(source, preprocess_fn, batch_size=32, encode_fn=None, max_boxes=None,
                       num_parallel_calls=AUTOTUNE):
    """Eval input: every image once, in source order, with `image_id`, original size and the
    original ground truth padded (`difficult`, `is_crowd` included); see `build_dataset`."""
    return build_dataset(source, preprocess_fn, encode_fn=encode_fn, batch_size=batch_size,
                         is_training=False, with_gt=True, max_boxes=max_boxes,
                         num_parallel_calls=num_parallel_calls)
