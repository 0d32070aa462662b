"""int8 TFLite calibrated on synthetic shapes vs on the run's own data, against float32.

    python bench/bench_int8_calibration.py --checkpoint_path RUN_DIR [--num_calibration 100]

RUN_DIR: a train_ssd.py run on a VOC data set (e.g. bench/bench_raccoon.py's command on
../shared/data/raccoon with --train_dir RUN_DIR). Exports the run as float32 TFLite and twice
as int8 (`ssd_tf.calibration` sources `synthetic` and `run`, `--num_calibration` images
each), runs the three on the run's eval split (config.json `eval_split_name`, else 'test')
and prints: VOC07 / VOC12 mAP of each, and the box agreement of each int8 model with float32:
the share of float32 detections scoring >= --score_threshold that an int8 detection
(same threshold) matches one to one with the same class at IoU >= 0.5.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssd_tf import quiet  # noqa: E402  (TensorFlow's start-up and converter logs off)
from bench.machine import machine_info, print_table  # noqa: E402

quiet.setup()


def _iou(a, b):
    """IoU of boxes `[N, 4]` x `[M, 4]` (yxyx)."""
    import numpy as np
    ymin = np.maximum(a[:, None, 0], b[None, :, 0])
    xmin = np.maximum(a[:, None, 1], b[None, :, 1])
    ymax = np.minimum(a[:, None, 2], b[None, :, 2])
    xmax = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def agreement(reference, other, threshold, iou=0.5):
    """`(matched, total, sum of |score difference| over the matched)`: reference detections
    (boxes, scores, classes) at score >= threshold
    matched one to one (highest score first) by `other`'s at score >= threshold, same class,
    IoU >= iou."""
    import numpy as np
    rb, rs, rc = (np.asarray(x) for x in reference)
    ob, os_, oc = (np.asarray(x) for x in other)
    rk, ok = rs >= threshold, os_ >= threshold
    rb, rs, rc, ob, oc = rb[rk], rs[rk], rc[rk], ob[ok], oc[ok]
    if not len(rb):
        return 0, 0, 0.
    used = np.zeros(len(ob), bool)
    ious = _iou(rb, ob) if len(ob) else np.zeros([len(rb), 0])
    matched, diff = 0, 0.
    os_ = os_[ok]
    for i in np.argsort(-rs):
        cand = np.where(~used & (oc == rc[i]) & (ious[i] >= iou))[0]
        if len(cand):
            j = cand[np.argmax(ious[i, cand])]
            used[j] = True
            matched += 1
            diff += abs(float(rs[i]) - float(os_[j]))
    return matched, len(rb), diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--checkpoint_path', required=True)
    ap.add_argument('--num_calibration', type=int, default=100)
    ap.add_argument('--score_threshold', type=float, default=0.3)
    ap.add_argument('--split', default=None, help="default: the run's eval split, else test")
    args = ap.parse_args()
    from ssd_tf import builder
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import calibration
    from ssd_tf.export import tflite as export_tflite
    from ssd_tf.export import tflite_runtime
    from ssd_tf import images
    from ssd_tf import metrics
    from ssd_tf import run_config
    from ssd_tf.datasets import factory

    config = run_config.read_run_config(args.checkpoint_path)
    if config.dataset_name not in ('voc', 'coco'):
        sys.exit(f"{args.checkpoint_path}: a run on VOC or COCO data is needed "
                 f"(this one: {config.dataset_name})")
    split = args.split or config.eval_split_name or 'test'
    built = builder.load_model(args.checkpoint_path)
    net, model, names = built.net, built.model, built.label_names
    shape = tuple(net.params.img_shape)
    preprocess = prep.image_preprocess_fn(shape)
    tmp = tempfile.mkdtemp(prefix='bench_int8_')
    paths, lines = {}, []
    for name, spec in (('float32', None), ('int8 synthetic', 'synthetic'), ('int8 run', 'run')):
        reps = None
        if spec:
            source = calibration.parse_spec(spec, config)
            reps = calibration.calibration_images(source, shape, args.num_calibration)
            lines.append(f"{name}: {source.describe(len(reps))}")
        t0 = time.perf_counter()
        out = export_tflite.export_tflite(net, model, lambda im: preprocess(im)[0],
                                   os.path.join(tmp, name.replace(' ', '_')),
                                   ['int8' if spec else 'float32'], reps, metadata='off')
        paths[name] = list(out.values())[0]
        print(f"{name}: converted in {time.perf_counter() - t0:.0f} s", flush=True)
    records, _, _ = factory.load_records(config.dataset_name, config.dataset_dir, split)
    decoded = [images.decode_record_image(r) for r in records]
    dets = {}
    for name, path in paths.items():
        det = tflite_runtime.TFLiteDetector(path)
        dets[name] = [(lambda o: (o['detection_boxes'], o['detection_scores'],
                                  o['detection_classes']))(det(im)) for im in decoded]
    rows = []
    for name in paths:
        ev = metrics.VOCEvaluator(net.params.num_classes, names)
        for rec, (boxes, scores, classes) in zip(records, dets[name]):
            ev.add_image(rec.image_id, rec.boxes, rec.labels, det_boxes=boxes,
                         det_scores=scores, det_classes=classes, gt_difficult=rec.difficult,
                         image_shape=(rec.height, rec.width))
        res = ev.evaluate()
        agree = score_diff = '-'
        if name != 'float32':
            m, n, d = (sum(x) for x in zip(*(agreement(r, o, args.score_threshold) for r, o in
                                             zip(dets['float32'], dets[name]))))
            agree = f"{m}/{n} = {m / max(n, 1):.1%}"
            score_diff = f"{d / max(m, 1):.4f}"
        rows.append([name, f"{res['map07']:.4f}", f"{res['map12']:.4f}", agree, score_diff])
    print(f"\nMachine: {machine_info()}")
    print(f"Run: {args.checkpoint_path} ({config.model_name}, {config.dataset_name} "
          f"{config.dataset_dir}); evaluated on split {split}, {len(records)} images")
    for line in lines:
        print(line)
    print_table(['TFLite model', 'VOC07 mAP', 'VOC12 mAP',
                 f'boxes agreeing with float32 (score >= {args.score_threshold}, IoU >= 0.5, '
                 f'same class)', 'mean |score - float32 score| of those'], rows)


if __name__ == '__main__':
    main()
