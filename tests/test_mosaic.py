"""Scale-keeping mosaics (`prep.mosaic_batch`, `data.build_dataset(mosaic_prob=...)`,
train_ssd.py --mosaic_prob): hand goldens of the pixels and boxes, properties of the draws,
the pipeline's guarantees (encoding after the mosaic, exact resume, bad records), and the
flag's resolution for new, resumed and older runs (run_config.fill_unset) and errors."""
import json
import os
import pathlib
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf

from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import data
from ssd_tf import run_config
from ssd_tf.datasets import check as check_lib
from conftest import assert_train_flag_refused

from test_data_pipeline import (OUT, _batches, bad_shard, encode, flip_preprocess,
                                synthetic_records)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def coded_images(b, h, w):
    """`[B, H, W, 3]` float32 whose pixel (r, y, x) holds (r, y, x): where it came from."""
    r, y, x = np.meshgrid(np.arange(b), np.arange(h), np.arange(w), indexing='ij')
    return np.stack([r, y, x], axis=-1).astype(np.float32)


# ------------------------------------------------------------------ hand goldens
def test_rows_golden():
    # Two 4x4 images, pixel value 100 r + 10 y + x. Row 0 cut at (py, px) = (1, 3):
    # top-left 1x3 from row 0 at (2, 1), top-right 1x1 from row 1 at (0, 0), bottom-left 3x3
    # from row 0 ((0 + 2) % 2) at (1, 0), bottom-right 3x1 from row 1 at (0, 3).
    # Row 1 is not cut (py, px) = (4, 4): itself, whole.
    images = tf.constant((np.arange(2)[:, None, None] * 100 + np.arange(4)[None, :, None] * 10 +
                          np.arange(4)[None, None, :])[..., None].astype(np.float32))
    split = tf.constant([[1, 3], [4, 4]], tf.int32)
    offsets = tf.constant([[[2, 1], [0, 0], [1, 0], [0, 3]],
                           [[0, 0], [0, 4], [4, 0], [4, 4]]], tf.int32)
    out = prep._mosaic_rows(images, split, offsets).numpy()[..., 0]
    np.testing.assert_array_equal(out[0], [[21, 22, 23, 100],
                                           [10, 11, 12, 103],
                                           [20, 21, 22, 113],
                                           [30, 31, 32, 123]])
    np.testing.assert_array_equal(out[1], images.numpy()[1, ..., 0])


def test_boxes_golden():
    # The cuts of test_rows_golden. Row 0 holds A (label 1), row 1 B (2) and C (3):
    # A = [.5, .25, 1, .75]: top-left shifts it by (0 - 2, 0 - 1) / 4 to [0, 0, .5, .5], centre
    #   y .25 is not < .25 (the rectangle's end): dropped; bottom-left shifts it by 0: kept.
    # B = [0, 0, .25, .25]: top-right shifts by (0, 3) / 4 to [0, .75, .25, 1], centre inside:
    #   kept; bottom-right by (1, 0) / 4 to [.25, 0, .5, .25], centre x .125 < .75: dropped.
    # C = [0, .5, .75, 1]: top-right -> x 1.25..1.75, outside; bottom-right -> [.25, .5, 1, 1],
    #   centre (.625, .75) inside [.25, .75, 1, 1]: kept, clipped to [.25, .75, 1, 1].
    labels = tf.constant([[1, 0], [2, 3]], tf.int64)
    boxes = tf.constant([[[.5, .25, 1., .75], [0., 0., 0., 0.]],
                         [[0., 0., .25, .25], [0., .5, .75, 1.]]], tf.float32)
    split = tf.constant([[1, 3], [4, 4]], tf.int32)
    offsets = tf.constant([[[2, 1], [0, 0], [1, 0], [0, 3]],
                           [[0, 0], [0, 4], [4, 0], [4, 4]]], tf.int32)
    hw = tf.constant([4, 4])
    out_labels, out_boxes = prep._mosaic_boxes(labels, boxes, prep._mosaic_rects(split, hw),
                                               offsets, hw)
    np.testing.assert_array_equal(out_labels, [[0, 0, 2, 0, 1, 0, 0, 3],
                                               [2, 3, 0, 0, 0, 0, 0, 0]])
    want = np.zeros([2, 8, 4], np.float32)
    want[0, 2] = [0., .75, .25, 1.]
    want[0, 4] = [.5, .25, 1., .75]
    want[0, 7] = [.25, .75, 1., 1.]
    want[1, 0], want[1, 1] = boxes.numpy()[1]
    np.testing.assert_allclose(out_boxes, want, atol=1e-6)


# ------------------------------------------------------------------ properties
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(b=st.integers(1, 5), h=st.integers(4, 24), w=st.integers(4, 24),
                  seed=st.integers(0, 2 ** 31 - 1), data_=st.data())
def test_every_pixel_and_box_follows_its_source(b, h, w, seed, data_):
    """Each output rectangle is a translated window of one source row; a kept box lies in its
    rectangle, and the pixels under it come from inside the source box."""
    images = coded_images(b, h, w)
    m = 3
    y0 = np.array(data_.draw(st.lists(st.floats(0, .9), min_size=b * m, max_size=b * m)))
    x0 = np.array(data_.draw(st.lists(st.floats(0, .9), min_size=b * m, max_size=b * m)))
    boxes = np.stack([y0, x0, y0 + .1 + (1 - y0 - .1) / 2, x0 + .1 + (1 - x0 - .1) / 2],
                     -1).reshape(b, m, 4).astype(np.float32)
    labels = np.arange(1, b * m + 1).reshape(b, m)
    out, out_labels, out_boxes = (t.numpy() for t in prep.mosaic_batch(
        tf.constant(images), tf.constant(labels), tf.constant(boxes), tf.constant([seed, 1]),
        1.))
    assert out.shape == images.shape and out_labels.shape == (b, 4 * m)
    lo, hi = prep.MOSAIC_SPLIT_RANGE
    for i in range(b):
        src, ys, xs = out[i, ..., 0], out[i, ..., 1], out[i, ..., 2]
        assert set(np.unique(src)) <= {(i + q) % b for q in range(4)}
        if b >= 4:  # four distinct sources: the top-left rectangle is where row i shows
            py, px = int((src[:, 0] == i).sum()), int((src[0] == i).sum())
            assert round(lo * h) <= py <= round(hi * h) and round(lo * w) <= px <= round(hi * w)
            for q, (rows, cols) in enumerate([(slice(0, py), slice(0, px)),
                                              (slice(0, py), slice(px, w)),
                                              (slice(py, h), slice(0, px)),
                                              (slice(py, h), slice(px, w))]):
                assert np.all(src[rows, cols] == (i + q) % b)
                # A window of the source at its own scale: one translation.
                dy = ys[rows, cols] - np.arange(h)[rows, None]
                dx = xs[rows, cols] - np.arange(w)[None, cols]
                assert np.ptp(dy) == 0 and np.ptp(dx) == 0
        for k in np.flatnonzero(out_labels[i]):
            q, j = divmod(k, m)
            assert out_labels[i, k] == labels[(i + q) % b, j]
            by0, bx0, by1, bx1 = out_boxes[i, k]
            assert 0 <= by0 < by1 <= 1 and 0 <= bx0 < bx1 <= 1
            cy = (np.arange(h) + .5) / h
            cx = (np.arange(w) + .5) / w
            inner = np.ix_((cy > by0) & (cy < by1), (cx > bx0) & (cx < bx1))
            if not src[inner].size:
                continue
            assert np.all(src[inner] == (i + q) % b)
            sy0, sx0, sy1, sx1 = boxes[(i + q) % b, j]
            assert np.all((ys[inner] + .5) / h > sy0 - 1e-6)
            assert np.all((ys[inner] + .5) / h < sy1 + 1e-6)
            assert np.all((xs[inner] + .5) / w > sx0 - 1e-6)
            assert np.all((xs[inner] + .5) / w < sx1 + 1e-6)


def test_prob_zero_and_unlucky_rows_are_unchanged():
    images = tf.random.stateless_uniform([6, 16, 12, 3], [1, 2], -100., 100.)
    labels = tf.constant([[1, 2]] * 6, tf.int64)
    boxes = tf.constant([[[.1, .1, .5, .5], [.4, .3, .9, .8]]] * 6, tf.float32)
    out, out_labels, out_boxes = prep.mosaic_batch(images, labels, boxes, [3, 4], 0.)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(out_labels[:, :2], labels)
    np.testing.assert_array_equal(out_labels[:, 2:], 0)
    np.testing.assert_array_equal(out_boxes[:, :2], boxes)


def test_prob_is_the_share_of_mosaics_and_the_seed_fixes_them():
    images = coded_images(400, 8, 8)
    labels = tf.zeros([400, 1], tf.int64)
    boxes = tf.zeros([400, 1, 4])
    out = prep.mosaic_batch(images, labels, boxes, [5, 6], 0.3)[0].numpy()
    mixed = np.any(out[..., 0] != np.arange(400)[:, None, None], axis=(1, 2))
    assert 0.22 < mixed.mean() < 0.38  # 120 expected; the bound is about 3.5 sigma
    again = prep.mosaic_batch(images, labels, boxes, [5, 6], 0.3)[0].numpy()
    np.testing.assert_array_equal(out, again)
    other = prep.mosaic_batch(images, labels, boxes, [5, 7], 0.3)[0].numpy()
    assert not np.array_equal(out, other)


@pytest.mark.parametrize('prob', [-0.1, 1.5, float('nan')])
def test_bad_prob_is_refused(prob):
    with pytest.raises(ValueError, match='mosaic prob must be in'):
        prep.mosaic_batch(tf.zeros([2, 4, 4, 3]), tf.zeros([2, 1], tf.int64),
                          tf.zeros([2, 1, 4]), [1, 2], prob)


def test_nchw_images_are_refused():
    with pytest.raises(ValueError, match='needs NHWC images'):
        prep.mosaic_batch(tf.zeros([2, 3, 8, 8]), tf.zeros([2, 1], tf.int64),
                          tf.zeros([2, 1, 4]), [1, 2], 1.)


# ------------------------------------------------------------------ pipeline
def test_targets_are_encoded_from_the_mosaics_boxes():
    recs = synthetic_records(8)
    ds = data.build_dataset(recs, flip_preprocess, encode, batch_size=4, seed=3,
                            with_gt=True, mosaic_prob=1.)
    plain = data.build_dataset(recs, flip_preprocess, encode, batch_size=4, seed=3,
                               with_gt=True)
    (images, t), (plain_images, _) = _batches(ds, 1)[0], _batches(plain, 1)[0]
    assert images.shape == (4, OUT, OUT, 3)
    assert not np.array_equal(images, plain_images)
    for i in range(4):
        n = t['num_boxes'][i]
        assert np.all(t['labels'][i, :n] > 0) and np.all(t['labels'][i, n:] == 0)
        want = encode(tf.constant(t['labels'][i, :n]), tf.constant(t['bboxes'][i, :n]))
        for layer in range(2):
            np.testing.assert_array_equal(t['gclasses'][layer][i], want[0][layer])
            np.testing.assert_allclose(t['glocalisations'][layer][i], want[1][layer],
                                       atol=1e-6)
    # Without with_gt the stream carries only the targets, the same ones.
    bare = _batches(data.build_dataset(recs, flip_preprocess, encode, batch_size=4, seed=3,
                                       mosaic_prob=1.), 1)[0]
    assert set(bare[1]) == {'gclasses', 'glocalisations', 'gscores'}
    np.testing.assert_array_equal(bare[0], images)
    np.testing.assert_array_equal(bare[1]['gclasses'][0], t['gclasses'][0])


@pytest.mark.slow
def test_start_resumes_the_mosaic_stream_exactly():
    recs = synthetic_records(10)

    def build(start):
        return data.build_dataset(recs, flip_preprocess, encode, batch_size=4, seed=7,
                                  with_gt=True, start=start, mosaic_prob=0.5)

    full = _batches(build(0), 5)
    resumed = _batches(build(3 * 4), 2)
    for x, y in zip(full[3:], resumed):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)


@pytest.mark.slow
def test_bad_records_are_replaced_before_the_mosaic(tmp_path):
    path, _ = bad_shard(tmp_path / 'x.tfrecord')
    report = check_lib.DataProblems()
    ds = data.build_dataset(path, flip_preprocess, encode, batch_size=4, seed=5,
                            shuffle_buffer=20, with_gt=True, report=report, mosaic_prob=1.)
    batches = _batches(ds, 7)
    assert report.num_skipped >= 20
    seen = 0
    for images, t in batches:
        if t['num_boxes'].any():  # a batch with a good record: no placeholder in its mosaics
            seen += 1
            assert np.all(images.std(axis=(1, 2, 3)) > 1.)
    assert seen >= 4


def test_mosaic_over_max_boxes_fails_loudly():
    recs = synthetic_records(8)
    counts = [len(r.labels) for r in recs]
    ds = data.build_dataset(recs, flip_preprocess, encode, batch_size=8, seed=1,
                            with_gt=True, mosaic_prob=1., max_boxes=max(counts))
    with pytest.raises(tf.errors.InvalidArgumentError, match='a mosaic has more boxes than'):
        for _ in ds.take(3):
            pass


@pytest.mark.parametrize('kwargs, needle', [
    (dict(mosaic_prob=1.5), r'mosaic_prob must be a probability in \[0, 1\]'),
    (dict(mosaic_prob='half'), 'mosaic_prob must be a probability'),
    (dict(mosaic_prob=0.5, is_training=False), 'mosaics are a training augmentation'),
])
def test_bad_mosaic_options_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        data.build_dataset(synthetic_records(2), flip_preprocess, encode, **kwargs)


# ------------------------------------------------------------------ runs and the flag
def test_a_resumed_run_trained_with_what_it_recorded_else_none():
    def cfg(**kw):
        return run_config.RunConfig.from_dict(dict(model_name='ssd_small_320', **kw))
    assert run_config.resumed_mosaic_prob(cfg(mosaic_prob=0.5)) == 0.5
    assert run_config.resumed_mosaic_prob(cfg(mosaic_prob=1)) == 1.
    assert run_config.resumed_mosaic_prob(cfg()) == 0.
    assert run_config.resumed_mosaic_prob(None) == 0.
    for bad in ('half', 1.5, -0.2, True, [0.5]):
        with pytest.raises(ValueError, match=r"config.json: mosaic_prob=.* is not a probab"):
            run_config.resumed_mosaic_prob(cfg(mosaic_prob=bad))


@pytest.mark.parametrize('previous, has_checkpoint, want', [
    (None, False, 0.),                         # a new run: none
    ({'mosaic_prob': 0.5}, False, 0.),         # a failed start
    ({}, True, 0.),                            # an older run: none, as it had
    ({'mosaic_prob': 0.5}, True, 0.5),         # resumed: its own
    (None, True, 0.),                          # a checkpoint without config
])
def test_fill_unset_resolves_the_mosaic_prob(previous, has_checkpoint, want):
    cfg = run_config.RunConfig(model_name='ssd_small_320')
    if previous is not None:
        previous = run_config.RunConfig.from_dict(dict(previous, model_name='ssd_small_320',
                                                       learning_rate=0.003))
    assert run_config.fill_unset(cfg, previous, has_checkpoint).mosaic_prob == want
    given = run_config.fill_unset(cfg.replace(mosaic_prob=0.25), previous, has_checkpoint)
    assert given.mosaic_prob == 0.25
    slim = run_config.fill_unset(cfg.replace(reference_compat=True), previous, has_checkpoint)
    assert slim.mosaic_prob is None


@pytest.mark.parametrize('args, needle', [
    (['--mosaic_prob=1.5'], '--mosaic_prob must be a probability in [0, 1]'),
    (['--reference_compat', '--mosaic_prob=0.5'], '--mosaic_prob with --reference_compat'),
])
def test_bad_flag_fails_at_once_naming_it(args, needle, tmp_path):
    assert_train_flag_refused(tmp_path, args, needle)


def test_show_augmentation_draws_the_mosaics():
    from ssd_tf.cli import show_augmentation
    recs = synthetic_records(4)
    names = {i: str(i) for i in range(5)}
    plain = show_augmentation.augmented_grid(recs, names, 4, 2, 0, 64)
    again = show_augmentation.augmented_grid(recs, names, 4, 2, 0, 64, mosaic_prob=0.)
    mosaic = show_augmentation.augmented_grid(recs, names, 4, 2, 0, 64, mosaic_prob=1.)
    np.testing.assert_array_equal(plain, again)
    assert plain.shape == mosaic.shape and not np.array_equal(plain, mosaic)


@pytest.mark.slow
def test_a_run_records_its_mosaics_and_resumes_with_them(tmp_path):
    """Given: said and recorded; a resume without the flag keeps the run's own; a run whose
    config.json predates the setting resumes without mosaics; a damaged value is refused
    naming it, the file left as it was."""
    tiny = ['--synthetic_num_train=16', '--synthetic_num_test=8', '--batch_size=4',
            '--log_every_n_steps=1', '--warmup_steps=1', '--eval_split_name=',
            '--anchors=default']
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

    def train(extra, ok=True):
        r = subprocess.run([sys.executable, str(ROOT / 'train_ssd.py'), '--train_dir',
                            str(tmp_path / 'r')] + tiny + extra, capture_output=True,
                           text=True, timeout=600, cwd=ROOT, env=env)
        assert r.returncode == (0 if ok else 2), r.stderr[-3000:]
        return r.stderr, (run_config.RunConfig.read(str(tmp_path / 'r')).mosaic_prob
                          if ok else None)
    err, prob = train(['--max_number_of_steps=1', '--mosaic_prob=0.5'])
    assert prob == 0.5 and '50% of the images mosaics of four (--mosaic_prob)' in err
    err, prob = train(['--max_number_of_steps=2'])
    assert prob == 0.5 and 'resuming' in err and '(--mosaic_prob)' in err
    path = tmp_path / 'r' / 'config.json'
    cfg = json.loads(path.read_text())
    del cfg['mosaic_prob']
    path.write_text(json.dumps(cfg))
    err, prob = train(['--max_number_of_steps=3'])
    assert prob == 0. and 'resuming' in err and '(--mosaic_prob)' not in err
    cfg['mosaic_prob'] = 'half'
    path.write_text(json.dumps(cfg))
    err, _ = train(['--max_number_of_steps=4'], ok=False)
    assert "mosaic_prob='half' is not a probability" in err and 'Traceback' not in err
    assert json.loads(path.read_text()) == cfg
