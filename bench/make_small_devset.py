"""Makes the real small-object dev set (issue 23): mosaics of thumbnails of VOC photographs.

    python bench/make_small_devset.py --out /tmp/small_devset \
        [--sources ../shared/data/raccoon,../shared/data/bccd] [--train 400 --test 100 --seed 0]

The output is a VOC root (train and test splits, test made only from the sources' test
images); see `ssd_tf.datasets.small_devset`. Prints the object-size distribution.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssd_tf.datasets import small_devset  # noqa: E402

DEFAULT_SOURCES = ','.join(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                        'shared', 'data', name) for name in ('raccoon', 'bccd'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='output VOC root (created)')
    p.add_argument('--sources', default=DEFAULT_SOURCES,
                   help='comma-separated VOC roots with ImageSets/Main/{train,test}.txt')
    p.add_argument('--train', type=int, default=400, help='training images')
    p.add_argument('--test', type=int, default=100, help='test images')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--canvas', type=int, default=512, help='image side in pixels')
    args = p.parse_args(argv)
    sources = [s for s in args.sources.split(',') if s]
    for s in sources:
        if not os.path.isdir(os.path.join(s, 'ImageSets', 'Main')):
            print(f"error: --sources: {s} is not a VOC root (no ImageSets/Main)", file=sys.stderr)
            return 2
    if args.train < 1 or args.test < 1 or args.canvas < 64:
        print("error: --train and --test must be >= 1 and --canvas >= 64", file=sys.stderr)
        return 2
    try:
        report = small_devset.make_devset(sources, args.out,
                                          {'train': args.train, 'test': args.test},
                                          seed=args.seed, canvas=args.canvas)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"dev set written to {args.out} (VOC: --dataset_name=voc --dataset_dir={args.out})")
    print(small_devset.format_report(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
