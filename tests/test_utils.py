import pytest
import torch

from kexue.utils import get_device, profile, seed_everything


def test_get_device_override(monkeypatch):
    monkeypatch.setenv("KEXUE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv("KEXUE_DEVICE", "not-a-device")
    with pytest.raises(ValueError, match="KEXUE_DEVICE"):
        get_device()


def test_get_device_default(monkeypatch):
    monkeypatch.delenv("KEXUE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device().type == expected


def test_profile(monkeypatch):
    monkeypatch.delenv("KEXUE_PROFILE", raising=False)
    assert profile() == "smoke"
    monkeypatch.setenv("KEXUE_PROFILE", "FULL")
    assert profile() == "full"
    monkeypatch.setenv("KEXUE_PROFILE", "huge")
    with pytest.raises(ValueError, match="KEXUE_PROFILE"):
        profile()


def test_seed_everything_repeats():
    g = seed_everything(123)
    a, ga = torch.randn(4), torch.randn(4, generator=g)
    g = seed_everything(123)
    b, gb = torch.randn(4), torch.randn(4, generator=g)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    with pytest.raises(TypeError, match="seed"):
        seed_everything(1.5)  # type: ignore[arg-type]
