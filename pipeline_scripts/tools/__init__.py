"""Command-line tools beside the pipeline, importing its package (``pipeline_scripts.earlyphase``),
which never imports them: the throughput benchmark (``bench``), the cost of a configuration
(``cost``), the effective-std report (``effective_std``) and the planning benchmark
(``planning``). Run each with ``python -m pipeline_scripts.tools.<name> --help``."""
