# Early-phase telemetry (Section 4): every dense run records it during its first T iterations;
# after the run, distances to the final weights are added, seeds are summarised, and Figure 3 /
# A3 and the Figure 2 timeline are drawn.


rule telemetry_run:
    input:
        raw="results/{net}/seed{seed}/dense/telemetry_raw.h5",
        final="results/{net}/seed{seed}/dense/final.pt",
        metrics="results/{net}/seed{seed}/dense/metrics.h5",
    output:
        "results/{net}/seed{seed}/dense/telemetry.h5",
    log:
        "logs/{net}/seed{seed}/dense/telemetry.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/telemetry_run.py"


rule summarise_telemetry:
    input:
        runs=expand("results/{{net}}/seed{seed}/dense/telemetry.h5", seed=SEEDS),
    output:
        summary="results/{net}/summary/telemetry.h5",
        timeline="results/{net}/summary/timeline.txt",
    log:
        "logs/{net}/summary/telemetry.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/summarise_telemetry.py"


rule plot_figure3:
    input:
        summary="results/{net}/summary/telemetry.h5",
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure3/{net}.pdf",
        png=report(
            "results/figures/figure3/{net}.png",
            caption="../report/figure3.rst",
            category="Figure 3 / A3: early-phase telemetry",
            subcategory="{net}",
            labels={"figure": "Figure 3", "network": "{net}"},
        ),
    log:
        "logs/figures/figure3/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/plot_figure3.py"


rule plot_figure_a3:
    input:
        summaries=expand("results/{net}/summary/telemetry.h5", net=NETWORKS),
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figureA3.pdf",
        png=report(
            "results/figures/figureA3.png",
            caption="../report/figureA3.rst",
            category="Figure 3 / A3: early-phase telemetry",
            subcategory="all networks",
            labels={"figure": "Figure A3", "network": "all"},
        ),
    log:
        "logs/figures/figureA3.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        networks=NETWORKS,
    script:
        "../pipeline_scripts/plot_figure_a3.py"
