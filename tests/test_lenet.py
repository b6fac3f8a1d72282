import pytest
import torch

from models.lenet import LeNet5


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_lenet_maps_images_to_logits(batch_norm: bool, image_shape: tuple[int, int, int]) -> None:
    net = LeNet5(num_classes=7, image_shape=image_shape, batch_norm=batch_norm, dropout=0.5)
    logits = net(torch.randn(4, *image_shape))
    assert logits.shape == (4, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_lenet_has_the_paper_layout() -> None:
    net = LeNet5()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 6, (5, 5)), (6, 16, (5, 5))]
    assert [(d.in_features, d.out_features) for d in dense] == [(16 * 5 * 5, 120), (120, 84), (84, 10)]


def test_dropout_is_active_only_in_training() -> None:
    net = LeNet5(dropout=0.9)
    x = torch.randn(8, 1, 28, 28)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
