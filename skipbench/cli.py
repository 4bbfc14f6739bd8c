"""The command line: ``skipbench run | report | compare | list | plugins | check`` (argparse).

Only argparse and the torch-free parts of skipbench are imported at start, so ``--help`` is
instant; each command imports what it needs. A user error prints one line and exits with 2.

Exit codes: 0 when everything ran, 1 when cells, plugins or checks failed (or a comparison
tripped a --fail-on rule), 2 for a user error (also a --resume that does not match the run there), 3 when
a file of the run directory could not be written (a full disk, ...: the finished tasks are kept,
whole, and the same command with --resume RUN_DIR continues), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import textwrap
import time
from pathlib import Path

from . import __version__
from .specs import NETWORK_PARAMS, UsageError

EXIT_OK, EXIT_FAILED_CELLS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_WRITE = 3  # the run directory could not be written: the run stopped, resumable (see the docstring)


class Progress:
    """A progress bar on a terminal, one plain line per task otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()
        self.start = time.perf_counter()

    def __call__(self, task, table) -> None:
        """Report one finished task (its table: results.task_table)."""
        from .results import count

        self.done += 1
        failed = count(table, "failed") > 0
        label = f"{task.variant} {task.measurement} depth={task.depth} width={task.width}"
        elapsed = time.perf_counter() - self.start
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                              f"{elapsed:5.1f}s {label[:40]:<40}")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {label}: {'FAILED' if failed else 'ok'} ({elapsed:.2f}s)\n")
        self.stream.flush()


def _plugin_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("plugins and variants")
    g.add_argument("--plugins-dir", action="append", default=[], metavar="DIR",
                   help="load every *.py in DIR as a plugin (repeatable; also SKIPBENCH_PLUGINS_DIR)")
    g.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                   help="do not load this plugin (plugin, module or distribution name; also SKIPBENCH_DISABLE_PLUGINS)")
    g.add_argument("--strict-plugins", action="store_true", help="a plugin that fails to load is a fatal error")
    g.add_argument("--variants", action="append", default=[], metavar="FILE", help="TOML file of more variants (repeatable)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="skipbench", description="Benchmark skip connections in deep networks.")
    parser.add_argument("--version", action="version", version=f"skipbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parent = _plugin_options()

    run = sub.add_parser("run", parents=[parent], help="measure variants and write a run directory",
                         description="Measure the selected variants on the selected measurements.")
    run.add_argument("names", nargs="*", metavar="VARIANT", help="variant names, wildcards allowed ('highway*')")
    run.add_argument("--all", action="store_true", help="every registered variant")
    run.add_argument("-m", "--measurement", action="append", default=[], metavar="NAME", help="measurement to run (repeatable)")
    run.add_argument("--profile", default="default", metavar="NAME|FILE", help="profile name or TOML file (default: default)")
    run.add_argument("--experiment", action="append", default=[], metavar="NAME",
                     help="only this experiment of the profile (repeatable)")
    run.add_argument("--depths", type=int, nargs="+", default=[], metavar="N", help="depths in weight layers")
    run.add_argument("--width", type=int, metavar="N", help="network width (one)")
    run.add_argument("--widths", type=int, nargs="+", default=[], metavar="N",
                     help="network widths: every depth runs at each (instead of --width)")
    run.add_argument("--batch", type=int, metavar="N", help="batch size")
    run.add_argument("--seeds", type=int, metavar="N", help="number of seeds")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    run.add_argument("--threads", type=int, metavar="N", help="torch threads (recorded in the results)")
    run.add_argument("--jobs", type=int, default=0, metavar="N",
                     help="worker processes (one thread each) for non-timing tasks; default 0: one per CPU when "
                          "the run is big enough to pay for starting them, else in-process")
    run.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                     help="stop a cell that runs longer than this and record it as failed (cells then run in "
                          "worker processes, which can be stopped)")
    dask = run.add_argument_group("a Dask cluster (pip install \"skipbench[dask]\")")
    where = dask.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="send the work to this dask.distributed scheduler (tcp://HOST:PORT)")
    where.add_argument("--dask-workers", type=int, metavar="N",
                       help="start a Dask LocalCluster of N one-thread workers on this machine for the run")
    run.add_argument("--mode", choices=("train", "eval"),
                     help="run every measurement's network in this mode (default: each measurement's own: "
                          "training mode, eval mode for evaluating a trained network)")
    run.add_argument("--tag", action="append", default=[], metavar="TAG", help="only variants with this tag (repeatable)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: skipbench-results/<timestamp>)")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR, skipping finished tasks")
    run.add_argument("--format", default="simple", metavar="FMT", help="table format (any tabulate format)")
    run.add_argument("--no-figures", action="store_true",
                     help="draw no figures (report.html without them; `skipbench report RUN_DIR` draws them)")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", parents=[parent], help="list variants (and builders)",
                         description="List registered variants, or builders with --builders.")
    lst.add_argument("--builders", action="store_true", help="list builders and their parameter schemas instead")
    lst.add_argument("--profile", metavar="NAME|FILE", help="also list the variants this profile defines")
    lst.add_argument("--format", default="simple", metavar="FMT", help="table format (any tabulate format)")
    lst.set_defaults(func=cmd_list)

    plg = sub.add_parser("plugins", parents=[parent], help="list plugins, their status and contributions",
                         description="List discovered plugins: names, distribution, version, status, contributions.")
    plg.add_argument("--json", action="store_true", help="machine-readable output")
    plg.set_defaults(func=cmd_plugins)

    rep = sub.add_parser("report", help="write RUN_DIR/report.html from a finished run",
                         description="Write the run's self-contained HTML report (tables, figures, theory against "
                                     "measurement, failures, variant definitions) to RUN_DIR/report.html.")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's directory")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser("compare", help="compare two runs row by row: medians, changes, significance",
                         description="Compare run B with run A (the baseline): for every scalar row both have "
                                     "(variant, measurement, metric, depth, width), the two medians, the relative "
                                     "change, a bootstrap 95% interval of the difference of medians and a "
                                     "Mann-Whitney p-value over seeds, corrected for the number of rows "
                                     "(Benjamini-Hochberg); timings by a noise factor and their spread. Rows are "
                                     "marked improved, worse, changed or no significant change, with what differs "
                                     "between the runs' settings.")
    cmp.add_argument("run_a", metavar="RUN_A", help="the baseline run directory")
    cmp.add_argument("run_b", metavar="RUN_B", help="the run directory compared with it")
    cmp.add_argument("--alpha", type=float, default=0.05, metavar="Q",
                     help="false discovery rate: a per-seed row is significant when its Benjamini-Hochberg "
                          "q-value is below this (default 0.05)")
    cmp.add_argument("--factor", type=float, default=1.1, metavar="F",
                     help="a timing is significant only when it changes by more than this factor and the runs' "
                          "median ± IQR/2 do not overlap (default 1.1, as asv compare)")
    cmp.add_argument("--fail-on", action="append", default=[], metavar="METRIC[:THRESHOLD]",
                     help="exit 1 when a row of METRIC (wildcards allowed) changed significantly the wrong way "
                          "(worse; any change for a metric without a direction) by more than THRESHOLD "
                          "(a fraction 0.05 or a percentage 5%%; default 0); repeatable")
    cmp.add_argument("--format", default="simple", metavar="FMT", help="table format (any tabulate format)")
    cmp.add_argument("--html", metavar="PATH", help="also write the comparison as a self-contained HTML page")
    cmp.set_defaults(func=cmd_compare)

    chk = sub.add_parser("check", parents=[parent], help="run the conformance checks on a variant, builder or plugin",
                         description="Check that a variant, a builder, a plugin file (.py) or an installed plugin "
                                     "(all it provides) keeps the plugin contract: one line per check, exit 1 "
                                     "if any fails.")
    chk.add_argument("target", metavar="TARGET", help="variant, builder, plugin file or plugin name")
    chk.set_defaults(func=cmd_check)
    return parser


def _registry(args):
    from .registry import load_registry

    return load_registry(**_registry_args(args))


def _registry_args(args) -> dict:
    return dict(disabled=args.disable_plugin, plugin_dirs=args.plugins_dir, variant_files=args.variants,
                strict=args.strict_plugins, pyproject=str(Path("pyproject.toml").resolve()))


def _check_format(fmt: str) -> None:
    from tabulate import tabulate_formats

    if fmt not in tabulate_formats:
        raise UsageError(f"unknown table format {fmt!r}; choose one of {', '.join(tabulate_formats)}")


def _plugin_failures(registry) -> list[str]:
    """One line per plugin that failed to load, or was set aside."""
    return [f"plugin {p.name!r} ({p.source}) failed: {p.error}" for p in registry.plugins.failures()]


def _plugin_problems(registry) -> list[str]:
    """One line per failed (or set aside) plugin, skipped TOML entry and unmatched blocking name."""
    return _plugin_failures(registry) + registry.warnings + registry.plugins.warnings()


def start_worker_server() -> None:
    """Start the server that worker processes fork from, importing executors.WORKER_PRELOAD, now: it
    imports them on the other core while this process imports torch and plans the run, and
    each worker then starts in milliseconds instead of seconds. Nothing runs there unless the
    run uses workers."""
    import multiprocessing.forkserver

    from .executors import WORKER_PRELOAD

    multiprocessing.forkserver.set_forkserver_preload(WORKER_PRELOAD)
    multiprocessing.forkserver.ensure_running()


def _execution(args):
    """Where the run's work goes (harness.Execution), from the command line, validated."""
    from .executors import Execution

    if args.cell_timeout is not None and not args.cell_timeout > 0:
        raise UsageError(f"--cell-timeout must be > 0 seconds, got {args.cell_timeout}")
    if args.dask_workers is not None and args.dask_workers < 1:
        raise UsageError(f"--dask-workers must be >= 1, got {args.dask_workers}")
    return Execution(args.cell_timeout, args.scheduler, args.dask_workers)


def cmd_run(args) -> int:
    """`skipbench run`: plan, execute, export, report."""
    _check_format(args.format)
    execution = _execution(args)
    if (args.jobs != 1 or execution.cell_timeout) and not (execution.scheduler or execution.dask_workers):
        start_worker_server()
    registry = _registry(args)
    for problem in _plugin_problems(registry):  # before planning: a failed plugin explains an unknown variant
        print(f"warning: {problem}", file=sys.stderr)
    from . import grid, harness, identity, results

    run = grid.make_run(registry, args.profile, args.names, args.tag, args.measurement, args.depths, args.width,
                           args.batch, args.seeds, args.device, args.threads, args.jobs, select_all=args.all,
                           only_experiments=args.experiment, mode=args.mode, widths=args.widths)
    run_identity = identity.describe(run, registry)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / results.FRAGMENTS).is_dir():
            raise UsageError(f"--resume {args.resume!r}: no {results.FRAGMENTS}/ there to resume from")
        with identity.hold(run_dir, f"--resume {args.resume!r}"):
            identity.check(run_dir, run_identity, f"--resume {args.resume!r}")
            return _measure(args, registry, run, run_dir, execution)
    run_dir = harness.new_run_dir(args.out)
    with identity.hold(run_dir, str(run_dir)):
        identity.write(run_dir, run_identity)  # before any task: what a --resume is checked against
        return _measure(args, registry, run, run_dir, execution)


def _measure(args, registry, run, run_dir: Path, execution) -> int:
    """Execute the run into `run_dir` (held by this process), export it, print its tables and
    report, and return the exit status."""
    from . import harness, report, report_page, results, theory

    tasks = run.tasks(registry)
    settings = run.settings
    print(f"skipbench {__version__}: profile {run.profile!r}, {len(run.plans)} experiment(s), {len(tasks)} tasks, "
          f"{len(settings.seeds)} seeds, {settings.threads} threads -> {run_dir}", file=sys.stderr)
    meta = harness.metadata(run, registry)
    t0 = time.perf_counter()
    try:
        table = harness.execute(registry, run, run_dir, _registry_args(args), Progress(len(tasks)),
                                resume=bool(args.resume), execution=execution)
        meta["wall_seconds"] = round(time.perf_counter() - t0, 3)
        meta["execution"], meta["jobs"] = execution.used, execution.used["workers"]  # what ran the work
        declared, workers = ([], 1) if args.no_figures else (meta.get("figures", []), _figure_workers(args, execution))
        with report_page.FigureDrawing(declared, table, run_dir, workers) as drawing:
            meta["predictions"] = theory.evaluate(registry, run, table)
            results.export(run_dir, meta, table)
            for line in results.fallbacks(table):  # once per variant, not once per cell
                print(f"warning: {line}", file=sys.stderr)
            print_tables(meta, table, args.format)
            figures = None if args.no_figures else drawing.finish(meta["predictions"])
        page = report_page.write(run_dir, meta, table, figures, draw=not args.no_figures)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished tasks are in {run_dir / results.FRAGMENTS}/; "
              f"continue with the same command and --resume {run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except results.WriteFailed as exc:  # every file of the run is written through results.replace_atomic
        return _write_failed(exc, run_dir, len(tasks))
    if figures:
        names = textwrap.fill(", ".join(p.stem for _, p in figures), report.TERMINAL_WIDTH,
                              initial_indent="figures (PNG and SVG): ", break_on_hyphens=False)
        print(f"\n{names}")
    print(f"\nresults: {run_dir}/results.csv, results.parquet, results.json, {results.FRAGMENTS}/ "
          f"({meta['wall_seconds']:.1f} s)\nreport: {page}")
    return end_of_run_summary(registry, table)


def _figure_workers(args, execution) -> int:
    """Processes that draw the figures at the end of a run (report_page.FigureDrawing): where
    the run's work went to local worker processes, as many children (the workers are done by
    then, and their forkserver has skipbench imported; this process goes on with the rest of the
    end); else one, this process (--jobs 1 asks for one process, and a Dask run has no local one
    ready)."""
    if args.jobs == 1 or execution.scheduler or execution.dask_workers:
        return 1
    cpus = os.cpu_count() or 1
    return min(cpus, args.jobs or cpus)


def _write_failed(exc, run_dir: Path, total: int) -> int:
    """Say on one line which file of the run could not be written and why, how many of the run's
    `total` tasks are kept (each finished task's fragment is whole: results.replace_atomic) and
    how to continue; EXIT_WRITE."""
    from .results import FRAGMENTS, fragment_paths

    kept = len(fragment_paths(run_dir / FRAGMENTS))
    reason = (str(exc.strerror or exc).strip().splitlines() or [type(exc).__name__])[0]
    when = "once there is space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "once it can be written"
    print(f"skipbench: error: cannot write {exc.filename or run_dir}: {reason}; {kept} of {total} "
          f"tasks are kept in {run_dir / FRAGMENTS}/; continue with the same command and --resume {run_dir} {when}",
          file=sys.stderr)
    return EXIT_WRITE


def end_of_run_summary(registry, table) -> int:
    """Print what the run could not measure, one line per fault: failed cells, plugins that failed
    to load, and cells with NaN or inf values; return the exit status. A failed cell or plugin
    means not everything selected or installed was measured: 1. NaN and inf are a measured result
    (a diverging network), status ``nonfinite``: listed, but 0 when nothing else went wrong."""
    from . import report, results

    failed_cells, failed_plugins = report.failure_lines(table), _plugin_failures(registry)
    sections = [(f"{results.count(table, 'failed')} cell(s) failed", failed_cells),
                (f"{len(failed_plugins)} plugin(s) failed to load, so what they provide was not measured",
                 failed_plugins),
                ("cells with NaN or inf values (recorded as nonfinite: measured, not failed)",
                 report.nonfinite_lines(table))]
    for heading, lines in sections:
        if lines:
            print(f"\n{heading}:\n" + "\n".join(f"  {line}" for line in lines), file=sys.stderr)
    return EXIT_FAILED_CELLS if failed_cells or failed_plugins else EXIT_OK


def print_tables(meta: dict, table, tablefmt: str) -> None:
    """The run's tables on the terminal, each within report.TERMINAL_WIDTH columns: one per
    experiment and measurement, the published values, theory against measurement."""
    from . import report, theory

    for heading, _, headers, rows in report.run_tables(meta, table):
        print(f"\n== {heading} ==\n{report.fit(headers, rows, report.key_columns(headers), tablefmt)}")
    print(f"\n{report.TABLE_NOTE};\nevery column and cell is also in results.csv and report.html")
    if meta.get("published"):
        print(f"\n== published values against the measured distributions ({len(meta['seeds'])} seeds) ==\n"
              f"{report.published_table(table, meta['published'], tablefmt)}")
    text = theory.text_table(table, meta.get("predictions", []), tablefmt)
    if text:
        print(f"\n== theory against measurement ==\n{text}")


def cmd_report(args) -> int:
    """`skipbench report RUN_DIR`: write RUN_DIR/report.html from a finished run."""
    from . import report_page, results

    t0 = time.perf_counter()
    meta, table = results.load_finished(args.run_dir)
    path = report_page.write(Path(args.run_dir), meta, table)
    print(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s)")
    return EXIT_OK


def cmd_list(args) -> int:
    """`skipbench list`: variants (or builders) with their provider."""
    _check_format(args.format)
    registry = _registry(args)
    from tabulate import tabulate

    if args.profile:
        from .grid import add_profile_variants, load_profile

        add_profile_variants(registry, *reversed(load_profile(args.profile)))
    if args.builders:
        rows = [[b.name, b.skip_kind, b.layers_per_block, ", ".join(p.describe() for p in b.params),
                 ", ".join(b.probes), b.provider, b.description] for b in sorted(registry.builders.values(), key=lambda b: b.name)]
        print(tabulate(rows, headers=["builder", "skip kind", "layers/block", "parameters", "probes", "provider", "description"],
                       tablefmt=args.format))
        return EXIT_OK
    rows = []
    for v in registry.variants.values():
        builder = registry.builders[v.builder]
        params = ", ".join(f"{k}={val!r}" for k, val in registry.params_of(v).items())
        if v.last_block:
            params += "; last block: " + ", ".join(f"{k}={val!r}" for k, val in v.last_block.items())
        net = ", ".join(f"{p.name}={v.network[p.name]!r}" for p in NETWORK_PARAMS if v.network[p.name] != p.default)
        rows.append([v.name, v.builder, builder.skip_kind, params, net, ", ".join(v.tags), v.provider])
    print(tabulate(rows, headers=["variant", "builder", "skip kind", "parameters", "network", "tags", "provider"],
                   tablefmt=args.format))
    for problem in _plugin_problems(registry) + registry.notes:
        print(f"warning: {problem}", file=sys.stderr)
    return EXIT_OK


def cmd_plugins(args) -> int:
    """`skipbench plugins`: every plugin considered, its status and what it contributes."""
    registry = _registry(args)
    for problem in registry.warnings + registry.plugins.warnings():  # failures are in the table
        print(f"warning: {problem}", file=sys.stderr)
    infos = [info.as_dict() for info in registry.plugins.infos]
    if args.json:
        print(json.dumps(infos, indent=1))
        return EXIT_OK
    from tabulate import tabulate

    rows = [[i["name"], i["source"], i["module"], i["distribution"], i["version"],
             i["status"] + (f": {i['error']}" if i["error"] else ""),
             "; ".join(f"{k}: {', '.join(v)}" for k, v in i["contributes"].items())] for i in infos]
    print(tabulate(rows, headers=["plugin", "source", "module", "distribution", "version", "status", "contributes"]))
    return EXIT_OK


def cmd_check(args) -> int:
    """`skipbench check TARGET`: every conformance check on each builder and variant of TARGET."""
    from . import checks

    _, subjects, problems = checks.resolve(args.target, _registry_args(args))
    failed = 0
    for problem in problems:
        print(f"FAIL  {problem}")
        failed += 1
    for subject in subjects:
        print(f"{subject.label}, from {subject.builder.provider}")
        for result in checks.run_all(subject):
            print(f"  {'PASS' if result.ok else 'FAIL'}  {result.check}: {result.reason}")
            failed += not result.ok
    print(f"{len(subjects)} target(s), {len(subjects) * len(checks.CHECKS)} checks, {failed} failed")
    return EXIT_FAILED_CELLS if failed else EXIT_OK


def cmd_compare(args) -> int:
    """`skipbench compare RUN_A RUN_B`: the comparison's tables; exit 1 when a --fail-on rule trips."""
    _check_format(args.format)
    from . import compare

    rules = [compare.parse_fail_on(spec) for spec in args.fail_on]
    comparison = compare.compare(args.run_a, args.run_b, args.alpha, args.factor)
    print(compare.text(comparison, args.format))
    if args.html:
        from .results import write_atomic

        try:
            write_atomic(Path(args.html), compare.html_page(comparison))
        except OSError as exc:
            raise UsageError(f"--html {args.html!r}: {exc.strerror or exc}") from None
        print(f"\nhtml: {args.html}")
    for pattern in compare.unmatched(comparison, rules):
        print(f"warning: --fail-on {pattern!r} matches no compared metric", file=sys.stderr)
    hits = compare.tripped(comparison, rules)
    for rule, row in hits:
        change = "-" if row.change is None else f"{row.change:+.1%}"
        print(f"fail-on {rule}: {row.label}: {row.result}, {change} (q {row.q:.2g})" if row.q is not None else
              f"fail-on {rule}: {row.label}: {row.result}, {change}", file=sys.stderr)
    return EXIT_FAILED_CELLS if hits else EXIT_OK


def entry() -> None:
    """The ``skipbench`` command and ``python -m skipbench``: :func:`main`, then the process ends
    at once with its status. By then every file of the command is written and closed (results
    through results.replace_atomic, the run directory's lock released with its descriptor), and
    the interpreter's own teardown (freeing torch's, pyarrow's and matplotlib's objects one by
    one) would add 1-2 s to every run for nothing; an uncaught exception still ends it the usual
    way, with its traceback."""
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a reader that went away (`skipbench run | head`): nothing left to tell it
        pass
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `skipbench` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"skipbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
