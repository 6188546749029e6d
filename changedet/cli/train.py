"""``changedet train --config run.yaml [--key value ...]``: train a model and write a calibrated checkpoint.

Runs unchanged under ``torchrun --nproc_per_node N`` (data-parallel training, see :func:`changedet.training.train`);
``--nproc N`` launches that ``torchrun`` itself on this machine. ``python -m changedet.cli.train ARGS`` is
``changedet ARGS``: the entry point that ``--nproc`` gives to ``torchrun``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import click

from changedet.cli._common import echo_json, quiet

log = logging.getLogger(__name__)


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``--key value`` / ``--key=value`` / ``--flag`` pairs into a dict (values parsed as YAML scalars/lists).

    Kebab-case keys become snake_case (``--chips-per-epoch`` -> ``chips_per_epoch``); dotted keys reach into
    mappings (``--dataset.val-cities [bercy,rennes]``). ``--no-flag`` sets ``flag`` to false.
    """
    import yaml

    from changedet.errors import InputError

    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise InputError(f"unexpected argument {arg!r}; overrides are --key value pairs")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                raw = args[i + 1]
                i += 1
            elif key.startswith("no-"):
                key, raw = key[3:], "false"
            else:
                raw = "true"
        key = ".".join(p.replace("-", "_") for p in key.split("."))
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key, value)
        i += 1
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: Python types of the annotations in train()'s signature that a YAML value can be checked against.
_YAML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),), "Path": (str,),
    "Mapping": (dict,), "Sequence": (list, tuple),
}


def _split_union(annotation: str) -> list[str]:
    """``"Mapping[str, Any] | None"`` -> ``["Mapping", "None"]`` (top-level members, subscripts dropped)."""
    parts, depth, current = [], 0, ""
    for ch in annotation:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip().split("[")[0] for p in parts]


def check_types(config: dict[str, Any], params: Any, where: str, command_line: Collection[str] = ()) -> None:
    """An :class:`InputError` naming the key for a config value whose type train()'s signature rules out (a
    number where a name belongs, a word where a number belongs...), before anything is read or written. Keys
    annotated with a type a YAML value cannot be (a class of changedet's) are left to train(). The message names
    ``where`` (the config file), or the option for the keys in ``command_line`` (given as ``--key value``)."""
    from changedet.errors import InputError

    for key, value in config.items():
        annotation = params[key].annotation
        if not isinstance(annotation, str):
            continue
        members = _split_union(annotation)
        if not all(m in _YAML_TYPES for m in members):
            continue
        allowed = tuple(t for m in members for t in _YAML_TYPES[m])
        if isinstance(value, str) and "float" in members and "str" not in members:
            try:  # YAML reads 1e-3 (no dot) as text: `lr: 1e-3` and `--lr 1e-3` mean the number
                value = config[key] = float(value)
            except ValueError:
                pass
        if (isinstance(value, bool) and "bool" not in members) or not isinstance(value, allowed):
            wanted = " or ".join({"int": "an integer", "float": "a number", "str": "a name", "bool": "true/false",
                                  "None": "null", "Path": "a path", "Mapping": "a mapping",
                                  "Sequence": "a list"}[m] for m in members)
            if key in command_line:
                raise InputError(f"command line (--{key.replace('_', '-')}): {key} must be {wanted}, got {value!r}")
            raise InputError(f"{where}: {key} must be {wanted}, got {value!r}")


def _absolute_dataset_paths(config: dict[str, Any], base: Path) -> None:
    """The dataset mapping's paths (:data:`changedet.data.spec.PATH_KEYS`) made absolute against ``base``: the
    config file's folder, or for command-line overrides the current directory."""
    from changedet.data.spec import PATH_KEYS

    ds = config.get("dataset")
    if not isinstance(ds, dict):
        return
    ds = config["dataset"] = dict(ds)
    for key in PATH_KEYS:
        value = ds.get(key)
        if isinstance(value, str) and value and "://" not in value:
            p = Path(value).expanduser()
            ds[key] = str(p if p.is_absolute() else base / p)


def load_config(path: Path | None, overrides: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """Read a YAML run config and apply overrides; checks the keys against :func:`changedet.training.train`.

    Relative paths in the config (``out``, the dataset's ``root``/``path``/``val_root``/``val_path``) are relative
    to the config file's folder, those given on the command line to the current directory. A ``--dataset``
    mapping of another ``type`` than the config's replaces it; otherwise its keys are merged into it.
    """
    import inspect

    import yaml

    from changedet.errors import InputError
    from changedet.training import train

    config: dict[str, Any] = {}
    base = None
    if path is not None:
        if not path.is_file():
            raise InputError(f"{path}: no such config file; give a YAML file of train() keyword arguments")
        from changedet.data.generic import read_text

        try:
            loaded = yaml.safe_load(read_text(path, encoding="utf-8-sig", what="config"))
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: expected a mapping of train() options, found {type(loaded).__name__}")
        config = loaded
        base = path.resolve().parent
        if config.get("out") and "out" not in overrides and not Path(str(config["out"])).expanduser().is_absolute():
            config["out"] = str(base / str(config["out"]))  # a config's paths are relative to the config file
        _absolute_dataset_paths(config, base)
    overrides = dict(overrides)
    _absolute_dataset_paths(overrides, Path.cwd())  # the command line's paths are relative to where it runs
    ds_new, ds_old = overrides.get("dataset"), config.get("dataset")
    if isinstance(ds_new, dict) and isinstance(ds_old, dict) and ds_new.get("type", ds_old.get("type")) != ds_old.get(
        "type"
    ):
        config = {**config, "dataset": {}}  # a dataset of another type replaces the config's, key for key
    config = _merge(config, overrides)
    params = inspect.signature(train).parameters
    allowed = set(params) - {"train_scenes", "val_scenes", "progress", "config_base"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise InputError(
            f"{path or 'options'}: unknown key(s) {unknown}; known keys: {', '.join(sorted(allowed))}"
        )
    check_types(config, params, str(path or "options"), command_line=set(overrides))
    return config, base


@click.command(
    "train",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML file whose keys are train() keyword arguments.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Output folder (overrides 'out').")
@click.option("--device", default=None, help="cpu, cuda, cuda:1... (overrides 'device').")
@click.option("--threads", type=click.IntRange(1, 512), default=None,
              help="torch CPU threads, 1 to 512 (overrides 'threads').")
@click.option("--overwrite", is_flag=True, default=False, help="Replace the outputs of an earlier run in OUT.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Train with N processes on this machine (DistributedDataParallel: gloo on the CPU, one GPU per "
                   "process with --device cuda); launches torchrun --standalone --nproc_per_node N.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def command(
    ctx: click.Context,
    config_path: Path | None,
    out: Path | None,
    device: str | None,
    threads: int | None,
    overwrite: bool,
    nproc: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Train a change-detection model from a YAML config; extra --key value pairs override its keys.

    \b
    Example:
      changedet train --config configs/s2-13band.yaml --out out/train/s2 --epochs 5 --seed 1
      changedet train -c run.yaml --dataset.val-cities [bercy,rennes] --loss bce+dice

    Writes OUT/model.safetensors + model.json (with the calibrated threshold, normalisation and validation
    metrics), metrics.csv, curves.png and pr_curve.png. Progress on stderr, the summary on stdout.

    \b
    Several processes (DistributedDataParallel; rank 0 writes the outputs):
      changedet train -c run.yaml --nproc 2 --threads 1
      torchrun --nproc_per_node 4 $(which changedet) train -c run.yaml --device cuda
    """
    from changedet.errors import InputError

    overrides = parse_overrides(list(ctx.args))
    for key, value in (("out", out), ("device", device), ("threads", threads)):
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    if overwrite:
        overrides["overwrite"] = True
    config, base = load_config(config_path, overrides)
    if "out" not in config:
        raise InputError("no output folder: give --out or an 'out:' key in the config")
    if dry_run:
        echo_json({**config, "config_base": None if base is None else str(base)})
        return
    from changedet.ddp import launched_by_torchrun

    if nproc is not None and nproc > 1:
        if launched_by_torchrun():
            log.warning("--nproc %d ignored: this process was started by torchrun, which sets the processes", nproc)
        else:
            args = [*_group_args(ctx), "train", *_command_args(config_path, out, device, threads, overwrite, as_json),
                    *ctx.args]
            ctx.exit(launch_torchrun(nproc, args))
    from changedet.training import train

    result = train(**config, config_base=base, progress=not quiet(ctx))
    if result.distributed is not None and result.distributed.get("rank", 0) != 0:
        return  # one summary, from rank 0
    if as_json:
        echo_json(result.to_dict())
        return
    m = result.metrics

    def pct(key: str, d: dict[str, Any]) -> str:
        v = d.get(key)
        return "n/a" if v is None else f"{100 * v:.2f}"

    click.echo(f"checkpoint   {result.checkpoint}")
    click.echo(f"epochs       {result.epochs_run} (best {result.best_epoch}), {result.seconds:.0f} s")
    click.echo(f"threshold    {result.threshold:.4f} ({m.get('threshold_method')}, on {m.get('calibrated_on')})")
    click.echo(
        f"val F1 {pct('f1', m)}  P {pct('precision', m)}  R {pct('recall', m)}  IoU {pct('iou', m)}  "
        f"kappa {pct('kappa', m)}   (at 0.5: F1 {pct('f1', m.get('at_0.5', {}))})"
    )
    platt = m.get("probability_calibration")
    if platt:
        click.echo(f"calibration  Platt scale {platt['scale']:.3f} bias {platt['bias']:.3f}: validation ECE "
                   f"{100 * platt['before']['ece']:.2f} % -> {100 * platt['after']['ece']:.2f} %")


def _group_args(ctx: click.Context) -> list[str]:
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    out = ["-q"] if obj.get("quiet") else []
    return out + ["-v"] * int(obj.get("verbose") or 0)


def _command_args(config_path: Path | None, out: Path | None, device: str | None, threads: int | None,
                  overwrite: bool, as_json: bool) -> list[str]:
    args: list[str] = []
    if config_path is not None:
        args += ["--config", str(config_path)]
    if out is not None:
        args += ["--out", str(out)]
    if device is not None:
        args += ["--device", device]
    if threads is not None:
        args += ["--threads", str(threads)]
    if overwrite:
        args.append("--overwrite")
    if as_json:
        args.append("--json")
    return args


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The ``torchrun`` command line that runs ``changedet ARGS`` in ``nproc`` processes on this machine.

    ``--standalone`` starts a local rendezvous on a free port of the loopback interface.

    Examples
    --------
    >>> torchrun_command(2, ["train", "-c", "run.yaml"])[1:]  # doctest: +NORMALIZE_WHITESPACE
    ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'changedet.cli.train',
     'train', '-c', 'run.yaml']
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(int(nproc)),
            "-m", "changedet.cli.train", *args]


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run ``changedet ARGS`` under ``torchrun`` with ``nproc`` processes; return its exit status.

    Rank 0's stdout (the summary) is echoed once the run ends; stderr (progress, logs, errors) passes through.
    ``OMP_NUM_THREADS`` defaults to 1 per process (torchrun's own default); ``--threads`` or the config's
    ``threads`` set torch's threads in each process.
    """
    cmd = torchrun_command(nproc, args)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    log.info("launching %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.stdout:
        click.echo(proc.stdout, nl=False)
    return int(proc.returncode)


if __name__ == "__main__":  # what `changedet train --nproc N` gives torchrun: python -m changedet.cli.train ARGS
    from changedet.cli.main import cli

    cli(prog_name="changedet")
