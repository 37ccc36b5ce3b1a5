import pytest
import torch

from speechcnn.model import ClassifierConfig, LSTMHead, build_classifier

TINY = ClassifierConfig(
    n_mels=16,
    cnn_channels=(4, 8),
    cnn_kernels=(3, 3),
    cnn_pools=(2, 2),
    lstm_hidden=12,
    lstm_layers=2,
)


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_invariance(pooling, bidirectional):
    """A clip gives the same logits alone and zero-padded in a batch with its length."""
    torch.manual_seed(0)
    config = ClassifierConfig(
        **{**TINY.__dict__, "pooling": pooling, "bidirectional": bidirectional}
    )
    model = build_classifier(config, num_classes=5, sample_rate=8000).eval()
    short, long = torch.randn(1, 3000) * 0.1, torch.randn(1, 5000) * 0.1
    batch = torch.zeros(2, 5000)
    batch[0, :3000], batch[1] = short[0], long[0]
    with torch.no_grad():
        padded = model(batch, torch.tensor([3000, 5000]))
        alone = torch.cat([model(short), model(long)])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_output_shape_and_parameter_count():
    model = build_classifier(ClassifierConfig(), num_classes=12)
    assert model(torch.randn(2, 16000)).shape == (2, 12)
    assert sum(p.numel() for p in model.parameters()) == 375_981


def test_streamable_flag():
    assert LSTMHead(8, 3, pooling="last").streamable
    assert LSTMHead(8, 3, pooling="mean").streamable
    assert LSTMHead(8, 3, pooling="attention").streamable
    assert not LSTMHead(8, 3, pooling="attention", bidirectional=True).streamable


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_prefix_logits_are_the_head_on_each_prefix(pooling):
    torch.manual_seed(1)
    head = LSTMHead(6, 4, hidden_size=5, num_layers=2, pooling=pooling).eval()
    x = torch.randn(2, 9, 6)  # (B, T, D)
    with torch.no_grad():
        prefix = head.prefix_logits(x)  # (B, T, K)
        alone = torch.stack([head(x[:, : t + 1]) for t in range(9)], dim=1)  # (B, T, K)
    assert prefix.shape == (2, 9, 4)
    torch.testing.assert_close(prefix, alone, atol=1e-5, rtol=1e-5)


def test_model_modules_do_not_import_lightning():
    import subprocess
    import sys

    code = (
        "import sys, speechcnn.model, speechcnn.frontend; print('pytorch_lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kwargs", [{"pooling": "max"}, {"num_classes": 1}, {"dropout": -0.1}])
def test_head_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        LSTMHead(**{"in_features": 8, "num_classes": 3, **kwargs})
