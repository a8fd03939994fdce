"""Generate a weighter's model card (``README.md``) with Hub metadata.

The card is rendered from the weighter's config alone, so it always agrees with the
tensors it describes.  Provenance lives in ``config.metadata`` under these keys (all
optional): ``source`` (dataset, bias, bias_report), ``method`` (name and
hyper-parameters), ``families`` (centres and class counts), ``metrics`` (final metrics
of the meta-training run), ``baseline`` (the CE baseline on the same data),
``command`` and ``seed``.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from weightzoo.plotting import family_names
from weightzoo.weighters import CMWNet

LIBRARY_NAME = "weightzoo"


def card_tags(weighter: CMWNet) -> list[str]:
    """Hub search tags: library, kind, and the kind of bias it was trained on."""
    meta = weighter.config.metadata
    tags = [LIBRARY_NAME, "sample-reweighting", "meta-learning", weighter.config.kind]
    bias = str(meta.get("source", {}).get("bias", ""))
    if any(k in bias for k in ("symmetric", "asymmetric", "pairflip", "instance")):
        tags.append("noisy-labels")
    if "longtail" in bias:
        tags.append("long-tail")
    return tags


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, sort_keys=True) + "\n```"


def _weight_table(weighter: CMWNet) -> str:
    losses = weighter.loss_grid(9)
    weights = weighter.curve(losses)
    names = family_names(weighter.num_families)
    header = "| loss | " + " | ".join(names) + " |"
    rule = "|---|" + "---|" * len(names)
    rows = [
        f"| {loss:.3f} | " + " | ".join(f"{w:.3f}" for w in row.tolist()) + " |"
        for loss, row in zip(losses.tolist(), weights, strict=True)
    ]
    return "\n".join([header, rule, *rows])


def render_model_card(weighter: CMWNet, has_curve: bool = True) -> str:
    """Markdown with YAML front matter (library_name, tags) for ``README.md``."""
    cfg = weighter.config
    meta = cfg.metadata
    source = meta.get("source", {})
    method = meta.get("method", {})
    name = meta.get("name", f"{cfg.kind} weighter")
    data = ModelCardData(
        library_name=LIBRARY_NAME, tags=card_tags(weighter), license="apache-2.0",
        datasets=[source["dataset"]] if source.get("dataset") else None,
    )
    sections = [
        f"# {name}",
        f"A learned sample-weighting function ({cfg.kind.upper()}, {cfg.num_families} task "
        f"famil{'y' if cfg.num_families == 1 else 'ies'}) for robust training on biased data. "
        "It maps a sample's loss (and, for CMW-Net, the size family of its label's class) "
        "to a weight in [0, 1].",
        "## Usage",
        "```python\nfrom weightzoo import WeightedLoss\n\n"
        "# NAME: a shipped zoo name, a local directory, or a Hub repo id org/name[@revision]\n"
        f"crit = WeightedLoss.from_pretrained(\"{meta.get('name', 'NAME')}\", "
        "labels=train_labels, num_classes=C)\n"
        "loss = crit(model(x), y)  # weighted CE; crit.last_weights holds the batch's weights\n```",
        "## Weighting function",
        f"- base loss: `{cfg.base_loss}`; loss input normalisation: `{cfg.input_norm}`"
        + (" (loss / ln C of the data it is applied to)" if cfg.input_norm == "log_classes" else "")
        + f"; weighted-loss normalisation: `{cfg.normalization}`",
        f"- source classes: {cfg.source_num_classes}; hidden width: {cfg.hidden}",
        "Weight at raw losses from 0 to 3 ln C (source C):",
        _weight_table(weighter),
    ]
    if has_curve:
        sections.append("![weight vs loss](curve.png)")
    if source:
        sections += ["## Training data", _json_block(source)]
    if meta.get("families"):
        sections += ["## Task families (source data)", _json_block(meta["families"])]
    if method:
        sections += ["## Method", _json_block(method)]
    if meta.get("metrics") or meta.get("baseline"):
        sections += ["## Metrics", _json_block(
            {"weighter": meta.get("metrics", {}), "ce_baseline": meta.get("baseline", {})}
        )]
    if meta.get("command"):
        sections += ["## Reproduce", f"```bash\n{meta['command']}\n```"]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return str(ModelCard(content))
