import pytest
import torch

from cellsae.embed import ResNetEncoder, ViTEncoder, build_encoder, resnet_paper


@pytest.mark.parametrize("channels,norm,preact", [
    (1, "batch", True), (3, "group", False), (5, "none", True),
    (2, "batch", False), (4, "group", True), (3, "none", False),
])
def test_resnet_any_channels_and_norm(channels, norm, preact):
    m = ResNetEncoder(channels, widths=(4, 8), blocks=(1, 2), norm=norm, preact=preact)
    x = torch.randn(2, channels, 16, 16)
    z = m(x)
    assert z.shape == (2, 8)
    maps = m.forward_features(x, m.stage_names)
    assert maps["stem"].shape == (2, 4, 8, 8)  # stride-2 stem
    assert maps["stage2"].shape == (2, 8, 4, 4)
    assert maps["stage2.1"].shape == (2, 8, 4, 4)
    torch.testing.assert_close(z, maps["stage2"].mean((2, 3)))


def test_unit_norm_weights_without_normalisation():
    m = ResNetEncoder(3, widths=(4, 8), blocks=(1, 1), norm="none")
    assert m.weight_renorm
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            norms = mod.weight.reshape(mod.weight.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(norms, torch.ones_like(norms))


def test_wrong_channel_count_is_a_clear_error():
    m = ResNetEncoder(4, widths=(4,), blocks=(1,))
    with pytest.raises(ValueError, match="3 channels but this resnet encoder was built for 4"):
        m(torch.randn(1, 3, 16, 16))
    with pytest.raises(KeyError, match="available"):
        m.forward_features(torch.randn(1, 4, 16, 16), ["stage9"])


def test_vit_taps_are_spatial_maps():
    m = ViTEncoder(2, image_size=16, patch_size=4, dim=8, depth=2, heads=2)
    maps = m.forward_features(torch.randn(3, 2, 16, 16), m.stage_names)
    assert all(v.shape == (3, 8, 4, 4) for v in maps.values())
    assert m(torch.randn(3, 2, 16, 16)).shape == (3, 8)


def test_registry_and_paper_config():
    assert isinstance(build_encoder("vit", in_channels=1, image_size=8, patch_size=4, dim=4,
                                    heads=1, depth=1), ViTEncoder)
    with pytest.raises(ValueError, match="available"):
        build_encoder("nope")
    cfg = resnet_paper(3, widths=(8, 8, 8, 8)).config()  # the full widths are slow to build
    assert cfg["blocks"] == [2, 2, 2, 3] and cfg["norm"] == "none" and cfg["refine_blocks"] == 1
    assert cfg["strides"] == [1, 1, 1, 1] and cfg["stem_stride"] == 2
