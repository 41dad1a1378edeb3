"""`python -m bench.gpu`: `python -m bench` with the GPU parts (steps, epoch, concurrency, projection) unless
--parts names others. Kept so that older commands still run."""
import sys

from bench.cli import main_with_parts

main = main_with_parts("steps,epoch,concurrency,projection")

if __name__ == "__main__":
    sys.exit(main())
