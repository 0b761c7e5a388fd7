"""Tiny, dependency-free media fixtures served by the fake: silent MP3s and a cover JPEG.

MP3 format
----------
``mp3_bytes`` returns a valid MPEG-1 Layer III elementary stream (no ID3 tag):
44.1 kHz, mono, constant 32 kbit/s.  Every MPEG-1 Layer III frame carries exactly
``SAMPLES_PER_FRAME`` (1152) samples, i.e. ``FRAME_SECONDS`` = 1152 / 44100 s
(about 26.12 ms).

* The first frame is a silent LAME-style ``Info`` (CBR Xing) frame whose *frames*
  field holds the number N of audio frames that follow and whose *bytes* field holds
  the total stream size.  It has no LAME extension, so no encoder delay/padding is
  declared.  Checked: ffmpeg/ffprobe, miniaudio (dr_mp3) and mutagen skip it and
  report exactly N * 1152 samples; mpg123 skips it too but, being gapless, also
  trims its standard 529-sample decoder delay (N * 1152 - 529).  A decoder that
  ignores Info frames decodes it as one extra frame of silence (N + 1 frames).
  Every case stays within one frame of the announced length.
* The N audio frames follow.  Every frame has all-zero side information
  (``main_data_begin`` = 0, ``part2_3_length`` = 0, ...), which decodes to
  digital silence without touching the bit reservoir.  The padding bit follows
  the regular CBR pattern (24 of every 49 frames are padded: 144*32000/44100 =
  104 + 24/49 bytes per frame), so 49 frames occupy exactly 5120 bytes and a
  size / bitrate estimate of the length is right to within one frame (the
  104-byte Info frame is the only excess).

The stream is built by slicing/repeating one precomputed 49-frame block, and the
result is cached per frame count, so even long files cost well under a
millisecond after the first build.

Duration relations (exact)
--------------------------
``duration_of(n) == n * 1152 / 44100`` seconds (the decoded length of n frames);
``frames_for(d) == max(MIN_FRAMES, round(d * 44100 / 1152))`` (nearest whole
frame, at least ``MIN_FRAMES`` = 2, so ``frames_for(0) == 2``, i.e. 52.2 ms);
``snap_duration(d) == round(duration_of(frames_for(d)), 2)``.

Hence ``abs(snap_duration(d) - duration_of(frames_for(d))) <= 0.005`` (plus float
error) and ``abs(duration_of(frames_for(d)) - d) <= FRAME_SECONDS / 2`` for any
``d >= 1.5 * FRAME_SECONDS``.  ``snap_duration`` is idempotent and
``frames_for(snap_duration(d)) == frames_for(d)`` because the 0.005 s rounding is
far below half a frame, so the fake can announce ``snap_duration(d)`` and serve
``mp3_bytes(<announced value>)``.
"""

from __future__ import annotations

import base64
import functools
import math
import struct

__all__ = [
    "MP3_MIME",
    "JPEG_MIME",
    "SAMPLE_RATE",
    "SAMPLES_PER_FRAME",
    "FRAME_SECONDS",
    "BITRATE",
    "CHANNELS",
    "MAX_DURATION",
    "MIN_FRAMES",
    "JPEG_WIDTH",
    "JPEG_HEIGHT",
    "frames_for",
    "duration_of",
    "snap_duration",
    "mp3_bytes",
    "mp3_size",
    "jpeg_bytes",
]

MP3_MIME = "audio/mpeg"
JPEG_MIME = "image/jpeg"

SAMPLE_RATE = 44100
SAMPLES_PER_FRAME = 1152
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE
BITRATE = 32000
CHANNELS = 1

#: Fewest audio frames a stream gets.  ffmpeg's mp3 demuxer refuses a stream with a
#: single audio frame ("Invalid frame size ...: Could not seek to ..."): after the
#: Info frame it insists on finding a second, matching frame header.  Two frames
#: (52.2 ms) open everywhere, so durations below 1.5 frames are rounded up to that.
MIN_FRAMES = 2

#: Largest duration ``mp3_bytes`` agrees to build (1 h, about 14.4 MB).  Guards the
#: server against absurd requests; the pure arithmetic helpers have no such cap.
MAX_DURATION = 3600.0

# --- MP3 frame construction -------------------------------------------------
# Header: sync 0xFFF, MPEG-1 (11), Layer III (01), no CRC (protection bit 1)
#   -> 0xFF 0xFB; bitrate index 0001 (32 kbit/s), sample-rate index 00 (44.1 kHz),
#   padding bit (0x02), private 0; channel mode 11 (mono), mode ext 00,
#   copyright 0, original 1, emphasis 00 -> 0xC4.
_HDR_PLAIN = b"\xff\xfb\x10\xc4"
_HDR_PADDED = b"\xff\xfb\x12\xc4"
_SIDE_INFO_LEN = 17  # MPEG-1 mono
_FRAME_LEN = 144 * BITRATE // SAMPLE_RATE  # 104 bytes (+1 when padded)
_PATTERN_FRAMES = 49  # 144*32000/44100 = 104 + 24/49
_PATTERN_PADDED = 24

_FRAME_PLAIN = _HDR_PLAIN + bytes(_FRAME_LEN - 4)
_FRAME_PADDED = _HDR_PADDED + bytes(_FRAME_LEN + 1 - 4)


def _build_block() -> tuple[bytes, tuple[int, ...]]:
    """One 49-frame CBR period and the byte offset at which each frame starts."""
    parts = []
    offsets = [0]
    for i in range(_PATTERN_FRAMES):
        # Same rule as a CBR encoder: pad when the accumulated fraction wraps.
        padded = ((i + 1) * _PATTERN_PADDED) // _PATTERN_FRAMES > (i * _PATTERN_PADDED) // _PATTERN_FRAMES
        frame = _FRAME_PADDED if padded else _FRAME_PLAIN
        parts.append(frame)
        offsets.append(offsets[-1] + len(frame))
    return b"".join(parts), tuple(offsets)


_BLOCK, _BLOCK_OFFSETS = _build_block()
assert len(_BLOCK) == _PATTERN_FRAMES * SAMPLES_PER_FRAME * BITRATE // 8 // SAMPLE_RATE == 5120


def _audio_len(frames: int) -> int:
    full, rest = divmod(frames, _PATTERN_FRAMES)
    return full * len(_BLOCK) + _BLOCK_OFFSETS[rest]


def _info_frame(frames: int) -> bytes:
    """Silent frame carrying an ``Info`` tag (frames + bytes fields, no TOC, no LAME ext)."""
    total = _FRAME_LEN + _audio_len(frames)
    tag = b"Info" + struct.pack(">III", 0x3, frames, total)
    body = bytes(_SIDE_INFO_LEN) + tag
    return _HDR_PLAIN + body + bytes(_FRAME_LEN - 4 - len(body))


def _check_number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


# --- public API ---------------------------------------------------------------


def frames_for(duration: float) -> int:
    """Number of MP3 frames used for ``duration`` seconds.

    ``max(MIN_FRAMES, round(duration * 44100 / 1152))``: the nearest whole frame,
    and never fewer than ``MIN_FRAMES`` = 2 (so 0 and tiny durations give 52.2 ms;
    a one-frame MP3 is valid but ffmpeg will not open it).  Python's ``round``
    (ties to even) is used; ties cannot come from 2-decimal inputs in practice.
    Raises ``ValueError`` for negative/non-finite input and ``TypeError`` for
    non-numbers.
    """
    d = _check_number("duration", duration)
    return max(MIN_FRAMES, round(d * SAMPLE_RATE / SAMPLES_PER_FRAME))


def duration_of(frames: int) -> float:
    """Exact decoded length in seconds of ``frames`` frames: ``frames * 1152 / 44100``."""
    if isinstance(frames, bool) or not isinstance(frames, int):
        raise TypeError(f"frames must be an int, not {type(frames).__name__}")
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    return frames * SAMPLES_PER_FRAME / SAMPLE_RATE


def snap_duration(seconds: float) -> float:
    """Duration to announce for a wanted length: ``round(duration_of(frames_for(seconds)), 2)``.

    It differs from the real decoded length of ``mp3_bytes(seconds)`` (and of
    ``mp3_bytes(snap_duration(seconds))``, which has the same frame count) by at
    most 0.005 s; it is idempotent.
    """
    return round(duration_of(frames_for(seconds)), 2)


def mp3_bytes(duration: float) -> bytes:
    """A silent 44.1 kHz mono 32 kbit/s CBR MP3 of ``frames_for(duration)`` audio frames.

    Decoded length is ``duration_of(frames_for(duration))`` seconds (see module doc
    for the leading ``Info`` frame).  Cached per frame count.  Raises
    ``ValueError`` above ``MAX_DURATION``.
    """
    d = _check_number("duration", duration)
    if d > MAX_DURATION:
        raise ValueError(f"duration {d} s exceeds MAX_DURATION ({MAX_DURATION} s)")
    return _mp3_for_frames(frames_for(d))


def mp3_size(duration: float) -> int:
    """Byte length of ``mp3_bytes(duration)`` without building it (for Content-Length)."""
    return _FRAME_LEN + _audio_len(frames_for(duration))


@functools.lru_cache(maxsize=16)
def _mp3_for_frames(frames: int) -> bytes:
    full, rest = divmod(frames, _PATTERN_FRAMES)
    return b"".join((_info_frame(frames), _BLOCK * full, _BLOCK[: _BLOCK_OFFSETS[rest]]))


# --- cover image --------------------------------------------------------------

JPEG_WIDTH = 128
JPEG_HEIGHT = 128

# 128x128 baseline JFIF (4:2:0, quality 85): a vinyl record on a purple-to-orange
# gradient.  Generated once with Pillow; runtime needs nothing but the stdlib.
_JPEG_B64 = """
/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEP
ERETFhwXExQaFRERGCEYGh0dHx8fExciJCIeJBweHx7/2wBDAQUFBQcGBw4ICA4eFBEUHh4eHh4e
Hh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh7/wAARCACAAIADASIA
AhEBAxEB/8QAHAAAAgIDAQEAAAAAAAAAAAAAAAMGBwECBQQJ/8QANxAAAgECBAIIAwgCAwEAAAAA
AQIDABEEEiExBQYHEyJBUWGh8HGBkRQjM0JiscHRMqJDwuGS/8QAGwEAAgMBAQEAAAAAAAAAAAAA
AwQABQYHAgH/xAAsEQACAgECBQMCBwEAAAAAAAABAgADBBFBBRIhMVFhgbFx0RMUIkKRwfDh/9oA
DAMBAAIRAxEAPwCiFWmqtCrTVWuiu8sFWCrTUWhFpqrSjvDKsFWmqtCrWZZYYEDzyxxKTa7sAL/O
k7LIcDSMVaai1xZuZOFxZcjSzX3yJa3/ANWpB5pfMTHwuRkv2SZLXHcf8ar7Mqsbz5+YpXu0kyrT
FWounNbBh1nCpVS/aYSXIHebZa6GE5q4PLm6x5sPa1usjvf4Zb0s2Qp7GGryqG/dO8q01FpWEmw+
JQyYeeKZAbFo3DAHw0r1KtLu8eQA9RBVpirQq01VpR3jCrBVpyLQi01VpN3hlWVyq01FoRaaq10R
3mXVYKtM7KIXdgqqLkk2AFHZRC7sFVRckmwAqLca4oceWjjZo8Eh1PfIffd8z5VuVlLUup7z7ZYt
S6me7inHspaHhwDspIaZv8Rp3fPvOmnfXBxEr4mUyyPJiZO9m0VR4eQ38KWbEaiwJukQvr5n3etj
uEkzOQdIk2Hz+tUFt72nVjK2y5rD1mufKPxsn6Yl/c6X+poCB+0IZ3v+a+/pQS0ZILrFbuTVvr/Z
oyZ+11c8t/zX39DQYKBQJ2jDOlvzX29KM+YfjZ/0yr+x1t9RRkydrq54rfmvt6CgFpCAHWW/c+jf
X+jUkjsJiJsFOJ4JZcJL3MpJVhvbzGg8RUw5e5uDsmG4wqxuxCpiFAyHT82umveNNe61QsblI8yE
nWJ9j8/pWosBoLgG7xG+nmPd6kYx8qyg6qeniXTAUkjWSNldGAZWU3BB2INPRarPk/mNuDyLhsS7
S8MkbRrXaAny8PEfMd4NnwMksayRuro4DKym4IOxB8KVtJWavCykyU1XvuJsq0xVoVaai0i7yyVZ
XSrTVWhVrMzrBh5J3BKxoXNt7AXrodlky4Gk4XNGPK24dC5VmGaZgRouun8/D41HSQQDYkDSJCL3
13PvemTTPiZWklP3mIfMx3Cr5eXz7q1v/wAiAqWOSIbWHeffiazV9ptcsZT3WGxtZqiklu15ySHW
3l73oGUC4JSK9v1sPfyosAhBJMSHu2Z/fpQqsXsPxdyTsg/j+PjQYKFygt2YbfN//PSgKJLsEnm8
W2/usjS7xkaNrK43PkPZqV8v9G/O3MOG+1cO5c4lPDkR1lxBXDK6MLqUMpGcEa3W+48RQb8inHXm
tcKPJIHzPSozHRRrImVEdmKTw+Db/wBUXLi3Zmv8n/8AfWpZzB0b87cvYb7VxHlziUEOR3aXDlcS
qIouxcxE5ABrdrbHwNRQ62eQjVtJUGx8x7NSjIpyF5qnDDyCD8SMjKdGGkwcpFyS8V7frUe/lQ6k
Fe15xyDS/l72oZWD2P4u4I2cfz/PxosCgAJETnv2V/fpRp5gCACbEA6SoBa2u/vvqwejPjhkB4Hi
5GeSMF8M7MO0lh2B33A1G+l9gKgF/wDkcFipySje47j78BTcBi5uH4uLFYZvvsJIHQ7BlvsbakH4
6hjQ7U51IjeFknGuDjtv9Je6LTUWk8OnjxuBw+MiVhHPEsqhhqAwBF/rXrVaoLH0m/QAjUSulWuV
zfJ1XBGTLfrZFS99vzX/ANfWu0i1Hudyes4fGScjOxK9xtl7vmfrW+yrNKzMjkfppYyMPZet/TaN
bep9D9aCTGzEG3VrkHxO/wD2NEYziINrnlObz2/s0J2+rza9ZL2vPb+zVJKOBsjaadUv+/v9qza1
43LjTPKe8+A9fqawn3gUMfxZe0ffxNSzof4PBzD0kcD4diur6mbGmeVZIhIjrCplMZU7hgpU38dj
tQci9cel7W7KCT7DWekUswUby9+gzop4fwHhWG5g5gwcWK41iUSaKKeHs4AaMqqrC4lBsSxFwRYd
5a3qK6PAeEy8VndEkEUcYu7kXtfYAd+1cNuuy+MZe7Ox6Dx6DYAD7maVVrx6/AE51VD059FPD+Pc
KxPMHL+DiwvGsMjzSxQQ9nHjVmVlUXMpNyGAuSbHuK3fx7hMvCp0R5BLHILo4Fr23BHdvXOqU3Zf
B8vdXU9R59DsQR9xIy15FfkGfP8Ate0aFzpniPePEen1FYFnbXXrV/39/vUs6YODwcvdJHHOHYXq
+phxoniWOIRoizKJRGFGwUMFFvDYbVE3+7DBT+FL2T7+AruWPeuRSlq9mAI9xrM06lWKnaAJkZST
frFyH4jb/qaEs3VfqvG1/Q+o+lD9jrMunVy9ny3/AKFEgyCULpklGXy3/oUaeZbnRLiftPKMcXV5
fs0zxXvfNc57+X+dvlUxVarvoWZy/GYc7dUkkbKl+ypOcEgedh9BVkotZnOPJcwnQuEN+Jh1t6af
x0ldKtRvnpGD8OkynIrsGa2gJy21+R+lShVrj88YfreX3kzZepkV7W3/AC2/2v8AKtxkNqpEz+VX
zUN/u0g0ZyCItpklOby2/o0J2OrzadXL2vLb+jQ9m639VpFt6j1P0oIMjMAL9YucfEb/APYVWzOw
T7sKWH4UvaHv4GpZ0P8AGIOXukjgfEcV1fUw40wStJKI0RZlMRkLHYKGLG/huN6iZs7aa9av+/v9
6ze95HDnTJKO8eB9PqKDkULkUvU3ZgQfcaT0jFWDDafQCujwHi0vCp3dIxLHILOhNr22IPdvVIdB
nStw/j3CsNy/zBjIsLxrDIkMUs83Zx40VWVmNzKTYFSbkm47wtvVw26nL4Pl7q6nofPqNiCPsZpV
avIr8gzo8e4tLxWdHeMRRxiyIDe19yT37VzqKqHpz6VuH8B4VieX+X8ZFiuNYlHhllgm7OAGqszM
puJQbgKDcEXPcGlNOXxjL3Z2PU+PU7AAfYSM1ePX4AlEdMHGIOYekjjnEcL1fUzY0QRNHKJEdYVE
QkDDcMFDC3jud6ib/eBio/Fl7I9/EVm9rSIHGmSId58T6/U1gWRtdOqX/f3+1dyx6Fx6UqXsoAHs
NJmnYsxY7wft9Zl16yXs+e/9iiQ5xKV1zyjL57/2KADGygi3VrnPxO3/AFFCWXqv03ka/oPQfWjT
zLM6E43LcamyN1TyRKr27LEZyQD5XH1HjVlqtQ7ocwf2fkuOfrM/2qeSa2W2WxyW8/8AC/zqbKtZ
DiNvNkPp/tOk6Pwek14dYPjX+ev9yulWjEYdMThZcPIWCSoyMV3AItpTUWmqtbl3lQE1GhlSYrDy
4LESQTr97hpMrDYMt9xfuPw2YUu3/GhLFTniO9x3j34Gppz7wZnUcYw0bO8Yy4hFUapY9rx02O+l
trVCSAABcgHWJybW12PvelZl8rHNFhU9toXBQkgiJz3bK/v0oVmD3H4uxB2cfz/PxoRiC3Z8pIzp
fz97UDKRYAvFe/61Hv5VIvMjW6RgatrE52PkfZqV8v8ASRzty9hvsvDuY+JQQ5ERYsQFxKoiiyhB
KDkAGlltsPAVE7FxfszX+T/++tAYR3UPPD4rv/VBvx6cheW1Aw8EA/M9K7KdVOklnMHSRztzDhvs
vEeY+JTw5HRosOFwyujCzBxEBnBGlmvufE1FDpZJANG0iQ7nzPs1gsJLKXnm8F2/uixQX7MNvm//
AJ6VKMenHXlqQKPAAHxIzsx1Y6wZmL3P4uwA2Qfx/HxouAgIBMSHv2Z/fpQcoFiCkV7/AK2Hv5UO
xJXs+UcY1t5+96NPM2t/xuSpY55TtYdw9+Ip/DMDiOKY+DBYRbz4yUIgsSFW+5tcgDcm2gU15gAQ
RckDWVwb312999Wr0PcstEh5jx0LpLKpTCRuo7MZA+8HfcjQbaX3DClczJGPUXPfb6x7h2E2ZeKx
23+kn/DMHHgOH4bAwl2jw8SxIXNyQoAF7d+le1VoVaai1hbLNTqZ1BECgASulWmKtCrTVWuhu8zK
rMNEkkbRyIrowKsrC4IO4Iquub+W34OzYnDI0vDJG7Q3aAnb5eB+R7ibMRa3aJJY2jkRXRwVZWFw
QdwR4UsbeUwWVhJkpynvsZRhsBqbgGySi+nkfd62O4eTMhJ0lTY/L61P+ZeRusL4vgbLFIxLPhnI
EbabJpob9x013AFQXH4TE8PxBw2KgmwU3ejg5WA0uPEXB11BoyWq/YzL5OFdjHRx087RBDSEkost
+9NG+n9ijPk7PWTxW/Lbb1FGTMPwc/6om/ca2+goDhOyJp0t+W23rRIpDPn7PWTy3/Lbf1NADRkE
IsVu99W+n9CguH7Jmne/5bb+tGTKPwcn6pW/YaX+hqSTYbl48zkHWV9h8vpWosRobAmzym+vkPd6
9PDcDi+KYtcJgsPPjpzskYOVQTa58BcjU2A8aszkzo2WJ48dzGyTSowePCIQY102fTU37hppuwNq
VycyrHGrnr43j2Fw6/MbSsdPO0jvR5yZJzDKmOxyPDweJuyt7NiWG4B8PFvkNbkXXh4Y4YUhhjSO
NFCoiCyqBoAANhRh4Y4YUhhjSONFCoiCyqBoAANhXoRax+fnvkvqe2wnQeGcMrwa+VepPc+f+QRa
aq0KtNVaqXeWyrK5Vaci0ItNVa6G7zMKsFWmKtCrTUWlHeHVYItYxWCwmNiEWMwsOIjDZgssYcA+
Nj8TTkWmqtKPZpChARoZE8Z0ecuYnJ1UWJwmW9+pmJzfHPm9Lb1zH6MGMjdTzBKkVzkVsPmKjuBI
cX+gqxFWmoteDnXJ2aLtwjDsOrVj26fErmHouYyL13MMzxXGdVw9iy94BLm3xsfhXa4d0a8sYfP1
8WKxma1uunIy/DJl3877VMVWmqtLW8RyG6c/9fELTwfDrOorHv1+dZ5+H4DB4CIw4HCYfCxlsxSG
MICdr2HfoPpXtVaFWmotVVlhPUy3RAo0EEWmqtCrTVWk3eHVYKtNRaEWmqtKO8Oqz//Z
"""

_JPEG = base64.b64decode("".join(_JPEG_B64.split()))


def jpeg_bytes() -> bytes:
    """The cover image: a real ``JPEG_WIDTH`` x ``JPEG_HEIGHT`` baseline JPEG (about 4 KB)."""
    return _JPEG
