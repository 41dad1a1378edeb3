"""`python -m bench.pipeline`: `python -m bench --parts pipeline`, how fast `data.TrainSet` builds the paper's
training batches against the plain route (`bench.epochs.bench_pipeline`). Kept so that older commands still run."""
import sys

from bench.cli import main_with_parts

main = main_with_parts("pipeline")

if __name__ == "__main__":
    sys.exit(main())
