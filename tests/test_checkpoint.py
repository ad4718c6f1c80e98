"""Safe reading and strict loading: the shared mechanism every model loader goes through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentmuse.errors import CheckpointError
from latentmuse.models.checkpoint import (
    build_on_meta,
    diff_state_dict,
    load_strict,
    read_state_dict,
    save_safetensors,
)


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Conv2d(4, 2, 1)


def test_malicious_pickle_is_refused_and_not_executed(marker_pickle):
    path, marker = marker_pickle
    with pytest.raises(CheckpointError, match="needs code to load") as info:
        read_state_dict(path)
    assert "system" in str(info.value)  # names the global it refused
    assert not marker.exists()


def test_missing_and_corrupt_files_are_readable_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        read_state_dict(bad_st)


def test_wrapped_state_dict_is_unwrapped_and_non_tensors_rejected(tmp_path):
    sd = Two().state_dict()
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "wrapped.pt")
    assert read_state_dict(tmp_path / "wrapped.pt").keys() == sd.keys()
    torch.save({"a.weight": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="1 entries that are not tensors"):
        read_state_dict(tmp_path / "mixed.pt")


def test_diff_lists_counts_and_first_keys():
    expected = {f"k{i}": (2, 2) for i in range(6)}
    actual = {f"k{i}": torch.zeros(2, 2) for i in range(1, 5)} | {"k5": torch.zeros(3), "extra": torch.zeros(1)}
    diff = diff_state_dict(expected, actual)
    assert diff.missing == ("k0",)
    assert diff.unexpected == ("extra",)
    assert diff.wrong_shape == (("k5", (2, 2), (3,)),)
    assert diff.summary() == (
        "1 missing key (k0); 1 unexpected key (extra); 1 wrong-shape key (k5: expected [2, 2], got [3])"
    )
    many = diff_state_dict({f"m{i}": (1,) for i in range(5)}, {})
    assert many.summary(limit=3) == "5 missing keys (m0, m1, m2, ...)"


def test_load_strict_assigns_into_meta_module_and_matches_source(tmp_path):
    torch.manual_seed(0)
    source = Two().eval()
    save_safetensors(source.state_dict(), tmp_path / "two.safetensors")
    model = load_strict(build_on_meta(Two), read_state_dict(tmp_path / "two.safetensors"), name="Two", source="x")
    assert not any(p.is_meta for p in model.parameters())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(5, 3)
    assert torch.equal(model.a(x), source.a(x))


def test_load_strict_mismatch_names_the_keys():
    sd = Two().state_dict()
    sd.pop("a.bias")
    sd["b.weight"] = torch.zeros(2, 4, 3, 3)
    sd["c.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_strict(build_on_meta(Two), sd, name="Two", source="two.pth")
    message = str(info.value)
    assert "Two checkpoint two.pth does not match" in message
    assert "1 missing key (a.bias)" in message
    assert "1 unexpected key (c.weight)" in message
    assert "b.weight: expected [2, 4, 1, 1], got [2, 4, 3, 3]" in message


def test_save_safetensors_handles_shared_storage_and_leaves_no_partial_file(tmp_path):
    base = torch.arange(6.0)
    save_safetensors({"flat": base, "view": base.view(2, 3)}, tmp_path / "shared.safetensors")
    back = read_state_dict(tmp_path / "shared.safetensors")
    assert back["flat"].tolist() == [0, 1, 2, 3, 4, 5]
    assert back["view"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert [p.name for p in tmp_path.iterdir()] == ["shared.safetensors"]
