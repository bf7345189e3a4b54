"""Turn an audio file, or a video's sound track, into 16 kHz mono float32 samples for speech models.

The input is untrusted: an empty file, a non-media file or an audio item without a sound stream raises
``DecodeError`` with a stable code; packets that fail to decode are skipped, and the item fails only when nothing at
all could be decoded. The duration cap is enforced on the samples actually decoded (a header can lie), so a small
file that expands into days of sound costs no more memory than the cap; what lies beyond it is dropped and the clip
says so. A video without a sound track gives an empty clip rather than an error: it simply has nothing to say.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from gpu_worker.contract import MediaKind
from gpu_worker.decode import _reason, _require_content
from gpu_worker.errors import DecodeError, DecodeErrorCode

log = logging.getLogger(__name__)

# Whisper and the Silero VAD both take 16 kHz mono.
SAMPLE_RATE_HZ = 16_000
# Packets that fail to decode are skipped; past this many in a row the stream is taken to be garbage.
MAX_BAD_PACKETS_IN_A_ROW = 64
# What PyAV raises on broken data, or when a stream changes its format mid-way in a way the resampler refuses.
PACKET_ERRORS: tuple[type[Exception], ...] = (av.FFmpegError, ValueError)


def _no_samples() -> npt.NDArray[np.float32]:
    return np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class AudioClip:
    """The sound of one item: mono float32 samples in [-1, 1] at ``sample_rate_hz``.

    ``truncated`` is set when the source is longer than the cap and only its beginning was decoded; ``has_audio`` is
    False for a video without a sound track (then ``samples`` is empty).
    """

    samples: npt.NDArray[np.float32] = field(default_factory=_no_samples)
    sample_rate_hz: int = SAMPLE_RATE_HZ
    truncated: bool = False
    has_audio: bool = True

    @property
    def duration_s(self) -> float:
        """Length of the decoded samples in seconds."""
        return len(self.samples) / self.sample_rate_hz


def decode_audio(
    path: Path, kind: MediaKind, *, max_duration_s: float, sample_rate_hz: int = SAMPLE_RATE_HZ
) -> AudioClip:
    """Decode the first audio stream of an audio or video file to mono float32 at ``sample_rate_hz``.

    At most ``max_duration_s`` seconds are kept. Raises ``DecodeError`` (``empty_file``, ``not_media``,
    ``decode_failed``) when there is nothing usable; a video without a sound stream gives an empty clip.
    """
    _require_content(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        raise DecodeError(DecodeErrorCode.NOT_MEDIA, f"{path.name} is not media FFmpeg can read") from exc
    except (av.FFmpegError, OSError) as exc:
        raise DecodeError(DecodeErrorCode.DECODE_FAILED, f"{path.name} could not be opened: {_reason(exc)}") from exc
    with container:
        if not container.streams.audio:
            if kind is MediaKind.VIDEO and container.streams.video:
                return AudioClip(has_audio=False)
            raise DecodeError(DecodeErrorCode.NOT_MEDIA, f"{path.name} has no audio stream")
        stream = container.streams.audio[0]
        max_samples = max(1, int(max_duration_s * sample_rate_hz))
        chunks, total, truncated, bad = _decode_stream(container, stream, sample_rate_hz, max_samples)
    if total == 0:
        reason = f"{bad} packets failed to decode" if bad else "the audio stream holds no samples"
        raise DecodeError(DecodeErrorCode.DECODE_FAILED, f"{path.name}: no audio could be decoded ({reason})")
    if bad:
        log.info("%s: %d audio packets could not be decoded and were skipped", path.name, bad)
    if truncated:
        log.info("%s: audio is longer than the %.0f s cap; the rest is not analyzed", path.name, max_duration_s)
    samples = np.concatenate(chunks)[:max_samples]
    return AudioClip(samples=samples, sample_rate_hz=sample_rate_hz, truncated=truncated)


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, sample_rate_hz: int, max_samples: int
) -> tuple[list[npt.NDArray[np.float32]], int, bool, int]:
    """Demux, decode and resample until the stream ends or ``max_samples`` are held.

    Returns the sample chunks, their total length, whether the cap cut the stream short, and how many packets failed.
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate_hz)
    chunks: list[npt.NDArray[np.float32]] = []
    total = bad = bad_in_a_row = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = [out for frame in packet.decode() for out in resampler.resample(frame)]
            except PACKET_ERRORS:
                bad += 1
                bad_in_a_row += 1
                if bad_in_a_row > MAX_BAD_PACKETS_IN_A_ROW:
                    break
                continue
            bad_in_a_row = 0
            for frame in frames:
                chunks.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
                total += len(chunks[-1])
            if total >= max_samples:
                return chunks, total, True, bad
        for frame in resampler.resample(None):
            chunks.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
            total += len(chunks[-1])
    except PACKET_ERRORS:
        # Demuxing itself broke (a cut or mangled container): keep what was decoded up to there.
        bad += 1
    return chunks, total, total > max_samples, bad
