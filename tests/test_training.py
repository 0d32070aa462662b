"""Training: resume, signals, kill -9, distribution, mixed precision, NaN skipping, fine-tuning.

Command-line behaviour runs `train_ssd.py` in subprocesses on a tiny synthetic set; the step,
checkpoint and loss-scaling logic is tested in-process on `ssd_small`.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import quiet_progress
from nets import ssd_small
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import builder
from ssd_tf import data as data_lib
from ssd_tf import training
from ssd_tf.datasets import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--synthetic_num_train=64', '--synthetic_num_test=16', '--batch_size=8',
        '--log_every_n_steps=1', '--warmup_steps=2']


def run_train(args, timeout=600, env_extra=None, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1', **(env_extra or {}))
    return subprocess.run([sys.executable, str(ROOT / 'train_ssd.py')] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
                          **kw)


# train_ssd.py processes that a test reads line by line (Popen): killed after the test, so
# that a test failing mid-way (e.g. at its pytest timeout, waiting for a progress line that
# never comes) leaves no 100000-step training running.
_CHILDREN = []


@pytest.fixture(autouse=True)
def _kill_leftover_trainings():
    yield
    while _CHILDREN:
        p = _CHILDREN.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def start_train(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
    p = subprocess.Popen([sys.executable, str(ROOT / 'train_ssd.py')] + list(args),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=ROOT)
    _CHILDREN.append(p)
    return p


def latest_step(train_dir):
    latest = tf.train.latest_checkpoint(str(train_dir))
    return None if latest is None else int(latest.rsplit('-', 1)[1])


# ------------------------------------------------------------------ flags
@pytest.mark.slow
@pytest.mark.parametrize('args, needle', [
    (['--momentum=0.5'], '--momentum applies to --optimizer=momentum'),
    (['--checkpoint_exclude_scopes=a/b'], '--checkpoint_exclude_scopes needs --checkpoint_path'),
    (['--dataset_dir=/tmp'], '--dataset_dir is not used with --dataset_name=synthetic'),
    (['--no_such_flag=1'], 'no_such_flag'),
    (['--optimizer=adamm'], 'optimizer'),
    (['--reference_compat', '--label_smoothing=0.1'], '--label_smoothing with --reference_compat'),
    (['--class_balance=1.5'], '--class_balance must be in [0, 1]'),
    (['--reference_compat', '--class_balance=0.5'], '--class_balance with --reference_compat'),
    (['--fit_schedule_to_budget'], '--fit_schedule_to_budget needs --max_train_secs'),
    (['--fit_schedule_to_budget', '--max_train_secs=60', '--learning_rate_decay_type=fixed'],
     '--fit_schedule_to_budget fits the cosine decay, not --learning_rate_decay_type=fixed'),
    (['--max_train_secs=0'], '--max_train_secs must be a positive number of seconds'),
])
def test_bad_flags_fail_at_once_naming_them(args, needle, tmp_path):
    t0 = time.time()
    r = run_train(['--train_dir', str(tmp_path / 'r')] + args, timeout=120)
    assert r.returncode != 0
    assert needle in r.stderr + r.stdout
    assert not (tmp_path / 'r').exists()  # nothing was started
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_num_classes_disagreeing_with_data_is_an_error(tmp_path):
    r = run_train(['--train_dir', str(tmp_path / 'r'), '--num_classes=21'] + TINY)
    assert r.returncode == 2
    assert '--num_classes=21' in r.stderr and '4 classes + background' in r.stderr


# ------------------------------------------------------------------ in-process helpers
def _setup(tmp_path, steps_records=64, batch=8, optimizer='adam', lr=1e-3, seed=0):
    keras.utils.set_random_seed(seed)
    net = ssd_small.SSDNet()
    model = net.keras_model()
    opt = training.build_optimizer(optimizer, lr)
    trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(),
                               str(tmp_path), batch)
    anchors = net.anchors()
    records = synthetic.make_synthetic_examples(steps_records, seed=3, image_size=96)

    def dataset(start=0):
        return data_lib.build_dataset(
            records, lambda i, l, b, seed=None: prep.preprocess_for_train(
                i, l, b, out_shape=net.params.img_shape, seed=seed),
            lambda l, b: net.bboxes_encode(l, b, anchors), batch_size=batch, seed=1,
            start=start)
    return net, model, opt, trainer, dataset



def _opt_state(opt):
    return [v.numpy().copy() for v in opt.variables]


@pytest.mark.slow
def test_resume_gives_same_step_optimizer_state_and_weights(tmp_path):
    # Uninterrupted: 4 steps.
    _, model_a, opt_a, tr_a, ds_a = _setup(tmp_path / 'a')
    tr_a.train(ds_a(), 4, progress=quiet_progress(4))
    # Interrupted after 2 steps, then a fresh process-like restart: new objects, restore, resume
    # the data stream at the saved position.
    _, _, opt_b, tr_b, ds_b = _setup(tmp_path / 'b')
    tr_b.train(ds_b(), 2, progress=quiet_progress(2))
    saved_state = _opt_state(opt_b)
    _, model_c, opt_c, tr_c, ds_c = _setup(tmp_path / 'b')
    model_c.set_weights([np.zeros_like(w) for w in model_c.get_weights()])  # restored over
    assert tr_c.restore() is not None
    assert int(tr_c.global_step.numpy()) == 2
    for x, y in zip(saved_state, _opt_state(opt_c)):
        np.testing.assert_array_equal(x, y)
    tr_c.train(ds_c(start=2 * 8), 4, progress=quiet_progress(4, 2))
    assert int(tr_c.global_step.numpy()) == 4
    assert int(opt_c.iterations.numpy()) == 4
    for wa, wc in zip(model_a.get_weights(), model_c.get_weights()):
        np.testing.assert_allclose(wa, wc, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_nan_in_data_is_skipped_then_repeated_nans_stop(tmp_path):
    net, model, opt, trainer, ds = _setup(tmp_path)
    batches = list(ds().take(3))
    images, targets = batches[1]
    # NaN box targets (NaN pixels are not enough: the graph's fused conv+ReLU maps NaN to 0)
    glocs = tuple(tf.fill(tf.shape(g), float('nan')) for g in targets['glocalisations'])
    poisoned = (images, dict(targets, glocalisations=glocs))
    seen = []
    trainer.train([batches[0]], 1, progress=quiet_progress(1))
    before = [w.copy() for w in model.get_weights()]
    iters = int(opt.iterations.numpy())
    progress = quiet_progress(3, 1)
    trainer.train([poisoned, batches[2]], 3, progress=progress,
                  on_step=lambda s, l: seen.append(s))
    assert any('non-finite loss at step 2' in m for m in progress.messages)
    assert seen == [3]  # step 2 skipped, step 3 trained
    assert int(opt.iterations.numpy()) == iters + 1  # one real update
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # Several in a row: stop, keep the last good checkpoint.
    good = trainer.save()
    with pytest.raises(training.NonFiniteLossError, match='last good checkpoint is kept'):
        trainer.train([poisoned] * 5, 100, max_consecutive_nonfinite=3, progress=quiet_progress(100, 4))
    assert trainer.manager.latest_checkpoint == good


@pytest.mark.slow
def test_mixed_precision_steps_are_finite(tmp_path):
    for policy in ('mixed_float16', 'mixed_bfloat16'):
        keras.mixed_precision.set_dtype_policy(policy)
        try:
            net = ssd_small.SSDNet()
            model = net.keras_model()
            opt = training.build_optimizer('adam', 1e-3, mixed_precision=policy)
            trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(),
                                       str(tmp_path / policy), 4)
            # The policy reaches the network: every convolution computes in the policy's
            # half type, while the heads' reshapes and softmaxes stay in float32.
            half = {'mixed_float16': 'float16', 'mixed_bfloat16': 'bfloat16'}[policy]
            convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
            assert convs and {l.compute_dtype for l in convs} == {half}, policy
            assert {l.compute_dtype for l in model.layers
                    if isinstance(l, keras.layers.Softmax)} == {'float32'}
            records = synthetic.make_synthetic_examples(8, seed=0, image_size=96)
            anchors = net.anchors()
            ds = data_lib.build_dataset(
                records, lambda i, l, b: prep.preprocess_for_eval(
                    i, l, b, out_shape=net.params.img_shape)[:3],
                lambda l, b: net.bboxes_encode(l, b, anchors), batch_size=4, seed=0)
            losses = trainer.train_step(next(iter(ds)))
            assert all(np.isfinite(float(v)) for v in losses.values()), (policy, losses)
            assert float(losses['total']) > 0
        finally:
            keras.mixed_precision.set_dtype_policy('float32')


def test_count_class_positives_golden():
    class Net:  # count_class_positives reads only the number of classes
        class params:
            num_classes = 4
    # two layers: labels 1, 1, 3 and background, a label 7 outside the 4 classes and a -1
    # (the encoder's ignored anchors) -> background
    layers = [np.array([[[[1], [0]], [[3], [7]]]], np.int64),  # [1, 2, 2, 1]
              np.array([[[[1, -1, 0]]]], np.int64)]           # [1, 1, 1, 3]
    got = training.count_class_positives(Net, {'gclasses': [tf.constant(x) for x in layers]})
    np.testing.assert_array_equal(got.numpy(), [4., 2., 0., 1.])
    assert training.global_class_positives(Net, {'gclasses': layers},
                                           training.LossConfig()) is None


def test_schedule_warmup_and_decays():
    s = training.WarmupDecaySchedule(1.0, 'cosine', total_steps=100, warmup_steps=10,
                                     end_learning_rate=0.)
    assert float(s(0)) == pytest.approx(0.1)  # (0 + 1) / 10
    assert float(s(50)) == pytest.approx(0.5, abs=1e-6)  # half way down the cosine
    assert float(s(100)) == pytest.approx(0., abs=1e-7)
    e = training.WarmupDecaySchedule(0.01, 'exponential', decay_steps=10, decay_factor=0.5)
    assert float(e(25)) == pytest.approx(0.0025)  # 0.01 * 0.5 ** floor(25 / 10)
    p = training.WarmupDecaySchedule(1.0, 'polynomial', decay_steps=10, end_learning_rate=0.1)
    assert float(p(5)) == pytest.approx(0.55) and float(p(50)) == pytest.approx(0.1)


# ------------------------------------------------------------------ subprocess behaviour
# Reads the progress of a --max_number_of_steps=100000 run: a changed line format must fail
# here by name, not wait for the run (three train_ssd.py runs: well under this on 2 cores).
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_saves_kill9_loses_nothing_and_resume_continues(tmp_path):
    train_dir = tmp_path / 'run'
    args = ['--train_dir', str(train_dir), '--max_number_of_steps=100000',
            '--eval_split_name=', '--save_interval_secs=100000'] + TINY
    # 1. SIGTERM: a checkpoint at the current step, clean exit.
    p = start_train(args)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith('step 3/'):
            p.send_signal(signal.SIGTERM)
            break
    out = ''.join(lines) + p.stdout.read()
    assert p.wait(timeout=120) == 0, out
    assert 'SIGTERM received: checkpoint saved at step' in out
    step1 = latest_step(train_dir)
    assert step1 is not None and step1 >= 3
    # 2. Resume (a --checkpoint_path is reported as not used), then kill -9 after some saves.
    p = start_train(args + ['--save_every_n_steps=2', '--checkpoint_path=/no/such/ckpt'])
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith(f'step {step1 + 5}/'):
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    out = ''.join(lines)
    assert f'resuming from' in out and f'(step {step1})' in out, out
    assert '--checkpoint_path=/no/such/ckpt is NOT used' in out
    step2 = latest_step(train_dir)
    assert step2 is not None and step2 > step1
    # the newest checkpoint is complete and loads
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(train_dir)))
    assert 'global_step/.ATTRIBUTES/VARIABLE_VALUE' in reader.get_variable_to_shape_map()
    assert int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')) == step2
    # 3. Resume to the end.
    final = step2 + 3
    r = run_train(args[:2] + [f'--max_number_of_steps={final}'] + args[3:])
    assert r.returncode == 0, r.stderr
    assert f'(step {step2})' in r.stderr
    assert latest_step(train_dir) == final
    config = json.loads((train_dir / 'config.json').read_text())
    assert config['model_name'] == 'ssd_small' and config['num_classes'] == 5


@pytest.mark.slow
def test_resume_with_changed_model_is_refused(tmp_path):
    train_dir = tmp_path / 'run'
    r = run_train(['--train_dir', str(train_dir), '--max_number_of_steps=1',
                   '--eval_split_name='] + TINY)
    assert r.returncode == 0, r.stderr
    r = run_train(['--train_dir', str(train_dir), '--max_number_of_steps=2',
                   '--eval_split_name=', '--seed=5'] + TINY)
    assert r.returncode == 2 and '--seed=0 there, 5 now' in r.stderr


# ------------------------------------------------------------------ distribution
def _dist(mode, out, weights, env=None, wait=True, class_balance=0.):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    e.update(env or {})
    cmd = [sys.executable, str(ROOT / 'tests' / 'dist_check.py'), mode, str(out), str(weights),
           str(class_balance)]
    if not wait:
        return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return _dist_result(out)


def _dist_result(out):
    """dist_check.py's result: the JSON, with 'weights' the updated weights (list)."""
    result = json.loads(pathlib.Path(out).read_text())
    w = np.load(str(out) + '.npz')
    result['weights'] = [w[f'w{i}'] for i in range(len(w.files))]
    return result


def _free_ports(n):
    import socket
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# One SGD step from the same weights: measured max elementwise difference 2.4e-7 (mirrored
# and multi-worker vs one replica, weights up to 1.3: 1-2 float32 ulps of reduction order);
# 1e-6 leaves 4x for other CPUs while a 2x update error on a kernel moving by 2e-4 fails.
DIST_ATOL = 1e-6


def _assert_same_step(single, other, replicas):
    assert other['replicas'] == replicas
    for k, v in single['losses'].items():
        assert other['losses'][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert len(other['weights']) == len(single['weights'])
    for i, (got, want) in enumerate(zip(other['weights'], single['weights'])):
        np.testing.assert_allclose(got, want, rtol=0., atol=DIST_ATOL, err_msg=f'weight {i}')


@pytest.mark.slow
def test_mirrored_and_multi_worker_equal_single_replica(tmp_path):
    weights = tmp_path / 'w0.npz'
    single = _dist('single', tmp_path / 'single.json', weights)
    assert single['replicas'] == 1 and single['losses']['total'] > 0
    mirrored = _dist('mirrored', tmp_path / 'mirrored.json', weights)
    _assert_same_step(single, mirrored, 2)
    ports = _free_ports(2)
    cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
    procs = [_dist('multi_worker', tmp_path / 'mw.json', weights, wait=False, env={
        'TF_CONFIG': json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': i}})})
        for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    _assert_same_step(single, _dist_result(tmp_path / 'mw.json'), 2)


@pytest.mark.slow
def test_class_balance_weighs_by_the_global_batch_on_two_replicas(tmp_path):
    # The class counts are summed over the replicas before the weights are made: each
    # replica's half of the batch holds other class shares, so weights from local counts
    # would give another step.
    weights = tmp_path / 'w0.npz'
    plain = _dist('single', tmp_path / 'plain.json', weights)
    single = _dist('single', tmp_path / 'single.json', weights, class_balance=1.)
    assert single['losses']['cross_entropy_pos'] != pytest.approx(
        plain['losses']['cross_entropy_pos'], rel=1e-4)
    assert single['losses']['localization'] == pytest.approx(plain['losses']['localization'],
                                                             rel=1e-5)
    mirrored = _dist('mirrored', tmp_path / 'mirrored.json', weights, class_balance=1.)
    _assert_same_step(single, mirrored, 2)


# ------------------------------------------------------------------ fine-tuning
@pytest.mark.slow
def test_fine_tune_from_slim_checkpoint_with_another_class_count(tmp_path):
    from nets import ssd_vgg_keras
    # A slim-named checkpoint of the same network trained on 21 classes (VOC).
    net21 = ssd_small.SSDNet(ssd_small.SSDNet.default_params._replace(num_classes=21))
    model21 = net21.keras_model()
    varmap = ssd_vgg_keras.slim_variable_map(model21, model_scope='ssd_small')
    prefix = str(tmp_path / 'voc' / 'model.ckpt-1000')
    os.makedirs(tmp_path / 'voc')
    names = sorted(varmap)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                      tensors=[varmap[n].value for n in names])
    base = ['--max_number_of_steps=2', '--eval_split_name=', '--checkpoint_path', prefix] + TINY
    # Without excluding the class heads: a clear error naming them and the flag.
    r = run_train(['--train_dir', str(tmp_path / 'a')] + base)
    assert r.returncode == 2
    assert 'ssd_small/block4_box/conv_cls/weights' in r.stderr
    assert '--checkpoint_exclude_scopes' in r.stderr
    # Excluding them: everything else restored, trains on the 5-class synthetic set.
    heads = ','.join(f'ssd_small/{b}_box/conv_cls' for b in net21.params.feat_layers)
    r = run_train(['--train_dir', str(tmp_path / 'b'), '--checkpoint_exclude_scopes', heads]
                  + base)
    assert r.returncode == 0, r.stderr
    assert 'initialised from --checkpoint_path' in r.stderr
    assert 'skipped  ssd_small/block4_box/conv_cls/weights' in r.stderr
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / 'b')))
    assert int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')) == 2


# ------------------------------------------------------------------ one evaluation
@pytest.mark.slow
def test_a_bfloat16_run_reports_what_eval_ssd_reports_on_its_checkpoint(tmp_path):
    """The training's final report and eval_ssd.py's on the final checkpoint are one
    evaluation: eval_ssd.py builds the network in float32, and so does the final report of a
    run trained in mixed_bfloat16 (before, it evaluated in bfloat16 and its mAP differed from
    eval_ssd.py's in the third or fourth digit)."""
    run = tmp_path / 'run'
    r = run_train(['--train_dir', str(run), '--max_number_of_steps=60',
                   '--synthetic_num_train=300', '--synthetic_num_test=60',
                   '--log_every_n_steps=30', '--save_summaries_secs=0',
                   '--mixed_precision=mixed_bfloat16', '--allow_slow_bfloat16'], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'precision: mixed_bfloat16' in r.stderr
    e = subprocess.run([sys.executable, str(ROOT / 'eval_ssd.py'), f'--checkpoint_path={run}',
                        f'--eval_dir={tmp_path / "eval"}', '--batch_size=16'],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert e.returncode == 0, e.stderr[-3000:]
    trained = json.loads((run / 'eval' / 'metrics.json').read_text())
    evaluated = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert trained['num_detections'] == evaluated['num_detections']
    assert trained['voc07'] == evaluated['voc07'] and trained['voc12'] == evaluated['voc12']
    assert json.loads((run / 'final_metrics.json').read_text())['voc07_map'] == \
        evaluated['voc07']['map']


# ------------------------------------------------------------------ it learns
def _untrained_map(num_test):
    from ssd_tf import evaluation
    from ssd_tf.datasets import factory
    keras.utils.set_random_seed(0)
    net = ssd_small.SSDNet()
    model = net.keras_model()
    records, label_map, _ = factory.load_records('synthetic', None, 'test',
                                                 num_images=num_test, seed=0)
    ds = data_lib.build_eval_dataset(
        records, lambda i, l, b: prep.preprocess_for_eval(i, l, b,
                                                          out_shape=net.params.img_shape),
        batch_size=16)
    run = evaluation.run_evaluation(evaluation.keras_detector(model, net), ds,
                                    net.params.num_classes, class_names=label_map.names)
    return evaluation.compute_metrics(run)['voc07']['map']


@pytest.mark.slow
def test_short_default_run_clearly_beats_untrained(tmp_path):
    # The default job (ssd_small, synthetic shapes, paper augmentation), shortened: 300 steps.
    r = run_train(['--train_dir', str(tmp_path / 'run'), '--max_number_of_steps=300',
                   '--synthetic_num_train=1000', '--synthetic_num_test=100',
                   '--log_every_n_steps=50', '--save_summaries_secs=0',
                   '--validation_split=test', '--eval_every_n_steps=150'], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'VOC07 mAP (test, 100 images)' in r.stdout
    # the shapes (10-60 % of the side) keep the paper's zoom-out, chosen from the boxes
    assert "augmentation: --expand_max_ratio=4 (the median training box is" in r.stderr
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['expand_max_ratio'] == 4.
    trained = json.loads((tmp_path / 'run' / 'final_metrics.json').read_text())['voc07_map']
    untrained = _untrained_map(100)
    assert untrained < 0.05
    # measured: about 0.20 after 300 steps against 0.0015 untrained
    assert trained > 0.1 and trained > 10 * untrained + 0.05, (trained, untrained)
    # the report a user looks at
    for f in ('metrics.json', 'pr_curves.png', 'detections.png'):
        assert (tmp_path / 'run' / 'eval' / f).exists()
    # TensorBoard: loss terms, learning rate, images/s, pictures, periodic validation mAP
    tags = {}
    for f in (tmp_path / 'run').glob('events.out.tfevents.*'):
        for e in tf.compat.v1.train.summary_iterator(str(f)):
            for v in e.summary.value:
                tags.setdefault(v.tag, set()).add(e.step)
    for tag in ('losses/cross_entropy_pos', 'losses/cross_entropy_neg', 'losses/localization',
                'learning_rate', 'images_per_second', 'ground_truth_vs_predictions'):
        assert tag in tags, sorted(tags)
    assert {150, 300} <= tags['eval/mAP_voc07']


# ------------------------------------------------------------------ the optimizer and the loop
@pytest.mark.slow
def test_optimizer_config_and_the_compiled_step_exist_before_use(tmp_path):
    c = training.OptimizerConfig(optimizer='momentum', momentum=0.5, clip_gradient_norm=2.)
    opt = training.build_optimizer(c, 0.1)
    assert isinstance(opt.inner_optimizer, keras.optimizers.SGD)
    assert opt.inner_optimizer.momentum == 0.5 and opt.inner_optimizer.clipnorm == 2.
    # the old call path: a name and keyword flags
    old = training.build_optimizer('rmsprop', 0.1, rmsprop_decay=0.5, clipnorm=3.)
    assert old.inner_optimizer.rho == 0.5 and old.inner_optimizer.clipnorm == 3.
    from ssd_tf import run_config
    cfg = run_config.RunConfig.from_dict({'optimizer': 'adam', 'adam_beta1': 0.8,
                                          'moving_average_decay': None})
    assert training.OptimizerConfig.from_run_config(cfg) == training.OptimizerConfig(
        optimizer='adam', adam_beta1=0.8)
    _, _, _, trainer, _ = _setup(tmp_path)
    assert callable(trainer._compiled_loss_and_grads)  # assigned in __init__, not later


def test_loss_scale_stays_one_outside_float16():
    # 50 skipped (non-finite) steps, then a normal one: the update is exactly that of a fresh
    # optimizer (Keras' LossScaleOptimizer halved the scale at each skip: 2**-50 here).
    def make():
        v = tf.Variable([1., -2., 3.])
        return v, training.build_optimizer('adam', 0.1)

    def step(v, opt, c):
        with tf.GradientTape() as tape:
            scaled = opt.scale_loss(tf.reduce_sum(v * c))
        opt.apply_gradients([(tape.gradient(scaled, v), v)])

    v, opt = make()
    for _ in range(50):
        step(v, opt, tf.constant([float('nan'), 1., 1.]))
    np.testing.assert_array_equal(v.numpy(), [1., -2., 3.])  # skipped
    assert float(opt.scale_loss(tf.constant(1.))) == 1.
    fresh_v, fresh = make()
    tiny = tf.constant([1e-30, -2e-30, 0.5])  # small gradients must not flush to zero either
    step(v, opt, tiny)
    step(fresh_v, fresh, tiny)
    np.testing.assert_array_equal(v.numpy(), fresh_v.numpy())
    assert not np.array_equal(v.numpy(), [1., -2., 3.])


class _FailingWriter:
    """A summary writer on a full disk."""

    def as_default(self, step=None):
        raise OSError(28, 'No space left on device')


@pytest.mark.slow
@pytest.mark.parametrize('fault', ['callback', 'summary', 'data'])
def test_an_exception_in_the_loop_saves_the_last_good_step_first(tmp_path, fault):
    _, _, _, trainer, ds = _setup(tmp_path)
    batches = list(ds().take(2))

    def data():
        yield from batches
        raise tf.errors.InvalidArgumentError(None, None, 'bad record 17 of x.tfrecord')

    def on_step(step, losses):
        if step == 2:
            raise ValueError('--validation_split=tset: no such split')
    kwargs = {'callback': dict(on_step=on_step), 'summary': dict(summary_writer=_FailingWriter(),
                                                                 log_every_n_steps=2),
              'data': {}}[fault]
    progress = quiet_progress(10)
    with pytest.raises((ValueError, OSError, tf.errors.InvalidArgumentError)):
        trainer.train(data(), 10, save_interval_secs=1e9, progress=progress, **kwargs)
    assert latest_step(tmp_path) == 2  # steps 1 and 2 completed, none saved before the fault
    assert any('checkpoint of step 2 saved' in m for m in progress.messages)


@pytest.mark.slow
@pytest.mark.parametrize('subset', [False, True], ids=['all', 'trainable_scopes'])
def test_moving_averages_in_every_checkpoint_and_the_final_weights(tmp_path, subset):
    from ssd_tf import run_config
    keras.utils.set_random_seed(0)
    net = ssd_small.SSDNet()
    model = net.keras_model()
    opt = training.build_optimizer('adam', 1e-2, moving_average_decay=0.5)
    trainable = model.trainable_variables[-4:] if subset else None
    trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(), str(tmp_path),
                               8, trainable_variables=trainable)
    _, _, _, _, ds = _setup(tmp_path / 'data')
    snap = {}

    def on_step(step, losses):
        snap[step] = ([a.numpy().copy() for a in opt.inner_optimizer
                       ._model_variables_moving_average],
                      [v.numpy().copy() for v in trainer.trainable_variables])
    assert trainer.train(ds(), 3, save_every_n_steps=2, on_step=on_step,
                         progress=quiet_progress(3)) == 'done'
    mid, final = str(tmp_path / 'ckpt-2'), str(tmp_path / 'ckpt-3')
    averages, raw = snap[2]
    assert any(not np.array_equal(a, r) for a, r in zip(averages, raw))
    index = [i for i, v in enumerate(model.trainable_variables)
             if any(v is t for t in trainer.trainable_variables)]
    # a mid-run checkpoint: raw weights as the model, the averages beside them
    fresh = net.keras_model()
    builder.restore_model(fresh, 'tf2', mid)
    for i, r in zip(index, raw):
        np.testing.assert_array_equal(fresh.trainable_variables[i].numpy(), r)
    builder.restore_model(fresh, 'tf2', mid, moving_average=True)
    for i, a in zip(index, averages):
        np.testing.assert_array_equal(fresh.trainable_variables[i].numpy(), a)
    # the final checkpoint: the averages are the model's weights (eval and export use them)
    final_averages = [a.numpy() for a in opt.inner_optimizer._model_variables_moving_average]
    fresh = net.keras_model()
    builder.restore_model(fresh, 'tf2', final)
    for i, a in zip(index, final_averages):
        np.testing.assert_array_equal(fresh.trainable_variables[i].numpy(), a)


# ------------------------------------------------------------------ the run (subprocesses)
def _snapshot(train_dir):
    # .train_lock (ssd_tf.run_lock) names whichever run last held the directory: not run data
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in pathlib.Path(train_dir).iterdir() if p.name != '.train_lock'}


@pytest.mark.slow
def test_class_balance_run_says_so_and_records_it(tmp_path):
    train_dir = tmp_path / 'run'
    r = run_train(['--train_dir', str(train_dir), '--max_number_of_steps=2',
                   '--eval_split_name=', '--class_balance=0.5'] + TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'loss: class-balanced weights (--class_balance=0.5' in r.stderr
    assert json.loads((train_dir / 'config.json').read_text())['class_balance'] == 0.5
    assert 'step 2/2' in r.stderr and 'nan' not in r.stderr.split('step 2/2')[1].split('\n')[0]


@pytest.mark.slow
def test_refused_resume_names_the_flag_and_writes_nothing(tmp_path):
    train_dir = tmp_path / 'run'
    base = ['--train_dir', str(train_dir), '--max_number_of_steps=1', '--eval_split_name=']
    # trained in bfloat16 (--allow_slow_bfloat16: also on CPUs without it) ...
    r = run_train(base + TINY + ['--mixed_precision=mixed_bfloat16', '--allow_slow_bfloat16'])
    assert r.returncode == 0, r.stderr
    assert json.loads((train_dir / 'config.json').read_text())['mixed_precision'] == \
        'mixed_bfloat16'
    before = _snapshot(train_dir)
    for flag, needle in (('--optimizer=sgd', '--optimizer=adam there, sgd now'),
                         ('--trainable_scopes=ssd_small/block4_box',
                          '--trainable_scopes=None there, ssd_small/block4_box now'),
                         ('--mixed_precision=mixed_float16',  # float32/bfloat16 (auto) then
                          ' there, mixed_float16 now')):
        r = run_train(base[:2] + ['--max_number_of_steps=3', '--eval_split_name='] +
                      flag.split() + TINY)  # --allow_slow_bfloat16: also on CPUs without bf16
        assert r.returncode == 2 and needle in r.stderr, (flag, r.stderr[-2000:])
        # labels.txt and config.json unchanged, no new checkpoint, no new event file
        assert _snapshot(train_dir) == before, flag
    # ... resumes on a machine without bfloat16 (oneDNN capped below AVX512-BF16: what
    # ssd_tf.hardware reads as 'no'), where --mixed_precision=auto takes float32
    r = run_train(base[:2] + ['--max_number_of_steps=2', '--eval_split_name='] + TINY,
                  env_extra={'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'precision: float32 (--mixed_precision=auto: bfloat16 arithmetic is no' in r.stderr
    assert 'resuming the run trained in mixed_bfloat16 in float32' in r.stderr
    assert 'step 2/2' in r.stderr
    assert json.loads((train_dir / 'config.json').read_text())['mixed_precision'] == 'float32'


# A --max_number_of_steps=100000 run that must stop before step 1: fails by name if not.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_typo_in_validation_split_fails_before_step_one(tmp_path):
    train_dir = tmp_path / 'run'
    r = run_train(['--train_dir', str(train_dir), '--max_number_of_steps=100000',
                   '--validation_split=tset', '--eval_every_n_steps=2'] + TINY)
    assert r.returncode == 2
    assert '--validation_split=tset' in r.stderr, r.stderr[-2000:]
    assert 'step 1/' not in r.stderr
    assert latest_step(train_dir) is None


@pytest.mark.slow
def test_moving_average_with_trainable_scopes_for_eval_during_training_and_export(tmp_path):
    from absl import flags as absl_flags
    import eval_ssd
    from nets import nets_factory
    from ssd_tf.export import saved_model as export
    train_dir = tmp_path / 'run'
    r = run_train(['--train_dir', str(train_dir), '--max_number_of_steps=3',
                   '--eval_split_name=test', '--moving_average_decay=0.5',
                   '--trainable_scopes=ssd_small/block4_box', '--save_every_n_steps=2'] + TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'VOC07 mAP (test' in r.stdout  # the final evaluation is no longer lost

    def averages(prefix):
        reader = tf.train.load_checkpoint(prefix)
        names = [n for n in reader.get_variable_to_shape_map()
                 if n.startswith('moving_average/')]
        assert names
        return {int(n.split('/')[2]): reader.get_tensor(n) for n in names}

    # eval_ssd --wait_for_checkpoints --moving_average_decay on a checkpoint written during
    # training: the averages are evaluated, not the raw weights
    mid = str(train_dir / 'ckpt-2')
    absl_flags.FLAGS.unparse_flags()
    absl_flags.FLAGS(['eval_ssd', f'--checkpoint_path={train_dir}', '--wait_for_checkpoints',
                      f'--eval_dir={tmp_path / "eval"}', '--synthetic_num_images=2',
                      '--moving_average_decay=0.5'])
    try:
        e = eval_ssd.Evaluation()
        e.restore(mid, 'tf2')
        for i, value in averages(mid).items():
            np.testing.assert_array_equal(e.model.trainable_variables[i].numpy(), value)
    finally:
        absl_flags.FLAGS.unparse_flags()
    # export: the final checkpoint's weights are the averages
    built = builder.load_model(str(train_dir))
    model, path = built.model, built.path
    assert path.endswith('ckpt-3')
    for i, value in averages(path).items():
        np.testing.assert_array_equal(model.trainable_variables[i].numpy(), value)


def _start_workers(tmp_path, args):
    """Two train_ssd.py workers of a localhost multi-worker cluster; their TMPDIR is
    tmp_path/tmp (where a non-chief keeps its own checkpoints)."""
    ports = _free_ports(2)
    cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
    (tmp_path / 'tmp').mkdir(exist_ok=True)
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
                   TMPDIR=str(tmp_path / 'tmp'), TF_CONFIG=json.dumps(
                       {'cluster': cluster, 'task': {'type': 'worker', 'index': i}}))
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / 'train_ssd.py'), '--strategy=multi_worker'] + args,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT))
    _CHILDREN.extend(procs)
    return procs


# Reads the progress of a --max_number_of_steps=100000 run: a changed line format must fail
# here by name, not wait for the run (two pairs of workers: well under this on 2 cores).
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_multi_worker_only_the_chief_writes_and_sigterm_stops_all(tmp_path):
    train_dir = tmp_path / 'run'
    args = ['--train_dir', str(train_dir), '--eval_split_name=', '--save_summaries_secs=100000',
            '--save_interval_secs=100000'] + TINY
    # 1. A short run: checkpoints, config, labels and events of the chief only.
    procs = _start_workers(tmp_path, args + ['--max_number_of_steps=2'])
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert latest_step(train_dir) == 2
    assert len(list(train_dir.glob('events.out.tfevents.*'))) == 1
    assert {'config.json', 'labels.txt', 'checkpoint'} <= {p.name for p in train_dir.iterdir()}
    assert f"not the chief: checkpoints go to {tmp_path / 'tmp'}" in outs[1]
    assert 'not the chief' not in outs[0]
    assert not list((tmp_path / 'tmp').iterdir())  # the other worker's directory is removed
    # 2. SIGTERM to the non-chief worker: both stop at the same step, neither hangs.
    procs = _start_workers(tmp_path, args + ['--max_number_of_steps=100000'])
    lines = []
    for line in procs[1].stdout:
        lines.append(line)
        if line.startswith('step 5/'):
            procs[1].send_signal(signal.SIGTERM)
            break
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [''.join(lines) + outs[1], outs[0]]
    assert 'SIGTERM received: checkpoint saved' in outs[0]  # the chief, told by the all-reduce
    assert latest_step(train_dir) >= 5
    assert not list((tmp_path / 'tmp').iterdir())
