"""grain pipeline: a speech source → shuffled, host-sharded, length-bucketed batches of 16 kHz
audio.

Batches have a static batch size and one of a few fixed sample counts (the buckets), so a jitted
step compiles once per bucket and never again: the last batch of a bucket is padded with
`valid=False` rows.

Bucketing is planned from per-utterance lengths (file headers, or the lengths stored by the tfds
builder) for the *global* batch, and each host takes its own rows of every global batch. Slicing the
examples per host first and bucketing locally would hand hosts different bucket shapes at the same
step, which a multi-host jit cannot run. The plan is a pure function of (seed, epoch), so a grain
`MapDataset` over batch numbers is random-access and its iterator state (`get_state`/`set_state`) is
just the next batch number: resuming replays exactly the same batches.

Batches are dicts of numpy arrays and lists:
  audio [B, S] float32, audio_len [B] int32, valid [B] bool, index [B] int64 (source index, -1 =
  pad), ids / text / speaker: lists of B str ("" for padding),
  errors: ErrorRecords of the rows that failed to decode, epoch and step: ints.
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp

import grain
import numpy as np

from llada_jax.data import files, librispeech, manifest
from llada_jax.data.audio import SAMPLE_RATE, AudioError, audio_length, load_audio
from llada_jax.data.librispeech import ErrorRecord

TOO_LONG = ("trim", "drop")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int = 8  # per host
  # Samples per bucket: 5 / 10 / 20 / 30 s at 16 kHz; the last is Whisper's 30 s window.
  buckets: tuple[int, ...] = (80000, 160000, 320000, 480000)
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = 1  # None: repeat forever, reshuffled every epoch
  # Longer than the last bucket: "trim" as Whisper's feature extractor does, or "drop" (an error
  # record).
  too_long: str = "trim"
  num_threads: int = 2  # grain read threads, each decoding whole batches
  prefetch: int = 4

  def __post_init__(self):
    if not isinstance(self.batch_size, int) or self.batch_size <= 0:
      raise ValueError(f"PipelineConfig.batch_size={self.batch_size!r}: expected a positive int")
    if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] <= 0:
      raise ValueError(f"PipelineConfig.buckets={self.buckets!r}: expected increasing positive "
                       f"sample counts")
    if self.too_long not in TOO_LONG:
      raise ValueError(f"PipelineConfig.too_long={self.too_long!r}: expected one of {TOO_LONG}")
    if self.num_epochs is not None and self.num_epochs <= 0:
      raise ValueError(f"PipelineConfig.num_epochs={self.num_epochs!r}: expected None or > 0")

  @classmethod
  def seconds(cls, buckets_s: tp.Sequence[float] = (5, 10, 20, 30), **kw) -> PipelineConfig:
    return cls(buckets=tuple(int(round(s * SAMPLE_RATE)) for s in buckets_s), **kw)


class Source(tp.Protocol):
  """What the pipeline reads: random access to utterances plus their lengths, known up front."""

  errors: list[ErrorRecord]

  def __len__(self) -> int: ...

  def lengths(self) -> np.ndarray:
    """Samples at 16 kHz per utterance; -1 where unknown because the file is unusable."""

  def __getitem__(self, i: int) -> dict:
    """{id, audio float32 [n] at 16 kHz, text, speaker}; raises AudioError for a bad utterance."""


class FolderSource:
  """A scanned LibriSpeech-layout folder; audio decoded on access."""

  def __init__(self, scan: librispeech.Scan):
    self.utterances = scan.utterances
    self.errors = list(scan.errors)
    self._lengths: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.utterances)

  def lengths(self) -> np.ndarray:
    if self._lengths is None:
      self._lengths = np.asarray([self._length(u) for u in self.utterances], np.int64)
    return self._lengths

  def _length(self, utt: librispeech.Utterance) -> int:
    try:
      return audio_length(utt.path)
    except AudioError as e:
      self.errors.append(ErrorRecord(utt.id, utt.path, str(e)))
    return -1

  def __getitem__(self, i: int) -> dict:
    u = self.utterances[int(i)]
    return {"id": u.id, "audio": load_audio(u.path), "text": u.text, "speaker": u.speaker}


class ArraySource:
  """Audio handed over directly: float32 16 kHz arrays or file paths (any layout), no transcripts.
  Ids are the paths (arrays: "#i")."""

  def __init__(self, items: tp.Sequence[np.ndarray | str | os.PathLike]):
    self.items = list(items)
    self.errors: list[ErrorRecord] = []
    self.name = "audio"
    self._lengths = np.asarray([self._length(i) for i in range(len(self.items))], np.int64)

  def name_of(self, i: int) -> str:
    item = self.items[i]
    return f"#{i}" if isinstance(item, np.ndarray) else os.fspath(item)

  def _length(self, i: int) -> int:
    item = self.items[i]
    if isinstance(item, np.ndarray):
      if item.ndim != 1 or not item.shape[0]:
        self.errors.append(ErrorRecord(self.name_of(i), self.name_of(i),
                                       f"audio of shape {item.shape}: expected [samples]"))
        return -1
      return int(item.shape[0])
    try:
      return audio_length(item)
    except AudioError as e:
      self.errors.append(ErrorRecord(self.name_of(i), self.name_of(i), str(e)))
    return -1

  def __len__(self) -> int:
    return len(self.items)

  def lengths(self) -> np.ndarray:
    return self._lengths

  def __getitem__(self, i: int) -> dict:
    item = self.items[int(i)]
    audio = (np.asarray(item, np.float32) if isinstance(item, np.ndarray) else load_audio(item))
    return {"id": self.name_of(int(i)), "audio": audio, "text": "", "speaker": ""}


def open_source(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                strict: bool = False) -> Source:
  """A data spec as a source, by this rule (first match):
    "tfds:NAME/SPLIT"                 a tensorflow-datasets split prepared under `data_dir`
    FILE.json                         a Diffusion-ASR JSON data file (`manifest`)
    LIST.txt / .lst / .list / .jsonl  a list of audio paths (`files`; JSONL may give "text")
    a glob pattern ("*", "?", "[")    the files it matches (`files`)
    a folder with a *.trans.txt below LibriSpeech layout (`librispeech`)
    any other folder                  every audio file below it, no transcripts (`files`)
  """
  spec_str = os.fspath(spec)
  if spec_str.startswith("tfds:"):
    # tensorflow-datasets costs ~0.3 s of every process's start; only tfds: specs need it
    from llada_jax.data import tfds_librispeech

    return tfds_librispeech.open_tfds(spec_str, data_dir)
  if manifest.is_manifest(spec_str):
    return manifest.ManifestSource(spec_str, strict=strict)
  if files.is_list(spec_str) or files.is_pattern(spec_str) or (
      os.path.isdir(spec_str) and not has_transcripts(spec_str)):
    return files.FilesSource(spec_str, strict=strict)
  return FolderSource(librispeech.scan_librispeech(spec_str, strict=strict))


def has_transcripts(folder: str | os.PathLike) -> bool:
  """Whether a folder holds LibriSpeech transcripts (a *.trans.txt at any depth)."""
  for _, dirs, names in os.walk(folder):
    if any(n.endswith(".trans.txt") for n in names):
      return True
    dirs[:] = [d for d in dirs if not d.startswith(".")]
  return False


def plan_epoch(bucket_of: np.ndarray, num_buckets: int, global_batch: int, seed: int, epoch: int,
               shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
  """One epoch's batches → (bucket per batch [nb], source indices [nb, global_batch], -1 = padding).

  `bucket_of[i]` is utterance i's bucket, -1 to leave it out. The batch count depends only on the
  bucket sizes, never on the seed, so every epoch has the same length."""
  rng = np.random.default_rng([seed, epoch])
  usable = np.flatnonzero(bucket_of >= 0)
  order = usable[rng.permutation(usable.shape[0])] if shuffle else usable
  buckets, rows = [], []
  for b in range(num_buckets):
    members = order[bucket_of[order] == b]
    for start in range(0, members.shape[0], global_batch):
      chunk = np.full((global_batch,), -1, np.int64)
      part = members[start:start + global_batch]
      chunk[:part.shape[0]] = part
      buckets.append(b)
      rows.append(chunk)
  if not rows:
    return np.zeros((0,), np.int64), np.zeros((0, global_batch), np.int64)
  buckets, rows = np.asarray(buckets, np.int64), np.stack(rows)
  if shuffle:  # interleave buckets so training does not see all short utterances first
    perm = rng.permutation(buckets.shape[0])
    buckets, rows = buckets[perm], rows[perm]
  return buckets, rows


class AudioBatches:
  """This host's batches of a source: iterate for numpy dicts; `iterator()` for a checkpointable
  one.

  By default host `process_index` of `process_count` takes the `process_index`-th block of
  `config.batch_size` rows of each `config.batch_size * process_count`-row global batch. `rows`
  with `global_batch` name the rows instead (`config.batch_size` of them, in the order the host's
  batch lists them): the rows a mesh's batch sharding puts on this host's devices
  (`parallel.sharding.process_rows`), where hosts that replicate a shard load the same rows.
  """

  def __init__(self, source: Source, config: PipelineConfig = PipelineConfig(),
               process_index: int | None = None, process_count: int | None = None, *,
               rows: tp.Sequence[int] | None = None, global_batch: int | None = None):
    self.source, self.config = source, config
    b = config.batch_size
    if rows is None:
      if process_index is None or process_count is None:
        import jax  # only to ask which host this is
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
      if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
      self.global_batch = b * process_count
      self.rows = np.arange(process_index * b, (process_index + 1) * b)
    else:
      self.rows = np.asarray(rows, np.int64)
      if global_batch is None:
        raise ValueError("AudioBatches: rows= needs global_batch=")
      if self.rows.shape != (b,) or not ((self.rows >= 0) & (self.rows < global_batch)).all():
        raise ValueError(f"AudioBatches: rows {self.rows.tolist()}: expected batch_size={b} row "
                         f"indices in [0, {global_batch})")
      self.global_batch = global_batch
    self.process_index, self.process_count = process_index, process_count
    lengths = np.asarray(source.lengths(), np.int64)
    buckets = np.asarray(config.buckets, np.int64)
    bucket_of = np.minimum(np.searchsorted(buckets, lengths, side="left"), buckets.shape[0] - 1)
    bucket_of[lengths < 0] = -1
    self.errors: list[ErrorRecord] = list(source.errors)
    too_long = np.flatnonzero(lengths > buckets[-1])
    if config.too_long == "drop" and too_long.shape[0]:
      bucket_of[too_long] = -1
      for i in too_long:
        reason = f"{lengths[i]} samples > last bucket {buckets[-1]}: dropped"
        self.errors.append(ErrorRecord(_id_of(source, int(i)), _path_of(source, int(i)), reason))
    self._bucket_of = bucket_of
    self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self.num_usable = int((bucket_of >= 0).sum())
    if not self.num_usable:
      shown = "; ".join(f"{e.path}: {e.reason}" for e in self.errors[:3])
      raise ValueError(f"no usable utterances among {len(source)} ({len(self.errors)} error "
                       f"record(s){': ' + shown if shown else ''})")
    self.batches_per_epoch = plan_epoch(bucket_of, buckets.shape[0], self.global_batch,
                                        config.seed, 0, False)[0].shape[0]
    self.dataset = (grain.MapDataset.range(self.batches_per_epoch)
                    .repeat(config.num_epochs)
                    .map_with_index(lambda step, _: self._load(step)))

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    # Read threads may both compute an epoch's plan; it is deterministic, so either copy is right.
    plan = self._plans.get(epoch)
    if plan is None:
      plan = plan_epoch(self._bucket_of, len(self.config.buckets), self.global_batch,
                        self.config.seed, epoch, self.config.shuffle)
      self._plans = {k: v for k, v in self._plans.items() if k >= epoch - 1}
      self._plans[epoch] = plan
    return plan

  def __len__(self) -> int:
    return len(self.dataset)

  def _load(self, step: int) -> dict:
    epoch, k = divmod(int(step), self.batches_per_epoch)
    bucket_ids, rows = self._plan(epoch)
    width = int(self.config.buckets[bucket_ids[k]])
    b = self.config.batch_size
    mine = rows[k, self.rows]
    batch = {"audio": np.zeros((b, width), np.float32), "audio_len": np.zeros((b,), np.int32),
             "valid": np.zeros((b,), bool), "index": mine.copy(), "ids": [""] * b, "text": [""] * b,
             "speaker": [""] * b, "errors": [], "epoch": epoch, "step": int(step)}
    for r, idx in enumerate(mine):
      if idx < 0:
        continue
      try:
        item = self.source[int(idx)]
        audio = np.asarray(item["audio"], np.float32)
        if audio.ndim != 1 or audio.shape[0] == 0:
          raise AudioError(f"{item['id']}: audio of shape {audio.shape}")
      except AudioError as e:
        batch["errors"].append(ErrorRecord(_id_of(self.source, int(idx)),
                                           _path_of(self.source, int(idx)), str(e)))
        continue
      # Header lengths can be off by a sample after resampling; the bucket width is the contract.
      n = min(audio.shape[0], width)
      batch["audio"][r, :n] = audio[:n]
      batch["audio_len"][r] = n
      batch["valid"][r] = True
      batch["ids"][r], batch["text"][r] = item["id"], item["text"]
      batch["speaker"][r] = str(item.get("speaker", ""))
    return batch

  def iterator(self) -> grain.DatasetIterator:
    """A grain iterator whose `get_state()` / `set_state(state)` resume at the exact next batch."""
    options = grain.ReadOptions(num_threads=self.config.num_threads,
                                prefetch_buffer_size=self.config.prefetch)
    return iter(self.dataset.to_iter_dataset(options))

  def __iter__(self) -> tp.Iterator[dict]:
    return self.iterator()


def _id_of(source, i: int) -> str | None:
  utts = getattr(source, "utterances", None)
  return utts[i].id if utts is not None else f"#{i}"


def _path_of(source, i: int) -> str:
  utts = getattr(source, "utterances", None)
  return utts[i].path if utts is not None else f"{getattr(source, 'name', '?')}[{i}]"


def make_batches(spec: str | os.PathLike, config: PipelineConfig = PipelineConfig(),
                 data_dir: str | os.PathLike | None = None, process_index: int | None = None,
                 process_count: int | None = None, *, rows: tp.Sequence[int] | None = None,
                 global_batch: int | None = None) -> AudioBatches:
  """Batches of `spec` for training: every utterance needs a transcript. `rows`/`global_batch`:
  see AudioBatches."""
  source = open_source(spec, data_dir)
  untranscribed = [u for u in getattr(source, "utterances", ()) if u.text is None]
  if untranscribed:
    raise librispeech.CorpusError(
        f"{spec}: {len(untranscribed)} of {len(source)} audio files have no transcript (e.g. "
        f"{untranscribed[0].path}); training reads LibriSpeech folders, Diffusion-ASR JSON data "
        f"files, tfds splits, or JSONL lists with a \"text\" per line")
  return AudioBatches(source, config, process_index, process_count, rows=rows,
                      global_batch=global_batch)
