"""The tf.data input pipeline: records, TFRecords or a tfds data set -> decode -> preprocess
-> encode -> batch.

The per-image augmentation and the anchor encoding are arguments (`preprocess_fn`,
`encode_fn`), so this module imports no network; from `preprocessing/` it takes only the
batch-level mosaic (`mosaic_prob`, which needs the batch before encoding). `check_tfrecords`
runs the same checks over a whole data set (the data check command). Boxes are relative
`[ymin, xmin, ymax, xmax]` everywhere. `build_dataset` runs these steps, each a function
below: source -> order (shuffle, repeat, skip `start`) -> load (decode; TFRecords are also
parsed and checked, `tfrecord.check_example`) -> preprocess + encode -> batch (with mosaics:
preprocess -> batch -> mosaic -> encode -> batch). Every image is decoded exactly once,
after the skip. Its options are a `PipelineOptions`. TFRecords of the
slim or the TF Object Detection API key layout are read (`tfrecord.detect_layout`, logged);
a `datasets.tfds.TfdsSource` streams through the same checks (`tfrecord.check_features`).

Bad TFRecord records are skipped, counted in a `datasets.check.DataProblems` and named
('<shard> record <index>') in a warning; in training the batch that held one fills its row
with another of its images, so batches keep their stream positions and `start` resumes
exactly. Records from the voc/coco readers were checked when they were read.

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
      'height', 'width' `[B]` int32 (original image size), 'bbox_img' `[B, 4]` and
      optionally 'encoded' `[B]` (see `build_eval_dataset`).
    Training datasets carry the boxes after `preprocess_fn` (what the network sees, e.g. for
    drawing the augmentation); eval datasets carry the original annotation, in relative
    coordinates of the original image, so evaluation is against the unmodified ground truth
    (the eval preprocessing must keep relative coordinates, as the default warp resize does).

Training drops crowd boxes (`is_crowd`, COCO) before preprocessing. Images may have no boxes.
"""
import dataclasses
import functools
import inspect
import logging
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from ssd_tf.datasets import check as check_lib
from ssd_tf.datasets import tfds as tfds_lib
from ssd_tf.datasets import tfrecord as tfrecord_lib
from ssd_tf.datasets import records as records_lib
from ssd_tf.datasets.records import Record
from ssd_tf import tfdata_options
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf.images import decode_image  # the one decoder

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# Batches prefetched by default: a fixed depth, so the pipeline holds at most this many.
# `prefetch(AUTOTUNE)` (with or without tf.data's autotuning model) doubles its buffer each
# time a pause of the consumer (validation, summaries, checkpoints) lets it fill and a burst
# then empties it: resident memory 2.4 GB after eight 6 s pauses for SSD300 batches of 32,
# against 1.1 GB with 4 (`bench/bench_iterator_delete.py --memory_cycles 8`).
PREFETCH_BATCHES = 4
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


# ---------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """The options of `build_dataset` (each documented there); `None` defaults are resolved
    from `is_training` by `resolved()`."""
    batch_size: int = 32
    is_training: bool = True
    shuffle_buffer: int = 2048
    seed: Optional[int] = None
    num_parallel_calls: int = AUTOTUNE
    drop_remainder: Optional[bool] = None
    repeat: Optional[bool] = None
    with_gt: Optional[bool] = None
    max_boxes: Optional[int] = None
    prefetch: int = PREFETCH_BATCHES
    start: int = 0
    num_classes: Optional[int] = None
    report: Optional[check_lib.DataProblems] = None
    max_pixels: Optional[int] = None
    with_encoded: bool = False
    layout: Optional[str] = None
    label_ids: Optional[tuple] = None
    label_texts: Optional[tuple] = None
    mosaic_prob: float = 0.

    def resolved(self):
        """A copy with drop_remainder/repeat defaulting to is_training, with_gt to its
        negation, and a (warn-only) DataProblems when no report is given."""
        train = self.is_training
        return dataclasses.replace(
            self, drop_remainder=train if self.drop_remainder is None else self.drop_remainder,
            repeat=train if self.repeat is None else self.repeat,
            with_gt=(not train) if self.with_gt is None else self.with_gt,
            report=check_lib.DataProblems() if self.report is None else self.report)


# ---------------------------------------------------------------------------- builder
# The maps convert what they call with AutoGraph, so a caller's preprocess_fn may use Python
# control flow on tensors. The library's own (prep.preprocess_for_train / preprocess_for_eval,
# encoding.bboxes_encode) are graph code as written and marked do_not_convert: converting them
# cost about 2 s at every dataset build (bench/bench_dataset_build.py).
def build_dataset(source, preprocess_fn, encode_fn=None, options=None, **overrides):
    """Builds the batched input dataset (element structure in the module docstring).

    source -> order (shuffle, repeat, skip `start`) -> load (TFRecords: parse, check, decode;
    bad records skipped and reported) -> preprocess + encode -> batch.

    Args:
      source: a list of `Record`s (from voc/coco/synthetic readers; images from files, bytes
        or in-memory arrays), a TFRecord file pattern / list of patterns (slim or TF Object
        Detection API key layout), or a `datasets.tfds.TfdsSource` (read like TFRecords).
      preprocess_fn: `(image uint8 [H, W, 3], labels [N] int64, bboxes [N, 4] relative yxyx)
        -> (image float32 [h, w, 3], labels [N'], bboxes [N', 4], ...)` (outputs after the
        third, e.g. `preprocess_for_eval`'s bbox_img, are ignored); if it takes a `seed`
        keyword it gets a per-element stateless seed `[2]` int64 `(seed, position in the
        stream)` (see `seed`).
      encode_fn: `(labels, bboxes) -> (gclasses, glocalisations, gscores)` lists per layer,
        e.g. `lambda l, b: net.bboxes_encode(l, b, anchors)`; None to skip targets.
      options: a `PipelineOptions`; keyword arguments override its fields:
      batch_size: images per batch.
      is_training: shuffle, repeat, drop crowd boxes, drop the last partial batch.
      shuffle_buffer: shuffle buffer for TFRecord sources (record lists are shuffled whole).
      seed: makes the element order and the per-element preprocessing seeds reproducible
        (stateful random ops inside `preprocess_fn` are not reproducible under a parallel
        map; use the `seed` keyword and stateless ops).
      num_parallel_calls: parallelism of the load and preprocess/encode maps.
      drop_remainder, repeat: default to `is_training`.
      with_gt: add padded ground truth to the targets; defaults to `not is_training`.
      max_boxes: pad ground truth to this fixed count (an image with more fails loudly);
        None pads to the largest count in each batch.
      prefetch: batches to prefetch (0 for none; `tf.data.AUTOTUNE` for the prefetch's own
        tuner, whose buffer grows with each pause of the consumer: see `PREFETCH_BATCHES`).
      start: skip the first `start` elements of the (shuffled, repeated) stream before any
        record is parsed or decoded, keeping each element's position-derived seed: a resumed
        run passes `step * batch_size` and continues with exactly the batches it would have
        seen (bad records included: see below).
      num_classes: TFRecord boxes with a label outside [1, num_classes) are dropped and
        reported (None: only labels < 1).
      report: a `check.DataProblems` that counts the TFRecord records skipped and boxes
        dropped (strict mode: the first problem stops the stream); default: warnings only.
      max_pixels: TFRecord images over this many pixels (read from the header) are skipped.
      with_encoded: eval datasets only; also carry each image's encoded file (see
        `build_eval_dataset`).
      layout: the TFRecord key layout, `tfrecord.SLIM` or `OD_API`; None finds it from the
        shards' first records (`tfrecord.detect_layout`, which refuses a mix).
      label_ids: the dataset ids of a label map with gaps (`LabelMap.label_ids`): TFRecord
        labels are those ids, mapped to training labels 1..C-1 in the graph; a box whose id
        is not among them is dropped and reported. None: labels are training labels. Record
        lists and tfds sets hold training labels already (their readers map names).
      label_texts: TFRecords: the name of each record label (`LabelMap.record_texts` of a
        label map spelled by the records' label texts); a record naming a label otherwise
        is skipped and counted like any bad record. None: texts are not checked.
      mosaic_prob: training only: the probability that an image becomes a mosaic of four
        of its batch after `preprocess_fn` (NHWC images of one size; `prep.mosaic_batch`),
        its targets encoded after it; 0: none. Drawn from `seed` and the batch's stream
        position, so a resumed run sees the same mosaics.

    Bad TFRecord records (`tfrecord.check_example`: unequal box lists, missing or broken
    image bytes, boxes outside [0, 1]; and records the decoder fails on) are skipped with a
    warning naming the shard and record index. In training a bad record's place in its batch
    is taken by another image of the same batch, so every batch still covers the same stream
    positions and a resume with `start` sees the same records; eval streams just omit it.
    """
    opts = dataclasses.replace(options or PipelineOptions(), **overrides).resolved()
    opts = dataclasses.replace(opts, layout=resolve_layout(source, opts.layout))
    _check_mosaic(opts)
    ds = _prepared(source, _preparer(preprocess_fn, encode_fn, opts), opts)
    if opts.mosaic_prob:
        ds = _mosaic(ds, opts, encode_fn)
    return _batch(ds, opts)


def _preparer(preprocess_fn, encode_fn, opts):
    """`_prepare` bound to the pipeline's functions and options. With mosaics the targets
    are encoded after them: each element carries its boxes and stream position instead."""
    pass_seed = 'seed' in inspect.signature(preprocess_fn).parameters
    mosaic = bool(opts.mosaic_prob)
    return functools.partial(
        _prepare, preprocess_fn=preprocess_fn, encode_fn=None if mosaic else encode_fn,
        opts=dataclasses.replace(opts, with_gt=True) if mosaic else opts, pass_seed=pass_seed)


def _prepared(source, prepare, opts):
    """The ordered, loaded and prepared (unbatched) elements of `source`."""
    if isinstance(source, tfds_lib.TfdsSource) or _is_tfrecord_source(source):
        ds = _order(_tfds_source(source, opts) if isinstance(source, tfds_lib.TfdsSource)
                    else _tfrecord_source(source, opts), opts)
        ds = _load_tfrecords(ds, opts, locate=None)
        if opts.is_training:
            ds = ds.map(lambda position, ex: prepare(position, ex, keep_flag=True),
                        num_parallel_calls=opts.num_parallel_calls, deterministic=True)
        else:
            ds = ds.filter(lambda position, ex: ex['ok'])
            ds = ds.map(prepare, num_parallel_calls=opts.num_parallel_calls, deterministic=True)
    else:
        ds, images = _records_dataset(list(source))
        ds = _order(ds, opts, int(ds.cardinality()))
        ds = ds.map(lambda position, meta: prepare(position, _load_record(meta, images)),
                    num_parallel_calls=opts.num_parallel_calls, deterministic=True)
    return ds


def _check_mosaic(opts):
    """ValueError for a `mosaic_prob` outside [0, 1] or given to an evaluation stream."""
    try:
        prob = float(opts.mosaic_prob)
    except (TypeError, ValueError):
        prob = float('nan')
    if not 0. <= prob <= 1.:
        raise ValueError(f"mosaic_prob must be a probability in [0, 1] (0: no mosaics), got "
                         f"{opts.mosaic_prob!r}")
    if prob and not opts.is_training:
        raise ValueError(f"mosaic_prob={opts.mosaic_prob} with is_training=False: mosaics are "
                         "a training augmentation; evaluation reads every image as it is")


def _is_tfrecord_source(source):
    return isinstance(source, (str, os.PathLike)) or (
        isinstance(source, (list, tuple)) and bool(source) and
        all(isinstance(s, (str, os.PathLike)) for s in source))


def _tfrecord_source(source, opts):
    """`{'file', 'record' (index in its file), 'serialized'}` per record: files shuffled in
    training, then interleaved and (training) shuffled in a buffer of `shuffle_buffer`; a
    stream that does not repeat ends with an end marker (`_with_end_marker`)."""
    files = tfrecord_lib.match_files(source)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if opts.is_training:
        ds = ds.shuffle(len(files), seed=opts.seed, reshuffle_each_iteration=True)
    ds = ds.interleave(_read_file, cycle_length=min(len(files), _MAX_INTERLEAVE),
                       num_parallel_calls=min(len(files), _MAX_INTERLEAVE), deterministic=True)
    if opts.is_training:
        ds = ds.shuffle(opts.shuffle_buffer, seed=opts.seed, reshuffle_each_iteration=True)
    return ds if opts.repeat else _with_end_marker(ds)


def _tfds_source(source, opts):
    """`{'file', 'record', 'values'}` per example of a tfds split (`TfdsSource.stream`):
    tfds shuffles its files in training, then a buffer of `shuffle_buffer` as for
    TFRecords; a stream that does not repeat ends with an end marker."""
    ds = source.stream(shuffle=opts.is_training, seed=opts.seed)
    if opts.is_training:
        ds = ds.shuffle(opts.shuffle_buffer, seed=opts.seed, reshuffle_each_iteration=True)
    return ds if opts.repeat else _with_end_marker(ds)


def resolve_layout(source, layout=None):
    """The key layout of TFRecord `source`: `layout` when given, else
    `tfrecord.detect_layout`'s, logged; None for other sources."""
    if layout is not None or not _is_tfrecord_source(source):
        return layout
    layout = tfrecord_lib.detect_layout(source)
    logger.info("%s: %s", source, tfrecord_lib.layout_description(layout))
    return layout


def _read_file(path):
    return tf.data.TFRecordDataset(path).enumerate().map(
        lambda i, s: {'file': path, 'record': i, 'serialized': s})


def _order(ds, opts, shuffle_buffer=None):
    """Shuffles (training, when `shuffle_buffer` is given), repeats, skips `start` elements
    and numbers the rest with their stream position: `(position, element)`. Nothing is
    parsed or decoded here."""
    if opts.is_training and shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=opts.seed, reshuffle_each_iteration=True)
    if opts.repeat:
        ds = ds.repeat()
    if opts.start:
        ds = ds.skip(int(opts.start))
    return ds.enumerate(start=int(opts.start))


def _load_record(meta, images):
    """A record-list element -> the loaded example (image decoded or gathered)."""
    if images is not None:
        image = tf.gather(images, meta['index'])
    else:
        data = tf.cond(tf.strings.length(meta['encoded']) > 0, lambda: meta['encoded'],
                       lambda: tf.io.read_file(meta['path']))
        image = decode_image(data)
    return {'image': image, 'labels': meta['labels'], 'bboxes': meta['bboxes'],
            'difficult': meta['difficult'], 'is_crowd': meta['is_crowd'],
            'image_id': meta['image_id'], 'encoded': None if images is not None else data}


# ---------------------------------------------------------------------------- TFRecord checks
# The image that stands in for a bad record until its batch replaces it (never trained on).
_PLACEHOLDER_SIZE = 32


def _load_tfrecords(ds, opts, locate):
    """`(position, {'file', 'record', 'serialized'})` -> `(position, example)`: parses, checks
    (`tfrecord.check_example`) and decodes each record; a bad one is reported to
    `opts.report` and comes out with `ok` False and a placeholder image. A record the parser
    or decoder still fails on is dropped by `ignore_errors` and put back as such a
    placeholder by `_refill_dropped` (named by `locate(position)`, or its stream position)."""
    report = opts.report

    def load(position, rec):
        if 'values' in rec:  # a tfds example
            ex, kind, detail, box_kinds, box_details = tfrecord_lib.check_features(
                tfrecord_lib.object_features(rec['values']), num_classes=opts.num_classes,
                max_pixels=opts.max_pixels)  # tfds labels: its ClassLabel's, contiguous
        else:
            ex, kind, detail, box_kinds, box_details = tfrecord_lib.check_example(
                rec['serialized'], num_classes=opts.num_classes, max_pixels=opts.max_pixels,
                layout=opts.layout, label_ids=opts.label_ids, label_texts=opts.label_texts)
        real = rec['record'] >= 0  # the end-of-stream sentinel has record -1
        location = tf.strings.join([rec['file'], ' record ', tf.strings.as_string(rec['record'])])
        ok = tf.equal(kind, '')
        needs_report = tf.logical_and(real, tf.logical_or(
            tf.logical_not(ok), tf.reduce_any(tf.not_equal(box_kinds, ''))))
        if report.strict:  # reported later, in stream order, by _stop_at_first_problem
            problem = {'location': location, 'kind': kind, 'detail': detail,
                       'box_kinds': box_kinds, 'box_details': box_details,
                       'any': needs_report}
        else:
            reported = tf.cond(needs_report, lambda: _report(
                report, location, kind, detail, box_kinds, box_details),
                lambda: tf.constant(True))
            with tf.control_dependencies([reported]):
                ok = tf.identity(ok)
        ok = tf.logical_and(ok, real)
        image = tf.cond(ok, lambda: decode_image(ex['encoded']), _placeholder_image)
        example = _example(image, ex, ok)
        if report.strict:
            example['problem'] = problem
        return position, example

    ds = ds.map(load, num_parallel_calls=opts.num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    ds = _refill_dropped(ds, opts.start, report, locate)
    return _stop_at_first_problem(ds, report) if report.strict else ds


def _stop_at_first_problem(ds, report):
    """Strict mode: reports (and so raises at) the first bad record in stream order."""
    def check(position, ex):
        ex = dict(ex)
        p = ex.pop('problem')
        reported = tf.cond(p['any'], lambda: _report(
            report, p['location'], p['kind'], p['detail'], p['box_kinds'], p['box_details']),
            lambda: tf.constant(True))
        with tf.control_dependencies([reported]):
            return tf.identity(position), ex

    return ds.map(check)


def _example(image, ex, ok):
    return {'image': image, 'labels': ex['labels'], 'bboxes': ex['bboxes'],
            'difficult': ex['difficult'], 'is_crowd': ex['is_crowd'],
            'image_id': ex['image_id'], 'ok': ok, 'encoded': ex.get('encoded', tf.constant(''))}


def _placeholder_image():
    return tf.zeros([_PLACEHOLDER_SIZE, _PLACEHOLDER_SIZE, 3], tf.uint8)


def _report(report, location, kind, detail, box_kinds, box_details):
    """Hands one record's problems to the Python-side `report` (a py_function: counts,
    warnings and the strict-mode stop live in Python). Returns True (a dependency handle)."""
    def add(location, kind, detail, box_kinds, box_details):
        where = location.numpy().decode('utf-8', 'replace')
        if kind.numpy():
            report.add(where, kind.numpy().decode(), detail.numpy().decode('utf-8', 'replace'))
        for k, d in zip(box_kinds.numpy(), box_details.numpy()):
            if k:
                report.add(where, k.decode(), d.decode('utf-8', 'replace'), whole_record=False)
        return True

    done = tf.py_function(add, [location, kind, detail, box_kinds, box_details], tf.bool)
    done.set_shape([])
    return done


def _refill_dropped(ds, start, report, locate):
    """Puts a placeholder (`ok` False) back at every stream position that `ignore_errors`
    dropped, so that positions stay contiguous, and reports it."""
    def step(expected, item):
        return item[0] + 1, (expected, item)

    def unreadable(position):
        where = tf.py_function(lambda p: locate(int(p)) if locate else
                               f"the record at stream position {int(p)} (run python -m "
                               f"ssd_tf.datasets.check on the shards to name it)",
                               [position], tf.string)
        where.set_shape([])
        empty_strings = tf.constant([], tf.string)
        reported = _report(report, where, tf.constant(tfrecord_lib.UNREADABLE), tf.constant(
            'TensorFlow cannot parse or decode it (its error is logged above)'),
                           empty_strings, empty_strings)
        with tf.control_dependencies([reported]):
            ok = tf.logical_not(tf.identity(reported))
        empty = {'labels': tf.zeros([0], tf.int64), 'bboxes': tf.zeros([0, 4], tf.float32),
                 'difficult': tf.zeros([0], tf.int64), 'is_crowd': tf.zeros([0], tf.int64),
                 'image_id': tf.constant('')}
        example = _example(_placeholder_image(), empty, ok)
        if report.strict:
            example['problem'] = {'location': where, 'kind': tf.constant(''),
                                  'detail': tf.constant(''), 'box_kinds': empty_strings,
                                  'box_details': empty_strings, 'any': tf.constant(False)}
        return position, example

    def expand(expected, item):
        dropped = tf.data.Dataset.range(expected, item[0]).map(unreadable)
        return dropped.concatenate(tf.data.Dataset.from_tensors(item))

    return ds.scan(tf.constant(int(start), tf.int64), step).flat_map(expand)


def checked_tfrecords(source, report, num_classes=None, max_pixels=None, label_ids=None,
                      label_texts=None):
    """Every record of the TFRecord files of `source` (a pattern or list), in file order,
    through the training pipeline's load step (`check_example`, decode; `label_ids` as in
    `build_dataset`); problems go to
    `report` and name the shard and record index. Elements: `(position, example)`, the last
    one an end marker at position = the number of records (`ok` False)."""
    files = tfrecord_lib.match_files(source)
    counts = []  # (records, whether the file ends inside a record) per file

    def locate(position):
        if not counts:  # only needed for a record the decoder fails on: count lazily
            counts.extend(_count_records(f) for f in files)
        for f, (n, truncated) in zip(files, counts):
            if position < n or (truncated and position == n):
                return f"{f} record {position}" + (
                    " (the file ends inside this record: a truncated shard)"
                    if position == n else "")
            position -= n + truncated
        return f"the record at stream position {position}"

    ds = _with_end_marker(tf.data.Dataset.from_tensor_slices(files).flat_map(_read_file))
    opts = PipelineOptions(is_training=False, num_classes=num_classes, max_pixels=max_pixels,
                           report=report, layout=resolve_layout(files),
                           label_ids=label_ids, label_texts=label_texts).resolved()
    return _load_tfrecords(_order(ds, opts), opts, locate)


def check_tfrecords(pattern, num_classes=None, strict=False, max_pixels=None, label_ids=None,
                    label_texts=None):
    """Scans every record of the TFRecord files matching `pattern` (a pattern or a list) with
    the pipeline's checks (`checked_tfrecords`) and a decode of each image (`label_ids`: the
    dataset ids of a label map with gaps, see `build_dataset`); returns
    `(num_records, check.DataProblems)`. In strict mode the first problem raises DataError."""
    problems = check_lib.DataProblems(strict=strict)
    ds = checked_tfrecords(pattern, problems, num_classes=num_classes, max_pixels=max_pixels,
                           label_ids=label_ids, label_texts=label_texts)
    n = 0
    try:
        for position, _ in ds:  # the last element is the end marker, at position = count
            n = int(position)
    except tf.errors.OpError:
        if problems.strict_error:
            raise records_lib.DataError(problems.strict_error) from None
        raise
    return n, problems


def _count_records(path):
    """`(number of whole records, whether the file ends inside one)` of a TFRecord file, as
    the pipeline's reader sees it (it reads the payloads and stops where their checksums
    fail, so the positions it names match the stream; `tfrecord.count_records` only walks
    the headers, for the epoch size)."""
    n = 0
    try:
        for _ in tfdata_options.configure(tf.data.TFRecordDataset(path)):
            n += 1
    except tf.errors.DataLossError:
        return n, True
    return n, False


def _with_end_marker(ds):
    """Appends an element with record index -1 (and empty or zero values of the stream's
    structure): a finite stream's last records that the decoder fails on are then followed
    by something, so `_refill_dropped` sees them."""
    marker = tf.nest.map_structure(
        lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype), ds.element_spec)
    marker['record'] = tf.constant(-1, tf.int64)
    return ds.concatenate(tf.data.Dataset.from_tensors(marker))


# ---------------------------------------------------------------------------- preprocess
def _prepare(position, ex, preprocess_fn, encode_fn, opts, pass_seed, keep_flag=False):
    """A loaded example -> `(image float32, targets)`: crowd boxes dropped (training),
    `preprocess_fn` with the position-derived seed, `encode_fn`, ground truth if asked."""
    image = ex['image']
    labels = tf.reshape(tf.cast(ex['labels'], tf.int64), [-1])
    bboxes = tf.reshape(tf.cast(ex['bboxes'], tf.float32), [-1, 4])
    difficult = tf.reshape(tf.cast(ex['difficult'], tf.int64), [-1])
    is_crowd = tf.reshape(tf.cast(ex['is_crowd'], tf.int64), [-1])
    shape = tf.shape(image)
    if opts.max_boxes is not None:
        tf.debugging.assert_less_equal(
            tf.size(labels), opts.max_boxes,
            message=f"an image has more boxes than max_boxes={opts.max_boxes}; raise max_boxes")
    p_labels, p_bboxes = labels, bboxes
    if opts.is_training:
        keep = tf.equal(is_crowd, 0)
        p_labels, p_bboxes = tf.boolean_mask(labels, keep), tf.boolean_mask(bboxes, keep)
    kwargs = {}
    if pass_seed:
        kwargs['seed'] = tf.stack([tf.constant(0 if opts.seed is None else int(opts.seed),
                                               tf.int64), position])
    outs = preprocess_fn(image, p_labels, p_bboxes, **kwargs)
    out_image, p_labels, p_bboxes = outs[:3]
    p_labels = tf.cast(p_labels, tf.int64)
    p_bboxes = tf.reshape(tf.cast(p_bboxes, tf.float32), [-1, 4])
    targets = _encoded(encode_fn, p_labels, p_bboxes)
    if opts.mosaic_prob:
        targets['_position'] = position
    if opts.with_gt:
        if opts.is_training:
            targets.update(labels=p_labels, bboxes=p_bboxes)
        else:
            # Records of the original converter carry no id: use the stream position.
            image_id = tf.where(tf.strings.length(ex['image_id']) > 0, ex['image_id'],
                                tf.strings.as_string(position))
            targets.update(labels=labels, bboxes=bboxes, difficult=difficult,
                           is_crowd=is_crowd, image_id=image_id,
                           height=shape[0], width=shape[1])
            targets.update(_eval_extras(outs, ex.get('encoded'), image, opts.with_encoded))
        targets['num_boxes'] = tf.size(targets['labels'], out_type=tf.int32)
    if keep_flag:
        targets[_OK] = ex['ok']
    return tf.cast(out_image, tf.float32), targets


def _encoded(encode_fn, labels, bboxes):
    """The encoded targets `{gclasses, glocalisations, gscores}` (tuples per layer) of one
    example's labels `[N]` and boxes `[N, 4]`; `{}` without an encode_fn."""
    if encode_fn is None:
        return {}
    gclasses, glocs, gscores = encode_fn(labels, bboxes)
    return {'gclasses': tuple(tf.cast(g, tf.int64) for g in gclasses),
            'glocalisations': tuple(tf.cast(g, tf.float32) for g in glocs),
            'gscores': tuple(tf.cast(g, tf.float32) for g in gscores)}


def _mosaic(ds, opts, encode_fn):
    """Prepared training elements (image, {labels, bboxes, num_boxes, _position[, _ok]}) ->
    the same stream after `mosaic_batch` on each batch of `batch_size` (bad records' rows
    replaced first, as `_batch` does), unbatched again with the targets encoded and, when
    `with_gt`, the ground truth of each mosaic. Batches keep their stream positions, so the
    final `_batch` regroups exactly these rows."""
    ds = ds.padded_batch(opts.batch_size, padded_shapes=_padded_shapes(ds.element_spec, None),
                         drop_remainder=opts.drop_remainder)
    if _OK in ds.element_spec[1]:
        ds = ds.map(_replace_bad_rows, num_parallel_calls=opts.num_parallel_calls,
                    deterministic=True)
    base = tf.constant(0 if opts.seed is None else int(opts.seed), tf.int64)

    def mix(images, targets):
        # A seed apart from the elements' own (seed, position >= 0).
        seed = tf.stack([base, -1 - targets['_position'][0]])
        # One padding box more: unbatch() crashes the process (TensorFlow 2.21) on a
        # component with a zero-size dimension, [B, 0] for a batch without boxes.
        labels = tf.pad(targets['labels'], [[0, 0], [0, 1]])
        bboxes = tf.pad(targets['bboxes'], [[0, 0], [0, 1], [0, 0]])
        return prep.mosaic_batch(images, labels, bboxes, seed, opts.mosaic_prob)

    def finish(image, labels, bboxes):
        keep = labels > 0
        labels, bboxes = tf.boolean_mask(labels, keep), tf.boolean_mask(bboxes, keep)
        if opts.max_boxes is not None:
            tf.debugging.assert_less_equal(
                tf.size(labels), opts.max_boxes,
                message=f"a mosaic has more boxes than max_boxes={opts.max_boxes}; raise "
                        "max_boxes")
        targets = _encoded(encode_fn, labels, bboxes)
        if opts.with_gt:
            targets.update(labels=labels, bboxes=bboxes,
                           num_boxes=tf.size(labels, out_type=tf.int32))
        return image, targets

    ds = ds.map(mix, num_parallel_calls=opts.num_parallel_calls, deterministic=True)
    return ds.unbatch().map(finish, num_parallel_calls=opts.num_parallel_calls,
                            deterministic=True)


# ---------------------------------------------------------------------------- batch
_OK = '_ok'  # per-element flag carried to the batch when bad records are replaced there


def _batch(ds, opts):
    """Batches (padding the ground truth when `with_gt`), replaces bad records' rows, and
    prefetches; sets the library's dataset options (`tfdata_options`: deterministic, no
    autotuning thread)."""
    if opts.with_gt:
        ds = ds.padded_batch(opts.batch_size,
                             padded_shapes=_padded_shapes(ds.element_spec, opts.max_boxes),
                             drop_remainder=opts.drop_remainder)
    else:
        ds = ds.batch(opts.batch_size, drop_remainder=opts.drop_remainder,
                      num_parallel_calls=opts.num_parallel_calls, deterministic=True)
    if _OK in ds.element_spec[1]:
        ds = ds.map(_replace_bad_rows, num_parallel_calls=opts.num_parallel_calls,
                    deterministic=True)
    if opts.prefetch:
        ds = ds.prefetch(opts.prefetch)
    return tfdata_options.configure(ds, deterministic=True)


def _replace_bad_rows(images, targets):
    """Each row whose `_ok` flag is False takes the data of the next good row of the batch
    (cyclically); a batch with no good row is left as it is (placeholders without boxes)."""
    targets = dict(targets)
    ok = targets.pop(_OK)  # [B] bool
    b = tf.shape(ok)[0]
    order = (tf.range(b)[:, None] + tf.range(b)[None, :]) % b  # [B, B]: row i tries i, i+1..
    first = tf.argmax(tf.cast(tf.gather(ok, order), tf.int32), axis=1, output_type=tf.int32)
    src = tf.gather(order, first, batch_dims=1)  # [B]
    src = tf.where(tf.reduce_any(ok), src, tf.range(b))
    return tf.nest.map_structure(lambda x: tf.gather(x, src), (images, targets))


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


def _eval_extras(outs, encoded, image, with_encoded):
    """The eval-only targets of one element: `bbox_img` `[4]` (the original image's extent in
    network-input coordinates: `preprocess_fn`'s `bbox_img` field or 4th output, else
    `[0, 0, 1, 1]`) and, with_encoded, `encoded` (the image file's bytes; PNG of an in-memory
    array)."""
    bbox_img = getattr(outs, 'bbox_img', None)
    if bbox_img is None:
        bbox_img = outs[3] if len(outs) > 3 else tf.constant([0., 0., 1., 1.])
    extras = {'bbox_img': tf.reshape(tf.cast(bbox_img, tf.float32), [4])}
    if with_encoded:
        extras['encoded'] = encoded if encoded is not None else tf.io.encode_png(image)
    return extras


def build_eval_dataset(source, preprocess_fn, batch_size=32, encode_fn=None, max_boxes=None,
                       num_parallel_calls=AUTOTUNE, with_encoded=False, label_ids=None):
    """Eval input, the one evaluation pipeline (`ssd_tf.evaluation.run_evaluation` reads it):
    every image once, in source order; TFRecords are streamed, never held in memory.

    source: Records or a TFRecord file pattern / list (see `build_dataset`).
    preprocess_fn: `(image, labels, bboxes) -> (image, labels, bboxes[, bbox_img, ...])`, e.g.
      `preprocess_for_eval`; its `bbox_img` lets detections be mapped back to the original
      image under the non-warp resize modes.
    Targets: `image_id`, original `height`/`width`, the original ground truth padded
    (`labels`, `bboxes`, `difficult`, `is_crowd`, `num_boxes`), `bbox_img` `[B, 4]`, and with
    `with_encoded` the encoded image files `encoded` `[B]` string (for end-to-end SavedModels
    and the detection grid). `label_ids`: see `build_dataset`.
    """
    return build_dataset(source, preprocess_fn, encode_fn=encode_fn, batch_size=batch_size,
                         is_training=False, with_gt=True, max_boxes=max_boxes,
                         num_parallel_calls=num_parallel_calls, with_encoded=with_encoded,
                         label_ids=label_ids)
