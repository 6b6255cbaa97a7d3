"""A pruned model keeps its class by default, removed residual blocks included: Hugging Face
Llama (GQA), GPT-2, BERT and ViT on tiny configs (no downloads) lose heads, MLP channels, an
attention half and an MLP half, and stay ``LlamaForCausalLM`` & co., equal to the gated
reference, generating the same tokens with and without the KV cache; a ResNet loses a plain and
a strided basic block; a branch that no submodule returns falls back to the GraphModule and says
why; hooks on replaced modules are named."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import gdp_graph as G
from gdp_graph.graph.cost import count_params
from gdp_graph.prune.export import load, save
from gdp_graph.prune.keep_class import KeepClassWarning
from gdp_graph.prune.removed_branch import RemovedBranch

# torch's own pytree specs warn when an exported module is deep-copied (torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def _is_mlp(block) -> bool:
    return any(".mlp." in m or ".intermediate." in m for m in block.modules)


def _plan(a, seed: int = 0) -> G.PruningPlan:
    """Heads and MLP channels of every layer, layer 0's attention half and layer 1's MLP half."""
    attention = [b.id for b in a.blocks if not _is_mlp(b)]
    mlp = [b.id for b in a.blocks if _is_mlp(b)]
    assert len(attention) == len(mlp) == 2, [(b.id, b.modules) for b in a.blocks]
    channels = G.random_plan(a, 0.5, seed=seed)
    return G.PruningPlan(keep=channels.keep, removed_blocks=frozenset({attention[0], mlp[1]}))


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    from tests.test_hf_models import analysis_cache

    return analysis_cache()


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.x renames ``past_key_values`` to ``cache`` model by model."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "vit"])
def test_heads_channels_and_halves_removed_keep_the_class(hf, name, tmp_path):
    model, inputs, a = hf(name)
    plan = _plan(a)
    assert any(a.groups[g].unit == "head" for g in plan.keep) and any(a.groups[g].unit == "channel" for g in plan.keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeepClassWarning)  # the class is kept: nothing to warn about
        pruned_applied = G.apply_plan(a, plan)  # the default
        pruned = pruned_applied.model
    assert isinstance(pruned, type(model)) and type(pruned) is type(model)
    assert pruned_applied.verify.ok and pruned_applied.verify.max_rel_diff <= 1e-5, pruned_applied.verify
    assert G.verify(a, plan, pruned).max_rel_diff <= 1e-5
    stand_ins = {n: m for n, m in pruned.named_modules() if isinstance(m, RemovedBranch)}
    assert any(m.constant is not None for m in stand_ins.values()), stand_ins
    # the stand-ins hold no weights: the class has exactly the GraphModule's parameters
    graph = G.rewrite(a, plan, keep_class=False)
    assert count_params(pruned) == count_params(graph) < count_params(model)
    with torch.no_grad():
        out = pruned(**inputs)
        assert out.logits.shape == model(**inputs).logits.shape
    save(pruned, tmp_path / "pruned.pt")  # the stand-ins pickle with the model
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "pruned.pt").eval()(**inputs).logits, out.logits)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_decoder_without_its_first_attention_generates_with_the_cache(hf, name):
    model, inputs, a = hf(name)
    pruned = G.rewrite(a, _plan(a, seed=1))
    assert type(pruned) is type(model)
    ids = inputs["input_ids"]
    with torch.no_grad():
        cached = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
        assert cached.shape == (2, 13) and torch.equal(cached, uncached)
        # a step on the cache alone: the position comes from the cache's length, which the
        # removed first attention still keeps up
        full = pruned(ids, use_cache=False).logits
        first = pruned(ids[:, :4], use_cache=True)
        step = pruned(ids[:, 4:5], use_cache=True, **{_cache_kwarg(pruned): first.past_key_values})
    assert torch.allclose(step.logits[:, -1], full[:, 4], atol=1e-5)


def test_resnet_loses_a_plain_and_a_strided_block_and_keeps_its_class():
    from tests.zoo import ZOO
    model, inputs = ZOO["resnet_basic"]()
    a = G.analyze(model, inputs)
    plain = next(b.id for b in a.blocks if b.shortcut_is_identity)
    strided = next(b.id for b in a.blocks if not b.shortcut_is_identity)
    plan = G.PruningPlan(keep=G.random_plan(a, 0.3, seed=0).keep, removed_blocks=frozenset({plain, strided}))
    pruned_applied = G.apply_plan(a, plan)
    pruned = pruned_applied.model
    assert type(pruned) is type(model) and pruned_applied.verify.max_rel_diff <= 1e-5, pruned_applied.verify
    assert isinstance(pruned.get_submodule(f"{a.blocks[strided].name}.bn2"), RemovedBranch)
    graph = G.rewrite(a, plan, keep_class=False)
    assert count_params(pruned) == count_params(graph)
    # another batch and image size: the strided stand-ins follow the convolution's arithmetic
    x = torch.randn(3, 3, 37, 35, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(pruned(x), graph(x), atol=1e-5)


def test_kept_class_with_stand_ins_exports_as_plain_source(tmp_path, monkeypatch):
    import importlib
    from gdp_graph.prune.export import export_source
    from tests.zoo import ZOO
    model, inputs = ZOO["resnet_basic"]()
    a = G.analyze(model, inputs)
    strided = next(b.id for b in a.blocks if not b.shortcut_is_identity)
    pruned = G.rewrite(a, G.PruningPlan(removed_blocks=frozenset({strided})))
    assert type(pruned) is type(model)
    export_source(pruned, tmp_path / "exported_kept_resnet")  # torch.fx traces the class, stand-ins too
    monkeypatch.syspath_prepend(str(tmp_path))
    exported = importlib.import_module("exported_kept_resnet").PrunedModel().eval()
    assert "RemovedBranch" not in (tmp_path / "exported_kept_resnet" / "module.py").read_text()
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(exported(x), pruned(x), atol=1e-6)


class ScaledBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x))) * self.scale  # the layer scale: the block's own code


class LayerScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(4, 8), ScaledBlock(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.block(self.stem(x))))


def test_branch_no_submodule_returns_falls_back_and_says_why():
    torch.manual_seed(0)
    model = LayerScaled().eval()
    a = G.analyze(model, torch.randn(5, 4))
    assert [b.name for b in a.blocks] == ["block"]
    assert type(G.rewrite(a, G.random_plan(a, 0.5, seed=0))) is LayerScaled  # no block removed: the class
    plan = G.random_plan(a, 0.5, seed=0, block_ratio=1.0)
    with pytest.warns(KeepClassWarning, match=r"returning a GraphModule, not LayerScaled: block 0 \(block\): its "
                                              r"output \(node '\w+'\) is computed in block's own forward"):
        pruned_applied = G.apply_plan(a, plan)
        pruned = pruned_applied.model
    assert isinstance(pruned, torch.fx.GraphModule) and pruned_applied.verify.ok
    assert "computed in block's own forward" in pruned_applied.kept_class_reason
    asked_applied = G.apply_plan(a, plan, keep_class=False)
    asked = asked_applied.model
    assert isinstance(asked, torch.fx.GraphModule) and "keep_class=False" in asked_applied.kept_class_reason


def test_hooks_survive_unless_their_module_is_replaced():
    from tests.zoo import ZOO
    model, inputs = ZOO["resnet_basic"]()
    seen = []
    model.conv1.register_forward_hook(lambda m, i, o: seen.append("stem"))
    model.layer1[0].conv1.register_forward_pre_hook(lambda m, i: seen.append("removed"))
    a = G.analyze(model, inputs)
    block = next(b.id for b in a.blocks if b.name == "layer1.0")
    with pytest.warns(KeepClassWarning, match=r"hooks on layer1\.0\.conv1 are dropped"):
        pruned = G.rewrite(a, G.PruningPlan(removed_blocks=frozenset({block})))
    assert type(pruned) is type(model)
    seen.clear()
    with torch.no_grad():
        pruned(*inputs)
    assert seen == ["stem"]


def test_trained_graph_module_goes_back_into_the_class_with_its_gate_scales_folded():
    """What ``gdp-graph prune`` does after finalize and fine-tuning: the GraphModule's current
    weights go into the class, a kept gate scale into the linear layer it feeds."""
    from gdp_graph.prune.keep_class import SITE_SCALE_META, keep_class_of
    from gdp_graph.prune.rewrite import rewrite_graph
    torch.manual_seed(0)
    model = LayerScaled().eval()
    x = torch.randn(5, 4)
    a = G.analyze(model, x)
    plan = G.random_plan(a, 0.5, seed=0)
    scale = torch.linspace(0.2, 1.8, 16)
    graph = rewrite_graph(a, plan, site_scales={("block_fc2", 0): (1, scale)})
    assert sum(SITE_SCALE_META in n.meta for n in graph.graph.nodes) == 1
    with torch.no_grad():
        graph.get_submodule("head").weight.mul_(2.0)  # "fine-tuned" since the analysis
    kept = keep_class_of(a, plan, graph)
    assert type(kept.model) is LayerScaled, kept.reason
    with torch.no_grad():
        assert torch.allclose(kept.model(x), graph(x), atol=1e-6)
        assert not torch.allclose(kept.model(x), G.rewrite(a, plan)(x))  # the trained weights, not the analysed ones
