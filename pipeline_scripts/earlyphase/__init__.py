"""earlyphase: pure, importable building blocks of the Early-Phase pipeline.

One concept per module (docs/architecture.md has the map). Nothing here imports snakemake or invents a path:
entry points in ``pipeline_scripts/*.py`` read ``snakemake.*`` and call into these modules.
"""

__version__ = "0.3.0"
