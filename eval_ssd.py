"""Evaluates an SSD checkpoint (training run, slim checkpoint or SavedModel) on a data set.

The flags are those of the slim `eval_ssd_network.py`, with defaults that work: the network
and the data set are the run's (its config.json; a checkpoint without one needs --model_name
and --num_classes), the data set else the built-in synthetic shapes (as training).

  python eval_ssd.py --checkpoint_path=runs/ssd_small_synthetic
  python eval_ssd.py --checkpoint_path=VGG_VOC0712_SSD_300x300_ft_iter_120000.ckpt \
      --model_name=ssd_300_vgg --dataset_name=pascalvoc_2007 --dataset_dir=/data/VOC2007 \
      --dataset_split_name=test --num_classes=21

--checkpoint_path (required; there is no default under a shared, world-writable place such
as /tmp, where another user could plant a model): what `ssd_tf.builder` takes (a training
directory: its latest tf.train.Checkpoint, `config.json` beside it giving model_name /
num_classes / image size unless the flags are set; a checkpoint prefix, object-based or an
original slim SSD one with --model_name and --num_classes; a Keras `.h5` weights file), or a
SavedModel directory (also export_savedmodel.py's
versioned output directory; its end-to-end signature keeps the thresholds it was exported
with, so --select_threshold/--nms_threshold/--keep_top_k do not apply). Outputs in --eval_dir
(default: next to the evaluated run, see `default_eval_dir`): see
`ssd_tf.evaluation.write_report`. --wait_for_checkpoints evaluates each new checkpoint of a
training directory and writes TensorBoard summaries (mAP per step) to --eval_dir.
The data is read by `ssd_tf.data.build_eval_dataset`, which streams TFRecords.
"""
import os

from ssd_tf import quiet  # noqa: F401  first: quiets TensorFlow in the programs (ssd_tf.quiet)
from absl import app
from absl import flags
from absl import logging

from ssd_tf import postprocess
from ssd_tf.cli import flags as shared_flags
from ssd_tf.cli import slim_flags

# ---------------------------------------------------------------------------- flags
# Post-processing (the original's names; defaults from ssd_tf.postprocess).
shared_flags.define_detection_flags(flags)
flags.DEFINE_integer('keep_top_k', postprocess.KEEP_TOP_K, 'Detections kept per image after NMS.')
flags.DEFINE_float('matching_threshold', postprocess.MATCHING_THRESHOLD,
                   'IoU a detection must exceed to match a ground-truth box.')
shared_flags.define_tiling_flags(flags, extra=(
    "Runs the export's pipeline (image bytes in, --eval_resize 4 only); a SavedModel is "
    "tiled as it was exported (export_savedmodel.py --tiles)."))
shared_flags.define_test_time_flip_flag(flags, extra=(
    "A SavedModel flips as it was exported (export_savedmodel.py --test_time_flip)."))
flags.DEFINE_integer('eval_resize', 4, 'Image resizing: 1 NONE, 2 CENTRAL_CROP, '
                     '3 PAD_AND_RESIZE, 4 WARP_RESIZE (the original Resize enum).')
flags.DEFINE_integer('eval_image_size', None,
                     'Eval image size (square); default: the network\'s (or the run config).')
flags.DEFINE_boolean('remove_difficult', True,
                     'Apply the VOC rule to difficult objects (neither TP nor FP, not '
                     'counted); False counts them as ordinary objects.')
# General.
flags.DEFINE_integer('batch_size', 1, 'Images per batch.')
flags.DEFINE_integer('max_num_batches', None, 'Evaluate at most this many batches.')
flags.DEFINE_string('checkpoint_path', None,
                    'Required. Training directory, checkpoint prefix or SavedModel directory.')
flags.DEFINE_string('eval_dir', None,
                    'Where the results are written. Default: next to the evaluated run, '
                    '<train_dir>/eval for a training directory (or the directory of a '
                    'checkpoint prefix), <parent>/eval_<name> beside a SavedModel directory '
                    '(export/3 -> export/eval_3, outside the served version).')
flags.DEFINE_integer('num_readers', 4, 'Parallel image decoding/pre-processing calls.')
flags.DEFINE_integer('num_preprocessing_threads', None, 'Not supported (decoding and '
                     'pre-processing run in one map: use --num_readers); an error if set.')
flags.DEFINE_boolean('wait_for_checkpoints', False,
                     'Evaluate every new checkpoint of --checkpoint_path (a directory).')
flags.DEFINE_float('checkpoint_timeout', 600.,
                   'With --wait_for_checkpoints: stop after this many seconds without a new '
                   'checkpoint (<= 0: wait forever).')
flags.DEFINE_float('moving_average_decay', None,
                   'If set, evaluate the moving averages of the weights that a run trained with '
                   '--moving_average_decay stores in each checkpoint (also during training; '
                   'older runs: ema.weights.h5 in the training directory).')
flags.DEFINE_string('master', None, 'Not supported (a TF1 distributed master); an error if '
                    'set.')
flags.DEFINE_float('gpu_memory_fraction', None, 'Not supported in TF2; an error if set.')
# Data set.
flags.DEFINE_string('dataset_name', None,
                    "synthetic (built-in shapes), voc (a VOC root; labels.txt or the "
                    "annotations' class names), coco, tfrecord (slim or TF Object Detection "
                    "API keys), tfds (tensorflow-datasets by name), or the slim names "
                    "pascalvoc_2007 / pascalvoc_2012 / pascalvoc (the slim converter's TFRecords "
                    "voc_2007_<split>_*.tfrecord in --dataset_dir, or a VOC root; Pascal VOC "
                    "class ids). Default: the run config's, else synthetic.")
flags.DEFINE_string('dataset_split_name', 'test', 'Split (ImageSets/Main/<split>.txt, or the '
                    'split in TFRecord file names).')
flags.DEFINE_string('dataset_dir', None, 'VOC root, COCO root, TFRecord directory / '
                    'file pattern, or tfds name (voc/2007). Default: the run config\'s.')
flags.DEFINE_string('tfds_data_dir', None, 'tfds: where tensorflow-datasets keeps prepared '
                    'data; default: the run config\'s, else $TFDS_DATA_DIR, else '
                    '~/tensorflow_datasets. Nothing is downloaded.')
flags.DEFINE_integer('synthetic_num_images', None,
                     'Images of the synthetic test split; default: the run config\'s '
                     'synthetic_num_test, else 300.')
flags.DEFINE_integer('synthetic_seed', None,
                     'Seed of the synthetic data set; default: the run config\'s seed, else 0.')
flags.DEFINE_enum('synthetic_objects', None, ['shapes', 'small'],
                  'Synthetic data mode; default: the run config\'s, else shapes.')
# Network: --model_name, --num_classes, --label_map (the builder's overrides).
shared_flags.define_model_flags(flags, extra={
    'num_classes': "Else the data set's label map.",
    'label_map': "Else the data set's (it also gives the dataset ids of a map with gaps)."})
flags.DEFINE_string('preprocessing_name', None, "The eval pre-processing: 'ssd_vgg' (the "
                    "only one: VGG means, --eval_resize) or, as slim's factory, a --model_name; "
                    "another name is an error. Default: ssd_vgg.")
# Slim flags accepted at their slim default only (`slim_flags.SLIM_DEFAULT_ONLY`).
_SLIM_DEFAULT_ONLY = ('labels_offset',)
slim_flags.define_slim_default_only_flags(flags, _SLIM_DEFAULT_ONLY)
# Outputs.
flags.DEFINE_boolean('coco_metrics', False, 'Also compute COCO metrics (pycocotools).')
flags.DEFINE_integer('num_sample_images', 8, 'Images in the detections.png grid (0: none).')

FLAGS = flags.FLAGS

DEFAULT_DATASET_NAME = 'synthetic'
DEFAULT_SYNTHETIC_NUM_TEST = 300  # train_ssd.py's --synthetic_num_test default


# ---------------------------------------------------------------------------- wiring
# Flags of the slim script that have no TF2 meaning: given, they are an error (not ignored).
_UNSUPPORTED_FLAGS = {
    'master': "it is the address of a TF1 distributed master; eval_ssd.py evaluates in the "
              "process it runs in",
    'gpu_memory_fraction': "TF2 has no per-process memory fraction; to share a GPU set "
                           "TF_FORCE_GPU_ALLOW_GROWTH=true",
    'num_preprocessing_threads': "decoding and pre-processing run in one map whose "
                                 "parallelism is --num_readers",
}


def check_flags():
    """Flag errors found before anything is loaded: a missing --checkpoint_path, an
    unsupported flag, a bad --batch_size or --preprocessing_name."""
    if not FLAGS.checkpoint_path:
        raise ValueError("--checkpoint_path is required: a training directory, a checkpoint "
                         "prefix or a SavedModel directory (there is no default: a shared "
                         "place such as /tmp/tfmodel/ may hold a model another user put there)")
    for name, why in _UNSUPPORTED_FLAGS.items():
        if FLAGS[name].value not in (None, ''):
            raise ValueError(f"--{name}={FLAGS[name].value} is not supported: {why}; remove it")
    if FLAGS.batch_size < 1:
        raise ValueError(f"--batch_size={FLAGS.batch_size} must be >= 1")
    if shared_flags.tiles_from_flags(FLAGS.tiles, FLAGS.tile_overlap,
                                     FLAGS.tile_max_box) is not None and \
            FLAGS.eval_resize != 4:
        raise ValueError(f"--tiles runs the export's pre-processing (a warp resize); "
                         f"--eval_resize={FLAGS.eval_resize} does not apply with it")
    errors = slim_flags.slim_default_only_errors(FLAGS, _SLIM_DEFAULT_ONLY)
    preprocessing = slim_flags.preprocessing_name_error(FLAGS.preprocessing_name)
    if errors or preprocessing:
        raise ValueError('; '.join(errors + ([preprocessing] if preprocessing else [])))


def default_eval_dir(kind, path, checkpoint_path):
    """Where reports go without --eval_dir: next to the evaluated run, never a shared place.

    kind, path: `resolve_checkpoint`'s. A SavedModel directory `P` -> `<parent>/eval_<name>`
    (beside it, so a served version directory is not changed); a training directory ->
    `<train_dir>/eval`; a checkpoint prefix -> `eval` in its directory.
    """
    if kind == 'saved_model':
        path = os.path.normpath(os.path.abspath(path))
        return os.path.join(os.path.dirname(path), 'eval_' + os.path.basename(path))
    if os.path.isdir(checkpoint_path):
        return os.path.join(checkpoint_path, 'eval')
    return os.path.join(os.path.dirname(os.path.abspath(path)), 'eval')


def load_eval_source(dataset_name, dataset_dir, split, label_names=None, num_images=None,
                     seed=0, tfds_data_dir=None, synthetic_objects='shapes'):
    """`(source, label_map)` of the evaluation set (see the --dataset_name flag): source is
    a list of Records, or for TFRecords the list of files (streamed, not read here).

    label_names: class names of labels 1..C-1 the network was trained with (run config or
    --label_map), or a LabelMap (with the dataset ids of a map with gaps); they fix the label
    ids of VOC and TFRecord sets.
    """
    from ssd_tf.datasets import factory
    from ssd_tf.datasets import labelmap as labelmap_lib
    label_map = label_names if isinstance(label_names, labelmap_lib.LabelMap) else \
        labelmap_lib.LabelMap(list(label_names)) if label_names else None
    if dataset_name in factory.SLIM_VOC_NAMES:  # the slim names: its TFRecords or a VOC root
        dataset_name, dataset_dir = factory.resolve_slim_name(dataset_name, dataset_dir, split)
        label_map = label_map or labelmap_lib.VOC_LABEL_MAP
    if dataset_name == 'tfrecord':
        files = _tfrecord_files(dataset_dir, split, label_map)
        data_map = factory.label_map_beside(files) if label_map is not None else None
        if data_map is not None and data_map.names == label_map.names and \
                data_map.dataset_ids != label_map.dataset_ids:
            # the same classes, numbered otherwise in these records (e.g. a run trained on
            # COCO ids 1..90 evaluated on shards of training labels 1..80): their file rules
            logging.info('eval data: the class ids of the records are those of the label map '
                         'beside them, %s', data_map.dataset_ids)
            label_map = data_map
        if label_map is None:
            label_map = factory.tfrecord_label_map(files)  # label_map.pbtxt beside, ...
        if label_map is None:
            raise ValueError("TFRecords carry no label map: pass --label_map (labels.txt or "
                             "label_map.pbtxt) or evaluate a training directory whose "
                             "config.json has label_names")
        return files, label_map
    if dataset_name == 'tfds':
        return _tfds_source(dataset_dir, split, label_map, tfds_data_dir)
    if dataset_name not in factory.DATASET_NAMES:
        raise ValueError(f"--dataset_name={dataset_name} is unknown; use one of "
                         f"{', '.join(factory.DATASET_NAMES + ('tfrecord',) + tuple(factory.SLIM_VOC_NAMES))}")
    if dataset_name != 'synthetic' and not dataset_dir:
        raise ValueError(f"--dataset_name={dataset_name} needs --dataset_dir")
    try:
        records, label_map, summary = factory.load_records(
            dataset_name, dataset_dir, split, label_map=label_map,
            num_images=num_images or FLAGS.synthetic_num_images, seed=seed,
            synthetic_objects=synthetic_objects)
    except FileNotFoundError as e:
        raise ValueError(f"--dataset_dir={dataset_dir} --dataset_split_name={split}: {e}") from e
    logging.info('eval data: %s', summary)
    if not records:
        hint = (f"; the network's classes (run config or --label_map) are {list(label_names)}: "
                f"is this the data set it was trained for?" if label_names else "")
        raise ValueError(f"no usable image in split {split!r} of --dataset_dir={dataset_dir} "
                         f"({summary}){hint}")
    return records, label_map


def _tfrecord_files(dataset_dir, split, label_map):
    """TFRecord files (slim keys): a directory (files named *<split>*.tfrecord*) or a pattern."""
    import tensorflow as tf
    if not dataset_dir:
        raise ValueError("--dataset_name=tfrecord needs --dataset_dir (a directory or a file "
                         "pattern)")
    pattern = (os.path.join(dataset_dir, f'*{split}*.tfrecord*') if os.path.isdir(dataset_dir)
               else dataset_dir)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"--dataset_dir={dataset_dir}: no TFRecord files match {pattern} "
                         f"(--dataset_split_name={split})")
    return files


def _tfds_source(name, split, label_map, data_dir):
    """`(TfdsSource, LabelMap)`; the network's classes (`label_map`: run config or
    --label_map) must be the tfds set's, in its order."""
    from ssd_tf.datasets import tfds as tfds_lib
    if not name:
        raise ValueError("--dataset_name=tfds needs --dataset_dir (the tfds name, e.g. "
                         "voc/2007)")
    source = tfds_lib.TfdsSource(name, split, data_dir)
    try:
        source.check()
    except ImportError as e:
        raise ValueError(str(e)) from e
    names = list(source.label_map().names)
    if label_map is not None and list(label_map.names) != names:
        raise ValueError(f"the network's classes (run config or --label_map) "
                         f"{list(label_map.names)} are not those of tfds {name} {names}")
    return source, source.label_map()


def make_preprocess_fn(out_shape, resize):
    """`(image, labels, bboxes) -> (image, labels, bboxes, bbox_img)`, the VGG eval
    pre-processing (`build_eval_dataset`'s contract)."""
    from preprocessing import ssd_vgg_preprocessing as prep
    try:
        resize = prep.Resize(resize)
    except ValueError as e:
        raise ValueError(f"--eval_resize={resize} must be 1 (NONE), 2 (CENTRAL_CROP), "
                         f"3 (PAD_AND_RESIZE) or 4 (WARP_RESIZE)") from e

    def preprocess(image, labels, bboxes):
        out = prep.preprocess_for_eval(image, labels, bboxes, out_shape=out_shape, resize=resize)
        return out.image, out.labels, out.bboxes, out.bbox_img
    return preprocess


# ---------------------------------------------------------------------------- steps
def resolve_data(config):
    """`(dataset_name, source, label_map, num_classes)` from the flags and the run config
    (`label_map`: a LabelMap, with the dataset ids of a map with gaps)."""
    from ssd_tf import evaluation
    from ssd_tf.datasets import labelmap as labelmap_lib
    label_names = labelmap_lib.resolve_label_map(
        FLAGS.label_map, recorded_names=config.label_names, recorded_ids=config.label_ids)
    if FLAGS.dataset_name:
        dataset_name, dataset_dir = FLAGS.dataset_name, FLAGS.dataset_dir
    else:
        dataset_name = config.dataset_name or DEFAULT_DATASET_NAME
        dataset_dir = FLAGS.dataset_dir or config.dataset_dir
        if dataset_name == 'tfrecord' and not FLAGS.dataset_dir:  # the eval split's shards
            dataset_dir = evaluation.tfrecord_eval_source(config, FLAGS.dataset_split_name)
    evaluation.warn_if_training_split(config, dataset_name, dataset_dir,
                                      FLAGS.dataset_split_name)
    source, label_map = load_eval_source(
        dataset_name, dataset_dir, FLAGS.dataset_split_name, label_names,
        num_images=(FLAGS.synthetic_num_images or config.synthetic_num_test
                    or DEFAULT_SYNTHETIC_NUM_TEST),
        seed=(FLAGS.synthetic_seed if FLAGS.synthetic_seed is not None
              else config.seed or 0),
        tfds_data_dir=FLAGS.tfds_data_dir or config.get('tfds_data_dir'),
        synthetic_objects=FLAGS.synthetic_objects or config.synthetic_objects or 'shapes')
    class_names = list(label_map.names)
    if label_map.mapping_description():
        logging.info('eval data: %s', label_map.mapping_description())
    cfg_classes = config.num_classes
    num_classes = FLAGS.num_classes or (int(cfg_classes) if cfg_classes else None) or \
        len(class_names) + 1
    if num_classes != len(class_names) + 1:
        raise ValueError(f"--num_classes={num_classes} but the data set "
                         f"{dataset_name} has {len(class_names)} classes + "
                         f"background = {len(class_names) + 1}")
    return dataset_name, source, label_map, num_classes


def build_detector(evaluation, kind, path, net, model_name, flip=False):
    """`(keras model or None, detector)` with the post-processing flags; flip: the resolved
    test-time flip (`builder.run_test_time_flip`; a SavedModel's: the one it was exported
    with)."""
    from ssd_tf import builder
    nms = dict(select_threshold=FLAGS.select_threshold, nms_threshold=FLAGS.nms_threshold,
               top_k=FLAGS.select_top_k, keep_top_k=FLAGS.keep_top_k)
    tiles = shared_flags.tiles_from_flags(FLAGS.tiles, FLAGS.tile_overlap,
                                          FLAGS.tile_max_box)
    if kind == 'saved_model':
        builder.check_fixed_flip(FLAGS.test_time_flip, kind, path, fixed=flip)
        if tiles is not None:
            raise ValueError(f"--tiles={FLAGS.tiles} does not apply to a SavedModel "
                             f"({path}): its tiling is fixed at export (export_savedmodel.py "
                             f"--tiles)")
        return None, evaluation.saved_model_detector(path, net, **nms)
    try:
        model = net.keras_model()
    except ValueError as e:
        raise ValueError(f"cannot build {model_name} for --eval_image_size/"
                         f"img_shape {net.params.img_shape}: {e}") from e
    if tiles is None:
        return model, evaluation.keras_detector(model, net, test_time_flip=flip, **nms)
    # Tiled: the export's detection module (image bytes in, boxes in the original image).
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model as export_lib
    module = export_lib.DetectionModule(
        net, model, prep.image_preprocess_fn(tuple(net.params.img_shape)),
        select_threshold=nms['select_threshold'], nms_threshold=nms['nms_threshold'],
        max_detections=nms['keep_top_k'], top_k=nms['top_k'], max_image_pixels=None,
        max_batch_size=max(FLAGS.batch_size, 1), tiles=tiles, test_time_flip=flip)
    return model, evaluation.encoded_detector(module.detect_bytes, f"--tiles={FLAGS.tiles}")


def resolve_checkpoint_flag():
    """`(kind, path)` of --checkpoint_path (`builder.resolve_source`; a directory to watch
    with --wait_for_checkpoints)."""
    from ssd_tf import builder
    path = FLAGS.checkpoint_path
    if not FLAGS.wait_for_checkpoints:
        return builder.resolve_source(path)
    if not os.path.isdir(path):
        raise ValueError(f"--wait_for_checkpoints needs --checkpoint_path to be a "
                         f"training directory; {path} is not a directory")
    return 'tf2', path


def prepare_eval_dir(eval_dir):
    """Creates --eval_dir now, so an unwritable place fails before the evaluation runs."""
    try:
        os.makedirs(eval_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --eval_dir={eval_dir}: {e}; pass a writable "
                         f"--eval_dir") from e
    return eval_dir


class Evaluation:
    """Everything one evaluation needs, built once from the flags (also used by tests)."""

    def __init__(self, get_network=None):
        from ssd_tf import builder
        from ssd_tf import data as data_lib
        from ssd_tf import evaluation
        from ssd_tf import run_config
        self.ev = evaluation
        check_flags()
        self.kind, self.path = resolve_checkpoint_flag()
        self.eval_dir = prepare_eval_dir(FLAGS.eval_dir or default_eval_dir(
            self.kind, self.path, FLAGS.checkpoint_path))
        self.config = run_config.read_run_config(
            self.path if self.kind == 'saved_model' else FLAGS.checkpoint_path)
        builder.check_overrides(self.config, FLAGS.checkpoint_path, FLAGS.model_name,
                                FLAGS.num_classes)
        self.dataset_name, self.source, self.label_map, self.num_classes = \
            resolve_data(self.config)
        self.class_names = list(self.label_map.names)
        self.net = builder.resolve_network(
            self.config, FLAGS.checkpoint_path, FLAGS.model_name, self.num_classes,
            image_size=FLAGS.eval_image_size, get_network=get_network)
        self.model_name = self.net.model_name
        # the flag, else the run's choice; a SavedModel's is its export's (a flag asking
        # otherwise is refused in build_detector)
        self.flip = builder.run_test_time_flip(
            None if self.kind == 'saved_model' else FLAGS.test_time_flip, self.config)
        self.model, self.detector = build_detector(evaluation, self.kind, self.path, self.net,
                                                   self.model_name, self.flip)
        self.preprocess_fn = make_preprocess_fn(tuple(self.net.params.img_shape),
                                                FLAGS.eval_resize)
        with_encoded = (getattr(self.detector, 'input_kind', '') == 'encoded'
                        or FLAGS.num_sample_images > 0)
        self.dataset = data_lib.build_eval_dataset(
            self.source, self.preprocess_fn, FLAGS.batch_size,
            num_parallel_calls=FLAGS.num_readers, with_encoded=with_encoded,
            label_ids=self.label_map.label_ids)

    def restore(self, path, kind):
        """Loads the weights of `(kind, path)` into the model (`builder.restore_weights`;
        --moving_average_decay requires the moving averages); nothing for a SavedModel."""
        if kind == 'saved_model':
            return
        from ssd_tf import builder
        builder.restore_weights(self.model, self.net, kind, path, self.config,
                                moving_average=True if FLAGS.moving_average_decay else None)

    def evaluate(self, path, kind, summaries=False):
        """Restores `path`, evaluates, writes the report; returns the metrics dict."""
        from ssd_tf import run_config
        self.restore(path, kind)
        step = run_config.checkpoint_step(path) if kind in ('tf2', 'slim') else None
        run = self.ev.run_evaluation(
            self.detector, self.dataset, self.num_classes, self.class_names,
            max_num_batches=FLAGS.max_num_batches, remove_difficult=FLAGS.remove_difficult,
            matching_threshold=FLAGS.matching_threshold,
            num_sample_images=FLAGS.num_sample_images, category_ids=self.label_map.label_ids)
        m, paths = self.ev.write_report(
            run, self.eval_dir, split=FLAGS.dataset_split_name, coco=FLAGS.coco_metrics,
            step=step, num_sample_images=FLAGS.num_sample_images,
            extra=dict(checkpoint_path=path, model_name=self.model_name,
                       dataset_name=self.dataset_name, test_time_flip=self.flip,
                       tiles=FLAGS.tiles or None))
        if summaries:
            self.ev.write_summaries(self.eval_dir, m, step or 0)
        logging.info('Evaluated %s: VOC07 mAP %.4f', path, m['voc07']['map'])
        print(m['table'])
        return m


def main(argv):
    del argv
    from ssd_tf import builder
    e = Evaluation()
    if FLAGS.wait_for_checkpoints:
        timeout = FLAGS.checkpoint_timeout if FLAGS.checkpoint_timeout > 0 else None
        e.ev.watch_checkpoints(
            FLAGS.checkpoint_path,
            lambda p: e.evaluate(p, builder.resolve_source(p)[0], summaries=True),
            timeout=timeout)
    else:
        e.evaluate(e.path, e.kind)


def run_main():
    """Entry point: errors in the inputs are reported as one line, not a traceback."""
    def guarded(argv):
        try:
            main(argv)
        except ValueError as err:
            raise SystemExit(f"eval_ssd.py: error: {err}")
    app.run(guarded)


if __name__ == '__main__':
    run_main()
