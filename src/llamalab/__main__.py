"""`python -m llamalab ...` (and `torchrun -m llamalab ...`): hand over to the CLI package's entry point."""
import runpy

runpy.run_module("llamalab.cli", run_name="__main__", alter_sys=True)
