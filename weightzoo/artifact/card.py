"""Generate a weighter's model card (``README.md``) with Hub metadata.

The card is rendered from the weighter's config alone, so it always agrees with the
tensors it describes.  Provenance is the typed ``Provenance`` record of
``weightzoo.artifact.format`` stored in ``config.metadata``.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from weightzoo.artifact.curve import curve_table
from weightzoo.artifact.format import Artifact, Provenance
from weightzoo.weighting.learned_loss import LearnedRobustLoss
from weightzoo.weighting.nets import CMWNet
from weightzoo.weighting.weighted_loss import meta_training_warmup_epochs

LIBRARY_NAME = "weightzoo"
# what a weighter's loss input normalisation does, as its card says it
INPUT_NORM_MEANING = {"log_classes": " (loss / ln C of the data it is applied to)",
                      "batch_mean": " (loss / the mean loss of its batch)"}


def card_tags(weighter: Artifact) -> list[str]:
    """Hub search tags: library, kind, and the kind of bias it was trained on."""
    provenance = Provenance.from_metadata(weighter.config.metadata)
    purpose = "robust-loss" if isinstance(weighter, LearnedRobustLoss) else "sample-reweighting"
    tags = [LIBRARY_NAME, purpose, "meta-learning", weighter.config.kind]
    bias = str(provenance.source.get("bias", ""))
    if any(k in bias for k in ("symmetric", "asymmetric", "pairflip", "instance")):
        tags.append("noisy-labels")
    if "longtail" in bias:
        tags.append("long-tail")
    if "partial" in bias:
        tags.append("partial-labels")
    return tags


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, sort_keys=True) + "\n```"


def _weighter_sections(weighter: CMWNet) -> list[str]:
    cfg = weighter.config
    return [
        f"A learned sample-weighting function ({cfg.kind.upper()}, {cfg.num_families} task "
        f"famil{'y' if cfg.num_families == 1 else 'ies'}) for robust training on biased data. "
        "It maps a sample's cross entropy (and, for CMW-Net, the size family of its label's "
        "class) to a weight in [0, 1]"
        + (f" that multiplies the sample's `{cfg.base_loss}` loss." if cfg.base_loss != "ce" else ".")
        + (" Its class weights (Cui et al. 2019) come from the class counts of the data it is "
           "applied to, so pass your training labels." if cfg.base_loss == "class-balanced" else ""),
        "## Usage",
        "```python\nfrom weightzoo import WeightedLoss\n\n"
        "# NAME: a shipped zoo name, a local directory, or a Hub repo id org/name[@revision]\n"
        "crit = WeightedLoss.from_pretrained(\"NAME\", "
        "labels=train_labels, num_classes=C)\n"
        + ("loss = crit.soft_label_loss(model(x), y, teacher_probs)  # trained with the SL loss\n```"
           if cfg.base_loss == "sl" else
           f"loss = crit(model(x), y)  # weighted {_loss_label(cfg.base_loss)}; "
           "crit.last_weights holds the batch's weights\n```"),
        _warmup_line(weighter),
        "## Weighting function",
        f"- base loss: `{cfg.base_loss}`; loss input normalisation: `{cfg.input_norm}`"
        + INPUT_NORM_MEANING.get(cfg.input_norm, "")
        + f"; weighted-loss normalisation: `{cfg.normalization}`",
        f"- source classes: {cfg.source_num_classes}; hidden width: {cfg.hidden}",
        ("Weight at losses from 0 to 4 times the batch's mean loss:" if cfg.input_norm == "batch_mean"
         else "Weight at raw losses from 0 to 3 ln C (source C):"),
        curve_table(weighter, 9).markdown(),
    ]


def _loss_label(base_loss: str) -> str:
    """How a card names the loss the weights multiply (the SL weighter warms up with CE)."""
    return {"sl": "CE", "class-balanced": "class-balanced CE"}.get(base_loss, base_loss.upper())


def _warmup_line(weighter: CMWNet) -> str:
    """How the criterion warms up, from the meta-training schedule the metadata records."""
    epochs = meta_training_warmup_epochs(weighter)
    if not epochs:
        return "No warm-up is recorded: the criterion weights from the first step."
    loss = _loss_label(weighter.config.base_loss)
    return (f"Meta-trained after {epochs:g} plain-{loss} epoch(s): the criterion returns the plain "
            f"mean {loss} for the first {epochs:g} epoch(s) of your data (counted in training "
            "samples), then weights. `warmup_epochs=0` turns this off.")


def _robust_loss_sections(loss: LearnedRobustLoss) -> list[str]:
    values = ", ".join(f"{name} = {value:.4g}" for name, value in loss.hyperparameters().items())
    return [
        f"A robust loss (`{loss.config.loss}`) whose hyper-parameters were meta-learned "
        f"(adaptive robust loss): {values}.",
        "## Usage",
        "```python\nfrom weightzoo import LearnedRobustLoss\n\n"
        "crit = LearnedRobustLoss.from_pretrained(\"NAME\")\n"
        "loss = crit(model(x), y).mean()  # per-sample losses, fixed hyper-parameters\n```",
        "## Loss", f"- source classes: {loss.config.source_num_classes}",
        "Loss of a sample by its cross entropy (labelled-class probability exp(-CE)):",
        curve_table(loss, 9).markdown(),
    ]


def cell_seeds(transfer: dict[str, Any], row: dict[str, Any]) -> int:
    """How many seeds a transfer cell's means are over (a record written before cells carried
    their own count gives it once, for all its cells)."""
    return row.get("seeds", len(transfer.get("seeds", [])))


def _transfer_table(transfer: dict[str, Any]) -> str:
    """The transfer record as a markdown table: where the entry helped and where it did not."""
    drw = any("best_drw" in row for row in transfer["cells"].values())
    lines = [f"From `{transfer['benchmark']}` (last run {transfer['date']}; test accuracy %, mean over "
             "the row's seeds, paired: every method of a row ran on the same seeds' data; "
             "`weightzoo apply` defaults"
             + ("; cells marked `deferred` ran this entry with `--rebalance deferred`: CE and the "
                "best robust loss are still the plain baselines, the last column the best of those "
                "trained with it too (`drw-*`)" if drw else "") + "):", "",
             "| target, bias | seeds | this entry | CE | best robust loss | vs CE | vs best robust |"
             + (" best DRW baseline |" if drw else ""),
             "|---|---:|---:|---:|---|---:|---:|" + ("---|" if drw else "")]
    for cell, row in transfer["cells"].items():
        line = (f"| {cell} | {cell_seeds(transfer, row)} | {100 * row['acc']:.2f} | {100 * row['ce']:.2f} | "
                f"{row['best_robust']} "
                f"{100 * row['best_robust_acc']:.2f} | {100 * (row['acc'] - row['ce']):+.2f} | "
                f"{100 * (row['acc'] - row['best_robust_acc']):+.2f} |")
        if drw:
            line += (f" {row['best_drw']} {100 * row['best_drw_acc']:.2f} |" if "best_drw" in row else " |")
        lines.append(line)
    return "\n".join(lines)


def render_model_card(weighter: Artifact, has_curve: bool = True) -> str:
    """Markdown with YAML front matter (library_name, tags) for ``README.md``."""
    cfg = weighter.config
    meta = Provenance.from_metadata(cfg.metadata)
    source, method = meta.source, meta.method
    name = meta.name or f"{cfg.kind} artifact"
    data = ModelCardData(
        library_name=LIBRARY_NAME, tags=card_tags(weighter), license="apache-2.0",
        datasets=sorted({s["dataset"] for s in source.get("sources", [source]) if s.get("dataset")}) or None,
    )
    sections = [f"# {name}", *(_robust_loss_sections(weighter) if isinstance(weighter, LearnedRobustLoss)
                                else _weighter_sections(weighter))]
    if has_curve:
        sections.append("![curve](curve.png)")
    if source:
        sections += ["## Training data", _json_block(source)]
    if meta.families:
        sections += ["## Task families (source data)", _json_block(meta.families)]
    if method:
        sections += ["## Method", _json_block(method)]
    if meta.metrics or meta.baseline:
        sections += ["## Metrics", _json_block({
            "weighter": meta.metrics, f"{meta.baseline.get('method', 'ce')}_baseline": meta.baseline})]
    if meta.transfer:
        sections += ["## Measured transfer (frozen, on data it was not trained on)",
                     _transfer_table(meta.transfer)]
    if meta.command:
        sections += ["## Reproduce", f"```bash\n{meta.command}\n```"]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return str(ModelCard(content))
