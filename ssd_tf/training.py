"""The training loop: one distributed step, checkpoints, resume, signals, progress, summaries.

It is not the job of this module to build networks or datasets: the `SSDNet` object, the Keras
model, the optimizer, the strategy and a dataset factory are arguments (the script
`train_ssd.py` wires them together).

The step (`Trainer.train_step`) runs under any `tf.distribute` strategy: each replica computes
the loss on its share of the global batch, normalised by the number of positives of the
*global* batch (an all-reduce), so that the replicas' losses and gradients sum to exactly the
single-replica ones (the optimizer all-reduces gradients by sum). A non-finite loss on any
replica turns every replica's gradients into NaN, and the `LossScaleOptimizer` that always wraps
the optimizer then skips the update everywhere (its scale is 1 and never grows for float32 and
bfloat16; it is dynamic for float16).
"""
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

_LOG = logging.getLogger(__name__)

# A float32/bfloat16 run keeps the loss scale at 1: this many finite steps before it would grow.
_NO_GROWTH_STEPS = 2 ** 31 - 1
CONFIG_FILE = 'config.json'


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
            frac = tf.minimum(step, self.total_steps) / self.total_steps
            lr = end + (lr0 - end) * 0.5 * (1. + tf.cos(math.pi * frac))
        if self.warmup_steps > 0:
            lr = lr * tf.minimum(1., (step + 1.) / self.warmup_steps)
        return lr

    def get_config(self):
        return dict(learning_rate=self.learning_rate, decay_type=self.decay_type,
                    decay_steps=self.decay_steps, decay_factor=self.decay_factor,
                    end_learning_rate=self.end_learning_rate, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps)


OPTIMIZERS = ('adadelta', 'adagrad', 'adam', 'adamw', 'ftrl', 'momentum', 'sgd', 'rmsprop')


def build_optimizer(name, learning_rate, opt_epsilon=1e-7, adam_beta1=0.9, adam_beta2=0.999,
                    adadelta_rho=0.95, adagrad_initial_accumulator_value=0.1,
                    ftrl_learning_rate_power=-0.5, ftrl_initial_accumulator_value=0.1,
                    ftrl_l1=0.0, ftrl_l2=0.0, momentum=0.9, rmsprop_momentum=0.9,
                    rmsprop_decay=0.9, weight_decay=0.0, moving_average_decay=None,
                    clipnorm=None, mixed_precision=None):
    """A Keras optimizer named as in slim (`momentum` is SGD with momentum), always wrapped in
    a `LossScaleOptimizer` (dynamic for float16; a fixed scale of 1 otherwise, so that it only
    serves to skip non-finite steps). `weight_decay` applies to `adamw` only (the other
    optimizers get slim's L2 regularisation from the model)."""
    ema = dict(use_ema=True, ema_momentum=float(moving_average_decay)) \
        if moving_average_decay else {}
    common = dict(learning_rate=learning_rate, clipnorm=clipnorm, **ema)
    if name == 'adadelta':
        opt = keras.optimizers.Adadelta(rho=adadelta_rho, epsilon=opt_epsilon, **common)
    elif name == 'adagrad':
        opt = keras.optimizers.Adagrad(
            initial_accumulator_value=adagrad_initial_accumulator_value, epsilon=opt_epsilon,
            **common)
    elif name == 'adam':
        opt = keras.optimizers.Adam(beta_1=adam_beta1, beta_2=adam_beta2, epsilon=opt_epsilon,
                                    **common)
    elif name == 'adamw':
        opt = keras.optimizers.AdamW(weight_decay=weight_decay, beta_1=adam_beta1,
                                     beta_2=adam_beta2, epsilon=opt_epsilon, **common)
    elif name == 'ftrl':
        opt = keras.optimizers.Ftrl(
            learning_rate_power=ftrl_learning_rate_power,
            initial_accumulator_value=ftrl_initial_accumulator_value,
            l1_regularization_strength=ftrl_l1, l2_regularization_strength=ftrl_l2, **common)
    elif name == 'momentum':
        opt = keras.optimizers.SGD(momentum=momentum, **common)
    elif name == 'sgd':
        opt = keras.optimizers.SGD(**common)
    elif name == 'rmsprop':
        opt = keras.optimizers.RMSprop(rho=rmsprop_decay, momentum=rmsprop_momentum,
                                       epsilon=opt_epsilon, **common)
    else:
        raise ValueError(f"--optimizer={name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if mixed_precision == 'mixed_float16':
        return keras.optimizers.LossScaleOptimizer(opt)
    return keras.optimizers.LossScaleOptimizer(opt, initial_scale=1.0,
                                               dynamic_growth_steps=_NO_GROWTH_STEPS)


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


# ---------------------------------------------------------------------------- config
def write_config(train_dir, config):
    """Writes the resolved run configuration next to the checkpoints (atomically)."""
    os.makedirs(train_dir, exist_ok=True)
    path = os.path.join(train_dir, CONFIG_FILE)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path


def read_config(train_dir):
    path = os.path.join(train_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- trainer
class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive non-finite losses; the last good checkpoint is kept."""


@dataclasses.dataclass
class LossConfig:
    match_threshold: float = 0.5
    negative_ratio: float = 3.
    alpha: float = 1.
    label_smoothing: float = 0.


class Trainer:
    """Owns the distributed step, the checkpoint manager and the loop.

    Build the model and the optimizer inside `strategy.scope()` before creating the Trainer.
    `trainable_variables` restricts training (slim's --trainable_scopes); default: all.
    """

    def __init__(self, net, model, optimizer, strategy, train_dir, global_batch_size,
                 loss_config=None, jit_compile=False, trainable_variables=None, max_to_keep=5,
                 extra_checkpoint_items=None):
        self.net = net
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.train_dir = train_dir
        self.global_batch_size = int(global_batch_size)
        self.loss_config = loss_config or LossConfig()
        self.jit_compile = jit_compile
        self.trainable_variables = list(trainable_variables if trainable_variables is not None
                                        else model.trainable_variables)
        with strategy.scope():
            # Steps attempted (skipped non-finite steps included): the data position.
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
        items = dict(model=model, optimizer=optimizer, global_step=self.global_step)
        items.update(extra_checkpoint_items or {})
        with strategy.scope():
            # Slots are created now, not lazily inside the distributed step, so that a restore
            # fills them and the step function traces once.
            optimizer.build(self.trainable_variables)
        self.checkpoint = tf.train.Checkpoint(**items)
        self.manager = tf.train.CheckpointManager(self.checkpoint, train_dir,
                                                  max_to_keep=max_to_keep,
                                                  checkpoint_name='ckpt')
        self._step_fn = None

    # ------------------------------------------------------------------ checkpoints
    def restore(self):
        """Restores the latest checkpoint of train_dir; returns its path or None."""
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def save(self):
        """Saves a checkpoint numbered by the global step; returns its path."""
        return self.manager.save(checkpoint_number=int(self.global_step.numpy()))

    # ------------------------------------------------------------------ the step
    def _count_positives(self, targets):
        if self.net.reference_compat:
            return tf.add_n([tf.reduce_sum(tf.cast(g > self.loss_config.match_threshold,
                                                   tf.float32)) for g in targets['gscores']])
        return tf.add_n([tf.reduce_sum(tf.cast(g > 0, tf.float32))
                         for g in targets['gclasses']])

    def _loss_and_grads(self, images, gclasses, glocs, gscores, num_positives, local_fraction):
        cfg = self.loss_config
        with tf.GradientTape() as tape:
            out = self.model(images, training=True)
            losses = self.net.losses(
                out['logits'], out['localisations'], list(gclasses), list(glocs), list(gscores),
                match_threshold=cfg.match_threshold, negative_ratio=cfg.negative_ratio,
                alpha=cfg.alpha, label_smoothing=cfg.label_smoothing,
                num_positives=num_positives)
            losses = {k: tf.cast(v, tf.float32) for k, v in losses.items()}
            if self.net.reference_compat:
                # slim divides by its (local) batch size: rescale so replicas sum to the
                # global-batch normalisation.
                losses = {k: v * local_fraction for k, v in losses.items()}
            reg = tf.constant(0., tf.float32)
            if self.model.losses:
                reg = tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) \
                    * local_fraction
            total = losses['total'] + reg
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, self.trainable_variables)
        losses['regularization'] = reg
        losses['total'] = total
        return losses, grads

    def _replica_step(self, images, targets):
        ctx = tf.distribute.get_replica_context()
        n_pos = ctx.all_reduce(tf.distribute.ReduceOp.SUM, self._count_positives(targets))
        local_fraction = tf.cast(tf.shape(images)[0], tf.float32) / self.global_batch_size
        fn = self._compiled_loss_and_grads
        losses, grads = fn(images, targets['gclasses'], targets['glocalisations'],
                           targets['gscores'], n_pos, local_fraction)
        # One replica's non-finite loss makes every replica skip (see the module docstring).
        poison = 0. * ctx.all_reduce(tf.distribute.ReduceOp.SUM, losses['total'])
        grads = [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, self.trainable_variables) if g is not None])
        return losses

    def make_step(self):
        """The `tf.function` running one global batch on all replicas; returns summed losses."""
        self._compiled_loss_and_grads = tf.function(self._loss_and_grads,
                                                    jit_compile=self.jit_compile or None)

        @tf.function
        def step(batch):
            images, targets = batch
            per_replica = self.strategy.run(self._replica_step, args=(images, targets))
            self.global_step.assign_add(1)
            return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                    for k, v in per_replica.items()}
        self._step_fn = step
        return step

    def train_step(self, batch):
        if self._step_fn is None:
            self.make_step()
        return self._step_fn(batch)

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
          saved), so a fixed-time comparison can be made.
        Returns the reason it stopped: 'done', 'time budget', 'SIGINT' or 'SIGTERM'.
        """
        step = int(self.global_step.numpy())
        progress = progress or ProgressBar(max_steps, step, log_every_n_steps)
        stop = {'signal': None}
        previous = {}

        def handler(signum, frame):
            del frame
            stop['signal'] = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        last_save = last_summary = time.perf_counter()
        bad_in_a_row = 0
        reason = 'done'
        iterator = iter(dataset)
        t_start = time.perf_counter()
        try:
            while step < max_steps:
                if stop['signal']:
                    reason = stop['signal']
                    break
                if max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
                    reason = 'time budget'
                    progress.message(f"time budget of {max_seconds:.0f} s spent at step {step}")
                    break
                t0 = time.perf_counter()
                batch = next(iterator)
                losses = {k: float(v) for k, v in self.train_step(batch).items()}
                dt = time.perf_counter() - t0
                step = int(self.global_step.numpy())
                if not all(math.isfinite(v) for v in losses.values()):
                    bad_in_a_row += 1
                    progress.message(
                        f"WARNING: non-finite loss at step {step}: " +
                        ', '.join(f'{k}={v}' for k, v in losses.items()) +
                        f"; update skipped ({bad_in_a_row} in a row)")
                    if bad_in_a_row >= max_consecutive_nonfinite:
                        latest = self.manager.latest_checkpoint
                        raise NonFiniteLossError(
                            f"{bad_in_a_row} consecutive non-finite losses (last at step {step}); "
                            f"stopping. The last good checkpoint is kept: {latest}. Check the "
                            "data (NaN/inf pixels or boxes) or lower --learning_rate.")
                    continue
                bad_in_a_row = 0
                shown = {k: v for k, v in losses.items() if k != 'regularization'}
                progress.update(step, shown, self.global_batch_size / dt if dt > 0 else 0.)
                if on_step is not None:
                    on_step(step, losses)
                now = time.perf_counter()
                if summary_writer is not None and (step % max(log_every_n_steps, 1) == 0):
                    with summary_writer.as_default(step=step):
                        for k, v in losses.items():
                            tf.summary.scalar(f'losses/{k}', v)
                        tf.summary.scalar('learning_rate', self.current_learning_rate())
                        tf.summary.scalar('images_per_second', progress.ips)
                if on_summary is not None and now - last_summary >= save_summaries_secs:
                    on_summary(step, batch)
                    last_summary = time.perf_counter()
                if (save_every_n_steps and step % save_every_n_steps == 0) or \
                        now - last_save >= save_interval_secs:
                    self.save()
                    last_save = time.perf_counter()
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
        if reason != 'done' or step >= max_steps:
            path = self.save()
            if reason in ('SIGINT', 'SIGTERM'):
                progress.message(f"{reason} received: checkpoint saved at step {step} to {path}; "
                                 "run the same command to resume.")
        return reason

    def current_learning_rate(self):
        lr = self.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, 'numpy') else lr)
