# Rosetta neurons with a generator: a DCGAN per `kind: generator` zoo entry, its units matched to each vision
# model on its own images (with rotation and random-init nulls), Rosetta sets with the generator as anchor,
# Rosetta-guided inversion of held-out real images and shift/zoom/duplicate edits measured on the images.
import os


rule train_generator:
    input:
        samples=lambda wc: f"{RESULTS}/datasets/{config['zoo'][wc.generator]['dataset']}/samples.parquet",
        evaluator=generator_evaluator,
        eval_samples=f"{RESULTS}/datasets/{GENERATOR['invert']['dataset']}/samples.parquet",
    output:
        directory(f"{ZOO}/{{generator}}"),
    log:
        f"{RESULTS}/logs/models/train_{{generator}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_generator/train_{{generator}}.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1  # a small GAN: one thread per job beats two on shared cores
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        entry=lambda wc: config["zoo"][wc.generator],
    script:
        "../scripts/generator_train.py"


rule generator_pair:
    input:
        generator=f"{ZOO}/{{generator}}",
        weights=model_weights,
    output:
        f"{GEN_OUT}/{{generator}}/pairs/{{model}}.npz",
    log:
        f"{RESULTS}/logs/generator/{{generator}}/pair_{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/generator_pair/{{generator}}/pair_{{model}}.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
        gpu=model_gpus,
    params:
        spec=units_spec,
        n_samples=GENERATOR["n_samples"],
        seed=GENERATOR["seed"],
        grid=GENERATOR["grid"] or ROSETTA["grid"],
        res=GENERATOR["res"],
        k=max(GENERATOR["k"], GENERATOR["k_back"]),
        batch_size=GENERATOR["batch_size"],
        resources_dir=RESOURCES,
        zoo_dir=lambda wc, input: os.path.dirname(input.generator),  # where the zoo lives
    script:
        "../scripts/generator_pair.py"


rule generator_sets:
    input:
        pairs=lambda wc: list(generator_pair_files(wc).values()),
        generator=f"{ZOO}/{{generator}}",
        weights=lambda wc: generator_model_weights(generator_trained_models(config)),
    output:
        matches=f"{GEN_OUT}/{{generator}}/matches.csv",
        sets=f"{GEN_OUT}/{{generator}}/sets.csv",
        summary=f"{GEN_OUT}/{{generator}}/summary.json",
        nulls_png=report(
            f"{GEN_OUT}/{{generator}}/nulls.png",
            caption="../report/generator.rst",
            category="Rosetta neurons with a generator",
            subcategory="{generator}",
        ),
        sets_png=report(
            f"{GEN_OUT}/{{generator}}/sets.png",
            caption="../report/generator_sets.rst",
            category="Rosetta neurons with a generator",
            subcategory="{generator}",
        ),
    log:
        f"{RESULTS}/logs/generator/{{generator}}/sets.log",
    benchmark:
        f"{RESULTS}/benchmarks/generator_sets/{{generator}}/sets.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        models=lambda wc: generator_models(config),
        trained=lambda wc: generator_trained_models(config),
        controls=lambda wc: {
            m: c
            for m, c in controls_of(config).items()
            if m in generator_models(config) and c in generator_models(config)
        },
        specs=lambda wc: {
            m: spec_for(config["models"][m], UNITS_KEYS)
            for m in generator_trained_models(config)
        },
        k_back=GENERATOR["k_back"],
        resources_dir=RESOURCES,
        zoo_dir=lambda wc, input: os.path.dirname(input.generator),  # where the zoo lives
    script:
        "../scripts/generator_sets.py"


rule generator_edit:
    input:
        pairs=lambda wc: list(
            generator_pair_files(wc, generator_trained_models(config)).values()
        ),
        generator=f"{ZOO}/{{generator}}",
        weights=lambda wc: generator_model_weights(generator_trained_models(config)),
        evaluator=generator_evaluator,
        samples=f"{RESULTS}/datasets/{GENERATOR['invert']['dataset']}/samples.parquet",
    output:
        inversion=f"{GEN_OUT}/{{generator}}/inversion.csv",
        edits=f"{GEN_OUT}/{{generator}}/edits.csv",
        edit_summary=f"{GEN_OUT}/{{generator}}/edit_summary.csv",
        summary=f"{GEN_OUT}/{{generator}}/edit_summary.json",
        figure=report(
            f"{GEN_OUT}/{{generator}}/edits.png",
            caption="../report/generator_edits.rst",
            category="Rosetta neurons with a generator",
            subcategory="{generator}",
        ),
    log:
        f"{RESULTS}/logs/generator/{{generator}}/edit.log",
    benchmark:
        f"{RESULTS}/benchmarks/generator_edit/{{generator}}/edit.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        models=lambda wc: generator_trained_models(config),
        specs=lambda wc: {
            m: spec_for(config["models"][m], UNITS_KEYS)
            for m in generator_trained_models(config)
        },
        invert={**GENERATOR["invert"], "res": GENERATOR["res"]},
        edit=GENERATOR["edit"],
        seed=GENERATOR["seed"],
        resources_dir=RESOURCES,
        zoo_dir=lambda wc, input: os.path.dirname(input.generator),  # where the zoo lives
    script:
        "../scripts/generator_edit.py"
