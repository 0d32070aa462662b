"""One entry point to the readers by data set name (as slim's dataset_factory):
`load_records('voc' | 'coco' | 'synthetic', dataset_dir, split, ...)`, and the label maps of
the data streamed by `data.build_dataset` instead: TFRecords of either key layout
(`tfrecord_label_map`) and tfds data sets (`datasets.tfds.TfdsSource.label_map`)."""
import functools
import os

import tensorflow as tf

from ssd_tf import tfdata_options
from ssd_tf.datasets import coco as coco_lib
from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.datasets import synthetic as synthetic_lib
from ssd_tf.datasets import tfrecord as tfrecord_lib
from ssd_tf.datasets import voc as voc_lib

DATASET_NAMES = ('voc', 'coco', 'synthetic')
# The slim SSD's names of Pascal VOC (its dataset_factory) -> the year in its TFRecord file
# names (None: any year).
SLIM_VOC_NAMES = {'pascalvoc_2007': '2007', 'pascalvoc_2012': '2012', 'pascalvoc': None}


def resolve_slim_name(dataset_name, dataset_dir, split):
    """What the slim SSD's `--dataset_name=pascalvoc_2007|pascalvoc_2012|pascalvoc` means
    here: `(dataset_name, dataset_dir)`, where the name is 'tfrecord' or 'voc'; any other
    name is returned unchanged. One home for train_ssd.py and eval_ssd.py.

    The slim SSD read these names as the TFRecords its converter wrote,
    `<dataset_dir>/voc_2007_<split>_*.tfrecord` (`voc_2012_...`; `pascalvoc`: any year), with
    the Pascal VOC classes. Here:
    - a directory holding such files -> `('tfrecord', '<dir>/voc_<year>_<split>_*.tfrecord')`;
    - a Pascal VOC root (a directory with `Annotations/`) -> `('voc', dataset_dir)`;
    - anything else that is not a directory (a file pattern) -> `('tfrecord', dataset_dir)`.
    A directory with neither is a ValueError naming both flags and what was looked for. The
    classes are Pascal VOC's (`labelmap.VOC_LABEL_MAP`) unless a label map says otherwise: the
    callers give that map to the VOC reader; the slim converter's TFRecords name their labels.
    """
    if dataset_name not in SLIM_VOC_NAMES:
        return dataset_name, dataset_dir
    if not dataset_dir:
        raise ValueError(f"--dataset_name={dataset_name} needs --dataset_dir (the slim "
                         f"converter's TFRecord directory, or a Pascal VOC root)")
    year = SLIM_VOC_NAMES[dataset_name] or '*'
    if not tf.io.gfile.isdir(dataset_dir):
        return 'tfrecord', dataset_dir
    pattern = os.path.join(dataset_dir, f'voc_{year}_{split}_*.tfrecord')
    if tf.io.gfile.glob(pattern):
        return 'tfrecord', pattern
    if tf.io.gfile.isdir(os.path.join(dataset_dir, 'Annotations')):
        return 'voc', dataset_dir
    raise ValueError(f"--dataset_name={dataset_name} --dataset_dir={dataset_dir} "
                     f"--dataset_split_name={split}: no TFRecord files {pattern} (the slim "
                     f"converter's names) and no Pascal VOC root (Annotations/) there")


def load_records(dataset_name, dataset_dir, split, label_map=None, strict=False,
                 num_images=1000, seed=0, image_size=None, check_images=True,
                 synthetic_objects='shapes'):
    """`(records, label_map, report_summary)` for one split of a data set (the summary is
    `load_records_and_report`'s report as text).

    voc: `dataset_dir` is one root or several joined by commas (VOC2007,VOC2012); `label_map`
      a LabelMap, a label map file, or None for the roots' labels.txt, else all class names
      sorted (`voc.default_label_map`); pass `labelmap.VOC_LABEL_MAP` for Pascal VOC's ids.
    coco: `dataset_dir` holds `annotations/instances_<split>.json` and the images in
      `<split>/` (the COCO 2017 layout; split e.g. 'val2017').
    synthetic: no files; `num_images` images of `split` 'train'/'trainval'/'test' of `seed`,
      mode `synthetic_objects` ('shapes' or 'small'), side `image_size` (None: the mode's).
    """
    records, label_map, report = load_records_and_report(
        dataset_name, dataset_dir, split, label_map=label_map, strict=strict,
        num_images=num_images, seed=seed, image_size=image_size, check_images=check_images,
        synthetic_objects=synthetic_objects)
    return records, label_map, report.summary() if report is not None else \
        f"synthetic: {len(records)} records"


def load_records_and_report(dataset_name, dataset_dir, split, label_map=None, strict=False,
                            num_images=1000, seed=0, image_size=None, check_images=True,
                            synthetic_objects='shapes'):
    """As `load_records`, but `(records, label_map, DataReport)` (the report is None for
    synthetic data, which has nothing to check). A slim name (`SLIM_VOC_NAMES`) of a Pascal
    VOC root reads it as voc with Pascal VOC's class ids when no `label_map` is given; of
    TFRecords it is a ValueError (they are streamed by `data.build_dataset`, not read here)."""
    if dataset_name in SLIM_VOC_NAMES:
        kind, where = resolve_slim_name(dataset_name, dataset_dir, split)
        if kind != 'voc':
            raise ValueError(f"--dataset_name={dataset_name}: {where} are TFRecords, streamed "
                             f"by the pipeline, not read as records")
        dataset_name = 'voc'
        label_map = labelmap_lib.VOC_LABEL_MAP if label_map is None else label_map
    if dataset_name == 'voc':
        if not dataset_dir:
            raise ValueError("dataset_dir is required for voc (a VOC root, or several "
                             "comma-separated)")
        dirs = [d for d in os.fspath(dataset_dir).split(',') if d]
        if label_map is None:
            label_map = voc_lib.default_label_map(dirs)
        elif not isinstance(label_map, labelmap_lib.LabelMap):
            label_map = labelmap_lib.LabelMap.read(label_map)
        records, report = voc_lib.read_voc(dirs, split, label_map=label_map, strict=strict,
                                           check_images=check_images)
        return records, label_map, report
    if dataset_name == 'coco':
        if not dataset_dir:
            raise ValueError("dataset_dir is required for coco (with annotations/ and "
                             "<split>/ inside)")
        ann = os.path.join(dataset_dir, 'annotations', f'instances_{split}.json')
        records, label_map, report = coco_lib.read_coco(
            ann, os.path.join(dataset_dir, split), strict=strict, check_images=check_images)
        return records, label_map, report
    if dataset_name == 'synthetic':
        records = synthetic_lib.make_synthetic_split(split, num_images, seed, image_size,
                                                     objects=synthetic_objects)
        return records, synthetic_lib.SYNTHETIC_LABEL_MAP, None
    raise ValueError(f"dataset_name must be one of {DATASET_NAMES + tuple(SLIM_VOC_NAMES)}, "
                     f"got {dataset_name!r}")


def tfrecord_label_map(dataset_dir, label_map=None, layout=None, num_classes=None):
    """The LabelMap of TFRecord data (`dataset_dir` a file pattern or list of patterns):
    `label_map` (a LabelMap or a labels.txt/.json/.pbtxt path, e.g. the --label_map flag),
    else the `labels.txt` beside the shards (the converter writes it), else the TF Object
    Detection API's `label_map.pbtxt` beside them, else the class names stored in the
    records' label texts (`image/object/bbox/label_text`, or `image/object/class/text` in
    the OD API `layout`; None: `tfrecord.detect_layout`); None when none of these exists.
    A label map file may skip ids (`LabelMap.label_ids`: the pipeline maps them).

    Label texts are a hint, not a gate (`_label_map_from_records`): each label gets the name
    most of its records give it; labels no record names (gaps, or up to `num_classes` - 1,
    the --num_classes flag) are filled with the Pascal VOC name of that label when the named
    ones all match VOC's (the slim converter's records of a subset of VOC), else
    'class_<label>'. The map then carries `record_texts` (the name per label, '' for filled
    ones): the pipeline skips and counts a record whose text disagrees. `num_classes` below
    the largest label + 1 is a ValueError naming --num_classes; so is one name used for two
    labels (naming the shard and record).
    """
    if isinstance(label_map, labelmap_lib.LabelMap):
        return label_map
    if label_map:
        return labelmap_lib.LabelMap.read(label_map)
    files = tfrecord_lib.match_files(dataset_dir)
    beside = label_map_beside(files)
    if beside is not None:
        return beside
    return _label_map_from_records(files, layout or tfrecord_lib.detect_layout(files),
                                   num_classes)


def label_map_beside(files):
    """The label map file beside TFRecord `files` (a list; `labels.txt`, else the OD API's
    `label_map.pbtxt`, in the first file's directory), or None; nothing else is read."""
    for name in (labelmap_lib.LABELS_FILENAME, labelmap_lib.PBTXT_FILENAME):
        beside = os.path.join(os.path.dirname(files[0]), name)
        if os.path.isfile(beside):
            return labelmap_lib.LabelMap.read(beside)
    return None


# (record, label, text) triples read at once when scanning label texts.
_SCAN_BATCH = 4096


def _label_pairs(index, serialized, layout):
    """One record -> `(record index, label, text)` rows, none when its label texts are not
    one per box."""
    label_key, text_key = tfrecord_lib.label_keys(layout)
    f = tf.io.parse_single_example(serialized, {label_key: tf.io.VarLenFeature(tf.int64),
                                                text_key: tf.io.VarLenFeature(tf.string)})
    labels = f[label_key].values
    texts = f[text_key].values
    n = tf.where(tf.equal(tf.size(labels), tf.size(texts)), tf.size(labels), 0)
    return tf.data.Dataset.from_tensor_slices(
        (tf.fill([n], index), labels[:n], texts[:n]))


def _label_map_from_records(files, layout, num_classes=None):
    """The label map spelled by the records' label texts (records that do not parse are left
    to the pipeline's checks); None when no record has label texts. See
    `tfrecord_label_map`."""
    votes = {}  # label -> {text: [count, where first seen]}
    pairs = functools.partial(_label_pairs, layout=layout)
    for f in files:
        ds = tfdata_options.configure(
            tf.data.TFRecordDataset(f).enumerate().flat_map(pairs).ignore_errors())
        for indices, labels, texts in ds.batch(_SCAN_BATCH).as_numpy_iterator():
            for index, label, text in zip(indices, labels, texts):
                if label < 1:
                    continue  # the pipeline reports labels out of range
                seen = votes.setdefault(int(label), {}).setdefault(
                    text.decode('utf-8', 'replace'), [0, f"{f} record {index}"])
                seen[0] += 1
    if not votes:
        return None
    names = {}  # label -> (the name most records give it, where first seen); ties: first
    for label, texts in votes.items():
        text, (_, where) = max(texts.items(), key=lambda kv: kv[1][0])
        names[label] = (text, where)
    by_name = {}
    for label, (text, where) in sorted(names.items()):
        if by_name.setdefault(text, label) != label:
            raise ValueError(f"{where}: class {text!r} has labels {by_name[text]} and {label}; "
                             f"pass --label_map")
    largest = max(names)
    if num_classes is not None and num_classes < largest + 1:
        raise ValueError(f"--num_classes={num_classes} but the records have label {largest} "
                         f"({names[largest][0]!r}): --num_classes must be at least "
                         f"{largest + 1} (classes + background)")
    size = largest + 1 if num_classes is None else num_classes
    voc = all(label <= len(labelmap_lib.VOC_CLASSES) and
              labelmap_lib.VOC_CLASSES[label - 1] == text for label, (text, _) in names.items())
    voc = voc and size - 1 <= len(labelmap_lib.VOC_CLASSES)

    def filler(label):
        return labelmap_lib.VOC_CLASSES[label - 1] if voc else f'class_{label}'
    label_map = labelmap_lib.LabelMap([names[i][0] if i in names else filler(i)
                                       for i in range(1, size)])
    label_map.record_texts = ('none',) + tuple(names[i][0] if i in names else ''
                                               for i in range(1, size))
    return label_map
