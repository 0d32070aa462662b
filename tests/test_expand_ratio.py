"""--expand_max_ratio: the zoom-out bound of the SSD paper's augmentation (preprocessing), the
choice from the training boxes (1 when the median box is small, else the paper's 4), its
resolution for new, resumed and older runs (run_config.fill_unset), and the flag's errors."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import run_config
from conftest import assert_train_flag_refused

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


def _square(side, centre=0.5):
    """One square box of the given side (relative), yxyx."""
    lo, hi = centre - side / 2, centre + side / 2
    return [lo, lo, hi, hi]


@pytest.mark.parametrize('sides, want', [
    ([0.04, 0.05, 0.06], 1.),               # median 5 % < 8 %: no zoom-out
    ([0.02, 0.07, 0.5], 1.),                # median 7 %
    ([0.02, 0.08, 0.5], 4.),                # median exactly 8 %: not under it
    ([0.5, 0.6, 0.7], 4.),                  # large objects: the paper's
    ([0.05, 0.05, 0.3, 0.3], 4.),           # median of an even count: 17.5 %
])
def test_ratio_from_the_median_box_side(sides, want):
    ratio, reason = prep.expand_max_ratio_for_boxes([_square(x) for x in sides])
    assert ratio == want
    assert ('no zoom-out' in reason) == (want == 1.)


def test_ratio_from_boxes_uses_sqrt_area_and_ignores_degenerate_boxes():
    # 0.02 x 0.5: sqrt = 0.1 (not small) though its height is 2 %; NaN, empty and inverted
    # boxes do not count; the two 4 % squares stay the minority
    boxes = [[0.1, 0.1, 0.12, 0.6]] * 3 + [_square(0.04)] * 2 + \
        [[np.nan, 0, 1, 1], [0.5, 0.5, 0.5, 0.6], [0.6, 0.6, 0.5, 0.5]] * 3
    assert prep.expand_max_ratio_for_boxes(boxes)[0] == 4.
    ratio, reason = prep.expand_max_ratio_for_boxes(np.array([_square(0.03)] * 4, np.float32))
    assert ratio == 1. and '3.0% of the image side, under 8%' in reason


def test_ratio_without_boxes_is_the_papers():
    for empty in ([], np.zeros((0, 4)), [[np.nan] * 4]):
        ratio, reason = prep.expand_max_ratio_for_boxes(empty)
        assert ratio == 4. and 'no training box' in reason


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
    (None, False, None),                                     # a new run: from its boxes
    ({'model_name': 'ssd_small_320', 'expand_max_ratio': 2.}, False, None),  # failed start
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
    slim = run_config.fill_unset(cfg.replace(reference_compat=True), previous, has_checkpoint)
    assert slim.expand_max_ratio is None


@pytest.mark.parametrize('args, needle', [
    (['--expand_max_ratio=0.5'], '--expand_max_ratio must be >= 1'),
    (['--reference_compat', '--expand_max_ratio=2'], '--expand_max_ratio with --reference_compat'),
])
def test_bad_flag_fails_at_once_naming_it(args, needle, tmp_path):
    assert_train_flag_refused(tmp_path, args, needle)


@pytest.mark.slow
def test_a_run_chooses_the_ratio_from_its_boxes_and_records_it(tmp_path):
    """Small synthetic objects (3-10 % of the side) train without zoom-out, said and recorded;
    a given flag is taken as given; a resume without the flag keeps the run's own ratio (2),
    not the data's choice (1). The shapes' choice (4): test_training's default run."""
    tiny = ['--synthetic_num_train=16', '--synthetic_num_test=8', '--batch_size=4',
            '--log_every_n_steps=1', '--warmup_steps=1', '--eval_split_name=',
            '--anchors=default', '--synthetic_objects=small']
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

    def train(train_dir, extra):
        r = subprocess.run([sys.executable, str(ROOT / 'train_ssd.py'), '--train_dir',
                            str(train_dir)] + tiny + extra, capture_output=True, text=True,
                           timeout=600, cwd=ROOT, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stderr, run_config.RunConfig.read(str(train_dir)).expand_max_ratio
    err, ratio = train(tmp_path / 'small', ['--max_number_of_steps=1'])
    assert ratio == 1. and 'augmentation: --expand_max_ratio=1 (the median training box is' \
        in err and 'without zoom-out' in err
    err, ratio = train(tmp_path / 'given', ['--max_number_of_steps=1', '--expand_max_ratio=2'])
    assert ratio == 2. and 'augmentation: --expand_max_ratio' not in err
    assert 'zoom-out up to 2x' in err
    err, ratio = train(tmp_path / 'given', ['--max_number_of_steps=2'])
    assert ratio == 2. and 'resuming' in err and 'augmentation: --expand_max_ratio' not in err
