"""--patch_overlap: how the SSD paper chain's patch sampling measures a patch's overlap with a
box (boxes.coverage beside boxes.iou), its effect on small boxes (the IoU modes cannot crop
around them; coverage can), its resolution for new, resumed and older runs
(run_config.fill_unset: the paper's iou unless given or recorded), show_augmentation's
zoom-out choice (as training's) and the flag's errors."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import boxes as boxes_lib
from ssd_tf import run_config
from conftest import assert_train_flag_refused

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- boxes.coverage
def test_coverage_goldens():
    windows = [[0., 0., 0.5, 0.5],      # the top-left quarter
               [0., 0., 1., 1.]]        # the whole image
    boxes = [[0.25, 0.25, 0.75, 0.75],  # 0.5 x 0.5 centred: a quarter of it (0.25 x 0.25) in
             [0.1, 0.1, 0.2, 0.3],      # inside the quarter: all of it
             [0.6, 0.6, 0.9, 0.9],      # outside the quarter
             [0.3, 0.3, 0.3, 0.4]]      # zero area: covered by nothing
    got = boxes_lib.coverage(windows, boxes).numpy()
    np.testing.assert_allclose(got, [[0.25, 1., 0., 0.],
                                     [1., 1., 1., 0.]], atol=1e-6)
    # the whole image and a 4 % box: coverage 1, IoU 0.0016 (the window's size counts there)
    small = [[0.48, 0.48, 0.52, 0.52]]
    assert boxes_lib.coverage([[0., 0., 1., 1.]], small).numpy()[0, 0] == pytest.approx(1.)
    assert boxes_lib.iou([[0., 0., 1., 1.]], small).numpy()[0, 0] == pytest.approx(0.0016,
                                                                                 rel=1e-4)


def test_coverage_shapes_and_last_dimension():
    assert boxes_lib.coverage(np.zeros([3, 4]), np.zeros([5, 4])).shape == (3, 5)
    assert boxes_lib.coverage(np.zeros([0, 4]), np.zeros([2, 4])).shape == (0, 2)
    with pytest.raises(ValueError, match='last dimension of 4'):
        boxes_lib.coverage(np.zeros([1, 3]), np.zeros([1, 4]))


def test_coverage_is_at_least_the_iou_and_in_unit_range():
    """Property: the union holds the box, so intersection / box area >= intersection / union,
    and an intersection never exceeds the box."""
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.uniform(size=(2, 40, 2, 2)), axis=2)  # [40, lo/hi, y/x]
    windows = np.concatenate([a[:, 0], a[:, 1]], axis=1)
    boxes = np.concatenate([b[:, 0], b[:, 1]], axis=1)
    cov = boxes_lib.coverage(windows, boxes).numpy()
    iou = boxes_lib.iou(windows, boxes).numpy()
    assert np.all(cov >= iou - 1e-6) and np.all((cov >= 0.) & (cov <= 1. + 1e-6))
    assert np.any(cov > iou + 0.1)


# ------------------------------------------------------------------------ patch sampling
def _seeds(i):
    return [np.array([i, j], np.int64) for j in range(4)]


@pytest.mark.parametrize('mode', [0.1, 0.5, 0.9])
def test_iou_modes_cannot_crop_around_a_small_box_coverage_can(monkeypatch, mode):
    """A 4 % box (area 0.0016): a patch is at least 0.3 of the side (area 0.09), so its IoU
    with the box is at most 0.0016 / 0.09 = 0.018, under every IoU mode: the paper's sampling
    falls back to the whole image. By coverage, a patch that holds the box is valid: a real
    crop (smaller than the image) that holds at least `mode` of the box."""
    monkeypatch.setattr(prep, 'PATCH_MIN_IOUS', (mode,))
    box = np.array([[0.48, 0.48, 0.52, 0.52]], np.float32)
    rect = np.array([0., 0., 1., 1.], np.float32)
    for i in range(10):
        whole = prep._sample_patch(box, rect, _seeds(i), 'iou').numpy()
        np.testing.assert_array_equal(whole, [0., 0., 1., 1.])
        patch = prep._sample_patch(box, rect, _seeds(i), 'coverage').numpy()
        assert (patch[2] - patch[0]) * (patch[3] - patch[1]) < 1.
        assert boxes_lib.coverage(patch[None], box).numpy()[0, 0] >= mode - 1e-6


def test_both_measures_agree_on_the_whole_image_and_any_patch_modes(monkeypatch):
    """NaN (the whole image) and -inf (any patch with a box centre) do not measure overlap:
    the two measures give the same patch on the same seeds."""
    box = np.array([[0.48, 0.48, 0.52, 0.52], [0.1, 0.6, 0.3, 0.9]], np.float32)
    rect = np.array([0., 0., 1., 1.], np.float32)
    for mode in (float('nan'), float('-inf')):
        monkeypatch.setattr(prep, 'PATCH_MIN_IOUS', (mode,))
        for i in range(6):
            np.testing.assert_array_equal(
                prep._sample_patch(box, rect, _seeds(i), 'iou').numpy(),
                prep._sample_patch(box, rect, _seeds(i), 'coverage').numpy())


IMAGE = np.full((120, 160, 3), 90, np.uint8)
SMALL_BOX = np.array([[0.47, 0.47, 0.53, 0.53]], np.float32)  # 6 % of the side


def _magnified(overlap, seeds=range(40)):
    """Share of the seeds whose output shows the (kept, unclipped) small box larger than its
    own 6 %: the chain zoomed in (no zoom-out here: expand_max_ratio=1)."""
    count = 0
    for s in seeds:
        out = prep.preprocess_for_train(IMAGE, [1], SMALL_BOX, (64, 64), seed=[s, 3],
                                        expand_max_ratio=1., patch_overlap=overlap)
        b = out.bboxes.numpy()
        count += bool(len(b) and b[0, 2] - b[0, 0] > 0.06 * 1.05)
    return count / len(seeds)


def test_coverage_zooms_in_on_small_boxes_the_iou_rarely_does():
    """Of the 7 modes, by IoU only 'any patch' crops around a 6 % box (about 1 in 7); by
    coverage all but 'whole image' do (about 6 in 7)."""
    iou, coverage = _magnified('iou'), _magnified('coverage')
    assert iou < 0.35, iou
    assert coverage > 0.65, coverage
    assert _magnified(None) == iou  # None is the paper's IoU


@pytest.mark.parametrize('overlap', ['IoU', 'area', '', 3])
def test_bad_overlap_is_refused(overlap):
    with pytest.raises(ValueError, match='patch_overlap must be one of'):
        prep.preprocess_for_train(IMAGE, [1], SMALL_BOX, (64, 64), seed=[0, 1],
                                  patch_overlap=overlap)


def test_overlap_with_the_slim_chain_is_refused():
    with pytest.raises(ValueError, match='slim chain samples its crop'):
        prep.preprocess_for_train(IMAGE, [1], SMALL_BOX, (64, 64), seed=[0, 1],
                                  reference_compat=True, patch_overlap='iou')


# -------------------------------------------------------------------- runs and the flag
def test_a_resumed_run_trained_with_what_it_recorded_else_iou():
    def cfg(**kw):
        return run_config.RunConfig.from_dict(dict(model_name='ssd_small_320', **kw))
    assert run_config.resumed_patch_overlap(cfg(patch_overlap='coverage')) == 'coverage'
    assert run_config.resumed_patch_overlap(cfg(patch_overlap='iou')) == 'iou'
    assert run_config.resumed_patch_overlap(cfg()) == 'iou'
    assert run_config.resumed_patch_overlap(None) == 'iou'
    with pytest.raises(ValueError, match="config.json: patch_overlap='zoom' is not one of"):
        run_config.resumed_patch_overlap(cfg(patch_overlap='zoom'))


@pytest.mark.parametrize('previous, has_checkpoint, want', [
    (None, False, 'iou'),                                      # a new run: the paper's
    ({'patch_overlap': 'coverage'}, False, 'iou'),             # a failed start
    ({}, True, 'iou'),                                         # an older run: what it used
    ({'patch_overlap': 'coverage'}, True, 'coverage'),
    ({'patch_overlap': 'iou'}, True, 'iou'),
    (None, True, 'iou'),                                       # a checkpoint without config
])
def test_fill_unset_resolves_the_overlap_for_new_resumed_and_older_runs(previous,
                                                                        has_checkpoint, want):
    cfg = run_config.RunConfig(model_name='ssd_small_320')
    if previous is not None:
        previous = run_config.RunConfig.from_dict(dict(previous, model_name='ssd_small_320',
                                                       learning_rate=0.003))
    out = run_config.fill_unset(cfg, previous, has_checkpoint)
    assert out.patch_overlap == want
    for flag in ('iou', 'coverage'):
        given = run_config.fill_unset(cfg.replace(patch_overlap=flag), previous, has_checkpoint)
        assert given.patch_overlap == flag
    slim = run_config.fill_unset(cfg.replace(reference_compat=True), previous, has_checkpoint)
    assert slim.patch_overlap is None


def test_show_augmentation_chooses_the_zoom_out_as_training_does():
    """Before, an unset --expand_max_ratio showed the paper's 4 whatever the data; training
    chooses it from the boxes, and the grid now shows what training does."""
    from ssd_tf.cli import show_augmentation
    from ssd_tf.datasets import synthetic
    small = synthetic.make_synthetic_examples(6, objects='small')  # 3-10 % of the side
    shapes = synthetic.make_synthetic_examples(6)                  # 10-60 %
    ratio, note = show_augmentation.chosen_expand_max_ratio(small)
    assert ratio == 1. and '--expand_max_ratio=1 (the median training box is' in note
    assert show_augmentation.chosen_expand_max_ratio(shapes)[0] == 4.
    assert show_augmentation.chosen_expand_max_ratio(small, 2.) == (2., None)  # given: kept


@pytest.mark.parametrize('args, needle', [
    (['--reference_compat', '--patch_overlap=iou'], '--patch_overlap with --reference_compat'),
    (['--patch_overlap=area'], "--patch_overlap"),
])
def test_bad_flag_fails_at_once_naming_it(args, needle, tmp_path):
    assert_train_flag_refused(tmp_path, args, needle)


@pytest.mark.slow
def test_a_run_chooses_the_overlap_from_its_boxes_records_and_resumes_it(tmp_path):
    """Unset: the paper's iou, recorded (small synthetic objects too: not chosen from the
    boxes); given: coverage, said and recorded; a resume without the flag keeps the run's own
    (coverage); a run whose config.json predates the setting resumes with iou; a damaged value
    is refused naming it."""
    tiny = ['--synthetic_num_train=16', '--synthetic_num_test=8', '--batch_size=4',
            '--log_every_n_steps=1', '--warmup_steps=1', '--eval_split_name=',
            '--anchors=default', '--synthetic_objects=small']
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

    def train(train_dir, extra, ok=True):
        r = subprocess.run([sys.executable, str(ROOT / 'train_ssd.py'), '--train_dir',
                            str(train_dir)] + tiny + extra, capture_output=True, text=True,
                           timeout=600, cwd=ROOT, env=env)
        assert r.returncode == (0 if ok else 2), r.stderr[-3000:]
        if not ok:
            return r.stderr, None
        return r.stderr, run_config.RunConfig.read(str(train_dir)).patch_overlap
    err, overlap = train(tmp_path / 'small', ['--max_number_of_steps=1'])
    assert overlap == 'iou' and 'box coverage' not in err
    err, overlap = train(tmp_path / 'given', ['--max_number_of_steps=1',
                                              '--patch_overlap=coverage'])
    assert overlap == 'coverage'
    assert 'crops measured by box coverage (--patch_overlap=coverage)' in err
    err, overlap = train(tmp_path / 'given', ['--max_number_of_steps=2'])
    assert overlap == 'coverage' and 'resuming' in err
    # an older run: its config.json without the key
    path = tmp_path / 'given' / 'config.json'
    cfg = json.loads(path.read_text())
    del cfg['patch_overlap']
    path.write_text(json.dumps(cfg))
    err, overlap = train(tmp_path / 'given', ['--max_number_of_steps=3'])
    assert overlap == 'iou' and 'resuming' in err
    cfg['patch_overlap'] = 'zoom'
    path.write_text(json.dumps(cfg))
    err, _ = train(tmp_path / 'given', ['--max_number_of_steps=4'], ok=False)
    assert "patch_overlap='zoom' is not one of" in err and 'Traceback' not in err
    assert json.loads(path.read_text()) == cfg  # left as it was


def test_the_flags_values_are_the_preprocessings():
    """train_ssd.py writes the values out (its flags are defined before TensorFlow is
    imported): they must stay `prep.PATCH_OVERLAPS`, as show_augmentation's flag takes them."""
    import ast
    tree = ast.parse((ROOT / 'train_ssd.py').read_text())
    values = [ast.literal_eval(call.args[2]) for call in ast.walk(tree)
              if isinstance(call, ast.Call) and getattr(call.func, 'attr', '') == 'DEFINE_enum'
              and isinstance(call.args[0], ast.Constant) and call.args[0].value == 'patch_overlap']
    assert values == [list(prep.PATCH_OVERLAPS)]
