"""Video frames come from a time grid plus the scene cuts that the grid would miss."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from gpu_worker.decode import decode_video_frames

FPS = 10


def _three_scene_video(path: Path) -> None:
    """10 s: red until 4 s, a short blue scene until 5.5 s, then green; a keyframe every half second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.gop_size = FPS // 2
        for index in range(10 * FPS):
            t = index / FPS
            colour = (200, 30, 30) if t < 4.0 else (30, 30, 200) if t < 5.5 else (30, 180, 30)
            pixels = np.zeros((96, 160, 3), dtype=np.uint8)
            pixels[:] = colour
            pixels[10:20, (index * 3) % 140 : (index * 3) % 140 + 10] = 255  # a little motion within each scene
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _dominant(frame_pixels: np.ndarray) -> str:
    r, g, b = frame_pixels.reshape(-1, 3).mean(axis=0)
    return {0: "red", 1: "green", 2: "blue"}[int(np.argmax([r, g, b]))]


def test_a_short_scene_between_grid_frames_gets_a_frame_of_its_own(tmp_path: Path) -> None:
    video = tmp_path / "scenes.mp4"
    _three_scene_video(video)

    grid_only = decode_video_frames(video, count=2, max_pixels=10**8)
    with_cuts = decode_video_frames(video, count=2, max_pixels=10**8, scene_frames=4)

    assert [_dominant(np.asarray(f.image)) for f in grid_only] == ["red", "green"]
    colours = [_dominant(np.asarray(f.image)) for f in with_cuts]
    assert colours == ["red", "blue", "green"], [(f.timestamp_s, c) for f, c in zip(with_cuts, colours, strict=True)]
    timestamps = [f.timestamp_s for f in with_cuts]
    assert timestamps == sorted(timestamps)
    assert with_cuts[1].timestamp_s is not None and 4.0 <= with_cuts[1].timestamp_s < 5.5


def test_no_extra_frames_when_the_picture_never_changes(tmp_path: Path) -> None:
    video = tmp_path / "still.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.gop_size = FPS // 2
        for _ in range(3 * FPS):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 90, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    assert len(decode_video_frames(video, count=3, max_pixels=10**8, scene_frames=4)) == 3
