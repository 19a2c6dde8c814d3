rule prepare_data:
    output:
        DATA_FILE,
    log:
        "logs/prepare_data.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        data=config["data"],
    script:
        "../pipeline_scripts/prepare_data.py"
