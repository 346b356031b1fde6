"""Build folders: a build replaces only its own earlier output, never a folder some other build or tool made."""

import pytest

from wideseek_exp import WideseekError
from wideseek_exp.buildinfo import build_folder, read_stamp


def write(tmp, text: str) -> dict:
    (tmp / "weights.bin").write_text(text)
    return {"files": 1}


def test_a_build_replaces_its_own_output_and_nothing_else(tmp_path):
    own = tmp_path / "model"
    assert build_folder("tiny-model", own, "a", lambda tmp: write(tmp, "one")).built
    assert not build_folder("tiny-model", own, "a", lambda tmp: write(tmp, "two")).built  # same inputs: a no-op
    assert build_folder("tiny-model", own, "b", lambda tmp: write(tmp, "two")).built  # new inputs: rebuilt
    assert (own / "weights.bin").read_text() == "two"

    # another build's folder (a trained warm start named as the random model's folder): refused, untouched
    with pytest.raises(WideseekError, match=r"tiny-sft: refusing to replace .*'tiny-model' build"):
        build_folder("tiny-sft", own, "c", lambda tmp: write(tmp, "three"), force=True)
    assert (own / "weights.bin").read_text() == "two" and read_stamp(own)["name"] == "tiny-model"

    # files without a stamp (a model made elsewhere): refused, untouched
    foreign = tmp_path / "downloaded"
    foreign.mkdir()
    (foreign / "model.safetensors").write_text("weights")
    with pytest.raises(WideseekError, match="holds files that no build of ours made"):
        build_folder("tiny-model", foreign, "a", lambda tmp: write(tmp, "one"))
    assert (foreign / "model.safetensors").read_text() == "weights"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_folder("tiny-model", empty, "a", lambda tmp: write(tmp, "one")).built
