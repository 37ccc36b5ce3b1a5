"""Streaming equals offline: random chunkings of a recording give the offline frames and
per-frame posteriors within 1e-5 (float32), with nothing carried but STFT overlap, (h, c) and,
for "mean" and "attention" pooling, the running sums of the pooling."""

import numpy as np
import pytest
import torch

from speechcnn import fused_step
from speechcnn.model import ClassifierConfig, build_classifier, empty_pool_state, pool_frame
from speechcnn.streaming import (
    NotStreamableError,
    Streamer,
    check_streamable,
    offline_posteriors,
    stream_posteriors,
)

TOL = 1e-5


def tiny_model(seed: int = 0, **overrides):
    """A random-weight tiny classifier with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    settings = {
        "n_mels": 16,
        "cnn_channels": (4, 6),
        "cnn_kernels": (3, 5),
        "cnn_pools": (2, 1),
        "lstm_hidden": 8,
        "lstm_layers": 2,
        "win_ms": 25.0,
        "hop_ms": 10.0,
        "pooling": "last",
    }
    config = ClassifierConfig(**{**settings, **overrides})
    model = build_classifier(config, num_classes=5, sample_rate=16000)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0.0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1.0, 0.2)
            module.bias.data.normal_(0.0, 0.2)
    return model.eval()


def recording(seconds: float = 0.6, seed: int = 0) -> torch.Tensor:
    """Noise with a louder tone burst, so frames differ."""
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    t = np.arange(n) / 16000
    x = 0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440 * t) * (t > seconds / 3)
    return torch.from_numpy(x.astype(np.float32))


def random_chunks(n: int, rng: np.random.Generator, max_chunk: int) -> list[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(0, max_chunk + 1)))  # 0-sample chunks included
    return sizes


def run_chunked(model, wave: torch.Tensor, sizes: list[int], fused: bool = True):
    streamer = Streamer(model, fused=fused)
    feats, posts, start = [], [], 0
    for size in sizes:
        step = streamer.push(wave[start : start + size])
        assert step.first_frame == sum(p.shape[0] for p in posts)
        feats.append(step.features)
        posts.append(step.posteriors)
        start += size
    return torch.cat(feats, dim=1), torch.cat(posts, dim=0), streamer


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_chunk", [1, 7, 160, 401, 4000, 20000])
def test_random_chunkings_equal_offline(seed, max_chunk, fused):
    model = tiny_model()
    wave = recording(0.6 if max_chunk > 1 else 0.1, seed)
    rng = np.random.default_rng([seed, max_chunk])
    sizes = random_chunks(len(wave), rng, max_chunk)
    feats, posts, streamer = run_chunked(model, wave, sizes, fused)
    assert isinstance(streamer._step, torch.jit.ScriptModule) == fused
    with torch.no_grad():
        ref_feats = model.features(wave[None])[0]  # (F, T)
    ref_posts = offline_posteriors(model, wave[None])[0]  # (T, K)
    assert feats.shape == ref_feats.shape
    assert posts.shape == ref_posts.shape
    assert streamer.frames_done == model.features.num_frames(len(wave))
    assert (feats - ref_feats).abs().max() <= TOL
    assert (posts - ref_posts).abs().max() <= TOL


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_mfcc": 8},
        {"input_norm": False, "activation": "elu"},
        {"cnn_strides": (2, 1), "cnn_pools": (1, 2), "activation": "gelu"},
        {"lstm_layers": 1},
        {"win_ms": 40.0, "hop_ms": 20.0},  # the recipe's framing: frames overlap by half
        {"pooling": "attention", "cnn_kernels": (5, 3), "cnn_pools": (2, 2)},
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_other_configurations_stream_exactly(overrides, fused):
    model = tiny_model(seed=4, **overrides)
    wave = recording(0.4, seed=6)
    rng = np.random.default_rng(7)
    feats, posts, _ = run_chunked(model, wave, random_chunks(len(wave), rng, 900), fused)
    with torch.no_grad():
        ref_feats = model.features(wave[None])[0]
    assert (feats - ref_feats).abs().max() <= TOL
    assert (posts - offline_posteriors(model, wave[None])[0]).abs().max() <= TOL


@pytest.mark.parametrize("fused", [True, False])
def test_push_records_no_gradient(fused):
    # push runs outside any autograd context: a chunk that requires grad must not make the
    # outputs carry a graph (the fused step holds constants; the modules path is in inference)
    model = tiny_model(seed=2)
    step = Streamer(model, fused=fused).push(recording(0.2, seed=1).requires_grad_())
    assert step.posteriors.shape[0] > 0
    assert not step.posteriors.requires_grad and not step.features.requires_grad


def test_one_sample_chunks_and_final_frame_equals_offline_logits():
    model = tiny_model(seed=1)
    wave = recording(0.12, seed=3)
    _, posts, _ = run_chunked(model, wave, [1] * len(wave))
    with torch.no_grad():
        clip_probs = model(wave[None]).softmax(-1)[0]  # "last" pooling: final frame's output
    assert (posts[-1] - clip_probs).abs().max() <= TOL
    assert torch.allclose(posts.sum(-1), torch.ones(len(posts)), atol=1e-5)


def test_frames_batched_through_front_end_any_step_size():
    model = tiny_model(seed=2)
    wave = recording(0.5, seed=4)
    ref = offline_posteriors(model, wave[None])[0]
    streamer = Streamer(model, max_frames_per_step=3)
    posts = torch.cat(
        [streamer.push(wave[:5000]).posteriors, streamer.push(wave[5000:]).posteriors]
    )
    assert (posts - ref).abs().max() <= TOL


def test_stream_posteriors_and_reset():
    model = tiny_model(seed=3)
    wave = recording(0.7, seed=5)
    ref = offline_posteriors(model, wave[None])[0]
    assert (stream_posteriors(model, wave, chunk_samples=333) - ref).abs().max() <= TOL
    streamer = Streamer(model)
    first = streamer.push(wave).posteriors
    streamer.reset()
    again = streamer.push(wave.numpy()).posteriors  # numpy input too
    assert torch.equal(first, again)


def test_short_and_empty_chunks_emit_nothing():
    streamer = Streamer(tiny_model())
    step = streamer.push(torch.zeros(0))
    assert step.features.shape == (16, 0) and step.posteriors.shape == (0, 5)
    step = streamer.push(torch.zeros(streamer.n_fft - 1))
    assert step.posteriors.shape == (0, 5)
    assert streamer.push(torch.zeros(1)).posteriors.shape == (1, 5)
    assert streamer.frame_end_time(0) == pytest.approx(0.025)
    with pytest.raises(ValueError, match=r"\(S,\)"):
        streamer.push(torch.zeros(1, 10))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("max_chunk", [1, 160, 4000])
def test_pooling_heads_stream_exactly(pooling, max_chunk, fused):
    # Each posterior is the model's on the audio so far: at the last frame, the whole clip's.
    model = tiny_model(seed=6, pooling=pooling)
    wave = recording(0.1 if max_chunk == 1 else 0.6, seed=9)
    sizes = random_chunks(len(wave), np.random.default_rng(max_chunk), max_chunk)
    _, posts, streamer = run_chunked(model, wave, sizes, fused)
    assert (posts - offline_posteriors(model, wave[None])[0]).abs().max() <= TOL
    with torch.no_grad():
        clip_probs = model(wave[None]).softmax(-1)[0]
    assert (posts[-1] - clip_probs).abs().max() <= TOL
    streamer.reset()  # a new utterance: nothing of the old one is pooled
    assert (streamer.push(wave).posteriors - posts).abs().max() <= TOL


def test_pooling_carries_its_state_and_never_overflows():
    x = torch.randn(6, 3)
    # exp(1000) overflows float32; a score 5000 below the rest weighs nothing
    scores = torch.tensor([1000.0, 1050.0, 980.0, 1001.0, 1060.0, 1002.0])
    scores[2] = -4000.0
    reference = torch.stack([x[: t + 1].T @ scores[: t + 1].softmax(0) for t in range(6)])
    log_total, pooled = empty_pool_state(1, 3)  # (1, 1) and (1, 3)
    rows = []
    for t in range(6):
        pooled, log_total = pool_frame(scores[None, t : t + 1], x[None, t], log_total, pooled)
        rows.append(pooled[0])
    torch.testing.assert_close(torch.stack(rows), reference)
    torch.testing.assert_close(log_total[0], torch.logsumexp(scores, 0, keepdim=True))


def test_streams_where_a_frozen_module_cannot_run():
    # Without the graph executor's optimisations a frozen module fails; the streamer then runs
    # the plain compiled step, with the same results.
    model = tiny_model(seed=8, pooling="attention")
    wave = recording(0.3, seed=11)
    with torch.jit.optimized_execution(False):
        streamer = Streamer(model)
        posts = torch.cat(
            [streamer.push(wave[i : i + 500]).posteriors for i in range(0, 4800, 500)]
        )
    assert isinstance(streamer._step, torch.jit.ScriptModule)
    assert (posts - offline_posteriors(model, wave[None])[0]).abs().max() <= TOL


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_bidirectional_models_are_refused(pooling):
    model = tiny_model(bidirectional=True, pooling=pooling)
    with pytest.raises(NotStreamableError, match="bidirectional") as info:
        Streamer(model)
    assert "bidirectional=false" in str(info.value) and "--mode window" in str(info.value)
    with pytest.raises(NotStreamableError):
        check_streamable(model)


def test_bad_arguments():
    with pytest.raises(ValueError, match="0"):
        Streamer(tiny_model(), max_frames_per_step=0)
    with pytest.raises(ValueError, match="-1"):
        stream_posteriors(tiny_model(), torch.zeros(100), chunk_samples=-1)


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_float_models_stream_fused_and_int8_models_stream_through_their_modules(pooling):
    from speechcnn.export import quantize_int8

    model = tiny_model(seed=5, pooling=pooling)
    assert isinstance(Streamer(model)._step, torch.jit.ScriptModule)
    quantized = quantize_int8(model)
    streamer = Streamer(quantized)
    assert streamer._step is None  # SpeechClassifier.infer, the int8 modules themselves
    wave = recording(0.5, seed=8)
    posts = torch.cat([streamer.push(wave[i : i + 160]).posteriors for i in range(0, 8000, 160)])
    # int8 activations are quantized per call, so chunked int8 is close to, not equal to,
    # offline int8; the float model is the exact one.
    offline = offline_posteriors(quantized, wave[None])[0]
    assert (posts - offline).abs().max() < 0.05


@pytest.mark.parametrize(
    "overrides",
    [
        {"pooling": "last"},
        {"pooling": "mean", "lstm_layers": 1},
        {"pooling": "attention", "cnn_strides": (2, 1), "activation": "gelu"},
        {"n_mfcc": 8, "input_norm": False, "pooling": "attention"},
    ],
)
def test_fused_step_equals_the_models_own_modules(overrides):
    """FrameStep, built from the weights, computes SpeechClassifier.infer: the features, the
    posteriors and every state tensor, for whole chunks and frame by frame."""
    model = tiny_model(seed=3, **overrides)
    step = fused_step.FrameStep(model)
    wave = recording(0.3, seed=5)
    hop, n_fft = model.features.hop_length, model.features.n_fft
    state = model.head.initial_state()
    with torch.no_grad():
        for frames in (9, 1, 2, 12):  # more than max_step_frames, then fewer
            span, wave = wave[: (frames - 1) * hop + n_fft], wave[frames * hop :]
            features, posteriors, *fused_state = step(span, *state)
            ref_features, logits, state = model.infer(span[None], state)
            torch.testing.assert_close(features, ref_features[0].T, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(posteriors, logits[0].softmax(-1), atol=1e-6, rtol=1e-5)
            for fused, own in zip(fused_state, state, strict=True):
                assert fused.shape == own.shape
                torch.testing.assert_close(fused, own, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="SpeechClassifier.infer"):
        fused_step.FrameStep(model.train().eval().requires_grad_(False).double())
