"""Model-file format: round trip, atomic write, refusal of foreign, newer or damaged files."""

from __future__ import annotations

import pytest
import torch

from relion_plugins.pick.model_file import FORMAT, ModelFile, ModelFileError, load_model, save_model


def _model():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    meta = {"angpix": 8.0, "diameter_A": 150.0, "normalization": {"method": "standardize"}, "objective": "x"}
    return net, ModelFile("pu", {"name": "tiny", "units": 4}, net.state_dict(), meta)


def test_round_trip(tmp_path):
    net, mf = _model()
    path = save_model(tmp_path / "m.pt", mf)
    back = load_model(path, picker="pu")
    assert back.arch == {"name": "tiny", "units": 4}
    assert back.angpix == 8.0 and back.diameter_A == 150.0
    assert back.meta["provenance"]["package_version"]
    for k, v in net.state_dict().items():
        assert torch.equal(back.state[k], v)
    assert "tiny" in back.describe()
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporaries left


def test_refusals(tmp_path):
    _, mf = _model()
    path = save_model(tmp_path / "m.pt", mf)
    with pytest.raises(ModelFileError, match="expected a detr model"):
        load_model(path, picker="detr")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": FORMAT, "version": 99, "picker": "pu"}, tmp_path / "new.pt")
    with pytest.raises(ModelFileError, match="upgrade"):
        load_model(tmp_path / "new.pt")
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a relion-plugins model"):
        load_model(tmp_path / "foreign.pt")


def test_meta_must_be_jsonable(tmp_path):
    _, mf = _model()
    mf.meta["bad"] = object()
    with pytest.raises(TypeError):
        save_model(tmp_path / "m.pt", mf)
    assert not (tmp_path / "m.pt").exists()
