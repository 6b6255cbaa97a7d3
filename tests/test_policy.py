"""Pruning policies: loading, strict validation, resolution against hand-made groups/blocks."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdp_graph.graph.groups import Block, ChannelGroup
from gdp_graph.policy import (
    POLICY_DIR,
    Defaults,
    GroupSettings,
    Policy,
    PolicyError,
    PolicyWarning,
    Resolution,
    available_policies,
    load_policy,
    max_removable,
    policy_from_dict,
    resolve,
)
from gdp_graph.policy.schema import (
    POLICY_SPEC,
    SCHEMA_PATH,
    EpsilonSchedule,
    Struct,
    Variant,
    json_schema_text,
)

CORPUS = Path(__file__).parent / "policy_corpus"
EXPECT = re.compile(r"# expect: (\d+):(\d+): (.*)")


# --------------------------------------------------------------------------------------------
# hand-made analysis results
# --------------------------------------------------------------------------------------------


def group(gid: int, modules: Iterable[str], types: Optional[Iterable[str]] = None, *,
          size: int = 16, unit: str = "channel", couplings: Iterable[str] = (),
          frozen: int = 0, frozen_reasons: Iterable[str] = (), inexact: Iterable[str] = (),
          divisor: int = 1) -> ChannelGroup:
    modules = list(modules)
    frozen_units = torch.zeros(size, dtype=torch.bool)
    frozen_units[:frozen] = True
    return ChannelGroup(id=gid, size=size, unit=unit, unit_width=1, couplings=set(couplings),
                        modules=modules, module_types=list(types or ["Conv2d"] * len(modules)),
                        frozen_units=frozen_units, frozen_reasons=list(frozen_reasons),
                        inexact_reasons=list(inexact), divisor=divisor)


def block(bid: int, name: str, modules: Iterable[str] = (),
          frozen_reasons: Iterable[str] = ()) -> Block:
    return Block(id=bid, name=name, add_node=f"add_{bid}", arg=1, nodes=[],
                 modules=list(modules), shortcut_is_identity=True,
                 frozen_reasons=list(frozen_reasons))


def resnet() -> tuple[list[ChannelGroup], list[Block]]:
    """A tiny CIFAR-ResNet-like analysis: a residual stream and two inner groups."""
    groups = [
        group(0, ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer3.0.conv1", "fc"],
              ["Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "Conv2d", "Linear"],
              couplings={"residual"}),
        group(1, ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"],
              ["Conv2d", "BatchNorm2d", "Conv2d"]),
        group(2, ["layer3.0.conv1", "layer3.0.bn1", "layer3.0.conv2"],
              ["Conv2d", "BatchNorm2d", "Conv2d"], size=64),
    ]
    blocks = [block(0, "layer1.0", ["layer1.0.conv1", "layer1.0.conv2"]),
              block(1, "layer3.0", ["layer3.0.conv1", "layer3.0.conv2"])]
    return groups, blocks


def vit() -> list[ChannelGroup]:
    """One timm-style ViT block: heads, MLP hidden channels, the LayerNorm'd residual stream."""
    return [
        group(0, ["patch_embed.proj", "blocks.0.norm1", "blocks.0.attn.qkv", "blocks.0.attn.proj",
                  "blocks.0.norm2", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "norm", "head"],
              ["Conv2d", "LayerNorm", "Linear", "Linear", "LayerNorm", "Linear", "Linear",
               "LayerNorm", "Linear"], size=192, couplings={"residual", "norm"},
              inexact=["LayerNorm over channels"]),
        group(1, ["blocks.0.attn.qkv", "blocks.0.attn.proj"], ["Linear", "Linear"], size=3,
              unit="head", couplings={"attention"}),
        group(2, ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"], ["Linear", "Linear"], size=768),
    ]


def policy(text: str, name: str = "p.yaml") -> Policy:
    return load_policy("version: 1\n" + text, name=name)


def quiet_resolve(pol: Policy, groups: Any, blocks: Any = ()) -> Resolution:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        return resolve(pol, groups, blocks)


# --------------------------------------------------------------------------------------------
# shipped policies, defaults, the JSON Schema
# --------------------------------------------------------------------------------------------


def test_all_shipped_policies_are_present() -> None:
    assert {"default", "cifar_resnet", "mobilenetv2", "vit"} <= set(available_policies())


@pytest.mark.parametrize("name", available_policies())
def test_shipped_policy_loads(name: str) -> None:
    by_path = load_policy(POLICY_DIR / f"{name}.yaml")
    assert load_policy(name) == by_path
    assert by_path.name == name and by_path.description


def test_default_yaml_is_the_builtin_default() -> None:
    loaded = load_policy("default")
    assert dataclasses.replace(loaded, description="") == Policy.default()
    assert Policy.default() == Policy()


def _all_keys(spec: Any) -> set[str]:
    if isinstance(spec, Variant):
        return set().union(*(_all_keys(s) for _, s in spec.options.values()))
    if isinstance(spec, Struct):
        keys = set(spec.fields)
        for f in spec.fields.values():
            keys |= _all_keys(f.spec)
        return keys
    item = getattr(spec, "item", None)
    return _all_keys(item) if item is not None else set()


def test_default_yaml_documents_every_key() -> None:
    text = (POLICY_DIR / "default.yaml").read_text()
    missing = [k for k in _all_keys(POLICY_SPEC) if not re.search(rf"\b{k}:", text)]
    assert not missing


def test_schema_json_matches_the_code() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == json_schema_text(), \
        "regenerate with: python -m gdp_graph.policy.schema"
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["required"] == ["version"]
    assert schema["properties"]["defaults"]["properties"]["round_to"]["default"] == 1


def test_builtin_values() -> None:
    p = Policy.default()
    assert (p.target.metric, p.target.fraction, p.target.tolerance) == ("flops", 0.5, 0.02)
    assert p.regularizer.name == "gdp" and p.regularizer.lambda_ == 1.0
    assert p.regularizer.epsilon == EpsilonSchedule(1e-2, 1e-8, "cosine", "iteration")
    assert p.regularizer.t is None
    assert p.defaults == Defaults("channel", "none", 1, 1, 0.9, False)
    assert p.rules == ()


def test_minimal_policy_gets_every_default() -> None:
    assert policy("") == Policy.default()
    assert policy("rules:\ndefaults:\ntarget:\n") == Policy.default()


def test_polarization_gets_default_t_and_no_epsilon() -> None:
    p = policy("regularizer: {name: polarization}")
    assert p.regularizer.t == 1.2 and p.regularizer.epsilon is None
    assert policy("regularizer: {name: polarization, t: 2}").regularizer.t == 2.0
    assert policy("regularizer: {name: l1}").regularizer.epsilon is None


def test_unquoted_exponent_is_a_number_but_quoted_is_not() -> None:
    assert policy("regularizer: {lambda: 1e-3}").regularizer.lambda_ == 1e-3
    with pytest.raises(PolicyError, match=r"p\.yaml:2:23: regularizer\.lambda: expected a number"):
        policy("regularizer: {lambda: '1e-3'}")


def test_epsilon_schedule_values() -> None:
    for kind in ("exponential", "linear", "cosine"):
        eps = EpsilonSchedule(1.0, 1e-4, kind)
        assert eps.value(0.0) == pytest.approx(1.0) and eps.value(1.0) == pytest.approx(1e-4)
        assert 1e-4 < eps.value(0.5) < 1.0


# --------------------------------------------------------------------------------------------
# loading API
# --------------------------------------------------------------------------------------------


def test_load_from_path_text_and_dict_agree(tmp_path: Path) -> None:
    text = "version: 1\ndefaults: {round_to: 4}\nrules:\n  - match: {unit: head}\n    level: none\n"
    file = tmp_path / "mine.yaml"
    file.write_text(text)
    from_path, from_str = load_policy(file), load_policy(str(file))
    from_text = load_policy(text)
    from_dict = policy_from_dict({"version": 1, "defaults": {"round_to": 4},
                                  "rules": [{"match": {"unit": "head"}, "level": "none"}]})
    assert from_path == from_str == from_text == from_dict
    assert from_path.name == "mine" and from_path.source == str(file)
    assert from_text.source == "<string>" and from_dict.source == "<dict>"
    assert from_path.rules[0].location.line == 4


@pytest.mark.parametrize("name", ["default", "cifar_resnet", "mobilenetv2", "vit"])
def test_to_dict_round_trips(name: str) -> None:
    p = load_policy(name)
    assert policy_from_dict(p.to_dict()) == p


def test_dict_errors_name_the_key_path() -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict({"version": 1, "defaults": {"min_channels": True, "levle": "none"}})
    assert str(info.value).splitlines() == [  # no positions: in the order of the dict
        "<dict>:0:0: defaults.min_channels: expected an integer >= 0, got a boolean (true)",
        "<dict>:0:0: unknown key 'levle' in defaults (did you mean 'level'? allowed: level, "
        "block_level, min_channels, round_to, max_fraction, allow_inexact, uniform)",
    ]


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=rf"^{re.escape(str(missing))}:0:0: cannot read"):
        load_policy(str(missing))


def test_policy_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ValueError) as info:
        policy("target: {fraction: 2}\ndefaults: {round_to: 0}")
    err = info.value
    assert isinstance(err, PolicyError) and len(err.diagnostics) == 2
    assert str(err).startswith("p.yaml:2:20: ")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_anchors_and_merge_keys() -> None:
    p = policy("defaults: &d {round_to: 4, min_channels: 8}\n"
               "rules:\n  - match: {unit: head}\n    <<: {round_to: 2, level: none}\n"
               "    round_to: 1\n")
    assert p.defaults.round_to == 4 and p.rules[0].round_to == 1 and p.rules[0].level == "none"


def test_duplicate_key_through_flow_mapping() -> None:
    with pytest.raises(PolicyError, match=r"p\.yaml:2:25: duplicate key 'round_to'"):
        policy("defaults: {round_to: 4, round_to: 8}")


# --------------------------------------------------------------------------------------------
# the malformed corpus
# --------------------------------------------------------------------------------------------

CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS_FILES) >= 24


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_malformed_policy(path: Path) -> None:
    expected = [EXPECT.fullmatch(line) for line in path.read_text().splitlines()
                if line.startswith("# expect:")]
    assert expected and all(expected), f"{path.name}: malformed '# expect:' header"
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    lines = str(info.value).splitlines()
    assert len(lines) == len(expected), str(info.value)
    for line, want in zip(lines, expected):
        prefix = f"{path}:{want[1]}:{want[2]}: "
        assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
        assert want[3].replace("{file}", str(path)) in line, line


# --------------------------------------------------------------------------------------------
# resolution: defaults, overrides, selectors
# --------------------------------------------------------------------------------------------


def test_defaults_apply_without_rules() -> None:
    groups, blocks = resnet()
    res = resolve(policy("defaults: {round_to: 4, block_level: block}"), groups, blocks)
    assert res.group_settings[1] == GroupSettings("channel", 1, 4, 0.9, False, ())
    assert res.block_settings[0].level == "block"
    assert res.gated_groups() == [0, 1, 2] and res.gated_blocks() == [0, 1]
    assert res.ungated() == [] and res.warnings == []
    assert res.removable[1] == 12  # 16 * 0.9 = 14.4 -> 14 removed -> keep 2 -> round up to 4


def test_later_rules_override_only_the_keys_they_set() -> None:
    groups, _ = resnet()
    p = policy("rules:\n"
               "  - match: {type: Conv2d}\n    round_to: 8\n    min_channels: 4\n"
               "  - match: {module: 'layer3.*'}\n    round_to: 2\n")
    res = quiet_resolve(p, groups)
    assert res.group_settings[1] == GroupSettings("channel", 4, 8, 0.9, False, (0,))
    assert res.group_settings[2] == GroupSettings("channel", 4, 2, 0.9, False, (0, 1))
    assert res.group_settings[0].round_to == 2  # the stream touches layer3.0.conv1


@pytest.mark.parametrize("selector, expected", [
    ({"module": "layer1.*"}, [0, 1]),                 # glob, '*' crosses dots
    ({"module": "layer*.conv1"}, [0, 1, 2]),
    ({"module": "conv1"}, [0]),                       # globs match whole names
    ({"module": "layer1"}, []),
    ({"regex": r"layer3\.0\.bn"}, [2]),               # re.search: unanchored
    ({"regex": r"^fc$"}, [0]),
    ({"type": "Linear"}, [0]),
    ({"type": ["Linear", "BatchNorm2d"]}, [0, 1, 2]),  # list: OR
    ({"coupling": "residual"}, [0]),
    ({"coupling": ["depthwise", "concat"]}, []),
    ({"unit": "channel"}, [0, 1, 2]),
    ({"unit": ["head", "norm-group"]}, []),
    ({"module": "layer1.*", "coupling": "residual"}, [0]),         # keys: AND
    ({"module": "layer1.*", "type": "Linear"}, []),                # same member module
    ({"module": ["fc", "layer3.*"], "type": "Linear"}, [0]),
    ({"regex": "conv", "type": "BatchNorm2d"}, []),
])
def test_group_selectors(selector: dict[str, Any], expected: list[int]) -> None:
    groups, _ = resnet()
    p = policy_from_dict({"version": 1, "rules": [{"match": selector, "round_to": 2}]})
    res = quiet_resolve(p, groups)
    assert list(res.rule_matches[0][0]) == expected
    assert res.rule_matches[0][1] == ()
    assert [g for g, s in res.group_settings.items() if s.rules == (0,)] == expected


@pytest.mark.parametrize("selector, expected", [
    ({"name": "layer3.*"}, [1]),
    ({"name": ["layer1.0", "layer3.0"]}, [0, 1]),
    ({"regex": "^layer1"}, [0]),
    ({"module": "*.conv2"}, [0, 1]),
    ({"module": "*.conv2", "name": "layer1.*"}, [0]),
    ({"name": "layer2.*"}, []),
])
def test_block_selectors(selector: dict[str, Any], expected: list[int]) -> None:
    groups, blocks = resnet()
    p = policy_from_dict({"version": 1, "rules": [{"blocks": selector, "level": "block"}]})
    res = quiet_resolve(p, groups, blocks)
    assert res.rule_matches[0] == ((), tuple(expected))
    assert res.gated_blocks() == expected


def test_resolve_is_pure() -> None:
    groups, blocks = resnet()
    before = [(g.modules[:], set(g.couplings), g.frozen_units.clone()) for g in groups]
    p = policy("rules:\n  - match: {type: Conv2d}\n    level: none\n")
    resolve(p, groups, blocks)
    after = [(g.modules, g.couplings, g.frozen_units) for g in groups]
    for (m0, c0, f0), (m1, c1, f1) in zip(before, after):
        assert m0 == m1 and c0 == c1 and torch.equal(f0, f1)


# --------------------------------------------------------------------------------------------
# warnings and reasons
# --------------------------------------------------------------------------------------------


def test_rule_matching_nothing_warns_with_file_and_line() -> None:
    groups, blocks = resnet()
    p = policy("rules:\n  - match: {type: Conv3d}\n    level: none\n"
               "  - blocks: {name: 'layer9.*'}\n    level: block\n", name="x.yaml")
    with pytest.warns(PolicyWarning) as record:
        res = resolve(p, groups, blocks)
    assert res.warnings == ["x.yaml:3:5: rules[0] matches no group ({type: Conv3d})",
                            "x.yaml:5:5: rules[1] matches no block ({name: layer9.*})"]
    assert [(w.filename, w.lineno) for w in record] == [("x.yaml", 3), ("x.yaml", 5)]
    assert "rules[0] {type: Conv3d} -> 0 group(s)" in res.report()


def test_rule_overridden_everywhere_warns() -> None:
    groups, _ = resnet()
    p = policy("rules:\n  - match: {module: 'layer1.*'}\n    round_to: 4\n"
               "  - match: {type: Conv2d}\n    round_to: 8\n")
    with pytest.warns(PolicyWarning, match=r"rules\[0\] has no effect"):
        res = resolve(p, groups)
    assert len(res.warnings) == 1


def test_no_warning_for_a_clean_resolution() -> None:
    groups, blocks = resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve(load_policy("cifar_resnet"), groups, blocks)


def test_ungated_reasons() -> None:
    groups = [
        group(0, ["a"], frozen=16, frozen_reasons=["reaches the model output"]),
        group(1, ["b"], inexact=["LayerNorm over channels"]),
        group(2, ["c"]),
        group(3, ["d"], size=8, couplings={"depthwise"}),
        group(4, ["e"]),
    ]
    blocks = [block(0, "layer1.0", frozen_reasons=["branch output feeds a concat"]),
              block(1, "layer2.0"), block(2, "layer3.0")]
    p = policy("defaults: {min_channels: 8}\nrules:\n"
               "  - match: {module: c}\n    name: keep-c\n    level: none\n"
               "  - blocks: {name: 'layer3.*'}\n    level: block\n"
               "  - blocks: {name: 'layer2.*'}\n    level: none\n", name="x.yaml")
    res = resolve(p, groups, blocks)
    assert res.ungated() == [
        ("group", 0, "frozen: reaches the model output"),
        ("group", 1, "inexact and allow_inexact is false (LayerNorm over channels)"),
        ("group", 2, "level: none by rules[0] 'keep-c' (x.yaml:4)"),
        ("group", 3, "nothing removable: 8 units with min_channels 8, max_fraction 0.9, "
                     "round_to 1"),
        ("block", 0, "frozen: branch output feeds a concat"),
        ("block", 1, "no block gate: level none by rules[2] (x.yaml:9)"),
    ]
    assert res.gated_groups() == [4] and res.gated_blocks() == [2]


def test_default_level_none_and_block_level_reasons() -> None:
    groups, blocks = resnet()
    res = resolve(policy("defaults:\n  level: none\n", name="x.yaml"), groups[:1], blocks[:1])
    assert res.ungated() == [("group", 0, "level: none by defaults.level (x.yaml:3)"),
                             ("block", 0, "no block gate: block_level none")]
    res = resolve(Policy(defaults=Defaults(level="none")), groups[:1])
    assert res.ungated() == [("group", 0, "level: none by defaults.level")]


def test_allow_inexact_gates_inexact_groups() -> None:
    groups = [group(0, ["norm"], inexact=["LayerNorm over channels"])]
    res = resolve(policy("rules:\n  - match: {module: norm}\n    allow_inexact: true\n"), groups)
    assert res.gated_groups() == [0]


def test_partially_frozen_group_keeps_its_frozen_units() -> None:
    groups = [group(0, ["a"], size=16, frozen=10, frozen_reasons=["output"])]
    res = resolve(Policy.default(), groups)
    assert res.gated_groups() == [0] and res.removable[0] == 6


def test_vit_policy_gates_heads_and_mlp_only() -> None:
    res = resolve(load_policy("vit"), vit())
    assert res.gated_groups() == [1, 2]
    assert res.group_settings[2].round_to == 8
    assert res.ungated() == [("group", 0, "inexact and allow_inexact is false "
                                          "(LayerNorm over channels)")]
    no_inexact_guard = dataclasses.replace(load_policy("vit"), defaults=Defaults(
        level="none", allow_inexact=True))
    reason = dict(((k, i), r) for k, i, r in resolve(no_inexact_guard, vit()).ungated())
    assert reason[("group", 0)].startswith("level: none by rules[2] 'residual-stream'")


def test_cifar_policy_gates_channels_not_blocks() -> None:
    groups, blocks = resnet()
    res = resolve(load_policy("cifar_resnet"), groups, blocks)
    assert res.gated_groups() == [0, 1, 2] and res.gated_blocks() == []  # block gates are opt-in
    assert res.group_settings[0].max_fraction == 0.5
    assert res.group_settings[1].max_fraction == 0.9


def test_mobilenet_policy_rounds_to_eight() -> None:
    groups = [group(0, ["features.2.conv.0.0", "features.2.conv.1.0", "features.2.conv.2"],
                    size=96, couplings={"depthwise"}),
              group(1, ["features.1.conv.1", "features.2.conv.0.0"], size=8)]
    res = quiet_resolve(load_policy("mobilenetv2"), groups)
    assert res.group_settings[0].round_to == 8
    assert res.removable[0] == 80  # 86.4 -> 86 may go -> keep >= 10 -> round up to 16
    assert res.ungated() == [("group", 1, "nothing removable: 8 units with min_channels 8, "
                                          "max_fraction 0.9, round_to 8")]


# --------------------------------------------------------------------------------------------
# max_removable
# --------------------------------------------------------------------------------------------


def limits(min_channels: int = 1, round_to: int = 1, max_fraction: float = 0.9) -> Defaults:
    return Defaults(min_channels=min_channels, round_to=round_to, max_fraction=max_fraction)


@pytest.mark.parametrize("lim, size, kwargs, removable", [
    (limits(), 0, {}, 0),
    (limits(), 1, {}, 0),                                 # 0.9 * 1 -> 0 may go
    (limits(), 10, {}, 9),
    (limits(max_fraction=1.0, min_channels=0), 10, {}, 10),  # everything may go
    (limits(max_fraction=1.0, min_channels=1), 10, {}, 9),
    (limits(max_fraction=0.0), 10, {}, 0),
    (limits(min_channels=10), 10, {}, 0),
    (limits(min_channels=11), 10, {}, 0),
    (limits(round_to=8), 10, {}, 2),                      # keep 8
    (limits(round_to=8, max_fraction=0.1), 10, {}, 0),    # keep >= 9 -> 16 > 10: nothing
    (limits(round_to=8), 64, {}, 56),                     # keep 8 (57.6 -> 57 may go)
    (limits(round_to=8, min_channels=9), 64, {}, 48),     # keep 16
    (limits(max_fraction=0.3), 10, {}, 3),                # 0.3 * 10 = 3.0000000000000004
    (limits(max_fraction=0.29), 100, {}, 29),             # 28.999999999999996
    (limits(), 16, {"frozen": 10}, 6),
    (limits(), 16, {"divisor": 4}, 12),                   # keep 4
    (limits(round_to=6), 16, {"divisor": 4}, 4),          # keep lcm(6, 4) = 12
])
def test_max_removable_edges(lim: Defaults, size: int, kwargs: dict[str, int],
                             removable: int) -> None:
    assert max_removable(lim, size, **kwargs) == removable


def _allowed(lim: Defaults, size: int, removed: int, frozen: int, divisor: int) -> bool:
    kept = size - removed
    if removed == 0:
        return True
    step = math.lcm(lim.round_to, divisor)
    return (0 < removed <= size and kept >= lim.min_channels and kept >= frozen
            and removed <= lim.max_fraction * size + 1e-9 and kept % step == 0)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 300), min_channels=st.integers(0, 64), round_to=st.integers(1, 16),
       max_fraction=st.floats(0, 1), frozen_share=st.floats(0, 1), divisor=st.integers(1, 4))
def test_max_removable_property(size: int, min_channels: int, round_to: int,
                                max_fraction: float, frozen_share: float, divisor: int) -> None:
    lim = limits(min_channels, round_to, max_fraction)
    frozen = int(frozen_share * size)
    removed = max_removable(lim, size, frozen=frozen, divisor=divisor)
    assert 0 <= removed <= size
    assert _allowed(lim, size, removed, frozen, divisor)
    assert not any(_allowed(lim, size, r, frozen, divisor) for r in range(removed + 1, size + 1))


def test_switch_regularizer_gives_the_baseline_as_published():
    from gdp_graph.policy import GDP_ONLY_KEYS, load_policy, switch_regularizer
    data = load_policy("cifar_resnet").to_dict()
    switch_regularizer(data, "polarization")
    reg = policy_from_dict(data).regularizer
    assert reg.name == "polarization" and reg.epsilon is None and reg.t is not None
    assert not reg.hold_budget and not reg.lr_by_cost and not reg.lambda_controller.deadline
    assert not set(GDP_ONLY_KEYS) & set(data["regularizer"])
