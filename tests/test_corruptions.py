"""The corruption suite (:mod:`qieemo_lobes.corruptions`) on 2 s of espeak-ng speech.

Needs the ``espeak-ng`` program; the codec tests also need ``ffmpeg`` (skipped without it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyroomacoustics as pra
import pytest
import soundfile as sf
import torch

from qieemo_lobes import corruptions_codecs
from qieemo_lobes.audio import load_audio
from qieemo_lobes.corruptions import (
    CORRUPTIONS,
    Corruption,
    CorruptionError,
    available_corruptions,
    choose_babble,
    corrupt,
    room_impulse_response,
    unavailable_corruptions,
)

SR = 16000
N = 2 * SR
needs_ffmpeg = pytest.mark.skipif(
    corruptions_codecs.ffmpeg_program() is None,
    reason="ffmpeg not installed (apt-get install ffmpeg)",
)
# (voice, text) of the test utterance and of the babble talkers.
VOICES = [
    ("en-us", "Yesterday I walked along the river and watched the boats go by."),
    ("de", "Der Hund lief schnell durch den Garten und bellte laut."),
    ("fr", "Le chat dort tranquillement sur le canape du salon."),
    ("es", "Mañana vamos a la playa con todos nuestros amigos."),
    ("it", "Il treno per Roma parte alle otto di mattina."),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    """One 2 s clip per voice of :data:`VOICES`, 16 kHz float32, peak 0.5."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    tmp = tmp_path_factory.mktemp("espeak")
    out = []
    for i, (voice, text) in enumerate(VOICES):
        path = tmp / f"clip{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        wav = load_audio(path, SR).numpy()[:N]
        wav = np.pad(wav, (0, N - len(wav)))
        out.append((0.5 * wav / np.abs(wav).max()).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def speech(clips) -> np.ndarray:
    return clips[0]


def lag(x: np.ndarray, y: np.ndarray) -> int:
    """Lag (samples) of ``y`` behind ``x`` at the cross-correlation peak."""
    n = 2 * (len(x) + len(y))
    xc = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)
    xc = np.concatenate([xc[-len(x) + 1 :], xc[: len(y)]])
    return int(np.argmax(xc)) - len(x) + 1


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2)))


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("name", ["white", "babble"])
def test_noise_snr(name: str, clips, speech):
    pool = [(f"spk{i}", clip) for i, clip in enumerate(clips[1:])]
    for snr in CORRUPTIONS[name]:
        noisy = corrupt(
            speech, SR, (name, snr), utterance_id="utt1", babble_pool=pool, speaker="target"
        )
        assert noisy.shape == speech.shape and noisy.dtype == np.float32
        assert abs(snr_db(speech, noisy) - snr) < 0.5


def test_babble_never_uses_the_target_speaker(tmp_path: Path, clips, speech):
    # The target speaker's clips are NaN: any of them in the babble would show in the output.
    poison = np.full(N, np.nan, np.float32)
    sf.write(tmp_path / "other.wav", clips[4], SR)
    pool = [("t", poison), ("a", clips[1]), ("t", poison), ("b", clips[2])]
    pool += [("c", clips[3]), ("a", clips[3][::-1].copy()), ("d", str(tmp_path / "other.wav"))]
    for k in range(20):
        chosen = choose_babble(pool, "t", utterance_id=f"utt{k}")
        assert len(chosen) == 5 and not {0, 2} & set(chosen)
        assert len({pool[i][0] for i in chosen[:4]}) == 4  # distinct speakers first
    noisy = corrupt(speech, SR, ("babble", 0), utterance_id="utt3", babble_pool=pool, speaker="t")
    assert np.isfinite(noisy).all()
    with pytest.raises(CorruptionError) as excinfo:
        corrupt(speech, SR, ("babble", 10), utterance_id="u", babble_pool=pool[:1], speaker="t")
    assert "babble 10 dB" in one_line_error(excinfo) and "'t'" in str(excinfo.value)
    with pytest.raises(CorruptionError, match="speaker="):
        corrupt(speech, SR, ("babble", 10), utterance_id="u", babble_pool=pool)


@pytest.mark.parametrize("corruption", [("white", 5), ("babble", 5), ("reverb", 0.3)])
def test_deterministic_per_utterance(corruption, clips, speech):
    pool = [(f"spk{i}", clip) for i, clip in enumerate(clips)]
    kwargs = {"babble_pool": pool, "speaker": "spk0", "seed": 7}
    first = corrupt(speech, SR, corruption, utterance_id="utt1", **kwargs)
    again = corrupt(speech, SR, corruption, utterance_id="utt1", **kwargs)
    as_torch = corrupt(torch.from_numpy(speech), SR, corruption, utterance_id="utt1", **kwargs)
    other = corrupt(speech, SR, corruption, utterance_id="utt2", **kwargs)
    reseeded = corrupt(speech, SR, corruption, utterance_id="utt1", **{**kwargs, "seed": 8})
    assert np.array_equal(first, again) and np.array_equal(first, as_torch.numpy())
    assert not np.allclose(first, other) and not np.allclose(first, reseeded)


def test_reverb_rt60_and_alignment(speech):
    white = np.random.default_rng(0).standard_normal(N).astype(np.float32) * 0.1
    for rt60 in CORRUPTIONS["reverb"]:
        rir, _ = room_impulse_response(rt60, utterance_id="utt1")
        measured = pra.experimental.measure_rt60(rir, fs=SR, decay_db=30)
        assert abs(measured - rt60) < 0.25 * rt60, (rt60, measured)
        # White noise' cross-correlation with its reverberant copy is the RIR: its peak, the
        # direct path, must stay at lag 0.
        wet = corrupt(white, SR, ("reverb", rt60), utterance_id="utt1")
        assert wet.shape == white.shape and lag(white, wet) == 0
        assert np.isclose(np.std(wet), np.std(white), rtol=0.05)
    # On speech the peak can sit on an early reflection (speech is strongly correlated over
    # tens of ms), so only the correlation at lag 0 is checked.
    wet = corrupt(speech, SR, ("reverb", 0.3), utterance_id="utt1")
    assert wet.shape == speech.shape and np.corrcoef(speech, wet)[0, 1] > 0.2


def test_telephone_band(speech):
    # Speech plus a little white noise, so that there is energy above 4 kHz to remove.
    hiss = 0.02 * np.random.default_rng(0).standard_normal(N).astype(np.float32)
    noisy = speech + hiss
    phone = corrupt(noisy, SR, ("telephone", "g711"), utterance_id="utt1")
    freqs = np.fft.rfftfreq(N, 1 / SR)

    def share(x: np.ndarray, low: float, high: float) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        return float(power[(freqs > low) & (freqs < high)].sum() / power.sum())

    assert share(noisy, 4000, SR) > 0.02 and share(phone, 4000, SR) < 1e-4
    assert share(noisy, 0, 200) > 0.02 and share(phone, 0, 200) < 1e-4
    assert phone.shape == speech.shape and lag(noisy, phone) == 0
    assert np.corrcoef(noisy, phone)[0, 1] > 0.8


@needs_ffmpeg
def test_codecs_aligned_and_monotone(speech):
    quality = {}
    for c in available_corruptions():
        if c.name not in ("gsm", "mp3", "opus"):
            continue
        coded = corrupt(speech, SR, c, utterance_id="utt1")
        assert coded.shape == speech.shape and coded.dtype == np.float32, c.label
        assert abs(lag(speech, coded)) <= 3, c.label
        assert np.corrcoef(speech, coded)[0, 1] > 0.5, c.label
        quality[c.label] = snr_db(speech, coded)
    assert quality["mp3 32 kbps"] > quality["mp3 16 kbps"] > quality["mp3 8 kbps"]
    assert quality["opus 12 kbps"] > quality["opus 6 kbps"]
    assert "gsm 06.10" in quality


@needs_ffmpeg
def test_ffmpeg_failure_is_one_line(speech):
    with pytest.raises(corruptions_codecs.CodecError) as excinfo:
        corruptions_codecs.ffmpeg_codec(speech, SR, "gsm", kbps=6.1)  # GSM has one bitrate
    assert one_line_error(excinfo).startswith("ffmpeg failed: ")


def test_ffmpeg_missing(monkeypatch, speech):
    monkeypatch.setenv("QIEEMO_FFMPEG", "/nonexistent/ffmpeg")  # the lookup finds nothing
    with pytest.raises(CorruptionError) as excinfo:
        corrupt(speech, SR, ("mp3", 8), utterance_id="utt1")
    assert one_line_error(excinfo).startswith("mp3 8 kbps: ffmpeg not found")
    names = {c.name for c in available_corruptions()}
    assert names.isdisjoint({"gsm", "mp3", "opus"}) and {"white", "telephone"} <= names
    assert "ffmpeg" in unavailable_corruptions()["opus"]


def test_gain(speech):
    quiet = corrupt(speech, SR, ("gain", -20), utterance_id="utt1")
    assert np.isclose(np.std(quiet) / np.std(speech), 0.1, rtol=1e-3)
    loud = corrupt(torch.from_numpy(speech), SR, ("gain", 20), utterance_id="utt1")
    assert isinstance(loud, torch.Tensor) and float(loud.abs().max()) == 1.0
    assert (loud.abs() == 1.0).sum() > 10  # clipped, not rescaled


def test_unknown_corruption_or_severity(speech):
    with pytest.raises(CorruptionError) as excinfo:
        Corruption("pink", 10)
    assert "unknown corruption 'pink'" in one_line_error(excinfo)
    with pytest.raises(CorruptionError) as excinfo:
        corrupt(speech, SR, ("mp3", 7), utterance_id="utt1")
    assert one_line_error(excinfo).startswith("mp3: unknown severity 7")
    with pytest.raises(CorruptionError) as excinfo:
        corrupt(speech[None], SR, ("white", 10), utterance_id="utt1")
    assert "mono" in one_line_error(excinfo)
    assert Corruption("white", "10") == Corruption("white", 10.0)
    labels = [Corruption(*c).label for c in [("white", 10), ("reverb", 0.3), ("gain", 20)]]
    assert labels == ["white 10 dB", "reverb 0.3 s", "gain +20 dB"]


def test_user_noise_and_rir_files(tmp_path: Path, clips, speech):
    from speechbrain.augment.preparation import write_csv

    noises = tmp_path / "noises"
    noises.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):  # pink-ish noise, 1 s: shorter than the speech, so it is looped
        sf.write(noises / f"hum{i}.wav", np.cumsum(rng.standard_normal(SR)) * 1e-3, SR)
    write_csv(sorted(str(p) for p in noises.iterdir()), str(tmp_path / "noise.csv"))
    for source in (tmp_path / "noise.csv", noises):
        noisy = corrupt(speech, SR, ("noise", 5), utterance_id="utt1", noise_csv=source)
        assert abs(snr_db(speech, noisy) - 5) < 0.5
    rir, _ = room_impulse_response(0.6, utterance_id="room")
    sf.write(tmp_path / "room.wav", rir, SR)
    (tmp_path / "rir.csv").write_text("ID,duration,wav\nroom,1.0,$rir_folder/room.wav\n")
    wet = corrupt(speech, SR, ("rir", "file"), utterance_id="utt1", rir_csv=tmp_path / "rir.csv")
    assert wet.shape == speech.shape and np.corrcoef(speech, wet)[0, 1] > 0.1
    assert {c.name for c in available_corruptions(noise_csv=noises)} >= {"noise"}
    (tmp_path / "bad.csv").write_text("ID,duration,path\nx,1.0,a.wav\n")
    with pytest.raises(CorruptionError) as excinfo:
        corrupt(speech, SR, ("noise", 5), utterance_id="u", noise_csv=tmp_path / "bad.csv")
    assert "no 'wav' column" in one_line_error(excinfo)
    with pytest.raises(CorruptionError, match="needs noise_csv="):
        corrupt(speech, SR, ("noise", 5), utterance_id="u")
