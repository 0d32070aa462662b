"""Tiled inference and test-time flip on a trained run: eval_ssd.py without tiles and with
each --tiles grid, each without and with --test_time_flip, on the same checkpoint and test
split; VOC07/VOC12 mAP, AP07 per small size bucket, recall of the smallest bucket, and
evaluation speed.

    python bench/bench_tiles.py --checkpoint_path RUN --dataset_dir /tmp/small_devset \
        [--tiles none,1x1,2x2,3x3] [--tile_overlap 0.25] [--tile_max_box 0,0.03] \
        [--test_time_flip 0,1] [--runs 1]

RUN is a training directory (e.g. the small-object command's, trained on the real dev set:
`python train_ssd.py --model_name=ssd_small_320 --anchors=auto --dataset_name=voc
--dataset_dir=/tmp/small_devset --train_dir RUN`; bench/make_small_devset.py makes the set).
Rows: `none` is eval_ssd.py as it runs by default (the eval pipeline's own resize); `1x1` is
the tiled pipeline (the export's: image bytes in, the runtimes' resize) with one tile, the
control for the grids; `RxC` adds R x C overlapping tiles to the whole image, one row per
--tile_max_box value (a tile's detections kept for boxes under that share of the image side;
0 keeps them all); each row once per --test_time_flip value (1: --test_time_flip, the
network also run on the mirror image and averaged in). Images/s is the evaluation's own count
(data, network, NMS), the median of --runs evaluations.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import machine_info, print_table  # noqa: E402
from ssd_tf import tiling  # noqa: E402

SMALL_BUCKETS = ('<2%', '2-4%', '4-8%', '8-16%')


def eval_row(args, tiles, max_box, flip=False):
    """Evaluates `--checkpoint_path` with `tiles` ('none' or 'RxC') and `max_box`, and with
    --test_time_flip when `flip`; returns the metrics dict of the last run and the median
    images/s."""
    speeds, m = [], None
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix='bench_tiles_') as eval_dir:
            cmd = [sys.executable, os.path.join(ROOT, 'eval_ssd.py'),
                   f'--checkpoint_path={args.checkpoint_path}', '--dataset_name=voc',
                   f'--dataset_dir={args.dataset_dir}', '--dataset_split_name=test',
                   f'--eval_dir={eval_dir}', '--num_sample_images=0',
                   f'--batch_size={args.batch_size}']
            if tiles != 'none':
                cmd += [f'--tiles={tiles}', f'--tile_overlap={args.tile_overlap}',
                        f'--tile_max_box={max_box}']
            # explicit both ways: unset, eval_ssd.py would take the run's own choice
            cmd.append('--test_time_flip' if flip else '--notest_time_flip')
            print(' '.join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            with open(os.path.join(eval_dir, 'metrics.json')) as f:
                m = json.load(f)
        speeds.append(m['images_per_second'])
    return m, statistics.median(speeds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--checkpoint_path', required=True, help='A training directory.')
    ap.add_argument('--dataset_dir', required=True, help='A VOC root with a test split.')
    ap.add_argument('--tiles', default='none,1x1,2x2,3x3',
                    help="Comma-separated rows: 'none' and --tiles grids (RxC).")
    ap.add_argument('--tile_overlap', type=float, default=tiling.DEFAULT_OVERLAP)
    ap.add_argument('--tile_max_box', default=str(tiling.DEFAULT_MAX_BOX),
                    help='Comma-separated --tile_max_box values: one row per value and grid.')
    ap.add_argument('--test_time_flip', default='0',
                    help="Comma-separated 0/1: each row without (0) and/or with (1) "
                         "--test_time_flip.")
    ap.add_argument('--batch_size', type=int, default=8)
    ap.add_argument('--runs', type=int, default=1, help='Evaluations per row (speed median).')
    args = ap.parse_args()
    rows = []
    caps = [float(c) for c in args.tile_max_box.split(',') if c.strip()]
    runs = []
    for tiles in [t.strip() for t in args.tiles.split(',') if t.strip()]:
        grid = tiles != 'none' and tiling.parse_tiles(tiles) != (1, 1)
        runs += [(tiles, c) for c in caps] if grid else [(tiles, None)]
    flips = [bool(int(f)) for f in args.test_time_flip.split(',') if f.strip()]
    for tiles, max_box, flip in [(t, c, f) for t, c in runs for f in flips]:
        m, speed = eval_row(args, tiles, tiling.DEFAULT_MAX_BOX if max_box is None else max_box,
                            flip)
        by_size = m.get('by_size', {})
        ap07 = [by_size.get(b, {}).get('map07') for b in SMALL_BUCKETS]
        recall = by_size.get(SMALL_BUCKETS[0], {}).get('recall')
        rows.append([tiles, '-' if max_box is None else f'{max_box:g}', 'yes' if flip else 'no',
                     f"{m['voc07']['map']:.4f}", f"{m['voc12']['map']:.4f}"] +
                    ['-' if v is None else f'{v:.4f}' for v in ap07] +
                    ['-' if recall is None else f'{recall:.3f}', f'{speed:.1f}'])
    print(f'\n{machine_info()}')
    print(f'{args.checkpoint_path} (step {m.get("step")}), {m["num_images"]} test images of '
          f'{args.dataset_dir}; overlap {args.tile_overlap}; images/s median of {args.runs}\n')
    print_table(['tiles', 'max box', 'flip', 'VOC07', 'VOC12'] +
                [f'AP07 {b}' for b in SMALL_BUCKETS] +
                [f'recall {SMALL_BUCKETS[0]}', 'images/s'], rows)


if __name__ == '__main__':
    main()
