"""Drawing boxes on images and tiling images into grids (numpy + cv2, outside the graph).

Images are uint8 RGB `[H, W, 3]`; boxes are `[N, 4]` `[ymin, xmin, ymax, xmax]` normalised to
[0, 1] and converted to pixels here, at the edge. Used for augmented-sample grids, detection
grids and TensorBoard images.
"""
import colorsys

import cv2
import numpy as np

from ssd_tf import atomic_files

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label):
    """A fixed, well separated RGB colour `(r, g, b)` for an integer class id."""
    hue = (int(label) * 0.618033988749895) % 1.  # golden-ratio steps around the hue circle
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.)
    return int(r * 255), int(g * 255), int(b * 255)


def _to_uint8_rgb(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H, W, 3] (or [H, W]), got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _label_text(label_names, label):
    if label_names is None:
        return str(label)
    try:
        return str(label_names(label) if callable(label_names) else label_names[label])
    except (KeyError, IndexError):
        return str(label)


def draw_boxes(image, boxes, labels, scores=None, label_names=None, thickness=None):
    """Returns a copy of `image` with `boxes` drawn in per-class colours, with a caption.

    Args:
      image: uint8 `[H, W, 3]` RGB (other dtypes are rounded and clipped to 0..255).
      boxes: `[N, 4]` yxyx relative to the image.
      labels: `[N]` integer class ids.
      scores: optional `[N]` scores, shown after the name.
      label_names: optional id -> name, a dict, a sequence indexed by id or a callable;
        otherwise the id is shown.
      thickness: line width in pixels (default grows with the image size).
    Returns:
      uint8 `[H, W, 3]`.
    """
    image = _to_uint8_rgb(image).copy()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"draw_boxes: {len(boxes)} boxes but {len(labels)} labels")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"draw_boxes: {len(boxes)} boxes but {len(scores)} scores")
    height, width = image.shape[:2]
    if thickness is None:
        thickness = max(1, int(round(min(height, width) / 250)))
    font_scale = max(0.35, min(height, width) / 800)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        y0, x0, y1, x1 = box * [height, width, height, width]
        p0 = (int(round(x0)), int(round(y0)))
        p1 = (int(round(x1)) - 1, int(round(y1)) - 1)
        color = class_color(label)
        cv2.rectangle(image, p0, p1, color, thickness)
        text = _label_text(label_names, int(label))
        if scores is not None:
            text += f" {scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, 1)
        tx = min(max(p0[0], 0), max(width - tw, 0))
        ty = max(p0[1], th + base)  # keep the caption inside the image
        ty = min(ty, height - 1)
        cv2.rectangle(image, (tx, ty - th - base), (tx + tw, ty), color, -1)
        cv2.putText(image, text, (tx, ty - base), _FONT, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def make_grid(images, cols, pad=2, pad_value=255):
    """Tiles uint8 images `[H_i, W_i, 3]` into a `cols`-wide grid (cells of the largest size,
    `pad` pixels apart, filled with `pad_value`); returns uint8 `[rows*H + .., cols*W + .., 3]`.
    """
    images = [_to_uint8_rgb(im) for im in images]
    if not images:
        raise ValueError("make_grid: no images")
    cols = max(1, min(int(cols), len(images)))
    rows = -(-len(images) // cols)
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    grid = np.full((rows * cell_h + (rows + 1) * pad, cols * cell_w + (cols + 1) * pad, 3),
                   pad_value, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y = pad + r * (cell_h + pad)
        x = pad + c * (cell_w + pad)
        grid[y:y + im.shape[0], x:x + im.shape[1]] = im
    return grid


def save_png(path, image):
    """Writes a uint8 RGB `[H, W, 3]` image to `path` as PNG (parent directory must exist)."""
    image = _to_uint8_rgb(image)
    ok, png = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    try:
        if not ok:
            raise OSError('the PNG encoder failed')
        with atomic_files.replacing(path, 'wb') as f:
            f.write(png.tobytes())
    except OSError as e:
        raise OSError(f"save_png: could not write {path} ({e}); check the directory exists "
                      f"and is writable") from e
