import pytest
import torch

from speechcnn.frontend import FrequencyCNN


def make(**kwargs):
    torch.manual_seed(0)
    defaults = dict(in_freq=16, channels=[4, 6], kernel_sizes=[3, 3], pools=[2, 2], dropout=0.1)
    return FrequencyCNN(**{**defaults, **kwargs}).eval()


def test_shapes_and_out_features():
    cnn = make()
    out = cnn(torch.randn(2, 16, 7))
    assert cnn.out_features == 6 * 4
    assert out.shape == (2, 7, 24)
    assert make(in_channels=3)(torch.randn(2, 3, 16, 5)).shape == (2, 5, 24)


def test_strides_reduce_frequency_only():
    cnn = make(strides=[2, 1], pools=[1, 1])
    assert cnn(torch.randn(1, 16, 9)).shape == (1, 9, 6 * 8)


def test_every_kernel_spans_one_frame():
    for module in make().modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.kernel_size[1] == 1 and module.stride[1] == 1
        if isinstance(module, torch.nn.MaxPool2d):
            assert module.kernel_size[1] == 1


def test_frame_locality():
    """Changing input frame t changes output frame t and no other."""
    cnn = make()
    x = torch.randn(2, 16, 11)
    y = x.clone()
    y[:, :, 4] += torch.randn(2, 16)
    diff = (cnn(x) - cnn(y)).abs().amax(dim=(0, 2))
    assert diff[4] > 1e-3
    assert torch.all(diff[torch.arange(11) != 4] == 0)


def test_describe_matches_worked_example():
    """25 filters of 3x3 would be 9 weights; here (3,1): 3 weights, then 25*3 = 75 per filter."""
    cnn = FrequencyCNN(40, channels=[25, 50], kernel_sizes=[3, 3], pools=[2, 2])
    first, second = cnn.describe(num_frames=98)
    assert (first.filters, first.filter_shape, first.weights_per_filter) == (25, (1, 3, 1), 3)
    assert (second.filters, second.filter_shape, second.weights_per_filter) == (50, (25, 3, 1), 75)
    assert first.output_shape == (25, 20, 98) and second.output_shape == (50, 10, 98)
    assert first.parameters == 25 * 3 + 2 * 25  # conv weights (no bias before BN) + BN
    assert second.parameters == 50 * 75 + 2 * 50
    assert sum(s.parameters for s in cnn.describe()) == sum(p.numel() for p in cnn.parameters())
    assert "weights/filter" in cnn.summary(98)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": [4], "kernel_sizes": [3, 3]},
        {"pools": [0, 2]},
        {"activation": "tanh"},
        {"in_freq": 2, "pools": [4, 4]},
        {"dropout": 1.0},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match="F=16"):
        make()(torch.randn(2, 15, 5))
