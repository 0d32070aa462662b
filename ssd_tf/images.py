"""The one image decoder and its byte-level checks (Room A's module; this is Room E's minimal
version of the agreed interface, kept so that the data pipeline can be tested before the merge).

`encoded_image_problem` finds, in the graph and without decoding, bytes that are not a
JPEG/PNG/GIF/BMP file, visibly truncated files and images over a pixel budget; `decode_image`
checks it first and names the image in its error.
"""
import tensorflow as tf

# Leading bytes -> format name, for the formats `tf.io.decode_image` reads.
MAGIC = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'), (b'GIF8', 'GIF'),
         (b'BM', 'BMP'))
# A writer may pad a JPEG after its end-of-image marker: look for it in this many last bytes.
_JPEG_TAIL = 64


def sniff_format(data):
    """Image format from the first bytes ('JPEG', 'PNG', 'GIF', 'BMP') or None."""
    for magic, fmt in MAGIC:
        if data[:len(magic)] == magic:
            return fmt
    return None


def _tail_has(data, pattern, tail):
    """Whether the last `tail` bytes of scalar string `data` contain `pattern` (bytes)."""
    n = tf.strings.length(data)
    start = tf.maximum(n - tail, 0)
    chunk = tf.io.decode_raw(tf.strings.substr(data, start, n - start), tf.uint8)
    k = len(pattern)
    m = tf.size(chunk) - k + 1
    windows = tf.stack([chunk[i:i + tf.maximum(m, 0)] for i in range(k)], axis=1)  # [m, k]
    return tf.reduce_any(tf.reduce_all(tf.equal(windows, tf.constant(list(pattern), tf.uint8)),
                                       axis=1))


def _le_uint(data, offset, size):
    raw = tf.io.decode_raw(tf.strings.substr(data, offset, size), tf.uint8)
    raw = tf.cast(tf.pad(raw, [[0, size - tf.size(raw)]]), tf.int64)
    return tf.reduce_sum(raw * tf.constant([256 ** i for i in range(size)], tf.int64))


def _be_uint(data, offset, size):
    raw = tf.io.decode_raw(tf.strings.substr(data, offset, size), tf.uint8)
    raw = tf.cast(tf.pad(raw, [[0, size - tf.size(raw)]]), tf.int64)
    return tf.reduce_sum(raw * tf.constant([256 ** (size - 1 - i) for i in range(size)], tf.int64))


def _header_size(data, fmt):
    """(height, width) int64 from a PNG/GIF/BMP header; JPEG via `extract_jpeg_shape`."""
    branches = {
        'PNG': lambda: (_be_uint(data, 20, 4), _be_uint(data, 16, 4)),
        'GIF': lambda: (_le_uint(data, 8, 2), _le_uint(data, 6, 2)),
        'BMP': lambda: (tf.abs(_le_uint(data, 22, 4) - tf.cast(
            _le_uint(data, 22, 4) >= 2 ** 31, tf.int64) * 2 ** 32), _le_uint(data, 18, 4)),
    }

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    return tf.case([(tf.equal(fmt, name), fn) for name, fn in branches.items()], default=jpeg)


def encoded_image_problem(data, max_pixels=None):
    """'' when scalar string `data` looks like a whole JPEG/PNG/GIF/BMP within `max_pixels`,
    else a short human reason (scalar tf.string). Graph code; nothing is decoded."""
    data = tf.convert_to_tensor(data, tf.string)
    fmt = tf.constant('', tf.string)
    for magic, name in reversed(MAGIC):
        fmt = tf.where(tf.equal(tf.strings.substr(data, 0, len(magic)), magic), name, fmt)

    def truncation():
        jpeg_ok = tf.logical_or(tf.not_equal(fmt, 'JPEG'), _tail_has(data, b'\xff\xd9', _JPEG_TAIL))
        png_ok = tf.logical_or(tf.not_equal(fmt, 'PNG'), _tail_has(data, b'IEND', 12))
        return tf.where(jpeg_ok, tf.where(png_ok, '', 'truncated PNG (no IEND chunk)'),
                        'truncated JPEG (no end-of-image marker)')

    def size():
        if max_pixels is None:
            return tf.constant('')
        h, w = _header_size(data, fmt)
        over = h * w > int(max_pixels)
        return tf.cond(over, lambda: tf.strings.format(
            '{}x{} pixels is over the limit of {}', (w, h, int(max_pixels))), lambda: '')

    def known():
        reason = truncation()
        return tf.cond(tf.equal(reason, ''), size, lambda: reason)

    def unknown():
        first = tf.strings.substr(data, 0, 8)
        first = tf.strings.format('{}', tf.io.decode_raw(first, tf.uint8), summarize=8)
        return tf.strings.join(['not a JPEG/PNG/GIF/BMP file (first bytes ', first, ')'])

    empty = tf.equal(tf.strings.length(data), 0)
    return tf.cond(empty, lambda: tf.constant('empty image bytes'),
                   lambda: tf.cond(tf.equal(fmt, ''), unknown, known))


def decode_image(data, max_pixels=None, where=None):
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 `[H, W, 3]` RGB (first frame of a GIF).

    Checks `encoded_image_problem` first and raises InvalidArgumentError naming `where`.
    """
    problem = encoded_image_problem(data, max_pixels)
    where = 'image' if where is None else where
    check = tf.debugging.Assert(tf.equal(problem, ''), [where, ': ', problem])
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image
