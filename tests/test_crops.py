"""crops.py: box union, widening about the centre, edge padding, exact pixels."""

import numpy as np
import pytest

from transcribe.crops import crop, crop_number, number_box, widen


def gradient(height=100, width=120):
    """A photo whose pixel (y, x) = (x, y, (x + y) % 256): every pixel says where it came from."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x, y, (x + y) % 256], axis=-1).astype(np.uint8)


def test_number_box_is_union_of_digit_boxes():
    # The real "19" of svhn-fixtures/train/1.png: (246, 77, 81, 219) and (323, 81, 96, 219).
    assert number_box([(246, 77, 81, 219), (323, 81, 96, 219)]) == (246, 77, 419 - 246, 300 - 77)
    assert number_box([(5, 5, 10, 10)]) == (5, 5, 10, 10)
    with pytest.raises(ValueError):
        number_box([])


def test_widen_scales_about_the_centre():
    left, top, w, h = widen((10, 20, 100, 50), 1.3)
    assert (w, h) == pytest.approx((130, 65))
    assert (left, top) == pytest.approx((10 - 15, 20 - 7.5))
    assert (left + w / 2, top + h / 2) == pytest.approx((60, 45))  # centre unchanged
    assert widen((1, 2, 3, 4), 1.0) == (1, 2, 3, 4)


def test_box_inside_gives_exact_pixels():
    image = gradient()
    out = crop(image, (10, 20, 64, 64), size=64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image[20:84, 10:74])
    # Fractional edges round half up: [9.5, 73.5) -> pixels 10..73.
    np.testing.assert_array_equal(crop(image, (9.5, 19.5, 64, 64)), image[20:84, 10:74])


def test_output_size_and_resize_of_inside_box():
    image = gradient()
    out = crop(image, (0, 0, 32, 32), size=16)
    assert out.shape == (16, 16, 3)
    # Downscaling a linear ramp by 2 averages neighbouring pixels: column j ~ x = 2j + 0.5.
    assert np.abs(out[0, :, 0].astype(float) - (2 * np.arange(16) + 0.5)).max() <= 1
    big = crop(image, (0, 0, 10, 10), size=40)  # upscaling works too
    assert big.shape == (40, 40, 3)


@pytest.mark.parametrize("edge", ["left", "top", "right", "bottom"])
def test_box_leaving_the_photo_replicates_the_edge(edge):
    image = gradient(100, 120)
    box = {"left": (-5, 10, 64, 64), "top": (10, -7, 64, 64),
           "right": (120 - 60, 10, 64, 64), "bottom": (10, 100 - 61, 64, 64)}[edge]
    out = crop(image, box, size=64)  # same size as the box: no resampling, pixels exact
    assert out.shape == (64, 64, 3)
    if edge == "left":
        for j in range(5):
            np.testing.assert_array_equal(out[:, j], image[10:74, 0])
        np.testing.assert_array_equal(out[:, 5:], image[10:74, 0:59])
    elif edge == "top":
        for i in range(7):
            np.testing.assert_array_equal(out[i], image[0, 10:74])
        np.testing.assert_array_equal(out[7:], image[0:57, 10:74])
    elif edge == "right":
        np.testing.assert_array_equal(out[:, :60], image[10:74, 60:120])
        for j in range(60, 64):
            np.testing.assert_array_equal(out[:, j], image[10:74, 119])
    else:
        np.testing.assert_array_equal(out[:61], image[39:100, 10:74])
        for i in range(61, 64):
            np.testing.assert_array_equal(out[i], image[99, 10:74])


def test_box_wholly_outside_and_tiny_photo():
    image = gradient(10, 10)
    out = crop(image, (50, 50, 8, 8), size=8)  # beyond the bottom-right corner
    assert (out == image[9, 9]).all()
    assert crop(image, (3, 3, 0.1, 0.1), size=4).shape == (4, 4, 3)  # degenerate box: >= 1 pixel


def test_crop_number_widens_the_union():
    image = gradient(200, 200)
    out, box = crop_number(image, [(50, 60, 20, 40), (70, 60, 30, 40)], 1.3, 64)
    assert box == pytest.approx(widen((50, 60, 50, 40), 1.3))
    assert out.shape == (64, 64, 3)
    with pytest.raises(ValueError):
        crop(image[..., 0], box)  # not (H, W, 3)
