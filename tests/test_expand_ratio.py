"""--expand_max_ratio: the zoom-out bound of the SSD paper's augmentation (preprocessing), the
network defaults (4, the paper's; 1 for ssd_small_320), its resolution for new, resumed and
older runs (run_config, train_ssd.check_resume), and the flag's errors."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from nets import nets_factory
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One 120 x 160 grey image with a box in the middle, away from every edge.
IMAGE = np.full((120, 160, 3), 90, np.uint8)
BOX = np.array([[0.4, 0.4, 0.6, 0.6]], np.float32)  # 0.2 x 0.2 of the image
SEEDS = range(40)


def _train(seed, ratio, reference_compat=False):
    return prep.preprocess_for_train(IMAGE, [1], BOX, (64, 64), seed=[seed, 7],
                                     expand_max_ratio=ratio, reference_compat=reference_compat)


def _inner_sizes(ratio):
    """Output (height, width) of the box over the seeds, where it was kept whole (not clipped
    by the patch: off the output's border)."""
    sizes = []
    for s in SEEDS:
        out = _train(s, ratio)
        b = out.bboxes.numpy()
        if len(b) and b[0, 0] > 1e-4 and b[0, 1] > 1e-4 and b[0, 2] < 1 - 1e-4 \
                and b[0, 3] < 1 - 1e-4:
            sizes.append((b[0, 2] - b[0, 0], b[0, 3] - b[0, 1]))
    return np.array(sizes)


def test_box_shrinks_at_most_by_the_ratio():
    """A patch is a part of the (expanded) canvas, so it only enlarges what it keeps whole: an
    unclipped box of side 0.2 comes out >= 0.2 / ratio. With ratio 1 it never shrinks; with
    the paper's 4 some seeds shrink it below 0.2 / 1.5."""
    for ratio in (1., 1.5):
        sizes = _inner_sizes(ratio)
        assert len(sizes) >= 5
        assert sizes.min() >= 0.2 / ratio - 1e-4, (ratio, sizes.min())
    paper = _inner_sizes(None)
    assert paper.min() < 0.2 / 1.5


def test_ratio_one_has_no_canvas_and_equals_no_expand_draws(monkeypatch):
    """1 = no zoom-out: no output pixel is the mean-coloured canvas (the image is grey 90, the
    canvas 0 after the means), and the output is exactly that of a chain whose expand step is
    never drawn (the other random draws unchanged)."""
    ones = [_train(s, 1.) for s in range(12)]
    for out in ones:
        assert not np.any(np.all(out.image.numpy() == 0., axis=-1))
    monkeypatch.setattr(prep, 'EXPAND_PROB', 0.)
    for s, out in zip(range(12), ones):
        never = _train(s, None)
        np.testing.assert_array_equal(out.image.numpy(), never.image.numpy())
        np.testing.assert_array_equal(out.bboxes.numpy(), never.bboxes.numpy())


def test_default_is_the_papers_four():
    """None and 4 give the same output; some seed shows the canvas (the old chain)."""
    saw_canvas = False
    for s in range(12):
        a, b = _train(s, None), _train(s, 4.)
        np.testing.assert_array_equal(a.image.numpy(), b.image.numpy())
        saw_canvas |= bool(np.any(np.all(a.image.numpy() == 0., axis=-1)))
    assert saw_canvas


@pytest.mark.parametrize('ratio', [0.5, 0., -1., float('nan'), float('inf'), 'big'])
def test_bad_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match='expand_max_ratio must be a finite number >= 1'):
        _train(0, ratio)


def test_ratio_with_the_slim_chain_is_refused():
    with pytest.raises(ValueError, match='slim chain has no zoom-out'):
        _train(0, 1., reference_compat=True)
    assert _train(0, None, reference_compat=True).image.shape == (64, 64, 3)


def test_network_defaults():
    assert nets_factory.get_network('ssd_small').default_expand_max_ratio == 4.
    assert nets_factory.get_network('ssd_300_vgg').default_expand_max_ratio == 4.
    assert nets_factory.get_network('ssd_small_320').default_expand_max_ratio == 1.
    assert prep.EXPAND_MAX_RATIO == 4.


@pytest.mark.parametrize('given, then, model, compat, want', [
    (None, None, 'ssd_small', False, 4.),      # a new run: the network's default
    (None, None, 'ssd_300_vgg', False, 4.),
    (None, None, 'ssd_small_320', False, 1.),
    (None, 4., 'ssd_small_320', False, 4.),    # a resumed run keeps its augmentation
    (None, 1., 'ssd_small', False, 1.),
    (2.5, 1., 'ssd_small_320', False, 2.5),    # a given flag always wins
    (None, None, 'ssd_small_320', True, None),  # the slim chain: nothing to resolve
])
def test_which_ratio_a_run_takes_when_the_flag_is_not_given(given, then, model, compat, want):
    cfg = run_config.RunConfig.from_dict({'expand_max_ratio': given, 'model_name': model,
                                          'reference_compat': compat})
    assert run_config.default_expand_max_ratio(cfg, then).expand_max_ratio == want


def test_a_resumed_run_trained_with_what_it_recorded_else_the_papers():
    recorded = run_config.RunConfig.from_dict({'model_name': 'ssd_small_320',
                                               'expand_max_ratio': 1.})
    older = run_config.RunConfig.from_dict({'model_name': 'ssd_small_320'})
    slim = run_config.RunConfig.from_dict({'model_name': 'ssd_small_320',
                                           'expand_max_ratio': None})
    assert run_config.resumed_expand_max_ratio(recorded) == 1.
    assert run_config.resumed_expand_max_ratio(older) == 4.
    assert run_config.resumed_expand_max_ratio(slim) == 4.
    assert run_config.resumed_expand_max_ratio(None) == 4.


@pytest.mark.parametrize('previous, has_checkpoint, want', [
    (None, False, 1.),                                       # a new run: the network's
    ({'model_name': 'ssd_small_320', 'expand_max_ratio': 2.}, False, 1.),  # a failed start
    ({'model_name': 'ssd_small_320'}, True, 4.),             # an older run: what it used
    ({'model_name': 'ssd_small_320', 'expand_max_ratio': 1.}, True, 1.),
    ({'model_name': 'ssd_small_320', 'expand_max_ratio': 2.}, True, 2.),
    (None, True, 4.),                                        # a checkpoint without config
])
def test_fill_unset_resolves_the_ratio_for_new_resumed_and_older_runs(previous, has_checkpoint,
                                                                      want):
    """train_ssd.check_resume's resolution (run_config.fill_unset), the learning rate and
    anchors beside it as before."""
    cfg = run_config.RunConfig(model_name='ssd_small_320')
    if previous is not None:
        previous = run_config.RunConfig.from_dict(dict(previous, learning_rate=0.003))
    out = run_config.fill_unset(cfg, previous, has_checkpoint)
    assert out.expand_max_ratio == want
    resumed = has_checkpoint and previous is not None
    assert out.learning_rate == (0.003 if resumed else 0.006)
    assert out.anchors == ('default' if has_checkpoint else 'auto')
    given = run_config.fill_unset(cfg.replace(expand_max_ratio=3.), previous, has_checkpoint)
    assert given.expand_max_ratio == 3.


@pytest.mark.parametrize('args, needle', [
    (['--expand_max_ratio=0.5'], '--expand_max_ratio must be >= 1'),
    (['--reference_compat', '--expand_max_ratio=2'], '--expand_max_ratio with --reference_compat'),
])
def test_bad_flag_fails_at_once_naming_it(args, needle, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'train_ssd.py'), '--train_dir',
                        str(tmp_path / 'r')] + args, capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert r.returncode != 0 and needle in r.stderr
    assert 'Traceback' not in r.stderr
    assert not (tmp_path / 'r').exists()


@pytest.mark.slow
def test_a_run_records_the_ratio_and_trains_with_it(tmp_path):
    """The tiny ssd_small_320 run records 1 and says so; a run given 2 records 2."""
    tiny = ['--synthetic_num_train=16', '--synthetic_num_test=8', '--batch_size=4',
            '--log_every_n_steps=1', '--warmup_steps=1', '--eval_split_name=',
            '--max_number_of_steps=2', '--anchors=default']
    for extra, want in (([], 1.), (['--expand_max_ratio=2'], 2.)):
        train_dir = tmp_path / f'r{want:g}'
        r = subprocess.run([sys.executable, str(ROOT / 'train_ssd.py'), '--train_dir',
                            str(train_dir), '--model_name=ssd_small_320'] + tiny + extra,
                           capture_output=True, text=True, timeout=600, cwd=ROOT,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        assert r.returncode == 0, r.stderr[-3000:]
        assert run_config.RunConfig.read(str(train_dir)).expand_max_ratio == want
        assert ('without zoom-out' in r.stderr) == (want == 1.)
