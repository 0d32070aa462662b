"""Trains an SSD network (the slim `train_ssd_network.py` flags, TensorFlow 2).

With no flags it trains the small CPU configuration (`ssd_small`) on the built-in synthetic
shapes data set, shows a progress bar, evaluates at the end and prints the VOC07 mAP:

    python train_ssd.py

A run in `--train_dir` is resumed automatically (same step, optimizer state and data position);
a resume with other settings (model, classes and their names, data set, batch, seed, optimizer,
precision, trainable scopes) is refused before anything is written. An error during training
saves the last completed step first. TensorBoard: `tensorboard --logdir <train_dir>`.

`run` is a list of steps (setup_execution, load_training_data, check_resume, resolve_anchors,
resolve_expand_max_ratio, build_trainer, restore_or_initialise, write_run_files,
make_train_dataset, the loop, report_data_quality, final_evaluation); the logic they call lives
in `ssd_tf` (run_config, training, evaluation).
"""
import os
import shutil
import sys
import tempfile

from ssd_tf import quiet  # noqa: E402,F401  first: quiets TensorFlow in the programs (ssd_tf.quiet)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from ssd_tf.cli import slim_flags  # noqa: E402  (no TensorFlow import)

FLAGS = flags.FLAGS

# ------------------------------------------------------------------ run and data
flags.DEFINE_string('train_dir', 'runs/ssd_small_synthetic',
                    'Directory for checkpoints, config.json, TensorBoard events and the final '
                    'evaluation. An existing run there is resumed.')
flags.DEFINE_string('dataset_name', 'synthetic',
                    'synthetic (built in, no download), voc (Pascal VOC layout), coco '
                    '(annotations/instances_<split>.json), tfrecord (slim or TF Object '
                    'Detection API keys, found from the shards), tfds (tensorflow-datasets '
                    'by name: pip install -e \'.[tfds]\'), or the slim names pascalvoc_2007 / '
                    'pascalvoc_2012 / pascalvoc (the slim converter\'s TFRecords '
                    'voc_2012_<split>_*.tfrecord in --dataset_dir, or a VOC root with the '
                    'Pascal VOC class ids).')
flags.DEFINE_string('dataset_dir', None,
                    'voc: root(s), comma-separated (VOC2007,VOC2012); coco: folder with '
                    'annotations/ and <split>/; tfrecord: a file pattern; tfds: the tfds name '
                    '(voc/2007, coco/2017, optionally :version).')
flags.DEFINE_string('tfds_data_dir', None,
                    'tfds: where tensorflow-datasets keeps prepared data (default: '
                    '$TFDS_DATA_DIR, else ~/tensorflow_datasets). Nothing is downloaded: prepare '
                    'a set with: python -m ssd_tf.datasets.tfds voc/2007 --data_dir DIR')
flags.DEFINE_string('dataset_split_name', 'train', 'Training split (ImageSets/Main/<split>.txt; '
                    'tfds: as tfds spells it, slicing too: train[:90%]).')
flags.DEFINE_string('eval_split_name', 'test',
                    'Split evaluated at the end of training (VOC07 mAP); empty to skip.')
flags.DEFINE_string('validation_split', None,
                    'Split evaluated every --eval_every_n_steps for TensorBoard (mAP curve).')
flags.DEFINE_integer('eval_every_n_steps', 0, 'Periodic validation mAP (0: never).')
flags.DEFINE_boolean('test_time_flip', False,
                     "The run's detection also runs the network on each image mirrored "
                     "left-right and averages the two anchor by anchor before NMS (twice the "
                     "network's work per image; on the small-object dev set VOC07 +0.015 on "
                     "every seed): the final report, the periodic validation and the summary "
                     "images detect so. Recorded in config.json: eval_ssd.py, detect.py, "
                     "export_savedmodel.py and SSDDetector.from_checkpoint detect the run so "
                     "too unless told otherwise (--notest_time_flip).")
flags.DEFINE_string('label_map', None, 'Label map file (labels.txt, .json or the TF Object '
                    'Detection API\'s label_map.pbtxt); default: the data set\'s.')
flags.DEFINE_boolean('strict_data', False,
                     'Stop at the first bad image or annotation instead of skipping it.')
flags.DEFINE_integer('synthetic_num_train', 4000, 'Synthetic training images.')
flags.DEFINE_integer('synthetic_num_test', 300, 'Synthetic test images.')
flags.DEFINE_enum('synthetic_objects', 'shapes', ['shapes', 'small'],
                  'Synthetic data mode: shapes (160 px images, 0-4 objects of 10-60% of the '
                  'side) or small (320 px, 5-15 objects of 3-10% of the side).')
flags.DEFINE_integer('num_samples', None,
                     'Training examples per epoch, the unit of --num_epochs_per_decay; default: '
                     'the records read (VOC/COCO/synthetic) or counted in the TFRecord files.')
flags.DEFINE_integer('seed', 0, 'Seed of the data order, augmentation and initialisation.')
flags.DEFINE_integer('num_preprocessing_threads', 4,
                     'Parallel calls of the decode/augment/encode map (0: one per core, at most 16).')
# Slim flags accepted at their slim default only (`slim_flags.SLIM_DEFAULT_ONLY`), and
# slim's name of the pre-processing.
_SLIM_DEFAULT_ONLY = ('num_clones', 'clone_on_cpu', 'labels_offset', 'train_image_size',
                      'num_readers')
slim_flags.define_slim_default_only_flags(flags, _SLIM_DEFAULT_ONLY)
flags.DEFINE_string('preprocessing_name', None,
                    "Slim flag: the training augmentation is the SSD's ('ssd_vgg', also named "
                    "after a network as slim's factory did; the paper's chain, or slim's with "
                    "--reference_compat); another name is an error.")
# ------------------------------------------------------------------ network
flags.DEFINE_string('model_name', 'ssd_small',
                    'ssd_small (CPU-sized, 128 px), ssd_small_192 (real photographs), '
                    'ssd_small_320 (small objects: stride-4 first map), ssd_300_vgg, '
                    'ssd_512_vgg, ssdlite_mobilenet_v2.')
flags.DEFINE_integer('num_classes', None,
                     'Classes including background; default: from the data set\'s label map. '
                     'A value that disagrees with the data set is an error.')
flags.DEFINE_boolean('reference_compat', False,
                     'Reproduce the slim SSD: its matching, loss, augmentation and L2Norm init.')
flags.DEFINE_enum('anchors', None, ['default', 'auto'],
                  'default: the network\'s anchors; auto: anchor shapes fitted to the training '
                  'boxes (same feature maps and anchors per location), saved with the run and '
                  'used by resume, eval and export. Unset: auto for a new run trained from '
                  'scratch (its heads learn the anchors they get), default with '
                  '--checkpoint_path or --reference_compat (pretrained heads and the slim '
                  'anchors), the run\'s own choice when resuming. The anchor coverage is '
                  'printed either way.')
# ------------------------------------------------------------------ augmentation
flags.DEFINE_float('expand_max_ratio', None,
                   'Largest zoom-out of the SSD paper\'s augmentation: half the images are '
                   'placed in a mean-filled canvas up to this many times their side, which '
                   'makes objects smaller; 1 turns zoom-out off. Unset: chosen from the '
                   'training boxes, 1 when their median side is under 8% of the image side '
                   '(small objects already), else 4 (the paper\'s); the run\'s own when '
                   'resuming. Not with --reference_compat (the slim chain has no zoom-out).')
# prep.PATCH_OVERLAPS, written out: the flags are defined before TensorFlow is imported.
flags.DEFINE_enum('patch_overlap', None, ['iou', 'coverage'],
                  'How the SSD paper\'s crop sampling measures a candidate patch\'s overlap '
                  'with a box (it needs one of 0.1-0.9 with some box): iou, the paper\'s, '
                  'which cannot crop around a box under about 9% of the image side, so small '
                  'objects are seen almost only at their own size; coverage, the fraction of '
                  'the box inside the patch, which zooms in on small objects too (on the '
                  'small-object dev set: the same whole-image mAP, better when detecting with '
                  '--tiles; docs/small-objects.md). Unset: iou, or the run\'s own when '
                  'resuming. Not with --reference_compat (the slim chain crops its own way).')
flags.DEFINE_float('mosaic_prob', None,
                   'Probability that a training image becomes a mosaic of four images of its '
                   'batch after the augmentation: cut at a random point into four rectangles, '
                   'each a window of another image at its own scale (objects keep their size; '
                   'more objects and contexts per image). 0: none. Unset: 0, or the run\'s '
                   'own when resuming. Not with --reference_compat.')
# ------------------------------------------------------------------ loss
flags.DEFINE_float('match_threshold', 0.5, 'IoU for an anchor to match a ground-truth box.')
flags.DEFINE_float('negative_ratio', 3., 'Hard negatives per positive.')
flags.DEFINE_float('loss_alpha', 1., 'Weight of the localisation loss.')
flags.DEFINE_float('label_smoothing', 0., 'Label smoothing of the classification targets.')
flags.DEFINE_float('class_balance', 0.,
                   'Class-balanced loss for rare classes: each positive anchor\'s classification '
                   'loss is weighted by (mean count / its class\'s count)^class_balance, counts '
                   'of positive anchors in the batch, rescaled so the loss keeps its size. '
                   '0 (default): off; 0.5: inverse square root of the frequency; 1: inverse '
                   'frequency. Not with --reference_compat.')
flags.DEFINE_float('weight_decay', 0.0005, 'L2 weight decay (slim: scale * sum(w^2) / 2).')
# ------------------------------------------------------------------ optimisation
flags.DEFINE_integer('batch_size', 32, 'Global batch size (split across replicas).')
flags.DEFINE_integer('max_number_of_steps', 1200, 'Steps to train (global, resumable).')
flags.DEFINE_enum('optimizer', 'adam',
                  ['adadelta', 'adagrad', 'adam', 'adamw', 'ftrl', 'momentum', 'sgd', 'rmsprop'],
                  'Optimizer (slim names; momentum = SGD with momentum).')
flags.DEFINE_float('learning_rate', None,
                   'Peak learning rate (after warm-up). Unset: the resumed run\'s, else the '
                   'network\'s own (ssd_small and ssd_small_320 0.006, the others 0.002).')
flags.DEFINE_enum('learning_rate_decay_type', 'cosine',
                  ['fixed', 'exponential', 'polynomial', 'cosine'], 'Decay after warm-up.')
flags.DEFINE_float('end_learning_rate', 1e-5, 'Final rate of polynomial/cosine decay.')
flags.DEFINE_float('learning_rate_decay_factor', 0.94, 'Exponential decay factor.')
flags.DEFINE_float('num_epochs_per_decay', 2.0,
                   'Epochs between exponential decays / length of the polynomial decay.')
flags.DEFINE_integer('warmup_steps', 100, 'Linear learning-rate warm-up steps.')
flags.DEFINE_float('moving_average_decay', None,
                   'Keep an exponential moving average of the weights: stored in every '
                   'checkpoint (eval_ssd.py --moving_average_decay), and the final checkpoint '
                   '(final evaluation, export) holds the averages as the weights.')
flags.DEFINE_float('clip_gradient_norm', None, 'Clip each gradient to this norm.')
flags.DEFINE_float('adadelta_rho', 0.95, 'adadelta: decay rate.')
flags.DEFINE_float('adagrad_initial_accumulator_value', 0.1, 'adagrad: initial accumulator.')
flags.DEFINE_float('adam_beta1', 0.9, 'adam/adamw: first-moment decay.')
flags.DEFINE_float('adam_beta2', 0.999, 'adam/adamw: second-moment decay.')
flags.DEFINE_float('opt_epsilon', 1e-7,
                   'Epsilon of adam/adamw/adadelta/adagrad/rmsprop (the original defaulted to '
                   '1.0, which all but disables Adam\'s normalisation).')
flags.DEFINE_float('ftrl_learning_rate_power', -0.5, 'ftrl: learning rate power.')
flags.DEFINE_float('ftrl_initial_accumulator_value', 0.1, 'ftrl: initial accumulator.')
flags.DEFINE_float('ftrl_l1', 0.0, 'ftrl: L1 regularisation.')
flags.DEFINE_float('ftrl_l2', 0.0, 'ftrl: L2 regularisation.')
flags.DEFINE_float('momentum', 0.9, 'momentum: momentum.')
flags.DEFINE_float('rmsprop_momentum', 0.9, 'rmsprop: momentum.')
flags.DEFINE_float('rmsprop_decay', 0.9, 'rmsprop: decay.')
# ------------------------------------------------------------------ fine-tuning
flags.DEFINE_string('checkpoint_path', None,
                    'Initialise a NEW run from: a slim TF1 checkpoint (prefix or directory), an '
                    'ImageNet vgg_16 checkpoint (with --checkpoint_model_scope=vgg_16), a Keras '
                    'VGG16 .h5, or an ssd-tf checkpoint. Not used when --train_dir holds a run.')
flags.DEFINE_string('checkpoint_model_scope', None,
                    'Model scope inside --checkpoint_path when it differs (e.g. vgg_16).')
flags.DEFINE_string('checkpoint_exclude_scopes', None,
                    'Comma-separated slim scopes not restored, e.g. '
                    'ssd_300_vgg/block4_box/conv_cls,... for a different number of classes.')
flags.DEFINE_string('trainable_scopes', None,
                    'Comma-separated slim scopes to train (default: everything).')
flags.DEFINE_boolean('ignore_missing_vars', False,
                     'Skip model variables missing from --checkpoint_path.')
# ------------------------------------------------------------------ execution
flags.DEFINE_enum('strategy', 'default', ['default', 'mirrored', 'multi_worker', 'tpu'],
                  'tf.distribute strategy.')
flags.DEFINE_integer('num_logical_cpus', 0,
                     'With --strategy=mirrored and no GPU: split the CPU into this many replicas '
                     '(for testing data parallelism).')
flags.DEFINE_string('tpu', None, 'TPU name or address for --strategy=tpu.')
flags.DEFINE_enum('mixed_precision', 'auto', ['auto', 'float32', 'mixed_float16', 'mixed_bfloat16'],
                  'auto: mixed_bfloat16 where the hardware computes in bfloat16 (CPUs with '
                  'AVX512-BF16/AMX, TPUs, Ampere or later GPUs; same mAP, about 1.9x the SSD300 '
                  'step on such a CPU), float32 elsewhere; the choice is printed first and '
                  'recorded in config.json. The loss and L2 normalisation stay float32. '
                  'mixed_bfloat16 asked for on a CPU without AVX512-BF16/AMX is refused (about 5x '
                  'slower than float32 there) unless --allow_slow_bfloat16. A run resumes in '
                  'float32 or bfloat16 whichever it was trained in (not across mixed_float16).')
flags.DEFINE_boolean('allow_slow_bfloat16', False,
                     'Run --mixed_precision=mixed_bfloat16 even where the hardware lacks '
                     'bfloat16 (ssd_tf.hardware), with a warning.')
flags.DEFINE_boolean('jit_compile', False, 'XLA-compile the forward/loss/gradient computation.')
flags.DEFINE_float('max_train_secs', None,
                   'Stop training after this many seconds (then evaluate as if finished): a fixed '
                   'time budget for comparisons. Counts per process, unless '
                   '--fit_schedule_to_budget.')
flags.DEFINE_boolean('fit_schedule_to_budget', False,
                     'With --max_train_secs: fit the run to the budget instead of cutting it '
                     'off. From the measured step rate (refitted every 10 steps) the last step '
                     'becomes what fits in the budget, at most --max_number_of_steps, and the '
                     'cosine learning-rate decay ends there. The seconds spent and the fitted '
                     'last step are kept in the checkpoint: a resumed run goes on with the '
                     'budget that is left.')
flags.DEFINE_integer('log_every_n_steps', 10, 'Progress line and scalar summaries period.')
flags.DEFINE_integer('save_interval_secs', 600, 'Checkpoint period in seconds.')
flags.DEFINE_integer('save_every_n_steps', None, 'Also checkpoint every this many steps.')
flags.DEFINE_integer('save_summaries_secs', 120, 'Image summaries period in seconds.')
flags.DEFINE_integer('max_checkpoints_to_keep', 5, 'Checkpoints kept in --train_dir.')
flags.DEFINE_integer('max_consecutive_nonfinite', 5,
                     'Stop after this many non-finite losses in a row (updates are skipped).')

# Flags that only mean something with a given optimizer.
_OPTIMIZER_FLAGS = {
    'adadelta_rho': ('adadelta',), 'adagrad_initial_accumulator_value': ('adagrad',),
    'adam_beta1': ('adam', 'adamw'), 'adam_beta2': ('adam', 'adamw'),
    'opt_epsilon': ('adam', 'adamw', 'adadelta', 'adagrad', 'rmsprop'),
    'ftrl_learning_rate_power': ('ftrl',), 'ftrl_initial_accumulator_value': ('ftrl',),
    'ftrl_l1': ('ftrl',), 'ftrl_l2': ('ftrl',), 'momentum': ('momentum',),
    'rmsprop_momentum': ('rmsprop',), 'rmsprop_decay': ('rmsprop',),
}
_DECAY_FLAGS = {'learning_rate_decay_factor': ('exponential',),
                'num_epochs_per_decay': ('exponential', 'polynomial'),
                'end_learning_rate': ('polynomial', 'cosine')}
_CHECKPOINT_FLAGS = ('checkpoint_model_scope', 'checkpoint_exclude_scopes', 'ignore_missing_vars')

def _present(name):
    return FLAGS[name].present


def check_flags():
    """Contradictory flag combinations fail at once, naming the flags."""
    errors = []
    for name, opts in _OPTIMIZER_FLAGS.items():
        if _present(name) and FLAGS.optimizer not in opts:
            errors.append(f"--{name} applies to --optimizer={'|'.join(opts)}, "
                          f"not --optimizer={FLAGS.optimizer}")
    for name, types in _DECAY_FLAGS.items():
        if _present(name) and FLAGS.learning_rate_decay_type not in types:
            errors.append(f"--{name} applies to --learning_rate_decay_type={'|'.join(types)}, not "
                          f"{FLAGS.learning_rate_decay_type}")
    if not FLAGS.checkpoint_path:
        errors += [f"--{n} needs --checkpoint_path" for n in _CHECKPOINT_FLAGS if _present(n)]
    if FLAGS.dataset_name == 'synthetic' and FLAGS.dataset_dir:
        errors.append("--dataset_dir is not used with --dataset_name=synthetic (the built-in "
                      "data set); pick --dataset_name=voc|coco|tfrecord")
    if FLAGS.dataset_name != 'synthetic' and not FLAGS.dataset_dir:
        errors.append(f"--dataset_name={FLAGS.dataset_name} needs --dataset_dir")
    if FLAGS.dataset_name != 'synthetic':
        errors += [f"--{n} applies to --dataset_name=synthetic only"
                   for n in ('synthetic_num_train', 'synthetic_num_test',
                             'synthetic_objects') if _present(n)]
    if FLAGS.dataset_name != 'tfds' and FLAGS.tfds_data_dir:
        errors.append("--tfds_data_dir applies to --dataset_name=tfds only")
    if FLAGS.dataset_name == 'tfds' and FLAGS.label_map:
        errors.append("--label_map does not apply to --dataset_name=tfds (the tfds class "
                      "names are the label map)")
    errors += slim_flags.slim_default_only_errors(FLAGS, _SLIM_DEFAULT_ONLY)
    preprocessing = slim_flags.preprocessing_name_error(FLAGS.preprocessing_name)
    if preprocessing:
        errors.append(preprocessing)
    if FLAGS.num_samples is not None and FLAGS.num_samples <= 0:
        errors.append("--num_samples must be positive")
    if FLAGS.batch_size <= 0 or FLAGS.max_number_of_steps <= 0:
        errors.append("--batch_size and --max_number_of_steps must be positive")
    if FLAGS.learning_rate is not None and FLAGS.learning_rate <= 0:
        errors.append("--learning_rate must be positive")
    if FLAGS.learning_rate is not None and \
            FLAGS.learning_rate_decay_type in ('polynomial', 'cosine') and \
            FLAGS.end_learning_rate > FLAGS.learning_rate:
        errors.append(f"--end_learning_rate={FLAGS.end_learning_rate} is above "
                      f"--learning_rate={FLAGS.learning_rate}")
    errors += _reference_compat_errors()
    if FLAGS.expand_max_ratio is not None and not 1. <= FLAGS.expand_max_ratio < float('inf'):
        errors.append(f"--expand_max_ratio must be >= 1 (1: no zoom-out), got "
                      f"{FLAGS.expand_max_ratio}")
    if FLAGS.num_logical_cpus and FLAGS.strategy != 'mirrored':
        errors.append("--num_logical_cpus applies to --strategy=mirrored")
    if FLAGS.tpu and FLAGS.strategy != 'tpu':
        errors.append("--tpu applies to --strategy=tpu")
    if FLAGS.strategy == 'tpu' and FLAGS.mixed_precision == 'mixed_float16':
        errors.append("--mixed_precision=mixed_float16 on --strategy=tpu: TPUs use "
                      "mixed_bfloat16")
    if FLAGS.allow_slow_bfloat16 and FLAGS.mixed_precision != 'mixed_bfloat16':
        errors.append("--allow_slow_bfloat16 applies to --mixed_precision=mixed_bfloat16")
    if FLAGS.eval_every_n_steps and not FLAGS.validation_split:
        errors.append("--eval_every_n_steps needs --validation_split")
    if not 0. <= FLAGS.label_smoothing < 1.:
        errors.append("--label_smoothing must be in [0, 1)")
    if FLAGS.mosaic_prob is not None and not 0. <= FLAGS.mosaic_prob <= 1.:
        errors.append(f"--mosaic_prob must be a probability in [0, 1] (0: no mosaics), got "
                      f"{FLAGS.mosaic_prob}")
    if not 0. <= FLAGS.class_balance <= 1.:
        errors.append(f"--class_balance must be in [0, 1] (0: off), got {FLAGS.class_balance}")
    if FLAGS.moving_average_decay is not None and not 0. < FLAGS.moving_average_decay < 1.:
        errors.append("--moving_average_decay must be in (0, 1)")
    if FLAGS.max_train_secs is not None and not 0. < FLAGS.max_train_secs < float('inf'):
        errors.append(f"--max_train_secs must be a positive number of seconds, got "
                      f"{FLAGS.max_train_secs}")
    errors += _budget_errors()
    if errors:
        raise app.UsageError('\n'.join(errors))




def _reference_compat_errors():
    """The flags that contradict --reference_compat (what the slim SSD did not have)."""
    if not FLAGS.reference_compat:
        return []
    clash = [('anchors=auto', FLAGS.anchors == 'auto',
              "the slim SSD's anchors are part of what reference_compat reproduces"),
             ('expand_max_ratio', FLAGS.expand_max_ratio is not None,
              "the slim SSD's augmentation has no zoom-out step"),
             ('patch_overlap', FLAGS.patch_overlap is not None,
              "the slim SSD's augmentation samples its crop its own way"),
             ('mosaic_prob', bool(FLAGS.mosaic_prob),
              "the slim SSD's augmentation has no mosaics"),
             ('label_smoothing', _present('label_smoothing'),
              "the original ignored label smoothing and reference_compat keeps that"),
             ('class_balance', bool(FLAGS.class_balance),
              "the slim loss has no class weights and reference_compat keeps that")]
    return [f"--{flag} with --reference_compat: {why}; drop one of them"
            for flag, given, why in clash if given]


def _budget_errors():
    """What --fit_schedule_to_budget needs."""
    if not FLAGS.fit_schedule_to_budget:
        return []
    errors = []
    if FLAGS.max_train_secs is None:
        errors.append("--fit_schedule_to_budget needs --max_train_secs (the budget to fit)")
    if FLAGS.learning_rate_decay_type != 'cosine':
        errors.append(f"--fit_schedule_to_budget fits the cosine decay, not "
                      f"--learning_rate_decay_type={FLAGS.learning_rate_decay_type}")
    if FLAGS.strategy == 'multi_worker':
        errors.append("--fit_schedule_to_budget with --strategy=multi_worker: each worker "
                      "would fit its own last step; pass --max_number_of_steps instead")
    return errors


class UserError(Exception):
    """A problem with the user's flags or files, reported without a traceback."""


# ------------------------------------------------------------------ data and network
def _load_split(cfg, split, num_synthetic, flag='--dataset_split_name'):
    """`(records, label_map, summary)` of one split; (None, None, '') for TFRecord data (read
    in the graph). A split that cannot be read is a UserError naming `flag`."""
    from ssd_tf.datasets import factory
    from ssd_tf.datasets import tfrecord as tfrecord_lib
    if cfg.dataset_name == 'tfrecord':  # records are read (and checked) in the graph
        try:
            layout = tfrecord_lib.detect_layout(cfg.dataset_dir)
            return None, factory.tfrecord_label_map(cfg.dataset_dir, cfg.label_map, layout,
                                                    cfg.num_classes), \
                f"{cfg.dataset_dir}: {tfrecord_lib.layout_description(layout)}"
        except (ValueError, OSError) as e:
            raise UserError(f"--dataset_dir={cfg.dataset_dir} / --label_map={cfg.label_map}: "
                            f"{e}") from e
    if cfg.dataset_name == 'tfds':  # streamed in the graph too
        try:
            source = _tfds_source(cfg, split)
            source.check()
            return None, source.label_map(), source.describe()
        except (ValueError, ImportError) as e:
            raise UserError(f"{flag}={split}: {e}") from e
    try:
        records, label_map, summary = factory.load_records(
            cfg.dataset_name, cfg.dataset_dir, split, label_map=cfg.label_map,
            strict=cfg.strict_data, num_images=num_synthetic, seed=cfg.seed,
            synthetic_objects=cfg.synthetic_objects or 'shapes')
    except (ValueError, OSError) as e:
        raise UserError(f"{flag}={split}: {e}") from e
    if not records:
        raise UserError(f"{flag}={split}: no usable image in split {split!r} of --dataset_dir="
                        f"{cfg.dataset_dir} ({summary})")
    return records, label_map, summary


def resolve_slim_dataset(cfg):
    """A slim data set name (`factory.resolve_slim_name`: pascalvoc_2007 and the like) of the
    slim converter's TFRecords becomes --dataset_name=tfrecord with their file pattern (what
    the rest of training reads, and what config.json records); of a Pascal VOC root it stays
    (the VOC reader gives it Pascal VOC's class ids). Says which on stderr."""
    from ssd_tf.datasets import factory
    if cfg.dataset_name not in factory.SLIM_VOC_NAMES:
        return cfg
    try:
        kind, where = factory.resolve_slim_name(cfg.dataset_name, cfg.dataset_dir,
                                                cfg.dataset_split_name)
    except ValueError as e:
        raise UserError(str(e)) from e
    if kind == 'tfrecord':
        print(f"--dataset_name={cfg.dataset_name}: the slim converter's TFRecords {where} "
              f"(read as --dataset_name=tfrecord --dataset_dir={where})", file=sys.stderr)
        return cfg.replace(dataset_name='tfrecord', dataset_dir=where)
    print(f"--dataset_name={cfg.dataset_name}: the Pascal VOC root {where}, with the Pascal "
          f"VOC class ids", file=sys.stderr)
    return cfg


def _tfds_source(cfg, split):
    from ssd_tf.datasets import tfds as tfds_lib
    return tfds_lib.TfdsSource(cfg.dataset_dir, split, cfg.get('tfds_data_dir'))


def _resolve_num_classes(cfg, label_map, net_cls):
    if label_map is not None:
        want = label_map.num_classes
        if cfg.num_classes is not None and cfg.num_classes != want:
            raise UserError(f"--num_classes={cfg.num_classes} but the data set's label map has "
                            f"{want - 1} classes + background = {want}; drop --num_classes or "
                            "fix --label_map")
        return want
    if cfg.num_classes is None:
        if cfg.dataset_name == 'tfrecord':
            raise UserError("--dataset_name=tfrecord needs --num_classes (or --label_map)")
        return net_cls.default_params.num_classes
    return cfg.num_classes


def _slim_variable_map(net, model):
    """`{slim name: variable}` of a VGG-style model (`builder.slim_variable_map`); a UserError
    for networks without slim names (the MobileNet)."""
    from ssd_tf import builder
    try:
        return builder.slim_variable_map(net, model)
    except ValueError as e:
        raise UserError(str(e)) from e


def _init_from_checkpoint(cfg, net, model):
    """Initialises a new run from --checkpoint_path with `builder.restore_weights` (slim,
    vgg_16, Keras VGG16 .h5 or ssd-tf: the averaged weights of a run that recorded
    --moving_average_decay, as every command loads it)."""
    from ssd_tf import builder
    from ssd_tf import run_config
    kind, resolved = builder.resolve_source(cfg.checkpoint_path)
    source = run_config.read_run_config(cfg.checkpoint_path) if kind == 'tf2' else None
    return builder.restore_weights(
        model, net, kind, resolved, source, checkpoint_model_scope=cfg.checkpoint_model_scope,
        exclude_scopes=cfg.checkpoint_exclude_scopes,
        ignore_missing_vars=cfg.ignore_missing_vars, backbone_h5=True)


def _trainable_variables(cfg, net, model):
    scopes = [s.strip() for s in (cfg.trainable_scopes or '').split(',') if s.strip()]
    if not scopes:
        return model.trainable_variables
    try:
        named = {v.path: k for k, v in _slim_variable_map(net, model).items()}
    except UserError:
        named = {}  # no slim names (the MobileNet): scopes match Keras variable paths
    chosen = []
    for v in model.trainable_variables:
        name = named.get(v.path, v.path)
        if any(name == s or name.startswith(s.rstrip('/') + '/') for s in scopes):
            chosen.append(v)
    if not chosen:
        raise UserError(f"--trainable_scopes={cfg.trainable_scopes} matches no variable "
                        f"(names look like {net.model_name}/block4_box/conv_cls)")
    return chosen


# ------------------------------------------------------------------ the steps of a run
def setup_execution(cfg):
    """The strategy, precision policy and seeds; returns `(cfg with the resolved
    mixed_precision, strategy)`. --mixed_precision=auto is resolved by
    `hardware.choose_precision` and printed; mixed_bfloat16 asked for on hardware without
    bfloat16 is refused first (ssd_tf.hardware.check_bfloat16)."""
    import keras
    from ssd_tf import hardware
    from ssd_tf import training
    if cfg.mixed_precision == 'mixed_bfloat16':
        note = hardware.check_bfloat16('--mixed_precision=mixed_bfloat16',
                                       cfg.get('allow_slow_bfloat16', False), cfg.strategy)
        if note:
            print(note, file=sys.stderr)
    policy, why = hardware.choose_precision(
        cfg.mixed_precision, hardware.bfloat16_support(cfg.strategy)
        if cfg.mixed_precision == 'auto' else None)
    print(f"precision: {policy}" + (f" ({why})" if cfg.mixed_precision == 'auto' else ''),
          file=sys.stderr)
    cfg = cfg.replace(mixed_precision=policy)
    strategy = training.make_strategy(cfg.strategy, cfg.num_logical_cpus, cfg.tpu)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise UserError(f"--batch_size={cfg.batch_size} is not divisible by the "
                        f"{replicas} replicas of --strategy={cfg.strategy}")
    keras.mixed_precision.set_dtype_policy(policy)
    keras.utils.set_random_seed(cfg.seed)
    return cfg, strategy


def load_training_data(cfg, replicas):
    """Reads the training split and builds the network object for its classes; returns
    `(cfg resolved with num_classes/image_shape/num_replicas/label_names, net, records,
    label_map, summary)`."""
    from nets import nets_factory
    net_cls = nets_factory.get_network(cfg.model_name)
    records, label_map, summary = _load_split(cfg, cfg.dataset_split_name,
                                              cfg.synthetic_num_train)
    if summary:
        print(f"train data: {summary}", file=sys.stderr)
    if label_map is not None and label_map.mapping_description():
        print(f"train data: {label_map.mapping_description()}", file=sys.stderr)
    num_classes = _resolve_num_classes(cfg, label_map, net_cls)
    net = net_cls(net_cls.default_params._replace(num_classes=num_classes),
                  reference_compat=cfg.reference_compat)
    cfg = cfg.replace(num_classes=num_classes, image_shape=list(net.params.img_shape),
                      num_replicas=replicas, label_names=label_map.names if label_map else None,
                      label_ids=label_map.label_ids if label_map else None)
    return cfg, net, records, label_map, summary


def check_resume(cfg, train_dir):
    """Refuses to resume the run in train_dir with other settings (before anything is
    written); returns `(cfg with the flags that default to the run's own resolved
    (run_config.fill_unset), whether train_dir holds a checkpoint to resume)`."""
    from ssd_tf import run_config
    try:  # damaged newer checkpoints are reported; none intact is refused (not step 0)
        has_checkpoint = run_config.resume_checkpoint(train_dir) is not None
    except ValueError as e:
        raise UserError(str(e)) from e
    if not has_checkpoint or not os.path.isfile(os.path.join(train_dir,
                                                             run_config.CONFIG_FILENAME)):
        return _fill_unset(cfg, None, has_checkpoint), has_checkpoint
    previous = run_config.RunConfig.read(train_dir)
    cfg = _fill_unset(cfg, previous, has_checkpoint)
    changed = run_config.resume_conflicts(previous, cfg)
    then = previous.mixed_precision or 'float32'  # None: an older float32 run
    if not changed and 'mixed_precision' in previous.recorded and then != cfg.mixed_precision:
        print(f"resuming the run trained in {then} in {cfg.mixed_precision} (the same "
              f"checkpoint; precision: as above)", file=sys.stderr)
    if changed:
        raise UserError(
            f"--train_dir={train_dir} holds a run with different settings: " +
            ', '.join(f"--{flag}={then} there, {now} now" for flag, then, now in changed) +
            "; use a new --train_dir, or the same flags to resume")
    return cfg, has_checkpoint


def _fill_unset(cfg, previous, has_checkpoint):
    """cfg with the flags that default to the run's own resolved (run_config.fill_unset)."""
    from ssd_tf import run_config
    try:
        return run_config.fill_unset(cfg, previous, has_checkpoint)
    except ValueError as e:
        raise UserError(str(e)) from e


def _training_boxes(cfg, records):
    """The ground-truth boxes `[N, 4]` of the training split (TFRecord and tfds data:
    streamed, box features only, at most `anchors_report.MAX_SCAN_RECORDS` examples)."""
    from ssd_tf import anchors_report
    if records is not None:
        return anchors_report.boxes_of_records(records)
    try:
        return anchors_report.training_boxes(
            cfg.dataset_name, cfg.dataset_dir, cfg.dataset_split_name,
            max_records=anchors_report.MAX_SCAN_RECORDS,
            tfds_data_dir=cfg.get('tfds_data_dir'))[0]
    except (ValueError, OSError, ImportError) as e:
        raise UserError(f"--dataset_dir={cfg.dataset_dir}: {e}") from e


def resolve_expand_max_ratio(cfg, boxes):
    """cfg with `expand_max_ratio` chosen from the training boxes `[N, 4]` when neither the
    flag nor the resumed run set it (`prep.expand_max_ratio_for_boxes`, its reason printed);
    unchanged with --reference_compat."""
    from preprocessing import ssd_vgg_preprocessing as prep
    if cfg.expand_max_ratio is not None or cfg.reference_compat:
        return cfg
    ratio, reason = prep.expand_max_ratio_for_boxes(boxes)
    print(f"augmentation: --expand_max_ratio={ratio:g} ({reason})", file=sys.stderr)
    return cfg.replace(expand_max_ratio=float(ratio))


def resolve_anchors(cfg, net, boxes, has_checkpoint, implicit=False):
    """The run's anchors and their coverage of the training boxes: a resumed run keeps the
    anchors saved in its config.json (not refitted to the current data: they are part of the
    model); a new `--anchors=auto` run fits them (`ssd_tf.anchor_fit`; when --anchors was not
    given (`implicit`) and there is nothing to fit, the network's anchors, said so). Prints
    the coverage report (the default anchors' headline, the fitted shapes, then the full
    report of the anchors used, with its warning); returns `(cfg with anchors, anchor_shapes
    and anchor_coverage, net, report text)`. `boxes`: the training boxes `[N, 4]`
    (`_training_boxes`)."""
    from nets import nets_factory
    from ssd_tf import anchor_fit
    from ssd_tf import anchors as anchors_lib
    from ssd_tf import anchors_report
    from ssd_tf import run_config
    config_path = os.path.join(cfg.train_dir, run_config.CONFIG_FILENAME)
    previous = run_config.RunConfig.read(config_path) \
        if has_checkpoint and os.path.isfile(config_path) else None
    small = anchors_report.small_object_setup(nets_factory.networks_map)

    def coverage(n):
        return anchors_report.anchor_coverage(boxes, n, cfg.match_threshold, seed=cfg.seed,
                                              **small)
    before = None
    if previous is not None:
        try:
            params = run_config.run_params(net.params, previous, where=config_path)
        except ValueError as e:
            raise UserError(str(e)) from e
        net = type(net)(params, reference_compat=cfg.reference_compat)
    if previous is not None and previous.anchor_shapes is not None:
        print(f"resuming with the run's fitted anchors from {config_path} (kept, not refitted "
              f"to the current data)", file=sys.stderr)
    elif cfg.anchors == 'auto' and has_checkpoint:
        raise UserError(f"--anchors=auto but --train_dir={cfg.train_dir} holds a run trained "
                        f"with the default anchors; use a new --train_dir, or --anchors=default "
                        f"to resume")
    elif cfg.anchors == 'auto':
        before = coverage(net)
        try:
            net = anchor_fit.fit_anchors(boxes, net, cfg.match_threshold, seed=cfg.seed)
        except ValueError as e:
            if not implicit:
                raise UserError(f"--anchors=auto: {e}") from e
            print(f"anchors: the network's defaults (nothing to fit them to: {e})",
                  file=sys.stderr)
            cfg, before = cfg.replace(anchors='default'), None
    if not len(anchors_report.valid_boxes(boxes)):
        print("anchor coverage: no ground-truth box in the training data", file=sys.stderr)
        return cfg, net, ''
    report = coverage(net)
    explicit = any(anchors_lib.is_explicit(s) for s in net.params.anchor_sizes)
    shapes = [[list(hw) for hw in layer] for layer in net.params.anchor_sizes] \
        if explicit else None
    text = report.format()
    if before is not None:  # the default anchors are not used: their headline only
        why = ' (--anchors unset: fitted, as for every new run from scratch)' if implicit else ''
        text = (f"{before.format().splitlines()[0]}{why}\n{anchor_fit.format_shapes(net)}\n"
                f"{text}")
    print(text, file=sys.stderr)
    record = report.to_dict()
    if before is not None:
        record['before'] = before.to_dict()
    return cfg.replace(anchor_shapes=shapes, anchor_coverage=record), net, text


def write_anchor_summaries(cfg, text, writer, step):
    """The coverage report to TensorBoard: text 'anchors/coverage' and scalar
    'anchors/coverage' (and 'anchors/coverage_default' before fitting)."""
    import tensorflow as tf
    record = cfg.anchor_coverage or {}
    if not text or record.get('fraction') is None:
        return
    with writer.as_default(step=step):
        tf.summary.text('anchors/coverage', '```\n' + text + '\n```')
        tf.summary.scalar('anchors/coverage', record['fraction'])
        if (record.get('before') or {}).get('fraction') is not None:
            tf.summary.scalar('anchors/coverage_default', record['before']['fraction'])


def build_trainer(cfg, net, strategy, save_dir, has_checkpoint):
    """The Keras model, optimizer and Trainer (inside the strategy's scope), initialised from
    --checkpoint_path for a new run; returns `(trainer, init_report)`."""
    from ssd_tf import training
    with strategy.scope():
        model = net.keras_model(weight_decay=cfg.weight_decay) \
            if cfg.optimizer != 'adamw' else net.keras_model()
        init_report = None
        if cfg.checkpoint_path and not has_checkpoint:
            init_report = _init_from_checkpoint(cfg, net, model)
        budget = training.TimeBudget(cfg.max_train_secs, cfg.max_number_of_steps) \
            if cfg.fit_schedule_to_budget else None
        schedule = training.WarmupDecaySchedule(
            cfg.learning_rate, cfg.learning_rate_decay_type,
            decay_steps=int(cfg.num_epochs_per_decay *
                            training.steps_per_epoch(cfg.num_samples, cfg.batch_size))
            if cfg.num_samples else 1,  # not used by the fixed and cosine schedules
            decay_factor=cfg.learning_rate_decay_factor,
            end_learning_rate=cfg.end_learning_rate,
            total_steps=cfg.max_number_of_steps, warmup_steps=cfg.warmup_steps)
        if budget is not None:
            schedule.follow(budget.last_step)
        optimizer = training.build_optimizer(training.OptimizerConfig.from_run_config(cfg),
                                             schedule)
        trainer = training.Trainer(
            net, model, optimizer, strategy, cfg.train_dir, cfg.batch_size,
            loss_config=training.LossConfig(cfg.match_threshold, cfg.negative_ratio,
                                            cfg.loss_alpha, cfg.label_smoothing,
                                            cfg.class_balance or 0.),
            jit_compile=cfg.jit_compile,
            trainable_variables=_trainable_variables(cfg, net, model),
            max_to_keep=cfg.max_checkpoints_to_keep, save_dir=save_dir, time_budget=budget)
    return trainer, init_report


def restore_or_initialise(cfg, trainer, init_report):
    """Resumes the run of train_dir (reporting an unused --checkpoint_path) or reports the
    initialisation; returns the starting step."""
    resumed = trainer.restore()
    if resumed:
        msg = f"resuming from {resumed} (step {int(trainer.global_step.numpy())})"
        if cfg.checkpoint_path:
            msg += (f"; --checkpoint_path={cfg.checkpoint_path} is NOT used: it only "
                    "initialises a new run (use a new --train_dir to fine-tune from it)")
        print(msg, file=sys.stderr)
    elif init_report:
        print(f"initialised from --checkpoint_path={cfg.checkpoint_path}:\n{init_report}",
              file=sys.stderr)
    return int(trainer.global_step.numpy())


def write_run_files(cfg, label_map):
    """labels.txt (training labels: what the network predicts) and config.json (with the
    dataset ids of a label map with gaps, `label_ids`) into train_dir (the chief only)."""
    if label_map is not None:
        os.makedirs(cfg.train_dir, exist_ok=True)
        label_map.training_label_map().write(os.path.join(cfg.train_dir, 'labels.txt'))
    cfg.write(cfg.train_dir)


def make_train_dataset(cfg, net, strategy, records, start_step, label_texts=None):
    """`(dataset, problems)`: the distributed training dataset positioned at `start_step`,
    and the `check.DataProblems` that counts the TFRecord records it skips (strict mode: the
    first bad record stops the run, naming its shard and index)."""
    import tensorflow as tf
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import data as data_lib
    from ssd_tf.datasets import check as check_lib
    anchors = net.anchors()
    image_shape = tuple(cfg.image_shape)

    def preprocess_train(image, labels, bboxes, seed=None):
        return prep.preprocess_for_train(image, labels, bboxes, out_shape=image_shape,
                                         reference_compat=cfg.reference_compat, seed=seed,
                                         expand_max_ratio=cfg.expand_max_ratio,
                                         patch_overlap=cfg.patch_overlap)

    def encode(labels, bboxes):
        return net.bboxes_encode(labels, bboxes, anchors, match_threshold=cfg.match_threshold)

    source = records if records is not None else (
        _tfds_source(cfg, cfg.dataset_split_name) if cfg.dataset_name == 'tfds'
        else cfg.dataset_dir)
    problems = check_lib.DataProblems(strict=cfg.strict_data)
    threads = cfg.num_preprocessing_threads or tf.data.AUTOTUNE
    dataset = data_lib.build_dataset(
        source, preprocess_train, encode, batch_size=cfg.batch_size, is_training=True,
        seed=cfg.seed, num_parallel_calls=threads, with_gt=True,
        start=start_step * cfg.batch_size, num_classes=cfg.num_classes, report=problems,
        label_ids=cfg.label_ids, label_texts=label_texts, mosaic_prob=cfg.mosaic_prob or 0.)
    return strategy.experimental_distribute_dataset(dataset), problems


class RunEvaluation:
    """Evaluates the model on a split (records read once) for the periodic validation mAP
    and the final report."""

    def __init__(self, cfg, net, model):
        from preprocessing import ssd_vgg_preprocessing as prep
        from ssd_tf import evaluation
        self.cfg = cfg
        self.net = net
        self.model = model
        # the summary images; the run's detection (--test_time_flip) as its report's
        self.detect = evaluation.keras_detector(model, net, test_time_flip=cfg.test_time_flip)
        self._float32 = None  # (network, detector) of the mAP: float32, as eval_ssd.py's
        self.records = {}
        shape = tuple(cfg.image_shape)
        self.preprocess = lambda i, l, b: prep.preprocess_for_eval(i, l, b, out_shape=shape)

    def load(self, split, flag):
        """Reads `split` now (a bad split fails here, naming `flag`); records, a
        `TfdsSource` for tfds data (streamed), or None for TFRecord data (streamed in the
        graph; its label map was resolved with the training split, so it is not scanned
        again here)."""
        if self.cfg.dataset_name == 'tfrecord':
            return self._tfrecord_split(split, flag)
        if split not in self.records:
            self.records[split] = _load_split(self.cfg, split, self.cfg.synthetic_num_test,
                                              flag=flag)[0]
            if self.cfg.dataset_name == 'tfds':  # streamed: the source, not records
                self.records[split] = _tfds_source(self.cfg, split)
        return self.records[split]

    def _tfrecord_split(self, split, flag):
        """The shards of `split` beside the training shards (a tuple of files), or None, said
        on the console (a UserError for --validation_split, which asks for them)."""
        import tensorflow as tf
        from ssd_tf.datasets import tfrecord as tfrecord_lib
        if split not in self.records:
            pattern = tfrecord_lib.split_pattern(self.cfg.dataset_dir,
                                                 self.cfg.dataset_split_name, split)
            self.records[split] = tuple(sorted(tf.io.gfile.glob(pattern))) if pattern else None
            why = (f"{flag}={split}: no TFRecord shards of split {split!r} beside "
                   f"--dataset_dir={self.cfg.dataset_dir} (looked for its file names with "
                   f"{split!r} in place of {self.cfg.dataset_split_name!r})")
            if pattern is None and flag == '--validation_split':
                raise UserError(why)
            print(f"{flag}={split}: evaluating the shards {pattern}" if pattern else
                  f"NO EVALUATION: {why}; evaluate later with eval_ssd.py --checkpoint_path="
                  f"{self.cfg.train_dir} --dataset_dir=<the {split} shards>", file=sys.stderr)
        return self.records[split]

    def float32_detect(self):
        """The detector of the mAP: the current weights in float32 (`builder.float32_network`),
        so that a run trained in bfloat16 reports what eval_ssd.py reports on its checkpoint
        (which builds the network in float32)."""
        from ssd_tf import builder
        from ssd_tf import evaluation
        if self._float32 is None:
            network = builder.float32_network(self.model, self.net)
            self._float32 = (network, self.detect if network is self.model
                             else evaluation.keras_detector(
                                 network, self.net, test_time_flip=self.cfg.test_time_flip))
        else:
            builder.float32_network(self.model, self.net, copy=self._float32[0])
        return self._float32[1]

    def __call__(self, split, flag='--eval_split_name'):
        """`(EvalRun, metrics)` of `split`, or None for data read in the graph (TFRecord)."""
        from ssd_tf import data as data_lib
        from ssd_tf import evaluation
        records = self.load(split, flag)
        if records is None:
            return None
        ds = data_lib.build_eval_dataset(records, self.preprocess, batch_size=16,
                                         label_ids=self.cfg.label_ids)
        run_ = evaluation.run_evaluation(self.float32_detect(), ds, self.cfg.num_classes,
                                         class_names=self.cfg.label_names,
                                         category_ids=self.cfg.label_ids)
        return run_, evaluation.compute_metrics(run_)


def make_summary_images(cfg, strategy, evaluate, writer):
    """`on_summary(step, batch)`: ground truth beside predictions for 3 training images."""
    import numpy as np
    import tensorflow as tf
    from preprocessing import ssd_vgg_preprocessing as prep

    def on_summary(step_now, batch):
        from ssd_tf import visualize
        names = cfg.label_names
        images, targets = batch
        images = strategy.experimental_local_results(images)[0][:3]
        labels = strategy.experimental_local_results(targets['labels'])[0][:3].numpy()
        boxes = strategy.experimental_local_results(targets['bboxes'])[0][:3].numpy()
        det = evaluate.detect(images)
        pictures = []
        for i in range(int(images.shape[0])):
            img = prep.np_image_unwhitened(images[i].numpy())
            keep = labels[i] > 0
            gt = visualize.draw_boxes(img, boxes[i][keep], labels[i][keep], label_names=names)
            n = int(det['num_detections'][i])
            sc = det['scores'][i][:n].numpy()
            ok = sc >= 0.3
            pred = visualize.draw_boxes(img, det['bboxes'][i][:n].numpy()[ok],
                                        det['classes'][i][:n].numpy()[ok], scores=sc[ok],
                                        label_names=names)
            pictures.append(np.concatenate([gt, pred], axis=1))
        with writer.as_default(step=step_now):
            tf.summary.image('ground_truth_vs_predictions', np.stack(pictures), max_outputs=3)
    return on_summary


def make_periodic_validation(cfg, evaluate, writer, progress):
    """`on_step(step, losses)`: the validation mAP every --eval_every_n_steps (or None)."""
    import tensorflow as tf
    if not (cfg.eval_every_n_steps and cfg.validation_split):
        return None

    def on_step(step_now, losses):
        del losses
        if step_now % cfg.eval_every_n_steps == 0:
            _, m = evaluate(cfg.validation_split, '--validation_split')
            with writer.as_default(step=step_now):
                tf.summary.scalar('eval/mAP_voc07', m['voc07']['map'])
                tf.summary.scalar('eval/mAP_voc12', m['voc12']['map'])
            progress.message(f"step {step_now}: validation mAP VOC07 {m['voc07']['map']:.4f}")
    return on_step


def report_data_quality(summary, problems, writer, step):
    """The training data's quality report at the end of training (or after a failure):
    the readers' one-line summary of the training split (`summary`, VOC/COCO/synthetic) and
    the TFRecord pipeline's skipped records and dropped boxes (`problems`, a
    `check.DataProblems`), printed and written to TensorBoard (texts 'data/quality' and
    'data/problems', scalars 'data/records_skipped', 'data/boxes_dropped')."""
    import tensorflow as tf
    if summary:
        print(f"train data: {summary}", file=sys.stderr)
        with writer.as_default(step=step):
            tf.summary.text('data/quality', summary)
    if problems is not None and problems:
        print(f"train data: {problems.summary()}", file=sys.stderr)
        problems.write_summary(step, writer)


def final_evaluation(cfg, evaluate, writer, step):
    """Evaluates --eval_split_name, writes the report (eval/, final_metrics.json) and the mAP
    summary."""
    import tensorflow as tf
    from ssd_tf import atomic_files
    from ssd_tf import evaluation
    if not cfg.eval_split_name:
        return
    result = evaluate(cfg.eval_split_name)
    if result is None:
        return
    run_, _ = result
    eval_dir = os.path.join(cfg.train_dir, 'eval')
    records = evaluate.records[cfg.eval_split_name]
    m, _ = evaluation.write_report(run_, eval_dir, split=cfg.eval_split_name,
                                   records=records if isinstance(records, list) else None,
                                   step=step, extra=dict(test_time_flip=bool(cfg.test_time_flip)))
    with writer.as_default(step=step):
        tf.summary.scalar('eval/mAP_voc07', m['voc07']['map'])
    print(evaluation.format_table(m))
    flip = ', test-time flip' if cfg.test_time_flip else ''
    print(f"VOC07 mAP ({cfg.eval_split_name}, {m['num_images']} images{flip}): "
          f"{m['voc07']['map']:.4f}   (report: {eval_dir})")
    atomic_files.write_json(os.path.join(cfg.train_dir, 'final_metrics.json'),
                            {'step': step, 'voc07_map': m['voc07']['map'],
                             'voc12_map': m['voc12']['map']}, indent=2)


def augmentation_text(cfg):
    """The training augmentation in words, for the run's first lines."""
    if cfg.reference_compat:
        return 'augmentation: the slim SSD chain'
    if cfg.expand_max_ratio == 1:
        text = 'augmentation: the SSD paper chain without zoom-out (--expand_max_ratio=1)'
    else:
        text = (f'augmentation: the SSD paper chain, zoom-out up to {cfg.expand_max_ratio:g}x '
                '(--expand_max_ratio)')
    if cfg.patch_overlap == 'coverage':
        text += ', crops measured by box coverage (--patch_overlap=coverage)'
    if cfg.mosaic_prob:
        text += (f', then {100 * cfg.mosaic_prob:g}% of the images mosaics of four '
                 '(--mosaic_prob)')
    return text


def loss_text(cfg):
    """The loss settings that are not the default, in words, for the run's first lines."""
    if cfg.class_balance:
        return (f'; loss: class-balanced weights (--class_balance={cfg.class_balance:g}: '
                f'positives weighted by (mean count / class count)^{cfg.class_balance:g})')
    return ''


def is_chief(strategy):
    """True for the process that writes into --train_dir (the only one, except in a
    multi-worker run: there the 'chief' task, or worker 0 of a cluster without one)."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or resolver.task_type in (None, 'chief'):
        return True
    has_chief = 'chief' in resolver.cluster_spec().as_dict()
    return resolver.task_type == 'worker' and resolver.task_id == 0 and not has_chief


def run(flag_values):
    """Trains according to the resolved flag dict; returns the process exit code."""
    from ssd_tf import run_config
    cfg = resolve_slim_dataset(run_config.RunConfig.from_dict(flag_values))
    cfg, strategy = setup_execution(cfg)
    chief = is_chief(strategy)
    from ssd_tf import run_lock
    lock = run_lock.acquire(cfg.train_dir) if chief else None  # one run per --train_dir
    if lock is not None and lock.note:
        print(f"WARNING: {lock.note}", file=sys.stderr)
    # A non-chief worker writes its checkpoints to a directory of its own, removed at exit
    # (every worker must save: saving takes part in the workers' collectives).
    save_dir = cfg.train_dir if chief else tempfile.mkdtemp(prefix='ssd_tf_worker_')
    if not chief:
        print(f"not the chief: checkpoints go to {save_dir} (removed at exit); --train_dir is "
              "written by the chief only", file=sys.stderr)
    try:
        return _run(cfg, strategy, chief, save_dir)
    finally:
        if lock is not None:
            lock.release()
        if not chief:
            shutil.rmtree(save_dir, ignore_errors=True)


def _run(cfg, strategy, chief, save_dir):
    import tensorflow as tf
    from ssd_tf import training
    cfg, net, records, label_map, summary = load_training_data(
        cfg, strategy.num_replicas_in_sync)
    implicit_anchors = cfg.anchors is None
    cfg, has_checkpoint = check_resume(cfg, cfg.train_dir)
    boxes = _training_boxes(cfg, records)
    cfg, net, anchor_text = resolve_anchors(cfg, net, boxes, has_checkpoint, implicit_anchors)
    cfg = resolve_expand_max_ratio(cfg, boxes)
    if cfg.learning_rate_decay_type in _DECAY_FLAGS['num_epochs_per_decay']:
        try:  # the schedule counts in epochs
            cfg = cfg.replace(num_samples=training.resolve_num_samples(
                cfg.num_samples or (_tfds_source(cfg, cfg.dataset_split_name).num_examples()
                                    if cfg.dataset_name == 'tfds' else None),
                records, cfg.dataset_dir))
        except ValueError as e:
            raise UserError(f"{e}; pass --num_samples") from e
    trainer, init_report = build_trainer(cfg, net, strategy, save_dir, has_checkpoint)
    evaluate = RunEvaluation(cfg, net, trainer.model)
    if cfg.validation_split:  # a typo fails now, not at step --eval_every_n_steps
        evaluate.load(cfg.validation_split, '--validation_split')
    step = restore_or_initialise(cfg, trainer, init_report)
    if chief:
        write_run_files(cfg, label_map)
    dataset, problems = make_train_dataset(cfg, net, strategy, records, step,
                                           getattr(label_map, 'record_texts', None))
    writer = tf.summary.create_file_writer(cfg.train_dir) if chief \
        else tf.summary.create_noop_writer()
    write_anchor_summaries(cfg, anchor_text, writer, step)
    progress = training.ProgressBar(cfg.max_number_of_steps, step, cfg.log_every_n_steps)
    print(f"training {net.model_name} ({trainer.model.count_params():,} parameters, "
          f"{cfg.num_classes} classes, input {cfg.image_shape[0]}x{cfg.image_shape[1]}) on "
          f"{cfg.dataset_name} with {cfg.num_replicas} replica(s), global batch "
          f"{cfg.batch_size}; steps {step} -> {cfg.max_number_of_steps}; "
          f"{augmentation_text(cfg)}{loss_text(cfg)}; train_dir {cfg.train_dir}",
          file=sys.stderr)
    try:
        reason = trainer.train(
            dataset, cfg.max_number_of_steps, log_every_n_steps=cfg.log_every_n_steps,
            save_interval_secs=cfg.save_interval_secs,
            save_every_n_steps=cfg.save_every_n_steps,
            max_consecutive_nonfinite=cfg.max_consecutive_nonfinite, summary_writer=writer,
            save_summaries_secs=cfg.save_summaries_secs,
            on_summary=make_summary_images(cfg, strategy, evaluate, writer),
            on_step=make_periodic_validation(cfg, evaluate, writer, progress) if chief else None,
            progress=progress, max_seconds=cfg.max_train_secs)
    except training.NonFiniteLossError as e:
        print(f"train_ssd.py: error: {e}", file=sys.stderr)
        return 3
    except (OSError, tf.errors.OpError) as e:  # the last good step was saved first
        # A bad record under --strict_data surfaces as an OpError: print its clear message.
        print(f"train_ssd.py: error: {problems.strict_error or e}", file=sys.stderr)
        if chief:
            report_data_quality('', problems, writer, int(trainer.global_step.numpy()))
        return 2
    if reason in ('SIGINT', 'SIGTERM'):
        return 0
    final_step = int(trainer.global_step.numpy())
    if chief:
        report_data_quality(summary, problems, writer, final_step)
        final_evaluation(cfg, evaluate, writer, final_step)
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags start with --)")
    check_flags()
    try:
        return run(FLAGS.flag_values_dict())
    except (UserError, ValueError) as e:
        print(f"train_ssd.py: error: {e}", file=sys.stderr)
        return 2


def run_main():
    """Entry point (`ssd-train`)."""
    app.run(main)


if __name__ == '__main__':
    run_main()
