# The figures drawn from the summaries of rules/summaries.smk: Figure 1 / A2 (IMP with rewinding),
# Figures 4-8 / A4-A8 (perturbations), Figure 9 / A9-A12 (pre-training) and Figure 10 (sparse
# pre-training). Each lists its plotting code as an input, so editing it redraws only figures.


rule plot_figure1:
    input:
        summary="results/{net}/summary/imp.h5",
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure1/{net}.pdf",
        png=report(
            "results/figures/figure1/{net}.png",
            caption="../report/figure1.rst",
            category="Figure 1 / A2: IMP with rewinding",
            subcategory="{net}",
            labels={"figure": "Figure 1 / A2", "network": "{net}"},
        ),
    log:
        "logs/figures/figure1/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/plot_figure1.py"


rule plot_figure_perturb:
    input:
        summaries=expand("results/{{net}}/summary/perturb_rewind{k}.h5", k=PERTURB_REWINDS),
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure{fig}/{net}.pdf",
        png=report(
            "results/figures/figure{fig}/{net}.png",
            caption="../report/figure_perturb.rst",
            category="Figures 4-8 / A4-A8: perturbations",
            subcategory="{net}",
            labels={"figure": "Figure {fig}", "network": "{net}"},
        ),
    log:
        "logs/figures/figure{fig}/{net}.log",
    wildcard_constraints:
        fig="[4-8]",
    conda:
        "../envs/pipeline.yaml"
    params:
        rewinds=PERTURB_REWINDS,
        variants=VARIANTS,
        figure8_level=PERTURB["figure8_level"],
    script:
        "../pipeline_scripts/plot_figure_perturb.py"


rule plot_figure9:
    input:
        summaries=expand("results/{{net}}/summary/pretrain_{task}.h5", task=PRE_TASKS),
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure9/{net}.pdf",
        png=report(
            "results/figures/figure9/{net}.png",
            caption="../report/figure9.rst",
            category="Figure 9 / A9-A12: pre-training",
            subcategory="{net}",
            labels={"figure": "Figure 9", "network": "{net}"},
        ),
    log:
        "logs/figures/figure9/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        tasks=PRE_TASKS,
        epochs=PRE_EPOCHS,
        references=PRETRAIN["reference_rewinds"],
    script:
        "../pipeline_scripts/plot_figure9.py"


rule plot_figure10:
    input:
        summary="results/{net}/summary/sparse_pretrain.h5",
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure10/{net}.pdf",
        png=report(
            "results/figures/figure10/{net}.png",
            caption="../report/figure10.rst",
            category="Figure 10: sparse pre-training",
            subcategory="{net}",
            labels={"figure": "Figure 10", "network": "{net}"},
        ),
    log:
        "logs/figures/figure10/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        rewind=SPARSE["rewind_iteration"],
        task=SPARSE["task"],
        epochs=SPARSE["epochs"],
    script:
        "../pipeline_scripts/plot_figure10.py"
