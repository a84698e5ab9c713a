"""lnzoo: a plugin-based multi-task model zoo for lymph node ultrasound.

Plugin authors need only ``lnzoo.hookimpl``; ``lnzoo.run(recipe, out=..., on_event=...)`` does all that
``lnzoo run`` does, as a library call. Nothing here imports torch until a run starts.
"""
from lnzoo.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "run", "__version__"]


def run(recipe, out=None, on_event=None, **options):
    """Train and evaluate a recipe into a run directory; see :func:`lnzoo.pipeline.run`."""
    from lnzoo.pipeline import run as run_pipeline
    return run_pipeline(recipe, out, on_event, **options)
