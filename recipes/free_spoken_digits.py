"""Train and evaluate on the Free Spoken Digit Dataset (10 digits, 8 kHz, variable length).

    python recipes/free_spoken_digits.py --data.root ../shared/data/fsdd/recordings
    python recipes/free_spoken_digits.py --data.root ../shared/data/fsdd/recordings \
        --data.split speakers --data.test_speakers '[george]' \
        --trainer.default_root_dir runs/fsdd_speakers

`--data.split takes` (default) is the data set's own split: takes 0-4 test, 5-49 training (5-9
held out for validation); `speakers` tests on speakers never heard in training. Any
`--section.key value` override of the Lightning CLI works; an interrupted run resumes from its
last checkpoint. Ends with one JSON line of test metrics (also in metrics.json).
"""

import sys
from pathlib import Path

from speechcnn.recipe import recipe_main

if __name__ == "__main__":
    recipe_main(Path(__file__).with_name("free_spoken_digits.yaml"), sys.argv[1:])
