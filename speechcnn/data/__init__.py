"""Data sets as LightningDataModules, and the audio reading they share."""

from speechcnn.data.audio import AudioError, read_audio
from speechcnn.data.base import ClipDataModule
from speechcnn.data.folder import FolderDataError, LabelledAudioDataModule
from speechcnn.data.fsdd import FSDDDataModule
from speechcnn.data.speech_commands import DataError, SpeechCommandsDataModule

__all__ = [
    "AudioError",
    "ClipDataModule",
    "DataError",
    "FSDDDataModule",
    "FolderDataError",
    "LabelledAudioDataModule",
    "SpeechCommandsDataModule",
    "read_audio",
]
