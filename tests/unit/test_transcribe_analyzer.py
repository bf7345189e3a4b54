"""The transcribe analyzer and the executor's audio route, with the Whisper models of ../shared/models.

The random tiny Whisper checks structure and routing (its text is noise); the real tiny.en checks that the words of
../shared/media come out. Both are loaded through the model store from a catalog with local sources.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_worker.contract import BatchManifest, ItemResult, ManifestItem, MediaKind
from gpu_worker.executor import InProcessExecutor
from gpu_worker.settings import WorkerSettings
from tests.fixtures.tiny_models import TINY_CLIP_ID, draw_shape
from tests.fixtures.tiny_whisper import (
    SPOKEN_WORDS,
    TINY_RANDOM_WHISPER_ID,
    WHISPER_TINY_EN_ID,
    require_shared,
    require_shared_media,
    shared_speech_catalog,
    write_audio,
    write_video,
)

# The random model decodes noise; 20 tokens keep it at a fraction of a second.
RANDOM = {"max_new_tokens": 20}
SHAPES = {"vocabulary": {"shape": ["red square", "blue circle"]}, "threshold": 0.0}
SPEECH_S = 7.6


@pytest.fixture(scope="module")
def shared_models() -> Path:
    """../shared/models with both Whisper folders; skips when a fresh clone has none."""
    return require_shared("tiny-whisper-en-random/model.bin", "whisper-tiny.en-ct2/model.bin")


@pytest.fixture(scope="module")
def speech_catalog(shared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_speech_catalog(tmp_path_factory.mktemp("speech-catalog") / "models.toml")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    shared = require_shared_media("speech_en.wav", "talking_zidane_bus.mp4")
    folder = tmp_path_factory.mktemp("speech-media")
    files = {
        "speech": shared / "speech_en.wav",
        "talking": shared / "talking_zidane_bus.mp4",
        "image": folder / "square.jpg",
        "truncated_image": folder / "half.jpg",
        "video": folder / "tone.mp4",
        "mute": folder / "mute.mp4",
        "silence": folder / "silence.wav",
        "corrupt": folder / "voice-memo.m4a",
    }
    draw_shape("red", "square", size=96).save(files["image"], quality=95)
    files["truncated_image"].write_bytes(files["image"].read_bytes()[:300])
    write_video(files["video"], 2.0, with_audio=True)
    write_video(files["mute"], 2.0, with_audio=False)
    write_audio(files["silence"], np.zeros(3 * 16_000, dtype=np.float32), 16_000)
    files["corrupt"].write_bytes(b"\x00\x01garbage that only claims to be a voice memo" * 40)
    return files


def make_executor(models_dir: Path, catalogs: list[Path], **settings: Any) -> InProcessExecutor:
    return InProcessExecutor(
        WorkerSettings(
            models_dir=models_dir,
            catalog_paths=catalogs,
            clip_model=TINY_CLIP_ID,
            transcribe_model=TINY_RANDOM_WHISPER_ID,
            nsfw_model="",
            device="cpu",
            **settings,
        )
    )


@pytest.fixture(scope="module")
def executor(
    tmp_path_factory: pytest.TempPathFactory, speech_catalog: Path, tiny_clip_catalog: Path
) -> InProcessExecutor:
    return make_executor(tmp_path_factory.mktemp("models"), [tiny_clip_catalog, speech_catalog])


def item(asset_id: str, path: Path, kind: MediaKind) -> ManifestItem:
    return ManifestItem(asset_id=asset_id, media_kind=kind, path=str(path))


def run(executor: InProcessExecutor, items: list[ManifestItem], **options: dict[str, Any]) -> dict[str, ItemResult]:
    manifest = BatchManifest(batch_id="t", analyzers=list(options), options=options, items=items)
    result = executor.run(manifest)
    assert result.unavailable == {}
    return {r.asset_id: r for r in result.items}


def test_audio_and_video_items_get_transcripts_images_get_none_and_a_bad_file_fails_alone(
    executor: InProcessExecutor, media: dict[str, Path]
) -> None:
    results = run(
        executor,
        [
            item("image", media["image"], MediaKind.IMAGE),
            item("speech", media["speech"], MediaKind.AUDIO),
            item("video", media["video"], MediaKind.VIDEO),
            item("corrupt", media["corrupt"], MediaKind.AUDIO),
        ],
        clip=SHAPES,
        transcribe=RANDOM,
    )

    assert set(results["image"].outputs) == {"clip"}
    assert results["image"].errors == {}
    assert set(results["speech"].outputs) == {"transcribe"}
    assert set(results["video"].outputs) == {"clip", "transcribe"}
    assert [r.errors for r in (results["speech"], results["video"])] == [{}, {}]
    assert results["corrupt"].outputs == {}
    assert results["corrupt"].errors["transcribe"].code == "not_media"

    speech = results["speech"].outputs["transcribe"]
    assert speech.model_id == TINY_RANDOM_WHISPER_ID
    assert speech.payload["duration_s"] == pytest.approx(SPEECH_S, abs=0.1)
    assert isinstance(speech.payload["text"], str)
    assert speech.payload["text"] == " ".join(s["text"] for s in speech.payload["segments"] if s["text"])
    # The random model's noise may decode to nothing at all (it depends on the CPU's float kernels); the payload must
    # then say "no speech" rather than claim a language it did not hear.
    if speech.payload["text"]:
        assert speech.payload["language"] == "en"
        assert "audio/speech" in {t.tag for t in speech.tags}
    else:
        assert speech.payload["language"] is None
        assert {t.tag for t in speech.tags} == {"audio/no-speech"}
    assert results["video"].outputs["transcribe"].payload["duration_s"] == pytest.approx(2.0, abs=0.1)
    # The weights came through the model store into its cache, not from the shared folder in place.
    assert (executor.store.folder(TINY_RANDOM_WHISPER_ID) / "model.bin").is_file()


def test_transcribe_alone_decodes_no_pictures(executor: InProcessExecutor, media: dict[str, Path]) -> None:
    results = run(
        executor,
        [item("image", media["image"], MediaKind.IMAGE), item("broken", media["truncated_image"], MediaKind.IMAGE)],
        transcribe=RANDOM,
    )

    assert all(r.outputs == {} and r.errors == {} for r in results.values())


def test_a_video_sound_track_is_transcribed_once_per_asset(executor: InProcessExecutor, media: dict[str, Path]) -> None:
    analyzer = executor.analyzer("transcribe")
    before = analyzer.stats.images

    results = run(executor, [item("video", media["video"], MediaKind.VIDEO)], clip=SHAPES, transcribe=RANDOM)

    assert analyzer.stats.images == before + 1
    assert len(results["video"].outputs["clip"].payload["frames"]) == executor.settings.video_frames
    assert "frames" not in results["video"].outputs["transcribe"].payload


def test_silence_and_a_mute_video_are_no_speech(executor: InProcessExecutor, media: dict[str, Path]) -> None:
    results = run(
        executor,
        [item("silence", media["silence"], MediaKind.AUDIO), item("mute", media["mute"], MediaKind.VIDEO)],
        transcribe=RANDOM,
    )

    for asset_id, has_audio in (("silence", True), ("mute", False)):
        output = results[asset_id].outputs["transcribe"]
        assert [t.tag for t in output.tags] == ["audio/no-speech"]
        assert output.payload["segments"] == []
        assert output.payload["text"] == ""
        assert output.payload["language"] is None
        assert output.payload["speech_duration_s"] == 0.0
        assert output.payload["has_audio"] is has_audio


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"beam_size": 0}, "beam_size"), ({"language": "de"}, "'de'"), ({"temperature": 0.3}, "temperature")],
)
def test_invalid_options_fail_every_audio_item_with_a_reason(
    executor: InProcessExecutor, media: dict[str, Path], options: dict[str, Any], reason: str
) -> None:
    results = run(
        executor,
        [item("speech", media["speech"], MediaKind.AUDIO), item("video", media["video"], MediaKind.VIDEO)],
        transcribe=options,
    )

    for result in results.values():
        assert result.errors["transcribe"].code == "invalid_options"
        assert reason in result.errors["transcribe"].message


def test_sound_longer_than_the_cap_is_cut_and_says_so(
    tmp_path: Path, speech_catalog: Path, media: dict[str, Path]
) -> None:
    short = make_executor(tmp_path / "models", [speech_catalog], max_audio_duration_s=2.0)

    results = run(short, [item("speech", media["speech"], MediaKind.AUDIO)], transcribe=RANDOM)

    payload = results["speech"].outputs["transcribe"].payload
    assert payload["truncated"] is True
    assert payload["duration_s"] == 2.0


def test_real_tiny_en_transcribes_the_spoken_words(executor: InProcessExecutor, media: dict[str, Path]) -> None:
    results = run(
        executor,
        [item("speech", media["speech"], MediaKind.AUDIO)],
        transcribe={"model": WHISPER_TINY_EN_ID, "word_timestamps": True},
    )

    output = results["speech"].outputs["transcribe"]
    text = output.payload["text"].lower()
    assert [word for word in SPOKEN_WORDS if word not in text] == []
    assert output.model_id == WHISPER_TINY_EN_ID
    tags = {t.tag: t.score for t in output.tags}
    assert tags["speech/en"] == 1.0  # an English-only model
    assert tags["audio/speech"] > 0.5
    segments = output.payload["segments"]
    assert 0.0 <= segments[0]["start"] < segments[-1]["end"] <= SPEECH_S + 0.5
    words = [w for s in segments for w in s["words"]]
    assert words[0]["word"].lower().strip(",.!") == "hello"
    assert all(a["start"] <= b["start"] for a, b in itertools.pairwise(words))


def test_real_tiny_en_transcribes_the_sound_track_of_the_mp4(
    executor: InProcessExecutor, media: dict[str, Path]
) -> None:
    results = run(
        executor, [item("talking", media["talking"], MediaKind.VIDEO)], transcribe={"model": WHISPER_TINY_EN_ID}
    )

    text = results["talking"].outputs["transcribe"].payload["text"].lower()
    # Through the AAC sound track, tiny.en hears "the quick roundfark" where the WAV gives "the quick brown fox".
    assert [word for word in SPOKEN_WORDS if word != "fox" and word not in text] == []


def test_the_batched_pipeline_of_gpus_transcribes_the_same_words(
    executor: InProcessExecutor, media: dict[str, Path]
) -> None:
    results = run(
        executor,
        [item("speech", media["speech"], MediaKind.AUDIO)],
        transcribe={"model": WHISPER_TINY_EN_ID, "batched": True, "batch_size": 4},
    )

    text = results["speech"].outputs["transcribe"].payload["text"].lower()
    assert [word for word in SPOKEN_WORDS if word not in text] == []
