"""Every Python block of the README runs as written (in a scratch directory)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


class ChannelScale(nn.Module):
    """A user's channel-wise layer, as the README's rule examples assume (``MyChannelScale``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.isfinite().all()):  # data-dependent: fx cannot trace this, only a rule explains it
            return x * self.weight.view(1, -1, 1, 1)
        return x


def test_the_readme_has_the_blocks_this_test_expects():
    blocks = python_blocks()
    assert len(blocks) == 5
    assert "register_channelwise(MyChannelScale" in blocks[2] and "@register_rule(MyChannelScale)" in blocks[3]


def test_api_blocks_run_in_order(tmp_path, monkeypatch):
    """The analysis block, the training loop (which uses its ``model`` and ``x``) and the
    Hugging Face block share one namespace, as a reader runs them one after the other."""
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    namespace: dict = {}
    from gdp_graph.gates.model import GateInitWarning
    with warnings.catch_warnings():  # the loop applies its policy's gate start
        warnings.simplefilter("error", GateInitWarning)
        for index in (0, 1, 4):
            exec(compile(blocks[index], f"README.md python block {index + 1}", "exec"), namespace)
    assert namespace["pruned"].__class__.__name__ == "LlamaForCausalLM"
    assert (tmp_path / "pruned-llama" / "config.json").exists()


@pytest.mark.parametrize("index", [2, 3])
def test_rule_blocks_register_a_working_rule(index):
    import copy

    import gdp_graph as G
    layer_type = type("MyChannelScale", (ChannelScale,), {})  # a fresh type: each block registers it
    namespace = {"G": G, "torch": torch, "copy": copy, "MyChannelScale": layer_type}
    exec(compile(python_blocks()[index], f"README.md python block {index + 1}", "exec"), namespace)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), layer_type(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    analysis = G.analyze(model, torch.randn(2, 3, 8, 8))
    plan = G.random_plan(analysis, 0.5, seed=0)
    assert plan.keep, "the user's layer froze its channels: its rule did not run"
    pruned_applied = G.apply_plan(analysis, plan)
    pruned = pruned_applied.model
    assert pruned_applied.verify.ok


def setup_commands() -> list[str]:
    """The bash commands of the README's "Set up" section."""
    section = README.read_text(encoding="utf-8").split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_the_setup_commands_install_run_the_main_job_and_the_tests_as_ci_does():
    import shlex
    import tomllib

    from gdp_graph.cli.main import build_parser
    root = README.parent
    install_and_train, tests = setup_commands()
    steps = [shlex.split(s) for s in install_and_train.split("&&")]
    assert steps[0] == ["python3", "-m", "venv", ".venv"]
    ci = (root / ".ci" / "run").read_text()
    pin = next(a for a in steps[1] if a.startswith("torch=="))
    assert steps[1][:3] == [".venv/bin/pip", "install", pin] and steps[1][3:] == ["-e", "."]
    assert f"install -q {pin} -e '.[test]'" in ci, "the README and CI pin different torch versions"
    assert steps[2][0] == ".venv/bin/gdp-graph"
    args = build_parser().parse_args(steps[2][1:])  # every flag of the main command exists
    assert args.command == "train" and args.data.endswith("cifar-10-python.tar.gz")
    install, run_tests = (shlex.split(s) for s in tests.split("&&"))
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert install[:3] == [".venv/bin/pip", "install", "-e"] and install[3] == ".[test]" and "test" in extras
    assert run_tests == [".venv/bin/python", "-m", "pytest"]
    assert '"$venv/bin/python" -m pytest' in ci


def test_the_policy_example_is_valid_and_the_shipped_policies_it_names_exist():
    from gdp_graph.policy import available_policies, load_policy
    text = README.read_text(encoding="utf-8")
    (example,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    policy = load_policy(example, name="README example")
    assert policy.target.fraction == 0.5 and policy.regularizer.name == "gdp"
    section = text.split("## Policies", 1)[1].split("```yaml", 1)[0]
    named = set(re.findall(r"`([a-z0-9_]+)`", section.split("Shipped policies", 1)[1]))
    assert named and named <= set(available_policies()), named - set(available_policies())
