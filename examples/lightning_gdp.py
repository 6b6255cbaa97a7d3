"""GDP inside a PyTorch Lightning training run (``pip install 'gdp-graph[lightning]'``): the
callback gates ``self.model``, adds the penalty, steps the schedule and finalizes at the end.

    python examples/lightning_gdp.py --epochs 4 --out runs/lightning
"""

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from gdp_graph.integrations.lightning import GdpCallback
from gdp_graph.prune.export import save

try:  # run as `python examples/lightning_gdp.py` or imported as examples.lightning_gdp
    from own_model import model as make_model, task as make_task
except ImportError:
    from examples.own_model import model as make_model, task as make_task


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model, _ = make_model()

    def training_step(self, batch, _):
        images, labels = batch
        loss = F.cross_entropy(self.model(images), labels)  # no penalty here: the callback adds it
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--policy", default="default")
    parser.add_argument("--out", default="runs/lightning")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    module, (_, example_inputs) = Classifier(), make_model()
    gdp = GdpCallback(policy=args.policy, example_inputs=example_inputs)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", callbacks=[gdp], logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, make_task().train_loader)
    report = gdp.driver.finalize_report
    Path(args.out).mkdir(parents=True, exist_ok=True)
    save(gdp.pruned, Path(args.out) / "pruned.pt")
    kept = report.after.flops / report.before.flops
    print(f"FLOPs kept {kept:.3f}, params {report.before.params:,} -> {report.after.params:,}; {report.check}")
    return kept


if __name__ == "__main__":
    main()
