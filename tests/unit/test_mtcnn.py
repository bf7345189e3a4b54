"""The worker's MTCNN detector gives what facenet-pytorch's ``detect_face`` gives, with its refine stages' crops cut
for all candidates at once; the real MTCNN weights come from the facenet-pytorch wheel."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_worker.benchmark import DispatchedOps
from gpu_worker.decode import decode_image, decode_video_frames
from gpu_worker.models.faces import PYRAMID_FACTOR, import_facenet
from gpu_worker.models.mtcnn import ImageFaces, area_resized_crops, detect_faces, pyramid_scales, summed_area_table
from gpu_worker.settings import WorkerSettings

CPU = torch.device("cpu")
DECODE_SIDE_PX = WorkerSettings().max_decode_side_px
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
# Low thresholds and the smallest face size let hundreds of candidates through every stage.
PERMISSIVE_THRESHOLDS = (0.1, 0.1, 0.1)


@pytest.fixture(scope="module")
def nets() -> Any:
    return import_facenet().MTCNN(device="cpu")


def reference(
    images: Sequence[Image.Image], nets: Any, min_face_size: int, thresholds: Sequence[float]
) -> list[ImageFaces]:
    detect_face = import_facenet().models.utils.detect_face.detect_face
    with torch.inference_mode():
        boxes, points = detect_face(
            list(images), min_face_size, nets.pnet, nets.rnet, nets.onet, list(thresholds), PYRAMID_FACTOR, CPU
        )
    return [
        ImageFaces(np.asarray(b, np.float32).reshape(-1, 5), np.asarray(p, np.float32).reshape(-1, 5, 2))
        for b, p in zip(boxes, points, strict=True)
    ]


def detect(images: Sequence[Image.Image], nets: Any, min_face_size: int, thresholds: Sequence[float]) -> list[Any]:
    return detect_faces(
        images, nets, min_face_size=min_face_size, thresholds=thresholds, factor=PYRAMID_FACTOR, device=CPU
    )


def assert_same_faces(ours: list[ImageFaces], theirs: list[ImageFaces]) -> None:
    assert len(ours) == len(theirs)
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine.boxes.shape == expected.boxes.shape
        np.testing.assert_allclose(mine.boxes, expected.boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(mine.points, expected.points, atol=1e-3, rtol=0)


def noise_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(smooth).resize(size, Image.Resampling.BICUBIC)


def test_area_crops_equal_torch_area_interpolation_of_each_cut_out_box() -> None:
    rng = np.random.default_rng(3)
    pixels = torch.as_tensor(rng.integers(0, 256, (2, 3, 70, 90), dtype=np.uint8))
    boxes = [(0, 70, 0, 90), (5, 6, 7, 8), (10, 43, 20, 29), (60, 70, 80, 90), (0, 24, 30, 54), (1, 50, 2, 99)]
    boxes = [(top, bottom, left, min(right, 90)) for top, bottom, left, right in boxes]
    images = torch.tensor([0, 1, 1, 0, 1, 0])
    rows = torch.tensor([[top, bottom] for top, bottom, _, _ in boxes])
    columns = torch.tensor([[left, right] for _, _, left, right in boxes])
    table = summed_area_table(pixels)
    for size in (24, 48):
        crops = area_resized_crops(table, images, rows, columns, size)
        for number, (top, bottom, left, right) in enumerate(boxes):
            cut = pixels[images[number], :, top:bottom, left:right].float()[None]
            expected = torch.nn.functional.interpolate(cut, size=(size, size), mode="area")[0]
            torch.testing.assert_close(crops[number], expected, atol=1e-4, rtol=0)


def test_summed_area_table_holds_the_sums_above_and_left_of_each_position() -> None:
    pixels = torch.as_tensor(np.random.default_rng(1).integers(0, 256, (2, 3, 17, 23), dtype=np.uint8))
    table = summed_area_table(pixels)
    assert table.shape == (2, 3, 18, 24)
    expected = torch.nn.functional.pad(pixels.long().cumsum(2).cumsum(3), (1, 0, 1, 0))
    assert torch.equal(table.long(), expected)


def test_pyramid_starts_where_the_smallest_face_fills_a_window_and_stops_at_twelve_pixels() -> None:
    scales = pyramid_scales(240, 320, 20, PYRAMID_FACTOR)
    assert scales[0] == pytest.approx(12 / 20)
    assert all(b == pytest.approx(a * PYRAMID_FACTOR) for a, b in itertools.pairwise(scales))
    assert 240 * scales[-1] >= 12 > 240 * scales[-1] * PYRAMID_FACTOR
    assert pyramid_scales(19, 400, 20, PYRAMID_FACTOR) == []


@pytest.mark.parametrize("min_face_size, thresholds", [(20, DEFAULT_THRESHOLDS), (12, PERMISSIVE_THRESHOLDS)])
def test_same_faces_as_facenet_pytorch_on_generated_pictures_one_at_a_time_and_batched(
    nets: Any, min_face_size: int, thresholds: tuple[float, float, float]
) -> None:
    images = [noise_image(seed) for seed in range(3)]
    expected = reference(images, nets, min_face_size, thresholds)
    assert_same_faces(detect(images, nets, min_face_size, thresholds), expected)
    one_by_one = [detect([image], nets, min_face_size, thresholds)[0] for image in images]
    assert_same_faces(one_by_one, expected)
    if thresholds == PERMISSIVE_THRESHOLDS:
        assert sum(len(faces.boxes) for faces in expected) >= 10


def test_same_faces_landmarks_and_probabilities_as_facenet_pytorch_on_the_shared_photos(
    nets: Any, shared_media: Path
) -> None:
    found = {}
    for name in ("bus.jpg", "zidane.jpg", "grace_hopper.jpg"):
        image = decode_image(shared_media / name, max_pixels=100_000_000, max_side_px=DECODE_SIDE_PX)
        for min_face_size, thresholds in ((20, DEFAULT_THRESHOLDS), (12, PERMISSIVE_THRESHOLDS)):
            ours = detect([image], nets, min_face_size, thresholds)
            assert_same_faces(ours, reference([image], nets, min_face_size, thresholds))
            found[name, min_face_size] = int((ours[0].boxes[:, 4] >= 0.9).sum())
    # What ../shared/media/README.md lists for MTCNN at p >= 0.9.
    assert (found["bus.jpg", 20], found["zidane.jpg", 20], found["grace_hopper.jpg", 20]) == (2, 2, 1)
    assert found["zidane.jpg", 12] >= 2


def test_a_batch_of_video_frames_gives_each_frame_its_own_faces(nets: Any, shared_media: Path) -> None:
    frames = decode_video_frames(shared_media / "talking_zidane_bus.mp4", count=6, max_pixels=100_000_000)
    images = [frame.image for frame in frames]
    batched = detect(images, nets, 20, DEFAULT_THRESHOLDS)
    assert_same_faces(batched, reference(images, nets, 20, DEFAULT_THRESHOLDS))
    assert_same_faces(batched, [detect([image], nets, 20, DEFAULT_THRESHOLDS)[0] for image in images])
    assert all(len(faces.boxes) >= 1 for faces in batched)


def test_refine_crops_take_the_same_tensor_operations_for_few_and_many_candidates() -> None:
    pixels = torch.as_tensor(np.random.default_rng(5).integers(0, 256, (1, 3, 200, 300), dtype=np.uint8))
    table = summed_area_table(pixels)
    counts = []
    for n in (1, 300):
        tops = torch.randint(0, 150, (n,))
        lefts = torch.randint(0, 250, (n,))
        rows = torch.stack([tops, tops + 40], dim=1)
        columns = torch.stack([lefts, lefts + 40], dim=1)
        with DispatchedOps() as counter:
            area_resized_crops(table, torch.zeros(n, dtype=torch.long), rows, columns, 24)
        counts.append(counter.count)
    assert counts[0] == counts[1]


def test_images_of_different_sizes_are_refused_and_an_empty_batch_finds_nothing(nets: Any) -> None:
    with pytest.raises(ValueError, match="one size"):
        detect([noise_image(0), noise_image(1, (200, 200))], nets, 20, DEFAULT_THRESHOLDS)
    assert detect([], nets, 20, DEFAULT_THRESHOLDS) == []


def test_an_image_too_small_for_the_minimum_face_finds_nothing(nets: Any) -> None:
    [faces] = detect([noise_image(0, (40, 18))], nets, 20, DEFAULT_THRESHOLDS)
    assert faces.boxes.shape == (0, 5)
    assert faces.points.shape == (0, 5, 2)
