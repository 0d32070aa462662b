"""One way from a training run, a checkpoint or a weights file to a network with its weights.

Every command that needs a model asks this module (train_ssd.py `--checkpoint_path` init,
eval_ssd.py, export_savedmodel.py, detect.py, `SSDDetector.from_checkpoint`), so a checkpoint
one command takes, all take, and they resolve it the same way:

- the source (`resolve_source`): a training directory (its latest checkpoint), a checkpoint
  prefix written by train_ssd.py (object-based, 'tf2'), an original slim SSD TF1 checkpoint
  (name-based, 'slim'), a SavedModel directory or TF Serving's versioned directory
  ('saved_model') and a `.tflite` file ('tflite'), which the commands that run them (eval_ssd.py,
  detect.py) take as they are, or a Keras weights file `.h5` ('keras_h5': the weights of the
  whole network, e.g. `model.save_weights`; train_ssd.py reads an ImageNet VGG16 `.h5` into
  the backbone);
- the network (`resolve_network`): `--model_name` and `--num_classes` default to the run's
  `config.json` (`ssd_tf.run_config.read_run_config`); a flag that contradicts the config is
  the one error of `check_overrides`; a checkpoint without a config needs both flags. The
  image size is the caller's override, else the run's `image_shape`, else the network's; the
  fitted anchors of an `--anchors=auto` run come from its config (`run_config.run_params`);
- the weights (`restore_weights`): 'tf2' with `tf.train.Checkpoint`; the moving averages of
  the weights when the run recorded `moving_average_decay` and the checkpoint stores them
  (`moving_average=None`, every command), required with `moving_average=True` (eval_ssd.py
  `--moving_average_decay`: the checkpoint's, else an older run's `ema.weights.h5`);
  'slim' through `checkpoints.load_slim_checkpoint` with the network's slim variable map
  (`slim_variable_map`: the VGG networks);
- the precision (`float32_network`): the network always computes in float32 here; a model
  trained in a mixed policy is evaluated through a float32 copy of its weights;
- the class names (`ssd_tf.datasets.labelmap.resolve_label_map`): `--label_map`, else the
  run config's `label_names` (with their dataset ids), else a `labels.txt` beside the model;
- the test-time flip (`run_test_time_flip`): `--test_time_flip`/`--notest_time_flip`, else
  the run's own choice (train_ssd.py `--test_time_flip`; a SavedModel's export), else off.
"""
import dataclasses
import os

from ssd_tf import checkpoints as checkpoints_lib
from ssd_tf import run_config
from ssd_tf.datasets import labelmap as labelmap_lib

EMA_WEIGHTS_FILENAME = 'ema.weights.h5'  # older runs' averages (now inside each checkpoint)
KERAS_WEIGHTS_SUFFIX = '.h5'
TFLITE_SUFFIX = '.tflite'


def network_class(model_name, get_network=None):
    """The SSDNet class of `model_name` (`nets.nets_factory.get_network` unless a factory
    `get_network` is given); an unknown name is a ValueError naming --model_name."""
    if get_network is None:
        from nets import nets_factory
        get_network = nets_factory.get_network
    try:
        return get_network(model_name)
    except (KeyError, ValueError) as e:
        raise ValueError(f"--model_name={model_name}: {e}") from e


def resolve_source(checkpoint_path):
    """`(kind, path)` of a model source: 'keras_h5' for a `.h5` weights file, 'tflite' for a
    `.tflite` file, else `run_config.resolve_checkpoint`'s ('saved_model' with a versioned
    directory resolved to its highest version, 'tf2' or 'slim' with a directory resolved to
    its latest checkpoint)."""
    path = os.fspath(checkpoint_path) if checkpoint_path else ''
    for kind, suffix, what in (('keras_h5', KERAS_WEIGHTS_SUFFIX, 'Keras weights'),
                               ('tflite', TFLITE_SUFFIX, '.tflite')):
        if path.endswith(suffix):
            if not os.path.isfile(path):
                raise ValueError(f"--checkpoint_path={path}: no such {what} file")
            return kind, path
    return run_config.resolve_checkpoint(path)


def check_overrides(config, where, model_name=None, num_classes=None):
    """A `--model_name`/`--num_classes` that contradicts the run config `config` (read beside
    `where`) is a ValueError, with the same text in every command."""
    for flag, value, recorded in (('model_name', model_name, config.model_name),
                                  ('num_classes', num_classes, config.num_classes)):
        if value is not None and recorded is not None and str(value) != str(recorded):
            raise ValueError(f"--{flag}={value} but the run config beside {where} says "
                             f"{flag}={recorded}; drop the flag or fix it")


def _image_shape(image_size):
    """None, an int (square) or an `(h, w)` pair -> None or `(h, w)`."""
    if image_size is None:
        return None
    if isinstance(image_size, (list, tuple)):
        return int(image_size[0]), int(image_size[1])
    return int(image_size), int(image_size)


def resolve_network(config, where, model_name=None, num_classes=None, image_size=None,
                    default_num_classes=None, get_network=None):
    """The SSDNet of a run: `model_name`/`num_classes` (flags) checked against the RunConfig
    `config` (`check_overrides`) and defaulting to it; `default_num_classes` is the caller's
    fallback (eval_ssd.py: the data set's classes + 1). image_size: the caller's override
    (int or (h, w)), else the run's image_shape, else the network's. The run's fitted anchors
    are applied. A checkpoint without a config and without the flags is a ValueError."""
    check_overrides(config, where, model_name, num_classes)
    model_name = model_name or config.model_name
    num_classes = num_classes or config.num_classes or default_num_classes
    if not model_name or not num_classes:
        raise ValueError(f"{where} has no config.json beside it (a slim or foreign "
                         f"checkpoint): pass --model_name and --num_classes")
    net_cls = network_class(model_name, get_network)
    params = net_cls.default_params._replace(num_classes=int(num_classes),
                                             no_annotation_label=int(num_classes))
    shape = _image_shape(image_size) or _image_shape(config.image_shape)
    if shape is not None:
        params = params._replace(img_shape=shape)
    # The run's fitted anchors (train_ssd.py --anchors=auto) are part of the model.
    params = run_config.run_params(params, config, where=f"the run config beside {where}")
    return net_cls(params, reference_compat=bool(config.reference_compat))


def slim_variable_map(net, model):
    """`{slim name: variable}` of a VGG-style model (`nets.ssd_vgg_keras.slim_variable_map`
    under the scope `net.model_name`); a ValueError for networks without slim names (the
    MobileNet): slim checkpoints, vgg_16 and Keras VGG16 weights load into the VGG networks."""
    from nets import ssd_vgg_keras
    try:
        return ssd_vgg_keras.slim_variable_map(model, model_scope=net.model_name)
    except ValueError as e:
        raise ValueError(f"--model_name={net.model_name} has no slim variable names ({e}); "
                         f"slim checkpoints, vgg_16 and Keras VGG16 weights load into the VGG "
                         f"networks") from e


def _quiet_collect(ckpt):
    """A failed restore leaves a Checkpoint with unrestored values that logs one warning per
    optimizer slot when collected; collect it quietly so the error stands alone."""
    import gc
    import tensorflow as tf
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel('ERROR')
    try:
        del ckpt
        gc.collect()
    finally:
        logger.setLevel(level)


def restore_model(model, kind, path, slim_variable_map=None, model_scope=None,
                  moving_average=False):
    """Restores `model` weights from a checkpoint resolved by `run_config.resolve_checkpoint`.

    'tf2': `tf.train.Checkpoint(model=model)`; every model variable must be in the checkpoint.
    With `moving_average=True` the trained weights then get their moving averages from the
    checkpoint (ValueError when it holds none). 'slim':
    `ssd_tf.checkpoints.load_slim_checkpoint(slim_variable_map, ...)`; pass the map (e.g.
    `slim_variable_map(net, model)`). Shape mismatches (usually another --num_classes or
    --model_name than at training) are ValueErrors naming the path and flags.
    """
    import tensorflow as tf
    hint = (f"check --model_name and --num_classes, and the anchors (anchors per location "
            f"size the heads: --anchors and the anchor_shapes of the run's config.json); they "
            f"must match the network that wrote {path}")
    if kind == 'tf2':
        ckpt = tf.train.Checkpoint(model=model)
        error = None
        try:
            status = ckpt.restore(path)
            status.expect_partial()
            status.assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            error = f"cannot restore the model from --checkpoint_path={path}: {e}\n{hint}"
        if error is None:
            if moving_average:
                restore_moving_average(model, path)
            return status
        _quiet_collect(ckpt)
        raise ValueError(error)
    if kind == 'slim':
        if slim_variable_map is None:
            raise ValueError(f"{path} is a slim (name-based) checkpoint; a slim variable map "
                             f"of the model is needed to load it")
        try:
            return checkpoints_lib.load_slim_checkpoint(
                slim_variable_map, path, model_scope=model_scope or model.name)
        except ValueError as e:
            raise ValueError(f"cannot load the slim checkpoint --checkpoint_path={path}: {e}\n"
                             f"{hint}") from e
    raise ValueError(f"unknown checkpoint kind {kind!r} for {path}")


def restore_moving_average(model, path):
    """Overwrites the trained weights of `model` with the moving averages stored in the TF2
    checkpoint `path` (variables that were not trained keep the checkpoint's values)."""
    import tensorflow as tf
    if not run_config.has_moving_average(path):
        raise ValueError(f"{path} holds no moving averages of the weights (the run was not "
                         f"trained with --moving_average_decay)")
    item = run_config.moving_average_item(enumerate(model.trainable_variables))
    tf.train.Checkpoint(**{run_config.MOVING_AVERAGE_ITEM: item}).restore(path).expect_partial()


def restore_weights(model, net, kind, path, config=None, moving_average=None,
                    checkpoint_model_scope=None, exclude_scopes=None, ignore_missing_vars=False,
                    backbone_h5=False):
    """Loads the weights of the source `(kind, path)` (`resolve_source`) into `model` (the
    Keras model of `net`); returns a short report (str).

    moving_average: None = the averages when the RunConfig `config` records
    moving_average_decay and the checkpoint stores them (the final checkpoint of such a run
    already holds them as its weights); True = the averages are required: the checkpoint's,
    else the `ema.weights.h5` of an older run beside it (ValueError when neither); False = the
    trained weights. checkpoint_model_scope, exclude_scopes, ignore_missing_vars: slim
    checkpoints (train_ssd.py's fine-tuning flags). backbone_h5: a `.h5` is an ImageNet Keras
    VGG16 file for the backbone (train_ssd.py), not the weights of the whole network.
    """
    if kind in ('saved_model', 'tflite'):
        what = 'SavedModel' if kind == 'saved_model' else 'TFLite model'
        raise ValueError(f"--checkpoint_path={path} is a {what}; pass a checkpoint (a "
                         f"training directory or prefix)")
    if kind == 'keras_h5':
        if backbone_h5:
            return str(checkpoints_lib.load_keras_vgg16_h5(slim_variable_map(net, model), path,
                                                           model_scope=net.model_name))
        try:
            model.load_weights(path)
        except (ValueError, OSError) as e:
            raise ValueError(f"cannot load the Keras weights file {path} into "
                             f"{net.model_name} with num_classes={net.params.num_classes}: "
                             f"{e}") from e
        return f"loaded the Keras weights file {path}"
    if kind == 'slim':
        if moving_average:
            raise ValueError(f"--moving_average_decay: {path} is a slim checkpoint, which "
                             f"holds no moving averages")
        return str(checkpoints_lib.load_slim_checkpoint(
            slim_variable_map(net, model), path, model_scope=net.model_name,
            checkpoint_model_scope=checkpoint_model_scope, exclude_scopes=exclude_scopes,
            ignore_missing_vars=ignore_missing_vars))
    stored = run_config.has_moving_average(path)
    recorded = bool(config is not None and config.moving_average_decay)
    averaged = stored and (moving_average or (moving_average is None and recorded))
    restore_model(model, kind, path, moving_average=averaged)
    if moving_average and not averaged:
        ema = os.path.join(os.path.dirname(path), EMA_WEIGHTS_FILENAME)
        if not os.path.isfile(ema):
            raise ValueError(f"--moving_average_decay is set but {path} holds no moving "
                             f"averages and {ema} does not exist (train with "
                             f"--moving_average_decay)")
        model.load_weights(ema)
        return f"restored {path} with the moving averages of {ema}"
    return (f"restored the model from the ssd-tf checkpoint {path}" +
            (" (the moving averages of the weights)" if averaged else ""))


def run_test_time_flip(flag, config):
    """Whether a command detects with the test-time flip: `flag` (its --test_time_flip:
    True, False, or None when not given), else what `config` (the run's RunConfig, or a
    SavedModel's export config) records, else False."""
    if flag is not None:
        return bool(flag)
    return bool(config is not None and config.test_time_flip)


def check_fixed_flip(flag, kind, path, fixed=False):
    """A SavedModel flips as it was exported (`fixed`), a TFLite model never: a ValueError
    when `flag` (a command's --test_time_flip: True, False, or None when not given) asks
    otherwise of the model `path` of source `kind` ('saved_model' or 'tflite')."""
    if flag is None or bool(flag) == bool(fixed):
        return
    name = '--test_time_flip' if flag else '--notest_time_flip'
    if kind == 'saved_model':
        raise ValueError(f"{name} does not apply to a SavedModel ({path}): its detection is "
                         f"fixed at export (export_savedmodel.py --test_time_flip; this one was "
                         f"exported {'with' if fixed else 'without'} it); pass the training "
                         f"directory to choose")
    raise ValueError(f"{name} does not apply to a TFLite model ({path}): it detects each "
                     f"image once; pass the training directory")


@dataclasses.dataclass
class BuiltModel:
    """A network with its weights: `net` (SSDNet), `model` (its Keras model), `label_map`
    (LabelMap of classes 1..C-1, or None), the source `kind` and `path`, the run `config`."""
    net: object
    model: object
    label_map: object
    kind: str
    path: str
    config: object

    @property
    def label_names(self):
        """The class names of labels 1..C-1, or None."""
        return None if self.label_map is None else list(self.label_map.names)


def load_model(checkpoint_path, model_name=None, num_classes=None, image_size=None,
               label_map=None, moving_average=None, get_network=None):
    """Builds the network of `checkpoint_path` (a training directory, a checkpoint prefix of
    ours or of the original slim SSD, or a Keras `.h5` weights file of the whole network) and
    restores its weights; returns a `BuiltModel`. The overrides are the flags of the same
    names (`resolve_network`); label_map: a label map file (default: the run's names). A
    SavedModel is a ValueError (it is already a model: the commands that run one load it)."""
    checkpoint_path = os.fspath(checkpoint_path)
    kind, path = resolve_source(checkpoint_path)
    if kind in ('saved_model', 'tflite'):
        what = 'a SavedModel' if kind == 'saved_model' else 'a TFLite model'
        raise ValueError(f"--checkpoint_path={checkpoint_path} is already {what}; pass "
                         f"a training directory or checkpoint")
    config = run_config.read_run_config(checkpoint_path)
    net = resolve_network(config, checkpoint_path, model_name, num_classes, image_size,
                          get_network=get_network)
    model = net.keras_model()
    restore_weights(model, net, kind, path, config, moving_average=moving_average)
    labels = labelmap_lib.resolve_label_map(
        label_map, recorded_names=config.label_names, recorded_ids=config.label_ids,
        beside=[run_dir(checkpoint_path)], num_classes=net.params.num_classes)
    return BuiltModel(net, model, labels, kind, path, config)


def float32_network(model, net, copy=None):
    """The network of `model` computing in float32, as evaluation, export and detection build
    it (`net.keras_model()` under the float32 policy; `load_model`): `model` itself when it
    already computes in float32, else `copy` (or a new build when None) with `model`'s weights
    copied in. A run trained in `mixed_bfloat16` or `mixed_float16` evaluates through it, so
    that its report equals eval_ssd.py's on the same checkpoint. Pass the returned copy back as
    `copy` to refresh its weights without building again."""
    import keras
    if model.compute_dtype == 'float32':
        return model
    if copy is None:
        saved = keras.mixed_precision.dtype_policy()
        keras.mixed_precision.set_dtype_policy('float32')
        try:
            copy = net.keras_model()
        finally:
            keras.mixed_precision.set_dtype_policy(saved)
    copy.set_weights(model.get_weights())
    return copy


def run_dir(checkpoint_path):
    """The directory of a run: `checkpoint_path` itself when a directory, else its folder."""
    path = os.fspath(checkpoint_path)
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
