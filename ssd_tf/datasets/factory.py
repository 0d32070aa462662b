"""One entry point to the readers by data set name (as slim's dataset_factory):
`load_records('voc' | 'coco' | 'synthetic', dataset_dir, split, ...)`."""
import os

from ssd_tf.datasets import coco as coco_lib
from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.datasets import synthetic as synthetic_lib
from ssd_tf.datasets import voc as voc_lib

DATASET_NAMES = ('voc', 'coco', 'synthetic')


def load_records(dataset_name, dataset_dir, split, label_map=None, strict=False,
                 num_images=1000, seed=0, image_size=synthetic_lib.DEFAULT_IMAGE_SIZE,
                 check_images=True):
    """`(records, label_map, report_summary)` for one split of a data set.

    voc: `dataset_dir` is one root or several joined by commas (VOC2007,VOC2012); `label_map`
      a LabelMap, a label map file, or None for the roots' labels.txt, else all class names
      sorted (`voc.default_label_map`); pass `labelmap.VOC_LABEL_MAP` for Pascal VOC's ids.
    coco: `dataset_dir` holds `annotations/instances_<split>.json` and the images in
      `<split>/` (the COCO 2017 layout; split e.g. 'val2017').
    synthetic: no files; `num_images` images of `split` 'train'/'trainval'/'test' of `seed`.
    """
    if dataset_name == 'voc':
        if not dataset_dir:
            raise ValueError("dataset_dir is required for voc (a VOC root, or several "
                             "comma-separated)")
        dirs = [d for d in os.fspath(dataset_dir).split(',') if d]
        if label_map is None:
            label_map = voc_lib.default_label_map(dirs)
        elif not isinstance(label_map, labelmap_lib.LabelMap):
            label_map = labelmap_lib.LabelMap.read(label_map)
        records, report = voc_lib.read_voc(dirs, split, label_map=label_map, strict=strict,
                                           check_images=check_images)
        return records, label_map, report.summary()
    if dataset_name == 'coco':
        if not dataset_dir:
            raise ValueError("dataset_dir is required for coco (with annotations/ and "
                             "<split>/ inside)")
        ann = os.path.join(dataset_dir, 'annotations', f'instances_{split}.json')
        records, label_map, report = coco_lib.read_coco(
            ann, os.path.join(dataset_dir, split), strict=strict, check_images=check_images)
        return records, label_map, report.summary()
    if dataset_name == 'synthetic':
        records = synthetic_lib.make_synthetic_split(split, num_images, seed, image_size)
        return records, synthetic_lib.SYNTHETIC_LABEL_MAP, f"synthetic: {len(records)} records"
    raise ValueError(f"dataset_name must be one of {DATASET_NAMES}, got {dataset_name!r}")
