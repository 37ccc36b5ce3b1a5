"""Synthetic data sets in the real layouts, built in tmp_path (no committed data).

Each word is a tone pattern of its own, so a model can learn the task in a few epochs.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import soundfile as sf

from speechcnn.data.speech_commands import ALL_WORDS, KEYWORDS

UNKNOWN_WORDS = ("bed", "bird", "cat", "happy")
WORDS = ("cat", "dog", "bird")  # the classes of make_class_folders
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def word_tone(word: str, sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A clip for `word`: two harmonics at a frequency fixed by the word, random phase and level."""
    index = ALL_WORDS.index(word) if word in ALL_WORDS else len(word)
    f0 = 150.0 + 90.0 * index
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    onset = rng.uniform(0.0, 0.2 * seconds)
    envelope = np.clip((t - onset) / 0.02, 0, 1) * np.clip((onset + 0.6 * seconds - t) / 0.02, 0, 1)
    phase = rng.uniform(0, 2 * np.pi)
    clip = np.sin(2 * np.pi * f0 * t + phase) + 0.5 * np.sin(2 * np.pi * 2.5 * f0 * t + phase)
    clip = 0.3 * rng.uniform(0.5, 1.0) * envelope * clip + 0.003 * rng.standard_normal(t.shape)
    return clip.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sample_rate, subtype="PCM_16")
    return path


def make_speech_commands(
    root: Path,
    clips_per_word: int = 12,
    words: tuple[str, ...] = KEYWORDS + UNKNOWN_WORDS,
    sample_rate: int = 16000,
    seconds: float = 1.0,
    seed: int = 0,
) -> Path:
    """A folder in the speech_commands_v0.02 layout; every 4th speaker is validation, every
    4th+1 testing, the rest training."""
    rng = np.random.default_rng(seed)
    val, test = [], []
    for word in words:
        for i in range(clips_per_word):
            speaker = f"{(ALL_WORDS.index(word) * 1000 + i) * 7919 % 16**8:08x}"
            rel = f"{word}/{speaker}_nohash_0.wav"
            write_wav(root / rel, word_tone(word, sample_rate, seconds, rng), sample_rate)
            if i % 4 == 0:
                val.append(rel)
            elif i % 4 == 1:
                test.append(rel)
    noise = 0.1 * rng.standard_normal(int(sample_rate * 5)).astype(np.float32)
    write_wav(root / "_background_noise_" / "white_noise.wav", noise, sample_rate)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def make_official_test_set(
    root: Path, clips_per_class: int = 3, sample_rate: int = 16000, seed: int = 1
) -> Path:
    """A folder in the official speech_commands_test_set_v0.02 layout."""
    rng = np.random.default_rng(seed)
    for word in KEYWORDS:
        for i in range(clips_per_class):
            write_wav(
                root / word / f"{i:08x}_nohash_0.wav",
                word_tone(word, sample_rate, 1.0, rng),
                sample_rate,
            )
    for i in range(clips_per_class):
        word = UNKNOWN_WORDS[i % len(UNKNOWN_WORDS)]
        clip = word_tone(word, sample_rate, 1.0, rng)
        write_wav(root / "_unknown_" / f"{word}_{i:08x}_nohash_0.wav.wav", clip, sample_rate)
        silence = 0.05 * rng.standard_normal(sample_rate).astype(np.float32)
        write_wav(root / "_silence_" / f"silence_{i}.wav", silence, sample_rate)
    return root


def make_class_folders(root, per_class=10):
    """Mixed formats: 8 kHz mono, 44.1 kHz stereo and 16 kHz FLAC, 0.3-1.2 s long."""
    rng = np.random.default_rng(0)
    for word in WORDS:
        for i in range(per_class):
            seconds = 0.3 + 0.1 * (i % 10)
            if i % 3 == 0:
                write_wav(
                    root / word / f"{word}_{i}.wav", word_tone(word, 8000, seconds, rng), 8000
                )
            elif i % 3 == 1:
                clip = word_tone(word, 44100, seconds, rng)
                write_wav(root / word / "sub" / f"{word}_{i}.wav", np.stack([clip, clip], 1), 44100)
            else:
                write_wav(
                    root / word / f"{word}_{i}.flac", word_tone(word, 16000, seconds, rng), 16000
                )
    (root / "cat" / "notes.txt").write_text("not audio")
    return root


def make_fsdd(root, speakers=("alice", "bob"), takes=12):
    """`{digit}_{speaker}_{take}.wav` at 8 kHz, 0.25-0.6 s long, one tone pattern per digit."""
    rng = np.random.default_rng(0)
    for digit, word in enumerate(DIGIT_WORDS):
        for speaker in speakers:
            for take in range(takes):
                seconds = rng.uniform(0.25, 0.6)
                clip = word_tone(word, 8000, seconds, rng)
                write_wav(root / f"{digit}_{speaker}_{take}.wav", clip, 8000)
    (root / "README.txt").write_text("not a recording")
    return root


class SigtermAt(pl.Callback):
    """Sends this process SIGTERM after training batch `batch` of epoch `epoch`, as a scheduler
    would: a real signal, handled by Lightning's own handler."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def make_wake_words(root: Path, phrases: int = 60, others: int = 80, seed: int = 0) -> Path:
    """`root/wake/` (the phrase: a 0.6 s rising chirp inside 2 s of quiet noise, one file
    corrupt), `root/other/` (steady tones of other words, 1-3 s) and `root/noise/`."""
    rng = np.random.default_rng(seed)
    rate = 16000
    for i in range(phrases):
        t = np.arange(int(0.6 * rate)) / rate
        chirp = 0.3 * np.sin(2 * np.pi * (400 * t + 1500 * t**2)) * rng.uniform(0.5, 1.0)
        clip = 0.002 * rng.standard_normal(2 * rate)
        start = rng.integers(int(0.3 * rate), int(1.1 * rate))
        clip[start : start + len(chirp)] += chirp
        write_wav(root / "wake" / f"{i:03d}.wav", clip.astype(np.float32), rate)
    (root / "wake" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio")
    for i in range(others):
        word = ALL_WORDS[i % len(ALL_WORDS)]
        seconds = rng.uniform(1.0, 3.0)
        write_wav(root / "other" / f"{word}_{i}.wav", word_tone(word, rate, seconds, rng), rate)
    noise = 0.01 * rng.standard_normal(20 * rate).astype(np.float32)
    write_wav(root / "noise" / "hum.wav", noise, rate)
    return root


class FakeSoundDevice:
    """A stand-in for the `sounddevice` module: its InputStream plays `samples` to the callback
    in blocks from a thread, as a microphone would, then stays silent."""

    def __init__(self, samples: np.ndarray) -> None:
        self.samples, self.opened = samples, []

    def InputStream(self, samplerate, channels, dtype, device, blocksize, callback):  # noqa: N802
        self.opened.append({"samplerate": samplerate, "channels": channels, "device": device})
        samples = self.samples

        class Stream:
            def __enter__(self):
                def play():
                    for i in range(0, len(samples), blocksize):
                        block = samples[i : i + blocksize].astype(dtype)[:, None]  # (S,) -> (S, 1)
                        callback(block, len(block), None, None)

                threading.Thread(target=play, daemon=True).start()
                return self

            def __exit__(self, *exc):
                return False

        return Stream()
