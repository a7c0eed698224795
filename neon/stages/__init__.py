"""The pipeline's stages, each writing into a folder it is given (the pipeline hands it a cache folder, so a
finished stage is never redone; a standalone task hands it the run folder): θ_r (`base`), S (`synthesize`,
or from elsewhere: `synthetic_source`), θ_s (`finetune`) and scores (`evaluator`); the cached front that
chains the first three (`front`); what every stage needs: the run (`run`) and Lightning training
(`training`, the only module that imports Lightning)."""
