"""`python -m bench.gpu`, an older command kept: `python -m bench` with the GPU parts unless --parts names others."""
from bench.cli import main_with_parts

main = main_with_parts("steps,epoch,concurrency,projection")

if __name__ == "__main__":
    raise SystemExit(main())
