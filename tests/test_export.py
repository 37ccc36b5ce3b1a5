"""Exports match PyTorch: TorchScript (features inside), ONNX with features inside and outside,
and int8 dynamic quantization of the LSTM and linear layers."""

import json

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from test_classify import make_checkpoint
from test_streaming import recording, tiny_model

from speechcnn.data.audio import read_audio
from speechcnn.export import (
    DFTLogMel,
    FeaturesToLogits,
    check_exports,
    export_all,
    export_streaming_onnx,
    export_torchscript,
    main,
    onnx_session,
    quantize_int8,
    serialized_size,
    stream_onnx,
)

REAL = SHARED_DATA / "speech_commands_dev"


def clips(seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(23000) / 16000
    return [
        (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 300 * t[:n])).astype(np.float32)
        for n in (16000, 9000, 23000)
    ]


def real_clips(count=6):
    if not (REAL / "testing_list.txt").is_file():
        return []
    names = (REAL / "testing_list.txt").read_text().split()[:count]
    return [read_audio(REAL / name, 16000) for name in names]


@pytest.mark.parametrize("overrides", [{}, {"pooling": "attention"}])
def test_torchscript_any_batch_and_length(tmp_path, overrides):
    model = tiny_model(**overrides)
    scripted = export_torchscript(model, tmp_path / "m.ts")
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    for shape in [(1, 16000), (3, 12345), (2, 400)]:
        wave = torch.randn(shape) * 0.1
        with torch.no_grad():
            reference = model(wave)
            assert (scripted(wave) - reference).abs().max() <= 1e-5
            assert (loaded(wave) - reference).abs().max() <= 1e-5


def test_dft_log_mel_equals_torch_stft():
    model = tiny_model()
    wave = torch.from_numpy(np.stack([clips()[0], clips(1)[0]]))
    with torch.no_grad():
        assert (DFTLogMel(model.features)(wave) - model.features(wave)).abs().max() <= 1e-4
        logits = FeaturesToLogits(model)(model.features(wave))
        assert (logits - model(wave)).abs().max() <= 1e-6


@pytest.mark.parametrize("overrides", [{}, {"pooling": "attention"}])
def test_onnx_matches_pytorch_features_inside_and_outside(tmp_path, overrides):
    pytest.importorskip("onnxruntime")
    model = tiny_model(**overrides)
    export_all(model, ["a", "b", "c", "d", "e"], tmp_path, onnx=True, int8=False)
    diffs = check_exports(model, tmp_path, clips() + real_clips())
    assert set(diffs) == {"torchscript", "onnx_waveform", "onnx_features", "onnx_stream_posteriors"}
    assert max(diffs.values()) <= 1e-4, diffs
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["features"]["n_fft"] == 400 and meta["features"]["center"] is False
    assert meta["stream_inputs"]["carried"] == [400 - 160]


def test_int8_quantizes_lstm_and_linear_and_shrinks(tmp_path):
    model = tiny_model(lstm_hidden=32)
    quantized = quantize_int8(model)
    kinds = {type(m).__module__ for m in quantized.modules()}
    assert any("quantized" in k for k in kinds)
    assert type(quantized.head.lstm) is not torch.nn.LSTM
    assert type(quantized.head.classifier) is not torch.nn.Linear
    assert serialized_size(quantized) < serialized_size(model)
    wave = torch.from_numpy(np.stack([clips()[0], clips(2)[0]]))
    with torch.no_grad():
        probs, q_probs = model(wave).softmax(-1), quantized(wave).softmax(-1)
        assert (probs - q_probs).abs().max() < 0.05
        # lengths (packed sequences) work with the quantized LSTM too
        lengths = torch.tensor([16000, 9000])
        assert quantized(wave, lengths).shape == (2, 5)
    export_torchscript(quantized, tmp_path / "q.ts")
    with torch.no_grad():
        q_loaded = torch.jit.load(str(tmp_path / "q.ts"))
        assert (q_loaded(wave) - quantized(wave)).abs().max() <= 1e-5


def test_export_command(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    wav = tmp_path / "x.wav"
    import soundfile as sf

    sf.write(wav, clips()[1], 16000)
    main([str(ckpt), "--out-dir", str(tmp_path / "out"), "--check", str(wav)])
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert max(result["max_abs_logit_diff"].values()) <= 1e-4
    assert result["sizes"]["int8_state_dict_bytes"] > 0
    for name in (
        "model.ts",
        "model.onnx",
        "model_features.onnx",
        "model_stream.onnx",
        "model_int8.ts",
        "meta.json",
    ):
        assert (tmp_path / "out" / name).is_file()


def test_mfcc_model_has_no_dft_log_mel():
    with pytest.raises(ValueError, match="MFCC"):
        DFTLogMel(tiny_model(n_mfcc=8).features)


def test_exported_graphs_take_clips_shorter_than_one_window(tmp_path):
    pytest.importorskip("onnxruntime")
    from speechcnn.classify import classify_waveforms
    from speechcnn.export import export_onnx, onnx_session

    model = tiny_model().eval()
    export_torchscript(model, tmp_path / "model.ts")
    export_onnx(model, tmp_path / "model.onnx", features_inside=True)
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    session = onnx_session(tmp_path / "model.onnx")
    n_fft = model.features.n_fft
    for length in (1, 100, n_fft - 1):
        wave = (0.1 * torch.randn(1, length)).float()
        with torch.no_grad():
            expected = torch.log_softmax(
                model(torch.nn.functional.pad(wave, (0, n_fft - length))), -1
            )
            as_classify = classify_waveforms(model, [wave[0].numpy()])
            torch.testing.assert_close(torch.log(as_classify), expected, atol=1e-5, rtol=0)
            got = torch.log_softmax(scripted(wave), -1)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        logits = session.run(None, {"waveforms": wave.numpy()})[0]
        torch.testing.assert_close(
            torch.log_softmax(torch.from_numpy(logits), -1), expected, atol=1e-4, rtol=0
        )


def test_an_unusable_out_dir_is_one_line(tmp_path, capsys):
    import os

    from speechcnn.cli import main as cli_main

    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    cases = [(a_file, "is a file: expected a folder"), (a_file / "sub", "cannot write to")]
    if os.geteuid() != 0:  # root writes to read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o500)
        cases.append((read_only, "cannot write to"))
    for out_dir, why in cases:
        with pytest.raises(SystemExit) as info:
            cli_main(["export", str(ckpt), "--out-dir", str(out_dir), "--no-onnx", "--no-int8"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("speechcnn export: error: ") and str(out_dir) in line and why in line


@pytest.mark.parametrize("overrides", [{}, {"pooling": "attention"}])
def test_the_streaming_graph_with_explicit_state_equals_the_streamer(tmp_path, overrides):
    pytest.importorskip("onnxruntime")
    model, wave = tiny_model(**overrides), recording(1.2, seed=2)
    shapes = export_streaming_onnx(model, tmp_path / "stream.onnx")
    assert shapes["samples"] == [model.features.hop_length] and shapes["h"] == [2, 1, 8]
    posteriors, expected = stream_onnx(onnx_session(tmp_path / "stream.onnx"), model, wave)
    assert posteriors.shape == expected.shape == (model.features.num_frames(len(wave)), 5)
    assert np.abs(posteriors - expected).max() <= 1e-5
