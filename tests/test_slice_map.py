"""One plan, one slice map, three consumers: the GraphModule rewrite, the rewrite that keeps the
class and the streaming checkpoint writer (``prune.stream.stream_apply``, here on the model's
state_dict saved as safetensors shards) agree tensor by tensor, on every zoo model and on fuzzed
ones. The default run takes a seeded sample of the fuzzer; ``-m slow`` a large one::

    GDP_SLICE_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/test_slice_map.py -m slow -x

(``GDP_FUZZ_SEED`` picks its random stream.) The Hugging Face folder path of the writer
(config, renamed layers, plain ``from_pretrained``) is tested in tests/test_stream.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from torch import nn

import gdp_graph as G
from gdp_graph.prune.keep_class import BLOCK_CONSTANT_META, keep_class
from gdp_graph.prune.removed_branch import RemovedBranch
from gdp_graph.prune.slices import RewriteError, SliceMap
from gdp_graph.prune.stream import read_checkpoint, stream_apply
from tests.fuzz.architectures import Spec, build_model, example_input, specs
from tests.test_fuzz import SEED, plans
from tests.zoo import ZOO

DEFAULT_EXAMPLES = 60
SLOW_EXAMPLES = int(os.environ.get("GDP_SLICE_FUZZ_EXAMPLES", "1000"))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones too), tied aliases under each name."""
    return {name: t.detach() for name, t in [*model.named_parameters(remove_duplicate=False),
                                             *model.named_buffers(remove_duplicate=False)]}


def check_graph_module(original: dict[str, torch.Tensor], smap: SliceMap, pruned: torch.fx.GraphModule) -> None:
    """Every tensor of the GraphModule is the map applied to the original one, or a removed
    block's constant term the map holds."""
    constants = {str(n.target): n.meta[BLOCK_CONSTANT_META] for n in pruned.graph.nodes
                 if n.op == "get_attr" and BLOCK_CONSTANT_META in n.meta}
    for name, tensor in _state(pruned).items():
        if name in constants:
            assert torch.equal(tensor, smap.removed_branches[constants[name]].constant), name
            continue
        assert name in original, f"the GraphModule has a tensor '{name}' the model has not"
        assert smap.keeps(name), f"'{name}' is dropped by the map but in the GraphModule"
        assert torch.equal(tensor, smap.apply_to_tensor(name, original[name])), name


def check_kept_class(original: dict[str, torch.Tensor], smap: SliceMap, kept: nn.Module) -> None:
    """The kept class's state_dict is the map applied to the original one, plus the stand-ins'
    constants; what it lacks is what the map drops; its attributes are the map's."""
    stand_ins = {name for name, m in kept.named_modules() if isinstance(m, RemovedBranch)}
    state = _state(kept)
    for name, tensor in state.items():
        owner = name.rpartition(".")[0]
        if owner in stand_ins:
            continue
        assert torch.equal(tensor, smap.apply_to_tensor(name, original[name])), name
    missing = set(original) - set(state)
    assert missing == {n for n in original if not smap.keeps(n)}, missing ^ {n for n in original if not smap.keeps(n)}
    streamed = smap.apply_to_state_dict(original)  # what a streaming writer produces
    assert set(streamed) == set(state) - {n for n in state if n.rpartition(".")[0] in stand_ins}
    for module, changes in smap.attribute_changes.items():
        if any(module == s or module.startswith(s + ".") for s in stand_ins):
            continue
        for key, value in changes.items():
            assert getattr(kept.get_submodule(module), key) == value, (module, key)


def streamed(model: nn.Module, smap: SliceMap, folder: Path) -> dict[str, torch.Tensor]:
    """``model``'s state_dict saved as a safetensors checkpoint and written again by the
    streaming writer through ``smap``, in small shards (so the index is written too), read back."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    source = folder / "source"
    source.mkdir()
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              str(source / "model.safetensors"))
    stream_apply(read_checkpoint(source), smap, folder / "pruned", config_text="{}", max_shard_bytes=16 * 2 ** 10)
    written = read_checkpoint(folder / "pruned")
    out = {}
    for name, file in written.weight_map.items():
        with safe_open(written.folder / file, framework="pt") as f:
            out[name] = f.get_tensor(name)
    return out


def check_streamed(model: nn.Module, smap: SliceMap, graph: torch.fx.GraphModule, kept, folder: Path) -> None:
    """The streamed checkpoint holds every kept tensor of the state_dict, each equal to the
    GraphModule's tensor of that name and to the kept class's state_dict entry."""
    out = streamed(model, smap, folder)
    assert set(out) == {n for n in model.state_dict() if smap.keeps(n)}
    in_graph = _state(graph)
    for name, tensor in out.items():
        assert tensor.dtype == model.state_dict()[name].dtype, name
        if name in in_graph:
            assert torch.equal(tensor, in_graph[name]), name
    if kept is None:
        return
    stand_ins = {name for name, m in kept.named_modules() if isinstance(m, RemovedBranch)}
    state = {n: t for n, t in kept.state_dict().items() if n.rpartition(".")[0] not in stand_ins}
    assert set(out) == set(state), set(out) ^ set(state)
    for name, tensor in state.items():
        assert torch.equal(out[name], tensor), name


def _consumers(model: nn.Module, analysis: G.Analysis, plan: G.PruningPlan) -> tuple[SliceMap, object, object]:
    smap = G.slice_map(analysis, plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = G.rewrite(analysis, plan, keep_class=False, check=False)
        kept = keep_class(analysis, plan, smap)
    return smap, graph, kept


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_consumers_agree_on_the_zoo(zoo_analysis, name, tmp_path):
    model, inputs, analysis = zoo_analysis(name)
    plan = G.random_plan(analysis, 0.5, seed=1, block_ratio=0.5)
    smap, graph, kept = _consumers(model, analysis, plan)
    original = _state(model)
    assert smap.entries, f"{name}: the plan slices nothing"
    check_graph_module({**_state(analysis.traced.gm), **original}, smap, graph)  # + fx's own constants
    if kept.model is not None:  # else the class's own code refuses the plan (the reason is tested elsewhere)
        check_kept_class(original, smap, kept.model)
    check_streamed(model, smap, graph, kept.model, tmp_path)
    again = SliceMap.from_dict(json.loads(json.dumps(smap.to_dict())))
    for key, tensor in original.items():
        if smap.keeps(key):
            assert torch.equal(again.apply_to_tensor(key, tensor), smap.apply_to_tensor(key, tensor)), key
    assert again.attribute_changes == smap.attribute_changes and again.dropped == smap.dropped


def compare_fuzzed(spec, plan_draws) -> list[bool]:
    """The three consumers on one generated model and its plans; per plan, whether it compared
    anything (sliced or removed something, and the class was kept)."""
    model = build_model(spec)
    try:
        analysis = G.analyze(model, (example_input(spec, 2),))
    except (G.TraceError, G.AnalysisError):
        return []
    original = _state(model)
    compared = []
    for ratio, plan_seed, block_ratio in plan_draws:
        plan = G.random_plan(analysis, ratio, seed=plan_seed, block_ratio=block_ratio)
        try:
            smap, graph, kept = _consumers(model, analysis, plan)
        except (G.PlanError, RewriteError):
            continue
        check_graph_module({**_state(analysis.traced.gm), **original}, smap, graph)
        if kept.model is not None:
            check_kept_class(original, smap, kept.model)
        with tempfile.TemporaryDirectory() as folder:
            check_streamed(model, smap, graph, kept.model, Path(folder))
        compared.append(bool(smap.entries or smap.removed_branches) and kept.model is not None)
    return compared


_FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_consumers_agree_on_fuzzed_models():
    """A seeded sample of generated architectures; a floor of the plans slice something and
    keep the class (a regression that made every plan empty or every class refused would
    compare nothing; 52 of 152 did when the floor was set)."""
    compared: list[bool] = []

    @settings(max_examples=DEFAULT_EXAMPLES, derandomize=True, **_FUZZ)
    @given(spec=specs(max_blocks=8), plan_draws=plans)
    def run(spec, plan_draws):
        compared.extend(compare_fuzzed(spec, plan_draws))

    run()
    assert sum(compared) >= 0.25 * len(compared), f"{sum(compared)} of {len(compared)} plans compared anything"


@pytest.mark.slow
@seed(SEED)
@settings(max_examples=SLOW_EXAMPLES, derandomize=False, print_blob=True, **_FUZZ)
@given(spec=specs(max_blocks=12), plan_draws=plans)
def test_the_consumers_agree_on_many_fuzzed_models(spec, plan_draws):
    """``GDP_SLICE_FUZZ_EXAMPLES`` larger generated models (default 1000), a fresh stream per
    ``GDP_FUZZ_SEED``."""
    compare_fuzzed(spec, plan_draws)


def test_a_model_without_groups_maps_to_nothing(tmp_path):
    """Found by the slow sweep: a model whose channels are all the input's has no group, and
    compiling even the empty plan failed (indexing the empty table of group offsets)."""
    spec = Spec(channels=4, size=4, ops=[{"op": "norm", "src": 0, "kind": "bn"}], head="none", classes=2)
    model = build_model(spec)
    analysis = G.analyze(model, (example_input(spec, 2),))
    assert not analysis.groups
    smap, graph, kept = _consumers(model, analysis, G.random_plan(analysis, 0.5, seed=0, block_ratio=0.5))
    assert not smap.entries and not smap.dropped and not smap.removed_branches
    check_graph_module({**_state(analysis.traced.gm), **_state(model)}, smap, graph)
    check_streamed(model, smap, graph, kept.model, tmp_path)


def test_apply_to_tensor_refuses_a_tensor_of_another_shape_and_a_dropped_one(zoo_analysis):
    model, inputs, analysis = zoo_analysis("resnet_basic")
    smap = G.slice_map(analysis, G.random_plan(analysis, 0.5, seed=0, block_ratio=1.0))
    name = next(iter(smap.entries))
    sliced = smap.apply_to_tensor(name, _state(model)[name])
    assert sliced.shape == smap.new_shape(name, tuple(_state(model)[name].shape))
    with pytest.raises(RewriteError, match="shape"):
        smap.apply_to_tensor(name, sliced)  # applying twice
    dropped = next(iter(smap.dropped))
    with pytest.raises(RewriteError, match="removed branch"):
        smap.apply_to_tensor(dropped, _state(model)[dropped])


def test_the_map_is_the_same_for_other_dtypes(zoo_analysis):
    model, inputs, analysis = zoo_analysis("resnet_basic")
    smap = G.slice_map(analysis, G.random_plan(analysis, 0.5, seed=0))
    name, pairs = next(iter(smap.entries.items()))
    tensor = _state(model)[name]
    assert torch.equal(smap.apply_to_tensor(name, tensor.to(torch.bfloat16)),
                       smap.apply_to_tensor(name, tensor).to(torch.bfloat16))
