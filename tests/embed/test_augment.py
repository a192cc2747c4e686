import torch

from cellsae.embed.augment import NO_AUGMENT, AugmentConfig, augment


def test_nothing_mixes_channels():
    x = torch.zeros(8, 4, 16, 16)
    x[:, 1] = torch.rand(8, 16, 16) + 1
    out = augment(x, AugmentConfig(affine_p=1.0, blur_p=1.0), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out[:, [0, 2, 3]] == 0).all()
    assert (out[:, 1].abs().sum((1, 2)) > 0).all()


def test_slices_of_a_global_batch_match_the_whole():
    x = torch.rand(6, 2, 12, 12)
    cfg = AugmentConfig(affine_p=0.5, blur_p=0.5)
    full = augment(x, cfg, torch.Generator().manual_seed(3))
    parts = [augment(x[i:i + 3], cfg, torch.Generator().manual_seed(3), n_total=6, offset=i)
             for i in (0, 3)]
    torch.testing.assert_close(torch.cat(parts), full)


def test_rot90_only_gives_a_rotation_and_identity_is_identity():
    x = torch.rand(5, 1, 8, 8)
    out = augment(x, AugmentConfig(rot90=True, flip=False, affine_p=0, intensity_scale=0,
                                   blur_p=0, noise=0), torch.Generator().manual_seed(1))
    for i in range(5):
        assert any(torch.equal(out[i], torch.rot90(x[i], k, (-2, -1))) for k in range(4))
    torch.testing.assert_close(augment(x, NO_AUGMENT, torch.Generator()), x)
