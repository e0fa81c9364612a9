"""yolov5's last step of a training run: validate weights/best.pt again, print its per-class table and plot it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from utils.evaluation.validator import run_validation
from utils.training.checkpoint import load_checkpoint, model_from_checkpoint

if TYPE_CHECKING:
    from utils.data.prepared import PreparedData
    from utils.training.options import TrainOptions

LOGGER = logging.getLogger(__name__)


def validate_best(save_dir: Path, data: PreparedData, options: TrainOptions) -> dict[str, float] | None:
    """Validate ``save_dir/weights/best.pt`` on the val split and log the per-class table; unless
    ``options.outputs.plots`` is off, write the PR, F1, P and R curves and the confusion matrix into ``save_dir``.

    Returns the metrics by name, or None when there is no best.pt (--nosave saves one only when the final epoch
    improved)."""
    best = Path(save_dir) / "weights" / "best.pt"
    if not best.is_file():
        LOGGER.info(f"no {best} to validate (--nosave keeps best.pt only when the final epoch is the best)")
        return None
    LOGGER.info(f"\nValidating {best}...")
    model = model_from_checkpoint(load_checkpoint(best)).to(options.device)
    local_batch = max(options.batch_size // options.distributed.world_size, 1)
    validation = run_validation(
        model,
        data.val_loader(local_batch * 2, options.workers),
        data.names,
        device=options.device,
        half=options.amp and options.device.type == "cuda",
        progress=options.outputs.show_progress,
    )
    LOGGER.info(validation.table(per_class=True, header=not options.outputs.show_progress))
    if options.outputs.plots:
        from utils.plots.metrics import plot_validation  # matplotlib only when plotting

        plot_validation(validation.accumulator, save_dir)
    return validation.metrics
