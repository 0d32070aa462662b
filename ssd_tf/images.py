"""The one image decoder of the project, and the byte-level checks that run before it.

Training (`data.py`), evaluation, the SavedModel signatures (`export/`), `detect` and the
dataset readers (`datasets/records.py`) all decode with `decode_image`, so a limit set here
holds at every entry point. Before any pixel is decoded, `encoded_image_problem` reads only
the file's header and tail:
- the format from the leading bytes (`MAGIC`: JPEG, PNG, GIF, BMP);
- visible truncation: a JPEG must contain its end-of-image marker FFD9 (normally at the end;
  data after it, such as the video of a phone's motion photo, is accepted), a PNG must end
  with its IEND chunk (looked for in the last `_TAIL_WINDOW` bytes before any trailing NUL
  padding, as some writers pad), a GIF's first image must be complete;
- with a budget `max_pixels`, the pixel count from the header (JPEG: the SOF frame header
  found by walking the marker segments, a JPEG without one is refused; PNG: IHDR; GIF: the
  larger of the logical screen and the first image descriptor; BMP: the DIB header).
With a budget, a GIF is decoded from its first image only: the bytes are cut after the first image's data
and a trailer appended, so the decoder allocates one frame whatever the file holds (the
frame count is capped at 1 before decoding; `tf.io.decode_image` alone decodes every frame
at the canvas size).

The header walks (JPEG segments, GIF blocks) and the GIF cut run only with a pixel budget
(serving, `detect`): their loops cost ~0.5 ms per image in a tf.data map, as much as decoding
a VOC photo. Without one (training and evaluation on the user's own data) the format and
truncation checks still run, and `tf.io.decode_image` keeps a GIF's first frame (after
decoding every frame).

Graph code (`encoded_image_problem`, `decode_image`) takes a scalar `tf.string`; called
eagerly it runs a compiled copy. Python helpers: `sniff_format`, `read_image_bytes`,
`decode_record_image`.
"""
import threading

import numpy as np
import tensorflow as tf

# Leading bytes -> format name, for the formats `tf.io.decode_image` reads.
MAGIC = {b'\xff\xd8\xff': 'JPEG', b'\x89PNG\r\n\x1a\n': 'PNG', b'GIF8': 'GIF', b'BM': 'BMP'}

# Default pixel budget of the serving endpoint and `detect`: 200 MP fits the largest single
# frame of any camera sold today (200 MP phone sensors: 16320 x 12240 = 199.8 MP; medium
# format backs: 151 MP), and bounds one decoded image to 600 MB of uint8 RGB. 16000 x 16000
# (256 MP) is over it.
DEFAULT_MAX_PIXELS = 200_000_000

# A PNG's IEND chunk must lie in the last _TAIL_BYTES bytes before trailing
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


def _tail(data):
    """uint8 `[<= _TAIL_BYTES]`: the last bytes of `data` once trailing NULs (within the last
    _TAIL_WINDOW bytes) are stripped."""
    start = tf.maximum(tf.strings.length(data) - _TAIL_WINDOW, 0)
    tail = tf.io.decode_raw(tf.strings.substr(data, start, _TAIL_WINDOW), tf.uint8)
    nonzero = tf.cast(tf.where(tail > 0)[:, 0], tf.int32)
    end = tf.reduce_max(tf.concat([nonzero + 1, [0]], 0))
    return tail[tf.maximum(end - _TAIL_BYTES, 0):end]


def _contains(window, pattern):
    """Scalar bool: the bytes `pattern` occur in the uint8 vector `window`."""
    m = tf.maximum(tf.shape(window)[0] - len(pattern) + 1, 0)
    hit = tf.ones([m], tf.bool)
    for i, byte in enumerate(pattern):
        hit = tf.logical_and(hit, tf.equal(window[i:i + m], byte))
    return tf.reduce_any(hit)


def _jpeg_size(data, active):
    """`(height, width, found)` from the first SOF segment, walking the marker segments
    (no step unless `active`, a scalar bool)."""
    size = tf.strings.length(data)

    def cond(pos, h, w, state):
        return tf.logical_and(tf.equal(state, 0), pos < size)

    def body(pos, h, w, state):
        b = tf.cast(_bytes_at(data, pos, 9), tf.int32)
        is_sof = tf.reduce_any(tf.equal(b[1], _JPEG_SOF))
        standalone = tf.reduce_any(tf.equal(b[1], _JPEG_STANDALONE))
        length = b[2] * 256 + b[3]
        # state: 0 walking, 1 found, 2 no frame header (bad marker, SOS/EOI before SOF),
        # 3 not a JPEG
        bad = tf.logical_or(tf.not_equal(b[0], 0xFF),
                            tf.logical_or(tf.equal(b[1], 0xDA), tf.equal(b[1], 0xD9)))
        new_state = tf.where(bad, 2, tf.where(is_sof, 1, 0))
        step = tf.where(tf.equal(b[1], 0xFF), 1, tf.where(standalone, 2, 2 + length))
        return (pos + step, tf.where(is_sof, b[5] * 256 + b[6], h),
                tf.where(is_sof, b[7] * 256 + b[8], w), new_state)

    _, h, w, state = tf.while_loop(cond, body, (tf.constant(2), 0, 0, tf.where(active, 0, 3)))
    return tf.cast(h, tf.int64), tf.cast(w, tf.int64), tf.equal(state, 1)


def _gif_first_image(data, active):
    """`(height, width, end, state)` of a GIF: logical screen size, the offset just past the
    first image's data, state 1 (found), 2 (truncated), 3 (corrupt / no image) or 4 (not
    `active`, a scalar bool: no step taken)."""
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
        cond, body, (13 + table, tf.constant(0), tf.zeros([2], tf.int32), tf.where(active, 0, 4)))
    frame = tf.cast(frame, tf.int64)
    return (tf.maximum(screen_h, frame[1]), tf.maximum(screen_w, frame[0]), end, state)


# Problem codes, in order of precedence (a lower code wins): header faults, the pixel
# budget, truncation. _PROBLEMS[code] is the text (the two dynamic ones get details).
(_OK, _EMPTY, _UNKNOWN, _JPEG_NO_SOF, _PNG_NO_IHDR, _GIF_NO_IMAGE, _GIF_CUT, _OVER, _JPEG_CUT,
 _PNG_CUT) = range(10)
_PROBLEMS = ('', 'empty file', 'not a JPEG/PNG/GIF/BMP file',
             'corrupt JPEG (no frame header before the image data)',
             'corrupt PNG (no IHDR header)', 'corrupt GIF (no image block before the trailer)',
             'truncated GIF (its first image ends early)', ' pixels is over the limit of ',
             'truncated JPEG (no end-of-image marker)', 'truncated PNG (no IEND chunk)')


# EXIF orientation (JPEG only): the APPn segments looked through for the Exif APP1 (JFIF
# APP0 first is common; cameras put APP1 first), and the IFD0 entries read (the orientation
# tag 0x0112 is among the first dozen in camera files; IFD0 entries are sorted by tag).
_EXIF_APP_SEGMENTS = 4
_EXIF_MAX_ENTRIES = 48
_EXIF_WINDOW = 2048
_ORIENTATION_TAG = 0x0112


@tf.autograph.experimental.do_not_convert  # graph code as written (a tf.data map converts)
def exif_orientation(data):
    """Scalar int32 1..8: the EXIF orientation tag of the JPEG `data` (scalar string): 1
    (as stored) for other formats, JPEGs without an Exif APP1 among their first
    `_EXIF_APP_SEGMENTS` segments and within their first `_EXIF_WINDOW` bytes, without the
    tag in IFD0 or with a value outside 1..8.

    Branch-free graph code on one read of the first `_EXIF_WINDOW` bytes (gathers, no loop):
    cameras and phones write the Exif APP1 first (or after a JFIF APP0) with IFD0 right
    behind its header, so the tag lies within the first few hundred bytes.
    """
    data = tf.convert_to_tensor(data, tf.string)
    b = tf.cast(_bytes_at(data, 0, _EXIF_WINDOW), tf.int64)

    def at(pos, n):  # n bytes from pos (zero outside the window)
        idx = tf.clip_by_value(pos + tf.range(n, dtype=tf.int64), 0, _EXIF_WINDOW)
        return tf.gather(tf.concat([b, [0]], 0), idx)
    is_jpeg = tf.logical_and(tf.equal(b[0], 0xFF), tf.equal(b[1], 0xD8))
    exif = tf.constant(list(b'Exif\0\0'), tf.int64)
    pos = tf.constant(2, tf.int64)
    found = tf.constant(False)
    tiff = tf.constant(0, tf.int64)
    for _ in range(_EXIF_APP_SEGMENTS):
        seg = at(pos, 10)
        is_app = tf.logical_and(tf.equal(seg[0], 0xFF),
                                tf.logical_and(seg[1] >= 0xE0, seg[1] <= 0xEF))
        hit = tf.logical_and(tf.logical_and(is_app, tf.equal(seg[1], 0xE1)),
                             tf.reduce_all(tf.equal(seg[4:10], exif)))
        hit = tf.logical_and(hit, tf.logical_not(found))
        tiff = tf.where(hit, pos + 10, tiff)
        found = tf.logical_or(found, hit)
        walk = tf.logical_and(is_app, tf.logical_not(found))
        pos = tf.where(walk, pos + 2 + seg[2] * 256 + seg[3], pos)
    t = at(tiff, 8)
    big = tf.equal(t[0], ord('M'))  # 'MM' big-endian (Motorola), 'II' little-endian

    def number(raw):
        return tf.where(big, _uint(raw, True), _uint(raw, False))
    ifd = tiff + number(t[4:8])
    count = number(at(ifd, 2))
    e = tf.reshape(at(ifd + 2, 12 * _EXIF_MAX_ENTRIES), [_EXIF_MAX_ENTRIES, 12])
    tags = tf.where(big, e[:, 0] * 256 + e[:, 1], e[:, 1] * 256 + e[:, 0])
    values = tf.where(big, e[:, 8] * 256 + e[:, 9], e[:, 9] * 256 + e[:, 8])  # SHORT
    match = tf.logical_and(tf.equal(tags, _ORIENTATION_TAG),
                           tf.range(_EXIF_MAX_ENTRIES, dtype=tf.int64) < count)
    value = tf.gather(values, tf.argmax(tf.cast(match, tf.int32)))
    valid = tf.logical_and(tf.logical_and(is_jpeg, found), tf.reduce_any(match))
    valid = tf.logical_and(valid, tf.logical_and(value >= 1, value <= 8))
    return tf.cast(tf.where(valid, value, 1), tf.int32)


@tf.autograph.experimental.do_not_convert
def apply_orientation(image, orientation):
    """`image` `[H, W, C]` as stored -> as displayed, for the EXIF `orientation` 1..8 (scalar
    int32): 2 mirrored, 3 turned 180, 4 flipped upside down, 5 transposed, 6 turned 90 degrees
    clockwise to display (a phone held upright, the usual portrait photo), 7 transverse, 8
    turned 90 counter-clockwise. 5..8 swap height and width."""
    def transposed(img):
        return tf.transpose(img, [1, 0, 2])
    branches = [
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]),
        lambda: transposed(image),
        lambda: tf.reverse(transposed(image), [1]),  # 90 clockwise
        lambda: tf.reverse(transposed(image), [0, 1]),
        lambda: tf.reverse(transposed(image), [0]),  # 90 counter-clockwise
    ]
    out = tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), branches)
    out.set_shape([None, None, image.shape[-1]])
    return out


def _inspect(data, max_pixels):
    """`(problem, body)`: the problem string ('' when fine) and the bytes to decode (a GIF cut
    after its first image). Branch-free but for the two header walks, which take no step
    on other formats (functional conditionals cost more than these few scalar ops)."""
    data = tf.convert_to_tensor(data, tf.string)
    raw = tf.io.decode_raw(tf.strings.substr(data, 0, 32), tf.uint8)
    head = tf.reshape(tf.pad(raw, [[0, 32 - tf.shape(raw)[0]]]), [32])
    # index in MAGIC of the first match (the magics exclude each other); len(MAGIC) = none
    table = np.zeros([len(MAGIC), 8], np.uint8)
    unused = np.ones([len(MAGIC), 8], bool)
    for i, magic in enumerate(MAGIC):
        table[i, :len(magic)], unused[i, :len(magic)] = list(magic), False
    match = tf.reduce_all(tf.logical_or(tf.equal(head[None, :8], table), unused), axis=1)
    fmt = tf.argmax(tf.concat([match, [True]], 0), output_type=tf.int32)
    is_jpeg, is_gif = tf.equal(fmt, 0), tf.equal(fmt, 2)
    if max_pixels is not None:
        jpeg_h, jpeg_w, jpeg_found = _jpeg_size(data, is_jpeg)
        gif_h, gif_w, gif_end, gif_state = _gif_first_image(data, is_gif)
    else:  # no budget: no walk (see the module docstring)
        jpeg_h = jpeg_w = gif_h = gif_w = tf.constant(0, tf.int64)
        jpeg_found, gif_end, gif_state = tf.constant(True), tf.constant(0), tf.constant(1)
    core = tf.equal(_uint(head[14:18], False), 12)  # BMP BITMAPCOREHEADER: 16-bit sizes
    bmp_w = tf.where(core, _uint(head[18:20], False), _uint(head[18:22], False))
    bmp_h = tf.where(core, _uint(head[20:22], False), _uint(head[22:26], False))
    bmp_h = tf.where(bmp_h >= 2 ** 31, 2 ** 32 - bmp_h, bmp_h)  # negative = top-down rows
    zero = tf.constant(0, tf.int64)
    height = tf.stack([jpeg_h, _uint(head[20:24], True), gif_h, bmp_h, zero])[fmt]
    width = tf.stack([jpeg_w, _uint(head[16:20], True), gif_w, bmp_w, zero])[fmt]

    tail = _tail(data)
    # A JPEG may carry data after its end-of-image marker (phone "motion photos" append a
    # whole video, some cameras a maker trailer) and still decode: it is truncated only when
    # the marker occurs nowhere after the SOI. (An EXIF thumbnail's own marker can hide a cut
    # main image; the decoder then reports it: this check must never refuse a good file.)
    # Only a JPEG's bytes after its SOI are scanned (other formats: an empty slice).
    size = tf.strings.length(data)
    jpeg_body = tf.io.decode_raw(tf.strings.substr(
        data, tf.minimum(2, size), tf.where(is_jpeg, tf.maximum(size - 2, 0), 0)), tf.uint8)
    jpeg_end = _contains(jpeg_body, b'\xff\xd9')
    code = tf.stack([  # per format: its header fault or truncation, else _OK
        tf.where(jpeg_found, tf.where(jpeg_end, _OK, _JPEG_CUT), _JPEG_NO_SOF),
        tf.where(tf.reduce_all(tf.equal(head[12:16], list(b'IHDR'))),
                 tf.where(_contains(tail, b'IEND'), _OK, _PNG_CUT), _PNG_NO_IHDR),
        tf.where(tf.equal(gif_state, 1), _OK,
                 tf.where(tf.equal(gif_state, 2), _GIF_CUT, _GIF_NO_IMAGE)),
        _OK,
        tf.where(tf.equal(tf.strings.length(data), 0), _EMPTY, _UNKNOWN),
    ])[fmt]
    limit = tf.cast(-1 if max_pixels is None else max_pixels, tf.int64)
    over = tf.logical_and(limit >= 0, height * width > limit)
    code = tf.where(tf.logical_and(over, tf.logical_or(tf.equal(code, _OK), code > _OVER)),
                    _OVER, code)

    first = tf.strings.reduce_join(
        tf.gather(tf.constant(_HEX), tf.cast(head[:8], tf.int32)), separator=' ')
    texts = list(_PROBLEMS)
    texts[_UNKNOWN] = tf.strings.join([_PROBLEMS[_UNKNOWN], ' (first bytes ', first, ')'])
    texts[_OVER] = tf.strings.join([tf.strings.as_string(width), 'x',
                                    tf.strings.as_string(height), _PROBLEMS[_OVER],
                                    tf.strings.as_string(limit)])
    problem = tf.stack(texts)[code]
    if max_pixels is None:
        return problem, data
    whole_gif = tf.logical_and(is_gif, tf.equal(code, _OK))
    cut = tf.strings.join([tf.strings.substr(data, 0, tf.where(whole_gif, gif_end, 0)), ';'])
    return problem, tf.where(whole_gif, cut, data)


_STRING = tf.TensorSpec([], tf.string)
_INT = tf.TensorSpec([], tf.int64)
# Compiled copies for eager callers: (budget?) -> function.
_PROBLEM_FN = {
    True: tf.function(lambda d, m: _inspect(d, m)[0], input_signature=[_STRING, _INT],
                      autograph=False),
    False: tf.function(lambda d: _inspect(d, None)[0], input_signature=[_STRING],
                       autograph=False)}
_DECODE_FN = {
    True: tf.function(lambda d, m, w: _decode(d, m, w),
                      input_signature=[_STRING, _INT, _STRING], autograph=False),
    False: tf.function(lambda d, w: _decode(d, None, w), input_signature=[_STRING, _STRING],
                       autograph=False)}


_FIRST_CALL_LOCK = threading.Lock()
_TRACED = set()


def _call_compiled(fn, args):
    """`fn(*args)` for one of the compiled copies above. Their first call traces them; the
    readers call them from several threads at once (`records.check_image_files`), and
    TensorFlow counts every call that overlaps a trace as a retrace (8 threads: "8 out of the
    last 8 calls ... triggered tf.function retracing"), so the first call runs alone, under a
    lock; later calls run concurrently."""
    if id(fn) in _TRACED:
        return fn(*args)
    with _FIRST_CALL_LOCK:
        out = fn(*args)
        _TRACED.add(id(fn))
    return out


def _eager_args(data, max_pixels, *rest):
    args = [tf.convert_to_tensor(data, tf.string)]
    if max_pixels is not None:
        args.append(tf.convert_to_tensor(max_pixels, tf.int64))
    return args + [tf.convert_to_tensor(r, tf.string) for r in rest]


def encoded_image_problem(data, max_pixels=None):
    """Scalar tf.string: '' when the encoded image `data` (scalar string) starts like a
    JPEG/PNG/GIF/BMP, is not visibly truncated and its header size is within `max_pixels`
    (None: no limit, and no header walk); otherwise a short reason, e.g. 'truncated JPEG
    (no end-of-image marker)' or '16000x16000 pixels is over the limit of 200000000'
    (width x height)."""
    if tf.executing_eagerly():
        return _call_compiled(_PROBLEM_FN[max_pixels is not None],
                              _eager_args(data, max_pixels))
    return _inspect(data, max_pixels)[0]


def _decode(data, max_pixels, where):
    problem, body = _inspect(data, max_pixels)
    message = tf.strings.join([where, ': ', problem])
    # The raw op: tf.debugging.Assert wraps itself in a conditional, whose executor costs
    # more per image in tf.data than all the checks above.
    check = tf.raw_ops.Assert(condition=tf.equal(problem, ''), data=[message], summarize=1,
                              name='check_image')
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(body, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return apply_orientation(image, exif_orientation(data))


def decode_image(data, max_pixels=None, where=None):
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string, any channel count) -> uint8 `[H, W, 3]`
    RGB as displayed: a JPEG's EXIF orientation is applied (`exif_orientation`,
    `apply_orientation`; a phone's portrait photo stored turned comes out upright, with
    height and width of the displayed image); a GIF gives its first frame.

    The header is checked first (`encoded_image_problem`): a problem raises
    InvalidArgumentError '<where>: <reason>' before anything is decoded. max_pixels: the
    pixel budget (None: none). where: what to name (str or scalar string tensor, e.g.
    'image 3 of the batch (0-based)'); default 'image'. A body that is corrupt past the
    header raises the decoder's own InvalidArgumentError.
    """
    where = 'image' if where is None else where
    if tf.executing_eagerly():
        return _call_compiled(_DECODE_FN[max_pixels is not None],
                              _eager_args(data, max_pixels, where))
    return _decode(data, max_pixels, where)


# ---------------------------------------------------------------------------- files
def read_regular_file(path, limit=None):
    """The bytes of the regular file `path` (at most `limit` + 1 of them with a limit).

    A FIFO, device or socket is refused (ValueError 'not a regular file (a FIFO)') without
    being opened for reading (`os.stat` first): reading a FIFO blocks until a writer comes,
    so a pipe named `x.jpg` in a folder of photos would hang the program. The file is then
    opened non-blocking and checked again (`os.fstat`), so a file swapped for a FIFO in
    between cannot hang it either. Other OSErrors propagate."""
    import os
    import stat

    def refuse(mode):
        kind = ('a FIFO' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode)
                else 'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                'a directory' if stat.S_ISDIR(mode) else 'a special file')
        return ValueError(f"not a regular file ({kind}); skipped without reading it")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise refuse(mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
    with os.fdopen(fd, 'rb') as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(mode)
        return f.read() if limit is None else f.read(limit + 1)


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


# ---------------------------------------------------------------------------- resizing
def resize_to_input(image, size):
    """The one resize of a whole image to a network input, for every runtime (SavedModel,
    checkpoint, TFLite through `detect`, int8 calibration): uint8 `[H, W, 3]` (or a batch
    `[B, H, W, 3]`) -> uint8 `[h, w, 3]` (`[B, h, w, 3]`), `size` = (h, w).

    Bilinear, sampling output pixel (y, x) at source (y * H / h, x * W / w): the corner-aligned
    grid without half-pixel offsets (TF1's ResizeBilinear, half_pixel_centers=False), rounded
    to uint8. It is what MediaPipe's ObjectDetector feeds a uint8 model from a full frame
    (its warp maps the image corners onto the input corners), so the same photo gets the same
    scores from MediaPipe and from ssd-tf: on 20 raccoon photos the top scores differ by at
    most 0.008 (0.18 with `tf.image.resize`'s half-pixel grid). Works eagerly and in graphs.
    """
    image = tf.convert_to_tensor(image)
    batched = image.shape.rank == 4
    batch = image if batched else image[None]
    out = tf.raw_ops.ResizeBilinear(images=batch, size=tf.cast(size, tf.int32),
                                    align_corners=False, half_pixel_centers=False)
    out = tf.cast(tf.clip_by_value(tf.round(out), 0., 255.), tf.uint8)
    return out if batched else out[0]
