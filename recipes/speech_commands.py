"""Train and evaluate on Google Speech Commands v0.02 (12 classes).

    python recipes/speech_commands.py --data.root ../shared/data/speech_commands_dev

Any `--section.key value` override of the Lightning CLI works here; an interrupted run resumes
from its last checkpoint. Ends with one JSON line of test metrics (also in metrics.json).
"""

import sys
from pathlib import Path

from speechcnn.recipe import recipe_main

if __name__ == "__main__":
    recipe_main(Path(__file__).with_name("speech_commands.yaml"), sys.argv[1:])
