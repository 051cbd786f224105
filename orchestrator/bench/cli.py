"""``cato bench``: simulate the paper's experiments, or print the workload's shape.

``cato bench sim --scenario rq1|rq2|rq3|all`` sweeps arrival rates for each policy (and
provisioner, for rq3) in the simulator and writes JSON, markdown and PNG plots;
``cato bench live`` runs the same sweeps through the embedded orchestrator over emulator
processes (and simulates the same runs next to them); ``cato bench peers`` sends one load
through ``cato serve`` and the routers people deploy; ``cato bench workloads`` prints
the per-kind prompt and output length distributions;
``cato bench calibrate --url URL --name PROFILE`` fits an engine profile to a live engine;
``cato bench capacity`` finds each policy's SLA capacity over held-out seeds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator import calibrate, calibrate_prefix
from orchestrator.bench import (
    capacity,
    capacity_report,
    chaos,
    fairness,
    frontends,
    overhead,
    peers,
    prefix_report,
    soak,
    workloads,
)
from orchestrator.bench.live import LIVE_POLICIES, LiveOptions, run_live_sweep, twin_sweep
from orchestrator.bench.live_serve import run_serve_sweep
from orchestrator.bench.report import markdown, write_report
from orchestrator.bench.scenarios import (
    OVERLOAD,
    PAPER_RATES,
    POLICIES,
    SCENARIOS,
    Scenario,
    Sweep,
    capacity_rps,
    run_sweep,
    scenario,
)
from orchestrator.policy.provisioner import PROVISIONERS
from orchestrator.sim.clairvoyant import SIM_SCHEDULERS
from orchestrator.sim.variants import VariantError, parse_variant


def _names(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}"
        )
    return names


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="ACTION", required=True)
    sim = sub.add_parser("sim", help="simulate rq1-rq3 over a sweep of arrival rates")
    sim.add_argument(
        "--scenario",
        default="all",
        type=lambda s: list(SCENARIOS) if s == "all" else _names(s, list(SCENARIOS), "scenario"),
        help="rq1, rq2, rq3, a comma list, or all (default)",
    )
    sim.add_argument("--quick", action="store_true", help="two rates, short runs (seconds)")
    sim.add_argument(
        "--policies",
        type=lambda s: _names(s, SIM_SCHEDULERS, "policy"),
        default=list(POLICIES),
        help=f"comma list of {', '.join(SIM_SCHEDULERS)} (default: all)",
    )
    sim.add_argument(
        "--provisioners",
        type=lambda s: _names(s, list(PROVISIONERS), "provisioner"),
        default=None,
        help="comma list of cato, queue_length, fixed (default: the scenario's)",
    )
    sim.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    sim.add_argument("--seed", type=int, default=0, help="seed of workload and arrivals")
    sim.add_argument("--duration", type=float, default=None, help="seconds of arrivals per run")
    sim.add_argument("--per-kind", type=int, default=200, help="distinct tasks per kind")
    sim.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="calls in flight per replica (default: the engine's max_num_seqs)",
    )
    sim.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    _configure_live(sub.add_parser("live", help="run a scenario live over emulator processes"))
    _configure_peers(sub.add_parser("peers", help="CATO next to real routers on the same load"))
    _configure_capacity(
        sub.add_parser("capacity", help="SLA capacity per scenario and policy over seeds")
    )
    chaos.configure(sub.add_parser("chaos", help="stream through cato serve, killing replicas"))
    soak.configure(sub.add_parser("soak", help="steady load; memory and fds over time"))
    fairness.configure(sub.add_parser("fairness", help="light users beside a heavy one"))
    overhead.configure(
        sub.add_parser("overhead", help="router CPU per streamed request, beside its peers")
    )
    shape = sub.add_parser("workloads", help="print per-kind prompt and output lengths")
    workloads.configure(shape)
    calibrate.configure(
        sub.add_parser("calibrate", help="measure a running engine and write an engine profile")
    )
    calibrate_prefix.configure(
        sub.add_parser(
            "calibrate-prefix", help="a running engine's prefix cache against the emulator's"
        )
    )


def _configure_live(live: argparse.ArgumentParser) -> None:
    live.add_argument(
        "--scenario",
        default=["rq2"],
        type=lambda s: list(SCENARIOS) if s == "all" else _names(s, list(SCENARIOS), "scenario"),
        help="rq1, rq2, rq3, a comma list, or all (default rq2)",
    )
    live.add_argument(
        "--via",
        choices=("embedded", "serve"),
        default="embedded",
        help="embedded: the orchestrator in this process on a sped-up clock (fixed "
        "replicas); serve: a fresh `cato serve` per run over HTTP, with its replica "
        "manager and provisioner (default embedded)",
    )
    live.add_argument(
        "--provisioners",
        type=lambda s: _names(s, list(PROVISIONERS), "provisioner"),
        default=None,
        help="with --via serve: comma list of cato, queue_length, fixed (default: the scenario's)",
    )
    live.add_argument("--quick", action="store_true", help="two rates, short runs")
    live.add_argument(
        "--loads",
        type=_loads,
        default=None,
        help="comma list of loads in x C (e.g. 1.0,1.2) instead of the paper's rates",
    )
    live.add_argument(
        "--policies",
        type=lambda s: _names(s, LIVE_POLICIES, "policy"),
        default=list(LIVE_POLICIES),
        help=f"comma list of {', '.join(LIVE_POLICIES)} (default: all)",
    )
    live.add_argument("--speed", type=float, default=2.0, help="emulator speed-up (default 2)")
    live.add_argument("--out", type=Path, default=Path("bench-results/live"), help="output folder")
    live.add_argument("--seed", type=int, default=0, help="seed of workload, arrivals, outputs")
    live.add_argument("--duration", type=float, default=None, help="seconds of arrivals per run")
    live.add_argument("--per-kind", type=int, default=200, help="distinct tasks per kind")
    live.add_argument("--concurrency", type=int, default=None, help="calls in flight per replica")
    live.add_argument("--no-twin", action="store_true", help="skip the simulated twin runs")
    live.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _configure_peers(peers_cmd: argparse.ArgumentParser) -> None:
    groups = list(peers.PEER_GROUPS)
    peers_cmd.add_argument("--quick", action="store_true", help="20 s of arrivals (default 60 s)")
    peers_cmd.add_argument(
        "--peers",
        type=lambda s: _names(s, groups, "peer"),
        default=groups,
        help=f"comma list of {', '.join(groups)} (default: all; cato and direct always run)",
    )
    load = peers_cmd.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, default=None, help="tasks/s (default 4)")
    load.add_argument(
        "--load", type=float, default=None, help="tasks/s as a fraction of the replicas' capacity C"
    )
    peers_cmd.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="emulator speed (default 1); below 1 stretches wall time so a load near C "
        "stays within the machine's cores. Rates, durations and latencies are in the "
        "profile's time",
    )
    peers_cmd.add_argument("--duration", type=float, default=None, help="seconds of arrivals")
    peers_cmd.add_argument("--seed", type=int, default=0, help="seed of workload and arrivals")
    peers_cmd.add_argument(
        "--scenario",
        choices=("rq2", "sessions"),
        default="rq2",
        help="the load and replicas (default rq2); sessions: editing sessions on replicas "
        "that cache prefixes, with each system's prefix-cache hit rate",
    )
    peers_cmd.add_argument(
        "--only",
        type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
        default=[],
        help="comma list of systems to run (e.g. cato), to rerun some of a comparison",
    )
    peers_cmd.add_argument(
        "--cato-scheduler",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [scheduler] setting of CATO's config, as TOML (e.g. admission='none'), "
        "for a live ablation; repeatable",
    )
    peers_cmd.add_argument(
        "--no-kind-priority",
        action="store_true",
        help="peers send every call at engine priority 0 (default: by kind, completions "
        "and generation first, as their users would configure)",
    )
    peers_cmd.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="run nothing: one table of earlier runs' peers.json files, a row per system "
        "of each (for ablations); repeatable",
    )
    peers_cmd.add_argument("--out", type=Path, default=Path("bench-results/peers"))


def _seeds(text: str) -> list[int]:
    try:
        return capacity.parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _loads(text: str) -> list[float]:
    try:
        loads = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}") from None
    if not loads or not all(0 < x <= 10 for x in loads):
        raise argparse.ArgumentTypeError(f"loads must be in (0, 10] x C, got {text!r}")
    return loads


def _variants(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no policy given")
    try:
        return [parse_variant(n).name for n in names]
    except VariantError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configure_capacity(cap: argparse.ArgumentParser) -> None:
    cases = list(capacity.CASES)
    autoscalers = [p for p in PROVISIONERS if p != "fixed"]
    cap.add_argument(
        "--scenario",
        default=cases,
        type=lambda s: cases if s == "all" else _names(s, cases, "scenario"),
        help=f"comma list of {', '.join(cases)}, or all (default)",
    )
    cap.add_argument(
        "--policies",
        type=_variants,
        default=list(SIM_SCHEDULERS),
        help=f"comma list of {', '.join(SIM_SCHEDULERS)} (default: all); a policy may "
        "change one lever for an ablation, e.g. cato/admission=none or cato/late_bound=inf",
    )
    cap.add_argument(
        "--provisioners",
        type=lambda s: _names(s, autoscalers, "provisioner"),
        default=None,
        help=f"autoscaling cases: comma list of {', '.join(autoscalers)} (default: all)",
    )
    cap.add_argument(
        "--seeds",
        type=_seeds,
        default=list(capacity.HELD_OUT_SEEDS),
        help="seeds, as N-M or a comma list (default 100-109, held out: tuning used 0-4)",
    )
    cap.add_argument(
        "--quick",
        action="store_true",
        help="short runs and a coarse grid, for CI: optimistic where SLAs are long next to "
        "the run (rq1's translations); figures come from full runs",
    )
    cap.add_argument("--jobs", type=int, default=1, help="processes to search with (default 1)")
    cap.add_argument(
        "--out", type=Path, default=Path("bench-results/capacity"), help="output folder"
    )
    cap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="simulate nothing: redraw the table and plots of a run's capacity.json",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    """SIGTERM unwinds like Ctrl-C while a bench command runs, through the ``finally``
    blocks that stop the routers, services and emulators it started (they live in
    process groups of their own, so nothing else would stop them)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    if args.bench_command == "peers":
        return _run_peers(args)
    if args.bench_command == "workloads":
        return workloads.run(args)
    if args.bench_command == "live":
        return _run_live(args)
    if args.bench_command == "calibrate":
        return calibrate.run(args)
    if args.bench_command == "calibrate-prefix":
        return calibrate_prefix.run(args)
    if args.bench_command == "chaos":
        return chaos.run(args)
    if args.bench_command == "soak":
        return soak.run(args)
    if args.bench_command == "fairness":
        return fairness.run(args)
    if args.bench_command == "overhead":
        return overhead.run(args)
    if args.bench_command == "capacity":
        return _run_capacity(args)
    return _run_sim(args)


def _workload(err: Console, seed: int, per_kind: int) -> workloads.Workload | None:
    """The benchmark workload, or None (said on ``err``) where its data is missing."""
    try:
        return workloads.build_workload(seed=seed, per_kind=per_kind)
    except workloads.WorkloadUnavailable as exc:
        err.print(str(exc))
        return None


def _scenario(name: str, concurrency: int | None) -> Scenario:
    chosen = scenario(name)
    return chosen if concurrency is None else replace(chosen, concurrency_limit=concurrency)


def _run_sim(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    started = time.perf_counter()
    err.print(f"building the workload (seed {args.seed}) ...")
    workload = _workload(err, args.seed, args.per_kind)
    if workload is None:
        return 2
    sweeps: list[Sweep] = []
    for name in args.scenario:
        chosen = _scenario(name, args.concurrency)
        with _progress(err) as on_run:
            sweep = run_sweep(
                chosen,
                workload,
                policies=args.policies,
                provisioners=args.provisioners,
                quick=args.quick,
                seed=args.seed,
                duration_s=args.duration,
                on_run=on_run,
            )
        sweeps.append(sweep)
        files, problem = write_report(sweep, args.out, plots=not args.no_plots)
        print(markdown(sweep))
        err.print(f"wrote {', '.join(str(f) for f in files)}")
        if problem:
            err.print(problem)
    simulated = sum(p.result.counters["tasks"] for s in sweeps for p in s.points)
    wall = time.perf_counter() - started
    err.print(f"{simulated:,} tasks simulated in {wall:.1f} s")
    return 0


def _run_live(args: argparse.Namespace) -> int:
    """Live sweeps, written like ``sim``'s to ``--out``; their simulated twins to
    ``--out``/twin."""
    err = Console(stderr=True)
    workload = _workload(err, args.seed, args.per_kind)
    if workload is None:
        return 2
    if args.speed <= 0:
        err.print("--speed must be > 0")
        return 2
    if args.provisioners and args.via != "serve":
        err.print("--provisioners needs --via serve (embedded runs use fixed replicas)")
        return 2
    options = LiveOptions(speed=args.speed)
    for name in args.scenario:
        chosen = _scenario(name, args.concurrency)
        via_serve = {"provisioners": args.provisioners} if args.via == "serve" else {}
        sweep = run_serve_sweep if args.via == "serve" else run_live_sweep
        rates = None
        if args.loads is not None:  # a load of x C is the paper rate x * 3.33 / OVERLOAD
            capacity = capacity_rps(chosen, workload)
            top = PAPER_RATES[-1] / OVERLOAD
            rates = [(round(x * top, 3), round(x * capacity, 3)) for x in args.loads]
        with _progress(err) as on_run:
            live = sweep(
                chosen,
                workload,
                policies=args.policies,
                quick=args.quick,
                seed=args.seed,
                duration_s=args.duration,
                rates=rates,
                options=options,
                on_run=on_run,
                **via_serve,
            )
        _write(live, args.out, args.no_plots, err)
        if not args.no_twin:
            # replicas `cato serve` starts run the emulator's default seed, 0
            seed = 0 if args.via == "serve" else None
            _write(twin_sweep(live, workload, seed), args.out / "twin", args.no_plots, err)
    return 0


def _merge_peers(specs: list[str], err: Console) -> int:
    runs = []
    for spec in specs:
        label, sep, name = spec.partition("=")
        if not sep or not label.strip():
            err.print(f"--merge: {spec!r} is not LABEL=FILE")
            return 2
        try:
            runs.append((label.strip(), json.loads(Path(name).read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            err.print(f"--merge: cannot read {name}: {exc}")
            return 2
    try:
        print(peers.merged_table(runs))
    except (KeyError, TypeError) as exc:
        err.print(f"--merge: not a `cato bench peers` result file ({exc!r})")
        return 2
    return 0


def _run_peers(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    if args.merge:
        return _merge_peers(args.merge, err)
    workload = _workload(err, args.seed, 200)
    if workload is None:
        return 2
    if args.speed <= 0:
        err.print("--speed must be > 0")
        return 2
    duration = args.duration or (20.0 if args.quick else 60.0)
    rate = args.rate or 4.0
    if args.load is not None:
        rate = args.load * capacity_rps(scenario(args.scenario), workload)
    try:
        scheduler = frontends.scheduler_lines(args.cato_scheduler)
    except ValueError as exc:
        err.print(f"--cato-scheduler: {exc}")
        return 2
    options = peers.PeersOptions(
        rate=rate,
        duration_s=duration,
        seed=args.seed,
        speed=args.speed,
        cato_scheduler=scheduler,
        kind_priority=not args.no_kind_priority,
    )
    result = peers.run_peers(
        workload, args.peers, options, log=err.print, scenario_name=args.scenario, only=args.only
    )
    print(peers.markdown(result))
    err.print(f"wrote {', '.join(str(f) for f in peers.write(result, args.out))}")
    return 0


def _run_capacity(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    if args.jobs < 1:
        err.print("--jobs must be >= 1")
        return 2

    def told(cells: list[capacity.Cell], done: int, total: int) -> None:
        found = ", ".join(f"{c.scheduler}/{c.provisioner} {c.capacity:.3f}" for c in cells)
        err.print(
            f"[{done}/{total}] {cells[0].case} seed {cells[0].seed} (x C): {found}",
            soft_wrap=True,
        )

    if args.from_json is not None:
        try:
            run = capacity.load_run(json.loads(args.from_json.read_text()))
        except (OSError, ValueError) as exc:
            err.print(f"cannot read {args.from_json}: {exc}", soft_wrap=True)
            return 2
        return _write_capacity(run, args, err)
    try:
        run = capacity.run_capacity(
            args.scenario,
            args.policies,
            args.seeds,
            quick=args.quick,
            provisioners=args.provisioners,
            jobs=args.jobs,
            on_cells=told,
        )
    except workloads.WorkloadUnavailable as exc:
        err.print(str(exc))
        return 2
    return _write_capacity(run, args, err)


def _write_capacity(run: capacity.CapacityRun, args: argparse.Namespace, err: Console) -> int:
    files, problem = capacity_report.write(run, args.out, plots=not args.no_plots)
    print(capacity_report.markdown(run))
    if prefix_report.cases_with_caching(run):
        print("\n" + prefix_report.markdown(run))
    err.print(f"wrote {', '.join(str(f) for f in files)}")
    if problem:
        err.print(problem)
    return 0


def _write(sweep: Sweep, out: Path, no_plots: bool, err: Console) -> None:
    files, problem = write_report(sweep, out, plots=not no_plots)
    print(f"## {out}\n")
    print(markdown(sweep))
    err.print(f"wrote {', '.join(str(f) for f in files)}")
    if problem:
        err.print(problem)


class _progress:
    """A rich progress bar with one line per simulated run."""

    def __init__(self, console: Console) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )

    def __enter__(self) -> Callable[[str, float], Callable[[int], None]]:
        self.bar.start()
        return self.on_run

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def on_run(self, label: str, expected: float) -> Callable[[int], None]:
        task = self.bar.add_task(label, total=max(int(expected), 1))

        def advance(arrived: int) -> None:
            self.bar.update(task, completed=arrived)

        return advance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cato bench")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
