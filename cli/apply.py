"""``weightzoo apply``: train on a new biased dataset with a frozen weighter vs baselines."""

from __future__ import annotations

from pathlib import Path

import click

from weightzoo.cli import options
from weightzoo.cli.train import ACC_COLUMNS
from weightzoo.partial_regime import APPLY_REGIMES
from weightzoo.training.engine import REBALANCE_MODES, Schedule
from weightzoo.weighting.nets import BASE_LOSSES


def default_milestones(epochs: int) -> list[int]:
    """lr drops at 2/3 and 5/6 of training (MW-Net's 20 and 25 of 30 epochs)."""
    return sorted({max(1, epochs * 2 // 3), max(1, epochs * 5 // 6)} - {epochs})


def default_warmup(epochs: int, learned_loss: bool = False) -> int:
    """A weighter: 2 plain-CE epochs, but always at least one weighted epoch. A learned loss:
    none (it trains from the first step, as the robust-loss baselines do)."""
    return 0 if learned_loss else max(0, min(2, epochs - 1))


@click.command()
@click.argument("weighter")
@click.option("--data", "dataset", required=True,
              help="Target dataset: digits, mnist5k, mnist, fashion-mnist, cifar10, cifar100, "
                   "imagefolder:PATH, npz:PATH.")
@click.option("--data-root", default=None, help="Directory holding the dataset's files.")
@click.option("--bias", default="none", show_default=True,
              help="Bias to inject, e.g. symmetric:0.4, asymmetric:0.4, longtail:50+pairflip:0.2.")
@click.option("--model", "model_name", default="mlp", show_default=True,
              help="mlp, cnn, resnet32 or torchvision:NAME.")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--milestones", default=None, help="Epochs where the lr drops 10x, e.g. 10,15 "
              "(default: 2/3 and 5/6 of the epochs).")
@click.option("--warmup-epochs", type=int, default=None,
              help="Plain-CE epochs before the weighter's weighting (or the learned loss) starts "
                   "(default: 2 for a weighter, fewer when --epochs < 3; 0 for a learned loss).")
@click.option("--rebalance", type=click.Choice(REBALANCE_MODES), default="none", show_default=True,
              help="deferred: from the first milestone, weight every run's losses (the weighter's "
                   "and the baselines') by their labels' class-balanced weights (DRW, Cao et al. "
                   "2019), for long-tailed data.")
@click.option("--augment", is_flag=True, help="Random crop + flip (images >= 28 px).")
@click.option("--revision", default=None, help="Hub revision of WEIGHTER.")
@click.option("--loss", type=click.Choice(["auto", *BASE_LOSSES]), default="auto", show_default=True,
              help="Weighted loss: the one WEIGHTER was trained with (auto), weighted CE, GCE, "
                   "SCE or class-balanced CE (class weights from this data's counts), or the "
                   "soft-label loss of CMW-Net-SL (EMA teacher + mixup).")
@click.option("--regime", type=click.Choice(APPLY_REGIMES), default="supervised",
              show_default=True,
              help="partial: PRODEN on the candidate sets first (the 'proden' baseline), then the "
                   "weighter and the baselines on its predicted labels (needs --bias partial:q, "
                   "partial-pair:q or an npz with S). fixmatch: semi-supervised, the weighter as "
                   "FixMatch's mask (baseline: fixmatch, the threshold mask).")
@click.option("--labeled-per-class", type=int, default=4, show_default=True,
              help="fixmatch regime: labelled samples per class (the rest is used without labels).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--resume", is_flag=True, help="Continue the runs in OUT from their checkpoints.")
@click.option("--weights-report", is_flag=True,
              help="Write OUT/weights.csv: every training sample's weight, with noisy flags.")
@options.overwrite_option
@options.baseline_option
@options.threads_option
@options.run_options
def apply(weighter: str, dataset: str, data_root: str | None, bias: str, model_name: str,
          epochs: int, batch_size: int, lr: float, milestones: str | None, warmup_epochs: int | None,
          rebalance: str, augment: bool, revision: str | None, loss: str, regime: str, labeled_per_class: int,
          out: Path, resume: bool,
          overwrite: bool, weights_report: bool, baselines: tuple[str, ...], device: str, seed: int | None,
          as_json: bool, no_progress: bool, threads: int | None) -> None:
    """Train on DATA with the frozen WEIGHTER (families re-fitted on DATA's class counts),
    and with each --baseline on identical data, model, schedule and seed."""
    from weightzoo.artifact.hub import load_pretrained
    from weightzoo.distributed import rank_and_world
    from weightzoo.pipeline import apply_weighter
    from weightzoo.weighting.learned_loss import LearnedRobustLoss

    options.set_threads(threads)
    steps = default_milestones(epochs) if milestones is None else [
        int(m) for m in milestones.split(",") if m.strip()
    ]
    artifact = load_pretrained(weighter, revision=revision)  # once: one revision of a Hub name
    if warmup_epochs is None:
        warmup_epochs = default_warmup(epochs, learned_loss=isinstance(artifact, LearnedRobustLoss))
    schedule = Schedule(epochs=epochs, batch_size=batch_size, lr=lr, milestones=steps,
                        warmup_epochs=warmup_epochs, rebalance=rebalance, augment=augment)
    result = apply_weighter(
        weighter, out, dataset=dataset, bias=bias, model={"name": model_name}, schedule=schedule,
        seed=seed or 0, baselines=baselines, root=data_root, device=device, resume=resume,
        overwrite=overwrite, progress=not no_progress, weights_report=weights_report, revision=revision,
        command=options.command_line(), loss=loss, regime=regime, labeled_per_class=labeled_per_class,
        artifact=artifact,
    )
    if rank_and_world()[0] != 0:
        return
    if as_json:
        options.echo_json(result)
        return
    click.echo(f"{weighter} applied to {dataset} with bias {bias} ({model_name}, {epochs} epochs)")
    click.echo(options.format_table([{"method": m, **r} for m, r in result["runs"].items()], ACC_COLUMNS))
    if result["gain_over_ce"] is not None:
        click.echo(f"gain over CE: {100 * result['gain_over_ce']:+.2f} points")
    if result["families"] is not None:
        fam = result["families"]
        click.echo(f"families on {dataset}: {fam['family_of_class']} ({fam['reason']})")
    if "gain_over_proden" in result:
        label_acc = result["data"]["bias"]["proden"]["label_acc"]
        known = "" if label_acc is None else f"; PRODEN's predicted labels {100 * label_acc:.2f}% correct"
        click.echo(f"gain over PRODEN: {100 * result['gain_over_proden']:+.2f} points{known}")
    if "gain_over_fixmatch" in result:
        click.echo(f"gain over FixMatch ({labeled_per_class} labels per class): "
                   f"{100 * result['gain_over_fixmatch']:+.2f} points")
    if "weights" in result:
        w = result["weights"]
        click.echo(f"weights: {out / w['path']} (mean clean {w['mean_weight_clean']}, "
                   f"mean noisy {w['mean_weight_noisy']})")
