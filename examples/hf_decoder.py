"""A Hugging Face decoder (a tiny Llama, random init: no download) pruned with GDP from a policy
in your own training loop: attention heads (grouped-query: a key/value head with its query
heads), MLP channels; the pruned model still returns ``CausalLMOutputWithPast``.

    python examples/hf_decoder.py --steps 60

Models that torch.fx cannot trace go through the torch.export front end, whose graph is
specialised to the example inputs' shapes: train with batches of the example's shape.
"""

import argparse
import warnings

import torch
import torch.nn.functional as F
import transformers

import gdp_graph as G
from gdp_graph.gates.finalize import finalize


def tiny_llama() -> transformers.LlamaForCausalLM:
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def batches(steps: int, batch: int = 8, length: int = 16):
    """Sequences counting up from a random start (mod 64): the next token is predictable."""
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        start = torch.randint(0, 64, (batch, 1), generator=g)
        yield (start + torch.arange(length)) % 64


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--policy", default="default", help="YAML policy file or shipped name")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = tiny_llama()
    example = {"input_ids": next(batches(1)), "use_cache": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notices about the HF model
        gated = G.attach(model, args.policy, example_inputs=example, total_steps=args.steps)
    weights = torch.optim.AdamW(gated.weight_parameters(), lr=3e-3)
    gates = gated.gate_optimizer()
    for ids in batches(args.steps):
        logits = gated(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)) + gated.penalty()
        weights.zero_grad(); gates.zero_grad()
        loss.backward()
        weights.step(); gates.step()
        gated.step()
    pruned, report = finalize(gated)
    output = pruned(**example)
    shapes = {name: tuple(p.shape) for name, p in pruned.named_parameters() if name.endswith(("q_proj.weight", "up_proj.weight"))}
    print(f"loss {loss.item():.3f}; FLOPs kept {report.after.flops / report.before.flops:.3f}; params "
          f"{report.before.params:,} -> {report.after.params:,}; {report.check}; output {type(output).__name__}")
    for name, shape in shapes.items():
        print(f"  {name}: {shape}")
    return {"report": report, "output": output, "shapes": shapes}


if __name__ == "__main__":
    main()
