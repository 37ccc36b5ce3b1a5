"""Train a wake-word detector for the phrase recorded in a folder, calibrate it, test it.

    python recipes/wake_word.py --data.keyword_dir ../shared/data/wake_words/computer

Trains as `speechcnn fit --config recipes/wake_word.yaml` does, then chooses the threshold for
`--budget_fa_per_hour` (default 1) on validation recordings, stores it in the checkpoint and
measures the test recordings against a long negative stream. Ends with one JSON line
(`recall_at_1_fa_per_hour`, `recall_at_fa_per_hour`, `threshold`, `negative_hours`,
`test_positives`); det.png and det.json go to the run's log folder.
"""

import sys
from pathlib import Path

from speechcnn.calibration import wake_word_main

if __name__ == "__main__":
    wake_word_main(Path(__file__).with_name("wake_word.yaml"), sys.argv[1:])
