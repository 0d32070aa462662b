"""A training run's configuration (`config.json`, read and written here) and its checkpoints.

`RunConfig` is the typed form of the `config.json` that `train_ssd.py` writes next to its
checkpoints (every training flag plus what the run resolved: num_classes, image_shape,
num_replicas, label_names, and the anchors: fitted shapes and coverage report). A field the
file does not hold is None ("not recorded"), so a slim checkpoint without a config, or an older
run directory, still loads; keys this class does not know are kept in `extra` and written back
unchanged. `run_params` rebuilds a run's network parameters (its fitted anchors included).

`resolve_checkpoint` says what a `--checkpoint_path` is (a SavedModel, an object-based TF2
checkpoint or a name-based slim one), `checkpoint_step` its training step, `read_run_config`
finds the config beside it, `has_moving_average`/`moving_average_item` name where a checkpoint
keeps the moving averages of the weights. Loading weights into a model is
`ssd_tf.builder`'s job; writing checkpoints is `ssd_tf.training`'s.
"""
import dataclasses
import json
import os
import sys

import tensorflow as tf

from ssd_tf import anchors as anchors_lib
from ssd_tf import atomic_files

CONFIG_FILENAME = 'config.json'
EXPORT_CONFIG_FILENAME = 'export_config.json'  # ssd_tf.export's assets/ file
# The checkpoint item holding the moving averages of the trainable weights (ssd_tf.training),
# keyed by the index of the variable in `model.trainable_variables`.
MOVING_AVERAGE_ITEM = 'moving_average'
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
# What must not change when a run is resumed (RunConfig fields), and how an error names the
# ones that are not themselves flags.
RESUME_KEYS = ('model_name', 'num_classes', 'batch_size', 'reference_compat', 'dataset_name',
               'dataset_dir', 'dataset_split_name', 'label_names', 'seed', 'image_shape',
               'optimizer', 'mixed_precision', 'trainable_scopes', 'label_ids',
               'synthetic_objects', 'anchors', 'fit_schedule_to_budget')
_RESUME_FLAG_NAMES = {'label_names': 'label_map (class names in order)',
                      'label_ids': 'label_map (dataset ids of the classes)',
                      'image_shape': 'model_name (input size)'}
# Bound on the anchors per location a config.json may ask for (untrusted file: the heads
# and every anchor tensor grow with it; the networks here use 4 to 6).
MAX_ANCHORS_PER_LOCATION = 64


@dataclasses.dataclass
class RunConfig:
    """The resolved configuration of a training run (`config.json`); None = not recorded.

    The fields are train_ssd.py's flags (same names and meanings; see `train_ssd.py --help`)
    and what the run resolved from them. `extra` holds every other key of the file.
    """
    # run and data
    train_dir: str = None
    dataset_name: str = None
    dataset_dir: str = None
    dataset_split_name: str = None
    eval_split_name: str = None
    validation_split: str = None
    eval_every_n_steps: int = None
    label_map: str = None
    strict_data: bool = None
    synthetic_num_train: int = None
    synthetic_num_test: int = None
    synthetic_objects: str = None
    num_samples: int = None
    seed: int = None
    num_preprocessing_threads: int = None
    # network
    model_name: str = None
    num_classes: int = None
    reference_compat: bool = None
    # anchors: 'default' or 'auto' (--anchors); the fitted shapes, a list per feature map of
    # [h, w] pixel pairs at image_shape (None: the network's default anchors); the coverage
    # report of the training boxes (ssd_tf.anchors_report.AnchorCoverage.to_dict(), and
    # 'before': the default anchors' for a fitted run)
    anchors: str = None
    anchor_shapes: list = None
    anchor_coverage: dict = None
    # augmentation: the largest zoom-out of the SSD paper's chain (1: none; None with
    # reference_compat, whose slim chain has none)
    expand_max_ratio: float = None
    # how its patch sampling measures a patch's overlap with a box: 'iou' or 'coverage' (None
    # with reference_compat)
    patch_overlap: str = None
    # the probability of a scale-keeping mosaic per training image (0: none; None in runs from
    # before the setting was recorded, which had none)
    mosaic_prob: float = None
    # loss
    match_threshold: float = None
    negative_ratio: float = None
    loss_alpha: float = None
    label_smoothing: float = None
    class_balance: float = None
    weight_decay: float = None
    # optimisation
    batch_size: int = None
    max_number_of_steps: int = None
    optimizer: str = None
    learning_rate: float = None
    learning_rate_decay_type: str = None
    end_learning_rate: float = None
    learning_rate_decay_factor: float = None
    num_epochs_per_decay: float = None
    warmup_steps: int = None
    moving_average_decay: float = None
    clip_gradient_norm: float = None
    adadelta_rho: float = None
    adagrad_initial_accumulator_value: float = None
    adam_beta1: float = None
    adam_beta2: float = None
    opt_epsilon: float = None
    ftrl_learning_rate_power: float = None
    ftrl_initial_accumulator_value: float = None
    ftrl_l1: float = None
    ftrl_l2: float = None
    momentum: float = None
    rmsprop_momentum: float = None
    rmsprop_decay: float = None
    # fine-tuning
    checkpoint_path: str = None
    checkpoint_model_scope: str = None
    checkpoint_exclude_scopes: str = None
    trainable_scopes: str = None
    ignore_missing_vars: bool = None
    # execution
    strategy: str = None
    num_logical_cpus: int = None
    tpu: str = None
    mixed_precision: str = None
    jit_compile: bool = None
    max_train_secs: float = None
    fit_schedule_to_budget: bool = None
    test_time_flip: bool = None
    log_every_n_steps: int = None
    save_interval_secs: int = None
    save_every_n_steps: int = None
    save_summaries_secs: int = None
    max_checkpoints_to_keep: int = None
    max_consecutive_nonfinite: int = None
    # resolved by the run
    image_shape: list = None
    num_replicas: int = None
    label_names: list = None
    label_ids: list = None  # dataset id of each label 1..C-1; None when they are 1..C-1
    # every other key of the file (absl's own flags, export_config.json's thresholds, ...)
    extra: dict = dataclasses.field(default_factory=dict)
    # the keys the source dict held (a recorded None differs from a key an older run lacks)
    recorded: frozenset = dataclasses.field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls) if f.name not in ('extra', 'recorded')]

    @classmethod
    def from_dict(cls, d):
        """`{key: value}` -> RunConfig; unknown keys go to `extra`."""
        d = dict(d or {})
        recorded = frozenset(d)
        known = {k: d.pop(k) for k in cls.field_names() if k in d}
        known['recorded'] = recorded
        if known.get('image_shape') is not None:
            known['image_shape'] = [int(s) for s in known['image_shape']]
        if known.get('label_names') is not None:
            known['label_names'] = list(known['label_names'])
        if known.get('label_ids') is not None:
            known['label_ids'] = [int(i) for i in known['label_ids']]
        return cls(**known, extra=d)

    def to_dict(self):
        """The flat dict written to config.json (`extra` keys included)."""
        out = dict(self.extra)
        out.update({k: getattr(self, k) for k in self.field_names()})
        return out

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def get(self, key, default=None):
        """Dict-style read of a field or extra key (None counts as absent)."""
        value = getattr(self, key, None) if key in self.field_names() else self.extra.get(key)
        return default if value is None else value

    def __bool__(self):
        """False for a config that records nothing (no file was found)."""
        return any(v is not None for v in self.to_dict().values())

    @classmethod
    def read(cls, path):
        """Reads a config file (or `<dir>/config.json`); ValueError naming it when unreadable."""
        path = os.fspath(path)
        if tf.io.gfile.isdir(path):
            path = os.path.join(path, CONFIG_FILENAME)
        try:
            with tf.io.gfile.GFile(path) as f:
                data = json.load(f)
        except (OSError, tf.errors.OpError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the training config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"the training config {path} is not a JSON object")
        return cls.from_dict(data)

    def write(self, directory):
        """Writes `<directory>/config.json` atomically (a temporary file, then a rename)."""
        return write_run_config(directory, self)


def default_learning_rate(cfg, then):
    """cfg (a RunConfig) with `learning_rate` resolved when it was not given: `then`, the
    resumed run's rate (a run keeps its schedule), else the network's `default_learning_rate`
    (nets: ssd_small's was measured for the main job). ValueError when a polynomial or cosine
    decay's `end_learning_rate` is above the rate taken."""
    if cfg.learning_rate is not None:
        return cfg
    if then is None:
        from nets import nets_factory
        then = nets_factory.get_network(cfg.model_name).default_learning_rate
    if cfg.learning_rate_decay_type in ('polynomial', 'cosine') and \
            cfg.end_learning_rate is not None and cfg.end_learning_rate > then:
        raise ValueError(f"--end_learning_rate={cfg.end_learning_rate} is above the learning "
                         f"rate {then} ({cfg.model_name}'s default or the resumed run's): "
                         "give --learning_rate")
    return cfg.replace(learning_rate=float(then))


def resumed_expand_max_ratio(previous):
    """The zoom-out ratio the run `previous` (a RunConfig read from its train_dir; None for a
    checkpoint without config.json) trained with: the recorded one, else the paper's (runs
    from before the setting was recorded all used it)."""
    from preprocessing import ssd_vgg_preprocessing as prep
    if previous is not None and previous.expand_max_ratio is not None:
        return previous.expand_max_ratio
    return prep.EXPAND_MAX_RATIO


def resumed_patch_overlap(previous):
    """The patch overlap measure the run `previous` (a RunConfig, or None for a checkpoint
    without config.json) trained with: the recorded one, else the paper's IoU (runs from
    before the setting was recorded all used it). ValueError for a value that is not one of
    `PATCH_OVERLAPS` (config.json is an untrusted file)."""
    from preprocessing import ssd_vgg_preprocessing as prep
    if previous is None or previous.patch_overlap is None:
        return 'iou'
    if previous.patch_overlap not in prep.PATCH_OVERLAPS:
        raise ValueError(f"the run's config.json: patch_overlap={previous.patch_overlap!r} is "
                         f"not one of {prep.PATCH_OVERLAPS}; correct it or use a new --train_dir")
    return previous.patch_overlap


def resumed_mosaic_prob(previous):
    """The mosaic probability the run `previous` (a RunConfig, or None for a checkpoint
    without config.json) trained with: the recorded one, else 0 (runs from before the
    setting was recorded had no mosaics). ValueError for a value that is not a number in
    [0, 1] (config.json is an untrusted file)."""
    if previous is None or previous.mosaic_prob is None:
        return 0.
    value = previous.mosaic_prob
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0. <= value <= 1.:
        raise ValueError(f"the run's config.json: mosaic_prob={value!r} is not a probability "
                         f"in [0, 1]; correct it or use a new --train_dir")
    return float(value)


def fill_unset(cfg, previous, has_checkpoint):
    """cfg (a RunConfig) with --learning_rate, --anchors, --expand_max_ratio, --patch_overlap
    and --mosaic_prob resolved when unset, for the run about to start in a train_dir: `previous`
    is the RunConfig read from it (None when it has no config.json), `has_checkpoint` whether it
    holds a checkpoint to resume. A resumed run keeps its own settings (a run older than a
    setting: what it trained with then); a new one takes the network's learning rate,
    `default_anchors`' choice, the paper's patch overlap ('iou') and no mosaics, and keeps
    `expand_max_ratio` None, for train_ssd.py to choose from the training boxes
    (`preprocessing.ssd_vgg_preprocessing.expand_max_ratio_for_boxes`). ValueError as
    `default_learning_rate`, `resumed_patch_overlap` and `resumed_mosaic_prob`."""
    if not has_checkpoint:  # a new run, whatever config.json a failed start left
        then = (None, 'new', None, 'iou', 0.)
    elif previous is None:  # a checkpoint from before config.json was written
        then = (None, None, resumed_expand_max_ratio(None), resumed_patch_overlap(None),
                resumed_mosaic_prob(None))
    else:
        then = (previous.learning_rate, previous.anchors or 'default',
                resumed_expand_max_ratio(previous), resumed_patch_overlap(previous),
                resumed_mosaic_prob(previous))
    cfg = default_learning_rate(cfg, then[0])
    if cfg.expand_max_ratio is None and not cfg.reference_compat and then[2] is not None:
        cfg = cfg.replace(expand_max_ratio=float(then[2]))
    if cfg.patch_overlap is None and not cfg.reference_compat and then[3] is not None:
        cfg = cfg.replace(patch_overlap=then[3])
    if cfg.mosaic_prob is None and not cfg.reference_compat:
        cfg = cfg.replace(mosaic_prob=then[4])
    return default_anchors(cfg, then[1])


def default_anchors(cfg, then):
    """cfg (a RunConfig) with `anchors` resolved when it was not given: `then` is the resumed
    run's choice, 'new' for a new run (auto from scratch; default with `checkpoint_path`, whose
    heads were trained for the network's anchors, or `reference_compat`), None for a run
    without config.json (default, as before --anchors existed)."""
    if cfg.anchors is not None:
        return cfg
    if then == 'new':
        then = 'default' if cfg.checkpoint_path or cfg.reference_compat else 'auto'
    return cfg.replace(anchors=then or 'default')


def resume_conflicts(previous, current, keys=RESUME_KEYS):
    """The settings that differ between the run `previous` (a RunConfig read from its
    train_dir) and the one about to resume it, as `[(flag, then, now)]`. A setting an older
    config.json did not record is not compared. The precision counts only where it changes
    the checkpoint: float32 (None in older runs) and mixed_bfloat16 keep float32 variables and
    no loss scale, so they resume each other (a bfloat16 run resumes on a machine without
    bfloat16); mixed_float16 adds a loss scale."""
    def norm(key, value):
        if key == 'mixed_precision':  # what the checkpoint holds: float16's loss scale or not
            return value == 'mixed_float16'
        return list(value) if isinstance(value, (list, tuple)) else value
    return [(_RESUME_FLAG_NAMES.get(k, k), getattr(previous, k), getattr(current, k))
            for k in keys if k in previous.recorded and
            norm(k, getattr(previous, k)) != norm(k, getattr(current, k))]


def run_params(params, config, where='config.json'):
    """The network parameters of a run: `params` (an SSDParams, e.g. the class defaults with
    the run's num_classes) with the fitted anchors the RunConfig `config` records
    (`anchor_shapes`), else unchanged. A record that does not fit the network (another number
    of feature maps, sizes that are not positive (h, w) pairs, too many anchors) is a
    ValueError naming `where` and the anchors."""
    shapes = config.anchor_shapes if config else None
    if shapes is None:
        if config and config.anchors == 'auto':
            raise ValueError(f"{where}: anchors=auto but no anchor_shapes (the run's fitted "
                             f"anchors); the checkpoint cannot be used without them")
        return params
    problem = None
    if not isinstance(shapes, (list, tuple)) or any(
            not isinstance(layer, (list, tuple)) or len(layer) > MAX_ANCHORS_PER_LOCATION or
            any(not isinstance(hw, (list, tuple)) or len(hw) != 2 or
                any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in hw)
                for hw in layer) for layer in shapes):
        problem = (f"not a list per feature map of at most {MAX_ANCHORS_PER_LOCATION} "
                   f"[h, w] number pairs")
    else:
        try:
            return anchors_lib.with_anchor_sizes(params, shapes)
        except ValueError as e:
            problem = str(e)
    raise ValueError(f"{where}: anchor_shapes (the run's fitted anchors) do not fit the "
                     f"network: {problem}; train again or fix the file")


def write_run_config(train_dir, config):
    """Writes the run configuration (a RunConfig or a dict) to `<train_dir>/config.json`
    atomically; returns the path."""
    if isinstance(config, RunConfig):
        config = config.to_dict()
    os.makedirs(train_dir, exist_ok=True)
    return atomic_files.write_json(os.path.join(train_dir, CONFIG_FILENAME), config, indent=2,
                                   sort_keys=True, default=str)


def read_run_config(checkpoint_path):
    """The RunConfig of the run beside a checkpoint; an empty RunConfig (falsy) if none.

    Looked for in the checkpoint's directory (the train_dir) and its parent; for a SavedModel
    of `ssd_tf.export.saved_model` also `assets/export_config.json`.
    """
    path = os.fspath(checkpoint_path)
    base = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    candidates = [os.path.join(d, CONFIG_FILENAME) for d in (base, os.path.dirname(base))]
    candidates.append(os.path.join(base, 'assets', EXPORT_CONFIG_FILENAME))
    for candidate in candidates:
        if tf.io.gfile.exists(candidate) and not tf.io.gfile.isdir(candidate):
            return RunConfig.read(candidate)
    return RunConfig()


# ---------------------------------------------------------------------------- checkpoints
def _saved_model_version(path):
    """The highest numbered `<path>/<n>/saved_model.pb` (TF Serving's layout), or None."""
    versions = [int(d.rstrip('/')) for d in tf.io.gfile.listdir(path)
                if d.rstrip('/').isdigit() and
                tf.io.gfile.exists(os.path.join(path, d.rstrip('/'), 'saved_model.pb'))]
    return os.path.join(path, str(max(versions))) if versions else None


def checkpoint_prefixes(directory):
    """The prefixes of the TF2/slim checkpoints in `directory`, newest first (by the step that
    ends the prefix, then by modification time): those the 'checkpoint' state file names and
    those whose files are there (an `.index` or a `.data-*` shard), so a checkpoint that lost
    a file, or a directory that lost its state file, is still seen."""
    found = set()
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
        for p in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
            if p:
                found.add(p if os.path.isabs(p) else os.path.join(directory, p))
    for name in tf.io.gfile.listdir(directory):
        name = name.rstrip('/')
        if name.endswith('.index'):
            found.add(os.path.join(directory, name[:-len('.index')]))
        elif '.data-' in name:
            found.add(os.path.join(directory, name.split('.data-')[0]))

    def key(prefix):
        tail = os.path.basename(prefix).rsplit('-', 1)
        step = int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else -1
        files = tf.io.gfile.glob(prefix + '.*')
        return step, max((tf.io.gfile.stat(f).mtime_nsec for f in files), default=0)
    return sorted(found, key=key, reverse=True)


def checkpoint_damage(prefix):
    """None when the checkpoint `prefix` is intact, else why not (a short phrase).

    Intact means: the `.index` and every `.data-NNNNN-of-MMMMM` shard it needs exist, and every
    tensor reads back. Reading them all is what a restore does anyway (it costs one read of
    the checkpoint) and it is the check that cannot be fooled: the bundle reader verifies each
    tensor's size and CRC32C against the index, so a cut, padded or overwritten `.data`
    file is found wherever the damage lies, which a size comparison alone would miss."""
    if not tf.io.gfile.exists(prefix + '.index'):
        return 'its .index file is missing'
    shards = tf.io.gfile.glob(prefix + '.data-*')
    if not shards:
        return 'its .data file is missing'
    total = shards[0].rsplit('-of-', 1)[-1]
    if total.isdigit() and len(shards) < int(total):
        return f'{int(total) - len(shards)} of its {int(total)} .data shards are missing'
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError, OSError) as e:
        return f'it cannot be read ({str(e).strip().splitlines()[0][:200]})'
    return None


_REPORTED_DAMAGE = set()


def _report_damage(prefix, reason):
    """Says once per process that a damaged checkpoint was skipped (on stderr)."""
    if prefix not in _REPORTED_DAMAGE:
        _REPORTED_DAMAGE.add(prefix)
        print(f"WARNING: checkpoint {prefix} is damaged ({reason}); it is skipped and left "
              f"where it is", file=sys.stderr)


def find_intact_checkpoint(directory, on_damaged=_report_damage):
    """`(prefix, damaged)`: the newest intact checkpoint of `directory` (None when it has none)
    and the `[(prefix, reason)]` of the damaged ones newer than it (or of all, when none is
    intact), each also passed to `on_damaged(prefix, reason)`. An empty directory or one
    without checkpoint files gives `(None, [])`."""
    if not tf.io.gfile.isdir(directory):
        return None, []
    damaged = []
    for prefix in checkpoint_prefixes(directory):
        reason = _cached_damage(prefix)
        if reason is None:
            return prefix, damaged
        damaged.append((prefix, reason))
        if on_damaged is not None:
            on_damaged(prefix, reason)
    return None, damaged


def no_intact_checkpoint_error(directory, damaged, flag='--checkpoint_path'):
    """The ValueError for a directory whose checkpoints are all damaged."""
    listed = '; '.join(f"{os.path.basename(p)}: {r}" for p, r in damaged)
    return ValueError(f"{flag}={directory} holds checkpoints but none is intact ({listed}). "
                      f"Nothing was changed. To start anew use a new --train_dir (or move "
                      f"these files away); to use a checkpoint, repair or copy it back")


_VERIFIED = {}


def _cached_damage(prefix):
    """`checkpoint_damage(prefix)`, read once per process while its files stay the same."""
    files = sorted(tf.io.gfile.glob(prefix + '.index') + tf.io.gfile.glob(prefix + '.data-*'))
    stamp = tuple((f, tf.io.gfile.stat(f).length, tf.io.gfile.stat(f).mtime_nsec)
                  for f in files)
    if _VERIFIED.get(prefix, (None,))[0] != stamp:
        _VERIFIED[prefix] = (stamp, checkpoint_damage(prefix))
    return _VERIFIED[prefix][1]


def resume_checkpoint(train_dir):
    """The checkpoint a training run in `train_dir` resumes from: the newest intact one, or
    None for a new run. Checkpoint files of which none is intact are a ValueError saying how
    to start anew; a `config.json` without any checkpoint (a run stopped before its first
    save) is said on stderr before the run starts at step 0."""
    latest, damaged = find_intact_checkpoint(train_dir)
    if latest is None and damaged:
        raise no_intact_checkpoint_error(train_dir, damaged, '--train_dir')
    if latest is None and os.path.isfile(os.path.join(train_dir, CONFIG_FILENAME)):
        print(f"--train_dir={train_dir} holds {CONFIG_FILENAME} but no checkpoint (the run "
              f"stopped before its first save): starting at step 0", file=sys.stderr)
    return latest


def prune_checkpoints(directory, keep, newest):
    """Deletes all but the `keep` newest intact checkpoints of `directory` and records the
    kept ones in its state file, once the just-written checkpoint `newest` reads back intact
    (when it does not, nothing is deleted: rotation never removes the last intact one).
    Damaged checkpoints are left in place. Returns the deleted prefixes."""
    reason = _cached_damage(newest)
    if reason is not None:
        _report_damage(newest, reason + '; no older checkpoint was deleted')
        return []
    intact = [p for p in checkpoint_prefixes(directory)
              if p != newest and _cached_damage(p) is None]
    kept, dropped = intact[:keep - 1], intact[keep - 1:]
    for prefix in dropped:
        for f in tf.io.gfile.glob(prefix + '.index') + tf.io.gfile.glob(prefix + '.data-*'):
            tf.io.gfile.remove(f)
    _write_checkpoint_state(directory, list(reversed(kept)) + [newest])
    return dropped


def _write_checkpoint_state(directory, prefixes):
    """Writes the 'checkpoint' state file (text proto `CheckpointState`) of `directory`:
    `prefixes` oldest first, the last one the latest; atomically (a temporary file renamed).
    The same file `tf.train.CheckpointManager` writes, without its deprecated helper."""
    def quoted(prefix):
        name = os.path.relpath(prefix, directory) if os.path.isabs(prefix) else prefix
        return json.dumps(name)  # the text-proto string escapes of such names
    text = f"model_checkpoint_path: {quoted(prefixes[-1])}\n" + ''.join(
        f"all_model_checkpoint_paths: {quoted(p)}\n" for p in prefixes)
    path = os.path.join(directory, 'checkpoint')
    with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
        f.write(text)
    tf.io.gfile.rename(path + '.tmp', path, overwrite=True)


def resolve_checkpoint(checkpoint_path):
    """What `--checkpoint_path` points to: `(kind, path)`.

    kind 'saved_model' (a directory with saved_model.pb, or TF Serving's versioned layout:
    the highest numbered subdirectory), 'tf2' (an object-based tf.train.Checkpoint, e.g. from
    training's CheckpointManager) or 'slim' (a name-based TF1 checkpoint). A directory resolves
    to its newest intact checkpoint (`find_intact_checkpoint`: newer damaged ones are reported
    by name on stderr and skipped; none intact is a ValueError); a damaged prefix is a
    ValueError. Anything else is a ValueError naming the path.
    """
    path = os.fspath(checkpoint_path) if checkpoint_path else ''
    if not path:
        raise ValueError("--checkpoint_path is empty; pass a checkpoint prefix, a training "
                         "directory or a SavedModel directory")
    if tf.io.gfile.isdir(path):
        if tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
            return 'saved_model', path
        version = _saved_model_version(path)
        if version is not None:  # TF Serving's layout output_dir/<version>/ (ssd_tf.export)
            return 'saved_model', version
        latest, damaged = find_intact_checkpoint(path)
        if latest is None and damaged:
            raise no_intact_checkpoint_error(path, damaged)
        if latest is None:
            raise ValueError(f"--checkpoint_path={path} is a directory with neither a "
                             f"checkpoint (no 'checkpoint' index file) nor saved_model.pb; "
                             f"pass a prefix such as "
                             f"{os.path.join(path, 'model.ckpt-NNNN')}")
        path = latest
    elif not tf.io.gfile.exists(path + '.index'):
        if tf.io.gfile.glob(path + '.data-*'):
            raise ValueError(f"--checkpoint_path={path} is damaged: its .index file is "
                             f"missing; pass the training directory to use its newest intact "
                             f"checkpoint")
        raise ValueError(f"--checkpoint_path={path} does not exist (no directory, and no "
                         f"checkpoint prefix with {os.path.basename(path)}.index)")
    else:
        reason = checkpoint_damage(path)
        if reason is not None:
            raise ValueError(f"--checkpoint_path={path} is damaged: {reason}; pass the "
                             f"training directory to use its newest intact checkpoint")
    try:
        names = {n for n, _ in tf.train.list_variables(path)}
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"--checkpoint_path={path} is not a readable checkpoint: {e}") from e
    return ('tf2' if _OBJECT_GRAPH_KEY in names else 'slim'), path


def checkpoint_step(path):
    """Training step of a checkpoint: its 'step'/'global_step' variable if stored, else the
    number ending the prefix (`ckpt-1200`, `model.ckpt-1200`), else 0."""
    try:
        reader = tf.train.load_checkpoint(path)
        shapes = reader.get_variable_to_shape_map()
        for name in shapes:
            if name.split('/')[0] in ('step', 'global_step') and not shapes[name]:
                return int(reader.get_tensor(name))
    except (tf.errors.OpError, ValueError):
        pass
    tail = os.path.basename(path).rsplit('-', 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0


def has_moving_average(path):
    """True when the TF2 checkpoint `path` stores the weights' moving averages (a run with
    --moving_average_decay)."""
    try:
        return any(n.startswith(MOVING_AVERAGE_ITEM + '/')
                   for n, _ in tf.train.list_variables(path))
    except (tf.errors.OpError, ValueError):
        return False


def moving_average_item(variables):
    """The checkpoint item `{str(index): variable}` under which the moving averages are
    saved (training passes the averages) and restored (eval passes the model's own
    trainable variables, so that the averages land in the model)."""
    item = tf.Module()
    item.averages = {str(i): v for i, v in variables}
    return item
