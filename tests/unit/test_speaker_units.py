"""The speaker encoder against the reference libraries (its ONNX network against torch's LSTM on the same
weights, its mel spectrogram against transformers' audio_utils, which computes librosa's), the consent
statement check, and the voice library's store shared by two processes."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from omniserve.executors.speaker_encoder import mel_spectrogram, partial_slices
from omniserve.models.classifier_export import read_checkpoint
from omniserve.models.speaker_export import checkpoint_path, export
from omniserve.voice_library.consent import said_fraction, statement_for
from omniserve.voice_library.store import VoiceLibrary


def test_the_onnx_encoder_equals_torch_on_the_checkpoint(tmp_path):
    import onnxruntime
    import torch

    export(checkpoint_path(), tmp_path / "ge2e.onnx")
    weights = read_checkpoint(checkpoint_path(), key="model_state")
    lstm, linear = torch.nn.LSTM(40, 256, 3, batch_first=True), torch.nn.Linear(256, 256)
    lstm.load_state_dict({k[5:]: torch.from_numpy(v.copy()) for k, v in weights.items() if k.startswith("lstm.")})
    linear.load_state_dict({"weight": torch.from_numpy(weights["linear.weight"].copy()),
                            "bias": torch.from_numpy(weights["linear.bias"].copy())})
    mels = np.abs(np.random.default_rng(0).normal(size=(3, 160, 40))).astype(np.float32)
    with torch.no_grad():
        _, (hidden, _) = lstm(torch.from_numpy(mels))
        reference = torch.relu(linear(hidden[-1]))
        reference = (reference / reference.norm(dim=1, keepdim=True)).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "ge2e.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"mels": mels})[0] - reference).max() < 1e-5


def test_the_mel_spectrogram_is_librosas():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    wav = (0.1 * np.random.default_rng(1).normal(size=24000)).astype(np.float32)
    filters = mel_filter_bank(num_frequency_bins=201, num_mel_filters=40, min_frequency=0, max_frequency=8000,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
    reference = spectrogram(wav, window_function(400, "hann"), frame_length=400, hop_length=160, power=2.0,
                            center=True, pad_mode="constant", mel_filters=filters).T
    ours = mel_spectrogram(wav)
    assert ours.shape == reference.shape == (151, 40)
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()


def test_partial_windows_cover_the_clip():
    assert partial_slices(16000) == [0]  # shorter than one window: one, padded
    assert partial_slices(5 * 16000) == [0, 77, 154, 231, 308]  # 1.3 a second; the last covers enough


def test_the_statement_is_said_with_small_slips_only():
    statement = statement_for("en-GB")
    assert statement == statement_for("EN_us") and statement_for("tlh") is None
    assert said_fraction(statement.upper(), statement) == 1.0
    slips = "I'm aware that recording of my voice will be used to create and use the synthetic version of my voice"
    assert said_fraction(slips, statement) >= 0.8
    assert said_fraction("Hello there, I like my voice and recordings.", statement) < 0.3
    backwards = " ".join(reversed(statement.split()))
    assert said_fraction(backwards, statement) < 0.2  # the words, out of order


def _add_consents(folder, who: str, count: int) -> None:
    library = VoiceLibrary(folder)
    for i in range(count):
        library.add_consent(f"{who}{i}", "en-US", b"RIFF" + bytes(1000), ".wav", "statement",
                            np.full(256, i, np.float32))
    library.close()


def test_two_processes_share_one_library(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_consents, args=(tmp_path / "voices", who, 25)) for who in "ab"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    library = VoiceLibrary(tmp_path / "voices")
    consents, more = library.consents(None, 100)
    assert len(consents) == 50 and not more
    assert sorted(c.name for c in consents) == sorted(f"{w}{i}" for w in "ab" for i in range(25))
    assert all(library.path(c.recording).read_bytes().startswith(b"RIFF") for c in consents)
    page, more = library.consents(consents[9].id, 10)
    assert [c.id for c in page] == [c.id for c in consents[10:20]] and more
    with pytest.raises(KeyError):
        library.consents("cons_nobody", 10)
