"""Transcribe analyzer: faster-whisper (a CTranslate2 Whisper) on audio files and the sound tracks of videos.

The model is loaded from the folder the model store verified, never by a hub name, so nothing is downloaded here.
Voice activity detection (the Silero model that ships inside faster-whisper) skips silence; on a GPU, faster-whisper's
batched pipeline decodes the speech chunks of a clip together.

Options (``manifest.options["transcribe"]``): ``model`` (catalog id), ``language`` (a Whisper language code; default:
detected), ``task`` (``transcribe`` or ``translate`` to English), ``beam_size`` (5), ``vad`` (true),
``word_timestamps`` (false), ``max_new_tokens`` per window (default: the model's limit), ``batched`` (default: on a
GPU only) and ``batch_size`` (16; speech chunks decoded together by the batched pipeline).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpu_worker.audio import AudioClip
from gpu_worker.contract import AnalyzerOutput, MediaKind, TagScore
from gpu_worker.models.base import Analyzer, AnalyzerInput, InvalidOptionsError
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import CatalogError, ModelEntry, ModelFamily, ModelStore

log = logging.getLogger(__name__)

WHISPER_FORMAT = "ctranslate2_whisper"
# Without its tokenizer beside the weights, faster-whisper fetches one from the hub.
TOKENIZER_FILE = "tokenizer.json"
# Preferred CTranslate2 compute types per device, best first; the first one the device supports is used.
COMPUTE_TYPES = {"cuda": ("float16", "int8_float16", "float32"), "cpu": ("int8", "int8_float32", "float32")}
# faster-whisper's batched pipeline needs VAD chunks; without VAD it takes at most one 30 s window.
WHISPER_WINDOW_S = 30.0
TIME_DECIMALS = 3


class TranscribeOptions(BaseModel):
    """Per-batch options of the transcribe analyzer; each maps to the faster-whisper parameter of the same meaning."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    language: str | None = Field(default=None, min_length=2, max_length=8)
    task: Literal["transcribe", "translate"] = "transcribe"
    beam_size: int = Field(default=5, ge=1, le=16)
    vad: bool = True
    word_timestamps: bool = False
    max_new_tokens: int | None = Field(default=None, ge=1, le=448)
    batched: bool | None = None
    batch_size: int = Field(default=16, ge=1, le=256)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TranscribeAnalyzer(Analyzer[AudioClip]):
    """Language, timed segments and full text of the speech in an audio file or a video's sound track."""

    name = "transcribe"
    family = ModelFamily.TRANSCRIBE
    media_kinds = frozenset({MediaKind.AUDIO, MediaKind.VIDEO})
    consumes = AnalyzerInput.AUDIO
    # A warm-up tone holds no speech; without VAD the decoder really runs once.
    warm_up_options = {"vad": False, "max_new_tokens": 8}

    def __init__(self, store: ModelStore, model_id: str) -> None:
        super().__init__(store, model_id)
        self._model: Any = None  # faster_whisper.WhisperModel; the library ships no types
        self._batched = False
        # Where CTranslate2 runs the model and at which precision (it may fall back to the CPU, see _load).
        self.inference_device: str | None = None
        self.compute_type: str | None = None

    @classmethod
    def default_model(cls, settings: WorkerSettings) -> str:
        """``settings.transcribe_model``."""
        return settings.transcribe_model

    def _load(self, entry: ModelEntry, folder: Path, device: str) -> None:
        if entry.format != WHISPER_FORMAT:
            raise CatalogError(
                f"model {entry.id} has format {entry.format!r}; the transcribe analyzer reads {WHISPER_FORMAT!r}"
            )
        if not (folder / TOKENIZER_FILE).is_file():
            raise CatalogError(
                f"model {entry.id} must list {TOKENIZER_FILE} among its files, or faster-whisper reaches for a hub"
            )
        import ctranslate2
        from faster_whisper import WhisperModel

        kind, _, index = device.partition(":")
        if kind == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            # torch sees the GPU but this CTranslate2 build does not; a slower transcription beats none.
            log.warning("CTranslate2 sees no CUDA device; %s runs on the CPU", entry.id)
            kind, index = "cpu", ""
        supported = ctranslate2.get_supported_compute_types(kind)
        compute_type = next((t for t in COMPUTE_TYPES.get(kind, ("float32",)) if t in supported), "default")
        self._model = WhisperModel(
            str(folder),
            device=kind,
            device_index=int(index or 0),
            compute_type=compute_type,
            cpu_threads=_available_cores() if kind == "cpu" else 0,
            local_files_only=True,
        )
        self._batched = kind == "cuda"
        self.inference_device, self.compute_type = kind, compute_type

    @staticmethod
    def parse_options(options: Mapping[str, Any]) -> TranscribeOptions:
        """Validate a batch's options; ``InvalidOptionsError`` says what is wrong."""
        try:
            return TranscribeOptions.model_validate(dict(options))
        except ValidationError as exc:
            raise InvalidOptionsError(f"invalid transcribe options: {exc}") from exc

    def _run(self, inputs: Sequence[AudioClip], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        if self._model is None:
            raise RuntimeError("the transcribe analyzer is not loaded")
        opts = self.parse_options(options)
        if opts.language is not None and opts.language not in self._model.supported_languages:
            raise InvalidOptionsError(
                f"language {opts.language!r} is not one model {self.model_id} knows: "
                f"{', '.join(self._model.supported_languages)}"
            )
        return [self._transcribe(clip, opts) for clip in inputs]

    def _transcribe(self, clip: AudioClip, opts: TranscribeOptions) -> AnalyzerOutput:
        if not clip.has_audio or len(clip.samples) == 0:
            return self._output(clip, opts, segments=[], language=None, language_probability=None, speech_s=0.0)
        params: dict[str, Any] = {
            "language": opts.language,
            "task": opts.task,
            "beam_size": opts.beam_size,
            "vad_filter": opts.vad,
            "word_timestamps": opts.word_timestamps,
            "max_new_tokens": opts.max_new_tokens,
        }
        batched = self._batched if opts.batched is None else opts.batched
        if batched and (opts.vad or clip.duration_s <= WHISPER_WINDOW_S):
            from faster_whisper import BatchedInferencePipeline

            # A pipeline per call: it keeps per-transcription state and costs nothing to build.
            segments, info = BatchedInferencePipeline(self._model).transcribe(
                clip.samples, batch_size=opts.batch_size, **params
            )
        else:
            segments, info = self._model.transcribe(clip.samples, **params)
        # The segments are a generator: the decoding happens here, while it is consumed.
        found = [_segment(s, opts.word_timestamps) for s in segments]
        return self._output(
            clip,
            opts,
            segments=found,
            language=info.language,
            language_probability=info.language_probability,
            speech_s=info.duration_after_vad if opts.vad else info.duration,
        )

    def _output(
        self,
        clip: AudioClip,
        opts: TranscribeOptions,
        *,
        segments: list[dict[str, Any]],
        language: str | None,
        language_probability: float | None,
        speech_s: float,
    ) -> AnalyzerOutput:
        spoken = [s for s in segments if s["text"]]
        text = " ".join(s["text"] for s in spoken)
        tags: list[TagScore] = []
        if spoken:
            # The most confident segment's speech probability, from Whisper's own no-speech token.
            speech_score = max(1.0 - s["no_speech_prob"] for s in spoken)
            tags.append(TagScore(tag="audio/speech", score=round(speech_score, 6)))
            if language is not None:
                tags.append(TagScore(tag=f"speech/{language}", score=round(float(language_probability or 0.0), 6)))
        else:
            tags.append(TagScore(tag="audio/no-speech", score=1.0))
            language = language_probability = None
        payload: dict[str, Any] = {
            "language": language,
            "language_probability": None if language_probability is None else round(float(language_probability), 6),
            "duration_s": round(clip.duration_s, TIME_DECIMALS),
            "speech_duration_s": round(speech_s, TIME_DECIMALS),
            "segments": segments,
            "text": text,
            "has_audio": clip.has_audio,
            "truncated": clip.truncated,
            "task": opts.task,
            "vad": opts.vad,
        }
        return AnalyzerOutput(model_id=self.model_id, tags=tags, payload=payload)


def _segment(segment: Any, with_words: bool) -> dict[str, Any]:
    """One faster-whisper segment as plain JSON: times in seconds from the start of the file."""
    out: dict[str, Any] = {
        "start": round(float(segment.start), TIME_DECIMALS),
        "end": round(float(segment.end), TIME_DECIMALS),
        "text": segment.text.strip(),
        "avg_logprob": round(float(segment.avg_logprob), 6),
        "no_speech_prob": round(float(segment.no_speech_prob), 6),
    }
    if with_words and segment.words:
        out["words"] = [
            {
                "start": round(float(w.start), TIME_DECIMALS),
                "end": round(float(w.end), TIME_DECIMALS),
                "word": w.word.strip(),
                "probability": round(float(w.probability), 6),
            }
            for w in segment.words
        ]
    return out
