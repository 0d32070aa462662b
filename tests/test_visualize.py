"""Drawing boxes, grids and PNG output (ssd_tf.visualize)."""
import cv2
import numpy as np
import pytest

from ssd_tf import visualize


def test_draw_boxes_puts_class_colour_on_the_box_edges():
    image = np.zeros((100, 200, 3), np.uint8)
    # Box rows 20..60, columns 40..160 in pixels (relative / size).
    out = visualize.draw_boxes(image, [[0.2, 0.2, 0.6, 0.8]], [3], thickness=1)
    colour = visualize.class_color(3)
    assert tuple(out[40, 40]) == colour         # left edge, mid height
    assert tuple(out[40, 159]) == colour        # right edge (last pixel inside the box)
    assert tuple(out[59, 100]) == colour        # bottom edge
    assert tuple(out[40, 100]) == (0, 0, 0)     # interior untouched
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert not image.any()                      # input not modified


def test_draw_boxes_labels_scores_names_and_checks():
    image = np.full((60, 80, 3), 255, np.uint8)
    out = visualize.draw_boxes(image, np.zeros((0, 4)), np.zeros((0,), np.int64))
    np.testing.assert_array_equal(out, image)
    for names in ({1: 'cat'}, ['none', 'cat'], lambda i: 'cat', None):
        out = visualize.draw_boxes(image, [[0.1, 0.1, 0.9, 0.9]], [1], scores=[0.5],
                                   label_names=names)
        assert (out != 255).any()
    with pytest.raises(ValueError, match='labels'):
        visualize.draw_boxes(image, [[0, 0, 1, 1]], [1, 2])
    # Distinct classes get distinct colours.
    assert len({visualize.class_color(i) for i in range(1, 21)}) == 20


def test_make_grid_layout():
    a = np.full((10, 20, 3), 1, np.uint8)
    b = np.full((12, 8, 3), 2, np.uint8)
    grid = visualize.make_grid([a, b, a], cols=2, pad=1, pad_value=0)
    # cells 12 x 20, 2 rows x 2 cols, 1 pixel padding: (2*12 + 3) x (2*20 + 3).
    assert grid.shape == (27, 43, 3)
    assert grid[1, 1, 0] == 1 and grid[1, 22, 0] == 2 and grid[14, 1, 0] == 1
    assert grid[0, 0, 0] == 0 and grid[14, 22, 0] == 0  # padding and the empty 4th cell


def test_save_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = tmp_path / 'x.png'
    visualize.save_png(path, image)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, image)  # RGB order kept through cv2's BGR
    with pytest.raises(OSError, match='could not write'):
        visualize.save_png(tmp_path / 'missing' / 'x.png', image)


@pytest.mark.slow
def test_show_augmentation_grid_on_synthetic_set():
    from ssd_tf.cli import show_augmentation
    records, label_map = show_augmentation.load_source(None, 'train', seed=0)
    grid = show_augmentation.augmented_grid(records[:8], label_map.name, num=4, cols=2, seed=0,
                                            out_size=64)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2, 3)


@pytest.mark.slow
def test_show_augmentation_shows_the_zoom_out_bound():
    """--expand_max_ratio reaches the grid: with 1 no pixel is the mean-coloured canvas that
    the paper's zoom-out (the default, 4) shows on some of 8 samples."""
    from ssd_tf.cli import show_augmentation
    records, label_map = show_augmentation.load_source(None, 'train', seed=0)
    mean = np.array([123, 117, 104], np.uint8)  # the VGG means: the canvas after unwhitening

    def canvas_pixels(ratio):
        grid = show_augmentation.augmented_grid(records[:8], label_map.name, num=8, cols=4,
                                                seed=0, out_size=64, expand_max_ratio=ratio)
        return int(np.all(grid == mean, axis=-1).sum())
    assert canvas_pixels(None) > 64 and canvas_pixels(1.) == 0
