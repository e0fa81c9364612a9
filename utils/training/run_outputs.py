"""What a training run writes into its folder: hyp/opt yaml, results.csv, weights and plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from torch import nn

from utils.evaluation.metrics import METRIC_KEYS, TRAIN_LOSS_KEYS, VAL_LOSS_KEYS
from utils.files import write_atomic
from utils.plots.data import plot_batch, plot_labels
from utils.plots.results import plot_results
from utils.plots.training import plot_lr
from utils.training.best_validation import validate_best
from utils.training.checkpoint import float_state_dict, save_checkpoint
from utils.training.distributed import unwrap_model
from utils.training.schedule import learning_rate_curve
from utils.training.tensorboard_log import TensorBoardLog
from utils.yolo_csv import format_header, format_row

if TYPE_CHECKING:
    from utils.data.prepared import PreparedData
    from utils.training.engine import StepContext
    from utils.training.options import TrainOptions

LOGGER = logging.getLogger(__name__)
RESULT_COLUMNS = ("epoch", *TRAIN_LOSS_KEYS, *METRIC_KEYS, *VAL_LOSS_KEYS, "x/lr0", "x/lr1", "x/lr2")


def training_state(model: nn.Module, context: StepContext) -> dict:
    """The parts of a checkpoint that resume needs beyond the EMA weights."""
    return {
        "training_model": float_state_dict(unwrap_model(model)),
        "optimizer": context.optimizer.state_dict(),
        "scheduler": context.scheduler.state_dict(),
        "ema": float_state_dict(context.ema.ema),
        "ema_updates": context.ema.updates,
    }


class RunOutputs:
    """Writes a run's files; every method is a no-op when the run has no folder (evolution children)."""

    def __init__(self, options: TrainOptions, hyp: dict[str, float], data: PreparedData, context: StepContext):
        self.options, self.hyp, self.data, self.context = options, hyp, data, context
        self.save_dir: Path | None = Path(options.outputs.save_dir) if options.outputs.save_dir is not None else None
        self.weights_dir = self.save_dir / "weights" if self.save_dir is not None else None
        self.tensorboard = TensorBoardLog()  # opened by start(): event files go into the run folder

    def start(self, dataset, loader, first_epoch: int = 0) -> None:
        """hyp.yaml, opt.yaml, labels.jpg and train_batch0.jpg, before the first epoch (``first_epoch``: a resumed
        run's, whose later results.csv rows go, see ``drop_rows_from``)."""
        if self.save_dir is None:
            return
        if self.options.resume:
            self.drop_rows_from(first_epoch)
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        (self.save_dir / "hyp.yaml").write_text(yaml.safe_dump(self.hyp, sort_keys=False))
        (self.save_dir / "opt.yaml").write_text(yaml.safe_dump(self.options.outputs.record, sort_keys=False))
        self.tensorboard = TensorBoardLog(self.save_dir)
        if self.options.outputs.plots and not self.options.resume:
            plot_labels(self.data.train_split, self.data.names, self.save_dir / "labels.jpg")
            images, targets, paths, _ = next(iter(loader))
            plot_batch(images, targets, paths, self.data.names, self.save_dir / "train_batch0.jpg")
            self.tensorboard.images({name: self.save_dir / f"{name}.jpg" for name in ("labels", "train_batch0")})

    def drop_rows_from(self, epoch: int) -> None:
        """On resume from a checkpoint of epoch ``epoch - 1``: results.csv rows of ``epoch`` and later were written
        after that checkpoint was saved (a run stopped between the row and ``last.pt``); they are trained again, so
        they move to results.dropped.csv, or the rows would repeat."""
        csv_path = self.save_dir / "results.csv" if self.save_dir is not None else None
        if csv_path is None or not csv_path.is_file():
            return
        lines = csv_path.read_text().splitlines()

        def later(line: str) -> bool:
            try:
                return float(line.split(",", 1)[0]) >= epoch
            except ValueError:
                return False  # the header, or a line that is not a row

        dropped = [line for line in lines if later(line)]
        if dropped:
            with (self.save_dir / "results.dropped.csv").open("a") as aside:  # kept, not deleted
                aside.write("\n".join(dropped) + "\n")
            write_atomic(csv_path, "\n".join(line for line in lines if not later(line)) + "\n")
            LOGGER.info(f"{csv_path}: moved {len(dropped)} row(s) from epoch {epoch} on, written after the "
                        "checkpoint it resumes from, to results.dropped.csv; they are trained again")  # fmt: skip

    def end_epoch(
        self, epoch: int, metrics: dict[str, float], improved: bool, best_fitness: float, model, final: bool
    ) -> None:
        """Append to results.csv (NaN for an epoch not validated) and save last.pt, plus best.pt when fitness
        improved; with --nosave only the final epoch (last, or stopped early) saves."""
        if self.save_dir is None:
            return
        learning_rates = [group["lr"] for group in self.context.optimizer.param_groups]
        row = {**metrics, "epoch": epoch, **{f"x/lr{i}": lr for i, lr in enumerate(learning_rates)}}
        csv_path = self.save_dir / "results.csv"
        lines = [] if csv_path.exists() else [format_header(RESULT_COLUMNS)]
        lines.append(format_row([float(row.get(name, float("nan"))) for name in RESULT_COLUMNS]))
        with csv_path.open("a") as handle:
            handle.write("\n".join(lines) + "\n")
        self.tensorboard.scalars(epoch, {name: row[name] for name in RESULT_COLUMNS[1:] if name in row})
        if self.options.outputs.save_weights or final:
            self.save_weights(model, epoch, metrics, best_fitness, improved)

    def save_weights(self, model: nn.Module, epoch: int, metrics: dict, best_fitness: float, improved: bool) -> None:
        ema_model = self.context.ema.ema
        checkpoint = {
            "model_cfg": ema_model.yaml,
            "num_classes": self.data.num_classes,
            "names": self.data.names,
            "single_cls": self.data.single_cls,  # val.py validates such a checkpoint as one class too
            "model": float_state_dict(ema_model),
            "epoch": epoch,
            "best_fitness": best_fitness,
            "hyp": self.hyp,
            "options": self.options.outputs.record,
            "metrics": metrics,
            **training_state(model, self.context),
        }
        save_checkpoint(self.weights_dir / "last.pt", **checkpoint)
        if improved:
            save_checkpoint(self.weights_dir / "best.pt", **checkpoint)
        period = self.options.outputs.save_period
        if period > 0 and epoch % period == 0:  # --save-period, counted as yolov5 does: epoch0.pt, epochN.pt, ...
            save_checkpoint(self.weights_dir / f"epoch{epoch}.pt", **checkpoint)

    def close(self) -> None:
        """Close the TensorBoard event file (``finish`` does too); safe to call twice."""
        self.tensorboard.close()

    def finish(self, model: nn.Module, context: StepContext) -> None:
        """best.pt validated again (its table, and its plots unless --noplots; not with the console off, as for
        evolution children that keep their folders), then results.png and lr.png."""
        self.tensorboard.close()
        if self.save_dir is not None and self.options.outputs.show_progress:
            validate_best(self.save_dir, self.data, self.options)
        if self.save_dir is None or not self.options.outputs.plots:
            return
        if (self.save_dir / "results.csv").exists():
            plot_results(self.save_dir / "results.csv", self.save_dir / "results.png")
        axis, curve = learning_rate_curve(
            context.scheduler, context.step_hyp, context.num_batches, context.warmup_iters
        )
        plot_lr(axis, curve, self.save_dir / "lr.png")
        LOGGER.info(f"results saved to {self.save_dir}")
