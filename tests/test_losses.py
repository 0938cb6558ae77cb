"""The loss modules (eitp_kernels.nn.losses): arguments checked in the constructor, inputs
checked under the module's own argument names, and the values those checks let through."""
import pytest
import torch

import eitp_kernels
from eitp_kernels import nn as enn


def test_barlow_twins_names_z1_and_z2_for_different_batch_sizes():
    with pytest.raises(ValueError, match=r"BarlowTwinsLoss: z1 and z2 must have the same batch size .* z1 of shape "
                                         r"\(8, 4\) and z2 of shape \(6, 4\)"):
        enn.BarlowTwinsLoss()(torch.randn(8, 4), torch.randn(6, 4))


@pytest.mark.parametrize("which", ["z1", "z2"])
def test_barlow_twins_rejects_1d_views(which):
    views = {"z1": torch.randn(8, 4), "z2": torch.randn(8, 4)}
    views[which] = torch.randn(8)
    with pytest.raises(ValueError, match=rf"BarlowTwinsLoss: {which} must have at least 2 dimensions"):
        enn.BarlowTwinsLoss()(views["z1"], views["z2"])


@pytest.mark.parametrize("bad, error, message", [
    ((torch.randn(8, 4), "not a tensor"), TypeError, "z2 must be a torch.Tensor"),
    ((torch.randn(1, 4), torch.randn(1, 4)), ValueError, "z1 must have at least 2 rows"),
    ((torch.randn(8, 4), torch.randint(0, 3, (8, 4))), TypeError, "z2 must have dtype"),
])
def test_barlow_twins_other_input_errors_name_its_arguments(bad, error, message):
    with pytest.raises(error, match=f"BarlowTwinsLoss: {message}"):
        enn.BarlowTwinsLoss()(*bad)


def test_coherence_loss_module_names_x_and_y():
    with pytest.raises(ValueError, match=r"CoherenceLoss: x and y must have the same batch size"):
        enn.CoherenceLoss()(torch.randn(8, 4), torch.randn(5, 3))


@pytest.mark.parametrize("make, message", [
    (lambda: enn.BarlowTwinsLoss(-1.0), "BarlowTwinsLoss: offdiag_weight"),
    (lambda: enn.BarlowTwinsLoss(eps=float("nan")), "BarlowTwinsLoss: eps"),
    (lambda: enn.CoherenceLoss(squared=1), "CoherenceLoss: squared must be a bool"),
    (lambda: enn.CoherenceLoss(diag_weight="1"), "CoherenceLoss: diag_weight"),
    (lambda: enn.CoherenceLoss(process_group="world"), "CoherenceLoss: process_group"),
])
def test_constructor_arguments_are_checked_in_the_constructor(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_values_match_the_function():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    torch.testing.assert_close(enn.BarlowTwinsLoss(0.01)(z1, z2),
                               eitp_kernels.coherence_loss(z1, z2, offdiag_weight=0.01, squared=True))
    torch.testing.assert_close(enn.CoherenceLoss()(z1), eitp_kernels.coherence_loss(z1))
    x = torch.randn(16)  # 1-D x: N samples of one feature, allowed by the general loss
    torch.testing.assert_close(enn.CoherenceLoss()(x), eitp_kernels.coherence_loss(x))
