"""The absl flags that several programs share, each defined once (the slim names): the model
overrides of `ssd_tf.builder` (eval_ssd.py, export_savedmodel.py, detect.py) and the detection
post-processing (eval_ssd.py, export_savedmodel.py) and tiled detection (eval_ssd.py,
export_savedmodel.py, detect.py).

Each `define_*` takes the absl `flags` module and defines its group there, with one help text
per flag; a program may append a sentence of its own (`extra`) where its default goes further
(eval_ssd.py falls back to the data set's classes).
"""
from ssd_tf import postprocess
from ssd_tf import tiling

NETWORK_NAMES = ("'ssd_small', 'ssd_small_192', 'ssd_small_320', 'ssd_small_320_fpn', "
                 "'ssd_300_vgg', 'ssd_512_vgg', 'ssdlite_mobilenet_v2'")


def define_model_flags(flags, extra=None):
    """--model_name, --num_classes, --label_map: the overrides `builder.load_model` takes
    (default: what the run's config.json recorded). extra: `{flag: sentence}` appended to
    its help."""
    extra = extra or {}

    def helptext(name, text):
        return text + (' ' + extra[name] if name in extra else '')
    flags.DEFINE_string('model_name', None, helptext(
        'model_name', f"Network (a train_ssd.py --model_name: {NETWORK_NAMES}); default: the "
                      f"run's config.json; needed for a checkpoint without one (an original "
                      f"slim SSD checkpoint)."))
    flags.DEFINE_integer('num_classes', None, helptext(
        'num_classes', "Classes including the background; default: the run's config.json; "
                       "needed for a checkpoint without one."))
    flags.DEFINE_string('label_map', None, helptext(
        'label_map', "Label map file (labels.txt, .json or an OD API label_map.pbtxt); "
                     "default: the class names the run or export recorded, else a labels.txt "
                     "beside the model."))


def define_detection_flags(flags):
    """--select_threshold, --nms_threshold and --select_top_k (the slim names) with
    `ssd_tf.postprocess`'s defaults; each program adds its own count flag (--keep_top_k,
    --max_detections)."""
    flags.DEFINE_float('select_threshold', postprocess.SELECT_THRESHOLD,
                       'Score threshold: class scores below it are not detections.')
    flags.DEFINE_float('nms_threshold', postprocess.NMS_THRESHOLD,
                       'Non-maximum suppression IoU threshold.')
    flags.DEFINE_integer('select_top_k', postprocess.SELECT_TOP_K,
                         'Candidates per class before NMS.')


def define_tiling_flags(flags, extra=''):
    """--tiles and --tile_overlap (`ssd_tf.tiling`): detection on overlapping tiles as well
    as on the whole image. extra: a sentence appended to --tiles' help."""
    flags.DEFINE_string(
        'tiles', None,
        "ROWSxCOLS (e.g. 2x2): detect on the whole image AND on that many overlapping tiles, "
        "each warped to the network input (small objects get larger), then merge the "
        "detections by NMS; rows x cols + 1 network passes per image. 1x1: the same pipeline "
        "without tiles. Default: no tiling." + (' ' + extra if extra else ''))
    flags.DEFINE_float('tile_overlap', tiling.DEFAULT_OVERLAP,
                       "With --tiles: the share of a tile's side that neighbouring tiles have "
                       "in common (objects up to it appear whole in some tile).")
    flags.DEFINE_float('tile_max_box', tiling.DEFAULT_MAX_BOX,
                       "With --tiles: a tile's detections are kept only for boxes whose side "
                       "(square root of the area) is under this share of the image side; "
                       "larger objects come from the whole-image pass. 0 keeps them all. The "
                       "default was chosen on the small-object dev set (docs/evaluation.md).")


def define_test_time_flip_flag(flags, extra='', default=None):
    """--test_time_flip (`postprocess.detections_of`): each image also detected mirrored
    left-right and averaged in. extra: a sentence appended to the help. default None (the
    programs that load a run): unset, the run's own choice (`builder.run_test_time_flip`);
    --notest_time_flip turns it off."""
    unset = (" Default: the run's own choice (train_ssd.py --test_time_flip, recorded in its "
             "config.json), else off; --notest_time_flip turns it off." if default is None
             else "")
    flags.DEFINE_boolean(
        'test_time_flip', default,
        "Also run the network on each image mirrored left-right and average the two anchor by "
        "anchor (class scores and boxes) before NMS: twice the network's work per image, "
        "usually a higher mAP (on the small-object dev set VOC07 +0.02; docs/evaluation.md). "
        "With --tiles every tile is flipped too." + unset + (' ' + extra if extra else ''))


def tiles_from_flags(tiles, overlap, max_box=tiling.DEFAULT_MAX_BOX):
    """`tiling.Tiles` from --tiles/--tile_overlap/--tile_max_box, or None without --tiles; a
    bad value is a ValueError naming the flag."""
    parsed = tiling.parse_tiles(tiles)
    if parsed is None:
        return None
    tiling.check_tiles(parsed[0], parsed[1], overlap, max_box)
    return tiling.Tiles(parsed[0], parsed[1], overlap, max_box)

