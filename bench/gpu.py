"""`python -m bench.gpu`: `python -m bench` with the GPU parts (steps, epoch, concurrency, projection) unless
--parts names others. Kept so that older commands still run."""
import sys

from bench.cli import main as bench_main

GPU_PARTS = "steps,epoch,concurrency,projection"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return bench_main(argv if any(a.startswith("--parts") for a in argv) else ["--parts", GPU_PARTS, *argv])


if __name__ == "__main__":
    sys.exit(main())
