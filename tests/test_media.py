"""Tests for mock_server.media, checked against real, independent decoders.

Test-only dependencies (deliberately imported unconditionally, so a missing one is
an ImportError at collection, never a skip):
  * miniaudio -- decodes the MP3 with dr_mp3 (a full Layer III decoder);
  * mutagen   -- parses MPEG/Info headers (second, header-level opinion);
  * Pillow    -- decodes the JPEG.
"""

from __future__ import annotations

import io
import math

import miniaudio
import mutagen.mp3
import pytest
from PIL import Image

from mock_server import media
from mock_server.media import (
    FRAME_SECONDS,
    JPEG_HEIGHT,
    JPEG_MIME,
    JPEG_WIDTH,
    MAX_DURATION,
    MIN_FRAMES,
    MP3_MIME,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    duration_of,
    frames_for,
    jpeg_bytes,
    mp3_bytes,
    mp3_size,
    snap_duration,
)

DURATIONS = [0, 1e-9, 0.001, 0.03, 0.04, 0.07, 0.1, 1, 1.5, 30, 60.01, 198.44, 240, 480]


def _decode(data: bytes) -> miniaudio.DecodedSoundFile:
    return miniaudio.mp3_read_s16(data)


def _walk_frames(data: bytes) -> list[tuple[int, int]]:
    """Parse every MPEG audio frame header; return (offset, length) per frame.

    Fails on any byte that is not part of a well-formed 44.1 kHz MPEG-1 Layer III
    32 kbit/s mono frame, so it also proves there is no junk or truncated tail.
    """
    frames = []
    pos = 0
    while pos < len(data):
        hdr = data[pos : pos + 4]
        assert len(hdr) == 4, f"truncated header at {pos}"
        assert hdr[0] == 0xFF and hdr[1] & 0xE0 == 0xE0, f"lost sync at {pos}"
        assert (hdr[1] >> 3) & 3 == 3, "not MPEG-1"
        assert (hdr[1] >> 1) & 3 == 1, "not Layer III"
        bitrate_idx, sr_idx, padding = hdr[2] >> 4, (hdr[2] >> 2) & 3, (hdr[2] >> 1) & 1
        assert bitrate_idx == 1 and sr_idx == 0, "expected 32 kbit/s, 44.1 kHz"
        assert hdr[3] >> 6 == 3, "expected mono"
        length = 144 * 32000 // 44100 + padding
        assert pos + length <= len(data), f"truncated frame at {pos}"
        frames.append((pos, length))
        pos += length
    return frames


# --- duration arithmetic ---------------------------------------------------------


def test_constants():
    assert MP3_MIME == "audio/mpeg"
    assert JPEG_MIME == "image/jpeg"
    assert FRAME_SECONDS == 1152 / 44100
    assert MIN_FRAMES == 2


@pytest.mark.parametrize("n", [0, 1, 2, 38, 7596, 9188, 18375])
def test_duration_of_is_exact(n):
    assert duration_of(n) == n * 1152 / 44100


def test_frames_for_rounds_to_nearest_frame_with_floor_of_min_frames():
    assert frames_for(0) == MIN_FRAMES
    assert frames_for(1e-9) == MIN_FRAMES
    assert frames_for(FRAME_SECONDS) == MIN_FRAMES
    assert frames_for(3 * FRAME_SECONDS) == 3
    assert frames_for(1) == round(44100 / 1152) == 38
    assert frames_for(240) == 9188
    for i in range(0, 48001):  # every 0.01 s step from 0 to 480 s
        d = i / 100
        n = frames_for(d)
        assert n >= MIN_FRAMES
        if d >= 1.5 * FRAME_SECONDS:
            assert abs(duration_of(n) - d) <= FRAME_SECONDS / 2 + 1e-9


def test_snap_duration_matches_real_length_and_is_idempotent():
    for i in range(0, 48001):
        d = i / 100
        s = snap_duration(d)
        assert s == round(s, 2)
        assert abs(s - duration_of(frames_for(d))) <= 0.005 + 1e-9
        assert frames_for(s) == frames_for(d)
        assert snap_duration(s) == s
    assert snap_duration(0) == 0.05
    assert frames_for(198.44) == 7597  # 198.4526... s
    assert snap_duration(198.44) == 198.45


@pytest.mark.parametrize("bad", [-0.001, -1, math.nan, math.inf, -math.inf])
def test_bad_durations_raise_value_error(bad):
    with pytest.raises(ValueError):
        frames_for(bad)
    with pytest.raises(ValueError):
        mp3_bytes(bad)


@pytest.mark.parametrize("bad", ["1", None, True, b"1"])
def test_non_numbers_raise_type_error(bad):
    with pytest.raises(TypeError):
        frames_for(bad)


def test_duration_of_rejects_bad_frame_counts():
    with pytest.raises(ValueError):
        duration_of(-1)
    with pytest.raises(TypeError):
        duration_of(1.5)


def test_mp3_bytes_refuses_huge_durations():
    with pytest.raises(ValueError):
        mp3_bytes(MAX_DURATION + 1)


# --- MP3: decoded by real decoders ----------------------------------------------


@pytest.mark.parametrize("duration", DURATIONS)
def test_mp3_decodes_to_expected_length(duration):
    data = mp3_bytes(duration)
    n = frames_for(duration)

    decoded = _decode(data)
    assert decoded.sample_rate == SAMPLE_RATE
    assert decoded.nchannels == 1
    # dr_mp3 honours the leading Info frame: exactly n frames of audio.
    assert decoded.num_frames == n * SAMPLES_PER_FRAME
    assert len(decoded.samples) == n * SAMPLES_PER_FRAME
    assert not any(decoded.samples), "expected digital silence"

    decoded_seconds = decoded.num_frames / decoded.sample_rate
    assert decoded_seconds == pytest.approx(duration_of(n), abs=1e-12)
    assert abs(decoded_seconds - snap_duration(duration)) <= 0.005 + 1e-9
    assert abs(decoded_seconds - duration) <= max(FRAME_SECONDS, MIN_FRAMES * FRAME_SECONDS - duration)

    info = miniaudio.mp3_get_info(data)
    assert info.num_frames == n * SAMPLES_PER_FRAME
    assert info.duration == pytest.approx(duration_of(n), abs=1e-9)


@pytest.mark.parametrize("duration", DURATIONS)
def test_mp3_headers_parse_with_mutagen(duration):
    data = mp3_bytes(duration)
    n = frames_for(duration)
    info = mutagen.mp3.MP3(fileobj=io.BytesIO(data)).info
    assert info.sample_rate == SAMPLE_RATE
    assert info.channels == 1
    assert info.layer == 3
    assert info.version == 1
    assert info.bitrate_mode == mutagen.mp3.BitrateMode.CBR
    assert not info.sketchy
    assert info.length == pytest.approx(duration_of(n), abs=1e-9)


@pytest.mark.parametrize("duration", [0, 1, 30, 198.44])
def test_mp3_frame_structure(duration):
    data = mp3_bytes(duration)
    n = frames_for(duration)
    frames = _walk_frames(data)
    assert len(frames) == n + 1  # Info frame + n audio frames
    assert len(data) == mp3_size(duration)
    info_off, info_len = frames[0]
    tag = data[info_off + 4 + 17 : info_off + 4 + 17 + 16]
    assert tag[:4] == b"Info"
    assert int.from_bytes(tag[8:12], "big") == n
    assert int.from_bytes(tag[12:16], "big") == len(data)
    # Every audio frame: all-zero side info and main data (silence).
    for off, length in frames[1:]:
        assert not any(data[off + 4 : off + length])


def test_mp3_cbr_size_matches_bitrate():
    # 49 frames of 32 kbit/s at 44.1 kHz are exactly 5120 bytes (24 of them padded).
    for n in (49, 49 * 188):
        d = duration_of(n)
        assert mp3_size(d) - 104 == n * 5120 // 49


def test_mp3_is_cached_per_frame_count():
    a = mp3_bytes(240)
    assert mp3_bytes(240.0) is a
    assert mp3_bytes(snap_duration(240)) is a
    assert mp3_bytes(240.004) is a
    assert media._mp3_for_frames.cache_info().maxsize <= 64


# --- JPEG ------------------------------------------------------------------------


def test_jpeg_decodes_with_expected_size():
    data = jpeg_bytes()
    assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        assert im.size == (JPEG_WIDTH, JPEG_HEIGHT)
        assert JPEG_WIDTH >= 64 and JPEG_HEIGHT >= 64
        assert im.mode == "RGB"
        assert not im.info.get("progressive")
        im.load()
        colours = im.getcolors(maxcolors=JPEG_WIDTH * JPEG_HEIGHT)
        assert colours is not None and len(colours) > 100, "expected a non-trivial picture"
        lo, hi = zip(*im.getextrema())
        assert max(hi) - min(lo) > 150


def test_jpeg_bytes_is_stable():
    assert jpeg_bytes() is jpeg_bytes()
