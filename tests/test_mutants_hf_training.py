"""Mutation-guided tests of namex_ref.hf.training (tools/mutation.py, module "hf/training"):
HFCausalLM's model description, input checks and layer statistics, build_model's window and
progress-bar handling, export's run metadata. Expected values come from the tiny models' own
configs (set here) and from first principles (S1 τ_i = E_i − E_m, the cosine of flattened
vectors, S4's Nash condition α_i (Kα)_i = 1), never from the module under test.

Tolerances: the cosine oracle is float64 on float32 weights, the same sums in another order:
bound 1e-9 (measured ~1e-16). The Nash condition α_i (Kα)_i = 1 holds to the solver's
tolerance: bound 1e-6 (RESIDUAL_TOL-level; measured ~1e-12).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from namex_ref.hf import convert, converted_blocks
from namex_ref.train.config import TrainConfig
from tests.test_hf import tiny_model

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent


def _one_layer(family: str = "mixtral") -> torch.nn.Module:
    """A 1-layer tiny model (4 experts, expert width 16, hidden 32, 4 heads, vocab 64)."""
    cfg = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4,
        num_experts_per_tok=2, intermediate_size=16,
    )
    torch.manual_seed(0)
    model: torch.nn.Module = transformers.AutoModelForCausalLM.from_config(cfg)
    return model.eval()


def _cos_oracle(mats: list[torch.Tensor]) -> float:
    """Mean off-diagonal cosine of the experts' flattened, concatenated matrices."""
    v = torch.cat([m.detach().double().reshape(m.shape[0], -1) for m in mats], 1)
    n = v.shape[0]
    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += float(v[i] @ v[j]) / math.sqrt(float(v[i] @ v[i]) * float(v[j] @ v[j]))
                count += 1
    return total / count


def test_the_model_description_comes_from_the_hf_config() -> None:
    """config: vocab 64, d_model 32, 1 converted block, 4 heads, expert width 16, 4 experts."""
    from namex_ref.hf.training import HFCausalLM

    model = HFCausalLM(convert(_one_layer(), "smear", segment_len=8), seq_len=24)
    c = model.config
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head, c.d_ff, c.seq_len) == (
        64, 32, 1, 4, 16, 24)
    assert c.merge.n_experts == 4 and c.merge.method == "smear"


def test_an_unconverted_model_and_bad_token_ids_are_refused() -> None:
    from namex_ref.hf.training import HFCausalLM

    with pytest.raises(ValueError, match=r"converted by namex_ref\.hf\.convert"):
        HFCausalLM(tiny_model("mixtral"), seq_len=16)
    model = HFCausalLM(convert(tiny_model("mixtral"), "smear", segment_len=8), seq_len=16)
    with pytest.raises(ValueError, match=r"idx must be \(B, T\) token ids, got shape \(16,\)"):
        model(torch.arange(2, 18))
    with pytest.raises(ValueError, match="sequence length 17 exceeds the training window 16"):
        model(torch.randint(2, 60, (1, 17)))


@pytest.mark.parametrize("method", ["namex-full-mom", "camex", "smear", "smoe"])
def test_layer_statistics_against_first_principles(method: str) -> None:
    """cosine: between τ_i = E_i − E_m (S1) for methods with a base, between the experts E_i
    otherwise (smear, smoe); alphas: S4's α_i (Kα)_i = 1 with K the Gram of the τ for NAMEx,
    NaN for smoe (no bargain), as are residuals and base norms; no fallbacks."""
    from namex_ref.hf.training import HFCausalLM

    opts = {} if method == "smoe" else {"segment_len": 8}
    model = HFCausalLM(convert(tiny_model("qwen2_moe"), method, **opts), seq_len=16).eval()
    x = torch.randint(2, 60, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        st = model(x, collect_stats=True).stats
        plain = model(x).stats
    blocks = converted_blocks(model.hf)
    assert st.cosine.shape == (2,) and st.alphas.shape == (2, 4)
    assert bool(plain.cosine.isnan().all())  # only with collect_stats
    for layer, blk in enumerate(blocks):
        experts, own = blk.experts_list(), blk.base()
        if own is not None:  # camex every layer, namex-full-mom layer 0 (later: propagated)
            taus = [E - b for E, b in zip(experts, own, strict=True)]
            assert float(st.cosine[layer]) == pytest.approx(_cos_oracle(taus), abs=1e-6)
        elif method in ("smear", "smoe"):
            assert float(st.cosine[layer]) == pytest.approx(_cos_oracle(experts), abs=1e-6)
    if method == "smoe":
        for t in (st.alphas, st.residuals, st.base_norms):
            assert bool(t.isnan().all())
        assert not bool(st.fallbacks.any())
    if method == "namex-full-mom":
        b0 = blocks[0].base()
        assert b0 is not None
        taus = [(E - b).detach().double().reshape(4, -1)
                for E, b in zip(blocks[0].experts_list(), b0, strict=True)]
        v = torch.cat(taus, 1)
        K = v @ v.T
        a = st.alphas[0].double()
        assert bool((a > 0).all())
        assert (a * (K @ a) - 1).abs().max().item() <= 1e-6


def _folder(tmp_path: Path, max_pos: int, vocab: int = 64) -> Path:
    """A save_pretrained folder of the tiny Mixtral with max_position_embeddings = max_pos."""
    model = tiny_model("mixtral", vocab=vocab)
    model.config.max_position_embeddings = max_pos
    model.save_pretrained(tmp_path / f"pos{max_pos}")
    return tmp_path / f"pos{max_pos}"


def test_the_default_window_is_capped_by_the_models_positions(tmp_path: Path) -> None:
    """seq_len 0: the window is min(128, max_position_embeddings): 64 for a 64-position model,
    128 for a 512-position one; a window beyond the positions is refused, naming --seq-len."""
    from namex_ref.hf.training import DEFAULT_SEQ_LEN, build_model

    assert DEFAULT_SEQ_LEN == 128  # documented in the module
    short, long = _folder(tmp_path, 64), _folder(tmp_path, 512)
    assert build_model(TrainConfig(hf_model=str(short), method="smear", seq_len=0)
                       ).config.seq_len == 64
    assert build_model(TrainConfig(hf_model=str(long), method="smear", seq_len=0)
                       ).config.seq_len == 128
    with pytest.raises(ValueError, match=r"--seq-len 65 exceeds .*max_position_embeddings 64"):
        build_model(TrainConfig(hf_model=str(short), method="smear", seq_len=65))


@pytest.mark.parametrize("shown", [True, False])
def test_build_model_leaves_the_progress_bar_setting_as_it_found_it(
    tmp_path: Path, shown: bool
) -> None:
    from namex_ref.hf.training import build_model

    bars = transformers.utils.logging
    was = bars.is_progress_bar_enabled()
    try:
        bars.enable_progress_bar() if shown else bars.disable_progress_bar()
        build_model(TrainConfig(hf_model=str(_folder(tmp_path, 128)), method="smear"))
        assert bars.is_progress_bar_enabled() is shown
    finally:
        bars.enable_progress_bar() if was else bars.disable_progress_bar()


def test_export_writes_the_run_metadata_and_replaces_an_old_export(tmp_path: Path) -> None:
    """export → load gives the wrapped model's logits; namex_run.json names the source folder,
    the method and the window; a second export replaces the first (no stale file stays)."""
    from namex_ref.hf import load
    from namex_ref.hf.training import build_model, export

    src = _folder(tmp_path, 128, vocab=320)  # the built-in BPE needs >= 256 ids
    cfg = TrainConfig(hf_model=str(src), method="smear", seq_len=16, segment_len=8,
                      cache_dir=str(tmp_path / "cache"), corpus_chars=60_000)
    model = build_model(cfg).eval()
    target = tmp_path / "out" / "model"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("old")
    assert export(model, cfg, target) == target
    assert not (target / "stale.txt").exists()
    meta = json.loads((target / "namex_run.json").read_text())
    assert meta == {"source": str(src), "method": "smear", "seq_len": 16,
                    "tokenizer": "builtin-bpe"}
    x = torch.randint(2, 60, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(load(target)(input_ids=x).logits, model(x).logits)


def test_the_conversion_gets_the_runs_segment_length(tmp_path: Path) -> None:
    """A merging method is converted with the run's segment_len (8 here), or the documented
    DEFAULT_SEGMENT_LEN = 32 when the run gives none; the noisy gate keeps the run's
    balance_coef."""
    from namex_ref.hf.training import build_model

    src = str(_folder(tmp_path, 128))
    assert build_model(TrainConfig(hf_model=src, method="smear", segment_len=8)
                       ).config.merge.segment_len == 8
    assert build_model(TrainConfig(hf_model=src, method="smear")).config.merge.segment_len == 32
    noisy = build_model(TrainConfig(hf_model=src, method="camex", gate="noisy-top-k",
                                    gate_top_k=2, balance_coef=0.25))
    assert noisy.config.merge.balance_coef == 0.25


def test_read_model_config_reads_the_folder(tmp_path: Path) -> None:
    from namex_ref.hf.training import read_model_config

    cfg = read_model_config(_folder(tmp_path, 64))
    assert (cfg.max_position_embeddings, cfg.num_local_experts, cfg.hidden_size) == (64, 4, 32)


@pytest.mark.parametrize(("coef", "want"), [(0.02, 0.02), (0.0, 0.0)])
def test_smoe_takes_the_models_router_loss_weight_when_it_asks_for_router_logits(
    tmp_path: Path, coef: float, want: float
) -> None:
    """smoe without balance_coef: the model config's router_aux_loss_coef when it sets
    output_router_logits (the transformers fine-tuning default), 0 when that is 0."""
    from namex_ref.hf.training import build_model

    model = tiny_model("mixtral")
    model.config.output_router_logits = True
    model.config.router_aux_loss_coef = coef
    model.save_pretrained(tmp_path / "m")
    assert build_model(TrainConfig(hf_model=str(tmp_path / "m"), method="smoe")).aux_coef == want


def test_a_folder_without_sparse_moe_blocks_is_named(tmp_path: Path) -> None:
    from namex_ref.hf.training import build_model

    dense = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    transformers.AutoModelForCausalLM.from_config(dense).save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match=r"^--hf-model: no supported sparse MoE block"):
        build_model(TrainConfig(hf_model=str(tmp_path / "dense"), method="smear"))


def test_token_routing_statistics_do_not_alias() -> None:
    """smoe's NaN residuals and base norms are two tensors: writing one (as a consumer may,
    e.g. to fill in a value) leaves the other NaN."""
    from namex_ref.hf.training import HFCausalLM

    model = HFCausalLM(convert(tiny_model("olmoe"), "smoe"), seq_len=16).eval()
    with torch.no_grad():
        st = model(torch.randint(2, 60, (1, 8))).stats
    st.residuals[0] = 1.0
    assert bool(st.base_norms.isnan().all())
