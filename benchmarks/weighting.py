"""Speed of the robust weightings: time per call of every strategy (closed forms and cvxpylayers).

Run: ``python benchmarks/weighting.py [--quick] [--no-cvxpy] [--device cpu|cuda] [--threads K]``.

``time_per_call_table()`` times ``strategy(losses)`` (the full forward as training pays it:
checks, float64 solve, stats, weighted loss) for batch sizes n in {8, 64, 512, 4096}, and
reports the median over many calls in microseconds (fewer repetitions for the cvxpylayers path,
whose first call per n, which builds the layer, is excluded). The reward-model step-ratio part
(weighting time as a fraction of training-step time, docs/DESIGN.md "Benchmarks") lives beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch

from lightning_robust.weighting import (
    ERM,
    ChiSquareBall,
    CVaR,
    Cvxpy,
    GroupDRO,
    KLBall,
    KLPenalty,
    TVBall,
)

SIZES = (8, 64, 512, 4096)


def closed_form_strategies() -> dict[str, torch.nn.Module]:
    return {
        "ERM": ERM(),
        "TVBall(0.4)": TVBall(0.4),
        "ChiSquareBall(0.5)": ChiSquareBall(0.5),
        "KLBall(0.2)": KLBall(0.2),
        "KLPenalty(0.5)": KLPenalty(0.5),
        "KLPenalty(0.5,seed)": KLPenalty(0.5, form="seed"),
        "CVaR(0.25)": CVaR(0.25),
        "GroupDRO(4)": GroupDRO(4),
    }


def cvxpy_strategies() -> dict[str, torch.nn.Module]:
    return {
        "Cvxpy(tv,0.4)": Cvxpy("tv", 0.4, differentiable=False),
        "Cvxpy(chi2,0.5)": Cvxpy("chi2", 0.5, differentiable=False),
        "Cvxpy(kl,0.2)": Cvxpy("kl", 0.2, differentiable=False),
        "Cvxpy(cvar,0.25)": Cvxpy("cvar", 0.25, differentiable=False),
    }


def _median_call_us(strategy, losses, groups, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        strategy(losses, groups)
    sync = torch.cuda.synchronize if losses.is_cuda else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        strategy(losses, groups)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def time_per_call_table(
    sizes: tuple[int, ...] = SIZES,
    repeats: int = 2000,
    cvxpy_repeats: int = 5,
    include_cvxpy: bool = True,
    cvxpy_max_n: int = 4096,
    device: str = "cpu",
) -> dict[str, dict[int, float]]:
    """Median microseconds per ``strategy(losses)`` call, ``{strategy: {n: us}}``.

    Losses are float32 uniform on [0, 2] on ``device``; GroupDRO gets 4 random groups.
    Closed forms: ``repeats`` timed calls after ``repeats // 10`` warm-up calls (fewer for large
    n so a run stays short); cvxpylayers (Clarabel): ``cvxpy_repeats`` calls after one warm-up
    call that builds the layer, for ``n <= cvxpy_max_n``.
    """
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict[int, float]] = {}
    for n in sizes:
        losses = (torch.rand(n, generator=gen) * 2).to(device)
        groups = torch.randint(0, 4, (n,), generator=gen).to(device)
        reps = max(50, repeats // max(1, n // 512)) if n > 512 else repeats
        for name, strategy in closed_form_strategies().items():
            strategy.to(device)
            results.setdefault(name, {})[n] = _median_call_us(
                strategy, losses, groups, reps, max(10, reps // 10)
            )
        if include_cvxpy and n <= cvxpy_max_n:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name, strategy in cvxpy_strategies().items():
                    results.setdefault(name, {})[n] = _median_call_us(
                        strategy, losses, groups, cvxpy_repeats, 1
                    )
    return results


def machine_line(device: str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {dev}, python {platform.python_version()}"
    )


def format_table(results: dict[str, dict[int, float]], sizes: tuple[int, ...] = SIZES) -> str:
    head = f"{'strategy':<22}" + "".join(f"{'n=' + str(n):>12}" for n in sizes)
    lines = [head, "-" * len(head)]
    for name, row in results.items():
        cells = "".join(f"{row[n]:>12.1f}" if n in row else f"{'-':>12}" for n in sizes)
        lines.append(f"{name:<22}{cells}")
    lines.append("(median microseconds per call, full forward incl. stats; float32 losses)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--no-cvxpy", action="store_true", help="closed forms only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--no-step", action="store_true", help="skip the reward-model step overhead"
    )
    parser.add_argument("--steps", type=int, default=120, help="timed training steps per weighting")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default). On a loaded machine 1 avoids "
        "OpenMP barrier stalls of ~16 ms that have nothing to do with the weighting.",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results = time_per_call_table(
        repeats=300 if args.quick else 2000,
        cvxpy_repeats=3 if args.quick else 5,
        include_cvxpy=not args.no_cvxpy,
        device=args.device,
    )
    print(machine_line(args.device))
    print(format_table(results))
    if not args.no_step:
        from step_overhead import (
            HH_RLHF,
            overhead_table,  # benchmarks/ beside this file
        )

        print()
        print(overhead_table(steps=args.steps))
        if HH_RLHF.exists():
            print()
            print(overhead_table(steps=args.steps, reference=True))


if __name__ == "__main__":
    main()
