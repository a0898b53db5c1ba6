"""LibriSpeech-layout folders → tensorflow-datasets ArrayRecord, and a TensorFlow-free reader.

`tfds.features.Audio` needs TensorFlow just to be constructed, so this builder stores audio as a
plain `Tensor(shape=(None,), dtype=int16)` at 16 kHz; everything here runs with tensorflow-datasets
alone. Reading goes through `tfds.data_source(...)`: ArrayRecord random access, which grain shuffles
and shards without TensorFlow.

Examples are written in scan order (`disable_shuffling`, integer keys) so the per-example sample
counts saved in the dataset's metadata line up with data-source indices: the pipeline plans length
buckets from them without decoding a single record.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from llada_jax.data import librispeech
from llada_jax.data.audio import (
  SAMPLE_RATE,
  AudioError,
  float32_to_int16,
  int16_to_float32,
  load_audio,
  resample,
)

log = logging.getLogger(__name__)

BUILDER_NAME = "librispeech_folder"
OFFICIAL = "librispeech"


@dataclasses.dataclass(eq=False)
class LibriSpeechFolderConfig(tfds.core.BuilderConfig):
  """`root`: a LibriSpeech root (split folders, or `LibriSpeech/` holding them) or one split folder;
  None means the manual dir."""

  root: str | None = None


class LibriSpeechFolder(tfds.core.GeneratorBasedBuilder):
  """Any LibriSpeech-layout corpus (the real one or a synthetic one) as ArrayRecord, no
  TensorFlow."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "int16 audio at 16 kHz, per-example sample counts in metadata."}
  BUILDER_CONFIGS = [LibriSpeechFolderConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point the manual dir at a LibriSpeech root: the folder holding split folders (test-clean, "
      "dev-clean, train-clean-100, …) or the `LibriSpeech/` folder the tarballs unpack to, or at "
      "one split folder (SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac + SPEAKER-CHAPTER.trans.txt).")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # tfds looks for a checksums file beside the builder's source through `importlib_resources`, a
    # package tensorflow-datasets does not install; there are no downloads, hence no checksums.
    return None

  def __init__(self, *args, file_format="array_record", strict: bool = False, **kwargs):
    """`strict=True`: the first bad file or transcript line stops the build instead of being skipped
    and listed in the metadata's `errors`."""
    self._strict = strict
    super().__init__(*args, file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Not `dataset_info_from_configs`: that looks for README/citation files beside the package
    # through importlib resources, which fails for editable installs run from another folder.
    return tfds.core.DatasetInfo(
        builder=self,
        description="LibriSpeech-layout speech corpus (16 kHz int16 audio, uppercase transcripts).",
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
            "text": tfds.features.Text(),
            "speaker_id": tfds.features.Text(),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("audio", "text"),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(sample_rate=SAMPLE_RATE, num_samples={}, errors={}),
    )

  def _split_generators(self, dl_manager):
    root = self.builder_config.root or dl_manager.manual_dir
    root = os.fspath(root)
    splits = librispeech.split_folders(root)
    if not splits:  # the root is itself one split folder
      splits = {librispeech.split_name(os.path.basename(os.path.normpath(root))): root}
    return {name: self._generate_examples(name, path) for name, path in splits.items()}

  def _generate_examples(self, split: str, folder: str):
    scan = librispeech.scan_librispeech(folder, strict=self._strict)
    errors = [[e.id, e.path, e.reason] for e in scan.errors]
    lengths = []
    self.info.metadata["num_samples"][split] = lengths
    self.info.metadata["errors"][split] = errors
    for utt in scan.utterances:
      try:
        audio = load_audio(utt.path, SAMPLE_RATE)
      except AudioError as e:
        if self._strict:
          raise
        errors.append([utt.id, utt.path, str(e)])
        continue
      # Integer keys in scan order: with disable_shuffling the writer sorts by key, so index i of
      # the prepared split is lengths[i].
      key = len(lengths)
      lengths.append(int(audio.shape[0]))
      yield key, {"audio": float32_to_int16(audio), "text": utt.text, "speaker_id": utt.speaker,
                  "id": utt.id}
    if errors:
      log.warning("%s: %d problem(s) (kept in the metadata's errors), first: %s", split,
                  len(errors), errors[0])


def prepare(root: str | os.PathLike, data_dir: str | os.PathLike, strict: bool = False
            ) -> LibriSpeechFolder:
  """Builds `librispeech_folder` from the LibriSpeech-layout folders under `root` into
  `data_dir`."""
  builder = LibriSpeechFolder(data_dir=os.fspath(data_dir), strict=strict)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)))
  return builder


def _tensorflow_missing() -> bool:
  return importlib.util.find_spec("tensorflow") is None


def parse_spec(spec: str) -> tuple[str, str]:
  """"tfds:NAME/SPLIT" → (NAME, SPLIT); NAME may carry a config and version: "NAME/CONFIG:1.0.0"."""
  if not spec.startswith("tfds:"):
    raise ValueError(f"{spec!r}: a tensorflow-datasets spec looks like tfds:NAME/SPLIT")
  body = spec[len("tfds:"):]
  name, sep, split = body.rpartition("/")
  if not sep or not name or not split:
    raise ValueError(f"{spec!r}: expected tfds:NAME/SPLIT, e.g. tfds:{BUILDER_NAME}/test_clean")
  return name, split


class TfdsReader:
  """Random access to one split: `reader[i]` → {id, audio float32 [n] at 16 kHz, text, speaker}."""

  def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None):
    base = name.split("/")[0].split(":")[0]
    if base == OFFICIAL and _tensorflow_missing():
      raise ImportError(
          f"tfds:{name}: the official tensorflow-datasets `librispeech` builder uses "
          "tfds.features.Audio, which needs TensorFlow even to read. Install it with "
          "`pip install tensorflow-cpu` (a ~260 MB wheel, deliberately not a core dependency), "
          f"or convert the extracted LibriSpeech folders without TensorFlow: "
          f"`llada_jax.data.tfds_librispeech.prepare(ROOT, DATA_DIR)` and read "
          f"tfds:{BUILDER_NAME}/SPLIT.")
    self.name, self.split = name, split
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises a zoo of types (DatasetNotFoundError, AssertionError…)
      where = f" in {data_dir}" if data_dir else ""
      raise FileNotFoundError(f"tfds:{name}/{split}: not prepared{where} or unreadable: {e}. "
                              f"Prepare folders with llada_jax.data.tfds_librispeech.prepare(ROOT, "
                              f"DATA_DIR).") from e
    info = self._source.dataset_info
    self.sample_rate = int(info.metadata.get("sample_rate", SAMPLE_RATE)) if info.metadata else \
        SAMPLE_RATE
    self._lengths = None
    if info.metadata and split in info.metadata.get("num_samples", {}):
      lengths = np.asarray(info.metadata["num_samples"][split], np.int64)
      if lengths.shape[0] == len(self._source):
        self._lengths = lengths
    self.errors = [librispeech.ErrorRecord(*e) for e in
                   (info.metadata.get("errors", {}).get(split, []) if info.metadata else [])]

  def __len__(self) -> int:
    return len(self._source)

  def lengths(self) -> np.ndarray:
    """Samples per example at 16 kHz: from the metadata when the split was prepared here, otherwise
    read once from every record (a full pass over the split)."""
    if self._lengths is None:
      log.warning("tfds:%s/%s: no stored sample counts; reading all %d records once", self.name,
                  self.split, len(self))
      self._lengths = np.asarray([self._length_of(self._source[i]) for i in range(len(self))],
                                 np.int64)
    return self._lengths

  def _length_of(self, ex) -> int:
    n = int(np.asarray(ex["audio"]).shape[0])
    return n if self.sample_rate == SAMPLE_RATE else -(-n * SAMPLE_RATE // self.sample_rate)

  def __getitem__(self, i: int) -> dict:
    ex = self._source[int(i)]
    raw = np.asarray(ex["audio"])
    if raw.ndim != 1 or raw.shape[0] == 0:
      raise AudioError(f"tfds:{self.name}/{self.split}[{i}]: audio of shape {raw.shape}")
    # The official builder decodes to int64 holding int16 values; ours stores int16.
    audio = int16_to_float32(raw) if raw.dtype.kind in "iu" else raw.astype(np.float32)
    if self.sample_rate != SAMPLE_RATE:
      audio = resample(audio, self.sample_rate, SAMPLE_RATE)
    return {"id": _text(ex.get("id", str(i))), "audio": audio, "text": _text(ex.get("text", "")),
            "speaker": _text(ex.get("speaker_id", ""))}


def _text(value) -> str:
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_tfds(spec: str, data_dir: str | os.PathLike | None = None) -> TfdsReader:
  name, split = parse_spec(spec)
  return TfdsReader(name, split, data_dir)
