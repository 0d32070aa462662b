"""No tf.function retracing in a normal run (issue 22 item 4).

Each compiled function of a run is traced once: the training step for any number of ground
truth boxes per batch, the evaluation detector for any batch size, the image readers' compiled
checks when several threads call them first at the same time. A retrace costs seconds and
TensorFlow warns "N out of the last M calls to <function> triggered tf.function retracing".
"""
import logging
import os
import pathlib
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import ssd_small
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import data as data_lib
from ssd_tf import evaluation
from ssd_tf import images
from ssd_tf import training
from ssd_tf.datasets import records as records_lib
from ssd_tf.datasets import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
RETRACING = 'triggered tf.function retracing'


class _LogRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _padded_to(batch, n):
    """The batch with its ground truth (`labels [B, N]`, `bboxes [B, N, 4]`) padded with
    empty rows to N = n, as a batch whose fullest image has n boxes arrives."""
    images_, targets = batch
    targets = dict(targets)
    have = int(targets['labels'].shape[1])
    targets['labels'] = tf.pad(targets['labels'], [[0, 0], [0, n - have]])
    targets['bboxes'] = tf.pad(targets['bboxes'], [[0, 0], [0, n - have], [0, 0]])
    return images_, targets


def test_step_inputs_keeps_images_and_the_encoded_targets_only():
    images_ = tf.zeros([2, 4, 4, 3])
    targets = {'gclasses': (1,), 'glocalisations': (2,), 'gscores': (3,),
               'labels': tf.zeros([2, 7]), 'bboxes': tf.zeros([2, 7, 4]), 'num_boxes': 0}
    got_images, got = training.step_inputs((images_, targets))
    assert got_images is images_
    assert got == {'gclasses': (1,), 'glocalisations': (2,), 'gscores': (3,)}


def test_training_step_is_traced_once_whatever_the_box_count(tmp_path):
    """Batches padded to 4, 5, .. 9 boxes (the pipeline pads to the fullest image of each
    batch): one trace. Before, each new box count was a new input signature, a new trace."""
    keras.utils.set_random_seed(0)
    net = ssd_small.SSDNet()
    model = net.keras_model()
    opt = training.build_optimizer('adam', 1e-3)
    trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(), str(tmp_path), 4)
    anchors = net.anchors()
    records = synthetic.make_synthetic_examples(8, seed=3, image_size=96)
    ds = data_lib.build_dataset(
        records, lambda i, l, b, seed=None: prep.preprocess_for_train(
            i, l, b, out_shape=net.params.img_shape, seed=seed),
        lambda l, b: net.bboxes_encode(l, b, anchors), batch_size=4, seed=1, with_gt=True)
    batch = next(iter(ds))
    have = int(batch[1]['labels'].shape[1])
    for n in range(have, have + 6):
        losses = trainer.train_step(_padded_to(batch, n))
        assert np.isfinite(float(losses['total']))
    assert int(trainer.global_step.numpy()) == 6
    assert trainer.step._step_fn.experimental_get_tracing_count() == 1


def test_eval_detector_is_traced_once_for_any_batch_size():
    """The summary images (3), the eval batches (16) and a last partial batch (5): one trace."""
    keras.utils.set_random_seed(0)
    net = ssd_small.SSDNet()
    detect = evaluation.keras_detector(net.keras_model(), net)
    h, w = net.params.img_shape
    for b in (3, 16, 5):
        out = detect(tf.zeros([b, h, w, 3]))
        assert out['scores'].shape[0] == b
    assert detect.experimental_get_tracing_count() == 1


def test_image_checks_called_first_from_many_threads_trace_once(tmp_path, monkeypatch):
    """`records.check_image_files` reads with a pool of threads; their simultaneous first calls
    of the compiled header check / decoder each counted as a trace (8 threads: the warning).
    Fresh compiled copies, whose Python body counts its traces (and is slow, so that without
    the lock the threads would all be calling during the first trace)."""
    traces = []

    def counting(name, python_function):
        def body(*args):  # runs only while tracing
            traces.append(name)
            time.sleep(0.3)  # a slow trace, as TensorFlow's first one: the threads meet here
            return python_function(*args)
        return body

    def fresh(table, name):
        return {key: tf.function(counting((name, key), fn.python_function),
                                 input_signature=fn.input_signature, autograph=False)
                for key, fn in table.items()}

    monkeypatch.setattr(images, '_PROBLEM_FN', fresh(images._PROBLEM_FN, 'check'))
    monkeypatch.setattr(images, '_DECODE_FN', fresh(images._DECODE_FN, 'decode'))
    monkeypatch.setattr(images, '_TRACED', set())
    paths = []
    for i in range(24):
        p = tmp_path / f'{i}.jpg'
        p.write_bytes(tf.io.encode_jpeg(tf.fill([8 + i, 10, 3], tf.constant(i, tf.uint8)))
                      .numpy())
        paths.append(str(p))
    warnings = _LogRecords()
    tf.get_logger().addHandler(warnings)
    try:
        got = records_lib.check_image_files(paths, num_workers=8)
    finally:
        tf.get_logger().removeHandler(warnings)
    assert [g[:2] for g in got] == [(8 + i, 10) for i in range(24)]
    # one trace per compiled function that was called (each at most once)
    assert traces and len(traces) == len(set(traces)), traces
    # TensorFlow counts a call as a retrace when the function's trace count changed while it
    # ran: 8 calls overlapping the first one's trace were 8 "retraces" and the warning.
    assert not [m for m in warnings.messages if RETRACING in m], warnings.messages


@pytest.mark.slow
def test_a_short_run_prints_no_retracing_warning(tmp_path):
    """The small-object synthetic mode (5-15 boxes per image, so the padded box count changes
    from batch to batch) trained a few steps and evaluated: no retracing warning."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, str(ROOT / 'train_ssd.py'), '--synthetic_objects=small',
         '--synthetic_num_train=48', '--synthetic_num_test=20', '--batch_size=4',
         '--max_number_of_steps=12', '--save_summaries_secs=0', f'--train_dir={tmp_path}'],
        capture_output=True, text=True, timeout=900, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'VOC07 mAP' in r.stdout
    assert RETRACING not in r.stderr, r.stderr[-3000:]
