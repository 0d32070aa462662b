"""The anchors report command (`ssd-anchors`, `python -m ssd_tf.anchors_report`): prints the
anchor coverage of a data set split by a network (`ssd_tf.anchors_report`), and with
`--anchors auto` that of anchors fitted to the boxes (`ssd_tf.anchor_fit`).

    python -m ssd_tf.anchors_report --dataset_name voc --dataset_dir DIR --model_name ssd_small \
        [--split train] [--anchors auto] [--matching_threshold 0.5] [--json out.json]
"""
import argparse
import sys

from nets import nets_factory
from ssd_tf import anchor_fit
from ssd_tf import atomic_files
from ssd_tf import anchors_report


def main(argv=None):
    """`ssd-anchors` / `python -m ssd_tf.anchors_report`: prints the coverage report of a
    data set split for a network (and of fitted anchors with `--anchors auto`, before and after)."""
    p = argparse.ArgumentParser(description=anchors_report.__doc__.split('\n\n')[0])
    p.add_argument('--dataset_name', default='synthetic',
                   choices=('voc', 'coco', 'synthetic', 'tfrecord', 'tfds',
                            'pascalvoc_2007', 'pascalvoc_2012', 'pascalvoc'),
                   help='as train_ssd.py --dataset_name (the slim names included)')
    p.add_argument('--dataset_dir', default='', help='as train_ssd.py --dataset_dir')
    p.add_argument('--split', default='train', help='voc/coco/synthetic: the split')
    p.add_argument('--label_map', default=None, help='labels.txt (voc/coco)')
    p.add_argument('--model_name', default='ssd_small', help='a network of nets_factory')
    p.add_argument('--anchors', default='default', choices=('default', 'auto'),
                   help='auto: also fit anchors to the boxes and report before and after')
    p.add_argument('--matching_threshold', type=float, default=0.5,
                   help="IoU an anchor needs to cover a box (train_ssd.py --match_threshold)")
    p.add_argument('--num_images', type=int, default=1000, help='synthetic: images to make')
    p.add_argument('--max_records', type=int, default=None,
                   help='tfrecord: read at most this many records')
    p.add_argument('--json', default=None, help='also write the report(s) to this JSON file')
    args = p.parse_args(argv)
    if not 0. < args.matching_threshold <= 1.:
        print(f"error: --matching_threshold={args.matching_threshold} must be in (0, 1]",
              file=sys.stderr)
        return 2
    try:
        net = nets_factory.get_network(args.model_name)()
        boxes, n_images = anchors_report.training_boxes(
            args.dataset_name, args.dataset_dir, args.split, label_map=args.label_map,
            num_images=args.num_images, max_records=args.max_records)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not len(anchors_report.valid_boxes(boxes)):
        print(f"error: no ground-truth box in --dataset_dir={args.dataset_dir} "
              f"(split {args.split})", file=sys.stderr)
        return 2
    small = anchors_report.small_object_setup(nets_factory.networks_map)
    report = anchors_report.anchor_coverage(boxes, net, args.matching_threshold, **small)
    print(f"{n_images} images, {len(boxes)} boxes")
    print(report.format())
    out = {'default': report.to_dict()}
    if args.anchors == 'auto':
        fitted = anchor_fit.fit_anchors(boxes, net, args.matching_threshold)
        after = anchors_report.anchor_coverage(boxes, fitted, args.matching_threshold, **small)
        print(after.format())
        print(anchor_fit.format_shapes(fitted))
        out['auto'] = after.to_dict()
    if args.json:
        atomic_files.write_json(args.json, out, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
