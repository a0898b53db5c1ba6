"""load_audio on real files made here: espeak-ng speech converted by sox, plus broken files."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from llada_jax.data.audio import AudioError, float32_to_int16, int16_to_float32, load_audio

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                reason="needs espeak-ng and sox (make system)")


def _sox(*args):
  subprocess.run(["sox", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("audio")
  wav = d / "speech.wav"  # espeak-ng: 22.05 kHz 16-bit mono
  subprocess.run(["espeak-ng", "-w", str(wav), "the birch canoe slid on the smooth planks"],
                 check=True)
  _sox(wav, "-r", 16000, d / "speech16k.flac")
  _sox(wav, "-r", 44100, "-c", 2, d / "stereo44k.wav")
  _sox(wav, "-r", 16000, "-b", 8, "-e", "unsigned-integer", d / "pcm8.wav")
  _sox(wav, "-r", 16000, d / "speech16k.ogg")
  flac = (d / "speech16k.flac").read_bytes()
  (d / "truncated.flac").write_bytes(flac[:len(flac) // 2])
  (d / "empty.flac").write_bytes(b"")
  (d / "text.flac").write_text("this is a transcript, not audio\n")
  _sox("-n", "-r", 16000, "-b", 16, d / "zero.wav", "trim", 0, 0)
  _sox("-n", "-r", 16000, "-b", 16, d / "zero.flac", "trim", 0, 0)
  return d


def test_flac_at_16k_is_read_unchanged(files):
  ref, rate = sf.read(files / "speech16k.flac", dtype="float32")
  out = load_audio(files / "speech16k.flac")
  assert rate == 16000 and out.dtype == np.float32 and out.ndim == 1
  np.testing.assert_array_equal(out, ref)


def test_22k_wav_is_resampled(files):
  n22 = sf.info(files / "speech.wav").frames
  out = load_audio(files / "speech.wav")
  assert out.dtype == np.float32 and abs(out.shape[0] - n22 * 16000 / 22050) <= 1
  ref = load_audio(files / "speech16k.flac")  # sox's resampler, 16-bit
  n = min(ref.shape[0], out.shape[0])
  assert np.corrcoef(ref[:n], out[:n])[0, 1] > 0.999


def test_stereo_44k_is_mixed_and_resampled(files):
  out = load_audio(files / "stereo44k.wav")
  ref = load_audio(files / "speech.wav")
  assert out.ndim == 1 and abs(out.shape[0] - ref.shape[0]) <= 2
  n = min(ref.shape[0], out.shape[0])
  assert np.corrcoef(ref[:n], out[:n])[0, 1] > 0.999


def test_stereo_channels_are_averaged(tmp_path):
  left = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
  sf.write(tmp_path / "lr.wav", np.stack([left, np.zeros_like(left)], 1), 16000, subtype="FLOAT")
  np.testing.assert_allclose(load_audio(tmp_path / "lr.wav"), left / 2, atol=1e-7)


def test_8bit_pcm(files):
  assert sf.info(files / "pcm8.wav").subtype == "PCM_U8"
  out = load_audio(files / "pcm8.wav")
  ref = load_audio(files / "speech16k.flac")
  assert out.shape == ref.shape
  assert np.abs(out - ref).max() < 2.5 / 128  # 8-bit quantisation (+ sox's dither)
  assert np.corrcoef(ref, out)[0, 1] > 0.99


def test_ogg(files):
  out = load_audio(files / "speech16k.ogg")
  ref = load_audio(files / "speech16k.flac")
  assert abs(out.shape[0] - ref.shape[0]) < 400


@pytest.mark.parametrize("name,words", [
    ("truncated.flac", "truncated|lost sync|not readable"),
    ("empty.flac", "empty"),
    ("text.flac", "not readable as audio"),
    ("zero.wav", "no samples"),
    ("zero.flac", "no samples|not readable"),
    ("missing.flac", "no such file"),
])
def test_bad_files_raise_audio_error_naming_the_file(files, name, words):
  with pytest.raises(AudioError, match=words) as info:
    load_audio(files / name)
  assert str(files / name) in str(info.value)
  assert isinstance(info.value, ValueError)


def test_folder_is_not_audio(files):
  with pytest.raises(AudioError, match="folder"):
    load_audio(files)


def test_int16_round_trip():
  x = np.array([-32768, -1, 0, 1, 32767], np.int16)
  np.testing.assert_array_equal(float32_to_int16(int16_to_float32(x)), x)
