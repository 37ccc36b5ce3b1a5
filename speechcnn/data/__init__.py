"""Data sets as LightningDataModules, and the audio reading they share."""

from speechcnn.data.audio import AudioError, read_audio
from speechcnn.data.speech_commands import DataError, SpeechCommandsDataModule

__all__ = ["AudioError", "DataError", "SpeechCommandsDataModule", "read_audio"]
