"""SSD300 training step split into its parts, beside torchvision's ssd300_vgg16, same run.

    python bench/bench_vs_torchvision.py [--runs 3] [--steps 4] [--batch 8]
        [--precisions float32,bfloat16] [--skip_torch] [--model ssd_300_vgg]

The PyTorch side is an optional benchmark dependency, not a project one (CPU wheels, e.g.
`pip install torch==2.14.1 torchvision==0.29.1`); without it the table has our side only.

Every measurement runs in a fresh process (TensorFlow and PyTorch never share one), and the
sides alternate within each of `--runs` rounds (ours fp32, torchvision fp32, ours bf16,
torchvision bf16), so each ratio compares figures from the same stretch of a shared machine.
Per round and side: `--steps` timed steps after 2 warm-up steps (tracing not counted), the
median taken; the table gives the median over rounds.

ssd-tf (SSD300-VGG16, 21 classes, 8732 anchors, fixed batch of encoded targets), each a
`tf.function` of its own, times:
- forward (inference): `model(images, training=False)`;
- forward (training): the same with training=True;
- + loss and mining: forward + `training.replica_losses` (matching is in the input pipeline);
- + backward: the gradients too (`DistributedStep._loss_and_grads`);
- full step: `Trainer.train_step` (+ the all-reduce, non-finite check and Adam update);
- input: the training pipeline (`ssd_tf.data.build_dataset`: decode, the paper's augmentation,
  target encoding) on ../shared/data/raccoon (or synthetic images), per batch, alone;
the parts are the differences (loss and mining, backward, optimizer).

torchvision (`ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)`): the full
train step (`model(images, targets)` -> summed losses -> backward -> Adam step; torchvision
matches ground truth inside the forward, and its input is already-decoded tensors, no
augmentation) and the inference forward (`model.eval()`, with its NMS post-processing).
Precision: float32, and bfloat16 as each side's mixed precision
(`--mixed_precision=mixed_bfloat16`; `torch.autocast('cpu', dtype=torch.bfloat16)`).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RACCOON = os.path.join(ROOT, '..', 'shared', 'data', 'raccoon')
OURS_PARTS = ('forward_infer', 'forward_train', 'forward_loss', 'forward_loss_backward',
              'step', 'input')
TORCH_PARTS = ('forward_infer', 'step')


def _median_seconds(fn, steps, warmup=2):
    import time
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours(batch, steps, precision, model_name='ssd_300_vgg'):
    """`{part: seconds per batch}` of ssd-tf's network `model_name` in this process."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tempfile

    import keras
    import numpy as np
    import tensorflow as tf

    from bench.bench_train import fixed_batch
    from nets import nets_factory
    from ssd_tf import training
    policy = 'mixed_bfloat16' if precision == 'bfloat16' else 'float32'
    keras.mixed_precision.set_dtype_policy(policy)
    net = nets_factory.get_network(model_name)()
    model = net.keras_model(weight_decay=0.0005)
    opt = training.build_optimizer('adam', 1e-4, mixed_precision=policy)
    images, targets = fixed_batch(net, batch, np.random.default_rng(0))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        trainer = training.Trainer(net, model, opt, tf.distribute.get_strategy(), d, batch)
        cfg = training.LossConfig()
        n_pos = training.count_positives(net, targets, cfg)

        def touch(tensors):
            # one scalar that depends on every tensor: a tf.function computes only what its
            # result needs, so returning one head (or one gradient) would time a pruned graph
            return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32))
                             for t in tf.nest.flatten(tensors)])

        @tf.function
        def infer(x):
            return touch(model(x, training=False))

        @tf.function
        def fwd(x):
            return touch(model(x, training=True))

        @tf.function
        def fwd_loss(x):
            o = model(x, training=True)
            return training.replica_losses(net, o, targets, cfg, n_pos, 1., model.losses)['total']

        @tf.function
        def fwd_loss_bwd(x):
            with tf.GradientTape() as tape:
                o = model(x, training=True)
                loss = training.replica_losses(net, o, targets, cfg, n_pos, 1.,
                                               model.losses)['total']
            return touch(tape.gradient(loss, model.trainable_variables))

        for name, fn in (('forward_infer', infer), ('forward_train', fwd),
                         ('forward_loss', fwd_loss), ('forward_loss_backward', fwd_loss_bwd)):
            out[name] = _median_seconds(lambda f=fn: f(images).numpy(), steps)
        out['step'] = _median_seconds(
            lambda: float(trainer.train_step((images, targets))['total']), steps)
    out['input'] = _input_seconds(net, batch, steps)
    keras.mixed_precision.set_dtype_policy('float32')
    return out


def _input_seconds(net, batch, steps):
    """Seconds per batch of the training input pipeline alone (raccoon JPEGs, else synthetic
    images), after a warm-up."""
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import data as data_lib
    from ssd_tf.datasets import factory
    if os.path.isdir(RACCOON):
        records, _, _ = factory.load_records('voc', RACCOON, 'train')
    else:
        records, _, _ = factory.load_records('synthetic', None, 'train', num_images=256)
    anchors = net.anchors()
    shape = tuple(net.params.img_shape)
    ds = data_lib.build_dataset(
        records, lambda i, l, b, seed=None: prep.preprocess_for_train(i, l, b, shape, seed=seed),
        lambda l, b: net.bboxes_encode(l, b, anchors), batch_size=batch, is_training=True,
        seed=0)
    it = iter(ds)
    return _median_seconds(lambda: next(it), max(steps, 8), warmup=4)


def torch_side(batch, steps, precision):
    """`{part: seconds per batch}` of torchvision's ssd300_vgg16 in this process."""
    import contextlib

    import torch
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
                                                      num_classes=21)
    images = [torch.rand(3, 300, 300) for _ in range(batch)]
    gen = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        c = torch.rand(5, 2, generator=gen) * .6 + .2
        s = torch.rand(5, 2, generator=gen) * .4 + .1
        boxes = torch.cat([c - s / 2, c + s / 2], 1) * 300
        targets.append({'boxes': boxes, 'labels': torch.randint(1, 21, (5,), generator=gen)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def autocast():
        return torch.autocast('cpu', dtype=torch.bfloat16) if precision == 'bfloat16' \
            else contextlib.nullcontext()

    def step():
        model.train()
        with autocast():
            losses = model(images, targets)
            loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    def infer():
        model.eval()
        with torch.no_grad(), autocast():
            return model(images)
    return {'forward_infer': _median_seconds(infer, steps), 'step': _median_seconds(step, steps)}


def _child(side, batch, steps, precision, model_name):
    """Runs one side in a fresh process; its `{part: seconds}`."""
    r = subprocess.run([sys.executable, os.path.abspath(__file__), '--_child', side,
                        '--batch', str(batch), '--steps', str(steps), '--precisions', precision,
                        '--model', model_name],
                       capture_output=True, text=True, cwd=ROOT)
    line = [x for x in r.stdout.splitlines() if x.startswith('RESULT ')]
    if r.returncode or not line:
        sys.exit(f"{side} {precision} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[-1][len('RESULT '):])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--steps', type=int, default=4)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--precisions', default='float32,bfloat16')
    ap.add_argument('--skip_torch', action='store_true')
    ap.add_argument('--model', default='ssd_300_vgg',
                    help='our network (the torchvision side is SSD300 only: another model '
                         'implies --skip_torch)')
    ap.add_argument('--_child', default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        got = ours(args.batch, args.steps, args.precisions, args.model) \
            if args._child == 'ours' else torch_side(args.batch, args.steps, args.precisions)
        print('RESULT ' + json.dumps(got), flush=True)
        return
    from bench.machine import machine_info, print_table
    precisions = args.precisions.split(',')
    sides = ['ours']
    if not args.skip_torch and args.model == 'ssd_300_vgg':
        try:
            import torchvision  # noqa: F401
            sides.append('torch')
        except ImportError:
            print('torchvision is not installed: our side only (pip install torch==2.14.1 '
                  'torchvision==0.29.1)')
    got = {}
    for r in range(args.runs):
        for p in precisions:
            for side in sides:
                got.setdefault((side, p), []).append(
                    _child(side, args.batch, args.steps, p, args.model))
                print(f'# round {r + 1}: {side} {p}: {got[side, p][-1]}', flush=True)
    b = args.batch

    def med(side, p, part):
        return statistics.median(x[part] for x in got[side, p])
    print(f'\nMachine: {machine_info()}\n{args.model}, batch {b}, median of {args.runs} rounds of '
          f'{args.steps} timed steps\n')
    rows = []
    for p in precisions:
        m = {part: med('ours', p, part) for part in OURS_PARTS}
        parts = [('forward (inference)', m['forward_infer']),
                 ('forward (training)', m['forward_train']),
                 ('loss and mining', m['forward_loss'] - m['forward_train']),
                 ('backward', m['forward_loss_backward'] - m['forward_loss']),
                 ('optimizer (+ all-reduce, finite check)', m['step'] - m['forward_loss_backward']),
                 ('train step (all of the above)', m['step']),
                 ('input pipeline, alone (per batch)', m['input'])]
        rows += [[p, name, f'{1e3 * s:.0f}', f'{100 * s / m["step"]:.0f}%'] for name, s in parts]
    print_table(['precision', 'ssd-tf part', 'ms per batch', 'of the step'], rows)
    if 'torch' in sides:
        rows = []
        for p in precisions:
            for part, name in (('step', 'train step'), ('forward_infer', 'inference forward')):
                ours_ips = b / med('ours', p, part)
                tv_ips = b / med('torch', p, part)
                ratios = [x[part] / y[part] for x, y in zip(got['torch', p], got['ours', p])]
                rows.append([name, p, f'{tv_ips:.2f}', f'{ours_ips:.2f}',
                             f'{statistics.median(ratios):.2f}x'])
        best = {side: min(precisions, key=lambda p, s=side: med(s, p, 'step')) for side in sides}
        ratio = med('torch', best['torch'], 'step') / med('ours', best['ours'], 'step')
        print()
        print_table(['SSD300, batch %d' % b, 'precision', 'torchvision images/s',
                     'ssd-tf images/s', 'ssd-tf / torchvision (median of rounds)'], rows)
        print(f"\ntrain step at each side's best precision: ssd-tf {best['ours']} vs "
              f"torchvision {best['torch']}: {ratio:.2f}x")


if __name__ == '__main__':
    main()
