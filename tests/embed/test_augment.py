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


def test_blur_is_a_normalised_gaussian_per_crop():
    x = torch.zeros(2, 1, 15, 15)
    x[:, 0, 7, 7] = 1.0
    base = NO_AUGMENT.model_dump()
    out = augment(x, AugmentConfig(**{**base, "blur_p": 1.0, "blur_sigma": (0.4, 1.5)}),
                  torch.Generator().manual_seed(2))
    for img in out[:, 0]:
        torch.testing.assert_close(img.sum(), torch.tensor(1.0))  # mass kept away from edges
        for mirrored in (img.flip(0), img.flip(1), img.T):  # isotropic, centred
            torch.testing.assert_close(img, mirrored)
        assert img[7, 7] == img.max() < 1.0
    assert not torch.allclose(out[0], out[1])  # each crop has its own sigma
