"""Preprocessors on tiny random models of the real classes (DepthAnything, ViTPose, RT-DETR; built here, no
download), the numpy Canny, the OpenPose drawing, and the message when no person is found."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.conditioning.preprocessors import (OPENPOSE_COLOURS, Preprocessors, PreprocessorError, canny,
                                             draw_openpose, make_control, openpose_joints, soft_edge)
from core.loading.tiny import build_tiny_preprocessors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_preprocessors(tmp_path_factory.mktemp("pre"))
    return Preprocessors(str(folder / "depth"), str(folder / "pose"), str(folder / "person"))


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray((np.random.RandomState(0).rand(96, 80, 3) * 255).astype(np.uint8))


def _square():
    pixels = np.zeros((64, 64), np.uint8)
    pixels[16:48, 16:48] = 255
    return Image.fromarray(pixels).convert("RGB")


def test_canny_finds_the_edges_of_a_square_and_nothing_else():
    edges = np.asarray(canny(_square()))[..., 0] > 0
    ys, xs = np.nonzero(edges)
    assert edges.sum() > 4 * 28  # the four sides
    assert ys.min() >= 13 and ys.max() <= 50 and xs.min() >= 13 and xs.max() <= 50
    assert not edges[24:40, 24:40].any()  # no edge inside the flat square
    assert not edges[:8].any()


def test_soft_edge_is_bright_at_the_edges():
    soft = np.asarray(soft_edge(_square()))[..., 0].astype(int)
    assert soft[32, 16] > 150 and soft[32, 32] == 0


def test_depth_map_at_the_photo_size(tiny, photo):
    depth = tiny.depth(photo)
    assert depth.size == photo.size and depth.mode == "RGB"
    values = np.asarray(depth)[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_pose_skeleton_in_openpose_colours(tiny, photo):
    skeleton = tiny.pose(photo, boxes=[[10, 10, 40, 60]])
    pixels = np.asarray(skeleton).reshape(-1, 3)
    assert skeleton.size == photo.size
    colours = {tuple(p) for p in pixels} - {(0, 0, 0)}
    palette = set(OPENPOSE_COLOURS) | {tuple(int(c * 0.6) for c in col) for col in OPENPOSE_COLOURS}
    assert colours and len(colours & palette) >= 3  # drawn in OpenPose's colours (antialiasing aside)


def test_no_person_found_says_so(tiny, photo):
    assert len(tiny.people(photo)) == 0  # the tiny random detector finds nobody in noise
    with pytest.raises(PreprocessorError, match=r"^no person found in the photo for a pose: use a photo with a "
                                                r"person clearly visible, or give a ready skeleton"):
        make_control(photo, "pose", preprocessors=tiny)


def test_make_control_for_each_kind(tiny, photo):
    for kind in ("canny", "soft-edge", "gray", "depth"):
        control, notes = make_control(photo, kind, 0.5, preprocessors=tiny)
        assert control.kind == kind and control.scale == 0.5 and control.image.size == photo.size
        assert notes == [f"made a {kind} control image from the photo (80x96)"]


def test_openpose_joints_add_the_neck():
    keypoints = np.arange(34, dtype=np.float32).reshape(17, 2)
    scores = np.ones(17, np.float32)
    joints = openpose_joints(keypoints, scores)
    assert joints.shape == (18, 3) and joints[:, 2].all()
    assert np.allclose(joints[1, :2], (keypoints[5] + keypoints[6]) / 2)  # neck between the shoulders
    assert np.allclose(joints[2, :2], keypoints[6])  # OpenPose's right shoulder is COCO's 6
    scores[5] = 0
    assert openpose_joints(keypoints, scores)[1, 2] == 0  # no neck without both shoulders
    assert draw_openpose((32, 32), []).getbbox() is None
