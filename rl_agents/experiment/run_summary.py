"""What a tracked run says about itself in words: its page's validation table and its logged model's input (pure
functions; :mod:`rl_agents.experiment.tracking` writes them to MLflow)."""

from __future__ import annotations

from typing import Any

from rl_agents.config import TrainConfig


VALIDATION_SUMMARY = (("dice", "Dice"), ("iou", "IoU"), ("biou", "Boundary IoU"), ("hd95", "HD95 px"),
                      ("ppv", "PPV"), ("sensitivity", "sensitivity"))


def run_note(metrics: dict[str, Any], heading: str) -> str:
    """The run's description (``mlflow.note.content``, the first thing its page shows; MLflow lists metrics
    alphabetically, validation after training): a table of the validation figures under ``heading``."""
    cells = [(name, metrics[f"val/{key}"]) for key, name in VALIDATION_SUMMARY if f"val/{key}" in metrics]
    if not cells:
        return heading
    return (f"**{heading}**\n\n| " + " | ".join(n for n, _ in cells) + " |\n|" + "---:|" * len(cells) + "\n| "
            + " | ".join(f"{float(v):.3f}" if isinstance(v, (int, float)) else str(v) for _, v in cells) + " |")


def model_input(cfg: TrainConfig, in_channels: int) -> dict[str, Any]:
    """What the logged model takes, stated in its metadata (the signature gives shapes, not their meaning)."""
    d = cfg.data
    return {"input_channels": in_channels, "image_size": d.size,
            "input": f"float32 (batch, {in_channels}, {d.size or 'H'}, {d.size or 'W'}), each image prepared as in "
                     f"training: data.channels {d.channels}, normalize {d.normalize}, context {d.context}",
            "output": "float32 masks (batch, H, W) in {0, 1}" if cfg.model == "pixeldrl" else "foreground logits (batch, 1, H, W)"}
