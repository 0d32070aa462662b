"""Small objects from scratch under a fixed time budget: default vs fitted anchors vs the
small-object configuration, on the synthetic small-object data (companion of bench_raccoon.py).

    python bench/bench_small_objects.py [--budget_secs 1200] [--rows default,small,auto]
        [--devset DIR]   # the real small-object dev set instead of the synthetic shapes
        [--extra="--learning_rate=0.006"]   # more train_ssd.py flags for every row

Each training row runs (in this order: default, small, auto, then the optional small_auto)

    python train_ssd.py --train_dir <tmp> --synthetic_objects small --model_name M \
        --max_train_secs 1200 --max_number_of_steps 2500 --anchors default|auto

rows: default = ssd_small_192 (the raccoon recipe's network) with its default anchors; small =
ssd_small_320 (the small-object configuration); auto = ssd_small_192 with `--anchors=auto`;
small_auto = ssd_small_320 with `--anchors=auto` (not run unless asked). Training stops at the
step limit (2500, as bench_raccoon.py; `--max_steps_small` 1100 for ssd_small_320, about what
it trains in 20 minutes on 2 cores with bfloat16 (33 images/s on the dev set; 1000 in
float32), so that its cosine schedule ends within the budget) or when the budget is spent;
then the test images (300 synthetic, or the dev set's 100) are evaluated.
Columns: model, anchors, steps done, wall (training + data generation + evaluation), anchor
coverage of the training boxes (share with an anchor of IoU >= 0.5, for the anchors the run
used, read back from its checkpoint), VOC07 and VOC12 mAP, and the VOC07 AP of the small size
buckets (the evaluation's per-size table).

Before training (cheap, no training): the coverage of every network's default anchors on the
synthetic small-object boxes and on ../shared/data raccoon and bccd (train split, when
present), and the forward / training-step speed of ssd_small, ssd_small_192 and ssd_small_320
(`--skip_speed`, `--skip_coverage` leave them out).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import machine_info, median_time, print_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_NET = 'ssd_small_320'
# name -> (model_name or None for --model_name, --anchors); run in this order.
ROWS = {'default': (None, 'default'), 'small': (SMALL_NET, 'default'),
        'auto': (None, 'auto'), 'small_auto': (SMALL_NET, 'auto')}
DEFAULT_ROWS = 'default,small,auto'
SPEED_MODELS = ('ssd_small', 'ssd_small_192', SMALL_NET)
REAL_SETS = ('raccoon', 'bccd')
# Size buckets whose VOC07 AP each row reports (eval metrics.json `by_size`; '-' when the test
# set has no box of that size)
SMALL_BUCKETS = ('<2%', '2-4%', '4-8%', '8-16%')


def _load():
    """The 1, 5 and 15 minute load averages (the machine is shared: figures depend on it)."""
    return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def synthetic_boxes(num, seed):
    """The boxes `[N, 4]` of the synthetic small-object training split (images dropped)."""
    import numpy as np
    from ssd_tf.datasets import synthetic
    boxes = [r.boxes for r in synthetic.make_synthetic_split('train', num, seed, objects='small')]
    return np.concatenate(boxes)


def real_boxes(data_root, name):
    """The train split boxes of a VOC set under data_root, or None when it is absent."""
    import numpy as np
    from ssd_tf.datasets import factory
    path = os.path.join(data_root, name)
    if not os.path.isdir(path):
        return None
    records, _, _ = factory.load_records('voc', path, 'train', check_images=False)
    return np.concatenate([r.boxes for r in records])


def devset_boxes(devset, data_root, seed):
    """The train split boxes of the small-object dev set `devset`, made first (from data_root's
    raccoon and bccd) when the folder does not exist."""
    from ssd_tf.datasets import small_devset
    if not os.path.isdir(devset):
        report = small_devset.make_devset([os.path.join(data_root, n) for n in REAL_SETS],
                                          devset, seed=seed)
        print(small_devset.format_report(report), flush=True)
    return real_boxes(os.path.dirname(os.path.abspath(devset)), os.path.basename(devset))


def coverage_table(box_sets):
    """Default-anchor coverage of every registered network on each `{name: boxes}`."""
    from nets import nets_factory
    from ssd_tf import anchors_report
    rows = []
    for name in sorted(nets_factory.networks_map):
        net = nets_factory.get_network(name)()
        rows.append([name] + [f'{100 * anchors_report.anchor_coverage(b, net).fraction:.1f} %'
                              for b in box_sets.values()])
    print('\nDefault anchors: share of ground-truth boxes with an anchor of IoU >= 0.5\n')
    print_table(['model'] + [f'{k} ({len(b)} boxes)' for k, b in box_sets.items()], rows)


def speed_table(runs):
    """Forward and training-step images/s of the small networks (batch 32, fixed batch)."""
    import tensorflow as tf
    from bench.bench_forward import count_macs
    from bench.bench_train import step_throughput
    from nets import nets_factory
    rows = []
    for name in SPEED_MODELS:
        net = nets_factory.get_network(name)()
        model = net.keras_model()
        images = tf.random.uniform((32,) + tuple(net.params.img_shape) + (3,), -120., 130.)
        forward = tf.function(lambda x: model(x, training=False))
        fwd = 32 / median_time(lambda: forward(images)['predictions'][0].numpy(), runs=runs,
                               warmup=2)
        train, _ = step_throughput(name, 32, False, runs)
        rows.append([name, net.params.img_shape[0],
                     ', '.join(str(s[0]) for s in net.params.feat_shapes),
                     sum(s[0] * s[1] * (len(a) + len(r)) for s, a, r in zip(
                         net.params.feat_shapes, net.params.anchor_sizes,
                         net.params.anchor_ratios)),
                     f'{count_macs(model) / 1e9:.2f}', f'{fwd:.1f}', f'{train:.1f}'])
    print(f'\nSpeed (batch 32, medians of {runs} runs; the training step excludes the input '
          'pipeline)\n')
    print_table(['model', 'input', 'feature maps', 'anchors', 'GMAC/image', 'forward images/s',
                 'train images/s'], rows)


def train_row(model_name, anchors, args, gt_boxes):
    """Runs one training row; returns its table row."""
    max_steps = args.max_steps_small if model_name == SMALL_NET else args.max_steps
    from ssd_tf import anchors_report
    from ssd_tf import builder
    with tempfile.TemporaryDirectory(prefix='bench_small_') as train_dir:
        if args.devset:  # the real small-object dev set (VOC)
            data = ['--dataset_name', 'voc', '--dataset_dir', args.devset]
        else:
            data = ['--synthetic_objects', 'small', '--synthetic_num_train', str(args.num_train),
                    '--synthetic_num_test', str(args.num_test)]
        cmd = [sys.executable, os.path.join(ROOT, 'train_ssd.py'), '--train_dir', train_dir,
               '--model_name', model_name] + data + ['--seed', str(args.seed),
               '--max_train_secs', str(args.budget_secs),
               '--max_number_of_steps', str(max_steps), '--log_every_n_steps', '100']
        # always explicit: an unset --anchors means auto for a new run from scratch
        cmd.append(f'--anchors={anchors}')
        cmd += shlex.split(args.extra)
        print(' '.join(cmd), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        with open(os.path.join(train_dir, 'final_metrics.json')) as f:
            m = json.load(f)
        # VOC07 AP of the small buckets (the eval report's per-size table)
        with open(os.path.join(train_dir, 'eval', 'metrics.json')) as f:
            by_size = json.load(f).get('by_size', {})
        small_ap = [by_size.get(b, {}).get('map07') for b in SMALL_BUCKETS]
        # The zoom-out bound the run chose (--expand_max_ratio; 1 = none), from its config.
        with open(os.path.join(train_dir, 'config.json')) as f:
            expand = json.load(f).get('expand_max_ratio')
        # The anchors the run used (fitted ones included), as eval and export read them.
        net = builder.load_model(train_dir).net
        coverage = anchors_report.anchor_coverage(gt_boxes, net).fraction
    return [model_name, anchors, '-' if expand is None else f'{expand:g}', m['step'],
            f'{wall:.0f}', f'{100 * coverage:.1f} %',
            f"{m['voc07_map']:.4f}", f"{m['voc12_map']:.4f}"] + \
        ['-' if v is None else f'{v:.4f}' for v in small_ap]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--budget_secs', type=int, default=1200)
    ap.add_argument('--max_steps', type=int, default=2500)
    ap.add_argument('--max_steps_small', type=int, default=1100,
                    help=f'step limit of the {SMALL_NET} rows')
    ap.add_argument('--rows', default=DEFAULT_ROWS,
                    help=f'comma-separated subset of {", ".join(ROWS)} (run in that order); '
                         'empty: no training')
    ap.add_argument('--model_name', default='ssd_small_192',
                    help='network of the default and auto rows')
    ap.add_argument('--num_train', type=int, default=4000)
    ap.add_argument('--num_test', type=int, default=300)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--data_root', default=os.path.join(ROOT, '..', 'shared', 'data'))
    ap.add_argument('--speed_runs', type=int, default=5)
    ap.add_argument('--skip_speed', action='store_true')
    ap.add_argument('--skip_coverage', action='store_true')
    ap.add_argument('--extra', default='', help='more train_ssd.py flags for every row, one '
                    'string; write --extra="--flag=value ..."')
    ap.add_argument('--devset', default=None,
                    help='train and evaluate the rows on this real small-object dev set (a VOC '
                         'root; made from --data_root raccoon and bccd by '
                         'ssd_tf.datasets.small_devset when the folder does not exist) instead '
                         'of the synthetic small objects')
    args = ap.parse_args()
    rows = [r for r in args.rows.split(',') if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    rows = [r for r in ROWS if r in rows]

    print(f'Machine: {machine_info()}; load average {_load()}', flush=True)
    if args.devset:
        gt = devset_boxes(args.devset, args.data_root, args.seed)
    else:
        gt = synthetic_boxes(args.num_train, args.seed)
    if not args.skip_coverage:
        box_sets = {'small dev set' if args.devset else 'synthetic small': gt}
        for name in REAL_SETS:
            b = real_boxes(args.data_root, name)
            if b is not None:
                box_sets[name] = b
        coverage_table(box_sets)
    if not args.skip_speed:
        speed_table(args.speed_runs)
    results = []
    for r in rows:
        model_name, anchors = ROWS[r]
        results.append(train_row(model_name or args.model_name, anchors, args, gt))
        print(f'row {r} done (load average {_load()}): {results[-1]}', file=sys.stderr,
              flush=True)
    if results:
        print(f'\nMachine: {machine_info()}; load average at the end {_load()}\n')
        what = (f'Small-object dev set {args.devset} (mosaics of raccoon/bccd thumbnails)'
                if args.devset else
                f'Synthetic small objects ({args.num_train} training / {args.num_test} test '
                f'images of 320 px, 5-15 objects of 3-10 % of the side)')
        print(f'{what}, budget '
              f'{args.budget_secs} s or {args.max_steps} steps of 32 ({args.max_steps_small} '
              f'for {SMALL_NET}) {args.extra}\n')
        print_table(['model', 'anchors', 'zoom-out', 'steps', 'wall s (incl. data + eval)',
                     'coverage', 'VOC07 mAP', 'VOC12 mAP'] +
                    [f'AP07 {b}' for b in SMALL_BUCKETS], results)


if __name__ == '__main__':
    main()
