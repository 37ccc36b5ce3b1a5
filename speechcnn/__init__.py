"""speechcnn: keyword spotting with a frequency-only CNN front end and an LSTM head."""

from speechcnn.features import LogMelFeatures
from speechcnn.frontend import FrequencyCNN
from speechcnn.model import ClassifierConfig, LSTMHead, SpeechClassifier, build_classifier

__all__ = [
    "ClassifierConfig",
    "FrequencyCNN",
    "LSTMHead",
    "LogMelFeatures",
    "SpeechClassifier",
    "build_classifier",
]
__version__ = "0.1.0"
