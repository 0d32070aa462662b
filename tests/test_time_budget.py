"""The time budget fitted to the schedule (train_ssd.py --fit_schedule_to_budget).

The fitting maths is pure (`fitted_last_step`, `TimeBudget` on a hand-driven clock); the loop
runs in-process on `ssd_small` with a fake clock that advances one second per batch, so the
step counts below are derived by hand, not measured.
"""
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import quiet_progress
from nets import ssd_small
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import data as data_lib
from ssd_tf import training
from ssd_tf.datasets import synthetic


# ------------------------------------------------------------------ fitted_last_step
@pytest.mark.parametrize('args, want', [
    ((100, 50., 0.5, 1000), 200),     # 50 s / 0.5 s = 100 more steps
    ((100, 50.9, 0.5, 1000), 201),    # floor(101.8)
    ((100, 1000., 0.5, 1000), 1000),  # more would fit: at most max_steps
    ((100, -5., 0.5, 1000), 100),     # budget overspent: stop where it is
    ((100, 0.2, 0.5, 1000), 100),     # not one more step fits
    ((0, 60., 0., 1000), 1000),       # no rate measured yet: max_steps
    ((0, 60., float('nan'), 1000), 1000),
    ((1200, 60., 0.5, 1000), 1200),   # already past max_steps: never before the step
])
def test_fitted_last_step_golden(args, want):
    assert training.fitted_last_step(*args) == want


def test_fitted_last_step_is_the_most_that_fits():
    rng = np.random.default_rng(0)
    for _ in range(500):
        step = int(rng.integers(0, 5000))
        remaining = float(rng.uniform(-100., 3000.))
        rate = float(rng.uniform(0.01, 5.))
        max_steps = int(rng.integers(1, 8000))
        got = training.fitted_last_step(step, remaining, rate, max_steps)
        assert got >= step
        if got > step:  # the steps it adds fit in what is left ...
            assert (got - step) * rate <= remaining + 1e-9
        if step <= got < max_steps:  # ... and one more would not
            assert (got - step + 1) * rate > remaining - 1e-9


# ------------------------------------------------------------------ TimeBudget, by hand
def test_budget_fits_after_settling_and_follows_a_slower_rate():
    b = training.TimeBudget(20., max_steps=100, settle_steps=2, refit_every=2)
    b.start(0, now=0.)
    assert b.after_step(1, 1.) is None          # settling (tracing, pipeline warm-up)
    assert b.after_step(2, 2.) is None          # the rate is measured from here
    assert b.stop_step() == 100                 # nothing fitted yet
    assert b.after_step(3, 3.) is None          # only every 2 steps
    assert b.after_step(4, 4.) == (16 + 4, 1.)  # 1 s/step, 20 - 4 = 16 s left
    assert b.stop_step() == 20
    # The machine gets slower: 3 s per step from step 4. Step 6 at t=10: rate (10-2)/4 = 2,
    # 10 s left -> 5 more steps.
    b.after_step(5, 7.)
    assert b.after_step(6, 10.) == (11, 2.)
    assert b.stop_step() == 11
    assert float(b.seconds_spent.numpy()) == 10.
    assert not b.spent(19.9) and b.spent(20.)


def test_budget_is_capped_by_max_steps():
    b = training.TimeBudget(1000., max_steps=30, settle_steps=0, refit_every=1)
    b.start(0, 0.)
    b.after_step(0, 0.)  # the mark: settle_steps=0 measures from the start
    assert b.after_step(1, 1.) == (30, 1.)  # 999 s would fit 999 more: capped at 30


def test_a_resumed_budget_goes_on_with_what_is_left():
    b = training.TimeBudget(30., max_steps=100)
    b.last_step.assign(20)
    b.seconds_spent.assign(10.)      # as restored: 10 steps in 10 s
    b.start(10, now=500.)            # the clock of the new process starts anywhere
    assert b.stop_step() == 30       # 20 s left at the checkpoint's 1 s/step
    assert b.elapsed(505.) == 15. and not b.spent(519.) and b.spent(520.)


def _finished(budget, max_steps, step=12):
    """A TimeBudget as restored from a run that ended at its fitted last step `step` after
    `step` seconds, fitted for 30 s and 100 steps."""
    b = training.TimeBudget(budget, max_steps)
    b.last_step.assign(step)
    b.seconds_spent.assign(float(step))
    b.fitted_for.assign([30., 100.])
    return b


def test_a_finished_budget_run_is_extended_only_by_a_larger_budget_or_max_steps():
    b = _finished(30., 100)
    b.start(12, now=0.)  # the same flags: finished, though 18 s would be left
    assert b.stop_step() == 12
    b = _finished(40., 100)
    b.start(12, now=0.)  # a larger budget: 28 s left at 1 s/step
    assert b.stop_step() == 40
    b = _finished(30., 20)
    b.start(12, now=0.)  # a larger max steps... within the budget left (18 s): 20
    assert b.stop_step() == 20
    b = _finished(12., 200)
    b.start(12, now=0.)  # nothing left of the budget: no more steps
    assert b.stop_step() == 12


def test_budget_refuses_a_non_positive_budget():
    for bad in (0., -1., float('inf'), float('nan')):
        with pytest.raises(ValueError, match='--max_train_secs'):
            training.TimeBudget(bad, 10)


def test_budget_entries_in_checkpoints_with_and_without_them(tmp_path):
    old = tf.train.Checkpoint(w=tf.Variable(1.)).save(str(tmp_path / 'old' / 'ckpt'))
    b = training.TimeBudget(60., max_steps=40)
    b.last_step.assign(7)
    b.seconds_spent.assign(3.)
    b.fitted_for.assign([30., 20.])
    assert b.recorded_in(old) is False   # a run from before the budget: counts from now
    b.reset()
    assert (int(b.last_step.numpy()), float(b.seconds_spent.numpy())) == (40, 0.)
    assert list(b.fitted_for.numpy()) == [60., 40.]
    b.last_step.assign(25)
    b.seconds_spent.assign(41.5)
    new = tf.train.Checkpoint(w=tf.Variable(1.), **b.checkpoint_items()).save(
        str(tmp_path / 'new' / 'ckpt'))
    c = training.TimeBudget(90., max_steps=50)
    assert c.recorded_in(new) is True
    # the Trainer restores them with the rest (its checkpoint holds checkpoint_items)
    tf.train.Checkpoint(w=tf.Variable(0.), **c.checkpoint_items()).restore(
        new).assert_existing_objects_matched()
    assert (int(c.last_step.numpy()), float(c.seconds_spent.numpy())) == (25, 41.5)
    assert list(c.fitted_for.numpy()) == [60., 40.]


# ------------------------------------------------------------------ the schedule follows
def test_cosine_follows_the_fitted_last_step_inside_a_compiled_function():
    last = tf.Variable(100, dtype=tf.int64)
    s = training.WarmupDecaySchedule(1.0, 'cosine', total_steps=1000, end_learning_rate=0.)
    s.follow(last)
    lr = tf.function(lambda step: s(step))
    # 0.5 * (1 + cos(pi * 25 / 100)) = 0.5 * (1 + 0.70711) = 0.85355
    assert float(lr(25)) == pytest.approx(0.853553, abs=1e-5)
    last.assign(50)  # refitted: the traced function reads the variable
    assert float(lr(25)) == pytest.approx(0.5, abs=1e-6)  # half way down
    assert float(lr(50)) == pytest.approx(0., abs=1e-6)
    assert float(lr(80)) == pytest.approx(0., abs=1e-6)   # past the end: stays at the end
    assert s.get_config()['total_steps'] == 50


# ------------------------------------------------------------------ the loop
def _trainer(train_dir, budget, max_steps, end_lr=0.001):
    keras.utils.set_random_seed(0)
    net = ssd_small.SSDNet()
    model = net.keras_model()
    schedule = training.WarmupDecaySchedule(0.01, 'cosine', total_steps=max_steps,
                                            end_learning_rate=end_lr)
    if budget is not None:
        schedule.follow(budget.last_step)
    trainer = training.Trainer(net, model, training.build_optimizer('adam', schedule),
                               tf.distribute.get_strategy(), str(train_dir), 4,
                               time_budget=budget)
    clock = [0.]
    trainer.clock = lambda: clock[0]
    anchors = net.anchors()
    records = synthetic.make_synthetic_examples(8, seed=3, image_size=64)

    def data(start=0):  # one second passes per batch
        ds = data_lib.build_dataset(
            records, lambda i, l, b, seed=None: prep.preprocess_for_train(
                i, l, b, out_shape=net.params.img_shape, seed=seed),
            lambda l, b: net.bboxes_encode(l, b, anchors), batch_size=4, seed=1, start=start)
        for batch in ds:
            clock[0] += 1.
            yield batch
    return trainer, data



def _saved(train_dir):
    r = tf.train.load_checkpoint(str(train_dir))
    return {k.split('/')[0]: r.get_tensor(k) for k in r.get_variable_to_shape_map()
            if k.split('/')[0] in ('global_step', 'fitted_last_step', 'train_seconds',
                                   'save_counter')}


@pytest.mark.slow
def test_a_fitted_run_ends_its_decay_in_the_budget_and_a_cut_run_does_not(tmp_path):
    # Fitted: 8 s at 1 s/step (measured from step 2, refitted every 2) -> ends at step 8,
    # with the learning rate at its end value, and the checkpoint of step 8 saved.
    budget = training.TimeBudget(8., max_steps=50, settle_steps=2, refit_every=2)
    trainer, data = _trainer(tmp_path / 'fit', budget, 50)
    progress = quiet_progress(50)
    assert trainer.train(data(), 50, progress=progress) == 'done'
    assert int(trainer.global_step.numpy()) == 8 and progress.total == 8
    assert trainer.current_learning_rate() == pytest.approx(0.001, rel=1e-4)
    assert _saved(tmp_path / 'fit') == {'global_step': 8, 'fitted_last_step': 8,
                                        'train_seconds': 8., 'save_counter': 1}
    # The same flags again: finished, no step more.
    budget = training.TimeBudget(8., max_steps=50, settle_steps=2, refit_every=2)
    trainer, data = _trainer(tmp_path / 'fit', budget, 50)
    assert trainer.restore() is not None
    assert trainer.train(data(start=8 * 4), 50, progress=quiet_progress(50, 8)) == 'done'
    assert int(trainer.global_step.numpy()) == 8
    assert any('ends at step 8' in m for m in progress.messages), progress.messages
    # Cut (--max_train_secs alone, as before): stops when 8 s are spent, at step 8, with the
    # decay planned for 50 steps barely begun: 0.001 + 0.009 * 0.5 * (1 + cos(pi * 8 / 50)).
    trainer, data = _trainer(tmp_path / 'cut', None, 50)
    assert trainer.train(data(), 50, progress=quiet_progress(50), max_seconds=8.) == 'time budget'
    assert int(trainer.global_step.numpy()) == 8
    assert trainer.current_learning_rate() == pytest.approx(
        0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 8 / 50)), rel=1e-4)


@pytest.mark.slow
def test_a_resumed_fitted_run_keeps_its_budget_and_an_older_run_resumes(tmp_path):
    # Stopped at step 3 (as by a signal or a crash: max_steps 3), then resumed by a new
    # process: 3 s spent, so 7 of the 10 s are left at 1 s/step -> ends at step 10.
    budget = training.TimeBudget(10., max_steps=50, settle_steps=2, refit_every=2)
    trainer, data = _trainer(tmp_path / 'run', budget, 50)
    trainer.train(data(), 3, progress=quiet_progress(3))
    budget = training.TimeBudget(10., max_steps=50, settle_steps=2, refit_every=2)
    trainer, data = _trainer(tmp_path / 'run', budget, 50)
    assert trainer.restore() is not None
    assert budget.stop_step() == 50 and float(budget.seconds_spent.numpy()) == 3.
    assert trainer.train(data(start=3 * 4), 50, progress=quiet_progress(50, 3)) == 'done'
    # one save per process, the counter restored with the rest
    assert _saved(tmp_path / 'run') == {'global_step': 10, 'fitted_last_step': 10,
                                        'train_seconds': 10., 'save_counter': 2}
    # A run saved without the budget's entries (before they existed) resumes with it; the
    # budget counts from the resume: 3 steps, then 6 s more at 1 s/step -> step 9.
    trainer, data = _trainer(tmp_path / 'older', None, 50)
    trainer.train(data(), 3, progress=quiet_progress(3))
    budget = training.TimeBudget(6., max_steps=50, settle_steps=2, refit_every=2)
    trainer, data = _trainer(tmp_path / 'older', budget, 50)
    assert trainer.restore() is not None
    assert trainer.train(data(start=3 * 4), 50, progress=quiet_progress(50, 3)) == 'done'
    assert _saved(tmp_path / 'older') == {'global_step': 9, 'fitted_last_step': 9,
                                          'train_seconds': 6., 'save_counter': 2}


# ------------------------------------------------------------------ train_ssd.py
@pytest.mark.slow
def test_train_ssd_records_the_fitted_run_and_refuses_to_resume_it_unfitted(tmp_path):
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train_dir = tmp_path / 'run'

    def train(*args):
        return subprocess.run(
            [sys.executable, os.path.join(root, 'train_ssd.py'), '--train_dir', str(train_dir),
             '--synthetic_num_train=16', '--synthetic_num_test=4', '--batch_size=4',
             '--log_every_n_steps=1', '--warmup_steps=1', '--eval_split_name='] + list(args),
            capture_output=True, text=True, timeout=600, cwd=root,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    r = train('--max_number_of_steps=14', '--max_train_secs=3600', '--fit_schedule_to_budget')
    assert r.returncode == 0, r.stderr[-3000:]
    # 10 settling steps, then fitted at step 20 (10 more): the run ends at 14 first
    assert 'time budget: training ended at step 14 after' in r.stderr
    assert json.loads((train_dir / 'config.json').read_text())['fit_schedule_to_budget'] is True
    saved = tf.train.load_checkpoint(str(train_dir))
    assert saved.get_tensor('fitted_last_step/.ATTRIBUTES/VARIABLE_VALUE') == 14
    assert 0 < saved.get_tensor('train_seconds/.ATTRIBUTES/VARIABLE_VALUE') < 3600
    r = train('--max_number_of_steps=16')  # without the flag: the schedule would jump
    assert r.returncode == 2
    assert '--fit_schedule_to_budget=True there, False now' in r.stderr, r.stderr[-2000:]
    r = train('--max_number_of_steps=16', '--max_train_secs=3600', '--fit_schedule_to_budget')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'step 16/16' in r.stderr  # more --max_number_of_steps: trains on
    # the checkpoint, with the budget's entries, is one every program reads
    e = subprocess.run([sys.executable, os.path.join(root, 'eval_ssd.py'),
                        f'--checkpoint_path={train_dir}', f'--eval_dir={tmp_path / "eval"}',
                        '--batch_size=4'], capture_output=True, text=True, timeout=600,
                       cwd=root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert e.returncode == 0, e.stderr[-3000:]
    assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['step'] == 16
