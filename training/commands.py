"""`mmi` subcommands of CTR training. `trainset build` runs here (Feast); train, evaluate and experiment
spawn `training.train` / `training.evaluate` in .venv-train, where petastorm works; promote exits 99 when
the run does not beat the promoted model (Airflow marks the task skipped)."""

from __future__ import annotations

from mminterest.cli import fail

SKIPPED = 99  # Airflow's skip_on_exit_code for `mmi promote`


def _trainset_build(args) -> int:
    from training import trainset

    try:
        print(trainset.build(name=args.name, start=args.start, end=args.end).line())
    except (FileNotFoundError, ValueError) as err:
        return fail(err)
    return 0


def _train(args) -> int:
    from mminterest.config import get_config
    from training import runs

    cfg = get_config()
    try:
        run_dir, metrics = runs.train(
            cfg,
            args.model,
            args.trainset,
            args.seed,
            args.epochs,
            args.batch_size,
            args.lr,
            args.nproc,
            args.max_steps,
            args.set,
            out=runs.named_run_dir(cfg, args.run_name) if args.run_name else None,
            patience=args.patience,
        )
    except (FileNotFoundError, runs.RunError) as err:
        return fail(err)
    print(
        f"run {run_dir.name}: validation AUC {metrics['auc']:.4f} GAUC {metrics['gauc']:.4f} "
        f"logloss {metrics['logloss']:.4f} -> {run_dir}"
    )
    return 0


def _evaluate(args) -> int:
    from mminterest.config import get_config
    from training import runs

    cfg = get_config()
    try:
        for run in args.run or [None]:
            run_dir = runs.run_path(cfg, run)
            trainset = args.trainset or runs.read_metrics(run_dir)["trainset"]
            runs.spawn(
                "training.evaluate",
                [
                    "--run",
                    str(run_dir),
                    "--trainset",
                    str(runs.trainset_path(cfg, trainset)),
                    "--split",
                    args.split,
                ],
            )
    except (FileNotFoundError, runs.RunError) as err:
        return fail(err)
    return 0


def _promote(args) -> int:
    from mminterest.config import get_config
    from training import runs

    cfg = get_config()
    try:
        candidates = [runs.run_path(cfg, run) for run in args.run or [None]]
        promoted, reason = runs.promote(cfg, runs.best_run(candidates))
    except (FileNotFoundError, FileExistsError) as err:
        return fail(err)
    print(reason)
    return 0 if promoted else SKIPPED


def _track(args) -> int:
    from mminterest.config import get_config
    from training import runs

    cfg = get_config()
    try:
        done = [runs.track(cfg, "log", runs.run_path(cfg, run)) for run in args.run or [None]]
        if args.champion:
            if not (cfg.model_dir / runs.METRICS_FILE).exists():
                raise FileNotFoundError(f"no promoted run at {cfg.model_dir}")
            done.append(runs.track(cfg, "promote", cfg.model_dir.resolve()))
    except FileNotFoundError as err:
        return fail(err)
    return 0 if all(done) else 1


def _experiment(args) -> int:
    from mminterest.config import get_config
    from training import experiment, runs

    try:
        experiment.run(get_config(), args.config, args.jobs, args.report_only)
    except (FileNotFoundError, ValueError, runs.RunError) as err:
        return fail(err)
    return 0


def _training_args(p) -> None:
    p.add_argument(
        "--trainset",
        default="default",
        help="training-set name or directory (default: %(default)s)",
    )
    p.add_argument("--nproc", type=int, default=1, help="processes under torchrun (DDP, gloo)")
    run_arguments(p)


def run_arguments(p) -> None:
    """The options of one training run, shared with the worker (`python -m training.train`)."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--epochs",
        type=int,
        default=20,
        help="most epochs; early stopping decides (default: %(default)s)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=2,
        help="epochs without a better validation AUC before stopping",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--max-steps", type=int, default=0, help="cap on steps per epoch (0: a full pass)"
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="ModelConfig overrides, e.g. emb_dim=8 use_mifu=false",
    )


def register(sub) -> None:
    ts = sub.add_parser("trainset", help="point-in-time CTR training sets (Feast -> Parquet)")
    actions = ts.add_subparsers(dest="action", required=True)
    build = actions.add_parser(
        "build",
        help="labelled interactions in [start, end) + ctr_training features -> "
        "<home>/trainsets/NAME (temporal train/valid/test split, vocab.json)",
    )
    build.add_argument("--start", help="first event_ts, ISO, UTC (inclusive)")
    build.add_argument("--end", help="end of the event_ts range, ISO, UTC (exclusive)")
    build.add_argument("--name", default="default", help="training-set name (default: %(default)s)")
    build.set_defaults(func=_trainset_build)

    train = sub.add_parser(
        "train", help="train a CTR model (in .venv-train) -> <home>/models/ctr/<run>"
    )
    train.add_argument(
        "--model",
        default="din",
        metavar="NAME",
        help="a model of training/models: din, dmae, simtier, ciubm_din, ... (default: %(default)s)",
    )
    train.add_argument(
        "--run-name", help="run id (default: UTC time, model, seed); an orchestrator passes its own"
    )
    _training_args(train)
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "evaluate", help="AUC, GAUC, logloss and the cold-start breakdown of a run"
    )
    evaluate.add_argument(
        "--run", nargs="+", help="run ids or directories (default: the latest run)"
    )
    evaluate.add_argument("--trainset", help="training set (default: the run's)")
    evaluate.add_argument(
        "--split",
        default="valid",
        choices=("train", "valid", "test"),
        help="default: %(default)s (the split promotion compares on)",
    )
    evaluate.set_defaults(func=_evaluate)

    promote = sub.add_parser(
        "promote",
        help=f"point the served model at a run if its validation AUC is better "
        f"(else exit {SKIPPED})",
    )
    promote.add_argument(
        "--run",
        nargs="+",
        help="candidate run ids or directories: the best on validation AUC "
        "is the one compared (default: the latest run)",
    )
    promote.set_defaults(func=_promote)

    track = sub.add_parser(
        "track", help="log runs to MLflow in .venv-train (done by train; for older runs)"
    )
    track.add_argument("--run", nargs="+", help="run ids or directories (default: the latest run)")
    track.add_argument(
        "--champion",
        action="store_true",
        help="also point the registry alias 'champion' at the promoted run (ctr/current)",
    )
    track.set_defaults(func=_track)

    exp = sub.add_parser(
        "experiment",
        help="a named comparison (YAML: models, protocols, claims) -> "
        "reports/experiments/NAME (tables, paired differences, verdicts, plots)",
    )
    exp.add_argument(
        "--config",
        default="training/experiments/default.yaml",
        help="experiment YAML (default: %(default)s)",
    )
    exp.add_argument("--jobs", type=int, help="runs at once (default: the YAML's jobs)")
    exp.add_argument(
        "--report-only", action="store_true", help="train nothing: report the runs finished so far"
    )
    exp.set_defaults(func=_experiment)
