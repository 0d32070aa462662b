"""Tests of ssd_tf.images: format sniffing, header sizes, truncation, the pixel budget, the
first-GIF-frame cut, and the Record helpers; plus the old homes that re-export it."""
import struct
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from ssd_tf import data as data_lib
from ssd_tf import evaluation
from ssd_tf import images
from ssd_tf.datasets import records
from ssd_tf.datasets import tfrecord


BUDGET = 10 ** 9  # a pixel budget no test image reaches: turns on the header walks


def encode(image, ext):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def gif_bytes(frames):
    """A GIF of palette-index frames (uint8 `[H, W]`, values < 128; palette entry i is grey
    2i). LZW without compression: 7-bit minimum code size gives 8-bit codes (0..127 literals,
    128 clear, 129 end); a clear every 126 literals keeps the next code below 256 (130 + 125),
    so the code size never grows and each code is one byte."""
    h, w = frames[0].shape
    palette = bytes(v for i in range(128) for v in (2 * i,) * 3)
    # 0xF6: global colour table present, colour resolution 7, 2^(6+1) = 128 entries.
    out = b'GIF89a' + struct.pack('<HHBBB', w, h, 0xF6, 0, 0) + palette
    for frame in frames:
        pixels = frame.reshape(-1).tolist()
        codes = []
        for i in range(0, len(pixels), 126):
            codes += [128] + pixels[i:i + 126]
        lzw = bytes(codes + [129])
        blocks = b''.join(bytes([len(lzw[i:i + 255])]) + lzw[i:i + 255]
                          for i in range(0, len(lzw), 255))
        out += b',' + struct.pack('<HHHHB', 0, 0, w, h, 0) + b'\x07' + blocks + b'\x00'
    return out + b';'


def png_claiming(width, height):
    """A PNG whose IHDR claims width x height (8-bit RGB) with one tiny IDAT and IEND: the
    size is refused from the header alone, nothing is decoded."""
    def chunk(kind, body):
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body)))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0'))
            + chunk(b'IEND', b''))


def problem(data, max_pixels=None):
    return images.encoded_image_problem(data, max_pixels).numpy().decode()


@pytest.mark.parametrize('ext, fmt', [('.jpg', 'JPEG'), ('.png', 'PNG'), ('.bmp', 'BMP'),
                                      ('.gif', 'GIF')])
def test_sniff_and_header_size_of_each_format(ext, fmt):
    image = rgb(37, 53)
    data = encode(image, ext) if ext != '.gif' else gif_bytes([image[..., 0] // 2])
    assert images.sniff_format(data) == fmt and records.sniff_format(data) == fmt
    # 53 x 37 = 1961 pixels: within a limit of 1961, over a limit of 1960.
    assert problem(data) == '' and problem(data, 1961) == ''
    assert problem(data, 1960) == '53x37 pixels is over the limit of 1960'
    decoded = images.decode_image(data).numpy()
    np.testing.assert_array_equal(decoded, tf.io.decode_image(
        data, channels=3, expand_animations=False).numpy())


def test_unknown_empty_and_headerless_bytes():
    assert images.sniff_format(b'hello') is None
    assert problem(b'') == 'empty file'
    assert problem(b'not an image') == ('not a JPEG/PNG/GIF/BMP file (first bytes '
                                        '6e 6f 74 20 61 6e 20 69)')
    assert problem(b'\x89PNG\r\n\x1a\n' + b'\0' * 30) == 'corrupt PNG (no IHDR header)'
    # The JPEG and GIF headers are walked only under a pixel budget.
    assert problem(b'\xff\xd8\xff\xd9', BUDGET) == \
        'corrupt JPEG (no frame header before the image data)'
    assert problem(b'GIF89a' + b'\0' * 7 + b';', BUDGET) == \
        'corrupt GIF (no image block before the trailer)'
    assert problem(b'\xff\xd8\xff\xd9') == '' and problem(b'GIF89a' + b'\0' * 7 + b';') == ''


def test_truncated_files_are_named_and_padding_is_accepted():
    jpeg, png = encode(rgb(40, 40), '.jpg'), encode(rgb(40, 40), '.png')
    gif = gif_bytes([np.zeros((40, 40), np.uint8)])
    assert problem(jpeg[:len(jpeg) // 2]) == 'truncated JPEG (no end-of-image marker)'
    assert problem(png[:-12]) == 'truncated PNG (no IEND chunk)'
    assert problem(gif[:len(gif) // 2], BUDGET) == 'truncated GIF (its first image ends early)'
    assert problem(jpeg + b'\0' * 100) == ''  # writers that pad after the end marker


def test_jpeg_with_data_after_its_end_marker_is_a_good_image():
    # Phone "motion photos" append a video after the JPEG's end-of-image marker, some cameras
    # a maker trailer: TensorFlow decodes them, so the check must not call them truncated.
    image = rgb(40, 40)
    jpeg = encode(image, '.jpg')
    trailer = b'\0\0\0\x18ftypmp42' + bytes(range(256)) * 400  # ~100 KB, no FF D9 in it
    assert b'\xff\xd9' not in trailer
    for budget in (None, BUDGET):
        assert problem(jpeg + trailer, budget) == ''
        np.testing.assert_array_equal(images.decode_image(jpeg + trailer, budget).numpy(),
                                      images.decode_image(jpeg, budget).numpy())
    # a cut inside the image is still named, whatever follows the cut
    assert problem(jpeg[:len(jpeg) // 2] + b'\0' * 100) == \
        'truncated JPEG (no end-of-image marker)'


def test_sixteen_thousand_square_png_is_refused_from_its_header():
    data = png_claiming(16000, 16000)
    assert len(data) < 100
    assert problem(data, images.DEFAULT_MAX_PIXELS) == \
        '16000x16000 pixels is over the limit of 200000000'
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'upload\.png: 16000x16000 pixels is over the limit'):
        images.decode_image(data, images.DEFAULT_MAX_PIXELS, where='upload.png')


def test_gif_is_cut_after_its_first_frame():
    frames = [np.full((24, 32), i, np.uint8) for i in (10, 60, 100)]
    data = gif_bytes(frames)
    assert tf.io.decode_gif(data).shape[0] == 3
    # With a pixel budget the decoder never sees frames 2 and 3.
    _, body = images._inspect(tf.constant(data), BUDGET)  # pylint: disable=protected-access
    assert tf.io.decode_gif(body).shape[0] == 1
    for budget in (None, BUDGET):
        np.testing.assert_array_equal(images.decode_image(data, budget).numpy(),
                                      np.full((24, 32, 3), 20, np.uint8))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70),
       ext=st.sampled_from(['.jpg', '.png', '.bmp', '.gif']))
def test_header_size_matches_the_decoded_size(h, w, ext):
    image = rgb(h, w, seed=h * 100 + w)
    data = encode(image, ext) if ext != '.gif' else gif_bytes([image[..., 0] // 2])
    assert problem(data, h * w) == ''
    assert problem(data, h * w - 1) == f'{w}x{h} pixels is over the limit of {h * w - 1}'
    assert tuple(images.decode_image(data).shape) == (h, w, 3)


@settings(max_examples=60, deadline=None)
@given(prefix=st.sampled_from(list(images.MAGIC) + [b'']), rest=st.binary(max_size=64))
def test_any_bytes_give_a_reason_not_a_crash(prefix, rest):
    reason = problem(prefix + rest, 1000)
    assert isinstance(reason, str)
    if reason:
        with pytest.raises(tf.errors.InvalidArgumentError, match='x.bin: '):
            images.decode_image(prefix + rest, 1000, where='x.bin')


def test_old_homes_use_the_one_decoder(tmp_path):
    cut = encode(rgb(30, 30), '.jpg')[:300]
    with pytest.raises(tf.errors.InvalidArgumentError, match='truncated JPEG'):
        data_lib.decode_image(cut)
    # The header-only reader check now also catches a truncated PNG (was JPEG only).
    png = encode(rgb(30, 30), '.png')
    with pytest.raises(ValueError, match='truncated PNG'):
        records.check_image_bytes(png[:-12], 'a.png', decode=False)
    assert records.check_image_bytes(png, 'a.png') == (30, 30, 'PNG')


def test_record_bytes_and_decode_for_each_kind_of_record(tmp_path):
    image = rgb(20, 30)
    png = encode(image, '.png')
    (tmp_path / 'a.png').write_bytes(png)
    kw = dict(image_id='a', height=20, width=30, boxes=[], labels=[], label_text=[])
    on_disk = records.make_record(image_path=str(tmp_path / 'a.png'), **kw)
    in_bytes = records.make_record(encoded=png, **kw)
    in_memory = records.make_record(image=image, **kw)
    assert images.read_image_bytes(on_disk) == png == images.read_image_bytes(in_bytes)
    assert tfrecord.encoded_image(in_bytes) == (png, 'PNG')
    for rec in (on_disk, in_bytes, in_memory):
        np.testing.assert_array_equal(images.decode_record_image(rec), image)
    np.testing.assert_array_equal(tf.io.decode_png(images.read_image_bytes(in_memory)), image)
    with pytest.raises(ValueError, match="record 'a' has no image"):
        images.read_image_bytes(records.make_record(**kw))
