"""Keras `fit` against the main job: the same training, the same mAP (issue 12's target: within
0.02 of `python train_ssd.py`'s VOC07 mAP).

    python bench/bench_keras_fit.py            # ~15-25 minutes on 2 shared CPU cores
    python bench/bench_keras_fit.py --steps 50 # a quick check of the wiring

In one run: (1) `python train_ssd.py` with its defaults (ssd_small, built-in synthetic shapes,
4000 training images, batch 32, Adam with warm-up and cosine decay, 2500 steps) in a temporary
--train_dir, as a subprocess; (2) in this process `ssd_tf.SSDDetector.fit` on the same records,
the same training pipeline (train_ssd.py's `make_train_dataset`), the same initial weights,
optimizer and schedule (its `setup_execution` and `build_trainer`) for the same number of
steps, then `predict` on the same 300 test images through the project's evaluator
(train_ssd.py's `RunEvaluation`). Prints VOC07/VOC12 mAP and wall times as a table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import machine_info, print_table  # noqa: E402

TARGET = 0.02  # issue 12: the Keras path within 0.02 VOC07 mAP of the main job


def main_job(train_dir, steps):
    """`python train_ssd.py` defaults in `train_dir`: (voc07, voc12, seconds)."""
    cmd = [sys.executable, os.path.join(ROOT, 'train_ssd.py'), f'--train_dir={train_dir}']
    if steps is not None:
        cmd.append(f'--max_number_of_steps={steps}')
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    with open(os.path.join(train_dir, 'final_metrics.json')) as f:
        m = json.load(f)
    return m['voc07_map'], m['voc12_map'], seconds


def _predict_detector(detector):
    """The evaluator's detector contract (`bboxes`) on top of `SSDDetector.predict_on_batch`."""
    def detect(images):
        out = detector.predict_on_batch(images)
        return {'bboxes': out['boxes'], 'scores': out['scores'], 'classes': out['classes'],
                'num_detections': out['num_detections']}
    return detect


def keras_fit(work_dir, steps, steps_per_log=100):
    """SSDDetector.fit with the main job's settings: (voc07, voc12, seconds)."""
    import train_ssd
    from ssd_tf import SSDDetector
    from ssd_tf import run_config
    t0 = time.perf_counter()
    flags = {name: train_ssd.FLAGS[name].default for name in train_ssd.FLAGS
             if name in run_config.RunConfig.field_names()}
    flags.update(train_dir=os.path.join(work_dir, 'keras'))
    if steps is not None:
        flags['max_number_of_steps'] = steps
    cfg = run_config.default_learning_rate(run_config.RunConfig.from_dict(flags), None)
    cfg, strategy = train_ssd.setup_execution(cfg)  # the same seed before the weights are drawn
    cfg, net, records, _, _ = train_ssd.load_training_data(cfg, strategy.num_replicas_in_sync)
    trainer, _ = train_ssd.build_trainer(cfg, net, strategy, cfg.train_dir, False)
    detector = SSDDetector(net, label_names=cfg.label_names, model=trainer.model,
                           weight_decay=cfg.weight_decay)
    detector.compile(optimizer=trainer.optimizer, match_threshold=cfg.match_threshold,
                     negative_ratio=cfg.negative_ratio, alpha=cfg.loss_alpha,
                     label_smoothing=cfg.label_smoothing)
    dataset, _ = train_ssd.make_train_dataset(cfg, net, strategy, records, 0)
    total = cfg.max_number_of_steps
    per_epoch = min(steps_per_log, total)
    detector.fit(dataset, steps_per_epoch=per_epoch, epochs=-(-total // per_epoch), verbose=2,
                 shuffle=False)  # the pipeline shuffles (seeded, as train_ssd.py)
    evaluate = train_ssd.RunEvaluation(cfg, net, detector.network)
    evaluate.detect = _predict_detector(detector)
    _, m = evaluate(cfg.eval_split_name)
    return m['voc07']['map'], m['voc12']['map'], time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=None,
                        help="training steps of both runs (default: train_ssd.py's, 2500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix='bench_keras_fit_') as work:
        main_map = main_job(os.path.join(work, 'main'), args.steps)
        keras_map = keras_fit(work, args.steps)
    print(f"\n{machine_info()}")
    rows = [('python train_ssd.py (main job)', f'{main_map[0]:.4f}', f'{main_map[1]:.4f}',
             f'{main_map[2] / 60:.1f}'),
            ('SSDDetector.fit + predict', f'{keras_map[0]:.4f}', f'{keras_map[1]:.4f}',
             f'{keras_map[2] / 60:.1f}')]
    print_table(['run', 'VOC07 mAP', 'VOC12 mAP', 'wall minutes'], rows)
    diff = keras_map[0] - main_map[0]
    print(f"\nVOC07 difference (Keras - main job): {diff:+.4f} "
          f"({'within' if abs(diff) <= TARGET else 'OUTSIDE'} the {TARGET} target)")


if __name__ == '__main__':
    main()
