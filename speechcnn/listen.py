"""`speechcnn listen MODEL`: keywords from the microphone, printed as they are spoken.

Blocks of audio (sounddevice, mono, at the model's rate) go through `spotting.detections`, as
in `speechcnn spot`, with a calibrated model's settings unless options override them; each
detection is spot's JSON line, printed once its word has ended. `--input FILE` plays a file at
real-time pace instead and prints what `spot` prints for it.
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
from collections.abc import Iterator

import numpy as np

from speechcnn.classify import LoadedModel
from speechcnn.spotting import add_spot_options, print_detections

BLOCK_S = 0.1  # seconds of audio per block read


def file_blocks(samples: np.ndarray, sample_rate: int, speed: float = 1.0) -> Iterator[np.ndarray]:
    """A recording's blocks of `BLOCK_S`, each when heard at `speed` times real time (0: now)."""
    size = round(BLOCK_S * sample_rate)
    began = time.monotonic()
    for i in range(0, len(samples), size):
        if speed > 0:
            time.sleep(max(0.0, began + i / sample_rate / speed - time.monotonic()))
        yield samples[i : i + size]


def microphone_blocks(sample_rate: int, device: str | int | None = None) -> Iterator[np.ndarray]:
    """The microphone's blocks of `BLOCK_S` (mono float32) until the caller stops; ValueError
    if sounddevice is missing or the device cannot record at this rate."""
    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: PortAudio itself is missing
        raise ValueError(
            f"speechcnn listen needs sounddevice ({error}): pip install 'speechcnn[listen]'"
        ) from error
    blocks: queue.Queue[np.ndarray] = queue.Queue()

    def callback(indata: np.ndarray, frames: int, when: object, status: object) -> None:
        if status:
            print(f"speechcnn listen: {status}", file=sys.stderr)
        blocks.put(indata[:, 0].copy())  # (S, 1) -> (S,)

    try:
        stream = sounddevice.InputStream(
            samplerate=sample_rate, channels=1, dtype="float32", device=device,
            blocksize=round(BLOCK_S * sample_rate), callback=callback,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 (PortAudio's errors: no device, bad rate)
        raise ValueError(
            f"cannot record at {sample_rate} Hz from device {device}: {error}"
        ) from error
    with stream:
        while True:
            yield blocks.get()


def main(argv: list[str] | None = None) -> None:
    """`speechcnn listen MODEL [--input FILE] [--seconds N] [--threshold T] ...`."""
    from speechcnn.data.audio import read_audio

    parser = argparse.ArgumentParser(
        prog="speechcnn listen",
        description="Detect keywords live in the microphone's audio (or a file's, at real-time "
        "pace); one JSON line per detection: keyword, start and end time (s), score.",
    )
    parser.add_argument("model", help="a trained checkpoint (.ckpt)")
    parser.add_argument(
        "--input", help="a recording to play instead of the microphone (default: the microphone)"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0,
        help="--input's pace, times real time (0: as fast as possible; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=None,
        help="stop after this much audio (default: at the end of --input, or Ctrl-C)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=None, help="sounddevice input device (default: the system's)"
    )
    add_spot_options(parser)
    args = parser.parse_args(argv)

    def blocks_of(loaded: LoadedModel) -> Iterator[np.ndarray]:
        rate = loaded.sample_rate
        if args.input is not None:
            blocks = file_blocks(read_audio(args.input, rate), rate, args.speed)
        else:
            device = int(args.device) if str(args.device).isdigit() else args.device
            blocks = microphone_blocks(rate, device)
        if args.seconds is None:
            yield from blocks
            return
        limit, seen = round(args.seconds * rate), 0
        for block in blocks:
            yield block[: limit - seen]
            seen += len(block)
            if seen >= limit:
                return  # before asking a microphone for one block more

    try:
        print_detections(parser, args, blocks_of)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how listening ends


cli = main  # `speechcnn listen` (EXTRA_COMMANDS in speechcnn.cli)
