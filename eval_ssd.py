"""Evaluates an SSD checkpoint (training run, slim checkpoint or SavedModel) on a data set.

The flags are those of the slim `eval_ssd_network.py`, with defaults that work: the default
network is `ssd_small` and the default data set the built-in synthetic shapes (as training).

  python eval_ssd.py --checkpoint_path=/tmp/ssd_train --eval_dir=/tmp/ssd_eval
  python eval_ssd.py --checkpoint_path=VGG_VOC0712_SSD_300x300_ft_iter_120000.ckpt \
      --model_name=ssd_300_vgg --dataset_name=pascalvoc_2007 --dataset_dir=/data/VOC2007 \
      --dataset_split_name=test --num_classes=21

--checkpoint_path: a training directory (its latest tf.train.Checkpoint; `config.json` beside
it gives model_name / num_classes / image size unless the flags are set), a checkpoint prefix
(object-based or slim name-based), or a SavedModel directory (also export_savedmodel.py's
versioned output directory; its end-to-end signature keeps the thresholds it was exported
with, so --select_threshold/--nms_threshold/--keep_top_k do not apply). Outputs in --eval_dir: see
`ssd_tf.evaluation.write_report`. --wait_for_checkpoints evaluates each new checkpoint of a
training directory and writes TensorBoard summaries (mAP per step) to --eval_dir.
"""
import glob
import os

from absl import app
from absl import flags
from absl import logging

# ---------------------------------------------------------------------------- flags
# Post-processing (the original's names and defaults).
flags.DEFINE_float('select_threshold', 0.01, 'Selection threshold on class scores.')
flags.DEFINE_integer('select_top_k', 400, 'Candidates per class before NMS.')
flags.DEFINE_integer('keep_top_k', 200, 'Detections kept per image after NMS.')
flags.DEFINE_float('nms_threshold', 0.45, 'Non-maximum suppression IoU threshold.')
flags.DEFINE_float('matching_threshold', 0.5,
                   'IoU a detection must exceed to match a ground-truth box.')
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
flags.DEFINE_string('checkpoint_path', '/tmp/tfmodel/',
                    'Training directory, checkpoint prefix or SavedModel directory.')
flags.DEFINE_string('eval_dir', '/tmp/tfmodel/', 'Where the results are written.')
flags.DEFINE_integer('num_readers', 4, 'Parallel image decoding/pre-processing calls.')
flags.DEFINE_integer('num_preprocessing_threads', 4, 'Accepted for compatibility (see '
                     'num_readers).')
flags.DEFINE_boolean('wait_for_checkpoints', False,
                     'Evaluate every new checkpoint of --checkpoint_path (a directory).')
flags.DEFINE_float('checkpoint_timeout', 600.,
                   'With --wait_for_checkpoints: stop after this many seconds without a new '
                   'checkpoint (<= 0: wait forever).')
flags.DEFINE_float('moving_average_decay', None,
                   'If set, evaluate the moving averages of the weights that a run trained with '
                   '--moving_average_decay stores in each checkpoint (also during training; '
                   'older runs: ema.weights.h5 in the training directory).')
flags.DEFINE_string('master', '', 'Ignored (TF1 distributed master).')
flags.DEFINE_float('gpu_memory_fraction', 0.1, 'Ignored (TF2 allocates GPU memory on demand).')
# Data set.
flags.DEFINE_string('dataset_name', None,
                    "synthetic (built-in shapes), voc (a VOC root; labels.txt or the "
                    "annotations' class names), coco, tfrecord (slim keys), or pascalvoc_2007 "
                    "/ pascalvoc_2012 (a VOC root with the Pascal VOC class ids). Default: the "
                    "run config's, else synthetic.")
flags.DEFINE_integer('num_classes', None,
                     'Classes including background; default: the run config, else the data '
                     'set\'s label map.')
flags.DEFINE_string('dataset_split_name', 'test', 'Split (ImageSets/Main/<split>.txt, or the '
                    'split in TFRecord file names).')
flags.DEFINE_string('dataset_dir', None, 'VOC root, COCO root, or TFRecord directory / '
                    'file pattern. Default: the run config\'s.')
flags.DEFINE_string('label_map', None, 'Label map file (labels.txt); default: the run config\'s '
                    'class names, else the data set\'s.')
flags.DEFINE_integer('synthetic_num_images', None,
                     'Images of the synthetic test split; default: the run config\'s '
                     'synthetic_num_test, else 300.')
flags.DEFINE_integer('synthetic_seed', None,
                     'Seed of the synthetic data set; default: the run config\'s seed, else 0.')
# Network.
flags.DEFINE_string('model_name', None, "Network ('ssd_small', 'ssd_300_vgg', "
                    "'ssd_512_vgg'); default: the run config, else 'ssd_small'.")
flags.DEFINE_string('preprocessing_name', None, 'Accepted for compatibility; the VGG SSD '
                    'pre-processing is always used.')
# Outputs.
flags.DEFINE_boolean('coco_metrics', False, 'Also compute COCO metrics (pycocotools).')
flags.DEFINE_integer('num_sample_images', 8, 'Images in the detections.png grid (0: none).')

FLAGS = flags.FLAGS

DEFAULT_MODEL_NAME = 'ssd_small'
DEFAULT_DATASET_NAME = 'synthetic'
EMA_WEIGHTS_FILENAME = 'ema.weights.h5'  # older runs' averages (now inside each checkpoint)
DEFAULT_SYNTHETIC_NUM_TEST = 300  # train_ssd.py's --synthetic_num_test default


# ---------------------------------------------------------------------------- wiring
def get_network_class(model_name):
    """SSDNet class of `model_name` via `nets.nets_factory` (fallback: the VGG nets)."""
    try:
        from nets import nets_factory
    except ImportError:
        nets_factory = None
    if nets_factory is not None:
        try:
            return nets_factory.get_network(model_name)
        except (KeyError, ValueError) as e:
            raise ValueError(f"--model_name={model_name}: {e}") from e
    from nets import ssd_vgg_300, ssd_vgg_512
    known = {'ssd_300_vgg': ssd_vgg_300.SSDNet, 'ssd_512_vgg': ssd_vgg_512.SSDNet}
    if model_name not in known:
        raise ValueError(f"--model_name={model_name} is unknown; choose one of {sorted(known)}")
    return known[model_name]


def _image_size(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


# slim dataset names accepted as VOC directories with the Pascal VOC class ids.
_PASCAL_NAMES = ('pascalvoc_2007', 'pascalvoc_2012', 'pascalvoc')


def load_eval_records(dataset_name, dataset_dir, split, label_names=None, num_images=None,
                      seed=0):
    """`(records, class_names)` of the evaluation set (see the --dataset_name flag).

    label_names: class names of labels 1..C-1 the network was trained with (run config or
    --label_map); they fix the label ids of VOC and TFRecord sets.
    """
    from ssd_tf.datasets import factory
    from ssd_tf.datasets import labelmap as labelmap_lib
    label_map = labelmap_lib.LabelMap(list(label_names)) if label_names else None
    if dataset_name in _PASCAL_NAMES:
        dataset_name, label_map = 'voc', label_map or labelmap_lib.VOC_LABEL_MAP
    if dataset_name == 'tfrecord':
        return _load_tfrecords(dataset_dir, split, label_map)
    if dataset_name not in factory.DATASET_NAMES:
        raise ValueError(f"--dataset_name={dataset_name} is unknown; use one of "
                         f"{', '.join(factory.DATASET_NAMES + ('tfrecord',) + _PASCAL_NAMES)}")
    if dataset_name != 'synthetic' and not dataset_dir:
        raise ValueError(f"--dataset_name={dataset_name} needs --dataset_dir")
    try:
        records, label_map, summary = factory.load_records(
            dataset_name, dataset_dir, split, label_map=label_map,
            num_images=num_images or FLAGS.synthetic_num_images, seed=seed)
    except FileNotFoundError as e:
        raise ValueError(f"--dataset_dir={dataset_dir} --dataset_split_name={split}: {e}") from e
    logging.info('eval data: %s', summary)
    if not records:
        hint = (f"; the network's classes (run config or --label_map) are {list(label_names)}: "
                f"is this the data set it was trained for?" if label_names else "")
        raise ValueError(f"no usable image in split {split!r} of --dataset_dir={dataset_dir} "
                         f"({summary}){hint}")
    return records, list(label_map.names)


def _load_tfrecords(dataset_dir, split, label_map):
    """TFRecords (slim keys): a directory (files named *<split>*.tfrecord*) or a pattern."""
    from ssd_tf.datasets import tfrecord
    if not dataset_dir:
        raise ValueError("--dataset_name=tfrecord needs --dataset_dir (a directory or a file "
                         "pattern)")
    pattern = (os.path.join(dataset_dir, f'*{split}*.tfrecord*') if os.path.isdir(dataset_dir)
               else dataset_dir)
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"--dataset_dir={dataset_dir}: no TFRecord files match {pattern} "
                         f"(--dataset_split_name={split})")
    if label_map is None:
        raise ValueError("TFRecords carry no label map: pass --label_map (labels.txt) or "
                         "evaluate a training directory whose config.json has label_names")
    records = []
    for f in files:
        records.extend(tfrecord.read_tfrecord_records(f))
    return records, list(label_map.names)


def make_preprocess_fn(out_shape, resize):
    """`(image, labels, bboxes) -> (image, bbox_img)` with the VGG eval pre-processing."""
    from preprocessing import ssd_vgg_preprocessing as prep
    try:
        resize = prep.Resize(resize)
    except ValueError as e:
        raise ValueError(f"--eval_resize={resize} must be 1 (NONE), 2 (CENTRAL_CROP), "
                         f"3 (PAD_AND_RESIZE) or 4 (WARP_RESIZE)") from e

    def preprocess(image, labels, bboxes):
        out = prep.preprocess_for_eval(image, labels, bboxes, out_shape=out_shape, resize=resize)
        return out[0], out[3]
    return preprocess


class Evaluation:
    """Everything one evaluation needs, built once from the flags (also used by tests)."""

    def __init__(self, get_network=get_network_class):
        from ssd_tf import evaluation
        self.ev = evaluation
        if FLAGS.batch_size < 1:
            raise ValueError(f"--batch_size={FLAGS.batch_size} must be >= 1")
        path = FLAGS.checkpoint_path
        if FLAGS.wait_for_checkpoints:
            if not os.path.isdir(path or ''):
                raise ValueError(f"--wait_for_checkpoints needs --checkpoint_path to be a "
                                 f"training directory; {path} is not a directory")
            self.kind, self.path = 'tf2', path
        else:
            self.kind, self.path = evaluation.resolve_checkpoint(path)
        config = evaluation.read_run_config(self.path if self.kind == 'saved_model' else path)
        model_name = FLAGS.model_name or config.model_name or \
            DEFAULT_MODEL_NAME
        cfg_classes = config.num_classes
        if FLAGS.num_classes and cfg_classes and int(cfg_classes) != FLAGS.num_classes:
            raise ValueError(f"--num_classes={FLAGS.num_classes} but the run config of "
                             f"{path} says num_classes={cfg_classes}")
        cfg_model = config.model_name
        if FLAGS.model_name and cfg_model and cfg_model != FLAGS.model_name:
            raise ValueError(f"--model_name={FLAGS.model_name} but the run config of {path} "
                             f"says model_name={cfg_model}")
        label_names = None
        if FLAGS.label_map:
            from ssd_tf.datasets import labelmap as labelmap_lib
            try:
                label_names = labelmap_lib.LabelMap.read(FLAGS.label_map).names
            except (OSError, ValueError) as e:
                raise ValueError(f"--label_map={FLAGS.label_map}: {e}") from e
        label_names = label_names or config.label_names
        if FLAGS.dataset_name:
            dataset_name, dataset_dir = FLAGS.dataset_name, FLAGS.dataset_dir
        else:
            dataset_name = config.dataset_name or DEFAULT_DATASET_NAME
            dataset_dir = FLAGS.dataset_dir or config.dataset_dir
        self.dataset_name = dataset_name
        self.records, class_names = load_eval_records(
            dataset_name, dataset_dir, FLAGS.dataset_split_name, label_names,
            num_images=(FLAGS.synthetic_num_images or
                        config.synthetic_num_test or
                        DEFAULT_SYNTHETIC_NUM_TEST),
            seed=(FLAGS.synthetic_seed if FLAGS.synthetic_seed is not None
                  else config.seed or 0))
        num_classes = FLAGS.num_classes or (int(cfg_classes) if cfg_classes else None) or \
            len(class_names) + 1
        if num_classes != len(class_names) + 1:
            raise ValueError(f"--num_classes={num_classes} but the data set "
                             f"{dataset_name} has {len(class_names)} classes + "
                             f"background = {len(class_names) + 1}")
        self.class_names = class_names
        self.num_classes = num_classes
        net_cls = get_network(model_name)
        params = net_cls.default_params._replace(num_classes=num_classes,
                                                 no_annotation_label=num_classes)
        size = _image_size(FLAGS.eval_image_size) or _image_size(
            config.image_shape)
        if size is not None and tuple(size) != tuple(params.img_shape):
            params = params._replace(img_shape=tuple(size))
        self.net = net_cls(params,
                           reference_compat=bool(config.reference_compat))
        self.model_name = model_name
        self.preprocess_fn = make_preprocess_fn(tuple(self.net.params.img_shape),
                                                FLAGS.eval_resize)
        self.dataset = evaluation.make_eval_dataset(
            self.records, self.preprocess_fn, FLAGS.batch_size,
            num_parallel_calls=FLAGS.num_readers)
        nms = dict(select_threshold=FLAGS.select_threshold, nms_threshold=FLAGS.nms_threshold,
                   top_k=FLAGS.select_top_k, keep_top_k=FLAGS.keep_top_k)
        if self.kind == 'saved_model':
            self.model = None
            self.detector = evaluation.saved_model_detector(self.path, self.net, **nms)
        else:
            try:
                self.model = self.net.keras_model()
            except ValueError as e:
                raise ValueError(f"cannot build {model_name} for --eval_image_size/"
                                 f"img_shape {self.net.params.img_shape}: {e}") from e
            self.detector = evaluation.keras_detector(self.model, self.net, **nms)

    def restore(self, path, kind):
        if kind == 'saved_model':
            return
        slim_map = None
        if kind == 'slim':
            from nets import ssd_vgg_keras
            slim_map = ssd_vgg_keras.slim_variable_map(self.model)
        from ssd_tf import run_config
        # --moving_average_decay: the averages stored in each checkpoint of a run trained with
        # it (so it works during training), else the ema.weights.h5 of an older run.
        averaged = bool(FLAGS.moving_average_decay) and kind == 'tf2' and \
            run_config.has_moving_average(path)
        self.ev.restore_model(self.model, kind, path, slim_variable_map=slim_map,
                              moving_average=averaged)
        if FLAGS.moving_average_decay and not averaged:
            ema = os.path.join(os.path.dirname(path), EMA_WEIGHTS_FILENAME)
            if not os.path.isfile(ema):
                raise ValueError(f"--moving_average_decay is set but {path} holds no moving "
                                 f"averages and {ema} does not exist (train with "
                                 f"--moving_average_decay)")
            self.model.load_weights(ema)

    def evaluate(self, path, kind, summaries=False):
        """Restores `path`, evaluates, writes the report; returns the metrics dict."""
        self.restore(path, kind)
        step = self.ev.checkpoint_step(path) if kind != 'saved_model' else None
        run = self.ev.run_evaluation(
            self.detector, self.dataset, self.num_classes, self.class_names,
            max_num_batches=FLAGS.max_num_batches, remove_difficult=FLAGS.remove_difficult,
            matching_threshold=FLAGS.matching_threshold)
        m, paths = self.ev.write_report(
            run, FLAGS.eval_dir, split=FLAGS.dataset_split_name, coco=FLAGS.coco_metrics,
            step=step, records=self.records, num_sample_images=FLAGS.num_sample_images,
            extra=dict(checkpoint_path=path, model_name=self.model_name,
                       dataset_name=self.dataset_name))
        if summaries:
            self.ev.write_summaries(FLAGS.eval_dir, m, step or 0)
        logging.info('Evaluated %s: VOC07 mAP %.4f', path, m['voc07']['map'])
        print(m['table'])
        return m


def main(argv):
    del argv
    e = Evaluation()
    if FLAGS.wait_for_checkpoints:
        timeout = FLAGS.checkpoint_timeout if FLAGS.checkpoint_timeout > 0 else None
        e.ev.watch_checkpoints(
            FLAGS.checkpoint_path,
            lambda p: e.evaluate(p, e.ev.resolve_checkpoint(p)[0], summaries=True),
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
