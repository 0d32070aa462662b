"""The images that calibrate an int8 TFLite export (`export_savedmodel.py --calibration_data`).

int8 quantisation fixes each activation's range from representative images; images unlike
the deployed ones (synthetic shapes for a model of raccoons) give ranges that clip or waste
the 256 levels. By default the export calibrates on the data the model was trained on: the
data set recorded in the run's config.json (`dataset_name`, `dataset_dir`,
`dataset_split_name`, and `tfds_data_dir` or the synthetic options), read image-only through
the training's own readers.

Source specs (`parse_spec`):
  `run`                  the run's training data (an error when the run records none or it is
                         not found);
  `synthetic`            the built-in synthetic images (the default before: shapes);
  `voc:<dir>`            a VOC root (or several, comma-separated), split `split`;
  `coco:<dir>`           a COCO layout (`annotations/instances_<split>.json`, `<split>/`);
  `tfrecord:<pattern>`   TFRecord shards of either key layout (slim, TF OD API);
  `tfds:<name>`          a prepared tensorflow-datasets set (`voc/2007`), split `split`.
None (no flag) is `run` when the run records a data set that is there, else synthetic, and
the description says why.

`calibration_images(source, img_shape, limit)` returns the images (uint8 `[1, h, w, 3]`,
resized as the TFLite runtime path resizes: `resize_fn`) and a `CalibrationSource` whose
`describe(n)` is the line export prints.
"""
import dataclasses
import os

import tensorflow as tf

from ssd_tf import images as images_lib
from ssd_tf import tfdata_options

KINDS = ('voc', 'coco', 'tfrecord', 'tfds', 'synthetic')
SPEC_HELP = ("run (the run's training data, the default when it is there), synthetic, "
             "voc:<dir>, coco:<dir>, tfrecord:<file pattern> or tfds:<name>")


@dataclasses.dataclass
class CalibrationSource:
    """Where calibration images come from. kind: one of KINDS; dataset_dir: the directory,
    file pattern or tfds name; split: the split read; origin: 'run', 'flag' or 'default';
    origin 'dataset_dir': the old flag; note: why the default fell back to synthetic (None
    otherwise); synthetic_objects, seed
    and tfds_data_dir: as the run recorded them."""
    kind: str
    dataset_dir: str = None
    split: str = 'train'
    origin: str = 'flag'
    note: str = None
    synthetic_objects: str = 'shapes'
    seed: int = 0
    tfds_data_dir: str = None

    def describe(self, num_images):
        """One line: what calibrated int8, e.g. 'int8 calibration: 100 images of voc
        /data/raccoon split train (the run's training data)'."""
        what = 'synthetic shapes' if self.kind == 'synthetic' and \
            self.synthetic_objects == 'shapes' else \
            f"synthetic {self.synthetic_objects} objects" if self.kind == 'synthetic' else \
            f"{self.kind} {self.dataset_dir} split {self.split}"
        why = {'run': "the run's training data", 'flag': '--calibration_data',
               'dataset_dir': '--dataset_dir', 'default': 'default'}[self.origin]
        if self.note:
            why += f"; {self.note}"
        return f"int8 calibration: {num_images} images of {what} ({why})"


def parse_spec(spec, config=None, split='train', legacy_voc_dir=None):
    """The `CalibrationSource` of a `--calibration_data` value.

    spec: see the module docstring (None: the default). config: the run's `RunConfig` (or
    None: a checkpoint without config.json). split: the split of an explicit source
    (`--dataset_split_name`). legacy_voc_dir: the old `--dataset_dir` flag (a VOC directory),
    used when spec is None. ValueError naming the flag on a malformed spec.
    """
    if spec is None and legacy_voc_dir:
        return CalibrationSource('voc', legacy_voc_dir, split, origin='dataset_dir')
    if spec in (None, 'run'):
        found, problem = _run_source(config)
        if found is not None:
            return found
        if spec == 'run':
            raise ValueError(f"--calibration_data=run: {problem}; pass "
                             f"--calibration_data=synthetic or <kind>:<dir> ({SPEC_HELP})")
        return CalibrationSource('synthetic', origin='default', note=problem)
    if spec == 'synthetic':
        return CalibrationSource('synthetic', origin='flag')
    kind, sep, where = spec.partition(':')
    if not sep or kind not in KINDS or kind == 'synthetic' or not where:
        raise ValueError(f"--calibration_data={spec}: expected {SPEC_HELP}")
    tfds_dir = config.get('tfds_data_dir') if config and kind == 'tfds' else None
    return CalibrationSource(kind, where, split, origin='flag', tfds_data_dir=tfds_dir)


def _run_source(config):
    """`(CalibrationSource or None, why not)` for the data set recorded in a run config."""
    if not config or not config.dataset_name:
        return None, "the checkpoint has no run config naming its data set"
    kind = config.dataset_name
    if kind not in KINDS:
        return None, f"the run's data set {kind!r} is not one calibration reads"
    split = config.dataset_split_name or 'train'
    if kind == 'synthetic':
        return CalibrationSource('synthetic', split=split, origin='run',
                                 synthetic_objects=config.synthetic_objects or 'shapes',
                                 seed=int(config.seed or 0)), None
    where = config.dataset_dir
    if not where:
        return None, f"the run config records dataset_name={kind} without dataset_dir"
    if kind == 'tfrecord':
        if not tf.io.gfile.glob(where):
            return None, f"the run's TFRecord files {where} are not found here"
    elif kind != 'tfds' and not all(os.path.isdir(d) for d in where.split(',') if d):
        return None, f"the run's data set directory {where} is not found here"
    return CalibrationSource(kind, where, split, origin='run',
                             tfds_data_dir=config.get('tfds_data_dir')), None


def source_images(source, limit):
    """The first `limit` images of a source: uint8 `[H, W, 3]` RGB numpy arrays, any size,
    read image-only with the training's readers (`datasets.factory.load_records` for VOC, COCO
    and synthetic; the TFRecord parser of either layout; `datasets.tfds.TfdsSource`)."""
    limit = int(limit)
    if source.kind == 'tfrecord':
        from ssd_tf.datasets import tfrecord as tfrecord_lib
        files = tfrecord_lib.match_files(source.dataset_dir)
        layout = tfrecord_lib.detect_layout(files)
        ds = tfdata_options.configure(tf.data.TFRecordDataset(files).take(limit))
        for i, serialized in enumerate(ds):
            data = tfrecord_lib.parse_example(serialized, layout)['encoded']
            yield images_lib.decode_image(data, where=f"{source.dataset_dir} record {i}").numpy()
        return
    if source.kind == 'tfds':
        from ssd_tf.datasets import tfds as tfds_lib
        stream = tfds_lib.TfdsSource(source.dataset_dir, source.split,
                                     source.tfds_data_dir).stream().take(limit)
        for item in stream:
            yield images_lib.decode_image(item['values']['image/encoded'],
                                          where=f"tfds {source.dataset_dir}").numpy()
        return
    from ssd_tf.datasets import factory
    if source.kind == 'synthetic':
        records, _, _ = factory.load_records('synthetic', None, source.split, num_images=limit,
                                             seed=source.seed,
                                             synthetic_objects=source.synthetic_objects)
    else:
        records, _, _ = factory.load_records(source.kind, source.dataset_dir, source.split,
                                             check_images=False)
    for record in records[:limit]:
        yield images_lib.decode_record_image(record)


def resize_for_tflite(image, img_shape):
    """uint8 `[1, h, w, 3]`: RGB uint8 `[H, W, 3]` resized to `img_shape` as every runtime
    feeds the network (`images.resize_to_input`)."""
    return images_lib.resize_to_input(image, tuple(img_shape)).numpy()[None]


def calibration_images(source, img_shape, limit=100, resize_fn=resize_for_tflite):
    """uint8 `[1, h, w, 3]` arrays (at most `limit`) of `source` for int8 calibration.
    ValueError when the source has no image."""
    out = [resize_fn(image, tuple(img_shape))
           for image in source_images(source, limit)]
    if not out:
        raise ValueError(f"int8 calibration found no image: {source.describe(0)}")
    return out
