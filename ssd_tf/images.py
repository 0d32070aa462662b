"""The one image decoder of the project, and the byte-level checks that run before it.

Training (`data.py`), evaluation, the SavedModel signatures (`export.py`), `detect` and the
dataset readers (`datasets/records.py`) all decode with `decode_image`, so a limit set here
holds at every entry point. Before any pixel is decoded, `encoded_image_problem` reads only
the file's header and tail:
- the format from the leading bytes (`MAGIC`: JPEG, PNG, GIF, BMP);
- visible truncation: a JPEG must end with its end-of-image marker FFD9, a PNG with its IEND
  chunk (both looked for in the last `_TAIL_WINDOW` bytes before any trailing NUL padding,
  as some writers pad), a GIF's first image must be complete;
- the pixel count from the header (JPEG: the SOF frame header found by walking the marker
  segments; PNG: IHDR; GIF: the logical screen and the first image descriptor; BMP: the DIB
  header), compared with `max_pixels`.
A GIF is decoded from its first image only: the bytes are cut after the first image's data
and a trailer appended, so the decoder allocates one frame whatever the file holds (the
frame count is capped at 1 before decoding; `tf.io.decode_image` alone decodes every frame
at the canvas size).

Graph code (`encoded_image_problem`, `decode_image`) takes a scalar `tf.string`; called
eagerly it runs a compiled copy. Python helpers: `sniff_format`, `read_image_bytes`,
`decode_record_image`.
"""
import numpy as np
import tensorflow as tf

# Leading bytes -> format name, for the formats `tf.io.decode_image` reads.
MAGIC = {b'\xff\xd8\xff': 'JPEG', b'\x89PNG\r\n\x1a\n': 'PNG', b'GIF8': 'GIF', b'BM': 'BMP'}

# Default pixel budget of the serving endpoint and `detect`: 200 MP fits the largest single
# frame of any camera sold today (200 MP phone sensors: 16320 x 12240 = 199.8 MP; medium
# format backs: 151 MP), and bounds one decoded image to 600 MB of uint8 RGB. 16000 x 16000
# (256 MP) is over it.
DEFAULT_MAX_PIXELS = 200_000_000

# The end-of-image marker / IEND chunk must lie in the last _TAIL_BYTES bytes before trailing
# NULs (the padding some writers add); NULs are stripped from the last _TAIL_WINDOW bytes.
_TAIL_BYTES = 64
_TAIL_WINDOW = 4096
# JPEG start-of-frame markers carrying the image size (C4 = DHT, C8 = JPG, CC = DAC are not).
_JPEG_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
# JPEG markers without a length field: TEM and RST0..RST7.
_JPEG_STANDALONE = (0x01,) + tuple(range(0xD0, 0xD8))
_HEX = [f'{i:02x}' for i in range(256)]


def sniff_format(data):
    """Image format from the first bytes of `data` (bytes): 'JPEG', 'PNG', 'GIF', 'BMP' or
    None."""
    for magic, fmt in MAGIC.items():
        if data[:len(magic)] == magic:
            return fmt
    return None


# ---------------------------------------------------------------------------- header reading
def _bytes_at(data, pos, n):
    """uint8 `[n]`: the n bytes of scalar string `data` from `pos`, zero past the end."""
    size = tf.strings.length(data)
    pos = tf.clip_by_value(tf.cast(pos, tf.int32), 0, size)
    piece = tf.strings.substr(data, pos, n)
    padded = tf.strings.substr(tf.strings.join([piece, '\0' * n]), 0, n)
    return tf.reshape(tf.io.decode_raw(padded, tf.uint8), [n])


def _uint(raw, big_endian):
    """Unsigned integer (int64) of the uint8 bytes `raw` `[k]`."""
    raw = tf.cast(raw, tf.int64)
    k = int(raw.shape[0])
    weights = [256 ** (k - 1 - i) if big_endian else 256 ** i for i in range(k)]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64))


def _tail_has(data, pattern):
    """Scalar bool: `pattern` (bytes) lies in the last _TAIL_BYTES bytes of `data` once
    trailing NULs are stripped (within the last _TAIL_WINDOW bytes)."""
    size = tf.strings.length(data)
    start = tf.maximum(size - _TAIL_WINDOW, 0)
    tail = tf.io.decode_raw(tf.strings.substr(data, start, _TAIL_WINDOW), tf.uint8)
    nonzero = tf.cast(tf.where(tail > 0)[:, 0], tf.int32)
    end = tf.reduce_max(tf.concat([nonzero + 1, [0]], 0))
    window = tail[tf.maximum(end - _TAIL_BYTES, 0):end]
    k = len(pattern)
    m = tf.shape(window)[0] - k + 1
    hit = tf.ones(tf.maximum(m, 0), tf.bool)
    for i, byte in enumerate(pattern):
        hit = tf.logical_and(hit, tf.equal(window[i:i + tf.maximum(m, 0)], byte))
    return tf.reduce_any(hit)


def _jpeg_size(data):
    """`(height, width, found)` from the first SOF segment, walking the marker segments."""
    size = tf.strings.length(data)

    def cond(pos, h, w, state):
        return tf.logical_and(tf.equal(state, 0), pos < size)

    def body(pos, h, w, state):
        b = tf.cast(_bytes_at(data, pos, 9), tf.int32)
        is_sof = tf.reduce_any(tf.equal(b[1], _JPEG_SOF))
        standalone = tf.reduce_any(tf.equal(b[1], _JPEG_STANDALONE))
        length = b[2] * 256 + b[3]
        # state: 0 walking, 1 found, 2 no frame header (bad marker, SOS/EOI before SOF)
        bad = tf.logical_or(tf.not_equal(b[0], 0xFF),
                            tf.logical_or(tf.equal(b[1], 0xDA), tf.equal(b[1], 0xD9)))
        new_state = tf.where(bad, 2, tf.where(is_sof, 1, 0))
        step = tf.where(tf.equal(b[1], 0xFF), 1, tf.where(standalone, 2, 2 + length))
        return (pos + step, tf.where(is_sof, b[5] * 256 + b[6], h),
                tf.where(is_sof, b[7] * 256 + b[8], w), new_state)

    _, h, w, state = tf.while_loop(cond, body, (tf.constant(2), 0, 0, 0))
    return tf.cast(h, tf.int64), tf.cast(w, tf.int64), tf.equal(state, 1)


def _gif_first_image(data):
    """`(height, width, end, state)` of a GIF: logical screen size, the offset just past the
    first image's data, state 1 (found), 2 (truncated) or 3 (corrupt / no image)."""
    size = tf.strings.length(data)
    head = _bytes_at(data, 6, 7)
    screen_w, screen_h = _uint(head[0:2], False), _uint(head[2:4], False)
    packed = tf.cast(head[4], tf.int32)
    table = tf.where(packed >= 128, 3 * tf.bitwise.left_shift(2, packed % 8), 0)

    # mode: 0 expecting a block, 1 in an extension's sub-blocks, 2 in the image's sub-blocks
    def cond(pos, mode, frame, state):
        return tf.equal(state, 0)

    def body(pos, mode, frame, state):
        b = tf.cast(_bytes_at(data, pos, 10), tf.int32)
        past_end = pos >= size
        # a block
        is_ext, is_image = tf.equal(b[0], 0x21), tf.equal(b[0], 0x2C)
        local = tf.where(b[9] >= 128, 3 * tf.bitwise.left_shift(2, b[9] % 8), 0)
        block_pos = tf.where(is_ext, pos + 2, pos + 10 + local + 1)
        block_mode = tf.where(is_ext, 1, 2)
        block_frame = tf.where(is_image, tf.stack([b[5] + 256 * b[6], b[7] + 256 * b[8]]),
                               frame)
        block_state = tf.where(tf.logical_or(is_ext, is_image), 0, 3)
        # a sub-block: length byte then data; 0 ends the chain
        chain_end = tf.equal(b[0], 0)
        sub_pos = tf.where(chain_end, pos + 1, pos + 1 + b[0])
        sub_mode = tf.where(chain_end, 0, mode)
        sub_state = tf.where(tf.logical_and(chain_end, tf.equal(mode, 2)), 1, 0)
        in_block = tf.equal(mode, 0)
        new_state = tf.where(past_end, 2, tf.where(in_block, block_state, sub_state))
        return (tf.where(in_block, block_pos, sub_pos), tf.where(in_block, block_mode, sub_mode),
                tf.where(in_block, block_frame, frame), new_state)

    end, _, frame, state = tf.while_loop(
        cond, body, (13 + table, tf.constant(0), tf.zeros([2], tf.int32), tf.constant(0)))
    frame = tf.cast(frame, tf.int64)
    return (tf.maximum(screen_h, frame[1]), tf.maximum(screen_w, frame[0]), end, state)


def _inspect(data, max_pixels):
    """`(problem, body)`: the problem string ('' when fine) and the bytes to decode (a GIF cut
    after its first image)."""
    data = tf.convert_to_tensor(data, tf.string)
    head = _bytes_at(data, 0, 32)
    names = list(MAGIC.values())
    fmt = tf.constant(-1)
    for i, magic in reversed(list(enumerate(MAGIC))):
        match = tf.reduce_all(tf.equal(head[:len(magic)], list(magic)))
        fmt = tf.where(match, i, fmt)
    is_fmt = {name: tf.equal(fmt, i) for i, name in enumerate(names)}

    jpeg_h, jpeg_w, jpeg_found = tf.cond(is_fmt['JPEG'], lambda: _jpeg_size(data),
                                         lambda: (tf.constant(0, tf.int64),) * 2 +
                                         (tf.constant(False),))
    gif_h, gif_w, gif_end, gif_state = tf.cond(
        is_fmt['GIF'], lambda: _gif_first_image(data),
        lambda: (tf.constant(0, tf.int64),) * 2 + (tf.constant(0), tf.constant(0)))
    png_w, png_h = _uint(head[16:20], True), _uint(head[20:24], True)
    dib = _uint(head[14:18], False)
    bmp_w = tf.where(tf.equal(dib, 12), _uint(head[18:20], False), _uint(head[18:22], False))
    bmp_h = tf.where(tf.equal(dib, 12), _uint(head[20:22], False), _uint(head[22:26], False))
    bmp_h = tf.where(bmp_h >= 2 ** 31, 2 ** 32 - bmp_h, bmp_h)  # negative = top-down rows
    height = tf.stack([jpeg_h, png_h, gif_h, bmp_h, 0])[tf.where(fmt < 0, 4, fmt)]
    width = tf.stack([jpeg_w, png_w, gif_w, bmp_w, 0])[tf.where(fmt < 0, 4, fmt)]

    first = tf.strings.reduce_join(
        tf.gather(tf.constant(_HEX), tf.cast(head[:8], tf.int32)), separator=' ')
    size_text = tf.strings.join([tf.strings.as_string(width), 'x', tf.strings.as_string(height)])
    limit = tf.cast(max_pixels, tf.int64)
    # first problem wins
    checks = [
        (tf.equal(tf.strings.length(data), 0), 'empty file'),
        (fmt < 0, tf.strings.join(['not a JPEG/PNG/GIF/BMP file (first bytes ', first, ')'])),
        (tf.logical_and(is_fmt['JPEG'], tf.logical_not(jpeg_found)),
         'corrupt JPEG (no frame header before the image data)'),
        (tf.logical_and(is_fmt['PNG'], tf.logical_not(tf.reduce_all(tf.equal(
            head[12:16], list(b'IHDR'))))), 'corrupt PNG (no IHDR header)'),
        (tf.logical_and(is_fmt['GIF'], tf.equal(gif_state, 3)),
         'corrupt GIF (no image block before the trailer)'),
        (tf.logical_and(is_fmt['GIF'], tf.equal(gif_state, 2)),
         'truncated GIF (its first image ends early)'),
        (tf.logical_and(limit >= 0, height * width > limit),
         tf.strings.join([size_text, ' pixels is over the limit of ',
                          tf.strings.as_string(limit)])),
        (tf.logical_and(is_fmt['JPEG'], tf.logical_not(_tail_has(data, b'\xff\xd9'))),
         'truncated JPEG (no end-of-image marker)'),
        (tf.logical_and(is_fmt['PNG'], tf.logical_not(_tail_has(data, b'IEND'))),
         'truncated PNG (no IEND chunk)'),
    ]
    problem = tf.constant('')
    for bad, text in reversed(checks):
        problem = tf.where(bad, text, problem)
    body = tf.cond(tf.logical_and(is_fmt['GIF'], tf.equal(gif_state, 1)),
                   lambda: tf.strings.join([tf.strings.substr(data, 0, gif_end), ';']),
                   lambda: data)
    return problem, body


def _limit(max_pixels):
    return -1 if max_pixels is None else int(max_pixels)


@tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)],
             autograph=False)
def _problem_compiled(data, max_pixels):
    return _inspect(data, max_pixels)[0]


def encoded_image_problem(data, max_pixels=None):
    """Scalar tf.string: '' when the encoded image `data` (scalar string) starts like a
    JPEG/PNG/GIF/BMP, is not visibly truncated and its header size is within `max_pixels`
    (None: no limit); otherwise a short reason, e.g. 'truncated JPEG (no end-of-image
    marker)' or '16000x16000 pixels is over the limit of 200000000' (width x height)."""
    if tf.executing_eagerly():
        return _problem_compiled(tf.convert_to_tensor(data, tf.string), _limit(max_pixels))
    return _inspect(data, _limit(max_pixels))[0]


def _decode(data, max_pixels, where):
    problem, body = _inspect(data, max_pixels)
    message = tf.strings.join([where, ': ', problem])
    check = tf.debugging.Assert(tf.equal(problem, ''), [message], name='check_image')
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(body, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


_decode_compiled = tf.function(_decode, autograph=False, input_signature=[
    tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string)])


def decode_image(data, max_pixels=None, where=None):
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string, any channel count) -> uint8 `[H, W, 3]`
    RGB; a GIF gives its first frame.

    The header is checked first (`encoded_image_problem`): a problem raises
    InvalidArgumentError '<where>: <reason>' before anything is decoded. where: what to name
    (str or scalar string tensor, e.g. 'image 3 of the batch (0-based)'); default 'image'.
    A body that is corrupt past the header raises the decoder's own InvalidArgumentError.
    """
    where = 'image' if where is None else where
    if tf.executing_eagerly():
        return _decode_compiled(tf.convert_to_tensor(data, tf.string), _limit(max_pixels),
                                tf.convert_to_tensor(where, tf.string))
    return _decode(data, _limit(max_pixels), where)


# ---------------------------------------------------------------------------- records
def read_image_bytes(record):
    """The encoded image (bytes) of a Record-like object: its `encoded` bytes or the file at
    `image_path` as they are (no re-encoding), else its in-memory `image` array as PNG."""
    if getattr(record, 'encoded', None) is not None:
        return bytes(record.encoded)
    if getattr(record, 'image_path', None):
        with open(record.image_path, 'rb') as f:
            return f.read()
    image = getattr(record, 'image', None)
    if image is None:
        raise ValueError(f"record {record.image_id!r} has no image_path, encoded or image")
    import cv2  # only for in-memory arrays
    ok, buf = cv2.imencode('.png', cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode the in-memory image of record {record.image_id!r}")
    return buf.tobytes()


def decode_record_image(record):
    """RGB uint8 `[H, W, 3]` numpy image of a Record-like object (its array when it only has
    one in memory, else its decoded bytes)."""
    image = getattr(record, 'image', None)
    if image is not None and getattr(record, 'encoded', None) is None \
            and not getattr(record, 'image_path', None):
        return np.asarray(image, np.uint8)
    where = getattr(record, 'image_path', None) or f"record {getattr(record, 'image_id', '')}"
    return decode_image(read_image_bytes(record), where=str(where)).numpy()
