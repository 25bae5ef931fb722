# Rosetta neurons: un-pooled units per model (one folder, a store per unit kind), exact Pearson per model
# pair of one modality and unit kind, mutual matches, sets across trained models, null baselines and
# figures per group, and the unit kinds side by side.


rule extract_units:
    input:
        samples=f"{RESULTS}/datasets/{{dataset}}/samples.parquet",
        weights=model_weights,
    output:
        directory(f"{RESULTS}/units/{{dataset}}/{{model}}"),
    log:
        f"{RESULTS}/logs/units/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_units/{{dataset}}/{{model}}.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1  # measured on 2 cores: 2 threads speed a job up 1.27-1.40x; two 1-thread jobs do more
    resources:
        mem_mb=model_mem_mb,
        runtime=120,
        gpu=model_gpus,
    params:
        spec=units_spec,
        kinds=units_kinds,
        grid=ROSETTA["grid"],
        store_dtype=ROSETTA["store_dtype"],
        resources_dir=RESOURCES,
        zoo_dir=ZOO,
    script:
        "../scripts/extract_units.py"


rule correlate_pair:
    input:
        a=f"{RESULTS}/units/{{dataset}}/{{a}}",
        b=f"{RESULTS}/units/{{dataset}}/{{b}}",
    output:
        f"{RESULTS}/rosetta/{{dataset}}/{{units}}/pairs/{{a}}__{{b}}.npz",
    log:
        f"{RESULTS}/logs/rosetta/{{dataset}}/{{units}}/correlate_{{a}}__{{b}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/correlate_pair/{{dataset}}/{{units}}/correlate_{{a}}__{{b}}.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1  # 2 threads: 1.40x on 2 cores; raise it with --set-threads on a cluster node
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        k=ROSETTA["k"],
        null_k=max(ROSETTA["k_relaxed"], ROSETTA["k_back"]),
        seed=ROSETTA["seed"],
        rotation_null=lambda wc: ROSETTA["rotation_null"]
        and rosetta_pair_trained(wc.a, wc.b),
        null_draws=ROSETTA["null_draws"],
        shuffle_draws=lambda wc: (
            ROSETTA["shuffle_draws"]
            if rosetta_pair_trained(wc.a, wc.b)
            and config["models"][wc.a]["modality"] == "vision"
            else 0
        ),
    script:
        "../scripts/correlate_pair.py"


rule match_pair:
    input:
        f"{RESULTS}/rosetta/{{dataset}}/{{units}}/pairs/{{a}}__{{b}}.npz",
    output:
        table=f"{RESULTS}/rosetta/{{dataset}}/{{units}}/matches/{{a}}__{{b}}.parquet",
        summary=f"{RESULTS}/rosetta/{{dataset}}/{{units}}/matches/{{a}}__{{b}}.json",
    log:
        f"{RESULTS}/logs/rosetta/{{dataset}}/{{units}}/match_{{a}}__{{b}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/match_pair/{{dataset}}/{{units}}/match_{{a}}__{{b}}.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        k_relaxed=ROSETTA["k_relaxed"],
    script:
        "../scripts/match_pair.py"


rule rosetta_sets:
    input:
        pairs=rosetta_set_pair_files,
        units=rosetta_set_units,
    output:
        table=f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_sets.csv",
        summary=f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_sets.json",
    log:
        f"{RESULTS}/logs/rosetta/{{dataset}}/{{units}}/{{modality}}_sets.log",
    benchmark:
        f"{RESULTS}/benchmarks/rosetta_sets/{{dataset}}/{{units}}/{{modality}}_sets.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        pairs=lambda wc: rosetta_set_pairs(wc.dataset, wc.modality, wc.units),
        models=lambda wc: rosetta_set_models(config, wc.dataset, wc.modality, wc.units),
        anchor=lambda wc: ROSETTA["anchor"].get(wc.modality),
        k_back=ROSETTA["k_back"],
    script:
        "../scripts/rosetta_sets.py"


rule rosetta_figures:
    input:
        unpack(rosetta_figure_inputs),
    output:
        excess=f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_null_excess.csv",
        excess_png=report(
            f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_null_excess.png",
            caption="../report/rosetta.rst",
            category="Rosetta neurons",
            subcategory="{dataset}: {modality}, {units} units",
        ),
        layers=report(
            f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_layers.png",
            caption="../report/rosetta.rst",
            category="Rosetta neurons",
            subcategory="{dataset}: {modality}, {units} units",
        ),
        pairwise=report(
            f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_pairwise.png",
            caption="../report/rosetta.rst",
            category="Rosetta neurons",
            subcategory="{dataset}: {modality}, {units} units",
        ),
        neurons=report(
            f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_neurons.png",
            caption="../report/rosetta.rst",
            category="Rosetta neurons",
            subcategory="{dataset}: {modality}, {units} units",
        ),
        md=f"{RESULTS}/rosetta/{{dataset}}/{{units}}/{{modality}}_neurons.md",
    log:
        f"{RESULTS}/logs/rosetta/{{dataset}}/{{units}}/{{modality}}_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/rosetta_figures/{{dataset}}/{{units}}/{{modality}}_figures.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        pairs=lambda wc: rosetta_pairs(config, wc.dataset, wc.modality, wc.units),
        models=lambda wc: rosetta_models(config, wc.dataset, wc.modality, wc.units),
        controls=lambda wc: group_controls(wc.dataset, wc.modality, wc.units),
    script:
        "../scripts/rosetta_figures.py"


rule rosetta_unit_kinds:
    input:
        unpack(rosetta_kinds_inputs),
    output:
        table=f"{RESULTS}/rosetta/{{dataset}}/{{modality}}_unit_kinds.csv",
        figure=report(
            f"{RESULTS}/rosetta/{{dataset}}/{{modality}}_unit_kinds.png",
            caption="../report/rosetta_unit_kinds.rst",
            category="Rosetta neurons",
            subcategory="{dataset}: {modality}",
        ),
    log:
        f"{RESULTS}/logs/rosetta/{{dataset}}/{{modality}}_unit_kinds.log",
    benchmark:
        f"{RESULTS}/benchmarks/rosetta_unit_kinds/{{dataset}}/{{modality}}_unit_kinds.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        kinds=lambda wc: rosetta_kind_groups(wc.dataset, wc.modality),
    script:
        "../scripts/rosetta_unit_kinds.py"
