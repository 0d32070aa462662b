"""Small objects: the synthetic small-object mode, the small-object network (`ssd_small_320`)
and the anchor coverage claims of README "Small objects" on that data."""
import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import nets_factory
from nets import ssd_small
from ssd_tf import anchor_fit
from ssd_tf import anchors_report
from ssd_tf.datasets import factory
from ssd_tf.datasets import synthetic
from ssd_tf.datasets import voc


@pytest.fixture(scope='module')
def small_boxes():
    """Boxes `[N, 4]` of 150 training images of the small-object mode (about 1500 boxes)."""
    recs = synthetic.make_synthetic_split('train', 150, seed=0, objects='small')
    return np.concatenate([r.boxes for r in recs])


# ---------------------------------------------------------------------------- synthetic data
def test_small_mode_boxes_counts_and_size_are_as_stated():
    recs = synthetic.make_synthetic_examples(40, seed=4, objects='small')
    # 320 px images; box sides whole pixels in [ceil(0.03 * 320), floor(0.10 * 320)] = [10, 32]
    assert all(r.image.shape == (320, 320, 3) and (r.height, r.width) == (320, 320)
               for r in recs)
    sides = np.concatenate([np.stack([r.boxes[:, 2] - r.boxes[:, 0],
                                      r.boxes[:, 3] - r.boxes[:, 1]], -1) for r in recs]) * 320
    np.testing.assert_allclose(sides, np.round(sides), atol=1e-3)
    assert sides.min() >= 10 - 1e-3 and sides.max() <= 32 + 1e-3
    assert sides.min() < 12 and sides.max() > 28  # the whole range is used
    counts = [len(r.boxes) for r in recs]
    assert min(counts) >= 5 and max(counts) <= 15 and np.mean(counts) > 8
    assert all(((r.labels >= 1) & (r.labels <= 4)).all() for r in recs)
    assert {t for r in recs for t in r.label_text} == set(synthetic.SYNTHETIC_CLASSES)
    # boxes are inside the image and each is the drawn shape's exact extent
    assert all(((r.boxes >= 0) & (r.boxes <= 1)).all() for r in recs)
    image, boxes, _, masks = synthetic.synthetic_image(4, 0, with_masks=True, objects='small')
    for box, mask in zip(boxes, masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        np.testing.assert_allclose(box * 320, [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1],
                                   atol=1e-3)


def test_small_mode_is_deterministic_and_apart_from_shapes():
    a = synthetic.make_synthetic_examples(4, seed=7, objects='small')
    b = synthetic.make_synthetic_examples(6, seed=7, objects='small')
    for x, y in zip(a, b):  # same (seed, index): same image; a prefix of a longer list
        assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
        assert np.array_equal(x.labels, y.labels)
    c = synthetic.make_synthetic_examples(4, seed=8, objects='small')
    assert not np.array_equal(a[0].image, c[0].image)
    shapes = synthetic.make_synthetic_examples(1, seed=7, image_size=320)[0]
    assert not np.array_equal(shapes.image, a[0].image)
    # the test split starts at TEST_FIRST_INDEX in both modes
    test = synthetic.make_synthetic_split('test', 1, seed=7, objects='small')[0]
    assert test.image_id == f'{synthetic.TEST_FIRST_INDEX:06d}'


def test_shapes_mode_is_unchanged():
    # sha256 of images 0..4 of seed 0 (160 px) as written before the small mode existed
    # (the main job's data must not change).
    h = hashlib.sha256()
    for i in range(5):
        image, boxes, labels, _ = synthetic.synthetic_image(0, i, 160)
        h.update(image.tobytes())
        h.update(boxes.tobytes())
        h.update(labels.tobytes())
    assert h.hexdigest() == 'f49e043b796903364ae87dce5541584ef07f5d28737994cd4e886103fd2357b2'
    assert synthetic.make_synthetic_examples(1, seed=0)[0].image.shape == (160, 160, 3)


def test_factory_and_voc_writer_carry_the_mode(tmp_path):
    recs, label_map, summary = factory.load_records('synthetic', None, 'test', num_images=3,
                                                    seed=2, synthetic_objects='small')
    want = synthetic.make_synthetic_split('test', 3, seed=2, objects='small')
    assert label_map == synthetic.SYNTHETIC_LABEL_MAP and '3 records' in summary
    assert all(np.array_equal(r.image, w.image) and np.array_equal(r.boxes, w.boxes)
               for r, w in zip(recs, want))
    with pytest.raises(ValueError, match=r"--synthetic_objects='tiny'.*shapes, small"):
        factory.load_records('synthetic', None, 'test', num_images=1,
                             synthetic_objects='tiny')
    root = synthetic.write_synthetic_voc(str(tmp_path / 'small'), 2, 1, seed=2,
                                         objects='small')
    back, _ = voc.read_voc([root], 'test', label_map=synthetic.SYNTHETIC_LABEL_MAP)
    assert len(back) == 1 and (back[0].height, back[0].width) == (320, 320)
    np.testing.assert_array_equal(back[0].boxes, want[0].boxes)  # exact through the XML
    np.testing.assert_array_equal(back[0].labels, want[0].labels)


def test_a_run_records_the_mode_and_refuses_to_resume_with_another():
    from ssd_tf import run_config
    then = run_config.RunConfig.from_dict({'dataset_name': 'synthetic', 'seed': 0,
                                           'synthetic_objects': 'small'})
    now = then.replace(synthetic_objects='shapes')
    assert run_config.resume_conflicts(then, now) == [('synthetic_objects', 'small', 'shapes')]
    assert run_config.resume_conflicts(then, then) == []
    # a run directory of an older release (no synthetic_objects key) still resumes
    older = run_config.RunConfig.from_dict({'dataset_name': 'synthetic', 'seed': 0})
    assert run_config.resume_conflicts(older, now) == []


def test_readme_shows_the_command_the_warning_names():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / 'README.md').read_text()
    report = anchors_report.anchor_coverage(
        np.array([[0.1, 0.1, 0.13, 0.13]] * 4), ssd_small.SSDNet(),
        **anchors_report.small_object_setup(nets_factory.networks_map))
    command = report.recommended_command()
    flags = command.split(' <your')[0]
    assert flags.startswith('python train_ssd.py --model_name=ssd_small_320 --anchors=auto')
    shown = re.findall(r'^python train_ssd\.py --model_name=ssd_small_320 [^\n]*', readme, re.M)
    assert shown and all(line.startswith(flags + ' --dataset_name') for line in shown), shown


# ---------------------------------------------------------------------------- the network
def test_small_object_network_is_as_documented():
    cls = nets_factory.get_network('ssd_small_320')
    assert cls.small_objects is True and cls.model_name == 'ssd_small_320'
    assert anchors_report.small_object_network_name(nets_factory.networks_map) == \
        'ssd_small_320'
    assert not getattr(nets_factory.get_network('ssd_small_192'), 'small_objects', False)
    p = cls.default_params
    # 320: block3 after two 2x2 pools is 80 (stride 4), then halved rounding up to block10.
    assert p.img_shape == (320, 320)
    assert p.feat_layers == ['block3', 'block4', 'block7', 'block8', 'block9', 'block10']
    assert p.feat_shapes == [(80, 80), (40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    assert p.anchor_steps[:5] == [4., 8., 16., 32., 64.]
    assert p.anchor_sizes[0] == (9.6, 19.2)  # 0.03 and 0.06 of 320
    net = cls()
    anchors = net.anchors()
    # 4 anchors per cell (2 sizes + ratios 2, 1/2): (6400 + 1600 + 400 + 100 + 25 + 9) * 4
    assert sum(y.shape[0] * y.shape[1] * h.shape[0] for y, _, h, _ in anchors) == 34136
    y, x, h, w = anchors[0]
    np.testing.assert_allclose([y[0, 0, 0], x[0, 1, 0]], [2 / 320, 6 / 320], rtol=1e-6)
    np.testing.assert_allclose(h, [0.03, math.sqrt(9.6 * 19.2) / 320, 0.03 / math.sqrt(2),
                                   0.03 * math.sqrt(2)], rtol=1e-5)
    np.testing.assert_allclose(w, [0.03, math.sqrt(9.6 * 19.2) / 320, 0.03 * math.sqrt(2),
                                   0.03 / math.sqrt(2)], rtol=1e-5)
    model = net.keras_model()
    # ssd_small's 594,500 (5 classes) + the block3 heads: 3*3*64*16+16 and 3*3*64*20+20.
    assert model.count_params() == 594_500 + 9_232 + 11_540
    out = model(np.zeros((1, 320, 320, 3), np.float32))
    assert tuple(out['logits'][0].shape) == (1, 80, 80, 4, 5)
    assert tuple(out['localisations'][5].shape) == (1, 3, 3, 4, 4)


def test_small_params_keep_the_existing_networks():
    assert ssd_small.small_params(128) == nets_factory.get_network('ssd_small').default_params
    with pytest.raises(ValueError, match='6 feature maps need 7 scales'):
        ssd_small.small_params(320, first_stride=4)
    with pytest.raises(ValueError, match='first_stride'):
        ssd_small.small_params(320, first_stride=2)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(10., 16.), st.floats(0., 1.), st.floats(0., 1.)),
                min_size=1, max_size=20))
def test_small_network_covers_10_to_16_pixel_objects_anywhere(specs):
    # A square of side s >= 10 px (2.5 strides of the stride-4 map) is at most 2 px from an
    # anchor centre along each axis, so the 13.6 px anchor (or the 9.6 px one) overlaps it
    # with IoU >= 0.5 wherever it lies (10 px worst case: 9.79^2 / (100 + 184.3 - 95.8) = 0.51).
    net = nets_factory.get_network('ssd_small_320')()
    boxes = np.array([[t * (320 - s), l * (320 - s), t * (320 - s) + s, l * (320 - s) + s]
                      for s, t, l in specs], np.float64) / 320
    assert anchors_report.anchor_coverage(boxes, net).fraction == 1.0


# ---------------------------------------------------------------------------- coverage claims
@pytest.mark.slow
def test_default_anchors_miss_small_objects_and_fitted_anchors_cover_them(small_boxes):
    small_192 = nets_factory.get_network('ssd_small_192')()
    small_320 = nets_factory.get_network('ssd_small_320')()
    default_192 = anchors_report.anchor_coverage(small_boxes, small_192).fraction
    assert default_192 < 0.6  # README: about 21 %
    fitted_192 = anchors_report.anchor_coverage(
        small_boxes, anchor_fit.fit_anchors(small_boxes, small_192)).fraction
    # Fitting raises it, but a 24x24 grid (stride 8 px at 192) cannot reach 3 % boxes: the
    # best anchor shape on the nearest centre still misses most boxes under ~2.5 strides.
    assert default_192 + 0.15 < fitted_192 < 0.6
    fitted_320 = anchors_report.anchor_coverage(
        small_boxes, anchor_fit.fit_anchors(small_boxes, small_320)).fraction
    assert fitted_320 > 0.9
    assert anchors_report.anchor_coverage(small_boxes, small_320).fraction > 0.9
    # the report on the default network names the remedies
    warning = anchors_report.anchor_coverage(
        small_boxes, small_192, small_object_network='ssd_small_320').warning()
    assert '--anchors=auto' in warning and '--model_name=ssd_small_320' in warning


def _elongated_boxes(n=2000, seed=0):
    """Boxes `[n, 4]` of medium size (sqrt(area) 15-30 % of the side) and aspect 4:1 to 5:1
    or 1:5 to 1:4 (text lines, pens, poles): a shape the default anchors (ratios 2 and 1/2)
    do not have, on sizes every grid here can serve."""
    rng = np.random.default_rng(seed)
    side = rng.uniform(0.15, 0.30, n)
    aspect = rng.uniform(4, 5, n) ** rng.choice([-1, 1], n)  # w / h
    h, w = side / np.sqrt(aspect), side * np.sqrt(aspect)
    cy, cx = rng.uniform(h / 2, 1 - h / 2), rng.uniform(w / 2, 1 - w / 2)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize('model_name', ['ssd_small', 'ssd_small_192'])
def test_fitted_anchors_lift_coverage_over_90_where_the_default_is_under_60(model_name):
    # The claim, on data where the anchor shapes (not the grid) are what is missing:
    # measured 12 % -> 97 % (ssd_small) and 16 % -> 99 % (ssd_small_192). On small objects
    # the grid caps what fitting can do (test above); there the remedy is ssd_small_320.
    boxes = _elongated_boxes()
    net = nets_factory.get_network(model_name)()
    default = anchors_report.anchor_coverage(boxes, net).fraction
    fitted = anchors_report.anchor_coverage(boxes, anchor_fit.fit_anchors(boxes, net)).fraction
    assert default < 0.6 and fitted > 0.9, (default, fitted)


# ---------------------------------------------------------------------------- a short run
SHORT_STEPS, SHORT_BATCH = 100, 16


def _short_run_map(net, train_records, test_records, train_dir):
    """VOC07 mAP of `net` trained from scratch for SHORT_STEPS steps of SHORT_BATCH (seeds
    fixed; the training library as train_ssd.py wires it: paper augmentation, Adam with
    warm-up + cosine, weight decay) on `train_records`, evaluated on `test_records`."""
    import keras
    import tensorflow as tf
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import data as data_lib
    from ssd_tf import evaluation
    from ssd_tf import training
    keras.utils.set_random_seed(0)
    shape, anchors = net.params.img_shape, net.anchors()
    strategy = tf.distribute.get_strategy()
    model = net.keras_model(weight_decay=0.0005)
    schedule = training.WarmupDecaySchedule(0.002, 'cosine', decay_steps=1, decay_factor=0.94,
                                            end_learning_rate=1e-5, total_steps=SHORT_STEPS,
                                            warmup_steps=20)
    trainer = training.Trainer(net, model, training.build_optimizer(training.OptimizerConfig(),
                                                                    schedule),
                               strategy, str(train_dir), SHORT_BATCH,
                               loss_config=training.LossConfig(0.5, 3., 1., 0.))
    dataset = data_lib.build_dataset(
        train_records,
        lambda i, l, b, seed=None: prep.preprocess_for_train(i, l, b, out_shape=shape,
                                                             seed=seed),
        lambda l, b: net.bboxes_encode(l, b, anchors), batch_size=SHORT_BATCH,
        is_training=True, seed=0, with_gt=True, num_classes=net.params.num_classes)
    trainer.train(strategy.experimental_distribute_dataset(dataset), SHORT_STEPS,
                  log_every_n_steps=1000, save_interval_secs=10 ** 6,
                  save_summaries_secs=10 ** 6)
    eval_ds = data_lib.build_eval_dataset(
        test_records, lambda i, l, b: prep.preprocess_for_eval(i, l, b, out_shape=shape),
        batch_size=16)
    run = evaluation.run_evaluation(evaluation.keras_detector(model, net), eval_ds,
                                    net.params.num_classes)
    return evaluation.compute_metrics(run)['voc07']['map']


@pytest.mark.slow
def test_a_short_run_detects_small_objects_better_with_fitted_anchors(tmp_path):
    # ssd_small_192 on the small mode: default anchors cover ~21 % of the boxes, fitted ~49 %.
    # 100 steps of 16 from scratch, seeds fixed: measured VOC07 0.107 (default) vs 0.190
    # (fitted) on 48 test images; the margin asserted is half the measured gap.
    train = synthetic.make_synthetic_split('train', 320, seed=0, objects='small')
    test = synthetic.make_synthetic_split('test', 48, seed=0, objects='small')
    net = nets_factory.get_network('ssd_small_192')()
    fitted = anchor_fit.fit_anchors(anchors_report.boxes_of_records(train), net)
    default_map = _short_run_map(net, train, test, tmp_path / 'default')
    fitted_map = _short_run_map(fitted, train, test, tmp_path / 'auto')
    assert fitted_map > default_map + 0.04, (default_map, fitted_map)
