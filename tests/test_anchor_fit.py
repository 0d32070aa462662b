"""Anchor coverage (ssd_tf.anchors_report) and fitted anchors (ssd_tf.anchor_fit,
train_ssd.py --anchors): hand-derived goldens, properties, and the run's anchors used by
resume, eval and export."""
import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nets import nets_factory
from nets.ssd_base import SSDNet, SSDParams
from ssd_tf import anchor_fit
from ssd_tf import anchors as anchors_lib
from ssd_tf import anchors_report
from ssd_tf import boxes as boxes_lib
from ssd_tf import run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--synthetic_num_train=64', '--synthetic_num_test=16', '--batch_size=8',
        '--log_every_n_steps=1', '--warmup_steps=2', '--eval_split_name=']


def _one_layer_net(sizes=(50.,), ratios=(), grid=2, img=100):
    """One feature map of grid x grid cells on an img x img input (step img / grid)."""
    return SSDNet(SSDParams(
        img_shape=(img, img), num_classes=2, no_annotation_label=2, feat_layers=['f'],
        feat_shapes=[(grid, grid)], anchor_size_bounds=[.1, .9], anchor_sizes=[tuple(sizes)],
        anchor_ratios=[list(ratios)], anchor_steps=[img / grid], anchor_offset=.5,
        normalizations=[-1], prior_scaling=[.1, .1, .2, .2]))


def _random_boxes(rng, n, lo=.02, hi=.9):
    s = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    r = np.exp(rng.uniform(-.7, .7, n))
    h, w = np.minimum(s / np.sqrt(r), 1.), np.minimum(s * np.sqrt(r), 1.)
    cy, cx = rng.uniform(h / 2, 1 - h / 2), rng.uniform(w / 2, 1 - w / 2)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


# ---------------------------------------------------------------------------- coverage
def test_coverage_goldens_box_equal_to_an_anchor_and_half_its_size():
    # One 2x2 map on 100 px, one 50x50 anchor per cell: anchors [0,0,.5,.5], [0,.5,.5,1], ...
    net = _one_layer_net()
    boxes = np.array([[0., 0., .5, .5],          # an anchor exactly: IoU 1, covered
                      [.5, .5, 1., .85],         # .5 x .35 inside the anchor: IoU .7, covered
                      [.125, .125, .375, .375],  # half the side, same centre: IoU 1/4, not
                      [0., 0., .25, .25]])       # half the side in the corner: IoU 1/4, not
    best = anchors_report.best_iou_per_layer(boxes, net.anchors())
    np.testing.assert_allclose(best[:, 0], [1., .7, .25, .25], rtol=1e-6)
    report = anchors_report.anchor_coverage(boxes, net, matching_threshold=.5)
    assert report.fraction == .5 and report.num_boxes == 4 and not report.sampled
    # sides sqrt(h w): .5, .418, .25, .25 -> buckets 32-64% (2 boxes, both covered) and
    # 16-32% (2 boxes, none covered); every best anchor is on the only map 'f'.
    assert report.by_size['32-64%'] == (2, 1., ('f',))
    assert report.by_size['16-32%'] == (2, 0., ('f',))
    assert report.by_size['<2%'].count == 0 and math.isnan(report.by_size['<2%'].covered)
    # w / h: 1, .7, 1, 1
    assert report.by_aspect['4:5-5:4'].count == 3 and report.by_aspect['1:2-4:5'].count == 1
    assert report.uncovered_sizes() == ['16-32%']
    # At a threshold of 1/4 every box is covered.
    assert anchors_report.anchor_coverage(boxes, net, matching_threshold=.25).fraction == 1.


def test_bucket_edges_fall_in_the_upper_bucket():
    side = np.array([.01, .02, .03, .04, .5, .64, .9])
    boxes = np.stack([np.zeros(7), np.zeros(7), side, side], axis=-1)
    names = [boxes_lib.SIZE_NAMES[i] for i in boxes_lib.size_bucket(boxes)]
    assert names == ['<2%', '2-4%', '2-4%', '4-8%', '32-64%', '>64%', '>64%']
    # w / h = 1/4, 1/2 (edge, upper), 1, 2 (edge, upper), 4
    wide = np.array([[0, 0, .4, .1], [0, 0, .4, .2], [0, 0, .3, .3], [0, 0, .2, .4],
                     [0, 0, .1, .4]])
    assert [anchors_report.ASPECT_NAMES[i] for i in anchors_report.aspect_bucket(wide)] == \
        ['<1:3', '1:2-4:5', '4:5-5:4', '2:1-3:1', '>3:1']


def test_feature_maps_named_by_where_the_best_anchors_are():
    # Two maps: a 4x4 one with 25 px anchors and a 1x1 one with one 100 px anchor.
    p = _one_layer_net().params._replace(
        feat_layers=['fine', 'coarse'], feat_shapes=[(4, 4), (1, 1)],
        anchor_sizes=[(25.,), (100.,)], anchor_ratios=[[], []], anchor_steps=[25., 100.],
        normalizations=[-1, -1])
    net = SSDNet(p)
    boxes = np.array([[0., 0., .25, .25], [.5, .5, .75, .75], [0., 0., 1., 1.]])
    r = anchors_report.anchor_coverage(boxes, net)
    assert r.fraction == 1.
    assert r.by_size['16-32%'].feature_maps == ('fine',)
    assert r.by_size['>64%'].feature_maps == ('coarse',)
    assert r.by_feature_map == pytest.approx({'fine': 2 / 3, 'coarse': 1 / 3})


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_best_anchor_equals_brute_force_over_every_anchor(seed):
    rng = np.random.default_rng(seed)
    net = nets_factory.get_network('ssd_small')()
    boxes = _random_boxes(rng, 40)
    anchors = net.anchors()
    fast = anchors_report.best_iou_per_layer(boxes, anchors)
    for i, layer in enumerate(anchors):
        brute = boxes_lib.iou(boxes, anchors_lib.anchors_to_boxes([layer])).numpy().max(axis=1)
        np.testing.assert_allclose(fast[:, i], brute, atol=1e-5)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(.05, .95), st.floats(.05, .95))
def test_coverage_monotone_in_the_threshold(seed, t1, t2):
    lo, hi = sorted((t1, t2))
    net = nets_factory.get_network('ssd_small')()
    boxes = _random_boxes(np.random.default_rng(seed), 60)
    assert anchors_report.anchor_coverage(boxes, net, lo).fraction >= \
        anchors_report.anchor_coverage(boxes, net, hi).fraction


def test_report_text_dict_sample_and_bad_input():
    net = nets_factory.get_network('ssd_small')()
    boxes = _random_boxes(np.random.default_rng(0), 300, .01, .08)  # small objects
    boxes = np.concatenate([boxes, [[.5, .5, .5, .6]]])  # a zero-height box: left out
    r = anchors_report.anchor_coverage(boxes, net, max_boxes=100, seed=1,
                                       small_object_network='ssd_small_320')
    assert (r.num_boxes, r.total_boxes, r.sampled) == (100, 300, True)
    assert r.fraction < .9
    text = r.format()
    assert 'a seeded sample of 100 of 300 boxes' in text
    assert 'WARNING' in text and '--anchors=auto' in text and '--model_name=ssd_small_320' in text
    assert '<2%' in text.split('WARNING')[1] or '2-4%' in text.split('WARNING')[1]
    d = json.loads(json.dumps(r.to_dict()))
    assert d['fraction'] == pytest.approx(r.fraction, abs=1e-4) and d['num_boxes'] == 100
    assert d['by_size']['>64%'] == {'count': 0, 'covered': None, 'feature_maps': []}
    # Large uncovered boxes do not suggest the small-object network; full coverage: no warning.
    big = np.array([[0., 0., 1., .3]] * 3)
    r = anchors_report.anchor_coverage(big, net, small_object_network='ssd_small_320')
    assert r.fraction == 0. and '--model_name=' not in r.warning()
    fitted_warning = dataclasses.replace(r, anchors='auto').warning()
    assert '--anchors=auto' not in fitted_warning and 'finer first feature map' in fitted_warning
    assert anchors_report.anchor_coverage([[0., 0., 1., 1.]], net, .3).warning() == ''
    with pytest.raises(ValueError, match=r'\[N, 4\]'):
        anchors_report.anchor_coverage(np.zeros([3, 3]), net)


def test_small_object_network_is_looked_up_by_attribute():
    class Small:
        small_objects = True
    assert anchors_report.small_object_network_name({'a': object, 'z': Small}) == 'z'
    assert anchors_report.small_object_network_name({'a': object}) is None


def test_small_object_setup_gives_the_network_and_its_fixed_input():
    class Params:
        img_shape = (320, 256)

    class Small:
        small_objects = True
        default_params = Params
    assert anchors_report.small_object_setup({'a': object, 'z': Small}) == {
        'small_object_network': 'z', 'small_object_input': (320, 256)}
    assert anchors_report.small_object_setup({'a': object}) == {
        'small_object_network': None, 'small_object_input': None}


@pytest.mark.slow
def test_every_program_names_the_small_object_command_with_its_input(tmp_path, capsys):
    """train_ssd.py, ssd-anchors and ssd-check-data take the small-object network from one
    place (anchors_report.small_object_setup): each warning names the command and its input
    (ssd-anchors and ssd-check-data used to leave the input out)."""
    from ssd_tf.cli import anchors as anchors_cli
    from ssd_tf.cli import check_data as check
    from ssd_tf.datasets import synthetic
    root = str(tmp_path / 'small')
    synthetic.write_synthetic_voc(root, 12, 2, objects='small')
    want = ('python train_ssd.py --model_name=ssd_small_320 --anchors=auto --class_balance=0.5 '
            '--max_number_of_steps=1600 --max_train_secs=1140 --test_time_flip',
            '(input 320x320, fixed by ssd_small_320)')
    assert anchors_cli.main(['--dataset_name', 'voc', '--dataset_dir', root,
                             '--model_name', 'ssd_small']) == 0
    text = capsys.readouterr().out
    assert all(w in text for w in want), text
    assert check.main(['--dataset_name', 'voc', '--dataset_dir', root,
                       '--model_name', 'ssd_small']) == 0
    text = capsys.readouterr().out
    assert all(w in text for w in want), text


def test_boxes_of_tfrecords_streams_only_the_boxes(tmp_path):
    import tensorflow as tf

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))
    path = str(tmp_path / 'x.tfrecord')
    with tf.io.TFRecordWriter(path) as w:
        for ymin in (.1, .2, .3):
            f = {'image/object/bbox/ymin': floats([ymin]), 'image/object/bbox/xmin': floats([0]),
                 'image/object/bbox/ymax': floats([.9]), 'image/object/bbox/xmax': floats([.5])}
            w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
        f['image/object/bbox/xmax'] = floats([.5, .6])  # unequal lists: left out
        w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
    boxes, n = anchors_report.boxes_of_tfrecords(path)
    np.testing.assert_allclose(boxes, [[.1, 0, .9, .5], [.2, 0, .9, .5], [.3, 0, .9, .5]])
    assert n == 4
    assert anchors_report.boxes_of_tfrecords(path, max_records=2)[0].shape == (2, 4)


# ---------------------------------------------------------------------------- the default path
# SSD300 (SPEC.md): img 300, maps 38, 19, 10, 5, 3, 1, steps 8, 16, 32, 64, 100, 300, offset .5,
# sizes (21, 45), (45, 99), (99, 153), (153, 207), (207, 261), (261, 315), ratios [2, .5] on
# maps 1, 5, 6 and [2, .5, 3, 1/3] on maps 2-4. Order: s0, sqrt(s0 s1), then per ratio r
# h = s0/sqrt(r), w = s0*sqrt(r), all over 300. Worked by hand:
#  map 1 (38x38, step 8): centres (i + .5) * 8 / 300: i = 0 -> 4/300 = .013333, i = 1 -> 12/300
#   = .04, i = 37 -> 300/300 = 1. s0 = 21/300 = .07; sqrt(21 * 45) = sqrt(945) = 30.74085 ->
#   .1024695; r = 2: h = .07 / 1.4142136 = .0494975, w = .07 * 1.4142136 = .0989949; r = .5
#   swaps them.
#  map 3 (10x10, step 32): last centre 9.5 * 32 / 300 = 304/300 = 1.013333 (outside [0, 1],
#   not clipped). s0 = 99/300 = .33; sqrt(99 * 153) = sqrt(15147) = 123.07315 -> .4102438;
#   r = 3: h = .33 / 1.7320508 = .1905256, w = .33 * 1.7320508 = .5715768; r = 1/3 swaps.
#  map 6 (1x1, step 300): centre .5 * 300 / 300 = .5. s0 = 261/300 = .87; sqrt(261 * 315) =
#   sqrt(82215) = 286.7316 -> .9557719; r = 2: h = .87 / 1.4142136 = .6151829, w = 1.2303658
#   (wider than the image: nothing is clipped).
# Goldens have 7 significant digits: compared at rtol 1e-5.
SSD300_GOLDEN = {  # map index: (H, centres of rows/cols 0, 1, last, h [A], w [A])
    0: (38, (.0133333, .04, 1.), [.07, .1024695, .0494975, .0989949],
        [.07, .1024695, .0989949, .0494975]),
    2: (10, (.0533333, .16, 1.0133333), [.33, .4102438, .2333452, .4666905, .1905256, .5715768],
        [.33, .4102438, .4666905, .2333452, .5715768, .1905256]),
    5: (1, (.5, None, .5), [.87, .9557719, .6151829, 1.2303658],
        [.87, .9557719, 1.2303658, .6151829]),
}
# map 3, r = 2: h = .33 / 1.4142136 = .2333452, w = .33 * 1.4142136 = .4666905. Map 3's first
# centres: .5 * 32 / 300 = .053333, 1.5 * 32 / 300 = .16.


def test_ssd300_default_anchors_hand_derived():
    y_x_h_w = SSDNet(nets_factory.get_network('ssd_300_vgg').default_params).anchors()
    # Anchors per location 4, 6, 6, 6, 4, 4: 38*38*4 + 19*19*6 + 10*10*6 + 5*5*6 + 3*3*4 + 1*4
    # = 5776 + 2166 + 600 + 150 + 36 + 4 = 8732.
    assert [h.shape[0] for _, _, h, _ in y_x_h_w] == [4, 6, 6, 6, 4, 4]
    assert sum(y.shape[0] * y.shape[1] * h.shape[0] for y, _, h, _ in y_x_h_w) == 8732
    for i, (n, (c0, c1, clast), hs, ws) in SSD300_GOLDEN.items():
        y, x, h, w = y_x_h_w[i]
        assert y.shape == x.shape == (n, n, 1)
        assert all(a.dtype == np.float32 for a in (y, x, h, w))
        for centres in (y[:, 0, 0], x[0, :, 0]):  # rows go down y, columns along x
            np.testing.assert_allclose(centres[[0, -1]], [c0, clast], rtol=1e-5)
            if c1 is not None:
                np.testing.assert_allclose(centres[1], c1, rtol=1e-5)
        np.testing.assert_array_equal(y[:, -1, 0], y[:, 0, 0])  # y does not vary along a row
        np.testing.assert_allclose(h, hs, rtol=1e-5)
        np.testing.assert_allclose(w, ws, rtol=1e-5)


def test_ssd512_default_anchors_hand_derived():
    # SSD512 map 1 (SPEC.md): 64x64, step 8, sizes (20.48, 51.2), ratios [2, .5] on 512 px.
    # Centres (i + .5) * 8 / 512: 4/512 = .0078125, 12/512 = .0234375, 508/512 = .9921875.
    # s0 = 20.48 / 512 = .04; sqrt(20.48 * 51.2) = sqrt(1048.576) = 32.38172 -> .0632456;
    # r = 2: h = .04 / 1.4142136 = .0282843, w = .04 * 1.4142136 = .0565685.
    # Anchors: 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4
    #        = 16384 + 6144 + 1536 + 384 + 96 + 16 + 4 = 24564.
    y_x_h_w = SSDNet(nets_factory.get_network('ssd_512_vgg').default_params).anchors()
    assert sum(y.shape[0] * y.shape[1] * h.shape[0] for y, _, h, _ in y_x_h_w) == 24564
    y, x, h, w = y_x_h_w[0]
    np.testing.assert_allclose(y[[0, 1, 63], 0, 0], [.0078125, .0234375, .9921875], rtol=1e-5)
    np.testing.assert_allclose(x[0, [0, 1, 63], 0], [.0078125, .0234375, .9921875], rtol=1e-5)
    np.testing.assert_allclose(h, [.04, .0632456, .0282843, .0565685], rtol=1e-5)
    np.testing.assert_allclose(w, [.04, .0632456, .0565685, .0282843], rtol=1e-5)


@pytest.mark.parametrize('name', sorted(nets_factory.networks_map))
def test_default_anchors_properties(name):
    """Every registered network's default anchors: float32, slim sizes (not explicit), and
    for each ratio r an anchor of area s0^2 with w / h = r, the centres one step apart."""
    p = nets_factory.get_network(name).default_params
    assert not any(anchors_lib.is_explicit(s) for s in p.anchor_sizes)
    for (y, x, h, w), fs, sizes, ratios, step in zip(
            SSDNet(p).anchors(), p.feat_shapes, p.anchor_sizes, p.anchor_ratios,
            p.anchor_steps):
        assert y.dtype == x.dtype == h.dtype == w.dtype == np.float32
        assert y.shape == (fs[0], fs[1], 1) and h.shape == (len(sizes) + len(ratios),)
        if fs[0] > 1:
            np.testing.assert_allclose(np.diff(y[:, 0, 0]), step / p.img_shape[0], rtol=1e-5)
        k = len(sizes)
        np.testing.assert_allclose(w[k:] / h[k:] * p.img_shape[1] / p.img_shape[0], ratios,
                                   rtol=1e-5)
        np.testing.assert_allclose(h[k:] * w[k:] * p.img_shape[0] * p.img_shape[1],
                                   sizes[0] ** 2, rtol=1e-5)


def test_explicit_sizes_reproduce_the_default_shapes_and_refuse_ratios():
    net = nets_factory.get_network('ssd_small')()
    shapes = anchors_lib.anchor_shapes(net.params)
    explicit = anchors_lib.with_anchor_shapes(net.params, shapes)
    assert explicit.anchor_ratios == [[]] * 5 and all(
        anchors_lib.is_explicit(s) for s in explicit.anchor_sizes)
    for a, b in zip(net.anchors(), SSDNet(explicit).anchors()):
        np.testing.assert_allclose(a[2], b[2], atol=1e-6)
        np.testing.assert_allclose(a[3], b[3], atol=1e-6)
    bad = explicit._replace(anchor_ratios=[[2.]] * 5)
    with pytest.raises(ValueError, match='take no ratios'):
        SSDNet(bad).anchors()
    with pytest.raises(ValueError, match='positive'):
        anchors_lib.with_anchor_sizes(net.params, [[(1., -2.)]] * 5)


# ---------------------------------------------------------------------------- fitting
def test_iou_kmeans_golden_two_groups():
    # Two tight groups: squares of about .1 and 2:1 wide boxes of about .2 x .4; the centres
    # are the groups' per-coordinate medians.
    shapes = np.array([[.09, .1], [.1, .1], [.11, .1], [.2, .4], [.2, .41], [.21, .4]])
    got = anchor_fit.iou_kmeans(shapes, 2, seed=3)
    np.testing.assert_allclose(got, [[.1, .1], [.2, .4]])
    # Fewer distinct shapes than k: those shapes.
    assert anchor_fit.iou_kmeans([[.1, .1]] * 4, 3).tolist() == [[.1, .1]]


@pytest.fixture(scope='module')
def small_object_fit():
    net = nets_factory.get_network('ssd_small')()
    boxes = _random_boxes(np.random.default_rng(5), 2000, .03, .12)
    return net, boxes, anchor_fit.fit_anchors(boxes, net, seed=0)


@pytest.mark.slow
def test_fit_keeps_the_network_and_is_deterministic(small_object_fit):
    net, boxes, fitted = small_object_fit
    assert type(fitted) is type(net)
    p, q = net.params, fitted.params
    assert (q.feat_layers, q.feat_shapes, q.anchor_steps, q.img_shape) == \
        (p.feat_layers, p.feat_shapes, p.anchor_steps, p.img_shape)
    from nets import ssd_vgg_keras
    assert ssd_vgg_keras.num_anchors_per_location(q) == \
        ssd_vgg_keras.num_anchors_per_location(p)  # heads of the same size
    again = anchor_fit.fit_anchors(boxes, net, seed=0)
    assert again.params == fitted.params
    before = anchors_report.anchor_coverage(boxes, net).fraction
    after = anchors_report.anchor_coverage(boxes, fitted).fraction
    assert after > before + .05, (before, after)
    assert 'auto anchors' in anchors_report.anchor_coverage(boxes, fitted).format()


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(['ssd_small', 'ssd_300_vgg']),
       st.floats(.01, .3), st.floats(.05, 1.))
def test_fitted_anchors_cover_their_data_at_least_as_well(seed, name, lo, width):
    net = nets_factory.get_network(name)()
    boxes = _random_boxes(np.random.default_rng(seed), 150, lo, min(lo + width, 1.))
    fitted = anchor_fit.fit_anchors(boxes, net, seed=seed % 7)
    assert anchors_report.anchor_coverage(boxes, fitted).fraction >= \
        anchors_report.anchor_coverage(boxes, net).fraction


def test_fit_refuses_reference_compat_and_no_boxes():
    cls = nets_factory.get_network('ssd_small')
    with pytest.raises(ValueError, match='reference_compat'):
        anchor_fit.fit_anchors([[0., 0., .5, .5]], cls(reference_compat=True))
    with pytest.raises(ValueError, match='no ground-truth box'):
        anchor_fit.fit_anchors(np.zeros([0, 4]), cls())


# ---------------------------------------------------------------------------- the run config
@pytest.mark.slow
def test_run_config_round_trip_and_bad_records(small_object_fit, tmp_path):
    net, _, fitted = small_object_fit
    cfg = run_config.RunConfig(model_name='ssd_small', anchors='auto',
                               anchor_shapes=[[list(hw) for hw in layer]
                                              for layer in fitted.params.anchor_sizes])
    cfg.write(str(tmp_path))
    back = run_config.RunConfig.read(str(tmp_path))
    params = run_config.run_params(net.params, back)
    for a, b in zip(SSDNet(params).anchors(), fitted.anchors()):
        assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert run_config.run_params(net.params, run_config.RunConfig()) is net.params
    with pytest.raises(ValueError, match='anchors=auto but no anchor_shapes'):
        run_config.run_params(net.params, back.replace(anchor_shapes=None))
    for bad in ([[[1., 2.]]] * 4,                    # 4 layers for 5 maps
                [[[1., -2.]]] * 5,                   # a negative size
                [[[True, 2.]]] * 5,                  # not a number
                [[[1., 2.]] * 65] * 5,               # too many anchors per location
                'auto'):
        with pytest.raises(ValueError, match='where.json: anchor_shapes'):
            run_config.run_params(net.params, back.replace(anchor_shapes=bad),
                                  where='where.json')


# ---------------------------------------------------------------------------- train, eval, export
def _train(args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, str(ROOT / 'train_ssd.py')] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope='module')
def auto_run(tmp_path_factory):
    train_dir = tmp_path_factory.mktemp('auto') / 'run'
    # no --anchors: a new run from scratch fits its anchors (the default since issue 22)
    r = _train(['--train_dir', str(train_dir), '--max_number_of_steps=2'] + TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return train_dir, r


@pytest.mark.parametrize('given, then, checkpoint, compat, want', [
    (None, 'new', None, False, 'auto'),            # a new run from scratch: fitted anchors
    (None, 'new', '/w/model.ckpt', False, 'default'),  # heads trained for the slim anchors
    (None, 'new', None, True, 'default'),          # --reference_compat: the original's
    (None, 'auto', None, False, 'auto'),           # a resumed run keeps its choice ...
    (None, 'default', None, False, 'default'),
    (None, None, None, False, 'default'),          # ... a run older than --anchors: default
    ('default', 'new', None, False, 'default'),    # a given flag always wins
    ('auto', 'new', '/w/model.ckpt', False, 'auto'),
])
def test_which_anchors_a_run_takes_when_the_flag_is_not_given(given, then, checkpoint, compat,
                                                              want):
    cfg = run_config.RunConfig.from_dict({'anchors': given, 'checkpoint_path': checkpoint,
                                          'reference_compat': compat})
    assert run_config.default_anchors(cfg, then).anchors == want


@pytest.mark.parametrize('given, then, model, want', [
    (None, None, 'ssd_small', 0.006),      # the main job's network: its measured rate
    (None, None, 'ssd_small_192', 0.002),  # the raccoon figures' rate
    (None, None, 'ssd_small_320', 0.006),  # the small-object dev set's measured rate
    (None, None, 'ssd_300_vgg', 0.002),
    (None, 0.002, 'ssd_small', 0.002),     # a resumed run keeps its schedule
    (0.01, 0.002, 'ssd_small', 0.01),      # a given flag always wins
])
def test_which_learning_rate_a_run_takes_when_the_flag_is_not_given(given, then, model, want):
    cfg = run_config.RunConfig.from_dict({'learning_rate': given, 'model_name': model,
                                          'learning_rate_decay_type': 'cosine',
                                          'end_learning_rate': 1e-5})
    assert run_config.default_learning_rate(cfg, then).learning_rate == want
    with pytest.raises(ValueError, match='--end_learning_rate=0.004 is above'):
        run_config.default_learning_rate(cfg.replace(learning_rate=None,
                                                     end_learning_rate=0.004), 0.002)


@pytest.mark.slow
def test_auto_run_reports_and_stores_its_anchors(auto_run):
    train_dir, r = auto_run
    assert 'anchor coverage of ssd_small (default anchors)' in r.stderr
    assert 'anchor coverage of ssd_small (auto anchors)' in r.stderr
    cfg = run_config.RunConfig.read(str(train_dir))
    assert cfg.anchors == 'auto' and len(cfg.anchor_shapes) == 5
    assert [len(layer) for layer in cfg.anchor_shapes] == [4] * 5
    assert cfg.anchor_coverage['fraction'] >= cfg.anchor_coverage['before']['fraction']
    import tensorflow as tf
    tags = set()
    for ev in tf.compat.v1.train.summary_iterator(str(next(train_dir.glob('events.*')))):
        tags.update(v.tag for v in ev.summary.value)
    assert {'anchors/coverage', 'anchors/coverage_default'} <= tags


@pytest.mark.slow
def test_export_and_eval_build_the_run_with_its_fitted_anchors(auto_run):
    from ssd_tf import builder
    train_dir, _ = auto_run
    cfg = run_config.RunConfig.read(str(train_dir))
    want = SSDNet(run_config.run_params(
        nets_factory.get_network('ssd_small').default_params, cfg)).anchors()
    assert not np.allclose(want[0][2], nets_factory.get_network('ssd_small')().anchors()[0][2])
    net = builder.load_model(str(train_dir)).net
    for a, b in zip(net.anchors(), want):
        assert all(np.array_equal(u, v) for u, v in zip(a, b))
    # eval_ssd.py builds its network with builder.resolve_network (an --eval_image_size too)
    net = builder.resolve_network(cfg, str(train_dir), 'ssd_small', 5)
    for a, b in zip(net.anchors(), want):
        assert all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.slow
def test_a_checkpoint_whose_heads_do_not_match_the_anchors_is_refused(auto_run, tmp_path):
    from ssd_tf import builder
    train_dir, _ = auto_run
    other = tmp_path / 'run'
    shutil.copytree(train_dir, other)
    cfg = json.loads((other / 'config.json').read_text())
    cfg['anchor_shapes'] = [layer[:2] for layer in cfg['anchor_shapes']]  # 2 anchors, not 4
    (other / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='anchors'):
        builder.load_model(str(other))


@pytest.mark.slow
def test_resume_keeps_the_saved_anchors_on_other_data(auto_run, tmp_path):
    train_dir, _ = auto_run
    run = tmp_path / 'run'
    shutil.copytree(train_dir, run)
    saved = run_config.RunConfig.read(str(run)).anchor_shapes
    # other data (more images): resumed with the saved anchors, not refitted, and said so
    r = _train(['--train_dir', str(run), '--anchors=auto', '--max_number_of_steps=3']
               + [a for a in TINY if 'synthetic_num_train' not in a]
               + ['--synthetic_num_train=80'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'kept, not refitted' in r.stderr
    assert run_config.RunConfig.read(str(run)).anchor_shapes == saved


def test_resume_with_another_anchors_flag_is_a_conflict():
    # train_ssd.py's check_resume refuses any conflict before writing anything (tested for
    # other flags in test_training); --anchors is one of the compared settings.
    then = run_config.RunConfig.from_dict({'anchors': 'auto', 'model_name': 'ssd_small'})
    now = run_config.RunConfig(anchors='default', model_name='ssd_small')
    assert run_config.resume_conflicts(then, now) == [('anchors', 'auto', 'default')]
    older = run_config.RunConfig.from_dict({'model_name': 'ssd_small'})  # before --anchors
    assert run_config.resume_conflicts(older, now) == []


def test_auto_anchors_with_reference_compat_is_refused(tmp_path):
    r = _train(['--train_dir', str(tmp_path / 'r'), '--anchors=auto', '--reference_compat']
               + TINY, timeout=120)
    assert r.returncode != 0 and '--anchors=auto with --reference_compat' in r.stderr
    assert not (tmp_path / 'r').exists()


@pytest.mark.slow
def test_report_command_and_data_check_print_the_coverage(tmp_path, capsys):
    from ssd_tf.cli import anchors as anchors_cli
    from ssd_tf.cli import check_data as check
    out = str(tmp_path / 'cov.json')
    assert anchors_cli.main(['--dataset_name', 'synthetic', '--num_images', '30',
                                '--model_name', 'ssd_small', '--anchors', 'auto',
                                '--json', out]) == 0
    text = capsys.readouterr().out
    assert 'anchor coverage of ssd_small (default anchors)' in text
    assert 'anchor coverage of ssd_small (auto anchors)' in text and 'anchors of ssd_small' in text
    d = json.load(open(out))
    assert d['auto']['fraction'] >= d['default']['fraction'] and d['default']['num_boxes'] > 0
    assert check.main(['--dataset_name', 'synthetic', '--num_images', '30',
                       '--model_name', 'ssd_small']) == 0
    assert 'anchor coverage of ssd_small (default anchors)' in capsys.readouterr().out
    assert anchors_cli.main(['--dataset_name', 'voc', '--dataset_dir',
                                str(tmp_path / 'nowhere')]) == 2
    assert 'nowhere' in capsys.readouterr().err
