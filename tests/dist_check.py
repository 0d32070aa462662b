"""Helper process for the distribution tests (not a test module).

    python dist_check.py MODE OUT_JSON WEIGHTS_NPZ [CLASS_BALANCE]

MODE: 'single' (default strategy), 'mirrored' (two logical CPU devices) or 'multi_worker'
(TF_CONFIG set by the caller). Runs one SGD training step of `ssd_small` from the weights in
WEIGHTS_NPZ (written by 'single' when absent) on a fixed global batch of 4 synthetic images
and writes the summed losses to OUT_JSON and the updated weights to OUT_JSON + '.npz'
(`w0`, `w1`, ... in `model.get_weights()` order), compared elementwise by the test.
CLASS_BALANCE: the loss's --class_balance (default 0).
"""
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nets import ssd_small  # noqa: E402
from preprocessing import ssd_vgg_preprocessing as prep  # noqa: E402
from ssd_tf import data as data_lib  # noqa: E402
from ssd_tf import training  # noqa: E402
from ssd_tf.datasets import synthetic  # noqa: E402

GLOBAL_BATCH = 4


def main(mode, out_path, weights_path, class_balance='0'):
    if mode == 'mirrored':
        strategy = training.make_strategy('mirrored', num_logical_cpus=2)
    elif mode == 'multi_worker':
        strategy = training.make_strategy('multi_worker')
    else:
        strategy = tf.distribute.get_strategy()
    net = ssd_small.SSDNet()
    anchors = net.anchors()
    with strategy.scope():
        tf.keras.utils.set_random_seed(0)
        model = net.keras_model(weight_decay=0.0005)
        if os.path.exists(weights_path):
            w = np.load(weights_path)
            model.set_weights([w[f'w{i}'] for i in range(len(w.files))])
        elif mode == 'single':
            np.savez(weights_path, **{f'w{i}': x for i, x in enumerate(model.get_weights())})
        else:
            raise SystemExit('weights file missing')
        opt = training.build_optimizer('sgd', 0.1)
        trainer = training.Trainer(net, model, opt, strategy, os.path.dirname(out_path),
                                   GLOBAL_BATCH, loss_config=training.LossConfig(
                                       class_balance=float(class_balance)))
    records = synthetic.make_synthetic_examples(GLOBAL_BATCH, seed=7, image_size=96)
    ds = data_lib.build_dataset(
        records, lambda i, l, b: prep.preprocess_for_eval(i, l, b,
                                                          out_shape=net.params.img_shape)[:3],
        lambda l, b: net.bboxes_encode(l, b, anchors), batch_size=GLOBAL_BATCH,
        is_training=False, repeat=False, with_gt=False)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    batch = next(iter(strategy.experimental_distribute_dataset(ds)))
    losses = trainer.train_step(batch)
    result = {'losses': {k: float(v) for k, v in losses.items()},
              'replicas': strategy.num_replicas_in_sync}
    task = getattr(strategy.cluster_resolver, 'task_id', None)
    if task in (None, 0):
        np.savez(out_path + '.npz', **{f'w{i}': x for i, x in enumerate(model.get_weights())})
        with open(out_path, 'w') as f:
            json.dump(result, f)


if __name__ == '__main__':
    main(*sys.argv[1:5])
