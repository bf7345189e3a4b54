"""Decoding sound for speech models: 16 kHz mono float32 from audio files and video sound tracks, hostile input refused
with stable codes, and a duration cap enforced on what is actually decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpu_worker.audio import SAMPLE_RATE_HZ, decode_audio
from gpu_worker.contract import MediaKind
from gpu_worker.errors import DecodeError
from tests.fixtures.tiny_whisper import tone, write_audio, write_video

LONG_S = 3600.0


@pytest.fixture(scope="module")
def sounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sounds")
    files = {
        "wav": folder / "mono-8k.wav",
        "stereo": folder / "stereo-44k.wav",
        "aac": folder / "tone.aac",
        "opus": folder / "tone.ogg",
        "flac": folder / "tone.flac",
        "silence": folder / "a-minute-of-silence.flac",
        "video": folder / "with-sound.mp4",
        "mute": folder / "mute.mp4",
    }
    write_audio(files["wav"], tone(1.5, 8000), 8000)
    write_audio(files["stereo"], tone(1.5, 44_100), 44_100, channels=2)
    write_audio(files["aac"], tone(3.0, 44_100), 44_100, codec="aac", container_format="adts")
    write_audio(files["opus"], tone(3.0, 48_000), 48_000, codec="libopus")
    write_audio(files["flac"], tone(3.0, SAMPLE_RATE_HZ), SAMPLE_RATE_HZ, codec="flac")
    write_audio(files["silence"], np.zeros(60 * SAMPLE_RATE_HZ, dtype=np.float32), SAMPLE_RATE_HZ, codec="flac")
    write_video(files["video"], 2.0, with_audio=True)
    write_video(files["mute"], 2.0, with_audio=False)
    return files


def rms(samples: np.ndarray) -> float:
    """Root mean square of the middle of a clip, away from encoder priming and padding."""
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
    return float(np.sqrt(np.mean(middle**2)))


def test_wav_at_8khz_becomes_16khz_float32_with_its_duration_and_level(sounds: dict[str, Path]) -> None:
    clip = decode_audio(sounds["wav"], MediaKind.AUDIO, max_duration_s=LONG_S)

    assert clip.sample_rate_hz == SAMPLE_RATE_HZ
    assert clip.samples.dtype == np.float32
    assert clip.samples.ndim == 1
    assert clip.duration_s == pytest.approx(1.5, abs=0.01)
    # A sine of amplitude 0.5 has an RMS of 0.5 / sqrt(2), whatever the resampling.
    assert rms(clip.samples) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    assert (clip.truncated, clip.has_audio) == (False, True)


def test_stereo_is_mixed_down_to_one_channel(sounds: dict[str, Path]) -> None:
    clip = decode_audio(sounds["stereo"], MediaKind.AUDIO, max_duration_s=LONG_S)

    assert clip.samples.ndim == 1
    assert clip.duration_s == pytest.approx(1.5, abs=0.01)
    assert rms(clip.samples) > 0.3


@pytest.mark.parametrize("name", ["aac", "opus", "flac"])
def test_compressed_audio_decodes_to_its_duration(sounds: dict[str, Path], name: str) -> None:
    clip = decode_audio(sounds[name], MediaKind.AUDIO, max_duration_s=LONG_S)

    # Encoders add a few ms of priming and padding.
    assert clip.duration_s == pytest.approx(3.0, abs=0.1)
    assert rms(clip.samples) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_video_sound_track_is_decoded(sounds: dict[str, Path]) -> None:
    clip = decode_audio(sounds["video"], MediaKind.VIDEO, max_duration_s=LONG_S)

    assert clip.has_audio
    assert clip.duration_s == pytest.approx(2.0, abs=0.1)


def test_video_without_sound_is_an_empty_clip_not_an_error(sounds: dict[str, Path]) -> None:
    clip = decode_audio(sounds["mute"], MediaKind.VIDEO, max_duration_s=LONG_S)

    assert clip.has_audio is False
    assert clip.duration_s == 0.0


def test_audio_item_without_a_sound_stream_is_not_media(sounds: dict[str, Path], tmp_path: Path) -> None:
    picture = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(picture)

    codes = []
    for path in (sounds["mute"], picture):
        with pytest.raises(DecodeError) as caught:
            decode_audio(path, MediaKind.AUDIO, max_duration_s=LONG_S)
        codes.append(caught.value.code)

    assert codes == ["not_media", "not_media"]


def test_small_file_expanding_into_long_sound_stops_at_the_cap_and_says_so(sounds: dict[str, Path]) -> None:
    assert sounds["silence"].stat().st_size < 100_000  # a minute of sound in a few KB

    clip = decode_audio(sounds["silence"], MediaKind.AUDIO, max_duration_s=5.0)

    assert clip.duration_s == 5.0
    assert clip.truncated


def test_the_cap_keeps_the_beginning_of_the_sound(sounds: dict[str, Path]) -> None:
    clip = decode_audio(sounds["flac"], MediaKind.AUDIO, max_duration_s=1.0)

    assert len(clip.samples) == SAMPLE_RATE_HZ
    np.testing.assert_allclose(clip.samples[:400], tone(1.0, SAMPLE_RATE_HZ)[:400], atol=1e-3)


def test_empty_and_non_media_files_get_stable_codes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("my shopping list, not a song\n", encoding="utf-8")

    codes = {}
    for name, path in {"empty": empty, "text": text}.items():
        with pytest.raises(DecodeError) as caught:
            decode_audio(path, MediaKind.AUDIO, max_duration_s=LONG_S)
        codes[name] = caught.value.code

    assert codes == {"empty": "empty_file", "text": "not_media"}


def test_garbage_in_the_middle_skips_the_broken_packets_and_keeps_the_rest(
    sounds: dict[str, Path], tmp_path: Path
) -> None:
    data = bytearray(sounds["aac"].read_bytes())
    third = len(data) // 3
    data[third : third + len(data) // 4] = np.random.default_rng(7).integers(0, 256, len(data) // 4, np.uint8).tobytes()
    damaged = tmp_path / "damaged.aac"
    damaged.write_bytes(bytes(data))

    clip = decode_audio(damaged, MediaKind.AUDIO, max_duration_s=LONG_S)

    assert 1.0 < clip.duration_s < 3.0


def test_cut_off_file_gives_the_sound_up_to_the_cut(sounds: dict[str, Path], tmp_path: Path) -> None:
    data = sounds["aac"].read_bytes()
    cut = tmp_path / "cut.aac"
    cut.write_bytes(data[: len(data) // 2])

    clip = decode_audio(cut, MediaKind.AUDIO, max_duration_s=LONG_S)

    assert clip.duration_s == pytest.approx(1.5, abs=0.3)
