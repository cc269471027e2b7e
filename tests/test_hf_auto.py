"""namex_ref.hf.auto: a saved converted model loads with transformers'
``AutoModelForCausalLM.from_pretrained`` once namex_ref.hf is imported, without
``trust_remote_code`` (docs/hf.md). Offline: tiny models from config classes.

Tolerance: merging methods reload to the bit (the same parameters through the same code). For
"smoe" the reloaded model runs the pretrained experts through transformers' kernels, which for
DeepSeek-V3 accumulate in another order after from_pretrained (measured 1.5e-8 on logits of
size ~1, float32); bound 4·eps(float32)·max|logit|, as tests/test_hf.py's pass-through.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from namex_ref.hf import convert, converted_blocks, load, save
from tests.test_hf_families import ALL, ids, logits, tiny_model

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("method", ["namex-full-mom", "smoe"])
def test_from_pretrained_gives_the_saved_model(tmp_path: Path, family: str, method: str) -> None:
    options = {} if method == "smoe" else {"segment_len": 8}
    model = convert(tiny_model(family), method, **options)
    x = ids()
    ref = logits(model, x)
    save(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == f"namex_{family}"
    assert cfg["namex"]["method"] == method and cfg["namex"]["base_rule"] == "perturbed-mean"
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert len(converted_blocks(back)) == len(converted_blocks(model))
    assert back.namex_options == model.namex_options == back.config.namex  # re-saved alike
    out = logits(back, x)
    if method == "smoe":
        bound = 4 * torch.finfo(torch.float32).eps * ref.abs().max().item()
        assert (out - ref).abs().max().item() <= bound
    else:
        assert torch.equal(out, ref)
    again = logits(load(tmp_path), x)  # the thin alias
    assert torch.equal(again, out)


def test_a_fresh_process_needs_only_the_import(tmp_path: Path) -> None:
    """In a new interpreter: `import namex_ref.hf` then AutoModelForCausalLM.from_pretrained,
    no trust_remote_code; bfloat16 parameters come back as bfloat16. Bound 4·eps(bfloat16)·
    max|logit|: the new process may use another thread count, so bfloat16 matmuls may round
    differently (in-process reloads are compared to the bit above); a wrong conversion or
    missing parameter moves the logits by O(max|logit|)."""
    model = convert(tiny_model("deepseek_v3").to(torch.bfloat16), "camex", segment_len=8)
    x = ids()
    save(model, tmp_path)
    torch.save(logits(model, x), tmp_path / "ref.pt")
    code = (
        "import sys, torch, namex_ref.hf\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()\n"
        "assert next(m.parameters()).dtype == torch.bfloat16\n"
        f"x = torch.randint(2, 64, (2, 28), generator=torch.Generator().manual_seed(1))\n"
        "with torch.no_grad(): out = m(x).logits\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r}).float()\n"
        "d = (out.float() - ref).abs().max().item()\n"
        "assert d <= 4 * torch.finfo(torch.bfloat16).eps * ref.abs().max().item(), d\n"
    )
    assert torch.equal(x, torch.randint(2, 64, (2, 28), generator=torch.Generator().manual_seed(1)))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr[-2000:]


def test_load_refuses_an_unconverted_folder(tmp_path: Path) -> None:
    tiny_model("olmoe").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"not converted by namex_ref\.hf\.convert"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load(tmp_path / "missing")


def test_the_first_save_format_still_loads(tmp_path: Path) -> None:
    """A folder written before from_pretrained (namex_hf.json + namex_model.safetensors)."""
    from safetensors.torch import save_model

    model = convert(tiny_model("mixtral"), "smear", segment_len=8)
    x = ids()
    tiny_model("mixtral").config.save_pretrained(tmp_path)  # the original config.json
    save_model(model, str(tmp_path / "namex_model.safetensors"))
    meta = {"options": model.namex_options, "dtype": "float32", "format": 1}
    (tmp_path / "namex_hf.json").write_text(json.dumps(meta))
    assert torch.equal(logits(load(tmp_path), x), logits(model, x))


def test_a_saved_folder_is_recognised_as_converted(tmp_path: Path) -> None:
    """--hf-model / namex convert refuse a folder save() wrote (model_type namex_*), and accept
    the original save_pretrained folder."""
    from namex_ref.hf.convert import is_converted_folder
    from namex_ref.hf.training import read_model_config

    tiny_model("glm4_moe").save_pretrained(tmp_path / "orig")
    assert not is_converted_folder(tmp_path / "orig")
    read_model_config(tmp_path / "orig")
    save(convert(tiny_model("glm4_moe"), "smear", segment_len=8), tmp_path / "conv")
    assert is_converted_folder(tmp_path / "conv")
    with pytest.raises(ValueError, match=r"already converted by namex .* original"):
        read_model_config(tmp_path / "conv")
