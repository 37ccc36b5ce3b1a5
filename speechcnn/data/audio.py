"""Reading audio files: soundfile to decode, librosa to resample, errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


def wav_files(folder: str | Path) -> list[Path]:
    """The .wav files directly in `folder`, sorted, whatever the case of the suffix (.WAV)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav" and p.is_file())


def read_audio(path: str | Path, sample_rate: int | None = None) -> np.ndarray:
    """Decode any format libsndfile reads to mono float32 in [-1, 1] (channels averaged),
    resampled to `sample_rate` if given; AudioError says why a file is unusable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: cannot read audio ({error})") from error
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: the file holds NaN or infinite samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]  # (S, C) -> (S,)
    if sample_rate is not None and file_rate != sample_rate:
        mono = resample(mono, file_rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality, through librosa) of a 1-D signal."""
    import librosa  # imported here: it is slow to import and most runs never resample

    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    return librosa.resample(samples, orig_sr=orig_rate, target_sr=target_rate, res_type="soxr_hq")


def fit_length(samples: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad or trim a 1-D signal to exactly `num_samples` samples."""
    if samples.shape[0] >= num_samples:
        return samples[:num_samples]
    return np.pad(samples, (0, num_samples - samples.shape[0]))
