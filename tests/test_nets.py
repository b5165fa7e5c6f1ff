"""The model zoo: every net on every input shape and class count; sizes, parameter counts."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from imgcls.models.nets.alexnet import AlexNet, AlexNetLRN
from imgcls.models.nets.blocks import ACTIVATIONS, FastDropout, check_image_size, dense_head
from imgcls.models.nets.convnet import ConvNet
from imgcls.models.nets.mlp import MLP
from imgcls.models.nets.pretrained import torchvision_net
from imgcls.models.nets.tinynet import TinyNet
from imgcls.utils.errors import UserError

#: config name -> builder (model=resnet18 is torchvision's builder, like model=torchvision)
ResNet18 = functools.partial(torchvision_net, "resnet18")
NETS: dict[str, Any] = {
    "tinynet": TinyNet,
    "mlp": MLP,
    "convnet": ConvNet,
    "resnet18": ResNet18,
    "alexnet_lrn": AlexNetLRN,
    "alexnet": AlexNet,
}
SHAPES = [(1, 28), (3, 32), (3, 64), (3, 224)]
#: smallest image each net with a minimum accepts (default widths)
MIN_SIZES = {"tinynet": 18, "alexnet": 3, "alexnet_lrn": 15, "convnet": 8}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


def build_on_meta(name: str, *args: int, **kwargs: object) -> nn.Module:
    """The net with storage-free parameters: counting and layout checks without the init cost."""
    with torch.device("meta"):
        return NETS[name](*args, **kwargs)


CLASS_COUNTS = [2, 3, 10]


def grid() -> list:
    """Every net x shape x class count, but the 93.8M-parameter AlexNet's class counts other than
    10 only at 1x28x28 (4-5 s each on 2 cores; after its adaptive pool the class count changes
    only the last layer, whatever the input size)."""
    cases = []
    for name in NETS:
        for in_channels, size in SHAPES:
            for num_classes in CLASS_COUNTS:
                if name == "alexnet" and size != 28 and num_classes != 10:
                    continue
                cases.append(
                    pytest.param(
                        name,
                        in_channels,
                        size,
                        num_classes,
                        id=f"{name}-{in_channels}x{size}-{num_classes}",
                    )
                )
    return cases


@pytest.mark.parametrize(("name", "in_channels", "size", "num_classes"), grid())
def test_forward_backward_every_shape(name: str, in_channels: int, size: int, num_classes: int):
    net = NETS[name](in_channels=in_channels, num_classes=num_classes, image_size=size)
    x = torch.randn(2, in_channels, size, size)
    out = net(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, num_classes - 1])).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the loss reaches the first layer: the whole net is connected
    first = next(p for p in net.parameters() if p.requires_grad)
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "in_channels", "expected"),
    [
        ("alexnet", 1, 93_819_402),  # the reference's exact count
        ("alexnet", 3, 93_832_202),
        ("alexnet_lrn", 1, 21_598_922),
        ("alexnet_lrn", 3, 21_622_154),  # the reference's exact count (3-channel input)
        ("convnet", 1, 593_200),
        ("convnet", 3, 593_776),
        ("mlp", 1, 535_818),
        ("resnet18", 1, 11_172_810),
    ],
)
def test_parameter_counts(name: str, in_channels: int, expected: int) -> None:
    net = build_on_meta(name, in_channels=in_channels, num_classes=10, image_size=28)
    assert count_parameters(net) == expected


def test_tinynet_stays_under_20k_parameters() -> None:
    assert count_parameters(TinyNet(in_channels=1, num_classes=10, image_size=28)) < 20_000


@pytest.mark.parametrize("name", ["alexnet", "alexnet_lrn", "convnet"])
def test_parameter_count_does_not_depend_on_image_size(name: str) -> None:
    counts = {count_parameters(build_on_meta(name, 3, 10, size)) for _, size in SHAPES}
    assert len(counts) == 1


def test_alexnet_layers_match_the_reference_layout() -> None:
    net = AlexNet(in_channels=1, num_classes=10, image_size=28)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (256, 5, 1),
        (384, 3, 1),
        (384, 3, 1),
        (256, 3, 1),
    ]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [
        (256 * 13 * 13, 2048),
        (2048, 1024),
        (1024, 10),
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 1
    # the adaptive pool is the identity at 28 px: the classifier sees the 13x13 conv map itself
    x = torch.randn(1, 1, 28, 28)
    conv_map = net.features[:-1](x)
    assert conv_map.shape == (1, 256, 13, 13)
    torch.testing.assert_close(net.features(x), conv_map)


def test_alexnet_lrn_is_the_published_layout() -> None:
    small = build_on_meta("alexnet_lrn", in_channels=3, num_classes=10, image_size=32)
    modules = list(small.modules())
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in modules) == 2
    pools = [m for m in modules if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3  # overlapping pooling
    assert [m.p for m in modules if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (96, 11),
        (256, 5),
        (384, 3),
        (384, 3),
        (256, 3),
    ]
    assert [fc.out_features for fc in modules if isinstance(fc, nn.Linear)] == [4096, 4096, 10]
    # small images: stride-1 first conv; ImageNet-sized ones: the published stride 4
    assert convs[0].stride == (1, 1)
    large = build_on_meta("alexnet_lrn", in_channels=3, num_classes=10, image_size=224)
    assert next(m for m in large.modules() if isinstance(m, nn.Conv2d)).stride == (4, 4)


def test_convnet_classifier_sees_4096_features() -> None:
    net = ConvNet(in_channels=3, num_classes=10, image_size=32)
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [32, 64, 128, 256]
    linears = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
    assert linears == [(4096, 50), (50, 10)]
    # at 32 px the last conv map is 4x4 already
    assert net.features[:-1](torch.randn(1, 3, 32, 32)).shape == (1, 256, 4, 4)


@pytest.mark.parametrize(
    ("size", "small_stem"), [(28, True), (32, True), (64, False), (224, False)]
)
def test_resnet18_stem_follows_image_size(size: int, small_stem: bool) -> None:
    net = ResNet18(in_channels=1, num_classes=5, image_size=size)
    conv1 = net.conv1
    assert conv1.in_channels == 1
    if small_stem:
        assert (conv1.kernel_size, conv1.stride) == ((3, 3), (1, 1))
        assert isinstance(net.maxpool, nn.Identity)
    else:
        assert (conv1.kernel_size, conv1.stride) == ((7, 7), (2, 2))
        assert isinstance(net.maxpool, nn.MaxPool2d)


def test_resnet18_standard_stem_is_torchvisions() -> None:
    from torchvision.models import resnet18

    ours = build_on_meta("resnet18", in_channels=3, num_classes=7, image_size=224)
    with torch.device("meta"):
        reference = resnet18(num_classes=7)
    assert count_parameters(ours) == count_parameters(reference)
    forced = build_on_meta(
        "resnet18", in_channels=3, num_classes=7, image_size=224, small_input=True
    )
    assert forced.conv1.kernel_size == (3, 3)
    with pytest.raises(UserError, match="small_input=true needs a ResNet, not alexnet"):
        torchvision_net("alexnet", 3, image_size=224, small_input=True)


@pytest.mark.parametrize("name", list(MIN_SIZES))
def test_too_small_images_name_the_net_and_the_minimum(name: str) -> None:
    minimum = MIN_SIZES[name]
    net = NETS[name](in_channels=1, num_classes=3, image_size=minimum)
    assert net(torch.randn(2, 1, minimum, minimum)).shape == (2, 3)  # the minimum really works
    with pytest.raises(UserError) as err:
        NETS[name](in_channels=1, num_classes=3, image_size=minimum - 1)
    message = str(err.value)
    assert message.startswith(f"{name} needs images of at least {minimum}px")
    assert f"data.image_size={minimum - 1}" in message
    assert "\n" not in message


def test_one_below_the_minimum_really_fails_in_torch() -> None:
    """The computed minimum is tight: without the check, torch itself fails one pixel below."""
    net = AlexNetLRN(in_channels=1, num_classes=3, image_size=15)
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 1, 14, 14))


@pytest.mark.parametrize("name", ["alexnet", "alexnet_lrn", "convnet"])
@pytest.mark.parametrize("size", [3, 7, 14, 15, 28, 33, 64, 130])
def test_image_size_check_agrees_with_a_real_forward(name: str, size: int) -> None:
    net = NETS[name](in_channels=1, num_classes=3, image_size=max(size, 28))
    conv_layers = net.features[:-1]  # everything before the adaptive pool
    try:
        with torch.no_grad():
            conv_layers(torch.zeros(1, 1, size, size))
        fits = True
    except RuntimeError:
        fits = False
    try:
        check_image_size(name, conv_layers, 1, size)
        accepted = True
    except UserError:
        accepted = False
    assert accepted == fits


def test_image_size_check_names_the_minimum() -> None:
    layers = nn.Sequential(nn.Conv2d(1, 1, 5), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1))
    check_image_size("net", layers, 1, 6)
    with pytest.raises(UserError, match="net needs images of at least 6px, got data.image_size=5"):
        check_image_size("net", layers, 1, 5)  # 5 -> 1 -> the 2x2 pool no longer fits
    strings = nn.Sequential(nn.Conv2d(1, 1, 3, padding="same"), nn.Conv2d(1, 1, 3, padding="valid"))
    check_image_size("net", strings, 1, 3)
    with pytest.raises(UserError, match="at least 3px"):
        check_image_size("net", strings, 1, 2)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlp_activation_and_layout(act: str) -> None:
    net = MLP(in_channels=1, num_classes=2, image_size=8, hidden_sizes=[16, 4], activation=act)
    linears = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
    assert linears == [(64, 16), (16, 4), (4, 2)]
    assert sum(isinstance(m, ACTIVATIONS[act]) for m in net.modules()) == 2
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 2)


def test_mlp_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown activation 'swishy'.*relu"):
        MLP(activation="swishy")
    with pytest.raises(UserError, match="dropout must be in"):
        MLP(dropout=1.5)
    with pytest.raises(UserError, match="hidden layer sizes"):
        MLP(hidden_sizes=[0])
    with pytest.raises(UserError, match="convnet needs 4 positive conv widths"):
        ConvNet(channels=[32, 64])


def test_dense_head_without_hidden_layers_is_logistic_regression() -> None:
    head = dense_head(12, [], 3)
    assert [type(m) for m in head] == [nn.Linear]


@pytest.mark.parametrize("name", list(NETS))
def test_model_configs_build_the_net_from_the_datamodule(make_cfg, name: str) -> None:
    cfg = make_cfg("train", [f"model={name}", "data=digits", "data.classes=[1,7,9]"])
    model = instantiate(cfg.model)
    direct = build_on_meta(name, in_channels=1, num_classes=3, image_size=28)
    assert type(model.net) is type(direct)
    assert count_parameters(model.net) == count_parameters(direct)
    assert (cfg.model.in_channels, cfg.model.num_classes, cfg.model.image_size) == (1, 3, 28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_drops_independently_with_probability_p(p: float) -> None:
    torch.manual_seed(0)
    layer = FastDropout(p).train()
    out = layer(torch.ones(1000, 1000))
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.002  # 1M draws: std ~0.0005
    assert torch.allclose(out[~dropped], torch.tensor(1 / (1 - p)))
    # no structure: rows, columns and the four 16-bit lanes of each draw drop alike
    assert dropped.float().mean(0).std() < 0.05 and dropped.float().mean(1).std() < 0.05
    lanes = dropped.flatten()[: 4 * 250_000].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), p), atol=0.005)


def test_fast_dropout_gradient_is_the_scaled_mask_and_eval_is_identity() -> None:
    torch.manual_seed(1)
    layer = FastDropout(0.2).train()
    x = torch.randn(64, 8, 5, 5, requires_grad=True)  # numel not a multiple of 4 per row
    torch.manual_seed(2)
    out = layer(x)
    out.sum().backward()
    kept = out != 0
    assert torch.allclose(x.grad, kept.float() / 0.8)
    assert torch.allclose(out[kept], x.detach()[kept] / 0.8)
    torch.manual_seed(2)
    assert torch.equal(layer(x), out)  # seeded like every other torch RNG use
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_nets_use_fast_dropout_and_keep_nn_dropouts_state_dict() -> None:
    net = TinyNet(dropout=0.1)
    assert sum(isinstance(m, FastDropout) for m in net.modules()) == 6
    assert all(isinstance(m, FastDropout) for m in net.modules() if isinstance(m, nn.Dropout))
    assert FastDropout(0.1).state_dict() == nn.Dropout(0.1).state_dict() == {}
