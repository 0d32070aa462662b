"""Trains an SSD network (the slim `train_ssd_network.py` flags, TensorFlow 2).

With no flags it trains the small CPU configuration (`ssd_small`) on the built-in synthetic
shapes data set, shows a progress bar, evaluates at the end and prints the VOC07 mAP:

    python train_ssd.py

A run in `--train_dir` is resumed automatically (same step, optimizer state and data position).
TensorBoard: `tensorboard --logdir <train_dir>`.
"""
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS

# ------------------------------------------------------------------ run and data
flags.DEFINE_string('train_dir', 'runs/ssd_small_synthetic',
                    'Directory for checkpoints, config.json, TensorBoard events and the final '
                    'evaluation. An existing run there is resumed.')
flags.DEFINE_string('dataset_name', 'synthetic',
                    'synthetic (built in, no download), voc (Pascal VOC layout), coco '
                    '(annotations/instances_<split>.json) or tfrecord (slim TFRecord keys).')
flags.DEFINE_string('dataset_dir', None,
                    'voc: root(s), comma-separated (VOC2007,VOC2012); coco: folder with '
                    'annotations/ and <split>/; tfrecord: a file pattern.')
flags.DEFINE_string('dataset_split_name', 'train', 'Training split (ImageSets/Main/<split>.txt).')
flags.DEFINE_string('eval_split_name', 'test',
                    'Split evaluated at the end of training (VOC07 mAP); empty to skip.')
flags.DEFINE_string('validation_split', None,
                    'Split evaluated every --eval_every_n_steps for TensorBoard (mAP curve).')
flags.DEFINE_integer('eval_every_n_steps', 0, 'Periodic validation mAP (0: never).')
flags.DEFINE_string('label_map', None, 'Label map file (labels.txt); default: the data set\'s.')
flags.DEFINE_boolean('strict_data', False,
                     'Stop at the first bad image or annotation instead of skipping it.')
flags.DEFINE_integer('synthetic_num_train', 4000, 'Synthetic training images.')
flags.DEFINE_integer('synthetic_num_test', 300, 'Synthetic test images.')
flags.DEFINE_integer('seed', 0, 'Seed of the data order, augmentation and initialisation.')
flags.DEFINE_integer('num_preprocessing_threads', 4,
                     'Parallel calls of the decode/augment/encode map (0: AUTOTUNE).')
# ------------------------------------------------------------------ network
flags.DEFINE_string('model_name', 'ssd_small',
                    'ssd_small (CPU-sized), ssd_300_vgg, ssd_512_vgg, ssdlite_mobilenet_v2.')
flags.DEFINE_integer('num_classes', None,
                     'Classes including background; default: from the data set\'s label map. '
                     'A value that disagrees with the data set is an error.')
flags.DEFINE_boolean('reference_compat', False,
                     'Reproduce the slim SSD: its matching, loss, augmentation and L2Norm init.')
# ------------------------------------------------------------------ loss
flags.DEFINE_float('match_threshold', 0.5, 'IoU for an anchor to match a ground-truth box.')
flags.DEFINE_float('negative_ratio', 3., 'Hard negatives per positive.')
flags.DEFINE_float('loss_alpha', 1., 'Weight of the localisation loss.')
flags.DEFINE_float('label_smoothing', 0., 'Label smoothing of the classification targets.')
flags.DEFINE_float('weight_decay', 0.0005, 'L2 weight decay (slim: scale * sum(w^2) / 2).')
# ------------------------------------------------------------------ optimisation
flags.DEFINE_integer('batch_size', 32, 'Global batch size (split across replicas).')
flags.DEFINE_integer('max_number_of_steps', 2500, 'Steps to train (global, resumable).')
flags.DEFINE_enum('optimizer', 'adam',
                  ['adadelta', 'adagrad', 'adam', 'adamw', 'ftrl', 'momentum', 'sgd', 'rmsprop'],
                  'Optimizer (slim names; momentum = SGD with momentum).')
flags.DEFINE_float('learning_rate', 0.002, 'Peak learning rate (after warm-up).')
flags.DEFINE_enum('learning_rate_decay_type', 'cosine',
                  ['fixed', 'exponential', 'polynomial', 'cosine'], 'Decay after warm-up.')
flags.DEFINE_float('end_learning_rate', 1e-5, 'Final rate of polynomial/cosine decay.')
flags.DEFINE_float('learning_rate_decay_factor', 0.94, 'Exponential decay factor.')
flags.DEFINE_float('num_epochs_per_decay', 2.0,
                   'Epochs between exponential decays / length of the polynomial decay.')
flags.DEFINE_integer('warmup_steps', 100, 'Linear learning-rate warm-up steps.')
flags.DEFINE_float('moving_average_decay', None,
                   'Keep an exponential moving average of the weights (used for the final '
                   'evaluation and saved model).')
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
flags.DEFINE_enum('mixed_precision', None, ['mixed_float16', 'mixed_bfloat16'],
                  'Mixed precision policy (loss and L2 normalisation stay float32).')
flags.DEFINE_boolean('jit_compile', False, 'XLA-compile the forward/loss/gradient computation.')
flags.DEFINE_float('max_train_secs', None,
                   'Stop training after this many seconds (then evaluate as if finished): a fixed '
                   'time budget for comparisons.')
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
# What must not change when a run in train_dir is resumed.
_RESUME_KEYS = ('model_name', 'num_classes', 'batch_size', 'reference_compat', 'dataset_name',
                'dataset_split_name', 'seed', 'image_shape')


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
                   for n in ('synthetic_num_train', 'synthetic_num_test') if _present(n)]
    if FLAGS.batch_size <= 0 or FLAGS.max_number_of_steps <= 0:
        errors.append("--batch_size and --max_number_of_steps must be positive")
    if FLAGS.learning_rate <= 0:
        errors.append("--learning_rate must be positive")
    if FLAGS.learning_rate_decay_type in ('polynomial', 'cosine') and \
            FLAGS.end_learning_rate > FLAGS.learning_rate:
        errors.append(f"--end_learning_rate={FLAGS.end_learning_rate} is above "
                      f"--learning_rate={FLAGS.learning_rate}")
    if FLAGS.reference_compat and _present('label_smoothing'):
        errors.append("--label_smoothing with --reference_compat: the original ignored label "
                      "smoothing and reference_compat keeps that; drop one of them")
    if FLAGS.num_logical_cpus and FLAGS.strategy != 'mirrored':
        errors.append("--num_logical_cpus applies to --strategy=mirrored")
    if FLAGS.tpu and FLAGS.strategy != 'tpu':
        errors.append("--tpu applies to --strategy=tpu")
    if FLAGS.strategy == 'tpu' and FLAGS.mixed_precision == 'mixed_float16':
        errors.append("--mixed_precision=mixed_float16 on --strategy=tpu: TPUs use "
                      "mixed_bfloat16")
    if FLAGS.eval_every_n_steps and not FLAGS.validation_split:
        errors.append("--eval_every_n_steps needs --validation_split")
    if not 0. <= FLAGS.label_smoothing < 1.:
        errors.append("--label_smoothing must be in [0, 1)")
    if FLAGS.moving_average_decay is not None and not 0. < FLAGS.moving_average_decay < 1.:
        errors.append("--moving_average_decay must be in (0, 1)")
    if errors:
        raise app.UsageError('\n'.join(errors))




class UserError(Exception):
    """A problem with the user's flags or files, reported without a traceback."""


def _load_split(cfg, split, num_synthetic):
    from ssd_tf.datasets import factory
    if cfg['dataset_name'] == 'tfrecord':
        return None, None, ''
    records, label_map, summary = factory.load_records(
        cfg['dataset_name'], cfg['dataset_dir'], split, label_map=cfg['label_map'],
        strict=cfg['strict_data'], num_images=num_synthetic, seed=cfg['seed'])
    if not records:
        raise UserError(f"no usable image in split {split!r} of --dataset_dir="
                        f"{cfg['dataset_dir']} ({summary})")
    return records, label_map, summary


def _resolve_num_classes(cfg, label_map, net_cls):
    if label_map is not None:
        want = label_map.num_classes
        if cfg['num_classes'] is not None and cfg['num_classes'] != want:
            raise UserError(f"--num_classes={cfg['num_classes']} but the data set's label map has "
                            f"{want - 1} classes + background = {want}; drop --num_classes or "
                            "fix --label_map")
        return want
    if cfg['num_classes'] is None:
        if cfg['dataset_name'] == 'tfrecord':
            raise UserError("--dataset_name=tfrecord needs --num_classes (or --label_map)")
        return net_cls.default_params.num_classes
    return cfg['num_classes']


def _slim_variable_map(net, model):
    """`{slim name: variable}` of a VGG-style model; a UserError for networks without slim
    names (the MobileNet), since slim checkpoints only load into the VGG networks."""
    from nets import ssd_vgg_keras
    try:
        return ssd_vgg_keras.slim_variable_map(model, model_scope=net.model_name)
    except ValueError as e:
        raise UserError(f"--model_name={net.model_name} has no slim variable names ({e}); "
                        "slim checkpoints, vgg_16 and Keras VGG16 weights load into the VGG "
                        "networks") from e


def _init_from_checkpoint(cfg, net, model):
    """Initialises a new run from --checkpoint_path (slim, vgg_16, Keras .h5 or ssd-tf)."""
    import tensorflow as tf
    from ssd_tf import checkpoints
    path = cfg['checkpoint_path']
    if path.endswith('.h5'):
        report = checkpoints.load_keras_vgg16_h5(_slim_variable_map(net, model), path,
                                                 model_scope=net.model_name)
        return str(report)
    resolved = checkpoints.resolve_checkpoint_path(path)
    names = {n for n, _ in tf.train.list_variables(resolved)}
    if '_CHECKPOINTABLE_OBJECT_GRAPH' in names:
        status = tf.train.Checkpoint(model=model).restore(resolved)
        status.expect_partial()
        return f"restored the model from the ssd-tf checkpoint {resolved}"
    report = checkpoints.load_slim_checkpoint(
        _slim_variable_map(net, model), resolved,
        model_scope=net.model_name, checkpoint_model_scope=cfg['checkpoint_model_scope'],
        exclude_scopes=cfg['checkpoint_exclude_scopes'],
        ignore_missing_vars=cfg['ignore_missing_vars'])
    return str(report)


def _trainable_variables(cfg, net, model):
    scopes = [s.strip() for s in (cfg['trainable_scopes'] or '').split(',') if s.strip()]
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
        raise UserError(f"--trainable_scopes={cfg['trainable_scopes']} matches no variable "
                        f"(names look like {net.model_name}/block4_box/conv_cls)")
    return chosen


def run(cfg):
    """Trains according to the resolved flag dict `cfg`; returns the process exit code."""
    import numpy as np
    import tensorflow as tf
    import keras

    from nets import nets_factory
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import data as data_lib
    from ssd_tf import evaluation
    from ssd_tf import training

    train_dir = cfg['train_dir']
    strategy = training.make_strategy(cfg['strategy'], cfg['num_logical_cpus'], cfg['tpu'])
    replicas = strategy.num_replicas_in_sync
    if cfg['batch_size'] % replicas:
        raise UserError(f"--batch_size={cfg['batch_size']} is not divisible by the "
                        f"{replicas} replicas of --strategy={cfg['strategy']}")
    if cfg['mixed_precision']:
        keras.mixed_precision.set_dtype_policy(cfg['mixed_precision'])
    keras.utils.set_random_seed(cfg['seed'])

    net_cls = nets_factory.get_network(cfg['model_name'])
    train_records, label_map, summary = _load_split(cfg, cfg['dataset_split_name'],
                                                    cfg['synthetic_num_train'])
    if summary:
        print(f"train data: {summary}", file=sys.stderr)
    num_classes = _resolve_num_classes(cfg, label_map, net_cls)
    net = net_cls(net_cls.default_params._replace(num_classes=num_classes),
                  reference_compat=cfg['reference_compat'])
    image_shape = tuple(net.params.img_shape)
    cfg = dict(cfg, num_classes=num_classes, image_shape=list(image_shape),
               num_replicas=replicas, label_names=label_map.names if label_map else None)

    previous = training.read_config(train_dir)
    has_checkpoint = tf.train.latest_checkpoint(train_dir) is not None
    if previous and has_checkpoint:
        changed = [k for k in _RESUME_KEYS
                   if k in previous and previous[k] != cfg[k] and not
                   (k == 'image_shape' and list(previous[k]) == list(cfg[k]))]
        if changed:
            raise UserError(
                f"--train_dir={train_dir} holds a run with different settings: " +
                ', '.join(f"--{k}={previous[k]} there, {cfg[k]} now" for k in changed) +
                "; use a new --train_dir, or the same flags to resume")

    anchors = net.anchors()
    with strategy.scope():
        model = net.keras_model(weight_decay=cfg['weight_decay']) \
            if cfg['optimizer'] != 'adamw' else net.keras_model()
        init_report = None
        if cfg['checkpoint_path'] and not has_checkpoint:
            init_report = _init_from_checkpoint(cfg, net, model)
        steps_per_epoch = max(len(train_records) // cfg['batch_size'], 1) \
            if train_records else 1000
        schedule = training.WarmupDecaySchedule(
            cfg['learning_rate'], cfg['learning_rate_decay_type'],
            decay_steps=int(cfg['num_epochs_per_decay'] * steps_per_epoch),
            decay_factor=cfg['learning_rate_decay_factor'],
            end_learning_rate=cfg['end_learning_rate'],
            total_steps=cfg['max_number_of_steps'], warmup_steps=cfg['warmup_steps'])
        optimizer = training.build_optimizer(
            cfg['optimizer'], schedule, opt_epsilon=cfg['opt_epsilon'],
            adam_beta1=cfg['adam_beta1'], adam_beta2=cfg['adam_beta2'],
            adadelta_rho=cfg['adadelta_rho'],
            adagrad_initial_accumulator_value=cfg['adagrad_initial_accumulator_value'],
            ftrl_learning_rate_power=cfg['ftrl_learning_rate_power'],
            ftrl_initial_accumulator_value=cfg['ftrl_initial_accumulator_value'],
            ftrl_l1=cfg['ftrl_l1'], ftrl_l2=cfg['ftrl_l2'], momentum=cfg['momentum'],
            rmsprop_momentum=cfg['rmsprop_momentum'], rmsprop_decay=cfg['rmsprop_decay'],
            weight_decay=cfg['weight_decay'], moving_average_decay=cfg['moving_average_decay'],
            clipnorm=cfg['clip_gradient_norm'], mixed_precision=cfg['mixed_precision'])
        trainable = _trainable_variables(cfg, net, model)
        trainer = training.Trainer(
            net, model, optimizer, strategy, train_dir, cfg['batch_size'],
            loss_config=training.LossConfig(cfg['match_threshold'], cfg['negative_ratio'],
                                            cfg['loss_alpha'], cfg['label_smoothing']),
            jit_compile=cfg['jit_compile'], trainable_variables=trainable,
            max_to_keep=cfg['max_checkpoints_to_keep'])

    resumed = trainer.restore()
    if resumed:
        msg = f"resuming from {resumed} (step {int(trainer.global_step.numpy())})"
        if cfg['checkpoint_path']:
            msg += (f"; --checkpoint_path={cfg['checkpoint_path']} is NOT used: it only "
                    "initialises a new run (use a new --train_dir to fine-tune from it)")
        print(msg, file=sys.stderr)
    elif init_report:
        print(f"initialised from --checkpoint_path={cfg['checkpoint_path']}:\n{init_report}",
              file=sys.stderr)
    if label_map is not None:
        os.makedirs(train_dir, exist_ok=True)
        label_map.write(os.path.join(train_dir, 'labels.txt'))
    training.write_config(train_dir, cfg)

    step = int(trainer.global_step.numpy())
    ref = cfg['reference_compat']

    def preprocess_train(image, labels, bboxes, seed=None):
        return prep.preprocess_for_train(image, labels, bboxes, out_shape=image_shape,
                                         reference_compat=ref, seed=seed)

    def preprocess_eval(image, labels, bboxes):
        return prep.preprocess_for_eval(image, labels, bboxes, out_shape=image_shape)

    def encode(labels, bboxes):
        return net.bboxes_encode(labels, bboxes, anchors, match_threshold=cfg['match_threshold'])

    source = train_records if train_records is not None else cfg['dataset_dir']
    threads = cfg['num_preprocessing_threads'] or tf.data.AUTOTUNE
    dataset = data_lib.build_dataset(
        source, preprocess_train, encode, batch_size=cfg['batch_size'], is_training=True,
        seed=cfg['seed'], num_parallel_calls=threads, with_gt=True,
        start=step * cfg['batch_size'])
    dist_dataset = strategy.experimental_distribute_dataset(dataset)

    writer = tf.summary.create_file_writer(train_dir) \
        if strategy.cluster_resolver is None or strategy.cluster_resolver.task_id in (0, None) \
        else tf.summary.create_noop_writer()
    detect = evaluation.keras_detector(model, net)
    names = label_map.names if label_map else None

    def on_summary(step_now, batch):
        from ssd_tf import visualize
        images, targets = batch
        images = strategy.experimental_local_results(images)[0][:3]
        labels = strategy.experimental_local_results(targets['labels'])[0][:3].numpy()
        boxes = strategy.experimental_local_results(targets['bboxes'])[0][:3].numpy()
        det = detect(images)
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

    eval_records = {}

    def evaluate(split, num_synthetic):
        if split not in eval_records:
            eval_records[split] = _load_split(cfg, split, num_synthetic)[0]
        records = eval_records[split]
        if records is None:
            return None
        ds = data_lib.build_eval_dataset(records, preprocess_eval, batch_size=16)
        run_ = evaluation.run_evaluation(detect, ds, num_classes, class_names=names)
        return run_, evaluation.compute_metrics(run_)

    on_step = None
    if cfg['eval_every_n_steps'] and cfg['validation_split']:
        def on_step(step_now, losses):
            del losses
            if step_now % cfg['eval_every_n_steps'] == 0:
                _, m = evaluate(cfg['validation_split'], cfg['synthetic_num_test'])
                with writer.as_default(step=step_now):
                    tf.summary.scalar('eval/mAP_voc07', m['voc07']['map'])
                    tf.summary.scalar('eval/mAP_voc12', m['voc12']['map'])
                trainer_progress.message(f"step {step_now}: validation mAP VOC07 "
                                         f"{m['voc07']['map']:.4f}")

    trainer_progress = training.ProgressBar(cfg['max_number_of_steps'], step,
                                            cfg['log_every_n_steps'])
    print(f"training {net.model_name} ({model.count_params():,} parameters, "
          f"{num_classes} classes, input {image_shape[0]}x{image_shape[1]}) on "
          f"{cfg['dataset_name']} with {replicas} replica(s), global batch {cfg['batch_size']}; "
          f"steps {step} -> {cfg['max_number_of_steps']}; train_dir {train_dir}", file=sys.stderr)
    try:
        reason = trainer.train(
            dist_dataset, cfg['max_number_of_steps'], log_every_n_steps=cfg['log_every_n_steps'],
            save_interval_secs=cfg['save_interval_secs'],
            save_every_n_steps=cfg['save_every_n_steps'],
            max_consecutive_nonfinite=cfg['max_consecutive_nonfinite'], summary_writer=writer,
            save_summaries_secs=cfg['save_summaries_secs'], on_summary=on_summary,
            on_step=on_step, progress=trainer_progress, max_seconds=cfg['max_train_secs'])
    except training.NonFiniteLossError as e:
        print(f"train_ssd.py: error: {e}", file=sys.stderr)
        return 3
    if reason in ('SIGINT', 'SIGTERM'):
        return 0
    final_step = int(trainer.global_step.numpy())
    if cfg['moving_average_decay']:
        optimizer.inner_optimizer.finalize_variable_values(model.trainable_variables)
        model.save_weights(os.path.join(train_dir, 'ema.weights.h5'))
    if cfg['eval_split_name']:
        result = evaluate(cfg['eval_split_name'], cfg['synthetic_num_test'])
        if result is not None:
            run_, _ = result
            eval_dir = os.path.join(train_dir, 'eval')
            m, _ = evaluation.write_report(run_, eval_dir, split=cfg['eval_split_name'],
                                           records=eval_records[cfg['eval_split_name']],
                                           step=final_step)
            with writer.as_default(step=final_step):
                tf.summary.scalar('eval/mAP_voc07', m['voc07']['map'])
            print(evaluation.format_table(m))
            print(f"VOC07 mAP ({cfg['eval_split_name']}, {m['num_images']} images): "
                  f"{m['voc07']['map']:.4f}   (report: {eval_dir})")
            with open(os.path.join(train_dir, 'final_metrics.json'), 'w') as f:
                json.dump({'step': final_step, 'voc07_map': m['voc07']['map'],
                           'voc12_map': m['voc12']['map']}, f, indent=2)
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


if __name__ == '__main__':
    app.run(main)
