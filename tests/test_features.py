"""JAX log-mel vs transformers' WhisperFeatureExtractor on real espeak-ng speech."""

import shutil
import subprocess

import numpy as np
import pytest

from llada_jax.data.audio import load_audio
from llada_jax.models import features

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

SENTENCES = ("yes", "the quick brown fox jumps over the lazy dog",
             "a large size in stockings is hard to sell, and the birch canoe slid on the smooth "
             "planks while the wind blew cold across the open water")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
  d = tmp_path_factory.mktemp("speech")
  out = []
  for i, text in enumerate(SENTENCES):
    path = d / f"{i}.wav"
    subprocess.run(["espeak-ng", "-v", ["en-us", "en-gb", "en-gb-scotland"][i], "-w", str(path),
                    text], check=True)
    out.append(load_audio(path))
  assert len({a.shape[0] for a in out}) == 3
  return out


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
  from transformers.audio_utils import mel_filter_bank
  ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                        max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                        mel_scale="slaney")
  np.testing.assert_allclose(features.mel_filters(n_mels), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(speech, n_mels):
  fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
  ref = fe(speech, sampling_rate=16000, return_tensors="np").input_features
  audio, lengths = features.pad_or_trim(speech)
  assert audio.shape == (3, 480000) and list(lengths) == [a.shape[0] for a in speech]
  out = np.asarray(features.log_mel(audio, n_mels=n_mels))
  assert out.shape == ref.shape == (3, n_mels, 3000) and out.dtype == np.float32
  assert np.abs(out - ref).max() <= 1e-4


def test_short_frames_equal_the_start_of_the_30s_spectrogram(speech):
  full = np.asarray(features.log_mel(features.pad_or_trim(speech)[0], n_mels=80))
  frames = features.num_frames(max(a.shape[0] for a in speech))
  assert frames % 2 == 0 and frames < 3000
  short_audio, _ = features.pad_or_trim(speech, frames * features.HOP)
  short = np.asarray(features.log_mel(short_audio, n_mels=80, frames=frames))
  assert short.shape == (3, 80, frames)
  np.testing.assert_allclose(short, full[:, :, :frames], atol=1e-5)


def test_audio_longer_than_30s_is_trimmed_like_transformers(speech):
  long = np.concatenate([speech[2]] * (480000 // speech[2].shape[0] + 2))
  assert long.shape[0] > 480000
  ref = transformers.WhisperFeatureExtractor()(long, sampling_rate=16000,
                                               return_tensors="np").input_features
  audio, lengths = features.pad_or_trim([long])
  assert lengths[0] == 480000
  # log_mel also trims an over-long batch itself.
  out = np.asarray(features.log_mel(long[None], n_mels=80))
  assert np.abs(out - ref).max() <= 1e-4
  np.testing.assert_array_equal(out, np.asarray(features.log_mel(audio, n_mels=80)))


def test_bad_arguments():
  with pytest.raises(ValueError, match="even"):
    features.log_mel(np.zeros((1, 1600), np.float32), frames=9)
  with pytest.raises(ValueError, match=r"\[B, N\]"):
    features.log_mel(np.zeros((1600,), np.float32))
  with pytest.raises(ValueError, match="mono"):
    features.pad_or_trim([np.zeros((10, 2), np.float32)])


def test_num_frames():
  assert features.num_frames(0) == 2
  assert features.num_frames(480000) == 3000
  assert features.num_frames(10 * 480000) == 3000
  for n in (1, 159, 160, 16000, 123457):
    f = features.num_frames(n)
    assert f % 2 == 0 and f * features.HOP >= n + features.N_FFT // 2
