"""The converter command (`ssd-convert`, `python -m ssd_tf.datasets.convert`): converts a
data set to sharded TFRecords in the slim SSD's key layout, plus `labels.txt`
(or, with `--layout=od_api`, the TF Object Detection API's keys plus `label_map.pbtxt`).

    python -m ssd_tf.datasets.convert --dataset_name voc --dataset_dir VOC2007,VOC2012 \
        --split trainval --output_dir /data/tfrecords --shards 8
    python -m ssd_tf.datasets.convert --dataset_name coco --dataset_dir /data/coco \
        --split val2017 --output_dir /data/tfrecords
    python -m ssd_tf.datasets.convert --dataset_name synthetic --split train \
        --num_images 4000 --output_dir /data/synthetic
    python -m ssd_tf.datasets.convert --dataset_name voc --dataset_dir VOC2007 \
        --split test --output_dir /data/od_api --layout od_api

Files: `<output_dir>/<name>_<split>_<shard:05d>-of-<shards:05d>.tfrecord` (name defaults to
the dataset name) and `<output_dir>/labels.txt` (od_api: `label_map.pbtxt`). Every image is
decoded once and every box checked before writing; bad records are skipped and listed at the
end (`--strict` stops at the first one instead). Shards are written under a temporary name
and renamed when complete, so an interrupted conversion leaves no truncated shard under a
final name. The records and the label map written hold training labels 1..C-1 (a
`--label_map` whose ids skip numbers is renumbered in id order).
"""
import argparse
import logging
import os
import sys

from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.datasets import synthetic as synthetic_lib
from ssd_tf.datasets import tfrecord as tfrecord_lib
from ssd_tf.datasets.factory import DATASET_NAMES, load_records


def main(argv=None):
    """The command line (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset_name', required=True, choices=DATASET_NAMES)
    p.add_argument('--dataset_dir', default='',
                   help='voc: root(s), comma-separated; coco: folder with annotations/')
    p.add_argument('--output_dir', required=True)
    p.add_argument('--split', default='train')
    p.add_argument('--shards', type=int, default=1)
    p.add_argument('--name', default=None, help='file name prefix (default: dataset_name)')
    p.add_argument('--label_map', default=None,
                   help="voc: labels.txt/json to use (default: the root's labels.txt, else "
                        "all class names sorted); for Pascal VOC's ids pass --voc_ids")
    p.add_argument('--voc_ids', action='store_true',
                   help='voc: use the original 20 VOC classes (aeroplane=1 .. tvmonitor=20)')
    p.add_argument('--layout', default=tfrecord_lib.SLIM, choices=tfrecord_lib.LAYOUTS,
                   help='TFRecord keys: slim (the SSD original\'s, default) or od_api (the TF '
                        'Object Detection API\'s, with label_map.pbtxt)')
    p.add_argument('--strict', action='store_true', help='stop at the first bad record')
    p.add_argument('--num_images', type=int, default=1000, help='synthetic: images to make')
    p.add_argument('--seed', type=int, default=0, help='synthetic: seed')
    p.add_argument('--image_size', type=int, default=synthetic_lib.DEFAULT_IMAGE_SIZE)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')

    label_map = labelmap_lib.VOC_LABEL_MAP if args.voc_ids else args.label_map
    records, label_map, summary = load_records(
        args.dataset_name, args.dataset_dir, args.split, label_map=label_map,
        strict=args.strict, num_images=args.num_images, seed=args.seed,
        image_size=args.image_size)
    if not records:
        print(summary)
        print(f"no valid records in split {args.split!r}; nothing written", file=sys.stderr)
        return 1
    paths = tfrecord_lib.write_tfrecords(records, args.output_dir, args.name or
                                         args.dataset_name, args.split, args.shards,
                                         layout=args.layout)
    # The records hold training labels 1..C-1 (the readers map names), so the label map
    # written beside them is numbered so too, even when the given one has gaps.
    label_path = label_map.training_label_map().write(os.path.join(
        args.output_dir, labelmap_lib.PBTXT_FILENAME if args.layout == tfrecord_lib.OD_API
        else labelmap_lib.LABELS_FILENAME))
    print(summary)
    print(f"wrote {len(records)} records to {len(paths)} file(s): {paths[0]}"
          f"{' ...' if len(paths) > 1 else ''}; label map: {label_path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
