"""The training loop: one distributed step, checkpoints, resume, signals, progress, summaries.

It is not the job of this module to build networks or datasets: the `SSDNet` object, the Keras
model, the optimizer, the strategy and a dataset factory are arguments (the script
`train_ssd.py` wires them together).

The step (`DistributedStep`, called by `Trainer.train_step`) runs under any `tf.distribute` strategy: each replica computes
the loss on its share of the global batch, normalised by the number of positives of the
*global* batch (an all-reduce), so that the replicas' losses and gradients sum to exactly the
single-replica ones (the optimizer all-reduces gradients by sum). A non-finite loss on any
replica turns every replica's gradients into NaN, and the loss-scale wrapper around the
optimizer then skips the update everywhere (`SkipNonFiniteOptimizer`: the scale stays 1 for
float32 and bfloat16; Keras' dynamic `LossScaleOptimizer` for float16). The same all-reduce
carries a stop request, so a signal to one worker stops every worker after the same step.
The loss itself (`count_positives`, `replica_losses`) is the one that
`ssd_tf.keras_detector.SSDDetector.train_step` runs too.

The loop (`Trainer.train`) saves a checkpoint when it ends, at a signal, and before any
exception from the data, a callback or a summary write propagates (the last completed step).
With `--moving_average_decay` every checkpoint stores the averaged weights beside the raw ones,
and the final checkpoint holds the averages as the model's weights. Optimizers are built from
a typed `OptimizerConfig` (`build_optimizer`); the run config itself lives in
`ssd_tf.run_config`.
"""
import dataclasses
import logging
import math
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from ssd_tf import run_config

_LOG = logging.getLogger(__name__)

# A float32/bfloat16 run keeps the loss scale at 1: this many finite steps before it would grow.
_NO_GROWTH_STEPS = 2 ** 31 - 1


# ---------------------------------------------------------------------------- schedules
@keras.saving.register_keras_serializable(package='ssd_tf')
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up for `warmup_steps`, then one of the decays.

    decay_type: 'fixed'; 'exponential' (slim: `lr * factor ** floor(step / decay_steps)`);
    'polynomial' (slim: linear from lr to end_lr over decay_steps, then end_lr); 'cosine'
    (from lr to end_lr over total_steps). Steps count from 0; warm-up multiplies by
    `(step + 1) / warmup_steps` until it reaches 1.
    """

    def __init__(self, learning_rate, decay_type='cosine', decay_steps=1000, decay_factor=0.94,
                 end_learning_rate=0.0, total_steps=1000, warmup_steps=0):
        if decay_type not in ('fixed', 'exponential', 'polynomial', 'cosine'):
            raise ValueError(f"--learning_rate_decay_type={decay_type!r}: choose fixed, "
                             "exponential, polynomial or cosine")
        self.learning_rate = float(learning_rate)
        self.decay_type = decay_type
        self.decay_steps = max(int(decay_steps), 1)
        self.decay_factor = float(decay_factor)
        self.end_learning_rate = float(end_learning_rate)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)

    def follow(self, last_step):
        """The cosine decay ends at the value of the variable `last_step` (a scalar
        `tf.Variable`, read at every step: `TimeBudget.last_step`) instead of `total_steps`.
        Returns self."""
        self.last_step_variable = last_step
        return self

    def _total_steps(self):
        """The step the cosine decay ends at: float32 scalar."""
        var = getattr(self, 'last_step_variable', None)
        if var is None:
            return tf.constant(float(self.total_steps))
        return tf.maximum(tf.cast(var, tf.float32), 1.)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr0, end = self.learning_rate, self.end_learning_rate
        if self.decay_type == 'fixed':
            lr = tf.constant(lr0)
        elif self.decay_type == 'exponential':
            lr = lr0 * tf.pow(self.decay_factor, tf.floor(step / self.decay_steps))
        elif self.decay_type == 'polynomial':
            frac = tf.minimum(step, self.decay_steps) / self.decay_steps
            lr = (lr0 - end) * (1. - frac) + end
        else:
            total = self._total_steps()
            frac = tf.minimum(step, total) / total
            lr = end + (lr0 - end) * 0.5 * (1. + tf.cos(math.pi * frac))
        if self.warmup_steps > 0:
            lr = lr * tf.minimum(1., (step + 1.) / self.warmup_steps)
        return lr

    def get_config(self):
        var = getattr(self, 'last_step_variable', None)
        return dict(learning_rate=self.learning_rate, decay_type=self.decay_type,
                    decay_steps=self.decay_steps, decay_factor=self.decay_factor,
                    end_learning_rate=self.end_learning_rate,
                    total_steps=self.total_steps if var is None else int(var.numpy()),
                    warmup_steps=self.warmup_steps)


# ---------------------------------------------------------------------------- time budget
def fitted_last_step(step, remaining_seconds, seconds_per_step, max_steps):
    """The last step of a run at `step` with `remaining_seconds` of its budget left, at
    `seconds_per_step`: `step + floor(remaining / seconds_per_step)`, within
    `[step, max_steps]` (`max_steps` when the rate is not a positive finite number)."""
    step, max_steps = int(step), int(max_steps)
    if not (math.isfinite(seconds_per_step) and seconds_per_step > 0):
        return max(step, max_steps)
    more = math.floor(max(float(remaining_seconds), 0.) / seconds_per_step)
    return max(min(step + more, max_steps), step)


class TimeBudget:
    """Fits the last step of a run, and with it the end of the cosine decay, to a wall-clock
    budget (train_ssd.py `--fit_schedule_to_budget` with `--max_train_secs`).

    The budget counts the seconds of the training loop over the whole run: `seconds_spent` is
    a checkpoint variable like `last_step`, so a resumed run goes on with what is left (the
    time between a crash and the resume is not counted). In each process the step rate is
    measured from its `settle_steps`-th step on (the first steps trace the step function and
    fill the data pipeline) over every step since, saves, summaries and validations included,
    and the last step is fitted again every `refit_every` steps. A resumed run starts from the
    rate its checkpoint implies (seconds spent / step). A run that has reached its last step
    is finished: the same flags resume it to no more steps, while a larger budget or
    `--max_number_of_steps` trains on (`fitted_for`, the budget and max steps it was fitted
    for, is a checkpoint variable too). The loop also stops when the budget is spent, as
    `--max_train_secs` does without fitting.
    """

    def __init__(self, budget_seconds, max_steps, settle_steps=10, refit_every=10):
        if not (math.isfinite(budget_seconds) and budget_seconds > 0):
            raise ValueError(f"--max_train_secs must be a positive number of seconds, got "
                             f"{budget_seconds}")
        self.budget = float(budget_seconds)
        self.max_steps = int(max_steps)
        self.settle_steps = max(int(settle_steps), 0)
        self.refit_every = max(int(refit_every), 1)
        self.last_step = tf.Variable(self.max_steps, dtype=tf.int64, trainable=False,
                                     name='fitted_last_step')
        # float32, not float64: a TPU holds no float64 variable (1 ms steps at 10^4 s)
        self.seconds_spent = tf.Variable(0., dtype=tf.float32, trainable=False,
                                         name='train_seconds')
        self.fitted_for = tf.Variable([self.budget, self.max_steps], dtype=tf.float32,
                                      trainable=False, name='fitted_for')
        self._t0 = self._spent0 = self._start_step = self._mark = None

    def checkpoint_items(self):
        """The checkpoint entries (train_ssd.py saves them beside the model)."""
        return {'fitted_last_step': self.last_step, 'train_seconds': self.seconds_spent,
                'fitted_for': self.fitted_for}

    def recorded_in(self, path):
        """Whether the checkpoint `path` holds the entries (a run started before them does
        not); reads its index only."""
        names = {n.split('/')[0] for n, _ in tf.train.list_variables(path)}
        return set(self.checkpoint_items()) <= names

    def reset(self):
        """The entries of a new run: nothing spent, the last step `max_steps`."""
        self.last_step.assign(self.max_steps)
        self.seconds_spent.assign(0.)
        self.fitted_for.assign([self.budget, self.max_steps])

    @property
    def measured_from(self):
        """The step this process measures the rate from (None before it settles)."""
        return None if self._mark is None else self._mark[0]

    def stop_step(self):
        """The step the run ends at: the fitted last step, at most `max_steps`."""
        return min(self.max_steps, int(self.last_step.numpy()))

    def elapsed(self, now):
        """Seconds of the budget spent at `now` (a `time.perf_counter()` value)."""
        return self._spent0 + (now - self._t0)

    def spent(self, now):
        return self.elapsed(now) >= self.budget

    def start(self, step, now):
        """The loop starts at `step` (after a restore). A resumed run is fitted at once from
        its checkpoint's rate, unless it is finished (at its last step, with the budget and
        max steps it was fitted for)."""
        self._t0, self._start_step, self._mark = now, int(step), None
        self._spent0 = float(self.seconds_spent.numpy())
        same = self.fitted_for.numpy().tolist() == np.float32(
            [self.budget, self.max_steps]).tolist()
        self.fitted_for.assign([self.budget, self.max_steps])
        if step <= 0 or self._spent0 <= 0 or (step >= int(self.last_step.numpy()) and same):
            return
        self.last_step.assign(fitted_last_step(step, self.budget - self._spent0,
                                               self._spent0 / step, self.max_steps))

    def after_step(self, step, now):
        """Records the time after `step`; refits every `refit_every` steps once settled.
        Returns `(last step, seconds per step)` when it fitted, else None."""
        self.seconds_spent.assign(self.elapsed(now))
        if self._mark is None:
            if step - self._start_step >= self.settle_steps:
                self._mark = (int(step), now)
            return None
        done = step - self._mark[0]
        if done <= 0 or done % self.refit_every:
            return None
        rate = (now - self._mark[1]) / done
        new = fitted_last_step(step, self.budget - self.elapsed(now), rate, self.max_steps)
        if new != int(self.last_step.numpy()):
            self.last_step.assign(new)
        return new, rate


OPTIMIZERS = ('adadelta', 'adagrad', 'adam', 'adamw', 'ftrl', 'momentum', 'sgd', 'rmsprop')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer flags of train_ssd.py (same names, slim's defaults)."""
    optimizer: str = 'adam'
    opt_epsilon: float = 1e-7
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adadelta_rho: float = 0.95
    adagrad_initial_accumulator_value: float = 0.1
    ftrl_learning_rate_power: float = -0.5
    ftrl_initial_accumulator_value: float = 0.1
    ftrl_l1: float = 0.0
    ftrl_l2: float = 0.0
    momentum: float = 0.9
    rmsprop_momentum: float = 0.9
    rmsprop_decay: float = 0.9
    weight_decay: float = 0.0
    moving_average_decay: float = None
    clip_gradient_norm: float = None
    mixed_precision: str = None

    @classmethod
    def from_run_config(cls, config):
        """The optimizer part of a `run_config.RunConfig` (fields it leaves None keep the
        defaults here, except the optional ones)."""
        optional = ('moving_average_decay', 'clip_gradient_norm', 'mixed_precision')
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if v is not None or k in optional})


def _keras_optimizer(c, learning_rate):
    """The Keras optimizer named by `c.optimizer` (slim names; momentum = SGD + momentum)."""
    ema = dict(use_ema=True, ema_momentum=float(c.moving_average_decay)) \
        if c.moving_average_decay else {}
    common = dict(learning_rate=learning_rate, clipnorm=c.clip_gradient_norm, **ema)
    eps = dict(epsilon=c.opt_epsilon)
    adam = dict(beta_1=c.adam_beta1, beta_2=c.adam_beta2, **eps)
    makers = {
        'adadelta': lambda: keras.optimizers.Adadelta(rho=c.adadelta_rho, **eps, **common),
        'adagrad': lambda: keras.optimizers.Adagrad(
            initial_accumulator_value=c.adagrad_initial_accumulator_value, **eps, **common),
        'adam': lambda: keras.optimizers.Adam(**adam, **common),
        'adamw': lambda: keras.optimizers.AdamW(weight_decay=c.weight_decay, **adam, **common),
        'ftrl': lambda: keras.optimizers.Ftrl(
            learning_rate_power=c.ftrl_learning_rate_power,
            initial_accumulator_value=c.ftrl_initial_accumulator_value,
            l1_regularization_strength=c.ftrl_l1, l2_regularization_strength=c.ftrl_l2,
            **common),
        'momentum': lambda: keras.optimizers.SGD(momentum=c.momentum, **common),
        'sgd': lambda: keras.optimizers.SGD(**common),
        'rmsprop': lambda: keras.optimizers.RMSprop(rho=c.rmsprop_decay,
                                                    momentum=c.rmsprop_momentum, **eps, **common),
    }
    if c.optimizer not in makers:
        raise ValueError(f"--optimizer={c.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    return makers[c.optimizer]()


@keras.saving.register_keras_serializable(package='ssd_tf')
class SkipNonFiniteOptimizer(keras.optimizers.LossScaleOptimizer):
    """A `LossScaleOptimizer` whose scale stays at its initial value (1): it only skips the
    update of a step whose gradients are not finite. Keras' own halves the scale at each such
    step and, with growth disabled, never doubles it back (0.125 after 3 skips), so in float32
    / bfloat16 the gradients would shrink towards zero after enough skipped steps."""

    def __init__(self, inner_optimizer, **kwargs):
        kwargs.update(initial_scale=1.0, dynamic_growth_steps=_NO_GROWTH_STEPS)
        super().__init__(inner_optimizer, **kwargs)

    def _stateful_handle_non_finite_grads(self):
        self.step_counter.assign(0)

    def _stateless_handle_non_finite_grads(self, optimizer_variables, trainable_variables):
        return trainable_variables, list(optimizer_variables)

    def get_config(self):
        config = super().get_config()
        config.pop('initial_scale', None)
        config.pop('dynamic_growth_steps', None)
        return config


def build_optimizer(config, learning_rate=None, **overrides):
    """A Keras optimizer from an `OptimizerConfig` (or, as before, a slim optimizer name and
    keyword flags: `build_optimizer('adam', lr, mixed_precision=...)`; `clipnorm` is
    `clip_gradient_norm`), always wrapped for loss scaling: dynamic for float16, else a
    `SkipNonFiniteOptimizer` (scale 1) that only skips non-finite steps. `weight_decay` applies
    to `adamw` only (the other optimizers get slim's L2 regularisation from the model)."""
    if isinstance(config, str):
        if 'clipnorm' in overrides:
            overrides['clip_gradient_norm'] = overrides.pop('clipnorm')
        config = OptimizerConfig(optimizer=config, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    opt = _keras_optimizer(config, learning_rate)
    if config.mixed_precision == 'mixed_float16':
        return keras.optimizers.LossScaleOptimizer(opt)
    return SkipNonFiniteOptimizer(opt)


def steps_per_epoch(num_samples, batch_size):
    """Global steps in one pass over `num_samples` examples (at least 1)."""
    return max(int(num_samples) // int(batch_size), 1)


def resolve_num_samples(num_samples, records, tfrecord_pattern):
    """Training examples per epoch (the decay schedules' unit): `num_samples` (--num_samples)
    when set, else the number of `records` read, else the records counted in the TFRecord
    files of `tfrecord_pattern` (ValueError naming the file when one cannot be counted)."""
    if num_samples:
        return int(num_samples)
    if records is not None:
        return len(records)
    return count_tfrecord_records(tfrecord_pattern)


def count_tfrecord_records(file_pattern):
    """Number of records in the TFRecord files matching `file_pattern` (comma-separated
    patterns too), from the record headers (`datasets.tfrecord.count_records`); a pattern
    that matches nothing or a truncated file is a ValueError naming it."""
    from ssd_tf.datasets import tfrecord as tfrecord_lib
    patterns = [p.strip() for p in str(file_pattern).split(',') if p.strip()]
    try:
        return tfrecord_lib.count_records(patterns)
    except FileNotFoundError:
        raise ValueError(f"--dataset_dir={file_pattern} matches no TFRecord file") from None


# ---------------------------------------------------------------------------- strategies
def make_strategy(name, num_logical_cpus=0, tpu=None):
    """'default' | 'mirrored' | 'multi_worker' | 'tpu' -> a tf.distribute strategy.

    num_logical_cpus > 1 splits the CPU into that many logical devices for 'mirrored' (for
    testing data parallelism without accelerators); it must be called before TF starts.
    """
    if name == 'default':
        return tf.distribute.get_strategy()
    if name == 'mirrored':
        devices = None
        if num_logical_cpus > 1:
            cpu = tf.config.list_physical_devices('CPU')[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_cpus)
            if not tf.config.list_physical_devices('GPU'):
                devices = [d.name for d in tf.config.list_logical_devices('CPU')]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == 'multi_worker':
        if 'TF_CONFIG' not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster spec and this worker's task); see the README")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == 'tpu':
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or '')
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError, RuntimeError) as e:
            raise ValueError(f"--strategy=tpu: no TPU could be reached ({e}); set --tpu to the "
                             "TPU name or address") from e
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy={name!r}: choose default, mirrored, multi_worker or tpu")


# ---------------------------------------------------------------------------- progress
def _fmt_seconds(s):
    if not math.isfinite(s):
        return '?'
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f'{h}:{m:02d}:{sec:02d}' if h else f'{m}:{sec:02d}'


class ProgressBar:
    """A one-line progress bar on stderr: step, losses, images/s, ETA.

    On a terminal it redraws in place; otherwise (logs, CI) it prints a line every
    `log_every_n_steps` steps.
    """

    def __init__(self, total_steps, start_step=0, log_every_n_steps=10, stream=None, width=24):
        self.total = total_steps
        self.start = start_step
        self.every = max(int(log_every_n_steps), 1)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.width = width
        self.t0 = time.perf_counter()
        self.ips = float('nan')
        self._ema = None

    def update(self, step, losses, images_per_second, force=False):
        if images_per_second > 0:
            self._ema = images_per_second if self._ema is None \
                else 0.9 * self._ema + 0.1 * images_per_second
        self.ips = self._ema if self._ema is not None else float('nan')
        if not (self.tty or force or step % self.every == 0 or step == self.total):
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float('nan')
        frac = min(step / max(self.total, 1), 1.)
        bar = '=' * int(frac * self.width)
        bar = (bar + '>' if len(bar) < self.width else bar).ljust(self.width)
        terms = ' '.join(f'{k} {v:.3f}' for k, v in losses.items())
        line = (f'step {step}/{self.total} [{bar}] {terms} | {self.ips:.1f} img/s | '
                f'ETA {_fmt_seconds(eta)}')
        if self.tty:
            self.stream.write('\r' + line + '\033[K')
            if step == self.total or force:
                self.stream.write('\n')
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def message(self, text):
        """Prints a line without breaking the bar."""
        self.stream.write(('\n' if self.tty else '') + text + '\n')
        self.stream.flush()


# ---------------------------------------------------------------------------- trainer
class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive non-finite losses; the last good checkpoint is kept."""


@dataclasses.dataclass
class LossConfig:
    """The loss flags of train_ssd.py (--match_threshold, --negative_ratio, --loss_alpha,
    --label_smoothing, --class_balance), same defaults; `keras_detector.SSDDetector.compile`
    takes them too."""
    match_threshold: float = 0.5
    negative_ratio: float = 3.
    alpha: float = 1.
    label_smoothing: float = 0.
    class_balance: float = 0.


def count_positives(net, targets, loss_config):
    """Positive anchors of a batch of encoded targets (`targets['gclasses']` /
    `targets['gscores']`, per layer `[B, H, W, A]`): the encoder's matches, or with
    `net.reference_compat` the slim rule `gscores > match_threshold`. A float32 scalar, the
    loss's normaliser once summed over the replicas."""
    if net.reference_compat:
        return tf.add_n([tf.reduce_sum(tf.cast(g > loss_config.match_threshold, tf.float32))
                         for g in targets['gscores']])
    return tf.add_n([tf.reduce_sum(tf.cast(g > 0, tf.float32)) for g in targets['gclasses']])


def count_class_positives(net, targets):
    """Positive anchors per class of a batch of encoded targets (`targets['gclasses']`, per
    layer `[B, H, W, A]`, the encoder's labels; background and labels outside the network's
    classes count in entry 0): `[C]` float32, C = `net.params.num_classes`; what
    `--class_balance` weighs by, once summed over the replicas."""
    num_classes = net.params.num_classes
    total = tf.zeros([num_classes], tf.float32)
    for g in targets['gclasses']:
        g = tf.reshape(tf.cast(g, tf.int32), [-1])
        g = tf.where((g > 0) & (g < num_classes), g, 0)
        total += tf.math.unsorted_segment_sum(tf.ones_like(g, tf.float32), g, num_classes)
    return total


def global_class_positives(net, targets, loss_config):
    """`count_class_positives` summed over the replicas (in a replica context), or None
    when `loss_config.class_balance` is 0 (nothing weighs by it)."""
    if not loss_config.class_balance:
        return None
    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, count_class_positives(net, targets))


def poison_gradients(grads, summed_loss):
    """`grads` plus `0 * summed_loss` (the loss summed over the replicas): all NaN on every
    replica when any replica's loss is not finite, so that every replica's loss-scale
    optimizer skips the same step (Keras' decides on the first replica's gradients only)."""
    poison = 0. * summed_loss
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def replica_losses(net, outputs, targets, loss_config, num_positives, local_fraction,
                   regularization_losses=(), class_positives=None):
    """The one training loss (train_ssd.py's step and `SSDDetector.train_step` call it).

    outputs: the network's raw dict (`logits`, `localisations`, per layer `[B, H, W, A, C|4]`);
    targets: the encoded targets of the data pipeline (`gclasses`, `glocalisations`,
    `gscores`, per layer); num_positives: the positives of the GLOBAL batch (summed over the
    replicas, see `count_positives`); local_fraction: this replica's share of the global batch
    (1 on one replica); regularization_losses: the model's `losses` (weight decay);
    class_positives: `[C]` the positives per class of the global batch for --class_balance
    (`global_class_positives`; None: this replica's).
    Returns float32 scalars `cross_entropy_pos`, `cross_entropy_neg`, `localization`,
    `regularization` and `total` (their sum), scaled so that the replicas' values sum to the
    loss of the global batch on one replica.
    """
    cfg = loss_config
    losses = net.losses(
        outputs['logits'], outputs['localisations'], list(targets['gclasses']),
        list(targets['glocalisations']), list(targets['gscores']),
        match_threshold=cfg.match_threshold, negative_ratio=cfg.negative_ratio,
        alpha=cfg.alpha, label_smoothing=cfg.label_smoothing, num_positives=num_positives,
        class_balance=cfg.class_balance, class_positives=class_positives)
    losses = {k: tf.cast(v, tf.float32) for k, v in losses.items()}
    if net.reference_compat:
        # slim divides by its (local) batch size: rescale so replicas sum to the global-batch
        # normalisation.
        losses = {k: v * local_fraction for k, v in losses.items()}
    reg = tf.constant(0., tf.float32)
    if regularization_losses:
        reg = tf.add_n([tf.cast(l, tf.float32) for l in regularization_losses]) * local_fraction
    losses['regularization'] = reg
    losses['total'] = losses['total'] + reg
    return losses


@dataclasses.dataclass
class LoopConfig:
    """How `Trainer.train` logs, saves and stops (train_ssd.py's flags of the same names)."""
    log_every_n_steps: int = 10
    save_interval_secs: float = 600
    save_every_n_steps: int = None
    max_consecutive_nonfinite: int = 5
    save_summaries_secs: float = 60
    max_seconds: float = None


class _StopSignals:
    """SIGINT/SIGTERM set `received` instead of killing the process (restored on exit)."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, h in self._previous.items():
            signal.signal(sig, h)


def _inner_optimizer(optimizer):
    return getattr(optimizer, 'inner_optimizer', optimizer)


class DistributedStep:
    """One global training step under `strategy`: per replica the forward pass, the multibox
    loss normalised by the global batch's positives, the gradients, one all-reduce that makes
    every replica skip a non-finite update and carries a stop request, and the update.

    `step(batch, stop_request)` -> `(losses summed over replicas, whether any worker asked
    to stop)`; `global_step` counts the steps attempted (skipped ones included).
    """

    def __init__(self, net, model, optimizer, strategy, global_step, global_batch_size,
                 trainable_variables, loss_config=None, jit_compile=False):
        self.net = net
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_step = global_step
        self.global_batch_size = int(global_batch_size)
        self.trainable_variables = trainable_variables
        self.loss_config = loss_config or LossConfig()
        self.compiled_loss_and_grads = tf.function(self._loss_and_grads,
                                                   jit_compile=jit_compile or None)
        self._step_fn = None

    def _loss_and_grads(self, images, gclasses, glocs, gscores, num_positives, local_fraction,
                        class_positives=None):
        with tf.GradientTape() as tape:
            out = self.model(images, training=True)
            targets = dict(gclasses=gclasses, glocalisations=glocs, gscores=gscores)
            losses = replica_losses(self.net, out, targets, self.loss_config, num_positives,
                                    local_fraction, self.model.losses, class_positives)
            scaled = self.optimizer.scale_loss(losses['total'])
        grads = tape.gradient(scaled, self.trainable_variables)
        return losses, grads

    def _replica_step(self, images, targets, stop_request):
        ctx = tf.distribute.get_replica_context()
        n_pos = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                               count_positives(self.net, targets, self.loss_config))
        class_pos = global_class_positives(self.net, targets, self.loss_config)
        local_fraction = tf.cast(tf.shape(images)[0], tf.float32) / self.global_batch_size
        losses, grads = self.compiled_loss_and_grads(
            images, targets['gclasses'], targets['glocalisations'], targets['gscores'], n_pos,
            local_fraction, class_pos)
        # One replica's non-finite loss makes every replica skip (see the module docstring),
        # and a stop asked on any worker (a signal) is seen by all after this same step, so
        # none is left waiting in the next step's all-reduce: one all-reduce for both.
        summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                tf.stack([losses['total'], tf.cast(stop_request, tf.float32)]))
        grads = poison_gradients(grads, summed[0])
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, self.trainable_variables) if g is not None])
        return losses, summed[1]

    def make_step(self):
        """The `tf.function` running one global batch on all replicas; returns summed losses
        and whether any worker asked to stop. It takes `(images, encoded targets)` only (see
        `step_inputs`), so that it is traced once per run."""
        @tf.function
        def step(batch, stop_request):
            images, targets = batch
            per_replica, stop = self.strategy.run(self._replica_step,
                                                  args=(images, targets, stop_request))
            self.global_step.assign_add(1)
            losses = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                      for k, v in per_replica.items()}
            return losses, self.strategy.reduce(tf.distribute.ReduceOp.SUM, stop, axis=None)
        self._step_fn = step
        return step

    def __call__(self, batch, stop_request):
        if self._step_fn is None:
            self.make_step()
        return self._step_fn(step_inputs(batch), tf.constant(float(bool(stop_request))))


# The encoded targets, the only targets the step reads (`count_positives`, `replica_losses`).
ENCODED_TARGETS = ('gclasses', 'glocalisations', 'gscores')


def step_inputs(batch):
    """`(images, targets)` of the data pipeline -> `(images, the ENCODED_TARGETS of targets)`.

    The pipeline's batches also carry the ground truth (`labels [B, N]`, `bboxes [B, N, 4]`,
    `num_boxes`, ... for the summary images), padded to N = the most boxes of any image of the
    batch, which changes from batch to batch; the encoded targets have the anchors' fixed
    shapes. Passing only those keeps the step's input signature constant, so the step is traced
    once per run instead of once per new N (TensorFlow's "triggered tf.function retracing"
    warning, seconds per trace).
    """
    images, targets = batch
    return images, {k: targets[k] for k in ENCODED_TARGETS}


class Trainer:
    """Owns the checkpoints and the loop around a `DistributedStep`.

    Build the model and the optimizer inside `strategy.scope()` before creating the Trainer.
    `trainable_variables` restricts training (slim's --trainable_scopes); default: all.
    Checkpoints are restored from `train_dir` and written to `save_dir` (default train_dir; a
    non-chief worker of a multi-worker run passes a temporary directory of its own). With a
    moving-average optimizer (`use_ema`), every checkpoint also stores the averages
    (`run_config.MOVING_AVERAGE_ITEM`), and the checkpoint saved when training finishes holds
    the averaged weights as the model's. With a `TimeBudget` (`time_budget`), the run ends at
    its fitted last step (the optimizer's `WarmupDecaySchedule` must `follow` the budget's
    `last_step`), and checkpoints hold the budget's entries too.
    """

    def __init__(self, net, model, optimizer, strategy, train_dir, global_batch_size,
                 loss_config=None, jit_compile=False, trainable_variables=None, max_to_keep=5,
                 extra_checkpoint_items=None, save_dir=None, time_budget=None):
        self.net = net
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.train_dir = train_dir
        self.save_dir = save_dir or train_dir
        self.global_batch_size = int(global_batch_size)
        self.loss_config = loss_config or LossConfig()
        self.jit_compile = jit_compile
        self.trainable_variables = list(trainable_variables if trainable_variables is not None
                                        else model.trainable_variables)
        with strategy.scope():
            # Steps attempted (skipped non-finite steps included): the data position.
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
            # Slots are created now, not lazily inside the distributed step, so that a restore
            # fills them and the step function traces once.
            optimizer.build(self.trainable_variables)
        items = dict(model=model, optimizer=optimizer, global_step=self.global_step)
        items.update(self._moving_average_items())
        items.update(extra_checkpoint_items or {})
        self.time_budget = time_budget
        budget_items = time_budget.checkpoint_items() if time_budget is not None else {}
        self.checkpoint = tf.train.Checkpoint(**items, **budget_items)
        # What must match when resuming a run saved before the budget's entries existed.
        self._without_budget = tf.train.Checkpoint(**items) if budget_items else None
        # Rotation is run_config.prune_checkpoints' (after the new checkpoint reads back
        # intact), so the manager itself keeps everything.
        self.max_to_keep = max_to_keep
        self.manager = self._new_manager()
        self.step = DistributedStep(net, model, optimizer, strategy, self.global_step,
                                    self.global_batch_size, self.trainable_variables,
                                    self.loss_config, jit_compile)
        self._compiled_loss_and_grads = self.step.compiled_loss_and_grads
        self.stop_requested_elsewhere = False
        self._budget_announced = False
        self.clock = time.perf_counter  # the time budget's clock (tests replace it)

    @property
    def multi_worker(self):
        """True under a strategy spanning processes (the workers stop together)."""
        return getattr(self.strategy, 'cluster_resolver', None) is not None

    # ------------------------------------------------------------------ checkpoints
    @property
    def uses_moving_average(self):
        return bool(getattr(_inner_optimizer(self.optimizer), 'use_ema', False))

    def _moving_average_items(self):
        """`{MOVING_AVERAGE_ITEM: averages keyed by their index in model.trainable_variables}`
        (empty without --moving_average_decay)."""
        if not self.uses_moving_average:
            return {}
        averages = _inner_optimizer(self.optimizer)._model_variables_moving_average
        index = {id(v): i for i, v in enumerate(self.model.trainable_variables)}
        pairs = [(index[id(v)], a) for v, a in zip(self.trainable_variables, averages)]
        return {run_config.MOVING_AVERAGE_ITEM: run_config.moving_average_item(pairs)}

    def _new_manager(self):
        return tf.train.CheckpointManager(self.checkpoint, self.save_dir, max_to_keep=None,
                                          checkpoint_name='ckpt')

    def restore(self):
        """Restores the newest intact checkpoint of train_dir (newer damaged ones are reported
        and skipped); returns its path or None. Checkpoint files of which none is intact are a
        ValueError (the run is not restarted from step 0 over them)."""
        latest, damaged = run_config.find_intact_checkpoint(self.train_dir)
        if latest is None and damaged:
            raise run_config.no_intact_checkpoint_error(self.train_dir, damaged, '--train_dir')
        if latest:
            if self.time_budget is None or self.time_budget.recorded_in(latest):
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            else:  # everything else must match; the budget counts from now
                self._without_budget.restore(latest).assert_existing_objects_matched()
                # the saver's own save counter (the strict restore was another object's)
                self.checkpoint.restore(latest).expect_partial()
                self.time_budget.reset()
                print(f"{latest} does not record the training time: the time budget "
                      "counts from now", file=sys.stderr)
            if isinstance(self.optimizer, SkipNonFiniteOptimizer):
                # a run written before the scale was pinned may hold a halved one
                self.optimizer.dynamic_scale.assign(1.0)
        return latest

    def save(self):
        """Saves a checkpoint numbered by the global step, then keeps the `max_to_keep` newest
        intact ones (`run_config.prune_checkpoints`: none is deleted unless the new one reads
        back intact); returns its path."""
        path = self.manager.save(checkpoint_number=int(self.global_step.numpy()))
        if self.max_to_keep:
            run_config.prune_checkpoints(self.save_dir, self.max_to_keep, path)
            self.manager = self._new_manager()  # re-read the state file prune wrote
        return path

    def finalize_moving_average(self):
        """Replaces the trained weights by their moving averages (no-op without them)."""
        if self.uses_moving_average:
            _inner_optimizer(self.optimizer).finalize_variable_values(self.trainable_variables)

    # ------------------------------------------------------------------ the step
    def make_step(self):
        """The `tf.function` of one global step (see `DistributedStep.make_step`)."""
        return self.step.make_step()

    def train_step(self, batch, stop_request=False):
        """One global step; returns the summed losses. `stop_request`: this worker asks every
        worker to stop after the step (`stop_requested_elsewhere` then becomes True)."""
        losses, stop = self.step(batch, stop_request)
        self.stop_requested_elsewhere = bool(float(stop) > 0)
        return losses

    # ------------------------------------------------------------------ the loop
    def train(self, dataset, max_steps, log_every_n_steps=10, save_interval_secs=600,
              save_every_n_steps=None, max_consecutive_nonfinite=5, summary_writer=None,
              save_summaries_secs=60, on_summary=None, on_step=None, progress=None,
              max_seconds=None):
        """Runs steps until `max_steps` (global), a signal or too many non-finite losses.

        dataset: a distributed dataset (or iterable) positioned at the current global step.
        on_summary(step, batch): called every `save_summaries_secs` for image/mAP summaries.
        on_step(step, losses): called after each step (tests, callbacks).
        max_seconds: a wall-clock budget; when spent, training stops as if done (checkpoint
          saved), so a fixed-time comparison can be made. With the Trainer's `time_budget`,
          that budget (spanning resumes) is the one used, and the run ends at its fitted last
          step (at most `max_steps`).
        Any other exception (from the data, a callback, a summary write) first saves a
        checkpoint of the last completed step, then propagates.
        Returns the reason it stopped: 'done', 'time budget', 'SIGINT' or 'SIGTERM' (also
        when the signal reached another worker).
        """
        loop = LoopConfig(log_every_n_steps, save_interval_secs, save_every_n_steps,
                          max_consecutive_nonfinite, save_summaries_secs, max_seconds)
        step = int(self.global_step.numpy())
        progress = progress or ProgressBar(max_steps, step, log_every_n_steps)
        if self.time_budget is not None:
            if self.multi_worker:
                raise ValueError("a fitted time budget (--fit_schedule_to_budget) needs one "
                                 "process: the workers would fit different last steps")
            self.time_budget.start(step, self.clock())
            progress.total = self.time_budget.stop_step()
        with _StopSignals() as signals:
            try:
                reason = self._loop(iter(dataset), max_steps, loop, signals, progress,
                                    summary_writer, on_summary, on_step)
            except NonFiniteLossError:
                raise
            except Exception:
                self._save_after_failure(progress)
                raise
        if self.time_budget is not None and reason in ('done', 'time budget'):
            b = self.time_budget
            progress.message(f"time budget: training ended at step "
                             f"{int(self.global_step.numpy())} after "
                             f"{float(b.seconds_spent.numpy()):.0f} s of {b.budget:.0f} s")
        return self._finish(reason, self._end_step(max_steps), progress)

    def _end_step(self, max_steps):
        """The step the loop runs to: `max_steps`, or the budget's fitted last step."""
        if self.time_budget is None:
            return max_steps
        return min(max_steps, self.time_budget.stop_step())

    def _budget_spent(self, start, max_seconds):
        """`(whether the time budget is spent, the budget in seconds)`."""
        if self.time_budget is not None:
            return self.time_budget.spent(self.clock()), self.time_budget.budget
        spent = max_seconds is not None and self.clock() - start >= max_seconds
        return spent, max_seconds

    def _loop(self, iterator, max_steps, loop, signals, progress, summary_writer, on_summary,
              on_step):
        """The steps; returns why they stopped."""
        clock = {'save': time.perf_counter(),
                 'summary': time.perf_counter()}
        bad_in_a_row = 0
        self.stop_requested_elsewhere = False
        start = self.clock()
        while int(self.global_step.numpy()) < self._end_step(max_steps):
            if self.stop_requested_elsewhere or (signals.received and not self.multi_worker):
                return signals.received or 'SIGTERM'
            spent, budget = self._budget_spent(start, loop.max_seconds)
            if spent:
                progress.message(f"time budget of {budget:.0f} s spent at step "
                                 f"{int(self.global_step.numpy())}")
                return 'time budget'
            t0 = time.perf_counter()
            batch = next(iterator)
            losses = {k: float(v) for k, v in
                      self.train_step(batch, stop_request=signals.received).items()}
            dt = time.perf_counter() - t0
            step = int(self.global_step.numpy())
            self._refit(step, progress)
            if not all(math.isfinite(v) for v in losses.values()):
                bad_in_a_row = self._non_finite_step(step, losses, bad_in_a_row + 1, loop,
                                                     progress)
                continue
            bad_in_a_row = 0
            shown = {k: v for k, v in losses.items() if k != 'regularization'}
            progress.update(step, shown, self.global_batch_size / dt if dt > 0 else 0.)
            if on_step is not None:
                on_step(step, losses)
            self._write_scalars(step, losses, loop, progress, summary_writer)
            now = time.perf_counter()
            if on_summary is not None and now - clock['summary'] >= loop.save_summaries_secs:
                on_summary(step, batch)
                clock['summary'] = time.perf_counter()
            if (loop.save_every_n_steps and step % loop.save_every_n_steps == 0) or \
                    now - clock['save'] >= loop.save_interval_secs:
                self.save()
                clock['save'] = time.perf_counter()
        return 'done'

    def _refit(self, step, progress):
        """Fits the time budget's last step again after `step` (the progress bar follows)."""
        if self.time_budget is None:
            return
        fit = self.time_budget.after_step(step, self.clock())
        if fit is None:
            return
        progress.total = self.time_budget.stop_step()
        if not self._budget_announced:
            self._budget_announced = True
            b = self.time_budget
            progress.message(
                f"time budget: {b.budget:.0f} s at {fit[1]:.3f} s/step (measured from step "
                f"{b.measured_from}): the learning-rate schedule ends at step {b.stop_step()} "
                f"(--max_number_of_steps={b.max_steps}); fitted again every {b.refit_every} "
                "steps")

    def _non_finite_step(self, step, losses, bad_in_a_row, loop, progress):
        """Reports a skipped step; raises NonFiniteLossError after too many in a row."""
        progress.message(f"WARNING: non-finite loss at step {step}: " +
                         ', '.join(f'{k}={v}' for k, v in losses.items()) +
                         f"; update skipped ({bad_in_a_row} in a row)")
        if bad_in_a_row >= loop.max_consecutive_nonfinite:
            latest = self.manager.latest_checkpoint
            raise NonFiniteLossError(
                f"{bad_in_a_row} consecutive non-finite losses (last at step {step}); "
                f"stopping. The last good checkpoint is kept: {latest}. Check the "
                "data (NaN/inf pixels or boxes) or lower --learning_rate.")
        return bad_in_a_row

    def _write_scalars(self, step, losses, loop, progress, summary_writer):
        """Loss terms, learning rate and images/s every `log_every_n_steps` steps."""
        if summary_writer is None or step % max(loop.log_every_n_steps, 1):
            return
        with summary_writer.as_default(step=step):
            for k, v in losses.items():
                tf.summary.scalar(f'losses/{k}', v)
            tf.summary.scalar('learning_rate', self.current_learning_rate())
            tf.summary.scalar('images_per_second', progress.ips)

    def _save_after_failure(self, progress):
        """Saves the last completed step before an exception propagates (the original error
        stays the one reported when the save fails too, e.g. on a full disk)."""
        step = int(self.global_step.numpy())
        try:
            path = self.save()
        except Exception as e:  # noqa: BLE001 (reported, the original error propagates)
            progress.message(f"error at step {step}; saving a checkpoint failed too: {e}")
            return None
        progress.message(f"error after step {step}: checkpoint of step {step} saved to "
                         f"{path}; fix the cause and run the same command to resume.")
        return path

    def _finish(self, reason, max_steps, progress):
        """The closing checkpoint: at the end (with the moving averages as the weights), at the
        time budget, or at a signal (then resumable)."""
        step = int(self.global_step.numpy())
        if reason in ('done', 'time budget'):
            self.finalize_moving_average()
        if reason != 'done' or step >= max_steps:
            path = self.save()
            if reason in ('SIGINT', 'SIGTERM'):
                progress.message(f"{reason} received: checkpoint saved at step {step} to {path}; "
                                 "run the same command to resume.")
        return reason

    def current_learning_rate(self):
        lr = self.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, 'numpy') else lr)
