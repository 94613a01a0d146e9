"""Config files, variant tables, --set overrides, and the errors for unknown keys or wrong types."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

import pytest

from fpnets.train import (
    Config,
    ConfigError,
    bundled_dir,
    bundled_names,
    config_from_dict,
    find_config,
    load_config,
    parse_override,
    resolve,
)
from fpnets.train._engine import parse_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = (
    "digits", "mnist", "fashion-mnist", "svhn", "cifar10", "cifar10-unaugmented", "games", "ct-ellipses",
    "ct-ellipses-128", "traffic-siouxfalls", "traffic-ema", "traffic-friedrichshain", "traffic-tiergarten",
    "traffic-anaheim",
)  # fmt: skip


def test_bundled_configs_are_the_repo_configs() -> None:
    assert set(bundled_names()) == set(PAPER_CONFIGS)
    repo = REPO / "configs"
    for name in PAPER_CONFIGS:
        assert filecmp.cmp(repo / f"{name}.toml", bundled_dir() / f"{name}.toml", shallow=False), name


def _config_variants() -> list[tuple[str, str]]:
    """(config, variant) for every bundled config and every variant its task knows."""
    from fpnets.tasks._base import variants_of

    return [(n, v) for n in PAPER_CONFIGS for v in variants_of(load_config(n).task_class)]


@pytest.mark.parametrize(("name", "variant"), _config_variants())
def test_every_config_and_variant_resolves_and_round_trips(name: str, variant: str) -> None:
    cfg = load_config(name, [f"model.variant={variant}"])
    assert cfg.model.variant == variant
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_default_config_is_digits() -> None:
    cfg = load_config()
    assert (cfg.data.name, cfg.model.arch, cfg.model.variant) == ("digits", "digits", "fpn")
    assert cfg.run_name == "digits-fpn"


@pytest.mark.parametrize(
    ("name", "jfb", "jacobian"),
    [
        ("mnist", (0.1, 50), (0.1, 50)),
        ("svhn", (1e-4, 200), (1e-4, 200)),
        ("cifar10", (0.1, 50), (1e-4, 500)),
        ("cifar10-unaugmented", (0.1, 50), (0.1, 50)),
    ],
)
def test_variant_tables_set_the_paper_tolerances(name: str, jfb: tuple, jacobian: tuple) -> None:
    base = load_config(name)
    assert (base.solver.tol, base.solver.max_iter) == jfb
    assert base.backward.name == "jfb"
    jac = load_config(name, ["model.variant=jacobian"])
    assert (jac.solver.tol, jac.solver.max_iter) == jacobian
    assert jac.backward.name == "ift"
    cg = jac.backward.options["solver"]
    assert (cg["name"], cg["tol"], cg["max_iter"]) == ("cg", *jacobian)


def test_paper_optimiser_settings() -> None:
    c = load_config("cifar10")
    assert (c.optim.lr, c.optim.weight_decay, c.optim.scheduler, c.optim.step_size) == (
        1e-3,
        1e-3,
        "step",
        200,
    )
    assert (c.train.epochs, c.data.augment) == (1000, "cifar10")
    s = load_config("svhn")
    assert (s.optim.lr, s.optim.weight_decay, s.optim.scheduler, s.train.epochs) == (1e-4, 2e-4, "none", 100)
    u = load_config("cifar10-unaugmented")
    assert (u.model.arch, u.optim.step_size, u.data.augment) == ("cifar10-unaugmented", 50, "none")
    assert load_config("mnist", ["model.variant=contractive"]).model.lipschitz == "none"


def test_overrides_are_parsed_as_toml() -> None:
    cfg = load_config(
        "digits",
        [
            "train.epochs=3",
            "optim.lr=5e-4",
            "run.deterministic=false",
            "run.device=cpu",  # not TOML: a bare string
            'run.name="x y"',
            "optim.betas=[0.8, 0.99]",
            "solver.options={m = 4}",
            "solver.name=anderson",
            "data.val_size=none",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.optim.lr == 5e-4 and cfg.run.deterministic is False
    assert cfg.run.device == "cpu" and cfg.run.name == "x y" and cfg.optim.betas == [0.8, 0.99]
    assert cfg.solver.options == {"m": 4} and cfg.solver.name == "anderson" and cfg.data.val_size is None
    assert parse_value("1") == 1 and parse_value("1.0") == 1.0 and parse_value("abc") == "abc"


def test_an_integer_is_accepted_for_a_float() -> None:
    cfg = load_config("digits", ["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_override_picks_variant_and_beats_variant_table() -> None:
    cfg = load_config("svhn", ["model.variant=jacobian", "solver.max_iter=7"])
    assert cfg.backward.name == "ift" and cfg.solver.max_iter == 7 and cfg.solver.tol == 1e-4


def test_nested_table_override() -> None:
    cfg = load_config("mnist", ["model.variant=jacobian", "backward.options.solver.max_iter=9"])
    assert cfg.backward.options["solver"] == {"name": "cg", "tol": 0.1, "max_iter": 9}


def test_mapping_overrides() -> None:
    cfg = load_config("digits", {"train.epochs": 2, "model.variant": "explicit"})
    assert cfg.train.epochs == 2 and cfg.model.variant == "explicit"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epoch=3", r"unknown key 'epoch' in \[train\]; valid keys: epochs, seed, select"),
        ("trian.epochs=3", r"unknown section 'trian'; valid sections: task, data, model, solver"),
        ("solver=3", r"name a key inside \[solver\]"),
        ("solver.tol.x=1", r"solver.tol is not a table"),
        ("variants.jacobian.solver.tol=1", r"choose a variant with model.variant"),
        ("train.epochs", r"must look like section.key=value"),
        ("=3", r"must look like section.key=value"),
        ("train..epochs=3", r"must look like section.key=value"),
    ],
)
def test_bad_override_keys(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("digits", [override])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs=1.5", r"train.epochs must be an integer, got 1.5"),
        ("train.epochs=true", r"train.epochs must be an integer, got true"),
        ("optim.lr=fast", r'optim.lr must be a number, got "fast"'),
        ("optim.lr=true", r"optim.lr must be a number, got true"),
        ("run.deterministic=1", r"run.deterministic must be a boolean, got 1"),
        ("run.name=3", r"run.name must be a string, got 3"),
        ("solver.tol=abc", r'solver.tol must be a number or unset, got "abc"'),
        ("optim.betas=[0.9, true]", r"optim.betas\[1\] must be a number, got true"),
        ("solver.options=3", r"solver.options must be a table, got 3"),
        ("model.variant=fancy", r"model.variant must be one of fpn, jacobian, explicit, contractive"),
        ("run.dtype=float16", r"run.dtype must be one of float32, float64"),
        ("optim.scheduler=cosine", r"optim.scheduler must be one of none, step"),
        ("data.augment=mixup", r"data.augment must be one of none, cifar10, cifar10-pixel"),
        ("data.batch_size=0", r"data.batch_size must be >= 1"),
        ("optim.lr=-1", r"optim.lr must be a positive number"),
        ("optim.betas=[0.9]", r"optim.betas must hold 2 numbers"),
        ("run.device=tpu", r"run.device must be auto, cpu, cuda or cuda:N"),
        ("run.name=a/b", r"run.name must not contain path separators"),
        ("train.patience=-1", r"train.patience must be >= 0"),
        ("model.lipschitz_every=0", r"model.lipschitz_every must be >= 1 \(probe every k-th step\), got 0"),
        ("model.lipschitz_every=2.5", r"model.lipschitz_every must be an integer or unset, got 2.5"),
    ],
)
def test_bad_override_values(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("digits", [override])


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_unknown_key_in_a_file_lists_the_keys_of_its_table(tmp_path: Path) -> None:
    path = _write(tmp_path, "[optim]\nlr = 1e-3\nmomentum = 0.9\n")
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) 'momentum' in \[optim\]; valid keys: lr, weight_decay"
    ):
        load_config(path)


def test_unknown_section_in_a_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown section\(s\) 'optimizer'; valid sections: task, data, model"
    ):
        load_config(_write(tmp_path, "[optimizer]\nlr = 1\n"))


def test_section_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[train\] must be a table"):
        load_config(_write(tmp_path, "train = 3\n"))


def test_unknown_variant_table(tmp_path: Path) -> None:
    path = _write(tmp_path, "[variants.ift.solver]\ntol = 1\n")
    with pytest.raises(
        ConfigError, match=r"unknown variant table\(s\) 'ift' in \[variants\]; valid variants: fpn"
    ):
        load_config(path)


def test_variant_table_cannot_set_the_variant(tmp_path: Path) -> None:
    path = _write(tmp_path, '[variants.jacobian.model]\nvariant = "fpn"\n')
    with pytest.raises(ConfigError, match=r"\[variants.jacobian.model\] must not set 'variant'"):
        load_config(path, ["model.variant=jacobian"])


def test_wrong_type_inside_a_variant_table(tmp_path: Path) -> None:
    path = _write(tmp_path, '[variants.explicit.train]\nepochs = "many"\n')
    assert load_config(path).train.epochs == 10  # not selected: not applied
    with pytest.raises(ConfigError, match=r'train.epochs must be an integer, got "many"'):
        load_config(path, ["model.variant=explicit"])


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        load_config(_write(tmp_path, "[train\n"))


def test_partial_file_takes_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "[train]\nepochs = 2\n"))
    assert cfg == Config(train=Config().train.__class__(epochs=2))


def test_find_config(tmp_path: Path) -> None:
    assert find_config("mnist") == bundled_dir() / "mnist.toml"
    assert find_config("mnist.toml") == bundled_dir() / "mnist.toml"
    path = _write(tmp_path, "")
    assert find_config(path) == path
    with pytest.raises(ConfigError, match=r"'nope' is neither a file nor a bundled config; bundled: cifar10"):
        find_config("nope")
    with pytest.raises(ConfigError, match=r"neither a file nor a bundled config"):
        find_config(tmp_path / "missing.toml")


def test_resolve_from_a_dict() -> None:
    cfg = resolve(
        {"train": {"epochs": 4}, "variants": {"explicit": {"train": {"epochs": 1}}}},
        ["model.variant=explicit"],
    )
    assert cfg.train.epochs == 1
    with pytest.raises(ConfigError, match=r"\[variants\] must be a table"):
        resolve({"variants": 3})


def test_parse_override_splits_path() -> None:
    assert parse_override(" solver.tol = 1e-4 ") == (["solver", "tol"], 1e-4)


@pytest.mark.parametrize(
    "name", ["digits", "mnist", "fashion-mnist", "svhn", "cifar10", "cifar10-unaugmented"]
)
def test_shipped_classification_configs_probe_every_25th_step(name: str) -> None:
    model = load_config(name).make_task().build_model()
    assert (model.lipschitz, model.lipschitz_every) == ("reference", 25)
    assert load_config(name, ["model.lipschitz_every=1"]).make_task().build_model().lipschitz_every == 1
