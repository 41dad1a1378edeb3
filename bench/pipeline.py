"""`python -m bench.pipeline`, an older command kept: `python -m bench --parts pipeline` (epochs.bench_pipeline)."""
from bench.cli import main_with_parts

main = main_with_parts("pipeline")

if __name__ == "__main__":
    raise SystemExit(main())
