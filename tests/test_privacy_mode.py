"""Matter(privacy=True): the network never sees the face; the result is for the original photo."""
from __future__ import annotations

import numpy as np
import pytest

import p3m
from p3m.io import read_image
from p3m.privacy import detect_faces


def _network_inputs(matter, image):
    seen = []
    handle = matter.network.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].clone()),
                                                      with_kwargs=True)
    try:
        result = matter.predict(image)
    finally:
        handle.remove()
    return result, seen[0][0]


@pytest.mark.parametrize("name", ["p_07141906.jpg"])
def test_network_input_has_the_face_blurred(r34_checkpoint, fixtures_dir, name):
    image = read_image(fixtures_dir / "portraits" / name)
    face = detect_faces(image)[0]
    plain, plain_input = _network_inputs(p3m.Matter(weights=r34_checkpoint, method="resize", device="cpu"), image)
    private, private_input = _network_inputs(
        p3m.Matter(weights=r34_checkpoint, method="resize", device="cpu", privacy=True), image)

    np.testing.assert_array_equal(private.image, image)  # the result is for the original photo
    assert private.alpha.shape == image.shape[:2]
    # Network input at 1/2 scale: the face box differs strongly, far corners do not at all.
    scale_y = plain_input.shape[1] / image.shape[0]
    scale_x = plain_input.shape[2] / image.shape[1]
    x0, y0, x1, y1 = face.box
    inside = (slice(int(y0 * scale_y) + 2, int(y1 * scale_y) - 2), slice(int(x0 * scale_x) + 2, int(x1 * scale_x) - 2))
    face_change = (private_input[:, inside[0], inside[1]] - plain_input[:, inside[0], inside[1]]).abs().mean()
    assert face_change > 0.1
    corner = (slice(0, 20), slice(0, 20)) if y0 * scale_y > 40 else (slice(-20, None), slice(-20, None))
    assert (private_input[:, corner[0], corner[1]] - plain_input[:, corner[0], corner[1]]).abs().max() == 0
    assert not detect_faces(_to_uint8(private_input))


def _to_uint8(normalised):
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    image = (normalised.numpy() * std + mean).transpose(1, 2, 0)
    return np.clip(image * 255, 0, 255).round().astype(np.uint8)
