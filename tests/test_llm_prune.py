"""Pruning decoder language models: policies/llm.yaml on tiny random Llama and Qwen2 configs (no
download), every ``--method``, the step budget, logit distillation, hidden (residual stream)
channels through RMSNorm, layer removal, and the save_pretrained round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import gdp_graph as G
from gdp_graph.graph.cost import CostModel, count_params
from gdp_graph.policy import load_policy, policy_from_dict, resolve
from gdp_graph.recipes.driver import Schedule, run_prune
from gdp_graph.recipes.recovery import Distillation, cycle, distill_loss, frozen_teacher, train_steps
from gdp_graph.recipes.task import model_inputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import tiny_lm  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def _policy(target: float = 0.6):
    data = load_policy("llm").to_dict()
    data["target"]["fraction"] = target
    return policy_from_dict(data, name="llm")


def _run(model, method: str, target: float = 0.6, steps: int = 3, distill: bool = True):
    task = tiny_lm.task()
    _, example = model_inputs(task, next(iter(task.train_loader)))
    policy = _policy(target)
    schedule = Schedule(steps=steps, method=method, optimizer="adam", lr=1e-3, finetune_lr=1e-3, calibration_batches=2)
    return run_prune(model, example, task, policy, schedule, torch.device("cpu"),
                     distill=policy.distill if distill else None)


@pytest.fixture(scope="module")
def llama_analysis():
    model = tiny_lm.llama().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = G.analyze(model, {"input_ids": torch.randint(0, tiny_lm.VOCAB, (2, 16)), "use_cache": False},
                             count_flops=True)
    return model, analysis


def test_llm_policy_gates_heads_mlp_hidden_and_layers(llama_analysis):
    _, analysis = llama_analysis
    resolution = resolve(_policy(), analysis.groups, analysis.blocks)
    gated = [analysis.groups[g] for g in resolution.gated_groups()]
    assert sorted({g.unit for g in gated}) == ["channel", "head"]
    hidden = [g for g in gated if "residual" in g.couplings]
    assert len(hidden) == 1 and not hidden[0].exact  # the stream through the norms, allowed as inexact
    assert len([g for g in gated if g.unit == "channel"]) == 4  # 3 MLPs + the stream
    assert len(resolution.gated_blocks()) == 6  # attention and MLP branch of each of 3 layers
    assert [len(s) for s in resolution.uniform_sets] == [3, 3]  # heads and MLP widths tied across layers


def test_params_budget_counts_the_tied_embedding_once_and_scales_it(llama_analysis):
    model, analysis = llama_analysis
    cost = CostModel(analysis)
    assert cost.total.params == count_params(model)
    hidden = next(g for g in analysis.groups if "residual" in g.couplings)
    plan = G.PruningPlan(keep={hidden.id: tuple(range(96))}, allow_inexact=True)
    pruned = G.rewrite(analysis, plan, keep_class=False)
    assert cost.plan_cost(plan.keep).params == count_params(pruned)  # embedding shrinks with the stream


def test_hidden_channels_keep_the_class_and_verify_reports_the_difference(llama_analysis, tmp_path):
    import transformers as T
    from gdp_graph.prune.keep_class import keep_class_of
    from gdp_graph.prune.verify import verify
    _, analysis = llama_analysis
    hidden = next(g for g in analysis.groups if "residual" in g.couplings)
    plan = G.PruningPlan(keep={hidden.id: tuple(range(0, 128, 2)) + tuple(range(1, 64, 2))}, allow_inexact=True)
    pruned = G.rewrite(analysis, plan, keep_class=False)
    assert not verify(analysis, plan, pruned).ok  # inexact through RMSNorm: reported, never called equal
    kept = keep_class_of(analysis, plan, pruned)
    assert isinstance(kept.model, T.LlamaForCausalLM), kept.reason
    assert kept.model.config.hidden_size == 96
    assert kept.model.model.embed_tokens.weight is kept.model.lm_head.weight  # still tied
    assert kept.model.model.embed_tokens.embedding_dim == 96 == kept.model.lm_head.in_features  # sized with it
    kept.model.save_pretrained(tmp_path / "hf")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, tiny_lm.VOCAB, (2, 11))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, kept.model.eval()(input_ids=ids).logits, atol=1e-5)
    heads = next(g for g in analysis.groups if g.unit == "head")
    exact = G.PruningPlan(keep={heads.id: (1,)})
    assert verify(analysis, exact, G.rewrite(analysis, exact, keep_class=False)).ok  # exact plans stay exact


@pytest.mark.parametrize("method", ["activation", "magnitude", "taylor"])
def test_one_shot_width_methods_reach_the_budget_and_recover(method):
    result = _run(tiny_lm.llama(), method)
    kept = result.finalize_report.after.params / result.finalize_report.before.params
    assert abs(kept - 0.6) <= 0.03, kept
    assert result.plan.keep and not result.plan.removed_blocks
    assert result.metrics["fine_tuned"] is not None and result.history.step == []  # no gate phase
    assert count_params(result.pruned) == result.finalize_report.after.params


def test_depth_removes_whole_layers_only(tmp_path):
    import transformers as T
    from gdp_graph.prune.hf_save import save_hf
    from gdp_graph.prune.keep_class import keep_class_of
    result = _run(tiny_lm.llama(), "depth", target=0.8, distill=False)
    assert result.plan.removed_blocks and not result.plan.keep
    names = [result.analysis.blocks[b].name for b in result.plan.removed_blocks]
    assert len(names) == 2 and len(set(names)) == 1  # attention and MLP of one decoder layer
    assert result.finalize_report.check.ok  # removing branches is exact against the gated reference
    kept = keep_class_of(result.analysis, result.plan, result.pruned)
    assert save_hf(kept.model, result.analysis, result.plan, tmp_path / "hf")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert loaded.config.num_hidden_layers == 2


def test_gdp_with_a_step_budget_cuts_then_recovers_with_distillation():
    result = _run(tiny_lm.qwen2(), "gdp", steps=6)
    report = result.gates_report
    assert report["step"] < 6  # the gated phase ended at the cut, the rest recovered the pruned model
    assert result.metrics["fine_tuned"] is not None
    kept = result.finalize_report.after.params / result.finalize_report.before.params
    assert abs(kept - 0.6) <= 0.07, kept  # the cut ranks by theta: one key/value head is 9% of this model


def test_distill_loss_is_zero_for_equal_logits_and_the_teacher_stays_frozen():
    a = torch.randn(2, 5, 7)
    assert float(distill_loss(a, a, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(a, torch.randn(2, 5, 7), 2.0)) > 0
    model = tiny_lm.llama()
    teacher = frozen_teacher(model, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the original is left alone
    before = [p.clone() for p in teacher.parameters()]
    task = tiny_lm.task()
    student = tiny_lm.llama()
    train_steps(student, task, torch.device("cpu"), 2, torch.optim.AdamW(student.parameters(), lr=1e-2),
                distill=Distillation(teacher, 2.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert all(p.grad is None for p in teacher.parameters())


def test_step_budget_cycles_the_loader():
    assert len(list(cycle([1, 2, 3], 7))) == 7
    task = tiny_lm.task()
    seen = []
    model = tiny_lm.llama()
    train_steps(model, task, torch.device("cpu"), 40, torch.optim.SGD(model.parameters(), lr=0.0),
                after_step=lambda step, loss, info: seen.append((step, info)))
    assert [s for s, _ in seen] == list(range(1, 41))  # 32 windows / 2 = 16 batches per pass, cycled
    assert "tokens_per_s" in seen[-1][1]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=600)


def test_cli_prune_a_language_model_one_shot_with_distillation(tmp_path):
    done = _cli("prune", "tests/fixtures/tiny_lm.py:llama", "--task", "tests/fixtures/tiny_lm.py:task", "--policy",
                "llm", "--target", "0.6", "--method", "activation", "--steps", "2", "--distill", "--out",
                str(tmp_path / "o"), "--json", "--no-progress", "--no-pictures")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["method"] == "activation" and report["distill"] == {"temperature": 2.0, "alpha": 0.5}
    assert report["pruned_class"] == "LlamaForCausalLM" and abs(report["cost"]["params_kept"] - 0.6) <= 0.03
    assert report["schedule"]["steps"] == 2 and report["task_metric"]["fine_tuned"] is not None
    import transformers as T
    assert report["hf"]["tokenizer"] is True  # the TASK's tokenizer goes into DIR/hf
    assert T.AutoTokenizer.from_pretrained(tmp_path / "o" / "hf")("t5 t7")["input_ids"] == [5, 7]


def test_cli_method_works_for_any_model(tmp_path):
    done = _cli("prune", "tests/fixtures/synthetic_task.py:model", "--task", "tests/fixtures/synthetic_task.py:task",
                "--target", "0.5", "--method", "taylor", "--finetune-epochs", "1", "--out", str(tmp_path / "o"),
                "--json", "--no-progress", "--no-pictures")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["method"] == "taylor" and report["finalize"]["equal"] is True
    assert abs(report["cost"]["flops_kept"] - 0.5) <= 0.05
    assert report["task_metric"]["fine_tuned"] is not None


def test_a_hidden_size_transformers_refuses_saves_in_the_per_layer_form(llama_analysis, tmp_path):
    import transformers as T
    from gdp_graph.prune.hf_save import save_hf
    from gdp_graph.prune.keep_class import keep_class_of
    _, analysis = llama_analysis
    hidden = next(g for g in analysis.groups if "residual" in g.couplings)
    plan = G.PruningPlan(keep={hidden.id: tuple(range(100))}, allow_inexact=True)  # 100 % 8 heads != 0
    kept = keep_class_of(analysis, plan, G.rewrite(analysis, plan, keep_class=False)).model
    assert save_hf(kept, analysis, plan, tmp_path / "hf") is False  # needs trust_remote_code
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    ids = torch.randint(0, tiny_lm.VOCAB, (1, 9))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, kept.eval()(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("hidden_kept, plain", [(100, True), (102, False)])
def test_every_kind_of_unit_and_a_removed_layer_round_trip_through_a_fresh_interpreter(llama_analysis, tmp_path,
                                                                                      hidden_kept, plain):
    """Hidden channels, one key/value head of two (4 query heads left), half the MLP and a whole
    layer: a plain folder when the hidden size is a multiple of the heads left (100), else the
    per-layer form (102). It loads without gdp_graph, computes the pruned model's logits and
    generates the same tokens with and without the KV cache."""
    from gdp_graph.prune.hf_save import save_hf
    from gdp_graph.prune.keep_class import keep_class_of
    sys.path.insert(0, str(ROOT / "tests"))
    from test_hf_save import IDS, load_elsewhere
    _, analysis = llama_analysis
    hidden = next(g for g in analysis.groups if "residual" in g.couplings)
    keep = {hidden.id: tuple(range(0, 128, 2)) + tuple(range(1, 2 * (hidden_kept - 64), 2))}
    keep |= {g.id: (1,) for g in analysis.groups if g.unit == "head" and g.prunable}
    keep |= {g.id: tuple(range(0, 192, 2)) for g in analysis.groups if g.size == 192 and g.prunable}
    removed = frozenset(b.id for b in analysis.blocks if b.name == "model.layers.1")
    plan = G.PruningPlan(keep=keep, removed_blocks=removed, allow_inexact=True)
    kept = keep_class_of(analysis, plan, G.rewrite(analysis, plan, keep_class=False)).model
    assert kept is not None and kept.model.embed_tokens.embedding_dim == hidden_kept
    assert save_hf(kept, analysis, plan, tmp_path / "hf") is plain
    info, logits = load_elsewhere(tmp_path / "hf", remote=not plain)
    assert info == {"gdp": False, "same": True, "layers": 2,
                    "class": "LlamaForCausalLM" if plain else "GdpPrunedLlamaForCausalLM"}
    with torch.no_grad():
        assert torch.allclose(logits, kept.eval()(IDS).logits, atol=1e-5)


def test_gated_under_the_llm_policy_keeps_its_class_and_trains_on_any_shape_and_under_trainer(tmp_path):
    """Gates on heads, MLP and hidden channels and on whole layers, as forward pre-hooks of the
    user's LlamaForCausalLM: batches of other sizes and lengths than the example's, and HF
    Trainer with gradient checkpointing."""
    import transformers as T
    from gdp_graph.integrations.hf import GdpTrainerCallback
    model = tiny_lm.llama()
    data = _policy(0.6).to_dict()
    gated = G.attach(model, data, example_inputs={"input_ids": torch.randint(0, tiny_lm.VOCAB, (1, 8))},
                     total_steps=5)
    assert type(gated.module) is T.LlamaForCausalLM and gated.hooks_reason == ""
    gated.train()
    weights = torch.optim.AdamW([p for n, p in gated.named_parameters() if "gdp_gates" not in n], lr=1e-3)
    gates = gated.gate_optimizer()
    for shape in [(2, 16), (3, 5), (1, 11)]:
        x = torch.randint(0, tiny_lm.VOCAB, shape)
        loss = gated(input_ids=x, labels=x).loss + gated.penalty()
        loss.backward()
        weights.step(), gates.step(), weights.zero_grad(), gates.zero_grad(), gated.step()
        assert torch.isfinite(loss)
    rows = [{"input_ids": tiny_lm.counting(1, n)[:n], "labels": tiny_lm.counting(1, n)[:n]} for n in (6, 13)]
    args = T.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=1,
                               gradient_checkpointing=True, report_to=[], use_cpu=True, save_strategy="no",
                               learning_rate=1e-3)
    T.Trainer(model=gated, args=args, train_dataset=rows, callbacks=[GdpTrainerCallback(gated, finalize=False)]).train()
    assert gated.module.is_gradient_checkpointing and int(gated.bank.step) == 2  # the Trainer's global step
