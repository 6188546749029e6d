"""Retrain and evaluate the bundled models from ../shared/data with fixed seeds; print the model cards' table.

    python scripts/reproduce.py                          # all three configs, seeds 0 1 2, into out/reproduce
    python scripts/reproduce.py --models s2-rgb --seeds 0,1,2 --jobs 2
    python scripts/reproduce.py --compare-model fc-siam-diff --cards out/reproduce/cards
    python scripts/reproduce.py --install 0 --cards changedet/weights   # ship seed 0's checkpoints + cards

Each bundled model has a training config ``configs/<name>.yaml`` (keys = ``changedet.training.train`` arguments).
Every (model, seed) run trains from scratch with that seed, early-stops and calibrates its threshold on the config's
held-out validation cities/pairs, and writes ``<out>/<name>/seed<k>/``. The table reports, over the seeds, the mean
and standard deviation of the pooled validation precision, recall, F1, IoU and kappa at the calibrated threshold,
the F1 at a fixed 0.5, the F1 of the last epoch trained (not chosen on the validation scenes), the threshold and
the epochs. The threshold is calibrated on the same validation scenes the
scores are computed on, so "F1" is an optimistic estimate of what a calibrated model reaches; "F1@0.5" does not
depend on that choice, and "F1, others' threshold" scores each validation scene at the threshold calibrated on the
other ones (``changedet.calibration.cross_calibrate``). The published test cities/pairs (OSCD test labels,
AirChange Szada/1 and Tiszadob/3) are not in ../shared/data, so these are validation figures, not test figures.

Runs are independent processes (``--jobs``), each with ``threads`` torch threads (1 by default): on a small shared
machine several single-thread runs finish sooner than one multi-thread run. This takes hours; it is not part of CI.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEFAULT_MODELS = ("s2-13band", "s2-rgb", "aerial-rgb")
COLUMNS = ("precision", "recall", "f1", "iou", "kappa")


def _read_scene(data: dict[str, Any], name: str) -> Any:
    """Read one held-out scene named in a checkpoint's ``training.data`` with the reader of its dataset."""
    from changedet import data as cd

    kind = data["type"]
    if kind == "oscd":
        return cd.read_oscd(data["root"], name, bands=data.get("bands"))
    if kind == "airchange":
        return cd.read_airchange(data["root"], name)
    if kind == "folders":
        return cd.read_folders(data["root"], names=[name])[0]
    if kind == "list":
        return cd.read_list(data["path"], names=[name])[0]
    raise ValueError(f"cannot read test scenes of a {kind!r} dataset")


def evaluate_test(checkpoint: Path, data: dict[str, Any], folder: Path, threads: int) -> dict[str, Any] | None:
    """Score a checkpoint on the held-out test scenes through ``changedet.api.detect`` (the user's path).

    Each scene is written as two GeoTIFFs (its bands named), run through ``detect`` with the checkpoint's calibrated
    threshold and normalisation, and ``change.tif`` is compared with the label over the scene's valid pixels;
    ``probability.tif`` is scored for calibration (expected calibration error, Brier score, log loss).
    """
    names = data.get("test") or []
    if not names:
        return None
    import warnings

    import rasterio

    from changedet.api import detect
    from changedet.calibration import probability_metrics
    from changedet.evaluation import confusion_matrix, pool
    from changedet.io.raster import write_cog

    per_scene: dict[str, Any] = {}
    matrices = []
    probs: list[tuple[Any, Any, Any]] = []
    for name in names:
        scene = _read_scene(data, name)
        where = folder / name.replace("/", "_")
        paths = []
        for date, array in (("before", scene.before), ("after", scene.after)):
            paths.append(write_cog(where / f"{date}.tif", array, crs=scene.crs, transform=scene.transform,
                                   descriptions=scene.band_names, overwrite=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detect(paths[0], paths[1], model=checkpoint, output_dir=where / "detect", vectorize=False,
                   quicklook=False, overwrite=True, threads=threads)
        with rasterio.open(where / "detect" / "change.tif") as ds:
            change = ds.read(1)
        with rasterio.open(where / "detect" / "probability.tif") as ds:
            prob = ds.read(1)
        keep = scene.valid & (change != 255)
        cm = confusion_matrix(change == 1, scene.label, keep)
        matrices.append(cm)
        probs.append((prob, scene.label, keep))
        per_scene[name] = {**cm.to_dict(), "probability": probability_metrics([prob], [scene.label], [keep])}
    pooled = {**pool(matrices).to_dict(), "probability": probability_metrics(*zip(*probs, strict=True))}
    return {"scenes": per_scene, "pooled": pooled}


def _run_one(name: str, seed: int, out: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one (config, seed) in this process and return a summary (runs in a worker process)."""
    sys.path.insert(0, str(REPO))
    from changedet.cli.train import load_config
    from changedet.training import train

    overrides = dict(overrides)
    reuse = bool(overrides.pop("_reuse", False))
    config, base = load_config(CONFIGS / f"{name}.yaml", {**overrides, "seed": seed, "out": out})
    config.setdefault("overwrite", True)
    started = time.perf_counter()
    trained_seconds: float | None = None
    existing = Path(out) / f"{config.get('name', 'model')}.safetensors"
    if reuse and existing.is_file():
        # a finished run (e.g. trained earlier with `changedet train`): score it, do not retrain
        from types import SimpleNamespace

        done = json.loads(existing.with_suffix(".json").read_text())
        result = SimpleNamespace(checkpoint=existing, threshold=done["threshold"], metrics=done["metrics"],
                                 epochs_run=done["training"].get("epochs_run"),
                                 best_epoch=done["training"].get("best_epoch"))
        trained_seconds = float(done["training"].get("seconds") or 0.0)  # the training time of that run
        config = {**config, **{k: v for k, v in done["training"]["config"].items() if k not in ("out",)}}
    else:
        result = train(**config, config_base=base, progress=None)
    meta = json.loads(result.checkpoint.with_suffix(".json").read_text())
    cross = result.metrics.get("cross_calibrated")
    if cross is None and len(meta["training"]["data"].get("val") or []) >= 2 and \
            not meta["metrics"].get("metric_calibration"):
        # a checkpoint trained before train() recorded it: predict the validation scenes again
        from changedet.training import cross_calibrate_checkpoint

        cross = cross_calibrate_checkpoint(result.checkpoint, threads=int(config.get("threads") or 1))
    test = evaluate_test(result.checkpoint, meta["training"]["data"], Path(out) / "test",
                         int(config.get("threads") or 1))
    return {
        "test": test,
        "cross": cross,
        "last_f1": last_epoch_f1(result.checkpoint.parent / "metrics.csv"),
        "name": name,
        "seed": seed,
        "model": config.get("model", "fc-siam-diff"),
        "checkpoint": str(result.checkpoint),
        "threshold": result.threshold,
        "metrics": result.metrics,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - started if trained_seconds is None else trained_seconds, 1),
        "band_names": meta["band_names"],
        "normalization": meta["normalization"]["mode"],
        "pixel_size": meta["pixel_size"],
        "data": meta["training"]["data"],
        "config": meta["training"]["config"],
    }


def last_epoch_f1(metrics_csv: Path) -> float | None:
    """Validation F1 (at that epoch's own F1-optimal threshold, column ``val_f1_best``) of the last validated epoch
    in a run's ``metrics.csv``: unlike the best epoch's F1, not chosen on the validation scenes."""
    import csv

    if not metrics_csv.is_file():
        return None
    with metrics_csv.open(newline="", encoding="utf-8") as f:
        values = [row.get("val_f1_best") for row in csv.DictReader(f)]
    values = [v for v in values if v not in (None, "")]
    return float(values[-1]) if values else None


def _display(path: str | None) -> str:
    """A data path as the repo sees it (``../shared/data/...``) rather than this machine's absolute path."""
    if not path:
        return "?"
    p = Path(path).resolve()
    try:
        return "../" + str(p.relative_to(REPO.parent))
    except ValueError:
        return str(p)


def _mean_std(values: list[float | None]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(ms: tuple[float, float] | None, scale: float = 100.0, digits: int = 2) -> str:
    if ms is None:
        return "n/a"
    return f"{ms[0] * scale:.{digits}f} ± {ms[1] * scale:.{digits}f}"


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over the seeds of one (config, model)."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "n": len(runs)}
    for key in COLUMNS:
        out[key] = _mean_std([r["metrics"].get(key) for r in runs])
    out["f1_last"] = _mean_std([r.get("last_f1") for r in runs])
    out["f1_cross"] = _mean_std([((r.get("cross") or {}).get("pooled") or {}).get("f1") for r in runs])
    out["f1@0.5"] = _mean_std([r["metrics"].get("at_0.5", {}).get("f1") for r in runs])
    out["test_f1"] = _mean_std([(r.get("test") or {}).get("pooled", {}).get("f1") for r in runs])
    out["test_iou"] = _mean_std([(r.get("test") or {}).get("pooled", {}).get("iou") for r in runs])
    out["threshold"] = _mean_std([r["threshold"] for r in runs])
    out["epochs"] = _mean_std([float(r["best_epoch"]) for r in runs])
    out["minutes"] = _mean_std([r["seconds"] / 60.0 for r in runs])
    return out


def table(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """Markdown table, one row per (config, architecture)."""
    head = ("| model | architecture | bands | validation | seeds | F1 | F1, others' threshold | F1, last epoch "
            "| precision | recall "
            "| IoU | kappa | F1 @0.5 "
            "| threshold | best epoch | minutes/run | test | test F1 | test IoU |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for (name, arch), runs in groups.items():
        s = summarise(runs)
        first = runs[0]
        val = ", ".join(first["data"].get("val", [])) or "-"
        lines.append(
            f"| {name} | {arch} | {len(first['band_names'])} | {val} | {s['n']} | {_fmt(s['f1'])} | "
            f"{_fmt(s['f1_cross'])} | {_fmt(s['f1_last'])} | "
            f"{_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['iou'])} | {_fmt(s['kappa'])} | "
            f"{_fmt(s['f1@0.5'])} | {_fmt(s['threshold'], 1.0, 3)} | {_fmt(s['epochs'], 1.0, 1)} | "
            f"{_fmt(s['minutes'], 1.0, 1)} | {', '.join(first['data'].get('test') or []) or '-'} | "
            f"{_fmt(s['test_f1'])} | {_fmt(s['test_iou'])} |"
        )
    return "\n".join(lines)


def _hand_written_limitations(card: Path) -> str:
    """The "## Limitations" section of an existing model card (up to the generated footer), or ""."""
    if not card.is_file():
        return ""
    text = card.read_text(encoding="utf-8")
    start = text.find("\n## Limitations")
    if start < 0:
        return ""
    end = text.find("\n_Generated by", start)
    return text[start + 1 : end if end >= 0 else len(text)].rstrip() + "\n"


def _description(name: str, run: dict[str, Any]) -> str:
    """The config's current description when it names the run's architecture (a run trained with ``--set
    model=...`` before the config switched to it carries the old text), else the run's own."""
    import yaml

    current = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text(encoding="utf-8")) or {}
    if current.get("model") == run["model"] and current.get("description"):
        return str(current["description"]).strip()
    return str(run["config"].get("description") or "").strip()


def model_card(name: str, groups: dict[tuple[str, str], list[dict[str, Any]]], installed_seed: int | None) -> str:
    """The markdown model card of one bundled model (its own runs plus any comparison architecture)."""
    own = [(key, runs) for key, runs in groups.items() if key[0] == name]
    _, main_runs = own[0]
    first = main_runs[0]
    cfg = first["config"]
    data = first["data"]
    installed = next((r for r in main_runs if r["seed"] == installed_seed), None)
    lines = [
        f"# {name}",
        "",
        _description(name, first),
        "",
        "## Data",
        f"- Dataset: `{data.get('type')}` from `{_display(data.get('root') or data.get('path'))}`"
        " (../shared/data; see its PROVENANCE.md for source, licence and citation).",
        f"- Training scenes ({len(data.get('train', []))}): {', '.join(data.get('train', []))}",
        f"- Validation scenes ({len(data.get('val', []))}, early stopping and threshold calibration): "
        f"{', '.join(data.get('val', []))}",
        f"- Test scenes (held out, scored through `changedet detect`): {', '.join(data.get('test') or []) or 'none'}",
        f"- Bands ({len(first['band_names'])}): {', '.join(first['band_names'])}",
        f"- Pixel size: {first['pixel_size']} m. Normalisation: `{first['normalization']}`"
        + (" (each date z-scored per band over its valid pixels, as `changedet detect` does)."
           if first["normalization"] == "scene" else "."),
        "",
        "## Training",
        f"- Architecture `{first['model']}` {json.dumps(cfg.get('model_kwargs') or {})}; loss `{cfg.get('loss')}`"
        f" (pos_weight {cfg.get('pos_weight')}); optimiser `{cfg.get('optimizer')}` lr {cfg.get('lr')}, "
        f"schedule `{cfg.get('schedule')}`.",
        f"- Up to {cfg.get('epochs')} epochs of {cfg.get('chips_per_epoch')} chips of {cfg.get('chip_size')} px "
        f"(batch {cfg.get('batch_size')}, {int(100 * float(cfg.get('positive_fraction', 0.5)))} % centred on "
        f"changed pixels), augmentation {json.dumps(cfg.get('augment'))}, early stopping patience "
        f"{cfg.get('patience')} on validation F1.",
        f"- Threshold: `{cfg.get('threshold_method')}` calibration on the validation scenes.",
        f"- Reproduce: `python scripts/reproduce.py --models {name} --seeds "
        f"{','.join(str(r['seed']) for r in main_runs)}` (config `configs/{name}.yaml`).",
        "",
        f"## Validation metrics (pooled over all validation pixels; mean ± std over {len(main_runs)} seeds)",
        "",
        table(dict(own)),
        "",
        "The threshold is calibrated on the same validation scenes, so F1 at the calibrated threshold is optimistic;"
        " F1 at 0.5 does not depend on that choice. *F1, others' threshold* scores each validation scene at the"
        " threshold calibrated on the other validation scenes (pooled): what a threshold chosen elsewhere gives on"
        " a scene it was not fitted to (the epoch was still chosen on all of them). *F1, last epoch* is the validation"
        " F1 of the last epoch trained (at its own best threshold), where *F1* is that of the best epoch: the gap"
        " is what choosing the epoch on the validation scenes adds. *test* scenes (when the config"
        " names any) were seen neither in training nor in calibration: they are run through `changedet detect` with the checkpoint as shipped and"
        " scored pooled over their pixels. The published test cities/pairs are not in ../shared/data, so none of"
        " these figures is directly comparable with published numbers.",
    ]
    if installed is not None:
        m = installed["metrics"]
        lines += [
            "",
            "## The bundled checkpoint",
            f"- Seed {installed['seed']}: threshold {installed['threshold']:.4f}; validation F1 "
            f"{100 * m['f1']:.2f}, precision {100 * m['precision']:.2f}, recall {100 * m['recall']:.2f}, "
            f"IoU {100 * m['iou']:.2f}, kappa {100 * m['kappa']:.2f}; F1 at 0.5: "
            f"{100 * (m.get('at_0.5', {}).get('f1') or 0):.2f}; best epoch {installed['best_epoch']}.",
        ]
        if installed.get("test"):
            for scene, cm in installed["test"]["scenes"].items():
                f1 = cm.get("f1")
                lines.append(f"- Test {scene} through `changedet detect`: F1 {100 * (f1 or 0):.2f}, precision "
                             f"{100 * (cm.get('precision') or 0):.2f}, recall {100 * (cm.get('recall') or 0):.2f}")
            pooled = installed["test"]["pooled"]
            lines.append(f"- Test pooled: F1 {100 * (pooled.get('f1') or 0):.2f}, IoU {100 * (pooled.get('iou') or 0):.2f},"
                         f" kappa {100 * (pooled.get('kappa') or 0):.2f}")
        cross = installed.get("cross")
        if cross:
            per = "; ".join(f"{scene} F1 {100 * (c.get('f1') or 0):.2f} at {c['threshold']:.3f}"
                            for scene, c in cross["scenes"].items())
            lines.append(f"- Each validation scene at the threshold calibrated on the other(s): {per}; pooled F1 "
                         f"{100 * (cross['pooled'].get('f1') or 0):.2f} (against {100 * m['f1']:.2f} at the threshold "
                         "fitted to all of them).")
        platt = m.get("probability_calibration")
        if platt:
            b, a = platt["before"], platt["after"]
            lines.append(
                f"- Probabilities: Platt scaling (scale {platt['scale']:.4f}, bias {platt['bias']:.4f}) fitted on the "
                f"validation scenes and folded into the last layer: validation expected calibration error "
                f"{100 * b['ece']:.2f} % -> {100 * a['ece']:.2f} %, mean probability {100 * b['mean_probability']:.2f} %"
                f" -> {100 * a['mean_probability']:.2f} % for {100 * a['change_fraction']:.2f} % changed pixels "
                "(optimistic: fitted there).")
        test_p = (installed.get("test") or {}).get("pooled", {}).get("probability")
        if test_p:
            lines.append(f"- Test probabilities (pooled): expected calibration error {100 * test_p['ece']:.2f} %, "
                         f"Brier {test_p['brier']:.4f}, log loss {test_p['nll']:.4f}, mean probability "
                         f"{100 * test_p['mean_probability']:.2f} % for {100 * test_p['change_fraction']:.2f} % "
                         "changed pixels.")
    lines += ["", f"_Generated by scripts/reproduce.py on {_dt.date.today().isoformat()}._", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="configs/<name>.yaml to run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "reproduce")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--epochs", type=int, default=None, help="override the configs' epochs (quick checks)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (YAML value), e.g. --set chips_per_epoch=64")
    parser.add_argument("--compare-model", default=None,
                        help="also train this architecture with the same config (e.g. fc-siam-diff as the baseline)")
    parser.add_argument("--compare-seeds", default=None,
                        help="seeds of the --compare-model runs (default: --seeds), e.g. fewer on a small budget")
    parser.add_argument("--cards", type=Path, default=None, help="write <name>.md model cards into this folder")
    parser.add_argument("--install", type=int, default=None, metavar="SEED",
                        help="copy this seed's checkpoints to the --cards folder as <name>.safetensors/.json")
    parser.add_argument("--json", type=Path, default=None, help="write all run summaries to this JSON file")
    parser.add_argument("--reuse", action="store_true",
                        help="score runs that already have a checkpoint in <out>/<name>/seed<k>/ instead of retraining")
    args = parser.parse_args()

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    compare_seeds = seeds if args.compare_seeds is None else [
        int(s) for s in args.compare_seeds.split(",") if s.strip()]
    for name in names:
        if not (CONFIGS / f"{name}.yaml").is_file():
            parser.error(f"no config {CONFIGS / (name + '.yaml')}")
    overrides: dict[str, Any] = {"threads": args.threads, "plots": True}
    if args.reuse:
        overrides["_reuse"] = True
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    import yaml

    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    jobs = []
    for name in names:
        archs = [None] + ([args.compare_model] if args.compare_model else [])
        for arch in archs:
            for seed in (seeds if arch is None else compare_seeds):
                extra = dict(overrides)
                tag = name
                if arch is not None:
                    extra["model"] = arch
                    # model_kwargs are merged into the config's (load_config), so e.g. dropout carries over
                    tag = f"{name}-{arch}"
                jobs.append((name, arch, seed, str(args.out / tag / f"seed{seed}"), extra))

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        futures = {pool.submit(_run_one, name, seed, out, extra): (name, arch, seed)
                   for name, arch, seed, out, extra in jobs}
        for fut in cf.as_completed(futures):
            name, arch, seed = futures[fut]
            summary = fut.result()
            print(f"done {name} {summary['model']} seed {seed}: val F1 {summary['metrics'].get('f1')}, "
                  f"{summary['seconds'] / 60:.1f} min", file=sys.stderr, flush=True)
            groups.setdefault((name, summary["model"]), []).append(summary)
    ordered = {k: sorted(groups[k], key=lambda r: r["seed"]) for k in sorted(groups, key=lambda k: (
        names.index(k[0]), k[1] != groups[k][0]["config"].get("model")))}
    print(table(ordered))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in ordered.items()}, indent=2))
    if args.cards:
        args.cards.mkdir(parents=True, exist_ok=True)
        for name in names:
            subset = {k: v for k, v in ordered.items() if k[0] == name}
            card_path = args.cards / f"{name}.md"
            card = model_card(name, subset, args.install)
            kept = _hand_written_limitations(card_path)
            if kept:  # the hand-written "Limitations" section survives a regeneration, above the footer
                head, sep, footer = card.rpartition("\n_Generated by")
                card = f"{head}\n{kept}\n{sep.lstrip(chr(10))}{footer}" if sep else f"{card}\n{kept}\n"
            card_path.write_text(card, encoding="utf-8")
            if args.install is not None:
                main_runs = next(iter(subset.values()))
                run = next((r for r in main_runs if r["seed"] == args.install), None)
                if run is None:
                    parser.error(f"--install {args.install}: no run of {name} with that seed")
                src = Path(run["checkpoint"])
                for suffix in (".safetensors", ".json"):
                    tmp = args.cards / f".{name}{suffix}.partial"
                    shutil.copyfile(src.with_suffix(suffix), tmp)
                    if suffix == ".json":  # the listing (`changedet models`) shows the card's description
                        meta = json.loads(tmp.read_text(encoding="utf-8"))
                        meta["description"] = _description(name, run)
                        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
                    tmp.replace(args.cards / f"{name}{suffix}")
        print(f"model cards written to {args.cards}", file=sys.stderr)


if __name__ == "__main__":
    main()
