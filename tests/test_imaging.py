"""Image basics (scripts/image_basics.py): describe, dtype conversion and brightness without
wrap-around; and the package's decoder (imgcls.imaging) on files as users have them."""

from __future__ import annotations

import importlib.util
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from imgcls.config import REPO_ROOT
from imgcls.imaging import load_image_tensor, to_float, to_uint8
from imgcls.utils.errors import UserError


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "image_basics", REPO_ROOT / "scripts" / "image_basics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the tutorial operations live in the script that shows them
basics = _load_script()
adjust_brightness, darken_region, describe = (
    basics.adjust_brightness,
    basics.darken_region,
    basics.describe,
)


def test_brightness_clips_instead_of_wrapping():
    image = torch.tensor([[[0, 5, 128, 250, 255]]], dtype=torch.uint8)  # [1, 1, 5]
    assert (image + 10)[0, 0, 3] == 4  # what plain uint8 arithmetic does
    assert adjust_brightness(image, 10).tolist() == [[[10, 15, 138, 255, 255]]]
    assert adjust_brightness(image, -10).tolist() == [[[0, 0, 118, 240, 245]]]
    assert adjust_brightness(image, factor=2.0).tolist() == [[[0, 10, 255, 255, 255]]]
    assert adjust_brightness(image, 10).dtype == torch.uint8

    floats = torch.tensor([[[0.0, 0.5, 0.95]]])
    assert torch.allclose(adjust_brightness(floats, 0.1), torch.tensor([0.1, 0.6, 1.0]))
    assert adjust_brightness(floats, 0.1).dtype == torch.float32
    assert torch.allclose(adjust_brightness(floats, -0.6), torch.tensor([0.0, 0.0, 0.35]))
    assert torch.allclose(adjust_brightness(floats, factor=2.0), torch.tensor([0.0, 1.0, 1.0]))

    rgb = torch.tensor([250, 3, 128], dtype=torch.uint8).reshape(3, 1, 1)
    assert adjust_brightness(rgb, 10).flatten().tolist() == [255, 13, 138]
    assert adjust_brightness(rgb, -5, factor=0.5).flatten().tolist() == [120, 0, 59]
    with pytest.raises(ValueError):
        adjust_brightness(image, factor=-1)


def test_dtype_conversion_round_trips_and_clips():
    every = torch.arange(256, dtype=torch.uint8)
    floats = to_float(every)
    assert floats.dtype == torch.float32 and floats.min() == 0.0 and floats.max() == 1.0
    assert torch.equal(to_uint8(floats), every)  # exact round trip
    assert to_uint8(torch.tensor([-0.5, 0.5, 1.5])).tolist() == [0, 128, 255]
    assert to_uint8(torch.tensor([300, -20, 100], dtype=torch.int16)).tolist() == [255, 0, 100]
    assert to_uint8(torch.tensor([0, 65535], dtype=torch.uint16)).tolist() == [0, 255]
    assert to_float(torch.tensor([65535], dtype=torch.uint16)).tolist() == [1.0]
    # torchvision's to_dtype(scale=True) agrees for uint8 <-> float
    assert torch.allclose(F.to_dtype(every, torch.float32, scale=True), floats)
    assert torch.equal(F.to_dtype(floats, torch.uint8, scale=True), every)


def test_describe_reports_shape_dtype_range():
    image = torch.zeros((3, 4, 5), dtype=torch.uint8)
    image[:, 0, 0] = 200
    info = describe(image)
    assert info["shape"] == (3, 4, 5) and info["dtype"] == "uint8"
    assert (info["min"], info["max"]) == (0, 200)
    assert info["expected_range"] == (0, 255) and info["in_expected_range"]
    assert info["mean"] == pytest.approx(600 / 60)
    bad = describe(torch.tensor([[[-0.5, 1.5]]]))
    assert bad["dtype"] == "float32" and bad["expected_range"] == (0.0, 1.0)
    assert not bad["in_expected_range"] and bad["min"] == -0.5


def test_darken_region_only_touches_the_box():
    image = torch.full((3, 6, 8), 200, dtype=torch.uint8)
    out = darken_region(image, (2, 1, 5, 4), 0.25)  # left, top, right, bottom
    assert (out[:, 1:4, 2:5] == 50).all()
    outside = torch.ones((6, 8), dtype=torch.bool)
    outside[1:4, 2:5] = False
    assert (out[:, outside] == 200).all() and (image == 200).all()  # input untouched
    clipped = darken_region(image, (-5, -5, 2, 100), 0.0)  # clipped to the image
    assert (clipped[..., :2] == 0).all() and (clipped[..., 2:] == 200).all()

    gray = torch.full((1, 6, 8), 0.8)
    out_f = darken_region(gray, (0, 0, 4, 3), 0.5)
    assert torch.allclose(out_f[:, :3, :4], torch.tensor(0.4)) and (out_f[:, 3:] == 0.8).all()
    assert out_f.dtype == torch.float32
    with pytest.raises(ValueError):
        darken_region(image, (0, 0, 2, 2), 1.5)


def test_operations_compose_as_v2_transforms():
    pipeline = v2.Compose(
        [
            v2.Lambda(to_float),
            v2.Lambda(partial(adjust_brightness, delta=0.5)),
            v2.Lambda(partial(darken_region, box=(0, 0, 1, 1), factor=0.0)),
            v2.Lambda(to_uint8),
        ]
    )
    image = torch.tensor([[[100, 250], [0, 10]]], dtype=torch.uint8)  # [1, 2, 2]
    out = pipeline(image)
    assert out.dtype == torch.uint8
    assert out.tolist() == [[[0, 255], [128, 138]]]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_loading_images_and_refusing_bad_ones(tmp_path, monkeypatch, capsys):
    rgb = np.zeros((5, 7, 3), dtype=np.uint8)
    rgb[..., 1] = 99
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "gray.png")
    tensor = basics.load(tmp_path / "a.png")  # the image's own channels: colour 3, grey 1
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.uint8 and (tensor[1] == 99).all()
    assert basics.load(tmp_path / "gray.png").tolist() == [[[99] * 7] * 5]
    tensor = load_image_tensor(tmp_path / "a.png", channels=3)
    assert tensor.shape == (3, 5, 7) and (tensor[1] == 99).all()
    assert load_image_tensor(tmp_path / "a.png", channels=1).shape == (1, 5, 7)

    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xffnot really")
    for loader in (basics.load, load_image_tensor):
        with pytest.raises(UserError, match="bad.jpg"):
            loader(tmp_path / "bad.jpg")
    with pytest.raises(SystemExit) as exit_info:  # the script: one argparse `error:` line
        basics.main([str(tmp_path / "bad.jpg"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "bad.jpg" in errors[0] and not (tmp_path / "out").exists()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30)  # 5x7 = 35 pixels: over the limit
    with pytest.raises(UserError, match="DecompressionBomb"):
        load_image_tensor(tmp_path / "a.png")


def test_script_renders_before_after_figures(tmp_path, capsys):
    photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    deep = np.linspace(0, 65535, 24).round().astype(np.uint16).reshape(4, 6)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    files = [str(tmp_path / "photo.png"), str(tmp_path / "deep.png")]
    written = basics.main([*files, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)])
    assert [p.name for p in written] == ["photo_basics.png", "deep_basics.png", "digit_basics.png"]
    for path in written:
        with Image.open(path) as figure:
            assert figure.format == "PNG" and figure.width > figure.height > 100
    printed = capsys.readouterr().out
    assert "shape=(3, 30, 40) dtype=uint8 range=[0, 255]" in printed
    # 16 bits scaled to uint8 (clipping would make nearly every pixel 255: mean ~244)
    assert "deep.png: shape=(1, 4, 6) dtype=uint8 range=[0, 255] mean=127.5" in printed
    assert "sklearn digits" in printed  # no MNIST in data-dir: the offline digits


# ------------------------------------------------------------------ files as users have them
def _decoded(path, channels=3):
    return load_image_tensor(path, channels=channels).int()


def test_decoder_reads_grayscale_cmyk_palette_and_alpha(tmp_path):
    Image.fromarray(np.full((4, 6), 77, dtype=np.uint8)).save(tmp_path / "gray.png")
    rgb = _decoded(tmp_path / "gray.png")
    assert rgb.shape == (3, 4, 6) and (rgb == 77).all()
    assert _decoded(tmp_path / "gray.png", channels=1).shape == (1, 4, 6)

    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = _decoded(tmp_path / "cmyk.jpg")[:, 0, 0]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15, red

    colours = np.zeros((4, 6, 3), dtype=np.uint8)
    colours[:, :3] = (10, 200, 30)
    colours[:, 3:] = (250, 5, 90)
    Image.fromarray(colours).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    assert torch.equal(_decoded(tmp_path / "p.png"), torch.from_numpy(colours).permute(2, 0, 1))

    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :3, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = _decoded(tmp_path / "rgba.png")
    assert (out[:, :, :3] == 200).all() and (out[:, :, 3:] == 0).all()


def test_decoder_scales_16_bit_images_instead_of_clipping(tmp_path):
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode == "I;16"  # a real 16-bit PNG
    assert _decoded(tmp_path / "deep.png", channels=1).tolist() == [[[0, 64, 128, 255]]]
    assert _decoded(tmp_path / "deep.png")[:, 0, 2].tolist() == [128, 128, 128]


def test_decoder_takes_the_first_frame_and_honours_exif_orientation(tmp_path):
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    with Image.open(tmp_path / "anim.gif") as gif:
        assert gif.n_frames == 2
    assert _decoded(tmp_path / "anim.gif")[:, 0, 0].tolist() == [255, 0, 0]

    stored = np.zeros((4, 6), dtype=np.uint8)  # 6 wide, 4 high; bright left column
    stored[:, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    shown = _decoded(tmp_path / "phone.png", channels=1)[0]
    assert shown.shape == (6, 4)  # upright: 4 wide, 6 high
    assert (shown[0] == 255).all() and (shown[1:] == 0).all()  # the left column is now the top
