"""Writes a PNG grid of augmented training samples with their boxes: what the network sees.

    python -m preprocessing.show_augmentation --dataset_dir DIR --num 16 --out samples.png \
        --seed 0 --out_size 300

Without --dataset_dir the built-in synthetic shapes set is used. The samples go through the
training input pipeline (`ssd_tf.data.build_dataset` with `preprocess_for_train`), the mean
subtraction is undone for display and the boxes the encoder would receive are drawn. Unset,
--expand_max_ratio is chosen from the boxes of the split shown, as train_ssd.py chooses it
from its training boxes.
"""
from absl import app
from absl import flags

from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import anchors_report
from ssd_tf import data as data_lib
from ssd_tf import visualize

FLAGS = flags.FLAGS


def define_flags():
    """Defines the command's flags; only when run as a program, so that importing this module
    (tests, notebooks) next to another absl program never defines a flag twice."""
    flags.DEFINE_string('dataset_dir', None,
                        'Pascal VOC root (Annotations/, JPEGImages/, ImageSets/Main/). Default: '
                        'the built-in synthetic shapes data set.')
    flags.DEFINE_string('split', 'train',
                        'ImageSets/Main/<split>.txt list to read from dataset_dir.')
    flags.DEFINE_integer('num', 16, 'Number of augmented samples in the grid.')
    flags.DEFINE_integer('cols', 4, 'Columns of the grid.')
    flags.DEFINE_string('out', 'samples.png', 'Output PNG path.')
    flags.DEFINE_integer('seed', 0, 'Seed of the sample order and of the augmentation.')
    flags.DEFINE_integer('out_size', 300, 'Side of the (square) network input, in pixels.')
    flags.DEFINE_bool('reference_compat', False,
                      'Show the slim SSD augmentation instead of the SSD paper chain.')
    flags.DEFINE_float('expand_max_ratio', None,
                       'Largest zoom-out of the SSD paper chain (train_ssd.py '
                       '--expand_max_ratio; 1: none). Unset: chosen from the boxes shown, '
                       'as train_ssd.py does (1 when their median side is under 8% of the '
                       'image side, else the paper\'s 4).')
    flags.DEFINE_enum('patch_overlap', None, list(prep.PATCH_OVERLAPS),
                      'How the crop sampling measures a patch\'s overlap with a box '
                      '(train_ssd.py --patch_overlap). Unset: iou, the paper\'s.')
    flags.DEFINE_float('mosaic_prob', 0., 'Probability of a mosaic of four images per sample '
                       '(train_ssd.py --mosaic_prob); 0: none.')


def load_source(dataset_dir, split, seed):
    """(records, label_names) for a VOC root, or the synthetic set when dataset_dir is None."""
    if dataset_dir is None:
        from ssd_tf.datasets import synthetic
        return (synthetic.make_synthetic_examples(64, seed=seed),
                synthetic.SYNTHETIC_LABEL_MAP)
    from ssd_tf.datasets import voc
    label_map = voc.default_label_map([dataset_dir])
    records, _ = voc.read_voc(dataset_dir, split=split, label_map=label_map, check_images=False)
    return records, label_map


def augmented_grid(records, label_names, num, cols, seed, out_size, reference_compat=False,
                   expand_max_ratio=None, patch_overlap=None, mosaic_prob=0.):
    """uint8 RGB grid of `num` augmented samples with boxes drawn; label_names: id -> name;
    expand_max_ratio and patch_overlap as `preprocess_for_train`'s (None: the paper's),
    mosaic_prob as `data.build_dataset`'s (the samples form one batch)."""
    def preprocess_fn(image, labels, bboxes, seed):
        return prep.preprocess_for_train(image, labels, bboxes, (out_size, out_size),
                                         reference_compat=reference_compat, seed=seed,
                                         expand_max_ratio=expand_max_ratio,
                                         patch_overlap=patch_overlap)

    ds = data_lib.build_dataset(records, preprocess_fn, batch_size=num, is_training=True,
                                seed=seed, with_gt=True, mosaic_prob=mosaic_prob)
    images, targets = next(iter(ds))
    tiles = []
    for i in range(num):
        n = int(targets['num_boxes'][i])
        tiles.append(visualize.draw_boxes(
            prep.np_image_unwhitened(images[i].numpy()), targets['bboxes'][i, :n].numpy(),
            targets['labels'][i, :n].numpy(), label_names=label_names))
    return visualize.make_grid(tiles, cols)


def chosen_expand_max_ratio(records, expand_max_ratio=None):
    """`(expand_max_ratio, note)`: the given ratio (note None), else the one chosen from the
    records' boxes as train_ssd.py chooses it (`prep.expand_max_ratio_for_boxes`), with a note
    that says why."""
    if expand_max_ratio is not None:
        return expand_max_ratio, None
    ratio, reason = prep.expand_max_ratio_for_boxes(anchors_report.boxes_of_records(records))
    return ratio, f"--expand_max_ratio={ratio:g} ({reason})"


def main(argv):
    del argv
    if FLAGS.reference_compat and FLAGS.expand_max_ratio is not None:
        raise app.UsageError("--expand_max_ratio with --reference_compat: the slim chain has no "
                             "zoom-out step")
    if FLAGS.reference_compat and FLAGS.patch_overlap is not None:
        raise app.UsageError("--patch_overlap with --reference_compat: the slim chain samples "
                             "its crop its own way")
    if FLAGS.reference_compat and FLAGS.mosaic_prob:
        raise app.UsageError("--mosaic_prob with --reference_compat: the slim chain has no "
                             "mosaics")
    if not 0. <= FLAGS.mosaic_prob <= 1.:
        raise app.UsageError(f"--mosaic_prob must be in [0, 1], got {FLAGS.mosaic_prob}")
    records, label_map = load_source(FLAGS.dataset_dir, FLAGS.split, FLAGS.seed)
    ratio = FLAGS.expand_max_ratio
    if not FLAGS.reference_compat:
        ratio, note = chosen_expand_max_ratio(records, ratio)
        if note:
            print(f"augmentation: {note}")
    grid = augmented_grid(records, label_map.name, FLAGS.num, FLAGS.cols, FLAGS.seed,
                          FLAGS.out_size, FLAGS.reference_compat, ratio, FLAGS.patch_overlap,
                          FLAGS.mosaic_prob)
    visualize.save_png(FLAGS.out, grid)
    print(f"wrote {FLAGS.num} augmented samples to {FLAGS.out}")


if __name__ == '__main__':
    define_flags()
    app.run(main)
