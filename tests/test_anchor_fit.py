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
    names = [anchors_report.SIZE_NAMES[i] for i in anchors_report.size_bucket(boxes)]
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
@pytest.mark.parametrize('name', sorted(nets_factory.networks_map))
def test_default_anchors_are_the_slim_formula_bit_for_bit(name):
    """Every registered network's default anchors: the slim formula (SPEC.md), literally."""
    p = nets_factory.get_network(name).default_params
    assert not any(anchors_lib.is_explicit(s) for s in p.anchor_sizes)
    for (y, x, h, w), fs, sizes, ratios, step in zip(
            SSDNet(p).anchors(), p.feat_shapes, p.anchor_sizes, p.anchor_ratios,
            p.anchor_steps):
        gy, gx = np.mgrid[0:fs[0], 0:fs[1]]
        want_y = ((gy.astype(np.float32) + p.anchor_offset) * step / p.img_shape[0])[..., None]
        want_x = ((gx.astype(np.float32) + p.anchor_offset) * step / p.img_shape[1])[..., None]
        s0 = sizes[0]
        hs = [s0 / p.img_shape[0]] + ([math.sqrt(s0 * sizes[1]) / p.img_shape[0]]
                                      if len(sizes) > 1 else [])
        ws = [s0 / p.img_shape[1]] + ([math.sqrt(s0 * sizes[1]) / p.img_shape[1]]
                                      if len(sizes) > 1 else [])
        hs += [s0 / p.img_shape[0] / math.sqrt(r) for r in ratios]
        ws += [s0 / p.img_shape[1] * math.sqrt(r) for r in ratios]
        for got, want in ((y, want_y), (x, want_x), (h, np.float32(hs)), (w, np.float32(ws))):
            assert got.dtype == np.float32 and np.array_equal(got, want)


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
    r = _train(['--train_dir', str(train_dir), '--anchors=auto', '--max_number_of_steps=2']
               + TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return train_dir, r


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
