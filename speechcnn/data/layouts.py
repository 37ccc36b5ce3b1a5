"""The data sets by folder layout, and `speechcnn check-data` over any of them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from speechcnn.data.check import CheckReport
from speechcnn.data.folder import FolderDataError, LabelledAudioDataModule
from speechcnn.data.fsdd import FSDDDataModule
from speechcnn.data.speech_commands import GET_DATA, DataError, SpeechCommandsDataModule
from speechcnn.data.store import cache_home

LAYOUT_NAMES = {
    "speech_commands": "Speech Commands v0.02 (word folders and split lists)",
    "folder": "class sub-folders (ROOT/<class>/<file>)",
    "fsdd": "FSDD recordings ({digit}_{speaker}_{take}.wav)",
}
LAYOUTS = tuple(LAYOUT_NAMES)


def detect_layout(root: Path) -> str:
    """speech_commands (split lists), fsdd (flat digit_speaker_take files) or folder."""
    if (root / "validation_list.txt").is_file() or (root / "testing_list.txt").is_file():
        return "speech_commands"
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return "folder"
    return "fsdd"


def check_layout(layout: str, root: Path, args: argparse.Namespace) -> CheckReport:
    """The data check of `root` read as `layout` (DataError, FolderDataError: it is not)."""
    rate, seconds = args.sample_rate or (8000 if layout == "fsdd" else 16000), args.max_seconds
    kwargs = {"root": str(root), "sample_rate": rate, "check": False, "cache_dir": args.cache_dir}
    if layout == "speech_commands":  # its check flags clips longer than 1.5 clip lengths
        module = SpeechCommandsDataModule(clip_seconds=(seconds or 1.5) / 1.5, **kwargs)
    elif layout == "fsdd":
        module = FSDDDataModule(max_seconds=seconds, **kwargs)
    else:
        module = LabelledAudioDataModule(manifest=args.manifest, max_seconds=seconds, **kwargs)
    return module.data_check(cache=not args.no_cache)


def _fail(message: str) -> NoReturn:
    print(f"speechcnn check-data: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """`speechcnn check-data ROOT`: print the summary table, write the JSON report; exit 1
    when files are unusable or the split lists have problems."""
    parser = argparse.ArgumentParser(
        prog="speechcnn check-data",
        description="Data check: find every bad audio file and split-list problem before training.",
    )
    parser.add_argument("root", help="data folder (or the base folder of --manifest paths)")
    parser.add_argument(
        "--layout",
        choices=("auto", *LAYOUTS),
        default="auto",
        help="how the folder is laid out (default: auto, recognised from its contents)",
    )
    parser.add_argument(
        "--manifest", help="CSV manifest (path,label[,split]) for a folder (default: none)"
    )
    parser.add_argument("--sample-rate", type=int, help="expected rate (default: by layout)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="flag clips longer than this (default: 1.5 for Speech Commands, else none)",
    )
    parser.add_argument(
        "--report",
        default="check_data_report.json",
        help="JSON report path (default: check_data_report.json)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="re-read every file (default: reuse the cached results)",
    )
    parser.add_argument("--cache-dir", help=f"cache folder (default {cache_home()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    root = Path(args.root)
    layouts = "; ".join(LAYOUT_NAMES.values())
    if not root.is_dir() or not any(root.iterdir()):
        what = "is a file, not a folder" if root.exists() else "does not exist"
        what = "is empty" if root.is_dir() else what
        _fail(f"{root} {what}: expected a data folder in one of the layouts {layouts}")
    if args.manifest or args.layout != "auto":
        tried = ["folder" if args.manifest else args.layout]
    else:  # the detected layout first, then the others: report why each one failed
        first = detect_layout(root)
        tried = [first, *(layout for layout in LAYOUTS if layout != first)]
    failures = []
    for layout in tried:
        try:
            report = check_layout(layout, root, args)
            break
        except (DataError, FolderDataError) as error:
            failures.append(f"as {LAYOUT_NAMES[layout]}: {str(error).replace(f' {GET_DATA}', '')}")
    else:
        if len(failures) == 1:
            _fail(failures[0])
        _fail(f"{root} is in none of the layouts tried: " + " | ".join(failures))
    print(report.table())
    print(f"JSON report: {report.write_json(args.report)}")
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
