"""Tests of ssd_tf.evaluation and eval_ssd.py on a tiny random network."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import eval_ssd
from nets import serving
from nets import ssd_vgg_keras
from nets.ssd_base import SSDNet, SSDParams
from ssd_tf import data as data_lib
from ssd_tf import evaluation
from ssd_tf import images
from ssd_tf import metrics
from ssd_tf import run_config
from ssd_tf.datasets import records as records_lib
from ssd_tf.datasets import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A VGG-style SSD small enough for tests: 64x64 input, feature maps 8, 4, 2.
_TINY_SPEC = ssd_vgg_keras.ARCH_SPECS['ssd_300_vgg']._replace(
    blocks=((1, 8), (1, 8), (1, 16), (1, 16), (1, 16)), conv6=(16, 3, 1), conv7=16,
    extras=(ssd_vgg_keras.ExtraBlock('block8', 8, 16, 3, 2, 1),), dropout=False)


class TinyNet(SSDNet):
    model_name = 'tiny'
    default_params = SSDParams(
        img_shape=(64, 64), num_classes=5, no_annotation_label=5,
        feat_layers=['block4', 'block7', 'block8'], feat_shapes=[(8, 8), (4, 4), (2, 2)],
        anchor_size_bounds=[.15, .9], anchor_sizes=[(10., 20.), (20., 40.), (40., 60.)],
        anchor_ratios=[[2, .5], [2, .5], [2, .5]], anchor_steps=[8, 16, 32],
        anchor_offset=.5, normalizations=[20, -1, -1], prior_scaling=[.1, .1, .2, .2])

    def keras_model(self, **kw):
        return ssd_vgg_keras.build_ssd_vgg_keras(self.params, arch=_TINY_SPEC, name='tiny',
                                                 **kw)


def _get_network(name):
    if name != 'tiny':
        raise ValueError(f'unknown {name}')
    return TinyNet


def _tiny_model(num_classes=5, seed=0):
    """A randomly initialised (seeded) TinyNet and its Keras model."""
    keras.utils.set_random_seed(seed)
    net = TinyNet(TinyNet.default_params._replace(num_classes=num_classes,
                                                  no_annotation_label=num_classes))
    return net, net.keras_model()


def _save_train_dir(path, model, step=7, config=None):
    os.makedirs(path, exist_ok=True)
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(path), 3)
    prefix = mgr.save(checkpoint_number=step)
    with open(os.path.join(path, 'config.json'), 'w') as f:
        json.dump(config or {'model_name': 'tiny', 'num_classes': 5}, f)
    return prefix


def _flags(*args):
    argv = ['eval_ssd'] + list(args)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)


@pytest.fixture(autouse=True)
def _reset_flags():
    yield
    flags.FLAGS.unparse_flags()


# ---------------------------------------------------------------------------- pieces
def test_to_original_relative_pad_and_resize():
    # A 100x200 image shrunk to 50x100 and centred in a 100x100 input: the original spans
    # rows 25..75 -> bbox_img [.25, 0, .75, 1]. A box on the input at [.25, .5, .5, 1] is
    # rows 0..50% and columns 50..100% of the original: [0, .5, .5, 1].
    out = evaluation.to_original_relative([[.25, .5, .5, 1.], [0., 0., .1, .1]],
                                          [.25, 0., .75, 1.])
    np.testing.assert_allclose(out, [[0., .5, .5, 1.], [0., 0., 0., .1]])  # clipped to image


def test_resolve_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match='nowhere/model.ckpt-5'):
        run_config.resolve_checkpoint(str(tmp_path / 'nowhere' / 'model.ckpt-5'))
    with pytest.raises(ValueError, match=str(tmp_path)):
        run_config.resolve_checkpoint(str(tmp_path))  # an empty directory
    with pytest.raises(ValueError, match='checkpoint_path'):
        run_config.resolve_checkpoint('')


def test_resolve_kinds_and_step(tmp_path):
    _, model = _tiny_model()
    prefix = _save_train_dir(str(tmp_path / 'train'), model, step=12)
    assert run_config.resolve_checkpoint(str(tmp_path / 'train')) == ('tf2', prefix)
    assert run_config.checkpoint_step(prefix) == 12
    # a name-based (slim-like) checkpoint
    slim = str(tmp_path / 'slim' / 'model.ckpt-3')
    os.makedirs(os.path.dirname(slim))
    with tf.compat.v1.Graph().as_default():
        tf.compat.v1.get_variable('tiny/conv6/biases', initializer=tf.zeros([16]))
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, slim)
    assert run_config.resolve_checkpoint(slim) == ('slim', slim)
    assert run_config.checkpoint_step(slim) == 0  # global_step variable is stored as 0


@pytest.mark.slow
def test_run_evaluation_matches_voc_eval_on_written_voc_set(tmp_path):
    """End to end on a VOC directory: metrics.json AP == voc_eval(results files, XMLs)."""
    voc_dir = synthetic.write_synthetic_voc(str(tmp_path / 'voc'), 2, 6, seed=3, image_size=96)
    train = str(tmp_path / 'train')
    _, model = _tiny_model()
    _save_train_dir(train, model)
    out = str(tmp_path / 'eval')
    _flags(f'--checkpoint_path={train}', f'--eval_dir={out}', '--dataset_name=voc',
           f'--dataset_dir={voc_dir}', '--dataset_split_name=test', '--batch_size=4',
           '--coco_metrics')
    e = eval_ssd.Evaluation(get_network=_get_network)
    m = e.evaluate(e.path, e.kind)
    for name in ('metrics.json', 'metrics.txt', 'coco_detections.json',
                 'coco_groundtruth.json', 'pr_curves.png', 'detections.png'):
        assert os.path.isfile(os.path.join(out, name)), name
    saved = json.load(open(os.path.join(out, 'metrics.json')))
    assert saved['step'] == 7 and saved['num_images'] == 6
    assert set(saved['coco']) == set(metrics.COCO_METRIC_NAMES)
    detpath = os.path.join(out, 'results', 'comp4_det_test_{}.txt')
    annopath = os.path.join(voc_dir, 'Annotations', '{}.xml')
    imageset = os.path.join(voc_dir, 'ImageSets', 'Main', 'test.txt')
    checked = 0
    for name in e.class_names:
        for use07, key in ((True, 'voc07'), (False, 'voc12')):
            _, _, ap = metrics.voc_eval(detpath, annopath, imageset, name, use_07_metric=use07)
            want = saved[key]['ap'][name]
            if want is None:
                assert np.isnan(ap)
            else:
                assert ap == pytest.approx(want, abs=1e-6)
                checked += 1
    assert checked > 0
    assert m['voc07']['map'] == pytest.approx(saved['voc07']['map'])
    # COCO numbers equal pycocotools on the written files
    assert metrics.coco_metrics(os.path.join(out, 'coco_groundtruth.json'),
                                os.path.join(out, 'coco_detections.json')) == pytest.approx(
        saved['coco'])


def test_perfect_detector_scores_one():
    """A detector returning the ground truth gives AP 1 (checks the coordinate chain)."""
    recs = synthetic.make_synthetic_examples(4, seed=1, image_size=80)
    recs = [r for r in recs if r.num_boxes] or pytest.skip('no boxes drawn')
    gt = {r.image_id: r for r in recs}
    order = [r.image_id for r in recs]
    calls = {'i': 0}

    def detector(images):
        b = int(images.shape[0])
        k = 8
        out = dict(scores=np.zeros((b, k), np.float32), bboxes=np.zeros((b, k, 4), np.float32),
                   classes=np.zeros((b, k), np.int32), num_detections=np.zeros(b, np.int32))
        for j in range(b):
            r = gt[order[calls['i']]]
            calls['i'] += 1
            n = r.num_boxes
            out['scores'][j, :n] = .9
            out['bboxes'][j, :n] = r.boxes
            out['classes'][j, :n] = r.labels
            out['num_detections'][j] = n
        return out

    ds = data_lib.build_eval_dataset(
        recs, lambda im, l, b: (tf.image.resize(tf.cast(im, tf.float32), (32, 32)), l, b),
        batch_size=3)
    run = evaluation.run_evaluation(detector, ds, 5, list(synthetic.SYNTHETIC_LABEL_MAP.names))
    res = run.evaluator.evaluate()
    assert run.num_images == len(recs)
    for name, ap in res['ap12'].items():
        assert np.isnan(ap) or ap == pytest.approx(1.), name
    assert res['map07'] == pytest.approx(1.)


@pytest.mark.slow
@pytest.mark.parametrize('resize,out_shape', [('PAD_AND_RESIZE', (64, 48)),
                                               ('CENTRAL_CROP', (96, 112)),
                                               ('WARP_RESIZE', (50, 70))])
def test_detections_map_back_to_the_original_image(resize, out_shape):
    """A detector returning the ground truth as the eval pre-processing moved it (relative to
    the network input) scores AP 1: bbox_img maps boxes back to the original image."""
    from preprocessing import ssd_vgg_preprocessing as prep
    recs = [r for r in synthetic.make_synthetic_examples(6, seed=5, image_size=80)
            if r.num_boxes]
    moved = [prep.preprocess_for_eval(r.image, r.labels, r.boxes, out_shape=out_shape,
                                      resize=resize)[2].numpy() for r in recs]
    assert not np.allclose(moved[0], recs[0].boxes) or resize == 'WARP_RESIZE'
    served = iter(range(len(recs)))

    def detector(images):
        b, k = int(images.shape[0]), 8
        out = dict(scores=np.zeros((b, k), np.float32), bboxes=np.zeros((b, k, 4), np.float32),
                   classes=np.zeros((b, k), np.int32), num_detections=np.zeros(b, np.int32))
        for j in range(b):
            i = next(served)
            n = recs[i].num_boxes
            out['scores'][j, :n] = np.linspace(.9, .5, n)
            out['bboxes'][j, :n] = moved[i]
            out['classes'][j, :n] = recs[i].labels
            out['num_detections'][j] = n
        return out

    ds = data_lib.build_eval_dataset(recs, eval_ssd.make_preprocess_fn(out_shape,
                                                                       prep.Resize[resize]),
                                     batch_size=4)
    run = evaluation.run_evaluation(detector, ds, 5, list(synthetic.SYNTHETIC_LABEL_MAP.names))
    for i, r in enumerate(recs):
        np.testing.assert_allclose(run.detections[i][0], r.boxes, atol=1e-5)
    assert run.evaluator.evaluate()['map12'] == pytest.approx(1.)


def _write_shards(recs, tmp_path, name='syn'):
    from ssd_tf.datasets import tfrecord
    return tfrecord.write_tfrecords(recs, str(tmp_path / 'tfr'), name, 'test', num_shards=2)


@pytest.mark.slow
def test_run_evaluation_streams_tfrecords_like_records(tmp_path, monkeypatch):
    """The one pipeline: TFRecord shards of a set (streamed by build_eval_dataset, nothing read
    eagerly) give the metrics and the kept samples of the Records they were written from."""
    from ssd_tf.datasets import tfrecord
    recs = synthetic.make_synthetic_examples(5, seed=2, image_size=80)
    _write_shards(recs, tmp_path)
    monkeypatch.setattr(tfrecord, 'read_tfrecord_records', None)  # must not be needed
    net, model = _tiny_model()
    detector = evaluation.keras_detector(model, net)
    prep = eval_ssd.make_preprocess_fn((64, 64), 4)
    names = list(synthetic.SYNTHETIC_LABEL_MAP.names)
    runs = [evaluation.run_evaluation(
        detector, data_lib.build_eval_dataset(src, prep, batch_size=2, with_encoded=True),
        5, names, num_sample_images=2)
        for src in (recs, str(tmp_path / 'tfr' / '*.tfrecord'))]
    r1, r2 = (r.evaluator.evaluate() for r in runs)
    assert runs[1].num_images == 5
    # shards hold records round-robin and are read interleaved: the records' order again
    assert runs[1].evaluator.image_ids == [r.image_id for r in recs]
    assert r1['map07'] == pytest.approx(r2['map07'], abs=1e-9)
    for name in names:
        assert r1['per_class'][name]['npos'] == r2['per_class'][name]['npos']
    assert sorted(runs[1].samples) == [0, 1]
    encoded, boxes, labels = runs[1].samples[1]
    np.testing.assert_array_equal(images.decode_record_image(
        records_lib.make_record('x', 1, 1, [], [], [], encoded=encoded)), recs[1].image)
    np.testing.assert_allclose(boxes, recs[1].boxes)
    assert labels.tolist() == list(recs[1].labels)


@pytest.mark.slow
def test_eval_ssd_reads_tfrecords_through_the_streaming_pipeline(tmp_path, monkeypatch):
    """eval_ssd.py --dataset_name=tfrecord no longer reads every record into memory first."""
    from ssd_tf.datasets import tfrecord
    recs = synthetic.make_synthetic_examples(4, seed=3, image_size=80)
    _write_shards(recs, tmp_path)
    monkeypatch.setattr(tfrecord, 'read_tfrecord_records', None)
    _, model = _tiny_model()
    train = str(tmp_path / 'train')
    _save_train_dir(train, model, config={
        'model_name': 'tiny', 'num_classes': 5,
        'label_names': list(synthetic.SYNTHETIC_LABEL_MAP.names)})
    out = str(tmp_path / 'eval')
    _flags(f'--checkpoint_path={train}', f'--eval_dir={out}', '--dataset_name=tfrecord',
           f'--dataset_dir={tmp_path / "tfr"}', '--batch_size=3', '--num_sample_images=2')
    e = eval_ssd.Evaluation(get_network=_get_network)
    assert all(isinstance(f, str) and f.endswith('.tfrecord') for f in e.source)
    m = e.evaluate(e.path, e.kind)
    assert m['num_images'] == 4
    assert os.path.isfile(os.path.join(out, 'detections.png'))


def test_run_evaluation_ignores_crowd_boxes():
    """A detection on a crowd box is neither TP nor FP and the crowd box is not counted, even
    with remove_difficult=False (golden in tests/test_metrics.py::test_voc_ap_crowd_golden)."""
    # 100x100 image, class 1: a real box and a crowd box; detections: .9 on the crowd box,
    # .8 on nothing (FP), .7 on the real box (TP) -> npos 1, tp/fp [0, 1], [1, 0]... AP .5.
    real, crowd = [.1, .1, .3, .3], [.5, .5, .9, .9]
    rec = records_lib.make_record('a', 100, 100, [real, crowd], [1, 1], ['circle'] * 2,
                                  is_crowd=[0, 1], image=np.zeros((100, 100, 3), np.uint8))

    def detector(images):
        return dict(scores=np.array([[.9, .8, .7]], np.float32),
                    bboxes=np.array([[crowd, [0., .6, .05, .65], real]], np.float32),
                    classes=np.array([[1, 1, 1]], np.int32), num_detections=np.array([3]))

    ds = data_lib.build_eval_dataset([rec], lambda im, l, b: (tf.cast(im, tf.float32), l, b))
    for remove_difficult in (True, False):
        res = evaluation.run_evaluation(detector, ds, 5, remove_difficult=remove_difficult
                                        ).evaluator.evaluate()
        assert res['per_class']['class_1']['npos'] == 1
        assert (res['per_class']['class_1']['tp'], res['per_class']['class_1']['fp']) == (1, 1)
        assert res['ap12']['class_1'] == pytest.approx(.5)


@pytest.mark.slow
def test_label_out_of_range_is_a_clear_error():
    recs = [records_lib.make_record('a', 20, 20, [[.1, .1, .5, .5]], [7], ['x'],
                                    image=np.zeros((20, 20, 3), np.uint8))]
    net, model = _tiny_model()
    ds = data_lib.build_eval_dataset(
        recs, lambda im, l, b: (tf.image.resize(tf.cast(im, tf.float32), (64, 64)), l, b))
    with pytest.raises(ValueError, match='--num_classes=5'):
        evaluation.run_evaluation(evaluation.keras_detector(model, net), ds, 5)


# ---------------------------------------------------------------------------- eval_ssd
@pytest.mark.slow
def test_eval_ssd_checkpoint_and_savedmodel_agree(tmp_path):
    _, model = _tiny_model()
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    # SavedModel with the networks' raw serving signature (flattened per-layer outputs).
    sm = str(tmp_path / 'saved_model')
    tf.saved_model.save(model, sm, signatures={'serving_default':
                                               serving.serving_signature(model)})
    with open(os.path.join(sm, 'config.json'), 'w') as f:
        json.dump({'model_name': 'tiny', 'num_classes': 5}, f)
    results = {}
    for name, path in (('ckpt', train), ('sm', sm)):
        out = str(tmp_path / f'eval_{name}')
        _flags(f'--checkpoint_path={path}', f'--eval_dir={out}', '--synthetic_num_images=5',
               '--batch_size=2', '--num_sample_images=0')
        e = eval_ssd.Evaluation(get_network=_get_network)
        assert e.kind == ('tf2' if name == 'ckpt' else 'saved_model')
        e.evaluate(e.path, e.kind)
        results[name] = (json.load(open(os.path.join(out, 'metrics.json'))),
                         metrics.read_voc_results(
                             os.path.join(out, 'results', 'comp4_det_test_circle.txt')))
    (m1, det1), (m2, det2) = results['ckpt'], results['sm']
    # Same detections (the two graphs may round the last float bit differently).
    assert len(det1[0]) > 0 and det1[0] == det2[0]
    np.testing.assert_allclose(det1[1], det2[1], atol=1e-5)
    np.testing.assert_allclose(det1[2], det2[2], atol=1e-3)
    for key in ('voc07', 'voc12'):
        assert m1[key]['map'] == pytest.approx(m2[key]['map'], abs=1e-9)


@pytest.mark.slow
def test_eval_ssd_end_to_end_export_agrees_with_checkpoint(tmp_path):
    """`ssd_tf.export`'s SavedModel (image bytes in, boxes relative to the original out, TF
    Serving's versioned layout) evaluates like the checkpoint it came from."""
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model as export
    net, model = _tiny_model(seed=6)
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    h, w = net.params.img_shape

    def preprocess(image):
        out = prep.preprocess_for_eval(image, tf.zeros([0], tf.int64), tf.zeros([0, 4]),
                                       out_shape=(h, w))
        return out[0], out[3]
    exported = str(tmp_path / 'export')
    version = export.export_saved_model(net, model, preprocess, exported, version=3,
                                        label_names=list(synthetic.SYNTHETIC_LABEL_MAP.names),
                                        select_threshold=evaluation.SELECT_THRESHOLD,
                                        nms_threshold=evaluation.NMS_THRESHOLD,
                                        max_detections=evaluation.KEEP_TOP_K,
                                        top_k=evaluation.SELECT_TOP_K)
    assert run_config.resolve_checkpoint(exported) == ('saved_model', version)
    dets = []
    for name, path in (('ckpt', train), ('export', exported)):
        out = str(tmp_path / f'eval_{name}')
        _flags(f'--checkpoint_path={path}', f'--eval_dir={out}', '--synthetic_num_images=4',
               '--batch_size=3', '--num_sample_images=0')
        e = eval_ssd.Evaluation(get_network=_get_network)
        e.evaluate(e.path, e.kind)
        dets.append([metrics.read_voc_results(os.path.join(out, 'results',
                                                           f'comp4_det_test_{n}.txt'))
                     for n in e.class_names])
    assert sum(len(d[0]) for d in dets[0]) > 0
    for (ids1, s1, b1), (ids2, s2, b2) in zip(*dets):
        assert ids1 == ids2
        np.testing.assert_allclose(s1, s2, atol=1e-5)
        np.testing.assert_allclose(b1, b2, atol=1e-2)  # pixels


def _write_slim_checkpoint(prefix, model):
    """A TF1 name-based checkpoint of `model` under its slim names (as users' ones)."""
    values = {name: v.numpy() for name, v in ssd_vgg_keras.slim_variable_map(model).items()}
    with tf.compat.v1.Graph().as_default():
        for name, value in values.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix)


@pytest.mark.slow
def test_eval_ssd_slim_checkpoint_equals_tf2_checkpoint(tmp_path):
    _, model = _tiny_model(seed=4)
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    slim = str(tmp_path / 'slim' / 'model.ckpt-9')
    os.makedirs(os.path.dirname(slim))
    _write_slim_checkpoint(slim, model)
    steps, dets = [], []
    for path, kind in ((train, 'tf2'), (slim, 'slim')):
        out = str(tmp_path / f'eval_{kind}')
        _flags(f'--checkpoint_path={path}', f'--eval_dir={out}', '--synthetic_num_images=3',
               '--num_sample_images=0', '--model_name=tiny', '--num_classes=5')
        e = eval_ssd.Evaluation(get_network=_get_network)
        assert e.kind == kind
        steps.append(e.evaluate(e.path, e.kind)['step'])
        dets.append([metrics.read_voc_results(os.path.join(out, 'results',
                                                           f'comp4_det_test_{n}.txt'))
                     for n in e.class_names])
    assert steps == [7, 9]
    for (ids1, s1, b1), (ids2, s2, b2) in zip(*dets):  # same weights -> same detections
        assert ids1 == ids2
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(b1, b2)
    assert sum(len(d[0]) for d in dets[0]) > 0


@pytest.mark.slow
def test_eval_ssd_class_count_mismatch_is_an_error(tmp_path):
    _, model = _tiny_model(num_classes=3)
    train = str(tmp_path / 'train')
    # the config claims 5 classes, the weights have 3
    _save_train_dir(train, model)
    _flags(f'--checkpoint_path={train}', f'--eval_dir={tmp_path / "e"}',
           '--synthetic_num_images=2')
    e = eval_ssd.Evaluation(get_network=_get_network)
    with pytest.raises(ValueError, match='--num_classes'):
        e.evaluate(e.path, e.kind)
    # a flag contradicting the run config
    _flags(f'--checkpoint_path={train}', '--num_classes=21')
    with pytest.raises(ValueError, match='--num_classes=21'):
        eval_ssd.Evaluation(get_network=_get_network)


@pytest.mark.slow
def test_eval_ssd_moving_average_needs_the_ema_file(tmp_path):
    _, model = _tiny_model()
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    _flags(f'--checkpoint_path={train}', f'--eval_dir={tmp_path / "e"}',
           '--synthetic_num_images=2', '--moving_average_decay=0.999')
    e = eval_ssd.Evaluation(get_network=_get_network)
    with pytest.raises(ValueError, match='ema.weights.h5'):
        e.evaluate(e.path, e.kind)
    # with the file, its weights are the ones evaluated
    _, other = _tiny_model(seed=1)
    other.save_weights(os.path.join(train, 'ema.weights.h5'))
    e.restore(e.path, e.kind)
    np.testing.assert_array_equal(e.model.get_weights()[0], other.get_weights()[0])


@pytest.mark.slow
def test_eval_ssd_wait_for_checkpoints_writes_summaries(tmp_path):
    _, model = _tiny_model()
    train = str(tmp_path / 'train')
    _save_train_dir(train, model, step=3)
    out = str(tmp_path / 'eval')
    _flags(f'--checkpoint_path={train}', f'--eval_dir={out}', '--wait_for_checkpoints',
           '--checkpoint_timeout=1', '--synthetic_num_images=2', '--num_sample_images=0')
    e = eval_ssd.Evaluation(get_network=_get_network)
    res = evaluation.watch_checkpoints(
        train, lambda p: e.evaluate(p, run_config.resolve_checkpoint(p)[0], summaries=True),
        timeout=1)
    assert len(res) == 1 and res[0]['step'] == 3
    events = [f for f in os.listdir(out) if f.startswith('events.out.tfevents')]
    assert events
    values = {}
    for ev in tf.compat.v1.train.summary_iterator(os.path.join(out, events[0])):
        for v in ev.summary.value:
            values[v.tag] = (ev.step, float(tf.make_ndarray(v.tensor)))
    assert values['eval/mAP_VOC07'][0] == 3
    assert values['eval/mAP_VOC07'][1] == pytest.approx(np.nan_to_num(res[0]['voc07']['map']))


def _tiny_checkpoints(directory, steps):
    """Writes one tiny TF2 checkpoint per step (a 3-float variable whose value is the step)
    with the training loop's manager; returns the prefixes, oldest first."""
    v = tf.Variable([0.0, 0.0, 0.0])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), directory, max_to_keep=None)
    prefixes = []
    for step in steps:
        v.assign([float(step)] * 3)
        prefixes.append(manager.save(checkpoint_number=step))
    return prefixes


def test_watch_checkpoints_skips_a_damaged_checkpoint_and_evaluates_the_newest_intact(
        tmp_path, capsys):
    """The newest checkpoint is cut short (its .data file truncated to half): the watcher
    does not pass it to evaluate_fn (which would fail on it and end the watch), names it on
    stderr, evaluates the newest intact one (step 2) instead, and leaves the files alone."""
    d = str(tmp_path / 'train')
    p1, p2, p3 = _tiny_checkpoints(d, [1, 2, 3])
    data3 = tf.io.gfile.glob(p3 + '.data-*')[0]
    with open(data3, 'rb') as f:
        blob = f.read()
    with open(data3, 'wb') as f:
        f.write(blob[:len(blob) // 2])
    seen = []
    res = evaluation.watch_checkpoints(
        d, lambda p: seen.append(p) or float(tf.train.load_checkpoint(p).get_tensor(
            'v/.ATTRIBUTES/VARIABLE_VALUE')[0]), timeout=1)
    assert seen == [p2] and res == [2.0]
    err = capsys.readouterr().err
    assert p3 in err and 'damaged' in err
    assert os.path.getsize(data3) == len(blob) // 2 and tf.io.gfile.exists(p1 + '.index')


def test_watch_checkpoints_evaluates_an_intact_newest_checkpoint_once(tmp_path, capsys):
    d = str(tmp_path / 'train')
    _, p2 = _tiny_checkpoints(d, [1, 2])
    seen = []
    assert evaluation.watch_checkpoints(d, lambda p: seen.append(p) or len(seen),
                                        timeout=1) == [1]
    assert seen == [p2] and 'damaged' not in capsys.readouterr().err


@pytest.mark.slow
def test_eval_ssd_cli_wrong_path_errors_clearly(tmp_path):
    missing = str(tmp_path / 'no_such_run')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'eval_ssd.py'),
                           f'--checkpoint_path={missing}', f'--eval_dir={tmp_path / "e"}'],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert proc.returncode != 0
    assert missing in proc.stderr and 'Traceback' not in proc.stderr
    assert not os.path.exists(tmp_path / 'e' / 'metrics.json')


# ---------------------------------------------------------------------------- flags / files
def test_eval_ssd_checkpoint_path_is_required():
    """No default under /tmp: without --checkpoint_path the error names the flag."""
    _flags('--synthetic_num_images=2')
    assert flags.FLAGS.checkpoint_path is None and flags.FLAGS.eval_dir is None
    with pytest.raises(ValueError, match='--checkpoint_path is required'):
        eval_ssd.Evaluation(get_network=_get_network)


@pytest.mark.slow
def test_eval_ssd_reports_go_next_to_the_run(tmp_path):
    """Without --eval_dir: <train_dir>/eval for a training directory, and beside (not inside)
    a SavedModel version directory: export/3 -> export/eval_3."""
    _, model = _tiny_model()
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    _flags(f'--checkpoint_path={train}', '--synthetic_num_images=2', '--num_sample_images=0')
    e = eval_ssd.Evaluation(get_network=_get_network)
    assert e.eval_dir == os.path.join(train, 'eval')
    e.evaluate(e.path, e.kind)
    assert os.path.isfile(os.path.join(train, 'eval', 'metrics.json'))
    version = str(tmp_path / 'export' / '3')
    tf.saved_model.save(model, version, signatures={'serving_default':
                                                    serving.serving_signature(model)})
    with open(os.path.join(version, 'config.json'), 'w') as f:
        json.dump({'model_name': 'tiny', 'num_classes': 5}, f)
    _flags(f'--checkpoint_path={tmp_path / "export"}', '--synthetic_num_images=2')
    e = eval_ssd.Evaluation(get_network=_get_network)
    assert e.eval_dir == str(tmp_path / 'export' / 'eval_3')
    assert eval_ssd.default_eval_dir('slim', '/ckpts/model.ckpt-9', '/ckpts/model.ckpt-9') == \
        '/ckpts/eval'


@pytest.mark.slow
@pytest.mark.parametrize('flag,match', [('--master=grpc://host:2222', '--master'),
                                        ('--gpu_memory_fraction=0.5', '--gpu_memory_fraction'),
                                        ('--num_preprocessing_threads=8', '--num_readers'),
                                        ('--preprocessing_name=inception', 'ssd_vgg')])
def test_eval_ssd_flags_are_not_silently_ignored(tmp_path, flag, match):
    _, model = _tiny_model()
    _save_train_dir(str(tmp_path / 'train'), model)  # a valid run: only the flag is wrong
    _flags(f'--checkpoint_path={tmp_path / "train"}', '--synthetic_num_images=2', flag)
    with pytest.raises(ValueError, match=match):
        eval_ssd.Evaluation(get_network=_get_network)


def test_eval_ssd_preprocessing_names_of_slim_are_accepted():
    # Accepted: slim's 'ssd_vgg' and every network's name (slim also named the pre-processing
    # after the network); anything else is refused, naming the flag and the accepted names.
    from nets import nets_factory
    accepted = ['ssd_vgg'] + sorted(nets_factory.networks_map)
    assert {'ssd_300_vgg', 'ssd_512_vgg'} <= set(accepted)
    for name in accepted:
        _flags('--checkpoint_path=x', f'--preprocessing_name={name}')
        assert eval_ssd.check_flags() is None and flags.FLAGS.preprocessing_name == name
    for name in ('ssd_vgg_300', 'vgg', 'SSD_VGG'):
        _flags('--checkpoint_path=x', f'--preprocessing_name={name}')
        with pytest.raises(ValueError, match=rf"--preprocessing_name={name} is unknown.*"
                                             r"'ssd_vgg' \(also named .*ssd_300_vgg"):
            eval_ssd.check_flags()


# ---------------------------------------------------------------------------- tiles
def _voc_results(out, class_names):
    return [metrics.read_voc_results(os.path.join(out, 'results', f'comp4_det_test_{n}.txt'))
            for n in class_names]


def test_eval_ssd_tiles_run_the_tiled_module(tmp_path):
    """--tiles=2x2 evaluates through the export's module with tiles (image bytes in);
    --tiles=1x1 is the same pipeline without them, so the two differ only by the tiles."""
    _, model = _tiny_model(seed=6)
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    dets = {}
    for tiles in ('1x1', '2x2'):
        out = str(tmp_path / f'eval_{tiles}')
        _flags(f'--checkpoint_path={train}', f'--eval_dir={out}', '--synthetic_num_images=3',
               '--batch_size=2', '--num_sample_images=0', f'--tiles={tiles}',
               '--tile_overlap=0.5', '--tile_max_box=0')
        e = eval_ssd.Evaluation(get_network=_get_network)
        assert e.detector.input_kind == 'encoded'
        m = e.evaluate(e.path, e.kind)
        assert 0. <= m['voc07']['map'] <= 1.
        dets[tiles] = _voc_results(out, e.class_names)
    n1 = sum(len(d[0]) for d in dets['1x1'])
    n2 = sum(len(d[0]) for d in dets['2x2'])
    assert n1 > 0 and n2 > 0
    assert dets['1x1'] != dets['2x2']


def test_eval_ssd_test_time_flip_is_used_and_recorded(tmp_path):
    """--test_time_flip: other detections than without it (the model also runs on the mirror
    images); metrics.json records it and the tiles (none here, 2x2 with them)."""
    _, model = _tiny_model(seed=6)
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    dets, recorded = {}, {}
    for args in ([], ['--test_time_flip'], ['--test_time_flip', '--tiles=2x2']):
        out = str(tmp_path / f'eval_{len(dets)}')
        _flags(f'--checkpoint_path={train}', f'--eval_dir={out}', '--synthetic_num_images=3',
               '--batch_size=2', '--num_sample_images=0', *args)
        e = eval_ssd.Evaluation(get_network=_get_network)
        e.evaluate(e.path, e.kind)
        dets[' '.join(args)] = _voc_results(out, e.class_names)
        with open(os.path.join(out, 'metrics.json')) as f:
            m = json.load(f)
        recorded[' '.join(args)] = (m['test_time_flip'], m['tiles'])
    assert recorded == {'': (False, None), '--test_time_flip': (True, None),
                        '--test_time_flip --tiles=2x2': (True, '2x2')}
    assert sum(len(d[0]) for d in dets['']) > 0
    assert dets[''] != dets['--test_time_flip'] != dets['--test_time_flip --tiles=2x2']


@pytest.mark.parametrize('args,match', [
    (['--tiles=2x2', '--eval_resize=3'], '--eval_resize=3 does not apply'),
    (['--tiles=2by2'], "--tiles='2by2' is not ROWSxCOLS"),
    (['--tiles=2x2', '--tile_overlap=-0.1'], '--tile_overlap=-0.1'),
    (['--tiles=2x2', '--tile_max_box=2'], '--tile_max_box=2.0'),
])
def test_eval_ssd_bad_tiles_flags_are_named(tmp_path, args, match):
    _, model = _tiny_model()
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    _flags(f'--checkpoint_path={train}', f'--eval_dir={tmp_path / "e"}', *args)
    with pytest.raises(ValueError, match=match):
        eval_ssd.Evaluation(get_network=_get_network)


@pytest.mark.slow
def test_tiled_export_evaluates_like_eval_ssd_tiles_on_the_checkpoint(tmp_path):
    """export_saved_model(tiles=...) records the tiles and its SavedModel evaluates like
    eval_ssd.py --tiles on the checkpoint it came from; --tiles on that SavedModel is an
    error (its tiling is fixed at export)."""
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model as export
    net, model = _tiny_model(seed=6)
    train = str(tmp_path / 'train')
    _save_train_dir(train, model)
    exported = str(tmp_path / 'export')
    version = export.export_saved_model(
        net, model, prep.image_preprocess_fn(tuple(net.params.img_shape)), exported,
        label_names=list(synthetic.SYNTHETIC_LABEL_MAP.names),
        select_threshold=evaluation.SELECT_THRESHOLD, nms_threshold=evaluation.NMS_THRESHOLD,
        max_detections=evaluation.KEEP_TOP_K, top_k=evaluation.SELECT_TOP_K,
        tiles=(2, 3, 0.25, 0.2))
    with open(os.path.join(version, 'assets', run_config.EXPORT_CONFIG_FILENAME)) as f:
        assert json.load(f)['tiles'] == {'rows': 2, 'cols': 3, 'overlap': 0.25, 'max_box': 0.2}
    dets = []
    for path, extra in ((train, ['--tiles=2x3', '--tile_max_box=0.2']), (exported, [])):
        out = str(tmp_path / f'eval_{len(dets)}')
        _flags(f'--checkpoint_path={path}', f'--eval_dir={out}', '--synthetic_num_images=3',
               '--batch_size=2', '--num_sample_images=0', *extra)
        e = eval_ssd.Evaluation(get_network=_get_network)
        e.evaluate(e.path, e.kind)
        dets.append(_voc_results(out, e.class_names))
    assert sum(len(d[0]) for d in dets[0]) > 0
    for (ids1, s1, b1), (ids2, s2, b2) in zip(*dets):
        assert ids1 == ids2
        np.testing.assert_allclose(s1, s2, atol=1e-5)
        np.testing.assert_allclose(b1, b2, atol=1e-2)  # pixels
    _flags(f'--checkpoint_path={exported}', f'--eval_dir={tmp_path / "e"}', '--tiles=2x2')
    with pytest.raises(ValueError, match='fixed at export'):
        eval_ssd.Evaluation(get_network=_get_network)
    _flags(f'--checkpoint_path={exported}', f'--eval_dir={tmp_path / "e"}', '--test_time_flip')
    with pytest.raises(ValueError, match='--test_time_flip does not apply to a SavedModel'):
        eval_ssd.Evaluation(get_network=_get_network)
