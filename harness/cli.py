"""harness: tune and compare triplet-loss metric learning (data, study, evaluate, report, bench).

Every user-fixable problem ends as one line on stderr and exit code 2; Ctrl-C as one line and
exit code 130. A study config is checked before torch, Optuna or MLflow is imported, so a typo
costs milliseconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from harness.errors import HarnessError, failure
from harness.pipeline import setup_logging, stacks_on_sigusr1
from harness.registry import DATASETS

log = logging.getLogger("harness")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _config(a: argparse.Namespace, path: str | None = None, tracked: bool = True):  # noqa: ANN202
    """Load and check the study config first (cheap); then, for a command that tracks, whether its
    MLflow server answers (before minutes of data preparation); only then pay for torch and friends."""
    from harness.study import load_config
    from harness.tracking.reachable import check_reachable

    cfg = load_config(path or a.config)
    if tracked:
        check_reachable(cfg.tracking_uri)
        from harness.models.weights import check

        for backbone, pretrained, checkpoint in cfg.weights_wanted():  # offline, not cached: one line, now
            check(backbone, pretrained, checkpoint)
    _threads(a.threads)
    return cfg


def cmd_verify(a: argparse.Namespace) -> None:
    if a.config:
        from harness.study.data import resolve_root

        cfg = _config(a, tracked=False)
        spec, root, strict = cfg.dataset_spec(), resolve_root(cfg), cfg.strict_counts
        fraction, seed = cfg.test_fraction, cfg.split_seed
    else:
        if not a.root:
            raise HarnessError("data verify needs --root PATH (or --config STUDY.yaml)")
        from harness.data import get_dataset

        options: dict[str, object] = {"split_file": a.split_file} if a.split_file else {}
        if a.shared_classes:
            options["class_disjoint"] = False
        spec, root, strict = get_dataset(a.dataset, **options), Path(a.root), not a.partial
        from harness.study.config import DEFAULTS

        fraction = DEFAULTS["test_fraction"] if a.test_fraction is None else a.test_fraction
        seed = DEFAULTS["split_seed"] if a.split_seed is None else a.split_seed
    from harness.data.verify import verify_dataset

    print(verify_dataset(spec, root, strict, fraction, seed).line())


def cmd_prepare(a: argparse.Namespace) -> None:
    cfg = _config(a, tracked=False)
    from harness.study.data import prepare

    p = prepare(cfg, allow_download=True)
    m = p.split.manifest
    print(f"{cfg.name}: {len(p.images)} images; split {m['num_classes']} classes, hash {m['hash']}")


def cmd_create(a: argparse.Namespace) -> None:
    cfg = _config(a)
    from harness.study.lifecycle import create

    info = create(cfg)
    print(f"study {info['study']} ready in {info['storage']}")


def cmd_worker(a: argparse.Namespace) -> None:
    cfg = _config(a)
    from dataclasses import replace

    from harness.study.identity import checked_members
    from harness.study.worker import run_worker, run_worker_group

    per_gpu = a.processes or cfg.workers_per_gpu
    for m in checked_members(cfg, a.arm):
        who = f"{m.name}: " if m.arm is not None else ""
        if per_gpu > 1:
            m = replace(m, workers_per_gpu=per_gpu, raw=m.raw | {"workers_per_gpu": per_gpu})
            n = run_worker_group(m, a.config, a.worker, a.threads)
            print(f"{who}worker group {a.worker} ({per_gpu} processes): the study has {n} finished trials")
        else:
            print(f"{who}worker {a.worker}: {run_worker(m, a.worker)} trials")


def cmd_run(a: argparse.Namespace) -> None:
    cfg = _config(a)
    from harness.study.data import prepare
    from harness.study.identity import checked_members
    from harness.study.lifecycle import create
    from harness.study.worker import run_worker

    prepare(cfg, allow_download=True)  # refuses a config the stored study would refuse, first
    create(cfg)
    n = sum(run_worker(m, 0) for m in checked_members(cfg))
    print(f"study {cfg.name}: this run added {n} trials")


def cmd_delete(a: argparse.Namespace) -> None:
    cfg = _config(a, tracked=False)
    from harness.study.lifecycle import delete_study

    attic = delete_study(cfg, force=a.force)
    print(f"study {cfg.name} set aside in {attic}; its name is free")


def cmd_evaluate(a: argparse.Namespace) -> None:
    cfg = _config(a)
    from harness.study.steps import evaluate

    df = evaluate(cfg, a.shard, a.arm)
    if df is None:
        what = f"arm {a.arm}" if a.arm is not None else f"shard {a.shard} of {cfg.evaluate.jobs}"
        print(f"{cfg.name}: evaluation of {what} done")
        return
    cols = [c for c in ("config", "val_recall@1", "test_recall@1", "test_map@r") if c in df]
    print(df[cols].to_string(index=False))


def cmd_report(a: argparse.Namespace) -> None:
    names = [*a.studies, *(a.config or [])]
    if not names:
        raise HarnessError("harness report: name at least one study (a config path or a study name)")
    cfgs = [_config(a, str(_study_config_path(n))) for n in names]
    from harness.report import build_report

    if a.separate:
        for cfg in cfgs:
            print(build_report(cfg))
    else:
        print(build_report(cfgs, Path(a.out) if a.out else None))


def _study_config_path(name: str) -> Path:
    """A config file, or a study name: its frozen config under results/, else studies/<name>.yaml."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)  # a path: load_config names it if it is missing
    for candidate in (Path(name), Path("results") / name / "config.yaml", Path("studies") / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise HarnessError(
        f"unknown study {name!r}: no such config file, no results/{name}/config.yaml and no"
        f" studies/{name}.yaml; pass the study's config path"
    )


def cmd_bench(a: argparse.Namespace) -> None:
    _threads(a.threads)
    from harness.bench import PARTS, run_bench

    run_bench(out_dir=Path(a.out), quick=a.quick, parts=tuple(a.part or PARTS))


def cmd_weights_fetch(a: argparse.Namespace) -> None:
    """Fill the weights caches (Hugging Face hub, torch hub) for a study's backbone, or a named one."""
    from harness.models.weights import resolve

    if a.config:
        cfg = _config(a, tracked=False)
        wanted = cfg.weights_wanted()  # every arm's backbone and every zero-shot baseline
    else:
        wanted = [(name, True, None) for name in a.backbone]
    for backbone, pretrained, checkpoint in wanted:
        source = resolve(backbone, pretrained, checkpoint, fetch=True)
        where = f" -> {source.file}" if source.file else ""
        digest = f" (sha256 {source.sha256[:12]})" if source.sha256 else ""
        print(f"{backbone}: {source.origin}{where}{digest}")


def cmd_embed(a: argparse.Namespace) -> None:
    _threads(a.threads)
    from harness.models.embed import embed_folder

    n = embed_folder(Path(a.model), Path(a.images), Path(a.out), a.batch_size)
    print(f"{n} embeddings -> {a.out}")


def cmd_schema(a: argparse.Namespace) -> None:
    import json

    from harness.study.config import schema

    print(json.dumps(schema(), indent=2))


def cmd_cluster_check(a: argparse.Namespace) -> None:
    from harness.cluster import check

    found = check(Path(a.profile))
    for line in found:
        print(line)
    if found:
        raise HarnessError(
            f"{len(found)} job rule size(s) of {a.profile} cannot start on this cluster (listed above);"
            " SLURM would keep those jobs pending without a word: edit the profile"
        )
    print(f"{a.profile}: every job rule fits a node of its partition")


def cmd_smoke(a: argparse.Namespace) -> None:
    _threads(a.threads)
    from harness.smoke import run_smoke

    print(run_smoke())


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="harness", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=int(os.environ.get("HARNESS_THREADS", 0)) or None,
        help="torch CPU threads (default: torch's choice)",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    _data_commands(sub)
    _study_commands(sub)
    _result_commands(sub)
    _tool_commands(sub)
    return p


def _data_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    data = sub.add_parser("data", help="verify or prepare a dataset").add_subparsers(
        dest="data_cmd", required=True, parser_class=Parser
    )
    v = data.add_parser("verify", help="check metadata and decode every image")
    v.add_argument("--dataset", default="cub", help=f"one of: {', '.join(DATASETS.names())}")
    v.add_argument("--root", help="dataset folder")
    v.add_argument("--config", help="take dataset and root from a study config instead")
    v.add_argument("--partial", action="store_true", help="a subset: skip the official image/class counts")
    v.add_argument("--split-file", help="dataset folder: the '<class folder> <split>' file")
    v.add_argument(
        "--shared-classes", action="store_true", help="csv: splits may share classes (class_disjoint: false)"
    )
    v.add_argument("--test-fraction", type=float, help="csv/folder without a split: fraction of test classes")
    v.add_argument("--split-seed", type=int, help="csv/folder without a split: seed of the test-class draw")
    v.set_defaults(func=cmd_verify)
    pr = data.add_parser("prepare", help="resolve/download data, build caches, write the split manifest")
    pr.add_argument("--config", required=True)
    pr.set_defaults(func=cmd_prepare)


def _study_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    study = sub.add_parser("study", help="create a study, run workers, set one aside").add_subparsers(
        dest="study_cmd", required=True, parser_class=Parser
    )
    for name, func, text in (
        ("create", cmd_create, "create the study and its MLflow parent run"),
        ("worker", cmd_worker, "run trials until the study budget is met"),
        ("run", cmd_run, "prepare + create + one worker, in this process"),
        ("delete", cmd_delete, "set the study aside (journal and results to results/{study}/attic/)"),
    ):
        s = study.add_parser(name, help=text)
        s.add_argument("--config", required=True)
        if name == "worker":
            s.add_argument("--worker", type=int, default=0, help="worker index (names its log)")
            s.add_argument("--arm", help="a comparison's arm (default: every arm in turn)")
            s.add_argument(
                "--processes",
                type=positive_int,
                help="worker processes sharing this machine's device (default: the config's workers_per_gpu)",
            )
        if name == "delete":
            s.add_argument("--force", action="store_true", help="also a study with finished trials")
        s.set_defaults(func=func)


def _result_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    e = sub.add_parser(
        "evaluate", help="re-train the top configs on all train classes, score on test classes"
    )
    e.add_argument("--config", required=True)
    e.add_argument(
        "--shard",
        type=int,
        help="run only shard N (0-based) of evaluate.jobs (a cluster job); without it: all, then the tables",
    )
    e.add_argument("--arm", help="a comparison: only this arm's runs (a cluster job)")
    e.set_defaults(func=cmd_evaluate)
    r = sub.add_parser(
        "report",
        help="one HTML page for one or more studies (results/{study}/report/index.html, or"
        " results/report/{a}+{b}/ for several)",
    )
    r.add_argument("studies", nargs="*", metavar="STUDY", help="study config path or study name")
    r.add_argument("--config", nargs="+", help="same as STUDY (kept for scripts)")
    r.add_argument("--out", help="output folder (default: see above)")
    r.add_argument("--separate", action="store_true", help="one page per study instead of one for all")
    r.set_defaults(func=cmd_report)


def _tool_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    sm = sub.add_parser(
        "smoke", help="seconds: import everything, write an MLflow store and an Optuna journal"
    )
    sm.set_defaults(func=cmd_smoke)
    b = sub.add_parser("bench", help="throughput: raw timm step vs harness step, own vs PML miners")
    b.add_argument("--out", default="bench/results")
    b.add_argument("--quick", action="store_true", help="smallest sizes only")
    b.add_argument(
        "--part",
        action="append",
        choices=("steps", "trial", "frozen", "partial", "miners"),
        help="run only this part (repeatable; default: all)",
    )
    b.set_defaults(func=cmd_bench)
    cl = sub.add_parser("cluster", help="SLURM: will every job of a profile start here?").add_subparsers(
        dest="cluster_cmd", required=True, parser_class=Parser
    )
    cc = cl.add_parser("check", help="compare the profile's sizes with sinfo's partitions")
    cc.add_argument(
        "--profile", default="workflow/profiles/slurm", help="a SLURM profile folder or its config.yaml"
    )
    cc.set_defaults(func=cmd_cluster_check)
    sc = sub.add_parser("schema", help="print the study config's JSON schema (for an editor's YAML support)")
    sc.set_defaults(func=cmd_schema)
    em = sub.add_parser("embed", help="embed a folder of images with an exported model")
    em.add_argument("--model", required=True, help="an exported model folder (evaluation/models/<run>/)")
    em.add_argument("--images", required=True, help="a folder of images (searched recursively)")
    em.add_argument("--out", required=True, help="the .npz to write (embeddings, paths)")
    em.add_argument("--batch-size", type=positive_int, default=64)
    em.set_defaults(func=cmd_embed)
    w = sub.add_parser("weights", help="pretrained backbone weights").add_subparsers(
        dest="weights_cmd", required=True, parser_class=Parser
    )
    wf = w.add_parser(
        "fetch",
        help="download a study's backbone weights into the Hugging Face / torch hub cache (on a login"
        " node, before submitting to compute nodes without internet)",
    )
    which = wf.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--config", help="a study config: its backbone(s), pretrained, checkpoint and baselines"
    )
    which.add_argument("--backbone", nargs="+", help="timm names, optionally with a tag (resnet50.a1_in1k)")
    wf.set_defaults(func=cmd_weights_fetch)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    stacks_on_sigusr1(sys.stderr)
    try:
        args.func(args)
    except BrokenPipeError:  # the reader went away (harness schema | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (Exception, KeyboardInterrupt) as e:
        code, line = failure(e, args.verbose)
        if code == 1:
            log.debug("traceback", exc_info=True)
        print(line, file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
