"""Choice and integer genes end to end: the meta table, the study, evolve.csv, --evolve-from, resume, the setup pin,
and training with an evolved optimizer (utils/evolution/search_space.py, views.py, importer.py, runner.py,
training_objective.py, utils/training/hyp.py, utils/cli/)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from tests.evolve_worker import synthetic_metrics
from utils import cli
from utils.errors import UserError
from utils.evolution import load_meta, run
from utils.evolution.evaluations import TrustPlan
from utils.evolution.search_space import GeneSpec, parse_gene, validate_search_space
from utils.evolution.views import CSV_METRICS
from utils.training.checkpoint import load_checkpoint
from utils.training.hyp import load_hyp, read_hyp_file
from utils.training.options import TrainOptions

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZER_GENE = GeneSpec(1.0, 0.0, 1.0, "linear", "choice", ("SGD", "AdamW"))
NO_REPEATS = TrustPlan(confirm=0, confirm_seeds=0)


def choice_meta() -> dict[str, GeneSpec]:
    return {**load_meta(), "optimizer": OPTIMIZER_GENE}


def choice_hyp(optimizer: str = "SGD") -> dict[str, float | str]:
    """The default hyp with anchors (an int gene) and the optimizer (a choice gene)."""
    return {**load_hyp(), "anchors": 3.0, "optimizer": optimizer}


def plain(hyp: dict, child: object) -> dict[str, float]:
    return synthetic_metrics(hyp)


def prefers_adamw(hyp: dict, child: object) -> dict[str, float]:
    """synthetic_metrics, better with AdamW and with fewer anchors: fitness depends on both kinds of gene."""
    assert isinstance(hyp["optimizer"], str) and isinstance(hyp["anchors"], int), hyp
    metrics = synthetic_metrics(hyp)
    bonus = 0.05 * (hyp["optimizer"] == "AdamW") - 0.01 * hyp["anchors"]
    return {**metrics, "metrics/mAP_0.5:0.95": metrics["metrics/mAP_0.5:0.95"] + bonus}


def csv_table(path: Path) -> list[dict[str, str]]:
    lines = [[cell.strip() for cell in line.split(",")] for line in path.read_text().splitlines()]
    return [dict(zip(lines[0], row)) for row in lines[1:]]


# --- the meta table and the base hyp --------------------------------------------------------------------------------


def test_a_choice_entry_is_a_categorical_gene():
    spec = parse_gene("optimizer", {"choices": ["SGD", "AdamW"]}, "meta")
    assert spec == OPTIMIZER_GENE and spec.distribution() == CategoricalDistribution(("SGD", "AdamW"))
    assert parse_gene("optimizer", {"choices": ["SGD", "AdamW"], "gain": 0}, "meta").gain == 0


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{choices: [SGD]}", "2 or more distinct names"),
        ("{choices: [SGD, SGD]}", "2 or more distinct names"),
        ("{choices: SGD}", "2 or more distinct names"),
        ("{choices: [SGD, 3]}", "2 or more distinct names"),
        ("{choices: [SGD, AdamW], low: 0}", "unknown field"),
        ("{choices: [SGD, AdamW], gain: -1}", "gain must be a number >= 0"),
    ],
)
def test_bad_choice_entries_are_one_line_errors(tmp_path, entry, expected):
    path = tmp_path / "meta.yaml"
    path.write_text(f"optimizer: {entry}\n")
    with pytest.raises(UserError, match=expected) as error:
        load_meta(path)
    assert "\n" not in str(error.value) and "optimizer" in str(error.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda hyp: hyp.update(optimizer="Adam"), "optimizer='Adam' is not one of SGD, AdamW"),
        (lambda hyp: hyp.update(optimizer=0), "optimizer=0 is not one of SGD, AdamW"),
        (lambda hyp: hyp.update(lr0="0.01"), "lr0='0.01' is not a number"),
        (lambda hyp: hyp.pop("optimizer"), "meta entries without a hyp key: optimizer"),
    ],
)
def test_base_values_must_fit_their_genes(change, expected):
    hyp = choice_hyp()
    change(hyp)
    with pytest.raises(UserError, match=expected) as error:
        validate_search_space(hyp, choice_meta())
    assert "\n" not in str(error.value)


def test_the_space_keeps_names_and_whole_numbers():
    hyp = {"optimizer": "AdamW", **load_hyp(), "anchors": 3.0}  # the choice key first: the views still put it last
    space = validate_search_space(hyp, choice_meta())
    assert space.base_hyp["optimizer"] == "AdamW" and space.choices == {"optimizer": ("SGD", "AdamW")}
    assert space.column_keys == [*load_hyp(), "anchors", "optimizer"]
    child = space.hyp_from_params({"optimizer": "SGD", "anchors": 4.0, "lr0": 0.02})
    assert child["optimizer"] == "SGD" and child["anchors"] == 4 and isinstance(child["anchors"], int)
    assert child["lr0"] == 0.02 and child["mixup"] == hyp["mixup"]
    frozen = validate_search_space(hyp, choice_meta(), freeze=("optimizer",))
    assert "optimizer" not in frozen.genes and frozen.choices == space.choices, "a fixed choice is still a name"


# --- the study, evolve.csv, import and resume -----------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["random", "tpe", "ga", "gp"])
def test_choice_and_int_genes_round_trip_through_study_csv_import_and_resume(tmp_path, sampler):
    first = tmp_path / "first"
    study = run(prefers_adamw, choice_hyp(), choice_meta(), 12, run_dir=first, sampler=sampler, seed=1,
                trust=NO_REPEATS, plots=False)  # fmt: skip
    children = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda trial: trial.number)
    hyps = [child.user_attrs["hyp"] for child in children]
    assert len(children) == 12 and hyps[0] == choice_hyp()
    for child, hyp in zip(children, hyps):
        assert child.params["optimizer"] == hyp["optimizer"] in ("SGD", "AdamW")
        assert child.params["anchors"] == hyp["anchors"] and 2 <= hyp["anchors"] <= 10
    if sampler == "random":
        assert {hyp["optimizer"] for hyp in hyps} == {"SGD", "AdamW"}, "seed 1 draws both optimizers"
    if sampler == "gp":  # past its 10 random children, the model picks them
        assert all("gp:relative_params:0" in child.system_attrs for child in children[10:])

    table = csv_table(first / "evolve.csv")
    header = (first / "evolve.csv").read_text().splitlines()[0]
    columns = [name.strip() for name in header.split(",")]
    assert columns == [*CSV_METRICS, *load_hyp(), "anchors", "optimizer"], "yolov5's columns, then the choice"
    assert [row["optimizer"] for row in table] == [hyp["optimizer"] for hyp in hyps]
    assert [row["anchors"] for row in table] == [str(hyp["anchors"]) for hyp in hyps], "int genes print whole"
    best = max(children, key=lambda child: child.value)
    best_yaml = yaml.safe_load((first / "hyp_evolve.yaml").read_text())
    assert best_yaml["optimizer"] == best.user_attrs["hyp"]["optimizer"] and list(best_yaml)[-1] == "optimizer"
    assert best_yaml["anchors"] == best.user_attrs["hyp"]["anchors"] and isinstance(best_yaml["anchors"], int)

    second = tmp_path / "second"
    imported = run(prefers_adamw, choice_hyp(), choice_meta(), 2, run_dir=second, sampler=sampler, seed=2,
                   evolve_from=first / "evolve.csv", trust=NO_REPEATS, plots=False)  # fmt: skip
    rows = [trial for trial in imported.trials if trial.user_attrs.get("imported")]
    assert [row.user_attrs["hyp"]["optimizer"] for row in rows] == [hyp["optimizer"] for hyp in hyps]
    assert [row.user_attrs["hyp"]["anchors"] for row in rows] == [hyp["anchors"] for hyp in hyps]
    assert [row.params["optimizer"] for row in rows] == [hyp["optimizer"] for hyp in hyps]

    resumed = run(prefers_adamw, choice_hyp(), choice_meta(), 14, run_dir=first, sampler=sampler, seed=1,
                  trust=NO_REPEATS, plots=False)  # fmt: skip
    assert len(resumed.trials) == 14 and [trial.user_attrs["hyp"] for trial in resumed.trials[:12]] == hyps
    assert all(trial.state == TrialState.COMPLETE for trial in resumed.trials)
    assert all(trial.user_attrs["hyp"]["optimizer"] in ("SGD", "AdamW") for trial in resumed.trials[12:])
    if sampler == "gp":
        assert all("gp:relative_params:0" in trial.system_attrs for trial in resumed.trials[12:])
    assert len(csv_table(first / "evolve.csv")) == 14


def test_a_yolov5_csv_without_the_choice_column_takes_the_base_value(tmp_path):
    yolov5 = run(plain, load_hyp(), load_meta(), 3, run_dir=tmp_path / "yolov5", seed=1,
                 trust=NO_REPEATS, plots=False)  # fmt: skip
    assert len(yolov5.trials) == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = run(prefers_adamw, choice_hyp("AdamW"), choice_meta(), 1, run_dir=tmp_path / "choice",
                    evolve_from=tmp_path / "yolov5" / "evolve.csv", trust=NO_REPEATS, plots=False)  # fmt: skip
    imported = [trial for trial in study.trials if trial.user_attrs.get("imported")]
    assert len(imported) == 3 and {trial.user_attrs["hyp"]["optimizer"] for trial in imported} == {"AdamW"}
    assert any("no column for anchors, optimizer" in str(warning.message) for warning in caught)


def test_a_choice_cell_that_is_not_a_choice_is_one_error(tmp_path):
    run(prefers_adamw, choice_hyp(), choice_meta(), 2, run_dir=tmp_path / "first", trust=NO_REPEATS, plots=False)
    text = (tmp_path / "first" / "evolve.csv").read_text().splitlines()
    text[1] = text[1].rsplit(",", 1)[0] + ",Adam"
    (tmp_path / "edited.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(UserError, match="edited.csv line 2: optimizer 'Adam' is not one of SGD, AdamW"):
        run(prefers_adamw, choice_hyp(), choice_meta(), 1, run_dir=tmp_path / "second",
            evolve_from=tmp_path / "edited.csv", trust=NO_REPEATS, plots=False)  # fmt: skip


def test_evolve_png_has_a_strip_panel_per_choice_gene(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from utils.plots.evolution import draw_choice_panel

    figure, panel = plt.subplots()
    draw_choice_panel(panel, "optimizer", ["SGD", "AdamW", "SGD"], np.array([0.1, 0.3, 0.2]), best=1)
    assert [label.get_text() for label in panel.get_xticklabels()] == ["AdamW", "SGD"]
    assert panel.get_title() == "optimizer = AdamW"
    plt.close(figure)
    run(prefers_adamw, choice_hyp(), choice_meta(), 3, run_dir=tmp_path, trust=NO_REPEATS, plots=True)
    assert (tmp_path / "evolve.png").stat().st_size > 0


# --- the setup pin --------------------------------------------------------------------------------------------------


def test_the_optimizer_is_pinned_unless_it_is_a_gene(tmp_path):
    sgd, adamw = {"data": "a.yaml", "optimizer": "SGD"}, {"data": "a.yaml", "optimizer": "AdamW"}
    study = run(plain, load_hyp(), load_meta(), 1, run_dir=tmp_path / "plain", setup=sgd,
                trust=NO_REPEATS, plots=False)  # fmt: skip
    assert study.user_attrs["setup"]["optimizer"] == "SGD"
    with pytest.raises(UserError, match="different optimizer"):
        run(plain, load_hyp(), load_meta(), 2, run_dir=tmp_path / "plain", setup=adamw,
            trust=NO_REPEATS, plots=False)  # fmt: skip

    study = run(prefers_adamw, choice_hyp(), choice_meta(), 1, run_dir=tmp_path / "gene", setup=sgd,
                trust=NO_REPEATS, plots=False)  # fmt: skip
    assert "optimizer" not in study.user_attrs["setup"] and study.user_attrs["setup"]["data"] == "a.yaml"
    # As a gene the optimizer is part of the base hyp, which every worker must share (the base child, and the
    # first children that mutate it): another --optimizer is refused as another hyp value.
    with pytest.raises(UserError, match="different hyp; .* the study has hyp.optimizer='SGD'"):
        run(prefers_adamw, choice_hyp("AdamW"), choice_meta(), 2, run_dir=tmp_path / "gene", setup=adamw,
            trust=NO_REPEATS, plots=False)  # fmt: skip

    study = run(prefers_adamw, choice_hyp(), choice_meta(), 1, run_dir=tmp_path / "frozen", setup=sgd,
                freeze=("optimizer",), trust=NO_REPEATS, plots=False)  # fmt: skip
    assert study.user_attrs["setup"]["optimizer"] == "SGD", "a frozen optimizer is not a gene: it stays pinned"


# --- training with a choice: the adapter, the hyp file and the CLI --------------------------------------------------


def test_a_child_trains_with_its_optimizer():
    from utils.evolution.training_objective import child_options

    options = TrainOptions(optimizer="SGD").with_outputs(record={"optimizer": "SGD", "epochs": 3})
    numbers, child = child_options(options, {**load_hyp(), "optimizer": "AdamW"})
    assert numbers == load_hyp() and child.optimizer == "AdamW"
    assert child.outputs.record == {"optimizer": "AdamW", "epochs": 3} and options.optimizer == "SGD"
    assert child_options(options, load_hyp())[1] is options


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"choices": ["SGD", "Lion"]}, "unknown choice\\(s\\) Lion \\(valid: SGD, Adam, AdamW, RMSprop\\)"),
        ({"choices": ["cos", "linear"]}, "training has no choice named scheduler"),
    ],
)
def test_training_refuses_choices_it_does_not_know(entry, expected):
    from utils.evolution.training_objective import check_meta_choices

    key = "scheduler" if "cos" in entry["choices"] else "optimizer"
    with pytest.raises(UserError, match=expected):
        check_meta_choices({**load_meta(), key: parse_gene(key, entry, "meta")})
    check_meta_choices(load_meta(ROOT / "data" / "hyps" / "meta.recipe.yaml"))


def test_the_recipe_meta_is_meta_yaml_plus_the_optimizer():
    recipe = load_meta(ROOT / "data" / "hyps" / "meta.recipe.yaml")
    assert recipe == {**load_meta(), "optimizer": OPTIMIZER_GENE} and "optimizer" not in load_meta()


def write_hyp(tmp_path: Path, optimizer: object) -> Path:
    path = tmp_path / "hyp_evolve.yaml"
    path.write_text("# evolved\n" + yaml.safe_dump({**load_hyp(), "optimizer": optimizer}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("flags", "data", "expected"),
    [
        ((), "coco128.yaml", "AdamW"),  # the hyp's optimizer replaces the built-in default
        ((), "shapes.yaml", "AdamW"),  # and a data yaml's recommended one
        (("--optimizer", "adamw"), "coco128.yaml", "AdamW"),  # the same optimizer, any spelling
        (("--optimizer", "SGD"), "coco128.yaml", "--optimizer SGD contradicts 'optimizer: AdamW' in "),
    ],
)
def test_a_hyp_file_may_name_the_optimizer(tmp_path, flags, data, expected):
    path = write_hyp(tmp_path, "adamw")
    assert read_hyp_file(path).choices == {"optimizer": "AdamW"} and read_hyp_file(path).hyp == load_hyp()
    args = cli.parse_train_args(["--data", data, "--hyp", str(path), *flags])
    if expected.startswith("--"):
        with pytest.raises(UserError, match=expected) as error:
            cli.load_train_hyp(args)
        assert str(path) in str(error.value)
        return
    assert cli.load_train_hyp(args) == load_hyp() and args.optimizer == expected
    assert cli.build_train_options(args, torch.device("cpu")).optimizer == expected
    assert cli.evolution_setup(args)["optimizer"] == expected


def test_a_hyp_file_naming_an_unknown_optimizer_is_refused(tmp_path):
    path = write_hyp(tmp_path, "Lion")
    with pytest.raises(UserError, match="'optimizer' must be one of SGD, Adam, AdamW, RMSprop, got 'Lion'"):
        read_hyp_file(path)


def test_train_evolve_with_the_optimizer_gene_trains_both_optimizers(tiny_dataset, tmp_path):
    """A real ``train.py --evolve 6 --epochs 2``: children train with the optimizer evolve.csv says (read back from
    each child's checkpoint), and hyp_evolve.yaml trains again with its optimizer or refuses a contradicting flag."""
    tiny = ["--data", str(tiny_dataset), "--img", "64", "--batch", "12", "--workers", "0", "--device", "cpu",
            "--noplots", "--project", str(tmp_path)]  # fmt: skip
    command = [sys.executable, str(ROOT / "train.py"), *tiny, "--epochs", "2", "--name", "evo", "--evolve", "6",
               "--meta", str(ROOT / "data" / "hyps" / "meta.recipe.yaml"), "--sampler", "random", "--seed", "1",
               "--confirm", "0", "--confirm-seeds", "0", "--save-children"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "evo"
    optimizers = [row["optimizer"] for row in csv_table(run_dir / "evolve.csv")]
    assert len(optimizers) == 6 and set(optimizers) == {"SGD", "AdamW"}, optimizers
    for child, optimizer in enumerate(optimizers):
        checkpoint = load_checkpoint(run_dir / "children" / str(child) / "weights" / "last.pt")
        trained_with = "AdamW" if "betas" in checkpoint["optimizer"]["param_groups"][0] else "SGD"
        assert trained_with == optimizer and checkpoint["options"]["optimizer"] == optimizer, child

    evolved = run_dir / "hyp_evolve.yaml"
    best = yaml.safe_load(evolved.read_text())["optimizer"]
    other = "SGD" if best == "AdamW" else "AdamW"
    train = [sys.executable, str(ROOT / "train.py"), *tiny, "--epochs", "1", "--hyp", str(evolved)]
    refused = subprocess.run([*train, "--optimizer", other], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: --optimizer {other} contradicts")
    trained = subprocess.run([*train, "--name", "again"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert trained.returncode == 0, trained.stderr[-3000:]
    options = yaml.safe_load((tmp_path / "again" / "opt.yaml").read_text())
    assert options["optimizer"] == best
