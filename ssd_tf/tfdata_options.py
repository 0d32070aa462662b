"""The tf.data options of every dataset the library iterates: one home.

`configure(ds)` is applied by `data.build_dataset` (training, validation, evaluation, the Keras
`fit` input) and by the scans that read a whole data set once (the TFRecord label-text scan,
layout detection, record counting, the coverage report's box scan, TFLite calibration, the
tfds box scan).

What it sets, and why:

- **tf.data's autotuning model off** (`options.autotune.enabled = False`). With it on, every
  iterator starts a thread (`Model::OptimizeLoop`) that re-tunes the pipeline at a period that
  doubles from 10 ms up to 60 s. When the iterator is deleted, TensorFlow cancels that thread
  with a notify that can be lost: the cancellation callback wakes the thread before the
  cancellation manager marks itself cancelled, the thread sees "not cancelled" and sleeps out
  the rest of its period (TF 2.21, `CancellationManager::StartCancelWithStatus` runs the
  callbacks, then sets `is_cancelled_`). The deleting thread waits for it: 10.9 s after 30 s of
  iterating a training pipeline in 3 of 13 tries (`bench/bench_iterator_delete.py`), and
  40-45 s at the end of about half of the main job's trainings. Without the model thread,
  `num_parallel_calls=tf.data.AUTOTUNE` means one call per core (at most 16; TensorFlow's
  `GetAutotuneDefaultParallelism`) and `prefetch(tf.data.AUTOTUNE)` is sized by the
  prefetch's own tuner, which doubles the buffer each time a full buffer is emptied (a pause
  of the consumer, then a burst), as the model's did; so `data.build_dataset` prefetches a
  fixed depth by default (`data.PREFETCH_BATCHES`). On this project's 2-core machine the
  pipeline is no slower for it (1.025x the autotuned one's images/s, same run); on a machine
  with more than 16 cores pass an explicit parallelism (`--num_preprocessing_threads`,
  `--num_readers`).
- **deterministic** element order, for the pipelines that promise it (training and
  evaluation: a resumed run sees the batches an uninterrupted one would).
"""
import tensorflow as tf


def options(deterministic=None):
    """The `tf.data.Options` described in the module docstring. `deterministic`: True/False to
    set `Options.deterministic`; None leaves it unset (tf.data's default)."""
    opts = tf.data.Options()
    opts.autotune.enabled = False
    if deterministic is not None:
        opts.deterministic = bool(deterministic)
    return opts


def configure(ds, deterministic=None):
    """`ds` with `options(deterministic)` (merged over the options it already has)."""
    return ds.with_options(options(deterministic))
